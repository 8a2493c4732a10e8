//! Property test: random puts, deletes, txns and compactions against a
//! reference model that is nothing but the list of changes, (revision, key,
//! value or tombstone). At every step, a range at every retained revision
//! must answer what the list says, create revisions and versions included.

use calm_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use calm_proto::etcd::etcdserverpb::request_op::Request;
use calm_proto::etcd::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use calm_proto::etcd::mvccpb::{KeyValue, event::EventType};
use proptest::prelude::*;

use super::MvccError;
use super::tests::{Harness, delete_req, put_req};

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
enum TxnAction {
    Put(usize, u8),
    Delete(usize),
    Range(usize),
}

#[derive(Clone, Debug)]
enum Action {
    Put(usize, u8),
    /// Deletes `[KEYS[from], KEYS[to])`, or the one key if `to` is `None`.
    Delete(usize, Option<usize>),
    /// Runs `then` if `KEYS[guard]` exists, `otherwise` if not.
    Txn {
        guard: usize,
        then: Vec<TxnAction>,
        otherwise: Vec<TxnAction>,
    },
    /// Compacts to a retained revision chosen by `pick`.
    Compact(u8),
}

fn txn_action() -> impl Strategy<Value = TxnAction> {
    prop_oneof![
        (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| TxnAction::Put(k, v)),
        (0..KEYS.len()).prop_map(TxnAction::Delete),
        (0..KEYS.len()).prop_map(TxnAction::Range),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| Action::Put(k, v)),
        2 => (0..KEYS.len(), proptest::option::of(0..=KEYS.len()))
            .prop_map(|(from, to)| Action::Delete(from, to)),
        2 => (
            0..KEYS.len(),
            proptest::collection::vec(txn_action(), 0..4),
            proptest::collection::vec(txn_action(), 0..4)
        )
            .prop_map(|(guard, then, otherwise)| Action::Txn { guard, then, otherwise }),
        1 => any::<u8>().prop_map(Action::Compact),
    ]
}

/// The reference: every change ever made, never compacted.
#[derive(Default)]
struct Reference {
    changes: Vec<(i64, String, Option<Vec<u8>>)>,
    revision: i64,
    compact_revision: i64,
}

impl Reference {
    fn new() -> Self {
        Self {
            revision: 1,
            ..Self::default()
        }
    }

    /// The key's `KeyValue` at `at`, derived from the change list alone.
    fn key_value(&self, key: &str, at: i64) -> Option<KeyValue> {
        let history: Vec<&(i64, String, Option<Vec<u8>>)> = self
            .changes
            .iter()
            .filter(|(revision, k, _)| k == key && *revision <= at)
            .collect();
        let (mod_revision, _, value) = history.last()?;
        let value = value.clone()?;
        let generation: Vec<_> = history
            .iter()
            .rev()
            .take_while(|(_, _, value)| value.is_some())
            .collect();
        let create_revision = generation.last().map_or(0, |(revision, _, _)| *revision);
        Some(KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision,
            mod_revision: *mod_revision,
            version: generation.len() as i64,
            value,
            lease: 0,
        })
    }

    fn state(&self, at: i64) -> Vec<KeyValue> {
        KEYS.iter()
            .filter_map(|key| self.key_value(key, at))
            .collect()
    }

    fn exists(&self, key: &str) -> bool {
        self.key_value(key, self.revision).is_some()
    }

    /// Appends one write's changes at the next revision; bumps it if any.
    fn write(&mut self, changes: Vec<(String, Option<Vec<u8>>)>) {
        if changes.is_empty() {
            return;
        }
        self.revision += 1;
        for (key, value) in changes {
            self.changes.push((self.revision, key, value));
        }
    }

    /// The changes a txn branch makes, applied in order (a delete of a key
    /// the branch already deleted deletes nothing).
    fn branch_changes(&self, actions: &[TxnAction]) -> Vec<(String, Option<Vec<u8>>)> {
        let mut live: Vec<bool> = KEYS.iter().map(|key| self.exists(key)).collect();
        let mut changes = Vec::new();
        for action in actions {
            match *action {
                TxnAction::Put(k, v) => {
                    live[k] = true;
                    changes.push((KEYS[k].to_string(), Some(vec![v])));
                }
                TxnAction::Delete(k) if live[k] => {
                    live[k] = false;
                    changes.push((KEYS[k].to_string(), None));
                }
                TxnAction::Delete(_) | TxnAction::Range(_) => {}
            }
        }
        changes
    }
}

/// etcd's duplicate-key rule for one flat branch of single-key operations:
/// a key put twice, or put and deleted.
fn writes_a_key_twice(actions: &[TxnAction]) -> bool {
    let puts: Vec<usize> = actions
        .iter()
        .filter_map(|a| {
            if let TxnAction::Put(k, _) = a {
                Some(*k)
            } else {
                None
            }
        })
        .collect();
    let deletes: Vec<usize> = actions
        .iter()
        .filter_map(|a| {
            if let TxnAction::Delete(k) = a {
                Some(*k)
            } else {
                None
            }
        })
        .collect();
    puts.iter()
        .enumerate()
        .any(|(i, k)| puts[i + 1..].contains(k) || deletes.contains(k))
}

