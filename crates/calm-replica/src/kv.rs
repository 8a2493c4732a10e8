//! Plain key-value objects for the `one`/`quorum`/`all` levels: one key's
//! sibling values tracked by a dotted version vector set, the opaque causal
//! context a read hands out, and the limits a write is checked against.
//!
//! A [`KvObject`] wraps [`calm_clock::DvvSet`] (Preguiça et al., "Dotted
//! Version Vectors", in Riak's compact `dvvset` form) over
//! `Option<Bytes>`: `Some(value)` is a written value, `None` a tombstone.
//! Deletes are writes of a tombstone, so they carry a context, get a dot and
//! merge exactly like any other write; a delete that saw a value can never
//! let it come back through a merge with a replica that still holds it.
//!
//! # The causal context
//!
//! [`KvObject::get`] returns every sibling and a context: the
//! [`VersionVector`] of everything the object had seen, bound to the key
//! by a 64-bit hash of it, encoded with [`calm_types::codec`]. Clients treat
//! it as opaque bytes and hand it back with their next write to the key; a
//! write with it supersedes exactly the siblings that read returned. Empty
//! bytes mean "no context": a blind write, concurrent with everything there.
//! Decoding a context is a decode of untrusted bytes: anything malformed,
//! oversized or bound to another key is a typed [`KvError`], and the object
//! is left unchanged.
//!
//! ```
//! use calm_replica::kv::{KvLimits, KvObject};
//! use calm_types::NodeId;
//!
//! let limits = KvLimits::default();
//! let mut object = KvObject::new();
//! // Two blind writes are concurrent: both survive as siblings.
//! object.put(b"colour", &[], NodeId(1), b"blue".to_vec(), &limits)?;
//! object.put(b"colour", &[], NodeId(2), b"green".to_vec(), &limits)?;
//! let read = object.get(b"colour");
//! assert_eq!(read.values().count(), 2);
//!
//! // A write carrying the read's context replaces both.
//! object.put(b"colour", &read.context, NodeId(1), b"teal".to_vec(), &limits)?;
//! assert_eq!(object.get(b"colour").values().collect::<Vec<_>>(), [b"teal"]);
//! # Ok::<(), calm_replica::kv::KvError>(())
//! ```

pub mod store;

use calm_clock::{Dot, DvvSet, VersionVector};
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use crate::object::Bytes;

/// The default bound on a key's length.
pub const KEY_BYTES_MAX: usize = 1024;
/// The default bound on one value's length.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// The default hard bound on the siblings a write may leave behind.
pub const SIBLINGS_MAX: usize = 32;
/// The default bound on an encoded context's length. A context names each
/// node that ever coordinated a write to the key, so it stays small.
pub const CONTEXT_BYTES_MAX: usize = 4096;
/// The default bound on the nodes a context may name. Every node named
/// becomes an entry of the object's history, so a forged context could
/// otherwise grow the object without bound.
pub const CONTEXT_NODES_MAX: usize = 256;

/// One sibling: `Some(value)` for a written value, `None` for a tombstone.
pub type Sibling = Option<Bytes>;

/// The bounds a write is checked against before anything changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// The longest accepted key.
    pub key_bytes_max: usize,
    /// The longest accepted value.
    pub value_bytes_max: usize,
    /// The most siblings a write may leave in the object. Merges are not
    /// bounded by it: refusing a replica's state would keep replicas apart
    /// forever, and every sibling a merge brings was admitted by a write.
    pub siblings_max: usize,
    /// The longest accepted encoded context.
    pub context_bytes_max: usize,
    /// The most nodes an accepted context may name.
    pub context_nodes_max: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            key_bytes_max: KEY_BYTES_MAX,
            value_bytes_max: VALUE_BYTES_MAX,
            siblings_max: SIBLINGS_MAX,
            context_bytes_max: CONTEXT_BYTES_MAX,
            context_nodes_max: CONTEXT_NODES_MAX,
        }
    }
}

