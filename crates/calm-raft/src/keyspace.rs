//! One voter of the coordinated keyspace, as a sans-IO core: the Raft core,
//! the state machine and the watch hub together, with the bookkeeping that
//! turns client requests into proposals and read indexes and committed
//! entries back into replies.
//!
//! The tokio node and the simulator drive the same [`Keyspace`]: they hand
//! it requests (each with a caller-chosen [`RequestId`]), peer messages and
//! ticks, persist what it writes, and carry out what it outputs.

use std::collections::{BTreeMap, VecDeque};

use calm_proto::calm::raft::v1::{Command, command::Request};
use calm_proto::etcd::etcdserverpb::{
    HashKvResponse, LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest, RangeRequest,
    RangeResponse, ResponseHeader, StatusResponse, TxnRequest, TxnResponse,
};
use calm_storage::{ReadView, StorageError, WriteBatch};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::log::{Membership, STATE_KEYSPACE};
use crate::node::{
    CommittedPayload, ConfChangeOutcome, MembershipChange, OutboundMessage, Output as RaftOutput,
    RaftConfig, RaftCore, RaftStatus,
};
use crate::state::{ApplyError, Outcome, Response, StateConfig, StateMachine};
use crate::watch::{WatchBatch, WatchConfig, WatchError, WatchHub, WatchId, WatchSpec};

/// The etcd API version calm answers to (`Status.version`): the newest
/// whose semantics calm implements.
pub const ETCD_VERSION: &str = "3.5.0";

/// The most applied entries between two trims of the log. Without a
/// snapshot to build, a trim only deletes entries, one storage operation
/// each: a hundred thousand at once held the loop for a second, a thousand
/// cost little, and the log in memory stays short.
pub const TRIM_STEP_ENTRIES: u64 = 1024;

/// About how many storage operations one batch of applied entries holds
/// before the next entry starts a new one.
pub const APPLY_BATCH_OPS: usize = 4096;

/// A caller's name for one request; replies carry it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The keyspace's options on one voter.
#[derive(Clone, Debug)]
pub struct KeyspaceConfig {
    /// Raft's timing and bounds.
    pub raft: RaftConfig,
    /// How long a proposal, read or lease question may wait, in ms, before
    /// it is answered with etcd's "request timed out" (etcd: 5 s plus two
    /// election timeouts).
    pub request_timeout_ms: u64,
    /// The length of an election timeout in ms, by which a new leader
    /// extends every lease.
    pub election_timeout_ms: u64,
    /// Most applied entries between two compactions of the log (which
    /// trims it in steps of at most [`TRIM_STEP_ENTRIES`]); a snapshot of
    /// the state is built only when a follower needs one.
    pub snapshot_count: u64,
    /// The state machine's bounds.
    pub state: StateConfig,
    /// The cluster id reported in headers.
    pub cluster_id: u64,
    /// The watch hub's bounds.
    pub watch: WatchConfig,
    /// Most requests waiting for a leader to be elected; beyond it they
    /// fail at once with "no leader".
    pub leaderless_max: usize,
}

/// A read answered from the applied state.
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    /// A range.
    Range(RangeRequest),
    /// A txn without writes.
    Txn(TxnRequest),
}

/// A lease question only the leader can answer (its clock holds the
/// expiry times).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LeaseQuestion {
    /// Renew the lease.
    Renew(i64),
    /// Its remaining TTL.
    TimeToLive(i64),
}

/// A lease's TTLs as the leader reports them: remaining (-1 if unknown)
/// and granted (0 if there is no such lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTtl {
    /// Seconds left.
    pub ttl: i64,
    /// Seconds granted.
    pub granted: i64,
}

/// A reply to a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// To a proposal.
    Applied(Response),
    /// To a range.
    Range(RangeResponse),
    /// To a read-only txn.
    Txn(TxnResponse),
    /// To a lease question.
    Lease(LeaseTtl),
    /// To a membership change: the membership it produced.
    Membership(Membership),
}

/// Why a request failed, as etcd says it: a gRPC code (tonic's numbering)
/// and the message etcd clients match on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct KeyspaceError {
    /// The gRPC status code.
    pub code: i32,
    /// etcd's message.
    pub message: String,
}

impl KeyspaceError {
    fn unavailable(message: &str) -> KeyspaceError {
        KeyspaceError {
            code: 14,
            message: message.to_string(),
        }
    }

    /// No leader is known, or the proposal was dropped: retryable.
    pub fn no_leader() -> KeyspaceError {
        KeyspaceError::unavailable("etcdserver: no leader")
    }

    /// The request waited longer than the timeout: in doubt.
    pub fn timed_out() -> KeyspaceError {
        KeyspaceError::unavailable("etcdserver: request timed out")
    }

    /// The node is stopping.
    pub fn stopped() -> KeyspaceError {
        KeyspaceError::unavailable("etcdserver: server stopped")
    }
}

