//! The watch checker: etcd's guarantee that every watcher of a range sees
//! the same events, in revision order, with no gap and no duplicate, across
//! reconnects (a client that resumes after the last revision it saw).
//!
//! A watcher's stream is checked against the *truth*: the agreed history of
//! the range, for instance a watch from revision 1 read after the writes
//! ended, or a replica's MVCC history. The stream must be a prefix of the
//! truth event for event, or all of it when the watcher was given time to
//! catch up. A violation names the first event that breaks it and says how:
//! out of revision order, seen before, after a gap, unknown to the history,
//! or missing at the end.
//!
//! ```
//! use calm_proto::etcd::mvccpb::{Event, KeyValue};
//! use calm_sim::watch::{Completeness, WatchViolation, check_watch};
//!
//! let put = |key: &str, revision: i64| Event {
//!     kv: Some(KeyValue { key: key.into(), mod_revision: revision, ..KeyValue::default() }),
//!     ..Event::default()
//! };
//! let truth = [put("a", 2), put("b", 3), put("a", 4)];
//! // A watcher that reconnected and resumed at revision 4: fine.
//! assert_eq!(check_watch(&truth, &truth[..3], Completeness::Complete), Ok(()));
//! // One that resumed at revision 3 again got that event twice.
//! let repeated = [put("a", 2), put("b", 3), put("b", 3), put("a", 4)];
//! assert!(matches!(
//!     check_watch(&truth, &repeated, Completeness::Prefix),
//!     Err(WatchViolation::Duplicate { at: 2, .. })
//! ));
//! ```

use calm_proto::etcd::mvccpb::Event;

/// Whether a stream may stop short of the truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    /// The watcher may not have caught up yet: any prefix of the truth.
    Prefix,
    /// The watcher was given time to catch up: all of the truth.
    Complete,
}

/// How a watcher's stream breaks etcd's watch guarantee. `at` is the index
/// of the offending event in the stream (or its length, for `Missing`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WatchViolation {
    /// An event of a lower revision than the one before it.
    #[error("event #{at} (revision {revision}) came after revision {previous}")]
    OutOfOrder {
        /// Index in the stream.
        at: usize,
        /// Its revision.
        revision: i64,
        /// The revision of the event before it.
        previous: i64,
    },
    /// An event the stream already held.
    #[error("event #{at} (revision {revision}) was already delivered")]
    Duplicate {
        /// Index in the stream.
        at: usize,
        /// Its revision.
        revision: i64,
    },
    /// A later event of the history arrived where an earlier one was due.
    #[error(
        "event #{at} (revision {revision}) skipped {skipped} event(s) from revision {expected}"
    )]
    Gap {
        /// Index in the stream.
        at: usize,
        /// The revision that arrived.
        revision: i64,
        /// The revision of the first event skipped.
        expected: i64,
        /// How many events were skipped.
        skipped: usize,
    },
    /// An event the history does not hold at all (a write nobody made, or
    /// one that differs from what was applied).
    #[error("event #{at} (revision {revision}) is not in the history: {event:?}")]
    Unknown {
        /// Index in the stream.
        at: usize,
        /// Its revision.
        revision: i64,
        /// The event.
        event: Box<Event>,
    },
    /// The stream ended before the history did, though the watcher had
    /// time to catch up.
    #[error("the watcher got {got} of {expected} events (up to revision {through})")]
    Missing {
        /// Events the watcher got.
        got: usize,
        /// Events in the history.
        expected: usize,
        /// The revision of its last event (0: none).
        through: i64,
    },
}

/// Checks one watcher's `stream` against the `truth`, see the module doc.
pub fn check_watch(
    truth: &[Event],
    stream: &[Event],
    completeness: Completeness,
) -> Result<(), WatchViolation> {
    for (at, event) in stream.iter().enumerate() {
        if truth.get(at) == Some(event) {
            continue;
        }
        return Err(classify(truth, stream, at));
    }
    if completeness == Completeness::Complete && stream.len() < truth.len() {
        return Err(WatchViolation::Missing {
            got: stream.len(),
            expected: truth.len(),
            through: stream.last().map_or(0, revision),
        });
    }
    Ok(())
}

/// Why `stream[at]`, the first event that differs from the truth, breaks
/// the guarantee. The checks go from the most specific to the least.
fn classify(truth: &[Event], stream: &[Event], at: usize) -> WatchViolation {
    let event = &stream[at];
    let got = revision(event);
    if let Some(previous) = at.checked_sub(1).map(|i| revision(&stream[i]))
        && got < previous
    {
        return WatchViolation::OutOfOrder {
            at,
            revision: got,
            previous,
        };
    }
    if stream[..at].contains(event) {
        return WatchViolation::Duplicate { at, revision: got };
    }
    let later = truth.get(at..).unwrap_or_default();
    match later.iter().position(|e| e == event) {
        Some(skipped) if skipped > 0 => WatchViolation::Gap {
            at,
            revision: got,
            expected: revision(&later[0]),
            skipped,
        },
        _ => WatchViolation::Unknown {
            at,
            revision: got,
            event: Box::new(event.clone()),
        },
    }
}

