//! `--compare OLD.json`: every figure of this run against the same figure of an older run
//! (two `latest.json` documents), and a FLAG on each scenario that got more than 20% slower.
//!
//! Which way is "slower" is read from the field's name: times and sizes (`*_ms`, `*_mb`) are
//! better lower, rates (`gbps`, `*_per_s`, `speedup`) better higher. A rate counts as 20%
//! slower when the same work takes 20% longer, that is when it fell below 1/1.2 of the old
//! one. Counts (`n`, `endpoints`) and p95s (too few samples in a short run to judge) are left
//! out. Figures that only one run has are listed, never flagged.

use std::fmt::Write as _;

use serde_json::Value;

/// How much slower a figure may get before it is flagged: 1.2 = 20%.
pub const DEFAULT_THRESHOLD: f64 = 1.2;

/// Which way a field is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, memory.
    Lower,
    /// Rates, throughput, speed-ups.
    Higher,
}

/// Whether a field is compared, and which way it is better.
pub fn direction(field: &str) -> Option<Better> {
    match field {
        "n" | "endpoints" | "p95_ms" => None,
        "gbps" | "direct_gbps" | "speedup" => Some(Better::Higher),
        f if f.ends_with("_per_s") => Some(Better::Higher),
        f if f.ends_with("_ms") || f.ends_with("_mb") || f.ends_with("_s") => Some(Better::Lower),
        _ => None,
    }
}

/// One figure in both runs (or in one of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Scenario, contender and field.
    pub scenario: String,
    /// Contender.
    pub contender: String,
    /// Field (`median_ms`, `gbps`, …).
    pub field: String,
    /// The old run's value.
    pub old: Option<f64>,
    /// This run's value.
    pub new: Option<f64>,
    /// How many times slower this run is (1.25: the work takes 25% longer); `None` when one
    /// side is missing or zero.
    pub slowdown: Option<f64>,
    /// Slower than the threshold allows.
    pub flagged: bool,
}

/// Every compared figure of `old` and `new` (two `latest.json` documents), in the new run's
/// order, then the figures only the old run had.
pub fn compare(old: &Value, new: &Value, threshold: f64) -> Vec<Change> {
    let old_figures = figures(old);
    let new_figures = figures(new);
    let mut out = Vec::new();
    for (key, n) in &new_figures {
        let o = old_figures.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        out.push(change(key, o, Some(*n), threshold));
    }
    for (key, o) in &old_figures {
        if !new_figures.iter().any(|(k, _)| k == key) {
            out.push(change(key, Some(*o), None, threshold));
        }
    }
    out
}

type Key = (String, String, String);

fn change(key: &Key, old: Option<f64>, new: Option<f64>, threshold: f64) -> Change {
    let slowdown = match (old, new, direction(&key.2)) {
        (Some(o), Some(n), Some(Better::Lower)) if o > 0.0 => Some(n / o),
        (Some(o), Some(n), Some(Better::Higher)) if n > 0.0 => Some(o / n),
        _ => None,
    };
    Change {
        scenario: key.0.clone(),
        contender: key.1.clone(),
        field: key.2.clone(),
        old,
        new,
        slowdown,
        flagged: slowdown.is_some_and(|s| s > threshold),
    }
}

/// The compared numeric fields of a document: (scenario, contender, field) → value.
fn figures(doc: &Value) -> Vec<(Key, f64)> {
    let mut out = Vec::new();
    let Some(scenarios) = doc["scenarios"].as_object() else {
        return out;
    };
    for (scenario, contenders) in scenarios {
        let Some(contenders) = contenders.as_object() else {
            continue;
        };
        for (contender, fields) in contenders {
            let Some(fields) = fields.as_object() else {
                continue;
            };
            for (field, value) in fields {
                if let (Some(v), Some(_)) = (value.as_f64(), direction(field)) {
                    out.push(((scenario.clone(), contender.clone(), field.clone()), v));
                }
            }
        }
    }
    out
}

