//! The MVCC store: etcd's revisioned key-value history, kept whole in memory
//! and written through to storage, answering etcd's own KV requests.
//!
//! # Model
//!
//! Every change is a *record* at a revision `(main, sub)`: the main revision names one
//! applied write request (a Put, a DeleteRange that deleted something, or a
//! Txn with at least one change), the sub-revision numbers the changes inside
//! it. A record either puts a value (with the key's create revision, version
//! and lease, as etcd's `KeyValue` has them) or is a tombstone. A fresh store
//! is at revision 1 with no keys, as etcd is. Reads at any retained revision
//! see the newest record of each key at or below it.
//!
//! Compaction at revision `c` forgets history: per key it keeps only the
//! newest record at or below `c` (and drops it as well if it is a tombstone),
//! so reads at `c` or later are unchanged and reads below `c` fail with
//! [`MvccError::Compacted`].
//!
//! # Driver contract
//!
//! * **Inputs** (mutating; each takes the caller's [`WriteBatch`]):
//!   [`Mvcc::put`], [`Mvcc::delete_range`], [`Mvcc::txn`], [`Mvcc::compact`],
//!   and [`Mvcc::restore`] to replace everything from a snapshot. They are
//!   called in Raft apply order, the same on every replica. Each either
//!   succeeds, having changed memory and appended its records to the batch, or
//!   fails having changed neither.
//! * **Outputs**: the etcd response (header left `None` for the caller to
//!   fill) and, for writes, the [`Applied::events`] to hand to the watch hub
//!   and the lessor (every event whose key had a previous version carries it
//!   in `prev_kv`, so the lessor can detach that version's lease).
//! * **Reads**: [`Mvcc::range`], [`Mvcc::changes`] (watch catch-up),
//!   [`Mvcc::hash_kv`], [`Mvcc::size_bytes`], [`Mvcc::snapshot`].
//! * **Persistence**: the driver writes each batch before it acknowledges the
//!   request it came from (and syncs per calm-storage's contract); after a
//!   restart [`Mvcc::load`] rebuilds exactly the state those batches describe.
//!
//! Requests are validated as etcd's gRPC layer and apply path validate them
//! (empty key, `ignore_value` with a value, duplicate keys in a txn, missing
//! lease, ...) before anything changes, so a refused request leaves both the
//! store and the batch untouched.

mod error;
mod persist;
mod range;
mod txn;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use calm_proto::etcd::etcdserverpb::{
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use calm_proto::etcd::mvccpb::{Event, KeyValue, event::EventType};
use calm_storage::{ReadView, WriteBatch};
use serde::{Deserialize, Serialize};

pub use error::MvccError;
pub use persist::{MVCC_META, MVCC_REVISIONS};
pub(crate) use range::KeyBounds;

/// Most operations one txn branch (and most compares) may hold: etcd's
/// default `--max-txn-ops`. Nested txns share the budget as etcd's do.
pub const TXN_OPS_MAX: usize = 128;

/// Bytes counted per retained record on top of its key and value in
/// [`Mvcc::size_bytes`]: the revision, create revision, version and lease, and
/// the storage engine's per-entry cost, roughly as etcd's bbolt pays them.
pub const RECORD_OVERHEAD_BYTES: u64 = 48;

/// The outcome of a write: etcd's response and the changes it made.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied<R> {
    /// etcd's response; its `header` is left `None` for the caller to fill.
    pub response: R,
    /// The changes, in the order they were made, all at one main revision.
    /// A Put event carries the new `KeyValue`; a Delete event carries the key
    /// with `mod_revision` set to the deletion's revision, as etcd's do. Every
    /// event of a key that had a previous version carries it in `prev_kv`
    /// (watchers that did not ask for it have it stripped by the watch hub).
    /// Empty when the request changed nothing.
    pub events: Vec<Event>,
}

