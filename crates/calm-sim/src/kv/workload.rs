//! The clients and their history: each client has one request outstanding
//! at a time (a get, a put blind or with the context of its last read of
//! the key, or a delete with that context), at a random level, strict or
//! sloppy; every request becomes a [`Record`] the checkers read.

use std::collections::BTreeMap;

use calm_clock::{Dot, VersionVector};
use calm_replica::coordinator::{Level, Outcome, Overrides, Quorum};
use calm_replica::{Bytes, RequestId};
use calm_types::NodeId;
use rand::RngExt;
use rand::rngs::StdRng;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    Get,
    Put,
    Delete,
}

/// A request as a client hands it to a node.
#[derive(Clone, Debug)]
pub(super) struct Op {
    pub(super) id: RequestId,
    pub(super) key: Bytes,
    pub(super) kind: OpKind,
    /// The value of a put.
    pub(super) value: Option<Bytes>,
    /// The opaque context of the client's last read of the key, or empty.
    pub(super) context: Vec<u8>,
    pub(super) quorum: Quorum,
    pub(super) sloppy: bool,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// No reply yet.
    Pending,
    /// A write acknowledged by `w` replicas, `hinted` of them fallbacks.
    Written { hinted: usize },
    /// A read; the clock of the merged object it returned.
    Read { clock: VersionVector },
    /// Certainly no effect: a failed read, a write refused before stamping.
    NoEffect,
    /// A write that may or may not have happened.
    InDoubt,
}

/// One request in the history.
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub(super) key: Bytes,
    pub(super) kind: OpKind,
    pub(super) quorum: Quorum,
    pub(super) sloppy: bool,
    /// Virtual ms the client sent it and got its reply.
    pub(super) start_ms: u64,
    pub(super) end_ms: u64,
    /// The order of the send and the reply among all client events (ms
    /// alone cannot order a reply and a send in the same ms).
    pub(super) start_seq: u64,
    pub(super) end_seq: u64,
    /// The live values the read behind the write's context returned: what
    /// the write supersedes (empty for a blind write or a read).
    pub(super) superseded: Vec<Bytes>,
    /// The write's dot, once its coordinator stamped it.
    pub(super) dot: Option<Dot>,
    /// The down owners fallbacks stood in for when the write started.
    pub(super) hinted_owners: Vec<NodeId>,
    pub(super) ended: Ended,
}

#[derive(Debug, Default)]
struct Client {
    busy: bool,
    ready_at_ms: u64,
    /// Per key: the context and live values of the client's last read.
    last_read: BTreeMap<Bytes, (Vec<u8>, Vec<Bytes>)>,
}

/// The clients, their requests in flight and the history.
#[derive(Debug)]
pub(super) struct Workload {
    pub(super) keys: Vec<Bytes>,
    clients: Vec<Client>,
    pub(super) history: Vec<Record>,
    /// Requests in flight: history index and client.
    pending: BTreeMap<RequestId, (usize, usize)>,
    next_id: u64,
    /// Client events so far: sends and replies.
    events: u64,
}

impl Workload {
    pub(super) fn new(clients: usize, keys: usize) -> Self {
        Self {
            keys: (0..keys).map(|k| format!("k{k}").into_bytes()).collect(),
            // One more than the random clients: the slot of requests a test
            // submits.
            clients: (0..=clients).map(|_| Client::default()).collect(),
            history: Vec::new(),
            pending: BTreeMap::new(),
            next_id: 0,
            events: 0,
        }
    }

    /// The next request of every idle client whose think time is over.
    pub(super) fn next_ops(
        &mut self,
        rng: &mut StdRng,
        now_ms: u64,
        sloppy_share: f64,
        n: usize,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        for client in 0..self.clients.len() - 1 {
            let c = &self.clients[client];
            if c.busy || c.ready_at_ms > now_ms {
                continue;
            }
            let key = self.keys[rng.random_range(0..self.keys.len())].clone();
            let level = [Level::One, Level::Quorum, Level::All][rng.random_range(0..3)];
            let sloppy = rng.random_bool(sloppy_share);
            let kind = match rng.random_range(0..10) {
                0..4 => OpKind::Get,
                4..8 => OpKind::Put,
                _ => OpKind::Delete,
            };
            let id = RequestId(self.next_id);
            self.next_id += 1;
            let value = (kind == OpKind::Put).then(|| format!("c{client}-{}", id.0).into_bytes());
            // Half the puts are blind; deletes always carry the last read's
            // context (a blind delete is concurrent with everything), and a
            // client that has not read the key yet reads it first.
            let read = self.clients[client].last_read.get(&key).cloned();
            let (kind, (context, seen)) = match (kind, read) {
                (OpKind::Put, Some(read)) if rng.random_bool(0.5) => (kind, read),
                (OpKind::Delete, Some(read)) => (kind, read),
                (OpKind::Delete, None) => (OpKind::Get, Default::default()),
                (kind, _) => (kind, Default::default()),
            };
            let quorum = quorum_at(n, level);
            let op = Op {
                id,
                key,
                kind,
                value,
                context,
                quorum,
                sloppy,
            };
            self.open(&op, client, seen, now_ms);
            ops.push(op);
        }
        ops
    }

