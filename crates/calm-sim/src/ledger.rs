//! The clients' record of what they were told: which increments were
//! acknowledged and which are still in doubt.

use std::collections::BTreeMap;

use calm_replica::{Reply, RequestId};

/// Per counter key: the sum of acknowledged increments and of those whose
/// outcome the client never learned.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Increments submitted and not yet answered: (key, amount).
    pending: BTreeMap<RequestId, (Vec<u8>, u64)>,
    acked: BTreeMap<Vec<u8>, u64>,
}

impl Ledger {
    /// An increment of `amount` to `key` was submitted as request `id`.
    pub(crate) fn submitted(&mut self, id: RequestId, key: Vec<u8>, amount: u64) {
        self.pending.insert(id, (key, amount));
    }

    /// Counts `amount` as acknowledged without waiting for a reply (only the
    /// planted `AckBeforeFlush` bug does this).
    pub(crate) fn acknowledge_at_once(&mut self, key: Vec<u8>, amount: u64) {
        *self.acked.entry(key).or_default() += amount;
    }

    /// A reply reached the client. An `Err` changed nothing (every
    /// `ReplicaError` variant says so), so the increment is forgotten; an
    /// `Ok` is acknowledged. Replies to other requests are ignored.
    pub(crate) fn replied(&mut self, reply: &Reply) {
        let Some((key, amount)) = self.pending.remove(&reply.id) else {
            return;
        };
        if reply.result.is_ok() {
            *self.acked.entry(key).or_default() += amount;
        }
    }

    /// The sum of acknowledged increments to `key`.
    pub(crate) fn acked(&self, key: &[u8]) -> u64 {
        self.acked.get(key).copied().unwrap_or(0)
    }

    /// The sum of increments to `key` never answered: each may or may not
    /// have landed (a crash ate the reply, or the write with it).
    pub(crate) fn in_doubt(&self, key: &[u8]) -> u64 {
        self.pending
            .values()
            .filter(|(k, _)| k == key)
            .map(|(_, amount)| amount)
            .sum()
    }

    /// Increments acknowledged so far, over every key.
    pub(crate) fn acked_total(&self) -> u64 {
        self.acked.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use calm_replica::{Ack, CausalToken, ReplicaError};

    use super::*;

    fn reply(id: u64, ok: bool) -> Reply {
        let result = if ok {
            Ok(Ack {
                value: None,
                token: CausalToken::empty(b"c"),
            })
        } else {
            Err(ReplicaError::Overloaded { bound: "test" })
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
            ledger.submitted(RequestId(id), b"c".to_vec(), id);
        }
        ledger.replied(&reply(1, true));
        ledger.replied(&reply(2, false));
        ledger.replied(&reply(1, true)); // a duplicate reply counts once
        assert_eq!((ledger.acked(b"c"), ledger.in_doubt(b"c")), (1, 3));
        assert_eq!(ledger.acked_total(), 1);
    }
}
