//! The coordinated keyspace in the simulator: three or five
//! [`calm_raft::Keyspace`] voters, each over its own crash-simulating
//! [`MemoryEngine`], driven exactly as the node drives them (inputs, ready,
//! write, sync, apply, outputs) on a virtual clock, over a network that
//! loses, duplicates, delays and reorders messages and can be partitioned.
//! Nodes crash (losing unsynced writes) and restart from their engines.
//!
//! Clients send etcd requests (unique-value puts, linearizable gets, deletes
//! and compare-and-swaps on a few keys) to random nodes; every call and
//! return is recorded, and [`RaftSim::check_linearizable`] runs the
//! Wing–Gong–Lowe checker over the history with [`EtcdModel`]. A request
//! whose reply never came (its node crashed, or it timed out) is
//! indeterminate.

use std::collections::{BTreeMap, HashMap};

use calm_proto::calm::raft::v1::command::Request;
use calm_proto::etcd::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use calm_raft::{
    Keyspace, KeyspaceConfig, Output, RaftConfig, Read, Reply, RequestId, Response, StateConfig,
    WatchConfig,
};
use calm_storage::{Limits, MemoryEngine, Storage, WriteBatch};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::linearizability::{EtcdInput, EtcdModel, EtcdOutput, Operation, Verdict, check};

/// Milliseconds per Raft tick, and per simulated turn of a node.
const TICK_MS: u64 = 10;
/// Ticks per election timeout.
const ELECTION_TICKS: usize = 10;
/// How long a client waits before it gives a request up as indeterminate.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Keys the clients work on.
const KEYS: usize = 3;

/// A fault to plant, to show a checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftBug {
    /// No bug.
    None,
    /// Linearizable reads are served from the local state at once, without
    /// ReadIndex: a partitioned old leader or a lagging follower answers
    /// stale values.
    LocalReads,
}

/// One simulation's settings.
#[derive(Clone, Debug)]
pub struct RaftSimConfig {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// Voters (3 or 5).
    pub nodes: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice. Raft itself tolerates
    /// duplicates except of a forwarded proposal (MsgProp), which it would
    /// append twice; calm's transport is at-most-once, so the default is 0
    /// (a test shows what duplication does).
    pub duplicate: f64,
    /// Longest message delay, in ms (delays reorder).
    pub delay_max_ms: u64,
    /// The planted bug.
    pub bug: RaftBug,
}

impl RaftSimConfig {
    /// Mixed faults for `seed`.
    pub fn new(seed: u64) -> RaftSimConfig {
        RaftSimConfig {
            seed,
            nodes: 3,
            clients: 4,
            loss: 0.05,
            duplicate: 0.0,
            delay_max_ms: 15,
            bug: RaftBug::None,
        }
    }
}

struct SimNode {
    engine: MemoryEngine,
    keyspace: Option<Keyspace>,
}

struct InFlight {
    client: u64,
    op: usize,
}

/// The simulation; see the module docs.
pub struct RaftSim {
    config: RaftSimConfig,
    rng: StdRng,
    now_ms: u64,
    nodes: BTreeMap<u64, SimNode>,
    /// Messages in flight: (delivery time, sequence) → (from, to, bytes).
    network: BTreeMap<(u64, u64), (u64, u64, Vec<u8>)>,
    seq: u64,
    /// Node pairs that cannot talk (both directions).
    cut: Vec<(u64, u64)>,
    history: Vec<Operation<EtcdInput, EtcdOutput>>,
    in_flight: HashMap<(u64, RequestId), InFlight>,
    busy: HashMap<u64, (usize, u64)>,
    next_request: u64,
    next_value: u64,
    trace: u64,
}

