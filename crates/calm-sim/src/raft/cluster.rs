//! The keyspace simulation: voters on a virtual clock, stepped one
//! millisecond at a time, with the network between them, the clients in
//! front of them and the nemeses that break them.

use calm_raft::{MembershipChange, RequestId};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::config::KeyspaceSimConfig;
use super::leases::LeaseClient;
use super::network::is_forwarded_proposal;
use super::node::{Call, Clock, Inbound, SimNode, TurnOutputs, TurnStage};
use super::workload::Workload;
use crate::check::Violation;
use crate::network::{InFlight, Network, Sent};
use crate::sim::SimError;

/// How often the replicas' applied states are compared while the
/// simulation runs, in ms.
const AGREEMENT_PERIOD_MS: u64 = 250;

/// Counters of what happened, for tests and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyspaceStats {
    /// Peer messages handed to the network.
    pub messages_sent: u64,
    /// Peer messages handed to a core.
    pub messages_delivered: u64,
    /// Messages the network lost.
    pub messages_lost: u64,
    /// Extra copies the network made.
    pub messages_duplicated: u64,
    /// Messages dropped by a blocked link.
    pub messages_blocked: u64,
    /// Messages dropped because the receiver was down.
    pub messages_to_down: u64,
    /// Peer messages a core refused, and `Trouble` outputs.
    pub troubles: u64,
    /// Client requests sent.
    pub requests: u64,
    /// Requests answered with a result.
    pub answered: u64,
    /// Writes whose reply never came or left them in doubt.
    pub indeterminate: u64,
    /// Requests that certainly changed nothing: reads that failed or got
    /// no reply, writes refused before they reached Raft.
    pub no_effect: u64,
    /// Compare-and-swaps that succeeded.
    pub swaps: u64,
    /// Crashes, mid-turn ones included.
    pub crashes: u64,
    /// Crashes that struck inside a driver turn.
    pub crashes_in_turn: u64,
    /// Unsynced batches the crashes threw away.
    pub unsynced_batches_lost: u64,
    /// Restarts.
    pub restarts: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Leadership transfers asked of a leader.
    pub transfers: u64,
    /// Forward clock jumps.
    pub clock_jumps: u64,
    /// Membership changes asked of a leader (demotions to learner and
    /// promotions back).
    pub membership_changes: u64,
    /// The highest Raft term any node reached.
    pub term_max: u64,
}

/// A deterministic cluster of keyspace voters; see the [module
/// docs](super).
///
/// # Call order
///
/// [`new`](Self::new), then any mix of [`run_for`](Self::run_for),
/// [`run_workload`](Self::run_workload) and the nemeses; then
/// [`heal`](Self::heal), [`restart_all`](Self::restart_all),
/// [`settle`](Self::settle) and the checkers
/// ([`check_all`](Self::check_all)).
pub struct KeyspaceSim {
    pub(super) config: KeyspaceSimConfig,
    pub(super) rng: StdRng,
    pub(super) now_ms: u64,
    /// History stamps taken in the current ms.
    stamps_this_ms: u64,
    pub(super) nodes: Vec<SimNode>,
    network: Network<Vec<u8>>,
    pub(super) workload: Workload,
    trace: u64,
    pub(super) stats: KeyspaceStats,
    /// Violations seen while running (the replicas disagreed, a core
    /// failed), reported by [`check_all`](Self::check_all).
    pub(super) seen: Vec<Violation>,
    /// The revision the running replicas were last compared at.
    pub(super) agreed_revision: i64,
    /// Membership changes asked for, which number their request ids.
    membership_requests: u64,
    /// The lease client, when the config asks for leases.
    pub(super) leases: LeaseClient,
}

