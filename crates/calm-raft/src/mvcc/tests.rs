//! Unit tests of the MVCC store against etcd's documented and observed
//! behaviour. Every write goes through [`Harness`], which persists each batch
//! into a memory engine and checks that [`Mvcc::load`] rebuilds the same
//! store, and that a refused request left the store and its batch untouched.

use std::collections::HashSet;

use calm_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use calm_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use calm_proto::etcd::etcdserverpb::request_op::Request;
use calm_proto::etcd::etcdserverpb::response_op::Response;
use calm_proto::etcd::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use calm_proto::etcd::mvccpb::{Event, KeyValue, event::EventType};
use calm_storage::{Limits, MemoryEngine, Op, Storage, WriteBatch};

use super::*;

// ---- Harness and request builders ----------------------------------------

/// A store whose every batch is written to a memory engine.
pub(super) struct Harness {
    pub(super) mvcc: Mvcc,
    pub(super) engine: MemoryEngine,
    /// Every event applied so far, in order.
    pub(super) events: Vec<Event>,
    leases: HashSet<i64>,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self {
            mvcc: Mvcc::new(),
            engine: MemoryEngine::new(Limits::default()),
            events: Vec::new(),
            leases: HashSet::from([1, 2]),
        }
    }

    /// Runs one mutating call; checks that a failure changed nothing and that
    /// a success persists to what `load` rebuilds.
    fn apply<R>(
        &mut self,
        call: impl FnOnce(&mut Mvcc, &HashSet<i64>, &mut WriteBatch) -> Result<R, MvccError>,
    ) -> Result<R, MvccError> {
        let before = self.mvcc.clone();
        let mut batch = WriteBatch::new();
        let result = call(&mut self.mvcc, &self.leases, &mut batch);
        if result.is_err() {
            assert_eq!(self.mvcc, before, "a refused request changed the store");
            assert!(batch.is_empty(), "a refused request wrote {batch:?}");
            return result;
        }
        self.engine
            .write(&batch)
            .expect("the batch fits the engine's limits");
        self.assert_reloads();
        result
    }

    pub(super) fn assert_reloads(&self) {
        let loaded = Mvcc::load(&self.engine).expect("stored state loads");
        assert_eq!(loaded, self.mvcc, "load did not rebuild the store");
    }

    pub(super) fn put_request(
        &mut self,
        request: PutRequest,
    ) -> Result<Applied<PutResponse>, MvccError> {
        let applied = self.apply(|mvcc, leases, batch| {
            mvcc.put(&request, |lease| leases.contains(&lease), batch)
        })?;
        self.events.extend(applied.events.clone());
        Ok(applied)
    }

    pub(super) fn put(&mut self, key: &str, value: &str) -> Applied<PutResponse> {
        self.put_request(put_req(key, value)).expect("put succeeds")
    }

    pub(super) fn delete(&mut self, key: &str, range_end: &str) -> Applied<DeleteRangeResponse> {
        let request = delete_req(key, range_end);
        let applied = self
            .apply(|mvcc, _, batch| mvcc.delete_range(&request, batch))
            .expect("delete succeeds");
        self.events.extend(applied.events.clone());
        applied
    }

    pub(super) fn txn(&mut self, request: TxnRequest) -> Result<Applied<TxnResponse>, MvccError> {
        let applied = self.apply(|mvcc, leases, batch| {
            mvcc.txn(&request, |lease| leases.contains(&lease), batch)
        })?;
        self.events.extend(applied.events.clone());
        Ok(applied)
    }

    pub(super) fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        self.apply(|mvcc, _, batch| mvcc.compact(revision, batch))
            .map(|_| ())
    }

    fn range(&self, request: RangeRequest) -> RangeResponse {
        self.mvcc.range(&request).expect("range succeeds")
    }
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

pub(super) fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: bytes(key),
        value: bytes(value),
        ..PutRequest::default()
    }
}

pub(super) fn delete_req(key: &str, range_end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: bytes(key),
        range_end: bytes(range_end),
        prev_kv: false,
    }
}

fn range_req(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: bytes(key),
        range_end: bytes(range_end),
        ..RangeRequest::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(key, value))),
    }
}

fn delete_op(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(delete_req(key, range_end))),
    }
}

fn range_op(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(range_req(key, range_end))),
    }
}

fn txn_op(txn: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(txn)),
    }
}

fn txn_of(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn compare(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: bytes(key),
        range_end: Vec::new(),
        target_union: Some(union),
    }
}

fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn values_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect()
}

fn range_response_of(response: &ResponseOp) -> &RangeResponse {
    match &response.response {
        Some(Response::ResponseRange(range)) => range,
        other => panic!("expected a range response, got {other:?}"),
    }
}

// ---- Revisions, versions, create revisions ---------------------------------

#[test]
fn fresh_store_is_at_revision_one_with_no_keys() {
    // etcd starts at revision 1 with no keys.
    let h = Harness::new();
    assert_eq!(h.mvcc.revision(), 1);
    assert_eq!(h.mvcc.compact_revision(), 0);
    assert_eq!(h.range(range_req("\0", "\0")).count, 0);
    h.assert_reloads();
}

#[test]
fn put_sets_create_and_mod_revision_to_its_revision_and_version_one() {
    let mut h = Harness::new();
    h.put("a", "1");
    assert_eq!(h.mvcc.revision(), 2);
    let kv = &h.range(range_req("a", "")).kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
}

