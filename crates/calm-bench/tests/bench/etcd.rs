//! The `etcd-*` workloads end to end against a fake etcd cluster served
//! in-process: several loopback endpoints share one store, as members of
//! one cluster share its data. The store keeps etcd's revision rules for
//! the requests the bench sends (put, single-key range, a mod-revision
//! compare), fans puts out to watchers, grants and renews leases, and
//! counts what each endpoint served; it can interfere (bump a key before
//! a txn compares it) and delay one endpoint's watch events.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_bench::{
    BenchArgs, BenchError, COMPARE_FAILED, Consistency, KeyDist, LEASE_TTL_S, Report, Target,
    WorkloadName, bench,
};
use calm_client::Level;
use calm_proto::etcd::etcdserverpb as pb;
use calm_proto::etcd::mvccpb::{Event, KeyValue};
use indicatif::ProgressBar;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_server::{Kv, KvServer};
use pb::lease_server::{Lease, LeaseServer};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpAnswer;
use pb::watch_request::RequestUnion;
use pb::watch_server::{Watch, WatchServer};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Answer<T> = Result<Response<T>, Status>;
type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The data every endpoint of the fake cluster shares. A std mutex, not a
/// tokio one: nothing awaits while it is held.
#[derive(Default)]
struct Data {
    revision: i64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    leases: HashMap<i64, i64>,
    next_lease: i64,
    granted_ttls: Vec<i64>,
    txns: u64,
}

impl Data {
    /// etcd's put: a new revision; the key's version and create revision
    /// follow it.
    fn put(&mut self, key: &[u8], value: &[u8]) -> KeyValue {
        self.revision += 1;
        let previous = self.kvs.get(key);
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: previous.map_or(self.revision, |kv| kv.create_revision),
            mod_revision: self.revision,
            version: previous.map_or(1, |kv| kv.version + 1),
            lease: 0,
        };
        self.kvs.insert(key.to_vec(), kv.clone());
        kv
    }

    fn range(&self, request: &pb::RangeRequest) -> pb::RangeResponse {
        let kvs: Vec<KeyValue> = if request.range_end.is_empty() {
            self.kvs.get(&request.key).cloned().into_iter().collect()
        } else {
            self.kvs
                .range(request.key.clone()..request.range_end.clone())
                .map(|(_, kv)| kv.clone())
                .take(if request.limit > 0 {
                    request.limit as usize
                } else {
                    usize::MAX
                })
                .collect()
        };
        pb::RangeResponse {
            header: None,
            count: kvs.len() as i64,
            kvs,
            more: false,
        }
    }
}

/// The fake cluster: shared data, watch fan-out and per-endpoint counts.
struct Cluster {
    data: Mutex<Data>,
    events: broadcast::Sender<Vec<Event>>,
    /// Every `bump_every`-th txn (0: never) finds its key changed by
    /// another writer just before its compare.
    bump_every: u64,
}

impl Cluster {
    fn new(bump_every: u64) -> Arc<Cluster> {
        Arc::new(Cluster {
            data: Mutex::new(Data::default()),
            events: broadcast::channel(4096).0,
            bump_every,
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("no test thread panics")
    }

    fn header(revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision,
            ..pb::ResponseHeader::default()
        })
    }
}

/// What one endpoint served.
#[derive(Default)]
struct Served {
    puts: AtomicU64,
    ranges: AtomicU64,
    serializable_ranges: AtomicU64,
    txns: AtomicU64,
    grants: AtomicU64,
    keep_alives: AtomicU64,
    revokes: AtomicU64,
}

/// One endpoint of the fake cluster.
struct Member {
    cluster: Arc<Cluster>,
    served: Arc<Served>,
    /// Holds this endpoint's watch events back this long.
    watch_delay: Duration,
}

#[tonic::async_trait]
impl Kv for Member {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Answer<pb::RangeResponse> {
        let request = request.into_inner();
        self.served.ranges.fetch_add(1, Ordering::SeqCst);
        if request.serializable {
            self.served
                .serializable_ranges
                .fetch_add(1, Ordering::SeqCst);
        }
        let data = self.cluster.data();
        let mut answer = data.range(&request);
        answer.header = Cluster::header(data.revision);
        Ok(Response::new(answer))
    }

    type RangeStreamStream = Boxed<pb::RangeStreamResponse>;

