//! Preference-list lookup cost (N = 3): the ring's binary search against
//! rendezvous hashing's one hash per member, at 10, 100 and 1,000 members
//! with 256 vnodes per member.

use std::hint::black_box;

use calm_ring::{KeyHash, Placement, Rendezvous, RendezvousConfig, Ring, RingConfig};
use calm_types::NodeId;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Distinct keys cycled through, so lookups do not hit one cached path.
const KEYS: usize = 4096;

fn preference_list(c: &mut Criterion) {
    let keys: Vec<KeyHash> = (0..KEYS)
        .map(|i| KeyHash::of(format!("bench-key-{i}").as_bytes()))
        .collect();
    let mut group = c.benchmark_group("preference_list_n3");
    for count in [10u64, 100, 1000] {
        let members: Vec<NodeId> = (1..=count).map(NodeId).collect();
        let ring = Ring::new(RingConfig::default(), &members).expect("bench ring");
        let hrw = Rendezvous::new(RendezvousConfig::default(), &members).expect("bench hrw");
        let placements: [(&str, &dyn Placement); 2] = [("ring", &ring), ("rendezvous", &hrw)];
        for (name, placement) in placements {
            group.bench_with_input(BenchmarkId::new(name, count), &placement, |b, placement| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % KEYS;
                    black_box(placement.preference_list(keys[i], 3, &|_| false))
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, preference_list);
criterion_main!(benches);