#[test]
fn updates_keep_create_revision_and_count_versions() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("b", "x");
    h.put("a", "2");
    h.put("a", "3");
    let kv = &h.range(range_req("a", "")).kvs[0];
    assert_eq!(kv.value, b"3");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 5, 3));
}

#[test]
fn delete_resets_version_and_a_recreate_gets_a_new_create_revision() {
    // etcd: "A deletion resets the version to zero".
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("a", "2");
    let deleted = h.delete("a", "");
    assert_eq!(deleted.response.deleted, 1);
    assert_eq!(h.mvcc.revision(), 4);
    assert!(h.range(range_req("a", "")).kvs.is_empty());
    h.put("a", "3");
    let kv = &h.range(range_req("a", "")).kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn deleting_nothing_does_not_bump_the_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let applied = h.delete("b", "");
    assert_eq!(applied.response.deleted, 0);
    assert!(applied.events.is_empty());
    assert_eq!(h.mvcc.revision(), 2);
}

// ---- Range: key ranges, revisions, limits, sorting, filters ---------------

fn abc_store() -> Harness {
    let mut h = Harness::new();
    for (key, value) in [("a", "3"), ("ab", "1"), ("b", "2"), ("c", "0")] {
        h.put(key, value);
    }
    h
}

fn check_keys(h: &Harness, key: &str, range_end: &str, expected: &[&str]) {
    let response = h.range(range_req(key, range_end));
    assert_eq!(
        keys_of(&response.kvs),
        expected,
        "range [{key:?}, {range_end:?})"
    );
    assert_eq!(response.count, expected.len() as i64);
    assert!(!response.more);
}

#[test]
fn range_end_selects_one_key_a_prefix_a_span_or_everything_above() {
    let h = abc_store();
    check_keys(&h, "a", "", &["a"]);
    check_keys(&h, "a", "b", &["a", "ab"]); // prefix "a"
    check_keys(&h, "ab", "c", &["ab", "b"]);
    check_keys(&h, "ab", "\0", &["ab", "b", "c"]); // "\0": every key >= key
    check_keys(&h, "\0", "\0", &["a", "ab", "b", "c"]);
    check_keys(&h, "c", "a", &[]); // an inverted range is empty, not an error
    check_keys(&h, "zz", "", &[]);
}

#[test]
fn range_with_an_empty_key_is_refused() {
    let h = abc_store();
    assert_eq!(h.mvcc.range(&range_req("", "\0")), Err(MvccError::EmptyKey));
}

#[test]
fn range_reads_past_revisions_and_refuses_future_and_compacted_ones() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.delete("a", ""); // 4
    let at = |h: &Harness, revision| {
        let request = RangeRequest {
            revision,
            ..range_req("a", "")
        };
        h.mvcc.range(&request).map(|r| values_of(&r.kvs))
    };
    assert_eq!(at(&h, 1), Ok(vec![]));
    assert_eq!(at(&h, 2), Ok(vec!["1".to_string()]));
    assert_eq!(at(&h, 3), Ok(vec!["2".to_string()]));
    assert_eq!(at(&h, 4), Ok(vec![]));
    assert_eq!(at(&h, 0), Ok(vec![]));
    assert!(matches!(
        at(&h, 5),
        Err(MvccError::FutureRevision {
            requested: 5,
            current: 4
        })
    ));
    h.compact(3).expect("compacts");
    // etcd reads at the compact revision itself; below it is gone.
    assert_eq!(at(&h, 3), Ok(vec!["2".to_string()]));
    assert!(matches!(
        at(&h, 2),
        Err(MvccError::Compacted {
            requested: 2,
            compact_revision: 3
        })
    ));
}

#[test]
fn limit_cuts_the_answer_sets_more_and_count_stays_the_total() {
    let h = abc_store();
    let request = RangeRequest {
        limit: 2,
        ..range_req("\0", "\0")
    };
    let response = h.range(request);
    assert_eq!(keys_of(&response.kvs), ["a", "ab"]);
    assert!(response.more);
    assert_eq!(response.count, 4);
    // A limit that fits everything leaves `more` unset; a negative one is no limit.
    for limit in [4, 10, -1] {
        let response = h.range(RangeRequest {
            limit,
            ..range_req("\0", "\0")
        });
        assert_eq!(response.kvs.len(), 4, "limit {limit}");
        assert!(!response.more, "limit {limit}");
    }
}

fn sorted(h: &Harness, target: SortTarget, order: SortOrder, limit: i64) -> Vec<String> {
    let request = RangeRequest {
        sort_target: target as i32,
        sort_order: order as i32,
        limit,
        ..range_req("\0", "\0")
    };
    keys_of(&h.range(request).kvs)
}

