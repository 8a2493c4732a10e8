//! The simulation's settings: cluster size, seed, network faults, driver
//! periods and workload shape, each with a named bound.

use calm_membership::MembershipConfig;
use calm_replica::coordinator::Level;

/// Most nodes one simulation runs.
pub const NODES_MAX: usize = 16;
/// Highest probability accepted for any network fault: beyond it the cores
/// are tested against a network that barely works, which says little.
pub const FAULT_PROBABILITY_MAX: f64 = 0.5;
/// Longest one-way network delay accepted, in ms.
pub const DELAY_MAX_MS: u64 = 10_000;
/// Most keys the workload writes, counters, sets and bounded counters
/// together.
pub const WORKLOAD_KEYS_MAX: usize = 1024;

/// What the simulated network does to each message, independently.
///
/// Reordering is not a separate knob: every message draws its own delay
/// from `delay_min_ms..=delay_max_ms`, so a wider range reorders more.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkFaults {
    /// Chance a message is lost, in `0.0..=FAULT_PROBABILITY_MAX`.
    pub loss: f64,
    /// Chance a message is delivered twice (each copy with its own delay),
    /// in `0.0..=FAULT_PROBABILITY_MAX`.
    pub duplication: f64,
    /// Shortest one-way delay, in ms (at least 1).
    pub delay_min_ms: u64,
    /// Longest one-way delay, in ms (at most [`DELAY_MAX_MS`]).
    pub delay_max_ms: u64,
}

impl NetworkFaults {
    /// A reliable network with a fixed 1 ms delay: nothing lost, duplicated
    /// or reordered.
    pub const NONE: NetworkFaults = NetworkFaults {
        loss: 0.0,
        duplication: 0.0,
        delay_min_ms: 1,
        delay_max_ms: 1,
    };

    /// A hostile but working network: 10% loss, 10% duplication, delays
    /// from 1 to 40 ms (so messages overtake each other).
    pub const LOSSY: NetworkFaults = NetworkFaults {
        loss: 0.1,
        duplication: 0.1,
        delay_min_ms: 1,
        delay_max_ms: 40,
    };
}

/// Deliberate driver bugs, for showing that the checkers catch them. A
/// correct driver uses [`PlantedBug::None`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The driver is correct.
    None,
    /// The client counts a counter write (an increment, or a bounded
    /// increment or decrement) as acknowledged when it is submitted, before
    /// the group commit and before the replica could refuse it: a crash then
    /// loses an "acknowledged" write, and a refused decrement counts as done.
    AckBeforeFlush,
    /// The driver runs each bounded decrement outside the replica's escrow:
    /// it mints the decrement from a copy of the node's counter frozen at the
    /// node's first decrement of that key, and joins the result into the
    /// node's replica. Like a node restored from an old backup, it then
    /// spends rights it has since spent or given away.
    DecrementFromStaleRights,
    /// A replica that acknowledges what it does not hold: the driver drops
    /// every [`Message::Replicate`](calm_replica::Message::Replicate) it is
    /// about to deliver and hands its coordinator the
    /// [`Message::Replicated`](calm_replica::Message::Replicated) ack the
    /// receiver would send after its sync. A write at `quorum` is then
    /// acknowledged while only its coordinator holds it, so a quorum read
    /// elsewhere misses it.
    ForgedReplicatedAcks,
    /// Counter reads go at `one` while writes go at [`SimConfig::level`],
    /// and are still held to that level's promise: with `r + w <= n` a read
    /// can miss an acknowledged write.
    ReadsAtOne,
}

