//! Randomness for the load generator: `SplitMix64`, a tiny seeded PRNG (deterministic per seed,
//! statistically good enough to pick paths and shares, not for anything secret), `mix64` for
//! per-visitor decisions that must be stable, and `Zipf`, an inverse-CDF sampler of ranks
//! `0..n` with probability proportional to `1 / (rank + 1)^s`.

/// SplitMix64 (Steele, Lea, Flood 2014): one add and a 64-bit finaliser per number.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
    }

    /// A uniform index in `0..n` (`n > 0`), by multiply-shift (bias below 2^-32 for small n).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The SplitMix64 finaliser: a bijective mix of 64 bits, used to derive stable per-visitor
/// choices (bot or not, which User-Agent) from a visitor number.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `mix64(x)` as a uniform float in `[0, 1)`.
pub fn unit_from(x: u64) -> f64 {
    (mix64(x) >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
}

/// Zipf's law over ranks `0..n`: `P(rank k) = (k + 1)^-s / H(n, s)`. Sampling inverts the
/// cumulative distribution with a binary search: exact, `O(log n)`, `8n` bytes.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n >= 1` ranks with exponent `s >= 0` (0 is uniform).
    pub fn new(n: usize, s: f64) -> Result<Self, String> {
        if n == 0 {
            return Err("a Zipf distribution needs at least one rank".to_owned());
        }
        if !(s.is_finite() && s >= 0.0) {
            return Err(format!(
                "the Zipf exponent must be finite and >= 0, not {s}"
            ));
        }
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 0..n {
            total += ((k + 1) as f64).powf(-s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Ok(Self { cdf })
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The probability of rank `k` in theory.
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf.first().copied().unwrap_or(0.0),
            _ if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    /// A rank in `0..n`.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        // First rank whose cumulative probability exceeds u; rounding can leave the last
        // entry a hair under 1.0, hence the clamp.
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed check.
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn zipf_frequencies_are_ordered_and_close_to_theory() {
        let zipf = Zipf::new(10, 1.0).unwrap();
        let mut rng = SplitMix64::new(7);
        let samples = 1_000_000;
        let mut counts = [0_u64; 10];
        for _ in 0..samples {
            counts[zipf.sample(&mut rng)] += 1;
        }
        for k in 1..10 {
            assert!(counts[k - 1] > counts[k], "rank {k}: {counts:?}");
        }
        for (k, &count) in counts.iter().enumerate() {
            let p = zipf.probability(k);
            let expected = p * samples as f64;
            let sigma = (samples as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (count as f64 - expected).abs() < 5.0 * sigma,
                "rank {k}: {count} vs {expected:.0} ± {sigma:.0}"
            );
        }
        // H(10) = 2.928968...: rank 0 has probability 1 / H(10).
        assert!((zipf.probability(0) - 1.0 / 2.928_968_253_968_254).abs() < 1e-12);
    }

    #[test]
    fn zipf_with_exponent_zero_is_uniform_and_one_rank_is_constant() {
        let zipf = Zipf::new(4, 0.0).unwrap();
        for k in 0..4 {
            assert!((zipf.probability(k) - 0.25).abs() < 1e-12);
        }
        let one = Zipf::new(1, 1.3).unwrap();
        let mut rng = SplitMix64::new(1);
        assert!((0..1000).all(|_| one.sample(&mut rng) == 0));
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(3, f64::NAN).is_err());
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(3);
        assert!((0..10_000).all(|_| rng.below(7) < 7));
        let f = rng.next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
