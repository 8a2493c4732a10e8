//! The Raft core: raft-rs's `RawNode` over the durable [`RaftLog`], driven without I/O, with one
//! plain [`Output`] per [`RaftCore::ready`] that says what to persist, send and apply.

use calm_storage::{ReadView, WriteBatch};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use thiserror::Error;

use crate::log::{BOOTSTRAP_INDEX, BOOTSTRAP_TERM, LogError, LogPosition, Membership, RaftLog};

/// Why a call into the core failed. Unless a variant says otherwise, the core's state is
/// unchanged and the call may be retried.
#[derive(Debug, Error)]
pub enum RaftError {
    /// The configuration breaks a bound (see [`RaftConfig::validate`]). No core was created.
    #[error("invalid raft configuration: {0}")]
    InvalidConfig(String),
    /// The initial voters are unusable: empty, holding id 0 or a duplicate, or missing this node.
    /// No core was created and nothing was written.
    #[error("invalid bootstrap voters: {0}")]
    InvalidBootstrap(String),
    /// The durable log could not be loaded (by `open`: no core was created) or a compaction
    /// index was out of range (by `compact`: nothing changed).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The bytes given to [`RaftCore::step`] are not a Raft message.
    #[error("malformed raft message: {0}")]
    MalformedMessage(String),
    /// The message decoded but was refused before reaching raft-rs: it names another sender or
    /// recipient, or carries fields no correct peer sends (raft-rs would panic on some).
    #[error("refused raft message from {from}: {reason}")]
    InvalidMessage {
        /// The peer the transport says sent it.
        from: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A response from a node that is not in the configuration (normal just after it was
    /// removed).
    #[error("message from {0}, which is not in the configuration")]
    UnknownPeer(u64),
    /// The request needs a leader and none is known (an election is under way): retry later,
    /// at `leader` if one is named.
    #[error("not the leader; leader is {leader:?}")]
    NotLeader {
        /// The leader, if this node knows one.
        leader: Option<u64>,
    },
    /// The leader refused the proposal: a leadership transfer is in progress, the uncommitted
    /// entries exceed [`RaftConfig::uncommitted_bytes_max`], or this node was removed. From
    /// [`RaftCore::step`]: this leader dropped a proposal another node forwarded.
    #[error("proposal dropped")]
    ProposalDropped,
    /// The proposal is empty (an empty entry is indistinguishable from a leader's no-op).
    #[error("empty proposal")]
    EmptyProposal,
    /// The proposal is larger than [`RaftConfig::entry_bytes_max`].
    #[error("proposal of {bytes} bytes exceeds the bound of {bytes_max}")]
    ProposalTooLarge {
        /// The proposal's size.
        bytes: usize,
        /// The bound it broke.
        bytes_max: usize,
    },
    /// The membership change does not apply to the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(String),
    /// An earlier membership change has not been applied yet, or the joint configuration it
    /// entered has not been left yet; retry after it has.
    #[error("a membership change is already in progress")]
    MembershipChangePending,
    /// A read-index request with an empty context (raft-rs matches acknowledgements by
    /// context, and an empty one never completes).
    #[error("read index context must not be empty")]
    EmptyReadContext,
    /// More read-index requests are waiting than [`RaftConfig::pending_reads_max`].
    #[error("{pending_reads_max} read-index requests already pending")]
    TooManyPendingReads {
        /// The bound.
        pending_reads_max: usize,
    },
    /// The leader has not committed an entry in its term yet, so it cannot know the commit
    /// index (Raft §6.4); retry shortly.
    #[error("leader not ready to serve reads yet")]
    ReadNotReady,
    /// A leadership transfer to a node that is not a voter.
    #[error("cannot transfer leadership to {0}: not a voter")]
    InvalidTransfer(u64),
    /// An earlier `ready` failed half way; the core's state no longer matches its storage.
    /// Drop it and [`RaftCore::open`] again from what was synced.
    #[error("the raft core failed earlier and must be reopened from storage")]
    Failed,
}

/// Settings of one Raft node. Pre-vote and check-quorum are always on: pre-vote so a node
/// returning from a partition cannot disrupt the cluster with a higher term (Raft thesis
/// §9.6), check-quorum so a leader cut off from a majority steps down within an election
/// timeout (which is also what makes lease reads sound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// This node's id; non-zero and unique in the cluster.
    pub id: u64,
    /// Ticks without hearing from a leader before a follower campaigns; each node draws its
    /// timeout from `election_tick .. 2 * election_tick`.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats; below `election_tick`.
    pub heartbeat_tick: usize,
    /// Soft bound on the entry bytes of one append message.
    pub append_bytes_max: u64,
    /// Most append messages in flight to one follower.
    pub inflight_appends_max: usize,
    /// Most bytes of proposed, uncommitted entries a leader accepts before dropping proposals.
    pub uncommitted_bytes_max: u64,
    /// Most bytes of committed entries one [`Output`] carries (the rest follow in the next).
    pub committed_bytes_per_ready_max: u64,
    /// Largest proposal, in bytes. Must leave room under the storage engine's value bound.
    pub entry_bytes_max: usize,
    /// Most read-index requests a leader holds while it confirms its leadership.
    pub pending_reads_max: usize,
    /// Serve read-index requests from the leader's lease (no heartbeat round; relies on
    /// bounded clock drift between ticks) instead of confirming leadership with a quorum.
    pub lease_reads: bool,
    /// Entries kept below a compaction point, so that slightly lagging followers catch up from
    /// the log rather than by snapshot (etcd keeps 5,000).
    pub compaction_keep_entries: u64,
    /// Seed of the generator that spreads election timeouts. Production drivers pass OS
    /// randomness; simulations pass a seed so a run replays exactly.
    pub election_seed: u64,
}

impl RaftConfig {
    /// A configuration for node `id` with calm's defaults: elections after 10 ticks,
    /// heartbeats every tick, 1 MiB append messages, 256 in flight, 1.5 MiB proposals (etcd's
    /// request bound), quorum-confirmed reads.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            append_bytes_max: 1024 * 1024,
            inflight_appends_max: 256,
            uncommitted_bytes_max: 64 * 1024 * 1024,
            committed_bytes_per_ready_max: 8 * 1024 * 1024,
            entry_bytes_max: 1536 * 1024,
            pending_reads_max: 10_000,
            lease_reads: false,
            compaction_keep_entries: 5_000,
            election_seed: id,
        }
    }

    /// Checks every bound; raft-rs's own checks included.
    pub fn validate(&self) -> Result<(), RaftError> {
        let invalid = |reason: &str| Err(RaftError::InvalidConfig(reason.to_owned()));
        if self.entry_bytes_max == 0 {
            return invalid("entry_bytes_max must be positive");
        }
        if self.pending_reads_max == 0 {
            return invalid("pending_reads_max must be positive");
        }
        if self.committed_bytes_per_ready_max == 0 {
            return invalid("committed_bytes_per_ready_max must be positive");
        }
        if self.election_tick > usize::MAX / 2 {
            return invalid("election_tick is too large");
        }
        // raft-rs checks this against the half of the bound it is given; a whole append must
        // fit, batched proposals included.
        if self.uncommitted_bytes_max < self.append_bytes_max {
            return invalid("uncommitted_bytes_max must be at least append_bytes_max");
        }
        self.to_raft(0)
            .validate()
            .map_err(|e| RaftError::InvalidConfig(e.to_string()))
    }

    fn to_raft(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            // Half the bound for raft-rs's own appends, the other half for the proposals it
            // batches into them (see `RaftCore::propose`).
            max_size_per_msg: self.append_bytes_max / 2,
            max_inflight_msgs: self.inflight_appends_max,
            batch_append: true,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: self.election_tick,
            max_election_tick: 2 * self.election_tick,
            read_only_option: if self.lease_reads {
                ReadOnlyOption::LeaseBased
            } else {
                ReadOnlyOption::Safe
            },
            max_uncommitted_size: self.uncommitted_bytes_max,
            max_committed_size_per_ready: self.committed_bytes_per_ready_max,
            ..raft::Config::default()
        }
    }
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election before starting one (pre-vote).
    PreCandidate,
    /// Campaigns for leadership.
    Candidate,
    /// Leads the term.
    Leader,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Self {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// One change to the cluster's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a new voter.
    AddVoter(u64),
    /// Adds a learner (it receives the log but does not vote), or demotes a voter.
    AddLearner(u64),
    /// Makes a learner a voter. Reported back as [`MembershipChange::AddVoter`], which is how
    /// Raft encodes it.
    PromoteLearner(u64),
    /// Removes a voter or learner.
    Remove(u64),
}

impl MembershipChange {
    fn node(self) -> u64 {
        match self {
            Self::AddVoter(id) | Self::AddLearner(id) | Self::PromoteLearner(id) => id,
            Self::Remove(id) => id,
        }
    }

    fn to_single(self) -> ConfChangeSingle {
        let kind = match self {
            Self::AddVoter(_) | Self::PromoteLearner(_) => ConfChangeType::AddNode,
            Self::AddLearner(_) => ConfChangeType::AddLearnerNode,
            Self::Remove(_) => ConfChangeType::RemoveNode,
        };
        crate::log::conf_change_single(self.node(), kind)
    }

    fn from_single(single: &ConfChangeSingle) -> Self {
        match single.get_change_type() {
            ConfChangeType::AddNode => Self::AddVoter(single.node_id),
            ConfChangeType::AddLearnerNode => Self::AddLearner(single.node_id),
            ConfChangeType::RemoveNode => Self::Remove(single.node_id),
        }
    }
}

/// What applying a committed membership change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeOutcome {
    /// The change took effect; the resulting membership is persisted in the same batch.
    Applied(Membership),
    /// The change did not apply to the configuration it met (every node refuses it the same
    /// way, so the cluster stays consistent); the membership is unchanged.
    Rejected(String),
}

/// What a committed entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommittedPayload {
    /// Nothing to apply: the no-op a new leader appends (Raft §8), or a membership change
    /// raft-rs refused to propose. The applied index still advances past it.
    Empty,
    /// A proposal's data, to apply to the state machine.
    Normal(Vec<u8>),
    /// A membership change the core has already applied to Raft. `changes` is empty for the
    /// automatic step out of a joint configuration.
    Membership {
        /// The changes, in proposal order.
        changes: Vec<MembershipChange>,
        /// What applying them did.
        outcome: ConfChangeOutcome,
    },
}

/// One committed log entry, delivered once in index order (again after a restart, from the
/// state machine's applied index on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedEntry {
    /// The entry's index: the state machine's applied index after applying it.
    pub index: u64,
    /// The term it was proposed in.
    pub term: u64,
    /// What it carries.
    pub payload: CommittedPayload,
}

/// A snapshot from the leader that replaces the state machine's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotToRestore {
    /// The index the snapshot was taken at: the state machine's applied index after restoring.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The state machine's state, as the leader's driver passed it to [`RaftCore::compact`].
    pub data: Vec<u8>,
    /// The membership as of `index`.
    pub membership: Membership,
}

/// A read-index request that is ready: once the state machine has applied `index`, a read
/// for `ctx` observes every write committed before the request was made (linearizable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReady {
    /// The context passed to [`RaftCore::read_index`].
    pub ctx: Vec<u8>,
    /// The commit index the read must wait for.
    pub index: u64,
}

