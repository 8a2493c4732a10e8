//! The `Watch` service: one task per gRPC stream multiplexes the stream's
//! watches (etcd's `serverWatchStream`, `v3rpc/watch.go`).
//!
//! The task reads the client's requests and the backend's event receivers
//! in one loop and writes every response into one bounded queue, so the
//! order etcd promises falls out of the single writer: a watch's `created`
//! response precedes its events (it is queued before the receiver is
//! polled), its `canceled` response ends them, and a progress notification
//! follows every event it covers.
//!
//! Fragmentation is served: a watch created with `fragment` gets responses
//! larger than the request limit split as etcd splits them.

use std::collections::HashSet;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use calm_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use calm_proto::etcd::etcdserverpb::watch_server::Watch;
use calm_proto::etcd::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt, StreamMap};
use tonic::{Request, Response, Status, Streaming};

use super::Limits;
use super::backend::{Coordinated, WatchEvents};
use super::error::EtcdError;

/// The id a create request leaves at 0 to have the server pick one.
const AUTO_WATCH_ID: i64 = 0;
/// The id of a response that belongs to no watch: a refused create, or a
/// progress notification for the whole stream.
const INVALID_WATCH_ID: i64 = -1;

/// The `Watch` service over a backend.
pub(crate) struct WatchService<B> {
    backend: Arc<B>,
    limits: Limits,
}

impl<B> WatchService<B> {
    pub(crate) fn new(backend: Arc<B>, limits: Limits) -> Self {
        Self { backend, limits }
    }
}

#[tonic::async_trait]
impl<B: Coordinated> Watch for WatchService<B> {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (out, responses) = mpsc::channel(self.limits.stream_responses_queued_max.max(1));
        let session = Session {
            backend: Arc::clone(&self.backend),
            fragment_bytes: self.limits.request_bytes_max,
            feeds: StreamMap::new(),
            fragmented: HashSet::new(),
            next_id: 0,
            out,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(responses)))
    }
}

/// One gRPC watch stream: its watches and its queue to the client.
struct Session<B> {
    backend: Arc<B>,
    /// The size above which a fragmenting watch's responses are split.
    fragment_bytes: usize,
    /// Each live watch's receiver, by watch id. Removing one drops the
    /// receiver, which cancels the watch in the backend.
    feeds: StreamMap<i64, Feed>,
    /// The watches created with `fragment`.
    fragmented: HashSet<i64>,
    /// The next id to try for an auto-numbered watch (etcd's `nextID`).
    next_id: i64,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
}

/// Why a session ends.
enum Stop {
    /// The client went away: nothing more can be sent.
    ClientGone,
    /// The stream ends with this status.
    Failed(Status),
}

