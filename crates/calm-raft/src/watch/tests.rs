//! Tests of the watch hub against etcd's watch guarantees: ordered, no gaps,
//! no duplicates, whole revisions, compaction cancels.

use calm_proto::etcd::etcdserverpb::request_op::Request;
use calm_proto::etcd::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use calm_proto::etcd::mvccpb::{Event, event::EventType};
use calm_storage::WriteBatch;
use proptest::prelude::*;

use super::*;

/// A store, a hub, and every event the store applied.
struct World {
    mvcc: Mvcc,
    hub: WatchHub,
    events: Vec<Event>,
}

impl World {
    fn new(config: WatchConfig) -> Self {
        Self {
            mvcc: Mvcc::new(),
            hub: WatchHub::new(config),
            events: Vec::new(),
        }
    }

    /// Applies `events` (one write's) and routes them, as a driver does.
    fn applied(&mut self, events: Vec<Event>) -> Vec<(WatchId, WatchBatch)> {
        self.events.extend(events.clone());
        if events.is_empty() {
            return Vec::new();
        }
        self.hub.on_applied(self.mvcc.revision(), &events)
    }

    fn put(&mut self, key: &str, value: &str) -> Vec<(WatchId, WatchBatch)> {
        let request = PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        };
        let applied = self
            .mvcc
            .put(&request, |_| false, &mut WriteBatch::new())
            .expect("put succeeds");
        self.applied(applied.events)
    }

    fn delete(&mut self, key: &str) -> Vec<(WatchId, WatchBatch)> {
        let request = DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        };
        let applied = self
            .mvcc
            .delete_range(&request, &mut WriteBatch::new())
            .expect("delete succeeds");
        self.applied(applied.events)
    }

    /// Puts every key in one txn, at one revision.
    fn put_all(&mut self, keys: &[&str], value: &str) -> Vec<(WatchId, WatchBatch)> {
        let success = keys
            .iter()
            .map(|key| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.into(),
                    ..PutRequest::default()
                })),
            })
            .collect();
        let request = TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        };
        let applied = self
            .mvcc
            .txn(&request, |_| false, &mut WriteBatch::new())
            .expect("txn succeeds");
        self.applied(applied.events)
    }

    fn compact(&mut self, revision: i64) {
        self.mvcc
            .compact(revision, &mut WriteBatch::new())
            .expect("compacts");
    }

    fn create(&mut self, spec: WatchSpec) -> (WatchId, Vec<WatchBatch>) {
        self.hub.create(spec, &self.mvcc).expect("watch created")
    }
}

fn spec(key: &str, range_end: &str, start_revision: i64) -> WatchSpec {
    WatchSpec {
        key: key.into(),
        range_end: range_end.into(),
        start_revision,
        ..WatchSpec::default()
    }
}

