//! What a bench reports: [`Report`] with its [`LatencySummary`] and error
//! counts, rendered as a boxed table ([`render_table`]) or one line of
//! JSON ([`render_json`]).
//!
//! Adding a figure is a field on [`Report`], which JSON picks up by itself,
//! and one entry in `COLUMNS` for the table.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::{Load, Measurement, Plan, Stop};
use crate::tax::Tax;

/// The outcome of one bench run, for people (table) and programs (JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The workload's name (`counter-incr`).
    pub workload: String,
    /// The coordination level requests carried (`local`).
    pub level: String,
    /// `closed` (each client waits for its answer before the next request)
    /// or `open` (requests leave on a fixed schedule).
    pub mode: &'static str,
    /// How many bench clients ran (at most this many requests in flight).
    pub clients: usize,
    /// The open loop's target rate, operations per second.
    pub target_rate_per_s: Option<f64>,
    /// The endpoints load was spread over.
    pub endpoints: Vec<String>,
    /// etcd workloads: how many gRPC connections the clients shared
    /// (client `i` uses connection `i % conns`, connection `j` endpoint
    /// `j % endpoints`).
    pub conns: Option<usize>,
    /// How many keys operations picked from.
    pub keys: u64,
    /// `uniform` or `zipf`.
    pub key_dist: &'static str,
    /// The Zipf exponent, for `zipf`.
    pub zipf_theta: Option<f64>,
    /// The value size asked for (workloads without values ignore it).
    pub value_bytes: usize,
    /// The unrecorded warmup before the measurement, seconds.
    pub warmup_s: f64,
    /// The `--ops` budget, when the run was bounded by count, not time.
    pub ops_budget: Option<u64>,
    /// The measured window, seconds: from the end of the warmup to the last
    /// answer of a measured operation.
    pub elapsed_s: f64,
    /// Measured operations that succeeded.
    pub ops: u64,
    /// `ops / elapsed_s`.
    pub ops_per_s: f64,
    /// Latency of the successful operations. In the open loop it runs from
    /// the *intended* send time, so a stall shows in every request queued
    /// behind it (no coordinated omission).
    pub latency: LatencySummary,
    /// Open loop only: latency from the *actual* send time, which hides
    /// queueing behind a stall; for comparison with `latency`.
    pub service_time: Option<LatencySummary>,
    /// Measured operations that failed.
    pub errors: u64,
    /// The failures by gRPC code name (`UNIMPLEMENTED`).
    pub errors_by_code: BTreeMap<String, ErrorCount>,
    /// Successful operations the workload labelled, by label (`etcd-txn`
    /// counts `compare-failed`); part of `ops`, not of `errors`.
    pub outcomes: BTreeMap<String, u64>,
    /// The coordination tax per operation, from the nodes' own counters
    /// (see [`crate::tax`]); `None` against etcd, or when a node did not
    /// report.
    pub tax: Option<Tax>,
}

/// How often one gRPC code came back, and what the first one said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    /// How many operations failed with the code.
    pub count: u64,
    /// The first such failure's message.
    pub first_message: String,
}

/// Latency percentiles of one histogram, in microseconds. With no sample
/// every figure is 0.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    /// How many operations the figures cover.
    pub samples: u64,
    /// The mean.
    pub mean_us: f64,
    /// The median.
    pub p50_us: f64,
    /// The 90th percentile.
    pub p90_us: f64,
    /// The 99th percentile.
    pub p99_us: f64,
    /// The 99.9th percentile.
    pub p999_us: f64,
    /// The slowest.
    pub max_us: f64,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds (as the drivers record).
    pub fn from_nanos(histogram: &Histogram<u64>) -> LatencySummary {
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        let at = |quantile: f64| us(histogram.value_at_quantile(quantile));
        LatencySummary {
            samples: histogram.len(),
            mean_us: histogram.mean() / 1_000.0,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: us(histogram.max()),
        }
    }
}

/// What the report says about a run besides its measurement: names the
/// drivers do not know.
#[derive(Clone, Debug, PartialEq)]
pub struct Labels {
    /// The workload's name.
    pub workload: String,
    /// The level's name.
    pub level: String,
    /// The endpoints.
    pub endpoints: Vec<String>,
    /// The connections etcd workloads shared; `None` for calm's.
    pub conns: Option<usize>,
    /// The value size asked for.
    pub value_bytes: usize,
}