impl KeyspaceSim {
    /// Builds the cluster and starts every voter on an empty disk, each
    /// with its own clock offset and rate. Nothing has run yet.
    pub fn new(config: KeyspaceSimConfig) -> Result<KeyspaceSim, SimError> {
        config.validate().map_err(SimError::InvalidConfig)?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let rate = config.clock_rate_ppm_max as i64;
        let nodes = (1..=config.voters as u64)
            .map(|id| {
                let clock = Clock {
                    offset_ms: rng.random_range(0..=config.clock_offset_ms_max),
                    rate_ppm: rng.random_range(-rate..=rate),
                };
                SimNode::new(id, clock)
            })
            .collect();
        let workload = Workload::new(config.clients, config.keys);
        let mut sim = KeyspaceSim {
            config,
            rng,
            now_ms: 0,
            stamps_this_ms: 0,
            nodes,
            network: Network::default(),
            workload,
            trace: 0,
            stats: KeyspaceStats::default(),
            seen: Vec::new(),
            agreed_revision: 0,
            membership_requests: 0,
            leases: LeaseClient::default(),
        };
        for index in 0..sim.nodes.len() {
            sim.start(index);
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

    /// Runs `duration_ms` with every client sending requests to random
    /// voters.
    pub fn run_workload(&mut self, duration_ms: u64) {
        for _ in 0..duration_ms {
            self.step(true);
        }
    }

    /// One millisecond: deliveries, new requests, every active node's
    /// turn, client deadlines, and now and then the agreement check.
    fn step(&mut self, with_clients: bool) {
        self.now_ms += 1;
        self.stamps_this_ms = 0;
        self.deliver_due();
        if with_clients {
            self.clients_act();
        }
        // Keep-alives run in the background, as a real client's do.
        self.leases_act();
        for index in 0..self.nodes.len() {
            self.turn(index);
        }
        self.expire_clients();
        self.check_leases_now();
        if self.now_ms.is_multiple_of(AGREEMENT_PERIOD_MS) {
            self.check_running_agree();
        }
    }

    /// A strictly increasing time for the history, in µs of virtual time:
    /// the ms, then the order of events within it, so that a return and a
    /// call in the same ms are ordered as they happened.
    pub(super) fn stamp(&mut self) -> u64 {
        self.stamps_this_ms += 1;
        // At most two stamps per client per ms, and CLIENTS_MAX is 32.
        assert!(self.stamps_this_ms < 1_000, "too many events in one ms");
        self.now_ms * 1_000 + self.stamps_this_ms
    }

    // ---- Nemeses ----

    /// Cuts the network into `groups`: messages between nodes of different
    /// groups are dropped, in both directions, including those in flight.
    /// A node in no group is cut off from everyone. Replaces any earlier
    /// partition or block.
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

    /// Drops every message from `from` to `to`, one direction only (an
    /// asymmetric partition). Adds to any partition in force.
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

    /// Whether some link is blocked.
    pub fn is_partitioned(&self) -> bool {
        self.network.is_partitioned()
    }

    /// Crashes `node` between two turns: its core, queued inputs and
    /// requests vanish, and its disk loses every write since the last
    /// sync. No-op if it is down.
    pub fn crash(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        self.crash_index(index, 0);
        Ok(())
    }

    /// Like [`crash`](Self::crash), but the disk keeps a random oldest
    /// prefix of its unsynced batches (from none to all), as a disk that
    /// flushed some on its own: the contract lets that happen, so it must
    /// be harmless.
    pub fn crash_keeping_random_prefix(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        let pending = self.nodes[index].engine.pending_batches();
        let kept = self.rng.random_range(0..=pending);
        self.crash_index(index, kept);
        Ok(())
    }

    /// Crashes `node` at `stage` of its next turn that writes (or at the
    /// end of its next turn for [`TurnStage::AfterApply`]).
    pub fn crash_in_turn(&mut self, node: NodeId, stage: TurnStage) -> Result<(), SimError> {
        let index = self.index(node)?;
        if self.nodes[index].keyspace.is_some() {
            self.nodes[index].crash_at = Some(stage);
        }
        Ok(())
    }

    /// Crashes every node at once, as a power failure does, each disk
    /// keeping a random prefix of its unsynced batches.
    pub fn power_failure(&mut self) {
        for index in 0..self.nodes.len() {
            let pending = self.nodes[index].engine.pending_batches();
            let kept = self.rng.random_range(0..=pending);
            self.crash_index(index, kept);
        }
    }

    /// Restarts a crashed `node` from its disk. No-op if it runs.
    pub fn restart(&mut self, node: NodeId) -> Result<(), SimError> {
        let index = self.index(node)?;
        if self.nodes[index].keyspace.is_none() {
            self.start(index);
            self.stats.restarts += 1;
        }
        Ok(())
    }

    /// Restarts every crashed node, and disarms the crashes planned inside
    /// a turn that have not struck yet.
    pub fn restart_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.nodes[index].crash_at = None;
            if self.nodes[index].keyspace.is_none() {
                self.start(index);
                self.stats.restarts += 1;
            }
        }
    }

    /// Stops `node`'s process for `duration_ms` (SIGSTOP, a long GC, a VM
    /// migration): its inputs queue up and its clock runs on, but it takes
    /// no turn, so Raft's ticks stop and resume with one tick.
    pub fn pause(&mut self, node: NodeId, duration_ms: u64) -> Result<(), SimError> {
        let index = self.index(node)?;
        if self.nodes[index].keyspace.is_some() {
            self.nodes[index].paused_until_ms = self.now_ms + duration_ms;
            self.stats.pauses += 1;
            self.fold_trace(&[4, index as u8]);
        }
        Ok(())
    }

