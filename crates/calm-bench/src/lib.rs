//! calm's load generator, behind `calm bench`: it sends one [`Workload`]
//! from many concurrent clients, in a closed or an open loop, picks keys
//! uniformly or by a Zipf law, records latency in HDR histograms and
//! reports throughput, percentiles and errors by gRPC code as a table or
//! JSON.
//!
//! From the command line, against a running cluster:
//!
//! ```text
//! calm bench --endpoints 127.0.0.1:2379,127.0.0.1:2381 --workload counter-incr \
//!     --clients 16 --duration 20s --warmup 5s
//! calm bench --endpoints ... --workload counter-get --rate 2000 -w json
//! calm bench --endpoints ... --workload counter-incr --level linearizable --keys 1
//! calm bench --endpoints ... --workload etcd-range --consistency s --clients 64
//! calm bench usl --endpoints ... --workload counter-incr --clients 1,2,4,8,16,32 --svg usl.svg
//! ```
//!
//! The `etcd-*` workloads speak etcd's v3 API, so the same command loads
//! calm's nodes or an etcd cluster (`scripts/bench-vs-etcd` runs both). So
//! do the counters at level `linearizable`, which CRDT counters do not
//! offer: there the counter is an etcd key holding a decimal value, and an
//! increment a compare-and-put retried until it wins, as an etcd user
//! builds one.
//!
//! As a library, a workload is anything that can send one operation for a
//! client on a numbered key; [`drive`] runs it under a [`Plan`] and
//! returns the [`Measurement`], and [`Report`] renders it. Here a workload
//! that takes a millisecond and refuses every tenth key, driven in a
//! closed loop for exactly 200 measured operations:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use calm_bench::{
//!     Code, Done, KeyDistribution, Labels, Load, OpError, Plan, Report, Stop, Workload,
//!     drive, render_table,
//! };
//!
//! struct Sleepy;
//!
//! impl Workload for Sleepy {
//!     async fn operate(&self, _client: usize, key: u64) -> Result<Done, OpError> {
//!         tokio::time::sleep(Duration::from_millis(1)).await;
//!         if key % 10 == 0 {
//!             return Err(OpError { code: Code::Unimplemented, message: "no".into() });
//!         }
//!         Ok(Done::default())
//!     }
//! }
//!
//! # fn main() -> Result<(), calm_bench::BenchError> {
//! let plan = Plan {
//!     clients: 4,
//!     load: Load::Closed,
//!     warmup: Duration::ZERO,
//!     stop: Stop::Ops(200),
//!     keys: KeyDistribution::zipf(1_000, 0.99)?,
//!     seed: 1,
//! };
//! let runtime = tokio::runtime::Runtime::new().map_err(calm_bench::BenchError::Runtime)?;
//! let progress = indicatif::ProgressBar::hidden();
//! let measurement = runtime.block_on(drive(Arc::new(Sleepy), &plan, &progress))?;
//!
//! let labels = Labels {
//!     workload: "sleepy".into(),
//!     level: "local".into(),
//!     endpoints: Vec::new(),
//!     conns: None,
//!     value_bytes: 0,
//! };
//! let report = Report::new(labels, &plan, &measurement);
//! // Exactly the budget, split between successes and failures by code.
//! assert_eq!(report.ops + report.errors, 200);
//! assert_eq!(report.errors_by_code.get("UNIMPLEMENTED").map_or(0, |e| e.count), report.errors);
//! assert!(report.latency.p50_us >= 1_000.0);
//! println!("{}", render_table(&[report]));
//! # Ok(())
//! # }
//! ```
//!
//! Extending the bench: a new workload implements [`Workload`] and gets a
//! [`WorkloadName`]; a new figure is a field of [`Report`] and a table
//! column; other levels need nothing here, as the level travels in the
//! clients' configuration.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod args;
mod driver;
mod error;
mod etcd;
mod keys;
mod plot;
mod progress;
mod report;
mod tax;
mod usl;
mod workload;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use calm_client::{ClientConfig, Level};
use indicatif::ProgressBar;

pub use args::{BenchArgs, KeyDist, VALUE_BYTES_MAX, parse_duration};
pub use calm_client::Code;
pub use driver::{
    CLIENTS_MAX, DURATION_MAX, LATENCY_MAX, Load, Measurement, Plan, RATE_MAX, Stop, drive,
};
pub use error::BenchError;
pub use etcd::{
    COMPARE_FAILED, COUNTER_KIND, Consistency, EtcdChannels, EtcdCounter, EtcdLeaseKeepAlive,
    EtcdPut, EtcdRange, EtcdTxn, EtcdWatchLatency, INCREMENT_ATTEMPTS_MAX, Incremented, KV_KIND,
    LEASE_TTL_S, WATCH_ID_BYTES, bench_value, check_keep_alive, compare_and_put, counter_key,
    counter_key_number, counter_prefix, counter_value, etcd_level, failed_read, kv_key,
    kv_key_number, kv_prefix, prefix_end, put_request, range_request, revision_after, txn_request,
    watch_create_request, watch_id, watch_value,
};
pub use keys::{KEYS_MAX, KeyDistribution, ZIPF_THETA_MAX, Zipf};
pub use plot::render_svg;
pub use progress::progress_bar;
pub use report::{
    ErrorCount, Labels, LatencySummary, Report, format_latency, render_json, render_table,
};
pub use tax::{
    NodeCounters, Snapshot, TAX_RUNS, Tax, TaxArgs, TaxReport, channel_of, render_tax_table,
    run_tax, snapshot, tax, tax_runs,
};
pub use usl::{
    FORMATION_TIMEOUT, FitError, MODEL, POINTS_MAX, POINTS_MIN, Point, STEPS_MAX, UslArgs, UslFit,
    UslReport, UslStep, fit, points, render_usl_table, run_usl, usl_node_sweep, usl_sweep,
};
pub use workload::{
    CounterOperation, CounterWorkload, Done, KvWorkload, OpError, Pool, Workload, WorkloadName,
    key_name,
};