/// (key, mod revision, is a put) of each event, for compact assertions.
fn summary(events: &[Event]) -> Vec<(String, i64, bool)> {
    events
        .iter()
        .filter_map(|event| {
            let kv = event.kv.as_ref()?;
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            Some((key, kv.mod_revision, event.r#type == EventType::Put as i32))
        })
        .collect()
}

fn only(batches: Vec<(WatchId, WatchBatch)>, id: WatchId) -> Vec<WatchBatch> {
    batches
        .into_iter()
        .filter(|(to, _)| *to == id)
        .map(|(_, batch)| batch)
        .collect()
}

fn small_catch_ups() -> WatchConfig {
    WatchConfig {
        catch_up_revisions_max: 2,
        ..WatchConfig::default()
    }
}

// ---- Live events ----------------------------------------------------------

#[test]
fn a_watch_from_now_gets_the_next_revisions_events_only() {
    let mut w = World::new(WatchConfig::default());
    w.put("a", "old");
    let (id, initial) = w.create(spec("a", "", 0));
    assert!(initial.is_empty());
    assert!(w.hub.is_synced(id));
    let batches = only(w.put("a", "new"), id);
    assert_eq!(batches.len(), 1);
    assert_eq!(summary(&batches[0].events), [("a".into(), 3, true)]);
    assert_eq!(batches[0].revision, 3);
    // prev_kv was not asked for, so it is stripped.
    assert_eq!(batches[0].events[0].prev_kv, None);
}

#[test]
fn live_events_respect_the_range_the_filters_and_prev_kv() {
    let mut w = World::new(WatchConfig::default());
    w.put("a", "1");
    let (prefix, _) = w.create(WatchSpec {
        prev_kv: true,
        ..spec("a", "b", 0)
    });
    let (from_b, _) = w.create(spec("b", "\0", 0));
    let (no_put, _) = w.create(WatchSpec {
        no_put: true,
        ..spec("\0", "\0", 0)
    });
    let (no_delete, _) = w.create(WatchSpec {
        no_delete: true,
        key: Vec::new(), // empty key: etcd reads "\0"
        ..spec("", "\0", 0)
    });
    let mut batches = w.put_all(&["a", "ab", "c"], "2");
    batches.extend(w.delete("a"));
    let events_of = |id| -> Vec<Event> {
        batches
            .iter()
            .filter(|(to, _)| *to == id)
            .flat_map(|(_, batch)| batch.events.clone())
            .collect()
    };
    let prefix_events = events_of(prefix);
    assert_eq!(
        summary(&prefix_events),
        [
            ("a".into(), 3, true),
            ("ab".into(), 3, true),
            ("a".into(), 4, false)
        ]
    );
    let previous = prefix_events[0]
        .prev_kv
        .as_ref()
        .expect("prev_kv asked for");
    assert_eq!(previous.value, b"1");
    assert_eq!(summary(&events_of(from_b)), [("c".into(), 3, true)]);
    assert_eq!(summary(&events_of(no_put)), [("a".into(), 4, false)]);
    assert_eq!(summary(&events_of(no_delete)).len(), 3);
}

#[test]
fn refused_watches_carry_etcds_cancel_reasons() {
    let mut w = World::new(WatchConfig {
        watchers_max: 1,
        ..WatchConfig::default()
    });
    let refused = |w: &mut World, spec: WatchSpec| w.hub.create(spec, &w.mvcc).map(|_| ());
    assert_eq!(
        refused(&mut w, spec("b", "a", 0)),
        Err(WatchError::EmptyRange)
    );
    assert_eq!(
        refused(&mut w, spec("a", "a", 0)),
        Err(WatchError::EmptyRange)
    );
    assert_eq!(
        refused(&mut w, spec("a", "", -1)),
        Err(WatchError::NegativeStartRevision)
    );
    assert_eq!(
        WatchError::EmptyRange.cancel_reason(),
        "mvcc: watcher range is empty"
    );
    assert_eq!(
        WatchError::NegativeStartRevision.cancel_reason(),
        "mvcc: required revision has been compacted"
    );
    w.create(spec("a", "", 0));
    assert_eq!(
        refused(&mut w, spec("a", "", 0)),
        Err(WatchError::TooManyWatchers { watchers_max: 1 })
    );
}

#[test]
fn a_watch_from_a_future_revision_waits_for_it() {
    let mut w = World::new(WatchConfig::default());
    let (id, initial) = w.create(spec("a", "", 4));
    assert!(initial.is_empty());
    assert!(only(w.put("a", "2"), id).is_empty());
    assert!(only(w.put("a", "3"), id).is_empty());
    let batches = only(w.put("a", "4"), id);
    assert_eq!(summary(&batches[0].events), [("a".into(), 4, true)]);
}

#[test]
fn cancel_removes_the_watcher() {
    let mut w = World::new(WatchConfig::default());
    let (id, _) = w.create(spec("a", "", 0));
    assert!(w.hub.cancel(id));
    assert!(!w.hub.cancel(id));
    assert!(w.put("a", "1").is_empty());
    assert!(w.hub.is_empty());
}

// ---- Catch-up ---------------------------------------------------------------

#[test]
fn a_watch_from_the_past_catches_up_in_bounded_steps_then_goes_live() {
    let mut w = World::new(small_catch_ups());
    for i in 0..5 {
        w.put("a", &i.to_string()); // revisions 2..=6
    }
    let (id, first) = w.create(spec("a", "", 2));
    assert_eq!(summary(&first[0].events).len(), 2);
    assert_eq!(first[0].revision, 3);
    assert!(!w.hub.is_synced(id));
    let second = only(w.hub.catch_up(&w.mvcc), id);
    assert_eq!(
        second[0].events[0].kv.as_ref().map(|kv| kv.mod_revision),
        Some(4)
    );
    let third = only(w.hub.catch_up(&w.mvcc), id);
    assert_eq!(summary(&third[0].events), [("a".into(), 6, true)]);
    assert_eq!(third[0].revision, 6);
    assert!(w.hub.is_synced(id));
    assert!(w.hub.catch_up(&w.mvcc).is_empty());
    assert_eq!(
        summary(&only(w.put("a", "live"), id)[0].events),
        [("a".into(), 7, true)]
    );
}

#[test]
fn the_events_of_one_revision_stay_in_one_batch() {
    let mut w = World::new(WatchConfig {
        catch_up_revisions_max: 1,
        ..WatchConfig::default()
    });
    w.put_all(&["a", "b", "c"], "1"); // revision 2
    w.put("d", "1"); // revision 3
    let (id, first) = w.create(spec("\0", "\0", 2));
    assert_eq!(summary(&first[0].events).len(), 3);
    let second = only(w.hub.catch_up(&w.mvcc), id);
    assert_eq!(summary(&second[0].events), [("d".into(), 3, true)]);
}

#[test]
fn a_watch_below_the_compact_revision_is_cancelled_with_it() {
    let mut w = World::new(WatchConfig::default());
    for i in 0..4 {
        w.put("a", &i.to_string()); // revisions 2..=5
    }
    w.compact(4);
    let (id, batches) = w.create(spec("a", "", 4));
    assert_eq!(batches.len(), 1);
    assert!(batches[0].canceled);
    assert_eq!(batches[0].compact_revision, 4);
    assert!(batches[0].events.is_empty());
    assert_eq!(w.hub.next_revision(id), None);
    // etcd: a watch may start at compact_revision + 1.
    let (_, batches) = w.create(spec("a", "", 5));
    assert_eq!(summary(&batches[0].events), [("a".into(), 5, true)]);
    assert!(!batches[0].canceled);
}

#[test]
fn catch_up_takes_turns_among_behind_watchers() {
    let mut w = World::new(WatchConfig {
        catch_up_revisions_max: 1,
        catch_up_watchers_max: 1,
        ..WatchConfig::default()
    });
    for i in 0..4 {
        w.put("a", &i.to_string());
    }
    let (one, _) = w.create(spec("a", "", 2));
    let (two, _) = w.create(spec("a", "", 2));
    let served: Vec<WatchId> = (0..4)
        .flat_map(|_| w.hub.catch_up(&w.mvcc))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(served, [one, two, one, two]);
}

// ---- Backpressure ------------------------------------------------------------

#[test]
fn a_paused_watcher_resumes_from_the_first_undelivered_revision() {
    let mut w = World::new(WatchConfig::default());
    let (id, _) = w.create(spec("a", "", 0));
    let delivered = only(w.put("a", "1"), id); // revision 2 arrives
    let undelivered = only(w.put("a", "2"), id); // revision 3: the stream is full
    assert!(
        w.hub
            .pause(id, undelivered[0].first_revision().expect("has events"))
    );
    assert!(only(w.put("a", "3"), id).is_empty()); // paused: nothing more
    assert!(w.hub.catch_up(&w.mvcc).is_empty()); // not until resumed
    assert!(w.hub.resume(id));
    let caught_up = only(w.hub.catch_up(&w.mvcc), id);
    let all: Vec<Event> = delivered
        .iter()
        .chain(&caught_up)
        .flat_map(|batch| batch.events.clone())
        .collect();
    let revisions: Vec<i64> = summary(&all)
        .iter()
        .map(|(_, revision, _)| *revision)
        .collect();
    assert_eq!(revisions, [2, 3, 4]);
    assert!(w.hub.is_synced(id));
}

#[test]
fn a_paused_watcher_overtaken_by_compaction_is_cancelled() {
    let mut w = World::new(WatchConfig::default());
    let (id, _) = w.create(spec("a", "", 0));
    let undelivered = only(w.put("a", "1"), id);
    w.hub
        .pause(id, undelivered[0].first_revision().expect("has events"));
    w.put("a", "2");
    w.compact(3);
    w.hub.resume(id);
    let batches = only(w.hub.catch_up(&w.mvcc), id);
    assert!(batches[0].canceled);
    assert_eq!(batches[0].compact_revision, 3);
    assert!(w.hub.is_empty());
}

#[test]
fn a_synced_watcher_that_missed_a_revision_catches_up_instead_of_skipping_it() {
    let mut w = World::new(WatchConfig::default());
    let (id, _) = w.create(spec("a", "", 0));
    // The driver applies revision 2 but forgets to tell the hub.
    let request = PutRequest {
        key: "a".into(),
        value: "1".into(),
        ..PutRequest::default()
    };
    w.mvcc
        .put(&request, |_| false, &mut WriteBatch::new())
        .expect("put");
    assert!(only(w.put("a", "2"), id).is_empty());
    let caught_up = only(w.hub.catch_up(&w.mvcc), id);
    let revisions: Vec<i64> = summary(&caught_up[0].events)
        .iter()
        .map(|(_, revision, _)| *revision)
        .collect();
    assert_eq!(revisions, [2, 3]);
}

// ---- Progress ------------------------------------------------------------------

#[test]
fn progress_is_due_each_interval_for_quiet_synced_watchers_that_asked() {
    assert_eq!(WatchConfig::default().progress_interval_ms, 600_000); // etcd: 10 minutes
    let mut w = World::new(WatchConfig {
        progress_interval_ms: 100,
        catch_up_revisions_max: 1,
        ..WatchConfig::default()
    });
    w.put("b", "1");
    w.put("b", "2");
    let asked = WatchSpec {
        progress_notify: true,
        ..spec("a", "", 0)
    };
    let (quiet, _) = w.create(asked.clone());
    let (busy, _) = w.create(asked.clone());
    let (_silent, _) = w.create(spec("a", "", 0));
    let (behind, _) = w.create(WatchSpec {
        key: "b".into(),
        start_revision: 2,
        ..asked
    });
    assert!(w.hub.progress_due(0).is_empty()); // starts the ticks
    assert!(w.hub.progress_due(99).is_empty());
    assert_eq!(w.hub.progress_due(100), [quiet, busy]);
    w.hub.cancel(busy);
    let (busy, _) = w.create(WatchSpec {
        progress_notify: true,
        ..spec("c", "", 0)
    });
    w.put("c", "1"); // events since the tick make progress redundant
    assert!(!w.hub.is_synced(behind));
    assert_eq!(w.hub.progress_due(200), [quiet]);
    assert_eq!(w.hub.progress_due(300), [quiet, busy]);
}

// ---- Property: ordered, no gaps, no duplicates -----------------------------------

#[derive(Clone, Debug)]
enum Step {
    Put(usize),
    Delete(usize),
    PutAll,
    Create {
        start_back: i64,
        range: usize,
        prev_kv: bool,
        no_put: bool,
        no_delete: bool,
    },
    CatchUp,
    /// The driver fails to deliver the next batch of watcher `n % len`.
    FailNext(usize),
    Resume(usize),
    Compact(u8),
}

const KEYS: [&str; 3] = ["a", "b", "c"];
/// Ranges a watcher may watch: (key, range_end).
const RANGES: [(&str, &str); 4] = [("a", ""), ("a", "c"), ("b", "\0"), ("", "\0")];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..KEYS.len()).prop_map(Step::Put),
        1 => (0..KEYS.len()).prop_map(Step::Delete),
        1 => Just(Step::PutAll),
        2 => (-1i64..6, 0..RANGES.len(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(start_back, range, prev_kv, no_put, no_delete)| Step::Create {
                start_back, range, prev_kv, no_put, no_delete,
            }
        ),
        2 => Just(Step::CatchUp),
        2 => any::<usize>().prop_map(Step::FailNext),
        1 => any::<usize>().prop_map(Step::Resume),
        1 => any::<u8>().prop_map(Step::Compact),
    ]
}

