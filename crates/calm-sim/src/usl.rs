//! Scalability on the simulator: the `local` level's throughput at K nodes,
//! measured in virtual time under an explicit [`CostModel`], so that
//! `calm bench usl --sim` can fit the Universal Scalability Law at node
//! counts no single machine runs.
//!
//! The cores are the real ones: K [`Replica`]s over [`MemoryEngine`]s on one
//! [`Ring`] (N = 3 replicas per key) apply the writes, refuse the keys they
//! do not replicate, and batch their deltas exactly as a running node does,
//! so every message counted is one the real replica sends. What the
//! simulator adds is time: each input a node's core handles occupies that
//! node's CPU for a price the cost model names, and the answer leaves when
//! the CPU is done with it.
//!
//! # The model ([`MODEL`])
//!
//! * Each node is one single-server FIFO CPU: an input waits for every
//!   input that reached the node before it, then occupies the CPU for its
//!   price; whatever it sends leaves when it is done, and arrives
//!   [`CostModel::network_latency_ns`] later (a constant).
//! * A client request costs [`CostModel::request_ns`] at the node the
//!   client picked (the API's decoding and answer), plus
//!   [`CostModel::apply_ns`] at the replica that applies it.
//! * A node that does not replicate the key (the core answers
//!   `NotReplica`) forwards the request to the key's first replica, as the
//!   server's API does: a message each way, each priced as a peer message.
//! * Every peer message costs [`CostModel::message_send_ns`] at its sender
//!   and [`CostModel::message_receive_ns`] at its receiver, plus
//!   [`CostModel::delta_key_ns`] per key of a delta batch.
//! * Every [`CostModel::commit_interval_ms`] each node commits, as the
//!   server's event loop does at the end of a turn: a
//!   [`Replica::flush`] (one fsync, [`CostModel::flush_ns`], when it had
//!   anything to sync; the held acknowledgements leave after it) and a
//!   [`Replica::tick`] (sends the buffered deltas), for
//!   [`CostModel::tick_ns`] besides the messages.
//! * Background load is included as a constant:
//!   [`CostModel::background_ns`] every
//!   [`CostModel::background_period_ms`] per node, standing for SWIM's
//!   probes, the ring gossip (fanout 3) and an anti-entropy round with one
//!   peer. Each of those reaches a fixed number of peers per period, so
//!   its per-node price does not depend on K.
//!
//! The load is a closed loop of [`UslSimConfig::clients_per_node`] × K
//! clients, each sending a counter increment on a uniformly random key of
//! [`UslSimConfig::keys_per_node`] × K to a uniformly random node and the
//! next one when the answer arrives. Throughput is acknowledged increments
//! per virtual second after the warmup.
//!
//! # Planted crosstalk
//!
//! [`Crosstalk`] adds work that grows with K to show what the fit makes of
//! it. [`Crosstalk::Broadcast`] sends every acknowledged write to all K
//! nodes, not only its N replicas: the work per write grows as K, which is
//! contention-shaped (σ; throughput levels off but does not fall).
//! [`Crosstalk::FullState`] sends each of those copies as a state with one
//! entry per node (a state-based counter written at every node), so the
//! work per write grows as K²: that is the USL's crosstalk (κ), and
//! throughput peaks and falls. Copies to non-replicas are priced, not
//! applied: a non-replica's core would store keys it does not own.
//!
//! # Default costs
//!
//! [`CostModel::default`] is priced from the release node on this 2-core
//! machine (BENCHMARKS.md, local increments on a 3-node `calm dev`): at 64
//! clients three nodes and the load generator sustain about 15,000
//! increments/s on two cores, under 90 µs of server CPU per increment
//! with its two deltas and its share of the syncs. The model gives 50 µs
//! to the gRPC request, 10 µs to the apply and 5 µs to each message end
//! and each delta key received, so one increment costs about 80 µs of
//! CPU at K = 3; three simulated nodes (three CPUs, no load generator)
//! then sustain about 35,000 increments/s. The fsync and redb commit is
//! priced at 150 µs (ARCHITECTURE's profile: 73 µs of fsync and the
//! commit's fixed cost), the commit runs every 2 ms, the server's tick
//! at 10 µs, and the background at 1 ms per second. The network is 100 µs
//! each way.
//!
//! ```
//! use calm_sim::usl::{UslSimConfig, measure};
//!
//! let mut config = UslSimConfig::new(6, 7);
//! config.duration_ms = 20;
//! config.warmup_ms = 10;
//! let point = measure(&config)?;
//! assert!(point.ops_per_s > 0.0);
//! assert_eq!(point, measure(&config)?, "one seed, one figure");
//! # Ok::<(), calm_sim::usl::UslSimError>(())
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::rc::Rc;

