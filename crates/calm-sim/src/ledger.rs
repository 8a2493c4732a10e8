//! The clients' record of what they were told: which counter writes were
//! acknowledged and which are still in doubt, per key and direction.

use std::collections::BTreeMap;

use calm_replica::{Reply, RequestId};

/// What one client request does to a counter, as the ledger counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Adds to the value (an increment or a bounded increment).
    Up(u64),
    /// Subtracts from the value (a bounded decrement).
    Down(u64),
    /// Moves bounded-counter rights; the value does not change, so only its
    /// acknowledgement is counted.
    Transfer,
}

/// Sums of amounts per direction, for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Sum of the increments.
    pub(crate) up: u64,
    /// Sum of the decrements.
    pub(crate) down: u64,
}

impl Tally {
    fn add(&mut self, change: Change) {
        match change {
            Change::Up(amount) => self.up += amount,
            Change::Down(amount) => self.down += amount,
            Change::Transfer => {}
        }
    }
}

/// Per counter key: the sums of acknowledged changes and of those whose
/// outcome the client never learned.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Requests submitted and not yet answered.
    pending: BTreeMap<RequestId, (Vec<u8>, Change)>,
    acked: BTreeMap<Vec<u8>, Tally>,
}

impl Ledger {
    /// `change` to `key` was submitted as request `id`.
    pub(crate) fn submitted(&mut self, id: RequestId, key: Vec<u8>, change: Change) {
        self.pending.insert(id, (key, change));
    }

    /// Counts `change` as acknowledged without waiting for a reply (only
    /// the planted bugs do this).
    pub(crate) fn acknowledge_at_once(&mut self, key: Vec<u8>, change: Change) {
        self.acked.entry(key).or_default().add(change);
    }

    /// A reply reached the client. An `Err` changed nothing (every
    /// `ReplicaError` variant says so), so the change is forgotten; an `Ok`
    /// is acknowledged. Returns the acknowledged change; replies to other
    /// requests (and duplicates) are ignored.
    pub(crate) fn replied(&mut self, reply: &Reply) -> Option<Change> {
        let (key, change) = self.pending.remove(&reply.id)?;
        reply.result.is_ok().then(|| {
            self.acked.entry(key).or_default().add(change);
            change
        })
    }

    /// The sums of acknowledged changes to `key`.
    pub(crate) fn acked(&self, key: &[u8]) -> Tally {
        self.acked.get(key).copied().unwrap_or_default()
    }

    /// The sums of changes to `key` never answered: each may or may not
    /// have landed (a crash ate the reply, or the write with it).
    pub(crate) fn in_doubt(&self, key: &[u8]) -> Tally {
        let mut tally = Tally::default();
        for (_, change) in self.pending.values().filter(|(k, _)| k == key) {
            tally.add(*change);
        }
        tally
    }

    /// Increments acknowledged so far, over every key.
    pub(crate) fn acked_total(&self) -> u64 {
        self.acked.values().map(|tally| tally.up).sum()
    }
}

#[cfg(test)]
mod tests {
    use calm_replica::{Ack, CausalToken, ObjectError, ReplicaError};

    use super::*;

    fn reply(id: u64, ok: bool) -> Reply {
        let result = if ok {
            Ok(Ack {
                value: None,
                token: CausalToken::empty(b"c"),
            })
        } else {
            let refused = ObjectError::InsufficientRights {
                available: 0,
                requested: 1,
            };
            Err(ReplicaError::Object(refused))
        };
        Reply {
            id: RequestId(id),
            result,
        }
    }

    #[test]
    fn an_ok_reply_acknowledges_an_error_forgets_and_silence_stays_in_doubt() {
        let mut ledger = Ledger::default();
        for id in 1..=3 {
            ledger.submitted(RequestId(id), b"c".to_vec(), Change::Up(id));
        }
        assert_eq!(ledger.replied(&reply(1, true)), Some(Change::Up(1)));
        assert_eq!(ledger.replied(&reply(2, false)), None);
        assert_eq!(ledger.replied(&reply(1, true)), None); // a duplicate counts once
        assert_eq!(ledger.acked(b"c"), Tally { up: 1, down: 0 });
        assert_eq!(ledger.in_doubt(b"c"), Tally { up: 3, down: 0 });
        assert_eq!(ledger.acked_total(), 1);
    }

    #[test]
    fn decrements_and_transfers_are_tallied_apart_from_increments() {
        let mut ledger = Ledger::default();
        let changes = [
            Change::Up(10),
            Change::Down(4),
            Change::Transfer,
            Change::Down(2),
        ];
        for (id, change) in (1..).zip(changes) {
            ledger.submitted(RequestId(id), b"b".to_vec(), change);
        }
        for id in 1..=3 {
            ledger.replied(&reply(id, true));
        }
        assert_eq!(ledger.acked(b"b"), Tally { up: 10, down: 4 });
        assert_eq!(ledger.in_doubt(b"b"), Tally { up: 0, down: 2 });
        assert_eq!(ledger.acked(b"c"), Tally::default());
    }
}
