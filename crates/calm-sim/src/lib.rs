//! A deterministic simulator for calm: N nodes' sans-IO cores on a virtual
//! clock, driven by one seeded RNG, over a network that loses, duplicates,
//! delays, reorders and partitions, with disks that lose unsynced writes.
//!
//! Each node runs a membership core (SWIM) and a replica core (delta CRDTs
//! over the crash-simulating memory engine) on a shared ring. The simulator
//! is their driver: it carries out their effects, runs the group commit
//! every few ms, and runs Merkle anti-entropy between replica pairs. Nemeses
//! ([`Simulation::partition`], [`Simulation::block`], [`Simulation::crash`])
//! break things; checkers say whether the cores survived it, naming the
//! seed that replays a failure:
//!
//! * [`Simulation::check_convergence`]: every owner of a key holds the same
//!   value;
//! * [`Simulation::check_no_lost_increments`]: every counter lies between
//!   its acknowledged increments and those plus the unanswered ones;
//! * [`Simulation::check_bounded_counters`]: at every step no replica's
//!   view of a bounded counter is below its bound (0) or overdraws a
//!   node's rights, and at the end each value is acknowledged increments
//!   minus acknowledged decrements, within the unanswered ones: none lost,
//!   none applied twice;
//! * [`Simulation::check_quorum_reads`]: with [`SimConfig::level`] at
//!   `quorum` or `all` (`r + w > n`), every counter read at the level saw
//!   at least the increments acknowledged before it was submitted;
//! * [`Simulation::check_membership`]: every running node sees every other
//!   alive.
//!
//! The client workload mixes counter increments, OR-set adds and removes,
//! and bounded-counter increments, decrements (refused beyond the node's
//! rights) and transfers of rights between a key's owners. Every request
//! is at `local` unless [`SimConfig::level`] names `one`, `quorum` or
//! `all`: then counter increments go at that level through
//! `Replica::submit_at`, and so do counter reads, which the workload then
//! adds, each remembering the increments acknowledged before it (its
//! floor). A write answered `WriteInDoubt` stays in doubt in the clients'
//! ledger, since it may have landed.
//!
//! [`usl`] measures the `local` level's throughput at K nodes in virtual
//! time under an explicit cost model, for `calm bench usl --sim`.
//!
//! # A tour
//!
//! Three nodes; node 3 is cut off while clients write, then the partition
//! heals and every replica converges.
//!
//! ```
//! use calm_sim::{NetworkFaults, SimConfig, Simulation};
//! use calm_types::NodeId;
//!
//! let mut config = SimConfig::new(3, 42);
//! config.faults = NetworkFaults::LOSSY;
//! let mut sim = Simulation::new(config)?;
//! sim.run_for(3_000); // membership settles
//!
//! sim.partition(&[&[NodeId(1), NodeId(2)], &[NodeId(3)]])?;
//! sim.run_workload(2_000);
//! sim.heal();
//!
//! assert!(sim.settle(60_000), "quiet after the heal");
//! sim.check_convergence()?;
//! sim.check_no_lost_increments()?;
//! sim.check_bounded_counters()?;
//! sim.check_membership()?;
//! assert!(sim.acknowledged_increments() > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Determinism
//!
//! Everything random comes from [`SimConfig::seed`]; the membership cores'
//! seeds are drawn from the same RNG. Events due at the same virtual instant
//! run in the order they were scheduled, and every collection iterated is
//! ordered. [`Simulation::trace_hash`] folds every delivered message,
//! client request and reply outcome into one hash, so two runs of one seed
//! can be compared.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod anti_entropy;
mod bounded;
mod check;
mod config;
pub mod kv;
mod ledger;
pub mod linearizability;
mod network;
mod quorum;
pub mod raft;
mod sim;
pub mod usl;
pub mod watch;

pub use check::Violation;
pub use config::{
    DELAY_MAX_MS, FAULT_PROBABILITY_MAX, NODES_MAX, NetworkFaults, PlantedBug, SimConfig,
    WORKLOAD_KEYS_MAX,
};
pub use sim::{SimError, SimStats, Simulation};
