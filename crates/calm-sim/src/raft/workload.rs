//! The clients: each sends one etcd request at a time (unique-value puts,
//! linearizable ranges, deletes and compare-and-swaps on a few keys) to a
//! random voter, waits for the reply until its deadline, and records the
//! call and the return in the history the checkers read.

use std::collections::HashMap;

use calm_proto::calm::raft::v1::command::Request;
use calm_proto::etcd::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse, compare, request_op, response_op,
};
use calm_raft::{KeyspaceError, Reply, RequestId, Response};
use calm_types::NodeId;
use rand::RngExt;

use super::cluster::KeyspaceSim;
use super::node::{Call, Inbound};
use crate::linearizability::{EtcdInput, EtcdOutput, Operation};
use crate::sim::SimError;

/// How a request ended, as far as the history is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// The client still waits.
    Waiting,
    /// Answered with a result.
    Answered,
    /// No reply, or one that leaves the outcome in doubt: it may have taken
    /// effect, at any time after its call.
    Indeterminate,
    /// It certainly had no effect (a read that failed, a write the core
    /// refused before proposing it): left out of the history.
    NoEffect,
}

/// One request and its fate.
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub(super) op: Operation<EtcdInput, EtcdOutput>,
    pub(super) node: usize,
    pub(super) settled: Settled,
}

#[derive(Clone, Copy, Debug)]
struct Waiting {
    record: usize,
    deadline_ms: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Client {
    waiting: Option<Waiting>,
    next_request_ms: u64,
    /// A test's one-off client ([`KeyspaceSim::submit`]): it sends only
    /// what it is told to.
    scripted: bool,
}

/// The clients, the history, and what the clients know of the keys.
#[derive(Debug)]
pub(super) struct Workload {
    clients: Vec<Client>,
    pub(super) records: Vec<Record>,
    by_request: HashMap<RequestId, (usize, usize)>,
    next_request: u64,
    next_value: u64,
    /// The last mod revision any client saw per key: what a
    /// compare-and-swap usually expects.
    mod_revisions: Vec<i64>,
}

impl Workload {
    pub(super) fn new(clients: usize, keys: usize) -> Workload {
        Workload {
            clients: vec![Client::default(); clients],
            records: Vec::new(),
            by_request: HashMap::new(),
            next_request: 0,
            next_value: 0,
            mod_revisions: vec![0; keys],
        }
    }
}

impl KeyspaceSim {
    /// The history for the linearizability checker: every request but
    /// those that certainly had no effect; indeterminate ones have neither
    /// return time nor output.
    pub fn history(&self) -> Vec<Operation<EtcdInput, EtcdOutput>> {
        self.workload
            .records
            .iter()
            .filter(|record| record.settled != Settled::NoEffect)
            .map(|record| record.op.clone())
            .collect()
    }

    /// Requests that are answered, and those that are indeterminate.
    pub fn request_counts(&self) -> (usize, usize) {
        let count = |settled| {
            let records = self.workload.records.iter();
            records.filter(|record| record.settled == settled).count()
        };
        (count(Settled::Answered), count(Settled::Indeterminate))
    }

    /// Whether some client still waits for a reply.
    pub(super) fn workload_waiting(&self) -> bool {
        self.workload.clients.iter().any(|c| c.waiting.is_some())
    }

    /// Idle clients whose think time is over send a request each.
    pub(super) fn clients_act(&mut self) {
        for client in 0..self.workload.clients.len() {
            let state = self.workload.clients[client];
            if state.waiting.is_none() && !state.scripted && state.next_request_ms <= self.now_ms {
                self.issue(client);
            }
        }
    }

    /// Sends `input` to `node` now from a new client of its own, recorded
    /// in the history like the workload's requests. Returns its index for
    /// [`operation`](Self::operation).
    pub fn submit(&mut self, node: NodeId, input: EtcdInput) -> Result<usize, SimError> {
        let node = self.index(node)?;
        if self.nodes[node].keyspace.is_none() {
            return Err(SimError::NodeDown(NodeId(node as u64 + 1)));
        }
        let client = self.workload.clients.len();
        self.workload.clients.push(Client {
            scripted: true,
            ..Client::default()
        });
        Ok(self.send_request(client, node, input))
    }

    /// Request `index` of the history as it stands: `ret` is set once it
    /// is answered.
    pub fn operation(&self, index: usize) -> Option<&Operation<EtcdInput, EtcdOutput>> {
        self.workload.records.get(index).map(|record| &record.op)
    }

    fn issue(&mut self, client: usize) {
        let node = self.rng.random_range(0..self.nodes.len());
        if self.nodes[node].keyspace.is_none() {
            // Connection refused: the client tries again a little later.
            self.workload.clients[client].next_request_ms = self.now_ms + 1;
            return;
        }
        let input = self.next_input();
        self.send_request(client, node, input);
    }

