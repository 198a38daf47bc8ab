//! AVX2 dot products for CPUs without AVX-512: the 32-wide formats one block per `ymm`, and
//! `Q4_K` / `Q5_K` / `Q6_K` 32 values at a time, in llama.cpp's summation orders (the 32-wide
//! formats' and `Q6_K`'s as its AVX2 one-row kernels, `Q4_K`'s as its repacked ones, see
//! [`kquant`]). `Q2_K` / `Q3_K` use the scalar path.
//!
//! `vpmaddubsw` saturates at 16 bits, so signed weights use the sign trick
//! (`|w| · sign(x, w)`) and unsigned weights stay below 64.

use super::super::blocks::{BlockQ8K, BlockQ8x2};
use super::super::isa::DotFn;
use super::GgmlDType;
use std::arch::x86_64::*;

/// The `f16` at `p` as `f32`.
///
/// # Safety
/// F16C; two readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: see above.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Reads 16 bytes at `p` as `[low nibbles, high nibbles]`.
///
/// # Safety
/// AVX2; 16 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: see above.
    let q = unsafe { _mm_loadu_si128(p.cast()) };
    let v = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// Byte `i` is `0x10` where bit `i` of `qh` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bit16(qh: u32) -> __m256i {
    let v = _mm256_set1_epi32(qh as i32);
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let v = _mm256_shuffle_epi8(v, spread);
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Sums of 4 adjacent `u8 · i8` products as 8 `f32` (no saturation for `a ≤ 128`, `|b| ≤ 127`
/// or `a < 64`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum4(a: __m256i, b: __m256i) -> __m256 {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
    _mm256_cvtepi32_ps(p)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// One 32-wide block unpacked: weights (signed unless `unsigned`), `d`, and `m` (or 0).
struct Block {
    w: __m256i,
    d: f32,
    m: f32,
}

/// Unpacks block `p` of `dtype`.
///
/// # Safety
/// AVX2/F16C; a whole block of `dtype` at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack(dtype: GgmlDType, p: *const u8) -> Block {
    // SAFETY: offsets follow the GGUF block layouts; the caller guarantees the block.
    unsafe {
        let d = f16(p);
        match dtype {
            GgmlDType::Q4_0 => {
                let w = _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8));
                Block { w, d, m: 0.0 }
            }
            GgmlDType::Q4_1 => Block {
                w: nibbles(p.add(4)),
                d,
                m: f16(p.add(2)),
            },
            GgmlDType::Q5_0 => {
                let qh = p.add(2).cast::<u32>().read_unaligned();
                let w = _mm256_or_si256(nibbles(p.add(6)), bit16(qh));
                Block {
                    w: _mm256_sub_epi8(w, _mm256_set1_epi8(16)),
                    d,
                    m: 0.0,
                }
            }
            GgmlDType::Q5_1 => {
                let qh = p.add(4).cast::<u32>().read_unaligned();
                let w = _mm256_or_si256(nibbles(p.add(8)), bit16(qh));
                Block {
                    w,
                    d,
                    m: f16(p.add(2)),
                }
            }
            _ => Block {
                w: _mm256_loadu_si256(p.add(2).cast()),
                d,
                m: 0.0,
            },
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy<const T: usize>(
    dtype: GgmlDType,
    w: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [f32],
) {
    let size = dtype.type_size();
    let nb = w.len() / size;
    let pairs = nb.div_ceil(2);
    assert!(out.len() == T && a.len() >= (T - 1) * arow + pairs * 192);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = [0f32; T];
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    for b in 0..nb {
        // SAFETY: block `b` lies inside `w`.
        let blk = unsafe { unpack(dtype, w.as_ptr().add(b * size)) };
        let aw = _mm256_sign_epi8(blk.w, blk.w);
        for t in 0..T {
            // SAFETY: pair `b / 2` of token `t` lies inside `a` (asserted), 64-byte aligned.
            let x = unsafe { &*a.as_ptr().add(t * arow + b / 2 * 192).cast::<BlockQ8x2>() };
            let h = b % 2;
            // SAFETY: 32 bytes at offset 32h of a 64-byte aligned block.
            let q = unsafe { _mm256_load_si256(x.u.as_ptr().add(32 * h).cast()) };
            let q = _mm256_xor_si256(q, flip);
            let s = sum4(aw, _mm256_sign_epi8(q, blk.w));
            acc[t] = _mm256_fmadd_ps(s, _mm256_set1_ps(blk.d * x.d[8 * h]), acc[t]);
            // Fused, as llama.cpp's build contracts `summs += m * s`.
            accm[t] = blk.m.mul_add(x.s[8 * h], accm[t]);
        }
    }
    for t in 0..T {
        out[t] = hsum(acc[t]) + accm[t];
    }
}

/// The 6-bit scales and mins of a `Q4_K` / `Q5_K` block as bytes: scales in the low eight,
/// mins in the high eight.
///
/// # Safety
/// AVX2; 12 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales(p: *const u8) -> __m128i {
    // SAFETY: see above.
    let (sc, mn) =
        super::super::blocks::k4_scales_words(&unsafe { p.cast::<[u8; 12]>().read_unaligned() });
    _mm_set_epi64x(mn as i64, sc as i64)
}

