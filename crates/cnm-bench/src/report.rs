//! The results: the JSON written to `target/bench/latest.json`, the table, and the targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use crate::stats::{Summary, ratio};
use crate::{docker, overlay};

/// cnm's own scenarios, in the order they run and print.
const CORE: &[&str] = &[
    "attach",
    "detach",
    "ports100-setup",
    "ports100-teardown",
    "ports1000range-setup",
    "ports1000range-teardown",
    "scale-attach-1",
    "scale-attach-100",
    "scale-attach-500",
    "scale-attach-1000",
    "scale-network-1",
    "scale-network-200",
    "parallel32",
    "ipam-v4-16",
    "ipam-v6-64",
    "ipam-memory-1m-v6",
    "datapath-bridge",
    "datapath-published",
    "restart",
    "memory",
];

/// Every scenario, in the order they run and print: cnm's own, then the `docker-*` and the
/// `overlay-*` groups.
pub static SCENARIOS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| [CORE, &docker::SCENARIOS, &overlay::SCENARIOS].concat());

/// Every contender, in the order they print.
pub const CONTENDERS: &[&str] = &[
    "cnm",
    "cnm-memory",
    "cnm-cli",
    "cnmd",
    "floor",
    "floor-durable",
    "ip-batch",
    "netavark-1.4",
    "netavark",
    "cni",
    "docker",
];

/// What one contender got in one scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Timed samples, with extra fields (for example a throughput or a ratio it was built from).
    Timed(Summary, Map<String, Value>),
    /// Values that are not durations (rates, bytes), as named fields.
    Values(Map<String, Value>),
    /// Why there is no measurement: "not installed", "not reachable", "not available: …",
    /// "failed: …".
    Status(String),
}

impl Outcome {
    /// Timed samples without extra fields.
    pub fn timed(summary: Summary) -> Outcome {
        Outcome::Timed(summary, Map::new())
    }

    /// The median in milliseconds, if timed.
    pub fn median_ms(&self) -> Option<f64> {
        match self {
            Outcome::Timed(s, _) => Some(s.median_ms),
            _ => None,
        }
    }

    /// A named numeric field (`median_ms`, `p95_ms`, or an extra/value field).
    pub fn field(&self, name: &str) -> Option<f64> {
        match (self, name) {
            (Outcome::Timed(s, _), "median_ms") => Some(s.median_ms),
            (Outcome::Timed(s, _), "p95_ms") => Some(s.p95_ms),
            (Outcome::Timed(_, extra), _) | (Outcome::Values(extra), _) => {
                extra.get(name).and_then(Value::as_f64)
            }
            (Outcome::Status(_), _) => None,
        }
    }

    /// The JSON form: `{"median_ms", "p95_ms", "n", …extra}`, the values, or `{"status"}`.
    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Timed(s, extra) => {
                let mut m = Map::new();
                m.insert("median_ms".into(), json!(round3(s.median_ms)));
                m.insert("p95_ms".into(), json!(round3(s.p95_ms)));
                m.insert("n".into(), json!(s.n));
                for (k, v) in extra {
                    m.insert(k.clone(), v.clone());
                }
                Value::Object(m)
            }
            Outcome::Values(values) => Value::Object(values.clone()),
            Outcome::Status(status) => json!({ "status": status }),
        }
    }
}

/// Three decimals are plenty for milliseconds and keep the JSON readable.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// All results of one run.
#[derive(Debug, Default)]
pub struct Report {
    /// Scenario → contender → outcome.
    pub scenarios: BTreeMap<String, BTreeMap<String, Outcome>>,
}

impl Report {
    /// Records one outcome (a later one for the same pair replaces the earlier).
    pub fn set(&mut self, scenario: &str, contender: &str, outcome: Outcome) {
        self.scenarios
            .entry(scenario.to_owned())
            .or_default()
            .insert(contender.to_owned(), outcome);
    }

    /// The outcome of one pair.
    pub fn get(&self, scenario: &str, contender: &str) -> Option<&Outcome> {
        self.scenarios.get(scenario)?.get(contender)
    }