impl From<ApplyError> for KeyspaceError {
    fn from(error: ApplyError) -> Self {
        KeyspaceError {
            code: error.code(),
            message: error.etcd_message(),
        }
    }
}

/// What the driver must carry out, in order.
#[derive(Debug)]
pub enum Output {
    /// Send `bytes` to voter `to` on the peer transport.
    Send {
        /// The voter.
        to: u64,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Answer request `id`.
    Reply {
        /// The request.
        id: RequestId,
        /// Its result.
        result: Result<Reply, KeyspaceError>,
    },
    /// Something went wrong that the driver should log; nothing to do.
    Trouble(String),
    /// Deliver a batch to watch `id`.
    Watch {
        /// The watch.
        id: WatchId,
        /// Events, a progress notification or a cancellation.
        batch: WatchBatch,
    },
}

/// What travels between voters: Raft's messages, and lease questions a
/// follower forwards to the leader.
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Raft(#[serde(with = "crate::bytes")] Vec<u8>),
    Ask {
        id: u64,
        question: LeaseQuestion,
    },
    Answer {
        id: u64,
        answer: Result<LeaseTtl, KeyspaceError>,
    },
}

/// A request that arrived while no leader was known.
#[derive(Debug)]
enum Leaderless {
    /// A proposal (its number, its request).
    Propose(u64, Request),
    /// A read index (its context).
    Read(u64),
}

/// Why the keyspace could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored state or log is unreadable, or the config is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// One voter of the coordinated keyspace.
///
/// Driver contract, per turn:
/// 1. inputs in any order: [`step`](Self::step) peer messages,
///    [`propose`](Self::propose), [`read`](Self::read),
///    [`watch`](Self::watch), [`ask`](Self::ask), [`tick`](Self::tick) every
///    Raft tick; serializable reads straight from [`state`](Self::state);
/// 2. [`before_sync`](Self::before_sync) with a fresh batch; write the
///    batch to storage; [`Output::Send`]s polled now may leave at once;
/// 3. sync storage; then [`after_sync`](Self::after_sync), and write the
///    batches it returns, in order (the next turn's sync makes them
///    durable: a crash before it replays the entries from the log);
/// 4. carry out every [`poll`](Self::poll)ed output.
pub struct Keyspace {
    me: u64,
    config: KeyspaceConfig,
    raft: RaftCore,
    state: StateMachine,
    hub: WatchHub,
    // Ordered maps, not hash maps, wherever the core iterates: what it
    // sends and answers must follow from its inputs alone, so that one
    // simulator seed replays the identical trace.
    /// Proposals awaiting their entry: proposal number → (deadline, id).
    proposals: BTreeMap<u64, (u64, RequestId)>,
    /// Reads awaiting a read index, by context.
    reads: BTreeMap<u64, PendingRead>,
    /// Reads with a read index, awaiting the apply: (index, seq) → read.
    indexed: BTreeMap<(u64, u64), Confirmed>,
    /// Lease questions forwarded to the leader.
    asked: BTreeMap<u64, (u64, RequestId)>,
    next_seq: u64,
    leader: u64,
    term: u64,
    last_snapshot: u64,
    /// The membership change this node proposed: (deadline, id, the ids
    /// it changes).
    membership_change: Option<(u64, RequestId, Vec<u64>)>,
    /// Requests waiting for a leader to be known, in arrival order.
    leaderless: Vec<Leaderless>,
    /// Raft's output, between the two halves of a turn.
    pending: Option<RaftOutput>,
    outputs: VecDeque<Output>,
}

impl Keyspace {
    /// Opens the keyspace stored in `view`, or bootstraps a new cluster
    /// of `voters` (every voter lists the same ones) writing into `batch`
    /// when nothing is stored.
    pub fn open(
        config: KeyspaceConfig,
        voters: &[u64],
        view: &impl ReadView,
        batch: &mut WriteBatch,
    ) -> Result<Keyspace, OpenError> {
        let state = StateMachine::load(config.state.clone(), view)
            .map_err(|e| OpenError::Invalid(e.to_string()))?;
        let stored = RaftCore::has_state(view).map_err(|e| OpenError::Invalid(e.to_string()))?;
        // A node not among the initial voters starts empty and waits to be
        // added (MemberAdd); the leader then sends it a snapshot.
        let raft = if stored || !voters.contains(&config.raft.id) {
            RaftCore::open(config.raft.clone(), view, state.applied())
        } else {
            RaftCore::bootstrap(config.raft.clone(), voters, batch)
        }
        .map_err(|e| OpenError::Invalid(e.to_string()))?;
        let incarnation = next_incarnation(view, batch)?;
        let last_snapshot = state.applied();
        let watch = config.watch;
        Ok(Keyspace {
            me: config.raft.id,
            config,
            raft,
            state,
            hub: WatchHub::new(watch),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            indexed: BTreeMap::new(),
            asked: BTreeMap::new(),
            next_seq: incarnation << INCARNATION_SHIFT,
            leader: 0,
            term: 0,
            last_snapshot,
            membership_change: None,
            leaderless: Vec::new(),
            pending: None,
            outputs: VecDeque::new(),
        })
    }

