//! The KV simulation: nodes on a virtual clock, stepped one millisecond at
//! a time, each a store and a coordinator driven by their contract, with
//! the network between them, the clients in front of them and the nemeses
//! that break them.

use std::collections::BTreeSet;
use std::mem;

use calm_clock::Dot;
use calm_replica::coordinator::{
    Coordinator, CoordinatorConfig, Effect, KvMessage, KvReply, KvRequest, Level, Outcome, Quorum,
};
use calm_replica::kv::KvObject;
use calm_replica::kv::store::{KvOutput, KvStore, KvStoreConfig, OBJECTS};
use calm_replica::{Bytes, RequestId};
use calm_ring::{KeyHash, Placement, PreferenceList, Ring, RingConfig};
use calm_storage::{Limits, MemoryEngine, Storage, WriteBatch};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::network::{Wire, fingerprint};
use super::workload::{Ended, Op, OpKind, Workload, quorum_at};
use super::{KvBug, KvSimConfig, LAZY_SYNC_PERIOD_MS};
use crate::check::Violation;
use crate::network::{InFlight, Network, Sent};
use crate::sim::SimError;

/// How often clients that waited past their timeout give up, in ms.
const CLIENT_EXPIRY_PERIOD_MS: u64 = 100;
/// How long a store waits for a handoff's ack before sending it again, in
/// ms.
const HANDOFF_TIMEOUT_MS: u64 = 1_000;
/// How often `settle` looks for quiescence, in ms.
const SETTLE_STEP_MS: u64 = 100;

/// Counters of what happened, for tests and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvSimStats {
    /// Peer messages handed to the network.
    pub messages_sent: u64,
    /// Peer messages handed to a node.
    pub messages_delivered: u64,
    /// Messages the network lost.
    pub messages_lost: u64,
    /// Extra copies the network made.
    pub messages_duplicated: u64,
    /// Messages dropped by a blocked link.
    pub messages_blocked: u64,
    /// Messages dropped because the receiver was down.
    pub messages_to_down: u64,
    /// Client requests sent.
    pub requests: u64,
    /// Writes acknowledged.
    pub writes_acknowledged: u64,
    /// Writes acknowledged with at least one hinted ack.
    pub writes_hinted: u64,
    /// Reads answered.
    pub reads_answered: u64,
    /// Writes left in doubt (by a timeout, a crash, or a quorum error after
    /// the stamp).
    pub in_doubt: u64,
    /// Requests that certainly changed nothing.
    pub no_effect: u64,
    /// Handoffs an owner acknowledged.
    pub handoffs_acknowledged: u64,
    /// Anti-entropy transfers sent.
    pub transfers_sent: u64,
    /// Tombstones a read found at every owner (coordinator `Reap`s).
    pub reaps: u64,
    /// Crashes.
    pub crashes: u64,
    /// Unsynced batches the crashes threw away.
    pub unsynced_batches_lost: u64,
    /// Restarts.
    pub restarts: u64,
    /// Process pauses.
    pub pauses: u64,
}

/// A client request a test submits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Read the key.
    Get,
    /// Write the value, with the context of the test's last read of the
    /// key (blind if none).
    Put(Bytes),
    /// Delete with the context of the test's last read of the key.
    Delete,
}

/// One node: its disk outlives its process.
struct Node {
    id: NodeId,
    engine: MemoryEngine,
    running: Option<Running>,
    paused_until_ms: u64,
    /// Messages delivered while the process was busy or paused, by sender
    /// index; a node's messages to itself skip the network.
    inbox: Vec<(usize, Wire)>,
    /// Client requests to start at the next turn.
    requests: Vec<Op>,
    /// Whether the next turn crashes after writing its batch, before the
    /// sync.
    crash_before_sync: bool,
}

/// A node's process state, lost in a crash.
struct Running {
    store: KvStore,
    coordinator: Coordinator,
    /// Stamped writes waiting for the sync, with their dots.
    stamped: Vec<(KvRequest, KvObject, Dot)>,
    /// Client requests this node coordinates.
    clients: BTreeSet<RequestId>,
}

