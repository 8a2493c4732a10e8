//! Token allocation: where a joining node's virtual nodes go on the ring.
//!
//! # Why not plain hashed tokens
//!
//! With independent random tokens each node owns a sum of V exponential arcs,
//! whose spread is about 1/√V: at V = 256 and 1,000 nodes the most loaded node
//! owns 1.2–1.3× the mean. calm wants ≤ 1.10, so a joiner's tokens are hashed
//! to pick *where* it cuts, but the *amount* it takes is computed.
//!
//! # The algorithm
//!
//! The first member's tokens are its hashed vnode positions
//! ([`vnode_seed`]). A node joining a ring of N members must end up owning
//! exactly 1/(N+1) of the circle, all of it taken from members that own more
//! than that. It places its V tokens one at a time. For vnode v it probes
//! hashed positions (the first is `vnode_seed(node, v)`) until two have
//! landed in arcs longer than the cut whose owners are above the new target,
//! and cuts the arc of the more loaded owner (the power of two choices). The
//! cut is `remaining / vnodes left`, jittered by ±75% (see [`jittered`]);
//! the last vnode takes exactly what remains. The new token goes that far
//! clockwise of the arc's start, so the joiner takes the arc's
//! counter-clockwise part and the owner keeps the rest.
//!
//! Every cut lowers an overloaded member by about 1/((N+1)·V) of the circle,
//! so loads stay within a few cuts of even: max/mean ≈ 1.01 at 10, 100 and
//! 1,000 members (the tests hold it to 1.10). Because probes land in arcs
//! with probability proportional to their length, as random tokens would,
//! the arcs a joiner cuts, and so the tokens it becomes the successor of, are
//! spread over the whole ring. That is what makes a leaving node's keys fall
//! to many members: a first version that always cut the longest arc of the
//! most loaded member, by equal amounts, left remainders too short for any
//! later joiner to cut, and a leaving node then gave up to half its keys to
//! a single neighbour. Measured over every leaver, the largest share one
//! member inherits is now no worse than with plain hashed tokens.
//!
//! Two properties follow from the construction and are what the tests check:
//!
//! * **Existing tokens never move.** A join only inserts tokens, so every key
//!   that changes owner moves onto the joining node, and the amount that moves
//!   is the joiner's share, 1/(N+1).
//! * **Determinism.** Probes are hashes of (node id, vnode index, probe
//!   number) and everything else is integer arithmetic on the current tokens,
//!   so a ring is a pure function of its membership *history* (the join
//!   order, and any removals), identical on every platform. It cannot be a
//!   function of the member *set* alone: if adding x to any set must leave
//!   the other members' tokens unchanged, each member's tokens could depend on
//!   nothing but itself, which is the random scheme above.
//!
//! Cost: O(V · probes · log T) per join for T tokens (a few probes on
//! average, at most [`PROBES_MAX`]), plus O(T) to rebuild the state of an
//! existing ring: building 1,000 × 256 from scratch is 256,000 placements,
//! about two seconds in the tests' opt-level 1 profile, and one join into
//! that ring about 20 ms.

use std::collections::BTreeMap;

use calm_types::NodeId;

use crate::hash::vnode_seed;

/// The circumference of the placement circle, 2^64, as a `u128` so that arc
/// lengths up to the whole circle are exact.
pub(crate) const CIRCLE: u128 = 1 << 64;

/// How many hashed positions a vnode probes for an overloaded owner before it
/// settles for the most loaded owner it saw. Overloaded members hold at least
/// the joiner's share of the circle, so a probe rarely misses more than a few
/// times in a row; the bound keeps a join O(V) however unlucky.
const PROBES_MAX: u32 = 64;

/// How many overloaded owners a vnode compares before cutting from the most
/// loaded of them: the "power of two choices" (Mitzenmacher 2001), which keeps
/// the most loaded member close to the mean far better than taking the first
/// overloaded owner found.
const DONOR_CHOICES: u32 = 2;

