//! The placement layer's typed error.

use calm_types::NodeId;

/// Why a ring or rendezvous placement could not be built or changed.
///
/// Every operation that returns this error leaves the placement it was called
/// on exactly as it was: membership changes are computed in full before any
/// state is replaced, so no variant means "partly applied".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The configured virtual nodes per node is zero or above
    /// [`VNODES_PER_NODE_MAX`](crate::VNODES_PER_NODE_MAX). Nothing was built.
    #[error("vnodes_per_node {found} outside 1..={max}")]
    VnodesOutOfRange {
        /// The configured value.
        found: u32,
        /// The largest value accepted.
        max: u32,
    },
    /// The configured member bound is zero or above
    /// [`NODES_MAX`](crate::NODES_MAX). Nothing was built.
    #[error("nodes_max {found} outside 1..={max}")]
    NodesMaxOutOfRange {
        /// The configured value.
        found: usize,
        /// The largest value accepted.
        max: usize,
    },
    /// The membership would exceed the configured member bound. The placement
    /// is unchanged.
    #[error("{count} members exceed the bound of {max}")]
    TooManyNodes {
        /// How many members the change would have produced.
        count: usize,
        /// The configured bound.
        max: usize,
    },
    /// The node is already a member. The placement is unchanged.
    #[error("node {0} is already a member")]
    DuplicateNode(NodeId),
    /// The node is not a member, so it cannot be removed. The placement is
    /// unchanged.
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    /// A ring snapshot breaks an invariant (token counts, order, duplicates,
    /// configuration). Nothing was built.
    #[error("invalid ring snapshot: {0}")]
    InvalidSnapshot(String),
}
