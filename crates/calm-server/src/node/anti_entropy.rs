//! The driver side of Merkle anti-entropy: which peer and ranges to compare,
//! carrying session messages over the `AntiEntropy` channel, and timeouts.
//!
//! A round picks one live peer that shares ranges with this node and opens
//! one initiator session per shared range, a few at a time. The responder
//! builds its tree for a range when the session's first message arrives.
//! Trees are built from the replica's digests when a session starts; a key
//! changed while a session runs is caught by the next round, since state
//! transfers are joins and repeating one is harmless.

use std::collections::{BTreeMap, VecDeque};

use calm_replica::{
    AntiEntropyConfig, AntiEntropySession, KeyRange, MerkleTree, Outcome, TreeShape, ValueDigest,
};
use calm_ring::KeyHash;
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

/// Sessions of one round open at once; the rest wait their turn.
const SESSIONS_IN_FLIGHT_MAX: usize = 4;

/// Sessions this node answers at once, over all peers (a tree holds up to
/// 8 MiB of leaf hashes); more are refused, and the initiator's session
/// times out and its next round retries.
const RESPONDER_SESSIONS_MAX: usize = 16;

/// One session message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeFrame {
    /// The initiator's name for the session, unique per initiator.
    pub session: u64,
    /// The range compared, so the responder can build its tree.
    pub range: KeyRange,
    /// The tree depth both ends use.
    pub depth: u8,
    /// True from initiator to responder.
    pub to_responder: bool,
    /// The session's own message.
    pub bytes: Vec<u8>,
}

impl AeFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a peer's frame; garbage is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<AeFrame, DecodeError> {
        codec::decode(bytes)
    }
}

/// What the driver must do after a session step.
#[derive(Debug, Default)]
pub struct AeEffects {
    /// Frames to send, each to its peer.
    pub frames: Vec<(NodeId, AeFrame)>,
    /// Keys whose whole state must be shipped to the peer.
    pub ship: Vec<(NodeId, Vec<u8>)>,
    /// Sessions that ended, for metrics.
    pub ended: Vec<Ended>,
}

/// How one session ended, for metrics.
#[derive(Debug)]
pub struct Ended {
    /// Bytes of session messages sent and received.
    pub bytes: u64,
    /// Tree nodes whose hashes were compared.
    pub ranges_compared: u64,
    /// `Ok` if it completed, else why it failed.
    pub outcome: Result<(), &'static str>,
}

struct Running {
    peer: NodeId,
    range: KeyRange,
    depth: u8,
    session: AntiEntropySession,
    tree: MerkleTree,
    deadline_ms: u64,
}

/// Every anti-entropy session of one node, both roles.
pub struct AntiEntropy {
    config: AntiEntropyConfig,
    session_timeout_ms: u64,
    next_session: u64,
    /// Ranges of the current round still to open, with their peer.
    queued: VecDeque<(NodeId, KeyRange)>,
    /// Sessions this node initiated, by session id.
    initiated: BTreeMap<u64, Running>,
    /// Sessions this node answers, by (initiator, session id).
    answering: BTreeMap<(NodeId, u64), Running>,
}

impl AntiEntropy {
    /// No sessions yet; a session that makes no progress for
    /// `session_timeout_ms` is dropped.
    pub fn new(session_timeout_ms: u64) -> AntiEntropy {
        AntiEntropy {
            config: AntiEntropyConfig::default(),
            session_timeout_ms,
            next_session: 0,
            queued: VecDeque::new(),
            initiated: BTreeMap::new(),
            answering: BTreeMap::new(),
        }
    }

    /// Whether a round is still under way.
    pub fn busy(&self) -> bool {
        !self.queued.is_empty() || !self.initiated.is_empty()
    }

    /// Queues a round with `peer` over `ranges`; ignored while a round runs.
    pub fn start_round(&mut self, peer: NodeId, ranges: Vec<KeyRange>) {
        if !self.busy() {
            self.queued = ranges.into_iter().map(|range| (peer, range)).collect();
        }
    }

    /// Opens queued sessions up to the in-flight bound, building each tree
    /// from `digests` (every key of the replica with its digest).
    pub fn open_sessions<'a>(
        &mut self,
        digests: impl Fn() -> Box<dyn Iterator<Item = (&'a [u8], u64)> + 'a>,
        now_ms: u64,
        effects: &mut AeEffects,
    ) {
        while self.initiated.len() < SESSIONS_IN_FLIGHT_MAX {
            let Some((peer, range)) = self.queued.pop_front() else {
                return;
            };
            // One pass over the digests (each encodes an object): the
            // range's entries size the tree and then fill it.
            let entries: Vec<(&[u8], u64)> = digests()
                .filter(|(key, _)| range.contains(KeyHash::of(key)))
                .collect();
            let shape = TreeShape::for_keys(entries.len() as u64);
            let tree = tree_of(Box::new(entries.into_iter()), range, shape);
            // Invariant: the default config passes its own validation.
            let session =
                AntiEntropySession::initiator(self.config).expect("valid anti-entropy config");
            let id = self.next_session;
            self.next_session += 1;
            let mut running = Running {
                peer,
                range,
                depth: shape.depth(),
                session,
                tree,
                deadline_ms: now_ms + self.session_timeout_ms,
            };
            let result = pump(&mut running, id, true, effects);
            self.settle_initiated(id, running, result, effects);
        }
    }