impl<B: Coordinated> Session<B> {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        if let Stop::Failed(status) = self.serve(&mut inbound).await {
            tracing::debug!(%status, "etcd watch stream ends");
            // The client may be gone already; then there is no one to tell.
            let _ = self.out.send(Err(status)).await;
        }
        // Dropping `self.feeds` cancels every watch of the stream.
    }

    async fn serve(&mut self, inbound: &mut Streaming<WatchRequest>) -> Stop {
        // As etcd, a client that closes its sending side keeps receiving
        // events until it goes away.
        let mut inbound_open = true;
        loop {
            let step = tokio::select! {
                () = self.out.closed() => Err(Stop::ClientGone),
                request = inbound.next(), if inbound_open => match request {
                    Some(Ok(request)) => self.handle(request).await,
                    Some(Err(status)) => Err(Stop::Failed(status)),
                    None => {
                        inbound_open = false;
                        Ok(())
                    }
                },
                Some((id, item)) = self.feeds.next(), if !self.feeds.is_empty() => {
                    self.forward(id, item).await
                }
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Stop> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => self.progress().await,
            // etcd ignores a request it does not know rather than end the
            // stream.
            None => Ok(()),
        }
    }

    async fn create(&mut self, mut create: WatchCreateRequest) -> Result<(), Stop> {
        if create.key.is_empty() {
            // The smallest key, as etcd reads an absent one.
            create.key = vec![0];
        }
        // The header is read before the watch starts, so its revision is
        // never past the watch's first event: a client resuming from it
        // may see an event twice, never miss one.
        let header = self.header().await?;
        let id = match self.admit(&create) {
            Ok(id) => id,
            Err(refusal) => {
                return self
                    .send(WatchResponse {
                        header: Some(header),
                        watch_id: INVALID_WATCH_ID,
                        created: true,
                        canceled: true,
                        cancel_reason: refusal.to_string(),
                        ..WatchResponse::default()
                    })
                    .await;
            }
        };
        let fragment = create.fragment;
        create.watch_id = id;
        let events = self.backend.watch(create).await.map_err(Stop::Failed)?;
        self.send(WatchResponse {
            header: Some(header),
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        })
        .await?;
        self.feeds.insert(id, Feed::new(events));
        if fragment {
            self.fragmented.insert(id);
        }
        Ok(())
    }

    /// The id a create request gets, or etcd's reason to refuse it.
    fn admit(&mut self, create: &WatchCreateRequest) -> Result<i64, EtcdError> {
        if create.start_revision < 0 {
            return Err(EtcdError::Compacted);
        }
        let end = create.range_end.as_slice();
        // `"\0"` is the from-key end: every key at or after `key`.
        if !end.is_empty() && end != [0] && create.key.as_slice() >= end {
            return Err(EtcdError::EmptyWatcherRange);
        }
        if create.watch_id != AUTO_WATCH_ID {
            return match self.feeds.contains_key(&create.watch_id) {
                true => Err(EtcdError::DuplicateWatchId),
                false => Ok(create.watch_id),
            };
        }
        while self.feeds.contains_key(&self.next_id) {
            // Wrapping: 2^63 watches on one stream are out of reach, and
            // a wrapped id is merely unusual, never a panic.
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        Ok(id)
    }

    async fn cancel(&mut self, id: i64) -> Result<(), Stop> {
        // etcd does not answer a cancel of an unknown watch.
        if self.feeds.remove(&id).is_none() {
            return Ok(());
        }
        self.fragmented.remove(&id);
        let header = self.header().await?;
        self.send(WatchResponse {
            header: Some(header),
            watch_id: id,
            canceled: true,
            ..WatchResponse::default()
        })
        .await
    }

    /// Answers a progress request with a header-only response for the
    /// whole stream (watch id -1), as etcd 3.4 does; 3.5 sends the same
    /// once its watchers are synced.
    async fn progress(&mut self) -> Result<(), Stop> {
        let header = self.header().await?;
        // The backend has queued every event up to the header's revision
        // by the time it answers; sending those first keeps the promise
        // that a progress notification covers only events already sent.
        for (id, item) in self.drain() {
            self.forward(id, item).await?;
        }
        self.send(WatchResponse {
            header: Some(header),
            watch_id: INVALID_WATCH_ID,
            ..WatchResponse::default()
        })
        .await
    }

    /// Everything the backend has queued on every watch, in order per
    /// watch, up to a watch's end.
    fn drain(&mut self) -> Vec<(i64, Option<WatchResponse>)> {
        let mut drained = Vec::new();
        for (id, feed) in self.feeds.iter_mut() {
            while let Some(item) = feed.try_next() {
                let last = item.as_ref().is_none_or(|response| response.canceled);
                drained.push((*id, item));
                if last {
                    break;
                }
            }
        }
        drained
    }

    /// Sends one of the backend's responses for watch `id`; `None` means
    /// the backend closed the watch without a cancellation.
    async fn forward(&mut self, id: i64, item: Option<WatchResponse>) -> Result<(), Stop> {
        let Some(mut response) = item else {
            // The node stopped serving the watch without saying why:
            // ending the stream with a retryable status lets the client
            // resume every watch elsewhere from its last revision.
            return Err(Stop::Failed(EtcdError::Stopped.into()));
        };
        response.watch_id = id;
        response.created = false;
        let fragment = self.fragmented.contains(&id);
        if response.canceled {
            // A backend cancellation (e.g. compaction) is the watch's last.
            self.feeds.remove(&id);
            self.fragmented.remove(&id);
        }
        if !fragment {
            return self.send(response).await;
        }
        for part in fragments(response, self.fragment_bytes) {
            self.send(part).await?;
        }
        Ok(())
    }

    async fn header(&self) -> Result<ResponseHeader, Stop> {
        self.backend.progress().await.map_err(Stop::Failed)
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Stop> {
        self.out
            .send(Ok(response))
            .await
            .map_err(|_| Stop::ClientGone)
    }
}

/// etcd's `sendFragments`: a response of at least `bytes_max` with two or
/// more events is split into responses of at most `bytes_max` each (or of
/// one event, however large), all but the last marked `fragment`.
pub(crate) fn fragments(response: WatchResponse, bytes_max: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < bytes_max || response.events.len() < 2 {
        return vec![response];
    }
    let mut template = response;
    let events = mem::take(&mut template.events);
    template.fragment = true;
    let empty_bytes = template.encoded_len();
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut part_bytes = empty_bytes;
    for event in events {
        let event_len = event.encoded_len();
        // One tag byte (field 11), the length, the event.
        let event_bytes = 1 + prost::length_delimiter_len(event_len) + event_len;
        if !part.is_empty() && part_bytes + event_bytes >= bytes_max {
            parts.push(WatchResponse {
                events: mem::take(&mut part),
                ..template.clone()
            });
            part_bytes = empty_bytes;
        }
        part_bytes += event_bytes;
        part.push(event);
    }
    parts.push(WatchResponse {
        events: part,
        fragment: false,
        ..template
    });
    parts
}

/// One watch's receiver as a stream that says when it ends: `Some(None)`
/// once when the backend closes it, then the end of the stream (which
/// removes it from the session's map).
struct Feed {
    events: WatchEvents,
    closed: bool,
}

impl Feed {
    fn new(events: WatchEvents) -> Self {
        Self {
            events,
            closed: false,
        }
    }

    /// The next queued item without waiting, as the stream would yield it.
    fn try_next(&mut self) -> Option<Option<WatchResponse>> {
        if self.closed {
            return None;
        }
        match self.events.try_recv() {
            Ok(response) => Some(Some(response)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.closed = true;
                Some(None)
            }
        }
    }
}

impl Stream for Feed {
    type Item = Option<WatchResponse>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let feed = self.get_mut();
        if feed.closed {
            return Poll::Ready(None);
        }
        match feed.events.poll_recv(cx) {
            Poll::Ready(Some(response)) => Poll::Ready(Some(Some(response))),
            Poll::Ready(None) => {
                feed.closed = true;
                Poll::Ready(Some(None))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
