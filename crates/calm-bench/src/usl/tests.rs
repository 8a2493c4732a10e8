//! The fit recovers known coefficients, with and without noise, and
//! refuses what it cannot fit with a typed error; on the simulator's
//! sweep it finds no crosstalk in the real replication and finds the
//! crosstalk planted on top of it.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::sim::{SimArgs, SimCrosstalk, SimUslReport, render_sim_table, usl_sim_sweep};
use super::*;
use crate::error::BenchError;
use crate::workload::WorkloadName;

const SWEEP: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

fn curve(truth: UslFit, ns: &[f64]) -> Vec<Point> {
    ns.iter()
        .map(|&n| Point {
            n,
            ops_per_s: truth.ops_per_s_at(n),
        })
        .collect()
}

fn close(got: f64, want: f64, relative: f64, what: &str) {
    assert!(
        (got - want).abs() <= relative * want.abs().max(1e-12),
        "{what}: got {got}, want {want} within {relative}"
    );
}

#[test]
fn exact_points_give_back_their_coefficients() {
    let check = |truth: UslFit| {
        let fitted = fit(&curve(truth, &SWEEP)).expect("a fit");
        close(fitted.lambda, truth.lambda, 1e-6, "λ");
        close(fitted.sigma, truth.sigma, 1e-6, "σ");
        close(fitted.kappa, truth.kappa, 1e-6, "κ");
    };
    check(UslFit {
        lambda: 1_000.0,
        sigma: 0.05,
        kappa: 0.002,
    });
    check(UslFit {
        lambda: 42.0,
        sigma: 0.3,
        kappa: 0.0001,
    });
    // Pure Amdahl (no crosstalk) and pure crosstalk: the constrained
    // candidates find them exactly too.
    check(UslFit {
        lambda: 500.0,
        sigma: 0.1,
        kappa: 0.0,
    });
    check(UslFit {
        lambda: 500.0,
        sigma: 0.0,
        kappa: 0.01,
    });
    // Three points are enough for three unknowns.
    let truth = UslFit {
        lambda: 800.0,
        sigma: 0.02,
        kappa: 0.0005,
    };
    let fitted = fit(&curve(truth, &[1.0, 10.0, 50.0])).expect("a fit");
    close(fitted.kappa, truth.kappa, 1e-6, "κ from three points");
}

#[test]
fn noisy_points_give_coefficients_near_the_truth() {
    // ±3% multiplicative noise, three runs per concurrency, seeded.
    let truth = UslFit {
        lambda: 2_000.0,
        sigma: 0.04,
        kappa: 0.0008,
    };
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let points: Vec<Point> = SWEEP
            .iter()
            .flat_map(|&n| [n; 3])
            .map(|n| Point {
                n,
                ops_per_s: truth.ops_per_s_at(n) * rng.random_range(0.97..1.03),
            })
            .collect();
        let fitted = fit(&points).expect("a fit");
        close(fitted.lambda, truth.lambda, 0.05, "λ");
        close(fitted.sigma, truth.sigma, 0.35, "σ");
        close(fitted.kappa, truth.kappa, 0.35, "κ");
        let peak = fitted.peak_n().expect("κ > 0 peaks");
        let true_peak = truth.peak_n().expect("κ > 0 peaks");
        close(peak, true_peak, 0.2, "N*");
    }
}

#[test]
fn the_peak_is_gunthers_formula_and_absent_without_crosstalk() {
    let usl = UslFit {
        lambda: 100.0,
        sigma: 0.19,
        kappa: 0.0009,
    };
    // √((1 − 0.19) / 0.0009) = √900 = 30.
    close(usl.peak_n().expect("a peak"), 30.0, 1e-12, "N*");
    // Throughput at N* is the curve's maximum.
    let at_peak = usl.ops_per_s_at(30.0);
    assert!(usl.ops_per_s_at(29.0) < at_peak && usl.ops_per_s_at(31.0) < at_peak);
    assert_eq!(UslFit { kappa: 0.0, ..usl }.peak_n(), None);
    assert_eq!(UslFit { sigma: 1.0, ..usl }.peak_n(), None);
}

#[test]
fn negative_coefficients_are_refitted_at_zero() {
    // Near-linear scaling with a slight superlinear bump: the free solve
    // wants σ < 0; the fit keeps σ, κ ≥ 0.
    let points: Vec<Point> = SWEEP
        .iter()
        .map(|&n| Point {
            n,
            ops_per_s: 100.0 * n * if n == 64.0 { 0.9 } else { 1.0 + n / 1_000.0 },
        })
        .collect();
    let fitted = fit(&points).expect("a fit");
    assert!(fitted.sigma >= 0.0 && fitted.kappa >= 0.0, "{fitted:?}");
}