/// The `vpshufb` mask that puts byte `a` in bytes 0-7 of an `xmm` and byte `b` in bytes 8-15.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn spread(a: usize, b: usize) -> __m128i {
    const ONES: u64 = 0x0101_0101_0101_0101;
    _mm_set_epi64x((b as u64 * ONES) as i64, (a as u64 * ONES) as i64)
}

/// Bytes `a` and `b` of `v`, sign-extended, as `[v[a] ×8, v[b] ×8]` in 16 `i16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair16_i8(v: __m128i, a: usize, b: usize) -> __m256i {
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(v, spread(a, b)))
}

/// `i16` `k` of each 128-bit lane of `v` in all eight `i16` of that lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn splat16(v: __m256i, k: usize) -> __m256i {
    let pick = (2 * k) as i16 | ((2 * k + 1) as i16) << 8;
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(pick))
}

/// The exact sums of the eight `i32` lanes of each of up to four vectors, as the lanes of
/// one `xmm` (lane `t` for `v[t]`, zero past `T`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsums<const T: usize>(v: &[__m256i; T]) -> __m128i {
    let z = _mm256_setzero_si256();
    let at = |t: usize| if t < T { v[t] } else { z };
    let h = _mm256_hadd_epi32(
        _mm256_hadd_epi32(at(0), at(1)),
        _mm256_hadd_epi32(at(2), at(3)),
    );
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// `f(t)` for each of up to four tokens as the lanes of an `xmm` (zero past `T`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn per_token<const T: usize>(f: impl Fn(usize) -> f32) -> __m128 {
    let at = |t: usize| if t < T { f(t) } else { 0.0 };
    _mm_setr_ps(at(0), at(1), at(2), at(3))
}

