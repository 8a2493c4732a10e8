//! `etcd-watch-latency`: how long a write takes to reach the watchers.
//!
//! Before the run, one watcher per endpoint watches the prefix
//! `bench/watch/`, each on a connection of its own. An operation puts a
//! value carrying a fresh operation id to the chosen key under the prefix,
//! notes when the put is acknowledged, and waits until every watcher has
//! received the event with its id; the latency recorded is from the
//! acknowledgement to the last watcher's receipt. A watcher can see the
//! event before the writer sees its acknowledgement (a member notifies
//! watchers and answers the put after the same apply); that counts as 0.
//!
//! etcd's `benchmark watch-latency` times from before the put instead, so
//! its figures include the put; this one isolates delivery, and with one
//! watcher per endpoint covers both the writer's own member and the
//! others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::watch_client::WatchClient;
use calm_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use calm_proto::etcd::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::Streaming;

use super::{EtcdChannels, kind_prefix, prefix_end, within};
use crate::error::BenchError;
use crate::workload::{Done, OpError, Workload, key_name};

/// The kind in the watched keys' names: `bench/watch/<n>`.
const WATCH_KIND: &str = "watch";
/// The bytes of a watched value that carry its operation id (big-endian);
/// values are at least this long whatever `--value-bytes` says.
pub const WATCH_ID_BYTES: usize = 8;

/// Operations waiting for their event, by operation id.
type Pending = Mutex<HashMap<u64, Waiting>>;

/// One operation waiting for its event.
#[derive(Debug)]
struct Waiting {
    /// Watchers that have not received the event yet.
    remaining: usize,
    /// Told the last watcher's receipt time.
    delivered: oneshot::Sender<Instant>,
}

/// `etcd-watch-latency`: puts under a watched prefix and times delivery
/// to every watcher. Dropping it ends the watchers.
#[derive(Debug)]
pub struct EtcdWatchLatency {
    channels: EtcdChannels,
    value_bytes: usize,
    timeout: Duration,
    next_id: AtomicU64,
    // A std mutex, not a tokio one: nothing awaits while it is held.
    pending: Arc<Pending>,
    /// Kept open: a closed request stream may end the watch.
    _requests: Vec<mpsc::Sender<WatchRequest>>,
    /// One per watcher, delivering its events to `pending`.
    receivers: Vec<JoinHandle<()>>,
}

impl EtcdWatchLatency {
    /// Creates one watcher per endpoint of `channels`, each on its own
    /// connection, and waits until each is confirmed, so that no event of
    /// the run is missed. Puts `value_bytes`-byte values (at least
    /// [`WATCH_ID_BYTES`]); each call is bounded by `timeout`.
    pub async fn start(
        channels: EtcdChannels,
        value_bytes: usize,
        timeout: Duration,
    ) -> Result<EtcdWatchLatency, BenchError> {
        let pending = Arc::new(Pending::default());
        let mut requests = Vec::new();
        let mut receivers = Vec::new();
        for (index, endpoint) in channels.endpoints().iter().enumerate() {
            let channel = channels.dedicated(index)?;
            let (sender, responses) = open_watch(channel, timeout).await.map_err(|error| {
                BenchError::Setup(format!("watching on {endpoint}: {}", error.message))
            })?;
            requests.push(sender);
            receivers.push(tokio::spawn(deliver_events(responses, pending.clone())));
        }
        Ok(EtcdWatchLatency {
            channels,
            value_bytes,
            timeout,
            next_id: AtomicU64::new(0),
            pending,
            _requests: requests,
            receivers,
        })
    }