#[test]
fn sort_orders_by_each_target_and_limits_after_sorting() {
    let mut h = abc_store(); // a=3@2, ab=1@3, b=2@4, c=0@5
    h.put("b", "2"); // b: version 2, mod 6
    h.put("b", "2"); // b: version 3, mod 7
    h.put("a", "3"); // a: version 2, mod 8
    use SortOrder::{Ascend, Descend, None as Unsorted};
    use SortTarget::{Create, Key, Mod, Value, Version};
    assert_eq!(sorted(&h, Key, Ascend, 0), ["a", "ab", "b", "c"]);
    assert_eq!(sorted(&h, Key, Descend, 0), ["c", "b", "ab", "a"]);
    assert_eq!(sorted(&h, Key, Unsorted, 0), ["a", "ab", "b", "c"]);
    assert_eq!(sorted(&h, Value, Ascend, 0), ["c", "ab", "b", "a"]);
    assert_eq!(sorted(&h, Value, Descend, 0), ["a", "b", "ab", "c"]);
    // etcd: a target other than the key with no order sorts ascending.
    assert_eq!(sorted(&h, Value, Unsorted, 0), ["c", "ab", "b", "a"]);
    assert_eq!(sorted(&h, Create, Descend, 0), ["c", "b", "ab", "a"]);
    assert_eq!(sorted(&h, Mod, Ascend, 0), ["ab", "c", "b", "a"]);
    assert_eq!(sorted(&h, Version, Descend, 0), ["b", "a", "ab", "c"]);
    // The limit applies to the sorted keys, not to the first keys by name.
    assert_eq!(sorted(&h, Mod, Descend, 2), ["a", "b"]);
}

#[test]
fn unknown_sort_options_are_refused() {
    let h = abc_store();
    for (order, target) in [(3, 0), (0, 5), (-1, 0)] {
        let request = RangeRequest {
            sort_order: order,
            sort_target: target,
            ..range_req("a", "")
        };
        assert_eq!(h.mvcc.range(&request), Err(MvccError::InvalidSortOption));
    }
}

#[test]
fn keys_only_drops_values_and_count_only_drops_keys() {
    let h = abc_store();
    let keys_only = h.range(RangeRequest {
        keys_only: true,
        ..range_req("a", "b")
    });
    assert_eq!(keys_of(&keys_only.kvs), ["a", "ab"]);
    assert!(
        keys_only
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1)
    );
    let count_only = h.range(RangeRequest {
        count_only: true,
        ..range_req("a", "\0")
    });
    assert!(count_only.kvs.is_empty());
    assert_eq!(count_only.count, 4);
}

#[test]
fn revision_filters_prune_after_counting() {
    let mut h = abc_store(); // a@2, ab@3, b@4, c@5
    h.put("a", "again"); // a: create 2, mod 6
    let filtered = |request: RangeRequest| {
        let response = h.range(request);
        (keys_of(&response.kvs), response.count, response.more)
    };
    let all = range_req("\0", "\0");
    assert_eq!(
        filtered(RangeRequest {
            min_mod_revision: 4,
            ..all.clone()
        }),
        (vec!["a".into(), "b".into(), "c".into()], 4, false)
    );
    assert_eq!(
        filtered(RangeRequest {
            max_mod_revision: 4,
            ..all.clone()
        }),
        (vec!["ab".into(), "b".into()], 4, false)
    );
    assert_eq!(
        filtered(RangeRequest {
            min_create_revision: 3,
            max_create_revision: 4,
            ..all.clone()
        }),
        (vec!["ab".into(), "b".into()], 4, false)
    );
    // With a filter, the limit applies to what survives it.
    assert_eq!(
        filtered(RangeRequest {
            min_mod_revision: 4,
            limit: 2,
            ..all
        }),
        (vec!["a".into(), "b".into()], 4, true)
    );
}

// ---- Put -----------------------------------------------------------------

#[test]
fn put_returns_the_previous_version_only_when_asked() {
    let mut h = Harness::new();
    h.put("a", "1");
    let quiet = h.put("a", "2");
    assert_eq!(quiet.response.prev_kv, None);
    // The event carries it regardless: the lessor needs it.
    assert_eq!(
        quiet.events[0].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(bytes("1"))
    );
    let asked = h
        .put_request(PutRequest {
            prev_kv: true,
            ..put_req("a", "3")
        })
        .expect("put succeeds");
    let previous = asked
        .response
        .prev_kv
        .expect("asked for the previous version");
    assert_eq!(
        (previous.value, previous.mod_revision, previous.version),
        (bytes("2"), 3, 2)
    );
}

#[test]
fn ignore_value_and_ignore_lease_keep_what_the_key_has() {
    let mut h = Harness::new();
    h.put_request(PutRequest {
        lease: 1,
        ..put_req("a", "v")
    })
    .expect("put with a granted lease");
    h.put_request(PutRequest {
        ignore_value: true,
        lease: 2,
        ..put_req("a", "")
    })
    .expect("ignore_value put");
    let kv = h.range(range_req("a", "")).kvs[0].clone();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v"[..], 2, 2)
    );
    h.put_request(PutRequest {
        ignore_lease: true,
        ..put_req("a", "w")
    })
    .expect("ignore_lease put");
    let kv = h.range(range_req("a", "")).kvs[0].clone();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"w"[..], 2, 3)
    );
}

