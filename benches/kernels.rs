//! Criterion benchmarks of the quantized matmul kernels: every weight format at 1 token
//! and 8 tokens (decode, one stream and a batch of 8; throughput in weight bytes per second,
//! weights cycled through more memory than the last-level cache holds) and at 64 / 512 tokens
//! (prefill; throughput in FLOP per second).
//!
//! Formats with a 16-row packed layout are also measured packed (`<format>/packed`).
//!
//! `cargo bench --bench kernels -- 'Q4K'` runs one format; `WARD_THREADS` sets the thread
//! count, `WARD_BENCH_MB` the decode working set (default 256 MiB).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::cell::OnceCell;
use std::hint::black_box;
use ward::engine::kernels::{GgmlDType, PackedMatrix, QMatrix, matmul, matmul_packed};

/// Block size in bytes and the offsets of its `f16` scale fields.
fn layout(dtype: GgmlDType) -> (usize, &'static [usize]) {
    use GgmlDType::*;
    match dtype {
        Q4_0 => (18, &[0]),
        Q4_1 => (20, &[0, 2]),
        Q5_0 => (22, &[0]),
        Q5_1 => (24, &[0, 2]),
        Q8_0 => (34, &[0]),
        Q2K => (84, &[80, 82]),
        Q3K => (110, &[108]),
        Q4K => (144, &[0, 2]),
        Q5K => (176, &[0, 2]),
        Q6K => (210, &[208]),
        F32 => (4, &[]),
        _ => (2, &[0]),
    }
}

/// `copies` random matrices of `rows × cols` with sane scales, back to back.
fn weights(dtype: GgmlDType, rows: usize, cols: usize, copies: usize) -> Vec<u8> {
    let (size, scales) = layout(dtype);
    let len = rows * cols / dtype.block_size() * size * copies;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    let scale = if dtype == GgmlDType::F32 {
        [0u8; 2]
    } else {
        half::f16::from_f32(0.01).to_le_bytes()
    };
    for block in data.chunks_exact_mut(size) {
        for &o in scales {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    if dtype == GgmlDType::F32 {
        for v in data.chunks_exact_mut(4) {
            v.copy_from_slice(&0.01f32.to_le_bytes());
        }
    }
    data
}

fn bench(c: &mut Criterion) {
    use GgmlDType::*;
    let mb: usize = std::env::var("WARD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    for dtype in [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, F16, BF16, F32,
    ] {
        // (rows, cols): Qwen2.5-0.5B's FFN and SmolLM2-135M's FFN, in the orientation whose
        // input width the format allows.
        let shapes: &[(usize, usize)] = if dtype.block_size() == 256 {
            &[(896, 4864), (576, 1536)]
        } else {
            &[(4864, 896), (1536, 576)]
        };
        let mut group = c.benchmark_group(format!("{dtype:?}"));
        group.sample_size(20);
        for &(rows, cols) in shapes {
            let bytes = rows * cols / dtype.block_size() * layout(dtype).0;
            let copies = ((mb << 20) / bytes).max(1);
            // Built on first use, so that a filtered run makes only the data it reads.
            let (data, mats, packed) = (OnceCell::new(), OnceCell::new(), OnceCell::new());
            let mats = || {
                mats.get_or_init(|| {
                    let data = data.get_or_init(|| weights(dtype, rows, cols, copies));
                    data.chunks_exact(bytes)
                        .map(|d| QMatrix::new(dtype, rows, cols, d).unwrap())
                        .collect::<Vec<_>>()
                })
            };
            let packed = || {
                packed.get_or_init(|| {
                    mats()
                        .iter()
                        .filter_map(PackedMatrix::new)
                        .collect::<Vec<_>>()
                })
            };
            let one = vec![0u8; bytes / rows * 16];
            let packs = PackedMatrix::new(&QMatrix::new(dtype, 16, cols, &one).unwrap()).is_some();
            for n in [1usize, 8, 64, 512] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                let mut out = vec![0f32; n * rows];
                group.throughput(if n <= 8 {
                    Throughput::Bytes(bytes as u64)
                } else {
                    Throughput::Elements(2 * (rows * cols * n) as u64)
                });
                let mut i = 0;
                group.bench_function(BenchmarkId::new(format!("{rows}x{cols}"), n), |b| {
                    let mats = mats();
                    b.iter(|| {
                        i = (i + 1) % mats.len();
                        matmul(&mats[i], black_box(&x), n, &mut out);
                        black_box(&out);
                    })
                });
                if !packs {
                    continue;
                }
                group.bench_function(BenchmarkId::new(format!("{rows}x{cols}/packed"), n), |b| {
                    let packed = packed();
                    b.iter(|| {
                        i = (i + 1) % packed.len();
                        matmul_packed(&packed[i], black_box(&x), n, &mut out);
                        black_box(&out);
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
