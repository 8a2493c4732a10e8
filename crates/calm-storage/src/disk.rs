//! `DiskEngine`: the redb-backed engine, with group commit so concurrent syncs share an fsync.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::{Durability, ReadTransaction, ReadableDatabase, TableDefinition};

use crate::batch::{Op, WriteBatch};
use crate::error::StorageError;
use crate::keys::{KeyRange, Keyspace, Order};
use crate::limits::Limits;
use crate::storage::{Entry, ReadView, Storage};

/// Every keyspace is a redb table of raw bytes; encoding is the caller's business.
type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;
/// An entry as a redb range yields it, borrowing the page it lives on.
type RawEntry<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

/// redb's page cache. Its default (1 GiB) filled with the pages every commit writes, though
/// the protocol cores keep what they read in memory and read the store back only on open; the
/// operating system's page cache still holds the file for the reads that remain.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

fn table(keyspace: Keyspace) -> Table {
    TableDefinition::new(keyspace.name())
}

/// An engine over one redb file.
///
/// # How writes become durable
///
/// [`write`](Storage::write) commits its batch as a redb transaction with
/// [`Durability::None`]: atomic and visible to reads, but without an fsync. redb keeps such
/// commits in a secondary header slot held in memory, so after a crash the file opens at the
/// last durable commit and every non-durable commit since is gone, each wholly. (A clean
/// drop, by contrast, makes them durable: redb promotes pending commits on close.)
///
/// [`sync`](Storage::sync) makes them durable with an empty [`Durability::Immediate`]
/// commit, which flushes every earlier commit and costs one fsync.
///
/// # Group commit
///
/// Concurrent syncs share one fsync, by leader and followers under a std `Mutex` and
/// `Condvar`: the first syncer becomes the leader, takes redb's writer slot, counts the
/// batches written so far and commits; syncers arriving meanwhile wait, and the leader's
/// fsync covers every batch it counted. A waiter whose batches the finished fsync covered returns without
/// one; otherwise it leads the next. This was chosen over a committer thread because the
/// caller's own thread does the fsync: a lone writer pays no hand-off to another thread, and
/// the engine owns no thread to start, stop or lose on panic. The locks are std ones because
/// nothing awaits while they are held, and the fsync itself runs with the mutex released.
///
/// While the leader's commit runs, redb admits no other write transaction, so writes wait for
/// the fsync too; the batches written during one fsync are then covered by the next. Lock
/// order: redb's writer slot, then `commits`; nothing waits for the slot while holding
/// `commits`, so the two cannot deadlock.
#[derive(Debug)]
pub struct DiskEngine {
    db: redb::Database,
    path: PathBuf,
    limits: Limits,
    commits: Mutex<CommitState>,
    /// Signalled whenever a leader finishes, successfully or not.
    leader_done: Condvar,
    fsyncs: AtomicU64,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Batches committed (non-durably) since open.
    written_seq: u64,
    /// Batches known to be durable: `written_seq` as the last successful leader counted it.
    durable_seq: u64,
    /// Whether a leader's durable commit is in progress.
    leader_active: bool,
    /// Set by a failed write or sync; the engine then refuses both until reopened.
    poisoned: bool,
}

/// A read transaction: redb's MVCC keeps it unaffected by later commits. It pins the pages it
/// reads, so the file cannot reuse them while it lives: hold snapshots briefly.
pub struct DiskSnapshot {
    limits: Limits,
    txn: ReadTransaction,
}

impl std::fmt::Debug for DiskSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskSnapshot").finish_non_exhaustive()
    }
}