#[test]
fn put_refusals_match_etcd() {
    let mut h = Harness::new();
    let refused = |h: &mut Harness, request: PutRequest| h.put_request(request).map(|_| ());
    assert_eq!(refused(&mut h, put_req("", "v")), Err(MvccError::EmptyKey));
    let ignore_value = PutRequest {
        ignore_value: true,
        ..put_req("a", "")
    };
    assert_eq!(
        refused(&mut h, ignore_value.clone()),
        Err(MvccError::KeyNotFound)
    );
    let ignore_lease = PutRequest {
        ignore_lease: true,
        ..put_req("a", "v")
    };
    assert_eq!(refused(&mut h, ignore_lease), Err(MvccError::KeyNotFound));
    assert_eq!(
        refused(
            &mut h,
            PutRequest {
                value: bytes("v"),
                ..ignore_value
            }
        ),
        Err(MvccError::ValueProvided)
    );
    assert_eq!(
        refused(
            &mut h,
            PutRequest {
                ignore_lease: true,
                lease: 1,
                ..put_req("a", "v")
            }
        ),
        Err(MvccError::LeaseProvided)
    );
    assert_eq!(
        refused(
            &mut h,
            PutRequest {
                lease: 9,
                ..put_req("a", "v")
            }
        ),
        Err(MvccError::LeaseNotFound { lease: 9 })
    );
    assert_eq!(h.mvcc.revision(), 1);
}

// ---- DeleteRange ------------------------------------------------------------

#[test]
fn delete_range_deletes_every_key_in_range_at_one_revision() {
    let mut h = abc_store();
    let request = DeleteRangeRequest {
        prev_kv: true,
        ..delete_req("a", "b")
    };
    let applied = h
        .apply(|mvcc, _, batch| mvcc.delete_range(&request, batch))
        .expect("delete succeeds");
    assert_eq!(applied.response.deleted, 2);
    assert_eq!(keys_of(&applied.response.prev_kvs), ["a", "ab"]);
    assert_eq!(h.mvcc.revision(), 6);
    // etcd's delete event: the key, with the deletion's revision as mod_revision.
    for event in &applied.events {
        assert_eq!(event.r#type, EventType::Delete as i32);
        let kv = event.kv.as_ref().expect("an event has a kv");
        assert_eq!((kv.mod_revision, kv.version, kv.create_revision), (6, 0, 0));
        assert!(event.prev_kv.is_some());
    }
    check_keys(&h, "\0", "\0", &["b", "c"]);
}

// ---- Txn ---------------------------------------------------------------------

fn check_compare(h: &mut Harness, compare: Compare, expected: bool) {
    let request = txn_of(vec![compare.clone()], vec![], vec![]);
    let applied = h.txn(request).expect("txn succeeds");
    assert_eq!(applied.response.succeeded, expected, "{compare:?}");
}

#[test]
fn txn_compares_each_target_with_each_result() {
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{Create, Lease, Mod, Value, Version};
    let mut h = Harness::new();
    h.put("a", "m"); // 2
    h.put_request(PutRequest {
        lease: 1,
        ..put_req("a", "n")
    })
    .expect("put"); // 3: a = n, create 2, mod 3, version 2, lease 1
    let cases = [
        (
            Value,
            TargetUnion::Value(bytes("n")),
            [true, false, false, false],
        ),
        (
            Value,
            TargetUnion::Value(bytes("m")),
            [false, true, false, true],
        ),
        (
            Value,
            TargetUnion::Value(bytes("o")),
            [false, false, true, true],
        ),
        (
            Version,
            TargetUnion::Version(2),
            [true, false, false, false],
        ),
        (Version, TargetUnion::Version(1), [false, true, false, true]),
        (
            Create,
            TargetUnion::CreateRevision(3),
            [false, false, true, true],
        ),
        (
            Create,
            TargetUnion::CreateRevision(2),
            [true, false, false, false],
        ),
        (
            Mod,
            TargetUnion::ModRevision(3),
            [true, false, false, false],
        ),
        (Mod, TargetUnion::ModRevision(2), [false, true, false, true]),
        (Lease, TargetUnion::Lease(1), [true, false, false, false]),
        (Lease, TargetUnion::Lease(0), [false, true, false, true]),
    ];
    for (target, union, [equal, greater, less, not_equal]) in cases {
        for (result, expected) in [
            (Equal, equal),
            (Greater, greater),
            (Less, less),
            (NotEqual, not_equal),
        ] {
            check_compare(
                &mut h,
                compare("a", target, result, union.clone()),
                expected,
            );
        }
    }
}

#[test]
fn compares_on_a_missing_key_see_zeros_but_a_value_compare_fails() {
    let mut h = Harness::new();
    // The idiom for "key does not exist": create_revision == 0.
    check_compare(
        &mut h,
        compare(
            "x",
            CompareTarget::Create,
            CompareResult::Equal,
            TargetUnion::CreateRevision(0),
        ),
        true,
    );
    check_compare(
        &mut h,
        compare(
            "x",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        ),
        true,
    );
    // etcd: a value compare on a missing key always fails, even "!= x".
    check_compare(
        &mut h,
        compare(
            "x",
            CompareTarget::Value,
            CompareResult::NotEqual,
            TargetUnion::Value(bytes("y")),
        ),
        false,
    );
    check_compare(
        &mut h,
        compare(
            "x",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(vec![]),
        ),
        false,
    );
}

#[test]
fn a_compare_with_range_end_must_hold_for_every_key_in_the_range() {
    let mut h = abc_store(); // versions all 1
    h.put("ab", "again"); // ab: version 2
    let mut all_version_one = compare(
        "a",
        CompareTarget::Version,
        CompareResult::Equal,
        TargetUnion::Version(1),
    );
    all_version_one.range_end = bytes("b");
    check_compare(&mut h, all_version_one.clone(), false);
    all_version_one.range_end = bytes("ab");
    check_compare(&mut h, all_version_one.clone(), true);
    all_version_one.key = bytes("b");
    all_version_one.range_end = bytes("\0");
    check_compare(&mut h, all_version_one, true);
}

#[test]
fn a_txn_runs_its_branch_at_one_revision_with_sub_revisions() {
    let mut h = Harness::new();
    h.put("x", "old");
    let request = txn_of(
        vec![],
        vec![put_op("a", "1"), put_op("b", "2"), delete_op("x", "")],
        vec![],
    );
    let applied = h.txn(request).expect("txn succeeds");
    assert!(applied.response.succeeded);
    assert_eq!(h.mvcc.revision(), 3);
    let kinds: Vec<(i32, i64)> = applied
        .events
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().map_or(0, |kv| kv.mod_revision)))
        .collect();
    let put = EventType::Put as i32;
    let delete = EventType::Delete as i32;
    assert_eq!(kinds, [(put, 3), (put, 3), (delete, 3)]);
    // The sub-revisions are the changes' positions: storage holds 3.0, 3.1, 3.2.
    let subs: Vec<i64> = h
        .mvcc
        .history
        .range(Revision::first_of(3)..=Revision::last_of(3))
        .map(|(revision, _)| revision.sub)
        .collect();
    assert_eq!(subs, [0, 1, 2]);
}

