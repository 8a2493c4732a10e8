//! The simulation: N nodes (membership core + replica core over a crashing
//! memory engine), one seeded RNG, a virtual clock, an event queue and a
//! faulty network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use calm_membership::{Effect, MemberState, Membership, MembershipError, Peer, Timer};
use calm_replica::{
    Object, ObjectError, Operation, Output, Replica, ReplicaConfig, ReplicaError, Reply, Request,
    RequestId, Value,
};
use calm_ring::{KeyHash, Placement, PlacementError, Ring, RingConfig};
use calm_storage::{Limits, MemoryEngine, StorageError};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::check::Violation;
use crate::config::{PlantedBug, SimConfig};
use crate::ledger::{Change, Ledger};
use crate::quorum::{QuorumReads, READ_SHARE};

/// Most distinct elements the workload adds to one OR-set.
const SET_ELEMENTS_MAX: u8 = 8;
/// Largest single increment (and bounded decrement or transfer) the
/// workload submits.
pub(crate) const INCREMENT_MAX: u64 = 10;

/// Why a simulation could not be built or a nemesis could not act.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The config broke a bound (named). Nothing was built.
    #[error("invalid simulation config: {0}")]
    InvalidConfig(&'static str),
    /// A membership core refused its config or a join. The simulation is
    /// unusable.
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
    /// The ring could not be built. Nothing was built.
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
    /// A replica could not reopen its storage. The node stays down.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// No node has this id. Nothing changed.
    #[error("no node {0}")]
    NoSuchNode(NodeId),
    /// The node is crashed, so it cannot take a client request. Nothing
    /// was submitted.
    #[error("node {0} is down")]
    NodeDown(NodeId),
}

/// Which core a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Membership = 0,
    Replica = 1,
}

/// Something due at a virtual instant. Node-local events carry the node's
/// epoch when scheduled; a crash raises the epoch, so the dead process's
/// timers never fire in its next life.
#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        channel: Channel,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        epoch: u64,
        timer: Timer,
    },
    Flush {
        node: usize,
        epoch: u64,
    },
    AntiEntropy {
        node: usize,
        epoch: u64,
    },
    Rejoin {
        node: usize,
        epoch: u64,
    },
    Client,
}

/// A running node's cores.
pub(crate) struct Live {
    pub(crate) membership: Membership,
    pub(crate) replica: Replica<MemoryEngine, Ring>,
}

/// One node slot: running (`live`), or crashed with its disk kept.
pub(crate) struct Node {
    pub(crate) live: Option<Live>,
    disk: Option<MemoryEngine>,
    epoch: u64,
    /// The highest membership generation this node has used.
    generation: u64,
}

/// Counters of what happened, for tests and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages handed to the network (before loss).
    pub messages_sent: u64,
    /// Messages handed to a core.
    pub messages_delivered: u64,
    /// Messages the network lost.
    pub messages_lost: u64,
    /// Extra copies the network made.
    pub messages_duplicated: u64,
    /// Messages dropped by a partition or a one-way block.
    pub messages_partitioned: u64,
    /// Messages dropped because the receiver was crashed.
    pub messages_to_crashed: u64,
    /// Anti-entropy sessions run to completion.
    pub anti_entropy_sessions: u64,
    /// Bytes the anti-entropy sessions exchanged.
    pub anti_entropy_bytes: u64,
    /// State transfers shipped after sessions.
    pub state_transfers: u64,
    /// Errors from `Replica::step` or `flush` (counted, never fatal).
    pub replica_errors: u64,
    /// Errors from the membership core (counted, never fatal).
    pub membership_errors: u64,
    /// Client operations submitted.
    pub client_ops: u64,
    /// Client operations refused because the chosen node was down.
    pub client_refused: u64,
    /// Bounded decrements and transfers the replica refused because the
    /// node held too few rights.
    pub rights_refused: u64,
    /// Transfers of bounded-counter rights acknowledged to clients.
    pub transfers_acknowledged: u64,
    /// Crashes.
    pub crashes: u64,
    /// Unsynced write batches the crashes threw away.
    pub unsynced_batches_lost: u64,
    /// Restarts.
    pub restarts: u64,
    /// Counter reads at [`SimConfig::level`] answered with a value, each
    /// compared with its floor.
    pub quorum_reads_checked: u64,
    /// Counter reads at the level answered with an error (`Unavailable`,
    /// `ReadTimeout`).
    pub quorum_reads_failed: u64,
    /// Reads at the level that returned less than was acknowledged before
    /// they were submitted (a violation when `r + w > n`).
    pub stale_reads: u64,
    /// Writes at the level answered `WriteInDoubt`: the clients' ledger
    /// keeps them in doubt, as they may or may not have landed.
    pub writes_in_doubt: u64,
    /// Acks forged under [`PlantedBug::ForgedReplicatedAcks`].
    pub acks_forged: u64,
}

