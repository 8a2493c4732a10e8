//! `calm bench` end to end against fake calm nodes served in-process on
//! loopback: each fake serves the generated `Counter` service over a map
//! of counters, answers `UNIMPLEMENTED` for every level but `local` (as
//! calm's servers do today), counts the requests it served and can stall
//! one request. The `etcd-*` workloads run against a fake etcd cluster in
//! `bench/etcd.rs`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_bench::{
    BenchArgs, Consistency, KeyDist, Report, Target, WorkloadName, bench, render_json,
};
use calm_client::Level;
use calm_proto::calm::v1 as pb;
use indicatif::ProgressBar;
use pb::counter_server::{Counter, CounterServer};
use tonic::{Request, Response, Status};

// The etcd workloads' tests, in this one test binary.
#[path = "bench/etcd.rs"]
mod etcd;
// The `kv-*` workloads' tests, against a fake `Kv` service.
#[path = "bench/kv.rs"]
mod kv;
// `calm bench usl` against a server that scales as a known USL curve.
#[path = "bench/usl.rs"]
mod usl;

/// A fake node's Counter service. A std mutex, not a tokio one: nothing
/// awaits while it is held.
#[derive(Default)]
struct FakeCounter {
    node_id: u64,
    counters: Mutex<HashMap<Vec<u8>, i64>>,
    /// Requests served at `local`.
    served: AtomicU64,
    /// Request number (from 1) that stalls for `stall`; 0 for none.
    stall_at: u64,
    stall: Duration,
    received: AtomicU64,
}

