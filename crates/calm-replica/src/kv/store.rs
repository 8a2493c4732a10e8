//! The replica side of the `one`/`quorum`/`all` levels: one node's KV
//! objects and the hints it holds for down owners, answering the
//! coordinator's [`KvMessage`]s (sans-IO).
//!
//! # Driver contract
//!
//! A [`KvStore`] holds no storage: it reads through the `&S` each input
//! passes and queues every write in its own batch. Per turn the driver
//!
//! 1. feeds inputs: [`stamp`](KvStore::stamp) a client's write (on a
//!    natural owner of the key), [`handle`](KvStore::handle) a message,
//!    [`step`](KvStore::step) a handoff ack, [`tick`](KvStore::tick),
//!    [`handoff`](KvStore::handoff) to owners seen up again;
//! 2. takes [`take_batches`](KvStore::take_batches), writes them and syncs
//!    (one durable commit), then calls [`synced`](KvStore::synced): every
//!    turn, even when nothing was queued, since a `Fetched` answer waits
//!    for it too;
//! 3. sends [`take_outputs`](KvStore::take_outputs).
//!
//! If the write or the sync fails, the driver drops the store, sends none
//! of its outputs, and [`open`](KvStore::open)s it again once the engine is
//! reopened: the indexes and held replies describe writes that may be lost.
//!
//! Every reply is held until the sync after the writes it answers for: a
//! `Stored` ack only once the object is durable, and a `Fetched` answer only
//! once what it shows is durable, so nothing a crash could take back ever
//! leaves the node. A stamped object must not leave before `synced` either
//! (a dot must name one value forever, and the next stamp mints from what
//! is stored).
//!
//! # Hints
//!
//! A `Store` or `Repair` naming a down owner goes to the hint store (key
//! space [`HINTS`]: owner ++ key) instead of this node's objects. Hints
//! are bounded by `hint_bytes_max` and `hints_max`; at the bound a new hint
//! is refused with `Failed` (counted in `hints_refused`), so the write
//! needs its acks elsewhere or is in doubt: the store never drops a hint it
//! acknowledged to make room. [`handoff`](KvStore::handoff) sends an up
//! owner its hints; the owner merges and persists each and answers
//! `HandedOff` with the digest it got, and the hint is deleted only if it
//! still has that digest (a hint merged since goes again). Hints older than
//! `hint_ttl_ms` are dropped (Cassandra's `max_hint_window`); anti-entropy
//! between owners covers what else they missed.
//!
//! # Tombstones
//!
//! A delete is a tombstone sibling. An owner records when its object first
//! became all tombstones, and accepts a [`KvMessage::Reap`] (sent when a
//! read saw the same tombstone at every owner) only if its object still
//! equals the reaped one, has been a tombstone for `reap_grace_ms`, and no
//! hint for the key is held here. The grace is longer than the hint TTL:
//! any hint written before the delete has been handed off or dropped by
//! then, so no hint can bring back a value the tombstone superseded.
//! Known limit, as in Riak: dots restart after a reap, so a client holding
//! a context from before the reap could supersede writes minted after it.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use calm_storage::{KeyRange, Keyspace, Limits, Order, Storage, StorageError, WriteBatch};
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use super::{KvError, KvLimits, KvObject, check_key};
use crate::coordinator::{KvMessage, KvReply};
use crate::object::Bytes;

/// This node's objects: key -> [`ObjectRecord`].
pub const OBJECTS: Keyspace = Keyspace::new("kv_objects");
/// Hints held for down owners: owner (u64, big-endian) ++ key ->
/// [`HintRecord`].
pub const HINTS: Keyspace = Keyspace::new("kv_hints");

/// Entries read per page when the store loads.
const LOAD_PAGE_ENTRIES: usize = 1024;

/// The store's bounds and clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvStoreConfig {
    /// This node: the actor of the writes it stamps.
    pub node: NodeId,
    /// Key, value, context and sibling bounds.
    pub limits: KvLimits,
    /// The largest encoded object stored; a write or merge beyond it is
    /// refused (the storage engine's value bound, less room for the record).
    pub object_bytes_max: usize,
    /// The most bytes of hints held.
    pub hint_bytes_max: u64,
    /// The most hints held.
    pub hints_max: usize,
    /// Hints older than this are dropped.
    pub hint_ttl_ms: u64,
    /// How long a key must have been a tombstone before a reap is accepted;
    /// longer than `hint_ttl_ms`.
    pub reap_grace_ms: u64,
    /// Hints one [`KvStore::handoff`] sends at most.
    pub handoff_batch_max: usize,
    /// How long a handoff waits for its ack before it may be sent again.
    pub handoff_timeout_ms: u64,
}