#[test]
fn reads_inside_a_txn_see_its_earlier_writes() {
    let mut h = Harness::new();
    h.put("a", "before");
    h.put("b", "doomed");
    let request = txn_of(
        vec![],
        vec![
            range_op("a", ""),
            put_op("a", "during"),
            range_op("a", ""),
            delete_op("b", ""),
            range_op("b", ""),
        ],
        vec![],
    );
    let applied = h.txn(request).expect("txn succeeds");
    let seen: Vec<Vec<String>> = applied
        .response
        .responses
        .iter()
        .filter(|r| matches!(r.response, Some(Response::ResponseRange(_))))
        .map(|r| values_of(&range_response_of(r).kvs))
        .collect();
    assert_eq!(
        seen,
        [
            vec!["before".to_string()],
            vec!["during".to_string()],
            vec![]
        ]
    );
}

#[test]
fn a_txn_that_changes_nothing_does_not_bump_the_revision() {
    let mut h = abc_store();
    let read_only = txn_of(vec![], vec![range_op("a", "\0")], vec![]);
    let applied = h.txn(read_only).expect("txn succeeds");
    assert_eq!(range_response_of(&applied.response.responses[0]).count, 4);
    assert!(applied.events.is_empty());
    let deletes_nothing = txn_of(vec![], vec![delete_op("zz", "")], vec![]);
    h.txn(deletes_nothing).expect("txn succeeds");
    assert_eq!(h.mvcc.revision(), 5);
}

#[test]
fn the_failure_branch_runs_when_a_compare_fails() {
    let mut h = Harness::new();
    let request = txn_of(
        vec![compare(
            "a",
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        )],
        vec![put_op("then", "1")],
        vec![put_op("else", "1")],
    );
    let applied = h.txn(request).expect("txn succeeds");
    assert!(!applied.response.succeeded);
    check_keys(&h, "\0", "\0", &["else"]);
}