use calm_replica::{
    Message, Operation, Output, Replica, ReplicaConfig, ReplicaError, Reply, Request, RequestId,
    StepError,
};
use calm_ring::{KeyHash, Ownership, Placement, PlacementError, PreferenceList, Ring, RingConfig};
use calm_storage::{Limits, MemoryEngine, StorageError};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

/// The model, as reports print it.
pub const MODEL: &str = "each node one FIFO CPU; a client request costs request_ns where it \
     lands and apply_ns at its replica; a non-replica forwards it to the key's first replica (one \
     message each way); each peer message costs message_send_ns and message_receive_ns, plus \
     delta_key_ns per key of a delta batch; every commit_interval_ms a node commits (flush_ns \
     when it syncs, tick_ns, then its acks and deltas leave); background_ns per \
     background_period_ms per node; network_latency_ns each way; a closed loop of \
     clients_per_node x K clients sends increments on uniform keys to uniform nodes";
/// N: the replicas of each key, as the server's default.
pub const REPLICATION_FACTOR: usize = 3;
/// The most nodes one measurement simulates.
pub const NODES_MAX: usize = 1024;
/// The most clients one measurement runs, over all nodes.
pub const CLIENTS_MAX: usize = 65_536;
/// The most keys per node the load picks from.
pub const KEYS_PER_NODE_MAX: usize = 65_536;
/// The longest virtual warmup, and the longest measured window.
pub const DURATION_MS_MAX: u64 = 60_000;
/// The highest price of any one input, and the longest period.
pub const COST_NS_MAX: u64 = 1_000_000_000;
/// The wall clock the cores see at virtual time 0, in ms.
const EPOCH_MS: u64 = 1_000;

/// What each input costs a node's CPU, in virtual nanoseconds, and the
/// periods of the timers. See the module's documentation for the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CostModel {
    /// A client request at the node it reached: decoding it and encoding
    /// its answer (gRPC).
    pub request_ns: u64,
    /// A replica applying an increment and writing it (unsynced).
    pub apply_ns: u64,
    /// Sending one peer message.
    pub message_send_ns: u64,
    /// Receiving one peer message.
    pub message_receive_ns: u64,
    /// Joining and writing one key of a received delta batch.
    pub delta_key_ns: u64,
    /// One entry of a planted full-state copy ([`Crosstalk::FullState`]).
    pub crosstalk_entry_ns: u64,
    /// One group commit's sync (fsync and commit), when there is anything
    /// to sync.
    pub flush_ns: u64,
    /// One commit's fixed work besides the sync (timers, the tick).
    pub tick_ns: u64,
    /// How often each node commits.
    pub commit_interval_ms: u64,
    /// Gossip, failure detection and anti-entropy, per period per node.
    pub background_ns: u64,
    /// The period of the background work.
    pub background_period_ms: u64,
    /// One way through the network.
    pub network_latency_ns: u64,
}

impl Default for CostModel {
    /// The release node on this machine; see the module's documentation.
    fn default() -> Self {
        CostModel {
            request_ns: 50_000,
            apply_ns: 10_000,
            message_send_ns: 5_000,
            message_receive_ns: 5_000,
            delta_key_ns: 5_000,
            crosstalk_entry_ns: 100,
            flush_ns: 150_000,
            tick_ns: 10_000,
            commit_interval_ms: 2,
            background_ns: 1_000_000,
            background_period_ms: 1_000,
            network_latency_ns: 100_000,
        }
    }
}

impl fmt::Display for CostModel {
    /// The prices in µs, one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |ns: u64| ns as f64 / 1_000.0;
        write!(
            f,
            "request {} µs, apply {} µs, message send {} µs, receive {} µs, delta key {} µs, \
             crosstalk entry {} µs, flush {} µs and tick {} µs every {} ms, background {} µs \
             every {} ms, network {} µs each way",
            us(self.request_ns),
            us(self.apply_ns),
            us(self.message_send_ns),
            us(self.message_receive_ns),
            us(self.delta_key_ns),
            us(self.crosstalk_entry_ns),
            us(self.flush_ns),
            us(self.tick_ns),
            self.commit_interval_ms,
            us(self.background_ns),
            self.background_period_ms,
            us(self.network_latency_ns),
        )
    }
}

