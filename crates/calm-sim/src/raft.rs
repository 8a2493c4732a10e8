//! The coordinated keyspace under the simulator: three or five
//! [`calm_raft::Keyspace`] voters, each over its own crash-simulating
//! [`MemoryEngine`](calm_storage::MemoryEngine), driven exactly by the
//! core's contract (inputs; `before_sync`, write, sync; `after_sync`,
//! write; outputs) on a virtual clock, over a network that loses,
//! duplicates, delays, reorders and partitions (asymmetrically too).
//!
//! Nemeses crash nodes (between turns or inside one; the disk loses its
//! unsynced writes, or keeps some), cut power to all of them, pause a
//! process, skew and step node clocks, transfer leadership, and change the
//! membership (a voter demoted to a learner and promoted back, several at
//! once through a joint configuration). Clients send
//! etcd requests to random voters: unique-value puts, linearizable ranges,
//! compare-and-swap txns on mod revision (reading the key in both
//! branches) and deletes, on a few keys, each with a deadline; a request
//! whose reply never came is indeterminate.
//!
//! Checkers ([`KeyspaceSim::check_all`]) then say whether the cores held:
//!
//! * [`KeyspaceSim::check_linearizable`]: the history of calls and returns
//!   (virtual µs) is linearizable against etcd's keyspace
//!   ([`EtcdModel`](crate::linearizability::EtcdModel)), response revisions
//!   included;
//! * [`KeyspaceSim::check_replicas_agree`]: every replica's MVCC hash is the
//!   same at every revision (also checked every 250 ms while running);
//! * [`KeyspaceSim::check_acknowledged_writes`]: every acknowledged write is
//!   in the final state, at the revision its reply named;
//! * [`KeyspaceSim::check_watches`]: each node's watcher got every event of
//!   the agreed history in order, with no gap and no duplicate, across
//!   crashes of its node;
//!
//! plus violations seen on the way (a core failure, a txn whose reads
//! contradict its outcome, a reply of the wrong kind).
//!
//! # A tour
//!
//! ```
//! use calm_sim::raft::{KeyspaceSim, KeyspaceSimConfig};
//!
//! let mut sim = KeyspaceSim::new(KeyspaceSimConfig::new(7))?;
//! sim.run_for(500); // a leader is elected
//! let leader = sim.leader().expect("a leader");
//!
//! sim.run_workload(1_000);
//! sim.crash(leader)?; // its unsynced writes are lost
//! sim.run_workload(1_000); // the others elect a new leader
//! sim.restart(leader)?;
//!
//! assert!(sim.settle(10_000), "quiet after the restart");
//! sim.check_all()?;
//! assert!(sim.request_counts().0 > 100, "answered requests");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`KeyspaceSim::run_chaos`] runs a seeded schedule of all the nemeses.
//!
//! # Determinism
//!
//! Everything random comes from [`KeyspaceSimConfig::seed`] (the cores'
//! election timeouts too); time advances one ms at a time and nodes take
//! their turns in id order. [`KeyspaceSim::trace_hash`] folds every
//! delivered message, request, reply and nemesis into one hash.

mod chaos;
mod checks;
mod cluster;
mod config;
mod leases;
mod network;
mod node;
mod workload;

pub use checks::LINEARIZABILITY_STEPS_MAX;
pub use cluster::{KeyspaceSim, KeyspaceStats};
pub use config::{
    CLIENTS_MAX, CLOCK_RATE_PPM_MAX, KEYS_MAX, KeyspaceBug, KeyspaceSimConfig, LEASES_MAX,
    VOTERS_MAX,
};
pub use node::TurnStage;
