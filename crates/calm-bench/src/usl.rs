//! Gunther's Universal Scalability Law: [`fit`] finds the λ, σ and κ that
//! best explain measured throughput at several concurrencies, and
//! [`UslFit`] answers what the model predicts, including the peak N*.
//!
//! The model ([`MODEL`]) is
//!
//! ```text
//! X(N) = λN / (1 + σ(N−1) + κN(N−1))
//! ```
//!
//! where λ is the throughput of one client alone, σ the contention (the
//! share of work that queues for something shared) and κ the crosstalk
//! (the cost of keeping every pair of clients coherent). With κ > 0
//! throughput peaks at N* = √((1−σ)/κ) and falls beyond it.
//!
//! The fit is Gunther's linearisation: N/X(N) = 1/λ + (σ/λ)(N−1) +
//! (κ/λ)N(N−1) is linear in its three unknowns, so one weighted least
//! squares solve gives them with no starting guess and no iteration. Each
//! row is weighted by X(N)/N, which makes the residuals relative, so a
//! high-concurrency point with a large N/X does not outweigh the others.
//! σ and κ are constrained to be non-negative (a negative one has no
//! physical meaning and makes N* imaginary): when the free solve gives a
//! negative one, the best fit among the models without it is taken.
//!
//! It is written here rather than taken from the `usl` crate because that
//! crate's `Model::build` panics on fewer than six points and on a failed
//! Levenberg–Marquardt solve (measured data must give an error, not a
//! panic), leaves σ and κ unconstrained, and brings a solver crate with it
//! for what is a 3×3 linear solve.

mod nodes;
mod sim;
mod sweep;
#[cfg(test)]
mod tests;

pub use nodes::{FORMATION_TIMEOUT, usl_node_sweep};
pub use sweep::{
    STEPS_MAX, UslArgs, UslReport, UslStep, points, render_usl_table, run_usl, usl_sweep,
};

use serde::Serialize;

/// The model, as reports print it.
pub const MODEL: &str = "X(N) = λN / (1 + σ(N−1) + κN(N−1))  (Gunther's Universal Scalability Law; \
     N* = √((1−σ)/κ))";
/// The fewest points, and the fewest distinct concurrencies, a fit takes:
/// three unknowns need three equations.
pub const POINTS_MIN: usize = 3;
/// The most points a fit takes; a sweep has a few dozen at most.
pub const POINTS_MAX: usize = 10_000;

/// One measurement: throughput at a concurrency (clients, or nodes).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// The concurrency N, at least 1.
    pub n: f64,
    /// The throughput measured at N, operations per second.
    pub ops_per_s: f64,
}

/// The fitted coefficients of the model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UslFit {
    /// λ: the throughput of one client alone, operations per second.
    pub lambda: f64,
    /// σ: contention, from 0 (none).
    pub sigma: f64,
    /// κ: crosstalk (coherency), from 0 (none).
    pub kappa: f64,
}

/// Why no fit came out. Nothing is partially fitted in any case.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Fewer than [`POINTS_MIN`] points, or more than [`POINTS_MAX`].
    #[error("a fit takes from {POINTS_MIN} to {POINTS_MAX} points, not {points}")]
    PointCount {
        /// How many were given.
        points: usize,
    },
    /// Fewer than [`POINTS_MIN`] distinct concurrencies: repeated runs at
    /// one N cannot separate σ from κ.
    #[error("a fit takes at least {POINTS_MIN} distinct concurrencies, not {distinct}")]
    TooFewDistinct {
        /// How many distinct N the points had.
        distinct: usize,
    },
    /// A point with N below 1, or a throughput that is not positive and
    /// finite (a step where nothing succeeded).
    #[error("point N={n}, X={ops_per_s} cannot be fitted: N must be at least 1 and X positive")]
    InvalidPoint {
        /// The point's N.
        n: f64,
        /// The point's throughput.
        ops_per_s: f64,
    },
    /// No solve gave a finite λ > 0 with σ, κ ≥ 0: the figures are out of
    /// floating-point range. (Any positive points fit at least X = λN.)
    #[error("the points fit no scalability curve: {0}")]
    Degenerate(&'static str),
}

impl UslFit {
    /// The throughput the model predicts at concurrency `n`.
    pub fn ops_per_s_at(&self, n: f64) -> f64 {
        self.lambda * n / (1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0))
    }

    /// N* = √((1−σ)/κ), the concurrency of peak throughput; `None` when
    /// throughput never peaks (κ = 0) or peaks at once (σ ≥ 1).
    pub fn peak_n(&self) -> Option<f64> {
        if self.kappa > 0.0 && self.sigma < 1.0 {
            Some(((1.0 - self.sigma) / self.kappa).sqrt())
        } else {
            None
        }
    }
}

