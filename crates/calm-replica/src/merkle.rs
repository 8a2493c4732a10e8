//! The Merkle tree over one key range: (key, value digest) pairs bucketed by
//! key hash, updated incrementally, hashed up lazily.
//!
//! # Shape
//!
//! A tree has a fixed fanout of [`FANOUT`] (16) and a depth of 1 to
//! [`DEPTH_MAX`]; level 0 is the root and level `depth` holds the
//! `16^depth` leaves. A key's leaf is its position inside the covered range,
//! scaled to the leaf count, so keys spread evenly over the leaves whatever
//! the range's length. [`TreeShape::for_keys`] picks the smallest depth whose
//! leaves hold at most [`LEAF_KEYS_TARGET`] keys each on average: each level
//! more costs one more round of 16 hashes per differing key during an
//! exchange, each level fewer multiplies by 16 the keys listed per differing
//! leaf, and at about 8 keys per leaf the two costs cross (see the module
//! docs of `anti_entropy`). [`DEPTH_MAX`] (5, about one million leaves,
//! 8 MiB of leaf hashes) bounds the memory of one tree.
//!
//! # Which keys a tree covers
//!
//! A tree covers one [`KeyRange`]: the arc `(left, right]` of the 64-bit
//! placement circle, the same convention as `calm_ring::Ring::tokens`, where
//! a token owns the keys from the previous token (exclusive) up to itself
//! (inclusive). The replica core builds one tree per arc that both peers of
//! a session replicate (an arc's preference list is the same for every key
//! in it), so two trees compared by a session always cover the same keys.
//! [`shared_ranges`] lists those arcs for two nodes of a ring.
//! Inserting a key outside the range is an error, not a silent skip, so a
//! wrong range shows up at once instead of as a tree that never converges.
//!
//! # Hashing
//!
//! * An entry's hash is xxh3-64 of the key bytes, seeded with the value
//!   digest, so it depends on both and on nothing else.
//! * A leaf's hash is the **wrapping sum** of its entries' hashes. A sum is
//!   order-independent, and an upsert or a removal updates it in O(1) by
//!   adding and subtracting, with no need to re-read the leaf's other keys.
//!   A sum, unlike XOR, does not cancel an entry that is counted twice
//!   (`x + x != 0`), although the tree keys entries by key so that cannot
//!   happen here. Its weakness is that it is linear: someone who can choose
//!   keys and digests on both replicas could build two different leaves with
//!   the same sum. xxh3 is not a cryptographic hash either, so the tree does
//!   not defend against an adversary; a hidden difference only delays repair
//!   (delta propagation and the next write still converge the key), and for
//!   honest data a missed difference has probability about 2^-64 per leaf.
//! * An inner node's hash is xxh3-64 of its children's hashes, or 0 when
//!   every child is 0, so empty subtrees compare equal without hashing.
//!   Inner nodes are recomputed lazily: updates mark their leaf dirty, and
//!   the next read of an inner node ([`MerkleTree::root`]) rehashes only the
//!   dirty paths, O(depth) per updated leaf, so a bulk load costs one pass.

use std::collections::BTreeMap;
use std::ops::Bound;

use calm_ring::{KeyHash, Placement, Ring};
use calm_types::NodeId;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Children per inner node. Sixteen keeps a differing node's children (16
/// hashes, 128 bytes) in one small message while keeping trees shallow.
pub const FANOUT: usize = 16;

/// The deepest tree allowed: `16^5` (about one million) leaves, 8 MiB of
/// leaf hashes. Deeper trees would cost more memory than the keys they
/// index at any realistic per-arc key count.
pub const DEPTH_MAX: u8 = 5;

/// The average number of keys per leaf that [`TreeShape::for_keys`] aims
/// for (at most).
pub const LEAF_KEYS_TARGET: u64 = 8;

/// A value's digest: what the tree compares instead of the value itself.
///
/// The replica core computes it from the encoded CRDT state (for example with
/// [`ValueDigest::of`]); two replicas whose states encode to the same bytes
/// have the same digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ValueDigest(#[serde(with = "fixed64")] pub u64);

