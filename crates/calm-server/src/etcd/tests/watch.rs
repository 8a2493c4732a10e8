//! `Watch`: many watches on one stream, etcd's ids, created-before-events,
//! cancels, progress, refusals, backend cancellations, fragmentation.

use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::watch_client::WatchClient;
use calm_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use calm_proto::etcd::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use calm_proto::etcd::mvccpb::{Event, KeyValue};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{Node, eventually, promptly, start};
use crate::etcd::EtcdError;
use crate::etcd::concurrency::put;
use crate::etcd::watch::fragments;

/// One client watch stream.
struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(node: &Node) -> Self {
        let (requests, outbound) = mpsc::channel(16);
        let responses = WatchClient::new(node.channel.clone())
            .watch(ReceiverStream::new(outbound))
            .await
            .expect("watch stream")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        let request = WatchRequest {
            request_union: Some(request),
        };
        self.requests.send(request).await.expect("stream open");
    }

    async fn create(&mut self, create: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(create)).await;
        self.next().await
    }

    async fn next(&mut self) -> WatchResponse {
        promptly(self.responses.message())
            .await
            .expect("no error")
            .expect("a response")
    }
}

fn on(key: &[u8], range_end: &[u8], watch_id: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        watch_id,
        ..WatchCreateRequest::default()
    }
}

fn keys(response: &WatchResponse) -> Vec<Vec<u8>> {
    let kv = |event: &Event| event.kv.clone().unwrap_or_default().key;
    response.events.iter().map(kv).collect()
}

#[tokio::test]
async fn two_watches_on_one_stream_get_their_own_events_until_canceled() {
    let node = start().await;
    let mut kv = KvClient::new(node.channel.clone());
    let mut stream = Stream::open(&node).await;

    let single = stream.create(on(b"a", b"", 0)).await;
    assert!(single.created && !single.canceled);
    assert_eq!((single.watch_id, single.header.unwrap().revision), (0, 1));
    let prefix = stream.create(on(b"b", b"c", 0)).await;
    assert_eq!((prefix.watch_id, prefix.created), (1, true));

    kv.put(put(b"a", b"1", 0)).await.expect("put");
    let event = stream.next().await;
    assert_eq!((event.watch_id, keys(&event)), (0, vec![b"a".to_vec()]));
    kv.put(put(b"b1", b"2", 0)).await.expect("put");
    let event = stream.next().await;
    assert_eq!((event.watch_id, keys(&event)), (1, vec![b"b1".to_vec()]));
    assert!(!event.created && !event.canceled);

    stream
        .send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 0,
        }))
        .await;
    let canceled = stream.next().await;
    assert_eq!((canceled.watch_id, canceled.canceled), (0, true));
    // The canceled watch's key changes first; only the live watch hears.
    kv.put(put(b"a", b"3", 0)).await.expect("put");
    kv.put(put(b"b2", b"4", 0)).await.expect("put");
    let event = stream.next().await;
    assert_eq!((event.watch_id, keys(&event)), (1, vec![b"b2".to_vec()]));
    assert_eq!(node.fake.live_watches(), 1);
}

#[tokio::test]
async fn watch_ids_are_the_clients_when_given_else_the_next_free() {
    let node = start().await;
    let mut stream = Stream::open(&node).await;
    assert_eq!(stream.create(on(b"a", b"", 0)).await.watch_id, 0);
    assert_eq!(stream.create(on(b"a", b"", 7)).await.watch_id, 7);
    assert_eq!(stream.create(on(b"a", b"", 1)).await.watch_id, 1);
    // etcd's nextID skips ids in use: 1 is taken, so 2.
    assert_eq!(stream.create(on(b"a", b"", 0)).await.watch_id, 2);
    let duplicate = stream.create(on(b"a", b"", 7)).await;
    assert_eq!(
        (duplicate.watch_id, duplicate.created, duplicate.canceled),
        (-1, true, true)
    );
    assert_eq!(
        duplicate.cancel_reason,
        EtcdError::DuplicateWatchId.to_string()
    );
}

#[tokio::test]
async fn refused_creates_answer_created_and_canceled_with_etcds_reason() {
    let node = start().await;
    let mut stream = Stream::open(&node).await;
    let before_history = WatchCreateRequest {
        start_revision: -1,
        ..on(b"a", b"", 0)
    };
    let refusals = [
        (before_history, EtcdError::Compacted),
        (on(b"b", b"a", 0), EtcdError::EmptyWatcherRange),
        (on(b"b", b"b", 0), EtcdError::EmptyWatcherRange),
    ];
    for (create, reason) in refusals {
        let refused = stream.create(create).await;
        assert_eq!(
            (refused.watch_id, refused.created, refused.canceled),
            (-1, true, true)
        );
        assert_eq!(refused.cancel_reason, reason.to_string());
    }
    // "\0" is the from-key end, not an empty range; refused creates used
    // no id.
    let from_key = stream.create(on(b"b", &[0], 0)).await;
    assert_eq!((from_key.watch_id, from_key.canceled), (0, false));
    assert_eq!(node.fake.live_watches(), 1);
}

