//! The `etcd-*` workloads end to end against a fake etcd cluster served
//! in-process: several loopback endpoints share one store, as members of
//! one cluster share its data. The store keeps etcd's revision rules for
//! the requests the bench sends (put, single-key range, a mod-revision
//! compare), fans puts out to watchers, grants and renews leases, and
//! counts what each endpoint served; it can interfere (bump a key before
//! a txn compares it) and delay one endpoint's watch events. Its txns are
//! atomic (the store's lock is held from compare to put), so the
//! linearizable counter's tests check lost updates against a store that
//! has none of its own.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_bench::{
    BenchArgs, BenchError, COMPARE_FAILED, Consistency, CounterOperation, EtcdChannels,
    EtcdCounter, Incremented, KeyDist, LEASE_TTL_S, Report, Target, WorkloadName, bench,
    counter_key,
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
    run_at(args, fake, Level::Quorum).await
}

/// `run`, with the global `--level` at `level`.
async fn run_at(args: &BenchArgs, fake: &Fake, level: Level) -> Report {
    let target = Target {
        level,
        ..fake.target()
    };
    bench(args, &target, &ProgressBar::hidden())
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

/// The value the fake holds for counter `key`, as stored.
fn stored(fake: &Fake, key: u64) -> Option<Vec<u8>> {
    let data = fake.cluster.data();
    data.kvs.get(&counter_key(key)).map(|kv| kv.value.clone())
}

/// A linearizable counter on the fake's endpoints, with nothing seen.
fn counter(fake: &Fake, operation: CounterOperation) -> EtcdCounter {
    let channels = EtcdChannels::connect(
        &fake.endpoints,
        fake.endpoints.len(),
        Duration::from_secs(1),
    )
    .expect("valid endpoints");
    EtcdCounter::new(channels, operation, Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_counter_increments_lose_no_update_when_clients_share_one_key() {
    // 8 clients, 25 increments each, all on one key over two endpoints.
    let fake = Fake::start(2, 0, None).await;
    let incr = run_at(
        &args(WorkloadName::CounterIncr, 8, 200, 1),
        &fake,
        Level::Linearizable,
    )
    .await;
    assert_eq!((incr.ops, incr.errors), (200, 0), "{incr:?}");
    assert_eq!(incr.level, "linearizable");
    assert_eq!(incr.conns, Some(2));
    // Every acknowledged increment is in the value: none was lost to a
    // concurrent one, though clients raced (each race lost is a retry).
    assert_eq!(stored(&fake, 0).as_deref(), Some(b"200".as_slice()));
    let retries = incr.outcomes.get(COMPARE_FAILED).copied().unwrap_or(0);
    assert!(retries > 0, "8 clients on one key never raced: {incr:?}");
    // Failed compares write nothing: one revision per increment, and only
    // the counter's key.
    assert_eq!(fake.cluster.data().revision, 200);
    assert_eq!(fake.cluster.data().kvs.len(), 1);
    assert_eq!(fake.total(|s| &s.txns), 200 + retries);

    // counter-get reads linearizably, and writes nothing.
    let ranges_before = fake.total(|s| &s.ranges);
    let get = run_at(
        &args(WorkloadName::CounterGet, 4, 50, 1),
        &fake,
        Level::Linearizable,
    )
    .await;
    assert_eq!((get.ops, get.errors), (50, 0), "{get:?}");
    assert_eq!(get.level, "linearizable");
    assert_eq!(fake.total(|s| &s.ranges), ranges_before + 50);
    assert_eq!(fake.total(|s| &s.serializable_ranges), 0);
    assert_eq!(fake.cluster.data().revision, 200);
    // And what it reads is what the increments left.
    let reader = counter(&fake, CounterOperation::Get);
    assert_eq!(reader.read(0, 0).await, Ok(200));
    assert_eq!(reader.read(1, 1).await, Ok(0), "an absent counter is 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_each_write_a_distinct_next_value() {
    // Linearizability of the counter: the 120 successful increments wrote
    // 1 to 120, each exactly once, whatever their interleaving.
    let fake = Fake::start(3, 0, None).await;
    let shared = Arc::new(counter(&fake, CounterOperation::Increment));
    let tasks: Vec<_> = (0..6)
        .map(|client| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                for _ in 0..20 {
                    done.push(shared.increment(client, 3).await.expect("no call fails"));
                }
                done
            })
        })
        .collect();
    let mut done: Vec<Incremented> = Vec::new();
    for task in tasks {
        done.extend(task.await.expect("no task panics"));
    }
    let mut values: Vec<i64> = done.iter().map(|done| done.value).collect();
    values.sort_unstable();
    assert_eq!(values, (1..=120).collect::<Vec<i64>>());
    let retries: u64 = done.iter().map(|done| done.failed_compares).sum();
    assert_eq!(fake.total(|s| &s.txns), 120 + retries);
    assert_eq!(stored(&fake, 3).as_deref(), Some(b"120".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_retries_from_what_its_failed_compare_read() {
    // Two counters with caches of their own, as two bench processes.
    let fake = Fake::start(1, 0, None).await;
    let a = counter(&fake, CounterOperation::Increment);
    let b = counter(&fake, CounterOperation::Increment);
    let check = |done: Result<Incremented, _>, value, failed_compares| {
        assert_eq!(
            done,
            Ok(Incremented {
                value,
                failed_compares
            })
        );
    };
    // The key is absent: mod revision 0, value 0.
    check(a.increment(0, 0).await, 1, 0);
    // b expected it absent; its failed compare read 1 at revision 1.
    check(b.increment(0, 0).await, 2, 1);
    // a last saw revision 1: one retry, then the cache is current.
    check(a.increment(0, 0).await, 3, 1);
    check(a.increment(0, 0).await, 4, 0);
    // A started counter reads the values before its run: no retry.
    let channels =
        EtcdChannels::connect(&fake.endpoints, 1, Duration::from_secs(1)).expect("valid endpoints");
    let started = EtcdCounter::start(
        channels,
        CounterOperation::Increment,
        Duration::from_secs(5),
        1,
    )
    .await
    .expect("the counters are read");
    check(started.increment(0, 0).await, 5, 0);
    assert_eq!(stored(&fake, 0).as_deref(), Some(b"5".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_key_that_is_not_a_number_is_an_error_not_a_panic() {
    let fake = Fake::start(2, 0, None).await;
    fake.cluster.data().put(&counter_key(0), b"not a number");
    for workload in [WorkloadName::CounterIncr, WorkloadName::CounterGet] {
        let report = run_at(&args(workload, 2, 10, 1), &fake, Level::Linearizable).await;
        assert_eq!((report.ops, report.errors), (0, 10), "{report:?}");
        let refused = &report.errors_by_code["FAILED_PRECONDITION"];
        assert_eq!(refused.count, 10);
        assert!(
            refused.first_message.contains("bench/etcd/counter/0")
                && refused.first_message.contains("not a decimal i64"),
            "{}",
            refused.first_message
        );
    }
    // Nothing overwrote the foreign value.
    assert_eq!(
        stored(&fake, 0).as_deref(),
        Some(b"not a number".as_slice())
    );
    // A counter at the top of i64 is refused too, not wrapped.
    fake.cluster
        .data()
        .put(&counter_key(1), i64::MAX.to_string().as_bytes());
    let error = counter(&fake, CounterOperation::Increment)
        .increment(0, 1)
        .await
        .expect_err("no room above i64::MAX");
    assert!(error.message.contains("i64::MAX"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_at_other_levels_do_not_touch_the_etcd_keyspace() {
    // At quorum the counter is calm's CRDT, which an etcd endpoint does
    // not serve: every operation fails, and no etcd request was sent.
    let fake = Fake::start(1, 0, None).await;
    let report = run_at(
        &args(WorkloadName::CounterIncr, 2, 10, 1),
        &fake,
        Level::Quorum,
    )
    .await;
    assert_eq!((report.ops, report.errors), (0, 10));
    assert_eq!(report.level, "quorum");
    assert_eq!(fake.total(|s| &s.txns) + fake.total(|s| &s.ranges), 0);
}