/// A deterministic cluster of KV nodes; see the [module docs](super).
///
/// # Call order
///
/// [`new`](Self::new), then any mix of [`run_for`](Self::run_for),
/// [`run_workload`](Self::run_workload), [`submit`](Self::submit) and the
/// nemeses; then [`heal`](Self::heal), [`restart_all`](Self::restart_all),
/// [`settle`](Self::settle) and the checkers
/// ([`check_all`](Self::check_all)).
pub struct KvSim {
    pub(super) config: KvSimConfig,
    rng: StdRng,
    now_ms: u64,
    ring: Ring,
    nodes: Vec<Node>,
    network: Network<Wire>,
    pub(super) workload: Workload,
    trace: u64,
    stats: KvSimStats,
    /// Violations seen while running (a storage error, a refused transfer).
    pub(super) seen: Vec<Violation>,
}

impl KvSim {
    /// Builds the cluster and starts every node on an empty disk.
    pub fn new(config: KvSimConfig) -> Result<KvSim, SimError> {
        config.validate().map_err(SimError::InvalidConfig)?;
        let ids: Vec<NodeId> = (1..=config.nodes as u64).map(NodeId).collect();
        let ring = Ring::new(RingConfig::default(), &ids)?;
        let nodes = ids
            .iter()
            .map(|&id| Node {
                id,
                engine: MemoryEngine::new(Limits::default()),
                running: None,
                paused_until_ms: 0,
                inbox: Vec::new(),
                requests: Vec::new(),
                crash_before_sync: false,
            })
            .collect();
        let mut sim = KvSim {
            rng: StdRng::seed_from_u64(config.seed),
            workload: Workload::new(config.clients, config.keys),
            config,
            now_ms: 0,
            ring,
            nodes,
            network: Network::default(),
            trace: 0,
            stats: KvSimStats::default(),
            seen: Vec::new(),
        };
        for &id in &ids {
            sim.start(id)?;
        }
        Ok(sim)
    }

    // ---- Clock ----

    /// The virtual time, in ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Runs `duration_ms` with no new client requests (those in flight
    /// still finish).
    pub fn run_for(&mut self, duration_ms: u64) {
        for _ in 0..duration_ms {
            self.step(false);
        }
    }

    /// Runs `duration_ms` with every client sending requests.
    pub fn run_workload(&mut self, duration_ms: u64) {
        for _ in 0..duration_ms {
            self.step(true);
        }
    }

    /// Runs until nothing is in flight, no hint is held, every owner of a
    /// key holds the same object and every node runs, or until `budget_ms`
    /// passed. Returns whether it got quiet. Heal and restart first.
    pub fn settle(&mut self, budget_ms: u64) -> bool {
        let deadline_ms = self.now_ms.saturating_add(budget_ms);
        loop {
            if self.is_quiet() {
                return true;
            }
            if self.now_ms >= deadline_ms {
                return false;
            }
            self.run_for(SETTLE_STEP_MS);
        }
    }

    /// One millisecond: deliveries, new requests, every running node's
    /// turn, client timeouts, and now and then anti-entropy.
    fn step(&mut self, with_clients: bool) {
        self.now_ms += 1;
        self.deliver_due();
        if with_clients {
            self.clients_act();
        }
        if self.now_ms.is_multiple_of(CLIENT_EXPIRY_PERIOD_MS) {
            let overdue = self
                .workload
                .overdue(self.now_ms.saturating_sub(self.config.client_timeout_ms));
            self.abandon(overdue);
        }
        for index in 0..self.nodes.len() {
            self.turn(index);
        }
        let anti_entropy = self.config.anti_entropy_period_ms;
        if anti_entropy.is_some_and(|period| self.now_ms.is_multiple_of(period)) {
            self.anti_entropy();
        }
    }

    // ---- Clients ----

