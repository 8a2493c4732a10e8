//! `calm bench tax`: one write and one read workload at every level, run
//! one after the other against the same cluster, and the coordination-tax
//! table of the lot: level | ops/s | p50 | p99 | msgs/op | RTTs/op |
//! fsyncs/op.

use std::fmt::Write;
use std::process::ExitCode;
use std::time::Duration;

use calm_client::Level;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::args::{BenchArgs, KeyDist, parse_duration};
use crate::etcd::Consistency;
use crate::report::{Report, format_latency};
use crate::{BenchError, Format, Target, WorkloadName, bench, progress_bar};

/// Every run of the table, cheapest level first: the workload, the level
/// its requests carry, and the etcd read consistency (etcd workloads). At
/// linearizable the counter is an etcd key updated by compare-and-put (see
/// [`WorkloadName::CounterIncr`]), so its row sits beside the plain etcd
/// put and range it is built from. The tax is per request the nodes
/// coordinated, so an increment that retried counts as several.
pub const TAX_RUNS: [(WorkloadName, Level, Consistency); 18] = [
    (
        WorkloadName::CounterIncr,
        Level::Local,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::CounterGet,
        Level::Local,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::CounterIncr,
        Level::One,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::CounterGet,
        Level::One,
        Consistency::Linearizable,
    ),
    (WorkloadName::KvPut, Level::One, Consistency::Linearizable),
    (WorkloadName::KvGet, Level::One, Consistency::Linearizable),
    (
        WorkloadName::CounterIncr,
        Level::Quorum,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::CounterGet,
        Level::Quorum,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::KvPut,
        Level::Quorum,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::KvGet,
        Level::Quorum,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::CounterIncr,
        Level::All,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::CounterGet,
        Level::All,
        Consistency::Linearizable,
    ),
    (WorkloadName::KvPut, Level::All, Consistency::Linearizable),
    (WorkloadName::KvGet, Level::All, Consistency::Linearizable),
    (
        WorkloadName::CounterIncr,
        Level::Linearizable,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::CounterGet,
        Level::Linearizable,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::EtcdPut,
        Level::Linearizable,
        Consistency::Linearizable,
    ),
    (
        WorkloadName::EtcdRange,
        Level::Linearizable,
        Consistency::Linearizable,
    ),
];

/// `calm bench tax`'s flags: the load every run of the table gets.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct TaxArgs {
    /// Concurrent clients of each run.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to measure each run, after its warmup.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// How long to run each before recording (0s for none).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// How many distinct keys operations pick from.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// The size of each written value.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
}

impl TaxArgs {
    /// The single run's flags for one row of the table.
    fn run(&self, workload: WorkloadName, consistency: Consistency) -> BenchArgs {
        BenchArgs {
            workload,
            clients: self.clients,
            rate: None,
            duration: self.duration,
            ops: None,
            warmup: self.warmup,
            keys: self.keys,
            key_dist: KeyDist::Uniform,
            zipf_theta: 0.99,
            value_bytes: self.value_bytes,
            seed: 1,
            consistency,
            conns: None,
        }
    }
}

/// Every row of the table, for `-w json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaxReport {
    /// One report per run, in [`TAX_RUNS`] order.
    pub runs: Vec<Report>,
}

/// Runs every row against `target`'s endpoints (which should list every
/// node: the tax is summed over the nodes named) and prints the table.
pub fn run_tax(args: TaxArgs, target: Target, format: Format) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)
        .and_then(|runtime| runtime.block_on(tax_runs(&args, &target)));
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("Error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        Format::Table => print!("{}", render_tax_table(&report.runs)),
        Format::Json => println!(
            "{}",
            serde_json::to_string(&report)
                .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
        ),
    }
    ExitCode::SUCCESS
}

/// Runs [`TAX_RUNS`] one after the other.
pub async fn tax_runs(args: &TaxArgs, target: &Target) -> Result<TaxReport, BenchError> {
    let mut runs = Vec::with_capacity(TAX_RUNS.len());
    for (workload, level, consistency) in TAX_RUNS {
        let run = args.run(workload, consistency);
        let progress = run
            .plan()
            .map_or_else(|_| ProgressBar::hidden(), |plan| progress_bar(&plan));
        let target = Target {
            level,
            ..target.clone()
        };
        runs.push(bench(&run, &target, &progress).await?);
        progress.finish_and_clear();
    }
    Ok(TaxReport { runs })
}

