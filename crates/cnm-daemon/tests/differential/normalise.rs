//! Normalisation: what legitimately differs between two daemons running the same sequence
//! (ids, times, MACs, the socket's path) is replaced by stable tokens before comparing.
//!
//! Ids become names: a network id is `<net:NAME>` (`<net:NAME:12>` when shown truncated), a
//! container's (on cnmd, its sandbox's) `<ctr:NAME>`, any other 64-hex id `<id>`. Times (RFC 3339,
//! Go's default format, events' `time`/`timeNano`) become `<time>` or 0, MACs `<mac>`.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::{Captures, Regex};

static ID64: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b[0-9a-f]{64}\b").unwrap());
static ID12: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b[0-9a-f]{12}\b").unwrap());
static RFC3339: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})").unwrap()
});
static GO_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d+)? [+-]\d{4} [A-Z]+").unwrap()
});
static EVENT_TIME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#""(time|timeNano)":\s*\d+"#).unwrap());
static MATCHES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b\d+ matches found").unwrap());
static AMBIGUOUS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"network [0-9a-f] is ambiguous").unwrap());
static MAC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[0-9a-f]{2}(:[0-9a-f]{2}){5}\b").unwrap());

/// What one daemon's ids mean, learnt as the sequence runs.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// id → network name.
    pub networks: HashMap<String, String>,
    /// id → container (sandbox) name.
    pub containers: HashMap<String, String>,
    /// The paths that name this daemon (its socket): replaced by `<daemon>`.
    pub paths: Vec<String>,
}

impl Registry {
    /// The current id of network `name` (the newest one seen under that name).
    pub fn network_id(&self, name: &str, current: &[(String, String)]) -> Option<String> {
        current
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| id.clone())
    }

    fn name_of(&self, id: &str) -> Option<String> {
        if let Some(n) = self.networks.get(id) {
            return Some(format!("net:{n}"));
        }
        self.containers.get(id).map(|n| format!("ctr:{n}"))
    }

    fn name_of_prefix(&self, prefix: &str) -> Option<String> {
        let mut found = self
            .networks
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .map(|(_, n)| format!("net:{n}:12"))
            .chain(
                self.containers
                    .iter()
                    .filter(|(id, _)| id.starts_with(prefix))
                    .map(|(_, n)| format!("ctr:{n}:12")),
            );
        let first = found.next()?;
        // A 12-character prefix shared by two ids is not an id we can name.
        found.next().is_none().then_some(first)
    }

    /// Replaces everything that differs by nature.
    pub fn normalise(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for p in &self.paths {
            t = t.replace(p.as_str(), "<daemon>");
        }
        let t = ID64.replace_all(&t, |c: &Captures<'_>| match self.name_of(&c[0]) {
            Some(n) => format!("<{n}>"),
            None => "<id>".to_owned(),
        });
        let t = ID12.replace_all(&t, |c: &Captures<'_>| match self.name_of_prefix(&c[0]) {
            Some(n) => format!("<{n}>"),
            None => c[0].to_owned(),
        });
        let t = RFC3339.replace_all(&t, "<time>");
        let t = GO_TIME.replace_all(&t, "<time>");
        let t = EVENT_TIME.replace_all(&t, "\"$1\":0");
        let t = MAC.replace_all(&t, "<mac>");
        // How many ids share an ambiguous prefix depends on the random ids.
        let t = MATCHES.replace_all(&t, "N matches found");
        // ${ambiguous} is whichever hex digit two ids share on that daemon.
        let t = AMBIGUOUS.replace_all(&t, "network <prefix> is ambiguous");
        t.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_times_and_macs() {
        let mut r = Registry::default();
        let id = "a".repeat(64);
        r.networks.insert(id.clone(), "n1".into());
        r.containers.insert("b".repeat(64), "c1".into());
        let text = format!(
            "{id} {} {} {} 2026-11-30T05:10:09.322341861Z 2026-11-30 05:10:09.32 +0000 UTC \
             02:42:ac:12:00:02 {{\"time\":17,\"timeNano\": 170}}",
            &id[..12],
            "b".repeat(64),
            "c".repeat(64)
        );
        assert_eq!(
            r.normalise(&text),
            "<net:n1> <net:n1:12> <ctr:c1> <id> <time> <time> <mac> {\"time\":0,\"timeNano\":0}"
        );
    }
}