/// etcd's MVCC store over etcd's own messages; see the [module docs](self)
/// for the model and the driver contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mvcc {
    /// Every retained record of every key, oldest first.
    keys: BTreeMap<Vec<u8>, Vec<Record>>,
    /// The key of every retained record by revision: watch catch-up, hashing
    /// and snapshots walk history in revision order, as etcd's key bucket is
    /// ordered.
    history: BTreeMap<Revision, Vec<u8>>,
    /// The newest applied main revision.
    revision: i64,
    /// The revision of the last compaction; 0 before any.
    compact_revision: i64,
    /// Key, value and overhead bytes of the retained records.
    size_bytes: u64,
}

/// The position of one change: the main revision of the request that made it
/// and its index among that request's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Revision {
    /// The write request's revision.
    pub(crate) main: i64,
    /// The change's index inside the request (0 outside a txn).
    pub(crate) sub: i64,
}

impl Revision {
    /// The first revision of main revision `main`.
    fn first_of(main: i64) -> Self {
        Self { main, sub: 0 }
    }

    /// The last possible revision of main revision `main`.
    fn last_of(main: i64) -> Self {
        Self {
            main,
            sub: i64::MAX,
        }
    }
}

/// What one record did to its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Change {
    /// The key was set: etcd's `KeyValue` fields other than the key and its
    /// mod revision (the record's own revision).
    Put {
        /// The new value.
        #[serde(with = "crate::bytes")]
        value: Vec<u8>,
        /// The attached lease, 0 for none.
        lease: i64,
        /// The revision that created this generation of the key.
        create_revision: i64,
        /// Puts since that creation, this one included.
        version: i64,
    },
    /// The key was deleted.
    Tombstone,
}

/// One retained change of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) revision: Revision,
    pub(crate) change: Change,
}

impl Record {
    /// The key's `KeyValue` as of this record, `None` for a tombstone.
    fn key_value(&self, key: &[u8]) -> Option<KeyValue> {
        self.key_value_shaped(key, true)
    }

    /// Like [`Self::key_value`], without copying the value unless
    /// `with_value` (keys-only ranges never look at it).
    fn key_value_shaped(&self, key: &[u8], with_value: bool) -> Option<KeyValue> {
        match &self.change {
            Change::Put {
                value,
                lease,
                create_revision,
                version,
            } => Some(KeyValue {
                key: key.to_vec(),
                create_revision: *create_revision,
                mod_revision: self.revision.main,
                version: *version,
                value: if with_value {
                    value.clone()
                } else {
                    Vec::new()
                },
                lease: *lease,
            }),
            Change::Tombstone => None,
        }
    }

    /// Whether the record sets a value (is not a tombstone).
    fn is_put(&self) -> bool {
        matches!(self.change, Change::Put { .. })
    }

    /// The storage [`Mvcc::size_bytes`] charges this record for `key`.
    fn size_bytes(&self, key: &[u8]) -> u64 {
        let value_bytes = match &self.change {
            Change::Put { value, .. } => value.len(),
            Change::Tombstone => 0,
        };
        (key.len() + value_bytes) as u64 + RECORD_OVERHEAD_BYTES
    }
}

/// The newest record of `records` (oldest first) at or below main revision
/// `at`.
fn record_at(records: &[Record], at: i64) -> Option<&Record> {
    let newer = records.partition_point(|record| record.revision.main <= at);
    newer.checked_sub(1).map(|index| &records[index])
}

/// The changes of one write request in progress, all at main revision
/// `main`: applied to memory as they are made (so later operations of a txn
/// read them), persisted into the batch by [`Mvcc::commit`], or taken back by
/// [`Mvcc::rollback`].
#[derive(Debug)]
pub(crate) struct Writer {
    main: i64,
    /// Each change's key and revision, in order.
    changes: Vec<(Vec<u8>, Revision)>,
    /// The storage writes that persist the changes.
    stored: Vec<(Vec<u8>, Vec<u8>)>,
    events: Vec<Event>,
}

impl Default for Mvcc {
    fn default() -> Self {
        Self::new()
    }
}

impl Mvcc {
    // ---- Construction -------------------------------------------------

    /// An empty store at revision 1, as a fresh etcd is.
    pub fn new() -> Self {
        Self {
            keys: BTreeMap::new(),
            history: BTreeMap::new(),
            revision: 1,
            compact_revision: 0,
            size_bytes: 0,
        }
    }