    /// Sends a request a test chose to `node`, which must be up and, for a
    /// write, an owner of `key`; `run_for` carries it out.
    pub fn submit(
        &mut self,
        node: NodeId,
        key: &[u8],
        op: KvOp,
        level: Level,
        sloppy: bool,
    ) -> Result<(), SimError> {
        let index = self.index(node)?;
        if self.nodes[index].running.is_none() {
            return Err(SimError::NodeDown(node));
        }
        let (kind, value) = match op {
            KvOp::Get => (OpKind::Get, None),
            KvOp::Put(value) => (OpKind::Put, Some(value)),
            KvOp::Delete => (OpKind::Delete, None),
        };
        let quorum = quorum_at(self.config.replicas, level);
        let op = self
            .workload
            .submit(key.to_vec(), kind, value, quorum, sloppy, self.now_ms);
        self.route(index, op);
        Ok(())
    }

    /// Every idle client sends its next request to a random owner of the
    /// key that is running (clients learn of crashes at once; pauses they
    /// cannot see).
    fn clients_act(&mut self) {
        let ops = self.workload.next_ops(
            &mut self.rng,
            self.now_ms,
            self.config.sloppy_share,
            self.config.replicas,
        );
        for op in ops {
            let mut owners = self.owner_indexes(&op.key);
            owners.retain(|&index| self.nodes[index].running.is_some());
            if owners.is_empty() {
                self.end(op.id, None);
                continue;
            }
            let index = owners[self.rng.random_range(0..owners.len())];
            self.route(index, op);
        }
    }

    fn route(&mut self, index: usize, op: Op) {
        self.stats.requests += 1;
        self.fold_trace(&[10, index as u8, op.kind as u8]);
        self.fold_trace(&op.id.0.to_le_bytes());
        let node = &mut self.nodes[index];
        if let Some(running) = node.running.as_mut() {
            running.clients.insert(op.id);
        }
        node.requests.push(op);
    }

    /// Records the reply to `id` (`None`: an error).
    fn end(&mut self, id: RequestId, outcome: Option<Outcome>) {
        let think_ms_max = self.config.think_ms_max;
        let ended = self
            .workload
            .complete(&mut self.rng, think_ms_max, id, outcome, self.now_ms)
            .cloned();
        let tag = match ended {
            None => return,
            Some(Ended::Written { hinted }) => {
                self.stats.writes_acknowledged += 1;
                self.stats.writes_hinted += u64::from(hinted > 0);
                1
            }
            Some(Ended::Read { .. }) => {
                self.stats.reads_answered += 1;
                2
            }
            Some(Ended::InDoubt) => {
                self.stats.in_doubt += 1;
                3
            }
            Some(Ended::NoEffect | Ended::Pending) => {
                self.stats.no_effect += 1;
                4
            }
        };
        self.fold_trace(&[11, tag]);
        self.fold_trace(&id.0.to_le_bytes());
    }

    fn abandon(&mut self, ids: Vec<RequestId>) {
        for id in ids {
            let kind = self.workload.kind_of(id);
            if self.workload.abandon([id], self.now_ms) > 0 {
                match kind {
                    Some(OpKind::Get) => self.stats.no_effect += 1,
                    _ => self.stats.in_doubt += 1,
                }
                self.fold_trace(&[12]);
                self.fold_trace(&id.0.to_le_bytes());
            }
        }
    }

    // ---- A node's turn ----

    /// Inputs; the batch written and synced, then `synced`; stamped writes
    /// started; outputs sent.
    fn turn(&mut self, index: usize) {
        let node = &self.nodes[index];
        if node.running.is_none() || node.paused_until_ms > self.now_ms {
            return;
        }
        self.feed(index);
        let requests = mem::take(&mut self.nodes[index].requests);
        for op in requests {
            self.start_request(index, op);
        }
        self.offer_hints(index);
        if !self.sync(index) {
            return; // crashed inside the turn
        }
        let stamped = mem::take(&mut self.running(index).stamped);
        for (request, object, dot) in stamped {
            self.start_write(index, request, object, dot);
        }
        self.send_outputs(index);
    }

