//! `calm bench`'s own flags ([`BenchArgs`]) and their translation into a
//! [`Plan`]. The endpoints, the level, the output format and the request
//! timeout are the `calm` binary's global flags, passed in as a
//! [`crate::Target`] and a [`crate::Format`].

use std::time::Duration;

use crate::driver::{CLIENTS_MAX, DURATION_MAX, Load, Plan, Stop};
use crate::error::BenchError;
use crate::etcd::Consistency;
use crate::keys::KeyDistribution;
use crate::workload::WorkloadName;

/// The largest `--value-bytes`: a request carries one value, and calm's
/// servers refuse far smaller payloads anyway.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Runs a load generator against a cluster and reports throughput and
/// latency percentiles.
///
/// Closed loop by default: each of `--clients` clients sends its next
/// request as soon as the last is answered. With `--rate`, open loop:
/// requests leave on a fixed schedule (spread over the clients, which
/// bound the requests in flight) and latency is counted from each
/// request's intended send time, so a stall is not hidden by the requests
/// that could not be sent during it. Client `i` talks to endpoint
/// `i % endpoints`. Requests carry the global `--level`; failed requests
/// are counted by gRPC code.
///
/// The `etcd-*` workloads speak etcd's v3 API, so they run against calm's
/// nodes and against an etcd cluster alike; they ignore `--level` (etcd
/// writes are linearizable; `--consistency` picks the reads' guarantee).
/// The counters at `--level linearizable` speak it too: the counter is an
/// etcd key, incremented by compare-and-put retried until it wins and
/// read by a linearizable range.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct BenchArgs {
    /// The operation to send.
    #[arg(long, value_enum)]
    pub workload: WorkloadName,
    /// Concurrent clients, each with one request in flight at most.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Open loop at this many operations per second in total; latency is
    /// measured from each request's intended send time.
    #[arg(long, value_name = "OPS_PER_S")]
    pub rate: Option<f64>,
    /// How long to measure, after the warmup (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "30s", conflicts_with = "ops")]
    pub duration: Duration,
    /// Measure exactly this many operations (failed ones included) instead
    /// of a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// How long to run before recording (0s for none).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub warmup: Duration,
    /// How many distinct keys operations pick from.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub key_dist: KeyDist,
    /// The Zipf exponent for `--key-dist zipf` (YCSB uses 0.99).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// The size of each written value, for workloads that write values
    /// (counters ignore it).
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Seeds the key choices, so runs pick the same key sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// etcd-range: `l` linearizable (a read index through Raft) or `s`
    /// serializable (the answering member's own state), as etcd's
    /// `benchmark range --consistency`.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// etcd workloads: gRPC connections the clients share (client `i`
    /// uses connection `i % conns`, connection `j` endpoint
    /// `j % endpoints`); one per endpoint when absent.
    #[arg(long)]
    pub conns: Option<usize>,
}

/// `--key-dist`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Key k drawn with probability proportional to 1/(k+1)^theta.
    Zipf,
}

impl BenchArgs {
    /// The run these flags describe, every bound checked.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        if self.value_bytes > VALUE_BYTES_MAX {
            return Err(BenchError::InvalidPlan(format!(
                "--value-bytes must be at most {VALUE_BYTES_MAX}"
            )));
        }
        if let Some(conns) = self.conns
            && !(1..=CLIENTS_MAX).contains(&conns)
        {
            return Err(BenchError::InvalidPlan(format!(
                "--conns must be from 1 to {CLIENTS_MAX}, not {conns}"
            )));
        }
        let keys = match self.key_dist {
            KeyDist::Uniform => KeyDistribution::uniform(self.keys)?,
            KeyDist::Zipf => KeyDistribution::zipf(self.keys, self.zipf_theta)?,
        };
        let plan = Plan {
            clients: self.clients,
            load: match self.rate {
                None => Load::Closed,
                Some(rate_per_s) => Load::Open { rate_per_s },
            },
            warmup: self.warmup,
            stop: match self.ops {
                None => Stop::After(self.duration),
                Some(ops) => Stop::Ops(ops),
            },
            keys,
            seed: self.seed,
        };
        plan.validate()?;
        Ok(plan)
    }
}

