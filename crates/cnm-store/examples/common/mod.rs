//! What the latency examples share: one line of statistics per measurement.

use std::time::Duration;

/// Prints `name` (padded to `width`), the sample count, the two quantiles `(label, q)` and the
/// maximum of `samples`.
pub fn summary(name: &str, width: usize, quantiles: [(&str, f64); 2], mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let [(a, qa), (b, qb)] = quantiles;
    println!(
        "{name:<width$} n={:<5} {a} {:>9.3?}  {b} {:>9.3?}  max {:>9.3?}",
        samples.len(),
        pick(qa),
        pick(qb),
        pick(1.0)
    );
}
