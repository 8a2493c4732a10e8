//! Hybrid logical clocks (Kulkarni et al.): physical milliseconds plus a
//! logical counter.
//!
//! Kulkarni, Demirbas, Madappa, Avva, Leone, "Logical Physical Clocks and
//! Consistent Snapshots in Globally Distributed Databases" (2014). An HLC
//! reading is close to wall-clock time, so it can name a moment a person
//! understands, yet it never goes backwards and it orders every send before
//! the matching receive, so last-writer-wins decided by it respects causality.

use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use crate::ClockError;

/// A hybrid logical clock reading.
///
/// Ordered by physical milliseconds, then the logical counter: the derived
/// `Ord` relies on the field order below. Two readings from different nodes
/// may be equal; where a total order is needed (last-writer-wins), compare
/// `(HlcTimestamp, NodeId)` pairs, see [`HlcTimestamp::tiebreak`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct HlcTimestamp {
    /// Milliseconds since the Unix epoch, as the clock best knows them.
    pub physical_ms: u64,
    /// Events within the same physical millisecond.
    pub logical: u32,
}

impl HlcTimestamp {
    /// A reading at `physical_ms` with logical counter `logical`.
    pub const fn new(physical_ms: u64, logical: u32) -> Self {
        Self {
            physical_ms,
            logical,
        }
    }

    /// The total order last-writer-wins uses: the timestamp, then the node id.
    pub fn tiebreak(self, node: NodeId) -> (HlcTimestamp, NodeId) {
        (self, node)
    }

    /// The smallest reading greater than this one.
    ///
    /// When the logical counter is exhausted the reading spills into the next
    /// physical millisecond (`(p, u32::MAX)` is followed by `(p + 1, 0)`).
    /// A spill needs 2^32 events inside one millisecond, or a remote reading
    /// that already carries `u32::MAX`; either way it moves the clock at most
    /// one millisecond ahead of the readings it has seen, which keeps `now`
    /// infallible and is far cheaper than refusing events until the wall
    /// clock catches up.
    pub fn successor(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self::new(self.physical_ms, logical),
            None => Self::new(
                // Physical time is wall-clock milliseconds, validated against
                // the local wall clock on receipt; u64::MAX ms is 584 million
                // years after the epoch.
                self.physical_ms
                    .checked_add(1)
                    .expect("HLC physical time stays far below u64::MAX milliseconds"),
                0,
            ),
        }
    }

    /// Encodes the reading with the shared versioned codec.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a reading from untrusted bytes. Never panics. Every
    /// `(physical_ms, logical)` pair is a valid reading; whether it is
    /// acceptable is decided later by [`Hlc::update`] against the offset bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }
}

impl std::fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms+{}", self.physical_ms, self.logical)
    }
}

/// A hybrid logical clock: the last reading it gave out and the largest clock
/// offset it tolerates in a remote reading.
///
/// Sans-IO: the wall-clock time is an argument of every call, read by the
/// driver from a [`PhysicalClock`](crate::PhysicalClock) (the system clock in
/// a node, a [`ManualClock`](crate::ManualClock) in the simulator), so both
/// drive this one code path.
///
/// Driver contract:
/// * stamp every local event and every outgoing message with
///   [`now`](Self::now);
/// * pass every incoming message's reading to [`update`](Self::update)
///   before acting on the message; on `Err`, drop the message and count the
///   error (the clock did not move);
/// * to survive a restart without going backwards, persist [`last`](Self::last)
///   (or the whole clock) and [`resume`](Self::resume) from it.
///
/// Guarantees: every returned reading is strictly greater than every earlier
/// reading from this clock and than every remote reading it accepted; its
/// physical component is the maximum of the wall-clock times and accepted
/// remote physical times seen, plus at most one millisecond of logical spill
/// (see [`HlcTimestamp::successor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hlc {
    last: HlcTimestamp,
    max_offset_ms: u64,
}

impl Hlc {
    /// A fresh clock that accepts remote readings at most `max_offset_ms`
    /// ahead of the local wall clock.
    pub const fn new(max_offset_ms: u64) -> Self {
        Self {
            last: HlcTimestamp::new(0, 0),
            max_offset_ms,
        }
    }

    /// A clock that continues after `last`, e.g. a reading persisted before a
    /// restart, so that it never hands out a reading twice.
    pub const fn resume(last: HlcTimestamp, max_offset_ms: u64) -> Self {
        Self {
            last,
            max_offset_ms,
        }
    }

    /// The last reading this clock handed out (or resumed from).
    pub const fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// The configured bound on how far a remote reading may be ahead.
    pub const fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    /// A reading for a local or send event at wall-clock time `wall_ms`.
    ///
    /// Kulkarni et al., Fig. 5 "send or local event": the physical component
    /// becomes `max(last, wall)`, and the logical counter restarts at 0 when
    /// the wall clock moved ahead, or counts up otherwise. A wall clock that
    /// stepped backwards therefore never moves the reading backwards.
    pub fn now(&mut self, wall_ms: u64) -> HlcTimestamp {
        self.last = Self::next_after(self.last, wall_ms);
        self.last
    }