#[test]
fn nested_txn_compares_see_the_state_before_the_outer_txn() {
    // etcd decides every compare (compareToPath) before executing anything.
    let mut h = Harness::new();
    let inner = txn_of(
        vec![compare(
            "a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        vec![put_op("inner-then", "1")],
        vec![put_op("inner-else", "1")],
    );
    let outer = txn_of(vec![], vec![put_op("a", "1"), txn_op(inner)], vec![]);
    let applied = h.txn(outer).expect("txn succeeds");
    match &applied.response.responses[1].response {
        Some(Response::ResponseTxn(inner)) => assert!(inner.succeeded),
        other => panic!("expected a nested txn response, got {other:?}"),
    }
    check_keys(&h, "\0", "\0", &["a", "inner-then"]);
    assert_eq!(h.mvcc.revision(), 2);
}

fn check_refused(h: &mut Harness, request: TxnRequest, expected: MvccError) {
    assert_eq!(h.txn(request).map(|_| ()), Err(expected));
}

#[test]
fn txns_that_write_a_key_twice_are_refused() {
    let mut h = abc_store();
    let duplicate = MvccError::DuplicateKey;
    check_refused(
        &mut h,
        txn_of(vec![], vec![put_op("k", "1"), put_op("k", "2")], vec![]),
        duplicate.clone(),
    );
    check_refused(
        &mut h,
        txn_of(vec![], vec![put_op("ab", "1"), delete_op("a", "b")], vec![]),
        duplicate.clone(),
    );
    check_refused(
        &mut h,
        txn_of(vec![], vec![], vec![delete_op("a", ""), put_op("a", "1")]),
        duplicate.clone(),
    );
    // A from-key delete covers every key above it.
    check_refused(
        &mut h,
        txn_of(
            vec![],
            vec![delete_op("a", "\0"), put_op("zz", "1")],
            vec![],
        ),
        duplicate.clone(),
    );
    // Through nesting: a nested put against an outer put or delete.
    let nested_put = txn_op(txn_of(vec![], vec![put_op("k", "1")], vec![]));
    check_refused(
        &mut h,
        txn_of(vec![], vec![put_op("k", "0"), nested_put.clone()], vec![]),
        duplicate.clone(),
    );
    check_refused(
        &mut h,
        txn_of(vec![], vec![delete_op("k", ""), nested_put], vec![]),
        duplicate,
    );
}

#[test]
fn txns_that_etcd_accepts_despite_overlaps_are_accepted() {
    let mut h = abc_store();
    // Two deletes of one key: the second deletes nothing.
    let applied = h
        .txn(txn_of(
            vec![],
            vec![delete_op("a", ""), delete_op("a", "b")],
            vec![],
        ))
        .expect("overlapping deletes are allowed");
    assert_eq!(applied.events.len(), 2); // a, then ab
    // One key put in both branches of a nested txn: only one branch runs.
    let both = txn_op(txn_of(
        vec![],
        vec![put_op("k", "then")],
        vec![put_op("k", "else")],
    ));
    h.txn(txn_of(vec![], vec![both], vec![]))
        .expect("then/else may share keys");
    check_keys(&h, "k", "", &["k"]);
}

#[test]
fn a_refused_txn_changes_nothing_even_after_earlier_operations_passed() {
    let mut h = abc_store();
    let lease_missing = PutRequest {
        lease: 42,
        ..put_req("y", "1")
    };
    let request = txn_of(
        vec![],
        vec![
            put_op("x", "1"),
            RequestOp {
                request: Some(Request::RequestPut(lease_missing)),
            },
        ],
        vec![],
    );
    check_refused(&mut h, request, MvccError::LeaseNotFound { lease: 42 });
    let ignore_missing = PutRequest {
        ignore_value: true,
        ..put_req("nope", "")
    };
    let request = txn_of(
        vec![],
        vec![
            delete_op("a", ""),
            RequestOp {
                request: Some(Request::RequestPut(ignore_missing)),
            },
        ],
        vec![],
    );
    check_refused(&mut h, request, MvccError::KeyNotFound);
    // Only the chosen branch is checked against the state, as in etcd.
    let unchosen = txn_of(
        vec![compare(
            "a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(1),
        )],
        vec![put_op("ok", "1")],
        vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                lease: 42,
                ..put_req("y", "1")
            })),
        }],
    );
    h.txn(unchosen).expect("the failure branch is not checked");
    // A read of a future revision inside the txn refuses the whole txn.
    let future_read = RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            revision: 99,
            ..range_req("a", "")
        })),
    };
    check_refused(
        &mut h,
        txn_of(vec![], vec![put_op("z", "1"), future_read], vec![]),
        MvccError::FutureRevision {
            requested: 99,
            current: 6,
        },
    );
}

#[test]
fn txn_shape_refusals_match_etcd() {
    let mut h = Harness::new();
    let empty_op = RequestOp { request: None };
    check_refused(
        &mut h,
        txn_of(vec![], vec![empty_op], vec![]),
        MvccError::KeyNotFound,
    );
    let empty_compare = compare(
        "",
        CompareTarget::Version,
        CompareResult::Equal,
        TargetUnion::Version(0),
    );
    check_refused(
        &mut h,
        txn_of(vec![empty_compare], vec![], vec![]),
        MvccError::EmptyKey,
    );
    check_refused(
        &mut h,
        txn_of(vec![], vec![put_op("", "v")], vec![]),
        MvccError::EmptyKey,
    );
    let too_many: Vec<RequestOp> = (0..=TXN_OPS_MAX)
        .map(|i| put_op(&format!("k{i}"), "v"))
        .collect();
    check_refused(
        &mut h,
        txn_of(vec![], too_many, vec![]),
        MvccError::TooManyOps,
    );
    // Nested txns share the budget: 100 outer ops leave 28 for the nested txn.
    let nested: Vec<RequestOp> = (0..29).map(|i| put_op(&format!("n{i}"), "v")).collect();
    let mut outer: Vec<RequestOp> = (0..99).map(|i| range_op(&format!("o{i}"), "")).collect();
    outer.push(txn_op(txn_of(vec![], nested, vec![])));
    check_refused(&mut h, txn_of(vec![], outer, vec![]), MvccError::TooManyOps);
    assert_eq!(h.mvcc.revision(), 1);
}

// ---- Compaction ---------------------------------------------------------------

#[test]
fn compaction_keeps_per_key_the_newest_version_unless_it_is_a_tombstone() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.put("b", "1"); // 4
    h.delete("b", ""); // 5
    h.put("c", "1"); // 6
    h.put("a", "3"); // 7
    let size_before = h.mvcc.size_bytes();
    h.compact(6).expect("compacts");
    let retained: Vec<(i64, String)> = h
        .mvcc
        .history
        .iter()
        .map(|(revision, key)| (revision.main, String::from_utf8_lossy(key).into_owned()))
        .collect();
    // a@3 (newest ≤ 6) and a@7 (above), c@6; b's tombstone and every older record go.
    assert_eq!(
        retained,
        [(3, "a".into()), (6, "c".into()), (7, "a".into())]
    );
    assert!(h.mvcc.size_bytes() < size_before);
    // Reads at the compact revision and later are unchanged.
    let at_six = h
        .mvcc
        .range(&RangeRequest {
            revision: 6,
            ..range_req("\0", "\0")
        })
        .expect("reads at 6");
    assert_eq!(keys_of(&at_six.kvs), ["a", "c"]);
    assert_eq!(values_of(&at_six.kvs), ["2", "1"]);
    assert_eq!(at_six.kvs[0].version, 2);
}