/// `Q4_K` / `Q5_K` / `Q6_K` rows in the orders of llama.cpp's kernels (the integer sums are
/// exact, so only the `f32` steps matter):
/// - `Q4_K`, as its repacked kernels: per row one `f32` sum and one for the minimum terms,
///   subtracted at the end; its multi-row kernel (`MULTI`) scales and accumulates every 64
///   values, its one-row kernel every block. `Q5_K` folds both into one sum per block.
/// - `Q6_K`, one-row (`ggml_vec_dot_q6_K_q8_K`): eight integer lanes per block (lane `l`, the
///   4-value groups `l, l + 8, …`, less their share of `32 Σ sc bsum`), each accumulated in its
///   own `f32` lane, folded as `hsum_float_8`; multi-row (its tiled kernel, batches of 8 or
///   more): one integer sum per block, times the weight's scale, fused onto the sum with the
///   activation's.
///
/// `K` (4, 5 or 6) names the format at compile time, so that each gets its own loop.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kquant<const T: usize, const MULTI: bool, const K: u8>(
    dtype: GgmlDType,
    w: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [f32],
) {
    let named = match K {
        4 => GgmlDType::Q4K,
        5 => GgmlDType::Q5K,
        _ => GgmlDType::Q6K,
    };
    debug_assert_eq!(named, dtype);
    let dtype = named;
    let size = dtype.type_size();
    let nb = w.len() / size;
    let xb = std::mem::size_of::<BlockQ8K>();
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * xb);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    assert!(T <= 4, "kquant: four tokens a call");
    let mask4 = _mm256_set1_epi8(0x0F);
    let mut lanes = [_mm256_setzero_ps(); T];
    // The single-lane orders' sums, token `t` in lane `t`.
    let (mut acc, mut accm) = (_mm_setzero_ps(), _mm_setzero_ps());
    for i in 0..nb {
        let p = w[i * size..].as_ptr();
        // SAFETY: token `t`, block `i` inside `a` (asserted), 64-byte aligned.
        let x: [&BlockQ8K; T] =
            std::array::from_fn(|t| unsafe { &*a.as_ptr().add(t * arow + i * xb).cast() });
        // SAFETY: 32 bytes of activations at `off`, 32-byte aligned.
        let xq =
            |t: usize, off: usize| unsafe { _mm256_load_si256(x[t].qs.as_ptr().add(off).cast()) };
        // SAFETY: `bsums` at offset 256, 32-byte aligned.
        let bs = |t: usize| unsafe { _mm256_load_si256(x[t].bsums.as_ptr().cast()) };
        let mut isum = [_mm256_setzero_si256(); T];
        if dtype == GgmlDType::Q6K {
            // SAFETY: `ql` at 0, `qh` at 128, scales at 192, `d` at 208.
            let (sc, d) = unsafe { (_mm_loadu_si128(p.add(192).cast()), f16(p.add(208))) };
            for h in 0..2 {
                // SAFETY: as above.
                let (ql0, ql1, qh) = unsafe {
                    (
                        _mm256_loadu_si256(p.add(64 * h).cast()),
                        _mm256_loadu_si256(p.add(64 * h + 32).cast()),
                        _mm256_loadu_si256(p.add(128 + 32 * h).cast()),
                    )
                };
                let m30 = _mm256_set1_epi8(0x30);
                let v = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, mask4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, mask4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), mask4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), mask4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                for (k, &v) in v.iter().enumerate() {
                    let g = 8 * h + 2 * k;
                    let s = pair16_i8(sc, g, g + 1);
                    for t in 0..T {
                        let p16 = _mm256_maddubs_epi16(v, xq(t, 128 * h + 32 * k));
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p16, s));
                    }
                }
            }
            let sc16 = _mm256_cvtepi8_epi16(sc);
            for t in 0..T {
                // The stored values are q + 32: each lane less `32 Σ sc · bsum` of its groups.
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs(t), sc16));
                isum[t] = _mm256_sub_epi32(isum[t], corr);
                if !MULTI {
                    let dx = _mm256_set1_ps(d * x[t].d);
                    lanes[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), dx, lanes[t]);
                }
            }
            if MULTI {
                let r = _mm_mul_ps(_mm_cvtepi32_ps(hsums(&isum)), _mm_set1_ps(d));
                acc = _mm_fmadd_ps(r, per_token::<T>(|t| x[t].d), acc);
            }
            continue;
        }
        let q5 = dtype == GgmlDType::Q5K;
        // SAFETY: `d`, `dmin`, scales at 0, 2, 4; `qh` (Q5_K) at 16; `qs` after.
        let (sm, d, dmin) = unsafe { (k4_scales(p.add(4)), f16(p), f16(p.add(2))) };
        // The scales as `i16`, in both 128-bit lanes.
        let sc16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi64(sm, sm));
        // SAFETY: as above.
        let qh = if q5 {
            unsafe { _mm256_loadu_si256(p.add(16).cast()) }
        } else {
            _mm256_setzero_si256()
        };
        let qs = if q5 { 48 } else { 16 };
        // The multi-row order's step: 64 values (sub-blocks `2c`, `2c + 1`).
        let step = MULTI && !q5;
        let (dx, dmx) = (
            per_token::<T>(|t| d * x[t].d),
            per_token::<T>(|t| dmin * x[t].d),
        );
        for c in 0..4 {
            // SAFETY: 32 bytes of `qs` per chunk.
            let q = unsafe { _mm256_loadu_si256(p.add(qs + 32 * c).cast()) };
            let mut lo = _mm256_and_si256(q, mask4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask4);
            if q5 {
                let bit = |k: i32| {
                    let b = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(k));
                    _mm256_slli_epi16::<4>(_mm256_and_si256(b, _mm256_set1_epi8(1)))
                };
                lo = _mm256_or_si256(lo, bit(2 * c as i32));
                hi = _mm256_or_si256(hi, bit(2 * c as i32 + 1));
            }
            let (s0, s1) = (splat16(sc16, 2 * c), splat16(sc16, 2 * c + 1));
            let mut cs = [_mm256_setzero_si256(); T];
            for t in 0..T {
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xq(t, 64 * c)), s0);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xq(t, 64 * c + 32)), s1);
                cs[t] = _mm256_add_epi32(p0, p1);
                if !step {
                    isum[t] = _mm256_add_epi32(isum[t], cs[t]);
                }
            }
            if step {
                // Each token's pair of 32-value sums against the pair's two minimums.
                let b = |t: usize| {
                    // SAFETY: two `i16` at `2c` of 8.
                    unsafe {
                        x[t].bsum32
                            .as_ptr()
                            .add(2 * c)
                            .cast::<i32>()
                            .read_unaligned()
                    }
                };
                let at = |t: usize| if t < T { b(t) } else { 0 };
                // Mins `2c`, `2c + 1` as the two `i16` of every `i32`.
                let pick = i32::from_le_bytes(std::array::from_fn(|i| (4 * c + i) as u8));
                let mp = _mm_shuffle_epi8(
                    _mm_unpackhi_epi8(sm, _mm_setzero_si128()),
                    _mm_set1_epi32(pick),
                );
                let im = _mm_madd_epi16(_mm_setr_epi32(at(0), at(1), at(2), at(3)), mp);
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsums(&cs)), dx, acc);
                accm = _mm_fmadd_ps(_mm_cvtepi32_ps(im), dmx, accm);
            }
        }
        if step {
            continue;
        }
        // Min `k / 2` in `i16` `k`, against the activations' 16-value sums.
        let m16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
        let corr: [__m256i; T] = std::array::from_fn(|t| _mm256_madd_epi16(bs(t), m16));
        let im = _mm_cvtepi32_ps(hsums(&corr));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsums(&isum)), dx, acc);
        if q5 {
            acc = _mm_fnmadd_ps(im, dmx, acc);
        } else {
            accm = _mm_fmadd_ps(im, dmx, accm);
        }
    }
    let mut sums = [0f32; 4];
    // SAFETY: four floats.
    unsafe { _mm_storeu_ps(sums.as_mut_ptr(), _mm_sub_ps(acc, accm)) };
    for t in 0..T {
        out[t] = match dtype {
            GgmlDType::Q6K if !MULTI => hsum(lanes[t]),
            _ => sums[t],
        };
    }
}

