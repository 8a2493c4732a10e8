//! The `one`/`quorum`/`all` levels' half of the event loop: the tokio side
//! of calm-replica's KV [`Coordinator`] and [`KvStore`].
//!
//! Both cores hold every protocol decision; this driver routes between
//! them, the peers and the waiting clients, at fixed points of a turn:
//! commands and peer frames as they arrive, [`QuorumLevels::tick`] on the
//! loop's tick, and around the turn's sync [`QuorumLevels::take_batch`],
//! then [`QuorumLevels::after_sync`]. A write is stamped by the owner that
//! coordinates it, and only after the turn's sync has made the stamped
//! object durable does the coordinator send it to the other replicas: a
//! dot must name one value forever, so it may not leave before it is
//! stored.
//!
//! Every frame on the `Kv` channel is one tag byte and a core's own
//! encoding: a coordinator message to a replica, a replica's reply, or an
//! anti-entropy session frame over the KV objects.

use std::collections::HashMap;

use calm_replica::KeyRange;
use calm_replica::RequestId;
use calm_replica::coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorError, Effect, KvMessage, KvReply, KvRequest,
    Level as KvLevel, Outcome, Quorum, QuorumError,
};
use calm_replica::kv::store::{KvOutput, KvStore, KvStoreConfig, KvStoreStats, StampError};
use calm_replica::kv::{KvLimits, KvObject, check_key};
use calm_ring::{KeyHash, Placement, PreferenceList, Ring};
use calm_storage::{DiskEngine, StorageError, WriteBatch};
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use tokio::sync::oneshot;

use super::anti_entropy::{AeEffects, AeFrame, AntiEntropy, Ended};
use crate::backend::{BackendError, KvAnswer, KvCall, KvOp, KvRefusal};
use crate::metrics::Metrics;

/// Frame tags on the `Kv` channel.
const TAG_MESSAGE: u8 = 0;
const TAG_REPLY: u8 = 1;
const TAG_ANTI_ENTROPY: u8 = 2;
const TAG_TRANSFER: u8 = 3;

/// How long a KV anti-entropy session may stall.
const ANTI_ENTROPY_SESSION_TIMEOUT_MS: u64 = 10_000;

/// Tombstones read at level `all` per reaping round (one per gossip
/// period): each read costs N fetches, so reaping stays a trickle.
const REAP_READS_MAX: usize = 16;

/// The levels' settings for one node, from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumOptions {
    /// The keyspace's N, R and W (`LEVEL_QUORUM`'s R and W).
    pub quorum: Quorum,
    /// Whether fallbacks holding hints may stand in for down owners and
    /// count towards W (sloppy quorum).
    pub sloppy_quorum: bool,
    /// Key, value, context and sibling bounds.
    pub limits: KvLimits,
    /// The most bytes of hints this node holds for down owners; beyond it,
    /// new hints are refused (see `KvStore`).
    pub hint_bytes_max: u64,
    /// Whether reads hedge to one more replica after the recent p95.
    pub hedged_reads: bool,
}

impl Default for QuorumOptions {
    fn default() -> Self {
        Self {
            quorum: Quorum::DEFAULT,
            sloppy_quorum: true,
            limits: KvLimits::default(),
            hint_bytes_max: KvStoreConfig::new(NodeId(0)).hint_bytes_max,
            hedged_reads: true,
        }
    }
}

/// The coordinator's settings: the defaults, with hedging pushed past the
/// read timeout when it is off (a hedge never fires after the deadline).
fn coordinator_config(options: &QuorumOptions) -> CoordinatorConfig {
    let config = CoordinatorConfig::default();
    if options.hedged_reads {
        return config;
    }
    CoordinatorConfig {
        hedge_delay_min_ms: config.read_timeout_ms,
        hedge_delay_max_ms: config.read_timeout_ms,
        ..config
    }
}

/// A request of these levels for the loop.
pub(super) struct KvCommand {
    pub(super) call: KvCall,
    pub(super) reply: oneshot::Sender<Result<KvAnswer, BackendError>>,
}

/// Who waits for a request's outcome.
enum Waiter {
    /// A client; for a write, with the object the coordinating owner holds
    /// after it, returned with the reply.
    Client {
        reply: oneshot::Sender<Result<KvAnswer, BackendError>>,
        stamped: Option<KvObject>,
    },
    /// A read this node started to reap a tombstone; nobody waits.
    Reaper,
}

