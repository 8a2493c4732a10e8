//! Which key each operation touches: [`KeyDistribution`], uniform or
//! Zipfian over `keys` keys numbered from 0, and [`Zipf`], the sampler
//! behind the skewed one.
//!
//! Key 0 is the hottest under Zipf. Keys are numbers here; a workload turns
//! a number into the bytes it sends, and the server hashes those onto its
//! ring, so hot keys do not sit next to each other on the ring even though
//! their numbers do.

use rand::{Rng, RngExt};

use crate::error::BenchError;

/// The most keys a distribution spans: far more than any cluster here
/// holds, and small enough that key numbers convert to `f64` exactly.
pub const KEYS_MAX: u64 = 1 << 40;
/// The largest Zipf exponent accepted; beyond it nearly every draw is key 0.
pub const ZIPF_THETA_MAX: f64 = 10.0;

/// How operations pick their keys.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform {
        /// How many keys: numbers `0..keys`.
        keys: u64,
    },
    /// Key `k` (from 0) drawn with probability proportional to
    /// `1 / (k + 1)^theta`, like YCSB's `zipfian` (theta 0.99).
    Zipf(Zipf),
}

impl KeyDistribution {
    /// The uniform distribution over `keys` keys.
    pub fn uniform(keys: u64) -> Result<KeyDistribution, BenchError> {
        check_keys(keys)?;
        Ok(KeyDistribution::Uniform { keys })
    }

    /// The Zipf distribution of exponent `theta` over `keys` keys.
    pub fn zipf(keys: u64, theta: f64) -> Result<KeyDistribution, BenchError> {
        Zipf::new(keys, theta).map(KeyDistribution::Zipf)
    }

    /// How many keys the distribution spans.
    pub fn keys(&self) -> u64 {
        match self {
            KeyDistribution::Uniform { keys } => *keys,
            KeyDistribution::Zipf(zipf) => zipf.keys(),
        }
    }

    /// The distribution's name as the CLI spells it (`uniform`, `zipf`).
    pub fn name(&self) -> &'static str {
        match self {
            KeyDistribution::Uniform { .. } => "uniform",
            KeyDistribution::Zipf(_) => "zipf",
        }
    }

    /// The Zipf exponent, if the distribution is Zipfian.
    pub fn zipf_theta(&self) -> Option<f64> {
        match self {
            KeyDistribution::Uniform { .. } => None,
            KeyDistribution::Zipf(zipf) => Some(zipf.theta()),
        }
    }

    /// Draws one key number, below [`KeyDistribution::keys`].
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeyDistribution::Uniform { keys } => rng.random_range(0..*keys),
            KeyDistribution::Zipf(zipf) => zipf.sample(rng),
        }
    }
}

fn check_keys(keys: u64) -> Result<(), BenchError> {
    if keys == 0 || keys > KEYS_MAX {
        return Err(BenchError::InvalidPlan(format!(
            "--keys must be from 1 to {KEYS_MAX}, not {keys}"
        )));
    }
    Ok(())
}

/// A Zipf sampler by rejection-inversion (W. Hörmann and G. Derflinger,
/// "Rejection-inversion to generate variates from monotone discrete
/// distributions", ACM TOMACS 6(3), 1996), the method Apache Commons RNG
/// and `rand_distr` use.
///
/// Why this method and not a table of the CDF: it takes O(1) memory and
/// O(1) expected time for any number of keys, where a table over a
/// billion keys would take 8 GB; and it is exact, not an approximation
/// like YCSB's closed-form generator.
///
/// The method works on ranks `1..=n` with the hat function
/// `h(x) = x^-theta`: it draws `u` uniformly under the integral of the hat
/// over `[1.5, n + 0.5]`, inverts the integral to a point `x`, rounds it
/// to the rank `k`, and accepts `k` when `u` falls under the part of the
/// hat that belongs to `k`'s true probability mass. The acceptance rate is
/// above 90% for every exponent, so a draw costs about one `exp` and one
/// `ln`.
#[derive(Clone, Debug, PartialEq)]
pub struct Zipf {
    keys: u64,
    theta: f64,
    /// `H(1.5) - 1`: the upper end of the sampled interval (`H` decreases).
    h_integral_x1: f64,
    /// `H(n + 0.5)`: the lower end.
    h_integral_n: f64,
    /// The squeeze: a rank within this distance of its inverse is accepted
    /// without evaluating the hat.
    squeeze: f64,
}

impl Zipf {
    /// A sampler over `keys` keys with exponent `theta` (`0 < theta <=
    /// 10`).
    pub fn new(keys: u64, theta: f64) -> Result<Zipf, BenchError> {
        check_keys(keys)?;
        if !(theta > 0.0 && theta <= ZIPF_THETA_MAX) {
            return Err(BenchError::InvalidPlan(format!(
                "--zipf-theta must be above 0 and at most {ZIPF_THETA_MAX}, not {theta}"
            )));
        }
        let mut zipf = Zipf {
            keys,
            theta,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            squeeze: 0.0,
        };
        // `keys` is at most 2^40, so it converts to f64 exactly.
        let n = keys as f64;
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(n + 0.5);
        zipf.squeeze = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        Ok(zipf)
    }

