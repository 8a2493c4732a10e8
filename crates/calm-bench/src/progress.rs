//! The live progress bar on stderr: elapsed time (or operations done)
//! against the plan, the rate and p99 of the last refresh period, and the
//! errors. Hidden when stderr is not a terminal, so redirected output and
//! CI logs get only the report.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::driver::{Plan, Stop};
use crate::report::format_latency;

/// What the bar shows after one refresh period.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LiveSample {
    pub phase: Phase,
    /// Successful operations in the period.
    pub ops: u64,
    /// Failed operations in the period.
    pub errors: u64,
    pub period: Duration,
    pub p99: Duration,
    /// Milliseconds since the start (timed runs) or measured operations
    /// claimed (runs of `--ops`).
    pub position: u64,
}

/// Whether recording has started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Warmup,
    Measuring,
}

/// The progress bar for `plan`: drawn on stderr when it is a terminal,
/// hidden otherwise.
pub fn progress_bar(plan: &Plan) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let length = match plan.stop {
        Stop::After(duration) => {
            u64::try_from((plan.warmup + duration).as_millis()).unwrap_or(u64::MAX)
        }
        Stop::Ops(ops) => ops,
    };
    let bar = ProgressBar::with_draw_target(Some(length), target);
    // The template is a constant; should it ever fail to parse, the
    // default bar still shows progress.
    let style = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {percent:>3}% {msg}")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Shows `sample` on `bar`.
pub(crate) fn show(bar: &ProgressBar, sample: &LiveSample) {
    bar.set_position(sample.position);
    bar.set_message(message(sample));
}

fn message(sample: &LiveSample) -> String {
    let phase = match sample.phase {
        Phase::Warmup => "warmup",
        Phase::Measuring => "measuring",
    };
    let seconds = sample.period.as_secs_f64();
    let rate = if seconds > 0.0 {
        sample.ops as f64 / seconds
    } else {
        0.0
    };
    let p99 = if sample.ops == 0 {
        "-".to_owned()
    } else {
        format_latency(sample.p99.as_secs_f64() * 1e6)
    };
    format!(
        "{phase}  {rate:.0} ops/s  p99 {p99}  errors {}",
        sample.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_shows_rate_p99_and_errors() {
        let sample = LiveSample {
            phase: Phase::Measuring,
            ops: 500,
            errors: 2,
            period: Duration::from_millis(250),
            p99: Duration::from_micros(1_500),
            position: 0,
        };
        assert_eq!(
            message(&sample),
            "measuring  2000 ops/s  p99 1.50ms  errors 2"
        );
        let idle = LiveSample {
            phase: Phase::Warmup,
            ops: 0,
            ..sample
        };
        assert_eq!(message(&idle), "warmup  0 ops/s  p99 -  errors 2");
    }
}