    /// Puts operation `id`'s value to key `key` and waits for every
    /// watcher's receipt.
    async fn put_and_wait(
        &self,
        client: usize,
        key: u64,
        id: u64,
        delivered: oneshot::Receiver<Instant>,
    ) -> Result<Done, OpError> {
        let started = Instant::now();
        let put = PutRequest {
            key: key_name(WATCH_KIND, key).into_bytes(),
            value: watch_value(id, self.value_bytes),
            ..PutRequest::default()
        };
        let mut kv = KvClient::new(self.channels.channel(client));
        within(self.timeout, kv.put(put)).await?;
        let acknowledged = Instant::now();
        let left = self.timeout.saturating_sub(acknowledged - started);
        match tokio::time::timeout(left, delivered).await {
            Ok(Ok(received)) => Ok(Done::with_latency(
                received.saturating_duration_since(acknowledged),
            )),
            // Only a removed entry drops its sender, and only this
            // operation removes its entry without sending.
            Ok(Err(_)) => Err(OpError {
                code: Code::Internal,
                message: format!("put {id}'s wait ended without its event"),
            }),
            Err(_) => Err(OpError {
                code: Code::DeadlineExceeded,
                message: format!(
                    "the event of a put did not reach all {} watchers within {:?}",
                    self.receivers.len(),
                    self.timeout
                ),
            }),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        lock(&self.pending)
    }
}

impl Workload for EtcdWatchLatency {
    async fn operate(&self, client: usize, key: u64) -> Result<Done, OpError> {
        // A watcher that ended would fail every wait only at its timeout.
        if self.receivers.iter().any(JoinHandle::is_finished) {
            return Err(OpError {
                code: Code::Unavailable,
                message: "a watch stream ended".to_owned(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, delivered) = oneshot::channel();
        // Registered before the put leaves: the event may beat its answer.
        self.pending().insert(
            id,
            Waiting {
                remaining: self.receivers.len(),
                delivered: sender,
            },
        );
        let outcome = self.put_and_wait(client, key, id, delivered).await;
        if outcome.is_err() {
            self.pending().remove(&id);
        }
        outcome
    }
}

impl Drop for EtcdWatchLatency {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.abort();
        }
    }
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
    // Every update of the map is one statement, so a poisoned lock still
    // guards a consistent map.
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The request creating the bench's watcher: every key under
/// `bench/watch/`, from now on.
pub fn watch_create_request() -> WatchRequest {
    let prefix = kind_prefix(WATCH_KIND);
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            ..WatchCreateRequest::default()
        })),
    }
}

/// The value operation `id` puts: its id, then zeros up to `value_bytes`.
pub fn watch_value(id: u64, value_bytes: usize) -> Vec<u8> {
    let mut value = id.to_be_bytes().to_vec();
    value.resize(value_bytes.max(WATCH_ID_BYTES), 0);
    value
}

/// The operation id a watched value carries; `None` for a value too short
/// to carry one (a delete's event).
pub fn watch_id(value: &[u8]) -> Option<u64> {
    let id: [u8; WATCH_ID_BYTES] = value.get(..WATCH_ID_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(id))
}

/// Opens a watch stream on `channel` and waits for its confirmation.
async fn open_watch(
    channel: tonic::transport::Channel,
    timeout: Duration,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), OpError> {
    // One request is ever sent; the stream stays open for as long as the
    // sender lives.
    let (sender, requests) = mpsc::channel(1);
    // The create request goes first: a server may send its headers only
    // with its first answer.
    sender
        .send(watch_create_request())
        .await
        .map_err(|_| OpError {
            code: Code::Internal,
            message: "the request stream closed before it opened".to_owned(),
        })?;
    let mut client = WatchClient::new(channel);
    let mut responses = within(timeout, client.watch(ReceiverStream::new(requests)))
        .await?
        .into_inner();
    match within(timeout, responses.message()).await? {
        Some(created) if created.created && !created.canceled => Ok((sender, responses)),
        Some(refused) => Err(OpError {
            code: Code::FailedPrecondition,
            message: format!("the watch was not created: {}", refused.cancel_reason),
        }),
        None => Err(OpError {
            code: Code::Unavailable,
            message: "the watch stream ended before it was created".to_owned(),
        }),
    }
}