/// A write stamped this turn, sent once the turn's sync made it durable.
struct Stamped {
    request: KvRequest,
    object: KvObject,
    list: PreferenceList,
}

/// Where the loop gets the node's state from.
pub(super) struct Context<'a> {
    /// Where the coordination tax is counted.
    pub(super) metrics: &'a Metrics,
    pub(super) storage: &'a DiskEngine,
    pub(super) ring: &'a Ring,
    /// Whether a node is down (never this one).
    pub(super) is_down: &'a dyn Fn(NodeId) -> bool,
    /// Monotonic milliseconds: the coordinator's clock.
    pub(super) now_ms: u64,
    /// Wall-clock milliseconds: the store's clock for hint ages and
    /// tombstone grace, which must survive a restart.
    pub(super) wall_ms: u64,
}

/// The two cores of these levels and the requests in flight.
pub(super) struct QuorumLevels {
    me: NodeId,
    options: QuorumOptions,
    store: KvStore,
    coordinator: Coordinator,
    next_request: u64,
    waiting: HashMap<RequestId, Waiter>,
    stamped: Vec<Stamped>,
    /// Frames for peers, drained by the loop after each step.
    outbox: Vec<(NodeId, Vec<u8>)>,
    /// Merkle anti-entropy over the KV objects, run beside the CRDT
    /// replica's with the same peer and ranges.
    anti_entropy: AntiEntropy,
    /// Keys anti-entropy found differing, shipped after the turn's sync.
    repairs: Vec<(NodeId, Vec<u8>)>,
    /// Sessions ended since the loop last asked, for metrics.
    ended: Vec<Ended>,
}

impl QuorumLevels {
    /// Opens the node's KV store from `storage`.
    pub(super) fn open(
        me: NodeId,
        options: QuorumOptions,
        storage: &DiskEngine,
    ) -> Result<Self, StorageError> {
        let mut config = KvStoreConfig::new(me);
        config.limits = options.limits;
        config.hint_bytes_max = options.hint_bytes_max;
        let store = KvStore::open(config, storage)?;
        let coordinator = Coordinator::new(coordinator_config(&options));
        Ok(Self {
            me,
            options,
            store,
            coordinator,
            next_request: 0,
            waiting: HashMap::new(),
            stamped: Vec::new(),
            outbox: Vec::new(),
            anti_entropy: AntiEntropy::new(ANTI_ENTROPY_SESSION_TIMEOUT_MS),
            repairs: Vec::new(),
            ended: Vec::new(),
        })
    }

    // ---- Inputs ----

    /// Starts a client's request: a read at once, a write stamped now and
    /// sent after the turn's sync. Refusals are answered at once.
    pub(super) fn command(&mut self, command: KvCommand, cx: &Context<'_>) {
        let KvCommand { call, reply } = command;
        if let Err(refusal) = self.start(call, reply, cx) {
            let (reply, error) = *refusal;
            let _ = reply.send(Err(BackendError::Kv(error)));
        }
        self.drain(cx);
    }

    /// A peer's frame on the `Kv` channel.
    pub(super) fn inbound(
        &mut self,
        from: NodeId,
        bytes: &[u8],
        cx: &Context<'_>,
    ) -> Result<(), DecodeError> {
        let limits = &self.options.limits;
        match bytes.split_first() {
            Some((&TAG_MESSAGE, body)) => {
                let message = KvMessage::decode(body, limits)?;
                self.store.handle(cx.storage, from, message, cx.wall_ms);
            }
            Some((&TAG_REPLY, body)) => match KvReply::decode(body, limits)? {
                reply @ KvReply::HandedOff { .. } => {
                    self.store.step(cx.storage, from, reply, cx.wall_ms);
                }
                reply => self.coordinator.step(from, reply, cx.now_ms),
            },
            Some((&TAG_ANTI_ENTROPY, body)) => {
                let frame = AeFrame::decode(body)?;
                let mut effects = AeEffects::default();
                let store = &self.store;
                self.anti_entropy.handle(
                    from,
                    frame,
                    || Box::new(store.digests()),
                    cx.now_ms,
                    &mut effects,
                );
                self.anti_entropy.open_sessions(
                    || Box::new(store.digests()),
                    cx.now_ms,
                    &mut effects,
                );
                self.carry_out(effects);
            }
            Some((&TAG_TRANSFER, body)) => {
                let (key, object): (Vec<u8>, Vec<u8>) = codec::decode(body)?;
                self.store
                    .merge_transfer(cx.storage, &key, &object, cx.wall_ms)?;
            }
            _ => return Err(DecodeError::Invalid("unknown KV frame tag".to_string())),
        }
        self.drain(cx);
        Ok(())
    }

