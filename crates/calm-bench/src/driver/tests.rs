//! The drivers against in-process workloads under tokio's paused clock:
//! every sleep takes exactly its virtual time, so counts and latencies are
//! exact.

use std::sync::atomic::{AtomicU64, Ordering};

use calm_client::Code;

use super::*;

/// A workload whose call `n` (from 1) takes `service(n)`, fails as
/// `fail(n)` says and otherwise answers `done(n)`; it counts its calls and
/// remembers the largest key.
struct Scripted {
    calls: AtomicU64,
    key_max: AtomicU64,
    service: fn(u64) -> Duration,
    fail: fn(u64) -> Option<Code>,
    done: fn(u64) -> Done,
}

impl Scripted {
    fn new(service: fn(u64) -> Duration, fail: fn(u64) -> Option<Code>) -> Arc<Scripted> {
        Arc::new(Scripted {
            calls: AtomicU64::new(0),
            key_max: AtomicU64::new(0),
            service,
            fail,
            done: |_| Done::default(),
        })
    }

    fn answering(service: fn(u64) -> Duration, done: fn(u64) -> Done) -> Arc<Scripted> {
        Arc::new(Scripted {
            calls: AtomicU64::new(0),
            key_max: AtomicU64::new(0),
            service,
            fail: never,
            done,
        })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Workload for Scripted {
    async fn operate(&self, _client: usize, key: u64) -> Result<Done, OpError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        self.key_max.fetch_max(key, Ordering::Relaxed);
        tokio::time::sleep((self.service)(call)).await;
        match (self.fail)(call) {
            None => Ok((self.done)(call)),
            Some(code) => Err(OpError {
                code,
                message: format!("call {call}"),
            }),
        }
    }
}

fn one_ms(_call: u64) -> Duration {
    Duration::from_millis(1)
}

fn never(_call: u64) -> Option<Code> {
    None
}

fn plan(clients: usize, load: Load, warmup_ms: u64, stop: Stop) -> Plan {
    Plan {
        clients,
        load,
        warmup: Duration::from_millis(warmup_ms),
        stop,
        keys: KeyDistribution::uniform(100).expect("valid"),
        seed: 9,
    }
}

async fn run(workload: &Arc<Scripted>, plan: &Plan) -> Measurement {
    drive(workload.clone(), plan, &ProgressBar::hidden())
        .await
        .expect("a valid plan")
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e6
}

/// Checks a percentile to the histogram's 3 significant digits.
#[track_caller]
fn assert_ms(histogram: &Histogram<u64>, quantile: f64, expected_ms: f64) {
    let got = ms(histogram, quantile);
    assert!(
        (got / expected_ms - 1.0).abs() < 1e-3,
        "quantile {quantile}: {got} ms, expected {expected_ms} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_loop_measures_exactly_the_ops_budget() {
    for clients in [1, 7, 64] {
        let workload = Scripted::new(one_ms, never);
        let measurement = run(&workload, &plan(clients, Load::Closed, 0, Stop::Ops(1_000))).await;
        assert_eq!(measurement.ops, 1_000, "{clients} clients");
        assert_eq!(workload.calls(), 1_000, "no call beyond the budget");
        assert_eq!(measurement.latency.len(), 1_000);
    }
}

#[tokio::test(start_paused = true)]
async fn warmup_operations_are_sent_but_not_recorded() {
    let workload = Scripted::new(one_ms, never);
    let measurement = run(&workload, &plan(1, Load::Closed, 100, Stop::Ops(50))).await;
    assert_eq!(measurement.ops, 50);
    // One client, 1 ms per call: 100 calls fill the 100 ms warmup.
    assert_eq!(workload.calls(), 150);
    // The window starts at the end of the warmup.
    assert_eq!(measurement.elapsed, Duration::from_millis(50));

    let workload = Scripted::new(one_ms, never);
    let timed = plan(
        1,
        Load::Closed,
        100,
        Stop::After(Duration::from_millis(200)),
    );
    let measurement = run(&workload, &timed).await;
    assert_eq!(measurement.ops, 200);
    assert_eq!(workload.calls(), 300);
}

#[tokio::test(start_paused = true)]
async fn an_open_loop_sends_at_the_target_rate() {
    let workload = Scripted::new(one_ms, never);
    let open = Load::Open {
        rate_per_s: 1_000.0,
    };
    let measurement = run(
        &workload,
        &plan(4, open, 0, Stop::After(Duration::from_secs(1))),
    )
    .await;
    // Requests due at 0, 1, ..., 999 ms; none is late, so none waits.
    assert_eq!(measurement.ops, 1_000);
    assert_eq!(measurement.elapsed, Duration::from_millis(1_000));
    assert_ms(&measurement.latency, 1.0, 1.0);
    assert_ms(&measurement.service_time, 1.0, 1.0);
}

/// Call 11 (due at 100 ms at 100/s) stalls for half a second; every
/// other call takes 1 ms.
fn stall_at_call_11(call: u64) -> Duration {
    if call == 11 {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(1)
    }
}

#[tokio::test(start_paused = true)]
async fn the_open_loop_counts_a_stall_in_every_request_queued_behind_it() {
    // wrk2's correction: latency runs from the intended send time.
    let workload = Scripted::new(stall_at_call_11, never);
    let open = Load::Open { rate_per_s: 100.0 };
    let two_seconds = Stop::After(Duration::from_secs(2));
    let measurement = run(&workload, &plan(1, open, 0, two_seconds)).await;
    assert_eq!(measurement.ops, 200);
    // The stalled call, sent on time, waited 500 ms; the 49 calls due
    // during the stall left when it ended, each late by what remained of
    // it, so the client caught up only some 55 calls later: over a
    // quarter of all calls took more than 10 ms.
    assert_ms(&measurement.latency, 1.0, 500.0);
    assert!(ms(&measurement.latency, 0.99) > 450.0);
    assert!(ms(&measurement.latency, 0.75) > 10.0);
    assert_ms(&measurement.latency, 0.5, 1.0);
    // The service time alone shows one slow call among 200.
    assert_ms(&measurement.service_time, 0.99, 1.0);
    assert_ms(&measurement.service_time, 1.0, 500.0);
}

#[tokio::test(start_paused = true)]
async fn a_closed_loop_hides_the_stall_that_the_open_loop_reports() {
    // Coordinated omission: during the stall the closed-loop client sends
    // nothing, so the stall is one sample among many.
    let workload = Scripted::new(stall_at_call_11, never);
    let measurement = run(&workload, &plan(1, Load::Closed, 0, Stop::Ops(200))).await;
    assert_ms(&measurement.latency, 0.99, 1.0);
    assert_ms(&measurement.latency, 1.0, 500.0);
}

/// Every third call is refused as unimplemented, every other fifth times
/// out.
fn every_third_and_fifth(call: u64) -> Option<Code> {
    if call.is_multiple_of(3) {
        Some(Code::Unimplemented)
    } else if call.is_multiple_of(5) {
        Some(Code::DeadlineExceeded)
    } else {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn failed_operations_are_counted_by_code_and_not_timed() {
    let workload = Scripted::new(one_ms, every_third_and_fifth);
    let measurement = run(&workload, &plan(1, Load::Closed, 0, Stop::Ops(300))).await;
    let unimplemented = &measurement.errors["UNIMPLEMENTED"];
    let deadline = &measurement.errors["DEADLINE_EXCEEDED"];
    assert_eq!(unimplemented.count, 100);
    assert_eq!(unimplemented.first_message, "call 3");
    // Multiples of 5 that are not multiples of 3: 60 - 20.
    assert_eq!(deadline.count, 40);
    assert_eq!(deadline.first_message, "call 5");
    assert_eq!(measurement.errors.len(), 2);
    assert_eq!(measurement.ops, 160);
    assert_eq!(measurement.latency.len(), 160);
}

#[tokio::test(start_paused = true)]
async fn keys_come_from_the_plans_distribution() {
    let workload = Scripted::new(one_ms, never);
    let mut zipf = plan(8, Load::Closed, 0, Stop::Ops(2_000));
    zipf.keys = KeyDistribution::zipf(5, 0.99).expect("valid");
    run(&workload, &zipf).await;
    assert_eq!(workload.key_max.load(Ordering::Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_plan_sends_nothing() {
    let workload = Scripted::new(one_ms, never);
    let zero_clients = plan(0, Load::Closed, 0, Stop::Ops(10));
    let outcome = drive(workload.clone(), &zero_clients, &ProgressBar::hidden()).await;
    assert!(matches!(outcome, Err(BenchError::InvalidPlan(_))));
    assert_eq!(workload.calls(), 0);
}

/// Every fourth call's compare failed; every call reports a latency of
/// its call number in microseconds.
fn own_latency_and_every_fourth_labelled(call: u64) -> Done {
    Done {
        latency: Some(Duration::from_micros(call * 100)),
        outcome: call.is_multiple_of(4).then_some(("compare-failed", 1)),
    }
}

#[tokio::test(start_paused = true)]
async fn a_workloads_own_latency_replaces_the_round_trip_and_labels_are_counted() {
    let workload = Scripted::answering(one_ms, own_latency_and_every_fourth_labelled);
    let measurement = run(&workload, &plan(1, Load::Closed, 0, Stop::Ops(100))).await;
    assert_eq!(measurement.ops, 100);
    // Calls take 1 ms each, but report 0.1 ms to 10 ms.
    assert_ms(&measurement.latency, 0.5, 5.0);
    assert_ms(&measurement.latency, 1.0, 10.0);
    assert_ms(&measurement.service_time, 1.0, 10.0);
    assert_eq!(measurement.outcomes.get("compare-failed"), Some(&25));
    assert_eq!(measurement.outcomes.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn labels_of_warmup_operations_are_not_counted() {
    let workload = Scripted::answering(one_ms, own_latency_and_every_fourth_labelled);
    // 40 warmup calls (1 ms each in 40 ms), then 40 measured: calls 41..=80.
    let measurement = run(&workload, &plan(1, Load::Closed, 40, Stop::Ops(40))).await;
    assert_eq!(workload.calls(), 80);
    assert_eq!(measurement.outcomes.get("compare-failed"), Some(&10));
    // The latencies of calls 41 to 80.
    assert_ms(&measurement.latency, 0.5, 6.0);
    assert_ms(&measurement.latency, 1.0, 8.0);
}
