//! The sans-IO request coordinator of the `one`/`quorum`/`all` levels:
//! quorum arithmetic, fastest-W writes with hinted handoff, fastest-R reads
//! with hedging, merging and read repair (Dynamo §4.5–4.7).
//!
//! One [`Coordinator`] runs every such request a node coordinates, many in
//! flight. It sends nothing itself: inputs are method calls with the time
//! as an argument, outputs are [`Effect`]s the driver carries out.
//!
//! ```
//! use calm_replica::RequestId;
//! use calm_replica::coordinator::{
//!     Coordinator, CoordinatorConfig, Effect, KvMessage, KvReply, KvRequest, Outcome, Quorum,
//! };
//! use calm_replica::kv::KvObject;
//! use calm_ring::{PreferenceList, Replica};
//! use calm_types::NodeId;
//!
//! let nodes = [NodeId(1), NodeId(2), NodeId(3)];
//! let list = PreferenceList {
//!     owners: nodes.to_vec(),
//!     replicas: nodes.iter().map(|&node| Replica { node, stands_in_for: None }).collect(),
//! };
//! let mut coordinator = Coordinator::new(CoordinatorConfig::default());
//! let request = KvRequest::new(RequestId(1), b"k".to_vec(), Quorum::DEFAULT);
//! coordinator.start_read(request, &list, 0)?;
//!
//! // R = 2: the first two replicas in preference order are asked.
//! let asked: Vec<NodeId> = coordinator
//!     .take_effects()
//!     .into_iter()
//!     .filter_map(|effect| match effect {
//!         Effect::Send { to, message: KvMessage::Fetch { .. } } => Some(to),
//!         _ => None,
//!     })
//!     .collect();
//! assert_eq!(asked, [NodeId(1), NodeId(2)]);
//! for (from, now_ms) in [(NodeId(1), 3), (NodeId(2), 5)] {
//!     let reply = KvReply::Fetched { request: RequestId(1), object: KvObject::new() };
//!     coordinator.step(from, reply, now_ms);
//! }
//! let replied = coordinator.take_effects().into_iter().any(|effect| {
//!     matches!(effect, Effect::Reply { result: Ok(Outcome::Read { replies: 2, .. }), .. })
//! });
//! assert!(replied);
//! # Ok::<(), calm_replica::coordinator::CoordinatorError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::str::FromStr;

use calm_ring::PreferenceList;
use calm_types::NodeId;

use crate::kv::KvObject;
use crate::object::Bytes;
use crate::replica::RequestId;

/// The largest replication factor `n` a keyspace or request may ask for.
pub const REPLICAS_MAX: usize = 16;
/// How many recent replica read latencies the hedging delay is taken from.
pub const LATENCY_SAMPLES: usize = 128;
/// Below this many samples the p95 is not trusted, and the hedging delay is
/// the configured maximum: hedging early on too little data would double
/// the read load of a freshly started node.
pub const LATENCY_SAMPLES_MIN: usize = 16;
/// The default bound on requests in flight at one coordinator.
pub const IN_FLIGHT_MAX: usize = 4096;
/// The longest level name echoed back in [`QuorumError::UnknownLevel`].
const LEVEL_NAME_ECHO_MAX: usize = 32;

/// A consistency level a request may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// One ack or one reply: `r = w = 1`.
    One,
    /// The keyspace's `r` and `w` (by default 2 of 3).
    Quorum,
    /// Every replica: `r = w = n`.
    All,
}

impl Level {
    /// The level's name on the API: `one`, `quorum` or `all`.
    pub const fn name(self) -> &'static str {
        match self {
            Level::One => "one",
            Level::Quorum => "quorum",
            Level::All => "all",
        }
    }
}

impl FromStr for Level {
    type Err = QuorumError;

    /// Parses an API level name; anything else is
    /// [`QuorumError::UnknownLevel`], before any work is done.
    fn from_str(name: &str) -> Result<Self, QuorumError> {
        match name {
            "one" => Ok(Level::One),
            "quorum" => Ok(Level::Quorum),
            "all" => Ok(Level::All),
            other => Err(QuorumError::UnknownLevel {
                level: other.chars().take(LEVEL_NAME_ECHO_MAX).collect(),
            }),
        }
    }
}

