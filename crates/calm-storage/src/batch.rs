//! `WriteBatch`: the unit of atomicity; every engine applies one wholly or not at all.

use crate::keys::{KeyRange, Keyspace};

/// One mutation inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value` in `keyspace`, replacing any earlier value.
    Put {
        /// Where the key lives.
        keyspace: Keyspace,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key` from `keyspace`; removing an absent key is not an error.
    Delete {
        /// Where the key lives.
        keyspace: Keyspace,
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key of `keyspace` inside `range` (Raft log truncation and compaction,
    /// MVCC compaction). It counts as one operation however many keys it removes.
    DeleteRange {
        /// Where the keys live.
        keyspace: Keyspace,
        /// The half-open range of keys to remove.
        range: KeyRange,
    },
}

impl Op {
    /// The keyspace the operation touches.
    pub fn keyspace(&self) -> Keyspace {
        match self {
            Op::Put { keyspace, .. } | Op::Delete { keyspace, .. } => *keyspace,
            Op::DeleteRange { keyspace, .. } => *keyspace,
        }
    }

    /// Key and value bytes the operation carries, as counted against
    /// [`Limits::batch_bytes_max`](crate::Limits::batch_bytes_max).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
            Op::DeleteRange { range, .. } => {
                range.start().len() + range.end().map_or(0, <[u8]>::len)
            }
        }
    }
}

/// An ordered list of operations that an engine applies atomically: after a crash either every
/// operation of the batch is visible or none is. Later operations win over earlier ones on the
/// same key, as if applied one by one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
    payload_bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a put of `value` at `key`.
    pub fn put(
        &mut self,
        keyspace: Keyspace,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.push(Op::Put {
            keyspace,
            key: key.into(),
            value: value.into(),
        })
    }

    /// Appends a delete of `key`.
    pub fn delete(&mut self, keyspace: Keyspace, key: impl Into<Vec<u8>>) -> &mut Self {
        self.push(Op::Delete {
            keyspace,
            key: key.into(),
        })
    }

    /// Appends a delete of every key inside `range`.
    pub fn delete_range(&mut self, keyspace: Keyspace, range: KeyRange) -> &mut Self {
        self.push(Op::DeleteRange { keyspace, range })
    }

    /// Appends `op`.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.payload_bytes += op.payload_bytes();
        self.ops.push(op);
        self
    }

    /// The operations, in the order they apply.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation (writing it is a no-op).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Key and value bytes summed over all operations.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }
}