/// Everything a [`Simulation`](crate::Simulation) is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// How many nodes, in `1..=NODES_MAX`; node ids are `1..=nodes`.
    pub nodes: usize,
    /// The seed of the one RNG every random choice is drawn from.
    pub seed: u64,
    /// N: replicas per key.
    pub replication_factor: usize,
    /// The network's faults.
    pub faults: NetworkFaults,
    /// How often each node runs its group commit (`flush`) and ships its
    /// synced deltas (`tick`), in ms of virtual time (at least 1).
    pub flush_period_ms: u64,
    /// How often each node starts an anti-entropy session with a random
    /// peer, in ms; `None` disables anti-entropy (a broken driver, for the
    /// planted-violation tests).
    pub anti_entropy_period_ms: Option<u64>,
    /// How often a node that does not see every configured node alive
    /// announces itself to all of them again (the driver's seed rejoin, which
    /// reconnects the two sides of a healed partition), in ms.
    pub rejoin_period_ms: u64,
    /// Time between two client operations while a workload runs, in ms.
    pub client_period_ms: u64,
    /// Counter keys the workload increments.
    pub counter_keys: usize,
    /// OR-set keys the workload adds to and removes from.
    pub set_keys: usize,
    /// Bounded-counter keys the workload increments, decrements (within the
    /// chosen node's rights, or refused) and moves rights of between owners.
    pub bounded_keys: usize,
    /// The membership cores' settings.
    pub membership: MembershipConfig,
    /// A deliberate driver bug, or [`PlantedBug::None`].
    pub planted_bug: PlantedBug,
    /// The level the workload's counter increments and reads go at, with
    /// `Replica::submit_at`; `None` is `local` (plain `submit`, and no
    /// reads), the behaviour every seed's trace was recorded under.
    pub level: Option<Level>,
}

impl SimConfig {
    /// `nodes` nodes under `seed`: N = 3, a reliable network, flush every
    /// 5 ms, anti-entropy every 200 ms, rejoin every 2 s, a client op every
    /// 2 ms over 8 counters, 4 sets and 3 bounded counters, membership with
    /// 500 ms probes, every request at `local`.
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        let membership = MembershipConfig {
            probe_period_ms: 500,
            probe_timeout_max_ms: 200,
            suspect_to_down_after_ms: 2_000,
            gossip_period_ms: 100,
            ..MembershipConfig::default()
        };
        SimConfig {
            nodes,
            seed,
            replication_factor: 3,
            faults: NetworkFaults::NONE,
            flush_period_ms: 5,
            anti_entropy_period_ms: Some(200),
            rejoin_period_ms: 2_000,
            client_period_ms: 2,
            counter_keys: 8,
            set_keys: 4,
            bounded_keys: 3,
            membership,
            planted_bug: PlantedBug::None,
            level: None,
        }
    }

    /// Checks every bound; the message names the one broken.
    pub fn validate(&self) -> Result<(), &'static str> {
        let probability = |p: f64| (0.0..=FAULT_PROBABILITY_MAX).contains(&p);
        let f = &self.faults;
        if !(1..=NODES_MAX).contains(&self.nodes) {
            Err("nodes must be in 1..=NODES_MAX")
        } else if self.replication_factor == 0 {
            Err("replication_factor must be at least 1")
        } else if !probability(f.loss) || !probability(f.duplication) {
            Err("loss and duplication must be in 0.0..=FAULT_PROBABILITY_MAX")
        } else if f.delay_min_ms == 0 || f.delay_min_ms > f.delay_max_ms {
            Err("delays must satisfy 1 <= delay_min_ms <= delay_max_ms")
        } else if f.delay_max_ms > DELAY_MAX_MS {
            Err("delay_max_ms must be at most DELAY_MAX_MS")
        } else if self.flush_period_ms == 0
            || self.rejoin_period_ms == 0
            || self.client_period_ms == 0
            || self.anti_entropy_period_ms == Some(0)
        {
            Err("every period must be at least 1 ms")
        } else if !(1..=WORKLOAD_KEYS_MAX).contains(&self.workload_keys()) {
            Err("the workload needs 1..=WORKLOAD_KEYS_MAX keys")
        } else {
            Ok(())
        }
    }

    /// Every key the workload writes, of every kind; saturating, so that an
    /// absurd config fails `validate` instead of overflowing.
    fn workload_keys(&self) -> usize {
        self.counter_keys
            .saturating_add(self.set_keys)
            .saturating_add(self.bounded_keys)
    }
}
