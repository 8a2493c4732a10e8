//! Linearizability of the etcd API on real processes: concurrent etcd
//! clients record a history while the Raft leader is killed, paused past
//! the election timeout or cut off by a partition, and calm-sim's checker
//! must find a sequential order of the keyspace that explains it.
//!
//! A history's clock is microseconds since the workload started, shared by
//! every client. A write whose reply never came, or came as an error, is
//! indeterminate (it may have applied): it is kept with no return and no
//! output. A failed read changed nothing and is dropped. Before the check,
//! the store's own history, read back through a watch, settles which
//! indeterminate writes took effect ([`resolve`]). On a violation the
//! history is written as JSON to a kept temporary file, named in the panic.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use calm_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use calm_proto::etcd::etcdserverpb::request_op::Request as RequestOpKind;
use calm_proto::etcd::etcdserverpb::response_op::Response as ResponseOpKind;
use calm_proto::etcd::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, StatusRequest, TxnRequest,
};
use calm_proto::etcd::mvccpb::event::EventType;
use calm_sim::linearizability::{EtcdInput, EtcdModel, EtcdOutput, Operation, Verdict, check};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::harness::{Cluster, eventually};

/// One operation of an etcd history.
type EtcdOperation = Operation<EtcdInput, EtcdOutput>;