impl ValueDigest {
    /// Seed of [`ValueDigest::of`], distinct from the placement hash's seed 0
    /// so a digest is never mistaken for a key position.
    const SEED: u64 = 0x6361_6c6d_2d76_616c; // "calm-val"

    /// xxh3-64 of `bytes` with a digest-only seed.
    pub fn of(bytes: &[u8]) -> ValueDigest {
        ValueDigest(xxh3_64_with_seed(bytes, Self::SEED))
    }
}

/// The arc `(left, right]` of the placement circle, clockwise; `left == right`
/// is the whole circle (the arc of a ring's only token).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    /// The position just before the first covered one (exclusive).
    pub left: u64,
    /// The last covered position (inclusive).
    pub right: u64,
}

impl KeyRange {
    /// The whole circle.
    pub const FULL: KeyRange = KeyRange { left: 0, right: 0 };

    /// The arc `(left, right]`.
    pub fn arc(left: u64, right: u64) -> KeyRange {
        KeyRange { left, right }
    }

    /// How many positions the arc covers, from 1 to 2^64.
    pub fn span(&self) -> u128 {
        match self.right.wrapping_sub(self.left) {
            0 => 1u128 << 64,
            length => u128::from(length),
        }
    }

    /// The position of `hash` inside the arc, counted from 0 just after
    /// `left`, or `None` outside it.
    pub fn offset(&self, hash: KeyHash) -> Option<u64> {
        let offset = hash.0.wrapping_sub(self.left).wrapping_sub(1);
        (u128::from(offset) < self.span()).then_some(offset)
    }

    /// Whether the arc covers `hash`.
    pub fn contains(&self, hash: KeyHash) -> bool {
        self.offset(hash).is_some()
    }
}

/// The arcs of `ring` whose `replicas` natural owners include both `a` and
/// `b`, adjacent arcs merged, in ring order: the ranges over which the two
/// nodes build trees and run sessions.
///
/// Every key of a ring arc `(previous token, token]` has the same owners, so
/// the owners of the token itself stand for the arc. Empty if either node is
/// not a member or they share no arc.
pub fn shared_ranges(ring: &Ring, replicas: usize, a: NodeId, b: NodeId) -> Vec<KeyRange> {
    let tokens: Vec<u64> = ring.tokens().map(|(token, _)| token).collect();
    let mut ranges: Vec<KeyRange> = Vec::new();
    for (i, &token) in tokens.iter().enumerate() {
        let owners = ring.owners(KeyHash(token), replicas);
        if !(owners.contains(&a) && owners.contains(&b)) {
            continue;
        }
        let left = tokens[(i + tokens.len() - 1) % tokens.len()];
        match ranges.last_mut() {
            Some(last) if last.right == left => last.right = token,
            _ => ranges.push(KeyRange::arc(left, token)),
        }
    }
    // The first and last arcs meet across the top of the circle when both
    // are shared; one range then covers both.
    if ranges.len() > 1 && ranges[ranges.len() - 1].right == ranges[0].left {
        let last = ranges.pop().expect("more than one range");
        ranges[0].left = last.left;
    }
    ranges
}

/// A tree's depth; the fanout is always [`FANOUT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TreeShape {
    depth: u8,
}

impl TreeShape {
    /// A shape of the given depth, or `None` unless `1 <= depth <= DEPTH_MAX`.
    pub fn new(depth: u8) -> Option<TreeShape> {
        (1..=DEPTH_MAX)
            .contains(&depth)
            .then_some(TreeShape { depth })
    }

    /// The smallest depth whose leaves average at most [`LEAF_KEYS_TARGET`]
    /// keys for `keys_expected` keys, capped at [`DEPTH_MAX`].
    pub fn for_keys(keys_expected: u64) -> TreeShape {
        let mut depth = 1;
        while depth < DEPTH_MAX && leaves_at(depth) * LEAF_KEYS_TARGET < keys_expected {
            depth += 1;
        }
        TreeShape { depth }
    }

