//! The fit recovers known coefficients, with and without noise, and
//! refuses what it cannot fit with a typed error.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

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
