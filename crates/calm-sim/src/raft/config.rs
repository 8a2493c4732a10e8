//! The keyspace simulation's settings: cluster size, seed, network faults,
//! timings, clocks and workload shape, each with a named bound; and the
//! driver bugs a test may plant.

use crate::config::{DELAY_MAX_MS, FAULT_PROBABILITY_MAX, NetworkFaults};

/// Most voters one keyspace simulation runs.
pub const VOTERS_MAX: usize = 7;
/// Most concurrent clients.
pub const CLIENTS_MAX: usize = 32;
/// Most keys the clients work on.
pub const KEYS_MAX: usize = 16;
/// Largest drift of a node's clock rate from real time, in parts per
/// million (10%): far beyond any real oscillator, so it only stresses what
/// depends on clocks.
pub const CLOCK_RATE_PPM_MAX: u64 = 100_000;

/// Deliberate driver bugs, for showing that the checkers catch them. A
/// correct driver uses [`KeyspaceBug::None`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyspaceBug {
    /// The driver is correct.
    None,
    /// The driver answers linearizable ranges from the node's applied state
    /// at once, skipping Raft's ReadIndex: a deposed leader that has not
    /// noticed yet, or a lagging follower, returns stale values.
    ReadsWithoutReadIndex,
    /// The driver writes Raft's batch but syncs it on a timer (every
    /// 100 ms), and carries on with the turn (acknowledging entries to the
    /// leader, applying, answering clients) as if it were durable: crashes
    /// of a quorum inside that window lose entries the cluster counted as
    /// committed.
    AckBeforeSync,
    /// The client reopens its watch at the revision of the last event it
    /// saw rather than the one after: after its node restarts, it gets
    /// that revision's events twice.
    WatchResumesAtLastSeen,
    /// The driver hands the core a clock running at twice real speed (a
    /// unit mistake), far beyond the drift leases allow for: the leader
    /// expires leases at half their TTL.
    ClockRunsDouble,
}

/// Everything a [`KeyspaceSim`](super::KeyspaceSim) is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyspaceSimConfig {
    /// The seed of the one RNG every random choice is drawn from.
    pub seed: u64,
    /// Voters, in `1..=VOTERS_MAX`; ids are `1..=voters`.
    pub voters: usize,
    /// Concurrent clients, in `1..=CLIENTS_MAX`; each has one request
    /// outstanding at a time.
    pub clients: usize,
    /// Keys the clients work on, in `1..=KEYS_MAX`.
    pub keys: usize,
    /// What the network does to each message.
    pub faults: NetworkFaults,
    /// Whether the network may also duplicate a follower's forwarded
    /// proposal (`MsgPropose`). Raft appends every copy it receives; the
    /// state machine skips copies (proposal numbers only grow per
    /// proposer). calm's peer transport is at-most-once, so the default
    /// sweep leaves this off and a test turns it on.
    pub duplicate_proposals: bool,
    /// The Raft tick, in ms of each node's own clock.
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns.
    pub election_ticks: usize,
    /// How long the core lets a request wait before it answers "request
    /// timed out", in ms.
    pub request_timeout_ms: u64,
    /// How long a client waits for a reply before it gives up, in ms; the
    /// request is then indeterminate.
    pub client_timeout_ms: u64,
    /// Longest pause of a client between two requests, in ms.
    pub think_ms_max: u64,
    /// Each node's clock runs at a rate drawn from `1 ± this` (parts per
    /// million), at most [`CLOCK_RATE_PPM_MAX`].
    pub clock_rate_ppm_max: u64,
    /// Each node's clock starts at an offset drawn from `0..=this` ms.
    pub clock_offset_ms_max: u64,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Entries a snapshot keeps in the log below it; small, so that lagging
    /// followers catch up by snapshot.
    pub compaction_keep_entries: u64,
    /// Raft's lease-based ReadIndex (`RaftConfig::lease_reads`): the
    /// leader answers reads without a quorum round while its lease holds,
    /// which assumes its ticks keep pace with real time.
    pub lease_reads: bool,
    /// A deliberate driver bug, or [`KeyspaceBug::None`].
    pub bug: KeyspaceBug,
    /// Leases the lease client grants and renews, at most
    /// [`LEASES_MAX`]; 0 for none. With leases the run is checked by the
    /// lease checker instead of the linearizability checker (lease writes
    /// are outside the clients' history).
    pub leases: usize,
}

/// Bound of [`KeyspaceSimConfig::leases`].
pub const LEASES_MAX: usize = 8;

impl KeyspaceSimConfig {
    /// Three voters under `seed`: six clients on four keys, a lossy network
    /// that delays by 1 to 15 ms, 10 ms ticks with elections after 10,
    /// clocks within ±5% and 2 s of each other, and a snapshot every 100
    /// entries that keeps 20; quorum-confirmed reads.
    pub fn new(seed: u64) -> KeyspaceSimConfig {
        KeyspaceSimConfig {
            seed,
            voters: 3,
            clients: 6,
            keys: 4,
            faults: NetworkFaults {
                loss: 0.05,
                duplication: 0.05,
                delay_min_ms: 1,
                delay_max_ms: 15,
            },
            duplicate_proposals: false,
            tick_ms: 10,
            election_ticks: 10,
            request_timeout_ms: 1_000,
            client_timeout_ms: 1_500,
            think_ms_max: 20,
            clock_rate_ppm_max: 50_000,
            clock_offset_ms_max: 2_000,
            snapshot_count: 100,
            compaction_keep_entries: 20,
            lease_reads: false,
            bug: KeyspaceBug::None,
            leases: 0,
        }
    }

    /// Checks every bound; the message names the one broken.
    pub fn validate(&self) -> Result<(), &'static str> {
        let probability = |p: f64| (0.0..=FAULT_PROBABILITY_MAX).contains(&p);
        let f = &self.faults;
        if !(1..=VOTERS_MAX).contains(&self.voters) {
            Err("voters must be in 1..=VOTERS_MAX")
        } else if self.leases > LEASES_MAX {
            Err("leases must be at most LEASES_MAX")
        } else if !(1..=CLIENTS_MAX).contains(&self.clients) {
            Err("clients must be in 1..=CLIENTS_MAX")
        } else if !(1..=KEYS_MAX).contains(&self.keys) {
            Err("keys must be in 1..=KEYS_MAX")
        } else if !probability(f.loss) || !probability(f.duplication) {
            Err("loss and duplication must be in 0.0..=FAULT_PROBABILITY_MAX")
        } else if f.delay_min_ms == 0 || f.delay_min_ms > f.delay_max_ms {
            Err("delays must satisfy 1 <= delay_min_ms <= delay_max_ms")
        } else if f.delay_max_ms > DELAY_MAX_MS {
            Err("delay_max_ms must be at most DELAY_MAX_MS")
        } else if self.tick_ms == 0 || self.election_ticks < 2 {
            Err("tick_ms must be at least 1 and election_ticks at least 2")
        } else if self.request_timeout_ms == 0 || self.client_timeout_ms == 0 {
            Err("timeouts must be at least 1 ms")
        } else if self.clock_rate_ppm_max > CLOCK_RATE_PPM_MAX {
            Err("clock_rate_ppm_max must be at most CLOCK_RATE_PPM_MAX")
        } else if self.snapshot_count == 0 {
            Err("snapshot_count must be at least 1")
        } else {
            Ok(())
        }
    }
}