/// An event's revision: its key-value's mod revision (0 without one).
fn revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

#[cfg(test)]
mod tests {
    use calm_proto::etcd::mvccpb::event::EventType;
    use calm_proto::etcd::mvccpb::{Event, KeyValue};

    use super::{Completeness, WatchViolation, check_watch};

    fn event(key: &str, revision: i64, kind: EventType) -> Event {
        Event {
            r#type: kind as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: revision,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    /// A history with a txn (two events at revision 3).
    fn truth() -> Vec<Event> {
        vec![
            event("a", 2, EventType::Put),
            event("a", 3, EventType::Put),
            event("b", 3, EventType::Put),
            event("a", 4, EventType::Delete),
            event("c", 5, EventType::Put),
        ]
    }

    fn check(stream: &[Event], completeness: Completeness) -> Result<(), WatchViolation> {
        check_watch(&truth(), stream, completeness)
    }

    #[test]
    fn the_whole_history_and_any_prefix_of_it_pass() {
        let truth = truth();
        assert_eq!(check(&truth, Completeness::Complete), Ok(()));
        for end in 0..truth.len() {
            assert_eq!(check(&truth[..end], Completeness::Prefix), Ok(()), "{end}");
        }
    }

    #[test]
    fn a_watcher_that_stopped_short_fails_only_when_it_had_time_to_catch_up() {
        let truth = truth();
        assert_eq!(check(&truth[..3], Completeness::Prefix), Ok(()));
        assert_eq!(
            check(&truth[..3], Completeness::Complete),
            Err(WatchViolation::Missing {
                got: 3,
                expected: 5,
                through: 3
            })
        );
    }

    #[test]
    fn a_repeated_event_is_a_duplicate() {
        // A resume at the last seen revision instead of the one after.
        let t = truth();
        let stream = [t[0].clone(), t[1].clone(), t[2].clone(), t[1].clone()];
        assert!(matches!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::OutOfOrder { at: 3, .. } | WatchViolation::Duplicate { at: 3, .. })
        ));
        let stream = [t[0].clone(), t[0].clone()];
        assert_eq!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::Duplicate { at: 1, revision: 2 })
        );
    }

    #[test]
    fn a_skipped_event_is_a_gap_even_inside_one_revision() {
        let t = truth();
        // Half of the txn at revision 3 was lost.
        let stream = [t[0].clone(), t[2].clone()];
        assert_eq!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::Gap {
                at: 1,
                revision: 3,
                expected: 3,
                skipped: 1
            })
        );
        let stream = [t[0].clone(), t[4].clone()];
        assert!(matches!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::Gap { skipped: 3, .. })
        ));
    }

    #[test]
    fn events_out_of_revision_order_are_caught() {
        let t = truth();
        let stream = [t[0].clone(), t[3].clone(), t[1].clone()];
        assert!(matches!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::Gap { at: 1, .. })
        ));
        let stream = [t[3].clone(), t[0].clone()];
        assert!(matches!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::Gap { at: 0, .. })
        ));
        let mut swapped = t.clone();
        swapped.swap(0, 1);
        assert!(matches!(
            check(&swapped, Completeness::Prefix),
            Err(WatchViolation::Gap { at: 0, .. })
        ));
        let stream = [
            t[0].clone(),
            t[1].clone(),
            t[2].clone(),
            t[3].clone(),
            t[2].clone(),
        ];
        assert!(matches!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::OutOfOrder {
                at: 4,
                revision: 3,
                previous: 4
            })
        ));
    }

    #[test]
    fn an_event_the_history_never_held_is_unknown() {
        let t = truth();
        // The right revision, the wrong kind: a put reported as a delete.
        let stream = [t[0].clone(), event("a", 3, EventType::Delete)];
        assert!(matches!(
            check(&stream, Completeness::Prefix),
            Err(WatchViolation::Unknown {
                at: 1,
                revision: 3,
                ..
            })
        ));
        let stream = [
            t[0].clone(),
            t[1].clone(),
            t[2].clone(),
            t[3].clone(),
            t[4].clone(),
            event("d", 6, EventType::Put),
        ];
        assert!(matches!(
            check(&stream, Completeness::Complete),
            Err(WatchViolation::Unknown { at: 5, .. })
        ));
    }
}
