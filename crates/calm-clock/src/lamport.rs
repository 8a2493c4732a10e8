//! Lamport clocks: one counter per node that orders events consistently with
//! causality (Lamport 1978, "Time, Clocks, and the Ordering of Events").

use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use crate::{COUNTER_MAX, ClockError};

/// A Lamport clock, sans-IO: it moves only when told of an event.
///
/// Driver contract: call [`tick`](Self::tick) for every local event
/// (including sending a message, whose timestamp is the returned time) and
/// [`observe`](Self::observe) for every received message with the sender's
/// time. If `a` happened before `b`, `time(a) < time(b)`; the converse does
/// not hold, which is what version vectors are for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LamportRaw")]
pub struct LamportClock {
    time: u64,
}

/// The wire shape of [`LamportClock`], validated before it becomes one.
#[derive(Deserialize)]
struct LamportRaw {
    time: u64,
}

impl TryFrom<LamportRaw> for LamportClock {
    type Error = String;

    fn try_from(raw: LamportRaw) -> Result<Self, String> {
        crate::wire::check_counter("Lamport", raw.time)?;
        Ok(Self { time: raw.time })
    }
}

impl LamportClock {
    /// A clock that has seen no event: its time is 0 and the first tick is 1.
    pub const fn new() -> Self {
        Self { time: 0 }
    }

    /// The time of the latest event this clock has seen.
    pub const fn time(&self) -> u64 {
        self.time
    }

    /// Records a local event and returns its time (Lamport's IR1).
    pub fn tick(&mut self) -> u64 {
        // The time only reaches COUNTER_MAX through `observe`, which refuses
        // anything above it, so wrapping needs 2^62 further local ticks.
        self.time = self
            .time
            .checked_add(1)
            .expect("Lamport time stays far below u64::MAX: observe caps it at COUNTER_MAX");
        self.time
    }

    /// Records the receipt of a message stamped `remote` and returns the
    /// receive event's time, greater than both `remote` and every earlier
    /// local time (Lamport's IR2).
    ///
    /// A `remote` above [`COUNTER_MAX`] is rejected and the clock is unchanged.
    pub fn observe(&mut self, remote: u64) -> Result<u64, ClockError> {
        if remote > COUNTER_MAX {
            return Err(ClockError::LamportBeyondBound {
                remote,
                counter_max: COUNTER_MAX,
            });
        }
        self.time = self.time.max(remote);
        Ok(self.tick())
    }

    /// Encodes the clock (to persist it across restarts).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a clock from untrusted bytes. Never panics; a time above
    /// [`COUNTER_MAX`] is [`DecodeError::Invalid`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::wire::decode_validated::<LamportRaw, Self>(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_count_up_from_one() {
        let mut clock = LamportClock::new();
        assert_eq!(clock.tick(), 1);
        assert_eq!(clock.tick(), 2);
        assert_eq!(clock.time(), 2);
    }

    #[test]
    fn observing_a_message_moves_past_the_sender_and_past_local_time() {
        // Lamport 1978, IR2: the receive event is later than the send event.
        let mut clock = LamportClock::new();
        assert_eq!(clock.observe(10), Ok(11));
        // An older message still yields a time later than every local event.
        assert_eq!(clock.observe(3), Ok(12));
    }

    #[test]
    fn a_remote_time_beyond_the_bound_is_rejected_and_changes_nothing() {
        let mut clock = LamportClock::new();
        clock.tick();
        let before = clock;
        assert_eq!(
            clock.observe(u64::MAX),
            Err(ClockError::LamportBeyondBound {
                remote: u64::MAX,
                counter_max: COUNTER_MAX
            })
        );
        assert_eq!(clock, before);
        assert_eq!(clock.observe(COUNTER_MAX), Ok(COUNTER_MAX + 1));
    }

    #[test]
    fn decoding_rejects_a_time_above_the_bound() {
        let mut clock = LamportClock::new();
        clock.observe(41).expect("41 is within the bound");
        assert_eq!(LamportClock::decode(&clock.encode()), Ok(clock));
        let bytes = codec::encode(&(COUNTER_MAX + 1));
        assert!(matches!(
            LamportClock::decode(&bytes),
            Err(DecodeError::Invalid(_))
        ));
        // The serde path used when a clock is nested in another message
        // validates too, as a malformed body.
        assert!(matches!(
            codec::decode::<LamportClock>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }
}