    /// Merges a remote reading received at wall-clock time `wall_ms` and
    /// returns the receive event's reading, greater than both `remote` and
    /// every earlier local reading.
    ///
    /// Kulkarni et al., Fig. 5 "receive event of message m", guarded by the
    /// offset bound: a `remote` whose physical component is more than
    /// `max_offset_ms` ahead of `wall_ms` is rejected with
    /// [`ClockError::RemoteTooFarAhead`], and the clock does not move.
    pub fn update(
        &mut self,
        remote: HlcTimestamp,
        wall_ms: u64,
    ) -> Result<HlcTimestamp, ClockError> {
        // Saturating: a wall clock near u64::MAX accepts everything rather
        // than overflowing, and such a wall time is a driver bug anyway.
        if remote.physical_ms > wall_ms.saturating_add(self.max_offset_ms) {
            return Err(ClockError::RemoteTooFarAhead {
                remote,
                wall_ms,
                max_offset_ms: self.max_offset_ms,
            });
        }
        // The paper's case split (which of last, remote and wall holds the
        // maximum physical time) collapses to: continue after the larger of
        // the two readings, unless the wall clock is ahead of both.
        self.last = Self::next_after(self.last.max(remote), wall_ms);
        Ok(self.last)
    }

    /// The reading after `floor` at wall-clock time `wall_ms`: `(wall, 0)`
    /// if the wall clock is ahead of `floor`, else the successor of `floor`.
    fn next_after(floor: HlcTimestamp, wall_ms: u64) -> HlcTimestamp {
        let fresh = HlcTimestamp::new(wall_ms, 0);
        if fresh > floor {
            fresh
        } else {
            floor.successor()
        }
    }

    /// Encodes the clock (its last reading and bound) to persist it.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a persisted clock from untrusted bytes. Never panics; every
    /// field value is a valid clock.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFSET_MS: u64 = 500;

    /// One `update` case: clock state, remote reading, wall time, expected.
    fn check_update(last: (u64, u32), remote: (u64, u32), wall_ms: u64, expected: (u64, u32)) {
        let mut hlc = Hlc::resume(HlcTimestamp::new(last.0, last.1), OFFSET_MS);
        let remote = HlcTimestamp::new(remote.0, remote.1);
        let got = hlc
            .update(remote, wall_ms)
            .expect("remote is within the offset bound");
        assert_eq!(
            got,
            HlcTimestamp::new(expected.0, expected.1),
            "last {last:?} wall {wall_ms}"
        );
        assert_eq!(hlc.last(), got);
    }

    #[test]
    fn update_follows_the_papers_four_cases() {
        // Kulkarni et al. Fig. 5, receive: which of (last, remote, wall)
        // holds the largest physical time decides the logical counter.
        // The wall clock is ahead of both: logical restarts at 0.
        check_update((100, 4), (120, 9), 150, (150, 0));
        // last and remote tie on physical time: max logical + 1.
        check_update((200, 4), (200, 9), 150, (200, 10));
        check_update((200, 9), (200, 4), 200, (200, 10));
        // last alone is ahead: its logical + 1.
        check_update((300, 4), (250, 9), 150, (300, 5));
        // remote alone is ahead (within the bound): its logical + 1.
        check_update((100, 4), (300, 9), 150, (300, 10));
    }

    #[test]
    fn now_restarts_logical_on_a_new_millisecond_and_counts_within_one() {
        let mut hlc = Hlc::new(OFFSET_MS);
        assert_eq!(hlc.now(1_000), HlcTimestamp::new(1_000, 0));
        assert_eq!(hlc.now(1_000), HlcTimestamp::new(1_000, 1));
        assert_eq!(hlc.now(1_001), HlcTimestamp::new(1_001, 0));
    }

    #[test]
    fn a_wall_clock_stepping_backwards_never_moves_the_reading_backwards() {
        // HLC property: readings are monotone whatever the wall clock does.
        let mut hlc = Hlc::new(OFFSET_MS);
        hlc.now(5_000);
        assert_eq!(hlc.now(4_000), HlcTimestamp::new(5_000, 1));
    }

    #[test]
    fn a_remote_reading_beyond_the_offset_bound_is_rejected_and_the_clock_stays() {
        // calm design brief, Clocks: a message whose physical component is
        // further ahead than the configured offset is rejected.
        let mut hlc = Hlc::new(OFFSET_MS);
        hlc.now(10_000);
        let before = hlc;
        let remote = HlcTimestamp::new(10_000 + OFFSET_MS + 1, 0);
        assert_eq!(
            hlc.update(remote, 10_000),
            Err(ClockError::RemoteTooFarAhead {
                remote,
                wall_ms: 10_000,
                max_offset_ms: OFFSET_MS
            })
        );
        assert_eq!(hlc, before);
        // Exactly at the bound is accepted.
        let at_bound = HlcTimestamp::new(10_000 + OFFSET_MS, 0);
        assert_eq!(
            hlc.update(at_bound, 10_000),
            Ok(HlcTimestamp::new(10_000 + OFFSET_MS, 1))
        );
    }

    #[test]
    fn an_exhausted_logical_counter_spills_into_the_next_millisecond() {
        let mut hlc = Hlc::resume(HlcTimestamp::new(7, u32::MAX), OFFSET_MS);
        assert_eq!(hlc.now(7), HlcTimestamp::new(8, 0));
        // A remote reading carrying u32::MAX spills the same way.
        let mut hlc = Hlc::new(OFFSET_MS);
        assert_eq!(
            hlc.update(HlcTimestamp::new(9, u32::MAX), 9),
            Ok(HlcTimestamp::new(10, 0))
        );
    }

    #[test]
    fn readings_round_trip_through_the_codec() {
        let mut hlc = Hlc::new(OFFSET_MS);
        let reading = hlc.now(123_456);
        assert_eq!(HlcTimestamp::decode(&reading.encode()), Ok(reading));
        assert_eq!(Hlc::decode(&hlc.encode()), Ok(hlc));
        assert!(Hlc::decode(&[calm_types::codec::FORMAT_VERSION]).is_err());
    }
}
