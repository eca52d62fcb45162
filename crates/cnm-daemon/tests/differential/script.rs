//! The scripted sequence: one step per line of `script.txt`.
//!
//! ```text
//! # a comment; blank lines are ignored
//! docker network create --subnet 10.12.0.0/24 n1     the docker CLI (shell-like quoting)
//! api GET /v1.41/networks/n1                          a raw API call
//! api POST /v1.41/networks/create {"Name":"x"}        … with a JSON body (the rest of the line)
//! [sort] docker network prune -f                      compare the output's lines sorted
//! @container c1        set-up: a busybox container on dockerd, a cnm sandbox on cnmd
//! @mark t0             set-up: remember each daemon's "now" as ${mark:t0}
//! @rm n1 n2            set-up: remove networks on both daemons, ignoring failures
//! @disconnect n1 c1    set-up: disconnect c1 from n1 on both daemons, ignoring failures
//! ```
//!
//! Set-up steps are not compared (a failure fails the test). In commands, `${id:NAME}` is the
//! full id of network NAME on the daemon the command runs against, `${id12:NAME}` its first 12
//! characters, `${ctr:NAME}` a container's (sandbox's) id, `${mark:NAME}` a mark, and
//! `${ambiguous}` one hex character that starts the ids of at least two networks.

use anyhow::{Context, Result, bail};

/// What one step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `docker ARGS…`.
    Docker(Vec<String>),
    /// A raw request.
    Api {
        method: String,
        path: String,
        body: Option<String>,
    },
    /// Make the container (sandbox) NAME on both daemons.
    Container(String),
    /// Remember the time.
    Mark(String),
    /// Remove these networks on both daemons, whatever the outcome (after a create that
    /// succeeded on one side only, so that the two go on from the same state).
    Remove(Vec<String>),
    /// Disconnect a container from a network on both daemons, whatever the outcome (after a
    /// connect that succeeded on one side only).
    Disconnect { network: String, container: String },
}

/// One line of the script.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based line number in script.txt.
    pub line: usize,
    /// The command as written (without modifiers): what the allow-list names.
    pub text: String,
    pub action: Action,
    /// Compare the output's lines as a sorted set (dockerd answers some lists in map order).
    pub sort: bool,
}

impl Step {
    /// Whether the step's outcome is compared.
    pub fn compared(&self) -> bool {
        matches!(self.action, Action::Docker(_) | Action::Api { .. })
    }
}

pub fn parse(text: &str) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let mut l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut sort = false;
        if let Some(rest) = l.strip_prefix("[sort]") {
            sort = true;
            l = rest.trim_start();
        }
        let action = parse_action(l).with_context(|| format!("script.txt line {line}: {raw}"))?;
        steps.push(Step {
            line,
            text: l.to_owned(),
            action,
            sort,
        });
    }
    Ok(steps)
}

fn parse_action(l: &str) -> Result<Action> {
    if let Some(rest) = l.strip_prefix("@container ") {
        return Ok(Action::Container(rest.trim().to_owned()));
    }
    if let Some(rest) = l.strip_prefix("@disconnect ") {
        let w = split_words(rest)?;
        let [network, container] = w.as_slice() else {
            bail!("@disconnect NETWORK CONTAINER");
        };
        return Ok(Action::Disconnect {
            network: network.clone(),
            container: container.clone(),
        });
    }
    if let Some(rest) = l.strip_prefix("@rm ") {
        return Ok(Action::Remove(split_words(rest)?));
    }
    if let Some(rest) = l.strip_prefix("@mark ") {
        return Ok(Action::Mark(rest.trim().to_owned()));
    }
    if let Some(rest) = l.strip_prefix("api ") {
        let mut parts = rest.trim().splitn(3, ' ');
        let method = parts.next().context("api: no method")?.to_owned();
        let path = parts.next().context("api: no path")?.to_owned();
        let body = parts
            .next()
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty());
        return Ok(Action::Api { method, path, body });
    }
    let words = split_words(l)?;
    match words.split_first() {
        Some((first, rest)) if first == "docker" => Ok(Action::Docker(rest.to_vec())),
        _ => bail!("a step is `docker …`, `api …`, `@container …` or `@mark …`"),
    }
}

/// Splits like a POSIX shell: whitespace separates words, '…' is literal, "…" keeps
/// backslash escapes of `"` and `\`, a backslash outside quotes escapes the next character.
pub fn split_words(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => bail!("unterminated ' in {s:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => bail!("unterminated \" in {s:?}"),
                        },
                        Some(c) => cur.push(c),
                        None => bail!("unterminated \" in {s:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().context("trailing backslash")?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_steps() {
        assert_eq!(
            split_words(r#"a 'b c' "d \"e\"" f\ g ''"#).unwrap(),
            ["a", "b c", "d \"e\"", "f g", ""]
        );
        let steps = parse("# c\n\n[sort] docker network prune -f\napi POST /x {\"a\": 1}\n@mark t")
            .unwrap();
        assert!(steps[0].sort);
        assert_eq!(
            steps[0].action,
            Action::Docker(vec!["network".into(), "prune".into(), "-f".into()])
        );
        assert_eq!(
            steps[1].action,
            Action::Api {
                method: "POST".into(),
                path: "/x".into(),
                body: Some("{\"a\": 1}".into())
            }
        );
        assert_eq!(steps[2].action, Action::Mark("t".into()));
        assert!(parse("ls -l").is_err());
    }
}