impl CostModel {
    fn validate(&self) -> Result<(), UslSimError> {
        let prices = [
            self.request_ns,
            self.apply_ns,
            self.message_send_ns,
            self.message_receive_ns,
            self.delta_key_ns,
            self.crosstalk_entry_ns,
            self.flush_ns,
            self.tick_ns,
            self.background_ns,
            self.network_latency_ns,
        ];
        if prices.iter().any(|&ns| ns > COST_NS_MAX) {
            return Err(UslSimError::InvalidConfig(
                "every price must be at most COST_NS_MAX",
            ));
        }
        let periods = [self.commit_interval_ms, self.background_period_ms];
        if periods
            .iter()
            .any(|&ms| ms == 0 || ms * 1_000_000 > COST_NS_MAX)
        {
            return Err(UslSimError::InvalidConfig(
                "commit_interval_ms and background_period_ms must be from 1 to 1,000",
            ));
        }
        Ok(())
    }
}

/// Work planted on top of the real replication, growing with K.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crosstalk {
    /// None: only the replication the cores do.
    #[default]
    None,
    /// Every acknowledged write is also sent to each of the K − N nodes
    /// that do not replicate its key: work per write grows as K.
    Broadcast,
    /// As `Broadcast`, each copy a state of K entries: work per write
    /// grows as K².
    FullState,
}

/// One measurement's setup and bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UslSimConfig {
    /// K: how many nodes, from 1 to [`NODES_MAX`].
    pub nodes: usize,
    /// Closed-loop clients per node (K times as many in all, at most
    /// [`CLIENTS_MAX`]).
    pub clients_per_node: usize,
    /// Keys per node the clients pick from (K times as many in all), so
    /// that how often two writes meet on one key does not change with K.
    pub keys_per_node: usize,
    /// What every input costs.
    pub costs: CostModel,
    /// The measured window, virtual ms, from 1 to [`DURATION_MS_MAX`].
    pub duration_ms: u64,
    /// The unmeasured start, virtual ms, at most [`DURATION_MS_MAX`].
    pub warmup_ms: u64,
    /// Seeds every choice of node, key and timer phase.
    pub seed: u64,
    /// Planted crosstalk, if any.
    pub crosstalk: Crosstalk,
}

impl UslSimConfig {
    /// `nodes` nodes with 48 clients each (enough to keep a node's CPU
    /// busy through the 2 ms commit window), 256 keys per node, the
    /// default costs, 100 ms measured after 20 ms, and no crosstalk.
    pub fn new(nodes: usize, seed: u64) -> UslSimConfig {
        UslSimConfig {
            nodes,
            clients_per_node: 48,
            keys_per_node: 256,
            costs: CostModel::default(),
            duration_ms: 100,
            warmup_ms: 20,
            seed,
            crosstalk: Crosstalk::None,
        }
    }

    /// Checks every bound; [`measure`] calls it first.
    pub fn validate(&self) -> Result<(), UslSimError> {
        let invalid = |reason| Err(UslSimError::InvalidConfig(reason));
        if !(1..=NODES_MAX).contains(&self.nodes) {
            return invalid("nodes must be from 1 to NODES_MAX");
        }
        let clients = self.nodes.saturating_mul(self.clients_per_node);
        if self.clients_per_node == 0 || clients > CLIENTS_MAX {
            return invalid("clients_per_node must be at least 1, and at most CLIENTS_MAX in all");
        }
        if !(1..=KEYS_PER_NODE_MAX).contains(&self.keys_per_node) {
            return invalid("keys_per_node must be from 1 to KEYS_PER_NODE_MAX");
        }
        if !(1..=DURATION_MS_MAX).contains(&self.duration_ms) || self.warmup_ms > DURATION_MS_MAX {
            return invalid(
                "duration_ms must be from 1 to, and warmup_ms at most, DURATION_MS_MAX",
            );
        }
        self.costs.validate()
    }
}

/// What one measurement found. Per-operation figures are over the
/// operations acknowledged in the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimPoint {
    /// K.
    pub nodes: usize,
    /// The closed-loop clients, over all nodes.
    pub clients: usize,
    /// Increments acknowledged to their clients in the window.
    pub ops: u64,
    /// `ops` per virtual second.
    pub ops_per_s: f64,
    /// Requests answered with an error in the window (none expected).
    pub errors: u64,
    /// Peer messages the cores sent (delta batches), and forwards and
    /// their answers, per operation; planted copies are not included.
    pub messages_per_op: f64,
    /// Requests forwarded by a non-replica, per operation.
    pub forwards_per_op: f64,
    /// Keys in the delta batches received, per operation (N − 1 when no
    /// delta is dropped).
    pub delta_keys_per_op: f64,
    /// Syncs (fsyncs), per operation.
    pub syncs_per_op: f64,
    /// Planted crosstalk copies, per operation.
    pub crosstalk_messages_per_op: f64,
    /// The share of the nodes' CPU time busy in the window, 0 to 1.
    pub cpu_utilization: f64,
    /// Latency from the client's send to its answer, virtual µs.
    pub latency: LatencyUs,
}