/// The keys every client works on: few, so that clients contend.
const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];
/// The key the minority probe's compare-and-sets name; they never change it.
const PROBE_KEY: &str = "lin/probe";
/// The prefix of every key above, and its range end.
const PREFIX: (&str, &str) = ("lin/", "lin0");
/// Concurrent clients; each node gets the same number of them.
const CLIENTS: usize = 6;
/// How long a request may take before the client gives up on it (and, for
/// a write, counts it indeterminate).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits to (re)connect to its node.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a client rests after a failed request, so a dead node does not
/// fill the history with indeterminate writes.
const BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between a client's requests, drawn at random; it keeps
/// histories at a few thousand operations, which the checker takes in
/// milliseconds.
const THINK_MS_MAX: u64 = 10;
/// How long a Maintenance.Status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the survivors get to elect a new leader (the election timeout
/// is 1 s with calm's defaults, randomised up to 2 s, and the test shares
/// two cores with other clusters).
const ELECTION_WITHIN: Duration = Duration::from_secs(8);
/// The checker's search budget; running out fails the test.
const CHECK_STEPS_MAX: u64 = 50_000_000;
/// Client ids one task may use: it takes a new one after each
/// indeterminate write, so that an id never has two operations open.
const CLIENT_IDS_PER_TASK: u64 = 1_000_000;
/// How long reading back the store's history may take.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack after a partition is set before the minority must refuse writes:
/// a relay may still flush a few bytes while it is being cut.
const PARTITION_GRACE_US: u64 = 100_000;
/// How long the partition lasts.
const PARTITION_US: u64 = 4_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_api_histories_stay_linearizable_when_the_leader_is_killed() {
    let mut cluster = start_raft_cluster().await;
    let mut workload = Workload::start(&cluster, 0x11ea_de01, Duration::from_secs(10));
    workload.sleep_until(Duration::from_secs(2)).await;
    let leader = agreed_leader(&cluster, &[0, 1, 2])
        .await
        .expect("a leader before the kill");
    let leader_index = node_index(leader);
    cluster.kill(leader_index);
    let killed_at = workload.note(format!("SIGKILL node {leader} (the leader)"));
    workload.sleep_until(Duration::from_secs(5)).await;
    cluster.spawn(leader_index);
    let restarted_at = workload.note(format!("restarted node {leader} on its data"));
    let run = workload.finish().await;

    assert_linearizable("leader_killed", &run, &cluster).await;
    let survivors = others(leader_index);
    assert!(
        run.writes_acknowledged(&survivors, killed_at, u64::MAX) > 0,
        "the survivors acknowledged no write after the kill\n{}",
        run.describe(&cluster)
    );
    assert!(
        run.operations_answered(&[leader_index], restarted_at) > 0,
        "the restarted node {leader} answered nothing\n{}",
        run.describe(&cluster)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_api_histories_stay_linearizable_when_the_leader_is_paused_past_the_election_timeout()
{
    let cluster = start_raft_cluster().await;
    let mut workload = Workload::start(&cluster, 0x570e_0002, Duration::from_secs(10));
    workload.sleep_until(Duration::from_secs(2)).await;
    let leader = agreed_leader(&cluster, &[0, 1, 2])
        .await
        .expect("a leader before the pause");
    let leader_index = node_index(leader);
    cluster.signal(leader_index, "-STOP");
    let stopped_at = workload.note(format!("SIGSTOP node {leader} (the leader)"));
    let survivors = others(leader_index);
    let successor = wait_for_new_leader(&cluster, &survivors, leader).await;
    if let Some(successor) = successor {
        workload.note(format!("node {successor} leads the survivors"));
    }
    // Paused for at least 3 s: three election timeouts' worth of ticks.
    workload.sleep_until_us(stopped_at + 3_000_000).await;
    cluster.signal(leader_index, "-CONT");
    let continued_at = workload.note(format!("SIGCONT node {leader}"));
    let run = workload.finish().await;

    assert!(
        successor.is_some(),
        "the survivors elected no new leader while node {leader} was paused\n{}",
        run.describe(&cluster)
    );
    assert_linearizable("leader_paused", &run, &cluster).await;
    assert!(
        run.writes_acknowledged(&survivors, stopped_at, continued_at) > 0,
        "the survivors acknowledged no write during the pause\n{}",
        run.describe(&cluster)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_api_histories_stay_linearizable_across_a_partition() {
    let cluster = start_raft_cluster().await;
    let mut workload = Workload::start(&cluster, 0x9a27_0003, Duration::from_secs(11));
    workload.sleep_until(Duration::from_secs(2)).await;
    let leader = agreed_leader(&cluster, &[0, 1, 2])
        .await
        .expect("a leader before the partition");
    let leader_index = node_index(leader);
    let majority = others(leader_index);
    let majority_ids: Vec<u64> = majority.iter().map(|&i| i as u64 + 1).collect();
    cluster.links.partition(&[leader], &majority_ids);
    let cut_at = workload.note(format!(
        "partition: node {leader} (the leader) | nodes {majority_ids:?}"
    ));
    let cut = cut_at + PARTITION_GRACE_US;
    // The workload's clients on the cut-off node may happen to send only
    // reads while it is cut off; a prober makes sure writes are tried there.
    workload.add_prober(&cluster, leader_index, cut, cut_at + PARTITION_US);
    let successor = wait_for_new_leader(&cluster, &majority, leader).await;
    if let Some(successor) = successor {
        workload.note(format!("node {successor} leads the majority"));
    }
    workload.sleep_until_us(cut_at + PARTITION_US).await;
    cluster.links.heal();
    let healed_at = workload.note("healed".to_string());
    let run = workload.finish().await;

    assert!(
        successor.is_some(),
        "the majority elected no leader\n{}",
        run.describe(&cluster)
    );
    assert_linearizable("partition", &run, &cluster).await;
    // Raft §5.3: an entry commits only on a majority, so nothing sent to
    // the cut-off node commits, and so nothing it answers succeeds, until
    // the partition heals.
    let minority = [leader_index];
    assert!(
        run.writes_sent(&minority, cut, healed_at) > 0,
        "no write reached the minority during the partition\n{}",
        run.describe(&cluster)
    );
    assert_eq!(
        run.writes_acknowledged(&minority, cut, healed_at),
        0,
        "the cut-off node {leader} acknowledged writes during the partition\n{}",
        run.describe(&cluster)
    );
    assert!(
        run.writes_acknowledged(&majority, cut_at, healed_at) > 0,
        "the majority acknowledged no write during the partition\n{}",
        run.describe(&cluster)
    );
}

/// The checker is live on real histories: a correct recorded history with
/// one read made stale (a value and revision from before a write that
/// finished before the read began) is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_history_with_one_read_made_stale_is_rejected() {
    let cluster = start_raft_cluster().await;
    let workload = Workload::start(&cluster, 0xbad0_0004, Duration::from_secs(3));
    let run = workload.finish().await;
    let mut history = assert_linearizable("planted_bug_baseline", &run, &cluster).await;

    let planted = plant_stale_read(&mut history).expect("a read with an older read to copy");
    let verdict = check(&EtcdModel, &history, CHECK_STEPS_MAX);
    assert!(
        matches!(verdict, Verdict::Violation(_)),
        "the checker accepted a stale read ({planted}): {verdict}"
    );
}

/// Reading back the store's history settles indeterminate writes: a put
/// the store never took goes, one it took is bounded by the first answer
/// at or after its revision, and a delete stays open only while a delete
/// event of its key is unaccounted for. The verdict does not change.
#[test]
fn the_store_history_settles_indeterminate_writes() {
    let put = |key: &str, value: &str| EtcdInput::Put {
        key: key.to_string(),
        value: value.to_string(),
    };
    let delete = |key: &str| EtcdInput::Delete {
        key: key.to_string(),
    };
    let get = EtcdInput::Get {
        key: "lin/a".to_string(),
    };
    let history = vec![
        answered(
            0,
            0,
            10,
            put("lin/a", "0.1"),
            EtcdOutput::Put { revision: 2 },
        ),
        indeterminate(1, 5, put("lin/a", "1.1")),
        indeterminate(2, 6, put("lin/b", "2.1")),
        indeterminate(3, 7, delete("lin/a")),
        indeterminate(4, 8, delete("lin/b")),
        answered(
            0,
            20,
            30,
            get,
            EtcdOutput::Get {
                value: None,
                revision: 4,
            },
        ),
    ];
    let applied = Applied {
        puts: HashMap::from([("0.1".to_string(), 2), ("1.1".to_string(), 3)]),
        deletes: vec![("lin/a".to_string(), 4)],
    };

    let resolved = resolve(&history, &applied);

    let mut bounded = history[1].clone();
    bounded.ret = Some(30);
    let expected = vec![
        history[0].clone(),
        bounded,
        history[3].clone(),
        history[5].clone(),
    ];
    assert_eq!(resolved, expected);
    assert_eq!(
        check(&EtcdModel, &history, CHECK_STEPS_MAX),
        Verdict::Linearizable
    );
    assert_eq!(
        check(&EtcdModel, &resolved, CHECK_STEPS_MAX),
        Verdict::Linearizable
    );
}

// ---- The workload ----

/// Microseconds since the workload started, on one monotonic clock.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_us(self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// One operation and the node it was sent to.
#[derive(Clone, Debug)]
struct Record {
    node: usize,
    op: EtcdOperation,
}

/// Clients running against a cluster, and the faults injected meanwhile.
struct Workload {
    clock: Clock,
    tasks: Vec<JoinHandle<Vec<Record>>>,
    timeline: Vec<(u64, String)>,
    /// Seeds clients added later.
    seed: u64,
}

impl Workload {
    /// Starts [`CLIENTS`] clients for `duration`, each bound to one node
    /// (the same number per node, in an order drawn from `seed`).
    fn start(cluster: &Cluster, seed: u64, duration: Duration) -> Workload {
        let clock = Clock(Instant::now());
        let end_us = duration.as_micros() as u64;
        let mut rng = Rng(seed);
        let nodes = cluster.nodes.len();
        let mut binding: Vec<usize> = (0..CLIENTS).map(|c| c % nodes).collect();
        rng.shuffle(&mut binding);
        let tasks = binding
            .into_iter()
            .enumerate()
            .map(|(task, node)| {
                let client = ClientTask {
                    task,
                    node,
                    endpoint: cluster.nodes[node].client,
                    rng: Rng(rng.next()),
                    clock,
                    mix: Mix::Any,
                    start_us: 0,
                    end_us,
                };
                tokio::spawn(client.run())
            })
            .collect();
        Workload {
            clock,
            tasks,
            timeline: Vec::new(),
            seed: rng.next(),
        }
    }

    /// Adds a client that sends only [`Mix::Probe`] writes to node `node`,
    /// from `start_us` until `end_us`; its operations join the history.
    fn add_prober(&mut self, cluster: &Cluster, node: usize, start_us: u64, end_us: u64) {
        let client = ClientTask {
            task: CLIENTS + self.tasks.len(),
            node,
            endpoint: cluster.nodes[node].client,
            rng: Rng(self.seed),
            clock: self.clock,
            mix: Mix::Probe,
            start_us,
            end_us,
        };
        self.tasks.push(tokio::spawn(client.run()));
    }

    /// Notes a fault on the timeline; returns when it happened.
    fn note(&mut self, event: String) -> u64 {
        let at = self.clock.now_us();
        self.timeline.push((at, event));
        at
    }

    async fn sleep_until(&self, since_start: Duration) {
        self.sleep_until_us(since_start.as_micros() as u64).await;
    }

    async fn sleep_until_us(&self, at_us: u64) {
        let now = self.clock.now_us();
        if at_us > now {
            tokio::time::sleep(Duration::from_micros(at_us - now)).await;
        }
    }

    /// Waits for every client to finish; the history in call order.
    async fn finish(self) -> Run {
        let mut records = Vec::new();
        for task in self.tasks {
            records.extend(task.await.expect("a client task"));
        }
        records.sort_by_key(|record| record.op.call);
        Run {
            records,
            timeline: self.timeline,
        }
    }
}

/// A finished workload: its history and fault timeline.
struct Run {
    records: Vec<Record>,
    timeline: Vec<(u64, String)>,
}

impl Run {
    /// The history as recorded.
    fn history(&self) -> Vec<EtcdOperation> {
        self.records.iter().map(|r| r.op.clone()).collect()
    }

    fn indeterminate(&self) -> usize {
        self.records.iter().filter(|r| r.op.ret.is_none()).count()
    }

    /// Writes sent to `nodes` called in `[from_us, to_us)`.
    fn writes_sent(&self, nodes: &[usize], from_us: u64, to_us: u64) -> usize {
        self.records
            .iter()
            .filter(|r| nodes.contains(&r.node) && is_write(&r.op.input))
            .filter(|r| (from_us..to_us).contains(&r.op.call))
            .count()
    }

    /// Writes sent to `nodes` called at or after `from_us` and answered
    /// (a failed compare included: it went through the log) before `to_us`.
    fn writes_acknowledged(&self, nodes: &[usize], from_us: u64, to_us: u64) -> usize {
        self.records
            .iter()
            .filter(|r| nodes.contains(&r.node) && is_write(&r.op.input))
            .filter(|r| r.op.call >= from_us && r.op.ret.is_some_and(|ret| ret < to_us))
            .count()
    }

    /// Operations sent to `nodes` called at or after `from_us` and answered.
    fn operations_answered(&self, nodes: &[usize], from_us: u64) -> usize {
        self.records
            .iter()
            .filter(|r| nodes.contains(&r.node) && r.op.call >= from_us && r.op.ret.is_some())
            .count()
    }

    /// The timeline and the nodes' logs, for failure messages.
    fn describe(&self, cluster: &Cluster) -> String {
        let mut text = format!(
            "{} operations ({} indeterminate); timeline:\n",
            self.records.len(),
            self.indeterminate()
        );
        for (at, event) in &self.timeline {
            text.push_str(&format!("  {:>7.3} s  {event}\n", *at as f64 / 1e6));
        }
        text.push_str(&cluster.logs());
        text
    }

    /// Writes the history, the node each operation went to, the timeline
    /// and the history as checked to a kept temporary file; returns its
    /// path.
    fn save(&self, test: &str, checked: &[EtcdOperation]) -> PathBuf {
        let timeline: Vec<_> = self
            .timeline
            .iter()
            .map(|(at, event)| serde_json::json!({ "at_us": at, "event": event }))
            .collect();
        let document = serde_json::json!({
            "test": test,
            "timeline": timeline,
            "sent_to_node": self.records.iter().map(|r| r.node + 1).collect::<Vec<_>>(),
            "history": self.history(),
            "checked": checked,
        });
        let file = tempfile::Builder::new()
            .prefix(&format!("calm-history-{test}-"))
            .suffix(".json")
            .tempfile()
            .expect("a temporary file");
        serde_json::to_writer_pretty(file.as_file(), &document).expect("the history is written");
        let (_, path) = file.keep().expect("the history file is kept");
        path
    }
}

/// One client: a sequential loop of requests to one node.
struct ClientTask {
    task: usize,
    node: usize,
    endpoint: SocketAddr,
    rng: Rng,
    clock: Clock,
    mix: Mix,
    start_us: u64,
    end_us: u64,
}

/// Which requests a client sends.
#[derive(Clone, Copy)]
enum Mix {
    /// Reads, puts, compare-and-sets and deletes.
    Any,
    /// Only compare-and-sets of [`PROBE_KEY`] whose compare never holds:
    /// writes that go through the Raft log (and so commit only on a
    /// majority) yet change nothing.
    Probe,
}

impl ClientTask {
    async fn run(mut self) -> Vec<Record> {
        let mut client = self.task as u64 * CLIENT_IDS_PER_TASK;
        let mut sequence = 0u64;
        // The mod revision this client last saw for each key (0: absent),
        // which its next compare-and-set expects.
        let mut mod_revisions = [0i64; KEYS.len()];
        let mut kv: Option<KvClient<Channel>> = None;
        let mut records = Vec::new();
        let until_start = self.start_us.saturating_sub(self.clock.now_us());
        tokio::time::sleep(Duration::from_micros(until_start)).await;
        while self.clock.now_us() < self.end_us {
            if kv.is_none() {
                kv = connect(self.endpoint).await;
            }
            let Some(connected) = kv.as_mut() else {
                tokio::time::sleep(BACKOFF).await;
                continue;
            };
            let key = self.rng.below(KEYS.len() as u64) as usize;
            sequence += 1;
            let value = format!("{}.{sequence}", self.task);
            let input = self.next_input(KEYS[key], mod_revisions[key], value);
            let call = self.clock.now_us();
            let result = tokio::time::timeout(REQUEST_TIMEOUT, execute(connected, &input)).await;
            let ret = self.clock.now_us();
            match result {
                Ok(Ok((output, mod_revision))) => {
                    mod_revisions[key] = mod_revision;
                    let op = answered(client, call, ret, input, output);
                    records.push(Record {
                        node: self.node,
                        op,
                    });
                }
                _ => {
                    if is_write(&input) {
                        let op = indeterminate(client, call, input);
                        records.push(Record {
                            node: self.node,
                            op,
                        });
                        client += 1;
                    }
                    // The channel may be broken (a killed node): start over.
                    kv = None;
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            let think = self.rng.below(THINK_MS_MAX + 1);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
        records
    }

    /// The next request of the client's mix; [`Mix::Any`] draws 35% reads,
    /// 30% puts, 20% compare-and-sets and 15% deletes. Values are unique,
    /// so a read names the write it saw.
    fn next_input(&mut self, key: &str, mod_revision: i64, value: String) -> EtcdInput {
        if let Mix::Probe = self.mix {
            // Mod revisions are never negative.
            return EtcdInput::Cas {
                key: PROBE_KEY.to_string(),
                expected_mod_revision: -1,
                value,
            };
        }
        let key = key.to_string();
        match self.rng.below(100) {
            0..35 => EtcdInput::Get { key },
            35..65 => EtcdInput::Put { key, value },
            65..85 => EtcdInput::Cas {
                key,
                expected_mod_revision: mod_revision,
                value,
            },
            _ => EtcdInput::Delete { key },
        }
    }
}

fn answered(
    client: u64,
    call: u64,
    ret: u64,
    input: EtcdInput,
    output: EtcdOutput,
) -> EtcdOperation {
    Operation {
        client,
        call,
        ret: Some(ret),
        input,
        output: Some(output),
    }
}

fn indeterminate(client: u64, call: u64, input: EtcdInput) -> EtcdOperation {
    Operation {
        client,
        call,
        ret: None,
        input,
        output: None,
    }
}

fn is_write(input: &EtcdInput) -> bool {
    !matches!(input, EtcdInput::Get { .. })
}

async fn connect(endpoint: SocketAddr) -> Option<KvClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("a valid URI")
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .ok()?
        .ok()?;
    Some(KvClient::new(channel))
}

/// Sends `input` as etcd requests it; returns the output and the key's mod
/// revision afterwards (0: absent), as far as the reply shows it.
async fn execute(
    kv: &mut KvClient<Channel>,
    input: &EtcdInput,
) -> Result<(EtcdOutput, i64), tonic::Status> {
    match input {
        EtcdInput::Get { key } => {
            let reply = kv.range(range(key)).await?.into_inner();
            let (value, mod_revision) = first_value(&reply);
            let revision = revision_of(reply.header);
            Ok((EtcdOutput::Get { value, revision }, mod_revision))
        }
        EtcdInput::Put { key, value } => {
            let reply = kv.put(put(key, value)).await?.into_inner();
            let revision = revision_of(reply.header);
            Ok((EtcdOutput::Put { revision }, revision))
        }
        EtcdInput::Delete { key } => {
            let request = DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..DeleteRangeRequest::default()
            };
            let reply = kv.delete_range(request).await?.into_inner();
            let revision = revision_of(reply.header);
            let deleted = reply.deleted;
            Ok((EtcdOutput::Delete { deleted, revision }, 0))
        }
        EtcdInput::Cas {
            key,
            expected_mod_revision,
            value,
        } => {
            let reply = kv
                .txn(compare_and_set(key, *expected_mod_revision, value))
                .await?
                .into_inner();
            let revision = revision_of(reply.header);
            let succeeded = reply.succeeded;
            // On failure the else branch read the key: its mod revision is
            // what the next attempt expects.
            let mod_revision = if succeeded {
                revision
            } else {
                reply
                    .responses
                    .iter()
                    .find_map(|op| match &op.response {
                        Some(ResponseOpKind::ResponseRange(read)) => Some(first_value(read).1),
                        _ => None,
                    })
                    .unwrap_or(0)
            };
            Ok((
                EtcdOutput::Cas {
                    succeeded,
                    revision,
                },
                mod_revision,
            ))
        }
    }
}

/// A linearizable range of one key.
fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        ..RangeRequest::default()
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..PutRequest::default()
    }
}

/// `if mod(key) == expected then put(key, value) else get(key)`.
fn compare_and_set(key: &str, expected_mod_revision: i64, value: &str) -> TxnRequest {
    let compare = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::ModRevision(expected_mod_revision)),
        ..Compare::default()
    };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(RequestOpKind::RequestPut(put(key, value))),
        }],
        failure: vec![RequestOp {
            request: Some(RequestOpKind::RequestRange(range(key))),
        }],
    }
}