/// Why a replication factor or quorum was refused. Nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// `n` is 0: a key needs at least one replica.
    #[error("n must be at least 1")]
    NoReplicas,
    /// `n` is above [`REPLICAS_MAX`].
    #[error("n = {n} exceeds the bound of {n_max} replicas")]
    ReplicasBeyondLimit {
        /// The requested replication factor.
        n: usize,
        /// The bound.
        n_max: usize,
    },
    /// `n` is larger than the cluster: there are not `n` distinct nodes.
    #[error("n = {n} but the cluster has only {members} members")]
    ReplicasBeyondCluster {
        /// The requested replication factor.
        n: usize,
        /// The cluster's members.
        members: usize,
    },
    /// `r` is outside `1..=n`.
    #[error("r = {r} must be between 1 and n = {n}")]
    ReadQuorumOutOfRange {
        /// The requested read quorum.
        r: usize,
        /// The replication factor.
        n: usize,
    },
    /// `w` is outside `1..=n`.
    #[error("w = {w} must be between 1 and n = {n}")]
    WriteQuorumOutOfRange {
        /// The requested write quorum.
        w: usize,
        /// The replication factor.
        n: usize,
    },
    /// The level name is not `one`, `quorum` or `all`.
    #[error("unknown level {level:?}; expected one, quorum or all")]
    UnknownLevel {
        /// The name given, cut to a few dozen characters.
        level: String,
    },
}

/// A validated replication factor and read and write quorums:
/// `1 <= r, w <= n <= REPLICAS_MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quorum {
    n: usize,
    r: usize,
    w: usize,
}

/// Per-request overrides of a keyspace's `n`, `r` and `w`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces the keyspace's `n`.
    pub n: Option<usize>,
    /// Replaces the level's `r`.
    pub r: Option<usize>,
    /// Replaces the level's `w`.
    pub w: Option<usize>,
}

impl Quorum {
    /// The keyspace default: three replicas, two to read, two to write, so
    /// that every read quorum meets every write quorum (`r + w > n`).
    pub const DEFAULT: Quorum = Quorum { n: 3, r: 2, w: 2 };

    /// Validates `1 <= r, w <= n <= REPLICAS_MAX`.
    pub fn new(n: usize, r: usize, w: usize) -> Result<Self, QuorumError> {
        if n == 0 {
            return Err(QuorumError::NoReplicas);
        }
        if n > REPLICAS_MAX {
            return Err(QuorumError::ReplicasBeyondLimit {
                n,
                n_max: REPLICAS_MAX,
            });
        }
        if !(1..=n).contains(&r) {
            return Err(QuorumError::ReadQuorumOutOfRange { r, n });
        }
        if !(1..=n).contains(&w) {
            return Err(QuorumError::WriteQuorumOutOfRange { w, n });
        }
        Ok(Self { n, r, w })
    }

    /// The quorum one request uses: this keyspace quorum at `level`, then
    /// the request's overrides, validated again as a whole.
    pub fn for_request(self, level: Level, overrides: Overrides) -> Result<Self, QuorumError> {
        let n = overrides.n.unwrap_or(self.n);
        let (r, w) = match level {
            Level::One => (1, 1),
            Level::Quorum => (self.r, self.w),
            Level::All => (n, n),
        };
        Self::new(n, overrides.r.unwrap_or(r), overrides.w.unwrap_or(w))
    }

    /// The replication factor.
    pub const fn n(self) -> usize {
        self.n
    }

    /// The read quorum.
    pub const fn r(self) -> usize {
        self.r
    }

    /// The write quorum.
    pub const fn w(self) -> usize {
        self.w
    }
}

/// The coordinator's bounds and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// The most requests in flight; one more is refused with
    /// [`CoordinatorError::Overloaded`].
    pub in_flight_max: usize,
    /// How long a read waits for its `r` replies.
    pub read_timeout_ms: u64,
    /// How long a write waits for its `w` acks before it is in doubt.
    pub write_timeout_ms: u64,
    /// The shortest hedging delay, whatever the measured p95: hedging
    /// sooner would send nearly every read twice.
    pub hedge_delay_min_ms: u64,
    /// The longest hedging delay, and the delay before enough latencies
    /// have been measured.
    pub hedge_delay_max_ms: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            in_flight_max: IN_FLIGHT_MAX,
            read_timeout_ms: 1_000,
            write_timeout_ms: 1_000,
            hedge_delay_min_ms: 2,
            hedge_delay_max_ms: 100,
        }
    }
}