    /// Takes a frame from `from`.
    pub fn handle<'a>(
        &mut self,
        from: NodeId,
        frame: AeFrame,
        digests: impl FnOnce() -> Box<dyn Iterator<Item = (&'a [u8], u64)> + 'a>,
        now_ms: u64,
        effects: &mut AeEffects,
    ) {
        if frame.to_responder {
            self.answer(from, frame, digests, now_ms, effects);
        } else if let Some(mut running) = self.initiated.remove(&frame.session) {
            if running.peer != from {
                self.initiated.insert(frame.session, running);
                return;
            }
            running.deadline_ms = now_ms + self.session_timeout_ms;
            let result = running
                .session
                .handle(&mut running.tree, &frame.bytes)
                .map_err(|_| "peer_message_refused")
                .and_then(|()| pump(&mut running, frame.session, true, effects));
            self.settle_initiated(frame.session, running, result, effects);
        }
    }

    /// Drops sessions past their deadline.
    pub fn expire(&mut self, now_ms: u64, effects: &mut AeEffects) {
        let expired: Vec<u64> = self
            .initiated
            .iter()
            .filter(|(_, r)| r.deadline_ms <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(running) = self.initiated.remove(&id) {
                effects.ended.push(ended(&running, Err("timeout")));
            }
        }
        self.answering.retain(|_, r| r.deadline_ms > now_ms);
    }

    fn answer<'a>(
        &mut self,
        from: NodeId,
        frame: AeFrame,
        digests: impl FnOnce() -> Box<dyn Iterator<Item = (&'a [u8], u64)> + 'a>,
        now_ms: u64,
        effects: &mut AeEffects,
    ) {
        let key = (from, frame.session);
        let mut running = match self.answering.remove(&key) {
            Some(running) => running,
            None => {
                let Some(shape) = TreeShape::new(frame.depth) else {
                    return;
                };
                if self.answering.len() >= RESPONDER_SESSIONS_MAX {
                    return;
                }
                // Invariant: the default config passes its own validation.
                let session =
                    AntiEntropySession::responder(self.config).expect("valid anti-entropy config");
                Running {
                    peer: from,
                    range: frame.range,
                    depth: frame.depth,
                    session,
                    tree: tree_of(digests(), frame.range, shape),
                    deadline_ms: 0,
                }
            }
        };
        running.deadline_ms = now_ms + self.session_timeout_ms;
        let handled = running.session.handle(&mut running.tree, &frame.bytes);
        if handled.is_err() || pump(&mut running, frame.session, false, effects).is_err() {
            return;
        }
        if let Some(outcome) = running.session.outcome() {
            ship(from, outcome, effects);
        } else {
            self.answering.insert(key, running);
        }
    }

    fn settle_initiated(
        &mut self,
        id: u64,
        running: Running,
        result: Result<(), &'static str>,
        effects: &mut AeEffects,
    ) {
        match (result, running.session.outcome()) {
            (Err(reason), _) => effects.ended.push(ended(&running, Err(reason))),
            (Ok(()), Some(outcome)) => {
                ship(running.peer, outcome, effects);
                effects.ended.push(ended(&running, Ok(())));
            }
            (Ok(()), None) => {
                self.initiated.insert(id, running);
            }
        }
    }
}

/// Sends everything the session has to send.
fn pump(
    running: &mut Running,
    session: u64,
    to_responder: bool,
    effects: &mut AeEffects,
) -> Result<(), &'static str> {
    loop {
        match running.session.poll_transmit(&mut running.tree) {
            Ok(Some(bytes)) => effects.frames.push((
                running.peer,
                AeFrame {
                    session,
                    range: running.range,
                    depth: running.depth,
                    to_responder,
                    bytes,
                },
            )),
            Ok(None) => return Ok(()),
            Err(_) => return Err("session_failed"),
        }
    }
}

fn ended(running: &Running, outcome: Result<(), &'static str>) -> Ended {
    Ended {
        bytes: running.session.bytes_exchanged(),
        ranges_compared: running.session.ranges_compared(),
        outcome,
    }
}

fn ship(peer: NodeId, outcome: Outcome, effects: &mut AeEffects) {
    effects
        .ship
        .extend(outcome.send.into_iter().map(|key| (peer, key)));
}

fn tree_of<'a>(
    digests: Box<dyn Iterator<Item = (&'a [u8], u64)> + 'a>,
    range: KeyRange,
    shape: TreeShape,
) -> MerkleTree {
    let mut tree = MerkleTree::new(range, shape);
    for (key, digest) in digests {
        if range.contains(KeyHash::of(key)) {
            // Invariant: the key lies in the tree's range (checked above).
            tree.upsert(key, ValueDigest(digest))
                .expect("key inside the tree's range");
        }
    }
    tree
}
