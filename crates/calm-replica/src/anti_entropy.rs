//! The anti-entropy exchange: a sans-IO session that compares two replicas'
//! [`MerkleTree`]s over the same key range and lists the keys that differ
//! (Dynamo §4.7; Cassandra's repair; Riak's active anti-entropy).
//!
//! The initiator drives; the responder answers each request at once. The
//! initiator opens with its root. Wherever the hashes differ it sends the 16
//! child hashes of the differing nodes, and the responder answers with a
//! bitmap of the children that differ, one level at a time. At a differing
//! leaf the initiator sends its (key, digest) entries and the responder
//! answers which of them it lacks or holds with another digest, and which
//! keys of that leaf the initiator lacks. Identical trees cost one request
//! and one response; otherwise the cost is about `16 × 8 × depth` bytes of
//! hashes plus the entries of one leaf per differing key, whatever the size
//! of the data.
//!
//! The session never reads or writes values: it ends with an [`Outcome`] per
//! side, the keys whose CRDT states this side must ship to the peer and the
//! keys the peer will ship here. A key held by both sides with different
//! digests is in both lists: neither state need dominate, so both are
//! shipped and each side joins.
//!
//! ```
//! use calm_replica::{AntiEntropyConfig, AntiEntropySession, KeyRange, MerkleTree, ValueDigest};
//!
//! let mut ours = MerkleTree::with_expected_keys(KeyRange::FULL, 1_000);
//! let mut theirs = MerkleTree::with_expected_keys(KeyRange::FULL, 1_000);
//! for i in 0..1_000u32 {
//!     let key = i.to_be_bytes();
//!     ours.upsert(&key, ValueDigest(u64::from(i)))?;
//!     theirs.upsert(&key, ValueDigest(u64::from(i)))?;
//! }
//! theirs.upsert(&7u32.to_be_bytes(), ValueDigest(99))?; // a missed update
//! theirs.remove(&8u32.to_be_bytes())?; // a missed insert
//!
//! let config = AntiEntropyConfig::default();
//! let mut initiator = AntiEntropySession::initiator(config)?;
//! let mut responder = AntiEntropySession::responder(config)?;
//! // The driver moves bytes between the two until neither has more to say.
//! loop {
//!     let mut moved = false;
//!     while let Some(bytes) = initiator.poll_transmit(&mut ours)? {
//!         responder.handle(&mut theirs, &bytes)?;
//!         moved = true;
//!     }
//!     while let Some(bytes) = responder.poll_transmit(&mut theirs)? {
//!         initiator.handle(&mut ours, &bytes)?;
//!         moved = true;
//!     }
//!     if !moved { break; }
//! }
//! let outcome = initiator.outcome().expect("the session finished");
//! // Key 7 differs on both sides: each ships its state and joins the other's.
//! // Key 8 is only here: we ship it.
//! assert_eq!(outcome.send, [7u32.to_be_bytes().to_vec(), 8u32.to_be_bytes().to_vec()]);
//! assert_eq!(outcome.receive, [7u32.to_be_bytes().to_vec()]);
//! assert_eq!(responder.outcome().unwrap().receive, outcome.send);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Driver contract
//!
//! * Inputs: [`AntiEntropySession::handle`] with each message from the peer,
//!   in the order the peer sent them (the transport must keep order within a
//!   session, as a stream does).
//! * Outputs: call [`AntiEntropySession::poll_transmit`] until it returns
//!   `None` after creating the session and after every `handle`, and send
//!   each message to the peer in order. The initiator holds back requests
//!   while [`AntiEntropyConfig::in_flight_max`] are unanswered.
//! * Both take the side's tree: the session keeps only protocol state, so
//!   the replica core keeps applying writes to the tree between steps. A
//!   write during a session at worst makes a key show up as differing
//!   (shipping a state that then joins as a no-op) or be missed until the
//!   next session; delta propagation ships it anyway.
//! * When [`AntiEntropySession::is_finished`] holds, [`AntiEntropySession::outcome`]
//!   says which states to ship; the receiver joins them and updates its
//!   tree with the joined state's digest.
//! * Any error ends the session; the driver drops it (the peer's session then
//!   times out in the driver, which owns time).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

use crate::merkle::{FANOUT, KeyRange, MerkleTree, ValueDigest, fixed64};

