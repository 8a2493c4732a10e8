//! Per-peer buffers of deltas waiting to be shipped, with their bounds.

use std::collections::{BTreeMap, VecDeque};

use calm_types::NodeId;

use crate::message::KeyDelta;
use crate::object::Object;

/// The bounds on delta batching (copied from the replica config).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchBounds {
    pub(crate) keys_max: usize,
    pub(crate) bytes_max: usize,
    pub(crate) pending_keys_max: usize,
}

/// One peer's pending deltas: per key, the joined delta of a contiguous run
/// of this node's writes, in the order keys were first buffered.
#[derive(Debug, Default)]
pub(crate) struct PeerQueue {
    order: VecDeque<Vec<u8>>,
    entries: BTreeMap<Vec<u8>, Pending>,
    bytes: usize,
}

#[derive(Debug)]
struct Pending {
    first_seq: u64,
    last_seq: u64,
    delta: Object,
    bytes: usize,
}

impl PeerQueue {
    /// Buffers the delta of write `seq` to `key`. Returns how many buffered
    /// keys were dropped to stay within `pending_keys_max`.
    pub(crate) fn push(
        &mut self,
        key: &[u8],
        seq: u64,
        delta: &Object,
        bounds: BatchBounds,
    ) -> u64 {
        // Joining is only sound for the next write of the run: the range
        // claims every write in it. Writes to a key are released in
        // sequence order, so the run normally extends; anything else
        // replaces it.
        if let Some(pending) = self.entries.get_mut(key)
            && pending.last_seq + 1 == seq
        {
            pending.delta.join(delta);
            pending.last_seq = seq;
            self.bytes -= pending.bytes;
            pending.bytes = estimate_bytes(key, &pending.delta);
            self.bytes += pending.bytes;
            return 0;
        }
        // A run that cannot be extended is replaced, and counts as dropped.
        let mut dropped = u64::from(self.remove(key));
        let bytes = estimate_bytes(key, delta);
        self.entries.insert(
            key.to_vec(),
            Pending {
                first_seq: seq,
                last_seq: seq,
                delta: delta.clone(),
                bytes,
            },
        );
        self.order.push_back(key.to_vec());
        self.bytes += bytes;
        while self.entries.len() > bounds.pending_keys_max {
            // Dropping the oldest is safe: the receiver's token frontier
            // stops at the gap, and anti-entropy repairs the state.
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(p) = self.entries.remove(&oldest) {
                self.bytes -= p.bytes;
                dropped += 1;
            }
        }
        dropped
    }

    /// Whether a full batch is waiting.
    pub(crate) fn batch_is_full(&self, bounds: BatchBounds) -> bool {
        self.entries.len() >= bounds.keys_max || self.bytes >= bounds.bytes_max
    }

    /// Whether nothing is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the oldest entries forming one batch within the bounds (at
    /// least one entry, even if it alone exceeds `bytes_max`).
    pub(crate) fn take_batch(&mut self, origin: NodeId, bounds: BatchBounds) -> Vec<KeyDelta> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(key) = self.order.front() {
            let Some(next) = self.entries.get(key) else {
                // Defensive: `remove` keeps `order` in step with `entries`.
                self.order.pop_front();
                continue;
            };
            if batch.len() == bounds.keys_max
                || (!batch.is_empty() && bytes + next.bytes > bounds.bytes_max)
            {
                break;
            }
            bytes += next.bytes;
            let Some(key) = self.order.pop_front() else {
                break;
            };
            if let Some(p) = self.entries.remove(&key) {
                self.bytes -= p.bytes;
                batch.push(KeyDelta {
                    key,
                    origin,
                    first_seq: p.first_seq,
                    last_seq: p.last_seq,
                    delta: p.delta,
                });
            }
        }
        batch
    }

    /// Removes `key`'s entry; whether there was one.
    fn remove(&mut self, key: &[u8]) -> bool {
        let Some(p) = self.entries.remove(key) else {
            return false;
        };
        self.bytes -= p.bytes;
        self.order.retain(|k| k != key);
        true
    }
}

/// The encoded size of an entry, plus a small allowance for its framing.
fn estimate_bytes(key: &[u8], delta: &Object) -> usize {
    key.len() + calm_types::codec::encode(delta).len() + 32
}