#[test]
fn compaction_refuses_old_and_future_revisions() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("a", "2");
    assert_eq!(
        h.compact(4),
        Err(MvccError::FutureRevision {
            requested: 4,
            current: 3
        })
    );
    h.compact(2).expect("compacts");
    assert_eq!(
        h.compact(2),
        Err(MvccError::Compacted {
            requested: 2,
            compact_revision: 2
        })
    );
    assert_eq!(
        h.compact(1),
        Err(MvccError::Compacted {
            requested: 1,
            compact_revision: 2
        })
    );
    h.compact(3).expect("compacts to the current revision");
    assert_eq!(h.mvcc.compact_revision(), 3);
}

#[test]
fn compaction_of_everything_deleted_keeps_the_revision_across_a_restart() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.delete("a", "");
    h.compact(3).expect("compacts");
    assert!(h.mvcc.history.is_empty());
    assert_eq!(h.mvcc.revision(), 3);
    h.assert_reloads(); // the reloaded store is at revision 3 too
}

#[test]
fn compaction_deletes_runs_of_records_with_range_deletes() {
    let mut h = Harness::new();
    for i in 0..100 {
        h.put("hot", &i.to_string());
    }
    let mut batch = WriteBatch::new();
    h.mvcc.compact(100, &mut batch).expect("compacts");
    let deletes = batch
        .ops()
        .iter()
        .filter(|op| matches!(op, Op::Delete { .. } | Op::DeleteRange { .. }))
        .count();
    assert_eq!(deletes, 1, "{:?}", batch.ops());
    h.engine.write(&batch).expect("writes");
    h.assert_reloads();
    assert_eq!(h.mvcc.history.len(), 2); // hot@100 and hot@101
}

// ---- Changes (watch catch-up) ------------------------------------------------

#[test]
fn changes_replay_the_applied_events_in_order() {
    let mut h = abc_store();
    h.txn(txn_of(
        vec![],
        vec![put_op("a", "x"), delete_op("b", "")],
        vec![],
    ))
    .expect("txn");
    h.delete("\0", "\0");
    let replayed = h
        .mvcc
        .changes(b"\0", b"\0", 1, usize::MAX)
        .expect("no compaction yet");
    assert_eq!(replayed, h.events);
    // A key range selects its events; `from` skips earlier revisions.
    let only_a: Vec<Event> = h
        .events
        .iter()
        .filter(|e| {
            e.kv.as_ref()
                .is_some_and(|kv| kv.key == b"a" && kv.mod_revision >= 4)
        })
        .cloned()
        .collect();
    assert_eq!(
        h.mvcc.changes(b"a", b"", 4, usize::MAX).expect("changes"),
        only_a
    );
}

#[test]
fn changes_return_whole_revisions_up_to_the_bound() {
    let mut h = Harness::new();
    h.txn(txn_of(
        vec![],
        vec![put_op("a", "1"), put_op("b", "1")],
        vec![],
    ))
    .expect("txn"); // 2
    h.put("c", "1"); // 3
    h.put("a", "2"); // 4
    let events = h.mvcc.changes(b"\0", b"\0", 2, 2).expect("changes");
    let revisions: Vec<i64> = events
        .iter()
        .filter_map(|e| e.kv.as_ref())
        .map(|kv| kv.mod_revision)
        .collect();
    assert_eq!(revisions, [2, 2, 3]);
    // Revisions without a matching event do not count against the bound.
    let events = h.mvcc.changes(b"a", b"", 2, 2).expect("changes");
    assert_eq!(events.len(), 2);
}

#[test]
fn changes_below_the_first_retained_revision_are_refused() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("a", "2");
    h.put("a", "3"); // 4
    h.compact(3).expect("compacts");
    assert!(matches!(
        h.mvcc.changes(b"a", b"", 3, 10),
        Err(MvccError::Compacted { .. })
    ));
    let events = h
        .mvcc
        .changes(b"a", b"", 4, 10)
        .expect("compact + 1 is retained");
    assert_eq!(events.len(), 1);
    let previous = events[0]
        .prev_kv
        .as_ref()
        .expect("the version kept at the compact revision");
    assert_eq!(previous.value, b"2");
}

// ---- Hash, size, snapshot, load ---------------------------------------------

fn feed(h: &mut Harness, extra: &str) {
    h.put("a", "1");
    h.put("b", extra);
    h.txn(txn_of(
        vec![],
        vec![put_op("c", "1"), delete_op("a", "")],
        vec![],
    ))
    .expect("txn");
    h.compact(3).expect("compacts");
    h.put("a", "2");
}

#[test]
fn replicas_fed_the_same_requests_hash_alike_and_different_ones_do_not() {
    let (mut one, mut two, mut other) = (Harness::new(), Harness::new(), Harness::new());
    feed(&mut one, "x");
    feed(&mut two, "x");
    feed(&mut other, "y");
    let current = one.mvcc.hash_kv(0).expect("hash");
    assert_eq!(current, two.mvcc.hash_kv(0).expect("hash"));
    assert_eq!(current.1, 3);
    assert_ne!(current.0, other.mvcc.hash_kv(0).expect("hash").0);
    // A hash at a past revision ignores later writes.
    let at_five = one.mvcc.hash_kv(5).expect("hash");
    one.put("later", "1");
    assert_eq!(one.mvcc.hash_kv(5).expect("hash"), at_five);
    assert_ne!(one.mvcc.hash_kv(0).expect("hash"), current);
    assert!(matches!(
        one.mvcc.hash_kv(99),
        Err(MvccError::FutureRevision { .. })
    ));
    assert!(matches!(
        one.mvcc.hash_kv(2),
        Err(MvccError::Compacted { .. })
    ));
}

