//! The SIMD row kernels against scalar transcriptions of llama.cpp's x86 summation orders,
//! bit for bit: AVX2 on x86-64, NEON (with and without `sdot`) on AArch64.

use super::*;

/// llama.cpp's x86 order for one 32-wide weight row and one token: per block eight 4-value
/// integer sums, each scaled (`d_w · d_x`) into its own lane with a fused multiply-add, the
/// lanes folded as `hsum_float_8` folds them, the minimum term fused into its own sum.
fn llama_order_row(dtype: GgmlDType, row: &[u8], x: &[blocks::BlockQ8x2]) -> f32 {
    use blocks::f16_le;
    let size = dtype.type_size();
    let (mut lanes, mut summ) = ([0f32; 8], 0f32);
    for (b, blk) in row.chunks_exact(size).enumerate() {
        let nib = |qs: &[u8]| -> [i32; 32] {
            std::array::from_fn(|i| i32::from(if i < 16 { qs[i] & 0xF } else { qs[i - 16] >> 4 }))
        };
        let five = |qh: &[u8], qs: &[u8]| -> [i32; 32] {
            let v = dequant::q5_values(qh.try_into().unwrap(), qs.try_into().unwrap());
            v.map(i32::from)
        };
        let (v, m): ([i32; 32], f32) = match dtype {
            GgmlDType::Q4_0 => (nib(&blk[2..]).map(|q| q - 8), 0.0),
            GgmlDType::Q4_1 => (nib(&blk[4..]), f16_le([blk[2], blk[3]])),
            GgmlDType::Q5_0 => (five(&blk[2..6], &blk[6..]).map(|q| q - 16), 0.0),
            GgmlDType::Q5_1 => (five(&blk[4..8], &blk[8..]), f16_le([blk[2], blk[3]])),
            _ => (std::array::from_fn(|i| i32::from(blk[2 + i] as i8)), 0.0),
        };
        let (xb, h) = (&x[b / 2], b % 2);
        let scale = f16_le([blk[0], blk[1]]) * xb.d[8 * h];
        for (k, lane) in lanes.iter_mut().enumerate() {
            let s: i32 = (4 * k..4 * k + 4)
                .map(|i| v[i] * i32::from(xb.q(h, i)))
                .sum();
            *lane = (s as f32).mul_add(scale, *lane);
        }
        summ = m.mul_add(xb.s[8 * h], summ);
    }
    let l = lanes;
    (((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))) + summ
}

/// A scalar transcription of a kernel's order: `(weight row, one token, multi-row order)`.
type Reference = dyn Fn(&[u8], &[f32], bool) -> f32;

/// Checks the SIMD row kernels of `dtype` on AVX2 and on NEON (with and without `sdot`)
/// against `reference(row, token, multi)` bit for bit, for batches of each size in `ns`;
/// `multi` is set for the leading tokens that llama.cpp's multi-row kernels take.
fn check_llama_order<T: GgmlType>(
    dtype: GgmlDType,
    cols: usize,
    ns: &[usize],
    reference: &Reference,
) {
    let paths: Vec<Isa> = isa::available()
        .into_iter()
        .filter(|i| matches!(i, Isa::Avx2 | Isa::Neon | Isa::NeonDot))
        .collect();
    let mut rng = StdRng::seed_from_u64(0x11 ^ dtype as u64);
    let rows = 13;
    let (bytes, _) = via_candle::<T>(&mut rng, rows, cols);
    let w = QMatrix::new(dtype, rows, cols, &bytes).unwrap();
    let rb = bytes.len() / rows;
    for &n in ns {
        let x = randn(&mut rng, n * cols);
        let multi = isa::multi_rows(dtype, n);
        let bytes = &bytes;
        let want: Vec<u32> = (0..n)
            .flat_map(|t| {
                let xt = &x[t * cols..(t + 1) * cols];
                (0..rows).map(move |r| reference(&bytes[r * rb..(r + 1) * rb], xt, t < multi))
            })
            .map(f32::to_bits)
            .collect();
        for &is in &paths {
            let mut got = vec![0f32; n * rows];
            matmul_isa(&w, &x, n, &mut got, is);
            let got: Vec<u32> = got.iter().map(|f| f.to_bits()).collect();
            assert_eq!(got, want, "{dtype:?} {is:?} {n} tokens");
        }
    }
}

/// The SIMD row kernels of the 32-wide formats on AVX2 and on NEON (with and without `sdot`)
/// sum in llama.cpp's x86 order, so they give the same bits on either architecture, for any
/// token of a batch.
#[test]
fn row_kernels_32_wide_sum_in_llama_cpp_order() {
    fn one<T: GgmlType>(dtype: GgmlDType) {
        let reference = move |row: &[u8], x: &[f32], _multi: bool| {
            let zero = blocks::BlockQ8x2 {
                u: [0; 64],
                d: [0.0; 16],
                s: [0.0; 16],
            };
            let mut q = vec![zero; x.len().div_ceil(64)];
            quant::quantize_q8(x, &mut q, has_min(dtype));
            llama_order_row(dtype, row, &q)
        };
        check_llama_order::<T>(dtype, 576, &[1, 3, 6], &reference);
    }
    each_32_wide!(one);
}

