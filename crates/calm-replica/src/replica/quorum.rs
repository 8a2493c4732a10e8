//! CRDT requests at `one`/`quorum`/`all`: the replica that receives one
//! coordinates it among the key's natural owners (Dynamo §4.5, without
//! sloppy quorums).
//!
//! * A **write** is applied here as at `local`; after this node's sync its
//!   delta goes straight to every other owner that is up
//!   ([`Message::Replicate`]), each of which joins it and acknowledges
//!   after its own sync ([`Message::Replicated`]). The client's ack leaves
//!   at the `w`-th durable copy, this one included, so a straggler never
//!   holds it. Fewer acks by the deadline: [`ReplicaError::WriteInDoubt`].
//! * A **read** asks `r - 1` other owners for their synced state
//!   ([`Message::Fetch`]), and, if they have not all answered after
//!   `quorum_hedge_ms`, the remaining owners too; it joins every answer
//!   into this replica (a join is idempotent, so late and duplicate answers
//!   are harmless) and answers from the merge once `r - 1` have arrived.
//!   Owners whose answer the merge moved past are sent the merged state
//!   after the sync (read repair).
//!
//! Joins are the whole merge: a CRDT's replicas never conflict, so what a
//! quorum adds is durability (a write acked at `w` survives the loss of any
//! `w - 1` replicas) and recency (with `r + w > n`, a read meets every write
//! acknowledged before it started).

use std::collections::{BTreeMap, BTreeSet};

use calm_clock::HlcTimestamp;
use calm_ring::{KeyHash, Placement};
use calm_storage::Storage;
use calm_types::NodeId;
use calm_types::codec;

use super::{Ack, Output, Replica, Request, RequestId};
use crate::coordinator::Level;
use crate::error::{ReplicaError, StepError};
use crate::message::{Fetch, Fetched, KeyDelta, Message, Replicate, Replicated, StateTransfer};
use crate::object::{Object, Operation};
use crate::token::CausalToken;

/// A request waiting for other replicas.
pub(super) struct Coordinated {
    id: RequestId,
    key: Vec<u8>,
    /// Other replicas still needed: `w - 1` or `r - 1`.
    peers_needed: usize,
    deadline_ms: u64,
    kind: Kind,
}

enum Kind {
    Write {
        /// The write's sequence number at this node.
        seq: u64,
        token: CausalToken,
        /// Whether this node's own copy is synced.
        synced: bool,
        /// Owners sent the write, and those that acknowledged it.
        sent: BTreeSet<NodeId>,
        acked: BTreeSet<NodeId>,
    },
    Read {
        asked: BTreeSet<NodeId>,
        /// Each answering owner's digest of its state (`None`: it held
        /// nothing).
        answered: BTreeMap<NodeId, Option<u64>>,
        hedge_at_ms: Option<u64>,
    },
}

/// A message held until this node's next sync: it vouches for state that
/// must not be lost in a crash once a peer has seen it.
pub(super) enum AfterSync {
    /// The ack of a replicated write.
    Ack { to: NodeId, ack: Replicated },
    /// This node's state of `key`, answering a fetch.
    Fetched {
        to: NodeId,
        request: HlcTimestamp,
        key: Vec<u8>,
    },
    /// This node's state of `key`, repairing a replica behind it.
    Repair { to: NodeId, key: Vec<u8> },
}

impl<S: Storage, P: Placement> Replica<S, P> {
    /// Submits a client request at `level`, coordinated here among the
    /// key's `n` natural owners (`n` = `replication_factor`): a write is
    /// acknowledged once `w` owners hold it durably, a read answers with
    /// the merge of `r` owners' states, where `one` is 1, `quorum` a
    /// majority of `n` and `all` every owner. Its one
    /// [`Output::Reply`] comes out like [`submit`](Self::submit)'s.
    ///
    /// Refused with nothing changed: [`ReplicaError::NotReplica`] at a node
    /// that is not a natural owner (the driver forwards to one), and
    /// [`ReplicaError::Unavailable`] when fewer owners are up than needed.
    pub fn submit_at(&mut self, request: Request, level: Level, now_ms: u64) {
        let n = self.config.replication_factor;
        let need = match level {
            Level::One => 1,
            Level::Quorum => n / 2 + 1,
            Level::All => n,
        };
        let owners = self.up_owners(&request.key);
        if !owners.contains(&self.config.node) {
            let error = ReplicaError::NotReplica { replicas: owners };
            return self.reply(request.id, Err(error), false);
        }
        if owners.len() < need {
            let up = owners.len();
            return self.reply(
                request.id,
                Err(ReplicaError::Unavailable { needed: need, up }),
                false,
            );
        }
        self.submit_needing(request, need, now_ms);
    }

