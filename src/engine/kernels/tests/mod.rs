//! Tests of the matmul kernels against candle's independent dequantization, and of every SIMD
//! path against the scalar one.

use super::*;
use candle_core::quantized::k_quants::{self as ck, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// llama.cpp's summation order, which the bit-for-bit tests ask for.
const REF: Numerics = Numerics::Reference;

/// Random `f32`s, roughly normal, with an occasional outlier.
fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
            if rng.gen_ratio(1, 97) { v * 8.0 } else { v }
        })
        .collect()
}

/// The bytes of any candle block slice (all are `repr(C)` plain data).
fn bytes_of<T>(b: &[T]) -> Vec<u8> {
    // SAFETY: candle's blocks are `repr(C)` structs of integers and halves, without padding.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), std::mem::size_of_val(b)) }
        .to_vec()
}

/// Quantizes random data with candle, returning (GGUF bytes, candle's dequantization).
fn via_candle<T: GgmlType>(rng: &mut StdRng, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let src = randn(rng, rows * cols);
    let mut blocks = vec![T::zeros(); rows * cols / T::BLCK_SIZE];
    T::from_float(&src, &mut blocks);
    let mut deq = vec![0f32; rows * cols];
    T::to_float(&blocks, &mut deq);
    (bytes_of(&blocks), deq)
}