    /// How many keys the sampler spans.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// The exponent.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// Draws one key number in `0..keys`; key 0 is the most likely.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let n = self.keys as f64;
        loop {
            let uniform: f64 = rng.random();
            // `u` runs from H(n + 0.5) up to H(1.5) - 1: the area under
            // the hat, with rank 1's mass (h(1) = 1) as the top unit.
            let u = self.h_integral_n + uniform * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, n);
            // Accept at once inside the squeeze; otherwise only when `u`
            // lies under the hat's share that equals k's probability.
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                // `k` is a whole number in 1..=n, so the cast is exact.
                return k as u64 - 1;
            }
        }
    }

    /// The hat: `x^-theta`.
    fn h(&self, x: f64) -> f64 {
        (-self.theta * x.ln()).exp()
    }

    /// `H(x) = (x^(1-theta) - 1) / (1 - theta)`, the hat's integral from 1,
    /// written so it stays accurate as theta approaches 1 (where it tends
    /// to `ln x`).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        expm1_over_x((1.0 - self.theta) * log_x) * log_x
    }

    /// The inverse of [`Zipf::h_integral`].
    fn h_integral_inverse(&self, x: f64) -> f64 {
        // Rounding can push `t` just below -1, where ln(1 + t) is
        // undefined; -1 is the true bound.
        let t = (x * (1.0 - self.theta)).max(-1.0);
        (ln1p_over_x(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, with its Taylor series near 0 where the quotient
/// loses precision (its limit at 0 is 1).
fn ln1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, with its Taylor series near 0 (its limit at 0 is 1).
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// Draws `samples` keys and counts how often each key came up.
    fn histogram(distribution: &KeyDistribution, samples: usize, seed: u64) -> Vec<u64> {
        let keys = usize::try_from(distribution.keys()).expect("a test's key count fits usize");
        let mut counts = vec![0u64; keys];
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..samples {
            let key = distribution.sample(&mut rng);
            let key = usize::try_from(key).expect("a test's key count fits usize");
            counts[key] += 1;
        }
        counts
    }

    /// Pearson's chi-square statistic of `counts` against `probabilities`.
    fn chi_square(counts: &[u64], probabilities: &[f64]) -> f64 {
        let total: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probabilities)
            .map(|(&observed, &p)| {
                let expected = p * total as f64;
                (observed as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    /// The exact Zipf law: `P(k) = (k + 1)^-theta / sum`.
    fn zipf_law(keys: usize, theta: f64) -> Vec<f64> {
        let weights: Vec<f64> = (1..=keys).map(|k| (k as f64).powf(-theta)).collect();
        let sum: f64 = weights.iter().sum();
        weights.into_iter().map(|w| w / sum).collect()
    }

    /// The chi-square critical value at p = 0.001 for 99 degrees of
    /// freedom (100 keys): a correct sampler exceeds it once in a thousand
    /// seeds, and the seeds here are fixed.
    const CHI_SQUARE_99_DF_P001: f64 = 148.23;

    #[test]
    fn zipf_frequencies_follow_the_law() {
        // YCSB's 0.99, the exponent 1 where the integral's formula changes
        // form, and a steep and a gentle one.
        for theta in [0.99, 1.0, 1.5, 0.5] {
            let zipf = KeyDistribution::zipf(100, theta).expect("valid parameters");
            let counts = histogram(&zipf, 200_000, 7);
            let statistic = chi_square(&counts, &zipf_law(100, theta));
            assert!(
                statistic < CHI_SQUARE_99_DF_P001,
                "theta {theta}: chi-square {statistic:.1} over 99 degrees of freedom"
            );
            // The law's shape, checked directly: the hottest key is drawn
            // about 2^theta times as often as the second.
            let ratio = counts[0] as f64 / counts[1] as f64;
            let expected = 2f64.powf(theta);
            assert!(
                (ratio / expected - 1.0).abs() < 0.05,
                "theta {theta}: key 0 / key 1 = {ratio:.3}, law says {expected:.3}"
            );
        }
    }

    #[test]
    fn zipf_is_deterministic_for_a_seed() {
        let zipf = KeyDistribution::zipf(1_000, 0.99).expect("valid parameters");
        assert_eq!(histogram(&zipf, 10_000, 3), histogram(&zipf, 10_000, 3));
        assert_ne!(histogram(&zipf, 10_000, 3), histogram(&zipf, 10_000, 4));
    }

    #[test]
    fn zipf_stays_in_range_at_the_extremes() {
        let one = KeyDistribution::zipf(1, 0.99).expect("valid parameters");
        assert!(
            histogram(&one, 1_000, 1)
                .iter()
                .all(|&count| count == 1_000)
        );
        let huge = Zipf::new(KEYS_MAX, 0.99).expect("valid parameters");
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..10_000 {
            assert!(huge.sample(&mut rng) < KEYS_MAX);
        }
        let steep = KeyDistribution::zipf(10, ZIPF_THETA_MAX).expect("valid parameters");
        let counts = histogram(&steep, 10_000, 2);
        assert!(
            counts[0] > 9_900,
            "theta 10 draws nearly only key 0: {counts:?}"
        );
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let uniform = KeyDistribution::uniform(100).expect("valid parameters");
        let counts = histogram(&uniform, 200_000, 11);
        assert!(counts.iter().all(|&count| count > 0), "every key is drawn");
        let statistic = chi_square(&counts, &[0.01; 100]);
        assert!(
            statistic < CHI_SQUARE_99_DF_P001,
            "chi-square {statistic:.1}"
        );

        let many = KeyDistribution::uniform(1_000).expect("valid parameters");
        let counts = histogram(&many, 20_000, 12);
        assert!(
            counts.iter().all(|&count| count > 0),
            "all 1,000 keys drawn"
        );
    }

    #[test]
    fn bad_parameters_are_refused() {
        for keys in [0, KEYS_MAX + 1] {
            assert!(matches!(
                KeyDistribution::uniform(keys),
                Err(BenchError::InvalidPlan(_))
            ));
            assert!(KeyDistribution::zipf(keys, 0.99).is_err());
        }
        for theta in [0.0, -1.0, f64::NAN, f64::INFINITY, ZIPF_THETA_MAX + 0.1] {
            assert!(KeyDistribution::zipf(10, theta).is_err(), "theta {theta}");
        }
    }
}
