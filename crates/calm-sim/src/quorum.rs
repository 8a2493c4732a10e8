//! The `one`/`quorum`/`all` levels in the CRDT simulation: which client
//! requests go through [`Replica::submit_at`](calm_replica::Replica::submit_at),
//! the floor each counter read at the level must reach, and the planted
//! replica that acknowledges replicated writes it never holds.
//!
//! A counter read's floor is what its client already knows: the sum of the
//! increments acknowledged before the read was submitted, less every
//! decrement that may have landed by the time it is answered (acknowledged
//! or still in doubt; a refused one changed nothing). With `r + w > n` the
//! `r` owners a read merges meet the `w` that hold each acknowledged write
//! (Gifford, SOSP 1979; Dynamo §4.5), so an answer below its floor is a
//! stale read.

use std::collections::BTreeMap;

use calm_replica::coordinator::Level;
use calm_replica::{Message, Operation, Replicated, Reply, RequestId, Value};

use crate::config::PlantedBug;
use crate::sim::{Simulation, node_id};

/// The checker's name in its violations.
pub(crate) const CHECKER: &str = "quorum read";

/// The share of the workload's counter operations that are reads, when a
/// level is set.
pub(crate) const READ_SHARE: f64 = 0.3;

/// How many owners a request at `level` waits for among `n`, this one
/// included: `w` for a write and `r` for a read, as the replica counts them.
pub(crate) fn replicas_needed(level: Level, n: usize) -> usize {
    match level {
        Level::One => 1,
        Level::Quorum => n / 2 + 1,
        Level::All => n,
    }
}

/// A counter read at the level, submitted and not yet answered.
struct PendingRead {
    key: Vec<u8>,
    /// The node index it was submitted to.
    node: usize,
    submitted_ms: u64,
    /// Increments acknowledged to `key` when the read was submitted.
    acked_up: u64,
}

/// The reads at the level in flight, and the first that came back stale.
#[derive(Default)]
pub(crate) struct QuorumReads {
    pending: BTreeMap<RequestId, PendingRead>,
    /// What the first stale read saw, for `check_quorum_reads`.
    pub(crate) first_stale: Option<String>,
}

impl Simulation {
    /// The level `op` goes at, or `None` for `local` (plain
    /// [`submit`](calm_replica::Replica::submit)): with
    /// [`SimConfig::level`](crate::SimConfig::level) set, counter
    /// increments, decrements and reads go at that level (reads at `one`
    /// under [`PlantedBug::ReadsAtOne`]); sets and bounded counters stay
    /// local.
    pub(crate) fn level_for(&self, op: &Operation) -> Option<Level> {
        let level = self.config.level?;
        match op {
            Operation::Read if self.config.planted_bug == PlantedBug::ReadsAtOne => {
                Some(Level::One)
            }
            Operation::Read | Operation::Increment(_) | Operation::Decrement(_) => Some(level),
            _ => None,
        }
    }

    /// Records a read of `key` at the level, submitted as `id` to node
    /// `index` now, with the increments its client knows acknowledged.
    pub(crate) fn quorum_read_submitted(&mut self, id: RequestId, index: usize, key: &[u8]) {
        let read = PendingRead {
            key: key.to_vec(),
            node: index,
            submitted_ms: self.now_ms(),
            acked_up: self.ledger.acked(key).up,
        };
        self.quorum_reads.pending.insert(id, read);
    }

    /// Judges `reply` if it answers a read at the level; returns whether it
    /// did. A counter value below the read's floor is kept as the first
    /// stale read; errors (`Unavailable`, `ReadTimeout`) are counted.
    pub(crate) fn quorum_read_answered(&mut self, reply: &Reply) -> bool {
        let Some(read) = self.quorum_reads.pending.remove(&reply.id) else {
            return false;
        };
        let seen = match &reply.result {
            Err(_) => {
                self.stats.quorum_reads_failed += 1;
                return true;
            }
            Ok(ack) => match ack.value {
                Some(Value::Counter(value)) => value,
                Some(Value::Absent) | None => 0,
                // Not a counter (a test read another kind): no floor.
                Some(_) => return true,
            },
        };
        self.stats.quorum_reads_checked += 1;
        let (acked, doubt) = (
            self.ledger.acked(&read.key),
            self.ledger.in_doubt(&read.key),
        );
        let floor = i128::from(read.acked_up) - i128::from(acked.down) - i128::from(doubt.down);
        if seen < floor {
            self.stats.stale_reads += 1;
            if self.quorum_reads.first_stale.is_none() {
                let detail = format!(
                    "read {} of {} at {} submitted at {} ms saw {seen} at {} ms, \
                     below the {floor} acknowledged before it",
                    reply.id.0,
                    String::from_utf8_lossy(&read.key),
                    node_id(read.node),
                    read.submitted_ms,
                    self.now_ms(),
                );
                self.quorum_reads.first_stale = Some(detail);
            }
        }
        true
    }

    /// The planted [`PlantedBug::ForgedReplicatedAcks`]: if `bytes` is a
    /// [`Message::Replicate`] about to reach node `to`, the driver drops it
    /// and sends its coordinator, node `from`, the ack `to` would send after
    /// holding the write durably. Returns whether it did.
    pub(crate) fn forge_replicated_ack(&mut self, from: usize, to: usize, bytes: &[u8]) -> bool {
        if self.config.planted_bug != PlantedBug::ForgedReplicatedAcks {
            return false;
        }
        let Ok(Message::Replicate(replicate)) = Message::decode(bytes) else {
            return false;
        };
        let ack = Message::Replicated(Replicated {
            from: node_id(to),
            request: replicate.request,
            seq: replicate.delta.last_seq,
        });
        self.stats.acks_forged += 1;
        self.send_replica_message(to, from, ack.encode());
        true
    }
}
