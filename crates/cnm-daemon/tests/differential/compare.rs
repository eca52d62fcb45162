//! Comparing two normalised outcomes of one step: exit code (or HTTP status), stderr, and
//! stdout (or the body) — structurally, field by field, when both sides are JSON (one document
//! or one per line), as text otherwise.

use serde_json::Value;

/// What one step gave on one daemon, normalised.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The CLI's exit code, or the HTTP status.
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
    /// Raw API steps only: the content type, and whether the body ends with a newline.
    pub content_type: Option<String>,
    pub trailing_newline: Option<bool>,
}

/// One difference: a key the allow-list can name, and what each side had.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// `exit`, `content-type`, `newline`, `json:PATH` (an element of an array of named objects
    /// is `[NAME]`, others `[INDEX]`), or for text one line only one side has:
    /// `stdout-:LINE` (dockerd's), `stdout+:LINE` (cnmd's), and `stdout:order` when both have
    /// the same lines in another order; the same for `stderr`.
    pub key: String,
    pub dockerd: String,
    pub cnmd: String,
}

pub fn compare(d: &Outcome, c: &Outcome, sort: bool) -> Vec<Diff> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<Diff>, key: &str, a: String, b: String| {
        if a != b {
            out.push(Diff {
                key: key.to_owned(),
                dockerd: a,
                cnmd: b,
            });
        }
    };
    push(&mut out, "exit", d.code.to_string(), c.code.to_string());
    text_diff("stderr", &d.stderr, &c.stderr, sort, &mut out);
    push(
        &mut out,
        "content-type",
        d.content_type.clone().unwrap_or_default(),
        c.content_type.clone().unwrap_or_default(),
    );
    push(
        &mut out,
        "newline",
        format!("{:?}", d.trailing_newline),
        format!("{:?}", c.trailing_newline),
    );
    match (as_json(&d.stdout, sort), as_json(&c.stdout, sort)) {
        (Some(a), Some(b)) => json_diff("json:", Some(&a), Some(&b), &mut out),
        _ => text_diff("stdout", &d.stdout, &c.stdout, sort, &mut out),
    }
    out
}

fn lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().map(str::trim_end).collect();
    while v.last() == Some(&"") {
        v.pop();
    }
    v
}

/// Text compared line by line: each line only one side has is a difference of its own, so an
/// allowed line (dockerd's `host` network in a list) hides nothing else.
fn text_diff(what: &str, d: &str, c: &str, sort: bool, out: &mut Vec<Diff>) {
    let (a, b) = (lines(d), lines(c));
    let mut only_c: Vec<&str> = b.clone();
    let mut only_d = Vec::new();
    for l in &a {
        match only_c.iter().position(|x| x == l) {
            Some(i) => {
                only_c.remove(i);
            }
            None => only_d.push(*l),
        }
    }
    for l in only_d {
        out.push(Diff {
            key: format!("{what}-:{l}"),
            dockerd: l.to_owned(),
            cnmd: "(no such line)".to_owned(),
        });
    }
    for l in &only_c {
        out.push(Diff {
            key: format!("{what}+:{l}"),
            dockerd: "(no such line)".to_owned(),
            cnmd: (*l).to_owned(),
        });
    }
    if !sort && a.len() == b.len() && a != b && out.iter().all(|d| !d.key.starts_with(what)) {
        out.push(Diff {
            key: format!("{what}:order"),
            dockerd: a.join("\n"),
            cnmd: b.join("\n"),
        });
    }
}

/// One JSON document, or one per line (then an array); `None` for anything else.
fn as_json(s: &str, sort: bool) -> Option<Value> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    let mut v = match serde_json::from_str::<Value>(t) {
        Ok(v) if v.is_object() || v.is_array() => v,
        Ok(_) => return None,
        Err(_) => {
            let items: Option<Vec<Value>> = t
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).ok())
                .collect();
            Value::Array(items?)
        }
    };
    if sort {
        sort_json(&mut v);
    }
    Some(v)
}