/// A deterministic cluster: everything random is drawn from one seeded RNG,
/// time is virtual, and events due at the same instant run in the order
/// they were scheduled, so a seed replays the same run.
///
/// # The driver it plays
///
/// After every input to a node (a delivery, a timer, a client request) the
/// simulator drains both cores: membership `Send`s go to the network,
/// `SetTimer`s into the event queue, `Notify` of a peer down or alive marks
/// it down or up in the replica; replica `Send`s go to the network and
/// `Reply`s to the clients' ledger. Client requests go in through `submit`,
/// or `submit_at` for counter operations when [`SimConfig::level`] is set.
/// Every `flush_period_ms` a node runs `flush` (the group commit: only now
/// are acknowledgements released and deltas allowed out) and then `tick`
/// (which ships them). Every `anti_entropy_period_ms` it compares Merkle
/// trees with a random peer and ships the state transfers the session
/// calls for. Every `rejoin_period_ms`, if it does not see every node
/// alive, it announces itself to all of them.
///
/// # Call order
///
/// [`new`](Self::new), then any mix of [`run_for`](Self::run_for),
/// [`run_workload`](Self::run_workload) and the nemeses; then
/// [`heal`](Self::heal), [`restart`](Self::restart) the crashed nodes,
/// [`settle`](Self::settle), and the checkers.
pub struct Simulation {
    pub(crate) config: SimConfig,
    pub(crate) rng: StdRng,
    now_ms: u64,
    seq: u64,
    /// The event queue, ordered by (due time, scheduling sequence number).
    /// A `BTreeMap` rather than a `BinaryHeap`: the same total order, without
    /// asking `Event` (which holds foca's timers) to be `Ord`.
    events: BTreeMap<(u64, u64), Event>,
    pub(crate) ring: Ring,
    pub(crate) nodes: Vec<Node>,
    /// Directed links that drop everything: (from, to) as node indexes.
    blocked: BTreeSet<(usize, usize)>,
    pub(crate) ledger: Ledger,
    /// The first replica view of a bounded counter that broke the bound or
    /// overdrew a node's rights, kept for `check_bounded_counters`.
    pub(crate) bound_breach: Option<Violation>,
    /// The planted `DecrementFromStaleRights` bug's frozen counters, per
    /// (node index, key).
    pub(crate) forks: BTreeMap<(usize, Vec<u8>), Object>,
    /// Counter reads at the level in flight, and the first stale one.
    pub(crate) quorum_reads: QuorumReads,
    workload_until_ms: u64,
    next_request: u64,
    trace: u64,
    pub(crate) stats: SimStats,
}

/// Node index `i` is `NodeId(i + 1)`.
pub(crate) fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

fn address(index: usize) -> SocketAddr {
    // Invariant: NODES_MAX is far below 254, so the octet never wraps.
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1)), 7946)
}