/// Latency percentiles in virtual µs; every figure 0 with no sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyUs {
    /// The mean.
    pub mean: f64,
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
    /// The slowest.
    pub max: f64,
}

/// Why a measurement did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum UslSimError {
    /// A bound of the config is exceeded; nothing ran.
    #[error("invalid USL simulation: {0}")]
    InvalidConfig(&'static str),
    /// The ring could not be built; nothing ran.
    #[error("cannot place the nodes: {0}")]
    Placement(#[from] PlacementError),
    /// A replica did not open; nothing ran.
    #[error("a replica did not open: {0}")]
    Storage(#[from] StorageError),
    /// A core refused a message or a flush: a bug in the simulator or the
    /// core, as every message is one a core produced. The run stopped.
    #[error("node {node} refused an input: {error}")]
    Core {
        /// The refusing node.
        node: NodeId,
        /// What it said.
        error: StepError,
    },
}

/// Runs one measurement: K nodes under the closed loop for the warmup
/// and the window, in virtual time. The same config gives the same point.
pub fn measure(config: &UslSimConfig) -> Result<SimPoint, UslSimError> {
    config.validate()?;
    let mut sim = UslSim::new(config.clone())?;
    sim.start();
    sim.run()?;
    Ok(sim.point())
}

/// An input waiting for a node's CPU.
#[derive(Debug)]
enum Job {
    /// A client's increment, at the node the client picked.
    Request { id: u64 },
    /// A request forwarded by a non-replica, at the key's replica.
    Forwarded { id: u64 },
    /// The forwarded request's answer, back at the node that forwarded it.
    Answer { id: u64, ok: bool },
    /// An encoded replica message.
    Peer(Vec<u8>),
    /// A planted crosstalk copy of `entries` entries.
    Crosstalk { entries: u64 },
    /// The group commit: flush and tick.
    Commit,
    /// Gossip, failure detection and anti-entropy.
    Background,
}

/// What happens at a virtual instant.
#[derive(Debug)]
enum Event {
    /// A job reaches a node.
    Arrive { node: usize, job: Job },
    /// A request's answer reaches its client.
    Answered { id: u64, ok: bool },
    /// A client sends its next request.
    Send { client: usize },
}

/// An event in the queue, ordered by time, then by the order scheduled.
#[derive(Debug)]
struct Scheduled {
    at_ns: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_ns, self.seq).cmp(&(other.at_ns, other.seq))
    }
}

/// A request in flight.
struct Pending {
    client: usize,
    key: usize,
    /// The node the client sent it to.
    entry: usize,
    sent_ns: u64,
}

/// What running one job cost and produced.
#[derive(Default)]
struct Work {
    cost_ns: u64,
    /// Jobs for other nodes, each one message sent.
    sends: Vec<(usize, Job)>,
    /// Answers for clients: request and success.
    answers: Vec<(u64, bool)>,
}

/// Counts over the measured window.
#[derive(Default)]
struct Tally {
    ops: u64,
    errors: u64,
    messages: u64,
    forwards: u64,
    delta_keys: u64,
    syncs: u64,
    crosstalk_messages: u64,
    busy_ns: u64,
    latencies_ns: Vec<u64>,
}

/// One ring shared by every replica. Each replica owning a clone of a
/// large ring's token table makes every lookup a cache miss at K = 100
/// and more; the answers are the same.
struct SharedRing(Rc<Ring>);

impl Placement for SharedRing {
    fn members(&self) -> &[NodeId] {
        self.0.members()
    }

    fn preference_list(
        &self,
        key: KeyHash,
        n: usize,
        is_down: &dyn Fn(NodeId) -> bool,
    ) -> PreferenceList {
        self.0.preference_list(key, n, is_down)
    }

    fn ownership(&self) -> Ownership {
        self.0.ownership()
    }
}

struct Node {
    replica: Replica<MemoryEngine, SharedRing>,
    /// When the CPU finishes the last input it has taken.
    busy_until_ns: u64,
}