/// Why a key-value operation was refused. Every variant leaves the object
/// exactly as it was: limits and the context are checked before any change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The key is longer than `key_bytes_max`. Nothing changed.
    #[error("key of {key_bytes} bytes exceeds the bound of {key_bytes_max}")]
    KeyTooLarge {
        /// The key's length.
        key_bytes: usize,
        /// The bound.
        key_bytes_max: usize,
    },
    /// The value is longer than `value_bytes_max`. Nothing changed.
    #[error("value of {value_bytes} bytes exceeds the bound of {value_bytes_max}")]
    ValueTooLarge {
        /// The value's length.
        value_bytes: usize,
        /// The bound.
        value_bytes_max: usize,
    },
    /// The write would leave more than `siblings_max` siblings. Nothing
    /// changed and no sibling was dropped; read the key and write with the
    /// read's context to resolve them.
    #[error("the write would leave {siblings} siblings, beyond the bound of {siblings_max}")]
    TooManySiblings {
        /// How many siblings the write would have left.
        siblings: usize,
        /// The bound.
        siblings_max: usize,
    },
    /// The context is longer than `context_bytes_max` or names more than
    /// `context_nodes_max` nodes. Nothing changed.
    #[error("context too large: {what} is {found}, beyond the bound of {bound}")]
    ContextTooLarge {
        /// Which measure exceeded its bound: "bytes" or "nodes".
        what: &'static str,
        /// The measured size.
        found: usize,
        /// The bound.
        bound: usize,
    },
    /// The context bytes are not a valid context. Nothing changed.
    #[error("bad causal context: {0}")]
    BadContext(DecodeError),
    /// The context was issued by a read of another key. Nothing changed.
    #[error("the causal context was issued for another key")]
    ContextForOtherKey,
}

/// What a read of one key returns: every sibling and the context to write
/// back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRead {
    /// Every sibling, tombstones included (`None`), in a deterministic order
    /// (by coordinating node, then oldest first).
    pub siblings: Vec<Sibling>,
    /// The opaque causal context: hand it back with the next write of this
    /// key to supersede exactly these siblings.
    pub context: Vec<u8>,
}

impl KvRead {
    /// The live values, tombstones skipped.
    pub fn values(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.siblings.iter().flatten()
    }

    /// Whether the key reads as absent: no sibling is a live value (never
    /// written, or every sibling is a tombstone).
    pub fn is_absent(&self) -> bool {
        self.values().next().is_none()
    }
}

/// One key's causally tracked siblings at one replica.
///
/// Server-side use, as in a Dynamo-style store:
/// * a read returns [`get`](Self::get) of the coordinator's merge of the
///   replicas' objects;
/// * a write is stamped with [`put`](Self::put) or [`delete`](Self::delete)
///   on the coordinating node's own stored object, which must be persisted
///   before the stamped object leaves the node (a dot must name one value
///   forever, and the node mints its next dot from what it stored);
/// * replicas combine objects with [`merge`](Self::merge), which is
///   commutative, associative and idempotent.
///
/// After a write, the context to return to the client is that of
/// [`get`](Self::get) on the updated object, returned with all its siblings
/// (Riak's `returnbody`). Never raise the client's old context by the new dot
/// instead: the dot's counter covers earlier dots of that node the client
/// never saw, and its next write would silently supersede them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvObject {
    siblings: DvvSet<Sibling>,
}

impl KvObject {
    /// A key never written: no siblings, empty history.
    pub const fn new() -> Self {
        Self {
            siblings: DvvSet::new(),
        }
    }

    /// Every sibling and the causal context, bound to `key`.
    pub fn get(&self, key: &[u8]) -> KvRead {
        KvRead {
            siblings: self.siblings.values().cloned().collect(),
            context: Context::new(key, self.siblings.join()).encode(),
        }
    }

    /// Writes `value`, coordinated by `node`, from a client that read
    /// `context` (empty for a blind write), and returns the write's dot.
    ///
    /// Siblings the context saw are superseded; the rest survive beside the
    /// new value. Errors (key, value or context refused, or more than
    /// `siblings_max` siblings left) change nothing.
    pub fn put(
        &mut self,
        key: &[u8],
        context: &[u8],
        node: NodeId,
        value: Bytes,
        limits: &KvLimits,
    ) -> Result<Dot, KvError> {
        if value.len() > limits.value_bytes_max {
            return Err(KvError::ValueTooLarge {
                value_bytes: value.len(),
                value_bytes_max: limits.value_bytes_max,
            });
        }
        self.write(key, context, node, Some(value), limits)
    }

    /// Deletes the key: writes a tombstone sibling, coordinated by `node`,
    /// from a client that read `context`. It supersedes what the context saw
    /// like a write would, and it stays (as history and as a `None` sibling)
    /// so that merges with replicas still holding those values drop them.
    /// Errors change nothing.
    pub fn delete(
        &mut self,
        key: &[u8],
        context: &[u8],
        node: NodeId,
        limits: &KvLimits,
    ) -> Result<Dot, KvError> {
        self.write(key, context, node, None, limits)
    }

    /// Merges another replica's object for the same key (DVV-set sync).
    /// Never refuses and never drops a sibling the other side had not seen.
    pub fn merge(&mut self, other: &Self) {
        self.siblings.sync(&other.siblings);
    }

