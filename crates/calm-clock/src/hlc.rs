//! Hybrid logical clocks (Kulkarni et al.): physical milliseconds plus a
//! logical counter.

use calm_types::NodeId;
use serde::{Deserialize, Serialize};

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
        Self { physical_ms, logical }
    }

    /// The total order last-writer-wins uses: the timestamp, then the node id.
    pub fn tiebreak(self, node: NodeId) -> (HlcTimestamp, NodeId) {
        (self, node)
    }
}
