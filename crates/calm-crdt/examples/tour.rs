//! A tour of calm's CRDTs: three replicas take writes concurrently and ship
//! deltas over a network that loses, duplicates and reorders them; after a
//! retransmission round every replica holds the same state.
//!
//! Run with `cargo run --release -p calm-crdt --example tour [seed]`.

use calm_crdt::{BoundedCounter, BoundedCounterError, DeltaCrdt, OrSet, PnCounter};
use calm_types::NodeId;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// One replica's copy of each object in the tour.
#[derive(Default, Clone, PartialEq)]
struct Objects {
    visits: PnCounter,
    tags: OrSet<String>,
    stock: BoundedCounter,
}

/// A delta addressed to one replica.
enum Delta {
    Visits(PnCounter),
    Tags(OrSet<String>),
    Stock(BoundedCounter),
}

impl Objects {
    fn apply(&mut self, delta: &Delta) {
        match delta {
            Delta::Visits(d) => self.visits.apply_delta(d),
            Delta::Tags(d) => self.tags.apply_delta(d),
            Delta::Stock(d) => self.stock.apply_delta(d),
        }
    }

    fn show(&self) -> String {
        format!(
            "visits={:<4} tags={:?} stock={}",
            self.visits.value(),
            self.tags.value(),
            self.stock.value()
        )
    }
}

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = [NodeId(1), NodeId(2), NodeId(3)];
    let mut replicas = vec![Objects::default(); nodes.len()];
    let mut in_flight: Vec<(usize, Delta)> = Vec::new();
    let mut lost: Vec<(usize, Delta)> = Vec::new();
    let (mut acked_visits, mut refused, mut delivered, mut dropped) = (0i128, 0, 0, 0);

    println!("seed {seed}: 3 replicas, 30% loss, 20% duplication, random order\n");
    // The stock starts with 20 units of rights at node 1, shared out to 2 and 3.
    let restock = replicas[0]
        .stock
        .increment(nodes[0], 20)
        .expect("fresh counter");
    replicas[0].stock.apply_delta(&restock);
    for &to in &nodes[1..] {
        let transfer = replicas[0]
            .stock
            .transfer(nodes[0], to, 5)
            .expect("node 1 holds 20");
        replicas[0].stock.apply_delta(&transfer);
    }
    let setup = replicas[0].stock.clone();
    for replica in &mut replicas[1..] {
        replica.stock.apply_delta(&setup);
    }

    for step in 0..200 {
        if step > 0 && step % 50 == 0 {
            println!("after {step:>3} ops, before the network settles:");
            for (i, r) in replicas.iter().enumerate() {
                println!("  {}  {}", nodes[i], r.show());
            }
        }
        // The invariant holds in every replica's view at every step.
        assert!(
            replicas.iter().all(|r| r.stock.value() >= 0),
            "stock below zero"
        );
        let at = rng.random_range(0..nodes.len());
        let node = nodes[at];
        let delta = match rng.random_range(0..4) {
            0 | 1 => {
                let delta = replicas[at]
                    .visits
                    .increment(node, 1)
                    .expect("small counts");
                acked_visits += 1;
                Delta::Visits(delta)
            }
            2 => {
                let tag = format!("t{}", rng.random_range(0..4));
                let delta = if rng.random_bool(0.6) {
                    replicas[at].tags.add(node, tag)
                } else {
                    replicas[at].tags.remove(&tag)
                };
                Delta::Tags(delta)
            }
            _ => match replicas[at].stock.decrement(node, 1) {
                Ok(delta) => Delta::Stock(delta),
                Err(BoundedCounterError::InsufficientRights { .. }) => {
                    refused += 1;
                    continue;
                }
                Err(other) => panic!("unexpected bounded counter error: {other}"),
            },
        };
        replicas[at].apply(&delta);
        for to in (0..nodes.len()).filter(|&to| to != at) {
            in_flight.push((to, clone_delta(&delta)));
        }
        // Deliver a few messages, in random order, some lost, some twice.
        for _ in 0..rng.random_range(0..4) {
            if in_flight.is_empty() {
                break;
            }
            let (to, delta) = in_flight.swap_remove(rng.random_range(0..in_flight.len()));
            if rng.random_bool(0.3) {
                dropped += 1;
                lost.push((to, delta));
                continue;
            }
            if rng.random_bool(0.2) {
                in_flight.push((to, clone_delta(&delta)));
            }
            replicas[to].apply(&delta);
            delivered += 1;
        }
    }

    // Drain the network, then retransmit what was lost (anti-entropy's job).
    for (to, delta) in in_flight.drain(..).chain(lost.drain(..)) {
        replicas[to].apply(&delta);
        delivered += 1;
    }
    println!("\nsettled ({delivered} deltas delivered, {dropped} lost and retransmitted):");
    for (i, r) in replicas.iter().enumerate() {
        println!("  {}  {}", nodes[i], r.show());
    }
    let converged = replicas.iter().all(|r| r == &replicas[0]);
    println!("\nconverged: {converged}");
    println!(
        "visits equal acknowledged increments ({acked_visits}): {}",
        replicas[0].visits.value() == acked_visits
    );
    println!("stock never below zero; {refused} decrements refused locally for lack of rights");
    assert!(converged, "replicas must converge");
}

fn clone_delta(delta: &Delta) -> Delta {
    match delta {
        Delta::Visits(d) => Delta::Visits(d.clone()),
        Delta::Tags(d) => Delta::Tags(d.clone()),
        Delta::Stock(d) => Delta::Stock(d.clone()),
    }
}
