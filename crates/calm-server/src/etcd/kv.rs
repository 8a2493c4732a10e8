//! The `KV` service: etcd's request validation (`v3rpc/key.go`), then the
//! backend. A refused request never reaches the backend.

use std::collections::HashSet;
use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::kv_server::Kv;
use calm_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use calm_proto::etcd::etcdserverpb::request_op::Request as Op;
use calm_proto::etcd::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, RequestOp, TxnRequest,
    TxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::Limits;
use super::backend::Coordinated;
use super::error::{EtcdError, unknown_method};

/// The `KV` service over a backend.
pub(crate) struct KvService<B> {
    backend: Arc<B>,
    limits: Limits,
}

impl<B> KvService<B> {
    pub(crate) fn new(backend: Arc<B>, limits: Limits) -> Self {
        Self { backend, limits }
    }

    /// Refuses a write that encodes to more than the limit, as etcd does
    /// when it marshals the request for the Raft log.
    fn check_size(&self, request: &impl Message) -> Result<(), EtcdError> {
        if request.encoded_len() > self.limits.request_bytes_max {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl<B: Coordinated> Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        check_range(&request)?;
        self.backend.range(request).await.map(Response::new)
    }

    // etcd 3.7's chunked range; 3.4 and 3.5 clients never call it.
    type RangeStreamStream = tokio_stream::Empty<Result<RangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(unknown_method("etcdserverpb.KV", "RangeStream"))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        check_put(&request)?;
        self.check_size(&request)?;
        self.backend.put(request).await.map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        check_delete(&request)?;
        self.check_size(&request)?;
        self.backend.delete_range(request).await.map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let request = request.into_inner();
        check_txn(&request, self.limits.txn_ops_max)?;
        // After the cheap checks, so that the overlap check below is
        // bounded by the op limit (etcd's order, for the same reason).
        check_overlaps(&request.success)?;
        check_overlaps(&request.failure)?;
        // A read-only txn is served like a range, outside the log.
        if !is_read_only(&request) {
            self.check_size(&request)?;
        }
        self.backend.txn(request).await.map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.backend
            .compact(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// etcd 3.6's range check: 3.5 accepted unknown sort options and panicked
/// applying them; refusing them is the fix etcd shipped.
fn check_range(request: &RangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(request.sort_order).is_err()
        || SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

fn check_put(request: &PutRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(request: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: the op count (the longest of compares,
/// success and failure) within `ops_max`, every compare keyed, every op
/// valid; a nested txn may hold what its parent leaves of `ops_max`.
fn check_txn(request: &TxnRequest, ops_max: usize) -> Result<(), EtcdError> {
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if ops > ops_max {
        return Err(EtcdError::TooManyOps);
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in request.success.iter().chain(&request.failure) {
        check_op(op, ops_max - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, ops_max: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(Op::RequestRange(range)) => check_range(range),
        Some(Op::RequestPut(put)) => check_put(put),
        Some(Op::RequestDeleteRange(delete)) => check_delete(delete),
        Some(Op::RequestTxn(txn)) => check_txn(txn, ops_max),
        // An empty op: etcd's answer, odd as it reads.
        None => Err(EtcdError::KeyNotFound),
    }
}

/// Whether every op of both branches is a range (etcd's
/// `isTxnReadonly`: a nested txn counts as a write).
fn is_read_only(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| matches!(op.request, Some(Op::RequestRange(_))))
}

/// The keys a list of ops puts and the ranges it deletes, nested txns
/// included.
#[derive(Default)]
struct Writes<'a> {
    puts: HashSet<&'a [u8]>,
    deletes: Vec<KeyInterval<'a>>,
}

/// The half-open key interval `[begin, end)` a delete covers.
///
/// etcd builds it with `adt.NewStringAffineInterval(key, range_end)`,
/// which reads the from-key end `"\0"` literally: such a delete covers no
/// key in this check (etcd accepts a put beside a delete-from-key in one
/// txn). That is kept, since clients may rely on it.
struct KeyInterval<'a> {
    begin: &'a [u8],
    /// `None`: the single key `begin`.
    end: Option<&'a [u8]>,
}

impl KeyInterval<'_> {
    fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            None => key == self.begin,
            Some(end) => self.begin <= key && key < end,
        }
    }
}

impl Writes<'_> {
    fn deletes(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|interval| interval.contains(key))
    }
}

/// etcd's `checkIntervals`: no key is put twice, or put inside a range
/// deleted, by one list of ops and the txns nested in it. A key put in
/// both branches of one nested txn is fine: only one branch runs.
fn check_overlaps(ops: &[RequestOp]) -> Result<Writes<'_>, EtcdError> {
    let mut writes = Writes::default();
    for op in ops {
        if let Some(Op::RequestDeleteRange(delete)) = &op.request {
            let end = (!delete.range_end.is_empty()).then_some(delete.range_end.as_slice());
            writes.deletes.push(KeyInterval {
                begin: &delete.key,
                end,
            });
        }
    }
    for op in ops {
        if let Some(Op::RequestTxn(txn)) = &op.request {
            let then = check_overlaps(&txn.success)?;
            let otherwise = check_overlaps(&txn.failure)?;
            for &key in &then.puts {
                if writes.puts.contains(key) || writes.deletes(key) {
                    return Err(EtcdError::DuplicateKey);
                }
                writes.puts.insert(key);
            }
            for &key in &otherwise.puts {
                let only_else = !then.puts.contains(key);
                if (writes.puts.contains(key) && only_else) || writes.deletes(key) {
                    return Err(EtcdError::DuplicateKey);
                }
                writes.puts.insert(key);
            }
            writes.deletes.extend(then.deletes);
            writes.deletes.extend(otherwise.deletes);
        }
    }
    for op in ops {
        if let Some(Op::RequestPut(put)) = &op.request {
            let key = put.key.as_slice();
            if writes.puts.contains(key) || writes.deletes(key) {
                return Err(EtcdError::DuplicateKey);
            }
            writes.puts.insert(key);
        }
    }
    Ok(writes)
}
