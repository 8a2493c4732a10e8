//! The CRDT replica core: applies CRDT operations, makes them durable
//! through `Storage` with group commit, ships deltas to the key's other
//! replicas in batches, and enforces causal tokens. Requests at
//! `one`/`quorum`/`all` are coordinated by the `quorum` module.

mod quorum;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use calm_clock::{Hlc, HlcTimestamp};
use calm_ring::{KeyHash, Placement, Ring};
use calm_storage::{KeyRange, Keyspace, Order, Storage, StorageError, WriteBatch};
use calm_types::NodeId;
use calm_types::codec;
use serde::{Deserialize, Serialize};

use crate::error::{ReplicaError, StepError};
use crate::message::{DeltaBatch, KeyDelta, MESSAGE_KEYS_MAX, Message, StateTransfer};
use crate::object::{Object, Operation, Value, mutate};
use crate::outbound::{BatchBounds, PeerQueue};
use crate::token::{AppliedLog, CausalToken};

/// The keyspace holding one record (object and applied-write log) per key.
pub const OBJECTS: Keyspace = Keyspace::new("local_objects");

/// Entries read per scan page when a replica reloads its objects.
const LOAD_PAGE_ENTRIES: usize = 1024;

/// The named bounds and settings of a [`Replica`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This node.
    pub node: NodeId,
    /// N: how many replicas each key has (the preference-list length).
    pub replication_factor: usize,
    /// Longest key accepted, in bytes (at most [`crate::MESSAGE_KEY_BYTES_MAX`]).
    pub key_bytes_max: usize,
    /// Longest element, value or field name accepted, in bytes.
    pub payload_bytes_max: usize,
    /// Largest encoded object a write may produce, in bytes.
    pub object_bytes_max: usize,
    /// Most keys this replica holds.
    pub keys_max: usize,
    /// Most replies held waiting for the next sync (the group-commit window).
    pub unsynced_requests_max: usize,
    /// Most requests parked waiting for their token to be seen.
    pub parked_requests_max: usize,
    /// How long a parked request waits for catch-up before failing.
    pub catch_up_wait_ms: u64,
    /// Most keys in one delta batch (at most [`crate::MESSAGE_KEYS_MAX`]).
    pub batch_keys_max: usize,
    /// Most (estimated) bytes in one delta batch; one larger entry is sent alone.
    pub batch_bytes_max: usize,
    /// Most keys buffered per peer; beyond it the oldest are dropped and
    /// counted, and anti-entropy repairs them.
    pub pending_keys_per_peer_max: usize,
    /// The HLC's bound on how far a peer's clock may be ahead.
    pub hlc_max_offset_ms: u64,
    /// How long a request at `quorum` or `all` waits for its `w` acks or
    /// `r` replies.
    pub quorum_timeout_ms: u64,
    /// How long a read at `quorum` or `all` waits for the replicas it asked
    /// before it asks the key's other replicas too (a hedge).
    pub quorum_hedge_ms: u64,
}

impl ReplicaConfig {
    /// Defaults for `node`: N = 3, keys up to 1 KiB, payloads up to 64 KiB,
    /// objects up to 1 MiB, a million keys, 10,000 unsynced replies, 1,024
    /// parked requests waiting up to 100 ms, batches of up to 256 keys and
    /// 256 KiB, 65,536 keys buffered per peer, a 500 ms HLC offset bound,
    /// replicated requests waiting up to 1 s and hedging reads after 20 ms.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            replication_factor: 3,
            key_bytes_max: 1024,
            payload_bytes_max: 64 * 1024,
            object_bytes_max: 1024 * 1024,
            keys_max: 1_000_000,
            unsynced_requests_max: 10_000,
            parked_requests_max: 1024,
            catch_up_wait_ms: 100,
            batch_keys_max: 256,
            batch_bytes_max: 256 * 1024,
            pending_keys_per_peer_max: 65_536,
            hlc_max_offset_ms: 500,
            quorum_timeout_ms: 1_000,
            quorum_hedge_ms: 20,
        }
    }

    fn batch_bounds(&self) -> BatchBounds {
        BatchBounds {
            keys_max: self.batch_keys_max.clamp(1, MESSAGE_KEYS_MAX),
            bytes_max: self.batch_bytes_max,
            pending_keys_max: self.pending_keys_per_peer_max.max(1),
        }
    }
}