/// The bound on opening one connection; a shorter request timeout wins.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The cluster a bench runs against, from the `calm` binary's global
/// flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Client endpoints, `host:port`; bench client `i` uses endpoint
    /// `i % len`.
    pub endpoints: Vec<String>,
    /// The level every request of calm's API carries (etcd workloads
    /// ignore it; at `linearizable` the counter workloads run on the etcd
    /// API, see [`WorkloadName::speaks_etcd`]).
    pub level: Level,
    /// The deadline of one request; a request that misses it counts as a
    /// `DEADLINE_EXCEEDED` error.
    pub request_timeout: Duration,
}

/// How the report prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A boxed table, with error and open-loop notes below it.
    Table,
    /// One line of JSON.
    Json,
}

/// `calm bench`: runs the bench on a multi-thread runtime, shows progress
/// on stderr, prints the report on stdout. Exit status 1 when the bench
/// cannot run or no operation succeeded (the report is printed first).
pub fn run(args: BenchArgs, target: Target, format: Format) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)
        .and_then(|runtime| {
            let plan = args.plan()?;
            let progress = progress_bar(&plan);
            runtime.block_on(bench(&args, &target, &progress))
        });
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("Error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        Format::Table => print!("{}", render_table(std::slice::from_ref(&report))),
        Format::Json => println!("{}", render_json(&report)),
    }
    if report.ops == 0 {
        eprintln!("Error: no operation succeeded");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs the bench `args` describe against `target` and reports it. Must
/// run inside a multi-thread tokio runtime for the figures to mean
/// anything (a current-thread one works, on one core).
pub async fn bench(
    args: &BenchArgs,
    target: &Target,
    progress: &ProgressBar,
) -> Result<Report, BenchError> {
    let plan = args.plan()?;
    let connect_timeout = target.request_timeout.min(CONNECT_TIMEOUT);
    // The nodes' counters before and after the run give its coordination
    // tax; an etcd endpoint has none.
    let before = tax::snapshot(&target.endpoints, connect_timeout).await;
    let level = served_level(args.workload, target.level);
    let mut labels = Labels {
        workload: args.workload.name().to_owned(),
        level: level.name().to_owned(),
        endpoints: target.endpoints.clone(),
        conns: None,
        value_bytes: args.value_bytes,
    };
    // The etcd-API runs are counted by calm's nodes under `linearizable`
    // (writes and linearizable ranges) or `serializable`, which is what
    // their level label says, so the tax below looks them up there.
    let measurement = if args.workload.speaks_etcd(target.level) {
        let conns = args.conns.unwrap_or(target.endpoints.len());
        let channels = EtcdChannels::connect(&target.endpoints, conns, connect_timeout)?;
        labels.conns = Some(channels.conns());
        labels.level = etcd_level(args.workload, args.consistency).to_owned();
        etcd::measure(args, &plan, channels, target.request_timeout, progress).await?
    } else {
        let config = ClientConfig {
            timeout: target.request_timeout,
            connect_timeout,
            level,
            ..ClientConfig::default()
        };
        let pool = Pool::connect(&target.endpoints, &config)?;
        match args.workload {
            WorkloadName::KvPut | WorkloadName::KvGet => {
                let put = (args.workload == WorkloadName::KvPut).then_some(args.value_bytes);
                drive(Arc::new(KvWorkload::new(pool, put)), &plan, progress).await?
            }
            WorkloadName::CounterGet => {
                let workload = CounterWorkload::new(pool, CounterOperation::Get);
                drive(Arc::new(workload), &plan, progress).await?
            }
            // Only calm's own workloads get here.
            _ => {
                let workload = CounterWorkload::new(pool, CounterOperation::Increment);
                drive(Arc::new(workload), &plan, progress).await?
            }
        }
    };
    let mut report = Report::new(labels, &plan, &measurement);
    if let (Some(before), Some(after)) = (
        before,
        tax::snapshot(&target.endpoints, connect_timeout).await,
    ) {
        let channel = tax::channel_of(args.workload, &report.level);
        report.tax = tax::tax(&before, &after, &report.level, channel);
    }
    Ok(report)
}

/// The level `workload` is served at when `--level` says `level`. The
/// `Kv` service has no `local` level: a client at that default leaves the
/// level unspecified, which the server serves as `quorum`. The report says
/// so, and looks the run's tax up under `quorum`, where the nodes count it.
fn served_level(workload: WorkloadName, level: Level) -> Level {
    match (workload, level) {
        (WorkloadName::KvPut | WorkloadName::KvGet, Level::Local) => Level::Quorum,
        _ => level,
    }
}
