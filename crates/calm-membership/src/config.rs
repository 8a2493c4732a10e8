//! Membership configuration: every bound the core enforces, and its validation.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::health::LOCAL_HEALTH_MAX_LIMIT;
use crate::phi::SAMPLES_MAX_LIMIT;

/// The largest cluster any config may allow. foca keeps members in a `Vec`
/// scanned on every update, so the table must stay small enough to scan.
pub const MEMBERS_MAX_LIMIT: usize = 16_384;
/// The smallest packet any config may allow: a header with two identities
/// and a handful of piggybacked updates must fit.
pub const PACKET_BYTES_MIN: usize = 512;
/// The largest packet any config may allow: the largest UDP payload over IPv4.
pub const PACKET_BYTES_MAX_LIMIT: usize = 65_507;

/// How membership behaves, and how large everything it holds may grow.
///
/// Durations are in milliseconds because the core's clock is `now_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct MembershipConfig {
    /// Most members, this node included, the table may hold; a packet that
    /// would grow it further is refused. At most [`MEMBERS_MAX_LIMIT`].
    pub members_max: usize,
    /// Largest datagram produced or accepted, envelope included.
    /// In `PACKET_BYTES_MIN..=PACKET_BYTES_MAX_LIMIT`.
    pub packet_bytes_max: usize,
    /// SWIM protocol period: one member is probed per period, times `LHM + 1`.
    pub probe_period_ms: u64,
    /// Floor of the adaptive direct-probe timeout.
    pub probe_timeout_min_ms: u64,
    /// Ceiling of the adaptive direct-probe timeout, and its value before a
    /// peer has acked anything. At most half the probe period, so the
    /// indirect stage always has time to run.
    pub probe_timeout_max_ms: u64,
    /// `k` in `timeout = mean + k·stddev` of a peer's observed ack RTTs.
    pub probe_timeout_stddevs: f64,
    /// Ack RTT samples, and ack inter-arrival intervals for phi, kept per
    /// peer. In `1..=SAMPLES_MAX_LIMIT`.
    pub rtt_samples_max: usize,
    /// How many members are asked to probe indirectly (SWIM's `k`).
    pub indirect_probes: usize,
    /// How long a suspect has to refute before it is declared down.
    pub suspect_to_down_after_ms: u64,
    /// How many times each update is piggybacked (SWIM's `λ log n`).
    pub max_transmissions: u8,
    /// How long a down member is remembered, so that its stale identity
    /// cannot come back.
    pub remove_down_after_ms: u64,
    /// Period of foca's extra gossip round (0 disables it): updates spread
    /// faster than by piggybacking on probes alone.
    pub gossip_period_ms: u64,
    /// Ceiling of Lifeguard's local health multiplier. At most
    /// [`LOCAL_HEALTH_MAX_LIMIT`]; 0 turns Lifeguard scaling off.
    pub local_health_max: u8,
    /// Most undrained effects the core holds before it refuses new input.
    pub effects_backlog_max: usize,
}

impl Default for MembershipConfig {
    /// LAN defaults, close to memberlist's and foca's `new_lan`.
    fn default() -> Self {
        Self {
            members_max: 1024,
            packet_bytes_max: 1400,
            probe_period_ms: 1_000,
            probe_timeout_min_ms: 20,
            probe_timeout_max_ms: 400,
            probe_timeout_stddevs: 4.0,
            rtt_samples_max: 64,
            indirect_probes: 3,
            suspect_to_down_after_ms: 4_000,
            max_transmissions: 10,
            remove_down_after_ms: 24 * 3_600_000,
            gossip_period_ms: 200,
            local_health_max: LOCAL_HEALTH_MAX_LIMIT,
            effects_backlog_max: 65_536,
        }
    }
}

/// Why a [`MembershipConfig`] was refused. Validation changes nothing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A bounded field is outside its allowed range.
    #[error("{field} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The refused value.
        value: u64,
        /// The smallest allowed value.
        min: u64,
        /// The largest allowed value.
        max: u64,
    },
    /// The timeout bounds are inverted or leave no room for the indirect stage.
    #[error(
        "probe timeouts must satisfy 0 < min ({min_ms}) <= max ({max_ms}) <= probe_period / 2 ({period_ms} / 2)"
    )]
    ProbeTimeouts {
        /// The configured floor.
        min_ms: u64,
        /// The configured ceiling.
        max_ms: u64,
        /// The configured protocol period.
        period_ms: u64,
    },
    /// `probe_timeout_stddevs` is negative or not finite.
    #[error("probe_timeout_stddevs = {0} must be finite and >= 0")]
    Stddevs(f64),
}