/// The driver's view of one watcher.
struct Client {
    id: WatchId,
    spec: WatchSpec,
    /// The first revision the watcher asked for.
    from: i64,
    batches: Vec<WatchBatch>,
    fail_next: bool,
    paused: bool,
    canceled_at: Option<i64>,
}

impl Client {
    /// What etcd promises this watcher: every event in its range from its
    /// start on, filtered, with prev_kv only if asked.
    fn expected(&self, all: &[Event]) -> Vec<Event> {
        let spec = &self.spec;
        let key: &[u8] = if spec.key.is_empty() { &[0] } else { &spec.key };
        all.iter()
            .filter(|event| {
                let Some(kv) = event.kv.as_ref() else {
                    return false;
                };
                let in_range = match spec.range_end.as_slice() {
                    [] => kv.key == key,
                    [0] => kv.key.as_slice() >= key,
                    end => kv.key.as_slice() >= key && kv.key.as_slice() < end,
                };
                let is_put = event.r#type == EventType::Put as i32;
                in_range
                    && kv.mod_revision >= self.from
                    && !(is_put && spec.no_put || !is_put && spec.no_delete)
            })
            .map(|event| Event {
                prev_kv: if spec.prev_kv {
                    event.prev_kv.clone()
                } else {
                    None
                },
                ..event.clone()
            })
            .collect()
    }

