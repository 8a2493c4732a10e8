//! The clock layer's typed errors.

use crate::HlcTimestamp;

/// Why a clock refused an input.
///
/// Every variant is a rejection: the clock that returned it is exactly as it
/// was before the call, so the caller may count the error (a metric) and drop
/// the message that carried the remote reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// A remote HLC reading's physical component is more than the configured
    /// maximum clock offset ahead of the local wall clock. Accepting it would
    /// drag the local clock, and every clock that later hears from this node,
    /// ahead of real time by the sender's error. The clock did not change.
    #[error(
        "remote timestamp {remote} is more than {max_offset_ms} ms ahead of local wall time {wall_ms} ms"
    )]
    RemoteTooFarAhead {
        /// The rejected remote reading.
        remote: HlcTimestamp,
        /// The local wall-clock time the remote reading was checked against.
        wall_ms: u64,
        /// The configured bound the remote reading exceeded.
        max_offset_ms: u64,
    },
    /// A remote Lamport time is above [`COUNTER_MAX`](crate::COUNTER_MAX).
    /// Adopting it would leave too little headroom for local ticks before the
    /// counter wraps, so it is treated as corrupt. The clock did not change.
    #[error("remote Lamport time {remote} is above the counter bound {counter_max}")]
    LamportBeyondBound {
        /// The rejected remote time.
        remote: u64,
        /// The bound, [`COUNTER_MAX`](crate::COUNTER_MAX).
        counter_max: u64,
    },
}