/// The comparison as lines for the terminal: one per figure, a `FLAG` line per figure slower
/// than the threshold, and a summary line.
pub fn text(changes: &[Change], old_label: &str, threshold: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "compared with {old_label}:");
    let _ = writeln!(
        out,
        "  {:<26} {:<14} {:<16} {:>10} {:>10} {:>8}",
        "scenario", "contender", "field", "old", "new", "change"
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    for c in changes {
        let delta = match (c.old, c.new) {
            (Some(o), Some(n)) if o != 0.0 => format!("{:+.1}%", (n / o - 1.0) * 100.0),
            (None, Some(_)) => "new".into(),
            (Some(_), None) => "gone".into(),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<26} {:<14} {:<16} {:>10} {:>10} {:>8}",
            c.scenario,
            c.contender,
            c.field,
            num(c.old),
            num(c.new),
            delta
        );
    }
    let flagged: Vec<&Change> = changes.iter().filter(|c| c.flagged).collect();
    for c in &flagged {
        let _ = writeln!(
            out,
            "FLAG {} {} {}: {:.0}% slower ({} -> {})",
            c.scenario,
            c.contender,
            c.field,
            (c.slowdown.unwrap_or(1.0) - 1.0) * 100.0,
            num(c.old),
            num(c.new)
        );
    }
    let _ = writeln!(
        out,
        "{} of {} figures more than {:.0}% slower",
        flagged.len(),
        changes.len(),
        (threshold - 1.0) * 100.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(scenarios: Value) -> Value {
        json!({"machine": {}, "date": "2026-01-01T00:00:00Z", "command": "x", "scenarios": scenarios})
    }

    #[test]
    fn fields_are_judged_by_their_direction() {
        assert_eq!(direction("median_ms"), Some(Better::Lower));
        assert_eq!(direction("rss_mb"), Some(Better::Lower));
        assert_eq!(direction("gbps"), Some(Better::Higher));
        assert_eq!(direction("alloc_per_s"), Some(Better::Higher));
        assert_eq!(direction("speedup"), Some(Better::Higher));
        assert_eq!(direction("p95_ms"), None);
        assert_eq!(direction("n"), None);
        assert_eq!(direction("process"), None);
    }

    #[test]
    fn slower_by_more_than_the_threshold_is_flagged_both_ways() {
        let old = doc(json!({
            "attach": {"cnm": {"median_ms": 4.0, "p95_ms": 5.0, "n": 20},
                       "floor": {"median_ms": 2.0}},
            "detach": {"cnm": {"median_ms": 3.0}},
            "datapath-bridge": {"cnm": {"gbps": 30.0}},
            "ipam-v4-16": {"cnm": {"alloc_per_s": 1000.0}},
            "restart": {"cnm": {"median_ms": 500.0}},
        }));
        let new = doc(json!({
            "attach": {"cnm": {"median_ms": 5.0, "p95_ms": 50.0, "n": 3},
                       "floor": {"median_ms": 2.2}},
            "detach": {"cnm": {"median_ms": 2.0}},
            "datapath-bridge": {"cnm": {"gbps": 24.0}},
            "ipam-v4-16": {"cnm": {"alloc_per_s": 900.0}},
            "memory": {"cnm": {"rss_mb": 30.0}},
        }));
        let changes = compare(&old, &new, DEFAULT_THRESHOLD);
        let find = |s: &str, c: &str, f: &str| {
            changes
                .iter()
                .find(|x| x.scenario == s && x.contender == c && x.field == f)
                .unwrap_or_else(|| panic!("no {s}/{c}/{f} in {changes:?}"))
                .clone()
        };
        // 5 / 4 = 1.25 > 1.2: flagged; a p95 and a count are not compared at all.
        let attach = find("attach", "cnm", "median_ms");
        assert!(attach.flagged);
        assert!((attach.slowdown.unwrap() - 1.25).abs() < 1e-9);
        assert!(
            !changes
                .iter()
                .any(|c| c.field == "p95_ms" || c.field == "n")
        );
        // 2.2 / 2 = 1.1: within.
        assert!(!find("attach", "floor", "median_ms").flagged);
        // Faster is never flagged.
        assert!(!find("detach", "cnm", "median_ms").flagged);
        // 30 -> 24 Gbit/s: the same transfer takes 1.25x as long.
        assert!(find("datapath-bridge", "cnm", "gbps").flagged);
        // 1000 -> 900 per second: 1.11x.
        assert!(!find("ipam-v4-16", "cnm", "alloc_per_s").flagged);
        // Only in one run: listed, not flagged.
        let gone = find("restart", "cnm", "median_ms");
        assert_eq!(
            (gone.old, gone.new, gone.flagged),
            (Some(500.0), None, false)
        );
        let new_only = find("memory", "cnm", "rss_mb");
        assert_eq!(new_only.old, None);
        assert!(!new_only.flagged);

        let text = text(&changes, "old.json", DEFAULT_THRESHOLD);
        let flags: Vec<&str> = text.lines().filter(|l| l.starts_with("FLAG")).collect();
        assert_eq!(
            flags,
            [
                "FLAG attach cnm median_ms: 25% slower (4.000 -> 5.000)",
                "FLAG datapath-bridge cnm gbps: 25% slower (30.000 -> 24.000)",
            ]
        );
        assert!(text.contains("+25.0%"));
        assert!(
            text.ends_with("2 of 7 figures more than 20% slower\n"),
            "{text}"
        );
    }

    #[test]
    fn statuses_and_documents_without_scenarios_compare_to_nothing() {
        let old = doc(json!({"attach": {"docker": {"status": "not reachable"}}}));
        let new = json!({"unexpected": true});
        assert!(compare(&old, &new, DEFAULT_THRESHOLD).is_empty());
    }
}