    /// Levels below the root; the leaves are at level `depth`.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// Number of leaves: `16^depth`.
    pub fn leaves(&self) -> u64 {
        leaves_at(self.depth)
    }

    /// Number of nodes at `level` (0 is the root).
    pub fn nodes_at(&self, level: u8) -> u64 {
        leaves_at(level)
    }
}

fn leaves_at(level: u8) -> u64 {
    (FANOUT as u64).pow(u32::from(level))
}

/// Why a tree refused an update. The tree is unchanged after every error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The key's hash lies outside the tree's range; nothing changed.
    #[error("key hash {hash:#018x} is outside the tree's range {range:?}")]
    OutOfRange {
        /// The key's placement hash.
        hash: u64,
        /// The range the tree covers.
        range: KeyRange,
    },
}

/// A Merkle tree over the (key, value digest) pairs of one [`KeyRange`].
///
/// Inputs are [`upsert`](MerkleTree::upsert) and
/// [`remove`](MerkleTree::remove), called by the replica core whenever a
/// key's state changes (including by a join from anti-entropy); reads are
/// [`root`](MerkleTree::root) and the node and leaf reads the anti-entropy
/// session makes. Reading hashes takes `&mut self` because inner nodes are
/// rehashed lazily on read.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    range: KeyRange,
    shape: TreeShape,
    /// Entries keyed by (position in the range, key), so a leaf is one
    /// contiguous run and a lookup is a short range scan at one position.
    entries: BTreeMap<(u64, Box<[u8]>), ValueDigest>,
    /// `levels[l][i]` is the hash of node `i` at level `l`; `levels[depth]`
    /// are the leaves, kept current on every update.
    levels: Vec<Vec<u64>>,
    /// Leaves updated since inner nodes were last rehashed, unsorted.
    dirty_leaves: Vec<u32>,
    /// Set instead of growing `dirty_leaves` past a sixteenth of the leaves,
    /// where rehashing everything is cheaper than sorting the list.
    all_dirty: bool,
}

impl MerkleTree {
    /// An empty tree over `range` with the given shape.
    pub fn new(range: KeyRange, shape: TreeShape) -> MerkleTree {
        let levels = (0..=shape.depth)
            .map(|level| vec![0u64; shape.nodes_at(level) as usize])
            .collect();
        MerkleTree {
            range,
            shape,
            entries: BTreeMap::new(),
            levels,
            dirty_leaves: Vec::new(),
            all_dirty: false,
        }
    }

    /// An empty tree over `range` sized for about `keys_expected` keys
    /// ([`TreeShape::for_keys`]).
    pub fn with_expected_keys(range: KeyRange, keys_expected: u64) -> MerkleTree {
        MerkleTree::new(range, TreeShape::for_keys(keys_expected))
    }

    /// The range this tree covers.
    pub fn range(&self) -> KeyRange {
        self.range
    }

    /// This tree's shape.
    pub fn shape(&self) -> TreeShape {
        self.shape
    }

    /// Number of keys in the tree.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree holds no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest recorded for `key`, if any.
    pub fn digest(&self, key: &[u8]) -> Option<ValueDigest> {
        let offset = self.range.offset(KeyHash::of(key))?;
        self.at_offset(offset)
            .find(|(k, _)| *k == key)
            .map(|(_, digest)| digest)
    }

    /// Records `digest` as `key`'s value digest and returns the previous one.
    /// O(log keys) for the entry, O(1) for the leaf hash.
    ///
    /// Errors, changing nothing, if `key` lies outside the tree's range.
    pub fn upsert(
        &mut self,
        key: &[u8],
        digest: ValueDigest,
    ) -> Result<Option<ValueDigest>, MerkleError> {
        let offset = self.offset_of(key)?;
        let previous = self.digest(key);
        if previous == Some(digest) {
            return Ok(previous);
        }
        let leaf = self.leaf_of_offset(offset);
        let leaf_hash = &mut self.levels[usize::from(self.shape.depth)][leaf];
        if let Some(old) = previous {
            *leaf_hash = leaf_hash.wrapping_sub(entry_hash(key, old));
        }
        *leaf_hash = leaf_hash.wrapping_add(entry_hash(key, digest));
        self.entries.insert((offset, key.into()), digest);
        self.mark_dirty(leaf);
        Ok(previous)
    }

