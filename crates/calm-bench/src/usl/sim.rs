//! `calm bench usl --sim`: the node-count sweep on the simulator
//! ([`calm_sim::usl`]), for node counts beyond this machine. Each K runs
//! the real replica cores in virtual time under the simulator's cost
//! model; the points are fitted with the same [`fit`](super::fit) as a
//! measured sweep and reported with the same table, plus the model, its
//! prices and each step's message counts.

use std::fmt::Write;
use std::process::ExitCode;
use std::time::Duration;

use calm_sim::usl::{CostModel, Crosstalk, SimPoint, UslSimConfig, measure};
use indicatif::ProgressBar;
use serde::Serialize;

use super::sweep::{STEPS_MAX, UslArgs, UslReport, UslStep, points, render_usl_table};
use crate::Format;
use crate::args::parse_duration;
use crate::error::BenchError;
use crate::report::{LatencySummary, Report};
use crate::workload::WorkloadName;

/// The node counts `--sim` runs when `--nodes` lists none.
pub const SIM_NODES_DEFAULT: [u16; 6] = [3, 6, 12, 24, 48, 96];

/// The simulator's flags of `calm bench usl`.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct SimArgs {
    /// Run the node-count sweep on the simulator instead of a cluster:
    /// the real replica cores in virtual time under a stated cost model.
    /// `--nodes` lists the node counts K (3,6,12,24,48,96 when absent),
    /// `--seed` seeds it, `--workload` may only be counter-incr, and the
    /// other load flags are ignored.
    #[arg(long)]
    pub sim: bool,
    /// --sim: closed-loop clients per node.
    #[arg(long, default_value_t = 48)]
    pub sim_clients_per_node: usize,
    /// --sim: work planted on top of replication: `broadcast` sends every
    /// write to all K nodes (work per write grows as K: contention),
    /// `full-state` makes each copy K entries long (as K²: crosstalk).
    #[arg(long, value_enum, default_value_t = SimCrosstalk::None)]
    pub sim_crosstalk: SimCrosstalk,
    /// --sim: virtual time measured at each K, after its warmup.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub sim_duration: Duration,
    /// --sim: virtual time run at each K before measuring.
    #[arg(long, value_parser = parse_duration, default_value = "20ms")]
    pub sim_warmup: Duration,
}

impl Default for SimArgs {
    /// The flags' defaults: no simulation.
    fn default() -> SimArgs {
        SimArgs {
            sim: false,
            sim_clients_per_node: 48,
            sim_crosstalk: SimCrosstalk::None,
            sim_duration: Duration::from_millis(100),
            sim_warmup: Duration::from_millis(20),
        }
    }
}

/// `--sim-crosstalk`: [`Crosstalk`] as a flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SimCrosstalk {
    /// Only the replication the cores do.
    #[default]
    None,
    /// Every write also sent to all K nodes.
    Broadcast,
    /// As broadcast, each copy K entries long.
    FullState,
}

impl From<SimCrosstalk> for Crosstalk {
    fn from(flag: SimCrosstalk) -> Crosstalk {
        match flag {
            SimCrosstalk::None => Crosstalk::None,
            SimCrosstalk::Broadcast => Crosstalk::Broadcast,
            SimCrosstalk::FullState => Crosstalk::FullState,
        }
    }
}

/// A simulated sweep's outcome: the fitted report (N counts nodes), the
/// simulation's setup, and each step's simulator figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimUslReport {
    /// The steps and the fit, as a measured sweep reports them.
    #[serde(flatten)]
    pub usl: UslReport,
    /// How the points were simulated.
    pub simulator: SimSetup,
    /// Each step's figures from the simulator, in the order run.
    pub points: Vec<SimPoint>,
}