    async fn range_stream(
        &self,
        _request: Request<pb::RangeRequest>,
    ) -> Answer<Self::RangeStreamStream> {
        Err(Status::unimplemented("range_stream"))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Answer<pb::PutResponse> {
        let request = request.into_inner();
        self.served.puts.fetch_add(1, Ordering::SeqCst);
        let (kv, revision) = {
            let mut data = self.cluster.data();
            let kv = data.put(&request.key, &request.value);
            (kv, data.revision)
        };
        let _ = self.cluster.events.send(vec![Event {
            r#type: 0,
            kv: Some(kv),
            prev_kv: None,
        }]);
        Ok(Response::new(pb::PutResponse {
            header: Cluster::header(revision),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        _request: Request<pb::DeleteRangeRequest>,
    ) -> Answer<pb::DeleteRangeResponse> {
        Err(Status::unimplemented("delete_range"))
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Answer<pb::TxnResponse> {
        let request = request.into_inner();
        self.served.txns.fetch_add(1, Ordering::SeqCst);
        let mut data = self.cluster.data();
        data.txns += 1;
        let [compare] = request.compare.as_slice() else {
            return Err(Status::unimplemented("one compare only"));
        };
        if self.cluster.bump_every > 0 && data.txns.is_multiple_of(self.cluster.bump_every) {
            data.put(&compare.key, b"interloper");
        }
        let expected = match (compare.result(), compare.target(), &compare.target_union) {
            (CompareResult::Equal, CompareTarget::Mod, Some(TargetUnion::ModRevision(r))) => *r,
            _ => return Err(Status::unimplemented("mod-revision equality only")),
        };
        let actual = data.kvs.get(&compare.key).map_or(0, |kv| kv.mod_revision);
        let succeeded = actual == expected;
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut responses = Vec::new();
        for op in ops {
            let response = match &op.request {
                Some(Op::RequestPut(put)) => {
                    data.put(&put.key, &put.value);
                    OpAnswer::ResponsePut(pb::PutResponse::default())
                }
                Some(Op::RequestRange(range)) => OpAnswer::ResponseRange(data.range(range)),
                _ => return Err(Status::unimplemented("puts and ranges only")),
            };
            responses.push(pb::ResponseOp {
                response: Some(response),
            });
        }
        Ok(Response::new(pb::TxnResponse {
            header: Cluster::header(data.revision),
            succeeded,
            responses,
        }))
    }

    async fn compact(
        &self,
        _request: Request<pb::CompactionRequest>,
    ) -> Answer<pb::CompactionResponse> {
        Err(Status::unimplemented("compact"))
    }
}

#[tonic::async_trait]
impl Watch for Member {
    type WatchStream = Boxed<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Answer<Self::WatchStream> {
        let mut requests = request.into_inner();
        let (answers, stream) = mpsc::channel(1024);
        let mut events = self.cluster.events.subscribe();
        let delay = self.watch_delay;
        tokio::spawn(async move {
            let Ok(Some(first)) = requests.message().await else {
                return;
            };
            let Some(RequestUnion::CreateRequest(create)) = first.request_union else {
                return;
            };
            let created = pb::WatchResponse {
                watch_id: 1,
                created: true,
                ..pb::WatchResponse::default()
            };
            if answers.send(Ok(created)).await.is_err() {
                return;
            }
            while let Ok(batch) = events.recv().await {
                let watched: Vec<Event> = batch
                    .into_iter()
                    .filter(|event| {
                        event
                            .kv
                            .as_ref()
                            .is_some_and(|kv| kv.key >= create.key && kv.key < create.range_end)
                    })
                    .collect();
                if watched.is_empty() {
                    continue;
                }
                let answers = answers.clone();
                // Delivered later without holding back the next batch.
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = answers
                        .send(Ok(pb::WatchResponse {
                            watch_id: 1,
                            events: watched,
                            ..pb::WatchResponse::default()
                        }))
                        .await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

#[tonic::async_trait]
impl Lease for Member {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Answer<pb::LeaseGrantResponse> {
        let ttl = request.into_inner().ttl;
        self.served.grants.fetch_add(1, Ordering::SeqCst);
        let mut data = self.cluster.data();
        data.next_lease += 1;
        let id = data.next_lease;
        data.leases.insert(id, ttl);
        data.granted_ttls.push(ttl);
        Ok(Response::new(pb::LeaseGrantResponse {
            header: None,
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Answer<pb::LeaseRevokeResponse> {
        let id = request.into_inner().id;
        self.served.revokes.fetch_add(1, Ordering::SeqCst);
        match self.cluster.data().leases.remove(&id) {
            Some(_) => Ok(Response::new(pb::LeaseRevokeResponse::default())),
            None => Err(Status::not_found("requested lease not found")),
        }
    }

    type LeaseKeepAliveStream = Boxed<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Answer<Self::LeaseKeepAliveStream> {
        let mut requests = request.into_inner();
        let (answers, stream) = mpsc::channel(16);
        let cluster = self.cluster.clone();
        let served = self.served.clone();
        tokio::spawn(async move {
            while let Ok(Some(keep_alive)) = requests.message().await {
                served.keep_alives.fetch_add(1, Ordering::SeqCst);
                // etcd answers TTL 0 (3.4) for a lease it does not have.
                let ttl = cluster
                    .data()
                    .leases
                    .get(&keep_alive.id)
                    .copied()
                    .unwrap_or(0);
                let answer = pb::LeaseKeepAliveResponse {
                    header: None,
                    id: keep_alive.id,
                    ttl,
                };
                if answers.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn lease_time_to_live(
        &self,
        _request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Answer<pb::LeaseTimeToLiveResponse> {
        Err(Status::unimplemented("lease_time_to_live"))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Answer<pb::LeaseLeasesResponse> {
        Err(Status::unimplemented("lease_leases"))
    }
}

/// A fake cluster of `members` endpoints serving until dropped; member
/// `slow` (if any) delays its watch events by `watch_delay`.
struct Fake {
    cluster: Arc<Cluster>,
    endpoints: Vec<String>,
    served: Vec<Arc<Served>>,
    // Dropping the senders ends the servers.
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Fake {
    async fn start(members: usize, bump_every: u64, slow: Option<(usize, Duration)>) -> Fake {
        let cluster = Cluster::new(bump_every);
        let mut fake = Fake {
            cluster: cluster.clone(),
            endpoints: Vec::new(),
            served: Vec::new(),
            _stop: Vec::new(),
        };
        for index in 0..members {
            let served = Arc::new(Served::default());
            let member = Arc::new(Member {
                cluster: cluster.clone(),
                served: served.clone(),
                watch_delay: match slow {
                    Some((slow, delay)) if slow == index => delay,
                    _ => Duration::ZERO,
                },
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("loopback is available");
            let address = listener
                .local_addr()
                .expect("a bound listener has an address");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let router = tonic::transport::Server::builder()
                .add_service(KvServer::from_arc(member.clone()))
                .add_service(WatchServer::from_arc(member.clone()))
                .add_service(LeaseServer::from_arc(member));
            tokio::spawn(router.serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ));
            fake.endpoints.push(address.to_string());
            fake.served.push(served);
            fake._stop.push(stop);
        }
        fake
    }

    fn target(&self) -> Target {
        Target {
            endpoints: self.endpoints.clone(),
            // Ignored by the etcd workloads.
            level: Level::Quorum,
            request_timeout: Duration::from_secs(5),
        }
    }

    fn total(&self, count: impl Fn(&Served) -> &AtomicU64) -> u64 {
        self.served
            .iter()
            .map(|served| count(served).load(Ordering::SeqCst))
            .sum()
    }

    fn each(&self, count: impl Fn(&Served) -> &AtomicU64) -> Vec<u64> {
        self.served
            .iter()
            .map(|served| count(served).load(Ordering::SeqCst))
            .collect()
    }
}

/// A closed-loop run of `ops` measured operations on `keys` keys, no
/// warmup.
fn args(workload: WorkloadName, clients: usize, ops: u64, keys: u64) -> BenchArgs {
    BenchArgs {
        workload,
        clients,
        rate: None,
        duration: Duration::from_secs(30),
        ops: Some(ops),
        warmup: Duration::ZERO,
        keys,
        key_dist: KeyDist::Uniform,
        zipf_theta: 0.99,
        value_bytes: 100,
        seed: 1,
        consistency: Consistency::Linearizable,
        conns: None,
    }
}

async fn run(args: &BenchArgs, fake: &Fake) -> Report {
    bench(args, &fake.target(), &ProgressBar::hidden())
        .await
        .expect("the bench runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_put_spreads_over_every_endpoint_and_range_reads_what_it_wrote() {
    let fake = Fake::start(3, 0, None).await;
    let put = run(&args(WorkloadName::EtcdPut, 6, 300, 50), &fake).await;
    assert_eq!((put.ops, put.errors), (300, 0));
    assert_eq!(put.level, "linearizable");
    assert_eq!(put.conns, Some(3));
    // Client i on endpoint i % 3, one request per operation.
    assert!(fake.each(|s| &s.puts).iter().all(|&puts| puts > 0));
    assert_eq!(fake.total(|s| &s.puts), 300);
    {
        let data = fake.cluster.data();
        assert_eq!(data.revision, 300);
        assert!(
            data.kvs.len() <= 50 && data.kvs.len() > 40,
            "{}",
            data.kvs.len()
        );
        assert!(
            data.kvs
                .iter()
                .all(|(key, kv)| { key.starts_with(b"bench/etcd/") && kv.value.len() == 100 })
        );
    }

    let mut serializable = args(WorkloadName::EtcdRange, 4, 200, 50);
    serializable.consistency = Consistency::Serializable;
    let range = run(&serializable, &fake).await;
    assert_eq!((range.ops, range.errors), (200, 0));
    assert_eq!(range.level, "serializable");
    assert_eq!(fake.total(|s| &s.serializable_ranges), 200);
    let linearizable = run(&args(WorkloadName::EtcdRange, 4, 100, 50), &fake).await;
    assert_eq!(linearizable.level, "linearizable");
    assert_eq!(fake.total(|s| &s.ranges), 300);
    assert_eq!(fake.total(|s| &s.serializable_ranges), 200);
    // Reads write nothing.
    assert_eq!(fake.cluster.data().revision, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conns_sets_how_many_connections_the_clients_share() {
    let fake = Fake::start(2, 0, None).await;
    let mut own = args(WorkloadName::EtcdPut, 8, 80, 10);
    own.conns = Some(8);
    let report = run(&own, &fake).await;
    assert_eq!(report.conns, Some(8));
    assert_eq!(report.ops, 80);
    assert!(fake.each(|s| &s.puts).iter().all(|&puts| puts > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_txn_learns_revisions_and_counts_failed_compares() {
    // One client on one key: no race of the bench's own. The fake changes
    // the key before every 10th compare, as another writer would.
    let fake = Fake::start(1, 10, None).await;
    // A key written before the run: its revision is read at setup, so the
    // first compare does not fail.
    fake.cluster.data().put(b"bench/etcd/0", b"old");
    let report = run(&args(WorkloadName::EtcdTxn, 1, 100, 1), &fake).await;
    assert_eq!((report.ops, report.errors), (100, 0));
    assert_eq!(report.outcomes.get(COMPARE_FAILED), Some(&10), "{report:?}");
    let data = fake.cluster.data();
    // 1 initial put, 90 successful txns, 10 interlopers.
    assert_eq!(data.revision, 101);
    // The 100th txn met an interloper, and read its value rather than
    // overwrite it.
    assert_eq!(data.kvs[b"bench/etcd/0".as_slice()].value, b"interloper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_txn_without_interference_succeeds_every_compare() {
    let fake = Fake::start(2, 0, None).await;
    let report = run(&args(WorkloadName::EtcdTxn, 1, 60, 5), &fake).await;
    assert_eq!((report.ops, report.errors), (60, 0));
    assert!(report.outcomes.is_empty(), "{:?}", report.outcomes);
    assert_eq!(fake.cluster.data().revision, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_latency_waits_for_the_slowest_watcher_after_the_ack() {
    // Member 2 delivers its watch events 40 ms late; the others at once.
    let fake = Fake::start(3, 0, Some((2, Duration::from_millis(40)))).await;
    let report = run(&args(WorkloadName::EtcdWatchLatency, 4, 100, 20), &fake).await;
    assert_eq!((report.ops, report.errors), (100, 0));
    assert_eq!(report.level, "-");
    // Every operation waited for the late watcher, and only for it.
    let latency = &report.latency;
    assert!(latency.p50_us >= 35_000.0, "{latency:?}");
    assert!(latency.p50_us < 1_000_000.0, "{latency:?}");
    assert_eq!(fake.total(|s| &s.puts), 100);
    let data = fake.cluster.data();
    assert!(data.kvs.keys().all(|key| key.starts_with(b"bench/watch/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_latency_without_delay_is_below_the_put_round_trip_scale() {
    let fake = Fake::start(2, 0, None).await;
    let report = run(&args(WorkloadName::EtcdWatchLatency, 2, 100, 20), &fake).await;
    assert_eq!((report.ops, report.errors), (100, 0));
    // Loopback and an in-process fake: far below the 40 ms of the test
    // above, whatever the machine's load.
    assert!(report.latency.p50_us < 20_000.0, "{:?}", report.latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lease_keepalive_renews_each_clients_lease_and_revokes_them_after() {
    let fake = Fake::start(3, 0, None).await;
    let report = run(&args(WorkloadName::EtcdLeaseKeepalive, 5, 200, 1), &fake).await;
    assert_eq!((report.ops, report.errors), (200, 0));
    // One lease per client, renewed once at setup, then once per operation.
    assert_eq!(fake.total(|s| &s.grants), 5);
    assert_eq!(fake.total(|s| &s.keep_alives), 205);
    assert_eq!(fake.total(|s| &s.revokes), 5);
    assert!(fake.cluster.data().leases.is_empty());
    assert!(fake.each(|s| &s.grants).iter().all(|&grants| grants > 0));
    assert_eq!(fake.cluster.data().granted_ttls, vec![LEASE_TTL_S; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_workload_that_cannot_set_up_measures_nothing() {
    // A port nobody listens on: the watchers cannot be created.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback");
    let address = listener.local_addr().expect("bound").to_string();
    drop(listener);
    let target = Target {
        endpoints: vec![address],
        level: Level::Local,
        request_timeout: Duration::from_secs(2),
    };
    let outcome = bench(
        &args(WorkloadName::EtcdWatchLatency, 1, 10, 1),
        &target,
        &ProgressBar::hidden(),
    )
    .await;
    assert!(matches!(outcome, Err(BenchError::Setup(_))), "{outcome:?}");
}
