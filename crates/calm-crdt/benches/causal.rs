//! Benchmarks for the causal CRDTs: merging two diverged OR-Set replicas of
//! 100 and 10,000 elements, applying a one-element delta to such a state,
//! and the encoded size of an add delta and a remove delta against the full
//! state.
//!
//! Run with `cargo bench -p calm-crdt --bench causal`. Byte sizes are printed
//! once before the timings, since criterion measures only time.

use std::hint::black_box;

use calm_crdt::{DeltaCrdt, OrSet};
use calm_types::NodeId;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

/// Element counts every benchmark runs at.
const SIZES: [u64; 2] = [100, 10_000];

/// Two replicas that share `size` elements added by node 1 and then
/// diverged: each re-added some elements and removed others concurrently,
/// so the join has dots to keep, to drop and to add on both sides.
fn diverged(size: u64) -> (OrSet<u64>, OrSet<u64>) {
    let (a, b) = (NodeId(1), NodeId(2));
    let mut base = OrSet::new();
    for element in 0..size {
        base.apply_delta(&base.add(a, element));
    }
    let (mut left, mut right) = (base.clone(), base);
    for element in 0..size {
        if element % 4 == 0 {
            left.apply_delta(&left.add(a, element));
        }
        if element % 7 == 0 {
            left.apply_delta(&left.remove(&element));
        }
        if element % 3 == 0 {
            right.apply_delta(&right.add(b, element + size));
        }
        if element % 5 == 0 {
            right.apply_delta(&right.remove(&element));
        }
    }
    (left, right)
}

fn print_sizes() {
    for size in SIZES {
        let (state, _) = diverged(size);
        let add = state.add(NodeId(3), size * 10);
        let remove = state.remove(&1);
        println!(
            "or-set of {} elements: full state {} bytes, add delta {} bytes, remove delta {} bytes",
            state.len(),
            state.encode().len(),
            add.encode().len(),
            remove.encode().len(),
        );
    }
}

fn orset_merge(c: &mut Criterion) {
    print_sizes();
    let mut group = c.benchmark_group("orset_merge");
    for size in SIZES {
        let (left, right) = diverged(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, _| {
            bench.iter_batched(
                || left.clone(),
                |mut state| {
                    state.join(black_box(&right));
                    state
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn orset_apply_add_delta(c: &mut Criterion) {
    let mut group = c.benchmark_group("orset_apply_add_delta");
    for size in SIZES {
        let (state, _) = diverged(size);
        let delta = state.add(NodeId(3), size * 10);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, _| {
            bench.iter_batched(
                || state.clone(),
                |mut state| {
                    state.apply_delta(black_box(&delta));
                    state
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn orset_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("orset_encode_full_state");
    for size in SIZES {
        let (state, _) = diverged(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, _| {
            bench.iter(|| black_box(&state).encode());
        });
    }
    group.finish();
}

criterion_group!(benches, orset_merge, orset_apply_add_delta, orset_encode);
criterion_main!(benches);
