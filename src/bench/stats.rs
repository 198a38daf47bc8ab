//! Summary statistics for benchmark samples: mean and sample standard deviation (as
//! `llama-bench` reports them) and percentiles by linear interpolation between closest ranks
//! (numpy's default, also used by vLLM's serving benchmark).

use serde::Serialize;

/// Mean and sample standard deviation (divisor `n - 1`; 0 for fewer than two samples).
/// `(NaN, 0)` for no samples.
pub fn mean_stdev(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The `p`-th percentile (0 ≤ p ≤ 100) of samples sorted in ascending order: the value at rank
/// `p/100 · (n-1)`, interpolated linearly between its two neighbours. `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p / 100.0).clamp(0.0, 1.0) * last as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(last);
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Percentiles and mean of one measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Number of samples.
    pub count: usize,
}

impl Summary {
    /// Summarises samples in any order, ignoring NaNs; `None` when nothing is left.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        Some(Self {
            p50: percentile(&v, 50.0)?,
            p95: percentile(&v, 95.0)?,
            p99: percentile(&v, 99.0)?,
            mean: mean_stdev(&v).0,
            count: v.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!(close(percentile(&v, 50.0).unwrap(), 50.5));
        assert!(close(percentile(&v, 95.0).unwrap(), 95.05));
        assert!(close(percentile(&v, 99.0).unwrap(), 99.01));
        assert!(close(percentile(&v, 0.0).unwrap(), 1.0));
        assert!(close(percentile(&v, 100.0).unwrap(), 100.0));
        let v = [10.0, 20.0, 30.0, 40.0];
        assert!(close(percentile(&v, 50.0).unwrap(), 25.0));
        assert!(close(percentile(&v, 95.0).unwrap(), 38.5));
    }

    #[test]
    fn percentile_edge_cases() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 250.0), Some(2.0));
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn summary_sorts_its_input() {
        let s = Summary::of(&[5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.count, 5);
        assert!(close(s.p50, 3.0));
        assert!(close(s.p95, 4.8));
        assert!(close(s.mean, 3.0));
    }

    #[test]
    fn mean_and_sample_stdev() {
        let (m, s) = mean_stdev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!(close(m, 5.0));
        assert!(close(s, (32.0f64 / 7.0).sqrt()));
        assert_eq!(mean_stdev(&[3.0]), (3.0, 0.0));
        assert!(mean_stdev(&[]).0.is_nan());
    }
}
