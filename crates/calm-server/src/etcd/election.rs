//! The `v3election` service: etcd's `concurrency.Election` run against the
//! backend (`v3election/election.go`,
//! `client/v3/concurrency/election.go`).
//!
//! A candidate puts `name/<lease in hex>` holding its value; the leader is
//! the key under `name/` created first. Campaign waits for every older
//! candidate to go; Proclaim and Resign act only while the leader key is
//! still the one created at the campaign's revision; Observe follows the
//! leader key's values, then the next leader's.

use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::request_op::Request as Op;
use calm_proto::etcd::etcdserverpb::{ResponseHeader, TxnRequest, WatchCreateRequest};
use calm_proto::etcd::mvccpb::KeyValue;
use calm_proto::etcd::mvccpb::event::EventType;
use calm_proto::etcd::v3electionpb::election_server::Election;
use calm_proto::etcd::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Limits;
use super::backend::Coordinated;
use super::concurrency::{
    Cleanup, created_at, delete_txn, first_created, first_kv, get, has_delete, op, prefix_end, put,
    range_at, session_lease, wait_deletes, waiter_key, waiters_prefix,
};
use super::error::EtcdError;

/// The `Election` service over a backend.
pub(crate) struct ElectionService<B> {
    backend: Arc<B>,
    limits: Limits,
}

impl<B> ElectionService<B> {
    pub(crate) fn new(backend: Arc<B>, limits: Limits) -> Self {
        Self { backend, limits }
    }
}

#[tonic::async_trait]
impl<B: Coordinated> Election for ElectionService<B> {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        campaign(&self.backend, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = request.leader.ok_or(EtcdError::MissingLeaderKey)?;
        let header = proclaim(&*self.backend, &leader, &request.value).await?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let prefix = waiters_prefix(&request.into_inner().name);
        let current = self.backend.range(first_created(&prefix)).await?;
        let kv = current
            .kvs
            .into_iter()
            .next()
            .ok_or(EtcdError::ElectionNoLeader)?;
        Ok(Response::new(LeaderResponse {
            header: current.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = waiters_prefix(&request.into_inner().name);
        let (out, responses) = mpsc::channel(self.limits.stream_responses_queued_max.max(1));
        tokio::spawn(observe(Arc::clone(&self.backend), prefix, out));
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = request
            .into_inner()
            .leader
            .ok_or(EtcdError::MissingLeaderKey)?;
        let resigned = self
            .backend
            .txn(delete_txn(&leader.key, Some(leader.rev)))
            .await?;
        Ok(Response::new(ResignResponse {
            header: resigned.header,
        }))
    }
}

/// Campaigns for `request.name` with `request.value` until elected (etcd's
/// `Election.Campaign`); if the caller gives up (the future is dropped)
/// while waiting, the candidacy is resigned.
async fn campaign<B: Coordinated>(
    backend: &Arc<B>,
    request: CampaignRequest,
) -> Result<CampaignResponse, Status> {
    let lease = session_lease(&**backend, request.lease).await?;
    let prefix = waiters_prefix(&request.name);
    let key = waiter_key(&prefix, lease);
    let entered = backend
        .txn(TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![op(Op::RequestPut(put(&key, &request.value, lease)))],
            failure: vec![op(Op::RequestRange(get(&key)))],
        })
        .await?;
    let mut leader = LeaderKey {
        name: request.name,
        key,
        rev: entered.header.unwrap_or_default().revision,
        lease,
    };
    if !entered.succeeded {
        // Already a candidate with this lease: keep the candidacy, with
        // the value asked for now.
        let existing = first_kv(range_at(&entered, 0)?)?;
        leader.rev = existing.create_revision;
        if existing.value != request.value {
            let proclaimed = proclaim(&**backend, &leader, &request.value).await;
            if let Err(status) = proclaimed {
                // etcd resigns on a failed proclaim and reports the
                // proclaim's error, not the resign's.
                let _ = backend.txn(delete_txn(&leader.key, Some(leader.rev))).await;
                return Err(status);
            }
        }
    }
    let resign = Cleanup::new(
        Arc::clone(backend),
        delete_txn(&leader.key, Some(leader.rev)),
    );
    let waited = wait_deletes(&**backend, &prefix, leader.rev - 1).await;
    // A failed wait keeps the candidacy, as etcd does; only an abandoned
    // one is resigned.
    resign.disarm();
    waited?;
    Ok(CampaignResponse {
        header: entered.header,
        leader: Some(leader),
    })
}

/// Puts `value` under the leader key if it still holds the election
/// (etcd's `Election.Proclaim`).
async fn proclaim<B: Coordinated>(
    backend: &B,
    leader: &LeaderKey,
    value: &[u8],
) -> Result<ResponseHeader, Status> {
    let proclaimed = backend
        .txn(TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![op(Op::RequestPut(put(&leader.key, value, leader.lease)))],
            failure: Vec::new(),
        })
        .await?;
    if !proclaimed.succeeded {
        return Err(EtcdError::ElectionNotLeader.into());
    }
    Ok(proclaimed.header.unwrap_or_default())
}

/// The observe stream's task: runs until the client goes away or the
/// observation ends (etcd's `Election.observe`).
async fn observe<B: Coordinated>(
    backend: Arc<B>,
    prefix: Vec<u8>,
    out: mpsc::Sender<Result<LeaderResponse, Status>>,
) {
    tokio::select! {
        () = out.closed() => {}
        result = observe_leaders(&*backend, &prefix, &out) => {
            if let Err(status) = result {
                // The client may be gone already; then no one is told.
                let _ = out.send(Err(status)).await;
            }
        }
    }
}

/// How following one leader key ended.
enum Followed {
    /// The leader resigned or its lease ended: look for the next one.
    Deleted,
    /// The watch ended, or the client left: the stream ends.
    Ended,
}

/// Sends the current leader, then each of its values, then the next
/// leader's, until a watch ends. A range error ends the stream with that
/// error (etcd closes it silently; a status tells the client more).
async fn observe_leaders<B: Coordinated>(
    backend: &B,
    prefix: &[u8],
    out: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    loop {
        let current = backend.range(first_created(prefix)).await?;
        let header = current.header.unwrap_or_default();
        let found = match current.kvs.into_iter().next() {
            Some(kv) => Some((header, kv)),
            None => first_candidate(backend, prefix, header.revision).await?,
        };
        let Some((header, kv)) = found else {
            return Ok(());
        };
        let next_revision = header.revision + 1;
        let key = kv.key.clone();
        let announced = LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        };
        if out.send(Ok(announced)).await.is_err() {
            return Ok(());
        }
        match follow(backend, key, next_revision, out).await? {
            Followed::Deleted => continue,
            Followed::Ended => return Ok(()),
        }
    }
}