/// A change of leader or of this node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// The leader this node now follows (itself when leading), if known.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// This node's role.
    pub role: Role,
}

/// An encoded Raft message for a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The recipient.
    pub to: u64,
    /// The message, for the recipient's [`RaftCore::step`].
    pub bytes: Vec<u8>,
    /// Whether it carries a snapshot: the driver must then call [`RaftCore::report_snapshot`]
    /// once the transport knows whether it arrived.
    pub is_snapshot: bool,
}

/// Everything one [`RaftCore::ready`] asks of the driver.
///
/// # Driver contract
///
/// 1. `let out = core.ready(&mut batch)?;` with a fresh (or still unwritten) batch.
/// 2. `messages_now` may be sent at once, before the batch is durable (a leader's appends go
///    out in parallel with its own write, Raft thesis §10.2.1).
/// 3. If `snapshot` is set, restore the state machine from it and write that restore into the
///    same `batch` (or into a batch written before it), so that a crash never leaves the log
///    compacted past a state machine that lacks the snapshot.
/// 4. Write `batch` and sync it: **one sync per ready**.
/// 5. Only then send `messages_after_sync` (votes and append acknowledgements promise that the
///    batch is durable), apply `committed` in order (each entry's index becomes the applied
///    index; a snapshot in step 3 comes first), and answer `read_states` once the applied
///    index reaches theirs.
/// 6. If `snapshot_wanted`, build a snapshot of the state machine and pass it to
///    [`RaftCore::compact`].
/// 7. Do not call `ready` again before step 4 has completed: the core counts this batch as
///    persisted, and the next `Output`'s messages may say so.
/// 8. For every message with `is_snapshot`, call [`RaftCore::report_snapshot`] once the
///    transport knows whether it arrived; for a message that could not be sent at all,
///    [`RaftCore::report_unreachable`].
///
/// Inputs (`tick`, `step`, `propose`, ...) may be called at any time between readies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Messages that may leave before the batch is synced.
    pub messages_now: Vec<OutboundMessage>,
    /// Messages that may leave only after the batch is synced.
    pub messages_after_sync: Vec<OutboundMessage>,
    /// Committed entries to apply after the sync, in index order.
    pub committed: Vec<CommittedEntry>,
    /// A snapshot to restore before applying `committed`.
    pub snapshot: Option<SnapshotToRestore>,
    /// Read-index requests whose read index is now known.
    pub read_states: Vec<ReadReady>,
    /// Set when the leader or this node's role changed since the previous `Output`.
    pub leadership: Option<Leadership>,
    /// A follower needs a snapshot and the core holds none recent enough: call
    /// [`RaftCore::compact`] with a fresh one.
    pub snapshot_wanted: bool,
}

/// A node's view of the cluster, for operators and drivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub id: u64,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit: u64,
    /// The highest index delivered to the driver in an [`Output`].
    pub applied: u64,
    /// The last index of the log.
    pub last_index: u64,
    /// This node's role.
    pub role: Role,
    /// Voters (of the incoming configuration while joint).
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration; non-empty only in joint consensus.
    pub voters_outgoing: Vec<u64>,
}

/// One Raft replica as a sans-IO state machine: raft-rs's `RawNode` over a [`RaftLog`].
///
/// # Methods
///
/// - Constructors: [`bootstrap`](Self::bootstrap) (a new cluster),
///   [`open`](Self::open) (a restart, or an empty node joining a running cluster).
/// - Inputs: [`tick`](Self::tick), [`step`](Self::step), [`propose`](Self::propose),
///   [`propose_membership_change`](Self::propose_membership_change),
///   [`read_index`](Self::read_index), [`transfer_leader`](Self::transfer_leader),
///   [`campaign`](Self::campaign), [`report_unreachable`](Self::report_unreachable),
///   [`report_snapshot`](Self::report_snapshot), [`compact`](Self::compact).
/// - Output: [`has_ready`](Self::has_ready), then [`ready`](Self::ready), whose [`Output`]
///   documents the driver contract (persist, sync, then send and apply).
/// - Getters: [`status`](Self::status), [`id`](Self::id).
///
/// Inputs only change memory; nothing they cause leaves the core except through `ready`.
/// Time is `tick` (the driver calls it every tick interval); the election jitter comes from
/// [`RaftConfig::election_seed`], so a simulation replays exactly.
pub struct RaftCore {
    node: RawNode<RaftLog>,
    config: RaftConfig,
    /// The leader and role the last `Output` reported.
    reported: (u64, StateRole),
    jitter: ElectionJitter,
    failed: bool,
    /// Entry bytes proposed since the last `ready` that raft-rs was allowed to batch into the
    /// append messages already waiting (see [`propose`](Self::propose)).
    batched_bytes: u64,
    /// A follower's proposals since the last `ready`, forwarded to the leader together then.
    forwarding: Vec<Entry>,
    /// Their data bytes.
    forwarding_bytes: u64,
}