    /// The key's natural owners not known to be down, in preference order;
    /// this node never counts itself down.
    fn up_owners(&self, key: &[u8]) -> Vec<NodeId> {
        let me = self.config.node;
        let n = self.config.replication_factor;
        let owners = self.placement.owners(KeyHash::of(key), n);
        owners
            .into_iter()
            .filter(|&node| node == me || !self.down.contains(&node))
            .collect()
    }

    /// The other owners of `key` that are up.
    fn up_peers(&self, key: &[u8]) -> Vec<NodeId> {
        let me = self.config.node;
        let mut owners = self.up_owners(key);
        owners.retain(|&node| node != me);
        owners
    }

    /// Starts an admitted request needing `need > 1` replicas.
    pub(super) fn coordinate(&mut self, request: Request, need: usize, now_ms: u64) {
        let peers = self.up_peers(&request.key);
        if peers.len() < need - 1 {
            let error = ReplicaError::Unavailable {
                needed: need,
                up: peers.len() + 1,
            };
            return self.reply(request.id, Err(error), false);
        }
        let name = self.hlc.now(now_ms);
        let deadline_ms = now_ms.saturating_add(self.config.quorum_timeout_ms);
        let kind = if request.op == Operation::Read {
            let asked: BTreeSet<NodeId> = peers.into_iter().take(need - 1).collect();
            for &to in &asked {
                self.fetch(to, name, &request.key);
            }
            Kind::Read {
                asked,
                answered: BTreeMap::new(),
                hedge_at_ms: Some(now_ms.saturating_add(self.config.quorum_hedge_ms)),
            }
        } else {
            let token = match self.write(&request.key, &request.op, now_ms) {
                Ok(token) => token,
                Err(error) => return self.reply(request.id, Err(error), false),
            };
            let write = self
                .unsynced
                .last_mut()
                .expect("a successful write leaves its unsynced entry");
            write.replicated = Some(name);
            Kind::Write {
                seq: write.seq,
                token,
                synced: false,
                sent: BTreeSet::new(),
                acked: BTreeSet::new(),
            }
        };
        let coordinated = Coordinated {
            id: request.id,
            key: request.key,
            peers_needed: need - 1,
            deadline_ms,
            kind,
        };
        self.coordinated.insert(name, coordinated);
    }

    /// Sends the synced write `seq` of `key` to every other owner that is
    /// up, for the request named `request`; returns the owners sent it.
    pub(super) fn replicate(
        &mut self,
        request: HlcTimestamp,
        key: &[u8],
        seq: u64,
        delta: &Object,
    ) -> Vec<NodeId> {
        let peers = self.up_peers(key);
        let message = Message::Replicate(Box::new(Replicate {
            clock: self.hlc.last(),
            request,
            delta: KeyDelta {
                key: key.to_vec(),
                origin: self.config.node,
                first_seq: seq,
                last_seq: seq,
                delta: delta.clone(),
            },
        }))
        .encode();
        for &to in &peers {
            let message = message.clone();
            self.outputs.push_back(Output::Send { to, message });
        }
        if let Some(Coordinated {
            kind: Kind::Write { synced, sent, .. },
            ..
        }) = self.coordinated.get_mut(&request)
        {
            *synced = true;
            sent.extend(peers.iter().copied());
        }
        self.answer_if_done(request);
        peers
    }

