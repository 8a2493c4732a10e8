//! Capped exponential backoff with full jitter, for redialling a peer.
//!
//! Full jitter (a uniform delay between zero and the capped exponential
//! ceiling) spreads the redials of many nodes that lost the same peer at the
//! same moment, so its restart is not met by a synchronised stampede.
//! Randomness comes from a seeded RNG, so a test replays exactly.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The redial delay schedule of one peer.
#[derive(Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    /// Failed dials since the last success; the ceiling doubles with each.
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// A schedule whose ceiling starts at `initial_ms` and doubles per failure
    /// up to `max_ms`, drawing jitter from `seed`.
    pub fn new(initial_ms: u64, max_ms: u64, seed: u64) -> Self {
        assert!(
            initial_ms <= max_ms,
            "backoff initial_ms must not exceed max_ms"
        );
        Backoff {
            initial_ms,
            max_ms,
            failures: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The ceiling of the next delay: `initial_ms * 2^failures`, capped.
    pub fn ceiling_ms(&self) -> u64 {
        // Past 63 doublings the shift would overflow; the cap has long won.
        let factor = 1u64.checked_shl(self.failures).unwrap_or(u64::MAX);
        self.initial_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// Records a failed dial and returns how long to wait before the next:
    /// uniform in `0..=ceiling_ms()`.
    pub fn next_delay_ms(&mut self) -> u64 {
        let ceiling_ms = self.ceiling_ms();
        self.failures = self.failures.saturating_add(1);
        self.rng.random_range(0..=ceiling_ms)
    }

    /// Records a successful dial: the next failure starts from `initial_ms`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_per_failure_up_to_the_cap_and_resets_on_success() {
        let mut backoff = Backoff::new(10, 100, 1);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(backoff.ceiling_ms());
            backoff.next_delay_ms();
        }
        assert_eq!(ceilings, [10, 20, 40, 80, 100, 100]);
        backoff.reset();
        assert_eq!(backoff.ceiling_ms(), 10);
    }

    #[test]
    fn delays_are_full_jitter_under_the_ceiling_and_replay_from_the_seed() {
        let delays = |seed| {
            let mut backoff = Backoff::new(10, 1000, seed);
            (0..200)
                .map(|_| {
                    let ceiling = backoff.ceiling_ms();
                    let delay = backoff.next_delay_ms();
                    assert!(delay <= ceiling);
                    delay
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(7), delays(7));
        assert_ne!(delays(7), delays(8));
        // Full jitter reaches down to small delays even at the cap.
        assert!(delays(7)[100..].iter().any(|&d| d < 500));
    }

    #[test]
    fn a_huge_failure_count_saturates_at_the_cap() {
        let mut backoff = Backoff::new(1, u64::MAX, 3);
        backoff.failures = 200;
        assert_eq!(backoff.ceiling_ms(), u64::MAX);
        backoff.next_delay_ms();
    }
}