    /// Rebuilds the store from what earlier batches wrote into `view`.
    ///
    /// Fails with [`MvccError::Storage`] if a read fails and
    /// [`MvccError::Corrupt`] if the stored bytes are not a store this build
    /// wrote; it never panics on bad bytes.
    pub fn load(view: &impl ReadView) -> Result<Mvcc, MvccError> {
        persist::load(view)
    }

    /// Replaces the whole store with the one [`Mvcc::snapshot`] encoded in
    /// `bytes`, appending to `batch` the deletion of every persisted MVCC
    /// entry and the writes of the restored ones.
    ///
    /// Fails with [`MvccError::Corrupt`] (leaving `batch` untouched) if the
    /// bytes do not decode to a valid store. The batch holds one write per
    /// retained record: a driver restoring a large store must allow for it.
    pub fn restore(bytes: &[u8], batch: &mut WriteBatch) -> Result<Mvcc, MvccError> {
        persist::restore(bytes, batch)
    }

    // ---- Getters ------------------------------------------------------

    /// The newest applied revision (1 for a fresh store).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision of the last compaction, 0 if there was none.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Key, value and per-record overhead bytes of every retained revision:
    /// what etcd's space quota measures (there, the database file size).
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Encodes the whole store (the retained history and the compact
    /// revision) for [`Mvcc::restore`] on another replica.
    pub fn snapshot(&self) -> Vec<u8> {
        persist::snapshot(self)
    }

    // ---- Reads --------------------------------------------------------

    /// etcd's Range: the keys in `[key, range_end)` (one key if `range_end` is
    /// empty, every key from `key` on if it is `"\0"`) at `revision` (0 for
    /// the current one), filtered, sorted and limited as etcd does. `count` is
    /// the number of keys in the range before revision filters and the limit,
    /// and `more` says the limit cut keys off.
    ///
    /// Fails, changing nothing, with [`MvccError::EmptyKey`],
    /// [`MvccError::InvalidSortOption`], [`MvccError::FutureRevision`] or
    /// [`MvccError::Compacted`].
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        range::validate_range_request(request)?;
        let at = self.read_revision(request.revision)?;
        Ok(self.range_at(request, at))
    }