/// The driver's name for a request; echoed in its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A client request at the `local` level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the reply.
    pub id: RequestId,
    /// The key.
    pub key: Vec<u8>,
    /// What to do.
    pub op: Operation,
    /// The client's causal token for this key, as the opaque bytes of
    /// [`CausalToken::encode`], if it has one.
    pub token: Option<Vec<u8>>,
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The value, for a read; `None` for a write.
    pub value: Option<Value>,
    /// The key's writes this reply reflects: the client presents it next time.
    pub token: CausalToken,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request answered.
    pub id: RequestId,
    /// Its outcome.
    pub result: Result<Ack, ReplicaError>,
}

/// What the core asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `reply` to the client that submitted the request.
    Reply(Reply),
    /// Send `message` (an encoded [`Message`]) to peer `to`; best effort.
    Send {
        /// The peer.
        to: NodeId,
        /// The encoded message, for [`Replica::step`] at the peer.
        message: Vec<u8>,
    },
}

/// Counters a driver exports as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Buffered deltas dropped because a peer's buffer was full.
    pub deltas_dropped: u64,
    /// Received deltas and states refused because the joined object would
    /// not fit the storage value bound, or would add a key beyond
    /// `keys_max` (anti-entropy cannot repair these either).
    pub deltas_refused: u64,
    /// Peer messages refused because the sender's clock was too far ahead.
    pub clock_rejections: u64,
    /// Syncs performed by [`Replica::flush`].
    pub syncs: u64,
    /// Requests that failed with [`ReplicaError::CatchUpTimeout`].
    pub catch_up_timeouts: u64,
    /// Replicas sent the merged state after a replicated read found them
    /// behind it.
    pub read_repairs: u64,
    /// Replicated reads that asked more replicas after `quorum_hedge_ms`.
    pub hedges_sent: u64,
    /// Replicated writes answered [`ReplicaError::WriteInDoubt`].
    pub writes_in_doubt: u64,
}

/// One key's persisted record: the object and which writes it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    object: Object,
    applied: AppliedLog,
}

/// A write applied and written but not yet synced: its delta ships after
/// the sync.
struct Unsynced {
    key: Vec<u8>,
    seq: u64,
    delta: Object,
    /// The replicated request waiting for acks of this write, if any.
    replicated: Option<HlcTimestamp>,
}

/// A request waiting for its token to be seen.
struct Parked {
    request: Request,
    /// How many replicas the request waits for, this one included.
    need: usize,
    token: CausalToken,
    deadline_ms: u64,
}