/// Random block bytes (every bit pattern exercised) with sane `f16` scale fields, and candle's
/// dequantization of them.
fn random_blocks<T: GgmlType>(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    f16_fields: &[usize],
) -> (Vec<u8>, Vec<f32>) {
    let nb = rows * cols / T::BLCK_SIZE;
    let size = std::mem::size_of::<T>();
    let mut bytes: Vec<u8> = (0..nb * size).map(|_| rng.r#gen()).collect();
    for b in bytes.chunks_exact_mut(size) {
        for &off in f16_fields {
            let v = half::f16::from_f32(rng.gen_range(-0.05f32..0.05));
            b[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    let mut blocks = vec![T::zeros(); nb];
    // SAFETY: same size; every bit pattern with finite halves is a valid candle block.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            blocks.as_mut_ptr().cast::<u8>(),
            bytes.len(),
        )
    };
    let mut deq = vec![0f32; rows * cols];
    T::to_float(&blocks, &mut deq);
    (bytes, deq)
}

/// Checks `matmul` on every ISA against the dequantized reference, within the error bound of
/// 8-bit activation quantization, and every SIMD path against the scalar one.
fn check(
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    n: usize,
    data: &[u8],
    deq: &[f32],
    seed: u64,
) {
    let w = QMatrix::new(dtype, rows, cols, data).expect("valid matrix");
    let shape = Shape {
        dtype,
        rows,
        cols,
        n,
    };
    check_with(
        &|x, n, out, is| matmul_isa(&w, x, n, out, is),
        shape,
        deq,
        seed,
    );
    if let Some(p) = PackedMatrix::pack(&w) {
        // Both summation orders (the K-quants have only llama.cpp's).
        for order in [REF, Numerics::Fast] {
            let run = |x: &[f32], n, out: &mut [f32], is| {
                packed_matmul::matmul_packed_isa(&p, x, n, out, is, order)
            };
            check_with(&run, shape, deq, seed);
        }
        let mut row = vec![0f32; cols];
        for r in [0, rows / 2, rows - 1] {
            p.dequantize_row(r, &mut row);
            assert_eq!(
                row,
                deq[r * cols..(r + 1) * cols],
                "{dtype:?} packed dequantize_row {r}"
            );
        }
    }
}

#[derive(Clone, Copy)]
struct Shape {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    n: usize,
}

type Run<'a> = dyn Fn(&[f32], usize, &mut [f32], Isa) + 'a;

fn check_with(run: &Run, shape: Shape, deq: &[f32], seed: u64) {
    let Shape {
        dtype,
        rows,
        cols,
        n,
    } = shape;
    let mut rng = StdRng::seed_from_u64(seed);
    let x = randn(&mut rng, n * cols);
    let block = match isa::act(dtype) {
        Act::F32 => 0,
        Act::Q8 | Act::Q8S => 32,
        Act::Q8K => 256,
    };
    let mut scalar = vec![0f32; n * rows];
    run(&x, n, &mut scalar, Isa::Scalar);
    for &is in &isa::available() {
        let mut got = vec![0f32; n * rows];
        run(&x, n, &mut got, is);
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            for r in 0..rows {
                let wr = &deq[r * cols..(r + 1) * cols];
                let exact: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = wr
                    .iter()
                    .zip(xt)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                // Each activation moves by at most half a quantization step.
                let qerr: f64 = if block == 0 {
                    0.0
                } else {
                    xt.chunks(block)
                        .zip(wr.chunks(block))
                        .map(|(xb, wb)| {
                            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                            let sw: f64 = wb.iter().map(|&v| (v as f64).abs()).sum();
                            amax / 127.0 * 0.5 * sw
                        })
                        .sum()
                };
                let v = got[t * rows + r] as f64;
                let tol = qerr * 1.01 + mag * 2e-5 + 1e-5;
                assert!(
                    (v - exact).abs() <= tol,
                    "{dtype:?} {is:?} {rows}x{cols} n={n} t={t} r={r}: {v} vs {exact} (tol {tol})"
                );
                let s = scalar[t * rows + r] as f64;
                assert!(
                    (v - s).abs() <= mag * 2e-5 + 1e-5,
                    "{dtype:?} {is:?} vs scalar {rows}x{cols} n={n} t={t} r={r}: {v} vs {s}"
                );
            }
        }
    }
}

fn check_type<T: GgmlType>(dtype: GgmlDType, widths: &[usize], f16_fields: &[usize]) {
    let mut rng = StdRng::seed_from_u64(0x5eed ^ dtype as u64);
    for (i, &cols) in widths.iter().enumerate() {
        let rows = 37;
        let (data, deq) = via_candle::<T>(&mut rng, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        let mut row = vec![0f32; cols];
        for r in [0, rows / 2, rows - 1] {
            w.dequantize_row(r, &mut row);
            assert_eq!(
                row,
                deq[r * cols..(r + 1) * cols],
                "{dtype:?} dequantize_row {r}"
            );
        }
        check(dtype, rows, cols, 1, &data, &deq, i as u64);
        check(dtype, rows, cols, 3, &data, &deq, 100 + i as u64);
        if isa::act(dtype) != Act::F32 {
            let (data, deq) = random_blocks::<T>(&mut rng, rows, cols, f16_fields);
            check(dtype, rows, cols, 2, &data, &deq, 200 + i as u64);
        }
    }
    // A batch crossing the token tile, with a row count crossing several row tiles.
    let cols = widths[widths.len() / 2];
    let (data, deq) = via_candle::<T>(&mut rng, 70, cols);
    check(dtype, 70, cols, 70, &data, &deq, 999);
    // A decode-sized batch over enough rows that each chunk takes a run of row tiles, the
    // last one partial.
    let (data, deq) = via_candle::<T>(&mut rng, 1000, widths[0]);
    check(dtype, 1000, widths[0], 8, &data, &deq, 998);
}

/// Blocks filled with one byte (scales kept sane), so that every value sits at an extreme,
/// against activations that are all at their extreme too: checks that no 16-bit intermediate
/// saturates on any path.
fn check_extremes<T: GgmlType>(dtype: GgmlDType, cols: usize, f16_fields: &[usize]) {
    let rows = 3;
    for fill in [0x00u8, 0x80, 0xFF, 0x7F] {
        let nb = rows * cols / T::BLCK_SIZE;
        let size = std::mem::size_of::<T>();
        let mut bytes = vec![fill; nb * size];
        for b in bytes.chunks_exact_mut(size) {
            for &off in f16_fields {
                b[off..off + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        let mut blocks = vec![T::zeros(); nb];
        // SAFETY: same size; finite halves make a valid candle block.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                blocks.as_mut_ptr().cast::<u8>(),
                bytes.len(),
            )
        };
        let mut deq = vec![0f32; rows * cols];
        T::to_float(&blocks, &mut deq);
        let w = QMatrix::new(dtype, rows, cols, &bytes).unwrap();
        let p = PackedMatrix::pack(&w);
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; cols];
            for (&is, packed) in isa::available()
                .iter()
                .flat_map(|i| [(i, false), (i, true)])
            {
                let mut got = vec![0f32; rows];
                match (&p, packed) {
                    (Some(p), true) => {
                        packed_matmul::matmul_packed_isa(p, &x, 1, &mut got, is, REF)
                    }
                    (None, true) => continue,
                    _ => matmul_isa(&w, &x, 1, &mut got, is),
                }
                for r in 0..rows {
                    let exact: f64 = deq[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|&v| (v * sign) as f64)
                        .sum();
                    // Activation blocks of the 32-wide formats keep their scale as a half
                    // (GGUF's `Q8_0`), so a constant input is off by up to 2^-11 relative.
                    let tol = 1e-3 * exact.abs() + 1e-4;
                    assert!(
                        (got[r] as f64 - exact).abs() <= tol,
                        "{dtype:?} {is:?} fill {fill:#x} x={sign}: {} vs {exact}",
                        got[r]
                    );
                }
            }
        }
    }
}

#[test]
fn extremes_do_not_saturate() {
    check_extremes::<ck::BlockQ4_0>(GgmlDType::Q4_0, 64, &[0]);
    check_extremes::<ck::BlockQ4_1>(GgmlDType::Q4_1, 64, &[0, 2]);
    check_extremes::<ck::BlockQ5_0>(GgmlDType::Q5_0, 96, &[0]);
    check_extremes::<ck::BlockQ5_1>(GgmlDType::Q5_1, 96, &[0, 2]);
    check_extremes::<ck::BlockQ8_0>(GgmlDType::Q8_0, 96, &[0]);
    check_extremes::<ck::BlockQ2K>(GgmlDType::Q2K, 512, &[80, 82]);
    check_extremes::<ck::BlockQ3K>(GgmlDType::Q3K, 512, &[108]);
    check_extremes::<ck::BlockQ4K>(GgmlDType::Q4K, 512, &[0, 2]);
    check_extremes::<ck::BlockQ5K>(GgmlDType::Q5K, 512, &[0, 2]);
    check_extremes::<ck::BlockQ6K>(GgmlDType::Q6K, 512, &[208]);
}

const W32: &[usize] = &[32, 64, 576, 640, 896, 2048];
const W256: &[usize] = &[256, 512, 2048, 4864];

#[test]
fn q4_0() {
    check_type::<ck::BlockQ4_0>(GgmlDType::Q4_0, W32, &[0]);
}
#[test]
fn q4_1() {
    check_type::<ck::BlockQ4_1>(GgmlDType::Q4_1, W32, &[0, 2]);
}
#[test]
fn q5_0() {
    check_type::<ck::BlockQ5_0>(GgmlDType::Q5_0, W32, &[0]);
}
#[test]
fn q5_1() {
    check_type::<ck::BlockQ5_1>(GgmlDType::Q5_1, W32, &[0, 2]);
}
#[test]
fn q8_0() {
    check_type::<ck::BlockQ8_0>(GgmlDType::Q8_0, W32, &[0]);
}
#[test]
fn q2k() {
    check_type::<ck::BlockQ2K>(GgmlDType::Q2K, W256, &[80, 82]);
}
#[test]
fn q3k() {
    check_type::<ck::BlockQ3K>(GgmlDType::Q3K, W256, &[108]);
}
#[test]
fn q4k() {
    check_type::<ck::BlockQ4K>(GgmlDType::Q4K, W256, &[0, 2]);
}
#[test]
fn q5k() {
    check_type::<ck::BlockQ5K>(GgmlDType::Q5K, W256, &[0, 2]);
}
#[test]
fn q6k() {
    check_type::<ck::BlockQ6K>(GgmlDType::Q6K, W256, &[208]);
}
#[test]
fn f32_f16_bf16() {
    check_type::<f32>(GgmlDType::F32, &[1, 7, 33, 640], &[]);
    check_type::<half::f16>(GgmlDType::F16, &[1, 7, 33, 640], &[]);
    check_type::<half::bf16>(GgmlDType::BF16, &[1, 7, 33, 640], &[]);
}

#[test]
fn rejects_bad_shapes() {
    assert!(QMatrix::new(GgmlDType::Q4K, 1, 640, &[0; 144 * 2]).is_err());
    assert!(QMatrix::new(GgmlDType::Q4_0, 2, 64, &[0; 18 * 3]).is_err());
    assert!(QMatrix::new(GgmlDType::Q8K, 1, 256, &[0; 292]).is_err());
    assert!(QMatrix::new(GgmlDType::Q4_0, 2, 64, &[0; 18 * 4]).is_ok());
}

#[test]
fn activation_quantization_paths_agree() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut x = randn(&mut rng, 4864);
    x[256..512].fill(0.0);
    let z = BlockQ8x2 {
        u: [0; 64],
        d: [0.0; 16],
        s: [0.0; 16],
    };
    let mut a = vec![z; 4864 / 64];
    let mut b = a.clone();
    for min in [false, true] {
        quant::quantize_q8_scalar(&x, &mut a, min);
        quant::quantize_q8(&x, &mut b, min);
        assert_eq!(blocks::as_bytes(&a), blocks::as_bytes(&b));
    }
    let z = BlockQ8s {
        qs: [0; 32],
        d: 0.0,
        s: 0.0,
        c4: [0; 8],
    };
    let (mut a, mut b) = (vec![z; 4864 / 32], vec![z; 4864 / 32]);
    for min in [false, true] {
        quant::quantize_q8s_scalar(&x, &mut a, min);
        quant::quantize_q8s(&x, &mut b, min);
        assert_eq!(blocks::as_bytes(&a), blocks::as_bytes(&b));
    }
    let z = BlockQ8K {
        d: 0.0,
        qs: [0; 256],
        bsums: [0; 16],
        bsum32: [0; 8],
        pad: [0; 12],
    };
    let (mut a, mut b) = (vec![z; 19], vec![z; 19]);
    quant::quantize_q8k_scalar(&x, &mut a);
    quant::quantize_q8k(&x, &mut b);
    assert_eq!(blocks::as_bytes(&a), blocks::as_bytes(&b));
}