    /// The coordinator stamped write `id` with `dot` and starts it with
    /// fallbacks for `hinted_owners`.
    pub(super) fn stamped(&mut self, id: RequestId, dot: Dot, hinted_owners: Vec<NodeId>) {
        if let Some(&(index, _)) = self.pending.get(&id) {
            let record = &mut self.history[index];
            record.dot = Some(dot);
            record.hinted_owners = hinted_owners;
        }
    }

    /// The reply to `id` (`None`: an error); a reply to a request the client
    /// gave up on is ignored. Returns what was recorded, if anything.
    pub(super) fn complete(
        &mut self,
        rng: &mut StdRng,
        think_ms_max: u64,
        id: RequestId,
        outcome: Option<Outcome>,
        now_ms: u64,
    ) -> Option<&Ended> {
        let (index, client) = self.pending.remove(&id)?;
        let record = &mut self.history[index];
        record.ended = match (outcome, record.dot) {
            (Some(Outcome::Written { hinted, .. }), _) => Ended::Written { hinted },
            (Some(Outcome::Read { object, .. }), _) => {
                let read = object.get(&record.key);
                let values = read.values().cloned().collect();
                let last_read = &mut self.clients[client].last_read;
                last_read.insert(record.key.clone(), (read.context, values));
                Ended::Read {
                    clock: object.clock(),
                }
            }
            // A stamped write is durable at its coordinator whatever the
            // quorum said: it may surface later.
            (None, Some(_)) => Ended::InDoubt,
            (None, None) => Ended::NoEffect,
        };
        record.end_ms = now_ms;
        record.end_seq = self.events;
        self.events += 1;
        let c = &mut self.clients[client];
        c.busy = false;
        c.ready_at_ms = now_ms + rng.random_range(0..=think_ms_max);
        Some(&record.ended)
    }

    /// Gives up on `ids` (their coordinator crashed, or the client timed
    /// out): writes are in doubt, reads had no effect.
    pub(super) fn abandon(
        &mut self,
        ids: impl IntoIterator<Item = RequestId>,
        now_ms: u64,
    ) -> usize {
        let mut abandoned = 0;
        for id in ids {
            let Some((index, client)) = self.pending.remove(&id) else {
                continue;
            };
            let record = &mut self.history[index];
            record.ended = match record.kind {
                OpKind::Get => Ended::NoEffect,
                _ => Ended::InDoubt,
            };
            record.end_ms = now_ms;
            record.end_seq = self.events;
            self.events += 1;
            self.clients[client].busy = false;
            self.clients[client].ready_at_ms = now_ms;
            abandoned += 1;
        }
        abandoned
    }

    /// Requests sent before `deadline_ms` and still unanswered.
    pub(super) fn overdue(&self, deadline_ms: u64) -> Vec<RequestId> {
        self.pending
            .iter()
            .filter(|(_, (index, _))| self.history[*index].start_ms < deadline_ms)
            .map(|(&id, _)| id)
            .collect()
    }

    /// What request `id` does, while it is in flight.
    pub(super) fn kind_of(&self, id: RequestId) -> Option<OpKind> {
        let &(index, _) = self.pending.get(&id)?;
        Some(self.history[index].kind)
    }

    /// Whether some request awaits its reply.
    pub(super) fn is_busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records a request a test chose, from the extra client slot: a put or
    /// delete carries the context of that slot's last read of the key.
    pub(super) fn submit(
        &mut self,
        key: Bytes,
        kind: OpKind,
        value: Option<Bytes>,
        quorum: Quorum,
        sloppy: bool,
        now_ms: u64,
    ) -> Op {
        let slot = self.clients.len() - 1;
        let read = self.clients[slot].last_read.get(&key).cloned();
        let (context, seen) = match kind {
            OpKind::Get => Default::default(),
            _ => read.unwrap_or_default(),
        };
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let op = Op {
            id,
            key,
            kind,
            value,
            context,
            quorum,
            sloppy,
        };
        self.open(&op, slot, seen, now_ms);
        op
    }

    fn next_seq(&mut self) -> u64 {
        self.events += 1;
        self.events - 1
    }

    /// Starts the record of `op`, sent by `client`.
    fn open(&mut self, op: &Op, client: usize, seen: Vec<Bytes>, now_ms: u64) {
        self.clients[client].busy = true;
        self.pending.insert(op.id, (self.history.len(), client));
        let start_seq = self.next_seq();
        self.history.push(Record {
            key: op.key.clone(),
            kind: op.kind,
            quorum: op.quorum,
            sloppy: op.sloppy,
            start_ms: now_ms,
            end_ms: 0,
            start_seq,
            end_seq: u64::MAX,
            superseded: seen,
            dot: None,
            hinted_owners: Vec::new(),
            ended: Ended::Pending,
        });
    }
}

/// The quorum of a request at `level` in a keyspace of `n` replicas that
/// reads and writes a majority at level `quorum`.
pub(super) fn quorum_at(n: usize, level: Level) -> Quorum {
    let majority = n / 2 + 1;
    let keyspace = Quorum::new(n, majority, majority).expect("1 <= n/2+1 <= n");
    // Invariant: `one` and `all` fit any valid n.
    keyspace
        .for_request(level, Overrides::default())
        .expect("levels fit any valid n")
}