/// The `local`-level replica of one node: a sans-IO state machine over a
/// [`Storage`] engine and a [`Placement`].
///
/// # Driver contract
///
/// **Inputs** (each may queue outputs):
/// * [`submit`](Self::submit)`(request, now_ms)`: a client request. Every
///   submitted request gets exactly one [`Output::Reply`], now or later.
///   A write is applied in memory and written to storage with
///   [`Storage::write`], never synced.
/// * [`flush`](Self::flush)`()`: the group commit. Calls
///   [`Storage::sync`] once for everything written since the last flush;
///   on success it releases the held replies and hands the synced writes'
///   deltas to the per-peer buffers. Call it whenever the driver wants to
///   acknowledge: after each batch of submitted requests, or on a timer.
/// * [`step`](Self::step)`(bytes, now_ms)`: a peer message. Received deltas
///   are joined and written (not synced) and wake parked requests.
/// * [`tick`](Self::tick)`(now_ms)`: fails parked requests past their
///   deadline and sends every buffered delta in batches.
/// * [`set_down`](Self::set_down) / [`set_placement`](Self::set_placement):
///   liveness from the failure detector and the current ring. A down node
///   keeps its ranges; it is only skipped by preference lists.
///
/// **Outputs**: [`take_outputs`](Self::take_outputs) drains replies and
/// sends, in the order they arose. Call it after every input.
///
/// **Durability before ack.** A reply whose content depends on unsynced
/// state (every write's ack, and a read of a key with unsynced changes) is
/// held and appears only after a [`flush`](Self::flush) whose sync returned
/// `Ok`; a read of a clean key is answered at once. A write's delta leaves
/// the node only after that sync too, so a write lost in a crash was seen
/// by no one, and its sequence number may be reused. If the driver syncs
/// the storage by itself, it must still call `flush`, which then finds
/// nothing to sync (the engine returns at once) and releases the replies.
///
/// **Routing**: a request for a key this node does not replicate fails at
/// once with [`ReplicaError::NotReplica`] listing the key's live replicas;
/// the driver forwards it to the first it can reach. (The core does not
/// forward by itself, because the reply must go back to the client over the
/// driver's connection anyway.)
///
/// **Causal tokens**: a request presenting a token this replica has not
/// seen is parked until deltas catch it up, or until `catch_up_wait_ms`
/// passes, then fails with the retryable [`ReplicaError::CatchUpTimeout`]
/// naming the other replicas to try.
///
/// **Storage failure**: a failed write or sync stops the replica (every
/// later call fails with `Poisoned`); reopen it with [`open`](Self::open),
/// which reloads the durable state.
///
/// ```
/// use calm_replica::{Operation, Output, Replica, ReplicaConfig, Request, RequestId, Value};
/// use calm_ring::{Ring, RingConfig};
/// use calm_storage::{Limits, MemoryEngine};
/// use calm_types::NodeId;
///
/// let ring = Ring::new(RingConfig::default(), &[NodeId(1)])?;
/// let mut replica =
///     Replica::open(ReplicaConfig::new(NodeId(1)), ring, MemoryEngine::new(Limits::default()))?;
/// let incr = Request { id: RequestId(1), key: b"hits".to_vec(), op: Operation::Increment(5), token: None };
/// replica.submit(incr, 1_000);
/// assert!(replica.take_outputs().is_empty()); // the ack waits for the sync
/// replica.flush()?;
/// let Some(Output::Reply(ack)) = replica.take_outputs().pop() else { panic!() };
/// let token = ack.result?.token.encode();
///
/// let read = Request { id: RequestId(2), key: b"hits".to_vec(), op: Operation::Read, token: Some(token) };
/// replica.submit(read, 1_001);
/// let Some(Output::Reply(reply)) = replica.take_outputs().pop() else { panic!() };
/// assert_eq!(reply.result?.value, Some(Value::Counter(5)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Replica<S: Storage, P: Placement = Ring> {
    config: ReplicaConfig,
    storage: S,
    placement: P,
    down: BTreeSet<NodeId>,
    hlc: Hlc,
    objects: BTreeMap<Vec<u8>, Record>,
    /// Keys with changes written but not yet synced.
    dirty: BTreeSet<Vec<u8>>,
    unsynced: Vec<Unsynced>,
    held: Vec<Reply>,
    parked: Vec<Parked>,
    peers: BTreeMap<NodeId, PeerQueue>,
    /// Requests at `quorum`/`all` waiting for peers, by their wire name.
    coordinated: BTreeMap<HlcTimestamp, quorum::Coordinated>,
    /// Messages that may leave only once this turn's writes are synced.
    after_sync: Vec<quorum::AfterSync>,
    outputs: VecDeque<Output>,
    stats: ReplicaStats,
    poisoned: bool,
}

