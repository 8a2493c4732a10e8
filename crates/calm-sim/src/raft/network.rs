//! The simulated peer network between voters: each message draws its own
//! delay (so messages overtake each other), may be lost or duplicated, and
//! is dropped on a blocked link, in either direction independently.

use std::collections::{BTreeMap, BTreeSet};

use calm_types::codec;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rand::RngExt;
use rand::rngs::StdRng;
use serde::Deserialize;

use crate::config::NetworkFaults;

/// A message on the wire.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) bytes: Vec<u8>,
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

/// The network: messages in flight ordered by (delivery time, sequence
/// number), so that equal times deliver in sending order, and the set of
/// blocked directed links.
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
        may_duplicate_proposals: bool,
        now_ms: u64,
        message: InFlight,
    ) -> Sent {
        if self.is_blocked(message.from, message.to) {
            return Sent::Blocked;
        }
        if rng.random_bool(faults.loss) {
            return Sent::Lost;
        }
        // Decoding only the messages drawn for duplication keeps the common
        // path cheap.
        let duplicate = rng.random_bool(faults.duplication)
            && (may_duplicate_proposals || !is_forwarded_proposal(&message.bytes));
        let copies = if duplicate { 2 } else { 1 };
        if copies == 2 {
            let copy = InFlight {
                bytes: message.bytes.clone(),
                ..message
            };
            self.enqueue(rng, faults, now_ms, copy);
        }
        self.enqueue(rng, faults, now_ms, message);
        Sent::Queued { copies }
    }

    fn enqueue(&mut self, rng: &mut StdRng, faults: &NetworkFaults, now_ms: u64, m: InFlight) {
        let delay = rng.random_range(faults.delay_min_ms..=faults.delay_max_ms);
        self.seq += 1;
        self.in_flight.insert((now_ms + delay, self.seq), m);
    }

    /// The next message due at or before `now_ms`, if any; `None` for one
    /// whose link was blocked since it was sent (it is dropped, as a
    /// partition drops what is in flight), so callers loop on
    /// [`has_due`](Self::has_due).
    pub(super) fn next_due(&mut self, now_ms: u64) -> Option<Option<InFlight>> {
        let entry = self.in_flight.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        let message = entry.remove();
        Some((!self.is_blocked(message.from, message.to)).then_some(message))
    }

    /// Blocks the link from `from` to `to`.
    pub(super) fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Unblocks every link.
    pub(super) fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any link is blocked.
    pub(super) fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked.contains(&(from, to))
    }
}

/// The keyspace's peer envelope, as far as the simulator needs to read
/// it: a Raft message is its first variant (postcard writes the variant
/// index first, so a lease question or answer simply fails to decode).
#[derive(Deserialize)]
enum Envelope {
    Raft(Vec<u8>),
}

/// Whether `bytes` carry a follower's forwarded proposal, which the network
/// must not duplicate unless told to (see
/// [`KeyspaceSimConfig::duplicate_proposals`](super::KeyspaceSimConfig::duplicate_proposals)).
fn is_forwarded_proposal(bytes: &[u8]) -> bool {
    let Ok(Envelope::Raft(raft)) = codec::decode::<Envelope>(bytes) else {
        return false;
    };
    Message::parse_from_bytes(&raft)
        .is_ok_and(|message| message.get_msg_type() == MessageType::MsgPropose)
}