impl KvStoreConfig {
    /// The defaults for `node`: 64 MiB and 100,000 hints, a 3-hour hint
    /// TTL, a reap grace of the TTL and 10 minutes.
    pub fn new(node: NodeId) -> Self {
        let hint_ttl_ms = 3 * 60 * 60 * 1000;
        Self {
            node,
            limits: KvLimits::default(),
            object_bytes_max: 2 * 1024 * 1024 - 4096,
            hint_bytes_max: 64 * 1024 * 1024,
            hints_max: 100_000,
            hint_ttl_ms,
            reap_grace_ms: hint_ttl_ms + 10 * 60 * 1000,
            handoff_batch_max: 64,
            handoff_timeout_ms: 5_000,
        }
    }
}

/// A stamped write the store refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// The key, value or context was refused, or too many siblings would
    /// be left.
    #[error(transparent)]
    Refused(#[from] KvError),
    /// The object would outgrow `object_bytes_max`.
    #[error("the object would be {object_bytes} bytes, beyond the bound of {object_bytes_max}")]
    ObjectTooLarge {
        /// The encoded object's size.
        object_bytes: usize,
        /// The bound.
        object_bytes_max: usize,
    },
    /// Reading the stored object failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What the driver sends for the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// A message to a replica (a handoff).
    Send {
        /// The owner.
        to: NodeId,
        /// The message.
        message: KvMessage,
    },
    /// A reply to the node that sent a message (its coordinator, or for a
    /// `HandedOff` its store).
    Reply {
        /// The sender.
        to: NodeId,
        /// The reply.
        reply: KvReply,
    },
}

/// The store's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStoreStats {
    /// Keys held (tombstones included).
    pub objects: u64,
    /// Keys whose object is only tombstones.
    pub tombstones: u64,
    /// Hints held.
    pub hints: u64,
    /// Their encoded bytes.
    pub hint_bytes: u64,
    /// Hint writes stored.
    pub hints_stored: u64,
    /// Hints refused at the bound.
    pub hints_refused: u64,
    /// Hints their owner acknowledged, then deleted.
    pub hints_delivered: u64,
    /// Hints dropped past their TTL.
    pub hints_expired: u64,
    /// Read repairs that changed an object or hint.
    pub repairs_applied: u64,
    /// Anti-entropy transfers that changed an object.
    pub transfers_applied: u64,
    /// Tombstones removed by a reap.
    pub reaped: u64,
    /// Reaps refused (object changed, grace not over, hint held).
    pub reaps_refused: u64,
    /// Merges refused because the object would outgrow its bound.
    pub objects_refused: u64,
    /// Storage reads or decodes that failed while serving a message.
    pub storage_errors: u64,
}

/// One key's stored object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ObjectRecord {
    /// When the object first became only tombstones (wall-clock ms), or
    /// `None` while it holds a value.
    tombstone_since_ms: Option<u64>,
    object: KvObject,
}

/// One hint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HintRecord {
    /// When the hint was first stored (wall-clock ms).
    created_ms: u64,
    object: KvObject,
}

/// What the index keeps of a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HintEntry {
    bytes: u64,
    created_ms: u64,
    digest: u64,
}