impl RaftSim {
    /// Starts `config.nodes` voters with empty disks.
    pub fn new(config: RaftSimConfig) -> RaftSim {
        let mut sim = RaftSim {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            now_ms: 0,
            nodes: BTreeMap::new(),
            network: BTreeMap::new(),
            seq: 0,
            cut: Vec::new(),
            history: Vec::new(),
            in_flight: HashMap::new(),
            busy: HashMap::new(),
            next_request: 0,
            next_value: 0,
            trace: 0,
        };
        for id in 1..=sim.config.nodes {
            let engine = MemoryEngine::new(Limits {
                batch_ops_max: 1_000_000,
                ..Limits::default()
            });
            sim.nodes.insert(
                id,
                SimNode {
                    engine,
                    keyspace: None,
                },
            );
            sim.open(id);
        }
        sim
    }

    /// Runs `duration_ms` of virtual time with clients sending requests.
    pub fn run(&mut self, duration_ms: u64, with_clients: bool) {
        let until = self.now_ms + duration_ms;
        while self.now_ms < until {
            self.now_ms += TICK_MS;
            self.deliver_due();
            if with_clients {
                self.clients_act();
            }
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.turn(id, true);
            }
            self.expire_requests();
        }
    }

    /// Crashes `node`: unsynced writes are lost, its requests never answer.
    pub fn crash(&mut self, node: u64) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.keyspace = None;
            n.engine.crash();
        }
    }

    /// Restarts a crashed `node` from its disk.
    pub fn restart(&mut self, node: u64) {
        if self.nodes.get(&node).is_some_and(|n| n.keyspace.is_none()) {
            self.open(node);
        }
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&mut self, node: u64) {
        for other in 1..=self.config.nodes {
            if other != node {
                self.cut.push((node.min(other), node.max(other)));
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The node that believes it leads, if exactly one running node does
    /// at the highest term.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.keyspace.as_ref().map(|k| (id, k.leader())))
            .filter(|(id, (leader, _))| leader == id)
            .max_by_key(|(_, (_, term))| *term)
            .map(|(id, _)| id)
    }

    /// The recorded history.
    pub fn history(&self) -> &[Operation<EtcdInput, EtcdOutput>] {
        &self.history
    }

    /// A hash of everything delivered and answered: equal for equal seeds.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Runs the linearizability checker over the history.
    pub fn check_linearizable(&self) -> Verdict {
        check(&EtcdModel, &self.history, 50_000_000)
    }

    // ---- Driving ----

    fn open(&mut self, id: u64) {
        let config = KeyspaceConfig {
            raft: RaftConfig {
                election_tick: ELECTION_TICKS,
                election_seed: self.config.seed.wrapping_mul(31).wrapping_add(id),
                ..RaftConfig::new(id)
            },
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            election_timeout_ms: TICK_MS * ELECTION_TICKS as u64,
            snapshot_count: 200,
            state: StateConfig::default(),
            cluster_id: 1,
            watch: WatchConfig::default(),
            leaderless_max: 1_000,
        };
        let voters: Vec<u64> = (1..=self.config.nodes).collect();
        let node = self.nodes.get_mut(&id).expect("a configured node");
        let mut batch = WriteBatch::new();
        let keyspace = Keyspace::open(config, &voters, &node.engine, &mut batch)
            .expect("a simulated disk always opens");
        node.engine.write(&batch).expect("the bootstrap batch fits");
        node.engine.sync().expect("the memory engine syncs");
        node.keyspace = Some(keyspace);
    }

    /// One turn of `id`, by the driver contract.
    fn turn(&mut self, id: u64, tick: bool) {
        let now = self.now_ms;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(keyspace) = node.keyspace.as_mut() else {
            return;
        };
        if tick {
            keyspace.tick(now);
        }
        let mut batch = WriteBatch::new();
        let wrote = keyspace
            .before_sync(&mut batch)
            .expect("the core stays usable");
        if wrote {
            node.engine.write(&batch).expect("raft batches fit");
            node.engine.sync().expect("the memory engine syncs");
        }
        let batches = keyspace.after_sync(now).expect("entries apply");
        for batch in &batches {
            node.engine.write(batch).expect("apply batches fit");
        }
        let mut outputs = Vec::new();
        while let Some(output) = keyspace.poll() {
            outputs.push(output);
        }
        for output in outputs {
            match output {
                Output::Send { to, bytes } => self.send(id, to, bytes),
                Output::Reply {
                    id: request,
                    result,
                } => self.answered(id, request, result),
                Output::Watch { .. } | Output::Trouble(_) => {}
            }
        }
    }

    fn send(&mut self, from: u64, to: u64, bytes: Vec<u8>) {
        if self.cut.contains(&(from.min(to), from.max(to)))
            || self.rng.random_bool(self.config.loss)
        {
            return;
        }
        let copies = if self.rng.random_bool(self.config.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.random_range(1..=self.config.delay_max_ms.max(1));
            self.seq += 1;
            let at = self.now_ms + delay;
            self.network
                .insert((at, self.seq), (from, to, bytes.clone()));
        }
    }

    fn deliver_due(&mut self) {
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > self.now_ms {
                break;
            }
            let (from, to, bytes) = entry.remove();
            if self.cut.contains(&(from.min(to), from.max(to))) {
                continue;
            }
            self.trace = mix(self.trace, from ^ (to << 8) ^ (bytes.len() as u64) << 16);
            let now = self.now_ms;
            if let Some(keyspace) = self.nodes.get_mut(&to).and_then(|n| n.keyspace.as_mut()) {
                // Garbage never arrives here, so a refusal is a bug.
                keyspace
                    .step(from, &bytes, now)
                    .expect("a peer's message steps");
            }
        }
    }

    // ---- Clients ----

    fn clients_act(&mut self) {
        for client in 0..self.config.clients {
            if self.busy.contains_key(&client) || !self.rng.random_bool(0.3) {
                continue;
            }
            let node = self.rng.random_range(1..=self.config.nodes);
            if self.nodes[&node].keyspace.is_none() {
                continue;
            }
            self.issue(client, node);
        }
    }

    fn issue(&mut self, client: u64, node: u64) {
        let key = format!("k{}", self.rng.random_range(0..KEYS));
        self.next_value += 1;
        let value = format!("v{}", self.next_value);
        let input = match self.rng.random_range(0..10) {
            0..=3 => EtcdInput::Get { key },
            4..=6 => EtcdInput::Put { key, value },
            7 => EtcdInput::Delete { key },
            _ => EtcdInput::Cas {
                key,
                expected_mod_revision: self.rng.random_range(0..(self.history.len() as i64 + 2)),
                value,
            },
        };
        self.next_request += 1;
        let request = RequestId(self.next_request);
        let op = self.history.len();
        self.history.push(Operation {
            client,
            call: self.now_ms,
            ret: None,
            input: input.clone(),
            output: None,
        });
        self.busy
            .insert(client, (op, self.now_ms + REQUEST_TIMEOUT_MS));
        self.in_flight
            .insert((node, request), InFlight { client, op });
        let now = self.now_ms;
        let bug = self.config.bug;
        let keyspace = self
            .nodes
            .get_mut(&node)
            .and_then(|n| n.keyspace.as_mut())
            .expect("checked running");
        match input {
            EtcdInput::Get { key } => {
                let range = RangeRequest {
                    key: key.into_bytes(),
                    ..RangeRequest::default()
                };
                if bug == RaftBug::LocalReads {
                    let result = keyspace.state().range(&range);
                    let reply = result.map(Reply::Range).map_err(Into::into);
                    self.answered(node, request, reply);
                } else {
                    keyspace.read(request, Read::Range(range), now);
                }
            }
            EtcdInput::Put { key, value } => {
                let put = PutRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    ..PutRequest::default()
                };
                keyspace.propose(request, Request::Put(put), now);
            }
            EtcdInput::Delete { key } => {
                let delete = DeleteRangeRequest {
                    key: key.into_bytes(),
                    ..DeleteRangeRequest::default()
                };
                keyspace.propose(request, Request::DeleteRange(delete), now);
            }
            EtcdInput::Cas {
                key,
                expected_mod_revision,
                value,
            } => {
                let txn = cas(key.into_bytes(), expected_mod_revision, value.into_bytes());
                keyspace.propose(request, Request::Txn(txn), now);
            }
        }
    }

    fn answered(
        &mut self,
        node: u64,
        request: RequestId,
        result: Result<Reply, calm_raft::KeyspaceError>,
    ) {
        let Some(flight) = self.in_flight.remove(&(node, request)) else {
            return;
        };
        self.busy.remove(&flight.client);
        let op = &mut self.history[flight.op];
        let output = match (&op.input, result) {
            (EtcdInput::Get { .. }, Ok(Reply::Range(range))) => Some(EtcdOutput::Get {
                value: range
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                revision: range.header.map_or(0, |h| h.revision),
            }),
            (EtcdInput::Put { .. }, Ok(Reply::Applied(Response::Put(put)))) => {
                Some(EtcdOutput::Put {
                    revision: put.header.map_or(0, |h| h.revision),
                })
            }
            (EtcdInput::Delete { .. }, Ok(Reply::Applied(Response::DeleteRange(d)))) => {
                Some(EtcdOutput::Delete {
                    deleted: d.deleted,
                    revision: d.header.map_or(0, |h| h.revision),
                })
            }
            (EtcdInput::Cas { .. }, Ok(Reply::Applied(Response::Txn(txn)))) => {
                Some(EtcdOutput::Cas {
                    succeeded: txn.succeeded,
                    revision: txn.header.map_or(0, |h| h.revision),
                })
            }
            // A failed read changed nothing: drop it. A failed write may
            // still apply later: indeterminate.
            (EtcdInput::Get { .. }, _) => {
                op.ret = Some(self.now_ms);
                op.output = None;
                self.trace = mix(self.trace, flight.op as u64);
                return;
            }
            _ => None,
        };
        self.trace = mix(
            self.trace,
            (flight.op as u64) << 1 | u64::from(output.is_some()),
        );
        if output.is_some() {
            op.ret = Some(self.now_ms);
            op.output = output;
        }
    }

    /// A client that waited past its timeout gives the request up: it
    /// stays indeterminate and the client moves on.
    fn expire_requests(&mut self) {
        let now = self.now_ms;
        let late: Vec<u64> = self
            .busy
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(&client, _)| client)
            .collect();
        for client in late {
            self.busy.remove(&client);
            self.in_flight.retain(|_, flight| flight.client != client);
        }
    }

    /// Drops the failed reads (they returned with no output) so the
    /// checker sees only operations that may matter.
    pub fn settle_history(&mut self) {
        self.history
            .retain(|op| !(op.ret.is_some() && op.output.is_none()));
    }
}

/// etcd's compare-and-swap: put if the key's mod revision is `expected`
/// (0: the key is absent).
fn cas(key: Vec<u8>, expected: i64, value: Vec<u8>) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::ModRevision(expected)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key,
                value,
                ..PutRequest::default()
            })),
        }],
        failure: Vec::new(),
    }
}

fn mix(hash: u64, value: u64) -> u64 {
    (hash ^ value).wrapping_mul(0x100_0000_01b3).rotate_left(7)
}

/// Runs one seed under a schedule of faults: a leader crash and restart, a
/// leader isolated and healed, then quiet. Returns the simulation.
pub fn run_seed(config: RaftSimConfig) -> RaftSim {
    let mut sim = RaftSim::new(config);
    sim.run(1_000, false);
    sim.run(1_500, true);
    if let Some(leader) = sim.leader() {
        sim.crash(leader);
        sim.run(1_000, true);
        sim.restart(leader);
    }
    sim.run(1_000, true);
    if let Some(leader) = sim.leader() {
        sim.isolate(leader);
        sim.run(1_000, true);
        sim.heal();
    }
    sim.run(1_500, true);
    sim.run(2_500, false);
    sim.settle_history();
    sim
}
