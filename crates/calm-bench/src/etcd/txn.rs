//! `etcd-txn`: compare-and-put, the optimistic update every etcd client
//! builds on (`clientv3/concurrency` STM, Kubernetes' guaranteed update).
//! Each transaction puts the chosen key if its mod revision is still the
//! one last seen, and reads the key otherwise; either answer teaches the
//! key's current mod revision for the next compare.
//!
//! The revisions last seen live in a sharded cache ([`Revisions`]),
//! filled before the run from one keys-only range over the bench's keys,
//! so a key written by an earlier `etcd-put` or `etcd-txn` run does not
//! fail its first compare. A compare then fails only when another client
//! changed the key in between, which the report counts as
//! `compare-failed`. The request and answer shapes here
//! ([`compare_and_put`], [`revision_after`], [`failed_read`]) are also the
//! linearizable counter's (`super::counter`).

use std::time::Duration;

use calm_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::request_op::Request;
use calm_proto::etcd::etcdserverpb::response_op::Response;
use calm_proto::etcd::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use calm_proto::etcd::mvccpb::KeyValue;
use tonic::Code;

use super::revisions::{Revisions, read_prefix};
use super::{EtcdChannels, kv_key, kv_key_number, kv_prefix, within};
use crate::error::BenchError;
use crate::workload::{Done, OpError, Workload};

/// The outcome label of a transaction whose compare failed (it read the
/// key instead of writing it).
pub const COMPARE_FAILED: &str = "compare-failed";

/// `etcd-txn`: `KV.Txn` comparing the chosen key's mod revision with the
/// one last seen; puts on a match, reads the key otherwise.
#[derive(Debug)]
pub struct EtcdTxn {
    channels: EtcdChannels,
    value: Vec<u8>,
    timeout: Duration,
    revisions: Revisions<()>,
}

impl EtcdTxn {
    /// The workload with an empty revision cache: the first transaction on
    /// a key that exists fails its compare.
    pub fn new(channels: EtcdChannels, value: Vec<u8>, timeout: Duration) -> EtcdTxn {
        EtcdTxn {
            channels,
            value,
            timeout,
            revisions: Revisions::new(),
        }
    }

    /// The workload with its cache filled from one keys-only range over the
    /// bench's KV keys below `keys` (the first 100,000 of the prefix at most;
    /// keys beyond start uncached).
    pub async fn start(
        channels: EtcdChannels,
        value: Vec<u8>,
        timeout: Duration,
        keys: u64,
    ) -> Result<EtcdTxn, BenchError> {
        let txn = EtcdTxn::new(channels, value, timeout);
        let read = read_prefix(&txn.channels, timeout, kv_prefix(), true).await;
        let kvs = read.map_err(|error| {
            BenchError::Setup(format!("reading the keys' revisions: {}", error.message))
        })?;
        // The counter's keys share the prefix (`bench/etcd/counter/`) and
        // sort after every numbered key, so they never crowd those out of
        // the range's limit; they have no number and are skipped here.
        for kv in kvs {
            if let Some(key) = kv_key_number(&kv.key).filter(|&key| key < keys) {
                txn.remember(key, kv.mod_revision);
            }
        }
        Ok(txn)
    }

    /// The mod revision last seen of key `key`; 0 (absent) if none was.
    pub fn expected(&self, key: u64) -> i64 {
        self.revisions
            .seen(key)
            .map_or(0, |(revision, ())| revision)
    }

    /// Notes `revision` as key `key`'s mod revision unless a later one was
    /// seen (answers to concurrent transactions arrive in any order).
    pub fn remember(&self, key: u64, revision: i64) {
        self.revisions.remember(key, revision, ());
    }
}

impl Workload for EtcdTxn {
    async fn operate(&self, client: usize, key: u64) -> Result<Done, OpError> {
        let request = txn_request(key, self.expected(key), &self.value);
        let mut kv = KvClient::new(self.channels.channel(client));
        let answer = within(self.timeout, kv.txn(request)).await?.into_inner();
        let revision = revision_after(&answer).ok_or_else(|| OpError {
            code: Code::Internal,
            message: "a txn answer without the key's revision".to_owned(),
        })?;
        self.remember(key, revision);
        Ok(if answer.succeeded {
            Done::default()
        } else {
            Done::counted(COMPARE_FAILED)
        })
    }
}

/// `etcd-txn`'s request on KV key `key`: [`compare_and_put`] of `value`
/// if the key's mod revision is `expected_mod_revision` (0 for an absent
/// key).
pub fn txn_request(key: u64, expected_mod_revision: i64, value: &[u8]) -> TxnRequest {
    compare_and_put(kv_key(key), expected_mod_revision, value.to_vec())
}

/// The optimistic update of `key`: if its mod revision is
/// `expected_mod_revision` (etcd compares an absent key's as 0), put
/// `value`; else range the key. The failure branch reads, linearizably, so
/// a failed compare costs what a client's retry would need anyway.
pub fn compare_and_put(key: Vec<u8>, expected_mod_revision: i64, value: Vec<u8>) -> TxnRequest {
    let compare = Compare {
        result: CompareResult::Equal.into(),
        target: CompareTarget::Mod.into(),
        key: key.clone(),
        target_union: Some(TargetUnion::ModRevision(expected_mod_revision)),
        range_end: Vec::new(),
    };
    let put = Request::RequestPut(PutRequest {
        key: key.clone(),
        value,
        ..PutRequest::default()
    });
    let range = Request::RequestRange(RangeRequest {
        key,
        ..RangeRequest::default()
    });
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp { request: Some(put) }],
        failure: vec![RequestOp {
            request: Some(range),
        }],
    }
}

