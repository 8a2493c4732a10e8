//! Identifiers and the versioned wire codec shared by every calm crate.
//!
//! This crate sits at the bottom of the dependency graph: it knows nothing of
//! tokio, tonic or disks. It owns two things.
//!
//! * [`NodeId`], the identity of a calm node, used by clocks (dots), CRDTs
//!   (replica ids), the ring (owners) and membership.
//! * [`codec`], the one way bytes that cross a process boundary are encoded:
//!   postcard behind a one-byte format version, decoded into a typed error
//!   rather than a panic.
//!
//! ```
//! use calm_types::{codec, NodeId};
//!
//! let node = NodeId(7);
//! let bytes = codec::encode(&node);
//! assert_eq!(bytes[0], codec::FORMAT_VERSION);
//! let back: NodeId = codec::decode(&bytes).unwrap();
//! assert_eq!(back, node);
//!
//! // Bytes from the network are never trusted: garbage is an error, not a panic.
//! assert!(codec::decode::<NodeId>(&[0xff, 0x01]).is_err());
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;

use serde::{Deserialize, Serialize};

/// The identity of a calm node (a replica, in CRDT terms).
///
/// A plain integer so that it is cheap to copy, hash and order; ordering by
/// node id is the deterministic tiebreak wherever two events are otherwise
/// equal (LWW-Register, ring placement).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n{}", self.0)
    }
}