impl Simulation {
    /// Builds the cluster and starts every node: node 1 alone, each other
    /// node joining through node 1. Nothing has run yet.
    pub fn new(config: SimConfig) -> Result<Simulation, SimError> {
        config.validate().map_err(SimError::InvalidConfig)?;
        let ids: Vec<NodeId> = (0..config.nodes).map(node_id).collect();
        let ring = Ring::new(RingConfig::default(), &ids)?;
        let nodes = (0..config.nodes)
            .map(|_| Node {
                live: None,
                disk: Some(MemoryEngine::new(Limits::default())),
                epoch: 0,
                generation: 0,
            })
            .collect();
        let mut sim = Simulation {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            now_ms: 0,
            seq: 0,
            events: BTreeMap::new(),
            ring,
            nodes,
            blocked: BTreeSet::new(),
            ledger: Ledger::default(),
            bound_breach: None,
            forks: BTreeMap::new(),
            quorum_reads: QuorumReads::default(),
            workload_until_ms: 0,
            next_request: 0,
            trace: 0,
            stats: SimStats::default(),
        };
        for index in 0..sim.nodes.len() {
            let seeds: Vec<usize> = if index == 0 { vec![] } else { vec![0] };
            sim.start(index, &seeds)?;
        }
        Ok(sim)
    }

    // ---- Clock ----