/// The allocation state of a ring: every token with its owner, and each
/// member's load (the length of circle it owns as primary).
pub(crate) struct Allocator {
    vnodes_per_node: u32,
    /// Members in join order.
    members: Vec<NodeId>,
    /// `loads[i]` is what `members[i]` owns, in units of 2^-64 of the circle.
    loads: Vec<u128>,
    /// Every token and the index of its owner. An ordered map, because a
    /// probe needs the tokens on either side of a position and a join inserts
    /// tokens as it goes.
    tokens: BTreeMap<u64, u32>,
}

/// The arc a probe landed in: the keys in `(start, end]`.
#[derive(Clone, Copy, Debug)]
struct Arc {
    start: u64,
    length: u128,
    owner: u32,
    /// The probe position that found this arc; its bits also jitter the cut.
    probe: u64,
}

impl Allocator {
    /// An allocator for an empty ring.
    pub(crate) fn empty(vnodes_per_node: u32) -> Self {
        Allocator {
            vnodes_per_node,
            members: Vec::new(),
            loads: Vec::new(),
            tokens: BTreeMap::new(),
        }
    }

    /// The allocation state of an existing ring. `members` is in join order;
    /// `tokens` is sorted and `token_owner[i]` indexes `members`.
    pub(crate) fn from_ring(
        vnodes_per_node: u32,
        members: &[NodeId],
        tokens: &[u64],
        token_owner: &[u32],
    ) -> Self {
        let mut loads = vec![0u128; members.len()];
        for (i, (&end, &owner)) in tokens.iter().zip(token_owner).enumerate() {
            let previous = tokens[(i + tokens.len() - 1) % tokens.len()];
            loads[owner as usize] += arc_length(previous, end);
        }
        Allocator {
            vnodes_per_node,
            members: members.to_vec(),
            loads,
            tokens: tokens
                .iter()
                .copied()
                .zip(token_owner.iter().copied())
                .collect(),
        }
    }

    /// Places `node`'s tokens. The caller has checked that it is not a member.
    pub(crate) fn join(&mut self, node: NodeId) {
        // The index fits: member counts are bounded by NODES_MAX < 2^32.
        let joiner = self.members.len() as u32;
        self.members.push(node);
        self.loads.push(0);
        if joiner == 0 {
            self.place_first(node);
        } else {
            self.carve(node, joiner);
        }
    }

    /// The first member's tokens are its hashed vnode positions: with nothing
    /// to balance against, they are plain consistent hashing.
    fn place_first(&mut self, node: NodeId) {
        for vnode in 0..self.vnodes_per_node {
            let seed = vnode_seed(node, vnode);
            // A 64-bit collision between a member's own positions is all but
            // impossible, but if one happens the next probe is used, so the
            // member still gets exactly V tokens.
            let position = (0..)
                .map(|probe| probe_position(seed, probe))
                .find(|position| !self.tokens.contains_key(position))
                .expect("fewer than 2^64 tokens leave a free position");
            self.tokens.insert(position, 0);
        }
        self.loads[0] = CIRCLE;
    }

    /// A later member takes 1/(N+1) of the circle, one cut per vnode, each
    /// from an arc of a member that owns more than that.
    fn carve(&mut self, node: NodeId, joiner: u32) {
        let vnodes = self.vnodes_per_node;
        let target = CIRCLE / (u128::from(joiner) + 1);
        let mut remaining = target;
        for vnode in 0..vnodes {
            let left = u128::from(vnodes - vnode);
            let cut = remaining / left;
            let arc = self.choose_arc(node, vnode, joiner, cut, target);
            // The last vnode takes exactly what is left, so the joiner ends on
            // its target; earlier ones leave at least a unit for each later one.
            let wanted = if left == 1 {
                remaining
            } else {
                jittered(cut, arc.probe).min(remaining - (left - 1))
            };
            // Arcs are ~2^64/(N·V) ≥ 2^40 long under the crate's bounds, and
            // the chosen one is longer than `cut` unless every probe missed.
            // If it is not, halve it so that both sides keep a non-empty arc.
            let taken = match arc.length {
                length if length > wanted => wanted,
                length if length > cut => cut,
                length => length / 2,
            };
            assert!(
                taken > 0 && taken < arc.length,
                "arc too short to split: {arc:?}"
            );
            // `taken` < arc length ≤ 2^64, so it fits in a u64.
            let token = arc.start.wrapping_add(taken as u64);
            self.tokens.insert(token, joiner);
            self.loads[arc.owner as usize] -= taken;
            self.loads[joiner as usize] += taken;
            remaining -= taken;
        }
    }

