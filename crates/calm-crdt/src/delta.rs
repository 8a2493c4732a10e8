//! The trait every CRDT implements, and the buffer that groups deltas for
//! shipping.
//!
//! In the delta-state model a mutator returns a *delta*: a small state of the
//! same lattice that, joined into any replica, has the mutation's effect.
//! Deltas are therefore the same type as the state, and applying one is a
//! join. Because join is commutative, associative and idempotent, deltas may
//! be delivered in any order, duplicated, or lost and retransmitted, and
//! replicas still converge once every delta has arrived somewhere.

use std::fmt::Debug;

use calm_types::codec::{self, DecodeError};
use serde::{Serialize, de::DeserializeOwned};

/// A join-semilattice with delta mutators.
///
/// Laws every implementation upholds (checked in each type's tests with
/// `crate::laws`):
/// * `join` is commutative, associative and idempotent;
/// * `apply_delta(d)` equals `join(d)`;
/// * `Default::default()` is the bottom element: joining it changes nothing.
pub trait DeltaCrdt: Clone + Default + PartialEq + Debug + Serialize + DeserializeOwned {
    /// What a reader sees.
    type Value;

    /// The value this state currently reads as.
    fn value(&self) -> Self::Value;

    /// Joins `other` into `self`: afterwards `self` is the least upper bound
    /// of both.
    fn join(&mut self, other: &Self);

    /// Applies a delta produced by a mutator on some replica. A delta is a
    /// state, so this is a join; the method exists so that types which keep
    /// delta-only bookkeeping can override it.
    fn apply_delta(&mut self, delta: &Self) {
        self.join(delta);
    }

    /// Checks invariants serde cannot express, after decoding untrusted bytes.
    /// The default accepts everything.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Encodes this state (or delta) for the wire or the disk.
    fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a state (or delta) from untrusted bytes. Never panics.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let state: Self = codec::decode(bytes)?;
        state.validate().map_err(DecodeError::Invalid)?;
        Ok(state)
    }
}

/// Deltas produced locally and not yet shipped, joined into one group.
///
/// The replicator pushes every delta a mutator returns, and takes the group
/// when it is time to send a batch. Joining deltas before sending is what
/// makes a batch cost one state-sized message however many mutations it
/// carries.
#[derive(Debug, Clone, Default)]
pub struct DeltaBuffer<T: DeltaCrdt> {
    group: Option<T>,
    mutations: u64,
}

impl<T: DeltaCrdt> DeltaBuffer<T> {
    /// An empty buffer.
    pub fn new() -> Self {
        Self {
            group: None,
            mutations: 0,
        }
    }

    /// Adds a delta to the pending group.
    pub fn push(&mut self, delta: &T) {
        self.mutations += 1;
        match &mut self.group {
            Some(group) => group.join(delta),
            None => self.group = Some(delta.clone()),
        }
    }

    /// How many deltas were pushed since the last [`take`](Self::take).
    pub fn pending_mutations(&self) -> u64 {
        self.mutations
    }

    /// Takes the joined group of pending deltas, leaving the buffer empty.
    pub fn take(&mut self) -> Option<T> {
        self.mutations = 0;
        self.group.take()
    }
}
