//! The placement hash: the one function that decides where every key lives.
//!
//! # Contract (on disk and on the wire)
//!
//! Placement must agree between every node, every version and every platform,
//! or two nodes would disagree about who owns a key. This module is therefore
//! a compatibility contract, pinned by the test vectors below:
//!
//! * a key's position is **xxh3-64 with seed 0** of the key's bytes
//!   ([`KeyHash::of`]);
//! * vnode v of a node is seeded by xxh3-64, seed 0, of the ASCII string
//!   `calm-vnode:<node id>:<v>`, both in decimal ([`vnode_seed`]): it is the
//!   token itself for a ring's first member, and the first position a later
//!   joiner probes for an arc to cut (the allocation rules on
//!   [`Ring`](crate::Ring) belong to the contract too);
//! * a rendezvous weight is xxh3-64, seed 0, of the 16 bytes
//!   `key hash (u64 little-endian) ‖ node id (u64 little-endian)`
//!   ([`rendezvous_weight`]).
//!
//! xxh3-64 was chosen because it is fast on short keys, has a published
//! specification with independent implementations (the test vectors were
//! checked against the C reference through Python's `xxhash` package), and
//! passes SMHasher, so positions are uniform. It is not a keyed hash: an
//! adversary who picks keys can pick their owner. Changing anything here
//! moves data and needs a placement format bump.

use xxhash_rust::xxh3::xxh3_64;

/// A key's position on the 64-bit placement circle.
///
/// A newtype so that a raw `u64` (a token, a counter) cannot be passed where a
/// hashed key is meant.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KeyHash(pub u64);

impl KeyHash {
    /// Hashes a key's bytes: xxh3-64, seed 0 (see the module contract).
    pub fn of(key: &[u8]) -> KeyHash {
        KeyHash(xxh3_64(key))
    }
}

/// The seed of vnode `vnode` of `node`: xxh3-64 of
/// `calm-vnode:<node id>:<vnode>`.
///
/// A ring's first member puts its tokens at its seeds (plain consistent
/// hashing); a later joiner starts probing there for an arc to cut, so its
/// tokens land as spread out as hashed tokens would.
pub fn vnode_seed(node: calm_types::NodeId, vnode: u32) -> u64 {
    xxh3_64(format!("calm-vnode:{}:{}", node.0, vnode).as_bytes())
}

/// A node's rendezvous (highest-random-weight) weight for a key: xxh3-64 of
/// the key hash and the node id, both little-endian.
///
/// Hashing the already-hashed key, rather than the key bytes, keeps a lookup
/// at one pass over the key plus one 16-byte hash per member.
pub fn rendezvous_weight(key: KeyHash, node: calm_types::NodeId) -> u64 {
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&key.0.to_le_bytes());
    input[8..].copy_from_slice(&node.0.to_le_bytes());
    xxh3_64(&input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_types::NodeId;

    /// The 1 KiB test buffer: byte i is `i % 251`, so it has no period that
    /// lines up with xxh3's 64-byte stripes.
    fn kibibyte() -> Vec<u8> {
        (0..1024u32).map(|i| (i % 251) as u8).collect()
    }

    fn check(input: &[u8], expected: u64) {
        assert_eq!(
            KeyHash::of(input),
            KeyHash(expected),
            "xxh3-64 of {input:?} changed: placement would move"
        );
    }

    // Test vectors computed with xxhash-rust and checked independently with
    // the xxHash C library: python3 -c "import xxhash; print(xxhash.xxh3_64_intdigest(b'calm'))".
    #[test]
    fn key_hash_matches_pinned_xxh3_vectors() {
        check(b"", 0x2d06800538d394c2);
        check(b"a", 0xe6c632b61e964e1f);
        check(b"calm", 0xa7c5469cbaae1e79);
        check(&kibibyte(), 0xe5d78bafa45b2aa5);
    }

    #[test]
    fn vnode_seed_of_node_1_vnode_0_matches_pinned_vector() {
        // xxh3_64(b"calm-vnode:1:0")
        assert_eq!(vnode_seed(NodeId(1), 0), 0xf936a4746b55633a);
    }

    #[test]
    fn rendezvous_weight_matches_pinned_vector() {
        // xxh3_64(struct.pack('<QQ', xxh3_64(b'calm'), 1))
        assert_eq!(
            rendezvous_weight(KeyHash::of(b"calm"), NodeId(1)),
            0x33a8ffb22392d18e
        );
    }
}
