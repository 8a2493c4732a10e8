//! The `v3lock` service: etcd's `concurrency.Mutex` run against the
//! backend (`v3lock/lock.go`, `client/v3/concurrency/mutex.go`).
//!
//! A contender puts `name/<lease in hex>` under its lease unless the key
//! exists already (then it holds or awaits the lock with that key), and
//! holds the lock once no key under `name/` was created before its own.
//! The header it returns is the lock's fencing token: its revision is
//! past every earlier holder's release.

use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::request_op::Request as Op;
use calm_proto::etcd::etcdserverpb::{DeleteRangeRequest, TxnRequest};
use calm_proto::etcd::v3lockpb::lock_server::Lock;
use calm_proto::etcd::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::backend::Coordinated;
use super::concurrency::{
    Cleanup, created_at, delete_txn, first_created, first_kv, get, op, put, range_at,
    session_lease, wait_deletes, waiter_key, waiters_prefix,
};
use super::error::EtcdError;

/// The `Lock` service over a backend.
pub(crate) struct LockService<B> {
    backend: Arc<B>,
}

impl<B> LockService<B> {
    pub(crate) fn new(backend: Arc<B>) -> Self {
        Self { backend }
    }
}

#[tonic::async_trait]
impl<B: Coordinated> Lock for LockService<B> {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        lock(&self.backend, &request.name, request.lease)
            .await
            .map(Response::new)
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = request.into_inner().key;
        // etcd's server deletes through its own KV, which checks the key.
        if key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let deleted = self
            .backend
            .delete_range(DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            })
            .await?;
        Ok(Response::new(UnlockResponse {
            header: deleted.header,
        }))
    }
}

/// Acquires the lock `name` for `lease` (etcd's `Mutex.Lock`), waiting as
/// long as it takes; if the caller gives up (the future is dropped) or the
/// wait fails, the waiter's key is deleted.
pub(crate) async fn lock<B: Coordinated>(
    backend: &Arc<B>,
    name: &[u8],
    lease: i64,
) -> Result<LockResponse, Status> {
    let lease = session_lease(&**backend, lease).await?;
    let prefix = waiters_prefix(name);
    let key = waiter_key(&prefix, lease);
    let acquired = backend.txn(try_acquire(&prefix, &key, lease)).await?;
    // The waiter's create revision: this txn's if it put the key, the
    // existing key's otherwise (a session re-locking).
    let revision = match acquired.succeeded {
        true => acquired.header.unwrap_or_default().revision,
        false => first_kv(range_at(&acquired, 0)?)?.create_revision,
    };
    let holder = range_at(&acquired, 1)?.kvs.first();
    if holder.is_none_or(|holder| holder.create_revision == revision) {
        return Ok(LockResponse {
            header: acquired.header,
            key,
        });
    }
    let release = Cleanup::new(Arc::clone(backend), delete_txn(&key, None));
    wait_deletes(&**backend, &prefix, revision - 1).await?;
    // The key may have gone with its lease while we waited.
    let current = backend.range(get(&key)).await?;
    release.disarm();
    if current.kvs.is_empty() {
        return Err(EtcdError::SessionExpired.into());
    }
    Ok(LockResponse {
        header: current.header,
        key,
    })
}

/// etcd's `tryAcquire`: if `key` is absent, put it under `lease`; either
/// way read it (on the existing-key path) and the current holder.
fn try_acquire(prefix: &[u8], key: &[u8], lease: i64) -> TxnRequest {
    let holder = op(Op::RequestRange(first_created(prefix)));
    TxnRequest {
        compare: vec![created_at(key, 0)],
        success: vec![op(Op::RequestPut(put(key, b"", lease))), holder.clone()],
        failure: vec![op(Op::RequestRange(get(key))), holder],
    }
}