/// One request to coordinate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRequest {
    /// The driver's name for the request, echoed in its reply.
    pub id: RequestId,
    /// The key.
    pub key: Bytes,
    /// The request's quorum (see [`Quorum::for_request`]).
    pub quorum: Quorum,
    /// Whether fallbacks standing in for down owners may be used and count
    /// towards the quorum (sloppy quorum, a keyspace option). Without it
    /// only up natural owners are contacted.
    pub sloppy_quorum: bool,
}

impl KvRequest {
    /// A request with a sloppy quorum, the keyspace default.
    pub fn new(id: RequestId, key: Bytes, quorum: Quorum) -> Self {
        Self {
            id,
            key,
            quorum,
            sloppy_quorum: true,
        }
    }
}

/// A message from the coordinator to a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvMessage {
    /// Merge `object` into the stored object of `key`, persist it, then
    /// answer [`KvReply::Stored`]. With `hint`, the receiver is a fallback:
    /// it keeps the object as a hint for that owner and hands it over when
    /// the owner is back.
    Store {
        /// The write this belongs to.
        request: RequestId,
        /// The key.
        key: Bytes,
        /// The coordinator's stamped object.
        object: KvObject,
        /// The down owner this replica stands in for, if any.
        hint: Option<NodeId>,
    },
    /// Answer [`KvReply::Fetched`] with the stored object of `key` (an
    /// empty object if there is none; with `hint`, the one held for that
    /// owner).
    Fetch {
        /// The read this belongs to.
        request: RequestId,
        /// The key.
        key: Bytes,
        /// The down owner this replica stands in for, if any.
        hint: Option<NodeId>,
    },
    /// Read repair: merge `object` into the stored object of `key` and
    /// persist it, as for `Store`, but send no answer.
    Repair {
        /// The key.
        key: Bytes,
        /// The merge of the replies the read saw.
        object: KvObject,
        /// The down owner this replica stands in for, if any.
        hint: Option<NodeId>,
    },
    /// Hinted handoff, from a fallback to the owner it held `object` for:
    /// merge it into the stored object, persist it, then answer
    /// [`KvReply::HandedOff`]. Sent by a replica store, not the
    /// coordinator.
    Handoff {
        /// The key.
        key: Bytes,
        /// The hint.
        object: KvObject,
    },
    /// Tombstone collection: remove `key` if the stored object still equals
    /// `object` (and the store's own conditions hold); no answer. Sent for
    /// an [`Effect::Reap`].
    Reap {
        /// The key.
        key: Bytes,
        /// The tombstone every owner held.
        object: KvObject,
    },
}

/// A replica's answer to a [`KvMessage`], fed back with [`Coordinator::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvReply {
    /// The object of a `Store` is merged and persisted.
    Stored {
        /// The write.
        request: RequestId,
    },
    /// The stored object, answering a `Fetch`.
    Fetched {
        /// The read.
        request: RequestId,
        /// The replica's object (empty if it has none).
        object: KvObject,
    },
    /// The replica could not serve the request (overloaded, storage
    /// failure). For a `Store` it may or may not have persisted.
    Failed {
        /// The request.
        request: RequestId,
    },
    /// The owner persisted a [`KvMessage::Handoff`]: the fallback may drop
    /// its hint if it still has this digest. For the fallback's store; the
    /// coordinator ignores it.
    HandedOff {
        /// The key.
        key: Bytes,
        /// The xxh3-64 digest of the encoded object handed over.
        digest: u64,
    },
}

/// What a request achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `acks` replicas (`w` of them) persisted the write; `hinted` of those
    /// acks came from fallbacks holding it as a hint.
    Written {
        /// Acks when the reply left: `w`.
        acks: usize,
        /// How many of them were hinted.
        hinted: usize,
    },
    /// The merge of the first `replies` (`r`) replies; read it with
    /// [`KvObject::get`].
    Read {
        /// The merged object.
        object: KvObject,
        /// Replies merged: `r`.
        replies: usize,
    },
}

