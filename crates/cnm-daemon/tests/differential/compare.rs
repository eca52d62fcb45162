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
    /// `exit`, `stderr`, `stdout`, `content-type`, `newline`, or `json:PATH`.
    pub key: String,
    pub dockerd: String,
    pub cnmd: String,
}

pub fn compare(d: &Outcome, c: &Outcome, sort: bool) -> Vec<Diff> {
    let mut out = Vec::new();
    let mut push = |key: &str, a: String, b: String| {
        if a != b {
            out.push(Diff {
                key: key.to_owned(),
                dockerd: a,
                cnmd: b,
            });
        }
    };
    push("exit", d.code.to_string(), c.code.to_string());
    push("stderr", lines(&d.stderr, sort), lines(&c.stderr, sort));
    push(
        "content-type",
        d.content_type.clone().unwrap_or_default(),
        c.content_type.clone().unwrap_or_default(),
    );
    push(
        "newline",
        format!("{:?}", d.trailing_newline),
        format!("{:?}", c.trailing_newline),
    );
    match (as_json(&d.stdout, sort), as_json(&c.stdout, sort)) {
        (Some(a), Some(b)) => json_diff("json:", Some(&a), Some(&b), &mut out),
        _ => push("stdout", lines(&d.stdout, sort), lines(&c.stdout, sort)),
    }
    out
}

fn lines(s: &str, sort: bool) -> String {
    let mut v: Vec<&str> = s.lines().map(str::trim_end).collect();
    while v.last() == Some(&"") {
        v.pop();
    }
    if sort {
        v.sort_unstable();
    }
    v.join("\n")
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
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                json_diff(&format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
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
        assert_eq!(keys, ["json:[0].W", "json:[0].X.Y", "json:[0].Z[1]"]);
        let lines_d = Outcome {
            stdout: "b\na\n".into(),
            ..Default::default()
        };
        let lines_c = Outcome {
            stdout: "a\nb".into(),
            ..Default::default()
        };
        assert!(compare(&lines_d, &lines_c, true).is_empty());
        assert_eq!(compare(&lines_d, &lines_c, false)[0].key, "stdout");
    }
}
