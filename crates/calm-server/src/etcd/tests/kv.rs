//! `KV`: etcd's validation (`v3rpc/key.go`) refuses before the backend;
//! valid requests pass through.

use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::etcdserverpb::request_op::Request as Op;
use calm_proto::etcd::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::Code;

use super::fake::Fake;
use super::{refused, start, start_with};
use crate::etcd::EtcdError::*;
use crate::etcd::Limits;
use crate::etcd::concurrency::{created_at, get, op, put};

fn put_op(key: &[u8]) -> RequestOp {
    op(Op::RequestPut(put(key, b"v", 0)))
}

fn delete_op(key: &[u8], range_end: &[u8]) -> RequestOp {
    op(Op::RequestDeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    }))
}

fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    op(Op::RequestTxn(TxnRequest {
        compare: Vec::new(),
        success,
        failure,
    }))
}

fn then(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success,
        failure: Vec::new(),
    }
}

#[tokio::test]
async fn invalid_requests_get_etcds_errors_and_never_reach_the_backend() {
    let limits = Limits {
        txn_ops_max: 4,
        request_bytes_max: 1024,
        ..Limits::default()
    };
    let node = start_with(Fake::with_snapshot(Vec::new()), limits).await;
    let mut kv = KvClient::new(node.channel.clone());
    let key = b"k".to_vec();
    let ranged = |sort_order, sort_target| RangeRequest {
        key: key.clone(),
        sort_order,
        sort_target,
        ..RangeRequest::default()
    };

    refused(kv.range(RangeRequest::default()).await, EmptyKey);
    refused(kv.range(ranged(3, 0)).await, InvalidSortOption);
    refused(kv.range(ranged(0, 5)).await, InvalidSortOption);
    refused(kv.put(PutRequest::default()).await, EmptyKey);
    let keep_value = PutRequest {
        ignore_value: true,
        ..put(&key, b"v", 0)
    };
    refused(kv.put(keep_value).await, ValueProvided);
    let keep_lease = PutRequest {
        ignore_lease: true,
        ..put(&key, b"", 7)
    };
    refused(kv.put(keep_lease).await, LeaseProvided);
    refused(kv.put(put(&key, &[0; 1024], 0)).await, RequestTooLarge);
    refused(
        kv.delete_range(DeleteRangeRequest::default()).await,
        EmptyKey,
    );

    let five_compares = TxnRequest {
        compare: (0..5).map(|i| created_at(&[b'a' + i], 0)).collect(),
        ..TxnRequest::default()
    };
    refused(kv.txn(five_compares).await, TooManyOps);
    // The outer txn's two ops leave two of four to the nested one.
    let nested_three = then(vec![
        put_op(b"a"),
        txn_op(vec![put_op(b"b"), put_op(b"c"), put_op(b"d")], vec![]),
    ]);
    refused(kv.txn(nested_three).await, TooManyOps);
    let unkeyed_compare = TxnRequest {
        compare: vec![created_at(b"", 0)],
        ..TxnRequest::default()
    };
    refused(kv.txn(unkeyed_compare).await, EmptyKey);
    refused(
        kv.txn(then(vec![RequestOp { request: None }])).await,
        KeyNotFound,
    );
    let unsorted_range = op(Op::RequestRange(ranged(9, 0)));
    refused(kv.txn(then(vec![unsorted_range])).await, InvalidSortOption);
    refused(
        kv.txn(then(vec![put_op(b"a"), put_op(b"a")])).await,
        DuplicateKey,
    );
    let put_in_deleted_range = then(vec![delete_op(b"a", b"c"), put_op(b"b")]);
    refused(kv.txn(put_in_deleted_range).await, DuplicateKey);
    let put_again_nested = then(vec![put_op(b"a"), txn_op(vec![put_op(b"a")], vec![])]);
    refused(kv.txn(put_again_nested).await, DuplicateKey);
    let nested_put_in_deleted = then(vec![
        delete_op(b"a", b"c"),
        txn_op(vec![], vec![put_op(b"b")]),
    ]);
    refused(kv.txn(nested_put_in_deleted).await, DuplicateKey);
    let large_write = then(vec![op(Op::RequestPut(put(b"a", &[0; 1024], 0)))]);
    refused(kv.txn(large_write).await, RequestTooLarge);

    assert_eq!(node.fake.calls(), 0);
}

#[tokio::test]
async fn txns_etcd_accepts_reach_the_backend() {
    let limits = Limits {
        request_bytes_max: 1024,
        ..Limits::default()
    };
    let node = start_with(Fake::with_snapshot(Vec::new()), limits).await;
    let mut kv = KvClient::new(node.channel.clone());
    // Only one branch of a nested txn runs: a key in both is one write.
    let both_branches = then(vec![txn_op(vec![put_op(b"a")], vec![put_op(b"a")])]);
    kv.txn(both_branches).await.expect("accepted");
    // etcd's overlap check reads the from-key end "\0" literally, so a
    // delete-from-key beside a put passes it.
    let from_key_delete = then(vec![delete_op(b"a", &[0]), put_op(b"b")]);
    kv.txn(from_key_delete).await.expect("accepted");
    // A read-only txn is not a log entry: the write limit does not apply.
    let large_read = then(vec![op(Op::RequestRange(get(&[b'k'; 2048])))]);
    kv.txn(large_read).await.expect("accepted");
    assert_eq!(node.fake.calls(), 3);
}

#[tokio::test]
async fn valid_requests_pass_through_with_the_backends_answers() {
    let node = start().await;
    let mut kv = KvClient::new(node.channel.clone());
    let written = kv.put(put(b"k", b"v1", 0)).await.expect("put").into_inner();
    // The store starts at revision 1, as etcd's does.
    assert_eq!(written.header.expect("header").revision, 2);
    let read = kv.range(get(b"k")).await.expect("range").into_inner();
    assert_eq!(read.kvs[0].value, b"v1");
    let swap = TxnRequest {
        compare: vec![created_at(b"k", 2)],
        success: vec![op(Op::RequestPut(put(b"k", b"v2", 0)))],
        failure: Vec::new(),
    };
    assert!(kv.txn(swap).await.expect("txn").into_inner().succeeded);
    assert_eq!(node.fake.value(b"k"), Some(b"v2".to_vec()));
    // A lease the backend does not know: its error passes unchanged.
    refused(kv.put(put(b"k", b"v", 99)).await, LeaseNotFound);
}

#[tokio::test]
async fn range_stream_is_not_offered() {
    let node = start().await;
    let mut kv = KvClient::new(node.channel.clone());
    let status = kv.range_stream(get(b"k")).await.expect_err("not offered");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(node.fake.calls(), 0);
}
