//! The allow-list: every difference between dockerd and cnmd that is known and reviewed, each
//! with its reason. A difference it does not name fails the test; so does an entry that matched
//! nothing in the whole run (the difference went away: delete the entry, so the list stays
//! true).
//!
//! ```text
//! # comment
//! docker network inspect bridge          a command as written in script.txt (`*` is a wildcard)
//!   json:[0].Options.*  phase 2: …       indented: a difference key (`*` wildcard), its reason
//!   exit @28  api version: …             `@NAME` limits the entry to one client's run
//! ```
//!
//! A reason starts with its category: `phase 2:` (waits for the driver-option rework),
//! `safety:` (cnm chooses to differ for safety), `no containers on cnmd:`, `not dockerd:` (what
//! cnmd is, or what it does not serve: its version, swarm, plugins), `api version:` (the client
//! speaks another API version to each daemon), `by design:` (a deliberate difference that is not
//! about safety).

use anyhow::{Result, bail};

pub const CATEGORIES: &[&str] = &[
    "phase 2:",
    "safety:",
    "no containers on cnmd:",
    "not dockerd:",
    "api version:",
    "by design:",
];

#[derive(Debug, Clone)]
pub struct Entry {
    /// Line in allowlist.txt.
    pub line: usize,
    pub command: String,
    pub key: String,
    /// Only in this client's run.
    pub client: Option<String>,
    pub reason: String,
}

impl Entry {
    pub fn category(&self) -> &'static str {
        CATEGORIES
            .iter()
            .find(|c| self.reason.starts_with(*c))
            .copied()
            .unwrap_or("?")
    }

    pub fn matches(&self, client: &str, command: &str, key: &str) -> bool {
        self.client.as_deref().is_none_or(|c| c == client)
            && glob(&self.command, command)
            && glob(&self.key, key)
    }
}

pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut command: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        if !raw.starts_with(char::is_whitespace) {
            command = Some(raw.trim().to_owned());
            continue;
        }
        let Some(cmd) = &command else {
            bail!("allowlist.txt line {line}: an indented entry needs a command line above it");
        };
        let rest = raw.trim();
        let (key, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let mut rest = rest.trim_start();
        let mut client = None;
        if let Some(r) = rest.strip_prefix('@') {
            let (c, r) = r.split_once(char::is_whitespace).unwrap_or((r, ""));
            client = Some(c.to_owned());
            rest = r.trim_start();
        }
        if !CATEGORIES.iter().any(|c| rest.starts_with(c)) {
            bail!(
                "allowlist.txt line {line}: the reason must start with one of {CATEGORIES:?}: {raw}"
            );
        }
        out.push(Entry {
            line,
            command: cmd.clone(),
            key: key.to_owned(),
            client,
            reason: rest.to_owned(),
        });
    }
    Ok(out)
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("json:[*].Options.*", "json:[0].Options.a.b"));
        assert!(glob("docker network ls*", "docker network ls"));
        assert!(!glob("docker network ls", "docker network ls -q"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acbd"));
    }

    #[test]
    fn entries_need_a_category() {
        let e = parse("docker x\n  exit @28 api version: why\n  stderr phase 2: y\n").unwrap();
        assert_eq!(
            (e[0].client.as_deref(), e[0].category()),
            (Some("28"), "api version:")
        );
        assert!(e[1].matches("20.10", "docker x", "stderr"));
        assert!(!e[0].matches("20.10", "docker x", "exit"));
        assert!(parse("docker x\n  exit because\n").is_err());
        assert!(parse("  exit phase 2: x\n").is_err());
    }
}
