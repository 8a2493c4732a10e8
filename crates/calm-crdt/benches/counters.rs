//! Benchmarks for the counters: merging two PN-Counter or bounded-counter
//! states across 3, 10 and 100 replicas, and the encoded size of one
//! increment's delta against the full state it updates.
//!
//! Run with `cargo bench -p calm-crdt --bench counters`. Byte sizes are
//! printed once before the timings, since criterion measures only time.

use std::hint::black_box;

use calm_crdt::{BoundedCounter, DeltaCrdt, PnCounter};
use calm_types::NodeId;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

/// Replica counts every benchmark runs at.
const REPLICA_COUNTS: [u64; 3] = [3, 10, 100];

/// A PN-Counter in which each of `replicas` nodes incremented and
/// decremented; `skew` makes two such states differ in every entry.
fn pn_state(replicas: u64, skew: u64) -> PnCounter {
    let mut state = PnCounter::new();
    for node in (0..replicas).map(NodeId) {
        // Entries start at zero and grow by a few thousand at most.
        let up = state
            .increment(node, 1_000 + skew * node.0)
            .expect("small entries never overflow");
        state.apply_delta(&up);
        let down = state
            .decrement(node, 10 + skew)
            .expect("small entries never overflow");
        state.apply_delta(&down);
    }
    state
}

/// A bounded counter in which each node incremented, passed some rights to
/// the next node in a ring (if `ring`), and spent some; `skew` varies the
/// amounts.
fn bounded_state(replicas: u64, skew: u64, ring: bool) -> BoundedCounter {
    let mut state = BoundedCounter::<0>::new();
    for node in (0..replicas).map(NodeId) {
        let up = state
            .increment(node, 1_000 + skew)
            .expect("small entries never overflow");
        state.apply_delta(&up);
    }
    for node in (0..replicas).map(NodeId) {
        let next = NodeId((node.0 + 1) % replicas);
        // Every node holds at least 1,000 rights from its own increment.
        if ring {
            let transfer = state.transfer(node, next, 100 + skew);
            state.apply_delta(&transfer.expect("within rights"));
        }
        state.apply_delta(&state.decrement(node, 50 + skew).expect("within rights"));
    }
    state
}

fn merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    for replicas in REPLICA_COUNTS {
        let (a, b) = (pn_state(replicas, 0), pn_state(replicas, 1));
        group.bench_with_input(BenchmarkId::new("pn_counter", replicas), &b, |bench, b| {
            bench.iter_batched(
                || a.clone(),
                |mut a| {
                    a.join(black_box(b));
                    // Returned so that its drop falls outside the timing.
                    a
                },
                BatchSize::SmallInput,
            );
        });
        let (a, b) = (
            bounded_state(replicas, 0, true),
            bounded_state(replicas, 1, true),
        );
        group.bench_with_input(
            BenchmarkId::new("bounded_counter", replicas),
            &b,
            |bench, b| {
                bench.iter_batched(
                    || a.clone(),
                    |mut a| {
                        a.join(black_box(b));
                        // Returned so that its drop falls outside the timing.
                        a
                    },
                    BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for replicas in REPLICA_COUNTS {
        let state = pn_state(replicas, 0);
        let delta = state
            .increment(NodeId(0), 1)
            .expect("small entries never overflow");
        group.bench_with_input(
            BenchmarkId::new("pn_full_state", replicas),
            &state,
            |b, s| b.iter(|| s.encode()),
        );
        group.bench_with_input(BenchmarkId::new("pn_delta", replicas), &delta, |b, d| {
            b.iter(|| d.encode())
        });
    }
    group.finish();
}

/// Prints, per replica count, the encoded bytes of one increment's delta
/// (and, for the bounded counter, one decrement's) next to the full state.
/// A decrement's delta carries its rights closure: in the ring state every
/// node is in it, so it is the full state; with no transfers it is one row.
fn print_sizes(_: &mut Criterion) {
    println!("encoded sizes in bytes (format version byte included):");
    println!(
        "{:>8} {:>14} {:>10} {:>14} {:>10} {:>10} {:>16}",
        "replicas", "pn full", "pn inc", "bounded full", "bnd inc", "bnd dec", "bnd dec (no xfer)"
    );
    for replicas in REPLICA_COUNTS {
        let pn = pn_state(replicas, 0);
        let pn_inc = pn
            .increment(NodeId(0), 1)
            .expect("small entries never overflow");
        let bounded = bounded_state(replicas, 0, true);
        let bounded_inc = bounded
            .increment(NodeId(0), 1)
            .expect("small entries never overflow");
        let bounded_dec = bounded.decrement(NodeId(0), 1).expect("within rights");
        let unlinked = bounded_state(replicas, 0, false);
        let unlinked_dec = unlinked.decrement(NodeId(0), 1).expect("within rights");
        println!(
            "{replicas:>8} {:>14} {:>10} {:>14} {:>10} {:>10} {:>16}",
            pn.encode().len(),
            pn_inc.encode().len(),
            bounded.encode().len(),
            bounded_inc.encode().len(),
            bounded_dec.encode().len(),
            unlinked_dec.encode().len(),
        );
    }
}

criterion_group!(benches, print_sizes, merge, encode);
criterion_main!(benches);