impl std::fmt::Debug for RaftCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCore")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl RaftCore {
    /// Creates node `config.id` of a new cluster whose voters are `voters`, writing its initial
    /// state into `batch`. Every voter bootstraps with the same `voters`; nodes added later
    /// start with [`open`](Self::open) on empty storage instead. Call on empty storage only.
    ///
    /// The log starts after [`BOOTSTRAP_INDEX`], which holds the initial membership and nothing
    /// to apply: the state machine starts empty with that applied index, and the first entry
    /// delivered is `BOOTSTRAP_INDEX + 1`.
    pub fn bootstrap(
        config: RaftConfig,
        voters: &[u64],
        batch: &mut WriteBatch,
    ) -> Result<Self, RaftError> {
        config.validate()?;
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let invalid = |reason: &str| Err(RaftError::InvalidBootstrap(reason.to_owned()));
        if sorted.is_empty() || sorted.len() != voters.len() || sorted[0] == 0 {
            return invalid("voters must be non-empty, non-zero and distinct");
        }
        if !sorted.contains(&config.id) {
            return invalid("a bootstrapping node must be one of the voters");
        }
        let membership = Membership {
            voters: sorted,
            ..Membership::default()
        };
        let log = RaftLog::bootstrap(membership, batch);
        Self::with_log(config, log, BOOTSTRAP_INDEX)
    }

    /// Restarts a node from what its earlier batches wrote to `view`. `applied` is the state
    /// machine's durable applied index: committed entries after it are delivered again. On
    /// empty storage this creates a node that joins a running cluster (add it as a learner or
    /// voter first; the leader sends it a snapshot).
    pub fn open(config: RaftConfig, view: &impl ReadView, applied: u64) -> Result<Self, RaftError> {
        config.validate()?;
        let mut log = RaftLog::load(view)?;
        // The bootstrap point holds nothing to apply, so an empty state machine that never
        // recorded it is at it.
        let bootstrap = LogPosition {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
        };
        let applied = if log.compaction() == bootstrap {
            applied.max(BOOTSTRAP_INDEX)
        } else {
            applied
        };
        log.rewind_membership_to(applied)?;
        Self::with_log(config, log, applied)
    }

    /// Whether `view` holds a Raft log (then [`open`](Self::open) it; otherwise bootstrap or
    /// join).
    pub fn has_state(view: &impl ReadView) -> Result<bool, RaftError> {
        Ok(RaftLog::exists(view)?)
    }

    fn with_log(config: RaftConfig, log: RaftLog, applied: u64) -> Result<Self, RaftError> {
        // raft-rs logs through slog; calm's drivers log through tracing, so drop its records.
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config.to_raft(applied), log, &logger)
            .map_err(|e| RaftError::InvalidConfig(e.to_string()))?;
        let mut core = Self {
            reported: (0, StateRole::Follower),
            jitter: ElectionJitter::new(config.election_seed, config.id),
            node,
            config,
            failed: false,
            batched_bytes: 0,
            forwarding: Vec::new(),
            forwarding_bytes: 0,
        };
        core.after_input();
        Ok(core)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// Advances logical time by one tick: followers count towards an election, leaders
    /// towards a heartbeat and the check-quorum deadline.
    pub fn tick(&mut self) {
        if self.failed {
            return;
        }
        self.node.tick();
        self.after_input();
    }

    /// Starts an election now instead of waiting for the timeout (a planned start-up, tests).
    pub fn campaign(&mut self) -> Result<(), RaftError> {
        self.check_usable()?;
        // Errors only for a message raft-rs refuses, which a campaign is not.
        let _ = self.node.campaign();
        self.after_input();
        Ok(())
    }

    /// Handles a message `from` a peer, as the transport received it.
    ///
    /// Garbage, a message naming another sender or recipient, and messages whose fields no
    /// correct peer sends are refused with an error and change nothing; raft-rs itself ignores
    /// stale and unexpected messages.
    pub fn step(&mut self, from: u64, bytes: &[u8]) -> Result<(), RaftError> {
        self.check_usable()?;
        let message = Message::parse_from_bytes(bytes)
            .map_err(|e| RaftError::MalformedMessage(e.to_string()))?;
        self.check_message(from, &message)
            .map_err(|reason| RaftError::InvalidMessage { from, reason })?;
        if self.is_stale_transfer(&message) {
            return Ok(());
        }
        // Forwarded reads join the leader's queue too, so they count against its bound.
        let raft = &self.node.raft;
        if message.get_msg_type() == MessageType::MsgReadIndex
            && raft.state == StateRole::Leader
            && raft.pending_read_count() >= self.config.pending_reads_max
        {
            return Err(RaftError::TooManyPendingReads {
                pending_reads_max: self.config.pending_reads_max,
            });
        }
        if message.get_msg_type() == MessageType::MsgPropose {
            let bytes = message.entries.iter().map(|e| e.data.len() as u64).sum();
            self.batch_if_room(bytes);
        }
        let result = self.node.step(message);
        self.after_input();
        match result {
            Ok(()) => Ok(()),
            Err(raft::Error::StepPeerNotFound) => Err(RaftError::UnknownPeer(from)),
            Err(raft::Error::ProposalDropped) => Err(RaftError::ProposalDropped),
            Err(_) => Err(RaftError::InvalidMessage {
                from,
                reason: "refused by raft",
            }),
        }
    }

    /// Proposes `data` as a new log entry. At a follower the proposal is forwarded to the
    /// leader; either way `Ok` only means it was accepted for replication, not that it will
    /// commit (a leader change can drop it): the driver matches committed entries to its
    /// proposals and times out the rest.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        self.check_usable()?;
        if data.is_empty() {
            return Err(RaftError::EmptyProposal);
        }
        if data.len() > self.config.entry_bytes_max {
            return Err(RaftError::ProposalTooLarge {
                bytes: data.len(),
                bytes_max: self.config.entry_bytes_max,
            });
        }
        let bytes = data.len() as u64;
        let raft = &self.node.raft;
        if raft.state == StateRole::Follower && raft.leader_id != raft::INVALID_ID {
            // raft-rs forwards each proposal as a message of its own; held until the next
            // `ready`, a turn's proposals reach the leader as one message (cut at half an
            // append, which the leader may batch whole into its own appends).
            if self.forwarding_bytes + bytes > self.config.append_bytes_max / 2 {
                self.forward();
            }
            self.forwarding.push(Entry {
                data: data.into(),
                ..Entry::default()
            });
            self.forwarding_bytes += bytes;
            return Ok(());
        }
        self.batch_if_room(bytes);
        let result = self.node.propose(Vec::new(), data);
        self.after_input();
        result.map_err(|e| self.proposal_error(e))
    }

    /// Hands raft-rs the held proposals as one proposal message, which a follower forwards to
    /// its leader whole. Should the follower have lost its leader since they were accepted,
    /// raft-rs drops them, as it drops any proposal it cannot forward, and the driver times
    /// them out.
    fn forward(&mut self) {
        if self.forwarding.is_empty() {
            return;
        }
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgPropose);
        message.from = self.config.id;
        message.set_entries(std::mem::take(&mut self.forwarding).into());
        // Elected since, this node appends them itself, within the batching budget.
        self.batch_if_room(self.forwarding_bytes);
        self.forwarding_bytes = 0;
        // Dropped proposals are the only error a proposal can meet; see above.
        let _ = self.node.raft.step(message);
        self.after_input();
    }

    /// Proposes a membership change. One change is applied directly; several are applied
    /// together through a joint configuration (Raft §6), which the leader leaves automatically
    /// once it is committed. Only one change may be in progress at a time.
    pub fn propose_membership_change(
        &mut self,
        changes: &[MembershipChange],
    ) -> Result<(), RaftError> {
        self.check_usable()?;
        self.check_membership_change(changes)?;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.changes = changes.iter().map(|c| c.to_single()).collect();
        let result = self.node.propose_conf_change(Vec::new(), cc);
        self.after_input();
        result.map_err(|e| self.proposal_error(e))
    }

    /// Asks for a linearizable read point for `ctx` (unique per request; echoed back in
    /// [`Output::read_states`]). The leader confirms its leadership with a quorum (or, with
    /// [`RaftConfig::lease_reads`], trusts its lease); a follower forwards the request. A
    /// request can be lost (leader change, partition): the driver times it out.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), RaftError> {
        self.check_usable()?;
        if ctx.is_empty() {
            return Err(RaftError::EmptyReadContext);
        }
        let raft = &self.node.raft;
        if raft.pending_read_count() >= self.config.pending_reads_max {
            return Err(RaftError::TooManyPendingReads {
                pending_reads_max: self.config.pending_reads_max,
            });
        }
        match raft.state {
            StateRole::Leader if !raft.commit_to_current_term() => {
                return Err(RaftError::ReadNotReady);
            }
            StateRole::Leader => {}
            _ if raft.leader_id == raft::INVALID_ID => {
                return Err(RaftError::NotLeader { leader: None });
            }
            _ => {}
        }
        self.node.read_index(ctx);
        self.after_input();
        Ok(())
    }

    /// Asks the leader to hand leadership to voter `to` (Raft thesis §3.10). Proposals are
    /// dropped while the transfer is under way; it is abandoned after an election timeout.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), RaftError> {
        self.check_usable()?;
        if !self.current_membership().voters.contains(&to) {
            return Err(RaftError::InvalidTransfer(to));
        }
        self.node.transfer_leader(to);
        self.after_input();
        Ok(())
    }

    /// Tells the core that a message to `to` could not be sent, so a leader stops streaming
    /// appends to it optimistically and probes instead.
    pub fn report_unreachable(&mut self, to: u64) {
        if self.failed {
            return;
        }
        self.node.report_unreachable(to);
        self.after_input();
    }

    /// Reports whether the snapshot message sent to `to` arrived. Until it is reported the
    /// leader sends `to` nothing but heartbeats.
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        if self.failed {
            return;
        }
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
        self.after_input();
    }

    /// Compacts the log up to `index - compaction_keep_entries` without a snapshot (see
    /// [`RaftLog::trim`](crate::log::RaftLog::trim)): a follower that later needs one makes
    /// [`Output::snapshot_wanted`] ask for it. The state machine's state at `index` must be
    /// written (in a batch written before `batch`, or in `batch`).
    pub fn trim(&mut self, index: u64, batch: &mut WriteBatch) -> Result<(), RaftError> {
        self.check_usable()?;
        let applied = self.node.raft.raft_log.applied;
        let keep = self.config.compaction_keep_entries;
        self.node.mut_store().trim(index, applied, keep, batch)?;
        Ok(())
    }

    /// Hands the core the state machine's snapshot `snapshot_data`, taken at applied index
    /// `index`: it is kept for followers too far behind to catch up from the log, and the log
    /// is compacted up to `index - compaction_keep_entries`. The state machine's state at
    /// `index` must be written (in a batch written before `batch`, or in `batch`).
    pub fn compact(
        &mut self,
        index: u64,
        snapshot_data: Vec<u8>,
        batch: &mut WriteBatch,
    ) -> Result<(), RaftError> {
        self.check_usable()?;
        let applied = self.node.raft.raft_log.applied;
        let keep = self.config.compaction_keep_entries;
        self.node
            .mut_store()
            .compact(index, applied, snapshot_data, keep, batch)?;
        Ok(())
    }

    /// Whether [`ready`](Self::ready) has anything to hand out.
    pub fn has_ready(&self) -> bool {
        !self.failed
            && (!self.forwarding.is_empty()
                || self.node.has_ready()
                || self.leadership_changed()
                || self.node.store().is_snapshot_wanted())
    }

    /// Collects what the driver must persist, send and apply; see [`Output`] for the contract.
    /// Log changes go into `batch`. An error means the core's memory and `batch` disagree: the
    /// core refuses further calls ([`RaftError::Failed`]) and must be reopened from storage.
    pub fn ready(&mut self, batch: &mut WriteBatch) -> Result<Output, RaftError> {
        self.check_usable()?;
        self.forward();
        // The waiting messages leave with this output: batching starts afresh.
        self.batched_bytes = 0;
        let mut out = Output::default();
        if self.node.has_ready()
            && let Err(e) = self.process_ready(batch, &mut out)
        {
            self.failed = true;
            return Err(e);
        }
        out.leadership = self.take_leadership_change();
        out.snapshot_wanted = self.node.store().take_snapshot_wanted();
        Ok(out)
    }

    /// Whether this node leads its term now (cheaper than
    /// [`status`](Self::status), which copies the membership).
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// A snapshot of the node's view of the cluster.
    pub fn status(&self) -> RaftStatus {
        let raft = &self.node.raft;
        let membership = self.current_membership();
        RaftStatus {
            id: raft.id,
            leader: known(raft.leader_id),
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            role: raft.state.into(),
            voters: membership.voters,
            learners: membership.learners,
            voters_outgoing: membership.voters_outgoing,
        }
    }

    fn check_usable(&self) -> Result<(), RaftError> {
        if self.failed {
            return Err(RaftError::Failed);
        }
        Ok(())
    }

    /// The configuration raft-rs is using (the log's membership record may be ahead of it
    /// only between a restart and the replay of committed changes).
    fn current_membership(&self) -> Membership {
        Membership::from_conf_state(&self.node.raft.prs().conf().to_conf_state())
    }

    fn proposal_error(&self, error: raft::Error) -> RaftError {
        let raft = &self.node.raft;
        match error {
            raft::Error::ProposalDropped if raft.state != StateRole::Leader => {
                RaftError::NotLeader {
                    leader: known(raft.leader_id),
                }
            }
            _ => RaftError::ProposalDropped,
        }
    }

    /// Refuses changes that cannot apply to the current configuration, which raft-rs would
    /// otherwise accept and turn into an empty entry (or reject only when applying).
    fn check_membership_change(&self, changes: &[MembershipChange]) -> Result<(), RaftError> {
        let invalid = |reason: String| Err(RaftError::InvalidMembershipChange(reason));
        let mut nodes: Vec<u64> = changes.iter().map(|c| c.node()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if changes.is_empty() || nodes.len() != changes.len() || nodes[0] == 0 {
            return invalid("changes must name distinct, non-zero nodes".to_owned());
        }
        let current = self.current_membership();
        for change in changes {
            match *change {
                MembershipChange::PromoteLearner(id) if !current.learners.contains(&id) => {
                    return invalid(format!("{id} is not a learner"));
                }
                MembershipChange::AddVoter(id) if current.contains(id) => {
                    return invalid(format!("{id} is already a member"));
                }
                MembershipChange::Remove(id) if !current.contains(id) => {
                    return invalid(format!("{id} is not a member"));
                }
                _ => {}
            }
        }
        let raft = &self.node.raft;
        if current.is_joint() || (raft.state == StateRole::Leader && raft.has_pending_conf()) {
            return Err(RaftError::MembershipChangePending);
        }
        let singles: Vec<ConfChangeSingle> = changes.iter().map(|c| c.to_single()).collect();
        let mut changer = raft::Changer::new(raft.prs());
        let checked = if singles.len() == 1 {
            changer.simple(&singles).map(drop)
        } else {
            changer.enter_joint(true, &singles).map(drop)
        };
        checked.map_err(|e| RaftError::InvalidMembershipChange(e.to_string()))
    }

    /// The guards in front of raft-rs: it trusts its peers and panics on some fields a correct
    /// peer never sends (a term-less vote, an empty proposal, a commit index past the log).
    fn check_message(&self, from: u64, m: &Message) -> Result<(), &'static str> {
        if from == raft::INVALID_ID || from == self.config.id {
            return Err("the sender is not a peer");
        }
        // Forwarded requests keep the node they started at as their sender (the proposer, the
        // reader, the transferee) however many hops they took while leadership moved.
        let forwarded = matches!(
            m.get_msg_type(),
            MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgTransferLeader
        );
        if m.from == raft::INVALID_ID || (m.from != from && !forwarded) {
            return Err("the message names another sender");
        }
        if m.to != self.config.id {
            return Err("the message is for another node");
        }
        check_bounds(m)?;
        match m.get_msg_type() {
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum => Err("a local message type"),
            // Forwarded proposals and reads carry no term (raft-rs treats them as local).
            MessageType::MsgPropose => self.check_forwarded_proposal(m),
            MessageType::MsgReadIndex if m.term != 0 || m.entries.len() != 1 => {
                Err("a forwarded read must carry one context and no term")
            }
            MessageType::MsgReadIndex if m.entries[0].data.is_empty() => {
                Err("a forwarded read with an empty context")
            }
            MessageType::MsgReadIndex => Ok(()),
            _ if m.term == 0 => Err("the message has no term"),
            MessageType::MsgAppend => check_append(m),
            MessageType::MsgHeartbeat => self.check_heartbeat(m),
            MessageType::MsgAppendResponse => self.check_append_response(m),
            MessageType::MsgSnapshot => check_snapshot_message(m),
            _ => Ok(()),
        }
    }

    /// A leadership transfer forwarded to this node is only for the leader of its term. Any
    /// other node would forward it again, and raft-rs panics when it sends a transfer that
    /// already carries a term; the request is stale (the leader changed), so it is dropped.
    fn is_stale_transfer(&self, m: &Message) -> bool {
        let raft = &self.node.raft;
        m.get_msg_type() == MessageType::MsgTransferLeader
            && !(raft.state == StateRole::Leader && m.term == raft.term)
    }

    /// A heartbeat that raft-rs acts on (not a stale one, which it only answers) commits at
    /// most what this node acknowledged, never past its log: raft-rs panics otherwise.
    fn check_heartbeat(&self, m: &Message) -> Result<(), &'static str> {
        let raft = &self.node.raft;
        if m.term >= raft.term && m.commit > raft.raft_log.last_index() {
            return Err("a heartbeat commits past the end of the log");
        }
        Ok(())
    }

    /// An acknowledgement this leader acts on covers only entries it sent, all in its log
    /// (raft-rs would commit past its log and panic). calm never asks raft-rs to request
    /// snapshots, so a response asking for one is not from a calm follower.
    fn check_append_response(&self, m: &Message) -> Result<(), &'static str> {
        let raft = &self.node.raft;
        if m.request_snapshot != 0 {
            return Err("calm's followers never request snapshots");
        }
        // A follower's hint is at most the index it rejected; raft-rs adds one to it.
        if m.reject && m.reject_hint > m.index {
            return Err("a rejection hint past the rejected index");
        }
        let acted_on = raft.state == StateRole::Leader && m.term == raft.term;
        if acted_on && !m.reject && m.index > raft.raft_log.last_index() {
            return Err("acknowledges entries past the end of the log");
        }
        Ok(())
    }

    fn check_forwarded_proposal(&self, m: &Message) -> Result<(), &'static str> {
        if m.term != 0 {
            return Err("a forwarded proposal carries a term");
        }
        if m.entries.is_empty() {
            return Err("an empty proposal");
        }
        if m.entries
            .iter()
            .any(|e| e.data.len() > self.config.entry_bytes_max)
        {
            return Err("a proposal above the entry bound");
        }
        Ok(())
    }

    /// Lets raft-rs batch the next proposal of `bytes` (local or forwarded) if there is room.
    ///
    /// With batching, raft-rs adds a proposal's entry to the append message already waiting
    /// for each follower instead of sending one message per proposal: one message, one
    /// follower write and one response per turn rather than per request. It adds without a
    /// bound, so batching stops once this turn's proposals fill half an append (raft-rs's own
    /// appends fill at most the other half), keeping every message within `append_bytes_max`
    /// (plus one entry, as raft-rs's own bound is soft).
    fn batch_if_room(&mut self, bytes: u64) {
        let batch = self.batched_bytes + bytes <= self.config.append_bytes_max / 2;
        self.node.raft.set_batch_append(batch);
        if batch {
            self.batched_bytes += bytes;
        }
    }

    /// Runs after every input: replaces raft-rs's election timeout, drawn from the thread's
    /// random generator on every role or term change, with one from the seeded generator.
    fn after_input(&mut self) {
        let raft = &mut self.node.raft;
        self.jitter.pin(raft, self.config.election_tick);
    }

    fn process_ready(&mut self, batch: &mut WriteBatch, out: &mut Output) -> Result<(), RaftError> {
        let mut rd = self.node.ready();
        out.messages_now = encode_messages(rd.take_messages());
        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot().clone();
            out.snapshot = Some(snapshot_to_restore(&snapshot));
            self.node.mut_store().apply_snapshot(snapshot, batch)?;
        }
        self.node.mut_store().append(rd.entries(), batch)?;
        if let Some(hard_state) = rd.hs() {
            self.node.mut_store().set_hard_state(hard_state, batch);
        }
        out.read_states = rd
            .take_read_states()
            .into_iter()
            .map(|rs| ReadReady {
                ctx: rs.request_ctx,
                index: rs.index,
            })
            .collect();
        out.messages_after_sync = encode_messages(rd.take_persisted_messages());
        let committed = rd.take_committed_entries();
        self.deliver(committed, batch, out);
        // The entries and hard state are in `batch`, which the driver syncs before it acts on
        // anything below (the contract on `Output`), so raft-rs may count them as persisted.
        let mut light = self.node.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit, batch);
        }
        out.messages_after_sync
            .extend(encode_messages(light.take_messages()));
        self.deliver(light.take_committed_entries(), batch, out);
        // Delivered entries count as applied for raft-rs: it only uses the applied index to
        // pace membership changes, which the core applies itself on delivery.
        self.node.advance_apply();
        self.maybe_leave_joint();
        self.after_input();
        Ok(())
    }

    fn deliver(&mut self, entries: Vec<Entry>, batch: &mut WriteBatch, out: &mut Output) {
        for entry in entries {
            let payload = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => CommittedPayload::Empty,
                EntryType::EntryNormal => CommittedPayload::Normal(entry.data.to_vec()),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_membership_change(&entry, batch)
                }
            };
            out.committed.push(CommittedEntry {
                index: entry.index,
                term: entry.term,
                payload,
            });
        }
    }

    /// Applies a committed membership change to raft-rs and records the result. A change that
    /// does not decode or apply is rejected identically on every node, so it is reported, not
    /// fatal.
    fn apply_membership_change(
        &mut self,
        entry: &Entry,
        batch: &mut WriteBatch,
    ) -> CommittedPayload {
        let decoded = match entry.get_entry_type() {
            EntryType::EntryConfChange => ConfChange::parse_from_bytes(&entry.data).map(|v1| {
                // raft-rs's own `ConfChangeI::into_v2`, which its crate does not re-export.
                let single = crate::log::conf_change_single(v1.node_id, v1.get_change_type());
                let mut cc = ConfChangeV2::default();
                cc.changes.push(single);
                cc
            }),
            _ => ConfChangeV2::parse_from_bytes(&entry.data),
        };
        let cc = match decoded {
            Ok(cc) => cc,
            Err(e) => {
                return CommittedPayload::Membership {
                    changes: Vec::new(),
                    outcome: ConfChangeOutcome::Rejected(format!("undecodable: {e}")),
                };
            }
        };
        let changes = cc
            .changes
            .iter()
            .map(MembershipChange::from_single)
            .collect();
        let outcome = match self.node.apply_conf_change(&cc) {
            Ok(conf_state) => {
                let membership = Membership::from_conf_state(&conf_state);
                self.node
                    .mut_store()
                    .record_membership(entry.index, membership.clone(), batch);
                self.step_down_if_removed(&membership);
                ConfChangeOutcome::Applied(membership)
            }
            Err(e) => ConfChangeOutcome::Rejected(e.to_string()),
        };
        CommittedPayload::Membership { changes, outcome }
    }

    /// A leader that is no longer a voter stops leading (raft-rs leaves it leading a
    /// configuration it is not part of, unable to accept proposals); the remaining voters
    /// elect a new leader once its heartbeats stop. The term is kept so that the removed
    /// node's replies cannot depose that new leader.
    fn step_down_if_removed(&mut self, membership: &Membership) {
        let raft = &mut self.node.raft;
        if raft.state == StateRole::Leader && !membership.is_voter(raft.id) {
            let term = raft.term;
            raft.become_follower(term, raft::INVALID_ID);
        }
    }

    /// Leaves a joint configuration if raft-rs has not already arranged to. raft-rs proposes
    /// the leave when the leader applies the entry that entered it; this catches a leader
    /// elected in between, should raft-rs miss it.
    fn maybe_leave_joint(&mut self) {
        let raft = &self.node.raft;
        let conf = raft.prs().conf();
        let joint = !conf.to_conf_state().voters_outgoing.is_empty();
        if raft.state == StateRole::Leader
            && joint
            && *conf.auto_leave()
            && !raft.has_pending_conf()
        {
            // A refusal (a transfer in progress) is retried after the next ready.
            let _ = self
                .node
                .propose_conf_change(Vec::new(), ConfChangeV2::default());
        }
    }

    fn leadership_changed(&self) -> bool {
        (self.node.raft.leader_id, self.node.raft.state) != self.reported
    }

    fn take_leadership_change(&mut self) -> Option<Leadership> {
        if !self.leadership_changed() {
            return None;
        }
        let raft = &self.node.raft;
        self.reported = (raft.leader_id, raft.state);
        Some(Leadership {
            leader: known(raft.leader_id),
            term: raft.term,
            role: raft.state.into(),
        })
    }
}