/// The AVX2 kernel in llama.cpp's multi-row order for the leading tokens of a batch
/// (`isa::multi_rows` says how many), where it has one that differs from the one-row order.
pub fn kernel_multi(dtype: GgmlDType) -> Option<DotFn> {
    Some(match dtype {
        GgmlDType::Q4K => tokens!(kquant, Q4K, "avx2,fma,f16c", true, 4),
        GgmlDType::Q6K => tokens!(kquant, Q6K, "avx2,fma,f16c", true, 6),
        _ => return None,
    })
}

/// The AVX2 kernel for a quantized format, if there is one.
pub fn kernel(dtype: GgmlDType) -> Option<DotFn> {
    Some(match dtype {
        GgmlDType::Q4_0 => tokens!(legacy, Q4_0, "avx2,fma,f16c"),
        GgmlDType::Q4_1 => tokens!(legacy, Q4_1, "avx2,fma,f16c"),
        GgmlDType::Q5_0 => tokens!(legacy, Q5_0, "avx2,fma,f16c"),
        GgmlDType::Q5_1 => tokens!(legacy, Q5_1, "avx2,fma,f16c"),
        GgmlDType::Q8_0 => tokens!(legacy, Q8_0, "avx2,fma,f16c"),
        GgmlDType::Q4K => tokens!(kquant, Q4K, "avx2,fma,f16c", false, 4),
        GgmlDType::Q5K => tokens!(kquant, Q5K, "avx2,fma,f16c", false, 5),
        GgmlDType::Q6K => tokens!(kquant, Q6K, "avx2,fma,f16c", false, 6),
        _ => return None,
    })
}
