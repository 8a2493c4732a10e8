//! Gossip convergence of the membership core at 10, 100 and 1,000 simulated nodes: periods and bytes.
//!
//! The design brief's target is "gossip reaches all of 1,000 simulated nodes
//! in O(log N) protocol periods with constant per-node bandwidth". This
//! binary checks it on a seeded, single-threaded network with a virtual
//! clock (the same shape as the integration-test harness), and prints a
//! table. It is a `harness = false` bench because what it measures is
//! virtual time and bytes, not wall time, so criterion's sampling adds
//! nothing.
//!
//! For each cluster size and seed it:
//! 1. builds a cluster: every node joins through the first three nodes at
//!    once, and virtual time runs until every node lists 99% of the others
//!    alive (see [`build`] for why not 100%);
//! 2. lets the build's rumours die out, then measures steady-state bytes
//!    per node per protocol period;
//! 3. lets one new node join through one random member, and counts periods
//!    until every member lists it alive;
//! 4. crashes one random member, and counts periods until every live node
//!    lists it down, both from the crash (detection, suspicion timeout and
//!    dissemination) and from the first node declaring it down
//!    (dissemination alone).
//!
//! Run: `cargo bench -p calm-membership --bench gossip`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use calm_membership::{Effect, MemberState, Membership, MembershipConfig, Peer, Timer};
use calm_types::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Cluster sizes measured unless sizes are given on the command line. Wall
/// time grows about as N²: every input rebuilds the core's O(N) member table
/// and foca scans its member list per update, so one 1,000-node run takes
/// about 100 s on two cores (500 nodes: 17 s).
const SIZES: [usize; 3] = [10, 100, 1_000];
/// Every size runs under each of these seeds; the table shows medians.
const SEEDS: [u64; 3] = [0xCA1A, 0xCA1B, 0xCA1C];
/// Nodes every member joins through when the cluster is built.
const BOOTSTRAP_SEEDS: usize = 3;
/// Periods left for the build's rumours to die out before steady state.
const SETTLE_PERIODS: u64 = 3;
/// Periods of quiet traffic measured after settling.
const STEADY_PERIODS: u64 = 2;
/// The build stops once every node lists this share of the others alive.
const BUILD_COVERAGE: f64 = 0.99;
/// How often the build checks its coverage: foca's gossip interval.
const BUILD_CHECK_MS: u64 = 200;
/// Give up on building the cluster after this many periods.
const CONVERGE_PERIODS_MAX: u64 = 300;
/// Give up on a join or failure reaching everyone after this many periods.
const DISSEMINATE_PERIODS_MAX: u64 = 100;
/// One-way datagram latency is drawn from this range, in milliseconds.
const LATENCY_MS: std::ops::RangeInclusive<u64> = 1..=5;

/// Something due at a virtual instant.
enum Event {
    Deliver { to: usize, bytes: Vec<u8> },
    Fire { node: usize, timer: Timer },
}

/// A member state as one byte, so an N×N view matrix stays small.
fn state_code(state: MemberState) -> u8 {
    match state {
        MemberState::Alive => 1,
        MemberState::Suspect => 2,
        MemberState::Down => 3,
        MemberState::Left => 4,
    }
}
const ALIVE: u8 = 1;
const DOWN: u8 = 3;

/// A seeded network of cores. Node `i` has node id `i + 1`. Instead of
/// scanning member tables (O(N) per node per check), it follows every
/// [`Effect::Notify`] into a view matrix with per-row and per-column counts,
/// so a "has everyone seen it" check after every event costs O(1).
struct Sim {
    nodes: Vec<Membership>,
    events: BTreeMap<(u64, u64), Event>,
    seq: u64,
    now_ms: u64,
    rng: StdRng,
    crashed: Vec<bool>,
    /// `view[viewer][subject]`: the last state `viewer` reported, 0 if none.
    view: Vec<Vec<u8>>,
    /// How many members each node lists alive.
    alive_known: Vec<usize>,
    /// How many nodes list each node alive, and down.
    alive_seen_by: Vec<usize>,
    down_seen_by: Vec<usize>,
    /// When any node first listed each node down.
    first_down_ms: Vec<Option<u64>>,
    /// Bytes each node has sent, datagram payloads only.
    sent_bytes: Vec<u64>,
    errors: usize,
}

fn peer(index: usize) -> Peer {
    let [_, b, c, d] = (index as u32).to_be_bytes();
    Peer {
        node: NodeId(index as u64 + 1),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, b, c, d)), 7946),
        generation: 1,
    }
}