/// What every step of a simulated sweep shared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimSetup {
    /// The cost model, in words.
    pub model: &'static str,
    /// Its prices.
    pub costs: CostModel,
    /// Planted crosstalk.
    pub crosstalk: Crosstalk,
    /// Closed-loop clients per node.
    pub clients_per_node: usize,
    /// Keys per node the clients pick from.
    pub keys_per_node: usize,
    /// Virtual ms measured at each K.
    pub duration_ms: u64,
    /// Virtual ms run before measuring.
    pub warmup_ms: u64,
    /// The seed of every step.
    pub seed: u64,
}

/// The simulation of one K that `args` asks for.
pub fn sim_config(args: &UslArgs, nodes: u16) -> UslSimConfig {
    let mut config = UslSimConfig::new(usize::from(nodes), args.seed);
    config.clients_per_node = args.sim.sim_clients_per_node;
    config.crosstalk = args.sim.sim_crosstalk.into();
    config.duration_ms = millis(args.sim.sim_duration);
    config.warmup_ms = millis(args.sim.sim_warmup);
    config
}

/// The node counts a simulated sweep runs.
fn node_counts(args: &UslArgs) -> Vec<u16> {
    if args.nodes.is_empty() {
        SIM_NODES_DEFAULT.to_vec()
    } else {
        args.nodes.clone()
    }
}

/// Simulates each K of `args`, in order, and fits them. `progress`
/// advances once per K. Every step's config is checked before the first
/// runs.
pub fn usl_sim_sweep(args: &UslArgs, progress: &ProgressBar) -> Result<SimUslReport, BenchError> {
    let nodes = node_counts(args);
    if nodes.len() > STEPS_MAX {
        return Err(BenchError::InvalidPlan(format!(
            "--nodes must list at most {STEPS_MAX} node counts"
        )));
    }
    if args.workload != WorkloadName::CounterIncr {
        return Err(BenchError::InvalidPlan(
            "--sim simulates counter-incr only".to_owned(),
        ));
    }
    let configs: Vec<UslSimConfig> = nodes.iter().map(|&k| sim_config(args, k)).collect();
    for config in &configs {
        config
            .validate()
            .map_err(|error| BenchError::InvalidPlan(format!("--sim: {error}")))?;
    }
    let mut steps = Vec::with_capacity(configs.len());
    let mut sim_points = Vec::with_capacity(configs.len());
    for config in &configs {
        let point = measure(config).map_err(|error| {
            BenchError::Setup(format!("simulating {} nodes: {error}", config.nodes))
        })?;
        steps.push(UslStep {
            n: config.nodes,
            report: step_report(config, &point),
        });
        sim_points.push(point);
        progress.inc(1);
    }
    let base = configs
        .first()
        .cloned()
        .unwrap_or_else(|| sim_config(args, 1));
    Ok(SimUslReport {
        usl: UslReport::new("nodes", steps),
        simulator: SimSetup {
            model: calm_sim::usl::MODEL,
            costs: base.costs,
            crosstalk: base.crosstalk,
            clients_per_node: base.clients_per_node,
            keys_per_node: base.keys_per_node,
            duration_ms: base.duration_ms,
            warmup_ms: base.warmup_ms,
            seed: base.seed,
        },
        points: sim_points,
    })
}

/// A simulated step as a bench report: the same figures a measured step
/// has, in virtual time.
fn step_report(config: &UslSimConfig, point: &SimPoint) -> Report {
    Report {
        workload: WorkloadName::CounterIncr.name().to_owned(),
        level: "local".to_owned(),
        mode: "closed",
        clients: point.clients,
        target_rate_per_s: None,
        endpoints: Vec::new(),
        conns: None,
        keys: (config.nodes * config.keys_per_node) as u64,
        key_dist: "uniform",
        zipf_theta: None,
        value_bytes: 0,
        warmup_s: config.warmup_ms as f64 / 1_000.0,
        ops_budget: None,
        elapsed_s: config.duration_ms as f64 / 1_000.0,
        ops: point.ops,
        ops_per_s: point.ops_per_s,
        latency: LatencySummary {
            samples: point.ops,
            mean_us: point.latency.mean,
            p50_us: point.latency.p50,
            p90_us: point.latency.p90,
            p99_us: point.latency.p99,
            p999_us: point.latency.p999,
            max_us: point.latency.max,
        },
        service_time: None,
        errors: point.errors,
        errors_by_code: Default::default(),
        outcomes: Default::default(),
        tax: None,
    }
}

