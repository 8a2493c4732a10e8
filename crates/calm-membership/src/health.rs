//! Lifeguard's local health multiplier: how much this node distrusts its own timing.
//!
//! Dadgar et al., "Lifeguard: Local Health Awareness for More Accurate
//! Failure Detection" (2018), §4.1: a node that is itself slow (CPU
//! starvation, GC pause, saturated NIC) misses acks and then wrongly
//! suspects healthy peers. The local health multiplier (LHM) is a saturating
//! counter that rises on evidence of local trouble and falls on evidence of
//! health; probe interval and probe timeout are both multiplied by
//! `LHM + 1`, so a struggling node slows down instead of accusing others.

/// The largest LHM any config may allow; Lifeguard's evaluation uses 8.
pub const LOCAL_HEALTH_MAX_LIMIT: u8 = 8;

/// The local health multiplier, a saturating counter in `0..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalHealth {
    score: u8,
    max: u8,
}

impl LocalHealth {
    /// A healthy node (score 0) whose score saturates at `max`.
    ///
    /// # Panics
    /// If `max` exceeds [`LOCAL_HEALTH_MAX_LIMIT`]: configs are validated first.
    pub fn new(max: u8) -> Self {
        assert!(
            max <= LOCAL_HEALTH_MAX_LIMIT,
            "local health max {max} above the limit"
        );
        Self { score: 0, max }
    }

    /// The current score, in `0..=max`.
    pub fn score(&self) -> u8 {
        self.score
    }

    /// The factor timing is scaled by: `score + 1`.
    pub fn multiplier(&self) -> u32 {
        u32::from(self.score) + 1
    }

    /// A direct probe was acked within its timeout (Lifeguard: "successful probe", −1).
    pub fn probe_succeeded(&mut self) {
        self.score = self.score.saturating_sub(1);
    }

    /// A probe cycle ended with neither a direct nor an indirect ack
    /// (Lifeguard: "failed probe", +1).
    pub fn probe_failed(&mut self) {
        self.raise();
    }

    /// A direct ack arrived, but after the probe timeout had already sent
    /// the probe to the indirect stage. Lifeguard raises the LHM when a
    /// nack it expected is missing; foca sends no nacks, so a late ack is the
    /// nearest evidence that this node (or its link) is slow (+1).
    pub fn ack_late(&mut self) {
        self.raise();
    }

    /// This node had to refute a suspicion about itself (Lifeguard: +1).
    pub fn refuted(&mut self) {
        self.raise();
    }

    fn raise(&mut self) {
        self.score = (self.score + 1).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lhm_saturates_at_its_bound_and_floors_at_zero() {
        // Lifeguard §4.1: the LHM is a saturating counter.
        let mut health = LocalHealth::new(LOCAL_HEALTH_MAX_LIMIT);
        health.probe_succeeded();
        assert_eq!(health.score(), 0);
        for _ in 0..20 {
            health.probe_failed();
        }
        assert_eq!(health.score(), LOCAL_HEALTH_MAX_LIMIT);
        assert_eq!(health.multiplier(), 9);
        health.probe_succeeded();
        health.ack_late();
        health.refuted();
        assert_eq!(health.score(), LOCAL_HEALTH_MAX_LIMIT);
        for _ in 0..3 {
            health.probe_succeeded();
        }
        assert_eq!(health.score(), LOCAL_HEALTH_MAX_LIMIT - 3);
    }
}