    /// A coordinator's write: joined and written now, acknowledged after
    /// the next sync. A write that does not fit is not acknowledged.
    pub(super) fn on_replicate(
        &mut self,
        replicate: Replicate,
        now_ms: u64,
    ) -> Result<(), StepError> {
        let ack = Replicated {
            from: self.config.node,
            request: replicate.request,
            seq: replicate.delta.last_seq,
        };
        let to = replicate.delta.origin;
        let key = replicate.delta.key.clone();
        let mut staged = BTreeMap::new();
        self.stage_delta(replicate.delta, &mut staged);
        if !staged.contains_key(&key) {
            return Ok(());
        }
        self.commit_received(staged, now_ms)?;
        self.after_sync.push(AfterSync::Ack { to, ack });
        Ok(())
    }

    /// An owner holds a write durably.
    pub(super) fn on_replicated(&mut self, ack: Replicated) {
        let Some(Coordinated {
            kind: Kind::Write {
                seq, sent, acked, ..
            },
            ..
        }) = self.coordinated.get_mut(&ack.request)
        else {
            return; // answered already, or from before a restart
        };
        if *seq == ack.seq && sent.contains(&ack.from) {
            acked.insert(ack.from);
            self.answer_if_done(ack.request);
        }
    }

    /// Asks `to` for its state of `key`.
    fn fetch(&mut self, to: NodeId, request: HlcTimestamp, key: &[u8]) {
        let message = Message::Fetch(Fetch {
            clock: self.hlc.last(),
            from: self.config.node,
            request,
            key: key.to_vec(),
        })
        .encode();
        self.outputs.push_back(Output::Send { to, message });
    }

    /// A coordinator's read: answered with this node's state now if it is
    /// synced, else after the next sync.
    pub(super) fn on_fetch(&mut self, fetch: Fetch, now_ms: u64) {
        if self.dirty.contains(&fetch.key) {
            let (to, request, key) = (fetch.from, fetch.request, fetch.key);
            self.after_sync
                .push(AfterSync::Fetched { to, request, key });
        } else {
            self.send_fetched(fetch.from, fetch.request, fetch.key, now_ms);
        }
    }

    fn send_fetched(&mut self, to: NodeId, request: HlcTimestamp, key: Vec<u8>, now_ms: u64) {
        let state = self.synced_state(&key, now_ms);
        let fetched = Fetched {
            from: self.config.node,
            request,
            key,
            state,
        };
        let message = Message::Fetched(Box::new(fetched)).encode();
        self.outputs.push_back(Output::Send { to, message });
    }

    /// This node's whole state of `key` and the writes it holds; call only
    /// when the key is synced.
    fn synced_state(&mut self, key: &[u8], now_ms: u64) -> Option<StateTransfer> {
        let record = self.objects.get(key)?;
        let frontier = record.applied.token(key).iter().collect();
        Some(StateTransfer {
            clock: self.hlc.now(now_ms),
            key: key.to_vec(),
            object: record.object.clone(),
            frontier,
        })
    }

    /// An owner's state for one of this node's reads: joined here (late
    /// answers too), and counted towards the read.
    pub(super) fn on_fetched(&mut self, fetched: Fetched, now_ms: u64) -> Result<(), StepError> {
        let digest = fetched.state.as_ref().map(|state| digest(&state.object));
        if let Some(state) = fetched.state {
            let mut staged = BTreeMap::new();
            self.stage_state(state, &mut staged);
            // An answer this replica already covers changes nothing: no
            // write, no sync, and the read is not held for one.
            staged.retain(|key, record| self.objects.get(key) != Some(record));
            self.commit_received(staged, now_ms)?;
        }
        if let Some(Coordinated {
            key,
            kind: Kind::Read {
                asked, answered, ..
            },
            ..
        }) = self.coordinated.get_mut(&fetched.request)
            && *key == fetched.key
            && asked.contains(&fetched.from)
        {
            answered.insert(fetched.from, digest);
            self.answer_if_done(fetched.request);
        }
        Ok(())
    }