#[test]
fn inputs_that_cannot_be_fitted_are_typed_errors() {
    let point = |n: f64, ops_per_s: f64| Point { n, ops_per_s };
    let check = |points: &[Point], expected: FitError| {
        assert_eq!(fit(points), Err(expected), "{points:?}");
    };
    check(&[], FitError::PointCount { points: 0 });
    check(
        &[point(1.0, 10.0), point(2.0, 19.0)],
        FitError::PointCount { points: 2 },
    );
    check(
        &[point(4.0, 10.0), point(4.0, 11.0), point(8.0, 12.0)],
        FitError::TooFewDistinct { distinct: 2 },
    );
    check(
        &[point(1.0, 10.0), point(2.0, 0.0), point(4.0, 30.0)],
        FitError::InvalidPoint {
            n: 2.0,
            ops_per_s: 0.0,
        },
    );
    check(
        &[point(0.0, 10.0), point(2.0, 20.0), point(4.0, 30.0)],
        FitError::InvalidPoint {
            n: 0.0,
            ops_per_s: 10.0,
        },
    );
    let nan = fit(&[point(1.0, f64::NAN), point(2.0, 20.0), point(4.0, 30.0)]);
    assert!(matches!(nan, Err(FitError::InvalidPoint { .. })), "{nan:?}");
    // Throughput so large its squares overflow: no finite solve.
    let huge: Vec<Point> = SWEEP.iter().map(|&n| point(n, 1e300)).collect();
    assert!(matches!(fit(&huge), Err(FitError::Degenerate(_))));
    // Throughput that grows as N² fits no contention or crosstalk; the
    // best the constrained model does is linear scaling.
    let superlinear: Vec<Point> = SWEEP.iter().map(|&n| point(n, n * n)).collect();
    let fitted = fit(&superlinear).expect("linear scaling is a fit");
    assert_eq!((fitted.sigma, fitted.kappa), (0.0, 0.0));
}

/// `calm bench usl --sim` with `flags` after it, parsed as the CLI does.
fn usl_args(flags: &[&str]) -> Result<UslArgs, clap::Error> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        usl: UslArgs,
    }
    let argv = std::iter::once("usl").chain(flags.iter().copied());
    <Cli as clap::Parser>::try_parse_from(argv).map(|cli| cli.usl)
}

/// A short simulated sweep over `nodes`: small enough for test builds.
fn sim_sweep(nodes: &str, crosstalk: &str) -> SimUslReport {
    let flags = [
        "--sim",
        "--nodes",
        nodes,
        "--sim-crosstalk",
        crosstalk,
        "--sim-duration",
        "30ms",
        "--sim-warmup",
        "10ms",
        "--sim-clients-per-node",
        "24",
    ];
    let args = usl_args(&flags).expect("the flags parse");
    usl_sim_sweep(&args, &indicatif::ProgressBar::hidden()).expect("the sweep runs")
}

#[test]
fn sim_flags_need_no_workload_and_the_cluster_sweep_still_does() {
    let args = usl_args(&["--sim", "--nodes", "3,6,12"]).expect("--sim alone parses");
    assert!(args.sim.sim);
    assert_eq!(args.workload, WorkloadName::CounterIncr);
    assert_eq!(args.sim.sim_crosstalk, SimCrosstalk::None);
    assert_eq!(
        (args.sim.sim_duration, args.sim.sim_warmup),
        (
            SimArgs::default().sim_duration,
            SimArgs::default().sim_warmup
        )
    );
    let refused = usl_args(&["--clients", "1,2,4"]).expect_err("no workload, no --sim");
    assert_eq!(
        refused.kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
    // The simulator runs increments only: another workload is refused,
    // not silently replaced.
    let args = usl_args(&["--sim", "--workload", "counter-get"]).expect("it parses");
    let refused = usl_sim_sweep(&args, &indicatif::ProgressBar::hidden());
    assert!(matches!(refused, Err(BenchError::InvalidPlan(_))));
}

#[test]
fn the_simulated_sweep_fits_no_crosstalk_in_the_real_replication() {
    // DESIGN §5: the local level's κ fits ≤ 1e-4 up to the node counts
    // the simulator runs.
    let report = sim_sweep("3,6,12,24,48", "none");
    let fit = report.usl.outcome().expect("a fit");
    assert!(fit.kappa <= 1e-4, "{fit:?}");
    assert_eq!(report.usl.n_is, "nodes");
    let ns: Vec<usize> = report.usl.steps.iter().map(|step| step.n).collect();
    assert_eq!(ns, [3, 6, 12, 24, 48]);
    assert!(report.points.iter().all(|point| point.errors == 0));
    let table = render_sim_table(&report);
    assert!(
        table.contains("κ = ") && table.contains("cost model: "),
        "{table}"
    );
}

#[test]
fn the_simulated_sweep_finds_planted_crosstalk() {
    // Every write copied to all K nodes as a K-entry state: work per
    // write grows as K², which the fit must name as κ, with a peak.
    let report = sim_sweep("3,6,12,24,48", "full-state");
    let fit = report.usl.outcome().expect("a fit");
    assert!(fit.kappa > 1e-4, "{fit:?}");
    let peak = report.usl.peak_n.expect("κ > 0 peaks");
    assert!((6.0..=48.0).contains(&peak), "N* = {peak}");
}
