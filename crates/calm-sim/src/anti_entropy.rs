//! The driver's anti-entropy: periodic Merkle sessions between replica pairs.
//!
//! A session runs synchronously between the two in-memory nodes when the
//! link between them is up both ways (a partition would cut a real session's
//! stream anyway), and its bytes are counted; the repairs it finds travel as
//! state transfers through the faulty network, like any replication message.

use calm_replica::{
    AntiEntropyConfig, AntiEntropySession, KeyRange, MerkleTree, Replica, ValueDigest,
    shared_ranges,
};
use calm_ring::{KeyHash, Ring};
use calm_storage::MemoryEngine;

use crate::sim::{Simulation, node_id};

/// Keys each tree is sized for; both ends must agree on the shape, and the
/// workload stays far below it.
const TREE_KEYS_EXPECTED: u64 = 1024;

/// What one comparison found: keys each side must ship to the other.
pub(crate) struct Repairs {
    pub(crate) a_sends: Vec<Vec<u8>>,
    pub(crate) b_sends: Vec<Vec<u8>>,
    pub(crate) bytes: u64,
}

fn tree_of(replica: &Replica<MemoryEngine, Ring>, range: KeyRange) -> MerkleTree {
    let mut tree = MerkleTree::with_expected_keys(range, TREE_KEYS_EXPECTED);
    for (key, digest) in replica.digests() {
        if range.contains(KeyHash::of(key)) {
            // Invariant: the key lies in the tree's range (checked above).
            tree.upsert(key, ValueDigest(digest))
                .expect("key inside the tree's range");
        }
    }
    tree
}

/// Runs one session over two trees to its end, moving bytes in memory.
/// `None` if the session failed (counted by the caller as nothing found).
fn run_session(ours: &mut MerkleTree, theirs: &mut MerkleTree) -> Option<Repairs> {
    let config = AntiEntropyConfig::default();
    let mut initiator = AntiEntropySession::initiator(config).ok()?;
    let mut responder = AntiEntropySession::responder(config).ok()?;
    loop {
        let mut moved = false;
        while let Some(bytes) = initiator.poll_transmit(ours).ok()? {
            responder.handle(theirs, &bytes).ok()?;
            moved = true;
        }
        while let Some(bytes) = responder.poll_transmit(theirs).ok()? {
            initiator.handle(ours, &bytes).ok()?;
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let ours_outcome = initiator.outcome()?;
    let theirs_outcome = responder.outcome()?;
    Some(Repairs {
        a_sends: ours_outcome.send,
        b_sends: theirs_outcome.send,
        bytes: initiator.bytes_exchanged(),
    })
}

impl Simulation {
    /// Compares nodes `a` and `b` over every range they both replicate.
    /// `None` if either is down or the link between them is cut.
    pub(crate) fn compare(&self, a: usize, b: usize) -> Option<Repairs> {
        let live_a = self.nodes[a].live.as_ref()?;
        let live_b = self.nodes[b].live.as_ref()?;
        if !self.link_up(a, b) {
            return None;
        }
        let n = self.config.replication_factor;
        let mut found = Repairs {
            a_sends: Vec::new(),
            b_sends: Vec::new(),
            bytes: 0,
        };
        for range in shared_ranges(&self.ring, n, node_id(a), node_id(b)) {
            let mut ours = tree_of(&live_a.replica, range);
            let mut theirs = tree_of(&live_b.replica, range);
            let repairs = run_session(&mut ours, &mut theirs)?;
            found.a_sends.extend(repairs.a_sends);
            found.b_sends.extend(repairs.b_sends);
            found.bytes += repairs.bytes;
        }
        Some(found)
    }

    /// One node's periodic round: a session with a random peer, then the
    /// state transfers it calls for.
    pub(crate) fn anti_entropy_round(&mut self, node: usize, epoch: u64) {
        if !self.epoch_is(node, epoch) {
            return;
        }
        if let Some(peer) = self.random_peer(node)
            && let Some(repairs) = self.compare(node, peer)
        {
            self.stats.anti_entropy_sessions += 1;
            self.stats.anti_entropy_bytes += repairs.bytes;
            for key in &repairs.a_sends {
                self.ship_state(node, peer, key);
            }
            for key in &repairs.b_sends {
                self.ship_state(peer, node, key);
            }
        }
        if let Some(period) = self.config.anti_entropy_period_ms {
            self.reschedule_anti_entropy(node, epoch, period);
        }
    }

    /// Keys on which some pair of running, connected nodes disagrees, over
    /// every pair: zero when anti-entropy has nothing left to repair.
    pub(crate) fn differences(&self) -> usize {
        let mut total = 0;
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                if let Some(repairs) = self.compare(a, b) {
                    total += repairs.a_sends.len() + repairs.b_sends.len();
                }
            }
        }
        total
    }
}
