//! Causal tokens: what a client carries between requests so that later
//! requests, at any node, see at least what earlier ones saw.
//!
//! # Why a per-key vector of write sequence numbers
//!
//! Every write at the `local` level is accepted by one node, its *origin*,
//! which numbers its writes to each key 1, 2, 3, … A replica records, per
//! key and origin, the highest sequence number up to which it has applied
//! *every* write of that origin contiguously. A token is that record for one
//! key: a version vector from origin to sequence number. A replica has
//! *seen* a token when its record dominates it entrywise.
//!
//! * Compact: one entry per node that has accepted writes for the key: the
//!   key's replicas (N, plus fallbacks while owners are down), not its
//!   history, and not the cluster size.
//! * Sound under loss and reordering: a delta carries the range of sequence
//!   numbers it covers; the contiguous frontier moves only when the range
//!   starts at or below it. A range that arrives early is kept aside (a
//!   bounded set of pending ranges) and absorbed once the gap fills, so a
//!   lost or late delta makes the replica *under*-claim, never over-claim.
//!   Forgetting pending ranges (the bound, a restart) only under-claims too.
//! * Not reused after a crash: the origin ships a write's delta, and
//!   releases its ack and every read that saw it, only after a sync covering
//!   it, so a sequence number lost in a crash was never seen by anyone and
//!   may be handed out again.
//!
//! Why not the CRDTs' own dots: the G-Counter, PN-Counter, LWW register and
//! bounded counter carry none, and a per-key sequence number is one integer
//! for any kind.

use std::collections::BTreeMap;

use calm_ring::KeyHash;
use calm_types::NodeId;
use calm_types::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};

/// Most out-of-order ranges kept per (key, origin) waiting for a gap to
/// fill. Dropping one only makes the replica under-claim until anti-entropy
/// or a later state transfer repairs it.
pub const PENDING_RANGES_PER_ORIGIN_MAX: usize = 16;

/// Most origins a decoded token may name. A key's writes come from its
/// replicas and their fallbacks, so real tokens hold a handful of entries.
pub const TOKEN_ORIGINS_MAX: usize = 256;

/// An opaque causal token for one key: the writes a reply reflected.
///
/// Clients treat the bytes as opaque ([`encode`](Self::encode) and
/// [`decode`](Self::decode)); the key hash inside makes a token presented
/// for another key an error instead of a meaningless check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalToken {
    /// [`KeyHash`] of the key the token is for.
    key_hash: u64,
    /// Origin → highest write sequence number covered; no zero entries.
    writes: BTreeMap<NodeId, u64>,
}

impl CausalToken {
    /// A token for `key` covering nothing.
    pub fn empty(key: &[u8]) -> Self {
        Self {
            key_hash: KeyHash::of(key).0,
            writes: BTreeMap::new(),
        }
    }

    /// Whether the token was issued for `key` (up to a 64-bit hash).
    pub fn is_for(&self, key: &[u8]) -> bool {
        self.key_hash == KeyHash::of(key).0
    }

    /// The highest write sequence number of `origin` the token covers.
    pub fn seq(&self, origin: NodeId) -> u64 {
        self.writes.get(&origin).copied().unwrap_or(0)
    }

    /// `(origin, sequence number)` entries, in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.writes.iter().map(|(&origin, &seq)| (origin, seq))
    }

    /// Whether this token covers every write `other` covers.
    pub fn covers(&self, other: &CausalToken) -> bool {
        other.iter().all(|(origin, seq)| self.seq(origin) >= seq)
    }

    /// The least token covering both (the key of `self` is kept).
    pub fn merge(&mut self, other: &CausalToken) {
        for (origin, seq) in other.iter() {
            let ours = self.writes.entry(origin).or_insert(0);
            *ours = (*ours).max(seq);
        }
    }

    /// The token as opaque bytes for the client.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// A token from client bytes; never panics. Zero entries, counters
    /// above [`calm_clock::COUNTER_MAX`] and more than
    /// [`TOKEN_ORIGINS_MAX`] origins are [`DecodeError::Invalid`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let token: CausalToken = codec::decode(bytes)?;
        if token.writes.len() > TOKEN_ORIGINS_MAX {
            return Err(DecodeError::Invalid(format!(
                "token names {} origins, at most {TOKEN_ORIGINS_MAX}",
                token.writes.len()
            )));
        }
        if token
            .writes
            .values()
            .any(|&seq| seq == 0 || seq > calm_clock::COUNTER_MAX)
        {
            return Err(DecodeError::Invalid(
                "token sequence numbers lie in 1..=COUNTER_MAX".into(),
            ));
        }
        Ok(token)
    }
}