/// Parses a duration like the CLI's other flags: `0s`, `250ms`, `5s`,
/// `1.5s`, `2m`, `1h`. Zero is allowed (a warmup may be none); more than
/// a day is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 30s or 500ms"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let unit_seconds = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s, m or h")),
    };
    let seconds = number * unit_seconds;
    if seconds > DURATION_MAX.as_secs_f64() {
        return Err("a duration must be at most 24h".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `BenchArgs` as the `calm` binary mounts it.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.args)
    }

    fn plan(args: &[&str]) -> Result<Plan, BenchError> {
        parse(args).expect("the flags parse").plan()
    }

    #[test]
    fn the_defaults_are_a_closed_loop_of_16_clients_for_30s() {
        let plan = plan(&["--workload", "counter-incr"]).expect("a valid plan");
        assert_eq!(plan.clients, 16);
        assert_eq!(plan.load, Load::Closed);
        assert_eq!(plan.warmup, Duration::from_secs(5));
        assert_eq!(plan.stop, Stop::After(Duration::from_secs(30)));
        assert_eq!(plan.keys, KeyDistribution::Uniform { keys: 10_000 });
    }

    #[test]
    fn rate_opens_the_loop_and_ops_replaces_the_duration() {
        let plan = plan(&[
            "--workload",
            "counter-get",
            "--rate",
            "2000",
            "--ops",
            "500",
            "--warmup",
            "0s",
            "--key-dist",
            "zipf",
            "--zipf-theta",
            "1.2",
            "--keys",
            "50",
        ])
        .expect("a valid plan");
        assert_eq!(plan.load, Load::Open { rate_per_s: 2000.0 });
        assert_eq!(plan.stop, Stop::Ops(500));
        assert_eq!(plan.warmup, Duration::ZERO);
        assert_eq!(plan.keys.zipf_theta(), Some(1.2));
        assert_eq!(plan.keys.keys(), 50);
    }

    #[test]
    fn etcd_flags_default_to_linearizable_reads_and_a_connection_per_endpoint() {
        let args = parse(&["--workload", "etcd-range"]).expect("the flags parse");
        assert_eq!(args.workload, WorkloadName::EtcdRange);
        assert_eq!(args.consistency, Consistency::Linearizable);
        assert_eq!(args.conns, None);
        // etcd benchmark's spelling, and the long one.
        let check = |spelled: &str, expected: Consistency| {
            let args = parse(&["--workload", "etcd-range", "--consistency", spelled])
                .expect("the flags parse");
            assert_eq!(args.consistency, expected, "{spelled}");
        };
        check("s", Consistency::Serializable);
        check("serializable", Consistency::Serializable);
        check("l", Consistency::Linearizable);
        check("linearizable", Consistency::Linearizable);
        let args = parse(&["--workload", "etcd-put", "--conns", "64"]).expect("the flags parse");
        assert_eq!(args.conns, Some(64));
    }

    #[test]
    fn ops_and_an_explicit_duration_conflict() {
        let error = parse(&[
            "--workload",
            "counter-get",
            "--ops",
            "5",
            "--duration",
            "5s",
        ])
        .expect_err("conflicting flags");
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn out_of_bound_plans_are_refused_with_the_flag_named() {
        let check = |args: &[&str], flag: &str| match plan(args) {
            Err(BenchError::InvalidPlan(message)) => {
                assert!(message.contains(flag), "{args:?}: {message}")
            }
            other => panic!("{args:?}: expected a refusal naming {flag}, got {other:?}"),
        };
        let w = ["--workload", "counter-incr"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            w.iter().chain(extra).copied().collect()
        };
        check(&with(&["--clients", "0"]), "--clients");
        check(&with(&["--clients", "10001"]), "--clients");
        check(&with(&["--rate", "0"]), "--rate");
        check(&with(&["--rate=-5"]), "--rate");
        check(&with(&["--rate", "NaN"]), "--rate");
        check(&with(&["--ops", "0"]), "--ops");
        check(&with(&["--duration", "0s"]), "--duration");
        check(&with(&["--keys", "0"]), "--keys");
        check(
            &with(&["--key-dist", "zipf", "--zipf-theta", "0"]),
            "--zipf-theta",
        );
        check(&with(&["--value-bytes", "2000000"]), "--value-bytes");
        check(&with(&["--conns", "0"]), "--conns");
    }

    #[test]
    fn durations_take_units_and_allow_zero() {
        let check =
            |text: &str, expected: Result<Duration, &str>| match (parse_duration(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            };
        check("0", Ok(Duration::ZERO));
        check("0s", Ok(Duration::ZERO));
        check("250ms", Ok(Duration::from_millis(250)));
        check("1.5s", Ok(Duration::from_millis(1500)));
        check("2m", Ok(Duration::from_secs(120)));
        check("1h", Ok(Duration::from_secs(3600)));
        check("5", Err("no unit"));
        check("-1s", Err("number"));
        check("5d", Err("unknown unit"));
        check("25h", Err("at most 24h"));
    }
}