#[test]
fn thread_counts_agree() {
    let mut rng = StdRng::seed_from_u64(11);
    let (rows, cols) = (300, 512);
    let (data, _) = via_candle::<ck::BlockQ4K>(&mut rng, rows, cols);
    let w = QMatrix::new(GgmlDType::Q4K, rows, cols, &data).unwrap();
    let x = randn(&mut rng, 5 * cols);
    let mut one = vec![0f32; 5 * rows];
    // Dynamic tile scheduling must not change any result.
    matmul(&w, &x, 5, &mut one);
    for _ in 0..50 {
        let mut again = vec![0f32; 5 * rows];
        matmul(&w, &x, 5, &mut again);
        assert_eq!(one, again);
    }
}

#[test]
fn packing_releases_the_source_in_order_and_packs_the_same() {
    // A matrix several release slices long: the callback sees consecutive ranges covering the
    // whole source, and the result equals packing in one go.
    let mut rng = StdRng::seed_from_u64(9);
    let (rows, cols) = (4096, 1024);
    let (bytes, _) = via_candle::<ck::BlockQ8_0>(&mut rng, rows, cols);
    let w = QMatrix::new(GgmlDType::Q8_0, rows, cols, &bytes).unwrap();
    let mut seen = Vec::new();
    let Some(p) = PackedMatrix::new_releasing(&w, |r| seen.push(r)) else {
        return; // no packed kernel on this CPU
    };
    assert!(seen.len() > 1, "{seen:?}");
    assert_eq!(seen[0].start, 0);
    assert_eq!(seen.last().unwrap().end, bytes.len());
    assert!(seen.windows(2).all(|w| w[0].end == w[1].start));
    let q = PackedMatrix::pack(&w).unwrap();
    let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
    for r in [0, 1, 1000, rows - 1] {
        p.dequantize_row(r, &mut a);
        q.dequantize_row(r, &mut b);
        assert_eq!(a, b, "row {r}");
    }
}

