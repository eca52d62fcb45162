//! Samples, their median and 95th percentile, and ratios between contenders.

use std::time::Duration;

/// What one contender measured in one scenario: median, p95 and how many samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median, in milliseconds.
    pub median_ms: f64,
    /// The 95th percentile (nearest rank), in milliseconds.
    pub p95_ms: f64,
    /// The number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarises durations; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_ms(&ms)
    }

    /// Summarises values already in milliseconds; `None` when there are none.
    pub fn of_ms(samples: &[f64]) -> Option<Summary> {
        Some(Summary {
            median_ms: median(samples)?,
            p95_ms: percentile(samples, 95.0)?,
            n: samples.len(),
        })
    }
}

/// The median; the mean of the two middle values for an even count. `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    let sorted = sorted(samples)?;
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// The `p`th percentile by nearest rank (the smallest sample with at least `p`% of the samples
/// at or below it), so it is always a value that was measured. `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let sorted = sorted(samples)?;
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// How many times slower `value` is than `baseline` (2.0: twice the time). `None` when the
/// baseline is zero or either is not a finite number.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (value.is_finite() && baseline.is_finite() && baseline > 0.0).then(|| value / baseline)
}

fn sorted(samples: &[f64]) -> Option<Vec<f64>> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn p95_is_the_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 95.0), Some(95.0));
        let twenty: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(percentile(&twenty, 95.0), Some(19.0));
        assert_eq!(percentile(&[5.0, 1.0, 9.0], 95.0), Some(9.0));
        assert_eq!(percentile(&[5.0], 95.0), Some(5.0));
        assert_eq!(percentile(&[], 95.0), None);
    }

    #[test]
    fn summary_of_durations_is_in_milliseconds() {
        let s = Summary::of(&[
            Duration::from_millis(2),
            Duration::from_millis(4),
            Duration::from_millis(3),
        ])
        .unwrap();
        assert_eq!(s.n, 3);
        assert!((s.median_ms - 3.0).abs() < 1e-9);
        assert!((s.p95_ms - 4.0).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn ratio_refuses_a_zero_baseline() {
        assert_eq!(ratio(6.0, 3.0), Some(2.0));
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
