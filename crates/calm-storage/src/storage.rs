//! The `Storage` trait and its `ReadView`: the contract between protocol drivers and engines.

use crate::batch::WriteBatch;
use crate::error::StorageError;
use crate::keys::{KeyRange, Keyspace, Order};
use crate::limits::Limits;

/// A key and its value, as a scan returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Point reads and bounded scans, over an engine's current state or over a snapshot.
pub trait ReadView {
    /// The value at `key` in `keyspace`, if any.
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Up to `limit` entries of `keyspace` whose keys lie in `range`, in `order`.
    ///
    /// A `limit` above [`Limits::scan_entries_max`] is refused with
    /// [`StorageError::ScanLimitTooLarge`]; page through longer ranges (see [`KeyRange`]).
    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError>;
}

/// A key-value engine with atomic batches, explicit sync points and snapshots.
///
/// # Driver contract: write, then sync before acknowledging
///
/// 1. [`write`](Storage::write) applies a batch atomically. Its effects are visible to reads
///    and later snapshots at once, but they are **not durable**: a crash may erase them (whole
///    batches, newest first; never part of a batch). A crash may also keep them: code must not
///    rely on unsynced writes being lost either.
/// 2. [`sync`](Storage::sync) makes every batch whose `write` returned before the `sync` call
///    durable. Only after `sync` returns `Ok` may anything that depends on those batches leave
///    the node: a Raft vote or append acknowledgement, a client reply, a gossip delta.
/// 3. If `write` or `sync` fails, the engine is poisoned: it refuses writes and syncs with
///    [`StorageError::Poisoned`] until it is reopened, and the driver must treat every
///    unsynced batch as in doubt.
///
/// Methods take `&self`, so one engine can be shared across threads behind an `Arc`. When
/// several threads call `sync` at once they may share one fsync (group commit), which is why
/// writing and syncing are separate calls: a driver writes each batch as it is ready and syncs
/// once before acknowledging them all.
pub trait Storage: ReadView + Send + Sync {
    /// A consistent read view, unaffected by writes made after it was taken.
    type Snapshot: ReadView + Send + Sync + 'static;

    /// The bounds this engine enforces.
    fn limits(&self) -> &Limits;

    /// Applies `batch` atomically; durable only after a later [`sync`](Storage::sync).
    ///
    /// Checks every bound in [`Limits`] first, so an oversized batch fails with a typed error
    /// and writes nothing. Writing an empty batch does nothing.
    fn write(&self, batch: &WriteBatch) -> Result<(), StorageError>;

    /// Makes every batch written before this call durable. Returns at once, without an fsync,
    /// if they already are.
    fn sync(&self) -> Result<(), StorageError>;

    /// Writes `batches` in order, then makes them and every batch written before this call
    /// durable: [`write`](Storage::write) of each followed by one [`sync`](Storage::sync),
    /// which is what this default does. An engine may do it in fewer commits: a driver that
    /// would write several batches and sync at once saves a commit per batch that way.
    ///
    /// Every batch is checked against [`Limits`] first; an oversized one fails the call with
    /// a typed error before anything is written.
    fn write_synced(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        for batch in batches {
            self.limits().check_batch(batch)?;
        }
        for batch in batches {
            self.write(batch)?;
        }
        self.sync()
    }

    /// A consistent view of the current state (synced or not).
    fn snapshot(&self) -> Result<Self::Snapshot, StorageError>;

    /// How many fsyncs (durable commits) the engine has performed since it was opened: the
    /// figure behind the fsync column of the coordination tax.
    fn fsync_count(&self) -> u64;
}