    // ---- Inputs ----

    /// A message from voter `from`.
    pub fn step(&mut self, from: u64, bytes: &[u8], now_ms: u64) -> Result<(), String> {
        let wire: Wire = calm_types::codec::decode(bytes).map_err(|e| e.to_string())?;
        match wire {
            Wire::Raft(message) => self.raft.step(from, &message).map_err(|e| e.to_string()),
            Wire::Ask { id, question } => {
                if self.leader == self.me {
                    let asker = Asker::Peer { node: from, id };
                    self.confirm(Confirmed::Lease(asker, question), now_ms);
                } else {
                    let answer = self.answer(question, now_ms);
                    self.send(from, &Wire::Answer { id, answer });
                }
                Ok(())
            }
            Wire::Answer { id, answer } => {
                if let Some((_, request)) = self.asked.remove(&id) {
                    self.reply(request, answer.map(Reply::Lease));
                }
                Ok(())
            }
        }
    }

    /// Proposes a write (or a read through the log); replied to once the
    /// entry is applied here.
    ///
    /// With no leader known, the request waits (bounded, until its
    /// deadline) for one to be elected, as etcd's do, rather than failing
    /// at once during an election.
    pub fn propose(&mut self, id: RequestId, request: Request, now_ms: u64) {
        let proposal = self.next();
        let deadline = now_ms + self.config.request_timeout_ms;
        if self.leader == 0 {
            if self.leaderless.len() >= self.config.leaderless_max {
                self.reply(id, Err(KeyspaceError::no_leader()));
                return;
            }
            self.proposals.insert(proposal, (deadline, id));
            self.leaderless.push(Leaderless::Propose(proposal, request));
            return;
        }
        if self.propose_command(proposal, request) {
            self.proposals.insert(proposal, (deadline, id));
        } else {
            self.reply(id, Err(KeyspaceError::no_leader()));
        }
    }

    /// A linearizable read: served once the state has applied up to the
    /// leader's commit index as of now (Raft's ReadIndex).
    pub fn read(&mut self, id: RequestId, read: Read, now_ms: u64) {
        self.confirm(Confirmed::Read(id, read), now_ms);
    }

    /// Serves `waiter` once a ReadIndex round confirmed the leader's
    /// leadership as of now and the state applied up to its commit index.
    fn confirm(&mut self, waiter: Confirmed, now_ms: u64) {
        let context = self.next();
        let deadline = now_ms + self.config.request_timeout_ms;
        if self.leader == 0 {
            // Raft drops a read index asked without a leader; wait for one.
            if self.leaderless.len() >= self.config.leaderless_max {
                self.fail(waiter, KeyspaceError::no_leader());
                return;
            }
            self.reads
                .insert(context, PendingRead::new(deadline, now_ms, waiter));
            self.leaderless.push(Leaderless::Read(context));
            return;
        }
        match self.raft.read_index(self.read_context(context)) {
            Ok(()) => {
                self.reads
                    .insert(context, PendingRead::new(deadline, now_ms, waiter));
            }
            Err(error) => {
                let error = KeyspaceError::unavailable(&format!("etcdserver: {error}"));
                self.fail(waiter, error);
            }
        }
    }

    /// Answers `waiter` with `error`, wherever it waits.
    fn fail(&mut self, waiter: Confirmed, error: KeyspaceError) {
        match waiter {
            Confirmed::Read(id, _) | Confirmed::Lease(Asker::Local(id), _) => {
                self.reply(id, Err(error));
            }
            Confirmed::Lease(Asker::Peer { node, id }, _) => {
                self.send(
                    node,
                    &Wire::Answer {
                        id,
                        answer: Err(error),
                    },
                );
            }
        }
    }

    /// Opens a watch; its first batches (catch-up or a compaction
    /// cancellation) are output at once. Refused, changing nothing, for an
    /// empty range, a negative start or too many watches.
    pub fn watch(&mut self, spec: WatchSpec) -> Result<WatchId, WatchError> {
        let (id, batches) = self.hub.create(spec, self.state.mvcc())?;
        for batch in batches {
            self.outputs.push_back(Output::Watch { id, batch });
        }
        Ok(id)
    }

    /// Closes a watch.
    pub fn cancel_watch(&mut self, id: WatchId) {
        self.hub.cancel(id);
    }

    /// The driver could not deliver `batch` to watch `id` (its queue is
    /// full): the driver drops it and every later batch it holds for the
    /// watch, which gets nothing more until [`resume_watch`]
    /// (Self::resume_watch) and then catches up from the store, from that
    /// batch on.
    pub fn pause_watch(&mut self, id: WatchId, batch: &WatchBatch) {
        let from = batch.first_revision().unwrap_or(batch.revision + 1);
        self.hub.pause(id, from);
    }

