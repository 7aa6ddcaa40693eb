//! `LatencyHistogram`: an HDR-style log-linear histogram of durations in nanoseconds. Values
//! below 128 ns get one bucket each; above, every power of two is cut into 128 equal buckets,
//! so a reported percentile is the upper edge of the bucket holding the true value: never
//! below it and at most 1/128 (0.78 %) above it. Min, max, count and mean are exact.

use std::time::Duration;

/// Bits of sub-bucket precision: 2^7 = 128 buckets per power of two.
const PRECISION_BITS: u32 = 7;
const SUB_BUCKETS: u64 = 1 << PRECISION_BITS;
/// Buckets needed to cover every `u64`.
const BUCKETS: usize = ((64 - PRECISION_BITS as usize) + 1) * SUB_BUCKETS as usize;

/// The relative resolution of a reported percentile (its worst-case overstatement).
pub const RELATIVE_RESOLUTION: f64 = 1.0 / SUB_BUCKETS as f64;

#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros(); // >= PRECISION_BITS
    let shift = msb - PRECISION_BITS;
    let mantissa = value >> shift; // in [SUB_BUCKETS, 2 * SUB_BUCKETS)
    ((u64::from(shift) + 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
}

/// The largest value that lands in bucket `index`.
fn bucket_upper(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let mantissa = SUB_BUCKETS + index % SUB_BUCKETS;
    let low = mantissa << shift;
    low.saturating_add((1_u64 << shift) - 1)
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn min_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min_ns)
    }

    pub fn max_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_ns)
    }

    pub fn mean_ns(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ns as f64 / self.count as f64)
    }

    /// The nearest-rank percentile `q` in `[0, 1]`: the value of the `ceil(q * count)`-th
    /// smallest sample (at least the first), reported as its bucket's upper edge and clamped to
    /// the exact maximum. `None` when empty.
    pub fn percentile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(index).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed check.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::load::rng::SplitMix64;

    /// The model: nearest rank over a sorted Vec.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn percentiles_match_a_sorted_vec_within_the_resolution() {
        let mut rng = SplitMix64::new(11);
        for &n in &[1_usize, 7, 100, 1000, 50_000] {
            let mut histogram = LatencyHistogram::new();
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                // Log-uniform from 1 ns to ~1 s, plus a few exact small values.
                let v = (rng.next_f64() * 30.0).exp2() as u64;
                values.push(v);
                histogram.record_ns(v);
            }
            values.sort_unstable();
            for &q in &[0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let truth = exact(&values, q);
                let got = histogram.percentile_ns(q).unwrap();
                assert!(got >= truth, "n={n} q={q}: {got} < {truth}");
                let slack = (truth as f64 * RELATIVE_RESOLUTION) as u64;
                assert!(
                    got <= truth + slack,
                    "n={n} q={q}: {got} > {truth} + {slack}"
                );
            }
            assert_eq!(histogram.min_ns(), values.first().copied());
            assert_eq!(histogram.max_ns(), values.last().copied());
            assert_eq!(histogram.percentile_ns(1.0), values.last().copied());
        }
    }

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        for index in 1..BUCKETS {
            let upper_prev = bucket_upper(index - 1);
            assert_eq!(bucket_of(upper_prev), index - 1);
            assert_eq!(bucket_of(upper_prev + 1), index, "index {index}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn empty_and_merged() {
        let mut a = LatencyHistogram::new();
        assert_eq!(a.percentile_ns(0.5), None);
        a.record(Duration::from_micros(100));
        let mut b = LatencyHistogram::new();
        b.record(Duration::from_micros(300));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.min_ns(), Some(100_000));
        assert_eq!(a.max_ns(), Some(300_000));
        assert_eq!(a.mean_ns(), Some(200_000.0));
    }
}