struct UslSim {
    config: UslSimConfig,
    ring: Rc<Ring>,
    nodes: Vec<Node>,
    /// A min-heap: the earliest event first.
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: StdRng,
    /// Requests in flight by id. A HashMap is safe for determinism here:
    /// it is only looked up by id, never iterated.
    pending: HashMap<u64, Pending>,
    next_id: u64,
    window_ns: (u64, u64),
    tally: Tally,
}

impl UslSim {
    fn new(config: UslSimConfig) -> Result<UslSim, UslSimError> {
        let members: Vec<NodeId> = (0..config.nodes).map(node_id).collect();
        let ring = Rc::new(Ring::new(RingConfig::default(), &members)?);
        let clients = config.nodes * config.clients_per_node;
        let nodes = members
            .iter()
            .map(|&id| {
                let mut replica_config = ReplicaConfig::new(id);
                replica_config.replication_factor = REPLICATION_FACTOR;
                // Every client's ack may wait at one node for one commit.
                replica_config.unsynced_requests_max = clients + 1;
                let engine = MemoryEngine::new(Limits::default());
                let placement = SharedRing(Rc::clone(&ring));
                let replica = Replica::open(replica_config, placement, engine)?;
                Ok(Node {
                    replica,
                    busy_until_ns: 0,
                })
            })
            .collect::<Result<Vec<Node>, UslSimError>>()?;
        let warmup_ns = config.warmup_ms * 1_000_000;
        let window_ns = (warmup_ns, warmup_ns + config.duration_ms * 1_000_000);
        Ok(UslSim {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            ring,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            pending: HashMap::new(),
            next_id: 0,
            window_ns,
            tally: Tally::default(),
        })
    }

    /// Schedules every node's timers at a random phase, and every client's
    /// first request within the first commit interval.
    fn start(&mut self) {
        let costs = self.config.costs;
        for node in 0..self.nodes.len() {
            for (period_ms, job) in [
                (costs.commit_interval_ms, Job::Commit),
                (costs.background_period_ms, Job::Background),
            ] {
                let at_ns = self.rng.random_range(0..period_ms * 1_000_000);
                self.schedule(at_ns, Event::Arrive { node, job });
            }
        }
        let first_ns = costs.commit_interval_ms * 1_000_000;
        for client in 0..self.nodes.len() * self.config.clients_per_node {
            let at_ns = self.rng.random_range(0..first_ns);
            self.schedule(at_ns, Event::Send { client });
        }
    }