/// Hands each event of `responses` to the operation waiting for it, until
/// the stream ends or is cancelled.
async fn deliver_events(mut responses: Streaming<WatchResponse>, pending: Arc<Pending>) {
    while let Ok(Some(response)) = responses.message().await {
        let received = Instant::now();
        let ids = response
            .events
            .iter()
            .filter_map(|event| watch_id(&event.kv.as_ref()?.value));
        deliver(&pending, ids, received);
        if response.canceled {
            return;
        }
    }
}

/// Counts one watcher's receipt of the events of operations `ids` at
/// `received`; an operation whose last watcher this was is told. Ids no
/// operation waits for (another bench's, or one that gave up) are
/// ignored.
fn deliver(pending: &Pending, ids: impl IntoIterator<Item = u64>, received: Instant) {
    let mut pending = lock(pending);
    for id in ids {
        let Some(waiting) = pending.get_mut(&id) else {
            continue;
        };
        waiting.remaining = waiting.remaining.saturating_sub(1);
        if waiting.remaining == 0
            && let Some(done) = pending.remove(&id)
        {
            // The operation may have given up meanwhile; nobody to tell.
            let _ = done.delivered.send(received);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_watcher_covers_exactly_the_watched_prefix() {
        let Some(RequestUnion::CreateRequest(create)) = watch_create_request().request_union else {
            panic!("a create request");
        };
        assert_eq!(create.key, b"bench/watch/");
        assert_eq!(create.range_end, b"bench/watch0");
        // From now on, every event, no previous values: the cheapest watch.
        assert_eq!(create.start_revision, 0);
        assert!(create.filters.is_empty());
        assert!(!create.prev_kv);
        let put_key = key_name(WATCH_KIND, 12).into_bytes();
        assert!(put_key >= create.key && put_key < create.range_end);
    }

    proptest! {
        #[test]
        fn a_watched_value_carries_its_id_and_has_the_asked_size(
            id in any::<u64>(),
            value_bytes in 0usize..4096,
        ) {
            let value = watch_value(id, value_bytes);
            prop_assert_eq!(watch_id(&value), Some(id));
            prop_assert_eq!(value.len(), value_bytes.max(WATCH_ID_BYTES));
        }
    }

    #[test]
    fn a_value_too_short_carries_no_id() {
        assert_eq!(watch_id(b""), None);
        assert_eq!(watch_id(&[1; WATCH_ID_BYTES - 1]), None);
    }

    fn waiting(pending: &Pending, id: u64, watchers: usize) -> oneshot::Receiver<Instant> {
        let (delivered, receiver) = oneshot::channel();
        lock(pending).insert(
            id,
            Waiting {
                remaining: watchers,
                delivered,
            },
        );
        receiver
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_is_told_when_its_last_watcher_has_the_event() {
        let pending = Pending::default();
        let start = Instant::now();
        let mut first = waiting(&pending, 1, 3);
        let mut second = waiting(&pending, 2, 3);
        // Watchers 1 and 2 get both events in one answer, at 1 ms and 2 ms.
        deliver(&pending, [1, 2], start + Duration::from_millis(1));
        deliver(&pending, [2, 1], start + Duration::from_millis(2));
        assert!(first.try_recv().is_err(), "one watcher has not seen it");
        // Watcher 3 sees event 2 at 5 ms, then event 1 at 7 ms.
        deliver(&pending, [2], start + Duration::from_millis(5));
        assert_eq!(
            second.try_recv().ok(),
            Some(start + Duration::from_millis(5))
        );
        deliver(&pending, [1, 99], start + Duration::from_millis(7));
        assert_eq!(
            first.try_recv().ok(),
            Some(start + Duration::from_millis(7))
        );
        // Told operations leave the map; unknown ids changed nothing.
        assert!(lock(&pending).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_that_gave_up_does_not_stop_delivery() {
        let pending = Pending::default();
        drop(waiting(&pending, 1, 1));
        let mut later = waiting(&pending, 2, 1);
        deliver(&pending, [1, 2], Instant::now());
        assert!(later.try_recv().is_ok());
        assert!(lock(&pending).is_empty());
    }
}