    /// The driver can deliver to watch `id` again.
    pub fn resume_watch(&mut self, id: WatchId) {
        self.hub.resume(id);
    }

    /// A lease question, answered here on the leader or forwarded to it.
    pub fn ask(&mut self, id: RequestId, question: LeaseQuestion, now_ms: u64) {
        if self.leader == self.me {
            self.confirm(Confirmed::Lease(Asker::Local(id), question), now_ms);
        } else if self.leader == 0 {
            self.reply(id, Err(KeyspaceError::no_leader()));
        } else {
            let seq = self.next();
            let deadline = now_ms + self.config.request_timeout_ms;
            self.asked.insert(seq, (deadline, id));
            self.send(self.leader, &Wire::Ask { id: seq, question });
        }
    }

    /// Proposes a membership change (Raft §6: several at once go through a
    /// joint configuration). Only one may be in flight at a time; the reply
    /// is the membership it produced, once applied here.
    pub fn change_membership(
        &mut self,
        id: RequestId,
        changes: Vec<MembershipChange>,
        now_ms: u64,
    ) {
        if self.membership_change.is_some() {
            let busy = KeyspaceError {
                code: 9,
                message: "etcdserver: unhealthy cluster (a membership change is in progress)"
                    .to_string(),
            };
            self.reply(id, Err(busy));
            return;
        }
        match self.raft.propose_membership_change(&changes) {
            Ok(()) => {
                let deadline = now_ms + self.config.request_timeout_ms;
                self.membership_change = Some((deadline, id, changed_ids(&changes)));
            }
            Err(error) => {
                let error = KeyspaceError {
                    code: 9,
                    message: format!("etcdserver: {error}"),
                };
                self.reply(id, Err(error));
            }
        }
    }

    /// Whether this node is a voter or learner of the current membership.
    pub fn is_member(&self) -> bool {
        let status = self.raft.status();
        status.voters.contains(&self.me) || status.learners.contains(&self.me)
    }

    /// Hands leadership to voter `target`; refused on a follower (etcd's
    /// "not leader") or for a target that is not a voter.
    pub fn transfer_leader(&mut self, target: u64) -> Result<(), KeyspaceError> {
        if self.leader != self.me {
            return Err(KeyspaceError {
                code: 9,
                message: "etcdserver: not leader".to_string(),
            });
        }
        self.raft
            .transfer_leader(target)
            .map_err(|_| KeyspaceError {
                code: 3,
                message: "etcdserver: bad leader transferee".to_string(),
            })
    }

    /// Raft's clock, the leader's lease expiry, watch catch-up and request
    /// deadlines.
    pub fn tick(&mut self, now_ms: u64) {
        self.raft.tick();
        // Raft's role now, not `self.leader` alone: this turn's inputs may
        // have deposed this node before `after_sync` reports it, and a
        // follower's proposal is forwarded to the real leader, which would
        // apply an expiry timed by this node's stale lessor (found by
        // calm-sim's lease checker: a leader paused past an election
        // revoked a lease the new leader had just renewed).
        if self.leader == self.me && self.raft.is_leader() {
            for id in self.state.lessor_mut().expired(now_ms) {
                // Nobody waits for an expiry: proposal 0. A lost proposal is
                // retried when the lessor offers the lease again.
                self.propose_command(0, Request::LeaseRevoke(LeaseRevokeRequest { id }));
            }
            let checkpoints: Vec<LeaseCheckpoint> = self
                .state
                .lessor_mut()
                .due_checkpoints(now_ms)
                .into_iter()
                .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect();
            if !checkpoints.is_empty() {
                let request = LeaseCheckpointRequest { checkpoints };
                self.propose_command(0, Request::LeaseCheckpoint(request));
            }
        }
        for (id, batch) in self.hub.catch_up(self.state.mvcc()) {
            self.outputs.push_back(Output::Watch { id, batch });
        }
        for id in self.hub.progress_due(now_ms) {
            // A progress notification: no events, the watch's revision.
            let revision = self.hub.next_revision(id).map_or(0, |next| next - 1);
            let batch = WatchBatch {
                revision,
                ..WatchBatch::default()
            };
            self.outputs.push_back(Output::Watch { id, batch });
        }
        self.expire(now_ms);
        self.retry_reads(now_ms);
    }

    /// Fails every waiting request: the node is stopping.
    pub fn shut_down(&mut self) {
        let waiting: Vec<RequestId> = std::mem::take(&mut self.proposals)
            .into_values()
            .map(|(_, id)| id)
            .chain(
                std::mem::take(&mut self.reads)
                    .into_values()
                    .filter_map(|p| p.waiter.local_id()),
            )
            .chain(
                std::mem::take(&mut self.indexed)
                    .into_values()
                    .filter_map(|waiter| waiter.local_id()),
            )
            .chain(
                std::mem::take(&mut self.asked)
                    .into_values()
                    .map(|(_, id)| id),
            )
            .collect();
        for id in waiting {
            self.reply(id, Err(KeyspaceError::stopped()));
        }
    }