/// `calm bench usl --sim`: the simulated sweep, the report on stdout, the
/// plot to `--svg`. Exit status 1 when the sweep cannot run, the points
/// cannot be fitted or the plot cannot be written.
pub fn run_usl_sim(args: &UslArgs, format: Format) -> ExitCode {
    let progress = ProgressBar::new(node_counts(args).len() as u64);
    let outcome = usl_sim_sweep(args, &progress);
    progress.finish_and_clear();
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("Error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        Format::Table => print!("{}", render_sim_table(&report)),
        Format::Json => println!(
            "{}",
            serde_json::to_string(&report)
                .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
        ),
    }
    let fit = match report.usl.outcome() {
        Ok(fit) => fit,
        Err(error) => {
            eprintln!("Error: no fit: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.svg {
        let title = format!(
            "counter-incr at local, simulated ({}): USL fit",
            crosstalk_name(report.simulator.crosstalk)
        );
        let svg = crate::plot::render_svg(&points(&report.usl.steps), &fit, &title, "nodes");
        if let Err(error) = std::fs::write(path, svg) {
            eprintln!("Error: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The sweep's table, then each step's simulator figures, the setup, the
/// cost model and its prices.
pub fn render_sim_table(report: &SimUslReport) -> String {
    let mut out = render_usl_table(&report.usl);
    let _ = writeln!(
        out,
        "\n{:>7} | {:>8} | {:>8} | {:>10} | {:>8} | {:>12} | {:>5}",
        "nodes", "msgs/op", "fwd/op", "deltas/op", "syncs/op", "crosstalk/op", "cpu"
    );
    let _ = writeln!(out, "{}", "-".repeat(78));
    for point in &report.points {
        let _ = writeln!(
            out,
            "{:>7} | {:>8.2} | {:>8.2} | {:>10.2} | {:>8.3} | {:>12.1} | {:>4.0}%",
            point.nodes,
            point.messages_per_op,
            point.forwards_per_op,
            point.delta_keys_per_op,
            point.syncs_per_op,
            point.crosstalk_messages_per_op,
            point.cpu_utilization * 100.0
        );
    }
    let setup = &report.simulator;
    // A client waiting longer than a fifth of the window runs too few
    // rounds in it for the figures to be the steady state's.
    let window_us = setup.duration_ms as f64 * 1_000.0;
    let slow: Vec<String> = (report.points.iter())
        .filter(|point| point.latency.p99 > window_us / 5.0)
        .map(|point| point.nodes.to_string())
        .collect();
    if !slow.is_empty() {
        let _ = writeln!(
            out,
            "warning: at {} nodes p99 latency exceeds a fifth of the window; lengthen \
             --sim-duration and --sim-warmup for steady-state figures",
            slow.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "simulated: K nodes x {} clients, {} keys per node, N = 3, {} ms virtual after {} ms, \
         seed {}, crosstalk {}",
        setup.clients_per_node,
        setup.keys_per_node,
        setup.duration_ms,
        setup.warmup_ms,
        setup.seed,
        crosstalk_name(setup.crosstalk)
    );
    let _ = writeln!(out, "cost model: {}", setup.model);
    let _ = writeln!(out, "costs: {}", setup.costs);
    out
}

fn crosstalk_name(crosstalk: Crosstalk) -> &'static str {
    match crosstalk {
        Crosstalk::None => "none",
        Crosstalk::Broadcast => "broadcast",
        Crosstalk::FullState => "full-state",
    }
}

/// A flag's duration in whole ms, saturating (the simulator bounds it).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