/// Calls the generic `$one::<Block>(dtype)` for every 32-wide format.
macro_rules! each_32_wide {
    ($one:ident) => {
        $one::<ck::BlockQ4_0>(GgmlDType::Q4_0);
        $one::<ck::BlockQ4_1>(GgmlDType::Q4_1);
        $one::<ck::BlockQ5_0>(GgmlDType::Q5_0);
        $one::<ck::BlockQ5_1>(GgmlDType::Q5_1);
        $one::<ck::BlockQ8_0>(GgmlDType::Q8_0);
    };
}

/// Unless `WARD_NUMERICS` says otherwise, a pass of one sequence keeps llama.cpp's order (the
/// greedy references are single sequences) and a step of several takes ward's.
#[test]
fn the_default_order_follows_the_pass() {
    if std::env::var_os("WARD_NUMERICS").is_some() {
        return;
    }
    assert_eq!(isa::numerics_for(1), Numerics::Reference);
    assert_eq!(isa::numerics_for(2), Numerics::Fast);
    assert_eq!(isa::numerics_for(8), Numerics::Fast);
}

/// In llama.cpp's order, a token's products do not depend on the batch it comes in: the
/// 32-wide packed kernels give each of 8 tokens the bits it gets alone (the 5-bit formats,
/// and the 4-bit ones either way `isa::unpack_4bit_once` chooses, through the weights that the
/// batch's first pass unpacks for the others). Switching the choice while other tests run
/// changes none of their results, which are the same bits either way.
#[test]
fn packed_32_wide_batches_give_each_token_its_own_bits() {
    let chosen = isa::unpack_4bit_once();
    for on in [false, true] {
        isa::set_unpack_4bit_once(on);
        batches_give_each_token_its_own_bits();
    }
    isa::set_unpack_4bit_once(chosen);
}