    /// The events in `[key, range_end)` (range_end as in [`Mvcc::range`]) from
    /// revision `from_revision` on, in revision order, with `prev_kv` filled
    /// wherever the key had a previous version: what a watcher starting at
    /// `from_revision` must be sent. At most `max_revisions` main revisions
    /// that hold matching events are returned, each one whole; fewer means
    /// the history up to [`Mvcc::revision`] is exhausted. Revisions beyond the
    /// current one simply have no events yet.
    ///
    /// Fails with [`MvccError::Compacted`] if `from_revision` is at or below
    /// the compact revision: the events there are gone (etcd lets a watch
    /// start at `compact_revision + 1` at the earliest).
    pub fn changes(
        &self,
        key: &[u8],
        range_end: &[u8],
        from_revision: i64,
        max_revisions: usize,
    ) -> Result<Vec<Event>, MvccError> {
        let from_revision = from_revision.max(1);
        if from_revision <= self.compact_revision {
            return Err(MvccError::Compacted {
                requested: from_revision,
                compact_revision: self.compact_revision,
            });
        }
        let bounds = KeyBounds::new(key, range_end);
        let mut events = Vec::new();
        let mut revisions_seen = 0;
        let mut last_main = None;
        for (revision, record_key) in self.history.range(Revision::first_of(from_revision)..) {
            if !bounds.contains(record_key) {
                continue;
            }
            if last_main != Some(revision.main) {
                if revisions_seen == max_revisions {
                    break;
                }
                revisions_seen += 1;
                last_main = Some(revision.main);
            }
            if let Some(event) = self.event_at(record_key, *revision) {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// etcd's HashKV: a hash of every retained record at or below `revision`
    /// (0 for the current one) and the compact revision. Replicas that applied
    /// the same requests return the same hash, which is how etcd's corruption
    /// check compares them.
    ///
    /// Fails with [`MvccError::FutureRevision`] or [`MvccError::Compacted`].
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), MvccError> {
        let at = if revision == 0 {
            self.revision
        } else {
            revision
        };
        if at > self.revision {
            return Err(MvccError::FutureRevision {
                requested: at,
                current: self.revision,
            });
        }
        if at < self.compact_revision {
            return Err(MvccError::Compacted {
                requested: at,
                compact_revision: self.compact_revision,
            });
        }
        Ok((persist::hash_history(self, at), self.compact_revision))
    }

    // ---- Writes -------------------------------------------------------

    /// etcd's Put. `lease_exists` answers whether a lease is granted; a
    /// nonzero `lease` that is not fails with [`MvccError::LeaseNotFound`].
    /// With `ignore_value` / `ignore_lease` the key's current value / lease is
    /// kept, and the key must exist ([`MvccError::KeyNotFound`]).
    ///
    /// Other failures: [`MvccError::EmptyKey`], [`MvccError::ValueProvided`],
    /// [`MvccError::LeaseProvided`]. Any failure changes nothing.
    pub fn put(
        &mut self,
        request: &PutRequest,
        lease_exists: impl Fn(i64) -> bool,
        batch: &mut WriteBatch,
    ) -> Result<Applied<PutResponse>, MvccError> {
        txn::validate_put_request(request)?;
        self.check_put(request, &lease_exists)?;
        let mut writer = self.begin();
        match self.execute_put(&mut writer, request) {
            Ok(response) => Ok(Applied {
                response,
                events: self.commit(writer, batch),
            }),
            Err(error) => {
                self.rollback(writer);
                Err(error)
            }
        }
    }

    /// etcd's DeleteRange over `[key, range_end)` (range_end as in
    /// [`Mvcc::range`]). Deleting nothing changes nothing and does not bump
    /// the revision. Fails, changing nothing, only with
    /// [`MvccError::EmptyKey`].
    pub fn delete_range(
        &mut self,
        request: &DeleteRangeRequest,
        batch: &mut WriteBatch,
    ) -> Result<Applied<DeleteRangeResponse>, MvccError> {
        txn::validate_delete_request(request)?;
        let mut writer = self.begin();
        let response = self.execute_delete(&mut writer, request);
        Ok(Applied {
            response,
            events: self.commit(writer, batch),
        })
    }

    /// etcd's Txn: evaluates the compares (nested txns' compares included)
    /// against the current state, then runs the chosen branch at one main
    /// revision, each change at its own sub-revision; reads inside the txn see
    /// its earlier writes. A txn that changes nothing does not bump the
    /// revision.
    ///
    /// Everything is checked before anything changes, as etcd checks it:
    /// request shape ([`MvccError::EmptyKey`], [`MvccError::TooManyOps`],
    /// [`MvccError::DuplicateKey`], ...), then, on the chosen branch,
    /// leases, `ignore_value` keys and read revisions. A failure changes
    /// nothing.
    pub fn txn(
        &mut self,
        request: &TxnRequest,
        lease_exists: impl Fn(i64) -> bool,
        batch: &mut WriteBatch,
    ) -> Result<Applied<TxnResponse>, MvccError> {
        txn::validate_txn_request(request, TXN_OPS_MAX)?;
        let decision = self.decide(request);
        self.check_branch(request, &decision, &lease_exists)?;
        let mut writer = self.begin();
        match self.execute_branch(&mut writer, request, &decision) {
            Ok(response) => Ok(Applied {
                response,
                events: self.commit(writer, batch),
            }),
            Err(error) => {
                self.rollback(writer);
                Err(error)
            }
        }
    }

    /// A txn whose chosen branch only reads, on a shared reference: what a
    /// linearizable read-only txn runs once its read index is applied, with
    /// no log entry. Writes on the chosen branch are refused with
    /// [`MvccError::ReadOnly`]: such a txn must go through the log.
    pub fn read_txn(&self, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        txn::validate_txn_request(request, TXN_OPS_MAX)?;
        let decision = self.decide(request);
        self.check_branch(request, &decision, &|_| true)?;
        self.read_branch(request, &decision)
    }

    /// Every live key with a lease, and that lease: the lessor's
    /// attachments, rebuilt after a load or a snapshot.
    pub fn leased_keys(&self) -> Vec<(Vec<u8>, i64)> {
        self.keys
            .iter()
            .filter_map(|(key, records)| match records.last().map(|r| &r.change) {
                Some(Change::Put { lease, .. }) if *lease != 0 => Some((key.clone(), *lease)),
                _ => None,
            })
            .collect()
    }

    /// etcd's Compact: forgets every revision below `revision` that a read at
    /// `revision` or later cannot see (per key, all records at or below it but
    /// the newest, and that one too if it is a tombstone), in memory and in
    /// `batch`.
    ///
    /// Fails, changing nothing, with [`MvccError::Compacted`] if `revision`
    /// is not above the current compact revision and
    /// [`MvccError::FutureRevision`] if it is above the current revision.
    pub fn compact(
        &mut self,
        revision: i64,
        batch: &mut WriteBatch,
    ) -> Result<CompactionResponse, MvccError> {
        if revision <= self.compact_revision {
            return Err(MvccError::Compacted {
                requested: revision,
                compact_revision: self.compact_revision,
            });
        }
        if revision > self.revision {
            return Err(MvccError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        let removed = self.compact_memory(revision);
        persist::write_compaction(self, &removed, batch);
        Ok(CompactionResponse { header: None })
    }

    // ---- Internals shared by the submodules ----------------------------

    /// The revision a read of `requested` sees (0 or less: the current one),
    /// as etcd's `rangeKeys` resolves it.
    fn read_revision(&self, requested: i64) -> Result<i64, MvccError> {
        if requested > self.revision {
            return Err(MvccError::FutureRevision {
                requested,
                current: self.revision,
            });
        }
        let at = if requested <= 0 {
            self.revision
        } else {
            requested
        };
        if at < self.compact_revision {
            return Err(MvccError::Compacted {
                requested: at,
                compact_revision: self.compact_revision,
            });
        }
        Ok(at)
    }

    /// The live `KeyValue` of `key` at main revision `at` (`i64::MAX`: the
    /// newest, including an unfinished txn's writes).
    fn live(&self, key: &[u8], at: i64) -> Option<KeyValue> {
        let records = self.keys.get(key)?;
        record_at(records, at)?.key_value(key)
    }

    /// The retained keys inside `bounds`, in key order, with their records.
    fn keys_in<'a>(
        &'a self,
        bounds: &KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<Record>)> + 'a> {
        match *bounds {
            KeyBounds::Single(key) => Box::new(self.keys.get_key_value(key).into_iter()),
            KeyBounds::From(start) => Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(start), Bound::Unbounded)),
            ),
            // `BTreeMap::range` panics on a start above the end; etcd answers
            // an inverted range with nothing.
            KeyBounds::Between(start, end) if start < end => Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))),
            ),
            KeyBounds::Between(..) => Box::new(std::iter::empty()),
        }
    }

    /// The watch event of the record of `key` at `revision`, with the key's
    /// previous version (the record just before) as `prev_kv`.
    fn event_at(&self, key: &[u8], revision: Revision) -> Option<Event> {
        let records = self.keys.get(key)?;
        let index = records
            .binary_search_by(|record| record.revision.cmp(&revision))
            .ok()?;
        let previous = index
            .checked_sub(1)
            .and_then(|before| records[before].key_value(key));
        Some(event_of(key, &records[index], previous))
    }

    /// Adds a record to memory (not to storage).
    fn insert_record(&mut self, key: Vec<u8>, record: Record) {
        self.size_bytes += record.size_bytes(&key);
        self.history.insert(record.revision, key.clone());
        self.keys.entry(key).or_default().push(record);
    }

    /// Starts a write at the next main revision.
    fn begin(&self) -> Writer {
        Writer {
            main: self.revision + 1,
            changes: Vec::new(),
            stored: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Records a put of `value` with `lease` at `key` and returns the key's
    /// previous version, if it had one.
    fn write_put(
        &mut self,
        writer: &mut Writer,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Option<KeyValue> {
        let previous = self.live(key, i64::MAX);
        let (create_revision, version) = match &previous {
            Some(kv) => (kv.create_revision, kv.version.saturating_add(1)),
            None => (writer.main, 1),
        };
        let change = Change::Put {
            value,
            lease,
            create_revision,
            version,
        };
        self.write_change(writer, key, change, previous.clone());
        previous
    }

    /// Records the deletion of the live `key` and returns its last version.
    fn write_delete(&mut self, writer: &mut Writer, key: &[u8]) -> Option<KeyValue> {
        let previous = self.live(key, i64::MAX)?;
        self.write_change(writer, key, Change::Tombstone, Some(previous.clone()));
        Some(previous)
    }

    fn write_change(
        &mut self,
        writer: &mut Writer,
        key: &[u8],
        change: Change,
        previous: Option<KeyValue>,
    ) {
        let revision = Revision {
            main: writer.main,
            sub: writer.changes.len() as i64,
        };
        writer
            .stored
            .push(persist::encode_record(key, revision, &change));
        let record = Record { revision, change };
        writer.events.push(event_of(key, &record, previous));
        writer.changes.push((key.to_vec(), revision));
        self.insert_record(key.to_vec(), record);
    }

    /// Finishes a write: bumps the revision if anything changed and appends
    /// the changes to `batch`. Returns the events.
    fn commit(&mut self, writer: Writer, batch: &mut WriteBatch) -> Vec<Event> {
        if writer.changes.is_empty() {
            return Vec::new();
        }
        self.revision = writer.main;
        for (key, value) in writer.stored {
            batch.put(MVCC_REVISIONS, key, value);
        }
        writer.events
    }

    /// Takes back the changes of a failed write, newest first.
    fn rollback(&mut self, writer: Writer) {
        for (key, revision) in writer.changes.into_iter().rev() {
            self.history.remove(&revision);
            let Some(records) = self.keys.get_mut(&key) else {
                continue;
            };
            if let Some(record) = records.pop_if(|record| record.revision == revision) {
                self.size_bytes = self.size_bytes.saturating_sub(record.size_bytes(&key));
            }
            if records.is_empty() {
                self.keys.remove(&key);
            }
        }
    }

    /// Compacts memory at `revision`; returns the revisions it removed, in
    /// order, for the batch.
    fn compact_memory(&mut self, revision: i64) -> Vec<Revision> {
        // Only keys changed after the previous compaction can have more than
        // their one kept record at or below `revision`; the history index
        // finds them without walking every key.
        let touched: BTreeSet<Vec<u8>> = self
            .history
            .range(Revision::first_of(self.compact_revision + 1)..=Revision::last_of(revision))
            .map(|(_, key)| key.clone())
            .collect();
        let mut removed = Vec::new();
        for key in touched {
            self.compact_key(&key, revision, &mut removed);
        }
        removed.sort_unstable();
        removed.dedup();
        self.compact_revision = revision;
        removed
    }

    /// Compacts one key's records at `revision`, appending what it removed to
    /// `removed`.
    fn compact_key(&mut self, key: &[u8], revision: i64, removed: &mut Vec<Revision>) {
        let Some(records) = self.keys.get_mut(key) else {
            return;
        };
        let at_or_below = records.partition_point(|r| r.revision.main <= revision);
        let newest_is_tombstone =
            at_or_below > 0 && matches!(records[at_or_below - 1].change, Change::Tombstone);
        let drop = if newest_is_tombstone {
            at_or_below
        } else {
            at_or_below.saturating_sub(1)
        };
        for record in records.drain(..drop) {
            self.size_bytes = self.size_bytes.saturating_sub(record.size_bytes(key));
            self.history.remove(&record.revision);
            removed.push(record.revision);
        }
        if records.is_empty() {
            self.keys.remove(key);
        }
    }
}

/// The watch event `record` of `key` describes, with `previous` as its
/// `prev_kv`. A delete event's `kv` is the key alone with the deletion's
/// revision as `mod_revision`, as etcd sends it.
fn event_of(key: &[u8], record: &Record, previous: Option<KeyValue>) -> Event {
    let (kind, kv) = match record.key_value(key) {
        Some(kv) => (EventType::Put, kv),
        None => (
            EventType::Delete,
            KeyValue {
                key: key.to_vec(),
                mod_revision: record.revision.main,
                ..KeyValue::default()
            },
        ),
    };
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: previous,
    }
}