    // ---- Around the sync ----

    /// Raft's ready: entries and hard state into `batch`, and a snapshot
    /// to restore into it. Returns whether anything was written (and so
    /// needs a sync). An error means the Raft core failed (storage state it
    /// cannot trust): the driver stops serving and the node is restarted
    /// from storage.
    pub fn before_sync(&mut self, batch: &mut WriteBatch) -> Result<bool, String> {
        if !self.raft.has_ready() {
            return Ok(false);
        }
        let mut output = self.raft.ready(batch).map_err(|e| e.to_string())?;
        for message in std::mem::take(&mut output.messages_now) {
            self.send_raft(message);
        }
        // The contract: a snapshot is restored into the batch that records
        // it, so the log and the state agree after any crash.
        if let Some(snapshot) = &output.snapshot {
            self.state
                .restore(&snapshot.data, batch)
                .map_err(|e| e.to_string())?;
        }
        self.pending = Some(output);
        Ok(!batch.is_empty())
    }

    /// After the sync: the held messages, a snapshot to restore, committed
    /// entries to apply, reads to serve. Returns the batches the driver
    /// writes, in order: one ready can commit tens of thousands of entries,
    /// so their writes are cut between entries into batches of about
    /// [`APPLY_BATCH_OPS`] operations, each ending with the applied index
    /// of its last entry (so every batch leaves a consistent state behind).
    pub fn after_sync(&mut self, now_ms: u64) -> Result<Vec<WriteBatch>, String> {
        let Some(mut output) = self.pending.take() else {
            return Ok(Vec::new());
        };
        for message in std::mem::take(&mut output.messages_after_sync) {
            self.send_raft(message);
        }
        let mut batches = vec![WriteBatch::new()];
        for entry in &output.committed {
            if batches.last().is_some_and(|b| b.len() >= APPLY_BATCH_OPS) {
                batches.push(WriteBatch::new());
            }
            // `batches` is never empty: it starts with one and only grows.
            let batch = batches.last_mut().expect("a batch");
            match &entry.payload {
                CommittedPayload::Normal(data) => {
                    let outcome = self.state.apply(entry.index, data, batch);
                    self.applied(outcome);
                }
                CommittedPayload::Empty => self.state.skip(entry.index, batch),
                CommittedPayload::Membership { changes, outcome } => {
                    self.state.skip(entry.index, batch);
                    self.membership_applied(changes, outcome);
                }
            }
        }
        if let Some(leadership) = &output.leadership {
            let leader = leadership.leader.unwrap_or(0);
            self.leader_changed(leader, leadership.term, now_ms);
        }
        for ready in &output.read_states {
            let waiting = decode_context(self.me, &ready.ctx).and_then(|c| self.reads.remove(&c));
            if let Some(PendingRead { waiter, .. }) = waiting {
                let seq = self.next();
                self.indexed.insert((ready.index, seq), waiter);
            }
        }
        if let Some(batch) = batches.last_mut() {
            self.maybe_compact(batch, output.snapshot_wanted);
        }
        self.serve_reads(now_ms);
        batches.retain(|batch| !batch.is_empty());
        Ok(batches)
    }

    // ---- Outputs ----