    /// Runs every event up to the end of the window.
    fn run(&mut self) -> Result<(), UslSimError> {
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at_ns >= self.window_ns.1 {
                break;
            }
            match next.event {
                Event::Send { client } => self.send(client, next.at_ns),
                Event::Answered { id, ok } => self.answered(id, ok, next.at_ns),
                Event::Arrive { node, job } => self.arrive(node, job, next.at_ns)?,
            }
        }
        Ok(())
    }

    fn schedule(&mut self, at_ns: u64, event: Event) {
        self.seq += 1;
        let seq = self.seq;
        self.queue.push(Reverse(Scheduled { at_ns, seq, event }));
    }

    fn in_window(&self, at_ns: u64) -> bool {
        (self.window_ns.0..self.window_ns.1).contains(&at_ns)
    }

    /// A client sends an increment on a random key to a random node.
    fn send(&mut self, client: usize, now_ns: u64) {
        let node = self.rng.random_range(0..self.nodes.len());
        let key = self
            .rng
            .random_range(0..self.nodes.len() * self.config.keys_per_node);
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(
            id,
            Pending {
                client,
                key,
                entry: node,
                sent_ns: now_ns,
            },
        );
        let at_ns = now_ns + self.config.costs.network_latency_ns;
        self.schedule(
            at_ns,
            Event::Arrive {
                node,
                job: Job::Request { id },
            },
        );
    }

    /// A request's answer reaches its client, which sends the next one.
    fn answered(&mut self, id: u64, ok: bool, now_ns: u64) {
        // Every id answered was inserted by `send` and is answered once.
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        if self.in_window(now_ns) {
            if ok {
                self.tally.ops += 1;
                self.tally.latencies_ns.push(now_ns - pending.sent_ns);
            } else {
                self.tally.errors += 1;
            }
        }
        self.send(pending.client, now_ns);
    }

    /// A job reaches `node`: it waits for the CPU, runs, and what it sends
    /// leaves when the CPU is done with it. The job's effect on the core is
    /// applied at once, which is exact for a FIFO server: nothing reaches
    /// the core between the job's arrival and its start that the FIFO
    /// would run before it.
    fn arrive(&mut self, node: usize, job: Job, at_ns: u64) -> Result<(), UslSimError> {
        let start_ns = at_ns.max(self.nodes[node].busy_until_ns);
        let mut work = Work::default();
        self.run_job(node, job, start_ns, &mut work)?;
        work.cost_ns += work.sends.len() as u64 * self.config.costs.message_send_ns;
        let end_ns = start_ns + work.cost_ns;
        self.nodes[node].busy_until_ns = end_ns;
        let (from, to) = self.window_ns;
        self.tally.busy_ns += end_ns.min(to).saturating_sub(start_ns.max(from));
        let counted = self.in_window(end_ns);
        let arrive_ns = end_ns + self.config.costs.network_latency_ns;
        for (to, job) in work.sends {
            if counted {
                match job {
                    Job::Crosstalk { .. } => self.tally.crosstalk_messages += 1,
                    _ => self.tally.messages += 1,
                }
            }
            self.schedule(arrive_ns, Event::Arrive { node: to, job });
        }
        for (id, ok) in work.answers {
            self.schedule(arrive_ns, Event::Answered { id, ok });
        }
        Ok(())
    }

    /// Runs one job on `node`'s core at `now_ns`, adding its price and
    /// what it produced to `work`.
    fn run_job(
        &mut self,
        node: usize,
        job: Job,
        now_ns: u64,
        work: &mut Work,
    ) -> Result<(), UslSimError> {
        let costs = self.config.costs;
        let now_ms = EPOCH_MS + now_ns / 1_000_000;
        match job {
            Job::Request { id } => {
                work.cost_ns += costs.request_ns;
                self.submit(node, id, false, now_ns, work);
            }
            Job::Forwarded { id } => {
                work.cost_ns += costs.message_receive_ns;
                self.submit(node, id, true, now_ns, work);
            }
            Job::Answer { id, ok } => {
                work.cost_ns += costs.message_receive_ns;
                work.answers.push((id, ok));
            }
            Job::Peer(bytes) => self.receive(node, &bytes, now_ms, now_ns, work)?,
            Job::Crosstalk { entries } => {
                work.cost_ns += costs.message_receive_ns
                    + costs.delta_key_ns
                    + entries * costs.crosstalk_entry_ns;
            }
            Job::Commit => self.commit(node, now_ms, now_ns, work)?,
            Job::Background => {
                work.cost_ns += costs.background_ns;
                let next_ns = now_ns + costs.background_period_ms * 1_000_000;
                let job = Job::Background;
                self.schedule(next_ns, Event::Arrive { node, job });
            }
        }
        Ok(())
    }

    /// Submits request `id` to `node`'s replica: applied there, or
    /// forwarded to the key's first replica if the core says this node is
    /// not one. A request already `forwarded` is not forwarded again, as
    /// the server's API does not.
    fn submit(&mut self, node: usize, id: u64, forwarded: bool, now_ns: u64, work: &mut Work) {
        // Only `send` inserts pending requests, and each is answered once.
        let Some(key) = self.pending.get(&id).map(|p| p.key) else {
            return;
        };
        let request = Request {
            id: RequestId(id),
            key: key_bytes(key),
            op: Operation::Increment(1),
            token: None,
        };
        self.nodes[node]
            .replica
            .submit(request, EPOCH_MS + now_ns / 1_000_000);
        let outputs = self.nodes[node].replica.take_outputs();
        if outputs.is_empty() {
            // Applied; the ack waits for the next commit.
            work.cost_ns += self.config.costs.apply_ns;
        }
        for output in outputs {
            match output {
                Output::Reply(Reply {
                    id: RequestId(id),
                    result: Err(ReplicaError::NotReplica { replicas }),
                }) if !forwarded && !replicas.is_empty() => {
                    if self.in_window(now_ns) {
                        self.tally.forwards += 1;
                    }
                    let owner = index(replicas[0]);
                    work.sends.push((owner, Job::Forwarded { id }));
                }
                output => self.route(node, output, work),
            }
        }
    }

    /// A replica message reaches `node`.
    fn receive(
        &mut self,
        node: usize,
        bytes: &[u8],
        now_ms: u64,
        now_ns: u64,
        work: &mut Work,
    ) -> Result<(), UslSimError> {
        let costs = self.config.costs;
        // Decoded here only to price it: the core decodes it again.
        let keys = match Message::decode(bytes) {
            Ok(Message::Deltas(batch)) => batch.deltas.len() as u64,
            _ => 0,
        };
        work.cost_ns += costs.message_receive_ns + keys * costs.delta_key_ns;
        if self.in_window(now_ns) {
            self.tally.delta_keys += keys;
        }
        let replica = &mut self.nodes[node].replica;
        replica
            .step(bytes, now_ms)
            .map_err(|error| UslSimError::Core {
                node: node_id(node),
                error,
            })?;
        for output in replica.take_outputs() {
            self.route(node, output, work);
        }
        Ok(())
    }

    /// The group commit on `node`: flush (one sync), then tick; the held
    /// acks and the deltas leave after it. Schedules the next commit.
    fn commit(
        &mut self,
        node: usize,
        now_ms: u64,
        now_ns: u64,
        work: &mut Work,
    ) -> Result<(), UslSimError> {
        let costs = self.config.costs;
        let replica = &mut self.nodes[node].replica;
        let syncs_before = replica.stats().syncs;
        let core_error = |error| UslSimError::Core {
            node: node_id(node),
            error,
        };
        replica.flush().map_err(core_error)?;
        let synced = replica.stats().syncs > syncs_before;
        replica.tick(now_ms);
        let outputs = replica.take_outputs();
        work.cost_ns += costs.tick_ns;
        if synced {
            work.cost_ns += costs.flush_ns;
            if self.in_window(now_ns) {
                self.tally.syncs += 1;
            }
        }
        for output in outputs {
            self.route(node, output, work);
        }
        let next_ns = now_ns + costs.commit_interval_ms * 1_000_000;
        self.schedule(
            next_ns,
            Event::Arrive {
                node,
                job: Job::Commit,
            },
        );
        Ok(())
    }

    /// Carries out one output of `node`'s core: a message to a peer, or
    /// an answer to the client (through the node that forwarded the
    /// request, if one did), with the planted copies of an acknowledged
    /// write.
    fn route(&mut self, node: usize, output: Output, work: &mut Work) {
        let reply = match output {
            Output::Send { to, message } => {
                work.sends.push((index(to), Job::Peer(message)));
                return;
            }
            Output::Reply(reply) => reply,
        };
        let RequestId(id) = reply.id;
        let ok = reply.result.is_ok();
        let Some((key, entry)) = self.pending.get(&id).map(|p| (p.key, p.entry)) else {
            return;
        };
        if ok {
            self.plant_crosstalk(node, key, work);
        }
        // A request the client sent elsewhere was forwarded here: its
        // answer goes back through the node that forwarded it.
        if entry == node {
            work.answers.push((id, ok));
        } else {
            work.sends.push((entry, Job::Answer { id, ok }));
        }
    }

    /// The planted copies of an acknowledged write on `key` at `node`:
    /// one to every node that does not replicate it.
    fn plant_crosstalk(&mut self, node: usize, key: usize, work: &mut Work) {
        let entries = match self.config.crosstalk {
            Crosstalk::None => return,
            Crosstalk::Broadcast => 1,
            Crosstalk::FullState => self.nodes.len() as u64,
        };
        let owners = self
            .ring
            .owners(KeyHash::of(&key_bytes(key)), REPLICATION_FACTOR);
        for other in 0..self.nodes.len() {
            if other != node && !owners.contains(&node_id(other)) {
                work.sends.push((other, Job::Crosstalk { entries }));
            }
        }
    }
}

