//! `calm bench usl`: [`UslArgs`], the sweep ([`usl_sweep`]) that runs one
//! closed-loop bench per concurrency with the ordinary driver, the fit of
//! its points, and the [`UslReport`] as a table or JSON.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::ProgressBar;
use serde::Serialize;

use super::nodes::usl_node_sweep;
use super::sim::{SimArgs, run_usl_sim};
use super::{MODEL, Point, UslFit, fit};
use crate::args::{BenchArgs, KeyDist, parse_duration};
use crate::error::BenchError;
use crate::etcd::Consistency;
use crate::progress::progress_bar;
use crate::report::{Report, format_latency};
use crate::workload::WorkloadName;
use crate::{Format, Target, bench};

/// The most steps one sweep runs.
pub const STEPS_MAX: usize = 64;

/// Sweeps concurrency and fits the Universal Scalability Law to the
/// throughputs.
///
/// Runs the workload in a closed loop at each `--clients` concurrency in
/// turn, then fits Gunther's Universal Scalability Law
/// X(N) = λN / (1 + σ(N−1) + κN(N−1)) to the throughputs. Prints λ (one client's
/// throughput), σ (contention), κ (crosstalk) and the peak
/// N* = √((1−σ)/κ), and with `--svg` plots the points and the curve.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct UslArgs {
    /// The operation to send (with `--sim`, counter-incr, the default).
    #[arg(
        long,
        value_enum,
        required_unless_present = "sim",
        default_value_t = WorkloadName::CounterIncr
    )]
    pub workload: WorkloadName,
    /// The concurrencies to measure, comma-separated; at least three
    /// distinct ones for a fit.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub clients: Vec<usize>,
    /// How long to measure each concurrency, after its warmup.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// How long to run each concurrency before recording (0s for none).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// How many distinct keys operations pick from.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub key_dist: KeyDist,
    /// The Zipf exponent for `--key-dist zipf`.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// The size of each written value.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Seeds the key choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// etcd-range: `l` linearizable or `s` serializable.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// etcd workloads: gRPC connections the clients share; one per
    /// endpoint when absent.
    #[arg(long)]
    pub conns: Option<usize>,
    /// Node-count mode: start `calm dev --nodes K` for each K listed and
    /// run the one `--clients` concurrency against each cluster, so N
    /// counts nodes (`--endpoints` is then ignored).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<u16>,
    /// Write the plot of the points and the fitted curve here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// The simulator: `--sim` and its settings.
    #[command(flatten)]
    pub sim: SimArgs,
}

impl UslArgs {
    /// The plain bench run at `clients`.
    pub fn step(&self, clients: usize) -> BenchArgs {
        BenchArgs {
            workload: self.workload,
            clients,
            rate: None,
            duration: self.duration,
            ops: None,
            warmup: self.warmup,
            keys: self.keys,
            key_dist: self.key_dist,
            zipf_theta: self.zipf_theta,
            value_bytes: self.value_bytes,
            seed: self.seed,
            consistency: self.consistency,
            conns: self.conns,
        }
    }

    /// Every step's plan is checked before the first runs, so a bad flag
    /// does not surface minutes into a sweep.
    pub(super) fn validate(&self) -> Result<(), BenchError> {
        if self.clients.is_empty() || self.clients.len() > STEPS_MAX {
            return Err(BenchError::InvalidPlan(format!(
                "--clients must list from 1 to {STEPS_MAX} concurrencies"
            )));
        }
        if !self.nodes.is_empty() {
            if self.nodes.len() > STEPS_MAX || self.nodes.contains(&0) {
                return Err(BenchError::InvalidPlan(format!(
                    "--nodes must list from 1 to {STEPS_MAX} node counts, none 0"
                )));
            }
            if self.clients.len() != 1 {
                return Err(BenchError::InvalidPlan(
                    "with --nodes, --clients names the one concurrency every cluster gets"
                        .to_owned(),
                ));
            }
        }
        self.clients
            .iter()
            .try_for_each(|&clients| self.step(clients).plan().map(drop))
    }
}

/// A sweep's outcome: one bench report per step, and the fit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UslReport {
    /// The model fitted, as a formula.
    pub model: &'static str,
    /// What N counts: `clients` or `nodes`.
    pub n_is: &'static str,
    /// The coefficients, when the points could be fitted.
    pub fit: Option<UslFit>,
    /// N* = √((1−σ)/κ), when the fit has a peak.
    pub peak_n: Option<f64>,
    /// Why the points could not be fitted.
    pub fit_error: Option<String>,
    /// Each step, in the order run.
    pub steps: Vec<UslStep>,
}

/// One step of a sweep: its N and its full bench report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UslStep {
    /// The concurrency, or the node count, of the step.
    pub n: usize,
    /// The step's bench report.
    pub report: Report,
}

