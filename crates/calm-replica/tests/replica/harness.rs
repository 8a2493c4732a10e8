//! A deterministic cluster: replicas over `MemoryEngine`s, one shared ring,
//! and a message queue that loses, duplicates and reorders on a seed.

use std::collections::BTreeMap;

use calm_replica::coordinator::Level;
use calm_replica::{
    Ack, CausalToken, Operation, Output, Replica, ReplicaConfig, ReplicaError, Reply, Request,
    RequestId,
};
use calm_ring::{Ring, RingConfig};
use calm_storage::{Limits, MemoryEngine};
use calm_types::NodeId;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// Faults the network injects, as probabilities per message.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub loss: f64,
    pub duplication: f64,
}

pub struct Cluster {
    pub replicas: Vec<Option<Replica<MemoryEngine>>>,
    pub ring: Ring,
    pub configs: Vec<ReplicaConfig>,
    /// In flight: (to, bytes).
    pub network: Vec<(NodeId, Vec<u8>)>,
    pub rng: StdRng,
    pub now_ms: u64,
    pub faults: Faults,
    pub replies: BTreeMap<RequestId, Reply>,
    next_id: u64,
}

pub fn node(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

pub fn index(node: NodeId) -> usize {
    node.0 as usize - 1
}

impl Cluster {
    pub fn new(nodes: usize, seed: u64, faults: Faults) -> Self {
        Self::with_config(nodes, seed, faults, ReplicaConfig::new)
    }

    pub fn with_config(
        nodes: usize,
        seed: u64,
        faults: Faults,
        config: impl Fn(NodeId) -> ReplicaConfig,
    ) -> Self {
        let members: Vec<NodeId> = (0..nodes).map(node).collect();
        let ring = Ring::new(RingConfig::default(), &members).expect("a valid ring");
        let configs: Vec<ReplicaConfig> = members.iter().map(|&n| config(n)).collect();
        let replicas = configs
            .iter()
            .map(|c| {
                let engine = MemoryEngine::new(Limits::default());
                Some(Replica::open(c.clone(), ring.clone(), engine).expect("an empty engine opens"))
            })
            .collect();
        Self {
            replicas,
            ring,
            configs,
            network: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            now_ms: 1_000,
            faults,
            replies: BTreeMap::new(),
            next_id: 0,
        }
    }

    pub fn replica(&mut self, i: usize) -> &mut Replica<MemoryEngine> {
        self.replicas[i].as_mut().expect("the replica is running")
    }

    /// Submits a request at node `i` and collects what it outputs at once.
    pub fn submit(
        &mut self,
        i: usize,
        key: &[u8],
        op: Operation,
        token: Option<&CausalToken>,
    ) -> RequestId {
        self.submit_with(i, key, op, token, None)
    }

    /// Submits a request at `level` at node `i` and collects what it
    /// outputs at once.
    pub fn submit_at(&mut self, i: usize, key: &[u8], op: Operation, level: Level) -> RequestId {
        self.submit_with(i, key, op, None, Some(level))
    }

    fn submit_with(
        &mut self,
        i: usize,
        key: &[u8],
        op: Operation,
        token: Option<&CausalToken>,
        level: Option<Level>,
    ) -> RequestId {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let request = Request {
            id,
            key: key.to_vec(),
            op,
            token: token.map(CausalToken::encode),
        };
        let now = self.now_ms;
        match level {
            None => self.replica(i).submit(request, now),
            Some(level) => self.replica(i).submit_at(request, level, now),
        }
        self.collect(i);
        id
    }

    /// Submits, flushes node `i`, and returns the reply if there is one.
    pub fn request(
        &mut self,
        i: usize,
        key: &[u8],
        op: Operation,
        token: Option<&CausalToken>,
    ) -> Option<Result<Ack, ReplicaError>> {
        let id = self.submit(i, key, op, token);
        self.flush(i);
        self.replies.remove(&id).map(|r| r.result)
    }

    pub fn flush(&mut self, i: usize) {
        self.replica(i)
            .flush()
            .expect("memory engine syncs succeed");
        self.collect(i);
    }

    pub fn collect(&mut self, i: usize) {
        for output in self.replica(i).take_outputs() {
            match output {
                Output::Reply(reply) => {
                    self.replies.insert(reply.id, reply);
                }
                Output::Send { to, message } => self.enqueue(to, message),
            }
        }
    }

    fn enqueue(&mut self, to: NodeId, message: Vec<u8>) {
        if self.rng.random_bool(self.faults.loss) {
            return;
        }
        if self.rng.random_bool(self.faults.duplication) {
            self.network.push((to, message.clone()));
        }
        self.network.push((to, message));
    }

    /// Advances time and ticks every running replica.
    pub fn tick(&mut self, advance_ms: u64) {
        self.now_ms += advance_ms;
        for i in 0..self.replicas.len() {
            if self.replicas[i].is_some() {
                let now = self.now_ms;
                self.replica(i).tick(now);
                self.collect(i);
            }
        }
    }

    /// Delivers up to `count` in-flight messages, in a random order.
    pub fn deliver_some(&mut self, count: usize) {
        for _ in 0..count {
            if self.network.is_empty() {
                return;
            }
            let pick = self.rng.random_range(0..self.network.len());
            let (to, bytes) = self.network.swap_remove(pick);
            let i = index(to);
            if self.replicas[i].is_none() {
                continue;
            }
            let now = self.now_ms;
            self.replica(i)
                .step(&bytes, now)
                .expect("peer messages are valid");
            self.collect(i);
        }
    }

    /// Flushes, ticks and delivers until nothing is in flight.
    pub fn drain(&mut self) {
        for _ in 0..100 {
            for i in 0..self.replicas.len() {
                if self.replicas[i].is_some() {
                    self.flush(i);
                }
            }
            self.tick(1);
            if self.network.is_empty() {
                return;
            }
            let n = self.network.len();
            self.deliver_some(n);
        }
        panic!("the network did not drain");
    }

    /// The live replicas of `key`, as indices.
    pub fn replicas_of(&mut self, key: &[u8]) -> Vec<usize> {
        self.replica(0)
            .replicas(key)
            .into_iter()
            .map(index)
            .collect()
    }

    /// A key whose replicas include nodes `a` and `b`.
    pub fn key_replicated_at(&mut self, a: usize, b: usize, prefix: &str) -> Vec<u8> {
        (0..10_000)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .find(|k| {
                let r = self.replicas_of(k);
                r.contains(&a) && r.contains(&b)
            })
            .expect("some key is replicated at both")
    }
}