    /// The next output to carry out.
    pub fn poll(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- Getters ----

    /// The applied state, for serializable reads.
    pub fn state(&self) -> &StateMachine {
        &self.state
    }

    /// Raft's view of this voter.
    pub fn raft_status(&self) -> RaftStatus {
        self.raft.status()
    }

    /// The known leader (0 if none) and term.
    pub fn leader(&self) -> (u64, u64) {
        (self.leader, self.term)
    }

    /// A response header at the applied revision, with this member's ids.
    pub fn header(&self) -> ResponseHeader {
        let mut header = self.state.header();
        self.fill(&mut header);
        header
    }

    /// A header for a watch progress notification: the applied revision,
    /// lowered to what every watcher here has been sent, so a progress
    /// response never claims a revision some watcher still owes events
    /// below.
    pub fn progress_header(&self) -> ResponseHeader {
        let mut header = self.header();
        if let Some(floor) = self.hub.progress_floor() {
            header.revision = header.revision.min(floor);
        }
        header
    }

    /// Fills a header's cluster, member and term.
    pub fn fill(&self, header: &mut ResponseHeader) {
        header.cluster_id = self.config.cluster_id;
        header.member_id = self.me;
        header.raft_term = self.term.max(self.raft.status().term);
    }

    /// etcd's Maintenance.Status for this member.
    pub fn status(&self) -> StatusResponse {
        let raft = self.raft.status();
        let size = self.state.mvcc().size_bytes() as i64;
        StatusResponse {
            header: Some(self.header()),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            leader: self.leader,
            raft_index: raft.commit,
            raft_term: raft.term,
            raft_applied_index: self.state.applied(),
            errors: self
                .state
                .alarms()
                .iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
                .collect(),
            db_size_in_use: size,
            is_learner: raft.learners.contains(&self.me),
            storage_version: String::new(),
            db_size_quota: self.config.state.quota_bytes as i64,
            downgrade_info: None,
        }
    }

    /// The keyspace's hash up to `revision` (0: the current one).
    pub fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, KeyspaceError> {
        let mvcc = self.state.mvcc();
        let (hash, compact_revision) = mvcc.hash_kv(revision).map_err(ApplyError::from)?;
        Ok(HashKvResponse {
            header: Some(self.header()),
            hash,
            compact_revision,
            hash_revision: if revision == 0 {
                mvcc.revision()
            } else {
                revision
            },
        })
    }

    // ---- Internals ----

    fn propose_command(&mut self, proposal: u64, request: Request) -> bool {
        let command = Command {
            proposal,
            proposer: self.me,
            request: Some(request),
        };
        self.raft.propose(command.encode_to_vec()).is_ok()
    }

    /// The leader's answer to a lease question.
    fn answer(&mut self, question: LeaseQuestion, now_ms: u64) -> Result<LeaseTtl, KeyspaceError> {
        if self.leader != self.me {
            return Err(KeyspaceError::unavailable("etcdserver: not leader"));
        }
        let lessor = self.state.lessor_mut();
        let lease_error = |e: crate::lease::LeaseError| KeyspaceError {
            code: e.code(),
            message: e.etcd_message().to_string(),
        };
        match question {
            LeaseQuestion::Renew(id) => lessor
                .renew(id, now_ms)
                .map(|ttl| LeaseTtl { ttl, granted: ttl })
                .map_err(lease_error),
            LeaseQuestion::TimeToLive(id) => Ok(match lessor.granted_ttl(id) {
                Some(granted) => LeaseTtl {
                    ttl: lessor.remaining_ttl(id, now_ms).unwrap_or(-1),
                    granted,
                },
                None => LeaseTtl {
                    ttl: -1,
                    granted: 0,
                },
            }),
        }
    }

    fn applied(&mut self, outcome: Outcome) {
        if !outcome.events.is_empty() {
            let revision = self.state.mvcc().revision();
            for (id, batch) in self.hub.on_applied(revision, &outcome.events) {
                self.outputs.push_back(Output::Watch { id, batch });
            }
        }
        if outcome.proposer != self.me || outcome.proposal == 0 {
            return;
        }
        if let Some((_, id)) = self.proposals.remove(&outcome.proposal) {
            let result = outcome
                .result
                .map(Reply::Applied)
                .map_err(KeyspaceError::from);
            self.reply(id, result);
        }
    }

    /// Answers the membership change this node proposed, if this is it
    /// (one is in flight at a time, so the ids it names identify it).
    fn membership_applied(&mut self, changes: &[MembershipChange], outcome: &ConfChangeOutcome) {
        let ours =
            matches!(&self.membership_change, Some((_, _, ids)) if *ids == changed_ids(changes));
        if !ours {
            return;
        }
        let Some((_, id, _)) = self.membership_change.take() else {
            return;
        };
        let result = match outcome {
            ConfChangeOutcome::Applied(membership) => Ok(Reply::Membership(membership.clone())),
            ConfChangeOutcome::Rejected(reason) => Err(KeyspaceError {
                code: 9,
                message: format!("etcdserver: membership change rejected: {reason}"),
            }),
        };
        self.reply(id, result);
    }

    fn leader_changed(&mut self, leader: u64, term: u64, now_ms: u64) {
        let was_leader = self.leader == self.me;
        self.leader = leader;
        self.term = term;
        if leader != 0 {
            self.release_leaderless();
        }
        if leader == self.me && !was_leader {
            // etcd extends every lease by an election timeout on promotion,
            // so none expires because the leader changed.
            let extend = self.config.election_timeout_ms;
            self.state.lessor_mut().promote(now_ms, extend);
        } else if leader != self.me && was_leader {
            self.state.lessor_mut().demote();
        }
    }

    /// Hands Raft what waited for a leader. A request that timed out
    /// meanwhile was answered already and is skipped.
    fn release_leaderless(&mut self) {
        for waiting in std::mem::take(&mut self.leaderless) {
            match waiting {
                Leaderless::Propose(proposal, request) => {
                    if !self.proposals.contains_key(&proposal) {
                        continue;
                    }
                    if !self.propose_command(proposal, request)
                        && let Some((_, id)) = self.proposals.remove(&proposal)
                    {
                        self.reply(id, Err(KeyspaceError::no_leader()));
                    }
                }
                Leaderless::Read(context) => {
                    if !self.reads.contains_key(&context) {
                        continue;
                    }
                    if let Err(error) = self.raft.read_index(self.read_context(context))
                        && let Some(PendingRead { waiter, .. }) = self.reads.remove(&context)
                    {
                        let error = KeyspaceError::unavailable(&format!("etcdserver: {error}"));
                        self.fail(waiter, error);
                    }
                }
            }
        }
    }

    /// Asks again for the read index of every read waiting longer than
    /// [`READ_INDEX_RETRY_MS`]: raft-rs drops a ReadIndex silently when
    /// the leader has not yet committed an entry of its term, or when the
    /// forwarded request or the leader's heartbeats were lost, so a read
    /// asked once could wait until its deadline. Asking twice is harmless:
    /// the leader ignores a context it already holds, and the second
    /// answer finds the read gone.
    fn retry_reads(&mut self, now_ms: u64) {
        if self.leader == 0 {
            return;
        }
        let due: Vec<u64> = self
            .reads
            .iter_mut()
            .filter(|(_, pending)| now_ms >= pending.asked_ms + READ_INDEX_RETRY_MS)
            .map(|(context, pending)| {
                pending.asked_ms = now_ms;
                *context
            })
            .collect();
        for context in due {
            if let Err(error) = self.raft.read_index(self.read_context(context))
                && let Some(PendingRead { waiter, .. }) = self.reads.remove(&context)
            {
                let error = KeyspaceError::unavailable(&format!("etcdserver: {error}"));
                self.fail(waiter, error);
            }
        }
    }

    fn serve_reads(&mut self, now_ms: u64) {
        let applied = self.state.applied();
        while let Some(entry) = self.indexed.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let (id, read) = match entry.remove() {
                Confirmed::Read(id, read) => (id, read),
                Confirmed::Lease(asker, question) => {
                    let answer = self.answer(question, now_ms);
                    match asker {
                        Asker::Local(id) => self.reply(id, answer.map(Reply::Lease)),
                        Asker::Peer { node, id } => self.send(node, &Wire::Answer { id, answer }),
                    }
                    continue;
                }
            };
            let result = match read {
                Read::Range(request) => self.state.range(&request).map(Reply::Range),
                Read::Txn(request) => self.state.read_txn(&request).map(Reply::Txn),
            };
            self.reply(id, result.map_err(KeyspaceError::from));
        }
    }

