//! Data placement: consistent hashing with virtual nodes, rendezvous hashing,
//! preference lists.
//!
//! Every key has a position on a 64-bit circle ([`KeyHash::of`], xxh3-64:
//! see [`hash`] for the pinned contract). A [`Placement`] maps that position
//! to the nodes that hold the key. Two are offered behind the same trait:
//!
//! * [`Ring`]: consistent hashing with V virtual nodes per member (default
//!   256). Lookups are a binary search; tokens are allocated so that every
//!   member owns within a few percent of 1/N, and a joining node takes keys
//!   only for itself.
//! * [`Rendezvous`]: highest random weight; no tokens, O(members) per lookup.
//!
//! ```
//! use calm_ring::{KeyHash, Placement, Rendezvous, RendezvousConfig, Ring, RingConfig};
//! use calm_types::NodeId;
//!
//! let members: Vec<NodeId> = (1..=5).map(NodeId).collect();
//! let ring = Ring::new(RingConfig::default(), &members)?;
//! let key = KeyHash::of(b"user:42");
//!
//! // The natural owners: the first 3 distinct nodes clockwise from the key.
//! let owners = ring.owners(key, 3);
//! assert_eq!(owners.len(), 3);
//!
//! // A sloppy preference list skips down nodes, and says whom a fallback
//! // stands in for, so the write can carry a hint for hinted handoff.
//! let down = owners[0];
//! let list = ring.preference_list(key, 3, &|node| node == down);
//! assert!(list.nodes().all(|node| node != down));
//! assert_eq!(list.hints().map(|(_, owner)| owner).collect::<Vec<_>>(), [down]);
//!
//! // Ownership as primary: what `calm members` shows as ownership %.
//! let ownership = ring.ownership();
//! assert!(ownership.max_over_mean() < 1.05);
//!
//! // Joining moves keys only onto the new node.
//! let mut grown = ring.clone();
//! grown.add_node(NodeId(6))?;
//! let moved = grown.primary(key) != ring.primary(key);
//! assert!(!moved || grown.primary(key) == Some(NodeId(6)));
//!
//! // Rendezvous answers the same questions through the same trait.
//! let hrw: Box<dyn Placement> = Box::new(Rendezvous::new(RendezvousConfig::default(), &members)?);
//! assert_eq!(hrw.preference_list(key, 3, &|_| false).replicas.len(), 3);
//!
//! // A ring persists as a snapshot through the versioned codec.
//! let bytes = calm_types::codec::encode(&ring.snapshot());
//! let snapshot = calm_types::codec::decode(&bytes)?;
//! assert_eq!(Ring::from_snapshot(RingConfig::default(), &snapshot)?, ring);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod allocate;
mod error;
pub mod hash;
mod log;
mod placement;
mod rendezvous;
mod ring;

pub use error::PlacementError;
pub use hash::KeyHash;
pub use log::{RingEntry, RingLog};
pub use placement::{Ownership, Placement, PreferenceList, Replica};
pub use rendezvous::{Rendezvous, RendezvousConfig};
pub use ring::{NODES_MAX, Ring, RingConfig, RingSnapshot, VNODES_PER_NODE_MAX};