    fn delivered(&self) -> Vec<Event> {
        self.batches
            .iter()
            .flat_map(|batch| batch.events.clone())
            .collect()
    }
}

/// Hands batches to the clients, failing the ones armed to fail as a full
/// stream would (and pausing the watcher, as the driver contract says).
fn deliver(hub: &mut WatchHub, clients: &mut [Client], batches: Vec<(WatchId, WatchBatch)>) {
    for (id, batch) in batches {
        let Some(client) = clients.iter_mut().find(|c| c.id == id) else {
            panic!("a batch for unknown watcher {id:?}");
        };
        assert!(!client.paused, "a paused watcher was sent a batch");
        assert!(
            client.canceled_at.is_none(),
            "a cancelled watcher was sent a batch"
        );
        if client.fail_next
            && let Some(first) = batch.first_revision()
        {
            client.fail_next = false;
            client.paused = true;
            assert!(hub.pause(id, first));
            continue;
        }
        if batch.canceled {
            client.canceled_at = Some(batch.compact_revision);
        }
        client.batches.push(batch);
    }
}

fn run_steps(config: WatchConfig, steps: &[Step]) {
    let mut w = World::new(config);
    let mut clients: Vec<Client> = Vec::new();
    for step in steps {
        let batches = match step {
            Step::Put(k) => w.put(KEYS[*k], "v"),
            Step::Delete(k) => w.delete(KEYS[*k]),
            Step::PutAll => w.put_all(&KEYS, "all"),
            Step::Create {
                start_back,
                range,
                prev_kv,
                no_put,
                no_delete,
            } => {
                let start = if *start_back < 0 {
                    0
                } else {
                    (w.mvcc.revision() - start_back).max(1)
                };
                let (key, range_end) = RANGES[*range];
                let spec = WatchSpec {
                    key: key.into(),
                    range_end: range_end.into(),
                    start_revision: start,
                    prev_kv: *prev_kv,
                    no_put: *no_put,
                    no_delete: *no_delete,
                    progress_notify: false,
                };
                let (id, batches) = w.create(spec.clone());
                let from = if start == 0 {
                    w.mvcc.revision() + 1
                } else {
                    start
                };
                clients.push(Client {
                    id,
                    spec,
                    from,
                    batches: Vec::new(),
                    fail_next: false,
                    paused: false,
                    canceled_at: None,
                });
                batches.into_iter().map(|batch| (id, batch)).collect()
            }
            Step::CatchUp => w.hub.catch_up(&w.mvcc),
            Step::FailNext(n) => {
                let index = n % clients.len().max(1);
                if let Some(client) = clients.get_mut(index) {
                    client.fail_next = true;
                }
                Vec::new()
            }
            Step::Resume(n) => {
                let index = n % clients.len().max(1);
                if let Some(client) = clients.get_mut(index)
                    && client.paused
                {
                    client.paused = false;
                    assert!(w.hub.resume(client.id));
                }
                Vec::new()
            }
            Step::Compact(pick) => {
                let span = w.mvcc.revision() - w.mvcc.compact_revision();
                if span > 0 {
                    w.compact(w.mvcc.compact_revision() + 1 + i64::from(*pick) % span);
                }
                Vec::new()
            }
        };
        deliver(&mut w.hub, &mut clients, batches);
    }
    // Drain: resume everyone and catch up until every watcher is synced or gone.
    for client in &mut clients {
        client.fail_next = false;
        if client.paused {
            client.paused = false;
            w.hub.resume(client.id);
        }
    }
    for _ in 0..1000 {
        let batches = w.hub.catch_up(&w.mvcc);
        if batches.is_empty()
            && clients
                .iter()
                .all(|c| c.canceled_at.is_some() || w.hub.is_synced(c.id))
        {
            break;
        }
        deliver(&mut w.hub, &mut clients, batches);
    }
    for client in &clients {
        check_client(client, &w.events);
    }
}

