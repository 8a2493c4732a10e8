//! Range reads: etcd's key-range conventions, revision filters, sorting and
//! limits (etcd's `server/etcdserver/txn/range.go`).

use std::cmp::Ordering;

use calm_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use calm_proto::etcd::etcdserverpb::{RangeRequest, RangeResponse};
use calm_proto::etcd::mvccpb::KeyValue;

use super::{Mvcc, MvccError, record_at};

/// The keys an etcd `(key, range_end)` pair names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyBounds<'a> {
    /// An empty `range_end`: the key alone.
    Single(&'a [u8]),
    /// `range_end == "\0"`: every key at or above `key`.
    From(&'a [u8]),
    /// `[key, range_end)`; empty if `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyBounds<'a> {
    /// Reads `key` and `range_end` as etcd does.
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyBounds::Single(key),
            [0] => KeyBounds::From(key),
            end => KeyBounds::Between(key, end),
        }
    }

    /// Whether `candidate` is one of the keys.
    pub(crate) fn contains(&self, candidate: &[u8]) -> bool {
        match *self {
            KeyBounds::Single(key) => candidate == key,
            KeyBounds::From(start) => candidate >= start,
            KeyBounds::Between(start, end) => candidate >= start && candidate < end,
        }
    }
}

/// etcd's gRPC-layer check of a range request (`checkRangeRequest`).
pub(crate) fn validate_range_request(request: &RangeRequest) -> Result<(), MvccError> {
    if request.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if SortOrder::try_from(request.sort_order).is_err()
        || SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(MvccError::InvalidSortOption);
    }
    Ok(())
}

impl Mvcc {
    /// Answers a validated range request at main revision `at` (`i64::MAX`:
    /// the newest state, an unfinished txn's writes included).
    pub(crate) fn range_at(&self, request: &RangeRequest, at: i64) -> RangeResponse {
        let bounds = KeyBounds::new(&request.key, &request.range_end);
        let live = self.keys_in(&bounds).filter_map(|(key, records)| {
            record_at(records, at)
                .filter(|record| record.is_put())
                .map(|record| (key, record))
        });
        if request.count_only {
            return RangeResponse {
                count: live.count() as i64,
                ..RangeResponse::default()
            };
        }
        let sort_target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
        // Keys-only answers never carry values, so none is copied unless the
        // sort needs it (etcd's `FastKeysOnly`).
        let with_value = !request.keys_only || sort_target == SortTarget::Value;
        let collect_max = collect_max(request);
        let mut count = 0;
        let mut kvs = Vec::new();
        for (key, record) in live {
            count += 1;
            if collect_max.is_none_or(|max| kvs.len() < max) {
                kvs.extend(record.key_value_shaped(key, with_value));
            }
        }
        filter_revisions(&mut kvs, request);
        sort(&mut kvs, request);
        let more = request.limit > 0 && kvs.len() as i64 > request.limit;
        if more {
            kvs.truncate(request.limit as usize);
        }
        if request.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        RangeResponse {
            header: None,
            kvs,
            more,
            count,
        }
    }
}

/// How many key-values to build before filtering and sorting (etcd's
/// `rangeLimit`): `limit + 1` (one more shows there is more) when the keys
/// come out in their final order, all of them when a sort or a revision
/// filter must see every key first.
fn collect_max(request: &RangeRequest) -> Option<usize> {
    let default_order = is_default_ordering(request);
    let has_filters = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    if request.limit <= 0 || !default_order || has_filters {
        return None;
    }
    usize::try_from(request.limit)
        .ok()
        .map(|limit| limit.saturating_add(1))
}

/// Whether keys in ascending key order are already the answer's order.
fn is_default_ordering(request: &RangeRequest) -> bool {
    request.sort_order == SortOrder::None as i32
        || (request.sort_target == SortTarget::Key as i32
            && request.sort_order == SortOrder::Ascend as i32)
}

/// etcd's `filterRangeResults`: a zero bound is no bound.
fn filter_revisions(kvs: &mut Vec<KeyValue>, request: &RangeRequest) {
    let within =
        |value: i64, min: i64, max: i64| (min == 0 || value >= min) && (max == 0 || value <= max);
    kvs.retain(|kv| {
        within(
            kv.mod_revision,
            request.min_mod_revision,
            request.max_mod_revision,
        ) && within(
            kv.create_revision,
            request.min_create_revision,
            request.max_create_revision,
        )
    });
}

/// etcd's `sortRangeResults`: a target other than the key with no order
/// sorts ascending. Ties keep ascending key order (etcd's sort is not stable,
/// so any tie order is etcd's behaviour; this one is deterministic).
fn sort(kvs: &mut [KeyValue], request: &RangeRequest) {
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let by_target = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match (target, order) {
        (_, SortOrder::None) | (SortTarget::Key, SortOrder::Ascend) => {}
        (_, SortOrder::Ascend) => kvs.sort_by(by_target),
        (_, SortOrder::Descend) => kvs.sort_by(|a, b| by_target(b, a)),
    }
}