fn batches_give_each_token_its_own_bits() {
    fn one<T: GgmlType>(dtype: GgmlDType) {
        let mut rng = StdRng::seed_from_u64(0xba7c ^ dtype as u64);
        let (rows, cols, n) = (40, 896, 8);
        let (bytes, _) = via_candle::<T>(&mut rng, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &bytes).unwrap();
        let Some(p) = PackedMatrix::pack(&w) else {
            return; // a format without a packed kernel
        };
        let x = randn(&mut rng, n * cols);
        for k in [2, 3, 5, 8] {
            let mut all = vec![0f32; k * rows];
            packed_matmul::matmul_packed_isa(&p, &x[..k * cols], k, &mut all, isa::get(), REF);
            for t in 0..k {
                let mut alone = vec![0f32; rows];
                packed_matmul::matmul_packed_isa(
                    &p,
                    &x[t * cols..(t + 1) * cols],
                    1,
                    &mut alone,
                    isa::get(),
                    REF,
                );
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&all[t * rows..(t + 1) * rows]),
                    bits(&alone),
                    "{dtype:?} {k} tokens, token {t}"
                );
            }
        }
    }
    each_32_wide!(one);
}

/// On AVX2, the packed kernels sum in the row kernels' order (llama.cpp's: for the 32-wide
/// formats eight lanes of 4-value sums per row, folded as `hsum_float_8`; for `Q4_K` / `Q5_K`
/// its multi-row order for the leading multiple of 4 tokens, its one-row order for the rest;
/// for `Q6_K` its one-row order below 8 tokens, its tiled order from 8): the same bits for
/// every format and batch size, the batches whose passes share the unpacked weights included.
#[test]
fn avx2_packed_kernels_give_the_row_kernels_bits() {
    if !isa::available().contains(&Isa::Avx2) {
        return;
    }
    fn one<T: GgmlType>(dtype: GgmlDType) {
        let mut rng = StdRng::seed_from_u64(0xa2 ^ dtype as u64);
        let (rows, cols) = (37, if T::BLCK_SIZE == 256 { 768 } else { 640 });
        let (bytes, _) = via_candle::<T>(&mut rng, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &bytes).unwrap();
        // The layout AVX2 packs for, whatever this CPU has.
        let p = PackedMatrix::pack_high(&w, true).expect("a packed format");
        for n in [1, 2, 3, 4, 5, 8, 11] {
            let x = randn(&mut rng, n * cols);
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            matmul_isa(&w, &x, n, &mut a, Isa::Avx2);
            packed_matmul::matmul_packed_isa(&p, &x, n, &mut b, Isa::Avx2, REF);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{dtype:?} {n} tokens");
        }
    }
    each_32_wide!(one);
    one::<ck::BlockQ4K>(GgmlDType::Q4K);
    one::<ck::BlockQ5K>(GgmlDType::Q5K);
    one::<ck::BlockQ6K>(GgmlDType::Q6K);
}