impl DiskEngine {
    /// Opens the database at `path`, creating it if absent. After a crash, redb rolls back to
    /// the last durable commit and repairs its allocator state here.
    pub fn open(path: impl AsRef<Path>, limits: Limits) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|error| StorageError::OpenFailed {
                reason: error.to_string(),
            })?;
        Ok(Self {
            db,
            path,
            limits,
            commits: Mutex::default(),
            leader_done: Condvar::new(),
            fsyncs: AtomicU64::new(0),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, CommitState> {
        // Critical sections only assign counters and flags, so a panic elsewhere cannot leave
        // the state half-updated; a poisoned lock still holds valid state.
        self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits `batch` without an fsync.
    fn commit_batch(&self, batch: &WriteBatch) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        apply_batches(&txn, std::slice::from_ref(batch))?;
        txn.commit()?;
        Ok(())
    }

    /// The leader's durable commit: a transaction with `Durability::Immediate` holding
    /// `batches` (none for a plain sync) flushes them and every earlier non-durable commit
    /// with one fsync. Returns how many written batches it made durable; `batches` are not
    /// among them: they are the caller's, whose call returns only once they are durable, and
    /// no other syncer waits for them.
    fn commit_durable(&self, batches: &[WriteBatch]) -> Result<u64, redb::Error> {
        let mut txn = self.db.begin_write()?;
        // Counted while this transaction holds redb's single writer slot: no batch can commit
        // until it ends, so every batch counted is in the state it makes durable. Counting here
        // rather than on entering `sync` also covers the batches that committed while the
        // leader waited for the slot, which is where much of the grouping comes from.
        let covered = self.lock().written_seq;
        apply_batches(&txn, batches)?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(covered)
    }

    /// Runs one durable commit of `batches` as the leader; the guard publishes the outcome to
    /// followers.
    fn lead(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        let mut guard = LeaderGuard {
            engine: self,
            covered: None,
        };
        let covered = self
            .commit_durable(batches)
            .map_err(|error| StorageError::SyncFailed {
                reason: error.to_string(),
            })?;
        guard.covered = Some(covered);
        Ok(())
    }
}

/// Ends a leader's turn, on return or on panic, so followers never wait forever: records the
/// batches made durable (or poisons the engine if there are none to record, i.e. the commit
/// failed), clears `leader_active` and wakes the followers.
struct LeaderGuard<'a> {
    engine: &'a DiskEngine,
    covered: Option<u64>,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.engine.lock();
        state.leader_active = false;
        match self.covered {
            Some(covered) => {
                state.durable_seq = state.durable_seq.max(covered);
                self.engine.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            None => state.poisoned = true,
        }
        drop(state);
        self.engine.leader_done.notify_all();
    }
}

/// Applies the operations of `batches`, in order, inside `txn`.
///
/// Every table stays open until the end: opening one is a lookup in redb's table tree and
/// closing it writes its root back, and batches alternate between keyspaces (an applied
/// entry's record, then the applied index), which reopened a table for nearly every operation.
/// redb allows several different tables open in one transaction; each is opened once here.
fn apply_batches(txn: &redb::WriteTransaction, batches: &[WriteBatch]) -> Result<(), redb::Error> {
    let mut open: Vec<(Keyspace, WriteTable<'_>)> = Vec::new();
    for op in batches.iter().flat_map(WriteBatch::ops) {
        let at = match open
            .iter()
            .position(|(keyspace, _)| *keyspace == op.keyspace())
        {
            Some(at) => at,
            None => {
                open.push((op.keyspace(), txn.open_table(table(op.keyspace()))?));
                open.len() - 1
            }
        };
        apply(&mut open[at].1, op)?;
    }
    Ok(())
}

fn apply(table: &mut WriteTable<'_>, op: &Op) -> Result<(), redb::Error> {
    match op {
        Op::Put { key, value, .. } => {
            table.insert(key.as_slice(), value.as_slice())?;
        }
        Op::Delete { key, .. } => {
            table.remove(key.as_slice())?;
        }
        Op::DeleteRange { range, .. } => {
            if let Some(bounds) = range.bounds() {
                table.retain_in::<&[u8], _>(bounds, |_, _| false)?;
            }
        }
    }
    Ok(())
}

fn read_failed(error: impl Into<redb::Error>) -> StorageError {
    StorageError::ReadFailed {
        reason: error.into().to_string(),
    }
}

/// Opens `keyspace` for reading; `None` if no batch has ever written to it.
fn open_read(txn: &ReadTransaction, keyspace: Keyspace) -> Result<Option<ReadTable>, StorageError> {
    match txn.open_table(table(keyspace)) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(read_failed(error)),
    }
}

fn get_in(
    txn: &ReadTransaction,
    keyspace: Keyspace,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    let Some(table) = open_read(txn, keyspace)? else {
        return Ok(None);
    };
    let value = table.get(key).map_err(read_failed)?;
    Ok(value.map(|guard| guard.value().to_vec()))
}

fn scan_in(
    txn: &ReadTransaction,
    keyspace: Keyspace,
    range: &KeyRange,
    order: Order,
    limit: usize,
) -> Result<Vec<Entry>, StorageError> {
    let (Some(table), Some(bounds)) = (open_read(txn, keyspace)?, range.bounds()) else {
        return Ok(Vec::new());
    };
    let entries = table.range::<&[u8]>(bounds).map_err(read_failed)?;
    match order {
        Order::Ascending => entries.take(limit).map(owned).collect(),
        Order::Descending => entries.rev().take(limit).map(owned).collect(),
    }
}

