//! AVX-512 activation quantization, bit-identical to the scalar reference in `quant.rs`.

use super::super::blocks::{BlockQ8K, BlockQ8s, BlockQ8x2, QK, QK_K};
use super::super::quant::{block_sum, half_round, q8k_scale, scales};
use std::arch::x86_64::*;

/// Quantizes 16 floats by `id`, returning the 16 values as `i8` and their `i32` lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q16(v: __m512, id: f32) -> (__m128i, __m512i) {
    // Default rounding (MXCSR round-to-nearest-even), as `round_ties_even` in the reference.
    let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(id)));
    (_mm512_cvtsepi32_epi8(q), q)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn amax(v: &[__m512]) -> f32 {
    let mut m = _mm512_setzero_ps();
    for &v in v {
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
    }
    _mm512_reduce_max_ps(m)
}

/// AVX-512 version of `quant::quantize_q8`.
///
/// # Safety
/// Requires AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8x2], min: bool) {
    assert!(x.len().is_multiple_of(QK) && out.len() == x.len().div_ceil(2 * QK));
    let flip = _mm_set1_epi8(0x80u8 as i8);
    for (xs, p) in x.chunks(2 * QK).zip(out.iter_mut()) {
        *p = BlockQ8x2 {
            u: [0x80; 64],
            d: [0.0; 16],
            s: [0.0; 16],
        };
        for (half, xs) in xs.chunks_exact(QK).enumerate() {
            // SAFETY: `xs` holds 32 floats.
            let v = unsafe {
                [
                    _mm512_loadu_ps(xs.as_ptr()),
                    _mm512_loadu_ps(xs.as_ptr().add(16)),
                ]
            };
            let (d, id) = scales(amax(&v));
            let (q0, i0) = q16(v[0], id);
            let (q1, i1) = q16(v[1], id);
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
            let u = p.u[32 * half..].as_mut_ptr().cast::<__m128i>();
            // SAFETY: `u` has 32 bytes left from `32 * half`.
            unsafe {
                _mm_storeu_si128(u, _mm_xor_si128(q0, flip));
                _mm_storeu_si128(u.add(1), _mm_xor_si128(q1, flip));
            }
            p.d[8 * half..8 * half + 8].fill(half_round(d));
            p.s[8 * half..8 * half + 8].fill(block_sum(d, sum, min));
        }
    }
}

/// AVX-512 version of `quant::quantize_q8k`. The 16-value sums come from `vpsadbw` over the
/// stored quants (biased to unsigned), four groups per instruction, instead of a horizontal
/// reduction per group.
///
/// # Safety
/// Requires AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K);
    let (flip, zero) = (_mm512_set1_epi8(0x80u8 as i8), _mm512_setzero_si512());
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // SAFETY: `xs` holds 256 floats.
        let v: [__m512; 16] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_ps(xs.as_ptr().add(16 * i)) });
        let (_, id) = scales(amax(&v));
        for (g, &v) in v.iter().enumerate() {
            let (q, _) = q16(v, id);
            // SAFETY: `qs` has 16 bytes from `16 * g`.
            unsafe { _mm_storeu_si128(b.qs.as_mut_ptr().add(16 * g).cast(), q) };
        }
        for c in 0..4 {
            // SAFETY: `qs` has 64 bytes from `64 * c`.
            let q = unsafe { _mm512_loadu_si512(b.qs.as_ptr().add(64 * c).cast()) };
            // Sums of 8 quants, each biased by 8 · 128; groups of 16 are lane pairs.
            let mut s = [0u64; 8];
            // SAFETY: 8 `u64`.
            unsafe {
                _mm512_storeu_si512(
                    s.as_mut_ptr().cast(),
                    _mm512_sad_epu8(_mm512_xor_si512(q, flip), zero),
                )
            };
            for k in 0..4 {
                b.bsums[4 * c + k] = (s[2 * k] + s[2 * k + 1]) as i16 - 2048;
            }
        }
        b.d = q8k_scale(id);
        for g in 0..8 {
            b.bsum32[g] = b.bsums[2 * g] + b.bsums[2 * g + 1];
        }
        b.pad = [0; 12];
    }
}

/// AVX-512 version of `quant::quantize_q8s`. The group sums `c4` come from two integer
/// multiply-adds by ones, and the block sum from them, instead of a scalar pass over the
/// quants.
///
/// # Safety
/// Requires AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn quantize_q8s(x: &[f32], out: &mut [BlockQ8s], min: bool) {
    assert_eq!(x.len(), out.len() * QK);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        // SAFETY: `xs` holds 32 floats.
        let v = unsafe {
            [
                _mm512_loadu_ps(xs.as_ptr()),
                _mm512_loadu_ps(xs.as_ptr().add(16)),
            ]
        };
        let (d, id) = scales(amax(&v));
        let (q0, _) = q16(v[0], id);
        let (q1, _) = q16(v[1], id);
        let q = _mm256_set_m128i(q1, q0);
        let (sum, c4) = super::quant_avx2::sums(q);
        // SAFETY: `qs` has 32 bytes, `c4` eight `i32`.
        unsafe {
            _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), q);
            _mm256_storeu_si256(b.c4.as_mut_ptr().cast(), c4);
        }
        b.d = half_round(d);
        b.s = block_sum(d, sum, min);
    }
}