    /// Forgets `key` and returns its digest, if it was present.
    ///
    /// Errors, changing nothing, if `key` lies outside the tree's range.
    pub fn remove(&mut self, key: &[u8]) -> Result<Option<ValueDigest>, MerkleError> {
        let offset = self.offset_of(key)?;
        let Some(old) = self.entries.remove(&(offset, key.into())) else {
            return Ok(None);
        };
        let leaf = self.leaf_of_offset(offset);
        let leaf_hash = &mut self.levels[usize::from(self.shape.depth)][leaf];
        *leaf_hash = leaf_hash.wrapping_sub(entry_hash(key, old));
        self.mark_dirty(leaf);
        Ok(Some(old))
    }

    /// The root hash, rehashing the paths above updated leaves first. Two
    /// trees with the same range, shape and entries have the same root,
    /// whatever the order of the updates that built them.
    pub fn root(&mut self) -> u64 {
        self.node(0, 0)
    }

    /// The hash of node `index` at `level`. Panics on a node outside the
    /// shape: callers validate untrusted indices first.
    pub(crate) fn node(&mut self, level: u8, index: u64) -> u64 {
        self.rehash();
        self.levels[usize::from(level)][index as usize]
    }

    /// The leaf `key` falls in, or `None` outside the range.
    pub(crate) fn leaf_of(&self, key: &[u8]) -> Option<u64> {
        let offset = self.range.offset(KeyHash::of(key))?;
        Some(self.leaf_of_offset(offset) as u64)
    }

    /// The entries of leaf `leaf`, in (position, key) order.
    pub(crate) fn leaf_entries(&self, leaf: u64) -> impl Iterator<Item = (&[u8], ValueDigest)> {
        // Invariant: for leaf < leaves, ceil(leaf * span / leaves) < span <= 2^64.
        let start = u64::try_from(self.leaf_start(leaf)).expect("a leaf starts inside its range");
        let end = if leaf + 1 >= self.shape.leaves() {
            Bound::Unbounded
        } else {
            let end =
                u64::try_from(self.leaf_start(leaf + 1)).expect("a leaf starts inside its range");
            Bound::Excluded((end, Box::<[u8]>::default()))
        };
        self.entries
            .range((Bound::Included((start, Box::<[u8]>::default())), end))
            .map(|((_, key), digest)| (&key[..], *digest))
    }

    /// Number of entries in leaf `leaf`.
    pub(crate) fn leaf_len(&self, leaf: u64) -> usize {
        self.leaf_entries(leaf).count()
    }

    fn offset_of(&self, key: &[u8]) -> Result<u64, MerkleError> {
        let hash = KeyHash::of(key);
        self.range.offset(hash).ok_or(MerkleError::OutOfRange {
            hash: hash.0,
            range: self.range,
        })
    }

    fn at_offset(&self, offset: u64) -> impl Iterator<Item = (&[u8], ValueDigest)> {
        let start = Bound::Included((offset, Box::<[u8]>::default()));
        let end = match offset.checked_add(1) {
            Some(next) => Bound::Excluded((next, Box::<[u8]>::default())),
            None => Bound::Unbounded,
        };
        self.entries
            .range((start, end))
            .map(|((_, key), digest)| (&key[..], *digest))
    }

    /// `floor(offset * leaves / span)`: exact integer scaling, so both peers
    /// put every key in the same leaf.
    fn leaf_of_offset(&self, offset: u64) -> usize {
        (u128::from(offset) * u128::from(self.shape.leaves()) / self.range.span()) as usize
    }