/// Why a request failed. Each variant says whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// The quorum does not fit the cluster. Nothing was sent.
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// Fewer usable replicas are up than the quorum needs. Nothing was sent;
    /// retryable once nodes recover.
    #[error("{up} usable replicas are up, the quorum needs {needed}")]
    Unavailable {
        /// `r` or `w`.
        needed: usize,
        /// The usable replicas in the preference list.
        up: usize,
    },
    /// A request with this id is already in flight. Nothing was sent.
    #[error("request id already in flight")]
    DuplicateRequest,
    /// `in_flight_max` requests are in flight. Nothing was sent; back off.
    #[error("the coordinator holds its bound of {in_flight_max} requests in flight")]
    Overloaded {
        /// The bound.
        in_flight_max: usize,
    },
    /// Fewer than `w` replicas acknowledged in time, or too many failed for
    /// `w` to be reached. The write is in doubt: `acks` replicas hold it and
    /// others may; a later read may or may not see it.
    #[error("write in doubt: {acks} of the {needed} acks needed")]
    WriteInDoubt {
        /// Acks received.
        acks: usize,
        /// `w`.
        needed: usize,
    },
    /// Fewer than `r` replicas replied in time. Nothing changed.
    #[error("read timed out with {replies} of the {needed} replies needed")]
    ReadTimeout {
        /// Replies received.
        replies: usize,
        /// `r`.
        needed: usize,
    },
    /// Too many replicas failed for `r` replies to be reached. Nothing
    /// changed.
    #[error("read failed: {replies} replies, {needed} needed, no replica left to ask")]
    ReadFailed {
        /// Replies received.
        replies: usize,
        /// `r`.
        needed: usize,
    },
}

/// An output for the driver to carry out, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `message` to replica `to` (this node included: the driver hands
    /// a message to itself to its own store).
    Send {
        /// The replica.
        to: NodeId,
        /// What to send.
        message: KvMessage,
    },
    /// Answer the client of `request`; sent once per request.
    Reply {
        /// The request.
        request: RequestId,
        /// Its outcome.
        result: Result<Outcome, CoordinatorError>,
    },
    /// Call [`Coordinator::tick`] at `at_ms` or later. Timers are kept
    /// inside too, so an early or extra tick is harmless.
    SetTimer {
        /// When.
        at_ms: u64,
    },
    /// Every one of the key's `n` natural owners answered a read with this
    /// same object, and it holds only tombstones: the deletion is known to
    /// every owner, so it may be collected. The driver removes the key at
    /// each owner only if that owner's stored object still equals `object`
    /// (a conditional delete: a write since then keeps the key), and only
    /// once no hint for the key is pending at any fallback, since a hint
    /// handed over after the tombstone is gone could bring back a value the
    /// tombstone superseded. Emitted only by reads that heard from all `n`
    /// owners (level `all`, or a hedge and late answers covering them).
    Reap {
        /// The key.
        key: Bytes,
        /// The tombstone every owner holds.
        object: KvObject,
    },
}

/// Counters a driver exports as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Reads sent to one more replica after the hedging delay.
    pub hedges_sent: u64,
    /// Hedges whose reply completed the read quorum.
    pub hedges_won: u64,
    /// Read-repair messages sent to stale replicas.
    pub read_repairs: u64,
    /// Requests that timed out before their quorum.
    pub timeouts: u64,
    /// Answers for requests no longer in flight, from replicas not asked,
    /// repeated, or of the wrong kind; all ignored.
    pub late_replies: u64,
    /// Tombstones found on every owner ([`Effect::Reap`]).
    pub reaps: u64,
}

/// Recent replica read latencies and the hedging delay taken from them.
#[derive(Clone, Debug, Default)]
pub struct LatencyTracker {
    /// The newest [`LATENCY_SAMPLES`] latencies, oldest first.
    samples: VecDeque<u64>,
}

impl LatencyTracker {
    /// Records one replica's reply latency.
    pub fn record(&mut self, latency_ms: u64) {
        if self.samples.len() == LATENCY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(latency_ms);
    }

    /// The 95th percentile (nearest rank) of the recent latencies, once at
    /// least [`LATENCY_SAMPLES_MIN`] are recorded.
    pub fn p95_ms(&self) -> Option<u64> {
        if self.samples.len() < LATENCY_SAMPLES_MIN {
            return None;
        }
        // Sorting a copy of at most LATENCY_SAMPLES values per read is
        // cheaper than keeping an order-statistics structure up to date.
        let mut sorted: Vec<u64> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest rank: ceil(0.95 * len), 1-based; len >= 1 here.
        let rank = (sorted.len() * 95).div_ceil(100);
        Some(sorted[rank - 1])
    }

    /// The hedging delay: the p95 clamped to `[min_ms, max_ms]`, or
    /// `max_ms` while too few latencies are known.
    pub fn hedge_delay_ms(&self, min_ms: u64, max_ms: u64) -> u64 {
        self.p95_ms()
            .map_or(max_ms, |p95| p95.clamp(min_ms, max_ms))
    }
}