/// llama.cpp's x86 orders for one K-quant weight row and one token (see `x86/avx2.rs`,
/// `kquant`), `multi` for the tokens its multi-row kernels take.
fn llama_order_row_k(dtype: GgmlDType, row: &[u8], x: &[blocks::BlockQ8K], multi: bool) -> f32 {
    use blocks::f16_le;
    let size = dtype.type_size();
    let (mut acc, mut accm, mut lanes) = (0f32, 0f32, [0f32; 8]);
    for (blk, x) in row.chunks_exact(size).zip(x) {
        let dot = |v: &dyn Fn(usize) -> i32, r: std::ops::Range<usize>| -> i32 {
            r.map(|i| v(i) * i32::from(x.qs[i])).sum()
        };
        if dtype == GgmlDType::Q6K {
            let b: &blocks::BlockQ6K = &blocks::cast(blk)[0];
            let v = dequant::q6k_values(&b.ql, &b.qh);
            let stored = |i: usize| i32::from(v[i]) + 32;
            let sc = |g: usize| i32::from(b.scales[g]);
            let d = f16_le(b.d);
            // Lane `l`: bytes `4l..4l+4` of each 32-value run, scaled by its 16-value group's
            // scale, less `32 Σ sc · bsum` over groups `2l`, `2l + 1`.
            let lane: [i32; 8] = std::array::from_fn(|l| {
                let p: i32 = (0..8)
                    .map(|run| {
                        let at = 32 * run + 4 * l;
                        sc(at / 16) * dot(&stored, at..at + 4)
                    })
                    .sum();
                let bs = |g: usize| i32::from(x.bsums[g]) * sc(g);
                p - 32 * (bs(2 * l) + bs(2 * l + 1))
            });
            if multi {
                let total: i32 = lane.iter().sum();
                acc = (total as f32 * d).mul_add(x.d, acc);
            } else {
                for (f, &s) in lanes.iter_mut().zip(&lane) {
                    *f = (s as f32).mul_add(d * x.d, *f);
                }
            }
            continue;
        }
        let q5 = dtype == GgmlDType::Q5K;
        let (d, dmin) = (f16_le([blk[0], blk[1]]), f16_le([blk[2], blk[3]]));
        let (sc, m) = blocks::k4_scales_mins(blk[4..16].try_into().unwrap());
        let v = if q5 {
            dequant::q5k_values(
                blk[16..48].try_into().unwrap(),
                blk[48..].try_into().unwrap(),
            )
        } else {
            dequant::q4k_values(blk[16..].try_into().unwrap())
        };
        let val = |i: usize| i32::from(v[i]);
        let (dx, dmx) = (d * x.d, dmin * x.d);
        let group = |g: usize| i32::from(sc[g]) * dot(&val, 32 * g..32 * g + 32);
        let mins = |g: usize| i32::from(m[g]) * i32::from(x.bsum32[g]);
        if multi && !q5 {
            for c in 0..4 {
                let cs = group(2 * c) + group(2 * c + 1);
                acc = (cs as f32).mul_add(dx, acc);
                accm = ((mins(2 * c) + mins(2 * c + 1)) as f32).mul_add(dmx, accm);
            }
            continue;
        }
        let isum: i32 = (0..8).map(group).sum();
        let im = (0..8).map(mins).sum::<i32>() as f32;
        acc = (isum as f32).mul_add(dx, acc);
        if q5 {
            acc = (-im).mul_add(dmx, acc);
        } else {
            accm = im.mul_add(dmx, accm);
        }
    }
    if dtype == GgmlDType::Q6K && !multi {
        let l = lanes;
        ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
    } else {
        acc - accm
    }
}

/// The SIMD K-quant row kernels on AVX2 and on NEON (with and without `sdot`) sum in the
/// orders of llama.cpp's x86 kernels, its multi-row ones for the leading tokens of a batch
/// that `isa::multi_rows` names: the same bits on either architecture.
#[test]
fn row_kernels_k_quants_sum_in_llama_cpp_order() {
    fn one<T: GgmlType>(dtype: GgmlDType) {
        let reference = move |row: &[u8], x: &[f32], multi: bool| {
            let zero = blocks::BlockQ8K {
                qs: [0; 256],
                bsums: [0; 16],
                d: 0.0,
                bsum32: [0; 8],
                pad: [0; 12],
            };
            let mut q = vec![zero; x.len() / 256];
            quant::quantize_q8k(x, &mut q);
            llama_order_row_k(dtype, row, &q, multi)
        };
        check_llama_order::<T>(dtype, 768, &[1, 3, 4, 6, 8, 9], &reference);
    }
    one::<ck::BlockQ4K>(GgmlDType::Q4K);
    one::<ck::BlockQ5K>(GgmlDType::Q5K);
    one::<ck::BlockQ6K>(GgmlDType::Q6K);
}