    /// The virtual time, in ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Runs every event due in the next `duration_ms`, then sets the clock
    /// to the end of that span.
    pub fn run_for(&mut self, duration_ms: u64) {
        let until_ms = self.now_ms.saturating_add(duration_ms);
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > until_ms {
                break;
            }
            let ((at_ms, _), event) = entry.remove_entry();
            self.now_ms = at_ms;
            self.handle(event);
        }
        self.now_ms = until_ms;
    }

    /// Runs for `duration_ms` with clients submitting an operation every
    /// `client_period_ms`, each at a random natural owner of a random key:
    /// increments to counter keys (and, with [`SimConfig::level`] set,
    /// reads too, both at that level); adds or removes to OR-set keys; and
    /// increments, decrements (refused beyond the node's rights) and
    /// transfers of rights to another owner on bounded-counter keys.
    pub fn run_workload(&mut self, duration_ms: u64) {
        self.workload_until_ms = self.now_ms.saturating_add(duration_ms);
        self.schedule(self.config.client_period_ms, Event::Client);
        self.run_for(duration_ms);
    }

    /// Stops submitting client operations (a running workload ends now).
    pub fn stop_workload(&mut self) {
        self.workload_until_ms = self.now_ms;
    }

    /// Submits one client request for `key` to `node` now, recorded in the
    /// clients' ledger like the workload's own (use a key of
    /// [`workload_keys`](Self::workload_keys) for the checkers to see it).
    /// Its reply comes as the simulation runs.
    pub fn submit(&mut self, node: NodeId, key: &[u8], op: Operation) -> Result<(), SimError> {
        let index = self.index(node)?;
        if self.nodes[index].live.is_none() {
            return Err(SimError::NodeDown(node));
        }
        self.request(index, key.to_vec(), op);
        Ok(())
    }

    // ---- Nemeses ----

    /// Cuts the network into `groups`: messages between nodes of different
    /// groups are dropped, in both directions, including those already in
    /// flight. A node in no group is cut off from everyone. Replaces any
    /// earlier partition or block.
    pub fn partition(&mut self, groups: &[&[NodeId]]) -> Result<(), SimError> {
        let mut group_of = vec![usize::MAX; self.nodes.len()];
        for (group, members) in groups.iter().enumerate() {
            for &node in members.iter() {
                group_of[self.index(node)?] = group;
            }
        }
        self.blocked.clear();
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a != b && (group_of[a] != group_of[b] || group_of[a] == usize::MAX) {
                    self.blocked.insert((a, b));
                }
            }
        }
        Ok(())
    }

    /// Drops every message from `from` to `to` (one direction only: an
    /// asymmetric partition). Adds to any partition in force.
    pub fn block(&mut self, from: NodeId, to: NodeId) -> Result<(), SimError> {
        let link = (self.index(from)?, self.index(to)?);
        self.blocked.insert(link);
        Ok(())
    }

    /// Ends every partition and block.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Crashes `node`: its timers, held replies and buffered deltas vanish,
    /// and its disk loses every write since the last sync. No-op if already
    /// crashed.
    pub fn crash(&mut self, node: NodeId) -> Result<(), SimError> {
        self.crash_keeping(node, |_, _| 0)
    }

    /// Like [`crash`](Self::crash), but the disk keeps a random oldest
    /// prefix of the unsynced batches (from none to all): the storage
    /// contract allows a disk to have flushed some on its own, and a write
    /// that survives without being acknowledged must be harmless too.
    pub fn crash_keeping_random_prefix(&mut self, node: NodeId) -> Result<(), SimError> {
        self.crash_keeping(node, |rng, pending| rng.random_range(0..=pending))
    }

    fn crash_keeping(
        &mut self,
        node: NodeId,
        kept: impl FnOnce(&mut StdRng, usize) -> usize,
    ) -> Result<(), SimError> {
        let index = self.index(node)?;
        let slot = &mut self.nodes[index];
        let Some(live) = slot.live.take() else {
            return Ok(());
        };
        slot.generation = slot.generation.max(live.membership.identity().generation);
        slot.epoch += 1;
        let disk = live.replica.into_storage();
        let pending = disk.pending_batches();
        let kept = kept(&mut self.rng, pending).min(pending);
        disk.crash_keeping(kept);
        self.nodes[index].disk = Some(disk);
        self.stats.crashes += 1;
        self.stats.unsynced_batches_lost += (pending - kept) as u64;
        Ok(())
    }

    /// Restarts a crashed `node` from its disk, with a membership identity
    /// of a higher generation that joins through every other node. No-op if
    /// it is running.
    pub fn restart(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        if self.nodes[index].live.is_some() {
            return Ok(());
        }
        let seeds: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != index).collect();
        self.start(index, &seeds)?;
        self.stats.restarts += 1;
        Ok(())
    }

    // ---- Views ----

    /// A hash of every delivered message (time, sender, receiver, channel,
    /// bytes), every client request (time, node, key, operation, bounded
    /// counters' included) and every reply's outcome, in the order they
    /// happened: equal for two runs of one seed.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// The counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The config the simulation runs under.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Whether `node` is running.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.index(node)
            .is_ok_and(|index| self.nodes[index].live.is_some())
    }

    /// `key`'s value at `node`, or `None` if the node is crashed or unknown.
    pub fn peek(&self, node: NodeId, key: &[u8]) -> Option<Value> {
        let index = self.index(node).ok()?;
        let live = self.nodes[index].live.as_ref()?;
        Some(live.replica.peek(key))
    }

    /// Batches `node`'s disk holds unsynced (what a crash now would lose),
    /// or `None` if the node is crashed or unknown.
    pub fn unsynced_batches(&self, node: NodeId) -> Option<usize> {
        let index = self.index(node).ok()?;
        let live = self.nodes[index].live.as_ref()?;
        Some(live.replica.storage().pending_batches())
    }

    /// The keys the workload writes: counters `c0..`, then sets `s0..`,
    /// then bounded counters `b0..`.
    pub fn workload_keys(&self) -> Vec<Vec<u8>> {
        let counters = (0..self.config.counter_keys).map(|i| format!("c{i}").into_bytes());
        let sets = (0..self.config.set_keys).map(|i| format!("s{i}").into_bytes());
        counters.chain(sets).chain(self.bounded_keys()).collect()
    }

    /// The bounded-counter keys the workload writes, `b0..`.
    pub(crate) fn bounded_keys(&self) -> impl Iterator<Item = Vec<u8>> + use<> {
        (0..self.config.bounded_keys).map(|i| format!("b{i}").into_bytes())
    }

    /// `key`'s natural owners (health ignored).
    pub fn owners(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring
            .owners(KeyHash::of(key), self.config.replication_factor)
    }

    pub(crate) fn index(&self, node: NodeId) -> Result<usize, SimError> {
        let index = usize::try_from(node.0).unwrap_or(usize::MAX);
        (1..=self.nodes.len())
            .contains(&index)
            .then_some(index - 1)
            .ok_or(SimError::NoSuchNode(node))
    }

    pub(crate) fn link_up(&self, a: usize, b: usize) -> bool {
        !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a))
    }

    /// Whether any replication message is still in flight.
    pub(crate) fn replica_traffic_pending(&self) -> bool {
        self.events.values().any(|e| {
            matches!(
                e,
                Event::Deliver {
                    channel: Channel::Replica,
                    ..
                }
            )
        })
    }

    // ---- Node lifecycle ----

    /// Starts node `index` from its disk with the next generation, joining
    /// through `seeds`, and schedules its periodic work.
    fn start(&mut self, index: usize, seeds: &[usize]) -> Result<(), SimError> {
        let slot = &mut self.nodes[index];
        // Invariant: a slot without a live node always keeps its disk.
        let disk = slot.disk.take().expect("a stopped node keeps its disk");
        slot.generation += 1;
        let identity = Peer {
            node: node_id(index),
            addr: address(index),
            generation: slot.generation,
        };
        let mut replica_config = ReplicaConfig::new(node_id(index));
        replica_config.replication_factor = self.config.replication_factor;
        let replica = Replica::open(replica_config, self.ring.clone(), disk)?;
        let rng_seed = self.rng.random::<u64>();
        let mut membership = Membership::new(identity, self.config.membership.clone(), rng_seed)?;
        let seeds: Vec<Peer> = seeds
            .iter()
            .map(|&s| Peer::seed(node_id(s), address(s)))
            .collect();
        membership.join(&seeds, self.now_ms)?;
        self.nodes[index].live = Some(Live {
            membership,
            replica,
        });
        let epoch = self.nodes[index].epoch;
        self.schedule_jittered(
            self.config.flush_period_ms,
            Event::Flush { node: index, epoch },
        );
        if let Some(period) = self.config.anti_entropy_period_ms {
            self.schedule_jittered(period, Event::AntiEntropy { node: index, epoch });
        }
        let rejoin = Event::Rejoin { node: index, epoch };
        self.schedule_jittered(self.config.rejoin_period_ms, rejoin);
        self.drain(index);
        // The replica reloaded its state from disk: a new view to check.
        self.check_bounds_at(index);
        Ok(())
    }

    /// Schedules a node's first periodic event at a random point of its
    /// period, so nodes do not run in lockstep.
    fn schedule_jittered(&mut self, period_ms: u64, event: Event) {
        let after_ms = self.rng.random_range(1..=period_ms);
        self.schedule(after_ms, event);
    }

    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.events
            .insert((self.now_ms.saturating_add(after_ms), self.seq), event);
    }

    fn live_at(&mut self, node: usize, epoch: u64) -> Option<&mut Live> {
        let slot = &mut self.nodes[node];
        (slot.epoch == epoch).then_some(())?;
        slot.live.as_mut()
    }

    // ---- Events ----

    fn handle(&mut self, event: Event) {
        let now = self.now_ms;
        match event {
            Event::Deliver {
                from,
                to,
                channel,
                bytes,
            } => self.deliver(from, to, channel, &bytes),
            Event::Timer { node, epoch, timer } => {
                let Some(live) = self.live_at(node, epoch) else {
                    return;
                };
                if live.membership.handle_timer(timer, now).is_err() {
                    self.stats.membership_errors += 1;
                }
                self.drain(node);
            }
            Event::Flush { node, epoch } => self.flush(node, epoch),
            Event::AntiEntropy { node, epoch } => self.anti_entropy_round(node, epoch),
            Event::Rejoin { node, epoch } => self.rejoin(node, epoch),
            Event::Client => {
                if self.now_ms < self.workload_until_ms {
                    self.client_op();
                    self.schedule(self.config.client_period_ms, Event::Client);
                }
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, channel: Channel, bytes: &[u8]) {
        if self.blocked.contains(&(from, to)) {
            self.stats.messages_partitioned += 1;
            return;
        }
        let now = self.now_ms;
        if self.nodes[to].live.is_none() {
            self.stats.messages_to_crashed += 1;
            return;
        }
        if channel == Channel::Replica && self.forge_replicated_ack(from, to, bytes) {
            return;
        }
        // Invariant: checked just above, and forging touches no node.
        let live = self.nodes[to].live.as_mut().expect("the receiver runs");
        let failed = match channel {
            Channel::Membership => live.membership.handle_data(bytes, now).is_err(),
            Channel::Replica => live.replica.step(bytes, now).is_err(),
        };
        match (failed, channel) {
            (true, Channel::Membership) => self.stats.membership_errors += 1,
            (true, Channel::Replica) => self.stats.replica_errors += 1,
            _ => {}
        }
        self.stats.messages_delivered += 1;
        self.record(from, to, channel, bytes);
        self.drain(to);
        if channel == Channel::Replica {
            self.check_bounds_at(to);
        }
    }

    /// Folds one delivery into the trace hash.
    fn record(&mut self, from: usize, to: usize, channel: Channel, bytes: &[u8]) {
        let mut head = Vec::with_capacity(32 + bytes.len());
        head.extend_from_slice(&self.now_ms.to_be_bytes());
        head.extend_from_slice(&(from as u64).to_be_bytes());
        head.extend_from_slice(&(to as u64).to_be_bytes());
        head.push(channel as u8);
        head.extend_from_slice(bytes);
        self.fold_trace(&head);
    }

    /// Folds one client request into the trace hash.
    fn record_request(&mut self, index: usize, key: &[u8], op: &Operation) {
        let mut head = Vec::with_capacity(32 + key.len());
        head.extend_from_slice(&self.now_ms.to_be_bytes());
        head.extend_from_slice(&(index as u64).to_be_bytes());
        head.extend_from_slice(&(key.len() as u64).to_be_bytes());
        head.extend_from_slice(key);
        head.extend_from_slice(&calm_types::codec::encode(op));
        self.fold_trace(&head);
    }

    /// Folds one reply's outcome into the trace hash: acknowledged or not.
    fn record_reply(&mut self, reply: &Reply) {
        let mut head = Vec::with_capacity(17);
        head.extend_from_slice(&self.now_ms.to_be_bytes());
        head.extend_from_slice(&reply.id.0.to_be_bytes());
        head.push(u8::from(reply.result.is_ok()));
        self.fold_trace(&head);
    }

    fn fold_trace(&mut self, bytes: &[u8]) {
        self.trace = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.trace);
    }

    /// The group commit, then shipping of the synced deltas.
    fn flush(&mut self, node: usize, epoch: u64) {
        let now = self.now_ms;
        let Some(live) = self.live_at(node, epoch) else {
            return;
        };
        let failed = live.replica.flush().is_err();
        live.replica.tick(now);
        if failed {
            self.stats.replica_errors += 1;
        }
        self.drain(node);
        self.schedule(self.config.flush_period_ms, Event::Flush { node, epoch });
    }

    /// A real driver re-announces to its configured seeds while it does not
    /// see the whole cluster: SWIM never probes a member it declared down,
    /// so without this the two sides of a healed partition stay apart.
    fn rejoin(&mut self, node: usize, epoch: u64) {
        let now = self.now_ms;
        let expected = self.nodes.len();
        let seeds: Vec<Peer> = (0..expected)
            .filter(|&i| i != node)
            .map(|i| Peer::seed(node_id(i), address(i)))
            .collect();
        let Some(live) = self.live_at(node, epoch) else {
            return;
        };
        let members = live.membership.members();
        let alive = members
            .iter()
            .filter(|r| r.state == MemberState::Alive)
            .count();
        if alive < expected && live.membership.join(&seeds, now).is_err() {
            self.stats.membership_errors += 1;
        }
        self.drain(node);
        self.schedule(self.config.rejoin_period_ms, Event::Rejoin { node, epoch });
    }

    /// Carries out everything node `index`'s cores asked for.
    pub(crate) fn drain(&mut self, index: usize) {
        let Some(live) = self.nodes[index].live.as_mut() else {
            return;
        };
        let mut effects = Vec::new();
        while let Some(effect) = live.membership.poll_effect() {
            effects.push(effect);
        }
        let me = node_id(index);
        for effect in &effects {
            // Liveness is not ownership: down peers are only skipped by
            // preference lists, so the replica hears of every change.
            if let Effect::Notify(event) = effect
                && event.peer.node != me
            {
                let down = matches!(event.state, MemberState::Down | MemberState::Left);
                let up = event.state == MemberState::Alive;
                if down || up {
                    live.replica.set_down(event.peer.node, down);
                }
            }
        }
        let outputs = live.replica.take_outputs();
        let epoch = self.nodes[index].epoch;
        for effect in effects {
            match effect {
                Effect::Send { to, bytes } => {
                    let to = (to.node.0 as usize).wrapping_sub(1);
                    self.send(index, to, Channel::Membership, bytes);
                }
                Effect::SetTimer { timer, after_ms } => {
                    let event = Event::Timer {
                        node: index,
                        epoch,
                        timer,
                    };
                    self.schedule(after_ms, event);
                }
                Effect::SendToAddress { addr, bytes } => {
                    if let Some(to) = (0..self.nodes.len()).find(|&i| address(i) == addr) {
                        self.send(index, to, Channel::Membership, bytes);
                    }
                }
                Effect::Notify(_) | Effect::Local(_) => {}
            }
        }
        for output in outputs {
            match output {
                Output::Reply(reply) => self.client_hears(&reply),
                Output::Send { to, message } => {
                    let to = (to.0 as usize).wrapping_sub(1);
                    self.send(index, to, Channel::Replica, message);
                }
            }
        }
    }

    /// A reply reaches its client: the ledger, the trace and the counters
    /// learn its outcome.
    fn client_hears(&mut self, reply: &Reply) {
        self.record_reply(reply);
        if self.quorum_read_answered(reply) {
            return;
        }
        if let Err(ReplicaError::WriteInDoubt { .. }) = &reply.result {
            // The one error after which the write may still have landed
            // (it is durable here and maybe at some owners), so it stays
            // in doubt in the ledger instead of being forgotten.
            self.stats.writes_in_doubt += 1;
            return;
        }
        if let Err(ReplicaError::Object(ObjectError::InsufficientRights { .. })) = &reply.result {
            self.stats.rights_refused += 1;
        }
        if self.ledger.replied(reply) == Some(Change::Transfer) {
            self.stats.transfers_acknowledged += 1;
        }
    }

    /// Hands one message to the network: lost, delivered once or twice,
    /// each copy after its own random delay.
    fn send(&mut self, from: usize, to: usize, channel: Channel, bytes: Vec<u8>) {
        self.stats.messages_sent += 1;
        if to >= self.nodes.len() {
            return;
        }
        let faults = self.config.faults;
        if faults.loss > 0.0 && self.rng.random_bool(faults.loss) {
            self.stats.messages_lost += 1;
            return;
        }
        let copies = if faults.duplication > 0.0 && self.rng.random_bool(faults.duplication) {
            self.stats.messages_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .random_range(faults.delay_min_ms..=faults.delay_max_ms);
            let event = Event::Deliver {
                from,
                to,
                channel,
                bytes: bytes.clone(),
            };
            self.schedule(delay, event);
        }
    }

    /// Hands a replica message from node index `from` to the network.
    pub(crate) fn send_replica_message(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.send(from, to, Channel::Replica, bytes);
    }

    /// Ships `key`'s state from `from` to `to`, if `from` holds it.
    pub(crate) fn ship_state(&mut self, from: usize, to: usize, key: &[u8]) {
        let now = self.now_ms;
        let Some(live) = self.nodes[from].live.as_mut() else {
            return;
        };
        if let Some(message) = live.replica.state_transfer(key, now) {
            self.stats.state_transfers += 1;
            self.send(from, to, Channel::Replica, message);
        }
    }

    pub(crate) fn random_peer(&mut self, node: usize) -> Option<usize> {
        let others = self.nodes.len() - 1;
        (others > 0).then(|| {
            let pick = self.rng.random_range(0..others);
            if pick >= node { pick + 1 } else { pick }
        })
    }

    pub(crate) fn epoch_is(&self, node: usize, epoch: u64) -> bool {
        self.nodes[node].epoch == epoch && self.nodes[node].live.is_some()
    }

    pub(crate) fn reschedule_anti_entropy(&mut self, node: usize, epoch: u64, period_ms: u64) {
        self.schedule(period_ms, Event::AntiEntropy { node, epoch });
    }

    // ---- Workload ----

    /// One client operation at a random natural owner of a random key.
    fn client_op(&mut self) {
        let (counters, sets) = (self.config.counter_keys, self.config.set_keys);
        let pick = self
            .rng
            .random_range(0..counters + sets + self.config.bounded_keys);
        let key = if pick < counters {
            format!("c{pick}")
        } else if pick < counters + sets {
            format!("s{}", pick - counters)
        } else {
            format!("b{}", pick - counters - sets)
        }
        .into_bytes();
        let owners = self.owners(&key);
        let target = owners[self.rng.random_range(0..owners.len())];
        // The draw for a read happens only with a level set, so that runs
        // at `local` keep their seeds' traces.
        let read =
            pick < counters && self.config.level.is_some() && self.rng.random_bool(READ_SHARE);
        let op = if read {
            Operation::Read
        } else if pick < counters {
            Operation::Increment(self.rng.random_range(1..=INCREMENT_MAX))
        } else if pick < counters + sets {
            let element = vec![self.rng.random_range(0..SET_ELEMENTS_MAX)];
            if self.rng.random_bool(0.7) {
                Operation::SetAdd(element)
            } else {
                Operation::SetRemove(element)
            }
        } else {
            self.bounded_op(target, &owners)
        };
        // Invariant: owners come from the ring of this simulation's nodes.
        let index = (target.0 as usize) - 1;
        if self.nodes[index].live.is_none() {
            self.stats.client_refused += 1;
            return;
        }
        self.request(index, key, op);
    }

    /// Submits `op` on `key` to the running node `index` (at
    /// [`SimConfig::level`] for counter operations and reads, if set),
    /// records it in the ledger (or, under a planted bug, acknowledges it
    /// at once) and a read at the level with its floor, and checks the
    /// node's bounded counters afterwards.
    fn request(&mut self, index: usize, key: Vec<u8>, op: Operation) {
        self.stats.client_ops += 1;
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.record_request(index, &key, &op);
        let change = match op {
            Operation::Increment(amount) | Operation::BoundedIncrement(amount) => {
                Some(Change::Up(amount))
            }
            Operation::Decrement(amount) | Operation::BoundedDecrement(amount) => {
                Some(Change::Down(amount))
            }
            Operation::BoundedTransfer { .. } => Some(Change::Transfer),
            _ => None,
        };
        let bug = self.config.planted_bug;
        if let (PlantedBug::DecrementFromStaleRights, Operation::BoundedDecrement(amount)) =
            (bug, &op)
        {
            self.decrement_from_stale_rights(index, key, *amount);
            self.check_bounds_at(index);
            return;
        }
        match (bug, change) {
            (_, None) => {}
            (PlantedBug::AckBeforeFlush, Some(change @ (Change::Up(_) | Change::Down(_)))) => {
                self.ledger.acknowledge_at_once(key.clone(), change);
            }
            (_, Some(change)) => self.ledger.submitted(id, key.clone(), change),
        }
        let request = Request {
            id,
            key,
            op,
            token: None,
        };
        let level = self.level_for(&request.op);
        if level.is_some() && request.op == Operation::Read {
            self.quorum_read_submitted(id, index, &request.key);
        }
        let now = self.now_ms;
        if let Some(live) = self.nodes[index].live.as_mut() {
            match level {
                Some(level) => live.replica.submit_at(request, level, now),
                None => live.replica.submit(request, now),
            }
        }
        self.drain(index);
        self.check_bounds_at(index);
    }
}
