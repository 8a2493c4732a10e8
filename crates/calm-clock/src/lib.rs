//! Logical clocks: Lamport, hybrid logical clocks, version vectors and dotted
//! version vectors.
//!
//! Every clock here is sans-IO: wall-clock time is an argument, never read
//! inside, so the node and the deterministic simulator run the same code.
//! Drivers read time through [`PhysicalClock`] ([`SystemClock`] in a node,
//! [`ManualClock`] in the simulator and tests).
//!
//! Every wire type has `encode` and a validating `decode` that never panics
//! and rejects values that parse but break an invariant with
//! `DecodeError::Invalid`: [`Dot::decode`], [`HlcTimestamp::decode`],
//! [`Hlc::decode`], [`LamportClock::decode`], [`VersionVector::decode`] and
//! [`DvvSet::decode`]. The serde impls of [`VersionVector`], [`DvvSet`] and
//! [`LamportClock`] validate too, so the same types nested in another
//! message are checked as well.
//!
//! # A tour
//!
//! A hybrid logical clock stays close to wall-clock time, never goes
//! backwards, and refuses a remote reading too far ahead of the local clock:
//!
//! ```
//! use calm_clock::{ClockError, Hlc, HlcTimestamp, ManualClock, PhysicalClock};
//!
//! let wall = ManualClock::new(1_000);
//! let mut hlc = Hlc::new(500); // tolerate remote clocks up to 500 ms ahead
//! let first = hlc.now(wall.now_ms());
//! let second = hlc.now(wall.now_ms()); // same millisecond: logical counts up
//! assert_eq!((first, second), (HlcTimestamp::new(1_000, 0), HlcTimestamp::new(1_000, 1)));
//!
//! // A message from a node 200 ms ahead moves the clock past its reading.
//! let received = hlc.update(HlcTimestamp::new(1_200, 3), wall.now_ms())?;
//! assert_eq!(received, HlcTimestamp::new(1_200, 4));
//!
//! // One from a node a minute ahead is rejected, and the clock stays put.
//! let err = hlc.update(HlcTimestamp::new(61_000, 0), wall.now_ms()).unwrap_err();
//! assert!(matches!(err, ClockError::RemoteTooFarAhead { max_offset_ms: 500, .. }));
//! assert_eq!(hlc.last(), received);
//! # Ok::<(), ClockError>(())
//! ```
//!
//! Version vectors say whether one history saw another:
//!
//! ```
//! use calm_clock::{Causality, VersionVector};
//! use calm_types::NodeId;
//!
//! let mut a = VersionVector::new();
//! a.increment(NodeId(1));
//! let mut b = a.clone();
//! b.increment(NodeId(2));
//! assert_eq!(a.compare(&b), Causality::Before);
//! a.increment(NodeId(1));
//! assert_eq!(a.compare(&b), Causality::Concurrent);
//! a.merge(&b);
//! assert!(a.dominates(&b));
//! ```
//!
//! A DVV-set keeps one key's concurrent writes as siblings and lets a write
//! that read them replace them all:
//!
//! ```
//! use calm_clock::{DvvSet, VersionVector};
//! use calm_types::NodeId;
//!
//! let node = NodeId(1);
//! let mut key = DvvSet::new();
//! // Two clients write without having read anything: both survive.
//! key.update(&VersionVector::new(), node, "blue");
//! key.update(&VersionVector::new(), node, "green");
//! assert_eq!(key.values().copied().collect::<Vec<_>>(), ["blue", "green"]);
//!
//! // A third client reads both siblings and their context, then writes.
//! let context = key.join();
//! key.update(&context, node, "teal");
//! assert_eq!(key.values().copied().collect::<Vec<_>>(), ["teal"]);
//!
//! // Every wire type decodes with validation: bad bytes are an error.
//! let bytes = key.encode();
//! assert_eq!(DvvSet::<String>::decode(&bytes).unwrap().size(), 1);
//! assert!(DvvSet::<String>::decode(&bytes[..bytes.len() - 1]).is_err());
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod dot;
mod dvvset;
mod error;
mod hlc;
mod lamport;
mod physical;
mod vv;
mod wire;

pub use dot::Dot;
pub use dvvset::DvvSet;
pub use error::ClockError;
pub use hlc::{Hlc, HlcTimestamp};
pub use lamport::LamportClock;
pub use physical::{ManualClock, PhysicalClock, SystemClock};
pub use vv::{Causality, VersionVector};

/// The largest event counter accepted from outside (decoded version vector,
/// DVV-set and dot counters, remote Lamport times).
///
/// Local increments use checked arithmetic; capping what arrives from the
/// network at 2^62 leaves 2^62 local events of headroom before a counter
/// could wrap, which at a billion events a second is over a century. So a
/// forged huge counter is a decode error, never a later panic.
pub const COUNTER_MAX: u64 = 1 << 62;