/// Sorts arrays (by their elements' `Name` when they have one, else by their text): for
/// answers dockerd builds by iterating a Go map.
fn sort_json(v: &mut Value) {
    match v {
        Value::Array(items) => {
            for i in items.iter_mut() {
                sort_json(i);
            }
            items.sort_by_key(|i| match i.get("Name") {
                Some(n) => n.to_string(),
                None => i.to_string(),
            });
        }
        Value::Object(m) => m.values_mut().for_each(sort_json),
        _ => {}
    }
}

fn find<'a>(v: &[(&str, &'a Value)], n: &str) -> Option<&'a Value> {
    v.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
}

fn named_diff(path: &str, x: &[(&str, &Value)], y: &[(&str, &Value)], out: &mut Vec<Diff>) {
    let mut names: Vec<&str> = x.iter().chain(y).map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    for n in names {
        json_diff(&format!("{path}[{n}]"), find(x, n), find(y, n), out);
    }
    // The order of the names both have.
    let both = |a: &[(&str, &Value)], b: &[(&str, &Value)]| -> Vec<String> {
        a.iter()
            .filter(|(n, _)| find(b, n).is_some())
            .map(|(n, _)| (*n).to_owned())
            .collect()
    };
    let (ox, oy) = (both(x, y), both(y, x));
    if ox != oy {
        out.push(Diff {
            key: format!("{path}:order"),
            dockerd: ox.join(" "),
            cnmd: oy.join(" "),
        });
    }
}

/// The elements by their `Name`, when every element is an object with a distinct one.
fn named(v: &[Value]) -> Option<Vec<(&str, &Value)>> {
    if v.is_empty() {
        return None;
    }
    let out: Vec<(&str, &Value)> = v
        .iter()
        .map(|e| e.get("Name").and_then(Value::as_str).map(|n| (n, e)))
        .collect::<Option<_>>()?;
    let mut names: Vec<&str> = out.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    (names.len() == out.len()).then_some(out)
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".to_owned(),
        Some(v) => v.to_string(),
    }
}

fn json_diff(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Diff>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path == "json:" {
                    format!("json:{k}")
                } else {
                    format!("{path}.{k}")
                };
                json_diff(&p, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => match (named(x), named(y)) {
            // Lists of networks: element by name, so one missing network is one difference.
            (Some(nx), Some(ny)) => named_diff(path, &nx, &ny, out),
            _ => {
                for i in 0..x.len().max(y.len()) {
                    json_diff(&format!("{path}[{i}]"), x.get(i), y.get(i), out);
                }
            }
        },
        (a, b) if a == b => {}
        (a, b) => out.push(Diff {
            key: path.to_owned(),
            dockerd: show(a),
            cnmd: show(b),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_compared_by_field() {
        let d = Outcome {
            stdout: r#"[{"Name":"a","X":{"Y":1},"Z":[1,2]}]"#.into(),
            ..Default::default()
        };
        let c = Outcome {
            stdout: r#"[{"X":{"Y":2},"Name":"a","Z":[1],"W":null}]"#.into(),
            ..Default::default()
        };
        let keys: Vec<String> = compare(&d, &c, false).into_iter().map(|d| d.key).collect();
        assert_eq!(keys, ["json:[a].W", "json:[a].X.Y", "json:[a].Z[1]"]);
        let lines_d = Outcome {
            stdout: "b\na\n".into(),
            ..Default::default()
        };
        let lines_c = Outcome {
            stdout: "a\nb".into(),
            ..Default::default()
        };
        assert!(compare(&lines_d, &lines_c, true).is_empty());
        assert_eq!(compare(&lines_d, &lines_c, false)[0].key, "stdout:order");
        let more = Outcome {
            stdout: "a\nhost\nb\n".into(),
            ..Default::default()
        };
        let keys: Vec<String> = compare(&more, &lines_c, false)
            .into_iter()
            .map(|d| d.key)
            .collect();
        assert_eq!(keys, ["stdout-:host"]);
    }
}