#[tokio::test]
async fn created_precedes_the_replayed_history() {
    // etcd API guarantee: a watch's created response comes first.
    let node = start().await;
    let mut kv = KvClient::new(node.channel.clone());
    for value in [b"1", b"2", b"3"] {
        kv.put(put(b"a", value, 0)).await.expect("put");
    }
    let mut stream = Stream::open(&node).await;
    // The puts are revisions 2, 3 and 4.
    let from_three = WatchCreateRequest {
        start_revision: 3,
        ..on(b"a", b"", 0)
    };
    assert!(stream.create(from_three).await.created);
    for revision in [3, 4] {
        let event = stream.next().await;
        let kv = event.events[0].kv.clone().unwrap_or_default();
        assert_eq!((event.watch_id, kv.mod_revision), (0, revision));
    }
}

#[tokio::test]
async fn progress_follows_queued_events_with_the_current_revision() {
    let node = start().await;
    let mut kv = KvClient::new(node.channel.clone());
    let mut stream = Stream::open(&node).await;
    stream.create(on(b"a", b"", 0)).await;
    kv.put(put(b"a", b"1", 0)).await.expect("put");
    kv.put(put(b"z", b"2", 0)).await.expect("put");
    stream
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    // The event at revision 2 was queued before the request: it comes
    // first, then the notification for the whole stream (revision 3).
    let event = stream.next().await;
    assert_eq!(event.events.len(), 1);
    let progress = stream.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
    assert_eq!(progress.header.unwrap().revision, 3);
}

#[tokio::test]
async fn a_backend_cancellation_passes_through_with_the_watch_id() {
    let node = start().await;
    let mut stream = Stream::open(&node).await;
    stream.create(on(b"a", b"", 5)).await;
    node.fake.compact_watches(42);
    let canceled = stream.next().await;
    assert_eq!(
        (
            canceled.watch_id,
            canceled.canceled,
            canceled.compact_revision
        ),
        (5, true, 42)
    );
    // The id is free again.
    assert_eq!(stream.create(on(b"a", b"", 5)).await.watch_id, 5);
}

#[tokio::test]
async fn ending_the_stream_cancels_its_watches() {
    let node = start().await;
    let mut stream = Stream::open(&node).await;
    stream.create(on(b"a", b"", 0)).await;
    stream.create(on(b"b", b"", 0)).await;
    assert_eq!(node.fake.live_watches(), 2);
    drop(stream);
    let fake = &node.fake;
    eventually(|| fake.live_watches() == 0).await;
}

fn event(key_bytes: usize, revision: i64) -> Event {
    Event {
        r#type: 0,
        kv: Some(KeyValue {
            key: vec![b'k'; key_bytes],
            mod_revision: revision,
            ..KeyValue::default()
        }),
        prev_kv: None,
    }
}

#[test]
fn fragments_split_large_responses_as_etcd_does() {
    // etcd's sendFragments: each part under the limit (or one event),
    // every part but the last marked, the events unchanged in order.
    for (events, key_bytes, bytes_max) in [(10, 100, 350), (7, 30, 100), (5, 500, 300), (20, 1, 64)]
    {
        let response = WatchResponse {
            watch_id: 3,
            events: (0..events).map(|i| event(key_bytes, i)).collect(),
            ..WatchResponse::default()
        };
        let parts = fragments(response.clone(), bytes_max);
        assert!(
            parts.len() > 1,
            "{events} events of {key_bytes} bytes split"
        );
        let (last, rest) = parts.split_last().unwrap();
        assert!(!last.fragment && rest.iter().all(|part| part.fragment));
        for part in &parts {
            assert!(part.encoded_len() < bytes_max || part.events.len() == 1);
            assert_eq!(part.watch_id, 3);
        }
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|part| part.events).collect();
        assert_eq!(rejoined, response.events);
    }
}

#[test]
fn small_or_single_event_responses_are_not_fragmented() {
    let small = WatchResponse {
        events: vec![event(1, 1), event(1, 2)],
        ..WatchResponse::default()
    };
    assert_eq!(fragments(small.clone(), 1024), vec![small]);
    let single = WatchResponse {
        events: vec![event(4096, 1)],
        ..WatchResponse::default()
    };
    assert_eq!(fragments(single.clone(), 1024), vec![single]);
}
