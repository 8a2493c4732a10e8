//! The simulated peer network of the Raft and KV simulations: each message
//! draws its own delay (so messages overtake each other), may be lost or
//! duplicated, and is dropped on a blocked link, in either direction
//! independently, in flight too. Generic over what travels: the Raft sim
//! sends encoded bytes, the KV sim typed messages.

use std::collections::{BTreeMap, BTreeSet};

use rand::RngExt;
use rand::rngs::StdRng;

use crate::config::NetworkFaults;

/// A message on the wire, between node indexes.
#[derive(Debug)]
pub(crate) struct InFlight<M> {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) payload: M,
}

/// What happened to a message handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// On its way, once or twice.
    Queued { copies: u8 },
    /// Lost.
    Lost,
    /// Dropped by a blocked link.
    Blocked,
}

/// Messages in flight ordered by (delivery time, sequence number), so that
/// equal times deliver in sending order, and the blocked directed links.
#[derive(Debug)]
pub(crate) struct Network<M> {
    in_flight: BTreeMap<(u64, u64), InFlight<M>>,
    blocked: BTreeSet<(usize, usize)>,
    seq: u64,
}

impl<M> Default for Network<M> {
    fn default() -> Self {
        Self {
            in_flight: BTreeMap::new(),
            blocked: BTreeSet::new(),
            seq: 0,
        }
    }
}

impl<M: Clone> Network<M> {
    /// Hands a message to the network at `now_ms`. A message drawn for
    /// duplication is sent twice only if `may_duplicate` says so; it is
    /// asked after the draw, so an expensive check (decoding) runs only
    /// for the few messages drawn.
    pub(crate) fn send(
        &mut self,
        rng: &mut StdRng,
        faults: &NetworkFaults,
        now_ms: u64,
        message: InFlight<M>,
        may_duplicate: impl FnOnce(&M) -> bool,
    ) -> Sent {
        if self.is_blocked(message.from, message.to) {
            return Sent::Blocked;
        }
        if rng.random_bool(faults.loss) {
            return Sent::Lost;
        }
        let duplicate = rng.random_bool(faults.duplication) && may_duplicate(&message.payload);
        let copies = if duplicate {
            let copy = InFlight {
                payload: message.payload.clone(),
                ..message
            };
            self.enqueue(rng, faults, now_ms, copy);
            2
        } else {
            1
        };
        self.enqueue(rng, faults, now_ms, message);
        Sent::Queued { copies }
    }
}

impl<M> Network<M> {
    fn enqueue(&mut self, rng: &mut StdRng, faults: &NetworkFaults, now_ms: u64, m: InFlight<M>) {
        let delay = rng.random_range(faults.delay_min_ms..=faults.delay_max_ms);
        self.seq += 1;
        self.in_flight.insert((now_ms + delay, self.seq), m);
    }

    /// The next message due at or before `now_ms`, if any; `Some(None)` for
    /// one whose link was blocked since it was sent (dropped, as a partition
    /// drops what is in flight), so callers loop until `None`.
    pub(crate) fn next_due(&mut self, now_ms: u64) -> Option<Option<InFlight<M>>> {
        let entry = self.in_flight.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        let message = entry.remove();
        Some((!self.is_blocked(message.from, message.to)).then_some(message))
    }

    /// Whether nothing is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Blocks the link from `from` to `to`.
    pub(crate) fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Unblocks every link.
    pub(crate) fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any link is blocked.
    pub(crate) fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Whether either direction between `a` and `b` is blocked.
    pub(crate) fn is_cut(&self, a: usize, b: usize) -> bool {
        self.is_blocked(a, b) || self.is_blocked(b, a)
    }

    /// Whether the link from `from` to `to` is blocked.
    pub(crate) fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked.contains(&(from, to))
    }
}
