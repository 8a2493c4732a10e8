//! The simulated peer network between KV nodes, the Raft sim's model over
//! typed messages: each message draws its own delay (so messages overtake
//! each other), may be lost or duplicated, and is dropped on a blocked
//! link, in either direction independently, in flight too.

use std::collections::{BTreeMap, BTreeSet};

use calm_replica::Bytes;
use calm_replica::coordinator::{KvMessage, KvReply};
use rand::RngExt;
use rand::rngs::StdRng;

use crate::config::NetworkFaults;

/// What travels between nodes.
#[derive(Clone, Debug)]
pub(super) enum Wire {
    /// A coordinator's or a store's message.
    Message(KvMessage),
    /// A replica's answer.
    Reply(KvReply),
    /// Anti-entropy: an owner's durable encoded object of `key`.
    Transfer { key: Bytes, object: Vec<u8> },
}

/// A message on the wire, between node indexes.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) wire: Wire,
}

/// What happened to a message handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sent {
    /// On its way, once or twice.
    Queued { copies: u8 },
    /// Lost.
    Lost,
    /// Dropped by a blocked link.
    Blocked,
}

/// Messages in flight ordered by (delivery time, sequence number), so that
/// equal times deliver in sending order, and the blocked directed links.
#[derive(Debug, Default)]
pub(super) struct Network {
    in_flight: BTreeMap<(u64, u64), InFlight>,
    blocked: BTreeSet<(usize, usize)>,
    seq: u64,
}

impl Network {
    /// Hands a message to the network at `now_ms`.
    pub(super) fn send(
        &mut self,
        rng: &mut StdRng,
        faults: &NetworkFaults,
        now_ms: u64,
        message: InFlight,
    ) -> Sent {
        if self.is_blocked(message.from, message.to) {
            return Sent::Blocked;
        }
        if rng.random_bool(faults.loss) {
            return Sent::Lost;
        }
        let copies = if rng.random_bool(faults.duplication) {
            let copy = InFlight {
                wire: message.wire.clone(),
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

    fn enqueue(&mut self, rng: &mut StdRng, faults: &NetworkFaults, now_ms: u64, m: InFlight) {
        let delay = rng.random_range(faults.delay_min_ms..=faults.delay_max_ms);
        self.seq += 1;
        self.in_flight.insert((now_ms + delay, self.seq), m);
    }

    /// The next message due at or before `now_ms`, if any; `Some(None)` for
    /// one whose link was blocked since it was sent (dropped, as a partition
    /// drops what is in flight).
    pub(super) fn next_due(&mut self, now_ms: u64) -> Option<Option<InFlight>> {
        let entry = self.in_flight.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        let message = entry.remove();
        Some((!self.is_blocked(message.from, message.to)).then_some(message))
    }

    /// Whether nothing is in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Blocks the link from `from` to `to`.
    pub(super) fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Unblocks every link.
    pub(super) fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether either direction between `a` and `b` is blocked.
    pub(super) fn is_cut(&self, a: usize, b: usize) -> bool {
        self.is_blocked(a, b) || self.is_blocked(b, a)
    }

    pub(super) fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked.contains(&(from, to))
    }
}

/// A compact fingerprint of a message for the trace hash: its kind, request,
/// key and object bytes (Debug formatting would cost more than the run).
pub(super) fn fingerprint(wire: &Wire) -> u64 {
    let mut bytes = Vec::new();
    let mut put = |tag: u8, request: u64, key: &[u8], object: &[u8]| {
        bytes.push(tag);
        bytes.extend_from_slice(&request.to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(object);
    };
    match wire {
        Wire::Message(message) => match message {
            KvMessage::Store {
                request,
                key,
                object,
                hint,
            } => put(hint.map_or(1, |_| 2), request.0, key, &object.encode()),
            KvMessage::Fetch { request, key, .. } => put(3, request.0, key, &[]),
            KvMessage::Repair { key, object, .. } => put(4, 0, key, &object.encode()),
            KvMessage::Handoff { key, object } => put(5, 0, key, &object.encode()),
            KvMessage::Reap { key, object } => put(6, 0, key, &object.encode()),
        },
        Wire::Reply(reply) => match reply {
            KvReply::Stored { request } => put(7, request.0, &[], &[]),
            KvReply::Fetched { request, object } => put(8, request.0, &[], &object.encode()),
            KvReply::Failed { request } => put(9, request.0, &[], &[]),
            KvReply::HandedOff { key, digest } => put(10, *digest, key, &[]),
        },
        Wire::Transfer { key, object } => put(11, 0, key, object),
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}