/// One node's KV objects and hints; see the module docs for the driver
/// contract.
///
/// Inputs: [`stamp`](Self::stamp), [`handle`](Self::handle),
/// [`step`](Self::step), [`tick`](Self::tick), [`handoff`](Self::handoff),
/// [`merge_transfer`](Self::merge_transfer). Around the sync:
/// [`take_batches`](Self::take_batches), [`synced`](Self::synced). Outputs:
/// [`take_outputs`](Self::take_outputs). Getters: [`read`](Self::read),
/// [`digests`](Self::digests), [`state_transfer`](Self::state_transfer),
/// [`tombstones_due`](Self::tombstones_due),
/// [`hinted_owners`](Self::hinted_owners), [`stats`](Self::stats).
#[derive(Debug)]
pub struct KvStore {
    config: KvStoreConfig,
    /// The engine's bounds, read at open: a turn's writes are cut into
    /// batches within its operation and byte bounds, since a burst (hints
    /// expiring together, a flood of stores) can exceed one batch.
    storage_limits: Limits,
    /// Every key's digest, as visible (synced or not).
    digests: BTreeMap<Bytes, u64>,
    /// Keys whose object is only tombstones, with the time it became so.
    tombstones: BTreeMap<Bytes, u64>,
    hints: BTreeMap<NodeId, BTreeMap<Bytes, HintEntry>>,
    hint_bytes: u64,
    hint_count: usize,
    /// Handoffs sent and not yet acknowledged, with when they left.
    handoffs: BTreeMap<(NodeId, Bytes), u64>,
    /// This turn's writes, read before storage: `None` is a delete.
    overlay: BTreeMap<Bytes, Option<ObjectRecord>>,
    hint_overlay: BTreeMap<(NodeId, Bytes), Option<HintRecord>>,
    batch: WriteBatch,
    /// Keys (objects) written since the last sync, with the batch
    /// generation they were queued in.
    dirty: BTreeMap<Bytes, u64>,
    generation: u64,
    /// Replies waiting for the batch not yet taken.
    held: Vec<KvOutput>,
    /// Replies waiting for the taken batch's sync.
    awaiting: Vec<KvOutput>,
    outputs: Vec<KvOutput>,
    stats: KvStoreStats,
}

impl KvStore {
    /// Opens the store on what `storage` holds: builds the digest,
    /// tombstone and hint indexes. A record that does not decode is an
    /// error: the store refuses to run on data it cannot read.
    pub fn open<S: Storage>(config: KvStoreConfig, storage: &S) -> Result<Self, StorageError> {
        assert!(
            config.reap_grace_ms > config.hint_ttl_ms,
            "reap_grace_ms must exceed hint_ttl_ms (see the module docs)"
        );
        let mut store = Self {
            config,
            storage_limits: *storage.limits(),
            digests: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            hints: BTreeMap::new(),
            hint_bytes: 0,
            hint_count: 0,
            handoffs: BTreeMap::new(),
            overlay: BTreeMap::new(),
            hint_overlay: BTreeMap::new(),
            batch: WriteBatch::new(),
            dirty: BTreeMap::new(),
            generation: 0,
            held: Vec::new(),
            awaiting: Vec::new(),
            outputs: Vec::new(),
            stats: KvStoreStats::default(),
        };
        scan_all(storage, OBJECTS, |key, bytes| {
            let record: ObjectRecord = decode_record(bytes)?;
            store.index_object(key, &record);
            Ok(())
        })?;
        scan_all(storage, HINTS, |key, bytes| {
            let Some((owner, key)) = split_hint_key(&key) else {
                return Err(unreadable("a hint key without its owner"));
            };
            let record: HintRecord = decode_record(bytes)?;
            store.index_hint(owner, key, bytes.len() as u64, &record);
            Ok(())
        })?;
        store.count();
        Ok(store)
    }

    // ---- Inputs ----

