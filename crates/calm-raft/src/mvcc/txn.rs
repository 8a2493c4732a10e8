//! Writes and transactions: etcd's request checks (`v3rpc/key.go`), its txn
//! compare, check and execute phases (`etcdserver/txn/txn.go`, `put.go`,
//! `delete.go`), ported over [`Mvcc`].

use std::collections::HashSet;

use calm_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use calm_proto::etcd::etcdserverpb::request_op::Request;
use calm_proto::etcd::etcdserverpb::response_op::Response;
use calm_proto::etcd::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use calm_proto::etcd::mvccpb::KeyValue;

use super::range::{KeyBounds, validate_range_request};
use super::{Mvcc, MvccError, Writer, record_at};

/// Which branch a txn took and, in order, the decisions of the nested txns
/// on that branch. etcd evaluates every compare, nested ones included,
/// against the state before the txn (`compareToPath`), so the whole tree is
/// decided before anything runs.
#[derive(Debug)]
pub(crate) struct Decision {
    succeeded: bool,
    nested: Vec<Decision>,
}

impl Decision {
    fn branch<'a>(&self, request: &'a TxnRequest) -> &'a [RequestOp] {
        if self.succeeded {
            &request.success
        } else {
            &request.failure
        }
    }
}

// ---- Request shape checks (etcd's gRPC layer) ---------------------------