    /// The document written to `latest.json`.
    pub fn to_json(&self, machine: Value, date: &str, command: &str) -> Value {
        let scenarios: Map<String, Value> = self
            .scenarios
            .iter()
            .map(|(name, contenders)| {
                let inner: Map<String, Value> = contenders
                    .iter()
                    .map(|(c, o)| (c.clone(), o.to_json()))
                    .collect();
                (name.clone(), Value::Object(inner))
            })
            .collect();
        let targets: Vec<Value> = targets(self)
            .into_iter()
            .map(|t| json!({"target": t.name, "verdict": t.verdict.word(), "detail": t.detail}))
            .collect();
        json!({
            "machine": machine,
            "date": date,
            "command": command,
            "scenarios": scenarios,
            "targets": targets,
        })
    }

    /// The table: one row per scenario and contender, with the ratio to cnm's median.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<26} {:<13} {:>10} {:>10} {:>6} {:>9}  notes",
            "scenario", "contender", "median ms", "p95 ms", "n", "x cnm"
        );
        for scenario in self.ordered_scenarios() {
            let Some(contenders) = self.scenarios.get(scenario) else {
                continue;
            };
            // With `--store memory` the library contender is `cnm-memory`.
            let cnm = contenders
                .get("cnm")
                .or_else(|| contenders.get("cnm-memory"))
                .and_then(Outcome::median_ms);
            for contender in ordered(contenders.keys()) {
                let outcome = &contenders[contender];
                let line = match outcome {
                    Outcome::Timed(s, extra) => {
                        let r = cnm
                            .and_then(|base| ratio(s.median_ms, base))
                            .map(|r| format!("{r:.2}"))
                            .unwrap_or_else(|| "-".into());
                        format!(
                            "{:>10.3} {:>10.3} {:>6} {:>9}  {}",
                            s.median_ms,
                            s.p95_ms,
                            s.n,
                            r,
                            fields(extra)
                        )
                    }
                    Outcome::Values(values) => {
                        format!(
                            "{:>10} {:>10} {:>6} {:>9}  {}",
                            "",
                            "",
                            "",
                            "",
                            fields(values)
                        )
                    }
                    Outcome::Status(status) => format!("{:>10}  {status}", "-"),
                };
                let _ = writeln!(out, "{scenario:<26} {contender:<13} {line}");
            }
        }
        out
    }

    fn ordered_scenarios(&self) -> Vec<&str> {
        let mut names: Vec<&str> = SCENARIOS
            .iter()
            .copied()
            .filter(|s| self.scenarios.contains_key(*s))
            .collect();
        names.extend(
            self.scenarios
                .keys()
                .map(String::as_str)
                .filter(|s| !SCENARIOS.contains(s)),
        );
        names
    }
}

/// Contender names in the canonical order, unknown ones last.
fn ordered<'a>(names: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    let mut v: Vec<&str> = names.map(String::as_str).collect();
    v.sort_by_key(|n| CONTENDERS.iter().position(|c| c == n).unwrap_or(usize::MAX));
    v
}

fn fields(m: &Map<String, Value>) -> String {
    m.iter()
        .map(|(k, v)| match (v.as_f64(), v.as_object()) {
            (Some(f), _) if f.fract() != 0.0 => format!("{k}={f:.3}"),
            // `breakdown_ms`: its phases in a row, `kernel=1.2 firewall=0.4 …`.
            (_, Some(inner)) => format!("{k}: {}", fields(inner)),
            _ => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a target was met.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Met.
    Met,
    /// Missed.
    Missed,
    /// Not measured in this run (a peer missing, a scenario not selected).
    Unknown,
}

impl Verdict {
    /// The word printed and written to JSON.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::Unknown => "not measured",
        }
    }
}

/// One target and how this run did against it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetResult {
    /// What the target says.
    pub name: &'static str,
    /// Met, missed or unknown.
    pub verdict: Verdict,
    /// The numbers behind the verdict.
    pub detail: String,
}