    /// The first offset of leaf `leaf`: `ceil(leaf * span / leaves)`, the
    /// inverse of [`leaf_of_offset`](Self::leaf_of_offset).
    fn leaf_start(&self, leaf: u64) -> u128 {
        (u128::from(leaf) * self.range.span()).div_ceil(u128::from(self.shape.leaves()))
    }

    fn mark_dirty(&mut self, leaf: usize) {
        if self.all_dirty {
            return;
        }
        if self.dirty_leaves.len() as u64 > self.shape.leaves() / 16 {
            self.all_dirty = true;
            self.dirty_leaves = Vec::new();
        } else {
            self.dirty_leaves.push(leaf as u32);
        }
    }

    /// Rehashes every inner node above a dirty leaf, bottom up.
    fn rehash(&mut self) {
        let depth = usize::from(self.shape.depth);
        if self.all_dirty {
            for level in (0..depth).rev() {
                for index in 0..self.levels[level].len() {
                    self.levels[level][index] = inner_hash(&self.levels[level + 1], index);
                }
            }
        } else if !self.dirty_leaves.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty_leaves);
            for level in (0..depth).rev() {
                for index in dirty.iter_mut() {
                    *index /= FANOUT as u32;
                }
                dirty.sort_unstable();
                dirty.dedup();
                for &index in &dirty {
                    let index = index as usize;
                    self.levels[level][index] = inner_hash(&self.levels[level + 1], index);
                }
            }
            // Reuse the allocation for the next batch of updates.
            dirty.clear();
            self.dirty_leaves = dirty;
        }
        self.all_dirty = false;
    }
}

/// An entry's hash: xxh3-64 of the key, seeded with the digest.
fn entry_hash(key: &[u8], digest: ValueDigest) -> u64 {
    xxh3_64_with_seed(key, digest.0)
}

/// Hash of node `index` from its children in `below`; 0 if all are 0.
fn inner_hash(below: &[u64], index: usize) -> u64 {
    let children = &below[index * FANOUT..(index + 1) * FANOUT];
    if children.iter().all(|&hash| hash == 0) {
        return 0;
    }
    let mut bytes = [0u8; FANOUT * 8];
    for (chunk, hash) in bytes.chunks_exact_mut(8).zip(children) {
        chunk.copy_from_slice(&hash.to_le_bytes());
    }
    xxh3_64(&bytes)
}