/// The table the issue asks for: one row per run.
pub fn render_tax_table(runs: &[Report]) -> String {
    let header = [
        "LEVEL",
        "WORKLOAD",
        "OPS/S",
        "P50",
        "P99",
        "MSGS/OP",
        "RTTS/OP",
        "FSYNCS/OP",
    ];
    let rows: Vec<[String; 8]> = runs.iter().map(row).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut line = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        line.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header);
    for row in &rows {
        out += &line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

fn row(report: &Report) -> [String; 8] {
    let figure = |pick: fn(&crate::Tax) -> f64| {
        report
            .tax
            .as_ref()
            .map_or_else(|| "-".to_owned(), |tax| format!("{:.2}", pick(tax)))
    };
    let latency = |us: f64| match report.latency.samples {
        0 => "-".to_owned(),
        _ => format_latency(us),
    };
    [
        report.level.clone(),
        report.workload.clone(),
        format!("{:.0}", report.ops_per_s),
        latency(report.latency.p50_us),
        latency(report.latency.p99_us),
        figure(|tax| tax.msgs_per_op),
        figure(|tax| tax.rtts_per_op),
        figure(|tax| tax.fsyncs_per_op),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Tax;
    use crate::report::LatencySummary;

    fn report(level: &str, workload: &str, tax: Option<Tax>) -> Report {
        let latency = LatencySummary {
            samples: 10,
            mean_us: 900.0,
            p50_us: 800.0,
            p90_us: 1_500.0,
            p99_us: 2_500.0,
            p999_us: 3_000.0,
            max_us: 3_100.0,
        };
        Report {
            workload: workload.to_owned(),
            level: level.to_owned(),
            mode: "closed",
            clients: 16,
            target_rate_per_s: None,
            endpoints: Vec::new(),
            conns: None,
            keys: 10,
            key_dist: "uniform",
            zipf_theta: None,
            value_bytes: 64,
            warmup_s: 0.0,
            ops_budget: None,
            elapsed_s: 1.0,
            ops: 10,
            ops_per_s: 1_234.4,
            latency,
            service_time: None,
            errors: 0,
            errors_by_code: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            tax,
        }
    }

    #[test]
    fn the_table_has_the_issue_columns_one_row_per_run() {
        let quorum = Tax {
            requests: 10,
            msgs_per_op: 4.0,
            rtts_per_op: 1.0,
            fsyncs_per_op: 2.5,
        };
        let runs = [
            report("quorum", "kv-put", Some(quorum)),
            report("linearizable", "etcd-put", None),
        ];
        let table = render_tax_table(&runs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "LEVEL         WORKLOAD  OPS/S  P50    P99     MSGS/OP  RTTS/OP  FSYNCS/OP"
        );
        assert_eq!(
            lines[1],
            "quorum        kv-put    1234   800µs  2.50ms  4.00     1.00     2.50"
        );
        assert_eq!(
            lines[2],
            "linearizable  etcd-put  1234   800µs  2.50ms  -        -        -"
        );
    }

    #[test]
    fn every_level_has_a_write_and_a_read_run_of_each_service_serving_it() {
        let runs_at = |level: Level| -> Vec<WorkloadName> {
            TAX_RUNS
                .iter()
                .filter(|(_, l, _)| *l == level)
                .map(|(workload, _, _)| *workload)
                .collect()
        };
        use WorkloadName::*;
        assert_eq!(runs_at(Level::Local), [CounterIncr, CounterGet]);
        // The same CRDT counter and the Kv service at each leaderless level.
        for level in [Level::One, Level::Quorum, Level::All] {
            assert_eq!(
                runs_at(level),
                [CounterIncr, CounterGet, KvPut, KvGet],
                "{level:?}"
            );
        }
        // The counter as an etcd user builds it, then the etcd requests it
        // is made of.
        assert_eq!(
            runs_at(Level::Linearizable),
            [CounterIncr, CounterGet, EtcdPut, EtcdRange]
        );
    }
}
