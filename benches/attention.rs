//! Criterion benchmarks of the attention kernels over the `f16` KV cache, on data in cache.
//! The one-row kernels (decode's): the scores of a group of query heads against one block of
//! transposed keys (`f16ops::scores_tree`, llama.cpp's dot-product order) and the `f16` value
//! accumulation over a block of value rows (`f16ops::mad_f16_span`). The tiled kernels
//! (prefill's): `f16ops::scores` and the `f32` value accumulation `f16ops::accumulate`.
//! Throughput in (position, head) pairs per second; SmolLM2's shapes (head size 64, 3 query
//! heads per KV head, 32-position blocks as in the cache) and Qwen2.5-0.5B's group of 7.
//!
//! `cargo bench --bench attention`.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use std::hint::black_box;
use ward::engine::kernels::f16ops::{ValueRun, accumulate, mad_f16_span, scores, scores_tree};

const HD: usize = 64;
const G: usize = 3;
const BLOCK: usize = 32;

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn halves(x: &[f32]) -> Vec<f16> {
    x.iter().map(|&v| f16::from_f32(v)).collect()
}

/// The signature `f16ops::scores` and `f16ops::scores_tree` share.
type ScoresFn = fn(&[f16], usize, usize, &[f32], usize, f32, &mut [f32]);

/// Benchmarks one scores kernel over a block of `BLOCK` positions for the heads in `q`.
fn bench_scores(g: &mut BenchmarkGroup<WallTime>, name: &str, f: ScoresFn, kt: &[f16], q: &[f32]) {
    let mut out = vec![0f32; q.len() / HD * BLOCK];
    g.bench_function(name, |b| {
        b.iter(|| {
            f(
                black_box(kt),
                BLOCK,
                BLOCK,
                black_box(q),
                HD,
                0.125,
                &mut out,
            );
            black_box(&out);
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.throughput(Throughput::Elements((G * BLOCK) as u64));
    let kt = halves(&noise(HD * BLOCK, 1));
    let q: Vec<f32> = halves(&noise(G * HD, 2))
        .iter()
        .map(|h| h.to_f32())
        .collect();
    bench_scores(&mut g, "scores_tree/64x3/32", scores_tree, &kt, &q);
    let rows = halves(&noise(BLOCK * HD, 3));
    let w: Vec<f32> = noise(G * BLOCK, 4).iter().map(|v| v + 0.5).collect();
    let raise = vec![false; G * BLOCK];
    let mut y = vec![f16::ZERO; G * HD];
    g.bench_function("mad_f16_span/64x3/32", |b| {
        b.iter(|| {
            let run = ValueRun {
                rows: black_box(&rows),
                stride: HD,
                w: &w,
                raise: &raise,
                wstride: BLOCK,
                n: BLOCK,
            };
            mad_f16_span(&mut y, HD, &run);
            black_box(&y);
        })
    });
    for heads in [G, 7] {
        g.throughput(Throughput::Elements((heads * BLOCK) as u64));
        let q = noise(heads * HD, 5);
        bench_scores(&mut g, &format!("scores/64x{heads}/32"), scores, &kt, &q);
        let w = noise(heads * BLOCK, 6);
        let mut acc = vec![0f32; heads * HD];
        g.bench_function(format!("accumulate/64x{heads}/32"), |b| {
            b.iter(|| {
                accumulate(black_box(&rows), HD, BLOCK, black_box(&w), HD, &mut acc);
                black_box(&acc);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