    /// Hands the node what arrived, then ticks both cores.
    fn feed(&mut self, index: usize) {
        let now_ms = self.now_ms;
        let Node {
            engine,
            running,
            inbox,
            ..
        } = &mut self.nodes[index];
        let Some(running) = running.as_mut() else {
            return;
        };
        for (from, wire) in mem::take(inbox) {
            let from = node_id(from);
            match wire {
                Wire::Message(message) => running.store.handle(engine, from, message, now_ms),
                Wire::Reply(reply @ KvReply::HandedOff { .. }) => {
                    self.stats.handoffs_acknowledged += 1;
                    running.store.step(engine, from, reply, now_ms);
                }
                Wire::Reply(reply) => running.coordinator.step(from, reply, now_ms),
                Wire::Transfer { key, object } => {
                    let merged = running.store.merge_transfer(engine, &key, &object, now_ms);
                    if let Err(error) = merged {
                        let detail = format!("{from} sent an object the store refused: {error}");
                        self.seen
                            .push(violation(self.config.seed, "transfer", detail));
                    }
                }
            }
        }
        running.coordinator.tick(now_ms);
        running.store.tick(now_ms);
    }

    /// A client request: a read starts at once; a write is stamped on the
    /// node's own object and starts only after the sync.
    fn start_request(&mut self, index: usize, op: Op) {
        let now_ms = self.now_ms;
        let quorum = self.driver_quorum(op.quorum);
        let request = KvRequest {
            id: op.id,
            key: op.key.clone(),
            quorum,
            sloppy_quorum: op.sloppy,
        };
        if op.kind == OpKind::Get {
            let list = self.preference_list(index, &op.key);
            if let Err(_refused) = self
                .running(index)
                .coordinator
                .start_read(request, &list, now_ms)
            {
                self.end(op.id, None);
            }
            return;
        }
        let Node {
            id,
            engine,
            running,
            ..
        } = &mut self.nodes[index];
        let running = running
            .as_mut()
            .expect("a turn runs only on a running node");
        match running
            .store
            .stamp(engine, &op.key, &op.context, op.value, now_ms)
        {
            Ok(object) => {
                let dot = Dot::new(*id, object.clock().counter(*id));
                running.stamped.push((request, object, dot));
            }
            Err(_refused) => self.end(op.id, None),
        }
    }

    /// The quorum the driver hands the coordinator: the request's, or one
    /// ack short under [`KvBug::AckAtWMinusOne`].
    fn driver_quorum(&self, quorum: Quorum) -> Quorum {
        if self.config.bug != KvBug::AckAtWMinusOne {
            return quorum;
        }
        let w = quorum.w().saturating_sub(1).max(1);
        Quorum::new(quorum.n(), quorum.r(), w).expect("1 <= max(w - 1, 1) <= n")
    }

    /// Starts a synced write and records which owners fallbacks stand in
    /// for.
    fn start_write(&mut self, index: usize, request: KvRequest, object: KvObject, dot: Dot) {
        let list = self.preference_list(index, &request.key);
        let hinted = list.hints().map(|(_, owner)| owner).collect();
        self.workload.stamped(request.id, dot, hinted);
        let id = request.id;
        let now_ms = self.now_ms;
        let started = self
            .running(index)
            .coordinator
            .start_write(request, object, &list, now_ms);
        if started.is_err() {
            self.end(id, None);
        }
    }

    /// Every handoff period, offers the node's hints to each owner it can
    /// reach (an oracle standing in for failure detection).
    fn offer_hints(&mut self, index: usize) {
        let period = self.config.handoff_period_ms;
        if self.config.bug == KvBug::NoHandoff || !self.now_ms.is_multiple_of(period) {
            return;
        }
        let now_ms = self.now_ms;
        let owners = self.running(index).store.hinted_owners();
        for owner in owners {
            let Ok(to) = self.index(owner) else { continue };
            if self.nodes[to].running.is_none() || self.network.is_cut(index, to) {
                continue;
            }
            let Node {
                engine, running, ..
            } = &mut self.nodes[index];
            let store = &mut running.as_mut().expect("running").store;
            store.handoff(engine, owner, now_ms);
        }
    }