impl<S: Storage, P: Placement> Replica<S, P> {
    /// Opens the replica over `storage`, reloading every durable object.
    /// The HLC resumes above every LWW stamp found, so it never stamps a
    /// write below one it already made.
    pub fn open(config: ReplicaConfig, placement: P, storage: S) -> Result<Self, StorageError> {
        let objects = load(&storage)?;
        let last = objects
            .values()
            .filter_map(|r| r.object.lww_stamp())
            .max()
            .unwrap_or(HlcTimestamp::new(0, 0));
        Ok(Self {
            hlc: Hlc::resume(last, config.hlc_max_offset_ms),
            config,
            storage,
            placement,
            down: BTreeSet::new(),
            objects,
            dirty: BTreeSet::new(),
            unsynced: Vec::new(),
            held: Vec::new(),
            parked: Vec::new(),
            peers: BTreeMap::new(),
            coordinated: BTreeMap::new(),
            after_sync: Vec::new(),
            outputs: VecDeque::new(),
            stats: ReplicaStats::default(),
            poisoned: false,
        })
    }

    // ---- Inputs ----

    /// Submits a client request at wall-clock time `now_ms`. Its reply
    /// comes out of [`take_outputs`](Self::take_outputs): at once for
    /// errors and reads of clean keys, after the next [`flush`](Self::flush)
    /// for writes, or after catch-up or timeout for a parked request.
    pub fn submit(&mut self, request: Request, now_ms: u64) {
        self.submit_needing(request, 1, now_ms);
    }

    /// Submits a request that waits for `need` replicas, this one
    /// included: 1 is the `local` level.
    fn submit_needing(&mut self, request: Request, need: usize, now_ms: u64) {
        let id = request.id;
        match self.admit(&request) {
            Err(error) => self.reply(id, Err(error), false),
            Ok(None) => self.execute(request, need, now_ms),
            Ok(Some(token)) if self.applied(&request.key).has_seen(&token) => {
                self.execute(request, need, now_ms);
            }
            Ok(Some(_)) if self.parked.len() >= self.config.parked_requests_max => {
                let bound = "parked_requests_max";
                self.reply(id, Err(ReplicaError::Overloaded { bound }), false);
            }
            Ok(Some(token)) => self.parked.push(Parked {
                request,
                need,
                token,
                deadline_ms: now_ms.saturating_add(self.config.catch_up_wait_ms),
            }),
        }
    }

    /// The group commit: one [`Storage::sync`] for everything written since
    /// the last flush, then the held replies are released and the synced
    /// deltas are buffered for the peers (full batches are sent at once).
    ///
    /// On error the replica is stopped (see the type's docs); the held
    /// replies are never released, as their writes are in doubt.
    pub fn flush(&mut self) -> Result<(), StepError> {
        self.check_running().map_err(|_| StepError::Poisoned)?;
        if self.held.is_empty() && self.dirty.is_empty() && self.after_sync.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.storage.sync() {
            self.poisoned = true;
            return Err(StepError::Storage(error));
        }
        self.stats.syncs += 1;
        self.dirty.clear();
        for reply in std::mem::take(&mut self.held) {
            self.outputs.push_back(Output::Reply(reply));
        }
        for write in std::mem::take(&mut self.unsynced) {
            let replicated = match write.replicated {
                Some(request) => self.replicate(request, &write.key, write.seq, &write.delta),
                None => Vec::new(),
            };
            self.buffer_delta(&write.key, write.seq, &write.delta, &replicated);
        }
        self.send_after_sync();
        Ok(())
    }

    /// A message from a peer, received at wall-clock time `now_ms`.
    ///
    /// Decodes and validates everything before changing anything; garbage
    /// is [`StepError::Decode`]. Deltas and states are joined and written
    /// (not synced); requests they catch up are answered after the next
    /// flush, and so are the acks and states replicated requests ask for.
    pub fn step(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), StepError> {
        self.check_running().map_err(|_| StepError::Poisoned)?;
        let message = Message::decode(bytes)?;
        if let Some(clock) = message.clock()
            && let Err(error) = self.hlc.update(clock, now_ms)
        {
            self.stats.clock_rejections += 1;
            return Err(StepError::ClockAhead(error));
        }
        // Staged so that two entries for one key (never sent by an honest
        // peer, but possible in bytes from outside) both join.
        let mut staged = BTreeMap::new();
        match message {
            Message::Deltas(batch) => {
                for delta in batch.deltas {
                    self.stage_delta(delta, &mut staged);
                }
            }
            Message::State(state) => self.stage_state(*state, &mut staged),
            Message::Replicate(replicate) => return self.on_replicate(*replicate, now_ms),
            Message::Replicated(ack) => {
                self.on_replicated(ack);
                return Ok(());
            }
            Message::Fetch(fetch) => {
                self.on_fetch(fetch, now_ms);
                return Ok(());
            }
            Message::Fetched(fetched) => return self.on_fetched(*fetched, now_ms),
        }
        self.commit_received(staged, now_ms)
    }

