//! criterion benches of rust/derange.rs on seeded synthetic sizes (same data every run).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mipo_engine::derange::{constrained_derangement, derangement, DEFAULT_SWEEPS};
use mipo_engine::rng::Rng;

fn uniform(c: &mut Criterion) {
    let mut group = c.benchmark_group("derangement");
    group.sample_size(10);
    for n in [1_000_000usize, 10_000_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("uniform", n), &n, |b, &n| {
            b.iter(|| derangement(n, 42).unwrap())
        });
    }
    group.finish();
}

fn constrained(c: &mut Criterion) {
    let n = 1_000_000usize;
    // 10k users of ~100 rows; near-duplicate clusters: mostly singletons, 5% in pairs.
    let mut rng = Rng::new(7);
    let groups: Vec<u32> = (0..n).map(|_| rng.below(10_000) as u32).collect();
    let clusters: Vec<u32> = (0..n as u32)
        .map(|i| if rng.below(20) == 0 { i & !1 } else { i })
        .collect();
    let mut group = c.benchmark_group("constrained_derangement");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("groups_10k", n), |b| {
        b.iter(|| constrained_derangement(n, Some(&groups), None, 42, DEFAULT_SWEEPS).unwrap())
    });
    group.bench_function(BenchmarkId::new("groups_10k_clusters", n), |b| {
        b.iter(|| {
            constrained_derangement(n, Some(&groups), Some(&clusters), 42, DEFAULT_SWEEPS).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, uniform, constrained);
criterion_main!(benches);
