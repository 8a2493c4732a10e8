//! What the lock and election services share, after etcd's client-side
//! `concurrency` package (`key.go`, `session.go`), which etcd's own
//! `v3lock` and `v3election` servers run against their KV: the waiter
//! keys, the session lease, waiting for older waiters to go, and the
//! cleanup of an abandoned wait.

use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use calm_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use calm_proto::etcd::etcdserverpb::request_op::Request as Op;
use calm_proto::etcd::etcdserverpb::response_op::Response as OpResponse;
use calm_proto::etcd::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchResponse,
};
use calm_proto::etcd::mvccpb::KeyValue;
use calm_proto::etcd::mvccpb::event::EventType;
use tonic::Status;

use super::backend::Coordinated;
use super::error::EtcdError;

/// The lease id meaning "none": a session that names it gets a new lease.
const NO_LEASE: i64 = 0;
/// The TTL of a lease granted for a session that named none, in seconds
/// (etcd's `defaultSessionTTL`).
const SESSION_TTL_SECONDS: i64 = 60;

/// The session's lease: `lease`, or a new lease of etcd's session TTL if
/// it is [`NO_LEASE`]. As in etcd's servers, nobody keeps the new lease
/// alive: the lock or candidacy lasts a minute unless the client renews it.
pub(crate) async fn session_lease<B: Coordinated>(backend: &B, lease: i64) -> Result<i64, Status> {
    if lease != NO_LEASE {
        return Ok(lease);
    }
    let grant = LeaseGrantRequest {
        ttl: SESSION_TTL_SECONDS,
        id: 0,
    };
    Ok(backend.lease_grant(grant).await?.id)
}

/// `name` + `/`: the prefix under which a lock's or election's waiters
/// put their keys.
pub(crate) fn waiters_prefix(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// A waiter's key: the prefix and its lease in lower-case hex, as Go's
/// `%x` prints an `int64` (a sign, then the magnitude).
pub(crate) fn waiter_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = match lease < 0 {
        true => format!("-{:x}", lease.unsigned_abs()),
        false => format!("{lease:x}"),
    };
    [prefix, hex.as_bytes()].concat()
}

/// The end of the range of every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and what follows dropped, or `"\0"` (every key) if there
/// is no such byte.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// The key under `prefix` with the smallest create revision (the
/// lock holder or election leader): etcd's `WithFirstCreate`.
pub(crate) fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..RangeRequest::default()
    }
}

/// The key under `prefix` created last at or before
/// `max_create_revision`: etcd's `WithLastCreate` and `WithMaxCreateRev`.
fn last_created_until(prefix: &[u8], max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..RangeRequest::default()
    }
}

/// A single-key range.
pub(crate) fn get(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..RangeRequest::default()
    }
}

/// A put of `value` under `lease`.
pub(crate) fn put(key: &[u8], value: &[u8], lease: i64) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..PutRequest::default()
    }
}

/// The compare "`key` was created at `revision`" (0: `key` is absent).
pub(crate) fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

/// A txn op from a request.
pub(crate) fn op(request: Op) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// The txn deleting `key` if it was created at `revision` (an election's
/// resign), or unconditionally if `revision` is `None` (a lock's unlock).
pub(crate) fn delete_txn(key: &[u8], revision: Option<i64>) -> TxnRequest {
    TxnRequest {
        compare: revision
            .map(|revision| created_at(key, revision))
            .into_iter()
            .collect(),
        success: vec![op(Op::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        }))],
        failure: Vec::new(),
    }
}

/// The range answer at `index` of a txn's responses.
pub(crate) fn range_at(response: &TxnResponse, index: usize) -> Result<&RangeResponse, Status> {
    match response
        .responses
        .get(index)
        .and_then(|op| op.response.as_ref())
    {
        Some(OpResponse::ResponseRange(range)) => Ok(range),
        _ => Err(Status::internal(format!(
            "the backend's txn response has no range answer at {index}"
        ))),
    }
}

/// The first key a range answered, which the txn's compare guaranteed
/// exists.
pub(crate) fn first_kv(range: &RangeResponse) -> Result<&KeyValue, Status> {
    range
        .kvs
        .first()
        .ok_or_else(|| Status::internal("the backend's txn answered no key where one exists"))
}

/// Waits until no key under `prefix` was created at or before
/// `max_create_revision` (etcd's `waitDeletes`): repeatedly find the
/// newest such key and wait for its delete.
pub(crate) async fn wait_deletes<B: Coordinated>(
    backend: &B,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<(), Status> {
    // No key is created before revision 1. Without this, 0 would read as
    // "no bound" and a waiter created at revision 1 would wait for itself
    // (etcd's store starts at revision 1, so its first write is 2 and
    // etcd never asks this).
    if max_create_revision < 1 {
        return Ok(());
    }
    loop {
        let range = backend
            .range(last_created_until(prefix, max_create_revision))
            .await?;
        let revision = range.header.unwrap_or_default().revision;
        let Some(last) = range.kvs.into_iter().next() else {
            return Ok(());
        };
        wait_delete(backend, last.key, revision).await?;
    }
}

/// Waits for `key`'s delete, watching from `revision` (etcd's
/// `waitDelete`).
async fn wait_delete<B: Coordinated>(
    backend: &B,
    key: Vec<u8>,
    revision: i64,
) -> Result<(), Status> {
    let mut events = backend
        .watch(WatchCreateRequest {
            key,
            start_revision: revision,
            ..WatchCreateRequest::default()
        })
        .await?;
    while let Some(response) = events.recv().await {
        if has_delete(&response) {
            return Ok(());
        }
        if response.canceled {
            return Err(watch_error(&response));
        }
    }
    Err(EtcdError::LostWatcher.into())
}

/// Whether a watch response holds a delete.
pub(crate) fn has_delete(response: &WatchResponse) -> bool {
    response
        .events
        .iter()
        .any(|event| event.r#type == EventType::Delete as i32)
}

/// The error etcd's client reports for a watch the server canceled.
pub(crate) fn watch_error(response: &WatchResponse) -> Status {
    match response.compact_revision {
        0 => Status::unknown(response.cancel_reason.clone()),
        _ => EtcdError::Compacted.into(),
    }
}

/// A txn to run if the RPC is abandoned before it completes: etcd's
/// servers release a lock, or resign a candidacy, when their client's
/// context ends while they wait. Here the RPC's future is dropped, so the
/// cleanup is spawned from `drop`.
pub(crate) struct Cleanup<B: Coordinated> {
    backend: Arc<B>,
    txn: Option<TxnRequest>,
}

impl<B: Coordinated> Cleanup<B> {
    /// Runs `txn` on drop unless [`Cleanup::disarm`] is called first.
    pub(crate) fn new(backend: Arc<B>, txn: TxnRequest) -> Self {
        Self {
            backend,
            txn: Some(txn),
        }
    }

    /// The wait completed (or failed in a way etcd does not clean up).
    pub(crate) fn disarm(mut self) {
        self.txn = None;
    }
}

impl<B: Coordinated> Drop for Cleanup<B> {
    fn drop(&mut self) {
        let Some(txn) = self.txn.take() else {
            return;
        };
        // Outside a runtime (only at shutdown) there is nothing to run it
        // on; the waiter's key then goes with its lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = Arc::clone(&self.backend);
        runtime.spawn(async move {
            if let Err(status) = backend.txn(txn).await {
                tracing::debug!(%status, "etcd lock or election cleanup failed");
            }
        });
    }
}