/// The key's mod revision after a transaction of [`compare_and_put`]
/// answered: the transaction's revision when it put (a put's mod revision
/// is the revision it created), the read key's when the compare failed (0
/// when the key is absent). `None` when the answer lacks it.
pub fn revision_after(answer: &TxnResponse) -> Option<i64> {
    if answer.succeeded {
        return answer.header.as_ref().map(|header| header.revision);
    }
    Some(failed_read(answer)?.map_or(0, |kv| kv.mod_revision))
}

/// What the failure branch of a [`compare_and_put`] read: `Some(None)` for
/// an absent key, `None` when the answer has no range (a succeeded
/// transaction, or a malformed answer).
pub fn failed_read(answer: &TxnResponse) -> Option<Option<&KeyValue>> {
    if answer.succeeded {
        return None;
    }
    match answer.responses.first()?.response.as_ref()? {
        Response::ResponseRange(range) => Some(range.kvs.first()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use calm_proto::etcd::etcdserverpb::{PutResponse, RangeResponse, ResponseHeader, ResponseOp};
    use calm_proto::etcd::mvccpb::KeyValue;

    use super::*;

    #[test]
    fn the_txn_puts_if_the_mod_revision_matches_and_reads_otherwise() {
        let txn = txn_request(7, 41, b"v");
        assert_eq!(txn.compare.len(), 1);
        let compare = &txn.compare[0];
        assert_eq!(compare.key, b"bench/etcd/7");
        assert_eq!(compare.result, i32::from(CompareResult::Equal));
        assert_eq!(compare.target, i32::from(CompareTarget::Mod));
        assert_eq!(compare.target_union, Some(TargetUnion::ModRevision(41)));
        assert!(compare.range_end.is_empty());
        match txn.success.as_slice() {
            [
                RequestOp {
                    request: Some(Request::RequestPut(put)),
                },
            ] => {
                assert_eq!(put.key, b"bench/etcd/7");
                assert_eq!(put.value, b"v");
            }
            other => panic!("success should be one put, got {other:?}"),
        }
        match txn.failure.as_slice() {
            [
                RequestOp {
                    request: Some(Request::RequestRange(range)),
                },
            ] => {
                assert_eq!(range.key, b"bench/etcd/7");
                assert!(range.range_end.is_empty());
                assert!(!range.serializable, "the retry read is linearizable");
            }
            other => panic!("failure should be one range, got {other:?}"),
        }
    }

    fn succeeded_at(revision: i64) -> TxnResponse {
        TxnResponse {
            header: Some(ResponseHeader {
                revision,
                ..ResponseHeader::default()
            }),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(Response::ResponsePut(PutResponse::default())),
            }],
        }
    }

    fn failed_reading(kvs: Vec<KeyValue>) -> TxnResponse {
        TxnResponse {
            header: Some(ResponseHeader {
                revision: 99,
                ..ResponseHeader::default()
            }),
            succeeded: false,
            responses: vec![ResponseOp {
                response: Some(Response::ResponseRange(RangeResponse {
                    count: kvs.len() as i64,
                    kvs,
                    ..RangeResponse::default()
                })),
            }],
        }
    }

    #[test]
    fn the_revision_after_comes_from_the_header_or_the_read_key() {
        // etcd: a put's mod revision is the revision its transaction made.
        assert_eq!(revision_after(&succeeded_at(12)), Some(12));
        let read = KeyValue {
            key: b"bench/etcd/7".to_vec(),
            mod_revision: 8,
            ..KeyValue::default()
        };
        // Not the header's store revision: the key's own.
        assert_eq!(revision_after(&failed_reading(vec![read])), Some(8));
        // etcd compares an absent key's mod revision as 0.
        assert_eq!(revision_after(&failed_reading(Vec::new())), Some(0));
        let mut headless = succeeded_at(12);
        headless.header = None;
        assert_eq!(revision_after(&headless), None);
        let mut empty = failed_reading(Vec::new());
        empty.responses.clear();
        assert_eq!(revision_after(&empty), None);
        // The failure branch's read: none when the put went through, an
        // absent key as Some(None).
        assert_eq!(failed_read(&succeeded_at(12)), None);
        assert_eq!(failed_read(&failed_reading(Vec::new())), Some(None));
        assert_eq!(failed_read(&empty), None);
    }

    #[tokio::test]
    async fn the_cache_keeps_the_latest_revision_seen_per_key() {
        let channels =
            EtcdChannels::connect(&["127.0.0.1:1".to_owned()], 1, Duration::from_secs(1))
                .expect("valid");
        let txn = EtcdTxn::new(channels, Vec::new(), Duration::from_secs(1));
        assert_eq!(txn.expected(5), 0, "unseen keys are expected absent");
        txn.remember(5, 10);
        txn.remember(5, 7);
        assert_eq!(txn.expected(5), 10, "a late, older answer does not win");
        txn.remember(5, 11);
        assert_eq!(txn.expected(5), 11);
        txn.remember(6, 3);
        assert_eq!((txn.expected(5), txn.expected(6)), (11, 3));
    }
}
