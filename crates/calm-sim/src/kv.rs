//! The `one`/`quorum`/`all` levels under the simulator: five nodes, each a
//! [`KvStore`](calm_replica::kv::store::KvStore) over its own
//! crash-simulating [`MemoryEngine`](calm_storage::MemoryEngine) and a
//! [`Coordinator`](calm_replica::coordinator::Coordinator), driven by their
//! contract (inputs; `take_batches`, write and sync, `synced`; outputs) on a
//! virtual clock over a network that loses, duplicates, delays, reorders
//! and partitions.
//!
//! Clients put (blind or with the context of their last read), get and
//! delete a handful of keys, so that writes conflict, at level `one`,
//! `quorum` or `all`, strict or sloppy. A client sends each request
//! straight to a natural owner of the key that is up (an owner must
//! coordinate a write: it mints the dot), over a reliable client link.
//! Nemeses partition, block one way, crash and restart a minority (between
//! turns, or inside one after the batch is written and before the sync),
//! and pause processes; the sim marks a node down in a preference list when it
//! is crashed or cut off from the coordinator (an oracle standing in for
//! failure detection). Fallbacks hand hints over when their owner is
//! reachable again, and owners run anti-entropy between them.
//!
//! Checkers ([`KvSim::check_all`]), for the levels' three claims and two
//! more:
//!
//! * [`KvSim::check_reads_see_acknowledged_writes`]: with `w + r > n` and
//!   no hinted ack, a read that starts after a write was acknowledged
//!   returns it or a causal successor (its clock contains the write's dot);
//! * [`KvSim::check_acknowledged_writes_kept`]: after a heal, every owner's
//!   object covers every acknowledged write's dot, crashes notwithstanding;
//! * [`KvSim::check_hinted_writes_reach_owners`]: a write acknowledged with
//!   hints reaches every owner a fallback stood in for;
//! * [`KvSim::check_convergence`]: every owner of a key has the same digest;
//! * [`KvSim::check_no_resurrection`]: no value that a delete (or a put)
//!   superseded through its context is live again at any owner.
//!
//! # What the model leaves out
//!
//! * Anti-entropy compares the owners' digest maps directly (an oracle)
//!   instead of exchanging Merkle trees; the objects it ships travel the
//!   faulty network, and only durable ones leave (`state_transfer`).
//! * With the store's default grace (hours), no reap completes in a run of
//!   seconds: coordinators' `Reap`s reach the stores and are refused. A
//!   completed reap drops the delete's dot, which the clock-based read
//!   checker would count as a miss, so runs with short graces would need a
//!   value-based read checker first.
//!
//! # A tour
//!
//! ```
//! use calm_sim::kv::{KvSim, KvSimConfig};
//! use calm_types::NodeId;
//!
//! let mut sim = KvSim::new(KvSimConfig::new(7))?;
//! sim.run_workload(1_000);
//! sim.crash(NodeId(2))?; // its unsynced writes are lost
//! sim.run_workload(1_000); // fallbacks take hints for it
//! sim.restart(NodeId(2))?;
//!
//! assert!(sim.settle(30_000), "quiet after the restart");
//! sim.check_all()?;
//! assert!(sim.stats().writes_acknowledged > 50);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`KvSim::run_chaos`] runs a seeded schedule of all the nemeses.
//!
//! # Determinism
//!
//! Everything random comes from [`KvSimConfig::seed`]; time advances one ms
//! at a time and nodes take their turns in id order.
//! [`KvSim::trace_hash`] folds every delivered message, client request,
//! reply and nemesis into one hash.

mod chaos;
mod checks;
mod cluster;
mod network;
mod workload;

pub use cluster::{KvOp, KvSim, KvSimStats};

use crate::config::{DELAY_MAX_MS, FAULT_PROBABILITY_MAX, NetworkFaults};

/// Most nodes one KV simulation runs.
pub const KV_NODES_MAX: usize = 9;
/// Most keys the clients work on.
pub const KV_KEYS_MAX: usize = 64;
/// Most concurrent clients.
pub const KV_CLIENTS_MAX: usize = 32;

