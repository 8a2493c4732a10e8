//! `calm bench usl` end to end against a fake node whose throughput
//! follows a known Universal Scalability Law curve: each request takes
//! R(n) = (1 + σ(n−1) + κn(n−1)) / λ while n requests are in flight, so
//! by Little's law N closed-loop clients get X(N) = N / R(N), the USL.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use calm_bench::{
    Consistency, Format, KeyDist, Target, UslArgs, UslFit, WorkloadName, render_usl_table, run_usl,
    usl_sweep,
};
use calm_client::Level;
use calm_proto::calm::v1 as pb;
use indicatif::ProgressBar;
use pb::counter_server::{Counter, CounterServer};
use tonic::{Request, Response, Status};

/// The curve the fake serves: N* = √(0.9 / 0.01) ≈ 9.5 clients.
const TRUTH: UslFit = UslFit {
    lambda: 100.0,
    sigma: 0.1,
    kappa: 0.01,
};

/// A Counter service that is slower the more requests it has in flight.
#[derive(Default)]
struct UslCounter {
    in_flight: AtomicU64,
    served: AtomicU64,
}

impl UslCounter {
    async fn serve(&self) {
        let n = (self.in_flight.fetch_add(1, Ordering::SeqCst) + 1) as f64;
        let service_s =
            (1.0 + TRUTH.sigma * (n - 1.0) + TRUTH.kappa * n * (n - 1.0)) / TRUTH.lambda;
        tokio::time::sleep(Duration::from_secs_f64(service_s)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Counter for UslCounter {
    async fn increment(
        &self,
        _request: Request<pb::CounterIncrementRequest>,
    ) -> Result<Response<pb::CounterIncrementResponse>, Status> {
        self.serve().await;
        Ok(Response::new(pb::CounterIncrementResponse {
            header: header(),
        }))
    }

    async fn get(
        &self,
        _request: Request<pb::CounterGetRequest>,
    ) -> Result<Response<pb::CounterGetResponse>, Status> {
        self.serve().await;
        Ok(Response::new(pb::CounterGetResponse {
            header: header(),
            value: 0,
        }))
    }
}

fn header() -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        causal_token: Vec::new(),
        node_id: 1,
        level: pb::Level::Local.into(),
    })
}

/// Serves the fake on loopback from the current runtime; returns its
/// address. The server lives as long as the runtime.
async fn serve(counter: Arc<UslCounter>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string();
    let router = tonic::transport::Server::builder().add_service(CounterServer::from_arc(counter));
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    address
}

fn usl_args(clients: &[usize], duration: Duration) -> UslArgs {
    UslArgs {
        workload: WorkloadName::CounterGet,
        clients: clients.to_vec(),
        duration,
        warmup: Duration::from_millis(200),
        keys: 100,
        key_dist: KeyDist::Uniform,
        zipf_theta: 0.99,
        value_bytes: 64,
        seed: 1,
        consistency: Consistency::Linearizable,
        conns: None,
        nodes: Vec::new(),
        svg: None,
        sim: Default::default(),
    }
}

