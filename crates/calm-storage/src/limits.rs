//! `Limits`: the named bounds on keys, values, batches and scans, checked before any write.

use crate::batch::{Op, WriteBatch};
use crate::error::StorageError;

/// The bounds every engine enforces. A batch that breaks one is refused with a typed
/// [`StorageError`] before anything is written, so a too-large request can never be half
/// applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes (also applies to the bounds of a range delete).
    pub key_bytes_max: usize,
    /// Longest value, in bytes.
    pub value_bytes_max: usize,
    /// Most operations in one batch.
    pub batch_ops_max: usize,
    /// Most key and value bytes in one batch, summed over its operations.
    pub batch_bytes_max: usize,
    /// Most entries one scan may return; callers page through longer ranges.
    pub scan_entries_max: usize,
}

impl Default for Limits {
    /// Keys up to 10 KiB (FoundationDB's key bound), values up to 2 MiB (above etcd's 1.5 MiB
    /// request cap, so every value etcd accepts fits with room for MVCC metadata), batches of
    /// up to 10,000 operations and 16 MiB, scans of up to 100,000 entries.
    fn default() -> Self {
        Self {
            key_bytes_max: 10 * 1024,
            value_bytes_max: 2 * 1024 * 1024,
            batch_ops_max: 10_000,
            batch_bytes_max: 16 * 1024 * 1024,
            scan_entries_max: 100_000,
        }
    }
}

impl Limits {
    /// Checks `batch` against every bound. Engines call this before touching their state.
    pub fn check_batch(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        if batch.len() > self.batch_ops_max {
            return Err(StorageError::BatchTooManyOps {
                ops: batch.len(),
                batch_ops_max: self.batch_ops_max,
            });
        }
        if batch.payload_bytes() > self.batch_bytes_max {
            return Err(StorageError::BatchTooLarge {
                batch_bytes: batch.payload_bytes(),
                batch_bytes_max: self.batch_bytes_max,
            });
        }
        batch.ops().iter().try_for_each(|op| self.check_op(op))
    }

    /// Checks a scan's `limit` against [`Self::scan_entries_max`].
    pub fn check_scan_limit(&self, limit: usize) -> Result<(), StorageError> {
        if limit > self.scan_entries_max {
            return Err(StorageError::ScanLimitTooLarge {
                limit,
                scan_entries_max: self.scan_entries_max,
            });
        }
        Ok(())
    }

    fn check_op(&self, op: &Op) -> Result<(), StorageError> {
        match op {
            Op::Put { key, value, .. } => {
                self.check_key(key)?;
                if value.len() > self.value_bytes_max {
                    return Err(StorageError::ValueTooLarge {
                        value_bytes: value.len(),
                        value_bytes_max: self.value_bytes_max,
                    });
                }
                Ok(())
            }
            Op::Delete { key, .. } => self.check_key(key),
            Op::DeleteRange { range, .. } => {
                self.check_key(range.start())?;
                range.end().map_or(Ok(()), |end| self.check_key(end))
            }
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), StorageError> {
        if key.len() > self.key_bytes_max {
            return Err(StorageError::KeyTooLarge {
                key_bytes: key.len(),
                key_bytes_max: self.key_bytes_max,
            });
        }
        Ok(())
    }
}