/// Fits the model to `points`; see the module's documentation for how.
pub fn fit(points: &[Point]) -> Result<UslFit, FitError> {
    if !(POINTS_MIN..=POINTS_MAX).contains(&points.len()) {
        return Err(FitError::PointCount {
            points: points.len(),
        });
    }
    if let Some(bad) = points
        .iter()
        .find(|p| !(p.n >= 1.0 && p.n.is_finite() && p.ops_per_s > 0.0 && p.ops_per_s.is_finite()))
    {
        return Err(FitError::InvalidPoint {
            n: bad.n,
            ops_per_s: bad.ops_per_s,
        });
    }
    let mut ns: Vec<f64> = points.iter().map(|p| p.n).collect();
    ns.sort_by(f64::total_cmp);
    ns.dedup();
    if ns.len() < POINTS_MIN {
        return Err(FitError::TooFewDistinct { distinct: ns.len() });
    }
    // Which of σ and κ are free: both, then each alone, then neither. The
    // feasible candidate (all coefficients ≥ 0) with the least residual
    // wins; the free model wins whenever it is feasible, as it fits best.
    let candidates = [[true, true], [true, false], [false, true], [false, false]];
    candidates
        .iter()
        .filter_map(|&free| solve(points, free))
        .filter(|(fit, _)| fit.sigma >= 0.0 && fit.kappa >= 0.0)
        .min_by(|(_, a), (_, b)| a.total_cmp(b))
        .map(|(fit, _)| fit)
        .ok_or(FitError::Degenerate(
            "no finite λ > 0 with σ, κ ≥ 0 comes out of the points",
        ))
}

/// One weighted least-squares solve of N/X = a + b(N−1) + c·N(N−1) with
/// the columns `free` says (σ's, κ's) included, the others fixed at 0.
/// Returns the fit and its weighted residual, or `None` when the system is
/// singular or gives a = 1/λ ≤ 0.
fn solve(points: &[Point], free: [bool; 2]) -> Option<(UslFit, f64)> {
    let columns = |n: f64| {
        let all = [1.0, n - 1.0, n * (n - 1.0)];
        let mut row = vec![all[0]];
        row.extend((0..2).filter(|&i| free[i]).map(|i| all[i + 1]));
        row
    };
    let size = 1 + free.iter().filter(|&&f| f).count();
    // The normal equations AᵀWA·β = AᵀWy, weight (X/N)² per row, so the
    // residual of each row is relative to its own N/X.
    let mut normal = vec![vec![0.0; size + 1]; size];
    for point in points {
        let y = point.n / point.ops_per_s;
        let weight = 1.0 / (y * y);
        let row = columns(point.n);
        for i in 0..size {
            for j in 0..size {
                normal[i][j] += weight * row[i] * row[j];
            }
            normal[i][size] += weight * row[i] * y;
        }
    }
    let beta = gauss(normal)?;
    let a = beta[0];
    if !(a > 0.0 && a.is_finite()) {
        return None;
    }
    let mut rest = beta[1..].iter();
    let mut take = |is_free: bool| {
        if is_free {
            rest.next().copied().unwrap_or(0.0)
        } else {
            0.0
        }
    };
    let (b, c) = (take(free[0]), take(free[1]));
    let fit = UslFit {
        lambda: 1.0 / a,
        sigma: b / a,
        kappa: c / a,
    };
    let residual = points
        .iter()
        .map(|p| {
            let y = p.n / p.ops_per_s;
            let predicted = a + b * (p.n - 1.0) + c * p.n * (p.n - 1.0);
            ((predicted - y) / y).powi(2)
        })
        .sum();
    Some((fit, residual))
}

/// Solves an augmented square system by Gaussian elimination with partial
/// pivoting; `None` when it is singular.
fn gauss(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let size = m.len();
    // Relative to the matrix's scale, so a tiny but regular system passes.
    let scale = m
        .iter()
        .flat_map(|row| row[..size].iter())
        .fold(0.0_f64, |max, v| max.max(v.abs()));
    for col in 0..size {
        let pivot = (col..size).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        let magnitude = m[pivot][col].abs();
        if magnitude.is_nan() || magnitude <= scale * 1e-14 {
            return None;
        }
        m.swap(col, pivot);
        let (upper, lower) = m.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for row in lower {
            let factor = row[col] / pivot_row[col];
            for (value, above) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= factor * above;
            }
        }
    }
    let mut x = vec![0.0; size];
    for row in (0..size).rev() {
        let known: f64 = (row + 1..size).map(|k| m[row][k] * x[k]).sum();
        x[row] = (m[row][size] - known) / m[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}