/// The first key's value and mod revision (0 if there is none).
fn first_value(reply: &RangeResponse) -> (Option<String>, i64) {
    match reply.kvs.first() {
        Some(kv) => (
            Some(String::from_utf8_lossy(&kv.value).into_owned()),
            kv.mod_revision,
        ),
        None => (None, 0),
    }
}

/// A header's revision; a missing header reads as 0, which no model state
/// has, so the checker reports it.
fn revision_of(header: Option<ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

// ---- The leader ----

/// Starts three voters and waits until all agree on a Raft leader.
pub(crate) async fn start_raft_cluster() -> Cluster {
    let cluster = Cluster::start(3).await;
    let mut leader = None;
    let agreed = eventually(ELECTION_WITHIN, async || {
        leader = agreed_leader(&cluster, &[0, 1, 2]).await;
        leader.is_some()
    })
    .await;
    assert!(agreed, "no Raft leader\n{}", cluster.logs());
    cluster
}

/// The leader every node of `indices` reports, if they all report one.
pub(crate) async fn agreed_leader(cluster: &Cluster, indices: &[usize]) -> Option<u64> {
    let mut seen = Vec::new();
    for &index in indices {
        seen.push(leader_seen_by(cluster.nodes[index].client).await?);
    }
    let first = *seen.first()?;
    seen.iter().all(|&l| l == first).then_some(first)
}

/// Waits until every node of `indices` reports the same leader other than
/// `old`; returns it.
async fn wait_for_new_leader(cluster: &Cluster, indices: &[usize], old: u64) -> Option<u64> {
    let mut leader = None;
    eventually(ELECTION_WITHIN, async || {
        leader = agreed_leader(cluster, indices).await.filter(|&l| l != old);
        leader.is_some()
    })
    .await;
    leader
}

/// The leader a node reports through Maintenance.Status (its member ids
/// are node ids), if it knows one and answers in time.
async fn leader_seen_by(endpoint: SocketAddr) -> Option<u64> {
    let status = async {
        let mut maintenance = MaintenanceClient::connect(format!("http://{endpoint}"))
            .await
            .ok()?;
        let status = maintenance
            .status(StatusRequest {})
            .await
            .ok()?
            .into_inner();
        (status.leader != 0).then_some(status.leader)
    };
    tokio::time::timeout(STATUS_TIMEOUT, status)
        .await
        .ok()
        .flatten()
}

fn node_index(id: u64) -> usize {
    id as usize - 1
}

/// The other two nodes' indices.
fn others(index: usize) -> Vec<usize> {
    (0..3).filter(|&i| i != index).collect()
}

// ---- Checking ----

/// Fails with the saved history unless the checker finds it linearizable;
/// returns the history as checked (see [`resolve`]).
async fn assert_linearizable(test: &str, run: &Run, cluster: &Cluster) -> Vec<EtcdOperation> {
    let applied = read_back(cluster).await;
    let history = match &applied {
        Some(applied) => resolve(&run.history(), applied),
        // Without the store's history every indeterminate write stays open.
        None => run.history(),
    };
    let started = Instant::now();
    let verdict = check(&EtcdModel, &history, CHECK_STEPS_MAX);
    // Captured unless the test fails or runs with --nocapture.
    eprintln!(
        "{test}: {} operations, {} indeterminate, {} left open after reading back \
         the store's history ({}), checked in {:?}: {verdict}",
        history.len(),
        run.indeterminate(),
        history.iter().filter(|op| op.ret.is_none()).count(),
        if applied.is_some() {
            "read"
        } else {
            "unavailable"
        },
        started.elapsed()
    );
    if verdict != Verdict::Linearizable {
        let path = run.save(test, &history);
        panic!(
            "{test}: {verdict}\nhistory saved to {}\n{}",
            path.display(),
            run.describe(cluster)
        );
    }
    history
}

/// The writes the store applied to the test's keys, read back through a
/// watch from revision 1: each put's value with its revision, and each
/// delete's key and revision.
#[derive(Debug, Default)]
struct Applied {
    puts: HashMap<String, i64>,
    deletes: Vec<(String, i64)>,
}

/// Reads back what the store applied, from the first node that answers;
/// `None` if none does (or the history was compacted).
async fn read_back(cluster: &Cluster) -> Option<Applied> {
    for node in &cluster.nodes {
        let applied = tokio::time::timeout(READ_BACK_TIMEOUT, applied_at(node.client)).await;
        if let Ok(Some(applied)) = applied {
            return Some(applied);
        }
    }
    None
}

/// Every event on the test's keys up to the current revision, by a watch
/// from revision 1 on `endpoint`.
async fn applied_at(endpoint: SocketAddr) -> Option<Applied> {
    let mut applied = Applied::default();
    for event in crate::watch::history_at(endpoint, PREFIX).await? {
        let kv = event.kv?;
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        match EventType::try_from(event.r#type).ok()? {
            EventType::Put => {
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                applied.puts.insert(value, kv.mod_revision);
            }
            EventType::Delete => applied.deletes.push((key, kv.mod_revision)),
        }
    }
    Some(applied)
}

/// Settles what the store's own history tells about indeterminate writes,
/// as etcd's robustness tests do with theirs; the verdict stays the one
/// the recorded history would get, only cheaper to reach (each open write
/// may double the checker's work).
///
/// * A put or compare-and-set whose (unique) value the store never held
///   had no effect, or none before every operation of the history ended
///   (the read back came after them all): either way the checker may leave
///   it out, so it goes.
/// * One whose value the store took at revision r took effect before any
///   operation that answered at revision r or later returned: it gets that
///   return (its output stays unknown), as the checker does for a write a
///   read observed.
/// * A delete goes unless some delete event of its key is accounted for by
///   no determinate delete; a delete of an absent key changes nothing, so
///   it is never bounded, only kept or dropped.
///
/// If the store's history were wrong (a lost event), this can only make
/// revisions fail to line up: it cannot hide a violation.
fn resolve(history: &[EtcdOperation], applied: &Applied) -> Vec<EtcdOperation> {
    let claimed: HashSet<(&str, i64)> = history
        .iter()
        .filter_map(|op| match (&op.input, op.output.as_ref()?) {
            (
                EtcdInput::Delete { key },
                EtcdOutput::Delete {
                    deleted: 1,
                    revision,
                },
            ) => Some((key.as_str(), *revision)),
            _ => None,
        })
        .collect();
    let unclaimed_deletes: HashSet<&str> = applied
        .deletes
        .iter()
        .filter(|(key, revision)| !claimed.contains(&(key.as_str(), *revision)))
        .map(|(key, _)| key.as_str())
        .collect();
    let mut resolved = Vec::with_capacity(history.len());
    for op in history {
        if op.ret.is_some() {
            resolved.push(op.clone());
            continue;
        }
        match &op.input {
            EtcdInput::Put { value, .. } | EtcdInput::Cas { value, .. } => {
                if let Some(&revision) = applied.puts.get(value) {
                    let mut bounded = op.clone();
                    bounded.ret = answered_at_or_after(history, revision).map(|r| r.max(op.call));
                    resolved.push(bounded);
                }
            }
            EtcdInput::Delete { key } => {
                if unclaimed_deletes.contains(key.as_str()) {
                    resolved.push(op.clone());
                }
            }
            EtcdInput::Get { .. } => {}
        }
    }
    resolved
}

/// When the first operation that answered at `revision` or later returned.
fn answered_at_or_after(history: &[EtcdOperation], revision: i64) -> Option<u64> {
    history
        .iter()
        .filter(|op| {
            op.output
                .as_ref()
                .is_some_and(|o| revision_in(o) >= revision)
        })
        .filter_map(|op| op.ret)
        .min()
}

/// An output's header revision.
fn revision_in(output: &EtcdOutput) -> i64 {
    match output {
        EtcdOutput::Get { revision, .. }
        | EtcdOutput::Put { revision }
        | EtcdOutput::Delete { revision, .. }
        | EtcdOutput::Cas { revision, .. } => *revision,
    }
}

/// Makes one read stale: gives the last read it can the output of an
/// earlier read of the same key that a write, finished before the later
/// read began, has since superseded. Returns what it changed.
fn plant_stale_read(history: &mut [EtcdOperation]) -> Option<String> {
    for target in (0..history.len()).rev() {
        let Some(source) = stale_source(history, target) else {
            continue;
        };
        let description = format!(
            "operation {target} {:?} now returns {:?} (operation {source}'s)",
            history[target].output, history[source].output
        );
        history[target].output = history[source].output.clone();
        return Some(description);
    }
    None
}

/// An earlier read of `target`'s key whose revision is older than a write
/// of that key that returned before `target` was called.
fn stale_source(history: &[EtcdOperation], target: usize) -> Option<usize> {
    let read = &history[target];
    let EtcdInput::Get { key } = &read.input else {
        return None;
    };
    read.output.as_ref()?;
    // The newest revision of a write to `key` known to precede the read.
    let superseded_at = history
        .iter()
        .filter(|w| w.ret.is_some_and(|ret| ret < read.call))
        .filter_map(|w| write_revision(w, key))
        .max()?;
    history.iter().position(|earlier| {
        matches!(&earlier.input, EtcdInput::Get { key: k } if k == key)
            && matches!(&earlier.output, Some(EtcdOutput::Get { revision, .. }) if *revision < superseded_at)
    })
}

/// The revision at which a determinate `op` changed `key`, if it did.
fn write_revision(op: &EtcdOperation, key: &str) -> Option<i64> {
    match (&op.input, op.output.as_ref()?) {
        (EtcdInput::Put { key: k, .. }, EtcdOutput::Put { revision }) if k == key => {
            Some(*revision)
        }
        (
            EtcdInput::Cas { key: k, .. },
            EtcdOutput::Cas {
                succeeded: true,
                revision,
            },
        ) if k == key => Some(*revision),
        (
            EtcdInput::Delete { key: k },
            EtcdOutput::Delete {
                deleted: 1,
                revision,
            },
        ) if k == key => Some(*revision),
        _ => None,
    }
}

/// SplitMix64: a seeded generator, so a run's request mix and client
/// placement replay (the timing, being real, does not).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