#[test]
fn size_counts_the_retained_records() {
    let mut h = Harness::new();
    h.put("key", "value");
    assert_eq!(h.mvcc.size_bytes(), 3 + 5 + RECORD_OVERHEAD_BYTES);
    h.delete("key", "");
    assert_eq!(h.mvcc.size_bytes(), (3 + 5) + 3 + 2 * RECORD_OVERHEAD_BYTES);
    h.compact(3).expect("compacts");
    assert_eq!(h.mvcc.size_bytes(), 0);
}

#[test]
fn restore_rebuilds_the_snapshotted_store_and_replaces_what_was_persisted() {
    let mut source = Harness::new();
    feed(&mut source, "x");
    let snapshot = source.mvcc.snapshot();

    let mut target = Harness::new();
    target.put("stale", "1");
    target.put("stale", "2");
    target.compact(2).expect("compacts");
    let mut batch = WriteBatch::new();
    let restored = Mvcc::restore(&snapshot, &mut batch).expect("restores");
    assert_eq!(restored, source.mvcc);
    target.engine.write(&batch).expect("writes");
    target.mvcc = restored;
    target.assert_reloads();
}

#[test]
fn restore_refuses_bad_bytes_without_panicking() {
    let mut h = Harness::new();
    feed(&mut h, "x");
    let snapshot = h.mvcc.snapshot();
    let mut inputs: Vec<Vec<u8>> =
        vec![vec![], vec![0xff], snapshot[..snapshot.len() / 2].to_vec()];
    let mut trailing = snapshot.clone();
    trailing.push(0);
    inputs.push(trailing);
    for flip in 0..snapshot.len() {
        let mut flipped = snapshot.clone();
        flipped[flip] ^= 0x80;
        inputs.push(flipped);
    }
    for input in inputs {
        let mut batch = WriteBatch::new();
        if let Err(error) = Mvcc::restore(&input, &mut batch) {
            assert!(matches!(error, MvccError::Corrupt { .. }), "{error:?}");
            assert!(batch.is_empty());
        }
    }
}

#[test]
fn load_refuses_corrupt_storage() {
    let engine = MemoryEngine::new(Limits::default());
    let mut batch = WriteBatch::new();
    batch.put(MVCC_REVISIONS, vec![0; 16], vec![1, 2, 3]);
    engine.write(&batch).expect("writes");
    assert!(matches!(
        Mvcc::load(&engine),
        Err(MvccError::Corrupt { .. })
    ));
}

#[test]
fn load_pages_through_long_histories() {
    let mut mvcc = Mvcc::new();
    let engine = MemoryEngine::new(Limits::default());
    let mut batch = WriteBatch::new();
    for i in 0..(persist::LOAD_PAGE_ENTRIES + 10) {
        mvcc.put(&put_req(&format!("k{}", i % 7), "v"), |_| false, &mut batch)
            .expect("put");
    }
    engine.write(&batch).expect("writes");
    assert_eq!(Mvcc::load(&engine).expect("loads"), mvcc);
}

// ---- Errors --------------------------------------------------------------------

#[test]
fn errors_carry_etcds_codes_and_messages() {
    // From etcd's api/v3rpc/rpctypes/error.go.
    let cases = [
        (MvccError::EmptyKey, 3, "etcdserver: key is not provided"),
        (MvccError::KeyNotFound, 3, "etcdserver: key not found"),
        (MvccError::ValueProvided, 3, "etcdserver: value is provided"),
        (MvccError::LeaseProvided, 3, "etcdserver: lease is provided"),
        (
            MvccError::TooManyOps,
            3,
            "etcdserver: too many operations in txn request",
        ),
        (
            MvccError::DuplicateKey,
            3,
            "etcdserver: duplicate key given in txn request",
        ),
        (
            MvccError::InvalidSortOption,
            3,
            "etcdserver: invalid sort option",
        ),
        (
            MvccError::Compacted {
                requested: 1,
                compact_revision: 2,
            },
            11,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        (
            MvccError::FutureRevision {
                requested: 3,
                current: 2,
            },
            11,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (
            MvccError::LeaseNotFound { lease: 7 },
            5,
            "etcdserver: requested lease not found",
        ),
    ];
    for (error, code, message) in cases {
        assert_eq!(
            (error.code(), error.etcd_message()),
            (code, message),
            "{error:?}"
        );
    }
}

#[test]
fn a_write_that_fails_midway_is_taken_back() {
    // The checks rule such failures out; the rollback is the second line of
    // defence that keeps a failed request from leaving half a txn behind.
    let mut h = abc_store();
    let before = h.mvcc.clone();
    let mut writer = h.mvcc.begin();
    h.mvcc.write_put(&mut writer, b"a", bytes("new"), 0);
    h.mvcc.write_delete(&mut writer, b"b");
    h.mvcc.write_put(&mut writer, b"fresh", bytes("x"), 0);
    assert_ne!(h.mvcc, before);
    h.mvcc.rollback(writer);
    assert_eq!(h.mvcc, before);
}
