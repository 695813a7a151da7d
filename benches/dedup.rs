//! criterion benches for dedup on seeded synthetic prompts (benches/common): normalization,
//! exact-only dedup, near-dup dedup (one shot) and the streaming Deduper in 10k-row chunks.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mipo_engine::dedup::{dedup, normalize_all, DedupParams, Deduper};

#[path = "common/mod.rs"]
mod common;

fn bench_dedup(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup");
    group.sample_size(10);
    for &n in &[10_000usize, 100_000] {
        let texts = common::prompts(n, 0.2, 42);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("normalize", n), &texts, |b, t| {
            b.iter(|| normalize_all(t))
        });
        let exact = DedupParams {
            near: false,
            ..DedupParams::default()
        };
        group.bench_with_input(BenchmarkId::new("exact", n), &texts, |b, t| {
            b.iter(|| dedup(t, &exact).unwrap())
        });
        let near = DedupParams::default();
        group.bench_with_input(BenchmarkId::new("near_112x14", n), &texts, |b, t| {
            b.iter(|| dedup(t, &near).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("streaming_10k_chunks", n),
            &texts,
            |b, t| {
                b.iter(|| {
                    let mut d = Deduper::new(near.clone()).unwrap();
                    for chunk in t.chunks(10_000) {
                        d.add(chunk).unwrap();
                    }
                    d.rows_seen()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_dedup);
criterion_main!(benches);
