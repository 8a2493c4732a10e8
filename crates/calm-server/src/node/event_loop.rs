//! The event loop: one task owning the membership, replica and
//! anti-entropy cores, carrying out their effects with the transport, the
//! timers and the disk.
//!
//! Each turn waits for a command, a peer message or the next timer, then
//! takes everything else already waiting (bounded), fires due timers, and
//! commits: one sync for every write taken this turn (group commit), after
//! which the held acknowledgements go out and the synced writes' deltas
//! leave for their peers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use calm_clock::{PhysicalClock, SystemClock};
use calm_membership::{Effect, LocalEvent, MemberState, Membership, Peer, Timer};
use calm_replica::coordinator::Level;
use calm_replica::{Output, Replica, Request, RequestId, StepError, shared_ranges};
use calm_ring::{KeyHash, Placement, Ring};
use calm_storage::{DiskEngine, Storage};
use calm_transport::{Channel, Inbound, Transport};
use calm_types::NodeId;
use rand::seq::IndexedRandom;
use rand::{SeedableRng, rngs::StdRng};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as TokioInstant;

use super::anti_entropy::{AeEffects, AeFrame, AntiEntropy};
use super::coordination::{Coordination, EtcdCommand, NodeAddresses};
use super::gossip::{Addresses, RingGossip};
use super::quorum::{Context as KvContext, QuorumLevels};
use super::{Command, NodeOptions, Shared, StartError, View, meta, millis};
use crate::backend::{BackendError, MemberInfo, state_label};
use crate::metrics::{
    ChannelLabels, EventLabels, Metrics, PeerLabels, ReasonLabels, StateLabels, mirror,
};

/// Commands and peer messages taken in one turn beyond the first: enough to
/// share one sync among many writes, few enough to keep timers on time.
const TURN_INPUTS_MAX: usize = 1024;
/// How often parked requests are checked and buffered deltas sent when
/// nothing else wakes the loop.
const TICK_MS: u64 = 20;
/// How often the ring log goes to a few peers, and the view is refreshed.
const GOSSIP_MS: u64 = 1000;
/// Peers each gossip round reaches.
const GOSSIP_FANOUT: usize = 3;
/// How often a node not yet in the cluster repeats its hellos.
const JOIN_RETRY_MS: u64 = 1000;
/// How often a node greets the members it sees dead, as Serf reconnects to
/// failed members: after a partition long enough for both sides to declare
/// each other dead, no probe crosses it any more, and this is what brings
/// the sides together (a member that declared the greeter dead tells it
/// so, and it rejoins with a new generation).
const RECONNECT_MS: u64 = 5000;
/// How long a node with seeds waits to learn a ring before founding one
/// with whoever it has met (every node of a new cluster lists the others).
const BOOTSTRAP_WAIT_MS: u64 = 5000;
/// How long an anti-entropy session may stall.
const ANTI_ENTROPY_SESSION_TIMEOUT_MS: u64 = 10_000;

/// The transport's name for a seed known only by address: the top bit set,
/// which no configured node id has (see `NODE_ID_MAX`).
fn seed_name(addr: SocketAddr) -> NodeId {
    NodeId((1 << 63) | (KeyHash::of(addr.to_string().as_bytes()).0 >> 1))
}

enum Due {
    Membership(Timer),
    Tick,
    Gossip,
    JoinRetry,
    Reconnect,
    AntiEntropy,
    RaftTick,
}

/// Counts the cores keep, as of the last mirror into metrics.
#[derive(Default)]
struct Mirrored {
    syncs: u64,
    deltas_dropped: u64,
    deltas_refused: u64,
    clock_rejections: u64,
    catch_up_timeouts: u64,
    read_repairs: u64,
    hedges: u64,
    writes_in_doubt: u64,
    bytes_sent: u64,
    bytes_received: u64,
    closed: [u64; 6],
    kv_hint_events: [u64; 4],
    kv_hedges: [u64; 2],
    kv_read_repairs: u64,
    kv_reaped: u64,
}

/// Every core of one node and what the loop needs to drive them.
pub(super) struct Core {
    options: NodeOptions,
    me: NodeId,
    membership: Membership,
    replica: Replica<DiskEngine, Ring>,
    /// The coordinated keyspace, on a voter.
    coordination: Option<Coordination>,
    /// The `one`/`quorum`/`all` levels: the KV coordinator and store.
    quorum: QuorumLevels,
    transport: Transport,
    anti_entropy: AntiEntropy,
    gossip: RingGossip,
    /// Set once a peer's ring gossip arrived: the node may then join.
    heard_gossip: bool,
    active: bool,
    /// Set while SWIM sees every other member down (foca is idle): no one
    /// probes this node any more and it probes no one, so it says hello to
    /// its seeds again until a member answers.
    isolated: bool,
    /// Where each member's peer transport listens, from SWIM.
    peer_addrs: HashMap<NodeId, SocketAddr>,
    states: BTreeMap<NodeId, MemberState>,
    timers: BTreeMap<(u64, u64), Due>,
    timer_seq: u64,
    pending: HashMap<RequestId, oneshot::Sender<Result<calm_replica::Ack, BackendError>>>,
    next_request: u64,
    writes_this_turn: usize,
    /// Keys anti-entropy found differing, to ship to the peer after the
    /// turn's sync.
    repairs: Vec<(NodeId, Vec<u8>)>,
    started: Instant,
    clock: SystemClock,
    rng: StdRng,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    mirrored: Mirrored,
    /// Syncs taken for Raft alone (the replica counts its own).
    raft_syncs: u64,
    /// Syncs taken for the KV levels alone.
    kv_syncs: u64,
    /// The coordinated keyspace's applied-state batches of the last turn, written with the
    /// next turn's Raft log in one durable commit (see [`Core::raft_before_sync`]).
    applied_batches: Vec<calm_storage::WriteBatch>,
    stopping: Option<oneshot::Sender<()>>,
}