impl UslSim {
    /// The figures of the window.
    fn point(&mut self) -> SimPoint {
        let tally = &mut self.tally;
        let ops = tally.ops;
        let per_op = |count: u64| {
            if ops == 0 {
                0.0
            } else {
                count as f64 / ops as f64
            }
        };
        let window_ns = self.window_ns.1 - self.window_ns.0;
        let cpu_ns = window_ns as f64 * self.nodes.len() as f64;
        tally.latencies_ns.sort_unstable();
        SimPoint {
            nodes: self.nodes.len(),
            clients: self.nodes.len() * self.config.clients_per_node,
            ops,
            ops_per_s: ops as f64 / (window_ns as f64 / 1e9),
            errors: tally.errors,
            messages_per_op: per_op(tally.messages),
            forwards_per_op: per_op(tally.forwards),
            delta_keys_per_op: per_op(tally.delta_keys),
            syncs_per_op: per_op(tally.syncs),
            crosstalk_messages_per_op: per_op(tally.crosstalk_messages),
            cpu_utilization: tally.busy_ns as f64 / cpu_ns,
            latency: LatencyUs::of_sorted_ns(&tally.latencies_ns),
        }
    }
}

impl LatencyUs {
    /// The percentiles of `sorted` latencies in ns (nearest rank).
    fn of_sorted_ns(sorted: &[u64]) -> LatencyUs {
        let Some(&max) = sorted.last() else {
            return LatencyUs::default();
        };
        let us = |ns: u64| ns as f64 / 1_000.0;
        let at = |quantile: f64| {
            let rank = (quantile * sorted.len() as f64).ceil() as usize;
            us(sorted[rank.clamp(1, sorted.len()) - 1])
        };
        let sum: u64 = sorted.iter().sum();
        LatencyUs {
            mean: us(sum) / sorted.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: us(max),
        }
    }
}