    /// Stamps a client's write of `value` (`None`: a delete) from a client
    /// that read `context`, on this node's own object, and queues it. The
    /// driver must not send the returned object before `synced`. Errors
    /// change nothing.
    pub fn stamp<S: Storage>(
        &mut self,
        storage: &S,
        key: &[u8],
        context: &[u8],
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<KvObject, StampError> {
        check_key(key, &self.config.limits)?;
        let record = self.load(storage, key)?.unwrap_or_else(empty_record);
        let mut object = record.object.clone();
        let limits = &self.config.limits;
        match value {
            Some(value) => object.put(key, context, self.config.node, value, limits)?,
            None => object.delete(key, context, self.config.node, limits)?,
        };
        let object_bytes = object.encode().len();
        if object_bytes > self.config.object_bytes_max {
            return Err(StampError::ObjectTooLarge {
                object_bytes,
                object_bytes_max: self.config.object_bytes_max,
            });
        }
        self.put_object(key, &record, object.clone(), now_ms);
        Ok(object)
    }

    /// Serves a message from `from` (this node included).
    pub fn handle<S: Storage>(
        &mut self,
        storage: &S,
        from: NodeId,
        message: KvMessage,
        now_ms: u64,
    ) {
        match message {
            KvMessage::Store {
                request,
                key,
                object,
                hint,
            } => {
                let stored = match self.hint_owner(hint) {
                    Some(owner) => self.merge_hint(storage, owner, &key, &object, now_ms),
                    None => self.merge_object(storage, &key, &object, now_ms),
                };
                let reply = match stored {
                    Ok(_) => KvReply::Stored { request },
                    // Refused now: nothing for this write was queued.
                    Err(()) => {
                        self.outputs.push(reply(from, KvReply::Failed { request }));
                        return;
                    }
                };
                self.held.push(self::reply(from, reply));
            }
            KvMessage::Fetch { request, key, hint } => {
                let fetched = match self.hint_owner(hint) {
                    Some(owner) => self
                        .load_hint(storage, owner, &key)
                        .map(|h| h.map(|h| h.object)),
                    None => self.load(storage, &key).map(|r| r.map(|r| r.object)),
                };
                let answer = match fetched {
                    Ok(object) => KvReply::Fetched {
                        request,
                        object: object.unwrap_or_default(),
                    },
                    Err(_) => {
                        self.stats.storage_errors += 1;
                        KvReply::Failed { request }
                    }
                };
                // Held: what it shows may be this turn's unsynced writes.
                self.held.push(reply(from, answer));
            }
            KvMessage::Repair { key, object, hint } => {
                let changed = match self.hint_owner(hint) {
                    Some(owner) => self.merge_hint(storage, owner, &key, &object, now_ms),
                    None => self.merge_object(storage, &key, &object, now_ms),
                };
                if changed == Ok(true) {
                    self.stats.repairs_applied += 1;
                }
            }
            KvMessage::Handoff { key, object } => {
                let digest = digest(&object);
                if self.merge_object(storage, &key, &object, now_ms).is_ok() {
                    self.held
                        .push(reply(from, KvReply::HandedOff { key, digest }));
                }
            }
            KvMessage::Reap { key, object } => self.reap(storage, &key, &object, now_ms),
        }
    }

    /// An owner's ack of a handoff: the hint is deleted if it still has the
    /// digest handed over. Other replies are not the store's and ignored.
    pub fn step<S: Storage>(&mut self, storage: &S, from: NodeId, reply: KvReply, now_ms: u64) {
        let _ = (storage, now_ms);
        let KvReply::HandedOff { key, digest } = reply else {
            return;
        };
        if self.handoffs.remove(&(from, key.clone())).is_none() {
            return;
        }
        let current = self.hints.get(&from).and_then(|hints| hints.get(&key));
        if current.is_some_and(|entry| entry.digest == digest) {
            self.delete_hint(from, &key);
            self.stats.hints_delivered += 1;
        }
    }

    /// Drops hints past their TTL and forgets handoffs past their timeout
    /// (a later [`handoff`](Self::handoff) sends them again).
    pub fn tick(&mut self, now_ms: u64) {
        let ttl_ms = self.config.hint_ttl_ms;
        let expired: Vec<(NodeId, Bytes)> = self
            .hints
            .iter()
            .flat_map(|(&owner, hints)| {
                hints
                    .iter()
                    .filter(move |(_, entry)| entry.created_ms.saturating_add(ttl_ms) <= now_ms)
                    .map(move |(key, _)| (owner, key.clone()))
            })
            .collect();
        for (owner, key) in expired {
            self.delete_hint(owner, &key);
            self.stats.hints_expired += 1;
        }
        let timeout_ms = self.config.handoff_timeout_ms;
        self.handoffs
            .retain(|_, sent_ms| sent_ms.saturating_add(timeout_ms) > now_ms);
    }

    /// `owner` is up: sends it up to `handoff_batch_max` of its hints that
    /// are neither in flight nor changed in this turn.
    pub fn handoff<S: Storage>(&mut self, storage: &S, owner: NodeId, now_ms: u64) {
        let Some(hints) = self.hints.get(&owner) else {
            return;
        };
        let keys: Vec<Bytes> = hints
            .keys()
            .filter(|key| {
                let id = (owner, (*key).clone());
                !self.handoffs.contains_key(&id) && !self.hint_overlay.contains_key(&id)
            })
            .take(self.config.handoff_batch_max)
            .cloned()
            .collect();
        for key in keys {
            match self.load_hint(storage, owner, &key) {
                Ok(Some(hint)) => {
                    self.handoffs.insert((owner, key.clone()), now_ms);
                    let message = KvMessage::Handoff {
                        key,
                        object: hint.object,
                    };
                    self.outputs.push(KvOutput::Send { to: owner, message });
                }
                Ok(None) => {}
                Err(_) => self.stats.storage_errors += 1,
            }
        }
    }

    /// Merges an anti-entropy transfer of `key` (an encoded object, decoded
    /// here with the limits); whether it changed the object.
    pub fn merge_transfer<S: Storage>(
        &mut self,
        storage: &S,
        key: &[u8],
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<bool, DecodeError> {
        check_key(key, &self.config.limits).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let object = KvObject::decode(bytes, &self.config.limits)?;
        let changed = self.merge_object(storage, key, &object, now_ms) == Ok(true);
        if changed {
            self.stats.transfers_applied += 1;
        }
        Ok(changed)
    }

    // ---- Around the sync ----

    /// Everything queued since the last call, cut into batches the storage
    /// engine accepts, for one durable commit; empty if nothing was.
    /// Replies held so far wait for the next [`synced`](Self::synced).
    pub fn take_batches(&mut self) -> Vec<WriteBatch> {
        self.awaiting.append(&mut self.held);
        self.overlay.clear();
        self.hint_overlay.clear();
        self.generation += 1;
        let batch = std::mem::take(&mut self.batch);
        split(batch, &self.storage_limits)
    }

    /// The batches last taken are durable: their replies are released.
    pub fn synced(&mut self) {
        self.outputs.append(&mut self.awaiting);
        let generation = self.generation;
        self.dirty.retain(|_, queued| *queued >= generation);
    }

    // ---- Outputs ----

    /// Messages and replies to send, in order.
    pub fn take_outputs(&mut self) -> Vec<KvOutput> {
        std::mem::take(&mut self.outputs)
    }

    // ---- Getters ----

    /// The object of `key` as this node holds it now, synced or not.
    pub fn read<S: Storage>(
        &self,
        storage: &S,
        key: &[u8],
    ) -> Result<Option<KvObject>, StorageError> {
        Ok(self.load(storage, key)?.map(|record| record.object))
    }

    /// Every key with the xxh3-64 digest of its encoded object, in key
    /// order: what anti-entropy's Merkle trees are built from.
    pub fn digests(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.digests
            .iter()
            .map(|(key, &digest)| (key.as_slice(), digest))
    }

    /// The encoded object of `key` for a peer whose digest differs; `None`
    /// if absent or changed since the last sync (it leaves only durable).
    pub fn state_transfer<S: Storage>(
        &self,
        storage: &S,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        if self.dirty.contains_key(key) {
            return Ok(None);
        }
        Ok(self
            .load(storage, key)?
            .map(|record| record.object.encode()))
    }

    /// Up to `max` keys that have been tombstones for at least the reap
    /// grace: a level-`all` read of each lets the coordinator reap those
    /// every owner holds.
    pub fn tombstones_due(&self, now_ms: u64, max: usize) -> Vec<Bytes> {
        let grace_ms = self.config.reap_grace_ms;
        self.tombstones
            .iter()
            .filter(|(_, since_ms)| since_ms.saturating_add(grace_ms) <= now_ms)
            .take(max)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The owners this node holds hints for.
    pub fn hinted_owners(&self) -> Vec<NodeId> {
        self.hints.keys().copied().collect()
    }

    /// The counters.
    pub fn stats(&self) -> &KvStoreStats {
        &self.stats
    }

    // ---- Objects ----

    /// The record of `key`: this turn's write if any, else storage's.
    fn load<S: Storage>(
        &self,
        storage: &S,
        key: &[u8],
    ) -> Result<Option<ObjectRecord>, StorageError> {
        if let Some(record) = self.overlay.get(key) {
            return Ok(record.clone());
        }
        match storage.get(OBJECTS, key)? {
            Some(bytes) => decode_record(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Merges `incoming` into `key`'s object; whether it changed. `Err`
    /// (counted) if the object could not be read or would outgrow its
    /// bound: nothing was queued.
    fn merge_object<S: Storage>(
        &mut self,
        storage: &S,
        key: &[u8],
        incoming: &KvObject,
        now_ms: u64,
    ) -> Result<bool, ()> {
        let Ok(record) = self.load(storage, key) else {
            self.stats.storage_errors += 1;
            return Err(());
        };
        let record = record.unwrap_or_else(empty_record);
        let mut merged = record.object.clone();
        merged.merge(incoming);
        if merged == record.object {
            return Ok(false);
        }
        if merged.encode().len() > self.config.object_bytes_max {
            self.stats.objects_refused += 1;
            return Err(());
        }
        self.put_object(key, &record, merged, now_ms);
        Ok(true)
    }

    /// Queues `object` as `key`'s, which was `previous`.
    fn put_object(&mut self, key: &[u8], previous: &ObjectRecord, object: KvObject, now_ms: u64) {
        let tombstone_since_ms = match object.is_tombstone() {
            true => previous.tombstone_since_ms.or(Some(now_ms)),
            false => None,
        };
        let record = ObjectRecord {
            tombstone_since_ms,
            object,
        };
        self.batch
            .put(OBJECTS, key.to_vec(), codec::encode(&record));
        self.index_object(key.to_vec(), &record);
        self.overlay.insert(key.to_vec(), Some(record));
        self.dirty.insert(key.to_vec(), self.generation);
        self.count();
    }

    fn index_object(&mut self, key: Bytes, record: &ObjectRecord) {
        match record.tombstone_since_ms {
            Some(since_ms) => self.tombstones.insert(key.clone(), since_ms),
            None => self.tombstones.remove(&key),
        };
        self.digests.insert(key, digest(&record.object));
    }

    /// A reap: removes `key` if every condition of the module docs holds.
    fn reap<S: Storage>(&mut self, storage: &S, key: &[u8], object: &KvObject, now_ms: u64) {
        let record = match self.load(storage, key) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(_) => {
                self.stats.storage_errors += 1;
                return;
            }
        };
        let grace_over = record
            .tombstone_since_ms
            .is_some_and(|since| since.saturating_add(self.config.reap_grace_ms) <= now_ms);
        let hinted = self.hints.values().any(|hints| hints.contains_key(key));
        if record.object != *object || !grace_over || hinted {
            self.stats.reaps_refused += 1;
            return;
        }
        self.batch.delete(OBJECTS, key.to_vec());
        self.digests.remove(key);
        self.tombstones.remove(key);
        self.overlay.insert(key.to_vec(), None);
        self.dirty.insert(key.to_vec(), self.generation);
        self.stats.reaped += 1;
        self.count();
    }

    // ---- Hints ----

    /// The owner a message's hint names, unless it is this node (a node
    /// never holds hints for itself).
    fn hint_owner(&self, hint: Option<NodeId>) -> Option<NodeId> {
        hint.filter(|&owner| owner != self.config.node)
    }

    fn load_hint<S: Storage>(
        &self,
        storage: &S,
        owner: NodeId,
        key: &[u8],
    ) -> Result<Option<HintRecord>, StorageError> {
        if let Some(record) = self.hint_overlay.get(&(owner, key.to_vec())) {
            return Ok(record.clone());
        }
        match storage.get(HINTS, &hint_key(owner, key))? {
            Some(bytes) => decode_record(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Merges `incoming` into the hint for (`owner`, `key`); whether it
    /// changed. `Err` (counted) if refused at the bound or unreadable.
    fn merge_hint<S: Storage>(
        &mut self,
        storage: &S,
        owner: NodeId,
        key: &[u8],
        incoming: &KvObject,
        now_ms: u64,
    ) -> Result<bool, ()> {
        let Ok(existing) = self.load_hint(storage, owner, key) else {
            self.stats.storage_errors += 1;
            return Err(());
        };
        let created_ms = existing.as_ref().map_or(now_ms, |hint| hint.created_ms);
        let mut object = existing
            .as_ref()
            .map(|hint| hint.object.clone())
            .unwrap_or_default();
        object.merge(incoming);
        if existing.as_ref().is_some_and(|hint| hint.object == object) {
            return Ok(false);
        }
        let record = HintRecord { created_ms, object };
        let encoded = codec::encode(&record);
        let old = self.hint_entry(owner, key);
        let bytes = self.hint_bytes - old.map_or(0, |entry| entry.bytes) + encoded.len() as u64;
        let count = self.hint_count + usize::from(old.is_none());
        if bytes > self.config.hint_bytes_max
            || count > self.config.hints_max
            || encoded.len() > self.config.object_bytes_max
        {
            self.stats.hints_refused += 1;
            return Err(());
        }
        self.batch.put(HINTS, hint_key(owner, key), encoded.clone());
        self.index_hint(owner, key.to_vec(), encoded.len() as u64, &record);
        self.hint_overlay
            .insert((owner, key.to_vec()), Some(record));
        self.stats.hints_stored += 1;
        self.count();
        Ok(true)
    }

    fn hint_entry(&self, owner: NodeId, key: &[u8]) -> Option<HintEntry> {
        self.hints.get(&owner)?.get(key).copied()
    }

    fn index_hint(&mut self, owner: NodeId, key: Bytes, bytes: u64, record: &HintRecord) {
        let entry = HintEntry {
            bytes,
            created_ms: record.created_ms,
            digest: digest(&record.object),
        };
        if let Some(old) = self.hints.entry(owner).or_default().insert(key, entry) {
            self.hint_bytes -= old.bytes;
            self.hint_count -= 1;
        }
        self.hint_bytes += bytes;
        self.hint_count += 1;
    }

    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) {
        let Some(hints) = self.hints.get_mut(&owner) else {
            return;
        };
        if let Some(old) = hints.remove(key) {
            self.hint_bytes -= old.bytes;
            self.hint_count -= 1;
        }
        if hints.is_empty() {
            self.hints.remove(&owner);
        }
        self.batch.delete(HINTS, hint_key(owner, key));
        self.hint_overlay.insert((owner, key.to_vec()), None);
        self.count();
    }

    fn count(&mut self) {
        self.stats.objects = self.digests.len() as u64;
        self.stats.tombstones = self.tombstones.len() as u64;
        self.stats.hints = self.hint_count as u64;
        self.stats.hint_bytes = self.hint_bytes;
    }
}

fn reply(to: NodeId, reply: KvReply) -> KvOutput {
    KvOutput::Reply { to, reply }
}

fn empty_record() -> ObjectRecord {
    ObjectRecord {
        tombstone_since_ms: None,
        object: KvObject::new(),
    }
}

/// The xxh3-64 digest of an object's encoding.
pub fn digest(object: &KvObject) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&object.encode())
}

fn hint_key(owner: NodeId, key: &[u8]) -> Vec<u8> {
    let mut bytes = owner.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(key);
    bytes
}

fn split_hint_key(bytes: &[u8]) -> Option<(NodeId, Bytes)> {
    let (owner, key) = bytes.split_first_chunk::<8>()?;
    Some((NodeId(u64::from_be_bytes(*owner)), key.to_vec()))
}

fn unreadable(reason: &str) -> StorageError {
    StorageError::ReadFailed {
        reason: format!("unreadable KV record: {reason}"),
    }
}

fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    codec::decode(bytes).map_err(|error| unreadable(&error.to_string()))
}

/// Calls `visit` on every entry of `keyspace`, page by page.
fn scan_all<S: Storage>(
    storage: &S,
    keyspace: Keyspace,
    mut visit: impl FnMut(Bytes, &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut range = KeyRange::all();
    loop {
        let page = storage.scan(keyspace, &range, Order::Ascending, LOAD_PAGE_ENTRIES)?;
        let full = page.len() == LOAD_PAGE_ENTRIES;
        let mut last = None;
        for (key, bytes) in page {
            last = Some(key.clone());
            visit(key, &bytes)?;
        }
        match (full, last) {
            (true, Some(mut last)) => {
                last.push(0); // the smallest key after `last`
                range = KeyRange::starting_at(last);
            }
            _ => return Ok(()),
        }
    }
}

/// Cuts `batch` into batches within the engine's operation and byte
/// bounds, in order. One operation is never beyond them: keys and objects
/// are bounded well below the engine's value bound.
fn split(batch: WriteBatch, limits: &Limits) -> Vec<WriteBatch> {
    if batch.is_empty() {
        return Vec::new();
    }
    let mut batches = vec![WriteBatch::new()];
    let mut bytes = 0;
    for op in batch.ops() {
        // Invariant: `batches` starts with one batch and only grows.
        let size = op.payload_bytes();
        let current = batches.last_mut().expect("never empty");
        if !current.is_empty()
            && (current.len() >= limits.batch_ops_max || bytes + size > limits.batch_bytes_max)
        {
            batches.push(WriteBatch::new());
            bytes = 0;
        }
        batches.last_mut().expect("never empty").push(op.clone());
        bytes += size;
    }
    batches
}