    /// One durable commit of the turn's writes, then `synced`; the
    /// [`KvBug::AckBeforeSync`] driver syncs on a timer instead. Returns
    /// false if a crash planned for this turn struck (it waits for a turn
    /// that writes something).
    fn sync(&mut self, index: usize) -> bool {
        let lazy = self.config.bug == KvBug::AckBeforeSync;
        let now_ms = self.now_ms;
        let Node {
            engine,
            running,
            crash_before_sync,
            ..
        } = &mut self.nodes[index];
        let store = &mut running.as_mut().expect("running").store;
        let batches = store.take_batches();
        if *crash_before_sync && !batches.is_empty() {
            for batch in &batches {
                // A failed write only means less reaches the disk.
                let _ = engine.write(batch);
            }
            let _ = self.crash_keeping_random_prefix(node_id(index));
            return false;
        }
        let written = match (batches.is_empty(), lazy) {
            (true, _) => Ok(()),
            (false, false) => engine.write_synced(&batches),
            (false, true) => batches.iter().try_for_each(|batch| engine.write(batch)),
        };
        let synced = match lazy && now_ms.is_multiple_of(LAZY_SYNC_PERIOD_MS) {
            true => engine.sync(),
            false => Ok(()),
        };
        store.synced();
        if let Err(error) = written.and(synced) {
            let detail = format!("{}: storage failed: {error}", node_id(index));
            self.seen
                .push(violation(self.config.seed, "storage", detail));
        }
        true
    }

    fn send_outputs(&mut self, index: usize) {
        let running = self.running(index);
        let outputs = running.store.take_outputs();
        let effects = running.coordinator.take_effects();
        for output in outputs {
            match output {
                KvOutput::Send { to, message } => self.send(index, to, Wire::Message(message)),
                KvOutput::Reply { to, reply } => self.send(index, to, Wire::Reply(reply)),
            }
        }
        for effect in effects {
            match effect {
                Effect::Send { to, message } => self.send(index, to, Wire::Message(message)),
                Effect::Reply { request, result } => {
                    self.running(index).clients.remove(&request);
                    self.end(request, result.ok());
                }
                // The sim ticks every core every ms; timers are kept inside.
                Effect::SetTimer { .. } => {}
                Effect::Reap { key, object } => self.reap(index, key, object),
            }
        }
    }

    /// A peer message: to itself it goes straight to the inbox.
    fn send(&mut self, from: usize, to: NodeId, wire: Wire) {
        let Ok(to) = self.index(to) else {
            return;
        };
        if to == from {
            self.nodes[from].inbox.push((from, wire));
            return;
        }
        self.stats.messages_sent += 1;
        let message = InFlight {
            from,
            to,
            payload: wire,
        };
        let faults = &self.config.faults;
        match self
            .network
            .send(&mut self.rng, faults, self.now_ms, message, |_| true)
        {
            Sent::Queued { copies } => self.stats.messages_duplicated += u64::from(copies - 1),
            Sent::Lost => self.stats.messages_lost += 1,
            Sent::Blocked => self.stats.messages_blocked += 1,
        }
    }

    fn deliver_due(&mut self) {
        while let Some(due) = self.network.next_due(self.now_ms) {
            let Some(message) = due else {
                self.stats.messages_blocked += 1;
                continue;
            };
            let node = &mut self.nodes[message.to];
            if node.running.is_none() {
                self.stats.messages_to_down += 1;
                continue;
            }
            self.stats.messages_delivered += 1;
            let print = fingerprint(&message.payload);
            self.fold_trace(&[message.from as u8, message.to as u8]);
            self.fold_trace(&print.to_le_bytes());
            self.nodes[message.to]
                .inbox
                .push((message.from, message.payload));
        }
    }