    /// Advances time to `now_ms`: fails parked requests whose deadline has
    /// passed, and sends every buffered delta in batches within the bounds.
    pub fn tick(&mut self, now_ms: u64) {
        let (expired, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.deadline_ms <= now_ms);
        self.parked = waiting;
        for parked in expired {
            self.stats.catch_up_timeouts += 1;
            let replicas = self.other_replicas(&parked.request.key);
            let error = ReplicaError::CatchUpTimeout { replicas };
            self.reply(parked.request.id, Err(error), false);
        }
        self.tick_coordinated(now_ms);
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for peer in peers {
            while self.peers.get(&peer).is_some_and(|q| !q.is_empty()) {
                self.send_batch(peer);
            }
        }
    }

    /// Marks `node` down (skipped by preference lists) or up again. A down
    /// node keeps its ranges: its natural ownership does not change.
    pub fn set_down(&mut self, node: NodeId, down: bool) {
        if down {
            self.down.insert(node);
        } else {
            self.down.remove(&node);
        }
    }

    /// Replaces the placement (a new ring version from the coordinated
    /// keyspace).
    pub fn set_placement(&mut self, placement: P) {
        self.placement = placement;
    }

    // ---- Outputs ----

    /// Drains the outputs queued since the last call, oldest first. The
    /// queue holds only what the inputs since the last call produced (each
    /// input's share is bounded by the config), so a driver that drains
    /// after every input keeps it bounded.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.outputs.drain(..).collect()
    }

    // ---- Anti-entropy seam ----

    /// Every key with the xxh3-64 digest of its encoded object, in key
    /// order: what a Merkle tree is built from. Keys with unsynced changes
    /// are included with their current (visible) state.
    pub fn digests(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.objects.iter().map(|(key, record)| {
            let digest = xxhash_rust::xxh3::xxh3_64(&codec::encode(&record.object));
            (key.as_slice(), digest)
        })
    }

    /// The encoded [`Message::State`] for `key` (its whole object and the
    /// writes it is known to hold), for a peer whose digest differs; the
    /// peer passes it to [`step`](Self::step), which joins it. `None` if the
    /// key is absent, or has changes not yet synced: like a delta, a state
    /// leaves the node only once durable, or a crash could take back what a
    /// peer already saw (a bounded counter's transferred rights spent twice).
    /// The driver asks again after the next [`flush`](Self::flush).
    pub fn state_transfer(&mut self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        if self.dirty.contains(key) {
            return None;
        }
        let record = self.objects.get(key)?;
        let frontier = record.applied.token(key).iter().collect();
        let state = StateTransfer {
            clock: self.hlc.now(now_ms),
            key: key.to_vec(),
            object: record.object.clone(),
            frontier,
        };
        Some(Message::State(Box::new(state)).encode())
    }

    // ---- Getters ----

    /// The value of `key` as this replica holds it now, synced or not (for
    /// tests and admin views; clients read through [`submit`](Self::submit)).
    pub fn peek(&self, key: &[u8]) -> Value {
        self.objects
            .get(key)
            .map_or(Value::Absent, |r| r.object.value(self.config.node))
    }

    /// The token of every write to `key` this replica has applied.
    pub fn token(&self, key: &[u8]) -> CausalToken {
        self.applied(key).token(key)
    }

    /// The key's live replicas, in preference order (down nodes skipped;
    /// this node never counts itself down).
    pub fn replicas(&self, key: &[u8]) -> Vec<NodeId> {
        let me = self.config.node;
        let is_down = |node: NodeId| node != me && self.down.contains(&node);
        let list = self.placement.preference_list(
            KeyHash::of(key),
            self.config.replication_factor,
            &is_down,
        );
        list.nodes().collect()
    }

    /// How many keys this replica holds.
    pub fn keys(&self) -> usize {
        self.objects.len()
    }

    /// The placement in use.
    pub fn placement(&self) -> &P {
        &self.placement
    }

    /// The counters for metrics.
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// The storage engine.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Stops the replica and returns its storage, e.g. to reopen it after a
    /// simulated crash. Held replies and buffered deltas are dropped.
    pub fn into_storage(self) -> S {
        self.storage
    }

    // ---- Internals: requests ----

    /// Checks a request's bounds, routing and token; `Ok(Some(token))` if it
    /// presents one.
    fn admit(&self, request: &Request) -> Result<Option<CausalToken>, ReplicaError> {
        self.check_running()?;
        let key_bytes = request.key.len();
        if key_bytes > self.config.key_bytes_max {
            let key_bytes_max = self.config.key_bytes_max;
            return Err(ReplicaError::KeyTooLarge {
                key_bytes,
                key_bytes_max,
            });
        }
        let payload_bytes = request.op.payload_bytes();
        if payload_bytes > self.config.payload_bytes_max {
            let payload_bytes_max = self.config.payload_bytes_max;
            return Err(ReplicaError::PayloadTooLarge {
                payload_bytes,
                payload_bytes_max,
            });
        }
        let replicas = self.replicas(&request.key);
        if !replicas.contains(&self.config.node) {
            return Err(ReplicaError::NotReplica { replicas });
        }
        let Some(bytes) = &request.token else {
            return Ok(None);
        };
        let token = CausalToken::decode(bytes).map_err(ReplicaError::BadToken)?;
        if !token.is_for(&request.key) {
            return Err(ReplicaError::TokenForOtherKey);
        }
        Ok(Some(token))
    }

    /// Runs an admitted request whose token (if any) this replica has seen,
    /// waiting for `need` replicas (this one included).
    fn execute(&mut self, request: Request, need: usize, now_ms: u64) {
        let id = request.id;
        if self.held.len() + self.coordinated.len() >= self.config.unsynced_requests_max {
            let bound = "unsynced_requests_max";
            return self.reply(id, Err(ReplicaError::Overloaded { bound }), false);
        }
        if need > 1 {
            return self.coordinate(request, need, now_ms);
        }
        if request.op == Operation::Read {
            let ack = Ack {
                value: Some(self.peek(&request.key)),
                token: self.token(&request.key),
            };
            let hold = self.dirty.contains(&request.key);
            return self.reply(id, Ok(ack), hold);
        }
        match self.write(&request.key, &request.op, now_ms) {
            Ok(token) => self.reply(id, Ok(Ack { value: None, token }), true),
            Err(error) => self.reply(id, Err(error), false),
        }
    }

    /// Applies a write: computes its delta, checks bounds, writes the new
    /// record to storage (unsynced), and only then changes memory.
    fn write(
        &mut self,
        key: &[u8],
        op: &Operation,
        now_ms: u64,
    ) -> Result<CausalToken, ReplicaError> {
        let me = self.config.node;
        if !self.objects.contains_key(key) && self.objects.len() >= self.config.keys_max {
            let keys_max = self.config.keys_max;
            return Err(ReplicaError::TooManyKeys { keys_max });
        }
        let stamp = self.objects.get(key).and_then(|r| r.object.lww_stamp());
        let timestamp = self.stamp_for(stamp, now_ms);
        let existing = self.objects.get(key);
        let delta = mutate(existing.map(|r| &r.object), op, me, timestamp)?;
        let mut record = existing.cloned().unwrap_or_else(|| Record {
            object: delta.clone(),
            applied: AppliedLog::default(),
        });
        record.object.join(&delta);
        let seq = record.applied.frontier(me) + 1;
        record.applied.record(me, seq, seq);
        let encoded = codec::encode(&record);
        if encoded.len() > self.config.object_bytes_max {
            let object_bytes_max = self.config.object_bytes_max;
            let object_bytes = encoded.len();
            return Err(ReplicaError::ObjectTooLarge {
                object_bytes,
                object_bytes_max,
            });
        }
        let mut batch = WriteBatch::new();
        batch.put(OBJECTS, key, encoded);
        if let Err(error) = self.storage.write(&batch) {
            self.poisoned = true;
            return Err(ReplicaError::Storage(error));
        }
        let token = record.applied.token(key);
        self.objects.insert(key.to_vec(), record);
        self.dirty.insert(key.to_vec());
        self.unsynced.push(Unsynced {
            key: key.to_vec(),
            seq,
            delta,
            replicated: None,
        });
        Ok(token)
    }

    /// An HLC reading for an LWW write, above the register's current stamp
    /// (LwwRegister::write asks the writer's clock to have observed it).
    fn stamp_for(&mut self, current: Option<HlcTimestamp>, now_ms: u64) -> HlcTimestamp {
        let reading = self.hlc.now(now_ms);
        match current {
            // The stamp came from a peer whose clock was within the offset
            // bound when it arrived, so `update` accepts it; should the wall
            // clock have stepped back since, step past the stamp directly.
            Some(stamp) if stamp >= reading => self
                .hlc
                .update(stamp, now_ms)
                .unwrap_or_else(|_| stamp.successor()),
            _ => reading,
        }
    }

    /// Queues a reply, or holds it until the next sync if `hold`.
    fn reply(&mut self, id: RequestId, result: Result<Ack, ReplicaError>, hold: bool) {
        let reply = Reply { id, result };
        if hold {
            self.held.push(reply);
        } else {
            self.outputs.push_back(Output::Reply(reply));
        }
    }

    fn applied(&self, key: &[u8]) -> AppliedLog {
        self.objects
            .get(key)
            .map(|r| r.applied.clone())
            .unwrap_or_default()
    }

    fn other_replicas(&self, key: &[u8]) -> Vec<NodeId> {
        let me = self.config.node;
        self.replicas(key)
            .into_iter()
            .filter(|&n| n != me)
            .collect()
    }

    fn check_running(&self) -> Result<(), ReplicaError> {
        if self.poisoned {
            return Err(ReplicaError::Poisoned);
        }
        Ok(())
    }

    // ---- Internals: peers ----

    /// Buffers a synced write's delta for each other live replica of the
    /// key, except those in `sent`, which were sent it directly.
    fn buffer_delta(&mut self, key: &[u8], seq: u64, delta: &Object, sent: &[NodeId]) {
        let bounds = self.config.batch_bounds();
        for peer in self.other_replicas(key) {
            if sent.contains(&peer) {
                continue;
            }
            let queue = self.peers.entry(peer).or_default();
            self.stats.deltas_dropped += queue.push(key, seq, delta, bounds);
            if queue.batch_is_full(bounds) {
                self.send_batch(peer);
            }
        }
    }

    /// Sends one batch of `peer`'s buffered deltas.
    fn send_batch(&mut self, peer: NodeId) {
        let bounds = self.config.batch_bounds();
        let Some(queue) = self.peers.get_mut(&peer) else {
            return;
        };
        let deltas = queue.take_batch(self.config.node, bounds);
        if deltas.is_empty() {
            return;
        }
        let clock = self.hlc.last();
        let message = Message::Deltas(DeltaBatch { clock, deltas }).encode();
        self.outputs.push_back(Output::Send { to: peer, message });
    }

    /// Stages the record `key` will hold after joining a received delta;
    /// skipped (and counted) if it would not fit the storage value bound.
    fn stage_delta(&mut self, delta: KeyDelta, staged: &mut BTreeMap<Vec<u8>, Record>) {
        let Some(mut record) = self.received_base(&delta.key, &delta.delta, staged) else {
            return;
        };
        record.object.join(&delta.delta);
        record
            .applied
            .record(delta.origin, delta.first_seq, delta.last_seq);
        if let Some(record) = self.fits(record) {
            staged.insert(delta.key, record);
        }
    }

    /// Stages the record `key` will hold after joining a whole state: the
    /// state holds every write its frontier names, so after the join this
    /// replica may claim them too.
    fn stage_state(&mut self, state: StateTransfer, staged: &mut BTreeMap<Vec<u8>, Record>) {
        let Some(mut record) = self.received_base(&state.key, &state.object, staged) else {
            return;
        };
        record.object.join(&state.object);
        for (&origin, &seq) in &state.frontier {
            record.applied.raise(origin, seq);
        }
        if let Some(record) = self.fits(record) {
            staged.insert(state.key, record);
        }
    }

    /// The staged or current record of `key`, or a fresh one if the key
    /// bound allows.
    fn received_base(
        &mut self,
        key: &[u8],
        incoming: &Object,
        staged: &BTreeMap<Vec<u8>, Record>,
    ) -> Option<Record> {
        if let Some(record) = staged.get(key).or_else(|| self.objects.get(key)) {
            return Some(record.clone());
        }
        if self.objects.len() + staged.len() >= self.config.keys_max {
            self.stats.deltas_refused += 1;
            return None;
        }
        Some(Record {
            object: Object::empty(incoming.kind()),
            applied: AppliedLog::default(),
        })
    }

    fn fits(&mut self, record: Record) -> Option<Record> {
        let bytes = codec::encode(&record).len();
        if bytes > self.storage.limits().value_bytes_max {
            self.stats.deltas_refused += 1;
            return None;
        }
        Some(record)
    }

    /// Writes received changes in one batch, installs them, and runs the
    /// parked requests they caught up.
    fn commit_received(
        &mut self,
        changes: BTreeMap<Vec<u8>, Record>,
        now_ms: u64,
    ) -> Result<(), StepError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for (key, record) in &changes {
            batch.put(OBJECTS, key.clone(), codec::encode(record));
        }
        if let Err(error) = self.storage.write(&batch) {
            self.poisoned = true;
            return Err(StepError::Storage(error));
        }
        let changed: BTreeSet<Vec<u8>> = changes.keys().cloned().collect();
        for (key, record) in changes {
            self.dirty.insert(key.clone());
            self.objects.insert(key, record);
        }
        self.wake(&changed, now_ms);
        Ok(())
    }

    /// Runs every parked request on a changed key whose token is now seen.
    fn wake(&mut self, changed: &BTreeSet<Vec<u8>>, now_ms: u64) {
        let (ready, waiting): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut self.parked).into_iter().partition(|p| {
                changed.contains(&p.request.key)
                    && self
                        .objects
                        .get(&p.request.key)
                        .is_some_and(|r| r.applied.has_seen(&p.token))
            });
        self.parked = waiting;
        for parked in ready {
            self.execute(parked.request, parked.need, now_ms);
        }
    }
}

/// Reads every record of [`OBJECTS`], page by page. A record that does not
/// decode is a storage failure: the engine returned bytes this code never
/// wrote.
fn load<S: Storage>(storage: &S) -> Result<BTreeMap<Vec<u8>, Record>, StorageError> {
    let mut objects = BTreeMap::new();
    let mut range = KeyRange::all();
    loop {
        let page = storage.scan(OBJECTS, &range, Order::Ascending, LOAD_PAGE_ENTRIES)?;
        let full = page.len() == LOAD_PAGE_ENTRIES;
        let mut last = None;
        for (key, bytes) in page {
            let record: Record = codec::decode(&bytes).map_err(|e| StorageError::ReadFailed {
                reason: format!("undecodable replica record: {e}"),
            })?;
            record
                .object
                .validate()
                .map_err(|reason| StorageError::ReadFailed { reason })?;
            last = Some(key.clone());
            objects.insert(key, record);
        }
        match (full, last) {
            (true, Some(mut last)) => {
                last.push(0); // the smallest key after `last`
                range = KeyRange::starting_at(last);
            }
            _ => return Ok(objects),
        }
    }
}
