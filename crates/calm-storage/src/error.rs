//! `StorageError`: the one error type of the storage layer; each variant says whether state changed.

use thiserror::Error;

/// Why a storage call failed.
///
/// The bound variants (`KeyTooLarge` to `ScanLimitTooLarge`) are checked before an engine
/// touches its state, so they never change anything. The failure variants say for themselves
/// what is known about the state afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StorageError {
    /// A key in the batch (or a bound of a range delete) is longer than
    /// [`Limits::key_bytes_max`](crate::Limits::key_bytes_max). Nothing was written.
    #[error("key of {key_bytes} bytes exceeds the bound of {key_bytes_max} bytes")]
    KeyTooLarge {
        /// Length of the offending key.
        key_bytes: usize,
        /// The bound it broke.
        key_bytes_max: usize,
    },
    /// A value in the batch is longer than
    /// [`Limits::value_bytes_max`](crate::Limits::value_bytes_max). Nothing was written.
    #[error("value of {value_bytes} bytes exceeds the bound of {value_bytes_max} bytes")]
    ValueTooLarge {
        /// Length of the offending value.
        value_bytes: usize,
        /// The bound it broke.
        value_bytes_max: usize,
    },
    /// The batch holds more operations than
    /// [`Limits::batch_ops_max`](crate::Limits::batch_ops_max). Nothing was written.
    #[error("batch of {ops} operations exceeds the bound of {batch_ops_max}")]
    BatchTooManyOps {
        /// Operations in the batch.
        ops: usize,
        /// The bound it broke.
        batch_ops_max: usize,
    },
    /// The batch's keys and values together are longer than
    /// [`Limits::batch_bytes_max`](crate::Limits::batch_bytes_max). Nothing was written.
    #[error("batch of {batch_bytes} bytes exceeds the bound of {batch_bytes_max} bytes")]
    BatchTooLarge {
        /// Payload bytes in the batch.
        batch_bytes: usize,
        /// The bound it broke.
        batch_bytes_max: usize,
    },
    /// A scan asked for more entries than
    /// [`Limits::scan_entries_max`](crate::Limits::scan_entries_max). Nothing was read or
    /// changed; page through the range with smaller limits.
    #[error("scan limit of {limit} entries exceeds the bound of {scan_entries_max}")]
    ScanLimitTooLarge {
        /// The limit asked for.
        limit: usize,
        /// The bound it broke.
        scan_entries_max: usize,
    },
    /// An earlier write or sync failed, so the engine refuses writes and syncs until it is
    /// reopened (the memory engine: until [`crash`](crate::MemoryEngine::crash)). This call
    /// changed nothing. Retrying a failed fsync is unsafe (the kernel may have dropped the dirty
    /// pages it could not write), which is why the engine does not try again by itself.
    #[error("the engine is poisoned by an earlier failed write or sync; reopen it")]
    Poisoned,
    /// The engine could not apply the batch. The batch is atomic, so it was applied wholly or
    /// not at all, but which one is unknown; the engine is now poisoned.
    #[error("write failed: {reason}")]
    WriteFailed {
        /// The engine's description of the failure.
        reason: String,
    },
    /// The sync did not complete. Batches written since the last successful sync may or may
    /// not be durable (each wholly or not at all); nothing may be acknowledged on the strength
    /// of this sync. The engine is now poisoned.
    #[error("sync failed: {reason}")]
    SyncFailed {
        /// The engine's description of the failure.
        reason: String,
    },
    /// A read failed. Nothing was changed.
    #[error("read failed: {reason}")]
    ReadFailed {
        /// The engine's description of the failure.
        reason: String,
    },
    /// The engine could not be opened. No engine exists; the file may have been created or
    /// repaired, but its logical contents are unchanged.
    #[error("open failed: {reason}")]
    OpenFailed {
        /// The engine's description of the failure.
        reason: String,
    },
}