    /// Compacts the log every `snapshot_count` applied entries (or every
    /// [`TRIM_STEP_ENTRIES`], if fewer), and snapshots the state when a
    /// lagging follower needs a snapshot the core does not hold (after a
    /// restart or a compaction it holds none). The snapshot is built only
    /// then: serialising the whole state at every compaction point stalled
    /// the loop for seconds on a large keyspace, and held a second copy of
    /// it in memory.
    fn maybe_compact(&mut self, batch: &mut WriteBatch, wanted: bool) {
        let applied = self.state.applied();
        let step = self.config.snapshot_count.min(TRIM_STEP_ENTRIES);
        let due = applied >= self.last_snapshot + step;
        if !wanted && !due {
            return;
        }
        let compacted = match wanted {
            true => self.raft.compact(applied, self.state.snapshot(), batch),
            false => self.raft.trim(applied, batch),
        };
        if let Err(error) = compacted {
            // Compaction only trims the log; a failed one leaves it
            // whole and is retried at the next compaction point.
            self.outputs.push_back(Output::Trouble(error.to_string()));
        }
        self.last_snapshot = applied;
    }

    fn send_raft(&mut self, message: OutboundMessage) {
        if message.is_snapshot {
            // The transport gives no delivery receipt; reporting the send
            // lets raft-rs resume replicating, and a lost snapshot shows up
            // as a rejected append, after which the leader sends another.
            self.raft.report_snapshot(message.to, true);
        }
        self.send(message.to, &Wire::Raft(message.bytes));
    }

    /// Answers every request past its deadline with "request timed out".
    fn expire(&mut self, now_ms: u64) {
        let mut late = Vec::new();
        self.proposals.retain(|_, (deadline, id)| {
            let keep = *deadline > now_ms;
            if !keep {
                late.push(*id);
            }
            keep
        });
        self.reads.retain(|_, pending| {
            let keep = pending.deadline_ms > now_ms;
            if !keep {
                // A peer's question is timed out by the peer.
                late.extend(pending.waiter.local_id());
            }
            keep
        });
        self.asked.retain(|_, (deadline, id)| {
            let keep = *deadline > now_ms;
            if !keep {
                late.push(*id);
            }
            keep
        });
        if let Some((deadline, id, _)) = &self.membership_change
            && *deadline <= now_ms
        {
            late.push(*id);
            self.membership_change = None;
        }
        for id in late {
            self.reply(id, Err(KeyspaceError::timed_out()));
        }
        let (proposals, reads) = (&self.proposals, &self.reads);
        self.leaderless.retain(|waiting| match waiting {
            Leaderless::Propose(proposal, _) => proposals.contains_key(proposal),
            Leaderless::Read(context) => reads.contains_key(context),
        });
    }