fn known(id: u64) -> Option<u64> {
    (id != raft::INVALID_ID).then_some(id)
}

/// The largest term or index a message may carry: far beyond any real cluster (2^63
/// elections), and far enough below `u64::MAX` that raft-rs's `term + 1` and `index + 1`
/// cannot overflow.
const TERM_AND_INDEX_MAX: u64 = u64::MAX / 2;

fn check_bounds(m: &Message) -> Result<(), &'static str> {
    let meta = m.get_snapshot().get_metadata();
    let fields = [
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.commit_term,
        m.reject_hint,
        m.request_snapshot,
        meta.index,
        meta.term,
    ];
    let entries = m.entries.iter().flat_map(|e| [e.index, e.term]);
    if fields
        .into_iter()
        .chain(entries)
        .any(|v| v > TERM_AND_INDEX_MAX)
    {
        return Err("a term or index beyond any real cluster");
    }
    Ok(())
}

/// An append's entries must continue from its anchor (`index`, `log_term`) with contiguous
/// indexes and terms that never decrease nor exceed the sender's term; raft-rs assumes so and
/// panics on some violations (a conflict below its commit index).
fn check_append(m: &Message) -> Result<(), &'static str> {
    if m.log_term > m.term {
        return Err("an append anchored at a future term");
    }
    // raft-rs reads the term of an index past its log as 0, so an anchor with term 0 would
    // "match" anywhere; every real entry has a term of at least 1.
    if m.index > 0 && m.log_term == 0 {
        return Err("an append anchored at term 0");
    }
    if m.entries.iter().any(|e| e.term == 0) {
        return Err("an entry without a term");
    }
    let mut previous_term = m.log_term;
    for (offset, entry) in (1u64..).zip(m.entries.iter()) {
        if m.index.checked_add(offset) != Some(entry.index) {
            return Err("append entries are not contiguous");
        }
        if entry.term < previous_term || entry.term > m.term {
            return Err("append entry terms are out of order");
        }
        previous_term = entry.term;
    }
    Ok(())
}

/// A snapshot must name a position and a membership raft-rs can restore (it panics on one it
/// cannot).
fn check_snapshot_message(m: &Message) -> Result<(), &'static str> {
    let meta = m.get_snapshot().get_metadata();
    if meta.index == 0 || meta.term == 0 || meta.term > m.term {
        return Err("a snapshot without a valid position");
    }
    let membership = Membership::from_conf_state(meta.get_conf_state());
    if membership.voters.is_empty() || membership.check_restorable().is_err() {
        return Err("a snapshot with an unusable membership");
    }
    Ok(())
}

fn snapshot_to_restore(snapshot: &Snapshot) -> SnapshotToRestore {
    let meta = snapshot.get_metadata();
    SnapshotToRestore {
        index: meta.index,
        term: meta.term,
        data: snapshot.data.to_vec(),
        membership: Membership::from_conf_state(meta.get_conf_state()),
    }
}

fn encode_messages(messages: Vec<Message>) -> Vec<OutboundMessage> {
    messages
        .into_iter()
        .filter_map(|m| {
            // Encoding fails only for a message over protobuf's 2 GiB bound; dropping it is
            // safe because Raft tolerates lost messages (it retries on the next heartbeat).
            let bytes = m.write_to_bytes().ok()?;
            Some(OutboundMessage {
                to: m.to,
                is_snapshot: m.get_msg_type() == MessageType::MsgSnapshot,
                bytes,
            })
        })
        .collect()
}

/// Draws election timeouts from a seeded generator (SplitMix64: tiny, and statistically good
/// enough to spread timeouts), replacing raft-rs's thread-random draw so that runs replay.
struct ElectionJitter {
    state: u64,
    /// The (term, role) for which the current timeout was drawn: raft-rs draws a new timeout
    /// exactly when one of them changes.
    epoch: Option<(u64, StateRole)>,
    assigned: usize,
}