    /// Records the call and queues the request at the node; returns the
    /// record's index.
    fn send_request(&mut self, client: usize, node: usize, input: EtcdInput) -> usize {
        let call = call_of(&input);
        self.workload.next_request += 1;
        let id = RequestId(self.workload.next_request);
        let record = self.workload.records.len();
        let stamp = self.stamp();
        let trace = [&record.to_le_bytes()[..], &[node as u8]].concat();
        self.workload.records.push(Record {
            op: Operation {
                client: client as u64,
                call: stamp,
                ret: None,
                input,
                output: None,
            },
            node,
            settled: Settled::Waiting,
        });
        self.workload.by_request.insert(id, (client, record));
        self.workload.clients[client].waiting = Some(Waiting {
            record,
            deadline_ms: self.now_ms + self.config.client_timeout_ms,
        });
        // A paused node queues it like any other input.
        self.nodes[node]
            .inbox
            .push_back(Inbound::Client { id, call });
        self.stats.requests += 1;
        self.fold_trace(&trace);
        record
    }

    /// A random request: 35% ranges, 30% puts, 20% compare-and-swaps, 15%
    /// deletes, on a random key; every written value is new.
    fn next_input(&mut self) -> EtcdInput {
        let key_index = self.rng.random_range(0..self.workload.mod_revisions.len());
        let key = format!("k{key_index}");
        self.workload.next_value += 1;
        let value = format!("v{}", self.workload.next_value);
        match self.rng.random_range(0..100) {
            0..35 => EtcdInput::Get { key },
            35..65 => EtcdInput::Put { key, value },
            65..85 => {
                // Mostly the last mod revision seen, so that swaps succeed
                // as often as they race; sometimes "absent", sometimes off.
                let known = self.workload.mod_revisions[key_index];
                let expected_mod_revision = match self.rng.random_range(0..10) {
                    0..6 => known,
                    6..8 => 0,
                    _ => (known + self.rng.random_range(-2..=2)).max(0),
                };
                EtcdInput::Cas {
                    key,
                    expected_mod_revision,
                    value,
                }
            }
            _ => EtcdInput::Delete { key },
        }
    }

    /// A reply arrived from a node.
    pub(super) fn answered(&mut self, id: RequestId, result: Result<Reply, KeyspaceError>) {
        let Some((client, record)) = self.workload.by_request.remove(&id) else {
            return;
        };
        let waiting = self.workload.clients[client].waiting;
        if waiting.is_none_or(|waiting| waiting.record != record) {
            // The client gave up on it already: it stays indeterminate.
            return;
        }
        let settled = match result {
            Ok(reply) => self.settle_reply(record, reply),
            Err(error) => settle_error(&self.workload.records[record].op.input, &error),
        };
        let stamp = self.stamp();
        let entry = &mut self.workload.records[record];
        entry.settled = settled;
        if settled == Settled::Answered {
            entry.op.ret = Some(stamp);
        } else {
            entry.op.output = None;
        }
        self.count(settled);
        self.free(client);
        let trace = [&record.to_le_bytes()[..], &[settled as u8]].concat();
        self.fold_trace(&trace);
    }

    /// Turns a reply into the history's output; a reply of the wrong kind,
    /// or a txn whose own reads contradict its outcome, is a violation.
    fn settle_reply(&mut self, record: usize, reply: Reply) -> Settled {
        let input = self.workload.records[record].op.input.clone();
        let output = match (&input, reply) {
            (EtcdInput::Get { key }, Reply::Range(range)) => {
                self.learn(key, &range);
                Some(EtcdOutput::Get {
                    value: range.kvs.first().map(|kv| text(&kv.value)),
                    revision: range.header.map_or(0, |h| h.revision),
                })
            }
            (EtcdInput::Put { .. }, Reply::Applied(Response::Put(put))) => Some(EtcdOutput::Put {
                revision: put.header.map_or(0, |h| h.revision),
            }),
            (EtcdInput::Delete { .. }, Reply::Applied(Response::DeleteRange(delete))) => {
                Some(EtcdOutput::Delete {
                    deleted: delete.deleted,
                    revision: delete.header.map_or(0, |h| h.revision),
                })
            }
            (EtcdInput::Cas { .. }, Reply::Applied(Response::Txn(txn))) => {
                self.check_swap_reads(record, &input, &txn);
                Some(EtcdOutput::Cas {
                    succeeded: txn.succeeded,
                    revision: txn.header.map_or(0, |h| h.revision),
                })
            }
            (_, other) => {
                let detail = format!("{input:?} was answered with {other:?}");
                self.seen.push(self.violation("reply kind", detail));
                None
            }
        };
        if matches!(
            output,
            Some(EtcdOutput::Cas {
                succeeded: true,
                ..
            })
        ) {
            self.stats.swaps += 1;
        }
        self.workload.records[record].op.output = output;
        Settled::Answered
    }

