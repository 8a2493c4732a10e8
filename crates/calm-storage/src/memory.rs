//! `MemoryEngine`: a deterministic in-memory engine that models crashes and failed syncs, for
//! the simulator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::batch::{Op, WriteBatch};
use crate::error::StorageError;
use crate::keys::{KeyRange, Keyspace, Order};
use crate::limits::Limits;
use crate::storage::{Entry, ReadView, Storage};

/// The whole state: keyspace → key → value.
type Image = BTreeMap<Keyspace, BTreeMap<Vec<u8>, Vec<u8>>>;

/// An in-memory engine that keeps what a disk would hold apart from what the process sees.
///
/// It holds the **durable image** (the state as of the last successful sync) and the
/// **pending batches** written since. [`crash`](Self::crash) throws the pending batches away,
/// as a process crash does to unsynced writes; [`crash_keeping`](Self::crash_keeping) keeps a
/// prefix of them, as a disk that happened to flush some does. [`fail_next_sync`]
/// (Self::fail_next_sync) makes a sync fail so the simulator can drive error paths.
///
/// It is deterministic: no threads, no clocks, no randomness (the simulator decides when to
/// crash). The `Mutex` inside only satisfies the `&self` + `Sync` contract of [`Storage`]; the
/// simulator drives it from one thread, so it is never contended.
///
/// `fsync_count` counts the syncs that had pending batches to make durable, which is when the
/// disk engine would fsync.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    limits: Limits,
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    /// The state a crash returns to. Shared with `visible` right after a crash; copied on the
    /// next write.
    durable: Arc<Image>,
    /// What reads see: `durable` with `pending` applied. Shared with live snapshots, so a
    /// write after a snapshot copies it once (`Arc::make_mut`) and the snapshot keeps the old.
    visible: Arc<Image>,
    /// Batches written since the last successful sync, oldest first.
    pending: Vec<WriteBatch>,
    poisoned: bool,
    fail_next_sync: bool,
    fsyncs: u64,
}

/// A frozen view of a [`MemoryEngine`].
#[derive(Clone, Debug)]
pub struct MemorySnapshot {
    limits: Limits,
    image: Arc<Image>,
}

impl MemoryEngine {
    /// An empty engine enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Mutex::default(),
        }
    }

    /// Simulates a process crash and restart: every batch written since the last successful
    /// sync is lost, reads see the durable image, and poisoning and armed faults are cleared.
    /// Snapshots taken before keep what they saw.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// Like [`crash`](Self::crash), but the oldest `batches` pending batches (all of them if
    /// fewer are pending) survive, as if the disk had flushed them before the crash. The
    /// contract lets a crash keep unsynced writes, so a simulator should exercise this too.
    pub fn crash_keeping(&self, batches: usize) {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        let durable = Arc::make_mut(&mut state.durable);
        for batch in pending.iter().take(batches) {
            apply(durable, batch);
        }
        state.visible = Arc::clone(&state.durable);
        state.poisoned = false;
        state.fail_next_sync = false;
    }

    /// Makes the next sync that has pending batches fail with [`StorageError::SyncFailed`]
    /// (and poison the engine), as a real fsync error would.
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Batches written since the last successful sync.
    pub fn pending_batches(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether a failed sync has poisoned the engine (until the next crash).
    pub fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // Every critical section leaves the state consistent before it could panic (a panic
        // inside `apply` would be a bug in BTreeMap), so a poisoned lock holds valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadView for MemoryEngine {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(get(&self.lock().visible, keyspace, key))
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.limits.check_scan_limit(limit)?;
        Ok(scan(&self.lock().visible, keyspace, range, order, limit))
    }
}

impl Storage for MemoryEngine {
    type Snapshot = MemorySnapshot;

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.limits.check_batch(batch)?;
        let mut state = self.lock();
        if state.poisoned {
            return Err(StorageError::Poisoned);
        }
        if batch.is_empty() {
            return Ok(());
        }
        apply(Arc::make_mut(&mut state.visible), batch);
        state.pending.push(batch.clone());
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut state = self.lock();
        if state.pending.is_empty() {
            return Ok(());
        }
        if state.poisoned {
            return Err(StorageError::Poisoned);
        }
        if std::mem::take(&mut state.fail_next_sync) {
            state.poisoned = true;
            return Err(StorageError::SyncFailed {
                reason: "injected fault".to_owned(),
            });
        }
        // Apply the pending batches rather than copying `visible`, so a sync costs what was
        // written since the last one, not the size of the whole state.
        let pending = std::mem::take(&mut state.pending);
        let durable = Arc::make_mut(&mut state.durable);
        for batch in &pending {
            apply(durable, batch);
        }
        state.fsyncs += 1;
        Ok(())
    }

    fn snapshot(&self) -> Result<MemorySnapshot, StorageError> {
        Ok(MemorySnapshot {
            limits: self.limits,
            image: Arc::clone(&self.lock().visible),
        })
    }

    fn fsync_count(&self) -> u64 {
        self.lock().fsyncs
    }
}

impl ReadView for MemorySnapshot {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(get(&self.image, keyspace, key))
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.limits.check_scan_limit(limit)?;
        Ok(scan(&self.image, keyspace, range, order, limit))
    }
}

fn apply(image: &mut Image, batch: &WriteBatch) {
    for op in batch.ops() {
        let keys = image.entry(op.keyspace()).or_default();
        match op {
            Op::Put { key, value, .. } => {
                keys.insert(key.clone(), value.clone());
            }
            Op::Delete { key, .. } => {
                keys.remove(key);
            }
            Op::DeleteRange { range, .. } => {
                // Collect first: a BTreeMap cannot remove while a range borrows it.
                let doomed: Vec<Vec<u8>> = match range.bounds() {
                    Some(bounds) => keys
                        .range::<[u8], _>(bounds)
                        .map(|(key, _)| key.clone())
                        .collect(),
                    None => Vec::new(),
                };
                for key in doomed {
                    keys.remove(&key);
                }
            }
        }
    }
}

fn get(image: &Image, keyspace: Keyspace, key: &[u8]) -> Option<Vec<u8>> {
    image.get(&keyspace)?.get(key).cloned()
}

fn scan(
    image: &Image,
    keyspace: Keyspace,
    range: &KeyRange,
    order: Order,
    limit: usize,
) -> Vec<Entry> {
    let (Some(keys), Some(bounds)) = (image.get(&keyspace), range.bounds()) else {
        return Vec::new();
    };
    let entries = keys
        .range::<[u8], _>(bounds)
        .map(|(key, value)| (key.clone(), value.clone()));
    match order {
        Order::Ascending => entries.take(limit).collect(),
        Order::Descending => entries.rev().take(limit).collect(),
    }
}