impl ElectionJitter {
    /// Nodes sharing a seed (a simulation's) still draw different timeouts: the node id is
    /// mixed in, multiplied by the generator's own odd constant.
    fn new(seed: u64, id: u64) -> Self {
        Self {
            state: seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            epoch: None,
            assigned: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pin(&mut self, raft: &mut raft::Raft<RaftLog>, election_tick: usize) {
        let epoch = (raft.term, raft.state);
        if self.epoch == Some(epoch) && raft.randomized_election_timeout() == self.assigned {
            return;
        }
        // `election_tick` is validated to be below `usize::MAX / 2` and positive.
        let spread = self.next() % election_tick as u64;
        let timeout = election_tick + spread as usize;
        raft.set_randomized_election_timeout(timeout);
        self.epoch = Some(epoch);
        self.assigned = timeout;
    }
}

#[cfg(test)]
mod tests {
    //! A deterministic in-memory cluster: each node has a `MemoryEngine`, messages travel
    //! through one queue the test controls, and every random choice comes from a seeded
    //! generator, so a failing seed replays exactly.

    use super::*;
    use calm_storage::{KeyRange, Keyspace, Limits, MemoryEngine, Order, Storage as _};
    use calm_types::codec;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::{RngExt as _, SeedableRng};
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    const SM_ENTRIES: Keyspace = Keyspace::new("test_sm_entries");
    const SM_META: Keyspace = Keyspace::new("test_sm_meta");
    const APPLIED_KEY: &[u8] = b"applied";

    /// The test's state machine: every normal entry applied, by index, kept in the node's
    /// engine so a crash loses exactly what was not synced.
    #[derive(Clone, Debug, Default)]
    struct StateMachine {
        applied: u64,
        entries: BTreeMap<u64, Vec<u8>>,
    }

    impl StateMachine {
        fn load(engine: &MemoryEngine) -> Self {
            let applied = engine
                .get(SM_META, APPLIED_KEY)
                .expect("read")
                .map_or(0, |bytes| codec::decode(&bytes).expect("applied index"));
            let entries = engine
                .scan(SM_ENTRIES, &KeyRange::all(), Order::Ascending, 100_000)
                .expect("scan")
                .into_iter()
                .map(|(key, value)| (u64::from_be_bytes(key.try_into().expect("key")), value))
                .collect();
            Self { applied, entries }
        }

        fn snapshot(&self) -> Vec<u8> {
            codec::encode(&(self.applied, &self.entries))
        }

        fn restore(&mut self, snapshot: &SnapshotToRestore, batch: &mut WriteBatch) {
            let (applied, entries): (u64, BTreeMap<u64, Vec<u8>>) =
                codec::decode(&snapshot.data).expect("a snapshot this test wrote");
            assert_eq!(
                applied, snapshot.index,
                "the blob is the state at its index"
            );
            batch.delete_range(SM_ENTRIES, KeyRange::all());
            for (index, data) in &entries {
                batch.put(SM_ENTRIES, index.to_be_bytes(), data.clone());
            }
            batch.put(SM_META, APPLIED_KEY, codec::encode(&applied));
            *self = Self { applied, entries };
        }

        fn apply(&mut self, entry: &CommittedEntry, batch: &mut WriteBatch) {
            assert_eq!(
                entry.index,
                self.applied + 1,
                "committed entries arrive in order, without gaps or repeats"
            );
            if let CommittedPayload::Normal(data) = &entry.payload {
                self.entries.insert(entry.index, data.clone());
                batch.put(SM_ENTRIES, entry.index.to_be_bytes(), data.clone());
            }
            self.applied = entry.index;
            batch.put(SM_META, APPLIED_KEY, codec::encode(&self.applied));
        }
    }

    struct TestNode {
        engine: MemoryEngine,
        core: Option<RaftCore>,
        sm: StateMachine,
        reads: Vec<ReadReady>,
        snapshots_restored: usize,
        last_compaction: u64,
    }

    #[derive(Clone)]
    struct Envelope {
        from: u64,
        message: OutboundMessage,
    }

    /// Message faults, each drawn per delivery.
    #[derive(Clone, Copy, Debug, Default)]
    struct Faults {
        drop: f64,
        duplicate: f64,
        reorder: bool,
    }

    struct Cluster {
        nodes: BTreeMap<u64, TestNode>,
        queue: VecDeque<Envelope>,
        /// Directed links that lose every message.
        cut: BTreeSet<(u64, u64)>,
        faults: Faults,
        rng: SmallRng,
        template: RaftConfig,
        /// Applied entries since the last compaction before a node compacts.
        compact_every: u64,
        /// Every committed entry any node delivered: State Machine Safety (Raft §5.4.3) says
        /// no two deliveries at one index differ.
        committed: BTreeMap<u64, (u64, CommittedPayload)>,
    }

    impl Cluster {
        fn new(size: u64, seed: u64) -> Self {
            Self::with_config(size, seed, |_| {})
        }

        fn with_config(size: u64, seed: u64, adjust: impl FnOnce(&mut RaftConfig)) -> Self {
            let mut template = RaftConfig::new(1);
            template.compaction_keep_entries = 5;
            template.election_seed = seed;
            adjust(&mut template);
            let mut cluster = Self {
                nodes: BTreeMap::new(),
                queue: VecDeque::new(),
                cut: BTreeSet::new(),
                faults: Faults::default(),
                rng: SmallRng::seed_from_u64(seed),
                template,
                compact_every: 1_000_000,
                committed: BTreeMap::new(),
            };
            let voters: Vec<u64> = (1..=size).collect();
            for &id in &voters {
                let engine = MemoryEngine::new(Limits::default());
                let mut batch = WriteBatch::new();
                let core = RaftCore::bootstrap(cluster.config(id), &voters, &mut batch)
                    .expect("bootstrap");
                // A bootstrapped state machine is empty at the bootstrap index.
                batch.put(SM_META, APPLIED_KEY, codec::encode(&BOOTSTRAP_INDEX));
                engine.write(&batch).expect("write");
                engine.sync().expect("sync");
                let mut node = TestNode::new(engine, core);
                node.sm.applied = BOOTSTRAP_INDEX;
                cluster.nodes.insert(id, node);
            }
            cluster
        }

        fn config(&self, id: u64) -> RaftConfig {
            RaftConfig {
                id,
                ..self.template.clone()
            }
        }

        fn core(&mut self, id: u64) -> &mut RaftCore {
            self.nodes
                .get_mut(&id)
                .and_then(|n| n.core.as_mut())
                .expect("the node is up")
        }

        fn status(&self, id: u64) -> RaftStatus {
            self.nodes[&id].core.as_ref().expect("up").status()
        }

        fn up(&self) -> Vec<u64> {
            let up = self.nodes.iter().filter(|(_, n)| n.core.is_some());
            up.map(|(&id, _)| id).collect()
        }

        /// The leader of the highest term, if any node leads.
        fn leader(&self) -> Option<u64> {
            self.up()
                .into_iter()
                .map(|id| self.status(id))
                .filter(|s| s.role == Role::Leader)
                .max_by_key(|s| s.term)
                .map(|s| s.id)
        }

        /// Handles every ready of node `id`, following the driver contract on `Output`.
        fn drive(&mut self, id: u64) {
            loop {
                let Cluster {
                    nodes,
                    queue,
                    committed,
                    ..
                } = self;
                let Some(node) = nodes.get_mut(&id) else {
                    return;
                };
                let Some(core) = node.core.as_mut() else {
                    return;
                };
                if !core.has_ready() {
                    return;
                }
                let mut batch = WriteBatch::new();
                let out = core.ready(&mut batch).expect("ready");
                let envelope = |message| Envelope { from: id, message };
                queue.extend(out.messages_now.into_iter().map(envelope));
                if let Some(snapshot) = &out.snapshot {
                    node.sm.restore(snapshot, &mut batch);
                    node.snapshots_restored += 1;
                    node.last_compaction = snapshot.index;
                }
                node.engine.write(&batch).expect("write");
                node.engine.sync().expect("sync");
                queue.extend(out.messages_after_sync.into_iter().map(envelope));
                let mut applied = WriteBatch::new();
                for entry in &out.committed {
                    record_committed(committed, entry);
                    node.sm.apply(entry, &mut applied);
                }
                // Not synced: a crash may lose applied entries, which Raft delivers again.
                node.engine.write(&applied).expect("write");
                node.reads.extend(out.read_states);
                node.compact_if_due(out.snapshot_wanted, self.compact_every);
            }
        }

        /// Delivers one queued message (the oldest, or any when reordering); returns whether
        /// there was one.
        fn deliver_one(&mut self) -> bool {
            if self.queue.is_empty() {
                return false;
            }
            let at = if self.faults.reorder {
                self.rng.random_range(0..self.queue.len())
            } else {
                0
            };
            let Some(envelope) = self.queue.remove(at) else {
                return false;
            };
            let (from, to) = (envelope.from, envelope.message.to);
            let receiver_up = self.nodes.get(&to).is_some_and(|n| n.core.is_some());
            let lost = self.cut.contains(&(from, to))
                || !receiver_up
                || self.rng.random_bool(self.faults.drop);
            if !lost && self.rng.random_bool(self.faults.duplicate) {
                self.queue.push_back(envelope.clone());
            }
            if !lost {
                match self.core(to).step(from, &envelope.message.bytes) {
                    Ok(()) | Err(RaftError::UnknownPeer(_) | RaftError::ProposalDropped) => {}
                    Err(e) => {
                        let m = Message::parse_from_bytes(&envelope.message.bytes).expect("m");
                        panic!("a message from a correct peer was refused: {e}: {m:?}")
                    }
                }
                self.drive(to);
            }
            if envelope.message.is_snapshot && self.nodes[&from].core.is_some() {
                self.core(from).report_snapshot(to, !lost);
                self.drive(from);
            }
            true
        }

        fn deliver_all(&mut self) {
            // Duplication can refill the queue; the bound keeps a run finite.
            for _ in 0..20_000 {
                if !self.deliver_one() {
                    return;
                }
            }
        }

        fn tick(&mut self) {
            for id in self.up() {
                self.core(id).tick();
                self.drive(id);
            }
            self.deliver_all();
        }

        fn run(&mut self, ticks: usize) {
            for _ in 0..ticks {
                self.tick();
            }
        }

        /// Ticks until `done` holds; returns whether it did within `ticks`.
        fn run_until(&mut self, ticks: usize, done: impl Fn(&Cluster) -> bool) -> bool {
            for _ in 0..ticks {
                if done(self) {
                    return true;
                }
                self.tick();
            }
            done(self)
        }

        fn elect(&mut self) -> u64 {
            let settled = |c: &Cluster| {
                let members = c.members();
                let mut up_members = c.up().into_iter().filter(|id| members.contains(id));
                c.leader()
                    .is_some_and(|l| up_members.all(|id| c.status(id).leader == Some(l)))
            };
            assert!(self.run_until(200, settled), "a leader is elected");
            self.leader().expect("leader")
        }

        /// Waits for a leader other than `excluded` that every other up node follows.
        fn elect_among(&mut self, excluded: u64) -> u64 {
            let settled = |c: &Cluster| {
                c.leader().filter(|&l| l != excluded).is_some_and(|l| {
                    c.up()
                        .iter()
                        .filter(|&&id| id != excluded)
                        .all(|&id| c.status(id).leader == Some(l))
                })
            };
            assert!(self.run_until(200, settled), "a new leader is elected");
            self.leader().expect("leader")
        }

        fn membership_entries(&self) -> usize {
            let changes = self
                .committed
                .values()
                .filter(|(_, payload)| matches!(payload, CommittedPayload::Membership { .. }));
            changes.count()
        }

        /// Proposes `changes` at the leader and waits until they (and, for several, the
        /// automatic leave of the joint configuration) are committed.
        fn change_membership(&mut self, changes: &[MembershipChange]) {
            let leader = self.leader().expect("a leader");
            let before = self.membership_entries();
            self.core(leader)
                .propose_membership_change(changes)
                .expect("proposed");
            self.drive(leader);
            let expected = before + if changes.len() > 1 { 2 } else { 1 };
            assert!(self.run_until(200, |c| c.membership_entries() >= expected));
        }

        /// Whether the nodes `ids` applied everything the cluster committed.
        fn converged_among(&self, ids: &[u64]) -> bool {
            let top = self.committed.keys().next_back().copied().unwrap_or(0);
            ids.iter().all(|id| self.nodes[id].sm.applied >= top)
        }

        fn propose(&mut self, id: u64, data: &str) -> Result<(), RaftError> {
            let result = self.core(id).propose(data.as_bytes().to_vec());
            self.drive(id);
            result
        }

        /// Cuts `id` off from every other node, both ways.
        fn isolate(&mut self, id: u64) {
            for &other in self.nodes.keys() {
                if other != id {
                    self.cut.insert((id, other));
                    self.cut.insert((other, id));
                }
            }
        }

        fn heal(&mut self) {
            self.cut.clear();
        }

        /// A process crash: unsynced writes are lost except the oldest `kept` batches.
        fn crash(&mut self, id: u64, kept: usize) {
            let node = self.nodes.get_mut(&id).expect("node");
            node.engine.crash_keeping(kept);
            node.core = None;
            node.sm = StateMachine::load(&node.engine);
        }

        fn restart(&mut self, id: u64) {
            let config = self.config(id);
            let node = self.nodes.get_mut(&id).expect("node");
            let core = RaftCore::open(config, &node.engine, node.sm.applied).expect("open");
            node.core = Some(core);
            node.last_compaction = node.sm.applied;
            self.drive(id);
        }

        /// Adds a node with empty storage, as an operator starts a new machine.
        fn add_empty_node(&mut self, id: u64) {
            let engine = MemoryEngine::new(Limits::default());
            let core = RaftCore::open(self.config(id), &engine, 0).expect("join");
            self.nodes.insert(id, TestNode::new(engine, core));
        }

        /// Whether every up node applied everything the cluster committed.
        fn converged(&self) -> bool {
            let top = self.committed.keys().next_back().copied().unwrap_or(0);
            let members = self.members();
            let up: Vec<u64> = self
                .up()
                .into_iter()
                .filter(|id| members.contains(id))
                .collect();
            up.iter().all(|&id| self.nodes[&id].sm.applied >= top)
                && up
                    .iter()
                    .all(|&id| self.status(id).commit == self.status(up[0]).commit)
        }

        /// Voters and learners, as the most advanced up node sees them.
        fn members(&self) -> BTreeSet<u64> {
            let newest = self
                .up()
                .into_iter()
                .max_by_key(|&id| self.nodes[&id].sm.applied);
            let Some(status) = newest.map(|id| self.status(id)) else {
                return BTreeSet::new();
            };
            let all = status
                .voters
                .iter()
                .chain(&status.learners)
                .chain(&status.voters_outgoing);
            all.copied().collect()
        }

        /// Every member holds every committed normal entry, at the same index.
        fn assert_no_committed_entry_lost(&self) {
            let members = self.members();
            for (id, node) in self.nodes.iter().filter(|(id, _)| members.contains(id)) {
                for (index, (_, payload)) in &self.committed {
                    if let CommittedPayload::Normal(data) = payload {
                        assert_eq!(
                            node.sm.entries.get(index),
                            Some(data),
                            "node {id} lacks committed entry {index}"
                        );
                    }
                }
            }
        }

        fn applied_data(&self, id: u64) -> Vec<String> {
            let entries = self.nodes[&id].sm.entries.values();
            entries
                .map(|d| String::from_utf8(d.clone()).expect("utf-8"))
                .collect()
        }
    }

    impl TestNode {
        fn new(engine: MemoryEngine, core: RaftCore) -> Self {
            Self {
                engine,
                core: Some(core),
                sm: StateMachine::default(),
                reads: Vec::new(),
                snapshots_restored: 0,
                last_compaction: 0,
            }
        }

        fn compact_if_due(&mut self, wanted: bool, every: u64) {
            if !wanted && self.sm.applied < self.last_compaction + every {
                return;
            }
            let Some(core) = self.core.as_mut() else {
                return;
            };
            let mut batch = WriteBatch::new();
            core.compact(self.sm.applied, self.sm.snapshot(), &mut batch)
                .expect("compact at the applied index");
            // Written after the state machine's batch: a crash keeps it only if it kept those.
            self.engine.write(&batch).expect("write");
            self.last_compaction = self.sm.applied;
        }
    }

    fn record_committed(
        committed: &mut BTreeMap<u64, (u64, CommittedPayload)>,
        entry: &CommittedEntry,
    ) {
        let delivered = (entry.term, entry.payload.clone());
        let first = committed
            .entry(entry.index)
            .or_insert_with(|| delivered.clone());
        assert_eq!(
            *first, delivered,
            "two nodes committed different entries at index {}",
            entry.index
        );
    }

    fn payloads(prefix: &str, count: usize) -> Vec<String> {
        (0..count).map(|i| format!("{prefix}-{i}")).collect()
    }

    #[test]
    fn a_leader_is_elected_and_known_to_all() {
        for size in [1, 3, 5] {
            let mut cluster = Cluster::new(size, 7);
            let leader = cluster.elect();
            let term = cluster.status(leader).term;
            // Election Safety (Raft §5.2): at most one leader per term.
            let leaders_in_term = cluster
                .up()
                .into_iter()
                .filter(|&id| cluster.status(id).role == Role::Leader)
                .filter(|&id| cluster.status(id).term == term)
                .count();
            assert_eq!(leaders_in_term, 1, "cluster of {size}");
        }
    }

    #[test]
    fn proposals_at_leader_and_follower_commit_in_the_same_order_everywhere() {
        for size in [3, 5] {
            let mut cluster = Cluster::new(size, 11);
            let leader = cluster.elect();
            let follower = cluster
                .up()
                .into_iter()
                .find(|&id| id != leader)
                .expect("follower");
            let at_leader = payloads("leader", 10);
            let at_follower = payloads("follower", 10);
            for (a, b) in at_leader.iter().zip(&at_follower) {
                cluster.propose(leader, a).expect("the leader accepts");
                cluster.propose(follower, b).expect("a follower forwards");
                cluster.deliver_all();
            }
            let all_applied =
                |c: &Cluster| c.nodes.keys().all(|&id| c.applied_data(id).len() == 20);
            assert!(cluster.run_until(100, all_applied));
            let reference = cluster.applied_data(1);
            for id in cluster.up() {
                assert_eq!(cluster.applied_data(id), reference, "node {id}");
            }
            let mut expected: Vec<String> = at_leader.into_iter().chain(at_follower).collect();
            let mut got = reference;
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "every proposal committed exactly once");
        }
    }

    /// The append messages in `out` to each recipient, as (recipient, entry bytes of each).
    fn appends(out: &Output) -> BTreeMap<u64, Vec<u64>> {
        let mut appends: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for outbound in &out.messages_now {
            let message = Message::parse_from_bytes(&outbound.bytes).expect("a message");
            if message.get_msg_type() == MessageType::MsgAppend {
                let bytes = message.entries.iter().map(|e| e.data.len() as u64).sum();
                appends.entry(outbound.to).or_default().push(bytes);
            }
        }
        appends
    }

    #[test]
    fn proposals_between_two_readies_leave_as_one_append_per_follower() {
        let mut cluster = Cluster::new(3, 5);
        let leader = cluster.elect();
        cluster.deliver_all();
        for data in payloads("together", 50) {
            cluster
                .core(leader)
                .propose(data.into_bytes())
                .expect("accepted");
        }
        let out = cluster
            .core(leader)
            .ready(&mut WriteBatch::new())
            .expect("ready");
        let appends = appends(&out);
        assert_eq!(appends.len(), 2, "both followers get the entries");
        for (follower, messages) in appends {
            assert_eq!(messages.len(), 1, "one message to {follower}");
        }
    }

    #[test]
    fn proposals_at_a_follower_between_two_readies_reach_the_leader_as_one_message() {
        let mut cluster = Cluster::new(3, 7);
        let leader = cluster.elect();
        cluster.deliver_all();
        let follower = cluster
            .up()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a follower");
        let data = payloads("forwarded", 30);
        for payload in &data {
            cluster
                .core(follower)
                .propose(payload.clone().into_bytes())
                .expect("accepted");
        }
        let out = cluster
            .core(follower)
            .ready(&mut WriteBatch::new())
            .expect("ready");
        // A follower sends everything after its sync.
        let proposals: Vec<Message> = out
            .messages_after_sync
            .iter()
            .map(|m| Message::parse_from_bytes(&m.bytes).expect("a message"))
            .filter(|m| m.get_msg_type() == MessageType::MsgPropose)
            .collect();
        assert_eq!(proposals.len(), 1);
        assert_eq!(proposals[0].to, leader);
        assert_eq!(proposals[0].entries.len(), 30);
        for message in out.messages_after_sync {
            cluster.queue.push_back(Envelope {
                from: follower,
                message,
            });
        }
        let all_applied = |c: &Cluster| c.up().iter().all(|&id| c.applied_data(id).len() == 30);
        assert!(
            cluster.run_until(100, all_applied),
            "every proposal commits"
        );
        assert_eq!(cluster.applied_data(leader), data, "in the order proposed");
    }

    #[test]
    fn batched_appends_stay_within_the_append_bound() {
        let append_bytes_max = 4096;
        let mut cluster = Cluster::with_config(3, 5, |config| {
            config.append_bytes_max = append_bytes_max;
        });
        let leader = cluster.elect();
        cluster.deliver_all();
        let entry_bytes = 500;
        for _ in 0..40 {
            cluster
                .core(leader)
                .propose(vec![7; entry_bytes])
                .expect("accepted");
        }
        let out = cluster
            .core(leader)
            .ready(&mut WriteBatch::new())
            .expect("ready");
        for (follower, messages) in appends(&out) {
            assert!(messages.len() > 1, "the batch to {follower} was cut");
            assert_eq!(messages.iter().sum::<u64>(), 40 * entry_bytes as u64);
            assert!(
                messages.iter().all(|&bytes| bytes <= append_bytes_max),
                "{messages:?}"
            );
        }
    }

    #[test]
    fn a_crashed_minority_loses_no_committed_entry_and_catches_up() {
        for seed in 0..6 {
            let mut cluster = Cluster::new(5, seed);
            cluster.compact_every = 15;
            cluster.elect();
            for round in 0..40 {
                let up = cluster.up();
                let proposer = up[cluster.rng.random_range(0..up.len())];
                let _ = cluster.propose(proposer, &format!("s{seed}-r{round}"));
                let down = cluster.nodes.len() - up.len();
                if down < 2 && cluster.rng.random_bool(0.3) {
                    // Any node, the leader included; a crash may keep some unsynced batches.
                    let victim = up[cluster.rng.random_range(0..up.len())];
                    let kept = cluster.rng.random_range(0..3);
                    cluster.crash(victim, kept);
                } else if down > 0 && cluster.rng.random_bool(0.3) {
                    let victim = *cluster
                        .nodes
                        .iter()
                        .find(|(_, n)| n.core.is_none())
                        .expect("a node is down")
                        .0;
                    cluster.restart(victim);
                }
                cluster.run(3);
            }
            let down: Vec<u64> = cluster
                .nodes
                .iter()
                .filter(|(_, n)| n.core.is_none())
                .map(|(&id, _)| id)
                .collect();
            for id in down {
                cluster.restart(id);
            }
            assert!(cluster.run_until(300, Cluster::converged), "seed {seed}");
            assert!(
                cluster.committed.len() > 20,
                "seed {seed}: progress was made"
            );
            cluster.assert_no_committed_entry_lost();
        }
    }

    #[test]
    fn a_partitioned_leader_steps_down_and_its_proposals_never_commit() {
        let mut cluster = Cluster::new(5, 3);
        let old = cluster.elect();
        cluster.isolate(old);
        for stale in payloads("stale", 5) {
            cluster
                .propose(old, &stale)
                .expect("it still believes it leads");
        }
        // Check quorum (Raft thesis §6.2): without a majority's replies for an election
        // timeout, the leader steps down.
        let stepped_down = |c: &Cluster| c.status(old).role != Role::Leader;
        assert!(cluster.run_until(2 * 10 + 1, stepped_down));
        let new = cluster.elect_among(old);
        assert_ne!(new, old);
        for fresh in payloads("fresh", 5) {
            cluster
                .propose(new, &fresh)
                .expect("the new leader accepts");
        }
        cluster.run(5);
        cluster.heal();
        assert!(cluster.run_until(200, Cluster::converged));
        for id in cluster.up() {
            let applied = cluster.applied_data(id);
            assert!(applied.iter().all(|d| !d.starts_with("stale")), "node {id}");
            assert_eq!(applied, payloads("fresh", 5), "node {id}");
        }
    }

    #[test]
    fn a_lagging_node_catches_up_through_the_snapshot_after_compaction() {
        let mut cluster = Cluster::new(3, 5);
        cluster.compact_every = 10;
        let leader = cluster.elect();
        let lagging = cluster
            .up()
            .into_iter()
            .find(|&id| id != leader)
            .expect("follower");
        cluster.crash(lagging, 0);
        for data in payloads("while-down", 40) {
            cluster.propose(leader, &data).expect("a majority is up");
            cluster.deliver_all();
        }
        cluster.run(2);
        let compacted = cluster.core(leader).node.store().compaction().index;
        assert!(
            compacted > cluster.nodes[&lagging].sm.applied,
            "the log moved past it"
        );
        cluster.restart(lagging);
        assert!(cluster.run_until(200, Cluster::converged));
        assert!(cluster.nodes[&lagging].snapshots_restored >= 1);
        assert_eq!(cluster.applied_data(lagging), cluster.applied_data(leader));
        // It serves from its log again: new entries arrive as appends.
        let restored = cluster.nodes[&lagging].snapshots_restored;
        cluster.propose(leader, "after").expect("propose");
        let arrived =
            |c: &Cluster| c.applied_data(lagging).last().map(String::as_str) == Some("after");
        assert!(cluster.run_until(50, arrived));
        assert_eq!(cluster.nodes[&lagging].snapshots_restored, restored);
    }

    #[test]
    fn a_learner_joins_through_a_snapshot_is_promoted_and_a_voter_is_removed() {
        let mut cluster = Cluster::new(3, 9);
        cluster.compact_every = 10;
        let leader = cluster.elect();
        for data in payloads("before", 30) {
            cluster.propose(leader, &data).expect("propose");
            cluster.deliver_all();
        }
        cluster.add_empty_node(4);
        cluster.change_membership(&[MembershipChange::AddLearner(4)]);
        assert!(cluster.run_until(200, Cluster::converged));
        assert!(
            cluster.nodes[&4].snapshots_restored >= 1,
            "the learner starts from a snapshot"
        );
        assert_eq!(cluster.applied_data(4), cluster.applied_data(leader));
        assert_eq!(cluster.status(leader).learners, vec![4]);

        cluster.change_membership(&[MembershipChange::PromoteLearner(4)]);
        assert!(cluster.run_until(100, Cluster::converged));
        for id in cluster.up() {
            assert_eq!(cluster.status(id).voters, vec![1, 2, 3, 4], "node {id}");
            assert!(cluster.status(id).learners.is_empty());
        }

        // Removing the leader itself: it steps down and the others elect a new one.
        cluster.change_membership(&[MembershipChange::Remove(leader)]);
        let remaining: Vec<u64> = [1, 2, 3, 4]
            .into_iter()
            .filter(|&id| id != leader)
            .collect();
        let new_leader = |c: &Cluster| c.leader().is_some_and(|l| l != leader);
        assert!(cluster.run_until(100, new_leader));
        let new = cluster.leader().expect("leader");
        cluster.propose(new, "after-removal").expect("propose");
        assert!(cluster.run_until(100, |c| {
            remaining
                .iter()
                .all(|&id| c.applied_data(id).last().map(String::as_str) == Some("after-removal"))
        }));
        for &id in &remaining {
            assert_eq!(cluster.status(id).voters, remaining, "node {id}");
        }
    }

    #[test]
    fn several_changes_go_through_a_joint_configuration_that_is_left_automatically() {
        let mut cluster = Cluster::new(3, 13);
        let leader = cluster.elect();
        cluster.add_empty_node(4);
        cluster.change_membership(&[MembershipChange::AddLearner(4)]);
        assert!(cluster.run_until(100, Cluster::converged));
        let removed = cluster
            .up()
            .into_iter()
            .find(|&id| id != leader && id != 4)
            .expect("a follower");
        cluster.change_membership(&[
            MembershipChange::PromoteLearner(4),
            MembershipChange::Remove(removed),
        ]);
        // Raft §6: first the joint configuration C_old,new, then C_new by an empty change.
        let outcomes: Vec<(Vec<MembershipChange>, Membership)> = cluster
            .committed
            .values()
            .filter_map(|(_, payload)| match payload {
                CommittedPayload::Membership {
                    changes,
                    outcome: ConfChangeOutcome::Applied(m),
                } => Some((changes.clone(), m.clone())),
                _ => None,
            })
            .collect();
        let (entered, joint) = &outcomes[outcomes.len() - 2];
        let (left, after) = &outcomes[outcomes.len() - 1];
        assert_eq!(entered.len(), 2);
        assert!(joint.is_joint());
        assert!(joint.voters_outgoing.contains(&removed));
        assert!(left.is_empty(), "leaving is an empty change");
        assert!(!after.is_joint());
        let expected: Vec<u64> = [1, 2, 3, 4]
            .into_iter()
            .filter(|&id| id != removed)
            .collect();
        assert_eq!(after.voters, expected);
        assert!(cluster.run_until(100, |c| c.converged_among(&expected)));
        for id in expected {
            assert_eq!(
                cluster.status(id).voters_outgoing,
                Vec::<u64>::new(),
                "node {id}"
            );
        }
    }

    #[test]
    fn invalid_membership_changes_are_refused_before_proposing() {
        let mut cluster = Cluster::new(3, 17);
        let leader = cluster.elect();
        let core = cluster.core(leader);
        let refused =
            |r: Result<(), RaftError>| matches!(r, Err(RaftError::InvalidMembershipChange(_)));
        assert!(refused(core.propose_membership_change(&[])));
        assert!(refused(core.propose_membership_change(&[
            MembershipChange::PromoteLearner(2)
        ])));
        assert!(refused(
            core.propose_membership_change(&[MembershipChange::AddVoter(2)])
        ));
        assert!(refused(
            core.propose_membership_change(&[MembershipChange::Remove(9)])
        ));
        assert!(refused(core.propose_membership_change(&[
            MembershipChange::AddVoter(4),
            MembershipChange::AddLearner(4),
        ])));
        core.propose_membership_change(&[MembershipChange::AddLearner(4)])
            .expect("valid");
        assert!(matches!(
            core.propose_membership_change(&[MembershipChange::AddLearner(5)]),
            Err(RaftError::MembershipChangePending)
        ));
    }

    #[test]
    fn read_index_is_at_least_the_commit_index_when_asked() {
        for lease_reads in [false, true] {
            let mut cluster = Cluster::with_config(3, 19, |c| c.lease_reads = lease_reads);
            let leader = cluster.elect();
            cluster.propose(leader, "w").expect("propose");
            cluster.run(2);
            let follower = cluster
                .up()
                .into_iter()
                .find(|&id| id != leader)
                .expect("follower");
            for (id, ctx) in [(leader, b"at-leader"), (follower, b"at-folwer")] {
                let commit_then = cluster.status(leader).commit;
                cluster
                    .core(id)
                    .read_index(ctx.to_vec())
                    .expect("read index");
                cluster.drive(id);
                let answered = |c: &Cluster| c.nodes[&id].reads.iter().any(|r| r.ctx == ctx);
                assert!(
                    cluster.run_until(20, answered),
                    "lease reads: {lease_reads}"
                );
                let read = cluster.nodes[&id]
                    .reads
                    .iter()
                    .find(|r| r.ctx == ctx)
                    .expect("read");
                // Raft §6.4: the read index covers every write committed before the request.
                assert!(read.index >= commit_then);
            }
        }
    }

    #[test]
    fn a_partitioned_leader_cannot_serve_a_read_index() {
        let mut cluster = Cluster::new(3, 23);
        let leader = cluster.elect();
        cluster.propose(leader, "w").expect("propose");
        cluster.run(2);
        cluster.isolate(leader);
        cluster
            .core(leader)
            .read_index(b"cut-off".to_vec())
            .expect("accepted");
        cluster.drive(leader);
        cluster.run(40);
        assert!(
            cluster.nodes[&leader].reads.is_empty(),
            "no quorum confirmed it"
        );
        assert_ne!(cluster.status(leader).role, Role::Leader);
    }

    #[test]
    fn requests_that_cannot_be_served_are_refused_with_a_reason() {
        let mut cluster = Cluster::new(3, 29);
        let node = cluster.core(1);
        assert!(matches!(
            node.propose(Vec::new()),
            Err(RaftError::EmptyProposal)
        ));
        let huge = vec![0; node.config.entry_bytes_max + 1];
        assert!(matches!(
            node.propose(huge),
            Err(RaftError::ProposalTooLarge { .. })
        ));
        assert!(matches!(
            node.propose(b"x".to_vec()),
            Err(RaftError::NotLeader { leader: None })
        ));
        assert!(matches!(
            node.read_index(Vec::new()),
            Err(RaftError::EmptyReadContext)
        ));
        assert!(matches!(
            node.read_index(b"r".to_vec()),
            Err(RaftError::NotLeader { .. })
        ));
        assert!(matches!(
            node.transfer_leader(9),
            Err(RaftError::InvalidTransfer(9))
        ));
    }

    #[test]
    fn leadership_transfers_to_the_named_voter() {
        let mut cluster = Cluster::new(3, 31);
        let leader = cluster.elect();
        let target = cluster
            .up()
            .into_iter()
            .find(|&id| id != leader)
            .expect("follower");
        cluster
            .core(leader)
            .transfer_leader(target)
            .expect("transfer");
        cluster.drive(leader);
        assert!(cluster.run_until(30, |c| c.leader() == Some(target)));
    }

    #[test]
    fn config_validation_refuses_what_raft_rs_would_reject() {
        let check = |change: fn(&mut RaftConfig)| {
            let mut config = RaftConfig::new(1);
            change(&mut config);
            config.validate()
        };
        assert!(check(|_| {}).is_ok());
        for bad in [
            (|c: &mut RaftConfig| c.id = 0) as fn(&mut RaftConfig),
            |c| c.heartbeat_tick = 0,
            |c| c.election_tick = c.heartbeat_tick,
            |c| c.inflight_appends_max = 0,
            |c| c.entry_bytes_max = 0,
            |c| c.pending_reads_max = 0,
            |c| c.uncommitted_bytes_max = c.append_bytes_max - 1,
        ] {
            assert!(matches!(check(bad), Err(RaftError::InvalidConfig(_))));
        }
        let mut batch = WriteBatch::new();
        for voters in [&[][..], &[0, 1], &[1, 1], &[2, 3]] {
            assert!(matches!(
                RaftCore::bootstrap(RaftConfig::new(1), voters, &mut batch),
                Err(RaftError::InvalidBootstrap(_))
            ));
        }
        assert!(batch.is_empty(), "a refused bootstrap writes nothing");
    }

    #[test]
    fn a_seed_replays_exactly() {
        let trace = |seed| {
            let mut cluster = Cluster::new(5, seed);
            cluster.faults = Faults {
                drop: 0.1,
                duplicate: 0.05,
                reorder: true,
            };
            cluster.run(60);
            let statuses: Vec<RaftStatus> = cluster
                .up()
                .into_iter()
                .map(|id| cluster.status(id))
                .collect();
            format!("{statuses:?}")
        };
        assert_eq!(trace(41), trace(41));
    }

    /// A random membership change at the leader, keeping 3 to 5 members: add a learner (a
    /// new, empty node), promote it (alone, or with a removal through joint consensus), or
    /// remove a voter.
    fn random_membership_change(cluster: &mut Cluster, next_id: &mut u64) {
        let Some(leader) = cluster.leader() else {
            return;
        };
        let status = cluster.status(leader);
        let others: Vec<u64> = status
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let victim = others[cluster.rng.random_range(0..others.len())];
        let change = match status.learners.first() {
            Some(&learner) if status.voters.len() >= 3 && cluster.rng.random_bool(0.5) => vec![
                MembershipChange::PromoteLearner(learner),
                MembershipChange::Remove(victim),
            ],
            Some(&learner) => vec![MembershipChange::PromoteLearner(learner)],
            None if status.voters.len() >= 4 => vec![MembershipChange::Remove(victim)],
            None => vec![MembershipChange::AddLearner(*next_id)],
        };
        let proposed = cluster.core(leader).propose_membership_change(&change);
        if let (Ok(()), [MembershipChange::AddLearner(id)]) = (proposed, &change[..]) {
            cluster.add_empty_node(*id);
            *next_id += 1;
        }
        cluster.drive(leader);
    }

    /// One randomized run: message loss, duplication and reordering, partitions and crashes,
    /// then a healed network. Safety is checked on every delivery (`record_committed`, and
    /// `StateMachine::apply`'s order check); liveness after healing.
    fn chaos(seed: u64, size: u64, faults: Faults, crashes: bool, membership: bool) {
        let mut cluster = Cluster::new(size, seed);
        cluster.faults = faults;
        cluster.compact_every = 8;
        let mut next_id = size + 1;
        for step in 0..120 {
            if membership && cluster.rng.random_bool(0.03) {
                random_membership_change(&mut cluster, &mut next_id);
            }
            let up = cluster.up();
            if cluster.rng.random_bool(0.5) {
                let at = up[cluster.rng.random_range(0..up.len())];
                let _ = cluster.propose(at, &format!("{seed}-{step}"));
            }
            // At most one node down at a time: a minority of any configuration of 3 or more.
            if crashes && cluster.rng.random_bool(0.05) && cluster.nodes.len() == up.len() {
                let victim = up[cluster.rng.random_range(0..up.len())];
                let kept = cluster.rng.random_range(0..2);
                cluster.crash(victim, kept);
            }
            if cluster.rng.random_bool(0.05) {
                let down: Vec<u64> = cluster
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.core.is_none())
                    .map(|(&id, _)| id)
                    .collect();
                if let Some(&id) = down.first() {
                    cluster.restart(id);
                }
            }
            if cluster.rng.random_bool(0.03) {
                let a = cluster.rng.random_range(1..next_id);
                cluster.isolate(a);
            } else if cluster.rng.random_bool(0.05) {
                cluster.heal();
            }
            cluster.tick();
        }
        cluster.faults = Faults::default();
        cluster.heal();
        let down: Vec<u64> = cluster
            .nodes
            .iter()
            .filter(|(_, n)| n.core.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in down {
            cluster.restart(id);
        }
        cluster.elect();
        assert!(
            cluster.run_until(300, Cluster::converged),
            "seed {seed} converges once healed"
        );
        cluster.assert_no_committed_entry_lost();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn no_two_nodes_commit_different_entries_at_one_index(
            seed in any::<u64>(),
            five in any::<bool>(),
            drop in 0.0..0.25f64,
            duplicate in 0.0..0.1f64,
            reorder in any::<bool>(),
            crashes in any::<bool>(),
            membership in any::<bool>(),
        ) {
            let size = if five { 5 } else { 3 };
            chaos(seed, size, Faults { drop, duplicate, reorder }, crashes, membership);
        }
    }

    #[test]
    fn messages_naming_another_sender_or_recipient_and_garbage_are_refused() {
        let mut cluster = Cluster::new(3, 37);
        let leader = cluster.elect();
        cluster.core(leader).tick();
        cluster.drive(leader);
        let heartbeat = cluster.queue.pop_front().expect("a heartbeat");
        let (from, to) = (heartbeat.from, heartbeat.message.to);
        let bytes = heartbeat.message.bytes;
        let other = (1..=3)
            .find(|&id| id != from && id != to)
            .expect("a third node");
        let refused = |r| matches!(r, Err(RaftError::InvalidMessage { .. }));
        assert!(
            refused(cluster.core(to).step(other, &bytes)),
            "wrong sender"
        );
        assert!(
            refused(cluster.core(other).step(from, &bytes)),
            "wrong recipient"
        );
        assert!(refused(cluster.core(to).step(to, &bytes)), "from itself");
        assert!(matches!(
            cluster.core(to).step(from, b"\xff\xff\xff"),
            Err(RaftError::MalformedMessage(_))
        ));
        cluster
            .core(to)
            .step(from, &bytes)
            .expect("the genuine message");
    }

    /// Steps `bytes` into node `to` and collects a ready, without the cluster's safety checks:
    /// the fuzzed messages may lie, which Raft's crash-fault model excludes.
    fn step_into(cluster: &mut Cluster, to: u64, from: u64, bytes: &[u8]) {
        let core = cluster.core(to);
        let _ = core.step(from, bytes);
        let mut batch = WriteBatch::new();
        let _ = core.ready(&mut batch);
    }

    /// A cluster with a leader and one committed entry, then `cut_ticks` ticks with every
    /// link cut, so the fuzzed nodes are met as leader, follower, pre-candidate or candidate.
    fn fuzz_cluster(cut_ticks: usize) -> Cluster {
        let mut cluster = Cluster::new(3, 43);
        let leader = cluster.elect();
        cluster.propose(leader, "x").expect("propose");
        cluster.run(2);
        for id in 1..=3 {
            cluster.isolate(id);
        }
        cluster.run(cut_ticks);
        cluster
    }

    fn arbitrary_entry() -> impl Strategy<Value = Entry> {
        (
            0u64..12,
            0u64..5,
            0u8..3,
            proptest::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(index, term, kind, data)| {
                let mut entry = Entry {
                    index,
                    term,
                    data: data.into(),
                    ..Entry::default()
                };
                entry.set_entry_type(match kind {
                    0 => EntryType::EntryNormal,
                    1 => EntryType::EntryConfChange,
                    _ => EntryType::EntryConfChangeV2,
                });
                entry
            })
    }

    /// Small values, where raft-rs's state is, and the extremes, where arithmetic overflows.
    fn index_or_extreme(below: u64) -> impl Strategy<Value = u64> {
        prop_oneof![8 => 0..below, 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1)]
    }