fn check_client(client: &Client, all: &[Event]) {
    let expected = client.expected(all);
    let delivered = client.delivered();
    match client.canceled_at {
        // A cancelled watcher got a prefix, and compaction took the rest.
        Some(compact_revision) => {
            assert_eq!(
                delivered,
                expected[..delivered.len()],
                "watcher {:?}",
                client.id
            );
            let next = delivered
                .last()
                .and_then(|e| e.kv.as_ref())
                .map_or(client.from, |kv| kv.mod_revision + 1);
            assert!(
                next <= compact_revision,
                "cancelled at {compact_revision} though owed {next}"
            );
        }
        None => assert_eq!(delivered, expected, "watcher {:?}", client.id),
    }
    // Whole revisions: no revision spans two batches, and batches ascend.
    let mut last_revision = 0;
    for batch in &client.batches {
        let revisions: Vec<i64> = batch
            .events
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            .collect();
        if let (Some(first), Some(last)) = (revisions.first(), revisions.last()) {
            assert!(*first > last_revision, "revision {first} split or repeated");
            assert!(batch.revision >= *last);
            last_revision = *last;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_watcher_gets_its_changes_in_order_without_gaps_or_duplicates(
        revisions_max in 1usize..4,
        watchers_max in 1usize..3,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let config = WatchConfig {
            catch_up_revisions_max: revisions_max,
            catch_up_watchers_max: watchers_max,
            ..WatchConfig::default()
        };
        run_steps(config, &steps);
    }
}

#[test]
fn progress_never_promises_a_revision_a_paused_watcher_is_still_owed() {
    // etcd API guarantee: after a progress notification at revision R, a
    // watcher receives no event at or below R.
    let mut w = World::new(WatchConfig::default());
    let (id, _) = w.create(spec("a", "", 0));
    assert_eq!(w.hub.progress_floor(), None, "everyone synced");
    w.put("a", "1");
    w.put("a", "2");
    let batches = w.put("a", "3");
    let (_, undelivered) = batches
        .into_iter()
        .find(|(to, _)| *to == id)
        .expect("routed");
    let owed_from = undelivered.first_revision().expect("an event");
    w.hub.pause(id, owed_from);
    assert_eq!(w.hub.progress_floor(), Some(owed_from - 1));
    w.hub.resume(id);
    w.hub.catch_up(&w.mvcc);
    assert_eq!(w.hub.progress_floor(), None, "caught up again");
}