    fn reply(&mut self, id: RequestId, result: Result<Reply, KeyspaceError>) {
        let result = result.map(|reply| self.stamped(reply));
        self.outputs.push_back(Output::Reply { id, result });
    }

    /// Fills the ids and term into a reply's header.
    fn stamped(&self, reply: Reply) -> Reply {
        let mut reply = reply;
        let header = match &mut reply {
            Reply::Applied(response) => response.header_mut(),
            Reply::Range(response) => &mut response.header,
            Reply::Txn(response) => &mut response.header,
            Reply::Lease(_) | Reply::Membership(_) => return reply,
        };
        self.fill(header.get_or_insert_with(ResponseHeader::default));
        reply
    }

    fn send(&mut self, to: u64, wire: &Wire) {
        let bytes = calm_types::codec::encode(wire);
        self.outputs.push_back(Output::Send { to, bytes });
    }

    /// A ReadIndex context unique in the cluster: raft-rs drops a read
    /// whose context is already pending at the leader, so contexts from
    /// different nodes must never collide (this node's id, then its
    /// sequence number).
    fn read_context(&self, seq: u64) -> Vec<u8> {
        [self.me.to_be_bytes(), seq.to_be_bytes()].concat()
    }

    fn next(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// The member ids a change names, sorted (a promotion comes back from Raft
/// as an added voter, so only ids are compared).
fn changed_ids(changes: &[MembershipChange]) -> Vec<u64> {
    let mut ids: Vec<u64> = changes
        .iter()
        .map(|change| match *change {
            MembershipChange::AddVoter(id)
            | MembershipChange::AddLearner(id)
            | MembershipChange::PromoteLearner(id)
            | MembershipChange::Remove(id) => id,
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// How long a linearizable read waits for its read index before it asks
/// again (etcd's `readIndexRetryTime`).
const READ_INDEX_RETRY_MS: u64 = 500;

/// A request waiting for its read index.
struct PendingRead {
    /// When it fails with a timeout.
    deadline_ms: u64,
    /// When its read index was last asked for.
    asked_ms: u64,
    waiter: Confirmed,
}

impl PendingRead {
    fn new(deadline_ms: u64, now_ms: u64, waiter: Confirmed) -> PendingRead {
        PendingRead {
            deadline_ms,
            asked_ms: now_ms,
            waiter,
        }
    }
}

/// What waits for a ReadIndex round: a linearizable read, or a lease
/// question on the leader. A lease renewal is confirmed too: a leader that
/// was paused or cut off past an election, and does not know it yet, must
/// not extend a lease that the new leader will expire on its own clock
/// (found by calm-sim's lease checker; etcd answers at once).
enum Confirmed {
    Read(RequestId, Read),
    Lease(Asker, LeaseQuestion),
}

/// Who asked a lease question: a client of this node, or a follower that
/// forwarded its client's (answered with `Wire::Answer`).
enum Asker {
    Local(RequestId),
    Peer { node: u64, id: u64 },
}

impl Confirmed {
    /// The request of this node's own client, if it is one.
    fn local_id(&self) -> Option<RequestId> {
        match self {
            Confirmed::Read(id, _) | Confirmed::Lease(Asker::Local(id), _) => Some(*id),
            Confirmed::Lease(Asker::Peer { .. }, _) => None,
        }
    }
}

/// Proposal and read numbers of one start of a node begin at its
/// incarnation shifted by this: 2^40 numbers per start.
const INCARNATION_SHIFT: u32 = 40;

const INCARNATION_KEY: &[u8] = b"incarnation";

/// Counts this start of the node, stored in `batch` (which the driver
/// syncs before anything leaves): proposal numbers must never repeat
/// across restarts, or a committed entry of an earlier start replayed
/// now would answer a new request with its old outcome.
fn next_incarnation(view: &impl ReadView, batch: &mut WriteBatch) -> Result<u64, OpenError> {
    let previous = match view.get(STATE_KEYSPACE, INCARNATION_KEY)? {
        None => 0,
        Some(bytes) => u64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| OpenError::Invalid("stored incarnation is not 8 bytes".into()))?,
        ),
    };
    let incarnation = previous + 1;
    if incarnation >= 1 << (64 - INCARNATION_SHIFT) {
        return Err(OpenError::Invalid("incarnations exhausted".into()));
    }
    batch.put(STATE_KEYSPACE, INCARNATION_KEY, incarnation.to_be_bytes());
    Ok(incarnation)
}

/// This node's sequence number in a read context this node made, or
/// `None` for another node's (or a malformed) context.
fn decode_context(me: u64, context: &[u8]) -> Option<u64> {
    let (node, seq) = context.split_at_checked(8)?;
    if u64::from_be_bytes(node.try_into().ok()?) != me {
        return None;
    }
    Some(u64::from_be_bytes(seq.try_into().ok()?))
}

fn alarm_name(alarm: i32) -> &'static str {
    match alarm {
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "NONE",
    }
}