/// The bounds of one session. Every queue and message the session builds or
/// accepts is limited by one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AntiEntropyConfig {
    /// Most (key, digest) entries a leaf request carries, and most keys a
    /// leaf response lists. A leaf holding more keys than this cannot be
    /// compared ([`AntiEntropyError::LeafTooLarge`]); trees sized with
    /// [`TreeShape::for_keys`](crate::TreeShape::for_keys) average 8.
    pub keys_per_message_max: usize,
    /// Most child hashes one request carries; a multiple of 16 rounds down.
    pub hashes_per_message_max: usize,
    /// Most requests the initiator leaves unanswered, and most responses the
    /// responder queues unsent.
    pub in_flight_max: usize,
    /// Most messages (sent plus received) one session may take.
    pub messages_max: u64,
    /// Largest encoded message accepted from the peer.
    pub message_bytes_max: usize,
}

impl Default for AntiEntropyConfig {
    /// 1,024 keys or hashes per message, 4 in flight, 1,000,000 messages,
    /// 4 MiB per message (1,024 keys of up to 4 KiB).
    fn default() -> Self {
        AntiEntropyConfig {
            keys_per_message_max: 1024,
            hashes_per_message_max: 1024,
            in_flight_max: 4,
            messages_max: 1_000_000,
            message_bytes_max: 4 << 20,
        }
    }
}

impl AntiEntropyConfig {
    /// Checks that every bound leaves room for a session to make progress.
    pub fn validate(&self) -> Result<(), AntiEntropyError> {
        let problem = if self.keys_per_message_max == 0 {
            "keys_per_message_max must be at least 1"
        } else if self.hashes_per_message_max < FANOUT {
            "hashes_per_message_max must be at least the fanout (16)"
        } else if self.in_flight_max == 0 {
            "in_flight_max must be at least 1"
        } else if self.messages_max < 2 {
            "messages_max must be at least 2"
        } else if self.message_bytes_max == 0 {
            "message_bytes_max must be at least 1"
        } else {
            return Ok(());
        };
        Err(AntiEntropyError::InvalidConfig(problem))
    }
}

/// Which end of the exchange a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opens the session and sends requests.
    Initiator,
    /// Answers requests.
    Responder,
}

/// A node hash on the wire: 8 fixed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHash(#[serde(with = "fixed64")] pub u64);

/// One message of the exchange, as encoded with `calm_types::codec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AntiEntropyMessage {
    /// Initiator to responder. Ids count up from 0 without gaps.
    Request {
        /// The request's sequence number in the session.
        id: u32,
        /// What is asked.
        body: AntiEntropyRequest,
    },
    /// Responder to initiator, in request order.
    Response {
        /// The id of the request answered.
        id: u32,
        /// The answer.
        body: AntiEntropyResponse,
    },
}

/// What the initiator asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AntiEntropyRequest {
    /// Opens the session over a range and shape, carrying the root hash.
    Open {
        /// The range the initiator's tree covers.
        range: KeyRange,
        /// The initiator's tree depth.
        depth: u8,
        /// The initiator's root hash.
        root: NodeHash,
    },
    /// The initiator's hashes of every child of `parents` (nodes at
    /// `level - 1`), `FANOUT` per parent in parent order.
    Hashes {
        /// The level of the children, 1 to depth.
        level: u8,
        /// Parent indices, strictly increasing.
        parents: Vec<u64>,
        /// The children's hashes.
        children: Vec<NodeHash>,
    },
    /// The initiator's entries of differing leaves.
    Leaves {
        /// Leaves in strictly increasing order.
        leaves: Vec<LeafEntries>,
    },
    /// Ends the session: the initiator has nothing more to compare.
    Close,
}

/// The entries of one leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafEntries {
    /// The leaf's index.
    pub leaf: u64,
    /// Every (key, digest) the sender holds in the leaf.
    pub entries: Vec<(Vec<u8>, ValueDigest)>,
}

/// What the responder answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AntiEntropyResponse {
    /// Whether the roots differ.
    Opened {
        /// True if the responder's root differs from the initiator's.
        differs: bool,
    },
    /// A bitmap over the request's children, least significant bit first:
    /// a set bit marks a child whose hash differs.
    Hashes {
        /// `ceil(children / 8)` bytes; bits past the last child are zero.
        differs: Vec<u8>,
    },
    /// The outcome for the requested leaves. Indices count the request's
    /// entries across all its leaves, from 0.
    Leaves {
        /// Entries the responder holds with another digest (both ship).
        differ: Vec<u32>,
        /// Entries the responder lacks (the initiator ships).
        absent: Vec<u32>,
        /// Keys in the requested leaves the initiator did not list (the
        /// responder ships).
        extra: Vec<Vec<u8>>,
    },
    /// The session is over.
    Closed,
}

