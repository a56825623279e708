//! Summaries of repeated measurements.
use serde::Serialize;

/// Median, min and max of a set of samples (rounds of one metric and mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// Summary of `samples`; NaN samples (failed measurements) are left out. All NaN if empty.
    pub fn of(samples: &[f64]) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary { median: f64::NAN, min: f64::NAN, max: f64::NAN, n: 0 };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Summary { median, min: v[0], max: v[n - 1], n }
    }
}

/// The `p`-th percentile (0..=100) of `sorted` by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A two-sided confidence interval of a mean.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    /// Confidence level, e.g. 0.95.
    pub level: f64,
}

impl Interval {
    /// True if the whole interval is at or above `threshold` (a "higher is better" target met
    /// with this confidence). False when the interval is unknown (NaN).
    pub fn clears_above(&self, threshold: f64) -> bool {
        self.low >= threshold
    }

    /// True if the whole interval is at or below `threshold`.
    pub fn clears_below(&self, threshold: f64) -> bool {
        self.high <= threshold
    }
}

/// Two-sided 97.5% quantiles of Student's t for 1..=30 degrees of freedom.
const T_975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110,
    2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// The 97.5% quantile of Student's t with `df` degrees of freedom (the 95% two-sided factor);
/// beyond 30 the normal approximation with a 1/df correction (within 0.1% of the exact value).
pub fn t_975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T_975[df - 1],
        _ => 1.959964 + 2.37 / df as f64,
    }
}

/// The 95% confidence interval of the mean of `samples` by Student's t: mean ± t(n-1) s/√n.
/// NaN samples (failed measurements) are left out; with fewer than two samples the bounds are
/// NaN (unknown), so no target can be called met on one sample.
pub fn ci95(samples: &[f64]) -> Interval {
    let v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    let mean = if n == 0 { f64::NAN } else { v.iter().sum::<f64>() / n as f64 };
    if n < 2 {
        return Interval { mean, low: f64::NAN, high: f64::NAN, level: 0.95 };
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t_975(n - 1) * (var / n as f64).sqrt();
    Interval { mean, low: mean - half, high: mean + half, level: 0.95 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-3
    }

    #[test]
    fn ci95_of_known_samples() {
        // mean 2, s = 1, n = 3: half-width 4.303 / sqrt(3) = 2.4843.
        let i = ci95(&[1.0, 2.0, 3.0]);
        assert!(close(i.mean, 2.0) && close(i.low, -0.4843) && close(i.high, 4.4843), "{i:?}");
        // mean 1.2, s = 0.1, n = 5: half-width 2.776 * 0.1 / sqrt(5) = 0.12415.
        let i = ci95(&[1.1, 1.3, 1.2, 1.1, 1.3]);
        let s = (0.04f64 / 4.0).sqrt();
        assert!(close(s, 0.1), "sample standard deviation {s}");
        assert!(close(i.low, 1.2 - 0.12415) && close(i.high, 1.2 + 0.12415), "{i:?}");
        assert!(i.clears_above(1.05) && !i.clears_above(1.1), "1.0759 clears 1.05 but not 1.1");
        assert!(i.clears_below(1.33) && !i.clears_below(1.3), "1.3241 is below 1.33, not 1.3");
    }

    #[test]
    fn ci95_of_identical_samples_is_a_point() {
        let i = ci95(&[2.0, 2.0, 2.0, 2.0]);
        assert_eq!((i.low, i.mean, i.high), (2.0, 2.0, 2.0));
    }

    #[test]
    fn ci95_needs_two_finite_samples() {
        let i = ci95(&[1.5, f64::NAN]);
        assert_eq!(i.mean, 1.5);
        assert!(i.low.is_nan() && i.high.is_nan(), "one sample gives no interval: {i:?}");
        assert!(!i.clears_above(0.0) && !i.clears_below(10.0), "an unknown interval clears nothing");
        assert!(ci95(&[]).mean.is_nan());
        // NaN samples are left out: [1, 3] -> mean 2, s = sqrt(2), half-width 12.706.
        let i = ci95(&[1.0, f64::NAN, 3.0]);
        assert!(close(i.high - i.mean, 12.706), "{i:?}");
    }

    #[test]
    fn t_quantiles() {
        assert_eq!(t_975(2), 4.303);
        assert_eq!(t_975(30), 2.042);
        assert!((t_975(60) - 2.000).abs() < 0.002 && (t_975(120) - 1.980).abs() < 0.002);
        assert!(t_975(0).is_nan());
    }

    #[test]
    fn median_of_odd_and_even_sets() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]), Summary { median: 2.0, min: 1.0, max: 3.0, n: 3 });
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn failed_samples_are_left_out() {
        let s = Summary::of(&[f64::NAN, 5.0, 7.0]);
        assert_eq!((s.median, s.n), (6.0, 2));
        assert!(Summary::of(&[f64::NAN]).median.is_nan());
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