/// The coordinator of every `one`/`quorum`/`all` request of one node.
///
/// # Driver contract
///
/// Inputs:
/// * [`start_write`](Self::start_write): the driver first checks the key
///   and value against [`KvLimits`](crate::kv::KvLimits), stamps the write
///   with [`KvObject::put`]/[`delete`](KvObject::delete) on this node's own
///   stored object and **persists it**; only then does it start the write
///   with the stamped object. This node must be in the preference list
///   (forward the request otherwise): a dot is minted only by a node that
///   stores the key, from what it stored.
/// * [`start_read`](Self::start_read), with the key's sloppy preference
///   list from `calm_ring`.
/// * [`step`](Self::step) for every [`KvReply`] from a replica, with its
///   sender as the transport authenticated it.
/// * [`tick`](Self::tick) at or after every [`Effect::SetTimer`] time.
///
/// Outputs: after any input, [`take_effects`](Self::take_effects), then
/// carry them out in order. A replica answers `Store` only after it has
/// persisted the object. Sends are best effort: a lost message ends as a
/// timeout or a later anti-entropy repair, never a wrong answer.
///
/// Getters: [`stats`](Self::stats), [`in_flight`](Self::in_flight),
/// [`hedge_delay_ms`](Self::hedge_delay_ms).
///
/// Time is always an argument (`now_ms`, monotonic milliseconds).
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    pending: BTreeMap<RequestId, Pending>,
    /// `(at_ms, request)`. A timer is re-checked against its request when
    /// due, so entries of finished requests are simply skipped.
    timers: BTreeSet<(u64, RequestId)>,
    latencies: LatencyTracker,
    effects: Vec<Effect>,
    stats: CoordinatorStats,
}

/// One request in flight.
#[derive(Debug)]
struct Pending {
    key: Bytes,
    /// The request's replication factor.
    n: usize,
    /// The usable replicas in preference order, asked or not yet.
    targets: Vec<Target>,
    deadline_ms: u64,
    /// Whether the client has its reply; the request then stays only to
    /// collect late answers (reads repair from them).
    replied: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Write {
        w: usize,
    },
    Read {
        r: usize,
        /// The merge of every reply so far.
        merged: KvObject,
        hedge_at_ms: Option<u64>,
        /// The replica the hedge went to.
        hedge: Option<NodeId>,
        /// Whether a repair was sent: those replicas have not yet confirmed
        /// the merge, so the read cannot prove a tombstone everywhere.
        repaired: bool,
    },
}

#[derive(Debug)]
struct Target {
    node: NodeId,
    hint: Option<NodeId>,
    /// When the request was sent to this replica; `None` while not asked.
    sent_at_ms: Option<u64>,
    answer: Answer,
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Waiting,
    Stored,
    /// A read reply, replaced by the merge once a repair carried it there.
    Fetched(KvObject),
    Failed,
}

impl Coordinator {
    /// A coordinator with nothing in flight.
    pub fn new(config: CoordinatorConfig) -> Self {
        assert!(
            config.hedge_delay_min_ms <= config.hedge_delay_max_ms,
            "hedge_delay_min_ms must not exceed hedge_delay_max_ms"
        );
        Self {
            config,
            pending: BTreeMap::new(),
            timers: BTreeSet::new(),
            latencies: LatencyTracker::default(),
            effects: Vec::new(),
            stats: CoordinatorStats::default(),
        }
    }

    /// Starts a write of the already stamped and persisted `object`: sends
    /// it to every usable replica at once (fallbacks with the hint naming
    /// the owner), replies at the `w`-th ack without waiting for the rest,
    /// and is in doubt at the timeout. An error means nothing was sent.
    pub fn start_write(
        &mut self,
        request: KvRequest,
        object: KvObject,
        list: &PreferenceList,
        now_ms: u64,
    ) -> Result<(), CoordinatorError> {
        let w = request.quorum.w();
        let mut targets = self.admit(&request, list, w)?;
        for target in &mut targets {
            target.sent_at_ms = Some(now_ms);
            self.effects.push(Effect::Send {
                to: target.node,
                message: KvMessage::Store {
                    request: request.id,
                    key: request.key.clone(),
                    object: object.clone(),
                    hint: target.hint,
                },
            });
        }
        let deadline_ms = now_ms.saturating_add(self.config.write_timeout_ms);
        self.insert(request, targets, deadline_ms, Kind::Write { w });
        Ok(())
    }

