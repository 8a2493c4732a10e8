//! etcd's watch guarantee on real processes: while writers change a few
//! keys through every node (puts, deletes, and txns that change two keys at
//! one revision), one watcher per node follows the whole prefix from
//! revision 1. The Raft leader is killed with SIGKILL and restarted, and a
//! watcher drops its stream on purpose; each watcher reconnects (to the
//! next node when its own is gone) and resumes after the last revision it
//! saw. Every watcher must end with exactly the store's history: the same
//! events, in revision order, none missing, none twice (calm-sim's
//! [`check_watch`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::request_op::Request as RequestOpKind;
use calm_proto::etcd::etcdserverpb::watch_client::WatchClient;
use calm_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use calm_proto::etcd::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest,
};
use calm_proto::etcd::mvccpb::Event;
use calm_sim::watch::{Completeness, WatchViolation, check_watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::harness::{Cluster, eventually};
use crate::linearizable::{agreed_leader, start_raft_cluster};

/// The watched prefix and its range end.
const PREFIX: (&str, &str) = ("watch/", "watch0");
/// The keys the writers change.
const KEYS: [&str; 4] = ["watch/a", "watch/b", "watch/c", "watch/d"];
/// How long a request or a (re)connection may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a watcher waits before reconnecting after its stream broke.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// How long the watchers get to catch up with the store once writes stop.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watcher_gets_the_store_history_once_in_order_across_a_leader_kill_and_reconnects() {
    let mut cluster = start_raft_cluster().await;
    let endpoints: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.client).collect();
    let watchers: Vec<Watcher> = (0..endpoints.len())
        .map(|home| Watcher::start(endpoints.clone(), home))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<JoinHandle<usize>> = (0..endpoints.len())
        .map(|index| tokio::spawn(write(endpoints[index], index, stop.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = agreed_leader(&cluster, &[0, 1, 2])
        .await
        .expect("a leader before the kill");
    let leader_index = leader as usize - 1;
    cluster.kill(leader_index);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A watcher on a live node drops its stream; it must resume, not
    // restart from revision 1 or skip what came meanwhile.
    watchers[(leader_index + 1) % 3].drop_stream();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.spawn(leader_index);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.expect("a writer task");
    }
    assert!(written > 0, "no write was acknowledged\n{}", cluster.logs());

    let truth = store_history(&cluster).await;
    let last = truth.last().map_or(0, revision);
    let caught_up = eventually(CATCH_UP_WITHIN, async || {
        watchers.iter().all(|w| w.through() >= last)
    })
    .await;
    for (index, watcher) in watchers.iter().enumerate() {
        let seen = watcher.events();
        let completeness = if caught_up {
            Completeness::Complete
        } else {
            Completeness::Prefix
        };
        if let Err(violation) = check_watch(&truth, &seen, completeness) {
            panic!(
                "watcher {index} ({} reconnects): {violation}\n{}",
                watcher.reconnects(),
                cluster.logs()
            );
        }
    }
    assert!(
        caught_up,
        "the watchers did not reach revision {last}: {:?}\n{}",
        watchers.iter().map(Watcher::through).collect::<Vec<_>>(),
        cluster.logs()
    );
    assert!(
        watchers.iter().map(Watcher::reconnects).sum::<usize>() >= 2,
        "the kill and the dropped stream made watchers reconnect"
    );
    assert!(
        truth.windows(2).any(|w| revision(&w[0]) == revision(&w[1])),
        "the history holds a revision with two events (a txn)"
    );

    // The same check with a planted fault: a resume at the last seen
    // revision instead of the one after repeats that revision's events.
    let mut repeated = watchers[0].events();
    let at = repeated.len() / 2;
    repeated.insert(at, repeated[at - 1].clone());
    assert!(matches!(
        check_watch(&truth, &repeated, Completeness::Complete),
        Err(WatchViolation::Duplicate { .. } | WatchViolation::OutOfOrder { .. })
    ));
    let mut skipped = watchers[1].events();
    skipped.remove(skipped.len() / 2);
    assert!(matches!(
        check_watch(&truth, &skipped, Completeness::Complete),
        Err(WatchViolation::Gap { .. })
    ));
}

/// One client's watch of the prefix, kept open by a task that reconnects
/// after any break, starting at its home node and moving on to the next
/// one when a (re)connection fails.
struct Watcher {
    state: Arc<WatcherState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct WatcherState {
    /// Every event received, in arrival order.
    events: Mutex<Vec<Event>>,
    reconnects: AtomicUsize,
    /// Set to make the task drop its current stream once.
    drop_stream: AtomicBool,
}

impl Watcher {
    fn start(endpoints: Vec<SocketAddr>, home: usize) -> Watcher {
        let state = Arc::new(WatcherState::default());
        let task = tokio::spawn(follow(endpoints, home, state.clone()));
        Watcher { state, task }
    }

    fn events(&self) -> Vec<Event> {
        self.state.events.lock().unwrap().clone()
    }

    /// The revision of the last event received (0: none).
    fn through(&self) -> i64 {
        self.state.events.lock().unwrap().last().map_or(0, revision)
    }

    fn reconnects(&self) -> usize {
        self.state.reconnects.load(Ordering::Relaxed)
    }

    fn drop_stream(&self) {
        self.state.drop_stream.store(true, Ordering::Relaxed);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watcher's task: watch from the revision after the last event
/// received, forever.
async fn follow(endpoints: Vec<SocketAddr>, home: usize, state: Arc<WatcherState>) {
    let mut node = home;
    loop {
        let after = state.events.lock().unwrap().last().map_or(0, revision);
        match open_watch(endpoints[node], PREFIX, after + 1).await {
            Some(mut responses) => {
                loop {
                    if state.drop_stream.swap(false, Ordering::Relaxed) {
                        break;
                    }
                    let next = tokio::time::timeout(Duration::from_millis(100), responses.next());
                    match next.await {
                        Err(_) => continue,
                        Ok(Some(Ok(response))) if !response.canceled => {
                            state.events.lock().unwrap().extend(response.events);
                        }
                        // A cancel, an error or the end of the stream.
                        Ok(_) => break,
                    }
                }
            }
            None => node = (node + 1) % endpoints.len(),
        }
        state.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

/// The response stream of a watch of the prefix from `start_revision` at
/// `endpoint`, once the server confirmed it; `None` if it cannot be opened.
async fn open_watch(
    endpoint: SocketAddr,
    prefix: (&str, &str),
    start_revision: i64,
) -> Option<tonic::Streaming<calm_proto::etcd::etcdserverpb::WatchResponse>> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.0.as_bytes().to_vec(),
            range_end: prefix.1.as_bytes().to_vec(),
            start_revision,
            ..WatchCreateRequest::default()
        })),
    };
    let open = async {
        let mut client = WatchClient::new(channel(endpoint).await?);
        // The request stream stays open: closing it would end the watch.
        let requests = tokio_stream::iter([create]).chain(tokio_stream::pending());
        let mut responses = client.watch(requests).await.ok()?.into_inner();
        let created = responses.message().await.ok()??;
        (created.created && !created.canceled).then_some(responses)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, open).await.ok()?
}

async fn channel(endpoint: SocketAddr) -> Option<Channel> {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("a valid URI")
        .connect_timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .ok()
}

/// A writer: puts, deletes and two-key txns through `endpoint` until
/// `stop`; returns how many were acknowledged.
async fn write(endpoint: SocketAddr, writer: usize, stop: Arc<AtomicBool>) -> usize {
    let mut acknowledged = 0;
    let mut kv = None;
    let mut step = 0usize;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        if kv.is_none() {
            kv = channel(endpoint).await.map(KvClient::new);
        }
        let Some(client) = kv.as_mut() else {
            tokio::time::sleep(RECONNECT_BACKOFF).await;
            continue;
        };
        let key = KEYS[(writer + step) % KEYS.len()];
        let other = KEYS[(writer + step + 1) % KEYS.len()];
        let value = format!("w{writer}-{step}").into_bytes();
        let sent = match step % 5 {
            0 => {
                let delete = DeleteRangeRequest {
                    key: key.into(),
                    ..DeleteRangeRequest::default()
                };
                tokio::time::timeout(REQUEST_TIMEOUT, client.delete_range(delete))
                    .await
                    .map(|r| r.map(drop))
            }
            1 => {
                let txn = TxnRequest {
                    success: vec![put_op(key, &value), put_op(other, &value)],
                    ..TxnRequest::default()
                };
                tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn))
                    .await
                    .map(|r| r.map(drop))
            }
            _ => {
                let put = PutRequest {
                    key: key.into(),
                    value,
                    ..PutRequest::default()
                };
                tokio::time::timeout(REQUEST_TIMEOUT, client.put(put))
                    .await
                    .map(|r| r.map(drop))
            }
        };
        match sent {
            Ok(Ok(())) => acknowledged += 1,
            // A dead node, an election, a timeout: reconnect and go on.
            _ => {
                kv = None;
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
    acknowledged
}

fn put_op(key: &str, value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(RequestOpKind::RequestPut(PutRequest {
            key: key.into(),
            value: value.to_vec(),
            ..PutRequest::default()
        })),
    }
}