impl Report {
    /// The report of `measurement`, taken under `plan`.
    pub fn new(labels: Labels, plan: &Plan, measurement: &Measurement) -> Report {
        let elapsed_s = measurement.elapsed.as_secs_f64();
        let (mode, target_rate_per_s) = match plan.load {
            Load::Closed => ("closed", None),
            Load::Open { rate_per_s } => ("open", Some(rate_per_s)),
        };
        Report {
            workload: labels.workload,
            level: labels.level,
            mode,
            clients: plan.clients,
            target_rate_per_s,
            endpoints: labels.endpoints,
            conns: labels.conns,
            keys: plan.keys.keys(),
            key_dist: plan.keys.name(),
            zipf_theta: plan.keys.zipf_theta(),
            value_bytes: labels.value_bytes,
            warmup_s: plan.warmup.as_secs_f64(),
            ops_budget: match plan.stop {
                Stop::After(_) => None,
                Stop::Ops(ops) => Some(ops),
            },
            elapsed_s,
            ops: measurement.ops,
            ops_per_s: per_second(measurement.ops, measurement.elapsed),
            latency: LatencySummary::from_nanos(&measurement.latency),
            service_time: target_rate_per_s
                .map(|_| LatencySummary::from_nanos(&measurement.service_time)),
            errors: measurement.errors.values().map(|count| count.count).sum(),
            errors_by_code: measurement
                .errors
                .iter()
                .map(|(code, count)| ((*code).to_owned(), count.clone()))
                .collect(),
            outcomes: measurement
                .outcomes
                .iter()
                .map(|(label, count)| ((*label).to_owned(), *count))
                .collect(),
            tax: None,
        }
    }
}

fn per_second(ops: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        ops as f64 / elapsed.as_secs_f64()
    }
}