    /// Starts a read: asks the first `r` usable replicas in preference
    /// order and arms the hedge, which asks one more after
    /// [`hedge_delay_ms`](Self::hedge_delay_ms) if `r` replies are not in.
    /// An error means nothing was sent.
    pub fn start_read(
        &mut self,
        request: KvRequest,
        list: &PreferenceList,
        now_ms: u64,
    ) -> Result<(), CoordinatorError> {
        let r = request.quorum.r();
        let mut targets = self.admit(&request, list, r)?;
        for target in targets.iter_mut().take(r) {
            target.sent_at_ms = Some(now_ms);
            self.effects.push(fetch(request.id, &request.key, target));
        }
        let hedge_at_ms = (targets.len() > r).then(|| now_ms.saturating_add(self.hedge_delay_ms()));
        let deadline_ms = now_ms.saturating_add(self.config.read_timeout_ms);
        let id = request.id;
        let kind = Kind::Read {
            r,
            merged: KvObject::new(),
            hedge_at_ms,
            hedge: None,
            repaired: false,
        };
        self.insert(request, targets, deadline_ms, kind);
        if let Some(at_ms) = hedge_at_ms {
            self.arm(id, at_ms);
        }
        Ok(())
    }

    /// Feeds a replica's answer. Answers for requests no longer in flight,
    /// from replicas not asked, repeated, or of the wrong kind are counted
    /// as late and ignored.
    pub fn step(&mut self, from: NodeId, reply: KvReply, now_ms: u64) {
        let (id, answer) = match reply {
            KvReply::Stored { request } => (request, Answer::Stored),
            KvReply::Fetched { request, object } => (request, Answer::Fetched(object)),
            KvReply::Failed { request } => (request, Answer::Failed),
            KvReply::HandedOff { .. } => {
                self.stats.late_replies += 1;
                return;
            }
        };
        let Some(pending) = self.pending.get_mut(&id) else {
            self.stats.late_replies += 1;
            return;
        };
        let is_read = matches!(pending.kind, Kind::Read { .. });
        let expected = match answer {
            Answer::Stored => !is_read,
            Answer::Fetched(_) => is_read,
            _ => true,
        };
        let waiting = pending.waiting_target(from);
        let (Some(index), true) = (waiting, expected) else {
            // A Stored for a read or a Fetched for a write comes from a
            // confused or forged replica; ignoring it leaves the request to
            // the replicas that answer properly, or to its timeout.
            self.stats.late_replies += 1;
            return;
        };
        let target = &mut pending.targets[index];
        if let (Answer::Fetched(_), Some(sent_at_ms)) = (&answer, target.sent_at_ms) {
            self.latencies.record(now_ms.saturating_sub(sent_at_ms));
        }
        target.answer = answer;
        if is_read {
            self.read_answered(id, index, now_ms);
        } else {
            self.write_answered(id);
        }
    }

    /// Fires every timer due at `now_ms`: hedges, and deadlines (which
    /// answer the client with a timeout if it has no reply yet).
    pub fn tick(&mut self, now_ms: u64) {
        while let Some(&(at_ms, id)) = self.timers.first() {
            if at_ms > now_ms {
                break;
            }
            self.timers.pop_first();
            let Some(pending) = self.pending.get(&id) else {
                continue;
            };
            if pending.deadline_ms <= now_ms {
                self.expire(id);
            } else {
                self.hedge(id, now_ms);
            }
        }
    }

    /// Drains the effects produced since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The counters.
    pub fn stats(&self) -> &CoordinatorStats {
        &self.stats
    }

    /// Requests in flight, including answered ones still collecting late
    /// answers (reads repair from them).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The delay after which a read asks one more replica: the p95 of recent
    /// replica read latencies, clamped to the configured bounds.
    pub fn hedge_delay_ms(&self) -> u64 {
        self.latencies.hedge_delay_ms(
            self.config.hedge_delay_min_ms,
            self.config.hedge_delay_max_ms,
        )
    }