impl Sim {
    fn new(size: usize, config: &MembershipConfig, seed: u64) -> Self {
        let nodes = (0..size)
            .map(|i| {
                Membership::new(peer(i), config.clone(), seed ^ ((i as u64) << 32))
                    .expect("the default config is valid")
            })
            .collect();
        Self {
            nodes,
            events: BTreeMap::new(),
            seq: 0,
            now_ms: 0,
            rng: StdRng::seed_from_u64(seed),
            crashed: vec![false; size],
            view: vec![vec![0; size]; size],
            alive_known: vec![0; size],
            alive_seen_by: vec![0; size],
            down_seen_by: vec![0; size],
            first_down_ms: vec![None; size],
            sent_bytes: vec![0; size],
            errors: 0,
        }
    }

    fn join(&mut self, node: usize, seeds: &[usize]) {
        let seeds: Vec<Peer> = seeds
            .iter()
            .map(|&s| Peer::seed(peer(s).node, peer(s).addr))
            .collect();
        self.nodes[node]
            .join(&seeds, self.now_ms)
            .expect("a fresh node accepts a join");
        self.drain(node);
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at_ms, self.seq), event);
    }

    fn drain(&mut self, from: usize) {
        while let Some(effect) = self.nodes[from].poll_effect() {
            match effect {
                Effect::Send { to, bytes } => {
                    self.sent_bytes[from] += bytes.len() as u64;
                    let to = (to.node.0 - 1) as usize;
                    let at_ms = self.now_ms + self.rng.random_range(LATENCY_MS);
                    self.schedule(at_ms, Event::Deliver { to, bytes });
                }
                Effect::SetTimer { timer, after_ms } => {
                    self.schedule(self.now_ms + after_ms, Event::Fire { node: from, timer });
                }
                Effect::Notify(e) => {
                    self.observe(from, (e.peer.node.0 - 1) as usize, state_code(e.state))
                }
                // Nodes here join by node id, never by address alone.
                Effect::SendToAddress { .. } | Effect::Local(_) => {}
            }
        }
    }

    /// Moves one cell of the view matrix and keeps the counts in step.
    fn observe(&mut self, viewer: usize, subject: usize, state: u8) {
        let old = std::mem::replace(&mut self.view[viewer][subject], state);
        if old == ALIVE {
            self.alive_known[viewer] -= 1;
            self.alive_seen_by[subject] -= 1;
        }
        if old == DOWN {
            self.down_seen_by[subject] -= 1;
        }
        if state == ALIVE {
            self.alive_known[viewer] += 1;
            self.alive_seen_by[subject] += 1;
        }
        if state == DOWN {
            self.down_seen_by[subject] += 1;
            self.first_down_ms[subject].get_or_insert(self.now_ms);
        }
    }

    fn step(&mut self) {
        let ((at_ms, _), event) = self.events.pop_first().expect("an event is due");
        self.now_ms = at_ms;
        let (node, result) = match event {
            Event::Deliver { to, .. } | Event::Fire { node: to, .. } if self.crashed[to] => return,
            Event::Deliver { to, bytes } => (to, self.nodes[to].handle_data(&bytes, at_ms)),
            Event::Fire { node, timer } => (node, self.nodes[node].handle_timer(timer, at_ms)),
        };
        if result.is_err() {
            self.errors += 1;
        }
        self.drain(node);
    }

    /// Runs until `done` holds (checked after every event) or `until_ms`;
    /// returns the virtual time it held at.
    fn run_until_or(&mut self, until_ms: u64, done: impl Fn(&Sim) -> bool) -> Option<u64> {
        while self
            .events
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= until_ms)
        {
            self.step();
            if done(self) {
                return Some(self.now_ms);
            }
        }
        self.now_ms = until_ms;
        done(self).then_some(until_ms)
    }

    /// Mean and max over `nodes` of bytes sent per protocol period since
    /// `before` was taken at `from_ms`. The window is stretched to at least
    /// one period first: a rumour that spreads in a fraction of a period
    /// would otherwise turn a few packets into a huge per-period rate.
    fn bandwidth(&mut self, nodes: std::ops::Range<usize>, before: &[u64], from_ms: u64) -> Band {
        if self.now_ms < from_ms + PERIOD_MS {
            self.run_until_or(from_ms + PERIOD_MS, |_| false);
        }
        let periods = (self.now_ms - from_ms) as f64 / PERIOD_MS as f64;
        let per_node: Vec<f64> = nodes
            .filter(|&n| !self.crashed[n])
            .map(|n| (self.sent_bytes[n] - before[n]) as f64 / periods.max(1e-9))
            .collect();
        Band {
            mean: per_node.iter().sum::<f64>() / per_node.len() as f64,
            max: per_node.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// The protocol period of the default config, the unit of every count.
const PERIOD_MS: u64 = 1_000;

/// Bytes per node per protocol period over a window.
#[derive(Clone, Copy, Default)]
struct Band {
    mean: f64,
    max: f64,
}

/// What one run at one size and seed measured; periods are virtual time
/// divided by the protocol period.
#[derive(Clone, Copy, Default)]
struct Run {
    converge_periods: f64,
    join_periods: f64,
    fail_total_periods: f64,
    fail_dissemination_periods: f64,
    steady: Band,
    join_band: Band,
    fail_band: Band,
    /// (viewer, member) pairs still unknown when the build stopped.
    missing_pairs: usize,
    errors: usize,
}

fn main() {
    // `cargo bench` passes `--bench`; numeric arguments replace the sizes, e.g. `-- 100 500`.
    let filter: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let config = MembershipConfig::default();
    assert_eq!(config.probe_period_ms, PERIOD_MS);
    println!(
        "gossip convergence: seeds {SEEDS:#x?}, probe period {PERIOD_MS} ms, gossip every {} ms to {} members, packets <= {} bytes, latency {LATENCY_MS:?} ms",
        config.gossip_period_ms, config.indirect_probes, config.packet_bytes_max
    );
    let mut rows = Vec::new();
    let sizes = if filter.is_empty() {
        SIZES.to_vec()
    } else {
        filter
    };
    for size in sizes {
        let runs: Vec<Run> = SEEDS
            .iter()
            .map(|&seed| {
                let started = Instant::now();
                let run = run_once(size, &config, seed);
                print_run(size, seed, &run, started.elapsed().as_secs_f64());
                run
            })
            .collect();
        rows.push((size, runs));
    }
    print_table(&rows);
}

fn run_once(size: usize, config: &MembershipConfig, seed: u64) -> Run {
    // One spare node at index `size` joins later.
    let mut sim = Sim::new(size + 1, config, seed);
    let bootstrap: Vec<usize> = (0..BOOTSTRAP_SEEDS.min(size)).collect();
    for node in 0..size {
        let seeds: Vec<usize> = bootstrap.iter().copied().filter(|&s| s != node).collect();
        sim.join(node, &seeds);
    }
    let converged_ms = build(&mut sim, size);
    let mut run = Run {
        converge_periods: converged_ms as f64 / PERIOD_MS as f64,
        missing_pairs: sim.alive_known[..size].iter().map(|&k| size - 1 - k).sum(),
        ..Run::default()
    };

    sim.run_until_or(sim.now_ms + SETTLE_PERIODS * PERIOD_MS, |_| false);
    let (before, from_ms) = (sim.sent_bytes.clone(), sim.now_ms);
    sim.run_until_or(from_ms + STEADY_PERIODS * PERIOD_MS, |_| false);
    run.steady = sim.bandwidth(0..size, &before, from_ms);

    // A join: the spare node announces itself to one random member.
    let (newcomer, through) = (size, sim.rng.random_range(0..size));
    let (before, from_ms) = (sim.sent_bytes.clone(), sim.now_ms);
    sim.join(newcomer, &[through]);
    let joined_ms = sim
        .run_until_or(from_ms + DISSEMINATE_PERIODS_MAX * PERIOD_MS, |s| {
            s.alive_seen_by[newcomer] == size
        })
        .unwrap_or_else(|| panic!("the join did not reach all {size} (seed {seed:#x})"));
    run.join_periods = (joined_ms - from_ms) as f64 / PERIOD_MS as f64;
    run.join_band = sim.bandwidth(0..size + 1, &before, from_ms);

    // A failure: one random old member stops; `size` nodes remain.
    let victim = sim.rng.random_range(0..size);
    sim.crashed[victim] = true;
    // Nodes that never heard of the victim cannot declare it down.
    let knowers = (0..=size).filter(|&v| sim.view[v][victim] != 0).count();
    let crashed_ms = sim.now_ms;
    sim.run_until_or(crashed_ms + DISSEMINATE_PERIODS_MAX * PERIOD_MS, |s| {
        s.first_down_ms[victim].is_some()
    })
    .unwrap_or_else(|| panic!("nobody declared the victim down (seed {seed:#x})"));
    let (before, first_down_ms) = (sim.sent_bytes.clone(), sim.now_ms);
    let all_down_ms = sim
        .run_until_or(crashed_ms + DISSEMINATE_PERIODS_MAX * PERIOD_MS, |s| {
            s.down_seen_by[victim] == knowers
        })
        .unwrap_or_else(|| panic!("the failure did not reach all {size} (seed {seed:#x})"));
    run.fail_total_periods = (all_down_ms - crashed_ms) as f64 / PERIOD_MS as f64;
    run.fail_dissemination_periods = (all_down_ms - first_down_ms) as f64 / PERIOD_MS as f64;
    run.fail_band = sim.bandwidth(0..size + 1, &before, first_down_ms);
    run.errors = sim.errors;
    run
}

/// Runs the mass join until every node lists at least `BUILD_COVERAGE` of
/// the others alive, checked every `BUILD_CHECK_MS`; returns that time.
///
/// Why not wait for full coverage: foca piggybacks each update a fixed
/// `max_transmissions` times, and when N joins compete for room in 1,400-byte
/// packets a few (viewer, member) pairs miss the rumour. Those are healed only
/// by probes (one member per period, round-robin, so up to N periods) or the
/// periodic announce (every 30 periods), which is O(N), not O(log N), and at
/// 1,000 nodes costs minutes of wall time. The join and failure below do
/// not depend on it: the join waits for every member, and the failure for
/// every node that knew the victim.
fn build(sim: &mut Sim, size: usize) -> u64 {
    let need = ((size - 1) as f64 * BUILD_COVERAGE).ceil() as usize;
    let started = Instant::now();
    let mut until_ms = 0;
    loop {
        until_ms += BUILD_CHECK_MS;
        sim.run_until_or(until_ms, |_| false);
        let least = *sim.alive_known[..size].iter().min().unwrap_or(&0);
        if std::env::var_os("GOSSIP_PROGRESS").is_some() {
            eprintln!(
                "    {until_ms} ms: least-informed node lists {least} alive, {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if least >= need {
            return until_ms;
        }
        assert!(
            until_ms < CONVERGE_PERIODS_MAX * PERIOD_MS,
            "{size} nodes did not converge"
        );
    }
}

fn print_run(size: usize, seed: u64, run: &Run, wall_s: f64) {
    println!(
        "  N={size:<5} seed {seed:#x}: build {:.1} p, join {:.1} p, fail {:.1} p ({:.1} after first down), steady {:.0}/{:.0} B, join {:.0}/{:.0} B, fail {:.0}/{:.0} B, {} pairs unknown after build, errors {}, wall {wall_s:.1} s",
        run.converge_periods,
        run.join_periods,
        run.fail_total_periods,
        run.fail_dissemination_periods,
        run.steady.mean,
        run.steady.max,
        run.join_band.mean,
        run.join_band.max,
        run.fail_band.mean,
        run.fail_band.max,
        run.missing_pairs,
        run.errors,
    );
}

fn median(runs: &[Run], field: impl Fn(&Run) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(field).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn print_table(rows: &[(usize, Vec<Run>)]) {
    println!();
    println!(
        "medians over {} seeds; periods = virtual ms / {PERIOD_MS}; build = until every node lists {}% of the others alive; bytes per node per period as mean/max over nodes",
        SEEDS.len(),
        BUILD_COVERAGE * 100.0
    );
    println!(
        "| N | build | join | fail: crash→all down | fail: first down→all | log2 N | join/log2 N | fail diss./log2 N | steady B | join B | fail B |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (size, runs) in rows {
        let log2 = (*size as f64).log2();
        let join = median(runs, |r| r.join_periods);
        let fail_diss = median(runs, |r| r.fail_dissemination_periods);
        println!(
            "| {size} | {:.1} | {join:.1} | {:.1} | {fail_diss:.1} | {log2:.2} | {:.2} | {:.2} | {:.0}/{:.0} | {:.0}/{:.0} | {:.0}/{:.0} |",
            median(runs, |r| r.converge_periods),
            median(runs, |r| r.fail_total_periods),
            join / log2,
            fail_diss / log2,
            median(runs, |r| r.steady.mean),
            median(runs, |r| r.steady.max),
            median(runs, |r| r.join_band.mean),
            median(runs, |r| r.join_band.max),
            median(runs, |r| r.fail_band.mean),
            median(runs, |r| r.fail_band.max),
        );
    }
}
