//! Prometheus metrics in the text exposition format, written by hand (a handful of series):
//! request counts by route and status, object gauges, and an operation latency histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and histograms (gauges are read from the controller at scrape time).
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    operations: Mutex<BTreeMap<&'static str, Histogram>>,
}

/// The object counts a scrape reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Networks.
    pub networks: usize,
    /// Endpoints, over all networks.
    pub endpoints: usize,
    /// Sandboxes.
    pub sandboxes: usize,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &str, method: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
    }

    /// Records how long one operation (network create, connect, …) took.
    pub fn operation(&self, op: &'static str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut m = self
            .operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let h = m.entry(op).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The exposition text.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out, g);
        out
    }

    fn write(&self, out: &mut String, g: Gauges) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP cnmd_http_requests_total HTTP requests answered, by route, method and status."
        )?;
        writeln!(out, "# TYPE cnmd_http_requests_total counter")?;
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for ((route, method, status), n) in requests {
            writeln!(
                out,
                "cnmd_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(&route),
                escape(&method)
            )?;
        }
        for (name, help, v) in [
            ("cnmd_networks", "Networks.", g.networks),
            (
                "cnmd_endpoints",
                "Endpoints over all networks.",
                g.endpoints,
            ),
            ("cnmd_sandboxes", "Sandboxes.", g.sandboxes),
        ] {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} gauge")?;
            writeln!(out, "{name} {v}")?;
        }
        writeln!(
            out,
            "# HELP cnmd_operation_duration_seconds Time taken by mutating operations."
        )?;
        writeln!(out, "# TYPE cnmd_operation_duration_seconds histogram")?;
        let ops = self
            .operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (op, h) in ops {
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                writeln!(
                    out,
                    "cnmd_operation_duration_seconds_bucket{{operation=\"{op}\",le=\"{le}\"}} {n}"
                )?;
            }
            writeln!(
                out,
                "cnmd_operation_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            )?;
            writeln!(
                out,
                "cnmd_operation_duration_seconds_sum{{operation=\"{op}\"}} {}",
                h.sum
            )?;
            writeln!(
                out,
                "cnmd_operation_duration_seconds_count{{operation=\"{op}\"}} {}",
                h.count
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("/networks/{id}", "GET", 404);
        m.request("/networks/{id}", "GET", 404);
        m.request("we\"ird", "GET", 200);
        m.operation("network_create", Duration::from_millis(20));
        m.operation("network_create", Duration::from_secs(2));
        let text = m.render(Gauges {
            networks: 3,
            endpoints: 1,
            sandboxes: 2,
        });
        assert!(text.contains(
            "cnmd_http_requests_total{route=\"/networks/{id}\",method=\"GET\",status=\"404\"} 2"
        ));
        assert!(text.contains("route=\"we\\\"ird\""), "{text}");
        assert!(text.contains("cnmd_networks 3\n") && text.contains("cnmd_sandboxes 2\n"));
        assert!(text.contains(
            "cnmd_operation_duration_seconds_bucket{operation=\"network_create\",le=\"0.025\"} 1"
        ));
        assert!(text.contains(
            "cnmd_operation_duration_seconds_bucket{operation=\"network_create\",le=\"5\"} 2"
        ));
        assert!(
            text.contains("cnmd_operation_duration_seconds_count{operation=\"network_create\"} 2")
        );
    }
}