/// etcd's `checkPutRequest`.
pub(crate) fn validate_put_request(request: &PutRequest) -> Result<(), MvccError> {
    if request.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`.
pub(crate) fn validate_delete_request(request: &DeleteRangeRequest) -> Result<(), MvccError> {
    if request.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by its `checkIntervals` on both
/// branches. Nested txns get what is left of `ops_max` after their parent's
/// widest list, as in etcd.
pub(crate) fn validate_txn_request(request: &TxnRequest, ops_max: usize) -> Result<(), MvccError> {
    validate_txn_shape(request, ops_max)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

fn validate_txn_shape(request: &TxnRequest, ops_max: usize) -> Result<(), MvccError> {
    let widest = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if widest > ops_max {
        return Err(MvccError::TooManyOps);
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    let nested_ops_max = ops_max - widest;
    request
        .success
        .iter()
        .chain(&request.failure)
        .try_for_each(|op| validate_request_op(op, nested_ops_max))
}

/// etcd's `checkRequestOp`; an operation with no request is refused with
/// "key not found", as etcd refuses it.
fn validate_request_op(op: &RequestOp, ops_max: usize) -> Result<(), MvccError> {
    match &op.request {
        Some(Request::RequestRange(range)) => validate_range_request(range),
        Some(Request::RequestPut(put)) => validate_put_request(put),
        Some(Request::RequestDeleteRange(delete)) => validate_delete_request(delete),
        Some(Request::RequestTxn(txn)) => validate_txn_shape(txn, ops_max),
        None => Err(MvccError::KeyNotFound),
    }
}

/// The keys a DeleteRange of a txn covers, for the duplicate-key check.
#[derive(Clone, Debug)]
struct DeletedKeys {
    start: Vec<u8>,
    /// `None`: unbounded above.
    end: Option<Vec<u8>>,
}

impl DeletedKeys {
    fn of(request: &DeleteRangeRequest) -> Self {
        let end = match request.range_end.as_slice() {
            // A single key: the smallest key above it ends the interval.
            [] => Some([request.key.as_slice(), &[0]].concat()),
            // etcd's interval tree reads `"\0"` literally, as an empty
            // interval, so a put under a from-key delete passes its check and
            // then crashes etcd's apply loop on `ignore_value`. The interval
            // is what the delete deletes: every key from `key` on.
            [0] => None,
            end => Some(end.to_vec()),
        };
        Self {
            start: request.key.clone(),
            end,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// etcd's `checkIntervals`: refuses a branch that puts a key twice or puts a
/// key a DeleteRange of the branch (or of a txn nested in it) covers. Puts in
/// the two branches of one nested txn may share keys, since only one runs.
/// Returns the branch's put keys and delete intervals for the parent's check.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<DeletedKeys>), MvccError> {
    let mut deletes: Vec<DeletedKeys> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(delete)) => Some(DeletedKeys::of(delete)),
            _ => None,
        })
        .collect();
    let deleted = |deletes: &[DeletedKeys], key: &[u8]| deletes.iter().any(|d| d.contains(key));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = check_intervals(&nested.success)?;
        let (puts_else, deletes_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted(&deletes, key) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in puts_else {
            let clashes = puts.contains(&key) && !puts_then.contains(&key);
            if clashes || deleted(&deletes, &key) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(key);
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deleted(&deletes, &put.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

// ---- Compares -------------------------------------------------------------

impl Mvcc {
    /// Decides a txn and every txn nested on its chosen branch against the
    /// current state (etcd's `compareToPath`).
    pub(crate) fn decide(&self, request: &TxnRequest) -> Decision {
        let succeeded = request
            .compare
            .iter()
            .all(|compare| self.compare_holds(compare));
        let mut decision = Decision {
            succeeded,
            nested: Vec::new(),
        };
        for op in decision.branch(request) {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                decision.nested.push(self.decide(nested));
            }
        }
        decision
    }

    /// etcd's `applyCompare`: every key in the compare's range must satisfy
    /// it; an empty range compares a zero `KeyValue`, except that a value
    /// compare on missing keys always fails (a missing value and an empty one
    /// look alike on the wire).
    fn compare_holds(&self, compare: &Compare) -> bool {
        let bounds = KeyBounds::new(&compare.key, &compare.range_end);
        let mut live = self
            .keys_in(&bounds)
            .filter_map(|(key, records)| record_at(records, self.revision)?.key_value(key))
            .peekable();
        if live.peek().is_none() {
            return compare.target != CompareTarget::Value as i32
                && compare_key_value(compare, &KeyValue::default());
        }
        live.all(|kv| compare_key_value(compare, &kv))
    }
}

/// etcd's `compareKV`. A target union that does not match the target reads
/// as zero (or an empty value); an unknown result holds, as etcd's switch
/// falls through to `true`.
fn compare_key_value(compare: &Compare, kv: &KeyValue) -> bool {
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let expected = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(expected)
        }
        Ok(target) => {
            let (actual, expected) = match (target, &compare.target_union) {
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(r))) => {
                    (kv.create_revision, *r)
                }
                (CompareTarget::Create, _) => (kv.create_revision, 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(r))) => (kv.mod_revision, *r),
                (CompareTarget::Mod, _) => (kv.mod_revision, 0),
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (kv.version, *v),
                (CompareTarget::Version, _) => (kv.version, 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(l))) => (kv.lease, *l),
                (CompareTarget::Lease, _) => (kv.lease, 0),
                (CompareTarget::Value, _) => (0, 0),
            };
            actual.cmp(&expected)
        }
        // etcd leaves the comparison at "equal" for a target it does not know.
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

// ---- Checks against the state before the write ---------------------------

impl Mvcc {
    /// etcd's `checkLease` then `checkAndGetPrevKV`, against the state before
    /// the write.
    pub(crate) fn check_put(
        &self,
        request: &PutRequest,
        lease_exists: &impl Fn(i64) -> bool,
    ) -> Result<(), MvccError> {
        if request.lease != 0 && !lease_exists(request.lease) {
            return Err(MvccError::LeaseNotFound {
                lease: request.lease,
            });
        }
        if (request.ignore_value || request.ignore_lease)
            && self.live(&request.key, self.revision).is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        Ok(())
    }

    /// etcd's `checkRange` inside a txn: 0 reads the current revision,
    /// anything else must be retained and not in the future.
    fn check_txn_range(&self, request: &RangeRequest) -> Result<(), MvccError> {
        if request.revision == 0 {
            return Ok(());
        }
        if request.revision > self.revision {
            return Err(MvccError::FutureRevision {
                requested: request.revision,
                current: self.revision,
            });
        }
        if request.revision < self.compact_revision {
            return Err(MvccError::Compacted {
                requested: request.revision,
                compact_revision: self.compact_revision,
            });
        }
        Ok(())
    }

    /// etcd's `checkTxn`: the dynamic checks of the chosen branch, nested txns
    /// included, all against the state before the txn.
    pub(crate) fn check_branch(
        &self,
        request: &TxnRequest,
        decision: &Decision,
        lease_exists: &impl Fn(i64) -> bool,
    ) -> Result<(), MvccError> {
        let mut nested = decision.nested.iter();
        for op in decision.branch(request) {
            match &op.request {
                Some(Request::RequestRange(range)) => self.check_txn_range(range)?,
                Some(Request::RequestPut(put)) => self.check_put(put, lease_exists)?,
                Some(Request::RequestTxn(txn)) => {
                    let Some(inner) = nested.next() else {
                        continue;
                    };
                    self.check_branch(txn, inner, lease_exists)?;
                }
                Some(Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }
}

// ---- Execution --------------------------------------------------------------

impl Mvcc {
    /// The chosen branch of a checked read-only txn, on a shared
    /// reference ([`Mvcc::read_txn`]).
    pub(crate) fn read_branch(
        &self,
        request: &TxnRequest,
        decision: &Decision,
    ) -> Result<TxnResponse, MvccError> {
        let mut nested = decision.nested.iter();
        let mut responses = Vec::new();
        for op in decision.branch(request) {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => {
                    let at = if range.revision > 0 {
                        range.revision
                    } else {
                        i64::MAX
                    };
                    Response::ResponseRange(self.range_at(range, at))
                }
                Some(Request::RequestTxn(txn)) => {
                    let Some(inner) = nested.next() else {
                        continue;
                    };
                    Response::ResponseTxn(self.read_branch(txn, inner)?)
                }
                Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => {
                    return Err(MvccError::ReadOnly);
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: decision.succeeded,
            responses,
        })
    }

    /// Runs the chosen branch of a checked txn into `writer`.
    pub(crate) fn execute_branch(
        &mut self,
        writer: &mut Writer,
        request: &TxnRequest,
        decision: &Decision,
    ) -> Result<TxnResponse, MvccError> {
        let mut nested = decision.nested.iter();
        let mut responses = Vec::new();
        for op in decision.branch(request) {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => {
                    // A txn reads its own earlier writes: revision 0 reads the
                    // newest state, unfinished changes included.
                    let at = if range.revision > 0 {
                        range.revision
                    } else {
                        i64::MAX
                    };
                    Response::ResponseRange(self.range_at(range, at))
                }
                Some(Request::RequestPut(put)) => {
                    Response::ResponsePut(self.execute_put(writer, put)?)
                }
                Some(Request::RequestDeleteRange(delete)) => {
                    Response::ResponseDeleteRange(self.execute_delete(writer, delete))
                }
                Some(Request::RequestTxn(txn)) => {
                    // `decide` made one decision per nested txn of the branch.
                    let Some(inner) = nested.next() else {
                        continue;
                    };
                    Response::ResponseTxn(self.execute_branch(writer, txn, inner)?)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: decision.succeeded,
            responses,
        })
    }

    /// etcd's `put`: `ignore_value` / `ignore_lease` take the previous
    /// version's value / lease. Fails with [`MvccError::KeyNotFound`] only if
    /// that version is missing, which the checks rule out (the caller then
    /// rolls the writer back).
    pub(crate) fn execute_put(
        &mut self,
        writer: &mut Writer,
        request: &PutRequest,
    ) -> Result<PutResponse, MvccError> {
        let current = self.live(&request.key, i64::MAX);
        let needs_previous = request.ignore_value || request.ignore_lease;
        let value = match (&current, request.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            (None, true) => return Err(MvccError::KeyNotFound),
            (_, false) => request.value.clone(),
        };
        let lease = match &current {
            Some(kv) if request.ignore_lease => kv.lease,
            None if needs_previous => return Err(MvccError::KeyNotFound),
            _ => request.lease,
        };
        let previous = self.write_put(writer, &request.key, value, lease);
        Ok(PutResponse {
            header: None,
            prev_kv: previous.filter(|_| request.prev_kv),
        })
    }

    /// etcd's `deleteRange`, reading the newest state (a txn's earlier writes
    /// included).
    pub(crate) fn execute_delete(
        &mut self,
        writer: &mut Writer,
        request: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let bounds = KeyBounds::new(&request.key, &request.range_end);
        let doomed: Vec<Vec<u8>> = self
            .keys_in(&bounds)
            .filter(|(_, records)| records.last().is_some_and(|r| r.is_put()))
            .map(|(key, _)| key.clone())
            .collect();
        let mut prev_kvs = Vec::new();
        let mut deleted = 0;
        for key in &doomed {
            let Some(previous) = self.write_delete(writer, key) else {
                continue;
            };
            deleted += 1;
            if request.prev_kv {
                prev_kvs.push(previous);
            }
        }
        DeleteRangeResponse {
            header: None,
            deleted,
            prev_kvs,
        }
    }
}