fn request_ops(actions: &[TxnAction]) -> Vec<RequestOp> {
    actions
        .iter()
        .map(|action| {
            let request = match *action {
                TxnAction::Put(k, v) => Request::RequestPut(PutRequest {
                    value: vec![v],
                    ..put_req(KEYS[k], "")
                }),
                TxnAction::Delete(k) => Request::RequestDeleteRange(delete_req(KEYS[k], "")),
                TxnAction::Range(k) => Request::RequestRange(RangeRequest {
                    key: KEYS[k].as_bytes().to_vec(),
                    ..RangeRequest::default()
                }),
            };
            RequestOp {
                request: Some(request),
            }
        })
        .collect()
}

fn run(h: &mut Harness, reference: &mut Reference, action: &Action) {
    match action {
        Action::Put(k, v) => {
            let request = PutRequest {
                value: vec![*v],
                ..put_req(KEYS[*k], "")
            };
            h.put_request(request).expect("put succeeds");
            reference.write(vec![(KEYS[*k].to_string(), Some(vec![*v]))]);
        }
        Action::Delete(from, to) => {
            let end = to.map_or("", |to| KEYS.get(to).copied().unwrap_or("\0"));
            h.delete(KEYS[*from], end);
            let doomed = KEYS
                .iter()
                .filter(|key| match to {
                    None => **key == KEYS[*from],
                    Some(to) if *to >= KEYS.len() => **key >= KEYS[*from],
                    Some(to) => **key >= KEYS[*from] && **key < KEYS[*to],
                })
                .filter(|key| reference.exists(key))
                .map(|key| (key.to_string(), None))
                .collect();
            reference.write(doomed);
        }
        Action::Txn {
            guard,
            then,
            otherwise,
        } => {
            let exists = Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Version as i32,
                key: KEYS[*guard].as_bytes().to_vec(),
                range_end: Vec::new(),
                target_union: Some(TargetUnion::Version(0)),
            };
            let request = TxnRequest {
                compare: vec![exists],
                success: request_ops(then),
                failure: request_ops(otherwise),
            };
            let outcome = h.txn(request);
            if writes_a_key_twice(then) || writes_a_key_twice(otherwise) {
                assert_eq!(outcome.map(|_| ()), Err(MvccError::DuplicateKey));
                return;
            }
            let applied = outcome.expect("txn succeeds");
            let chosen = if reference.exists(KEYS[*guard]) {
                then
            } else {
                otherwise
            };
            assert_eq!(applied.response.succeeded, reference.exists(KEYS[*guard]));
            let changes = reference.branch_changes(chosen);
            reference.write(changes);
        }
        Action::Compact(pick) => {
            let span = reference.revision - reference.compact_revision;
            if span <= 0 {
                return;
            }
            let target = reference.compact_revision + 1 + i64::from(*pick) % span;
            h.compact(target).expect("compacts");
            reference.compact_revision = target;
        }
    }
}

fn check_every_revision(h: &Harness, reference: &Reference) {
    assert_eq!(h.mvcc.revision(), reference.revision);
    assert_eq!(h.mvcc.compact_revision(), reference.compact_revision);
    let first = reference.compact_revision.max(1);
    for at in first..=reference.revision {
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: at,
            ..RangeRequest::default()
        };
        let response = h.mvcc.range(&request).expect("retained revisions read");
        assert_eq!(response.kvs, reference.state(at), "at revision {at}");
    }
    if reference.compact_revision > 1 {
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: reference.compact_revision - 1,
            ..RangeRequest::default()
        };
        assert!(matches!(
            h.mvcc.range(&request),
            Err(MvccError::Compacted { .. })
        ));
    }
}

/// The retained history replays as the reference's changes after the
/// compact revision, and as the events the writes returned.
fn check_changes(h: &Harness, reference: &Reference) {
    let from = reference.compact_revision + 1;
    let replayed = h
        .mvcc
        .changes(&[0], &[0], from, usize::MAX)
        .expect("retained");
    let expected: Vec<(i64, String, Option<Vec<u8>>)> = reference
        .changes
        .iter()
        .filter(|(revision, _, _)| *revision >= from)
        .cloned()
        .collect();
    let seen: Vec<(i64, String, Option<Vec<u8>>)> = replayed
        .iter()
        .filter_map(|event| {
            let kv = event.kv.as_ref()?;
            let value = (event.r#type == EventType::Put as i32).then(|| kv.value.clone());
            Some((
                kv.mod_revision,
                String::from_utf8_lossy(&kv.key).into_owned(),
                value,
            ))
        })
        .collect();
    assert_eq!(seen, expected);
    let applied: Vec<_> = h
        .events
        .iter()
        .filter(|event| event.kv.as_ref().is_some_and(|kv| kv.mod_revision >= from))
        .cloned()
        .collect();
    assert_eq!(replayed, applied);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ranges_at_every_retained_revision_match_the_change_list(
        actions in proptest::collection::vec(action(), 1..30)
    ) {
        let mut h = Harness::new();
        let mut reference = Reference::new();
        for action in &actions {
            run(&mut h, &mut reference, action);
            check_every_revision(&h, &reference);
        }
        check_changes(&h, &reference);
    }
}