/// The 5-bit formats' fifth bits and `Q6_K`'s high bits as `u64` masks (AVX-512) or as bytes
/// (AVX2) hold the same values, and every kernel that reads both layouts gives the same bits
/// from either (for `Q6_K` the portable one: AVX-512 reads only masks, AVX2 only bytes).
#[test]
fn high_bits_as_masks_or_bytes_give_the_same_products() {
    fn one<T: GgmlType>(dtype: GgmlDType) {
        let mut rng = StdRng::seed_from_u64(0x5b ^ dtype as u64);
        let (rows, cols) = (21, if T::BLCK_SIZE == 256 { 768 } else { 576 });
        let (bytes, _) = via_candle::<T>(&mut rng, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &bytes).unwrap();
        let (m, b) = (
            PackedMatrix::pack_high(&w, false).unwrap(),
            PackedMatrix::pack_high(&w, true).unwrap(),
        );
        assert!(!m.layout().high_bytes && b.layout().high_bytes);
        let (mut rm, mut rb) = (vec![0f32; cols], vec![0f32; cols]);
        for r in 0..rows {
            m.dequantize_row(r, &mut rm);
            b.dequantize_row(r, &mut rb);
            assert_eq!(rm, rb, "{dtype:?} row {r}");
        }
        let both: Vec<Isa> = isa::available()
            .into_iter()
            .filter(|&i| i <= Isa::Avx2 && (dtype != GgmlDType::Q6K || i == Isa::Scalar))
            .collect();
        for n in [1, 3, 8] {
            let x = randn(&mut rng, n * cols);
            for &is in &both {
                let (mut a, mut c) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                packed_matmul::matmul_packed_isa(&m, &x, n, &mut a, is, REF);
                packed_matmul::matmul_packed_isa(&b, &x, n, &mut c, is, REF);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&c), "{dtype:?} {is:?} {n} tokens");
            }
        }
    }
    one::<ck::BlockQ5_0>(GgmlDType::Q5_0);
    one::<ck::BlockQ5_1>(GgmlDType::Q5_1);
    one::<ck::BlockQ6K>(GgmlDType::Q6K);
}

/// A `Q6_K` batch of 8 or more tokens takes llama.cpp's tiled order, 4 tokens a pass, the
/// later passes loading the weights the first unpacked: a token gets the same bits in the
/// first pass as in a later one.
#[test]
fn packed_q6k_batches_give_a_token_the_same_bits_in_any_pass() {
    let mut rng = StdRng::seed_from_u64(0x96);
    let (rows, cols) = (40, 768);
    let (bytes, _) = via_candle::<ck::BlockQ6K>(&mut rng, rows, cols);
    let w = QMatrix::new(GgmlDType::Q6K, rows, cols, &bytes).unwrap();
    let Some(p) = PackedMatrix::pack(&w) else {
        return; // a format without a packed kernel
    };
    for n in [8, 12] {
        let x = randn(&mut rng, n * cols);
        // The same tokens, the last four first.
        let mut y = x[(n - 4) * cols..].to_vec();
        y.extend_from_slice(&x[..(n - 4) * cols]);
        let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        packed_matmul::matmul_packed(&p, &x, n, &mut a);
        packed_matmul::matmul_packed(&p, &y, n, &mut b);
        for t in 0..n {
            let u = (t + 4) % n;
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&a[t * rows..(t + 1) * rows]),
                bits(&b[u * rows..(u + 1) * rows]),
                "{n} tokens, token {t}"
            );
        }
    }
}

/// The per-row helpers hand every row to exactly one call, with its own rows of both
/// matrices, and `ahead` sees every index before `f` does.
#[test]
fn row_helpers_visit_every_row_once() {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    for n in [1, 2, 7, 64] {
        let mut a: Vec<f32> = (0..3 * n).map(|i| i as f32).collect();
        let mut b = vec![0f32; 2 * n];
        for_rows2(&mut a, 3, &mut b, 2, &|t, ra, rb| {
            assert_eq!(ra[0], (3 * t) as f32, "row {t} of a");
            ra.iter_mut().for_each(|v| *v = -*v);
            rb.fill(t as f32);
        });
        assert!(a.iter().enumerate().all(|(i, &v)| v == -(i as f32)));
        assert!(b.iter().enumerate().all(|(i, &v)| v == (i / 2) as f32));

        let seen: Vec<(AtomicU32, AtomicU32)> = (0..n)
            .map(|_| (AtomicU32::new(0), AtomicU32::new(0)))
            .collect();
        parallel_for_ahead(
            n,
            &|i| {
                seen[i].0.fetch_add(1, Relaxed);
            },
            &|i| {
                assert_eq!(seen[i].0.load(Relaxed), 1, "ahead before item {i}");
                seen[i].1.fetch_add(1, Relaxed);
            },
        );
        assert!(
            seen.iter()
                .all(|(a, f)| a.load(Relaxed) == 1 && f.load(Relaxed) == 1)
        );
    }
}

mod order;