    /// Checks a new request against the bounds and the preference list and
    /// returns its usable replicas, none asked yet.
    fn admit(
        &self,
        request: &KvRequest,
        list: &PreferenceList,
        needed: usize,
    ) -> Result<Vec<Target>, CoordinatorError> {
        if self.pending.contains_key(&request.id) {
            return Err(CoordinatorError::DuplicateRequest);
        }
        if self.pending.len() >= self.config.in_flight_max {
            return Err(CoordinatorError::Overloaded {
                in_flight_max: self.config.in_flight_max,
            });
        }
        let n = request.quorum.n();
        // The list names min(n, members) owners, so fewer means a cluster
        // smaller than n.
        if list.owners.len() < n {
            return Err(QuorumError::ReplicasBeyondCluster {
                n,
                members: list.owners.len(),
            }
            .into());
        }
        let targets: Vec<Target> = list
            .replicas
            .iter()
            .filter(|replica| request.sloppy_quorum || replica.stands_in_for.is_none())
            .take(n)
            .map(|replica| Target {
                node: replica.node,
                hint: replica.stands_in_for,
                sent_at_ms: None,
                answer: Answer::Waiting,
            })
            .collect();
        if targets.len() < needed {
            return Err(CoordinatorError::Unavailable {
                needed,
                up: targets.len(),
            });
        }
        Ok(targets)
    }

    fn insert(&mut self, request: KvRequest, targets: Vec<Target>, deadline_ms: u64, kind: Kind) {
        let pending = Pending {
            n: request.quorum.n(),
            key: request.key,
            targets,
            deadline_ms,
            replied: false,
            kind,
        };
        self.pending.insert(request.id, pending);
        self.arm(request.id, deadline_ms);
    }

    fn arm(&mut self, id: RequestId, at_ms: u64) {
        self.timers.insert((at_ms, id));
        self.effects.push(Effect::SetTimer { at_ms });
    }

    fn reply(&mut self, id: RequestId, result: Result<Outcome, CoordinatorError>) {
        if let Some(pending) = self.pending.get_mut(&id) {
            debug_assert!(!pending.replied, "a request is answered once");
            pending.replied = true;
        }
        self.effects.push(Effect::Reply {
            request: id,
            result,
        });
    }

    /// Drops a request once it is answered and nothing it asked is still
    /// outstanding.
    fn retire_if_settled(&mut self, id: RequestId) {
        let settled = self
            .pending
            .get(&id)
            .is_some_and(|pending| pending.replied && pending.outstanding() == 0);
        if settled {
            self.pending.remove(&id);
        }
    }