/// The store's history of the prefix: every event up to the current
/// revision, by a fresh watch from revision 1 on the first node that gives
/// it whole.
async fn store_history(cluster: &Cluster) -> Vec<Event> {
    for node in &cluster.nodes {
        let history = tokio::time::timeout(CATCH_UP_WITHIN, history_at(node.client, PREFIX));
        let history = history.await;
        if let Ok(Some(history)) = history {
            return history;
        }
    }
    panic!("no node gave the store's history\n{}", cluster.logs());
}

/// Every event of `prefix` (key, range end) up to the store's current
/// revision, by a watch from revision 1 at `endpoint`; `None` if it cannot
/// be read whole.
pub(crate) async fn history_at(endpoint: SocketAddr, prefix: (&str, &str)) -> Option<Vec<Event>> {
    let mut kv = KvClient::new(channel(endpoint).await?);
    let head = RangeRequest {
        key: prefix.0.as_bytes().to_vec(),
        range_end: prefix.1.as_bytes().to_vec(),
        count_only: true,
        ..RangeRequest::default()
    };
    let current = kv.range(head).await.ok()?.into_inner().header?.revision;
    let mut responses = open_watch(endpoint, prefix, 1).await?;
    let mut events: Vec<Event> = Vec::new();
    while events.last().map_or(0, revision) < current {
        let response = responses.message().await.ok()??;
        if response.canceled {
            return None;
        }
        if response.events.is_empty() && response.header.as_ref()?.revision >= current {
            // The prefix's last change is older than the store's revision.
            break;
        }
        events.extend(response.events);
    }
    Some(events)
}

fn revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}