    /// The arc vnode `vnode` of the joiner cuts. Probes run until
    /// [`DONOR_CHOICES`] of them have landed in arcs longer than `cut` whose
    /// owner is above `target`; of those the one with the most loaded owner
    /// wins (the earliest on a tie). If the probes run out first, the long
    /// enough arc with the most loaded owner wins; failing that, the longest
    /// arc probed. The joiner's own arcs are never candidates.
    fn choose_arc(&self, node: NodeId, vnode: u32, joiner: u32, cut: u128, target: u128) -> Arc {
        let mut most_loaded: Option<Arc> = None;
        let mut longest: Option<Arc> = None;
        let mut overloaded = 0;
        let seed = vnode_seed(node, vnode);
        for probe in 0..PROBES_MAX {
            let arc = self.arc_at(probe_position(seed, probe));
            if arc.owner == joiner {
                continue;
            }
            if longest.is_none_or(|l| arc.length > l.length) {
                longest = Some(arc);
            }
            if arc.length <= cut {
                continue;
            }
            let load = self.loads[arc.owner as usize];
            if most_loaded.is_none_or(|m| load > self.loads[m.owner as usize]) {
                most_loaded = Some(arc);
            }
            if load > target {
                overloaded += 1;
                if overloaded == DONOR_CHOICES {
                    break;
                }
            }
        }
        // Some probe lands outside the joiner's arcs: it owns less than the
        // target, under half the circle, so 64 misses in a row would need
        // the hash to be far from uniform.
        most_loaded
            .or(longest)
            .expect("a probe lands in another member's arc")
    }

    /// The arc containing `position`: the first token at or clockwise after
    /// it ends the arc, and the token before that starts it.
    fn arc_at(&self, position: u64) -> Arc {
        // The ring is non-empty whenever a joiner probes: the first member
        // placed V ≥ 1 tokens.
        let first = self.tokens.first_key_value().expect("non-empty ring");
        let last = self.tokens.last_key_value().expect("non-empty ring");
        let (&end, &owner) = self.tokens.range(position..).next().unwrap_or(first);
        let (&start, _) = self.tokens.range(..end).next_back().unwrap_or(last);
        Arc {
            start,
            length: arc_length(start, end),
            owner,
            probe: position,
        }
    }

    /// The finished ring: members in join order, sorted tokens, and for each
    /// token the index of its owner in the member list.
    pub(crate) fn into_ring(self) -> (Vec<NodeId>, Vec<u64>, Vec<u32>) {
        let (tokens, owners) = self.tokens.into_iter().unzip();
        (self.members, tokens, owners)
    }
}

/// A cut of about `cut`, scaled by a factor in [0.25, 1.75) taken from the
/// probe position's low 32 bits (integer arithmetic only). The low bits,
/// because the high bits say where on the circle the probe is, and the cut
/// size should not depend on that.
///
/// Why jitter: with equal cuts a joiner's arcs are all the same length and
/// the next joiner's cut, barely shorter, leaves remainders too short for any
/// later joiner to cut. The tokens before those remainders then keep the same
/// successor forever, and a leaving node's keys go mostly to the node that
/// joined just before it. Varied cuts leave varied remainders, which later
/// joiners do cut.
fn jittered(cut: u128, probe: u64) -> u128 {
    cut / 4 + ((3 * cut / 2 * u128::from(probe as u32)) >> 32)
}

/// The position probe number `probe` of a vnode looks at, given the vnode's
/// [`vnode_seed`]: the seed itself, then the seed stirred by splitmix64 (Steele, Lea
/// and Flood 2014), a fixed bijection on u64. Part of the placement contract.
fn probe_position(seed: u64, probe: u32) -> u64 {
    if probe == 0 {
        return seed;
    }
    let mut z = seed.wrapping_add(u64::from(probe).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The length of the arc `(previous, end]`; equal tokens mean the whole
/// circle, which happens only on a ring with a single token.
pub(crate) fn arc_length(previous: u64, end: u64) -> u128 {
    match end.wrapping_sub(previous) {
        0 => CIRCLE,
        d => u128::from(d),
    }
}