/// Waits for the first put under `prefix` from `revision`: the first
/// candidate of an election without one. `None` if the watch ends first.
async fn first_candidate<B: Coordinated>(
    backend: &B,
    prefix: &[u8],
    revision: i64,
) -> Result<Option<(ResponseHeader, KeyValue)>, Status> {
    let mut events = backend
        .watch(WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision: revision,
            ..WatchCreateRequest::default()
        })
        .await?;
    while let Some(response) = events.recv().await {
        let put = response
            .events
            .into_iter()
            .find(|event| event.r#type == EventType::Put as i32)
            .and_then(|event| event.kv);
        if let Some(kv) = put {
            // A response may span revisions: the header says the put's.
            let header = ResponseHeader {
                revision: kv.mod_revision,
                ..response.header.unwrap_or_default()
            };
            return Ok(Some((header, kv)));
        }
        if response.canceled {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Sends each new value of the leader `key` from `revision` on, until the
/// key is deleted or the watch or the client goes.
async fn follow<B: Coordinated>(
    backend: &B,
    key: Vec<u8>,
    revision: i64,
    out: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<Followed, Status> {
    let mut events = backend
        .watch(WatchCreateRequest {
            key,
            start_revision: revision,
            ..WatchCreateRequest::default()
        })
        .await?;
    while let Some(response) = events.recv().await {
        let deleted = has_delete(&response);
        for event in response.events {
            if event.r#type == EventType::Delete as i32 {
                break;
            }
            let value = LeaderResponse {
                header: response.header,
                kv: event.kv,
            };
            if out.send(Ok(value)).await.is_err() {
                return Ok(Followed::Ended);
            }
        }
        if deleted {
            return Ok(Followed::Deleted);
        }
        if response.canceled {
            return Ok(Followed::Ended);
        }
    }
    Ok(Followed::Ended)
}