    /// The number of siblings, tombstones included.
    pub fn sibling_count(&self) -> usize {
        self.siblings.size()
    }

    /// The siblings with the dot of the write that made each.
    pub fn dotted_siblings(&self) -> impl Iterator<Item = (Dot, &Sibling)> + '_ {
        self.siblings.dotted_values()
    }

    /// The version vector of every write this object has seen.
    pub fn clock(&self) -> VersionVector {
        self.siblings.join()
    }

    /// Whether every sibling is a tombstone and at least one exists: the
    /// object is a deletion that has to be kept until every replica is known
    /// to hold it, and may be collected after that.
    pub fn is_tombstone(&self) -> bool {
        self.siblings.size() > 0 && self.siblings.values().all(Option::is_none)
    }

    /// Encodes the object with the shared versioned codec.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes an object from untrusted bytes, checking the DVV-set's
    /// invariants and every value against `limits.value_bytes_max`. The
    /// sibling bound is not applied: a merge must accept what writes
    /// admitted elsewhere.
    pub fn decode(bytes: &[u8], limits: &KvLimits) -> Result<Self, DecodeError> {
        let siblings = DvvSet::<Sibling>::decode(bytes)?;
        let object = Self { siblings };
        object.check_values(limits).map_err(DecodeError::Invalid)?;
        Ok(object)
    }

    /// Checks that every value respects the value bound; used on objects
    /// that arrive from other nodes.
    pub fn check_values(&self, limits: &KvLimits) -> Result<(), String> {
        let longest = self.siblings.values().flatten().map(Vec::len).max();
        match longest {
            Some(len) if len > limits.value_bytes_max => Err(format!(
                "a value of {len} bytes exceeds the bound of {}",
                limits.value_bytes_max
            )),
            _ => Ok(()),
        }
    }

    /// The common path of `put` and `delete`: check, then stamp.
    fn write(
        &mut self,
        key: &[u8],
        context: &[u8],
        node: NodeId,
        sibling: Sibling,
        limits: &KvLimits,
    ) -> Result<Dot, KvError> {
        check_key(key, limits)?;
        let seen = Context::decode(key, context, limits)?;
        // What `DvvSet::update` keeps: the siblings the context did not see,
        // plus the new one. Counted first so that a refusal changes nothing.
        let siblings = self
            .siblings
            .dotted_values()
            .filter(|(dot, _)| !seen.contains(*dot))
            .count()
            + 1;
        if siblings > limits.siblings_max {
            return Err(KvError::TooManySiblings {
                siblings,
                siblings_max: limits.siblings_max,
            });
        }
        Ok(self.siblings.update(&seen, node, sibling))
    }
}

/// Checks a key against `key_bytes_max`; the first check of every write.
pub fn check_key(key: &[u8], limits: &KvLimits) -> Result<(), KvError> {
    if key.len() > limits.key_bytes_max {
        return Err(KvError::KeyTooLarge {
            key_bytes: key.len(),
            key_bytes_max: limits.key_bytes_max,
        });
    }
    Ok(())
}

/// The decoded form of a context: the history a read saw and the key it
/// was issued for.
#[derive(Serialize, Deserialize)]
struct Context {
    /// xxh3 of the key, so a context presented for another key is refused
    /// instead of superseding unrelated siblings whose dots it happens to
    /// cover. 64 bits make an accidental match negligible.
    key_hash: u64,
    seen: VersionVector,
}

impl Context {
    fn new(key: &[u8], seen: VersionVector) -> Self {
        Self {
            key_hash: xxhash_rust::xxh3::xxh3_64(key),
            seen,
        }
    }

    fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a client's context for `key`; empty bytes are the empty
    /// history (a blind write). Never panics.
    fn decode(key: &[u8], bytes: &[u8], limits: &KvLimits) -> Result<VersionVector, KvError> {
        if bytes.is_empty() {
            return Ok(VersionVector::new());
        }
        if bytes.len() > limits.context_bytes_max {
            return Err(KvError::ContextTooLarge {
                what: "bytes",
                found: bytes.len(),
                bound: limits.context_bytes_max,
            });
        }
        // VersionVector's serde impl validates its counters, so a nested
        // vector is checked here as well.
        let context: Context = codec::decode(bytes).map_err(KvError::BadContext)?;
        if context.key_hash != xxhash_rust::xxh3::xxh3_64(key) {
            return Err(KvError::ContextForOtherKey);
        }
        if context.seen.len() > limits.context_nodes_max {
            return Err(KvError::ContextTooLarge {
                what: "nodes",
                found: context.seen.len(),
                bound: limits.context_nodes_max,
            });
        }
        Ok(context.seen)
    }
}

#[cfg(test)]
mod tests;