impl MembershipConfig {
    /// Checks every bound, returning the first one broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        range(
            "members_max",
            self.members_max as u64,
            2,
            MEMBERS_MAX_LIMIT as u64,
        )?;
        range(
            "packet_bytes_max",
            self.packet_bytes_max as u64,
            PACKET_BYTES_MIN as u64,
            PACKET_BYTES_MAX_LIMIT as u64,
        )?;
        // An hour-long period is surely a unit mistake; the floor keeps
        // timers from firing in a busy loop.
        range("probe_period_ms", self.probe_period_ms, 10, 3_600_000)?;
        let (min_ms, max_ms, period_ms) = (
            self.probe_timeout_min_ms,
            self.probe_timeout_max_ms,
            self.probe_period_ms,
        );
        if min_ms == 0 || min_ms > max_ms || max_ms.saturating_mul(2) > period_ms {
            return Err(ConfigError::ProbeTimeouts {
                min_ms,
                max_ms,
                period_ms,
            });
        }
        if !self.probe_timeout_stddevs.is_finite() || self.probe_timeout_stddevs < 0.0 {
            return Err(ConfigError::Stddevs(self.probe_timeout_stddevs));
        }
        range(
            "rtt_samples_max",
            self.rtt_samples_max as u64,
            1,
            SAMPLES_MAX_LIMIT as u64,
        )?;
        range("indirect_probes", self.indirect_probes as u64, 1, 16)?;
        range(
            "suspect_to_down_after_ms",
            self.suspect_to_down_after_ms,
            1,
            3_600_000,
        )?;
        range(
            "max_transmissions",
            u64::from(self.max_transmissions),
            1,
            255,
        )?;
        range(
            "remove_down_after_ms",
            self.remove_down_after_ms,
            1,
            30 * 24 * 3_600_000,
        )?;
        range("gossip_period_ms", self.gossip_period_ms, 0, 3_600_000)?;
        range(
            "local_health_max",
            u64::from(self.local_health_max),
            0,
            u64::from(LOCAL_HEALTH_MAX_LIMIT),
        )?;
        range(
            "effects_backlog_max",
            self.effects_backlog_max as u64,
            16,
            1 << 24,
        )?;
        Ok(())
    }

    /// The foca config this one maps to. Call only after [`Self::validate`].
    ///
    /// `probe_rtt` is the ceiling: calm replaces the duration of every
    /// indirect-probe timer with the adaptive one, and foca only uses its
    /// own value to schedule that timer.
    pub(crate) fn to_foca(&self, envelope_overhead_bytes: usize) -> foca::Config {
        let ms = Duration::from_millis;
        let mut foca = foca::Config::simple();
        foca.probe_period = ms(self.probe_period_ms);
        foca.probe_rtt = ms(self.probe_timeout_max_ms);
        foca.num_indirect_probes = nonzero_usize(self.indirect_probes);
        foca.max_transmissions = NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN);
        foca.suspect_to_down_after = ms(self.suspect_to_down_after_ms);
        foca.remove_down_after = Some(ms(self.remove_down_after_ms));
        foca.max_packet_size = nonzero_usize(self.packet_bytes_max - envelope_overhead_bytes);
        // Telling a member it was declared down lets it renew its generation
        // and rejoin at once instead of waiting out remove_down_after.
        foca.notify_down_members = true;
        foca.periodic_gossip = (self.gossip_period_ms > 0).then(|| foca::PeriodicParams {
            frequency: ms(self.gossip_period_ms),
            num_members: nonzero_usize(self.indirect_probes),
        });
        // Occasional announces heal joins whose feed was lost and help a
        // node discover members its seed did not know yet.
        foca.periodic_announce = Some(foca::PeriodicParams {
            frequency: ms(self.probe_period_ms.saturating_mul(30)),
            num_members: NonZeroUsize::MIN,
        });
        foca
    }
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

fn nonzero_usize(value: usize) -> NonZeroUsize {
    NonZeroUsize::new(value).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edit: impl FnOnce(&mut MembershipConfig), expected: Result<(), ConfigError>) {
        let mut config = MembershipConfig::default();
        edit(&mut config);
        assert_eq!(config.validate(), expected);
    }

    #[test]
    fn validation_names_the_broken_bound() {
        check(|_| {}, Ok(()));
        check(
            |c| c.members_max = MEMBERS_MAX_LIMIT + 1,
            Err(ConfigError::OutOfRange {
                field: "members_max",
                value: MEMBERS_MAX_LIMIT as u64 + 1,
                min: 2,
                max: MEMBERS_MAX_LIMIT as u64,
            }),
        );
        check(
            |c| c.packet_bytes_max = 100,
            Err(ConfigError::OutOfRange {
                field: "packet_bytes_max",
                value: 100,
                min: PACKET_BYTES_MIN as u64,
                max: PACKET_BYTES_MAX_LIMIT as u64,
            }),
        );
        // SWIM: the indirect stage must fit inside the protocol period.
        check(
            |c| c.probe_timeout_max_ms = 600,
            Err(ConfigError::ProbeTimeouts {
                min_ms: 20,
                max_ms: 600,
                period_ms: 1_000,
            }),
        );
        check(
            |c| c.probe_timeout_min_ms = 0,
            Err(ConfigError::ProbeTimeouts {
                min_ms: 0,
                max_ms: 400,
                period_ms: 1_000,
            }),
        );
        check(
            |c| c.local_health_max = 9,
            Err(ConfigError::OutOfRange {
                field: "local_health_max",
                value: 9,
                min: 0,
                max: 8,
            }),
        );
    }

    #[test]
    fn a_nan_stddev_factor_is_refused() {
        let config = MembershipConfig {
            probe_timeout_stddevs: f64::NAN,
            ..Default::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::Stddevs(v)) if v.is_nan()));
    }
}