    /// A coordinator found the same tombstone at every owner: each owner's
    /// store decides whether the reap is safe. The [`KvBug::ReapWithoutGrace`]
    /// driver deletes it everywhere at once instead.
    fn reap(&mut self, index: usize, key: Bytes, object: KvObject) {
        self.stats.reaps += 1;
        for owner in self.owners(&key) {
            if self.config.bug != KvBug::ReapWithoutGrace {
                let message = KvMessage::Reap {
                    key: key.clone(),
                    object: object.clone(),
                };
                self.send(index, owner, Wire::Message(message));
                continue;
            }
            let to = self.index(owner).expect("owners are members");
            let store_config = self.store_config(owner);
            let Node {
                engine, running, ..
            } = &mut self.nodes[to];
            let Some(running) = running.as_mut() else {
                continue;
            };
            if running.store.read(engine, &key).ok().flatten().as_ref() != Some(&object) {
                continue;
            }
            let mut batch = WriteBatch::new();
            batch.delete(OBJECTS, key.clone());
            // Between turns the store has nothing queued; reopening it
            // rebuilds its indexes without the key.
            let reopened = engine
                .write_synced(&[batch])
                .and_then(|()| KvStore::open(store_config, engine));
            match reopened {
                Ok(store) => running.store = store,
                Err(error) => {
                    let detail = format!("forced reap at {owner}: {error}");
                    self.seen
                        .push(violation(self.config.seed, "storage", detail));
                }
            }
        }
    }

    /// Simplified anti-entropy: for every key, each pair of its running,
    /// connected owners compares digests directly (instead of exchanging
    /// Merkle trees), and where they differ each sends the other its
    /// durable object over the network.
    fn anti_entropy(&mut self) {
        for key in self.workload.keys.clone() {
            let mut owners = self.owner_indexes(&key);
            owners.retain(|&index| self.is_active(index));
            for (position, &a) in owners.iter().enumerate() {
                for &b in &owners[position + 1..] {
                    if self.network.is_cut(a, b) || self.digest(a, &key) == self.digest(b, &key) {
                        continue;
                    }
                    self.transfer(a, b, &key);
                    self.transfer(b, a, &key);
                }
            }
        }
    }

    fn transfer(&mut self, from: usize, to: usize, key: &[u8]) {
        let Node {
            engine, running, ..
        } = &self.nodes[from];
        let store = &running.as_ref().expect("active").store;
        let Ok(Some(object)) = store.state_transfer(engine, key) else {
            return; // absent, or not yet durable
        };
        self.stats.transfers_sent += 1;
        let wire = Wire::Transfer {
            key: key.to_vec(),
            object,
        };
        self.send(from, node_id(to), wire);
    }

    // ---- Nemeses ----