    /// Timeouts, hedges, hint expiry, stalled anti-entropy sessions.
    pub(super) fn tick(&mut self, cx: &Context<'_>) {
        self.coordinator.tick(cx.now_ms);
        self.store.tick(cx.wall_ms);
        let mut effects = AeEffects::default();
        self.anti_entropy.expire(cx.now_ms, &mut effects);
        self.carry_out(effects);
        self.drain(cx);
    }

    /// Starts an anti-entropy round over the KV objects with `peer` on the
    /// ranges both replicate (ignored while a round runs).
    pub(super) fn anti_entropy_round(
        &mut self,
        peer: NodeId,
        ranges: Vec<KeyRange>,
        cx: &Context<'_>,
    ) {
        if self.anti_entropy.busy() {
            return;
        }
        self.anti_entropy.start_round(peer, ranges);
        let mut effects = AeEffects::default();
        let store = &self.store;
        self.anti_entropy
            .open_sessions(|| Box::new(store.digests()), cx.now_ms, &mut effects);
        self.carry_out(effects);
    }

    /// Anti-entropy sessions ended since the last call, for metrics.
    pub(super) fn ended_sessions(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    /// Once per gossip period: hands hints to owners that are up again, and
    /// reads a few old tombstones at level `all` so that the ones every
    /// owner holds are reaped.
    pub(super) fn maintain(&mut self, cx: &Context<'_>) {
        for owner in self.store.hinted_owners() {
            if owner != self.me && !(cx.is_down)(owner) {
                self.store.handoff(cx.storage, owner, cx.wall_ms);
            }
        }
        for key in self.store.tombstones_due(cx.wall_ms, REAP_READS_MAX) {
            let n = self.options.quorum.n();
            let Ok(quorum) = Quorum::new(n, n, n) else {
                continue;
            };
            let list = cx.ring.preference_list(KeyHash::of(&key), n, cx.is_down);
            let id = self.request_id();
            let request = KvRequest {
                sloppy_quorum: false,
                ..KvRequest::new(id, key, quorum)
            };
            if self
                .coordinator
                .start_read(request, &list, cx.now_ms)
                .is_ok()
            {
                self.waiting.insert(id, Waiter::Reaper);
            }
        }
        self.drain(cx);
    }

    // ---- Around the sync ----

    /// Everything the store queued this turn, for the turn's durable commit.
    pub(super) fn take_batches(&mut self) -> Vec<WriteBatch> {
        self.store.take_batches()
    }

    /// The turn's commit is durable: the store releases its held replies,
    /// and the writes stamped this turn go to their replicas.
    pub(super) fn after_sync(&mut self, cx: &Context<'_>) {
        self.store.synced();
        for (peer, key) in std::mem::take(&mut self.repairs) {
            // `None`: the key went away or changed unsynced; the next round
            // finds it again if it still differs.
            if let Ok(Some(object)) = self.store.state_transfer(cx.storage, &key) {
                let mut frame = vec![TAG_TRANSFER];
                frame.extend(codec::encode(&(key, object)));
                self.outbox.push((peer, frame));
            }
        }
        for Stamped {
            request,
            object,
            list,
        } in std::mem::take(&mut self.stamped)
        {
            let (id, w) = (request.id, request.quorum.w());
            if let Err(error) = self
                .coordinator
                .start_write(request, object, &list, cx.now_ms)
            {
                // `admissible` checked everything before the stamp, so this
                // is not expected; but this owner holds the write now.
                tracing::warn!(%error, "a stamped write could not start");
                let in_doubt = CoordinatorError::WriteInDoubt { acks: 1, needed: w };
                self.answer(id, Err(KvRefusal::Coordinator(in_doubt)));
            }
        }
        self.drain(cx);
    }

    // ---- Outputs and getters ----

    /// Frames for peers produced since the last call.
    pub(super) fn outbox(&mut self) -> Vec<(NodeId, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// The store's counters.
    pub(super) fn store_stats(&self) -> &KvStoreStats {
        self.store.stats()
    }

    /// The coordinator's counters.
    pub(super) fn coordinator_stats(&self) -> &calm_replica::coordinator::CoordinatorStats {
        self.coordinator.stats()
    }

    /// Answers every waiting client: the node is stopping.
    pub(super) fn shut_down(&mut self) {
        for (_, waiter) in self.waiting.drain() {
            if let Waiter::Client { reply, .. } = waiter {
                let _ = reply.send(Err(BackendError::Unavailable("the node is shutting down")));
            }
        }
    }

    // ---- Internals ----

    #[allow(clippy::type_complexity)]
    fn start(
        &mut self,
        call: KvCall,
        reply: oneshot::Sender<Result<KvAnswer, BackendError>>,
        cx: &Context<'_>,
    ) -> Result<(), Box<(oneshot::Sender<Result<KvAnswer, BackendError>>, KvRefusal)>> {
        if let Err(error) = check_key(&call.key, &self.options.limits) {
            return Err(Box::new((reply, KvRefusal::Object(error))));
        }
        // `quorum` means a majority of the request's N: an N override
        // moves the default R and W with it.
        let mut overrides = call.overrides;
        if let (KvLevel::Quorum, Some(n)) = (call.level, overrides.n) {
            overrides.r = overrides.r.or(Some(n / 2 + 1));
            overrides.w = overrides.w.or(Some(n / 2 + 1));
        }
        let quorum = match self.options.quorum.for_request(call.level, overrides) {
            Ok(quorum) => quorum,
            Err(error) => return Err(Box::new((reply, KvRefusal::Coordinator(error.into())))),
        };
        let list = cx
            .ring
            .preference_list(KeyHash::of(&call.key), quorum.n(), cx.is_down);
        let id = self.request_id();
        let request = KvRequest {
            sloppy_quorum: self.options.sloppy_quorum,
            ..KvRequest::new(id, call.key, quorum)
        };
        let (value, context) = match call.op {
            KvOp::Get => {
                if let Err(error) = self.coordinator.start_read(request, &list, cx.now_ms) {
                    return Err(Box::new((reply, error.into())));
                }
                // A read asks the first R replicas in preference order: no
                // round trip only if that is this node alone.
                let local =
                    quorum.r() == 1 && list.replicas.first().map(|r| r.node) == Some(self.me);
                cx.metrics.coordinated(call.level.name(), u64::from(!local));
                let waiter = Waiter::Client {
                    reply,
                    stamped: None,
                };
                self.waiting.insert(id, waiter);
                return Ok(());
            }
            KvOp::Put { value, context } => (Some(value), context),
            KvOp::Delete { context } => (None, context),
        };
        if !list.owners.contains(&self.me) {
            // Only an owner mints dots for the key (see the module doc).
            let owners = list
                .replicas
                .iter()
                .filter(|replica| replica.stands_in_for.is_none())
                .map(|replica| replica.node)
                .collect();
            return Err(Box::new((reply, KvRefusal::NotOwner { owners })));
        }
        // Everything that could refuse the write is checked before the
        // stamp: once stamped, this owner holds it durably, and a refusal
        // would no longer mean "nothing changed".
        if let Err(error) = self.admissible(&request, &list) {
            return Err(Box::new((reply, KvRefusal::Coordinator(error))));
        }
        let stamped = self
            .store
            .stamp(cx.storage, &request.key, &context, value, cx.wall_ms);
        match stamped {
            Ok(object) => {
                // This owner's own ack is immediate (its copy is synced
                // before the others are asked): W = 1 pays no round trip.
                cx.metrics
                    .coordinated(call.level.name(), u64::from(quorum.w() > 1));
                let waiter = Waiter::Client {
                    reply,
                    stamped: Some(object.clone()),
                };
                self.waiting.insert(id, waiter);
                self.stamped.push(Stamped {
                    request,
                    object,
                    list,
                });
                Ok(())
            }
            Err(StampError::Refused(error)) => Err(Box::new((reply, KvRefusal::Object(error)))),
            Err(error) => Err(Box::new((reply, KvRefusal::Storage(error.to_string())))),
        }
    }

    fn carry_out(&mut self, effects: AeEffects) {
        for (peer, frame) in effects.frames {
            let mut bytes = vec![TAG_ANTI_ENTROPY];
            bytes.extend(frame.encode());
            self.outbox.push((peer, bytes));
        }
        // Objects ship after the turn's sync: only durable state leaves.
        self.repairs.extend(effects.ship);
        self.ended.extend(effects.ended);
    }

    /// The coordinator's own admission checks, made before a write is
    /// stamped: the cluster holds `n` owners, enough usable replicas are up
    /// for `w`, and the in-flight bound has room for this turn's stamps.
    fn admissible(
        &self,
        request: &KvRequest,
        list: &PreferenceList,
    ) -> Result<(), CoordinatorError> {
        let (n, w) = (request.quorum.n(), request.quorum.w());
        if list.owners.len() < n {
            let members = list.owners.len();
            return Err(QuorumError::ReplicasBeyondCluster { n, members }.into());
        }
        let up = list
            .replicas
            .iter()
            .filter(|replica| request.sloppy_quorum || replica.stands_in_for.is_none())
            .take(n)
            .count();
        if up < w {
            return Err(CoordinatorError::Unavailable { needed: w, up });
        }
        let in_flight_max = CoordinatorConfig::default().in_flight_max;
        if self.coordinator.in_flight() + self.stamped.len() >= in_flight_max {
            return Err(CoordinatorError::Overloaded { in_flight_max });
        }
        Ok(())
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Carries out both cores' outputs until neither has more: a message
    /// to this node is handed to its own store (or, for a reply, to its
    /// own coordinator) in place, anything else goes to the outbox.
    fn drain(&mut self, cx: &Context<'_>) {
        loop {
            let effects = self.coordinator.take_effects();
            let outputs = self.store.take_outputs();
            if effects.is_empty() && outputs.is_empty() {
                return;
            }
            for effect in effects {
                self.effect(effect, cx);
            }
            for output in outputs {
                match output {
                    KvOutput::Send { to, message } => self.send(to, message, cx),
                    KvOutput::Reply { to, reply } if to == self.me => match reply {
                        reply @ KvReply::HandedOff { .. } => {
                            self.store.step(cx.storage, to, reply, cx.wall_ms);
                        }
                        reply => self.coordinator.step(to, reply, cx.now_ms),
                    },
                    KvOutput::Reply { to, reply } => {
                        let mut frame = vec![TAG_REPLY];
                        frame.extend(reply.encode());
                        self.outbox.push((to, frame));
                    }
                }
            }
        }
    }

    fn effect(&mut self, effect: Effect, cx: &Context<'_>) {
        match effect {
            Effect::Send {
                to,
                message: KvMessage::Store { request, hint, .. },
            } if to == self.me && hint.is_none() => {
                // This node stamped the write and synced it before the
                // coordinator started: its own copy is durable already.
                let reply = KvReply::Stored { request };
                self.coordinator.step(self.me, reply, cx.now_ms);
            }
            Effect::Send { to, message } => self.send(to, message, cx),
            Effect::Reply { request, result } => {
                self.answer(request, result.map_err(KvRefusal::Coordinator));
            }
            // The loop ticks every few milliseconds; the coordinator keeps
            // its own timers and fires what is due on each tick.
            Effect::SetTimer { .. } => {}
            Effect::Reap { key, object } => {
                let n = self.options.quorum.n();
                for owner in cx.ring.owners(KeyHash::of(&key), n) {
                    let message = KvMessage::Reap {
                        key: key.clone(),
                        object: object.clone(),
                    };
                    self.send(owner, message, cx);
                }
            }
        }
    }

    fn send(&mut self, to: NodeId, message: KvMessage, cx: &Context<'_>) {
        if to == self.me {
            self.store.handle(cx.storage, to, message, cx.wall_ms);
            return;
        }
        let mut frame = vec![TAG_MESSAGE];
        frame.extend(message.encode());
        self.outbox.push((to, frame));
    }

    fn answer(&mut self, id: RequestId, result: Result<Outcome, KvRefusal>) {
        let Some(waiter) = self.waiting.remove(&id) else {
            return;
        };
        let Waiter::Client { reply, stamped } = waiter else {
            return;
        };
        let answer = result.map(|outcome| match outcome {
            Outcome::Written { acks, hinted } => KvAnswer::Written {
                object: stamped.unwrap_or_default(),
                acks,
                hinted,
            },
            Outcome::Read { object, replies } => KvAnswer::Read { object, replies },
        });
        let _ = reply.send(answer.map_err(BackendError::Kv));
    }
}