    /// Moves `node`'s clock forward by `forward_ms` (an NTP step, a
    /// resumed VM). Clocks never step back: the real node's is monotonic.
    pub fn jump_clock(&mut self, node: NodeId, forward_ms: u64) -> Result<(), SimError> {
        let index = self.index(node)?;
        self.nodes[index].clock.offset_ms += forward_ms;
        self.leases.jumped_ms += forward_ms;
        self.stats.clock_jumps += 1;
        self.fold_trace(&[5, index as u8]);
        Ok(())
    }

    /// Asks the current leader to hand leadership to `to`. Returns whether
    /// some leader took the request (the transfer may still fail).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<bool, SimError> {
        let target = self.index(to)?;
        let Some(leader) = self.leader() else {
            return Ok(false);
        };
        let leader = self.index(leader)?;
        let Some(keyspace) = self.nodes[leader].keyspace.as_mut() else {
            return Ok(false);
        };
        let taken = keyspace.transfer_leader(target as u64 + 1).is_ok();
        if taken {
            self.stats.transfers += 1;
            self.fold_trace(&[6, leader as u8, target as u8]);
        }
        Ok(taken)
    }

    /// Asks the current leader to change the membership: demotes voter
    /// `node` to a learner, or promotes it back if it is one. Raft
    /// replicates the change as a log entry; the answer is ignored (the
    /// next change is refused while one is in flight). Returns whether a
    /// leader took the request.
    pub fn toggle_voter(&mut self, node: NodeId) -> Result<bool, SimError> {
        let target = self.index(node)? as u64 + 1;
        let Some(leader) = self.leader() else {
            return Ok(false);
        };
        let leader = self.index(leader)?;
        let Some(keyspace) = self.nodes[leader].keyspace.as_ref() else {
            return Ok(false);
        };
        let status = keyspace.raft_status();
        let change = if status.learners.contains(&target) {
            MembershipChange::PromoteLearner(target)
        } else if status.voters.contains(&target) && target != leader as u64 + 1 {
            MembershipChange::AddLearner(target)
        } else {
            return Ok(false);
        };
        self.ask_membership_change(leader, vec![change], &[9, leader as u8, target as u8]);
        Ok(true)
    }

    /// Promotes every learner back to a voter, through the leader, in one
    /// change (a joint configuration when there are several). Returns
    /// whether there was nothing to do or a leader took the request.
    pub fn promote_learners(&mut self) -> bool {
        let Some(leader) = self.leader().and_then(|l| self.index(l).ok()) else {
            return false;
        };
        let Some(keyspace) = self.nodes[leader].keyspace.as_ref() else {
            return false;
        };
        let learners = keyspace.raft_status().learners;
        if learners.is_empty() {
            return true;
        }
        let changes = learners
            .into_iter()
            .map(MembershipChange::PromoteLearner)
            .collect();
        self.ask_membership_change(leader, changes, &[10, leader as u8]);
        true
    }

    /// Queues `changes` at node index `leader`, folding `trace` into the
    /// trace hash.
    fn ask_membership_change(
        &mut self,
        leader: usize,
        changes: Vec<MembershipChange>,
        trace: &[u8],
    ) {
        // Ids far above the workload's, which the workload ignores.
        self.membership_requests += 1;
        let id = RequestId(u64::MAX - self.membership_requests);
        let call = Call::ChangeMembership(changes);
        self.nodes[leader]
            .inbox
            .push_back(Inbound::Client { id, call });
        self.stats.membership_changes += 1;
        self.fold_trace(trace);
    }

    // ---- Views ----

    /// The active node that believes it leads at the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|node| node.is_active(self.now_ms))
            .filter_map(|node| {
                let status = node.keyspace.as_ref()?.raft_status();
                (status.leader == Some(node.id)).then_some((status.term, node.id))
            })
            .max()
            .map(|(_, id)| NodeId(id))
    }

    /// Whether `node` runs (paused or not).
    pub fn is_up(&self, node: NodeId) -> bool {
        self.index(node)
            .is_ok_and(|index| self.nodes[index].keyspace.is_some())
    }

    /// The learners the current leader knows (demoted voters).
    pub fn learners(&self) -> Vec<NodeId> {
        let leader = self.leader().and_then(|l| self.index(l).ok());
        leader
            .and_then(|index| self.nodes[index].keyspace.as_ref())
            .map(|keyspace| keyspace.raft_status().learners)
            .unwrap_or_default()
            .into_iter()
            .map(NodeId)
            .collect()
    }

    /// Every node's id (each starts as a voter; see
    /// [`toggle_voter`](Self::toggle_voter)).
    pub fn voters(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| NodeId(node.id)).collect()
    }

    /// A hash of every delivered message (time, link, bytes), client
    /// request and reply, and nemesis action, in order: equal for two runs
    /// of one seed.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// The counters.
    pub fn stats(&self) -> &KeyspaceStats {
        &self.stats
    }

    /// The config the simulation runs under.
    pub fn config(&self) -> &KeyspaceSimConfig {
        &self.config
    }

    // ---- Driving ----

    fn start(&mut self, index: usize) {
        let now = self.now_ms;
        if let Err(error) = self.nodes[index].start(&self.config, now) {
            // The disk only ever holds what the core wrote; a core that
            // cannot reopen it has broken its own storage contract.
            let detail = format!("node {} could not reopen its disk: {error}", index + 1);
            self.seen.push(self.violation("restart", detail));
        }
        self.fold_trace(&[7, index as u8]);
    }

    pub(super) fn crash_index(&mut self, index: usize, kept: usize) {
        if self.nodes[index].keyspace.is_none() {
            return;
        }
        let lost = self.nodes[index].crash(kept);
        self.stats.crashes += 1;
        self.stats.unsynced_batches_lost += lost as u64;
        self.workload_node_crashed(index);
        self.fold_trace(&[8, index as u8, kept as u8]);
    }

    fn deliver_due(&mut self) {
        while let Some(due) = self.network.next_due(self.now_ms) {
            let Some(message) = due else {
                self.stats.messages_blocked += 1;
                continue;
            };
            let node = &mut self.nodes[message.to];
            if node.keyspace.is_none() {
                self.stats.messages_to_down += 1;
                continue;
            }
            let head = [
                &self.now_ms.to_le_bytes()[..],
                &[message.from as u8, message.to as u8],
                &xxhash_rust::xxh3::xxh3_64(&message.payload).to_le_bytes(),
            ]
            .concat();
            node.inbox.push_back(Inbound::Peer {
                from: message.from,
                bytes: message.payload,
            });
            self.stats.messages_delivered += 1;
            self.fold_trace(&head);
        }
    }

    fn turn(&mut self, index: usize) {
        if !self.nodes[index].is_active(self.now_ms) {
            return;
        }
        let (bug, tick_ms) = (self.config.bug, self.config.tick_ms);
        let Some(outputs) = self.nodes[index].turn(self.now_ms, bug, tick_ms) else {
            return;
        };
        if let Some(keyspace) = &self.nodes[index].keyspace {
            let term = keyspace.raft_status().term;
            self.stats.term_max = self.stats.term_max.max(term);
        }
        self.carry_out(index, outputs);
    }

    fn carry_out(&mut self, index: usize, outputs: TurnOutputs) {
        let TurnOutputs {
            sends,
            replies,
            troubles,
            failure,
            crashed,
        } = outputs;
        for (to, bytes) in sends {
            self.send(index, to, bytes);
        }
        self.stats.troubles += troubles.len() as u64;
        if crashed {
            self.stats.crashes_in_turn += 1;
            self.crash_index(index, 0);
            return;
        }
        // The core emits the replies of requests that time out together in
        // the order of its hash maps, which varies between processes; in
        // request order, a seed replays.
        let mut replies = replies;
        replies.sort_by_key(|(id, _)| *id);
        for (id, result) in replies {
            if Self::is_lease_request(id) {
                self.lease_answered(id, result);
            } else {
                self.answered(id, result);
            }
        }
        if let Some(failure) = failure {
            let detail = format!("node {}: {failure}", index + 1);
            self.seen.push(self.violation("core failure", detail));
            self.crash_index(index, 0);
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.stats.messages_sent += 1;
        let message = InFlight {
            from,
            to,
            payload: bytes,
        };
        let faults = self.config.faults;
        let proposals = self.config.duplicate_proposals;
        let now = self.now_ms;
        let may_duplicate = |bytes: &Vec<u8>| proposals || !is_forwarded_proposal(bytes);
        match self
            .network
            .send(&mut self.rng, &faults, now, message, may_duplicate)
        {
            Sent::Queued { copies } => self.stats.messages_duplicated += u64::from(copies - 1),
            Sent::Lost => self.stats.messages_lost += 1,
            Sent::Blocked => self.stats.messages_blocked += 1,
        }
    }

    pub(super) fn index(&self, node: NodeId) -> Result<usize, SimError> {
        match node.0 {
            id @ 1.. if id as usize <= self.nodes.len() => Ok(id as usize - 1),
            _ => Err(SimError::NoSuchNode(node)),
        }
    }

    pub(super) fn fold_trace(&mut self, bytes: &[u8]) {
        self.trace = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.trace);
    }

    pub(super) fn violation(&self, checker: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.config.seed,
            checker,
            detail,
        }
    }
}