    fn write_answered(&mut self, id: RequestId) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        let Kind::Write { w } = pending.kind else {
            return;
        };
        let acks = pending.count(|answer| *answer == Answer::Stored);
        if !pending.replied {
            if acks >= w {
                let hinted = pending
                    .targets
                    .iter()
                    .filter(|t| t.answer == Answer::Stored && t.hint.is_some())
                    .count();
                self.reply(id, Ok(Outcome::Written { acks, hinted }));
            } else if acks + pending.outstanding() < w {
                // Too many failures: w can no longer be reached. Some
                // replicas may hold the write, so it is in doubt, not undone.
                let error = CoordinatorError::WriteInDoubt { acks, needed: w };
                self.reply(id, Err(error));
                self.pending.remove(&id);
                return;
            }
        }
        self.retire_if_settled(id);
    }

    fn read_answered(&mut self, id: RequestId, index: usize, now_ms: u64) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        let replies = pending.count(|answer| matches!(answer, Answer::Fetched(_)));
        let (replied, target) = (pending.replied, &pending.targets[index]);
        let (from, failed) = (target.node, target.answer == Answer::Failed);
        let Kind::Read {
            r,
            ref mut merged,
            hedge,
            ..
        } = pending.kind
        else {
            return;
        };
        if let Answer::Fetched(object) = &target.answer {
            merged.merge(object);
        }
        if replied {
            // A late answer: it may be stale, or bring what the merge lacked.
            self.reap_if_unanimous(id);
            self.repair_stale(id);
        } else if replies >= r {
            let object = merged.clone();
            if hedge == Some(from) {
                self.stats.hedges_won += 1;
            }
            self.reply(id, Ok(Outcome::Read { object, replies }));
            self.reap_if_unanimous(id);
            self.repair_stale(id);
        } else if failed && !self.ask_next(id, now_ms) {
            let outstanding = self.pending.get(&id).map_or(0, Pending::outstanding);
            if replies + outstanding < r {
                let error = CoordinatorError::ReadFailed { replies, needed: r };
                self.reply(id, Err(error));
                self.pending.remove(&id);
                return;
            }
        }
        self.retire_if_settled(id);
    }

    /// Read repair: sends the merge to every replica whose answer differs
    /// from it. The merge dominates every answer, so differing means a
    /// strict causal predecessor (an empty answer included). A replica is
    /// repaired once per change of the merge: its recorded answer becomes
    /// the merge it was sent.
    fn repair_stale(&mut self, id: RequestId) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        let Kind::Read {
            ref merged,
            ref mut repaired,
            ..
        } = pending.kind
        else {
            return;
        };
        for target in &mut pending.targets {
            let Answer::Fetched(object) = &mut target.answer else {
                continue;
            };
            if object == merged {
                continue;
            }
            *object = merged.clone();
            *repaired = true;
            self.stats.read_repairs += 1;
            self.effects.push(Effect::Send {
                to: target.node,
                message: KvMessage::Repair {
                    key: pending.key.clone(),
                    object: merged.clone(),
                    hint: target.hint,
                },
            });
        }
    }

    /// Emits [`Effect::Reap`] if all `n` natural owners answered with the
    /// same tombstone-only object and no repair was needed.
    fn reap_if_unanimous(&mut self, id: RequestId) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        let Kind::Read {
            ref merged,
            repaired: false,
            ..
        } = pending.kind
        else {
            return;
        };
        let unanimous = pending.targets.len() == pending.n
            && pending.targets.iter().all(|t| {
                t.hint.is_none() && matches!(&t.answer, Answer::Fetched(object) if object == merged)
            });
        if unanimous && merged.is_tombstone() {
            self.stats.reaps += 1;
            self.effects.push(Effect::Reap {
                key: pending.key.clone(),
                object: merged.clone(),
            });
        }
    }

    /// Asks the next replica not yet asked; false if there is none.
    fn ask_next(&mut self, id: RequestId, now_ms: u64) -> bool {
        let Some(pending) = self.pending.get_mut(&id) else {
            return false;
        };
        let Some(target) = pending.targets.iter_mut().find(|t| t.sent_at_ms.is_none()) else {
            return false;
        };
        target.sent_at_ms = Some(now_ms);
        let effect = fetch(id, &pending.key, target);
        self.effects.push(effect);
        true
    }

    /// The hedge timer: if the read still lacks `r` replies, ask one more
    /// replica, once.
    fn hedge(&mut self, id: RequestId, now_ms: u64) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        if pending.replied {
            return;
        }
        let next = pending
            .targets
            .iter()
            .find(|t| t.sent_at_ms.is_none())
            .map(|t| t.node);
        let Kind::Read {
            hedge_at_ms: ref mut at,
            hedge: ref mut hedged,
            ..
        } = pending.kind
        else {
            return;
        };
        // The timer set may hold a stale entry for a reused request id.
        if hedged.is_some() || at.is_none_or(|at_ms| at_ms > now_ms) {
            return;
        }
        *at = None;
        if let Some(node) = next {
            *hedged = Some(node);
            self.stats.hedges_sent += 1;
            self.ask_next(id, now_ms);
        }
    }

    /// The deadline: a request without its reply fails with a timeout; one
    /// already answered stops waiting for late answers.
    fn expire(&mut self, id: RequestId) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        if pending.replied {
            return;
        }
        self.stats.timeouts += 1;
        let error = match pending.kind {
            Kind::Write { w } => CoordinatorError::WriteInDoubt {
                acks: pending.count(|answer| *answer == Answer::Stored),
                needed: w,
            },
            Kind::Read { r, .. } => CoordinatorError::ReadTimeout {
                replies: pending.count(|answer| matches!(answer, Answer::Fetched(_))),
                needed: r,
            },
        };
        self.effects.push(Effect::Reply {
            request: id,
            result: Err(error),
        });
    }
}

impl Pending {
    /// The index of `from` among the asked replicas still owing an answer.
    fn waiting_target(&self, from: NodeId) -> Option<usize> {
        self.targets
            .iter()
            .position(|t| t.node == from && t.sent_at_ms.is_some() && t.answer == Answer::Waiting)
    }

    /// Asked replicas that have not answered.
    fn outstanding(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.sent_at_ms.is_some() && t.answer == Answer::Waiting)
            .count()
    }

    fn count(&self, is: impl Fn(&Answer) -> bool) -> usize {
        self.targets.iter().filter(|t| is(&t.answer)).count()
    }
}

/// The read request to `target`.
fn fetch(request: RequestId, key: &[u8], target: &Target) -> Effect {
    Effect::Send {
        to: target.node,
        message: KvMessage::Fetch {
            request,
            key: key.to_vec(),
            hint: target.hint,
        },
    }
}

mod wire;

#[cfg(test)]
mod tests;