/// Per key: which writes of each origin this replica has applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedLog {
    /// Origin → its writes `1..=contiguous` are all applied.
    contiguous: BTreeMap<NodeId, u64>,
    /// Origin → applied ranges `first..=last` beyond a gap, keyed by `first`.
    ahead: BTreeMap<NodeId, BTreeMap<u64, u64>>,
}

impl AppliedLog {
    /// The contiguous frontier of `origin`.
    pub(crate) fn frontier(&self, origin: NodeId) -> u64 {
        self.contiguous.get(&origin).copied().unwrap_or(0)
    }

    /// The contiguous frontier of every origin, as the token for `key`.
    pub(crate) fn token(&self, key: &[u8]) -> CausalToken {
        let mut token = CausalToken::empty(key);
        token.writes = self
            .contiguous
            .iter()
            .filter(|&(_, &seq)| seq > 0)
            .map(|(&origin, &seq)| (origin, seq))
            .collect();
        token
    }

    /// Whether every write `token` covers has been applied here.
    pub(crate) fn has_seen(&self, token: &CausalToken) -> bool {
        token
            .iter()
            .all(|(origin, seq)| self.frontier(origin) >= seq)
    }

    /// Records that the writes `first..=last` of `origin` were joined.
    pub(crate) fn record(&mut self, origin: NodeId, first: u64, last: u64) {
        debug_assert!(1 <= first && first <= last, "validated by the caller");
        let frontier = self.frontier(origin);
        if last <= frontier {
            return; // a duplicate: nothing new
        }
        if first > frontier + 1 {
            self.keep_ahead(origin, first, last);
            return;
        }
        self.contiguous.insert(origin, last);
        self.absorb(origin);
    }

    /// Raises `origin`'s frontier to at least `seq`: the caller joined a
    /// state that holds all of `origin`'s writes up to `seq`.
    pub(crate) fn raise(&mut self, origin: NodeId, seq: u64) {
        if seq > self.frontier(origin) {
            self.contiguous.insert(origin, seq);
            self.absorb(origin);
        }
    }

    /// Keeps an early range, evicting the furthest-ahead range beyond the
    /// bound (forgetting only under-claims).
    fn keep_ahead(&mut self, origin: NodeId, first: u64, last: u64) {
        let ranges = self.ahead.entry(origin).or_default();
        let entry = ranges.entry(first).or_insert(last);
        *entry = (*entry).max(last);
        while ranges.len() > PENDING_RANGES_PER_ORIGIN_MAX {
            ranges.pop_last();
        }
    }

    /// Moves the frontier over every kept range that now touches it.
    fn absorb(&mut self, origin: NodeId) {
        let Some(ranges) = self.ahead.get_mut(&origin) else {
            return;
        };
        let mut frontier = self.contiguous.get(&origin).copied().unwrap_or(0);
        while let Some((&first, &last)) = ranges.first_key_value() {
            if first > frontier + 1 {
                break;
            }
            frontier = frontier.max(last);
            ranges.pop_first();
        }
        if ranges.is_empty() {
            self.ahead.remove(&origin);
        }
        self.contiguous.insert(origin, frontier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);

    fn check(deliveries: &[(u64, u64)], expected_frontier: u64) {
        let mut log = AppliedLog::default();
        for &(first, last) in deliveries {
            log.record(A, first, last);
        }
        assert_eq!(log.frontier(A), expected_frontier, "{deliveries:?}");
    }

    #[test]
    fn frontier_moves_only_over_contiguous_ranges() {
        // The token claim: a frontier never covers a write whose range is missing.
        check(&[(1, 1), (2, 3)], 3);
        check(&[(2, 3)], 0);
        check(&[(2, 3), (5, 5)], 0);
        check(&[(2, 3), (5, 5), (1, 1)], 3);
        check(&[(2, 3), (5, 5), (1, 1), (4, 4)], 5);
        check(&[(1, 2), (1, 2), (2, 2)], 2);
        check(&[(1, 4), (2, 3)], 4);
    }

    #[test]
    fn forgetting_ranges_beyond_the_bound_only_under_claims() {
        let mut log = AppliedLog::default();
        for seq in (3..3 + 2 * PENDING_RANGES_PER_ORIGIN_MAX as u64).step_by(2) {
            log.record(A, seq, seq);
        }
        log.record(A, 1, 1);
        let frontier = log.frontier(A);
        assert!(frontier < 3, "seq 2 was never applied, frontier {frontier}");
    }

    #[test]
    fn a_token_decodes_from_its_bytes_and_garbage_is_an_error() {
        let mut log = AppliedLog::default();
        log.record(A, 1, 1);
        let token = log.token(b"k");
        assert_eq!(CausalToken::decode(&token.encode()), Ok(token.clone()));
        assert!(token.is_for(b"k") && !token.is_for(b"other"));
        assert!(CausalToken::decode(&[1, 0xff, 0xff]).is_err());
    }
}