fn target(address: String) -> Target {
    Target {
        endpoints: vec![address],
        level: Level::Local,
        request_timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_runs_every_concurrency_and_recovers_the_servers_curve() {
    let counter = Arc::new(UslCounter::default());
    let target = target(serve(counter.clone()).await);
    let args = usl_args(&[1, 2, 4, 8, 16, 24], Duration::from_secs(1));
    let report = usl_sweep(&args, &target, |_| ProgressBar::hidden())
        .await
        .expect("the sweep runs");
    let clients: Vec<usize> = report
        .steps
        .iter()
        .map(|step| step.report.clients)
        .collect();
    assert_eq!(clients, [1, 2, 4, 8, 16, 24]);
    assert!(
        report
            .steps
            .iter()
            .all(|step| step.n == step.report.clients)
    );
    assert_eq!(report.n_is, "clients");
    assert!(
        report
            .steps
            .iter()
            .all(|step| step.report.ops > 0 && step.report.errors == 0)
    );
    // Every measured operation reached the server (the warmup's too).
    let measured: u64 = report.steps.iter().map(|step| step.report.ops).sum();
    assert!(counter.served.load(Ordering::SeqCst) >= measured);
    let fit = report.fit.expect("the points fit");
    // Shown with --nocapture, as an example of the table.
    println!("{}", render_usl_table(&report));
    // Wide margins: the sleeps round up to tokio's millisecond timer and
    // clients spend a little time between requests, so the server sees a
    // slightly lower n than N; the shape, not loopback's speed, is checked.
    let within = |got: f64, want: f64, relative: f64, what: &str| {
        assert!(
            (got - want).abs() <= relative * want,
            "{what}: got {got}, want {want}; {fit:?}\n{}",
            render_usl_table(&report)
        );
    };
    within(fit.lambda, TRUTH.lambda, 0.25, "λ");
    let peak = report.peak_n.expect("crosstalk makes a peak");
    within(peak, TRUTH.peak_n().expect("a peak"), 0.3, "N*");
    // Past the peak throughput falls, and the fit says so.
    assert!(fit.ops_per_s_at(24.0) < fit.ops_per_s_at(peak));
    let table = render_usl_table(&report);
    assert!(table.contains("N* = "), "{table}");
    assert!(
        table.contains("model: X(N) = λN / (1 + σ(N−1) + κN(N−1))"),
        "{table}"
    );
    assert_eq!(table.lines().filter(|line| line.contains(" | ")).count(), 7);
}

#[test]
fn the_command_prints_the_fit_and_writes_the_plot() {
    // The server runs on its own runtime; `run_usl` builds another, as
    // the binary does.
    let server = tokio::runtime::Runtime::new().expect("a runtime");
    let address = server.block_on(serve(Arc::new(UslCounter::default())));
    let svg = std::env::temp_dir().join(format!("calm-bench-usl-{}.svg", std::process::id()));
    let mut args = usl_args(&[1, 4, 8, 16], Duration::from_millis(500));
    args.svg = Some(svg.clone());
    let status = run_usl(args, target(address), Format::Json);
    assert_eq!(status, ExitCode::SUCCESS);
    let plot = std::fs::read_to_string(&svg).expect("the plot was written");
    let _ = std::fs::remove_file(&svg);
    assert_eq!(plot.matches("<path class=\"fit\"").count(), 1);
    assert_eq!(plot.matches("<circle class=\"measured\"").count(), 4);
    assert!(plot.contains("counter-get at local: USL fit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_too_few_concurrencies_reports_why_it_has_no_fit() {
    let target = target(serve(Arc::new(UslCounter::default())).await);
    let args = usl_args(&[2, 4], Duration::from_millis(200));
    let report = usl_sweep(&args, &target, |_| ProgressBar::hidden())
        .await
        .expect("the sweep runs");
    assert_eq!(report.steps.len(), 2);
    assert_eq!(report.fit, None);
    let error = report.fit_error.as_deref().expect("a reason");
    assert!(error.contains("from 3"), "{error}");
    assert!(render_usl_table(&report).contains("no fit: "));
    // A bad step is refused before anything runs.
    let refused = usl_sweep(
        &usl_args(&[1, 0, 4], Duration::from_millis(200)),
        &target,
        |_| ProgressBar::hidden(),
    )
    .await;
    assert!(matches!(
        refused,
        Err(calm_bench::BenchError::InvalidPlan(_))
    ));
}

/// A fake node of a K-node cluster: by Little's law, `NODE_CLIENTS`
/// clients get X(K) = λK / (1 + σ(K−1) + κK(K−1)) when each request takes
/// `NODE_CLIENTS` / X(K).
struct NodeCountCounter {
    nodes: f64,
}

const NODE_CLIENTS: usize = 4;

#[tonic::async_trait]
impl Counter for NodeCountCounter {
    async fn increment(
        &self,
        _request: Request<pb::CounterIncrementRequest>,
    ) -> Result<Response<pb::CounterIncrementResponse>, Status> {
        Err(Status::unimplemented("gets only"))
    }

    async fn get(
        &self,
        _request: Request<pb::CounterGetRequest>,
    ) -> Result<Response<pb::CounterGetResponse>, Status> {
        let service_s = NODE_CLIENTS as f64 / TRUTH.ops_per_s_at(self.nodes);
        tokio::time::sleep(Duration::from_secs_f64(service_s)).await;
        Ok(Response::new(pb::CounterGetResponse {
            header: header(),
            value: 0,
        }))
    }
}

async fn serve_nodes(nodes: u16) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let address = listener.local_addr().expect("an address").to_string();
    let counter = NodeCountCounter {
        nodes: f64::from(nodes),
    };
    let router = tonic::transport::Server::builder().add_service(CounterServer::new(counter));
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    address
}

/// A stand-in for `calm dev`, run by `sh`: it logs its start, prints the
/// endpoint of the fake for its `--nodes`, and logs its stop on SIGTERM.
fn fake_dev(dir: &std::path::Path, endpoints: &[(u16, String)]) -> Vec<std::ffi::OsString> {
    let log = dir.join("log");
    let cases: String = endpoints
        .iter()
        .map(|(nodes, address)| format!("  {nodes}) echo \"endpoints: {address}\" ;;\n"))
        .collect();
    let script = format!(
        "[ \"$1 $2\" = \"dev --nodes\" ] || exit 2\n\
         echo \"start $3\" >> {log}\n\
         trap 'echo \"stop $3\" >> {log}; exit 0' TERM\n\
         case $3 in\n{cases}  *) exit 3 ;;\nesac\n\
         while true; do sleep 0.05; done\n",
        log = log.display()
    );
    let path = dir.join("calm-dev.sh");
    std::fs::write(&path, script).expect("the script is written");
    vec!["sh".into(), path.into_os_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_count_mode_starts_one_cluster_per_count_and_fits_over_nodes() {
    let dir = std::env::temp_dir().join(format!("calm-bench-usl-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let counts = [1u16, 2, 4, 8, 16];
    let mut endpoints = Vec::new();
    for nodes in counts {
        endpoints.push((nodes, serve_nodes(nodes).await));
    }
    let calm = fake_dev(&dir, &endpoints);
    let mut args = usl_args(&[NODE_CLIENTS], Duration::from_millis(600));
    args.nodes = counts.to_vec();
    // The global endpoints are not used in this mode.
    let unused = target("127.0.0.1:1".to_owned());
    let report = calm_bench::usl_node_sweep(&args, &calm, &unused, |_| ProgressBar::hidden())
        .await
        .expect("the sweep runs");
    let log = std::fs::read_to_string(dir.join("log")).expect("the fake logged");
    let _ = std::fs::remove_dir_all(&dir);
    // Each cluster was stopped before the next started.
    let expected: String = counts
        .iter()
        .map(|nodes| format!("start {nodes}\nstop {nodes}\n"))
        .collect();
    assert_eq!(log, expected);
    assert_eq!(report.n_is, "nodes");
    let ns: Vec<usize> = report.steps.iter().map(|step| step.n).collect();
    assert_eq!(ns, [1, 2, 4, 8, 16]);
    assert!(report.steps.iter().all(|step| {
        step.report.clients == NODE_CLIENTS && step.report.errors == 0 && step.report.ops > 0
    }));
    let fit = report.fit.expect("the points fit");
    assert!(
        (fit.lambda - TRUTH.lambda).abs() <= 0.25 * TRUTH.lambda,
        "{fit:?}\n{}",
        render_usl_table(&report)
    );
    assert!(render_usl_table(&report).contains("N* = "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_never_forms_is_a_setup_error() {
    let dir = std::env::temp_dir().join(format!("calm-bench-usl-noform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    // No endpoint for 3 nodes: the fake exits without printing one.
    let calm = fake_dev(&dir, &[]);
    let mut args = usl_args(&[2], Duration::from_millis(100));
    args.nodes = vec![3];
    let outcome =
        calm_bench::usl_node_sweep(&args, &calm, &target("127.0.0.1:1".to_owned()), |_| {
            ProgressBar::hidden()
        })
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Err(calm_bench::BenchError::Setup(message)) => {
            assert!(
                message.contains("--nodes 3") && message.contains("exited"),
                "{message}"
            )
        }
        other => panic!("expected a setup error, got {other:?}"),
    }
    // With --nodes, --clients must name one concurrency.
    let mut two = usl_args(&[1, 2], Duration::from_millis(100));
    two.nodes = vec![1, 2, 3];
    let refused = calm_bench::usl_node_sweep(&two, &calm, &target("x:1".to_owned()), |_| {
        ProgressBar::hidden()
    })
    .await;
    assert!(matches!(
        refused,
        Err(calm_bench::BenchError::InvalidPlan(_))
    ));
}