    fn arbitrary_message() -> impl Strategy<Value = Message> {
        use protobuf::ProtobufEnum as _;
        let ids = || proptest::collection::vec(0u64..5, 0..4);
        let kinds = 0usize..MessageType::values().len();
        (
            (
                kinds,
                1u64..5,
                0u64..5,
                index_or_extreme(6),
                index_or_extreme(6),
                index_or_extreme(12),
            ),
            (
                index_or_extreme(14),
                proptest::collection::vec(arbitrary_entry(), 0..4),
                any::<bool>(),
                index_or_extreme(12),
            ),
            (
                0u64..3,
                index_or_extreme(12),
                0u64..6,
                ids(),
                ids(),
                any::<bool>(),
            ),
        )
            .prop_map(|(head, body, snapshot)| {
                let (kind, from, to, term, log_term, index) = head;
                let (commit, entries, reject, reject_hint) = body;
                let (request_snapshot, snap_index, snap_term, voters, learners, context) = snapshot;
                let mut m = Message::default();
                m.set_msg_type(MessageType::values()[kind]);
                (m.from, m.to, m.term, m.log_term, m.index) = (from, to, term, log_term, index);
                (m.commit, m.reject, m.reject_hint) = (commit, reject, reject_hint);
                m.request_snapshot = request_snapshot;
                m.entries = entries.into();
                if context {
                    m.context = b"ctx".to_vec().into();
                }
                let meta = m.mut_snapshot().mut_metadata();
                (meta.index, meta.term) = (snap_index, snap_term);
                meta.mut_conf_state().voters = voters;
                meta.mut_conf_state().learners = learners;
                m
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn stepping_random_bytes_never_panics(
            from in 0u64..5,
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cut_ticks in 0usize..40,
        ) {
            let mut cluster = fuzz_cluster(cut_ticks);
            for to in 1..=3 {
                step_into(&mut cluster, to, from, &bytes);
            }
        }

        #[test]
        fn stepping_arbitrary_messages_never_panics(
            messages in proptest::collection::vec(arbitrary_message(), 1..4),
            cut_ticks in 0usize..40,
        ) {
            let mut cluster = fuzz_cluster(cut_ticks);
            for mut message in messages {
                // Addressed to each node in turn, so every one of them faces it.
                for to in (1..=3).filter(|&to| to != message.from) {
                    message.to = to;
                    let bytes = message.write_to_bytes().expect("encode");
                    step_into(&mut cluster, to, message.from, &bytes);
                }
            }
        }
    }
}