/// What a finished session found, from one side's point of view. Both lists
/// are sorted and free of duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys whose states this side must ship to the peer.
    pub send: Vec<Vec<u8>>,
    /// Keys whose states the peer will ship to this side.
    pub receive: Vec<Vec<u8>>,
}

impl Outcome {
    /// Every key that differs between the two replicas, sorted.
    pub fn differing(&self) -> Vec<Vec<u8>> {
        let all: BTreeSet<&Vec<u8>> = self.send.iter().chain(&self.receive).collect();
        all.into_iter().cloned().collect()
    }
}

/// Why a session failed. Every error but [`AntiEntropyError::InvalidConfig`]
/// and [`AntiEntropyError::Ended`] ends the session: afterwards it accepts
/// nothing, sends nothing and has no outcome. The tree is never changed by a
/// session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AntiEntropyError {
    /// A bound in the configuration is unusable; no session was created.
    #[error("invalid anti-entropy config: {0}")]
    InvalidConfig(&'static str),
    /// The session had already finished or failed; nothing changed.
    #[error("the session has already ended")]
    Ended,
    /// The peer's bytes do not decode; the session ended.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// The peer's message exceeds `message_bytes_max`; the session ended.
    #[error("message of {bytes} bytes exceeds the bound of {max}")]
    MessageTooLarge {
        /// The message's length.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// A message carried another id than the one due; the session ended.
    #[error("expected message id {expected}, found {found}")]
    OutOfOrder {
        /// The id due next.
        expected: u32,
        /// The id received.
        found: u32,
    },
    /// A message of a kind the protocol does not allow at this point (a
    /// request sent to the initiator, a response that answers another kind
    /// of request, a request before `Open`); the session ended.
    #[error("unexpected message: {0}")]
    UnexpectedMessage(&'static str),
    /// The peer's tree covers another range; the session ended.
    #[error("the peer's range {theirs:?} differs from ours {ours:?}")]
    RangeMismatch {
        /// Our tree's range.
        ours: KeyRange,
        /// The range the peer opened with.
        theirs: KeyRange,
    },
    /// The peer's tree has another depth; the session ended.
    #[error("the peer's tree depth {theirs} differs from ours {ours}")]
    ShapeMismatch {
        /// Our tree's depth.
        ours: u8,
        /// The depth the peer opened with.
        theirs: u8,
    },
    /// A message that decodes but breaks the protocol's rules (a node index
    /// outside the tree, a bitmap of the wrong length, a key outside its
    /// leaf); the session ended.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A leaf holds more keys than one message may carry: the tree is too
    /// shallow for its key count and should be rebuilt deeper; the session
    /// ended.
    #[error("leaf {leaf} holds {keys} keys, more than the {max} a message carries")]
    LeafTooLarge {
        /// The leaf's index.
        leaf: u64,
        /// The keys it holds (or that were to be listed).
        keys: usize,
        /// `keys_per_message_max`.
        max: usize,
    },
    /// The peer sent more requests than `in_flight_max` without reading the
    /// responses; the session ended.
    #[error("more than {max} requests in flight")]
    TooManyInFlight {
        /// `in_flight_max`.
        max: usize,
    },
    /// The session reached `messages_max` messages; the session ended.
    #[error("the session reached its bound of {max} messages")]
    MessageBudgetExhausted {
        /// `messages_max`.
        max: u64,
    },
}

/// One end of an anti-entropy exchange over one tree.
///
/// Inputs: [`handle`](Self::handle). Outputs: [`poll_transmit`](Self::poll_transmit),
/// then [`outcome`](Self::outcome) once [`is_finished`](Self::is_finished).
/// Getters for metrics: [`bytes_exchanged`](Self::bytes_exchanged) and
/// [`ranges_compared`](Self::ranges_compared). See the module docs for the
/// call order.
#[derive(Debug)]
pub struct AntiEntropySession {
    role: Role,
    config: AntiEntropyConfig,
    phase: Phase,
    /// Initiator: the id of the next request. Responder: the id due next.
    next_id: u32,
    /// Initiator: requests awaiting their response, oldest first.
    in_flight: VecDeque<(u32, Sent)>,
    /// Initiator: nodes known to differ whose children or entries are still
    /// to compare, as (level, index).
    frontier: VecDeque<(u8, u64)>,
    /// Responder: encoded responses not yet polled.
    outbox: VecDeque<Vec<u8>>,
    send: BTreeSet<Vec<u8>>,
    receive: BTreeSet<Vec<u8>>,
    bytes_sent: u64,
    bytes_received: u64,
    messages: u64,
    ranges_compared: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Initiator: `Open` not yet sent. Responder: `Open` not yet received.
    Idle,
    /// Comparing.
    Running,
    /// Initiator: `Close` sent.
    Closing,
    /// Done, with an outcome.
    Finished,
    /// Ended by an error.
    Failed,
}

/// What the initiator remembers of an unanswered request, to check and
/// interpret its response.
#[derive(Debug)]
enum Sent {
    Open,
    Hashes {
        level: u8,
        parents: Vec<u64>,
    },
    Leaves {
        leaves: Vec<u64>,
        keys: Vec<Vec<u8>>,
    },
    Close,
}

impl AntiEntropySession {
    /// The initiating end over `tree`; its first [`poll_transmit`](Self::poll_transmit)
    /// yields the `Open` request.
    pub fn initiator(config: AntiEntropyConfig) -> Result<Self, AntiEntropyError> {
        Self::new(Role::Initiator, config)
    }

    /// The responding end; it waits for the initiator's `Open`.
    pub fn responder(config: AntiEntropyConfig) -> Result<Self, AntiEntropyError> {
        Self::new(Role::Responder, config)
    }

    fn new(role: Role, config: AntiEntropyConfig) -> Result<Self, AntiEntropyError> {
        config.validate()?;
        Ok(AntiEntropySession {
            role,
            config,
            phase: Phase::Idle,
            next_id: 0,
            in_flight: VecDeque::new(),
            frontier: VecDeque::new(),
            outbox: VecDeque::new(),
            send: BTreeSet::new(),
            receive: BTreeSet::new(),
            bytes_sent: 0,
            bytes_received: 0,
            messages: 0,
            ranges_compared: 0,
        })
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the exchange completed; [`outcome`](Self::outcome) is then set.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The keys to ship and to expect, once finished.
    pub fn outcome(&self) -> Option<Outcome> {
        self.is_finished().then(|| Outcome {
            send: self.send.iter().cloned().collect(),
            receive: self.receive.iter().cloned().collect(),
        })
    }

    /// Bytes of encoded messages sent plus received so far (for
    /// `calm_anti_entropy_bytes_total`).
    pub fn bytes_exchanged(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }

    /// Bytes of encoded messages sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes of encoded messages received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Messages sent plus received so far.
    pub fn messages_exchanged(&self) -> u64 {
        self.messages
    }

    /// Tree nodes (root, inner nodes and leaves) whose hashes were compared
    /// so far (for `calm_anti_entropy_ranges_compared_total`). Both ends
    /// count the same comparisons.
    pub fn ranges_compared(&self) -> u64 {
        self.ranges_compared
    }

    /// The next message to send to the peer, if any. Call until `None`.
    pub fn poll_transmit(
        &mut self,
        tree: &mut MerkleTree,
    ) -> Result<Option<Vec<u8>>, AntiEntropyError> {
        if self.phase == Phase::Failed {
            return Err(AntiEntropyError::Ended);
        }
        let bytes = match self.role {
            Role::Responder => self.outbox.pop_front(),
            Role::Initiator => match self.next_request(tree) {
                Ok(request) => request,
                Err(error) => return Err(self.fail(error)),
            },
        };
        if let Some(bytes) = &bytes {
            self.bytes_sent += bytes.len() as u64;
        }
        Ok(bytes)
    }

    /// Takes one message from the peer.
    pub fn handle(&mut self, tree: &mut MerkleTree, bytes: &[u8]) -> Result<(), AntiEntropyError> {
        if matches!(self.phase, Phase::Failed | Phase::Finished) {
            return Err(AntiEntropyError::Ended);
        }
        self.bytes_received += bytes.len() as u64;
        let result = self.take(tree, bytes);
        result.map_err(|error| self.fail(error))
    }

    fn fail(&mut self, error: AntiEntropyError) -> AntiEntropyError {
        self.phase = Phase::Failed;
        self.in_flight.clear();
        self.frontier.clear();
        self.outbox.clear();
        error
    }

    /// Counts one message against `messages_max`.
    fn count_message(&mut self) -> Result<(), AntiEntropyError> {
        if self.messages >= self.config.messages_max {
            return Err(AntiEntropyError::MessageBudgetExhausted {
                max: self.config.messages_max,
            });
        }
        self.messages += 1;
        Ok(())
    }

    fn take(&mut self, tree: &mut MerkleTree, bytes: &[u8]) -> Result<(), AntiEntropyError> {
        if bytes.len() > self.config.message_bytes_max {
            return Err(AntiEntropyError::MessageTooLarge {
                bytes: bytes.len(),
                max: self.config.message_bytes_max,
            });
        }
        self.count_message()?;
        let message: AntiEntropyMessage = codec::decode(bytes)?;
        match (self.role, message) {
            (Role::Responder, AntiEntropyMessage::Request { id, body }) => {
                self.check_id(id)?;
                if self.outbox.len() >= self.config.in_flight_max {
                    return Err(AntiEntropyError::TooManyInFlight {
                        max: self.config.in_flight_max,
                    });
                }
                let response = self.answer(tree, body)?;
                self.outbox
                    .push_back(codec::encode(&AntiEntropyMessage::Response {
                        id,
                        body: response,
                    }));
                Ok(())
            }
            (Role::Initiator, AntiEntropyMessage::Response { id, body }) => {
                let Some((expected, sent)) = self.in_flight.pop_front() else {
                    return Err(AntiEntropyError::UnexpectedMessage(
                        "a response with no request in flight",
                    ));
                };
                if id != expected {
                    return Err(AntiEntropyError::OutOfOrder {
                        expected,
                        found: id,
                    });
                }
                self.absorb(tree, sent, body)
            }
            (Role::Responder, AntiEntropyMessage::Response { .. }) => Err(
                AntiEntropyError::UnexpectedMessage("a response sent to the responder"),
            ),
            (Role::Initiator, AntiEntropyMessage::Request { .. }) => Err(
                AntiEntropyError::UnexpectedMessage("a request sent to the initiator"),
            ),
        }
    }

    fn check_id(&mut self, id: u32) -> Result<(), AntiEntropyError> {
        if id != self.next_id {
            return Err(AntiEntropyError::OutOfOrder {
                expected: self.next_id,
                found: id,
            });
        }
        self.next_id = self.next_id.wrapping_add(1);
        Ok(())
    }
}

/// The initiator's side: building requests and absorbing responses.
impl AntiEntropySession {
    /// Builds the next request, if the window and the work allow one.
    fn next_request(&mut self, tree: &mut MerkleTree) -> Result<Option<Vec<u8>>, AntiEntropyError> {
        if self.in_flight.len() >= self.config.in_flight_max {
            return Ok(None);
        }
        let (body, sent) = match self.phase {
            Phase::Idle => {
                let open = AntiEntropyRequest::Open {
                    range: tree.range(),
                    depth: tree.shape().depth(),
                    root: NodeHash(tree.root()),
                };
                self.phase = Phase::Running;
                (open, Sent::Open)
            }
            Phase::Running => match self.frontier.front() {
                Some(&(level, _)) if level < tree.shape().depth() => self.hashes_request(tree),
                Some(_) => self.leaves_request(tree)?,
                None if self.in_flight.is_empty() => {
                    self.phase = Phase::Closing;
                    (AntiEntropyRequest::Close, Sent::Close)
                }
                // Responses still due may widen the frontier.
                None => return Ok(None),
            },
            Phase::Closing | Phase::Finished | Phase::Failed => return Ok(None),
        };
        self.count_message()?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.in_flight.push_back((id, sent));
        Ok(Some(codec::encode(&AntiEntropyMessage::Request {
            id,
            body,
        })))
    }

    /// Children of differing inner nodes at the front of the frontier, all
    /// at one level, as many as a message may carry.
    fn hashes_request(&mut self, tree: &mut MerkleTree) -> (AntiEntropyRequest, Sent) {
        let parents_max = self.config.hashes_per_message_max / FANOUT;
        let level = self.frontier[0].0;
        let mut parents = Vec::new();
        while let Some(&(next_level, index)) = self.frontier.front() {
            if next_level != level || parents.len() == parents_max {
                break;
            }
            parents.push(index);
            self.frontier.pop_front();
        }
        // The frontier is filled in increasing index order per level, but
        // sorting keeps the request canonical whatever the arrival order.
        parents.sort_unstable();
        parents.dedup();
        let children = parents
            .iter()
            .flat_map(|&parent| (0..FANOUT as u64).map(move |c| parent * FANOUT as u64 + c))
            .map(|child| NodeHash(tree.node(level + 1, child)))
            .collect();
        let sent = Sent::Hashes {
            level: level + 1,
            parents: parents.clone(),
        };
        let request = AntiEntropyRequest::Hashes {
            level: level + 1,
            parents,
            children,
        };
        (request, sent)
    }

    /// Entries of differing leaves at the front of the frontier, as many
    /// whole leaves as `keys_per_message_max` allows.
    fn leaves_request(
        &mut self,
        tree: &MerkleTree,
    ) -> Result<(AntiEntropyRequest, Sent), AntiEntropyError> {
        let max = self.config.keys_per_message_max;
        let depth = tree.shape().depth();
        let mut leaves = Vec::new();
        let mut keys = Vec::new();
        let mut entries_total = 0;
        while let Some(&(level, leaf)) = self.frontier.front() {
            if level != depth {
                break;
            }
            let len = tree.leaf_len(leaf);
            if len > max {
                return Err(AntiEntropyError::LeafTooLarge {
                    leaf,
                    keys: len,
                    max,
                });
            }
            if entries_total + len > max {
                break;
            }
            self.frontier.pop_front();
            entries_total += len;
            let entries: Vec<(Vec<u8>, ValueDigest)> = tree
                .leaf_entries(leaf)
                .map(|(key, digest)| (key.to_vec(), digest))
                .collect();
            keys.extend(entries.iter().map(|(key, _)| key.clone()));
            leaves.push(LeafEntries { leaf, entries });
        }
        leaves.sort_unstable_by_key(|leaf| leaf.leaf);
        leaves.dedup_by_key(|leaf| leaf.leaf);
        let sent = Sent::Leaves {
            leaves: leaves.iter().map(|leaf| leaf.leaf).collect(),
            keys,
        };
        Ok((AntiEntropyRequest::Leaves { leaves }, sent))
    }

    /// Checks a response against the request it answers and records it.
    fn absorb(
        &mut self,
        tree: &mut MerkleTree,
        sent: Sent,
        body: AntiEntropyResponse,
    ) -> Result<(), AntiEntropyError> {
        match (sent, body) {
            (Sent::Open, AntiEntropyResponse::Opened { differs }) => {
                self.ranges_compared += 1;
                if differs {
                    self.frontier.push_back((0, 0));
                } else {
                    self.phase = Phase::Finished;
                }
            }
            (Sent::Hashes { level, parents }, AntiEntropyResponse::Hashes { differs }) => {
                let children = parents.len() * FANOUT;
                check_bitmap(&differs, children)?;
                self.ranges_compared += children as u64;
                for (i, &parent) in parents.iter().enumerate() {
                    for c in 0..FANOUT {
                        let bit = i * FANOUT + c;
                        if differs[bit / 8] & (1 << (bit % 8)) != 0 {
                            self.frontier
                                .push_back((level, parent * FANOUT as u64 + c as u64));
                        }
                    }
                }
            }
            (
                Sent::Leaves { leaves, keys },
                AntiEntropyResponse::Leaves {
                    differ,
                    absent,
                    extra,
                },
            ) => self.absorb_leaves(tree, &leaves, keys, differ, absent, extra)?,
            (Sent::Close, AntiEntropyResponse::Closed) => self.phase = Phase::Finished,
            _ => {
                return Err(AntiEntropyError::UnexpectedMessage(
                    "a response that answers another kind of request",
                ));
            }
        }
        Ok(())
    }

    /// Records a leaf response: entries the responder lacks or holds with
    /// another digest are shipped from here; differing and extra keys come
    /// from there.
    fn absorb_leaves(
        &mut self,
        tree: &MerkleTree,
        leaves: &[u64],
        keys: Vec<Vec<u8>>,
        differ: Vec<u32>,
        absent: Vec<u32>,
        extra: Vec<Vec<u8>>,
    ) -> Result<(), AntiEntropyError> {
        check_indices(&differ, keys.len())?;
        check_indices(&absent, keys.len())?;
        if differ.iter().any(|i| absent.binary_search(i).is_ok()) {
            return Err(AntiEntropyError::Invalid(
                "an entry is both differing and absent".into(),
            ));
        }
        if extra.len() > self.config.keys_per_message_max {
            return Err(AntiEntropyError::Invalid(format!(
                "{} extra keys exceed the bound of {}",
                extra.len(),
                self.config.keys_per_message_max
            )));
        }
        let listed: BTreeSet<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut seen = BTreeSet::new();
        for key in &extra {
            let in_requested_leaf = tree
                .leaf_of(key)
                .is_some_and(|leaf| leaves.binary_search(&leaf).is_ok());
            if !in_requested_leaf || listed.contains(key.as_slice()) || !seen.insert(key) {
                return Err(AntiEntropyError::Invalid(
                    "an extra key outside the requested leaves, listed, or repeated".into(),
                ));
            }
        }
        self.ranges_compared += leaves.len() as u64;
        for &i in &differ {
            self.send.insert(keys[i as usize].clone());
            self.receive.insert(keys[i as usize].clone());
        }
        for &i in &absent {
            self.send.insert(keys[i as usize].clone());
        }
        self.receive.extend(extra);
        Ok(())
    }
}

/// A bitmap over `bits` bits must be `ceil(bits / 8)` bytes with no bit set
/// past the last.
fn check_bitmap(bitmap: &[u8], bits: usize) -> Result<(), AntiEntropyError> {
    let bytes = bits.div_ceil(8);
    let spare_set =
        !bits.is_multiple_of(8) && bitmap.last().is_some_and(|&last| last >> (bits % 8) != 0);
    if bitmap.len() != bytes || spare_set {
        return Err(AntiEntropyError::Invalid(format!(
            "a bitmap of {} bytes for {bits} children",
            bitmap.len()
        )));
    }
    Ok(())
}

/// Indices must be strictly increasing and below `len`.
fn check_indices(indices: &[u32], len: usize) -> Result<(), AntiEntropyError> {
    let increasing = indices.windows(2).all(|pair| pair[0] < pair[1]);
    let in_bounds = indices.last().is_none_or(|&last| (last as usize) < len);
    if !increasing || !in_bounds {
        return Err(AntiEntropyError::Invalid(format!(
            "entry indices not strictly increasing below {len}"
        )));
    }
    Ok(())
}

/// The responder's side: answering requests.
impl AntiEntropySession {
    fn answer(
        &mut self,
        tree: &mut MerkleTree,
        body: AntiEntropyRequest,
    ) -> Result<AntiEntropyResponse, AntiEntropyError> {
        match (self.phase, body) {
            (Phase::Idle, AntiEntropyRequest::Open { range, depth, root }) => {
                if range != tree.range() {
                    return Err(AntiEntropyError::RangeMismatch {
                        ours: tree.range(),
                        theirs: range,
                    });
                }
                if depth != tree.shape().depth() {
                    return Err(AntiEntropyError::ShapeMismatch {
                        ours: tree.shape().depth(),
                        theirs: depth,
                    });
                }
                self.ranges_compared += 1;
                let differs = root.0 != tree.root();
                // Equal roots end the exchange: the initiator sends nothing more.
                self.phase = if differs {
                    Phase::Running
                } else {
                    Phase::Finished
                };
                Ok(AntiEntropyResponse::Opened { differs })
            }
            (Phase::Idle, _) => Err(AntiEntropyError::UnexpectedMessage("a request before Open")),
            (Phase::Running, AntiEntropyRequest::Open { .. }) => {
                Err(AntiEntropyError::UnexpectedMessage("a second Open"))
            }
            (
                Phase::Running,
                AntiEntropyRequest::Hashes {
                    level,
                    parents,
                    children,
                },
            ) => self.answer_hashes(tree, level, &parents, &children),
            (Phase::Running, AntiEntropyRequest::Leaves { leaves }) => {
                self.answer_leaves(tree, leaves)
            }
            (Phase::Running, AntiEntropyRequest::Close) => {
                self.phase = Phase::Finished;
                Ok(AntiEntropyResponse::Closed)
            }
            (Phase::Closing | Phase::Finished | Phase::Failed, _) => Err(AntiEntropyError::Ended),
        }
    }

    fn answer_hashes(
        &mut self,
        tree: &mut MerkleTree,
        level: u8,
        parents: &[u64],
        children: &[NodeHash],
    ) -> Result<AntiEntropyResponse, AntiEntropyError> {
        let shape = tree.shape();
        if level == 0 || level > shape.depth() {
            return Err(AntiEntropyError::Invalid(format!(
                "level {level} outside 1..={}",
                shape.depth()
            )));
        }
        let parents_max = self.config.hashes_per_message_max / FANOUT;
        let increasing = parents.windows(2).all(|pair| pair[0] < pair[1]);
        let in_bounds = parents
            .last()
            .is_some_and(|&last| last < shape.nodes_at(level - 1));
        if parents.len() > parents_max
            || !increasing
            || !in_bounds
            || children.len() != parents.len() * FANOUT
        {
            return Err(AntiEntropyError::Invalid(format!(
                "{} parents (at most {parents_max}, strictly increasing, inside the level) \
                 with {} children",
                parents.len(),
                children.len()
            )));
        }
        let mut differs = vec![0u8; children.len().div_ceil(8)];
        for (i, &parent) in parents.iter().enumerate() {
            for c in 0..FANOUT {
                let bit = i * FANOUT + c;
                let ours = tree.node(level, parent * FANOUT as u64 + c as u64);
                if ours != children[bit].0 {
                    differs[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        self.ranges_compared += children.len() as u64;
        Ok(AntiEntropyResponse::Hashes { differs })
    }

    fn answer_leaves(
        &mut self,
        tree: &MerkleTree,
        leaves: Vec<LeafEntries>,
    ) -> Result<AntiEntropyResponse, AntiEntropyError> {
        let max = self.config.keys_per_message_max;
        check_leaves(tree, &leaves, max)?;
        let (mut differ, mut absent, mut extra) = (Vec::new(), Vec::new(), Vec::new());
        let mut index = 0u32;
        for LeafEntries { leaf, entries } in &leaves {
            let mut ours: BTreeMap<&[u8], ValueDigest> = tree.leaf_entries(*leaf).collect();
            for (key, digest) in entries {
                match ours.remove(key.as_slice()) {
                    None => absent.push(index),
                    Some(our) if our != *digest => differ.push(index),
                    Some(_) => {}
                }
                index += 1;
            }
            extra.extend(ours.into_keys().map(<[u8]>::to_vec));
            if extra.len() > max {
                return Err(AntiEntropyError::LeafTooLarge {
                    leaf: *leaf,
                    keys: extra.len(),
                    max,
                });
            }
        }
        self.ranges_compared += leaves.len() as u64;
        let keys = leaves
            .into_iter()
            .flat_map(|leaf| leaf.entries)
            .map(|(key, _)| key);
        for (i, key) in (0u32..).zip(keys) {
            let in_differ = differ.binary_search(&i).is_ok();
            if in_differ || absent.binary_search(&i).is_ok() {
                self.receive.insert(key.clone());
            }
            if in_differ {
                self.send.insert(key);
            }
        }
        self.send.extend(extra.iter().cloned());
        Ok(AntiEntropyResponse::Leaves {
            differ,
            absent,
            extra,
        })
    }
}

/// Leaves must be non-empty, strictly increasing, inside the tree, carry at
/// most `max` entries in all, and list each key once, in its own leaf.
fn check_leaves(
    tree: &MerkleTree,
    leaves: &[LeafEntries],
    max: usize,
) -> Result<(), AntiEntropyError> {
    let increasing = leaves.windows(2).all(|pair| pair[0].leaf < pair[1].leaf);
    let in_bounds = leaves
        .last()
        .is_some_and(|last| last.leaf < tree.shape().leaves());
    let entries: usize = leaves.iter().map(|leaf| leaf.entries.len()).sum();
    if !increasing || !in_bounds || entries > max {
        return Err(AntiEntropyError::Invalid(format!(
            "{} leaves (non-empty, strictly increasing, inside the tree) with {entries} \
             entries (at most {max})",
            leaves.len()
        )));
    }
    for LeafEntries { leaf, entries } in leaves {
        let mut seen = BTreeSet::new();
        for (key, _) in entries {
            if tree.leaf_of(key) != Some(*leaf) || !seen.insert(key.as_slice()) {
                return Err(AntiEntropyError::Invalid(format!(
                    "a key listed twice or outside leaf {leaf}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "anti_entropy_tests.rs"]
mod tests;