    /// Cuts the network into `groups`: messages between nodes of different
    /// groups are dropped, both ways, in flight too. A node in no group is
    /// cut off from everyone. Replaces any earlier partition or block.
    pub fn partition(&mut self, groups: &[&[NodeId]]) -> Result<(), SimError> {
        let mut group_of = vec![usize::MAX; self.nodes.len()];
        for (group, members) in groups.iter().enumerate() {
            for &node in members.iter() {
                group_of[self.index(node)?] = group;
            }
        }
        self.network.heal();
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a != b && (group_of[a] != group_of[b] || group_of[a] == usize::MAX) {
                    self.network.block(a, b);
                }
            }
        }
        self.fold_trace(&[1, groups.len() as u8]);
        Ok(())
    }

    /// Drops every message from `from` to `to`, one way only.
    pub fn block(&mut self, from: NodeId, to: NodeId) -> Result<(), SimError> {
        let (from, to) = (self.index(from)?, self.index(to)?);
        self.network.block(from, to);
        self.fold_trace(&[2, from as u8, to as u8]);
        Ok(())
    }

    /// Ends every partition and block.
    pub fn heal(&mut self) {
        self.network.heal();
        self.fold_trace(&[3]);
    }

    /// Crashes `node`: its store, coordinator, inbox and requests vanish
    /// (their clients' requests become indeterminate), and its disk loses
    /// every write since the last sync. No-op if it is down.
    pub fn crash(&mut self, node: NodeId) -> Result<(), SimError> {
        self.crash_keeping(node, 0)
    }

    /// Like [`crash`](Self::crash), but the disk keeps a random oldest
    /// prefix of its unsynced batches, as a disk that flushed some itself.
    pub fn crash_keeping_random_prefix(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        let pending = self.nodes[index].engine.pending_batches();
        let kept = self.rng.random_range(0..=pending);
        self.crash_keeping(node, kept)
    }

    /// Crashes `node` inside its next turn that writes anything, after it
    /// wrote the turn's batch and before the sync: the disk keeps a random
    /// prefix of it, and no reply or stamped write of the turn leaves.
    pub fn crash_in_turn(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        self.nodes[index].crash_before_sync = self.nodes[index].running.is_some();
        Ok(())
    }

    fn crash_keeping(&mut self, node: NodeId, kept: usize) -> Result<(), SimError> {
        let index = self.index(node)?;
        let node = &mut self.nodes[index];
        let Some(running) = node.running.take() else {
            return Ok(());
        };
        let pending = node.engine.pending_batches();
        self.stats.unsynced_batches_lost += pending.saturating_sub(kept) as u64;
        node.engine.crash_keeping(kept);
        node.inbox.clear();
        node.paused_until_ms = 0;
        node.crash_before_sync = false;
        let mut lost: Vec<RequestId> = running.clients.into_iter().collect();
        lost.extend(mem::take(&mut node.requests).into_iter().map(|op| op.id));
        self.stats.crashes += 1;
        self.fold_trace(&[4, index as u8]);
        self.abandon(lost);
        Ok(())
    }

    /// Restarts `node` on what its disk kept. No-op if it runs.
    pub fn restart(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        if self.nodes[index].running.is_some() {
            return Ok(());
        }
        self.start(node)?;
        self.stats.restarts += 1;
        self.fold_trace(&[5, index as u8]);
        Ok(())
    }

    /// Restarts every crashed node and calls off crashes planned inside
    /// turns.
    pub fn restart_all(&mut self) -> Result<(), SimError> {
        for index in 0..self.nodes.len() {
            self.nodes[index].crash_before_sync = false;
            self.restart(node_id(index))?;
        }
        Ok(())
    }

    /// Stops `node`'s process for `duration_ms`: what reaches it waits in
    /// its inbox, and it is not marked down (a slow node, not a dead one).
    pub fn pause(&mut self, node: NodeId, duration_ms: u64) -> Result<(), SimError> {
        let index = self.index(node)?;
        self.nodes[index].paused_until_ms = self.now_ms + duration_ms;
        self.stats.pauses += 1;
        self.fold_trace(&[6, index as u8]);
        Ok(())
    }

    fn start(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        let engine = &self.nodes[index].engine;
        let store = KvStore::open(self.store_config(node), engine)?;
        let timeout_ms = self.config.request_timeout_ms;
        let config = CoordinatorConfig {
            read_timeout_ms: timeout_ms,
            write_timeout_ms: timeout_ms,
            ..CoordinatorConfig::default()
        };
        self.nodes[index].running = Some(Running {
            store,
            coordinator: Coordinator::new(config),
            stamped: Vec::new(),
            clients: BTreeSet::new(),
        });
        Ok(())
    }

    /// The store's defaults, but a handoff is sent again after a second
    /// rather than five: the sim's round trips are far shorter than a real
    /// WAN's, and a lost handoff should not stall a run.
    fn store_config(&self, node: NodeId) -> KvStoreConfig {
        KvStoreConfig {
            handoff_timeout_ms: HANDOFF_TIMEOUT_MS,
            ..KvStoreConfig::new(node)
        }
    }

    // ---- Getters ----

    /// The node ids, `1..=nodes`.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    /// Whether `node`'s process runs (paused or not).
    pub fn is_up(&self, node: NodeId) -> bool {
        self.index(node)
            .is_ok_and(|index| self.nodes[index].running.is_some())
    }

    /// The natural owners of `key`, in preference order.
    pub fn owners(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring.owners(KeyHash::of(key), self.config.replicas)
    }

    /// The indexes of `key`'s owners.
    pub(super) fn owner_indexes(&self, key: &[u8]) -> Vec<usize> {
        let owners = self.owners(key).into_iter();
        // Invariant: the ring's members are exactly the nodes 1..=nodes.
        owners.map(|owner| owner.0 as usize - 1).collect()
    }

    /// The workload's keys.
    pub fn keys(&self) -> &[Bytes] {
        &self.workload.keys
    }

    /// `node`'s object of `key`, if it runs and has one.
    pub fn object(&self, node: NodeId, key: &[u8]) -> Option<KvObject> {
        let node = &self.nodes[self.index(node).ok()?];
        let store = &node.running.as_ref()?.store;
        store.read(&node.engine, key).ok().flatten()
    }

    /// Hints held across the running nodes.
    pub fn hints_held(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|node| node.running.as_ref())
            .map(|running| running.store.stats().hints)
            .sum()
    }

    /// The counters.
    pub fn stats(&self) -> &KvSimStats {
        &self.stats
    }

    /// A hash of every delivery, client request, reply and nemesis so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    // ---- Helpers ----

    /// `key`'s preference list as coordinator `index` sees it: a node is
    /// down if it is crashed or cut off from the coordinator.
    fn preference_list(&self, index: usize, key: &[u8]) -> PreferenceList {
        let is_down = |node: NodeId| match self.index(node) {
            Ok(other) => {
                other != index
                    && (self.nodes[other].running.is_none() || self.network.is_cut(index, other))
            }
            Err(_) => true,
        };
        self.ring
            .preference_list(KeyHash::of(key), self.config.replicas, &is_down)
    }

    /// Running and not paused.
    pub(super) fn is_active(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        node.running.is_some() && node.paused_until_ms <= self.now_ms
    }

    /// `key`'s digest at node `index`, if it runs and holds the key.
    pub(super) fn digest(&self, index: usize, key: &[u8]) -> Option<u64> {
        let store = &self.nodes[index].running.as_ref()?.store;
        store
            .digests()
            .find(|(k, _)| *k == key)
            .map(|(_, digest)| digest)
    }

    fn is_quiet(&self) -> bool {
        self.network.is_idle()
            && !self.workload.is_busy()
            && self.hints_held() == 0
            && self.differences() == 0
            && (0..self.nodes.len()).all(|index| {
                let node = &self.nodes[index];
                self.is_active(index)
                    && node.inbox.is_empty()
                    && node
                        .running
                        .as_ref()
                        .is_some_and(|r| r.coordinator.in_flight() == 0)
            })
    }

    fn running(&mut self, index: usize) -> &mut Running {
        // Invariant: called only inside a turn, which runs only on a
        // running node.
        self.nodes[index].running.as_mut().expect("a running node")
    }

    pub(super) fn index(&self, node: NodeId) -> Result<usize, SimError> {
        let index = node.0.wrapping_sub(1) as usize;
        if index < self.nodes.len() {
            Ok(index)
        } else {
            Err(SimError::NoSuchNode(node))
        }
    }

    fn fold_trace(&mut self, bytes: &[u8]) {
        self.trace = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.trace);
    }
}

/// The id of the node at `index`.
pub(super) fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

pub(super) fn violation(seed: u64, checker: &'static str, detail: String) -> Violation {
    Violation {
        seed,
        checker,
        detail,
    }
}