/// Serde for a `u64` as 8 little-endian bytes. Postcard writes integers as
/// varints, which take 10 bytes for a uniformly random 64-bit hash; a fixed
/// 8 bytes is smaller for hashes and digests.
pub(crate) mod fixed64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `value` as 8 little-endian bytes.
    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&value.to_le_bytes(), serializer)
    }

    /// Reads 8 little-endian bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        <[u8; 8]>::deserialize(deserializer).map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The committed case count, unless `PROPTEST_CASES` asks for fewer
    /// while iterating.
    fn cases(committed: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(committed)
    }

    fn build(range: KeyRange, depth: u8, entries: &[(Vec<u8>, u64)]) -> MerkleTree {
        let mut tree = MerkleTree::new(range, TreeShape::new(depth).unwrap());
        for (key, digest) in entries {
            tree.upsert(key, ValueDigest(*digest)).unwrap();
        }
        tree
    }

    fn check_depth(keys_expected: u64, depth: u8) {
        assert_eq!(
            TreeShape::for_keys(keys_expected).depth(),
            depth,
            "depth for {keys_expected} keys"
        );
    }

    #[test]
    fn depth_grows_by_one_per_sixteen_fold_keys_up_to_the_bound() {
        check_depth(0, 1);
        check_depth(128, 1); // 16 leaves × 8 keys
        check_depth(129, 2);
        check_depth(2_048, 2);
        check_depth(100_000, 4); // 65,536 leaves: 1.5 keys each
        check_depth(1_000_000, 5);
        check_depth(u64::MAX, DEPTH_MAX);
        assert_eq!(TreeShape::new(0), None);
        assert_eq!(TreeShape::new(DEPTH_MAX + 1), None);
    }

    #[test]
    fn arcs_follow_the_ring_convention_left_exclusive_right_inclusive() {
        // calm_ring: a token owns the keys from the previous token
        // (exclusive) up to itself (inclusive).
        let arc = KeyRange::arc(10, 20);
        assert!(!arc.contains(KeyHash(10)));
        assert!(arc.contains(KeyHash(11)));
        assert!(arc.contains(KeyHash(20)));
        assert!(!arc.contains(KeyHash(21)));
        let wrapping = KeyRange::arc(u64::MAX - 1, 1);
        assert!(wrapping.contains(KeyHash(u64::MAX)));
        assert!(wrapping.contains(KeyHash(0)));
        assert!(!wrapping.contains(KeyHash(2)));
        assert_eq!(KeyRange::FULL.span(), 1 << 64);
        assert!(KeyRange::FULL.contains(KeyHash(0)));
    }

    /// Dynamo §4.7: two nodes compare exactly the keys both replicate.
    #[test]
    fn shared_ranges_cover_exactly_the_keys_both_nodes_replicate() {
        let members: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let config = calm_ring::RingConfig {
            vnodes_per_node: 8,
            ..calm_ring::RingConfig::default()
        };
        let ring = Ring::new(config, &members).unwrap();
        let (a, b) = (NodeId(1), NodeId(4));
        let ranges = shared_ranges(&ring, 3, a, b);
        assert!(!ranges.is_empty());
        for i in 0..20_000u32 {
            let hash = KeyHash::of(&i.to_be_bytes());
            let owners = ring.owners(hash, 3);
            let shared = owners.contains(&a) && owners.contains(&b);
            let covering = ranges.iter().filter(|range| range.contains(hash)).count();
            assert_eq!(covering, usize::from(shared), "key {i}");
        }
        // With one member per replica every arc is shared: the whole circle.
        let three: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let ring = Ring::new(config, &three).unwrap();
        let whole = shared_ranges(&ring, 3, NodeId(1), NodeId(2));
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].span(), 1 << 64);
        assert_eq!(shared_ranges(&ring, 3, NodeId(1), NodeId(9)), []);
    }

    /// An arc shorter than the leaf count leaves most leaves empty, but
    /// every key still lands in the leaf that lists it.
    #[test]
    fn a_key_in_an_arc_shorter_than_the_leaf_count_is_listed_by_its_leaf() {
        let hash = KeyHash::of(b"calm").0;
        for (before, after) in [(1, 0), (3, 2), (5, 250)] {
            let range = KeyRange::arc(hash.wrapping_sub(before), hash.wrapping_add(after));
            let mut tree = MerkleTree::new(range, TreeShape::new(2).unwrap());
            tree.upsert(b"calm", ValueDigest(1)).unwrap();
            let leaf = tree.leaf_of(b"calm").unwrap();
            assert!(leaf < tree.shape().leaves());
            let listed: Vec<_> = tree.leaf_entries(leaf).collect();
            assert_eq!(listed, [(&b"calm"[..], ValueDigest(1))]);
        }
    }

    #[test]
    fn a_key_outside_the_range_is_refused_and_changes_nothing() {
        let key = b"calm";
        let hash = KeyHash::of(key).0;
        let range = KeyRange::arc(hash, hash.wrapping_add(1000));
        let mut tree = MerkleTree::new(range, TreeShape::new(2).unwrap());
        tree.upsert(b"other key", ValueDigest(1)).ok();
        let root = tree.root();
        let refused = Err(MerkleError::OutOfRange { hash, range });
        assert_eq!(tree.upsert(key, ValueDigest(1)), refused);
        assert_eq!(tree.remove(key), refused);
        assert_eq!(tree.root(), root);
    }

    #[test]
    fn a_changed_digest_changes_the_root_and_restoring_it_restores_the_root() {
        let entries: Vec<(Vec<u8>, u64)> =
            (0..50u32).map(|i| (i.to_be_bytes().to_vec(), 7)).collect();
        let mut tree = build(KeyRange::FULL, 2, &entries);
        let root = tree.root();
        assert_ne!(root, 0);
        assert_eq!(
            tree.upsert(&entries[3].0, ValueDigest(8)),
            Ok(Some(ValueDigest(7)))
        );
        assert_ne!(tree.root(), root);
        tree.upsert(&entries[3].0, ValueDigest(7)).unwrap();
        assert_eq!(tree.root(), root);
        assert_eq!(tree.remove(&entries[3].0), Ok(Some(ValueDigest(7))));
        assert_ne!(tree.root(), root);
        assert_eq!(tree.len(), 49);
        assert_eq!(tree.digest(&entries[3].0), None);
        assert_eq!(tree.digest(&entries[4].0), Some(ValueDigest(7)));
    }

    #[test]
    fn an_emptied_tree_has_the_empty_root() {
        let mut tree = build(KeyRange::FULL, 3, &[(b"a".to_vec(), 1), (b"b".to_vec(), 2)]);
        assert_ne!(tree.root(), 0);
        tree.remove(b"a").unwrap();
        tree.remove(b"b").unwrap();
        assert_eq!(tree.root(), 0);
        assert!(tree.is_empty());
    }

    fn entries_strategy() -> impl Strategy<Value = Vec<(Vec<u8>, u64)>> {
        prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 0..6),
            any::<u64>(),
            0..200,
        )
        .prop_map(|map| map.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(1_000)))]

        /// Order independence (the leaf hash is a sum, inner hashes depend
        /// only on children): the same entries give the same root whatever
        /// the order, and whatever updates came and went on the way.
        #[test]
        fn identical_content_has_equal_roots_regardless_of_insertion_order(
            (entries, shuffled) in entries_strategy()
                .prop_flat_map(|entries| (Just(entries.clone()), Just(entries).prop_shuffle())),
            noise in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..6), any::<u64>()), 0..20),
            depth in 1u8..=3,
        ) {
            let mut first = build(KeyRange::FULL, depth, &entries);
            let mut second = MerkleTree::new(KeyRange::FULL, TreeShape::new(depth).unwrap());
            // Noise first, read the root halfway so some paths are hashed
            // early, then the real entries, then undo the noise.
            for (key, digest) in &noise {
                second.upsert(key, ValueDigest(*digest)).unwrap();
            }
            second.root();
            for (key, digest) in &shuffled {
                second.upsert(key, ValueDigest(digest.wrapping_add(1))).unwrap();
                second.upsert(key, ValueDigest(*digest)).unwrap();
            }
            for (key, _) in &noise {
                if !entries.iter().any(|(k, _)| k == key) {
                    second.remove(key).unwrap();
                }
            }
            prop_assert_eq!(first.root(), second.root());
            prop_assert_eq!(first.len(), second.len());
        }

        /// Leaves partition the range: every key is listed by exactly the
        /// leaf `leaf_of` names, for any arc, wrapping or tiny.
        #[test]
        fn leaves_partition_any_arc(
            left in any::<u64>(),
            length in prop_oneof![1u64..100, any::<u64>()],
            keys in prop::collection::btree_set(prop::collection::vec(any::<u8>(), 0..6), 0..200),
            depth in 1u8..=2,
        ) {
            let range = KeyRange::arc(left, left.wrapping_add(length));
            let mut tree = MerkleTree::new(range, TreeShape::new(depth).unwrap());
            let mut inside = 0;
            for key in &keys {
                if tree.upsert(key, ValueDigest(1)).is_ok() {
                    inside += 1;
                }
            }
            let mut listed = 0;
            for leaf in 0..tree.shape().leaves() {
                for (key, _) in tree.leaf_entries(leaf) {
                    prop_assert_eq!(tree.leaf_of(key), Some(leaf));
                    listed += 1;
                }
            }
            prop_assert_eq!(listed, inside);
        }
    }
}