/// One table column: its header and how a report fills its cell.
type Column = (&'static str, fn(&Report) -> String);

/// The table's columns, in order.
const COLUMNS: [Column; 14] = [
    ("WORKLOAD", |r| r.workload.clone()),
    ("LEVEL", |r| r.level.clone()),
    ("CLIENTS", |r| r.clients.to_string()),
    ("OPS", |r| r.ops.to_string()),
    ("OPS/S", |r| format!("{:.0}", r.ops_per_s)),
    ("P50", |r| latency_cell(r, r.latency.p50_us)),
    ("P90", |r| latency_cell(r, r.latency.p90_us)),
    ("P99", |r| latency_cell(r, r.latency.p99_us)),
    ("P99.9", |r| latency_cell(r, r.latency.p999_us)),
    ("MAX", |r| latency_cell(r, r.latency.max_us)),
    ("ERRORS", |r| r.errors.to_string()),
    ("MSGS/OP", |r| tax_cell(r, |tax| tax.msgs_per_op)),
    ("RTTS/OP", |r| tax_cell(r, |tax| tax.rtts_per_op)),
    ("FSYNCS/OP", |r| tax_cell(r, |tax| tax.fsyncs_per_op)),
];

fn tax_cell(report: &Report, figure: fn(&Tax) -> f64) -> String {
    report
        .tax
        .as_ref()
        .map_or_else(|| "-".to_owned(), |tax| format!("{:.2}", figure(tax)))
}

fn latency_cell(report: &Report, us: f64) -> String {
    if report.latency.samples == 0 {
        "-".to_owned()
    } else {
        format_latency(us)
    }
}

/// A latency for people: `412µs`, `3.14ms`, `1.250s`.
pub fn format_latency(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else {
        format!("{:.3}s", us / 1_000_000.0)
    }
}

/// The reports as a boxed table, one row each, followed by a line per
/// error code and, for open-loop runs, the service time beside the
/// corrected latency.
pub fn render_table(reports: &[Report]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|report| COLUMNS.iter().map(|(_, cell)| cell(report)).collect())
        .collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(index, (header, _))| {
            rows.iter()
                .map(|row| row[index].chars().count())
                .chain([header.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: String = widths.iter().fold("+".to_owned(), |mut rule, width| {
        rule.push_str(&"-".repeat(width + 2));
        rule.push('+');
        rule
    });
    let line = |cells: Vec<&str>| {
        let mut line = "|".to_owned();
        for (cell, width) in cells.into_iter().zip(&widths) {
            let pad = width - cell.chars().count();
            let _ = write!(line, " {cell}{} |", " ".repeat(pad));
        }
        line
    };
    let mut out = format!("{rule}\n");
    out += &line(COLUMNS.iter().map(|(header, _)| *header).collect());
    out += &format!("\n{rule}\n");
    for row in &rows {
        out += &line(row.iter().map(String::as_str).collect());
        out.push('\n');
    }
    out += &format!("{rule}\n");
    for report in reports {
        out += &notes(report);
    }
    out
}

/// The lines under the table for one report.
fn notes(report: &Report) -> String {
    let mut out = String::new();
    for (code, count) in &report.errors_by_code {
        let _ = writeln!(
            out,
            "{} errors: {code} x{}, first: {}",
            report.workload, count.count, count.first_message
        );
    }
    for (label, count) in &report.outcomes {
        let share = 100.0 * *count as f64 / report.ops.max(1) as f64;
        let _ = writeln!(
            out,
            "{} outcomes: {label} x{count} ({share:.1}% of ops)",
            report.workload
        );
    }
    if let (Some(rate), Some(service)) = (report.target_rate_per_s, &report.service_time) {
        let _ = writeln!(
            out,
            "{} open loop at {rate:.0}/s: latency counted from each request's intended send time; \
             service time from the actual send: p50 {}, p99 {}, max {}",
            report.workload,
            format_latency(service.p50_us),
            format_latency(service.p99_us),
            format_latency(service.max_us),
        );
    }
    out
}

/// The report as one line of JSON, every field present (absent options
/// are `null`).
pub fn render_json(report: &Report) -> String {
    // A Report holds only strings, numbers, options and string-keyed maps,
    // which serde_json always encodes.
    serde_json::to_string(report).expect("a report always encodes as JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let latency = LatencySummary {
            samples: 1_000,
            mean_us: 500.0,
            p50_us: 412.0,
            p90_us: 900.0,
            p99_us: 3_140.0,
            p999_us: 12_000.0,
            max_us: 1_250_000.0,
        };
        Report {
            workload: "counter-incr".to_owned(),
            level: "local".to_owned(),
            mode: "open",
            clients: 16,
            target_rate_per_s: Some(2_000.0),
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            conns: None,
            keys: 10_000,
            key_dist: "zipf",
            zipf_theta: Some(0.99),
            value_bytes: 64,
            warmup_s: 5.0,
            ops_budget: None,
            elapsed_s: 20.0,
            ops: 1_000,
            ops_per_s: 50.0,
            latency: latency.clone(),
            service_time: Some(latency),
            errors: 3,
            errors_by_code: BTreeMap::from([(
                "UNIMPLEMENTED".to_owned(),
                ErrorCount {
                    count: 3,
                    first_message: "level one is not offered".to_owned(),
                },
            )]),
            outcomes: BTreeMap::new(),
            tax: Some(Tax {
                requests: 1_000,
                msgs_per_op: 4.0,
                rtts_per_op: 1.0,
                fsyncs_per_op: 0.25,
            }),
        }
    }

    #[test]
    fn latencies_print_in_the_unit_that_fits() {
        assert_eq!(format_latency(412.4), "412µs");
        assert_eq!(format_latency(3_140.0), "3.14ms");
        assert_eq!(format_latency(1_250_000.0), "1.250s");
    }

    #[test]
    fn the_table_has_the_issue_columns_and_notes_errors() {
        let table = render_table(&[report()]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[1],
            "| WORKLOAD     | LEVEL | CLIENTS | OPS  | OPS/S | P50   | P90   | P99    | P99.9   \
             | MAX    | ERRORS | MSGS/OP | RTTS/OP | FSYNCS/OP |"
        );
        assert_eq!(
            lines[3],
            "| counter-incr | local | 16      | 1000 | 50    | 412µs | 900µs | 3.14ms | 12.00ms \
             | 1.250s | 3      | 4.00    | 1.00    | 0.25      |"
        );
        assert_eq!(lines[0], lines[2]);
        assert_eq!(lines[0], lines[4]);
        assert_eq!(
            lines[5],
            "counter-incr errors: UNIMPLEMENTED x3, first: level one is not offered"
        );
        assert!(lines[6].contains("open loop at 2000/s"), "{}", lines[6]);
    }

    #[test]
    fn labelled_outcomes_are_noted_with_their_share_of_ops() {
        let mut txn = report();
        txn.workload = "etcd-txn".to_owned();
        txn.errors_by_code.clear();
        txn.target_rate_per_s = None;
        txn.outcomes.insert("compare-failed".to_owned(), 25);
        let table = render_table(&[txn]);
        assert_eq!(
            table.lines().nth(5),
            Some("etcd-txn outcomes: compare-failed x25 (2.5% of ops)")
        );
    }

    #[test]
    fn a_run_without_successes_shows_dashes_for_latency_and_tax() {
        let mut empty = report();
        empty.tax = None;
        empty.latency = LatencySummary::from_nanos(
            &Histogram::new_with_bounds(1, 1_000, 3).expect("valid bounds"),
        );
        assert_eq!(empty.latency.samples, 0);
        let table = render_table(&[empty]);
        let row = table.lines().nth(3).expect("a row");
        assert_eq!(row.matches("| -").count(), 8, "{row}");
    }

    #[test]
    fn summaries_convert_nanoseconds_to_microseconds() {
        let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("bounds");
        for micros in 1..=100u64 {
            histogram.record(micros * 1_000).expect("in range");
        }
        let summary = LatencySummary::from_nanos(&histogram);
        assert_eq!(summary.samples, 100);
        // hdrhistogram keeps 3 significant digits.
        assert!((summary.p50_us - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99_us - 99.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max_us - 100.0).abs() < 0.1, "{summary:?}");
        assert!((summary.mean_us - 50.5).abs() < 0.1, "{summary:?}");
    }
}
