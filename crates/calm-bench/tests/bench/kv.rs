//! The `kv-put` and `kv-get` workloads end to end against a fake node
//! serving the generated `Kv` service in-process: it records the level,
//! key and context of every request, and answers each put with a context
//! naming the key's new version, so a test can tell which context the
//! bench sent back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_bench::{BenchArgs, Consistency, KeyDist, Report, Target, WorkloadName, bench};
use calm_client::Level;
use calm_proto::calm::v1 as pb;
use indicatif::ProgressBar;
use pb::kv_server::{Kv, KvServer};
use tonic::{Request, Response, Status};

/// One request as the fake received it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Received {
    level: i32,
    /// The context a put carried; empty for a blind put or a get.
    context: Vec<u8>,
    /// The value's length; `None` for a get.
    value_bytes: Option<usize>,
}

/// The fake's state. A std mutex, not a tokio one: nothing awaits while
/// it is held.
#[derive(Default)]
struct FakeKv {
    /// Each key's requests, in arrival order.
    received: Mutex<BTreeMap<Vec<u8>, Vec<Received>>>,
    /// Each key's version: the number of puts it took.
    versions: Mutex<BTreeMap<Vec<u8>, u64>>,
}

impl FakeKv {
    fn record(&self, key: &[u8], received: Received) {
        let mut all = self.received.lock().expect("no test thread panics");
        all.entry(key.to_vec()).or_default().push(received);
    }

    fn header() -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            causal_token: Vec::new(),
            node_id: 1,
            level: pb::Level::Quorum.into(),
        })
    }

    fn received(&self) -> BTreeMap<Vec<u8>, Vec<Received>> {
        self.received.lock().expect("no test thread panics").clone()
    }
}

#[tonic::async_trait]
impl Kv for FakeKv {
    async fn put(
        &self,
        request: Request<pb::KvPutRequest>,
    ) -> Result<Response<pb::KvPutResponse>, Status> {
        let request = request.into_inner();
        self.record(
            &request.key,
            Received {
                level: request.level,
                context: request.context,
                value_bytes: Some(request.value.len()),
            },
        );
        let mut versions = self.versions.lock().expect("no test thread panics");
        let version = versions.entry(request.key).or_default();
        *version += 1;
        Ok(Response::new(pb::KvPutResponse {
            header: FakeKv::header(),
            siblings: vec![pb::KvSibling {
                value: request.value,
                tombstone: false,
            }],
            context: version.to_be_bytes().to_vec(),
            acks: 2,
            hinted_acks: 0,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::KvGetRequest>,
    ) -> Result<Response<pb::KvGetResponse>, Status> {
        let request = request.into_inner();
        self.record(
            &request.key,
            Received {
                level: request.level,
                context: Vec::new(),
                value_bytes: None,
            },
        );
        Ok(Response::new(pb::KvGetResponse {
            header: FakeKv::header(),
            siblings: Vec::new(),
            context: Vec::new(),
            replies: 2,
        }))
    }

    async fn delete(
        &self,
        _request: Request<pb::KvDeleteRequest>,
    ) -> Result<Response<pb::KvDeleteResponse>, Status> {
        Err(Status::unimplemented("the bench never deletes"))
    }
}

/// Serves `fake` on an ephemeral loopback port until the sender drops.
async fn serve(fake: Arc<FakeKv>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder().add_service(KvServer::from_arc(fake));
    tokio::spawn(router.serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    ));
    (address, stop)
}

/// A closed-loop run of `ops` operations by one client over 10 keys, so
/// each key's requests arrive one after another.
async fn run(workload: WorkloadName, level: Level, fake: &Arc<FakeKv>, ops: u64) -> Report {
    let (address, _stop) = serve(Arc::clone(fake)).await;
    let args = BenchArgs {
        workload,
        clients: 1,
        rate: None,
        duration: Duration::from_secs(30),
        ops: Some(ops),
        warmup: Duration::ZERO,
        keys: 10,
        key_dist: KeyDist::Uniform,
        zipf_theta: 0.99,
        value_bytes: 48,
        seed: 7,
        consistency: Consistency::Linearizable,
        conns: None,
    };
    let target = Target {
        endpoints: vec![address],
        level,
        request_timeout: Duration::from_secs(5),
    };
    bench(&args, &target, &ProgressBar::hidden())
        .await
        .expect("the bench runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_put_sends_each_keys_last_context_back_at_the_level_asked() {
    let fake = Arc::new(FakeKv::default());
    let report = run(WorkloadName::KvPut, Level::All, &fake, 100).await;
    assert_eq!((report.ops, report.errors), (100, 0));
    assert_eq!(
        (report.workload.as_str(), report.level.as_str()),
        ("kv-put", "all")
    );
    let received = fake.received();
    assert!(received.keys().all(|key| key.starts_with(b"bench/kv/")));
    for (key, requests) in &received {
        // The first put of a key is blind; each later one carries the
        // context the previous put's reply returned (version i).
        let contexts: Vec<Vec<u8>> = requests.iter().map(|r| r.context.clone()).collect();
        let expected: Vec<Vec<u8>> = (0..requests.len() as u64)
            .map(|i| match i {
                0 => Vec::new(),
                i => i.to_be_bytes().to_vec(),
            })
            .collect();
        assert_eq!(contexts, expected, "{}", String::from_utf8_lossy(key));
        assert!(requests.iter().all(|r| r.level == pb::Level::All as i32));
        assert!(requests.iter().all(|r| r.value_bytes == Some(48)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_get_only_reads_and_the_default_level_is_reported_as_quorum() {
    let fake = Arc::new(FakeKv::default());
    let report = run(WorkloadName::KvGet, Level::Local, &fake, 50).await;
    assert_eq!((report.ops, report.errors), (50, 0));
    // `local` is no Kv level: a server serves it as `quorum`, so the bench
    // asks for `quorum` and reports it.
    assert_eq!(report.level, "quorum");
    let requests: Vec<Received> = fake.received().into_values().flatten().collect();
    assert_eq!(requests.len(), 50);
    assert!(requests.iter().all(|r| r.value_bytes.is_none()));
    assert!(requests.iter().all(|r| r.level == pb::Level::Quorum as i32));
}