impl FakeCounter {
    /// Counts the request, stalls if it is the chosen one, and refuses
    /// levels other than `local` (or unspecified, which means local).
    async fn enter(&self, level: i32) -> Result<(), Status> {
        let number = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if number == self.stall_at {
            tokio::time::sleep(self.stall).await;
        }
        let local = [pb::Level::Unspecified as i32, pb::Level::Local as i32];
        if !local.contains(&level) {
            return Err(Status::unimplemented(format!(
                "level {level} is not offered yet"
            )));
        }
        self.served.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            causal_token: Vec::new(),
            node_id: self.node_id,
            level: pb::Level::Local.into(),
        })
    }

    fn total(&self) -> i64 {
        self.counters
            .lock()
            .expect("no test thread panics")
            .values()
            .sum()
    }

    fn keys(&self) -> BTreeSet<Vec<u8>> {
        self.counters
            .lock()
            .expect("no test thread panics")
            .keys()
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl Counter for FakeCounter {
    async fn increment(
        &self,
        request: Request<pb::CounterIncrementRequest>,
    ) -> Result<Response<pb::CounterIncrementResponse>, Status> {
        let request = request.into_inner();
        self.enter(request.level).await?;
        *self
            .counters
            .lock()
            .expect("no test thread panics")
            .entry(request.key)
            .or_default() += request.by;
        Ok(Response::new(pb::CounterIncrementResponse {
            header: self.header(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::CounterGetRequest>,
    ) -> Result<Response<pb::CounterGetResponse>, Status> {
        let request = request.into_inner();
        self.enter(request.level).await?;
        let value = self
            .counters
            .lock()
            .expect("no test thread panics")
            .get(&request.key)
            .copied()
            .unwrap_or(0);
        Ok(Response::new(pb::CounterGetResponse {
            header: self.header(),
            value,
        }))
    }
}

/// A fake node serving on an ephemeral loopback port until dropped.
struct Served {
    address: String,
    counter: Arc<FakeCounter>,
    // Dropping the sender ends the server.
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(counter: FakeCounter) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string();
    let counter = Arc::new(counter);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router =
        tonic::transport::Server::builder().add_service(CounterServer::from_arc(counter.clone()));
    tokio::spawn(router.serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Served {
        address,
        counter,
        _stop: stop,
    }
}

async fn serve_nodes(count: u64) -> Vec<Served> {
    let mut nodes = Vec::new();
    for node_id in 1..=count {
        nodes.push(
            serve(FakeCounter {
                node_id,
                ..FakeCounter::default()
            })
            .await,
        );
    }
    nodes
}

/// A closed-loop run of `ops` measured operations, no warmup.
fn args(workload: WorkloadName, clients: usize, ops: u64) -> BenchArgs {
    BenchArgs {
        workload,
        clients,
        rate: None,
        duration: Duration::from_secs(30),
        ops: Some(ops),
        warmup: Duration::ZERO,
        keys: 50,
        key_dist: KeyDist::Uniform,
        zipf_theta: 0.99,
        value_bytes: 64,
        seed: 1,
        consistency: Consistency::Linearizable,
        conns: None,
    }
}

fn target(nodes: &[Served], level: Level) -> Target {
    Target {
        endpoints: nodes.iter().map(|node| node.address.clone()).collect(),
        level,
        request_timeout: Duration::from_secs(5),
    }
}

async fn run(args: &BenchArgs, target: &Target) -> Report {
    bench(args, target, &ProgressBar::hidden())
        .await
        .expect("the bench runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_incr_sends_exactly_the_budget_spread_over_every_endpoint() {
    let nodes = serve_nodes(3).await;
    let report = run(
        &args(WorkloadName::CounterIncr, 6, 600),
        &target(&nodes, Level::Local),
    )
    .await;
    assert_eq!(report.ops, 600);
    assert_eq!(report.errors, 0);
    assert_eq!(report.latency.samples, 600);
    // Every increment landed once, and every node took some: client i
    // talks to endpoint i % 3.
    let totals: Vec<i64> = nodes.iter().map(|node| node.counter.total()).collect();
    assert_eq!(totals.iter().sum::<i64>(), 600, "{totals:?}");
    assert!(totals.iter().all(|&total| total > 0), "{totals:?}");
    // Keys are the bench's own, from the 50 asked for.
    let keys: BTreeSet<Vec<u8>> = nodes.iter().flat_map(|node| node.counter.keys()).collect();
    assert!(keys.len() <= 50 && keys.len() > 40, "{} keys", keys.len());
    assert!(keys.iter().all(|key| key.starts_with(b"bench/counter/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_get_reads_without_writing() {
    let nodes = serve_nodes(2).await;
    let report = run(
        &args(WorkloadName::CounterGet, 4, 200),
        &target(&nodes, Level::Local),
    )
    .await;
    assert_eq!(report.ops, 200);
    assert_eq!(report.workload, "counter-get");
    let served: u64 = nodes
        .iter()
        .map(|node| node.counter.served.load(Ordering::SeqCst))
        .sum();
    assert_eq!(served, 200);
    assert!(nodes.iter().all(|node| node.counter.total() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unoffered_level_is_reported_as_errors_by_code() {
    let nodes = serve_nodes(1).await;
    let report = run(
        &args(WorkloadName::CounterIncr, 3, 90),
        &target(&nodes, Level::Quorum),
    )
    .await;
    assert_eq!(report.level, "quorum");
    assert_eq!(report.ops, 0);
    assert_eq!(report.errors, 90);
    let unimplemented = &report.errors_by_code["UNIMPLEMENTED"];
    assert_eq!(unimplemented.count, 90);
    assert!(
        unimplemented.first_message.contains("not offered"),
        "{}",
        unimplemented.first_message
    );
    assert_eq!(report.errors_by_code.len(), 1);
    // Nothing succeeded, so nothing was timed.
    assert_eq!(report.latency.samples, 0);
    assert!(calm_bench::render_table(&[report]).contains("UNIMPLEMENTED x90"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loops_latency_includes_a_stall_for_the_requests_queued_behind_it() {
    // Request 11 of 100 (due at 100 ms, at 100/s) stalls 400 ms; the 40
    // requests due meanwhile leave late, and count from when they were due.
    let node = serve(FakeCounter {
        node_id: 1,
        stall_at: 11,
        stall: Duration::from_millis(400),
        ..FakeCounter::default()
    })
    .await;
    let mut open = args(WorkloadName::CounterIncr, 1, 100);
    open.rate = Some(100.0);
    let report = run(&open, &target(std::slice::from_ref(&node), Level::Local)).await;
    assert_eq!(report.mode, "open");
    assert_eq!(report.ops, 100);
    // Wide margins: the shapes differ by two orders of magnitude, and
    // only that is asserted, not how fast loopback is.
    assert!(report.latency.max_us >= 400_000.0, "{:?}", report.latency);
    assert!(report.latency.p99_us >= 300_000.0, "{:?}", report.latency);
    assert!(report.latency.p90_us >= 100_000.0, "{:?}", report.latency);
    let service = report
        .service_time
        .expect("an open loop reports service time");
    assert!(service.max_us >= 400_000.0, "{service:?}");
    assert!(service.p90_us < 100_000.0, "{service:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_has_every_field() {
    let nodes = serve_nodes(1).await;
    let mut zipf = args(WorkloadName::CounterIncr, 2, 20);
    zipf.key_dist = KeyDist::Zipf;
    let report = run(&zipf, &target(&nodes, Level::Local)).await;
    let json: serde_json::Value =
        serde_json::from_str(&render_json(&report)).expect("the report is JSON");
    let fields: BTreeSet<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected = BTreeSet::from([
        "workload",
        "level",
        "mode",
        "clients",
        "target_rate_per_s",
        "endpoints",
        "conns",
        "keys",
        "key_dist",
        "zipf_theta",
        "value_bytes",
        "warmup_s",
        "ops_budget",
        "elapsed_s",
        "ops",
        "ops_per_s",
        "latency",
        "service_time",
        "errors",
        "errors_by_code",
        "outcomes",
        "tax",
    ]);
    assert_eq!(fields, expected);
    let latency: BTreeSet<&str> = json["latency"]
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        latency,
        BTreeSet::from([
            "samples", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"
        ])
    );
    assert_eq!(json["workload"], "counter-incr");
    assert_eq!(json["level"], "local");
    assert_eq!(json["mode"], "closed");
    assert_eq!(json["key_dist"], "zipf");
    assert_eq!(json["zipf_theta"], 0.99);
    assert_eq!(json["ops"], 20);
    assert_eq!(json["ops_budget"], 20);
    assert_eq!(json["latency"]["samples"], 20);
    assert!(
        json["service_time"].is_null(),
        "closed loop: no service time"
    );
    assert!(json["target_rate_per_s"].is_null());
    assert_eq!(json["errors_by_code"], serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_counted_not_fatal() {
    // A port bound, then released: nothing listens there.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback is available");
        listener.local_addr().expect("an address").to_string()
    };
    let target = Target {
        endpoints: vec![closed],
        level: Level::Local,
        request_timeout: Duration::from_secs(2),
    };
    let report = run(&args(WorkloadName::CounterGet, 2, 10), &target).await;
    assert_eq!(report.ops, 0);
    assert_eq!(report.errors, 10);
    assert_eq!(report.errors_by_code["UNAVAILABLE"].count, 10);
}