impl Core {
    /// Opens the replica on `storage` with the recorded ring and sets up
    /// the other cores.
    pub(super) fn open(
        options: NodeOptions,
        storage: DiskEngine,
        transport: Transport,
        peer_addr: SocketAddr,
        generation: u64,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> Result<Core, StartError> {
        let me = options.node;
        let mut gossip = meta::load_ring(&storage)?;
        let ring = gossip.log.ring(options.ring)?;
        let coordination = match &options.coordination {
            // Every node runs the keyspace; one not among the initial voters
            // starts empty until MemberAdd brings it in.
            Some(coordination) => Some(
                Coordination::open(me, &options.cluster, coordination.clone(), &storage)
                    .map_err(StartError::Coordination)?,
            ),
            _ => None,
        };
        let quorum = QuorumLevels::open(me, options.quorum.clone(), &storage)?;
        let replica = Replica::open(options.replica.clone(), ring, storage)?;
        let identity = Peer {
            node: me,
            addr: peer_addr,
            generation,
        };
        let seed = generation ^ me.0.rotate_left(17) ^ SystemClock.now_ms();
        let membership = Membership::new(identity, options.membership.clone(), seed)?;
        gossip.directory.update(
            me,
            Addresses {
                peer: peer_addr,
                client: options.client_advertise,
                version: generation,
            },
        );
        Ok(Core {
            me,
            membership,
            replica,
            coordination,
            quorum,
            transport,
            anti_entropy: AntiEntropy::new(ANTI_ENTROPY_SESSION_TIMEOUT_MS),
            gossip,
            heard_gossip: false,
            active: false,
            isolated: false,
            peer_addrs: HashMap::new(),
            states: BTreeMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            pending: HashMap::new(),
            next_request: 0,
            writes_this_turn: 0,
            repairs: Vec::new(),
            started: Instant::now(),
            clock: SystemClock,
            rng: StdRng::seed_from_u64(seed),
            shared,
            metrics,
            mirrored: Mirrored::default(),
            raft_syncs: 0,
            kv_syncs: 0,
            applied_batches: Vec::new(),
            stopping: None,
            options,
        })
    }

    /// Runs until a shutdown command (or every handle is dropped).
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
        self.begin();
        while self.stopping.is_none() {
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                Some(message) = inbound.recv() => self.inbound(message),
                () = tokio::time::sleep_until(wake) => {}
            }
            for _ in 0..TURN_INPUTS_MAX {
                match commands.try_recv() {
                    Ok(command) => self.command(command),
                    Err(_) => break,
                }
            }
            for _ in 0..TURN_INPUTS_MAX {
                match inbound.try_recv() {
                    Ok(message) => self.inbound(message),
                    Err(_) => break,
                }
            }
            self.wait_for_company(&mut commands).await;
            self.fire_due();
            self.commit();
        }
        self.finish().await;
    }

    // ---- Turn steps ----

    /// Starts membership, joins or founds the ring, and arms the timers.
    fn begin(&mut self) {
        let seeds: Vec<SocketAddr> = self.options.seeds.clone();
        if seeds.is_empty() {
            self.active = true;
        } else if let Err(error) = self.membership.join_addresses(&seeds) {
            tracing::warn!(%error, "could not start joining through the seeds");
        }
        self.maybe_join_ring();
        self.drain_membership();
        self.arm(TICK_MS, Due::Tick);
        self.arm(0, Due::Gossip);
        self.arm(RECONNECT_MS, Due::Reconnect);
        if !seeds.is_empty() {
            self.arm(JOIN_RETRY_MS, Due::JoinRetry);
        }
        if let Some(coordination) = &self.coordination {
            self.arm(coordination.tick_ms(), Due::RaftTick);
        }
        if self.options.anti_entropy_interval_ms > 0 {
            let first = self.jitter(self.options.anti_entropy_interval_ms);
            self.arm(first, Due::AntiEntropy);
        }
        self.publish();
        tracing::info!(node = %self.me, peer = %self.shared.peer_addr, "node started");
    }

    /// With a sync delay configured, waits up to that long for more writes
    /// to share the coming sync.
    async fn wait_for_company(&mut self, commands: &mut mpsc::Receiver<Command>) {
        let delay = self.options.sync_max_delay_ms;
        if delay == 0 || self.writes_this_turn == 0 {
            return;
        }
        let until = TokioInstant::now() + millis(delay);
        while self.stopping.is_none() && self.writes_this_turn < TURN_INPUTS_MAX {
            match tokio::time::timeout_at(until, commands.recv()).await {
                Ok(Some(command)) => self.command(command),
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit {
                key,
                op,
                token,
                level,
                reply,
            } => {
                if !self.shared.ready.load(Ordering::Relaxed) {
                    let _ = reply.send(Err(BackendError::Unavailable(
                        "the node has not joined the ring yet",
                    )));
                    return;
                }
                self.next_request += 1;
                let id = RequestId(self.next_request);
                self.pending.insert(id, reply);
                self.writes_this_turn += 1;
                let request = Request { id, key, op, token };
                let now = self.clock.now_ms();
                match level {
                    // The local level answers from this replica: no round trip.
                    None => {
                        self.metrics.coordinated("local", 0);
                        self.replica.submit(request, now);
                    }
                    // One round to the other owners, unless one copy is enough.
                    Some(level) => {
                        let round_trips = u64::from(level != Level::One);
                        self.metrics.coordinated(level.name(), round_trips);
                        self.replica.submit_at(request, level, now);
                    }
                }
            }
            Command::Etcd(command) => self.etcd(command),
            Command::Kv(command) => {
                if !self.shared.ready.load(Ordering::Relaxed) {
                    let _ = command.reply.send(Err(BackendError::Unavailable(
                        "the node has not joined the ring yet",
                    )));
                    return;
                }
                self.writes_this_turn += 1;
                self.kv(|quorum, cx| quorum.command(command, cx));
            }
            Command::Shutdown { done } => self.stopping = Some(done),
        }
    }

    fn inbound(&mut self, message: Inbound) {
        let label = channel_label(message.channel);
        self.metrics
            .peer_messages_received
            .get_or_create(&ChannelLabels { channel: label })
            .inc();
        let result: Result<(), String> = match message.channel {
            Channel::Membership => self
                .membership
                .handle_data(&message.bytes, self.now_ms())
                .map_err(|e| e.to_string()),
            Channel::Replication => match self.replica.step(&message.bytes, self.clock.now_ms()) {
                // Counted by the replica and mirrored as a metric.
                Err(StepError::ClockAhead(_)) => Ok(()),
                other => other.map_err(|e| e.to_string()),
            },
            Channel::AntiEntropy => self.anti_entropy_frame(message.from, &message.bytes),
            Channel::Ring => self.ring_gossip(message.from, &message.bytes),
            Channel::Kv => self
                .kv(|quorum, cx| quorum.inbound(message.from, &message.bytes, cx))
                .map_err(|e| e.to_string()),
            Channel::Raft => {
                let now = self.now_ms();
                match &mut self.coordination {
                    Some(coordination) => coordination.inbound(message.from, &message.bytes, now),
                    None => Err("this node is not a voter of the coordinated keyspace".to_string()),
                }
            }
        };
        if let Err(reason) = result {
            tracing::debug!(from = %message.from, channel = label, %reason, "peer message refused");
            self.drop_message("refused");
        }
        self.drain_membership();
        self.send_raft();
    }

    fn fire_due(&mut self) {
        let now = self.now_ms();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Due::Membership(timer) => {
                    if let Err(error) = self.membership.handle_timer(timer, now) {
                        tracing::debug!(%error, "membership timer refused");
                    }
                    self.drain_membership();
                }
                Due::Tick => {
                    let mut effects = AeEffects::default();
                    self.anti_entropy.expire(now, &mut effects);
                    self.carry_out(effects);
                    self.kv(|quorum, cx| quorum.tick(cx));
                    self.arm(TICK_MS, Due::Tick);
                }
                Due::Gossip => {
                    self.gossip_round();
                    self.kv(|quorum, cx| quorum.maintain(cx));
                    self.mirror_metrics();
                    self.publish();
                    self.arm(GOSSIP_MS, Due::Gossip);
                }
                Due::JoinRetry => self.join_retry(),
                Due::Reconnect => {
                    self.reconnect();
                    self.arm(RECONNECT_MS, Due::Reconnect);
                }
                Due::AntiEntropy => {
                    self.anti_entropy_round();
                    let next = self.jitter(self.options.anti_entropy_interval_ms);
                    self.arm(next, Due::AntiEntropy);
                }
                Due::RaftTick => {
                    if let Some(coordination) = &mut self.coordination {
                        coordination.tick(now);
                        let tick_ms = coordination.tick_ms();
                        self.arm(tick_ms, Due::RaftTick);
                        self.send_raft();
                    }
                }
            }
        }
    }

    /// The group commit: one sync for this turn's writes, then replies and
    /// deltas.
    fn commit(&mut self) {
        self.writes_this_turn = 0;
        let raft_synced = self.raft_before_sync();
        let replica = &mut self.replica;
        let syncs_before = replica.stats().syncs;
        let began = Instant::now();
        let synced = in_place(|| replica.flush());
        if self.replica.stats().syncs > syncs_before {
            let seconds = began.elapsed().as_secs_f64();
            self.metrics.fsync_duration.observe(seconds);
        }
        if let Err(error) = synced {
            // The replica refuses everything from now on; the operator
            // restarts the node, which reloads the durable state.
            tracing::error!(%error, "sync failed; the replica stopped");
            self.shared.ready.store(false, Ordering::Relaxed);
        }
        self.replica.tick(self.clock.now_ms());
        self.route_replica_outputs();
        self.kv_commit();
        self.mirror_syncs();
        self.ship_repairs();
        if raft_synced {
            self.raft_after_sync();
        }
    }

    /// Stops taking requests after a failure the node cannot recover from
    /// in place; a restart reloads the durable state.
    fn stop_serving(&mut self) {
        self.shared.ready.store(false, Ordering::Relaxed);
        self.applied_batches.clear();
        if let Some(coordination) = &mut self.coordination {
            coordination.shut_down();
        }
        self.coordination = None;
    }

    /// Writes Raft's ready durably, together with the state applied last
    /// turn, in one storage commit; whether Raft may go on to
    /// [`raft_after_sync`](Self::raft_after_sync) (its ready, if any, is
    /// durable).
    ///
    /// One commit per turn rather than three (log, sync, applied state):
    /// each storage commit copies the B-tree pages it touches, which was a
    /// quarter of a loaded leader's time. The applied state may wait a turn
    /// unsynced, as it always did: the log it was applied from is durable,
    /// and a restart applies its entries again from the last durable
    /// applied index.
    fn raft_before_sync(&mut self) -> bool {
        let Some(coordination) = &mut self.coordination else {
            return false;
        };
        let mut batch = calm_storage::WriteBatch::new();
        let wrote = coordination.before_sync(&mut batch);
        self.send_raft();
        match wrote {
            Ok(true) => {}
            Ok(false) => return self.write_applied(),
            Err(error) => {
                // The Raft core refuses everything from now on; a restart
                // reloads it from storage.
                tracing::error!(%error, "the coordinated keyspace failed");
                self.shared.ready.store(false, Ordering::Relaxed);
                return false;
            }
        }
        let mut batches = std::mem::take(&mut self.applied_batches);
        batches.push(batch);
        let storage = self.replica.storage();
        let began = Instant::now();
        if let Err(error) = in_place(|| storage.write_synced(&batches)) {
            tracing::error!(%error, "could not write the Raft log");
            self.stop_serving();
            return false;
        }
        self.metrics
            .fsync_duration
            .observe(began.elapsed().as_secs_f64());
        self.raft_syncs += 1;
        true
    }

    /// Writes the applied state held from the last turn (unsynced) when no
    /// Raft write carries it; whether that went well.
    fn write_applied(&mut self) -> bool {
        if self.applied_batches.is_empty() {
            return true;
        }
        let batches = std::mem::take(&mut self.applied_batches);
        let storage = self.replica.storage();
        let written = in_place(|| batches.iter().try_for_each(|batch| storage.write(batch)));
        if let Err(error) = written {
            // The state in memory is ahead of the store: serving on would
            // answer from state a restart could not reproduce.
            tracing::error!(%error, "could not write the applied state");
            self.stop_serving();
            return false;
        }
        true
    }

    /// After the sync: Raft's held messages, then applying; the applied
    /// state's batches wait for the next turn's commit.
    fn raft_after_sync(&mut self) {
        let now = self.now_ms();
        let Some(coordination) = &mut self.coordination else {
            return;
        };
        match coordination.after_sync(now) {
            Ok(batches) => self.applied_batches.extend(batches),
            Err(error) => {
                tracing::error!(%error, "could not apply committed entries");
                self.stop_serving();
                return;
            }
        }
        self.send_raft();
    }

    fn send_raft(&mut self) {
        let Some(coordination) = &mut self.coordination else {
            return;
        };
        for (to, bytes) in coordination.outputs() {
            match self.peer_addr(to) {
                Some(addr) => self.send(to, addr, Channel::Raft, bytes),
                None => self.drop_message("unknown_peer"),
            }
        }
    }

    fn etcd(&mut self, command: EtcdCommand) {
        let now = self.now_ms();
        let Some(coordination) = &mut self.coordination else {
            command.refuse(tonic::Status::unavailable(
                "calm: this node runs no coordinated keyspace (start it with --raft-voters)",
            ));
            return;
        };
        if let Some((level, round_trips)) = coordination.tax_of(&command) {
            self.metrics.coordinated(level, round_trips);
        }
        coordination.command(command, now);
        self.writes_this_turn += 1;
        self.send_raft();
    }

    /// The KV levels' part of the commit: the store's batch of this turn in
    /// a durable commit of its own, then the held replies and the stamped
    /// writes leave. (Turns that carry both Raft and KV writes pay two
    /// commits; the two levels rarely share a turn's traffic.)
    fn kv_commit(&mut self) {
        let batches = self.quorum.take_batches();
        if !batches.is_empty() {
            let storage = self.replica.storage();
            let began = Instant::now();
            if let Err(error) = in_place(|| storage.write_synced(&batches)) {
                // Nothing held may leave now: stop serving, and let a
                // restart reload the durable state.
                tracing::error!(%error, "could not write the KV store");
                self.stop_serving();
                self.quorum.shut_down();
                return;
            }
            self.metrics
                .fsync_duration
                .observe(began.elapsed().as_secs_f64());
            self.kv_syncs += 1;
        }
        self.kv(|quorum, cx| quorum.after_sync(cx));
    }

    /// Runs `step` on the KV levels with the node's state, then sends the
    /// frames it produced.
    fn kv<R>(&mut self, step: impl FnOnce(&mut QuorumLevels, &KvContext<'_>) -> R) -> R {
        let me = self.me;
        let states = &self.states;
        let is_down = |node: NodeId| {
            node != me
                && matches!(
                    states.get(&node),
                    Some(MemberState::Down | MemberState::Left)
                )
        };
        let cx = KvContext {
            metrics: &self.metrics,
            storage: self.replica.storage(),
            ring: self.replica.placement(),
            is_down: &is_down,
            now_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: self.clock.now_ms(),
        };
        let result = step(&mut self.quorum, &cx);
        let sessions = self.quorum.ended_sessions();
        self.record_sessions(sessions);
        for (to, frame) in self.quorum.outbox() {
            match self.peer_addr(to) {
                Some(addr) => self.send(to, addr, Channel::Kv, frame),
                None => self.drop_message("unknown_peer"),
            }
        }
        result
    }

    /// Ships the states anti-entropy found differing, now that the turn's
    /// writes are synced.
    fn ship_repairs(&mut self) {
        for (peer, key) in std::mem::take(&mut self.repairs) {
            let Some(state) = self.replica.state_transfer(&key, self.clock.now_ms()) else {
                continue;
            };
            if let Some(addr) = self.peer_addr(peer) {
                self.metrics.anti_entropy_keys_repaired.inc();
                self.send(peer, addr, Channel::Replication, state);
            }
        }
    }

    async fn finish(mut self) {
        tracing::info!(node = %self.me, "shutting down");
        self.shared.ready.store(false, Ordering::Relaxed);
        self.commit();
        // What the last turn applied, so a clean stop leaves nothing to
        // apply again on restart.
        if self.write_applied() {
            let storage = self.replica.storage();
            if let Err(error) = in_place(|| storage.sync()) {
                tracing::warn!(%error, "could not sync the applied state");
            }
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(BackendError::Unavailable("the node is shutting down")));
        }
        self.quorum.shut_down();
        if let Some(coordination) = &mut self.coordination {
            coordination.shut_down();
        }
        if let Err(error) = self.membership.leave_cluster(self.now_ms()) {
            tracing::warn!(%error, "could not announce the leave");
        }
        self.drain_membership();
        let grace = millis(self.options.shutdown_grace_ms);
        if !self.transport.shutdown(grace).await {
            tracing::warn!("some peer messages were not written before the deadline");
        }
        // Close the store before saying so: whoever waits for the stop may
        // reopen the data directory at once.
        let done = self.stopping.take();
        drop(self);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    // ---- Membership ----

    fn drain_membership(&mut self) {
        let now = self.now_ms();
        while let Some(effect) = self.membership.poll_effect() {
            match effect {
                Effect::Send { to, bytes } => {
                    self.peer_addrs.insert(to.node, to.addr);
                    self.send(to.node, to.addr, Channel::Membership, bytes);
                }
                Effect::SendToAddress { addr, bytes } => {
                    self.send(seed_name(addr), addr, Channel::Membership, bytes)
                }
                Effect::SetTimer { timer, after_ms } => {
                    self.timer_seq += 1;
                    let at = now + after_ms;
                    self.timers
                        .insert((at, self.timer_seq), Due::Membership(timer));
                }
                Effect::Notify(event) => self.member_changed(event.peer, event.state),
                Effect::Local(event) => self.local_changed(event),
            }
        }
    }

    fn member_changed(&mut self, peer: Peer, state: MemberState) {
        tracing::info!(node = %peer.node, state = state_label(state), "member changed");
        self.peer_addrs.insert(peer.node, peer.addr);
        self.states.insert(peer.node, state);
        let gone = matches!(state, MemberState::Down | MemberState::Left);
        // Liveness is not ownership: a down node keeps its ranges and is
        // only skipped by preference lists.
        if gone || state == MemberState::Alive {
            self.replica.set_down(peer.node, gone);
        }
        if gone {
            self.transport.forget(peer.node);
        }
        self.publish();
    }

    fn local_changed(&mut self, event: LocalEvent) {
        tracing::info!(?event, "membership");
        match event {
            LocalEvent::Active | LocalEvent::Rejoined { .. } => {
                self.isolated = false;
                if !self.active {
                    self.active = true;
                    for &seed in &self.options.seeds {
                        self.transport.forget(seed_name(seed));
                    }
                }
            }
            // After a partition long enough for both sides to declare each
            // other down, nothing would ever bring them together again: the
            // isolated side greets its seeds until one answers (a seed that
            // declared it down tells it so, and it rejoins with a new
            // generation). It keeps serving the local level meanwhile.
            LocalEvent::Idle if self.active && !self.isolated => {
                self.isolated = true;
                // A node not yet in the ring still has its retries armed.
                if self.gossip.log.is_member(self.me) {
                    self.arm(JOIN_RETRY_MS, Due::JoinRetry);
                }
            }
            LocalEvent::Idle | LocalEvent::Defunct => {}
        }
    }

    fn join_retry(&mut self) {
        if !self.active || self.isolated {
            let seeds = self.options.seeds.clone();
            if let Err(error) = self.membership.join_addresses(&seeds) {
                tracing::warn!(%error, "could not repeat the hellos");
            }
            self.drain_membership();
        }
        self.maybe_join_ring();
        if !self.active || self.isolated || !self.gossip.log.is_member(self.me) {
            self.arm(JOIN_RETRY_MS, Due::JoinRetry);
        }
    }

    /// Greets every member seen dead at its last known address (one
    /// small datagram each); a member that left is not greeted.
    fn reconnect(&mut self) {
        let dead: Vec<SocketAddr> = self
            .states
            .iter()
            .filter(|(_, state)| **state == MemberState::Down)
            .filter_map(|(node, _)| self.peer_addrs.get(node).copied())
            .collect();
        if dead.is_empty() {
            return;
        }
        if let Err(error) = self.membership.join_addresses(&dead) {
            tracing::debug!(%error, "could not greet the dead members");
        }
        self.drain_membership();
    }

    // ---- Ring ----

    /// Joins the ring once it is safe to stamp the join: the node founds the
    /// cluster, has merged a peer's ring log, or has waited long enough that
    /// the cluster must be forming right now.
    fn maybe_join_ring(&mut self) {
        // Joined, or joined and left (a departed id never rejoins).
        if self.gossip.log.entry(self.me).is_some() {
            self.update_ready();
            return;
        }
        let waited = self.started.elapsed().as_millis() as u64 >= BOOTSTRAP_WAIT_MS;
        let knows_ring = self.heard_gossip && self.gossip.log.position() > 0;
        if self.options.seeds.is_empty() || knows_ring || (self.active && waited) {
            let mut next = self.gossip.clone();
            next.log.join(self.me);
            self.adopt(next);
            self.gossip_round();
        }
        self.update_ready();
    }

    fn update_ready(&mut self) {
        let ready = self.gossip.log.is_member(self.me)
            && (self.active || self.options.seeds.is_empty())
            && self.stopping.is_none();
        self.shared.ready.store(ready, Ordering::Relaxed);
    }

    fn ring_gossip(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), String> {
        let theirs = RingGossip::decode(bytes).map_err(|e| e.to_string())?;
        self.heard_gossip = true;
        let mut merged = self.gossip.clone();
        if merged.merge(&theirs) {
            self.adopt(merged);
        }
        if !theirs.covers(&self.gossip) {
            let reply = self.gossip.encode();
            if let Some(addr) = self.peer_addr(from) {
                self.send(from, addr, Channel::Ring, reply);
            }
        }
        self.maybe_join_ring();
        Ok(())
    }

    /// Takes `next` as the ring state if it builds a valid ring, and
    /// records it durably before the placement changes.
    fn adopt(&mut self, next: RingGossip) {
        let ring = match next.log.ring(self.options.ring) {
            Ok(ring) => ring,
            Err(error) => {
                tracing::warn!(%error, "refused a ring log that does not replay");
                return;
            }
        };
        let storage = self.replica.storage();
        if let Err(error) = in_place(|| meta::save_ring(storage, &next)) {
            tracing::error!(%error, "could not record the ring");
            return;
        }
        let changed_ring = next.log != self.gossip.log;
        self.gossip = next;
        if changed_ring {
            tracing::info!(members = ?ring.members(), "ring changed");
            self.replica.set_placement(ring);
        }
        self.publish();
    }

    fn gossip_round(&mut self) {
        let peers: Vec<NodeId> = self
            .states
            .iter()
            .filter(|(_, state)| matches!(state, MemberState::Alive | MemberState::Suspect))
            .map(|(&node, _)| node)
            .collect();
        let chosen: Vec<NodeId> = peers
            .sample(&mut self.rng, GOSSIP_FANOUT)
            .copied()
            .collect();
        let bytes = self.gossip.encode();
        for node in chosen {
            if let Some(addr) = self.peer_addr(node) {
                self.send(node, addr, Channel::Ring, bytes.clone());
            }
        }
    }

    // ---- Anti-entropy ----

    fn anti_entropy_round(&mut self) {
        if self.anti_entropy.busy() || !self.gossip.log.is_member(self.me) {
            return;
        }
        let n = self.options.replica.replication_factor;
        let candidates: Vec<NodeId> = self
            .states
            .iter()
            .filter(|(_, state)| **state == MemberState::Alive)
            .map(|(&node, _)| node)
            .filter(|&node| self.gossip.log.is_member(node))
            .collect();
        let Some(&peer) = candidates.choose(&mut self.rng) else {
            return;
        };
        let ranges = shared_ranges(self.replica.placement(), n, self.me, peer);
        self.kv(|quorum, cx| quorum.anti_entropy_round(peer, ranges.clone(), cx));
        self.anti_entropy.start_round(peer, ranges);
        let mut effects = AeEffects::default();
        let replica = &self.replica;
        self.anti_entropy.open_sessions(
            || Box::new(replica.digests()),
            self.now_ms(),
            &mut effects,
        );
        self.carry_out(effects);
    }

    fn anti_entropy_frame(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), String> {
        let frame = AeFrame::decode(bytes).map_err(|e| e.to_string())?;
        let now = self.now_ms();
        let mut effects = AeEffects::default();
        let replica = &self.replica;
        self.anti_entropy.handle(
            from,
            frame,
            || Box::new(replica.digests()),
            now,
            &mut effects,
        );
        self.anti_entropy
            .open_sessions(|| Box::new(replica.digests()), now, &mut effects);
        self.carry_out(effects);
        Ok(())
    }

    fn carry_out(&mut self, effects: AeEffects) {
        for (peer, frame) in effects.frames {
            if let Some(addr) = self.peer_addr(peer) {
                self.send(peer, addr, Channel::AntiEntropy, frame.encode());
            }
        }
        // States ship after this turn's sync (see `commit`): a state must be
        // durable before it leaves, and the replica refuses unsynced ones.
        self.repairs.extend(effects.ship);
        self.record_sessions(effects.ended);
    }

    fn record_sessions(&mut self, sessions: Vec<super::anti_entropy::Ended>) {
        for ended in sessions {
            self.metrics.anti_entropy_bytes.inc_by(ended.bytes);
            self.metrics
                .anti_entropy_ranges_compared
                .inc_by(ended.ranges_compared);
            let reason = match ended.outcome {
                Ok(()) => "completed",
                Err(reason) => reason,
            };
            self.metrics
                .anti_entropy_sessions
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc();
        }
    }

    // ---- Outputs ----

    fn route_replica_outputs(&mut self) {
        for output in self.replica.take_outputs() {
            match output {
                Output::Reply(reply) => {
                    if let Some(sender) = self.pending.remove(&reply.id) {
                        let _ = sender.send(reply.result.map_err(BackendError::from));
                    }
                }
                Output::Send { to, message } => match self.peer_addr(to) {
                    Some(addr) => self.send(to, addr, Channel::Replication, message),
                    None => self.drop_message("unknown_peer"),
                },
            }
        }
    }

    fn send(&mut self, to: NodeId, addr: SocketAddr, channel: Channel, bytes: Vec<u8>) {
        match self.transport.send(to, addr, channel, bytes) {
            Ok(()) => {
                let labels = ChannelLabels {
                    channel: channel_label(channel),
                };
                self.metrics.peer_messages_sent.get_or_create(&labels).inc();
            }
            Err(error) => {
                tracing::debug!(peer = %to, %error, "peer message not queued");
                self.drop_message("not_queued");
            }
        }
    }

    fn drop_message(&self, reason: &str) {
        self.metrics
            .peer_messages_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Publishes the member table and addresses for the handles.
    fn publish(&mut self) {
        self.update_ready();
        self.publish_addresses();
        let ownership = self.replica.placement().ownership();
        let members: Vec<MemberInfo> = self
            .membership
            .members()
            .into_iter()
            .map(|row| MemberInfo {
                node: row.peer.node,
                peer_addr: row.peer.addr,
                client_addr: self.gossip.directory.get(row.peer.node).map(|a| a.client),
                state: row.state,
                incarnation: row.incarnation,
                ownership: ownership.share(row.peer.node).unwrap_or(0.0),
            })
            .collect();
        let client_addrs = self
            .gossip
            .directory
            .iter()
            .map(|(node, addresses)| (node, addresses.client))
            .collect();
        let view = View {
            members,
            client_addrs,
            keys: self.replica.keys() as u64,
        };
        *self.shared.view() = view;
    }

    /// Gives the coordinated keyspace every node's addresses, for etcd's
    /// member list and MemberAdd.
    fn publish_addresses(&mut self) {
        if self.coordination.is_none() {
            return;
        }
        let mut addresses: HashMap<NodeId, NodeAddresses> = HashMap::new();
        for (node, known) in self.gossip.directory.iter() {
            let entry = addresses.entry(node).or_default();
            entry.peer = Some(known.peer);
            entry.client = Some(known.client);
        }
        for (&node, &peer) in &self.peer_addrs {
            addresses.entry(node).or_default().peer = Some(peer);
        }
        let me = addresses.entry(self.me).or_default();
        me.peer = Some(self.shared.peer_addr);
        me.client = Some(self.shared.client_addr);
        if let Some(coordination) = &mut self.coordination {
            coordination.set_addresses(addresses);
        }
    }

    /// Mirrors the turn's syncs at once rather than once per gossip period:
    /// `calm bench` divides their growth over a run by its operations.
    fn mirror_syncs(&mut self) {
        let syncs = self.replica.stats().syncs + self.raft_syncs + self.kv_syncs;
        self.mirrored.syncs = mirror(&self.metrics.fsyncs, self.mirrored.syncs, syncs);
    }

    fn mirror_metrics(&mut self) {
        let stats = self.replica.stats().clone();
        let m = &self.metrics;
        let seen = &mut self.mirrored;
        seen.deltas_dropped = mirror(&m.deltas_dropped, seen.deltas_dropped, stats.deltas_dropped);
        seen.deltas_refused = mirror(&m.deltas_refused, seen.deltas_refused, stats.deltas_refused);
        seen.clock_rejections = mirror(
            &m.clock_rejections,
            seen.clock_rejections,
            stats.clock_rejections,
        );
        seen.catch_up_timeouts = mirror(
            &m.catch_up_timeouts,
            seen.catch_up_timeouts,
            stats.catch_up_timeouts,
        );
        seen.read_repairs = mirror(
            &m.replica_read_repairs,
            seen.read_repairs,
            stats.read_repairs,
        );
        seen.hedges = mirror(&m.replica_hedges, seen.hedges, stats.hedges_sent);
        seen.writes_in_doubt = mirror(
            &m.replica_writes_in_doubt,
            seen.writes_in_doubt,
            stats.writes_in_doubt,
        );
        let transport = self.transport.stats();
        seen.bytes_sent = mirror(&m.peer_bytes_sent, seen.bytes_sent, transport.bytes_sent);
        seen.bytes_received = mirror(
            &m.peer_bytes_received,
            seen.bytes_received,
            transport.bytes_received,
        );
        let closed = [
            ("oversized_frame", transport.closed_oversized_frame),
            ("malformed_frame", transport.closed_malformed_frame),
            ("handshake_mismatch", transport.closed_handshake_mismatch),
            ("handshake_timeout", transport.closed_handshake_timeout),
            ("io_error", transport.closed_io_error),
            ("closed_by_peer", transport.closed_by_peer),
        ];
        let closed_before: u64 = seen.closed.iter().sum();
        for (i, (reason, count)) in closed.into_iter().enumerate() {
            let counter = m.peer_connections_closed.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            });
            seen.closed[i] = mirror(&counter, seen.closed[i], count);
        }
        // The transport counts every close; the log names the latest, so an
        // operator sees why a peer's connection keeps dropping.
        if seen.closed.iter().sum::<u64>() > closed_before
            && let Some(close) = &transport.last_close
        {
            tracing::warn!(
                reason = ?close.reason,
                remote = %close.remote,
                peer = ?close.peer,
                detail = %close.detail,
                "peer connection closed"
            );
        }
        for (peer, depth) in &transport.queue_depth_messages {
            let labels = PeerLabels {
                peer: peer.0.to_string(),
            };
            m.peer_queue_depth.get_or_create(&labels).set(*depth as i64);
        }
        m.keys.set(self.replica.keys() as i64);
        m.local_health
            .set(i64::from(self.membership.local_health()));
        let mut counts: BTreeMap<&'static str, i64> = ["alive", "suspect", "dead", "left"]
            .into_iter()
            .map(|state| (state, 0))
            .collect();
        for row in self.membership.members() {
            *counts.entry(state_label(row.state)).or_default() += 1;
        }
        for (state, count) in counts {
            m.members.get_or_create(&StateLabels { state }).set(count);
        }
        self.mirror_kv_metrics();
    }

    fn mirror_kv_metrics(&mut self) {
        let store = self.quorum.store_stats().clone();
        let coordinator = self.quorum.coordinator_stats().clone();
        let m = &self.metrics;
        let seen = &mut self.mirrored;
        m.kv_hints.set(store.hints as i64);
        m.kv_hint_bytes.set(store.hint_bytes as i64);
        let hint_events = [
            ("stored", store.hints_stored),
            ("refused", store.hints_refused),
            ("delivered", store.hints_delivered),
            ("expired", store.hints_expired),
        ];
        for (i, (event, count)) in hint_events.into_iter().enumerate() {
            let counter = m.kv_hint_events.get_or_create(&EventLabels { event });
            seen.kv_hint_events[i] = mirror(&counter, seen.kv_hint_events[i], count);
        }
        let hedges = [
            ("sent", coordinator.hedges_sent),
            ("won", coordinator.hedges_won),
        ];
        for (i, (event, count)) in hedges.into_iter().enumerate() {
            let counter = m.kv_hedges.get_or_create(&EventLabels { event });
            seen.kv_hedges[i] = mirror(&counter, seen.kv_hedges[i], count);
        }
        seen.kv_read_repairs = mirror(
            &m.kv_read_repairs,
            seen.kv_read_repairs,
            coordinator.read_repairs,
        );
        seen.kv_reaped = mirror(&m.kv_tombstones_reaped, seen.kv_reaped, store.reaped);
    }

    // ---- Helpers ----

    fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.peer_addrs
            .get(&node)
            .copied()
            .or_else(|| self.gossip.directory.get(node).map(|a| a.peer))
    }

    /// Milliseconds since the node started, on the monotonic clock: the
    /// time base of timers and SWIM.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn arm(&mut self, after_ms: u64, due: Due) {
        self.timer_seq += 1;
        let at = self.now_ms() + after_ms;
        self.timers.insert((at, self.timer_seq), due);
    }

    /// The time of the earliest timer.
    fn next_wake(&self) -> TokioInstant {
        let at_ms = self
            .timers
            .keys()
            .next()
            .map_or(self.now_ms() + GOSSIP_MS, |k| k.0);
        TokioInstant::from_std(self.started) + millis(at_ms)
    }

    /// `period_ms` give or take a quarter, so nodes started together do not
    /// run their rounds in lockstep.
    fn jitter(&mut self, period_ms: u64) -> u64 {
        use rand::RngExt;
        let quarter = period_ms / 4;
        period_ms - quarter + self.rng.random_range(0..=2 * quarter)
    }
}

/// Runs blocking disk work in place, telling a multi-threaded runtime to
/// move other tasks off this worker meanwhile.
fn in_place<T>(work: impl FnOnce() -> T) -> T {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

fn channel_label(channel: Channel) -> &'static str {
    match channel {
        Channel::Membership => "membership",
        Channel::Replication => "replication",
        Channel::Raft => "raft",
        Channel::AntiEntropy => "anti_entropy",
        Channel::Ring => "ring",
        Channel::Kv => "kv",
    }
}