    /// The txn read its key in both branches: after a successful swap it
    /// must see its own value at the txn's revision; after a failed one a
    /// mod revision other than the expected one (0 for an absent key).
    fn check_swap_reads(&mut self, record: usize, input: &EtcdInput, txn: &TxnResponse) {
        let EtcdInput::Cas {
            key,
            expected_mod_revision,
            value,
        } = input
        else {
            return;
        };
        let revision = txn.header.as_ref().map_or(0, |h| h.revision);
        let read = txn
            .responses
            .iter()
            .rev()
            .find_map(|op| match &op.response {
                Some(response_op::Response::ResponseRange(range)) => Some(range),
                _ => None,
            });
        let seen = read.and_then(|range| range.kvs.first());
        let seen_mod_revision = seen.map_or(0, |kv| kv.mod_revision);
        let consistent = match txn.succeeded {
            true => seen.is_some_and(|kv| text(&kv.value) == *value && kv.mod_revision == revision),
            false => read.is_some() && seen_mod_revision != *expected_mod_revision,
        };
        if let Some(range) = read {
            self.learn(key, range);
        }
        if !consistent {
            let detail = format!("request #{record} {input:?}: txn answered {txn:?}");
            self.seen.push(self.violation("txn reads", detail));
        }
    }

    /// Remembers the key's mod revision a read saw, for later swaps.
    fn learn(&mut self, key: &str, range: &RangeResponse) {
        let Some(index) = key.strip_prefix('k').and_then(|i| i.parse::<usize>().ok()) else {
            return;
        };
        if let Some(known) = self.workload.mod_revisions.get_mut(index) {
            *known = range.kvs.first().map_or(0, |kv| kv.mod_revision);
        }
    }

    /// Clients whose deadline passed give up: the request is
    /// indeterminate, and they move on.
    pub(super) fn expire_clients(&mut self) {
        for client in 0..self.workload.clients.len() {
            let Some(waiting) = self.workload.clients[client].waiting else {
                continue;
            };
            if waiting.deadline_ms <= self.now_ms {
                self.give_up(client, waiting.record);
            }
        }
    }

    /// The node's connections broke: every client waiting on it gives up.
    pub(super) fn workload_node_crashed(&mut self, node: usize) {
        for client in 0..self.workload.clients.len() {
            let Some(waiting) = self.workload.clients[client].waiting else {
                continue;
            };
            if self.workload.records[waiting.record].node == node {
                self.give_up(client, waiting.record);
            }
        }
    }

    fn give_up(&mut self, client: usize, record: usize) {
        let entry = &mut self.workload.records[record];
        // A read that never returned changed nothing.
        entry.settled = match entry.op.input {
            EtcdInput::Get { .. } => Settled::NoEffect,
            _ => Settled::Indeterminate,
        };
        let settled = entry.settled;
        self.count(settled);
        self.free(client);
        self.fold_trace(&record.to_le_bytes());
    }

    fn count(&mut self, settled: Settled) {
        match settled {
            Settled::Answered => self.stats.answered += 1,
            Settled::Indeterminate => self.stats.indeterminate += 1,
            Settled::NoEffect => self.stats.no_effect += 1,
            Settled::Waiting => {}
        }
    }

    fn free(&mut self, client: usize) {
        let think = self.rng.random_range(0..=self.config.think_ms_max);
        let state = &mut self.workload.clients[client];
        state.waiting = None;
        state.next_request_ms = self.now_ms + think;
    }
}

/// How an error settles a request: a read's failure changed nothing; so
/// did a write refused for want of a leader (the core says it never
/// reached Raft, and the checker holds it to that); any other failure of a
/// write ("request timed out", a stopping server) leaves it in doubt.
fn settle_error(input: &EtcdInput, error: &KeyspaceError) -> Settled {
    let reached_raft = *error != KeyspaceError::no_leader();
    match input {
        EtcdInput::Get { .. } => Settled::NoEffect,
        _ if reached_raft => Settled::Indeterminate,
        _ => Settled::NoEffect,
    }
}

/// The request a client sends for `input`.
fn call_of(input: &EtcdInput) -> Call {
    match input.clone() {
        EtcdInput::Get { key } => Call::Read(RangeRequest {
            key: key.into_bytes(),
            ..RangeRequest::default()
        }),
        EtcdInput::Put { key, value } => Call::Propose(Request::Put(put(key, value))),
        EtcdInput::Delete { key } => Call::Propose(Request::DeleteRange(DeleteRangeRequest {
            key: key.into_bytes(),
            ..DeleteRangeRequest::default()
        })),
        EtcdInput::Cas {
            key,
            expected_mod_revision,
            value,
        } => Call::Propose(Request::Txn(swap(key, expected_mod_revision, value))),
    }
}

/// etcd's compare-and-swap: if the key's mod revision is `expected` (0:
/// the key is absent), put `value`; either way, read the key.
fn swap(key: String, expected: i64, value: String) -> TxnRequest {
    let read = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.clone().into_bytes(),
            ..RangeRequest::default()
        })),
    };
    let write = RequestOp {
        request: Some(request_op::Request::RequestPut(put(key.clone(), value))),
    };
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.into_bytes(),
            target_union: Some(compare::TargetUnion::ModRevision(expected)),
            range_end: Vec::new(),
        }],
        success: vec![write, read.clone()],
        failure: vec![read],
    }
}

fn put(key: String, value: String) -> PutRequest {
    PutRequest {
        key: key.into_bytes(),
        value: value.into_bytes(),
        ..PutRequest::default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