/// Node `index`'s id: 1-based, as the server numbers nodes.
fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

/// The index of node `id` in the simulation.
fn index(id: NodeId) -> usize {
    // Ids come from `node_id`, so they start at 1.
    usize::try_from(id.0 - 1).expect("node ids fit usize")
}

/// Key `index`'s bytes.
fn key_bytes(index: usize) -> Vec<u8> {
    format!("usl-{index:08}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short measurement: small enough for debug builds.
    fn short(nodes: usize, crosstalk: Crosstalk) -> UslSimConfig {
        let mut config = UslSimConfig::new(nodes, 11);
        config.duration_ms = 30;
        config.warmup_ms = 10;
        config.clients_per_node = 24;
        config.crosstalk = crosstalk;
        config
    }

    fn run(config: &UslSimConfig) -> SimPoint {
        measure(config).unwrap_or_else(|error| panic!("{} nodes: {error}", config.nodes))
    }

    #[test]
    fn one_seed_gives_one_figure() {
        let config = short(12, Crosstalk::None);
        assert_eq!(run(&config), run(&config));
        let mut other = config.clone();
        other.seed += 1;
        assert_ne!(run(&config).latency, run(&other).latency);
    }

    #[test]
    fn message_counts_are_the_real_replicas() {
        // N = 3: each increment's delta reaches both other replicas, one
        // sync serves many increments, and a non-replica forwards the
        // 1 − 3/K of requests that reach it (K = 3: none).
        let at_three = run(&short(3, Crosstalk::None));
        assert_eq!(at_three.errors, 0);
        assert_eq!(at_three.forwards_per_op, 0.0);
        assert!(
            (1.8..=2.0).contains(&at_three.delta_keys_per_op),
            "{at_three:?}"
        );
        assert!(at_three.syncs_per_op < 0.2, "{at_three:?}");
        let at_twelve = run(&short(12, Crosstalk::None));
        assert!(
            (0.65..=0.85).contains(&at_twelve.forwards_per_op),
            "{at_twelve:?}"
        );
        assert_eq!(at_twelve.crosstalk_messages_per_op, 0.0);
    }

    #[test]
    fn throughput_grows_linearly_with_nodes_without_crosstalk() {
        // Per node, a request costs more at K = 24 than at K = 3 (it is
        // forwarded, and the deltas travel in thinner batches), but both
        // level off: from 24 to 48 nodes throughput doubles.
        let x = |nodes| run(&short(nodes, Crosstalk::None)).ops_per_s;
        let (x3, x24, x48) = (x(3), x(24), x(48));
        let doubling = x48 / x24;
        assert!(
            (1.85..=2.15).contains(&doubling),
            "X(48)/X(24) = {doubling}"
        );
        let growth = x48 / x3;
        assert!((10.0..=16.5).contains(&growth), "X(48)/X(3) = {growth}");
    }

    #[test]
    fn planted_crosstalk_lowers_throughput_per_node_as_nodes_grow() {
        for crosstalk in [Crosstalk::Broadcast, Crosstalk::FullState] {
            let per_node = |nodes: usize| run(&short(nodes, crosstalk)).ops_per_s / nodes as f64;
            let (at_6, at_24, at_48) = (per_node(6), per_node(24), per_node(48));
            assert!(
                at_6 > at_24 && at_24 > at_48,
                "{crosstalk:?}: {at_6} > {at_24} > {at_48} per node"
            );
        }
    }

    #[test]
    fn out_of_bounds_configs_are_refused() {
        let check = |change: fn(&mut UslSimConfig)| {
            let mut config = UslSimConfig::new(3, 1);
            change(&mut config);
            assert!(matches!(
                measure(&config),
                Err(UslSimError::InvalidConfig(_))
            ));
        };
        check(|c| c.nodes = 0);
        check(|c| c.nodes = NODES_MAX + 1);
        check(|c| c.clients_per_node = 0);
        check(|c| c.keys_per_node = 0);
        check(|c| c.duration_ms = 0);
        check(|c| c.costs.commit_interval_ms = 0);
        check(|c| c.costs.request_ns = COST_NS_MAX + 1);
    }
}