/// A target comparing `a` to `b` (each a scenario, contender and field): met when a/b ≤ `max`
/// (or ≥ `min`).
struct Compare {
    name: &'static str,
    a: (&'static str, &'static str, &'static str),
    b: (&'static str, &'static str, &'static str),
    bound: Bound,
}

enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

const COMPARISONS: &[Compare] = &[
    Compare {
        name: "attach <= 1.2x floor-durable",
        a: ("attach", "cnm", "median_ms"),
        b: ("attach", "floor-durable", "median_ms"),
        bound: Bound::AtMost(1.2),
    },
    Compare {
        name: "attach, store in memory, <= 1.3x the floor",
        a: ("attach", "cnm-memory", "median_ms"),
        b: ("attach", "floor", "median_ms"),
        bound: Bound::AtMost(1.3),
    },
    Compare {
        name: "attach >= 4x faster than netavark (nftables)",
        a: ("attach", "netavark", "median_ms"),
        b: ("attach", "cnm", "median_ms"),
        bound: Bound::AtLeast(4.0),
    },
    Compare {
        name: "attach >= 10x faster than docker",
        a: ("attach", "docker", "median_ms"),
        b: ("attach", "cnm", "median_ms"),
        bound: Bound::AtLeast(10.0),
    },
    Compare {
        name: "1000th attach <= 1.2x the 1st",
        a: ("scale-attach-1000", "cnm", "median_ms"),
        b: ("scale-attach-1", "cnm", "median_ms"),
        bound: Bound::AtMost(1.2),
    },
    Compare {
        name: "data path >= 95% of hand-wired",
        a: ("datapath-bridge", "cnm", "gbps"),
        b: ("datapath-bridge", "ip-batch", "gbps"),
        bound: Bound::AtLeast(0.95),
    },
    Compare {
        name: "published port >= 90% of direct",
        a: ("datapath-published", "cnm", "gbps"),
        b: ("datapath-published", "cnm", "direct_gbps"),
        bound: Bound::AtLeast(0.90),
    },
];

/// A target on one value: met when it is ≤ or ≥ a bound.
struct Absolute {
    name: &'static str,
    at: (&'static str, &'static str, &'static str),
    bound: Bound,
}

const ABSOLUTES: &[Absolute] = &[
    Absolute {
        name: "100 ports set up in <= 20 ms",
        at: ("ports100-setup", "cnm", "median_ms"),
        bound: Bound::AtMost(20.0),
    },
    Absolute {
        name: "100 ports torn down in <= 20 ms",
        at: ("ports100-teardown", "cnm", "median_ms"),
        bound: Bound::AtMost(20.0),
    },
    Absolute {
        name: "32 parallel attaches >= 1.5x faster than serial",
        at: ("parallel32", "cnm", "speedup"),
        bound: Bound::AtLeast(1.5),
    },
    Absolute {
        name: "controller with 1000 endpoints/ports < 30 MB RSS",
        at: ("memory", "cnm", "rss_mb"),
        bound: Bound::AtMost(30.0),
    },
];

impl Bound {
    fn holds(&self, v: f64) -> bool {
        match *self {
            Bound::AtMost(max) => v <= max,
            Bound::AtLeast(min) => v >= min,
        }
    }
    fn text(&self) -> String {
        match *self {
            Bound::AtMost(max) => format!("<= {max}"),
            Bound::AtLeast(min) => format!(">= {min}"),
        }
    }
}

/// Every target, judged against the report.
pub fn targets(report: &Report) -> Vec<TargetResult> {
    let value = |(s, c, f): (&str, &str, &str)| report.get(s, c).and_then(|o| o.field(f));
    let mut out = Vec::new();
    for t in COMPARISONS {
        let (verdict, detail) = match (value(t.a), value(t.b)) {
            (Some(a), Some(b)) => match ratio(a, b) {
                Some(r) => (
                    if t.bound.holds(r) {
                        Verdict::Met
                    } else {
                        Verdict::Missed
                    },
                    format!(
                        "{}/{}.{} = {a:.3}/{b:.3} = {r:.2} (want {})",
                        t.a.1,
                        t.b.1,
                        t.a.2,
                        t.bound.text()
                    ),
                ),
                None => (Verdict::Unknown, "zero baseline".into()),
            },
            _ => (
                Verdict::Unknown,
                format!("needs {}/{} and {}/{}", t.a.0, t.a.1, t.b.0, t.b.1),
            ),
        };
        out.push(TargetResult {
            name: t.name,
            verdict,
            detail,
        });
    }
    for t in ABSOLUTES {
        let (verdict, detail) = match value(t.at) {
            Some(v) => (
                if t.bound.holds(v) {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
                format!(
                    "{}/{} {} = {v:.3} (want {})",
                    t.at.0,
                    t.at.1,
                    t.at.2,
                    t.bound.text()
                ),
            ),
            None => (Verdict::Unknown, format!("needs {}/{}", t.at.0, t.at.1)),
        };
        out.push(TargetResult {
            name: t.name,
            verdict,
            detail,
        });
    }
    out
}

/// The targets as lines for the terminal.
pub fn targets_text(report: &Report) -> String {
    let mut out = String::new();
    for t in targets(report) {
        let _ = writeln!(out, "{:<13} {:<52} {}", t.verdict.word(), t.name, t.detail);
    }
    out
}

/// The current time as RFC 3339 UTC (`2025-01-31T12:00:00Z`), without a date crate.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC (Howard Hinnant's days-to-civil algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(median: f64) -> Outcome {
        Outcome::timed(Summary {
            median_ms: median,
            p95_ms: median * 2.0,
            n: 10,
        })
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut r = Report::default();
        r.set("attach", "cnm", timed(4.0));
        r.set(
            "attach",
            "netavark",
            Outcome::Status("not installed".into()),
        );
        let mut values = Map::new();
        values.insert("gbps".into(), json!(20.5));
        r.set("datapath-bridge", "cnm", Outcome::Values(values));
        let doc = r.to_json(
            json!({"cpus": 2}),
            "2025-01-01T00:00:00Z",
            "cargo xtask bench",
        );
        assert_eq!(doc["machine"]["cpus"], 2);
        assert_eq!(doc["date"], "2025-01-01T00:00:00Z");
        assert_eq!(doc["command"], "cargo xtask bench");
        let cnm = &doc["scenarios"]["attach"]["cnm"];
        assert_eq!(cnm["median_ms"], 4.0);
        assert_eq!(cnm["p95_ms"], 8.0);
        assert_eq!(cnm["n"], 10);
        assert_eq!(
            doc["scenarios"]["attach"]["netavark"],
            json!({"status": "not installed"})
        );
        assert_eq!(doc["scenarios"]["datapath-bridge"]["cnm"]["gbps"], 20.5);
        assert!(doc["targets"].as_array().is_some_and(|t| !t.is_empty()));
    }

    #[test]
    fn targets_compare_ratios_and_absolutes() {
        let mut r = Report::default();
        r.set("attach", "cnm", timed(4.0));
        r.set("attach", "floor", timed(3.5));
        r.set("attach", "floor-durable", timed(3.0));
        r.set("attach", "cnm-memory", timed(4.5));
        r.set("attach", "netavark", timed(12.0));
        r.set("ports100-setup", "cnm", timed(25.0));
        let results = targets(&r);
        let verdict = |name: &str| {
            results
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.verdict.clone())
                .unwrap()
        };
        // 4 / 3 = 1.33 > 1.2
        assert_eq!(verdict("attach <= 1.2x floor-durable"), Verdict::Missed);
        // 4.5 / 3.5 = 1.29 <= 1.3
        assert_eq!(
            verdict("attach, store in memory, <= 1.3x the floor"),
            Verdict::Met
        );
        // 12 / 4 = 3 < 4
        assert_eq!(
            verdict("attach >= 4x faster than netavark (nftables)"),
            Verdict::Missed
        );
        assert_eq!(
            verdict("attach >= 10x faster than docker"),
            Verdict::Unknown
        );
        assert_eq!(verdict("100 ports set up in <= 20 ms"), Verdict::Missed);
    }

    #[test]
    fn table_shows_ratios_to_cnm_and_statuses() {
        let mut r = Report::default();
        r.set("attach", "floor", timed(2.0));
        r.set("attach", "cnm", timed(4.0));
        r.set("attach", "docker", Outcome::Status("not reachable".into()));
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].contains("cnm") && lines[1].contains("1.00"));
        assert!(lines[2].contains("floor") && lines[2].contains("0.50"));
        assert!(lines[3].contains("docker") && lines[3].contains("not reachable"));
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }
}