/// Deliberate driver bugs, for showing that the checkers catch them. A
/// correct driver uses [`KvBug::None`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBug {
    /// The driver is correct.
    None,
    /// The driver writes the store's batches but syncs them only every
    /// [`LAZY_SYNC_PERIOD_MS`], and calls `synced` at once: `Stored` acks
    /// and stamped objects leave before they are durable.
    AckBeforeSync,
    /// The driver hands the coordinator a write quorum one below the
    /// request's (at least 1), so it answers at `w - 1` acks.
    AckAtWMinusOne,
    /// The driver never calls `handoff`: hints stay at the fallbacks.
    NoHandoff,
    /// On a coordinator's `Reap`, the driver deletes the tombstone at every
    /// owner itself, skipping the store's grace and hint checks.
    ReapWithoutGrace,
}

/// How often the [`KvBug::AckBeforeSync`] driver syncs, in ms.
pub const LAZY_SYNC_PERIOD_MS: u64 = 100;

/// Everything a [`KvSim`] is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct KvSimConfig {
    /// The seed of the one RNG every random choice is drawn from.
    pub seed: u64,
    /// Nodes, in `replicas..=KV_NODES_MAX`; ids are `1..=nodes`.
    pub nodes: usize,
    /// The replication factor `n`; quorum reads and writes use a majority.
    pub replicas: usize,
    /// Keys the clients work on, in `1..=KV_KEYS_MAX`.
    pub keys: usize,
    /// Concurrent clients, in `1..=KV_CLIENTS_MAX`; each has one request
    /// outstanding at a time.
    pub clients: usize,
    /// What the network does to each peer message.
    pub faults: NetworkFaults,
    /// The chance that a request uses a sloppy quorum, in `0.0..=1.0`.
    pub sloppy_share: f64,
    /// Longest pause of a client between two requests, in ms.
    pub think_ms_max: u64,
    /// How long a coordinator waits for its quorum (reads and writes), in
    /// ms: a few of the network's longest round trips, so that a lost
    /// message costs the run little time.
    pub request_timeout_ms: u64,
    /// How long a client waits for a reply before the request is
    /// indeterminate, in ms (beyond the coordinator's own timeouts).
    pub client_timeout_ms: u64,
    /// How often each node offers its hints to reachable owners, in ms.
    pub handoff_period_ms: u64,
    /// How often owners compare digests, in ms; `None` turns anti-entropy
    /// off.
    pub anti_entropy_period_ms: Option<u64>,
    /// A planted driver bug, or [`KvBug::None`].
    pub bug: KvBug,
}

impl KvSimConfig {
    /// Five nodes, `n = 3`, four keys, six clients, a lossy network, half
    /// the requests sloppy.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 5,
            replicas: 3,
            keys: 4,
            clients: 6,
            faults: NetworkFaults::LOSSY,
            sloppy_share: 0.5,
            think_ms_max: 20,
            request_timeout_ms: 400,
            client_timeout_ms: 3_000,
            handoff_period_ms: 200,
            anti_entropy_period_ms: Some(500),
            bug: KvBug::None,
        }
    }

    /// Checks every bound; the error names the one broken.
    pub fn validate(&self) -> Result<(), &'static str> {
        let f = &self.faults;
        let probability = 0.0..=FAULT_PROBABILITY_MAX;
        if !(1..=KV_NODES_MAX).contains(&self.nodes) || !(1..=self.nodes).contains(&self.replicas) {
            Err("need 1 <= replicas <= nodes <= KV_NODES_MAX")
        } else if !(1..=KV_KEYS_MAX).contains(&self.keys) {
            Err("keys must be in 1..=KV_KEYS_MAX")
        } else if !(1..=KV_CLIENTS_MAX).contains(&self.clients) {
            Err("clients must be in 1..=KV_CLIENTS_MAX")
        } else if !probability.contains(&f.loss) || !probability.contains(&f.duplication) {
            Err("loss and duplication must be in 0..=FAULT_PROBABILITY_MAX")
        } else if f.delay_min_ms == 0 || f.delay_min_ms > f.delay_max_ms {
            Err("need 1 <= delay_min_ms <= delay_max_ms")
        } else if f.delay_max_ms > DELAY_MAX_MS {
            Err("delay_max_ms must be at most DELAY_MAX_MS")
        } else if !(0.0..=1.0).contains(&self.sloppy_share) {
            Err("sloppy_share must be in 0..=1")
        } else if self.request_timeout_ms == 0 || self.client_timeout_ms == 0 {
            Err("timeouts must be at least 1 ms")
        } else if self.handoff_period_ms == 0 || self.anti_entropy_period_ms == Some(0) {
            Err("periods must be at least 1 ms")
        } else {
            Ok(())
        }
    }
}