impl UslReport {
    /// The report of `steps`, fitted on the steps where something
    /// succeeded (a step with no success has no throughput to fit).
    pub fn new(n_is: &'static str, steps: Vec<UslStep>) -> UslReport {
        let outcome = fit(&points(&steps));
        let (fit, fit_error) = match outcome {
            Ok(fit) => (Some(fit), None),
            Err(error) => (None, Some(error.to_string())),
        };
        UslReport {
            model: MODEL,
            n_is,
            peak_n: fit.and_then(|fit| fit.peak_n()),
            fit,
            fit_error,
            steps,
        }
    }

    /// The fit, or why there is none.
    pub fn outcome(&self) -> Result<UslFit, &str> {
        self.fit.ok_or(self.fit_error.as_deref().unwrap_or(""))
    }
}

/// The points a fit takes from steps: N and the ops/s.
pub fn points(steps: &[UslStep]) -> Vec<Point> {
    steps
        .iter()
        .filter(|step| step.report.ops > 0)
        .map(|step| Point {
            n: step.n as f64,
            ops_per_s: step.report.ops_per_s,
        })
        .collect()
}

/// Runs one bench per concurrency of `args`, in order, and fits them.
/// `progress` gives the bar of each step.
pub async fn usl_sweep(
    args: &UslArgs,
    target: &Target,
    progress: impl Fn(&BenchArgs) -> ProgressBar,
) -> Result<UslReport, BenchError> {
    args.validate()?;
    let mut steps = Vec::with_capacity(args.clients.len());
    for &clients in &args.clients {
        let step = args.step(clients);
        let bar = progress(&step);
        let report = bench(&step, target, &bar).await?;
        bar.finish_and_clear();
        steps.push(UslStep { n: clients, report });
    }
    Ok(UslReport::new("clients", steps))
}

/// `calm bench usl`: the sweep on a multi-thread runtime, the report on
/// stdout, the plot to `--svg`. Exit status 1 when the sweep cannot run,
/// the points cannot be fitted or the plot cannot be written.
pub fn run_usl(args: UslArgs, target: Target, format: Format) -> ExitCode {
    if args.sim.sim {
        return run_usl_sim(&args, format);
    }
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)
        .and_then(|runtime| {
            let progress = |step: &BenchArgs| {
                // `validate` checked every step's plan already.
                step.plan()
                    .map_or_else(|_| ProgressBar::hidden(), |plan| progress_bar(&plan))
            };
            if args.nodes.is_empty() {
                return runtime.block_on(usl_sweep(&args, &target, progress));
            }
            // Node-count mode starts this very binary as `calm dev`.
            let program = std::env::current_exe().map_err(|error| {
                BenchError::Setup(format!("cannot find the calm binary: {error}"))
            })?;
            let calm = [program.into_os_string()];
            runtime.block_on(usl_node_sweep(&args, &calm, &target, progress))
        });
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("Error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        Format::Table => print!("{}", render_usl_table(&report)),
        Format::Json => println!(
            "{}",
            serde_json::to_string(&report)
                .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
        ),
    }
    let fit = match report.outcome() {
        Ok(fit) => fit,
        Err(error) => {
            eprintln!("Error: no fit: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.svg {
        let title = format!(
            "{} at {}: USL fit",
            args.workload.name(),
            report
                .steps
                .first()
                .map_or("", |step| step.report.level.as_str())
        );
        let svg = crate::plot::render_svg(&points(&report.steps), &fit, &title, report.n_is);
        if let Err(error) = std::fs::write(path, svg) {
            eprintln!("Error: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The sweep as a table (N, headed `clients` or `nodes` | ops/s | fitted
/// | p99 | errors), then the
/// coefficients, the peak and the model.
pub fn render_usl_table(report: &UslReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} | {:>12} | {:>12} | {:>10} | {:>8}",
        report.n_is, "ops/s", "fitted", "p99", "errors"
    );
    let _ = writeln!(out, "{}", "-".repeat(61));
    for UslStep { n, report: step } in &report.steps {
        let fitted = report.fit.map_or("-".to_owned(), |fit| {
            format!("{:.0}", fit.ops_per_s_at(*n as f64))
        });
        let p99 = if step.latency.samples == 0 {
            "-".to_owned()
        } else {
            format_latency(step.latency.p99_us)
        };
        let _ = writeln!(
            out,
            "{:>7} | {:>12.0} | {:>12} | {:>10} | {:>8}",
            n, step.ops_per_s, fitted, p99, step.errors
        );
    }
    match report.outcome() {
        Ok(fit) => {
            let _ = writeln!(
                out,
                "λ = {:.1} ops/s   σ = {:.5}   κ = {:.6}",
                fit.lambda, fit.sigma, fit.kappa
            );
            let _ = match report.peak_n {
                Some(peak) => writeln!(
                    out,
                    "N* = {peak:.1} {}, at {:.0} ops/s",
                    report.n_is,
                    fit.ops_per_s_at(peak)
                ),
                None => writeln!(out, "N* = none: κ = 0, throughput does not peak"),
            };
        }
        Err(error) => {
            let _ = writeln!(out, "no fit: {error}");
        }
    }
    let _ = writeln!(out, "model: {}", report.model);
    out
}