    /// Answers the request named `name` if enough replicas are in.
    fn answer_if_done(&mut self, name: HlcTimestamp) {
        let done = self.coordinated.get(&name).is_some_and(|c| match &c.kind {
            Kind::Write { synced, acked, .. } => *synced && acked.len() >= c.peers_needed,
            Kind::Read { answered, .. } => answered.len() >= c.peers_needed,
        });
        if !done {
            return;
        }
        let coordinated = self.coordinated.remove(&name).expect("checked above");
        match coordinated.kind {
            Kind::Write { token, .. } => {
                let ack = Ack { value: None, token };
                self.reply(coordinated.id, Ok(ack), false);
            }
            Kind::Read { answered, .. } => {
                let key = coordinated.key;
                let merged = self.objects.get(&key).map(|r| digest(&r.object));
                for (to, seen) in answered {
                    if seen != merged {
                        self.stats.read_repairs += 1;
                        let key = key.clone();
                        self.after_sync.push(AfterSync::Repair { to, key });
                    }
                }
                let ack = Ack {
                    value: Some(self.peek(&key)),
                    token: self.token(&key),
                };
                let hold = self.dirty.contains(&key);
                self.reply(coordinated.id, Ok(ack), hold);
            }
        }
    }

    /// Fails requests past their deadline and hedges reads past their
    /// hedging time.
    pub(super) fn tick_coordinated(&mut self, now_ms: u64) {
        let expired: Vec<HlcTimestamp> = self
            .coordinated
            .iter()
            .filter(|(_, c)| c.deadline_ms <= now_ms)
            .map(|(&name, _)| name)
            .collect();
        for name in expired {
            let coordinated = self.coordinated.remove(&name).expect("listed above");
            let needed = coordinated.peers_needed + 1;
            let error = match coordinated.kind {
                Kind::Write { synced, acked, .. } => {
                    self.stats.writes_in_doubt += 1;
                    let acks = acked.len() + usize::from(synced);
                    ReplicaError::WriteInDoubt { acks, needed }
                }
                Kind::Read { answered, .. } => ReplicaError::ReadTimeout {
                    replies: answered.len() + 1,
                    needed,
                },
            };
            self.reply(coordinated.id, Err(error), false);
        }
        let due: Vec<(HlcTimestamp, Vec<u8>)> = self
            .coordinated
            .iter()
            .filter(
                |(_, c)| matches!(c.kind, Kind::Read { hedge_at_ms: Some(at), .. } if at <= now_ms),
            )
            .map(|(&name, c)| (name, c.key.clone()))
            .collect();
        for (name, key) in due {
            let peers = self.up_peers(&key);
            let Some(Coordinated {
                kind: Kind::Read {
                    asked, hedge_at_ms, ..
                },
                ..
            }) = self.coordinated.get_mut(&name)
            else {
                continue;
            };
            *hedge_at_ms = None;
            let more: Vec<NodeId> = peers.into_iter().filter(|p| !asked.contains(p)).collect();
            asked.extend(more.iter().copied());
            if !more.is_empty() {
                self.stats.hedges_sent += 1;
            }
            for to in more {
                self.fetch(to, name, &key);
            }
        }
    }

    /// Sends what waited for the sync that just completed.
    pub(super) fn send_after_sync(&mut self) {
        let now_ms = self.hlc.last().physical_ms;
        for held in std::mem::take(&mut self.after_sync) {
            match held {
                AfterSync::Ack { to, ack } => {
                    let message = Message::Replicated(ack).encode();
                    self.outputs.push_back(Output::Send { to, message });
                }
                AfterSync::Fetched { to, request, key } => {
                    self.send_fetched(to, request, key, now_ms);
                }
                AfterSync::Repair { to, key } => {
                    if let Some(message) = self.state_transfer(&key, now_ms) {
                        self.outputs.push_back(Output::Send { to, message });
                    }
                }
            }
        }
    }
}

/// The xxh3-64 digest of an object's encoding, as [`Replica::digests`]
/// computes it.
fn digest(object: &Object) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&codec::encode(object))
}