fn owned(item: Result<RawEntry<'_>, redb::StorageError>) -> Result<Entry, StorageError> {
    let (key, value) = item.map_err(read_failed)?;
    Ok((key.value().to_vec(), value.value().to_vec()))
}

impl ReadView for DiskEngine {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        get_in(&self.db.begin_read().map_err(read_failed)?, keyspace, key)
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.limits.check_scan_limit(limit)?;
        let txn = self.db.begin_read().map_err(read_failed)?;
        scan_in(&txn, keyspace, range, order, limit)
    }
}

impl Storage for DiskEngine {
    type Snapshot = DiskSnapshot;

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.limits.check_batch(batch)?;
        if self.lock().poisoned {
            return Err(StorageError::Poisoned);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.commit_batch(batch);
        let mut state = self.lock();
        match result {
            // Counted only once the commit has returned, so a leader that counts this batch
            // took redb's writer slot after the commit and makes it durable.
            Ok(()) => {
                state.written_seq += 1;
                Ok(())
            }
            Err(error) => {
                state.poisoned = true;
                Err(StorageError::WriteFailed {
                    reason: error.to_string(),
                })
            }
        }
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.sync_with(&[])
    }

    /// One redb transaction instead of one per batch plus the sync's: each commit copies the
    /// B-tree pages it touches and writes the table roots again, so a driver writing Raft's
    /// log, the applied state and the sync together pays that once.
    fn write_synced(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        for batch in batches {
            self.limits.check_batch(batch)?;
        }
        self.sync_with(batches)
    }

    fn snapshot(&self) -> Result<DiskSnapshot, StorageError> {
        Ok(DiskSnapshot {
            limits: self.limits,
            txn: self.db.begin_read().map_err(read_failed)?,
        })
    }

    fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

impl DiskEngine {
    /// Returns once every batch written before the call is durable, leading a durable commit
    /// when none covers them yet; `batches`, when any holds operations, always go into a
    /// durable commit of this call's own.
    fn sync_with(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        let own = batches.iter().any(|batch| !batch.is_empty());
        let mut state = self.lock();
        let target = state.written_seq;
        loop {
            if !own && state.durable_seq >= target {
                return Ok(());
            }
            if state.poisoned {
                return Err(StorageError::Poisoned);
            }
            if !state.leader_active {
                break;
            }
            state = self
                .leader_done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.leader_active = true;
        drop(state);
        self.lead(batches)
    }
}

impl ReadView for DiskSnapshot {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        get_in(&self.txn, keyspace, key)
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.limits.check_scan_limit(limit)?;
        scan_in(&self.txn, keyspace, range, order, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: Keyspace = Keyspace::new("log");
    const STATE: Keyspace = Keyspace::new("state");

    fn batch(keyspace: Keyspace, key: &str, value: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(keyspace, key, value);
        batch
    }

    #[test]
    fn batches_written_synced_apply_in_order_with_one_fsync_covering_earlier_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = DiskEngine::open(dir.path().join("db"), Limits::default()).expect("open");
        engine
            .write(&batch(STATE, "applied", "1"))
            .expect("unsynced write");
        let fsyncs = engine.fsync_count();

        let batches = [batch(STATE, "applied", "2"), batch(LOG, "entry", "3")];
        engine.write_synced(&batches).expect("write synced");

        assert_eq!(engine.fsync_count(), fsyncs + 1);
        assert_eq!(
            engine.get(STATE, b"applied").expect("get"),
            Some(b"2".to_vec()),
            "the later batch wins"
        );
        assert_eq!(engine.get(LOG, b"entry").expect("get"), Some(b"3".to_vec()));
        engine.sync().expect("sync");
        assert_eq!(
            engine.fsync_count(),
            fsyncs + 1,
            "the earlier unsynced write was covered by the same fsync"
        );
    }

    #[test]
    fn an_oversized_batch_fails_the_call_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            batch_ops_max: 1,
            ..Limits::default()
        };
        let engine = DiskEngine::open(dir.path().join("db"), limits).expect("open");
        let mut oversized = batch(LOG, "a", "1");
        oversized.put(LOG, "b", "2");
        let result = engine.write_synced(&[batch(STATE, "applied", "1"), oversized]);

        assert!(matches!(result, Err(StorageError::BatchTooManyOps { .. })));
        assert_eq!(engine.get(STATE, b"applied").expect("get"), None);
        assert_eq!(engine.fsync_count(), 0);
    }
}
