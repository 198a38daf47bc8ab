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

/// AVX-512 version of `quant::quantize_q8k`.
///
/// # Safety
/// Requires AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K);
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // SAFETY: `xs` holds 256 floats.
        let v: [__m512; 16] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_ps(xs.as_ptr().add(16 * i)) });
        let (_, id) = scales(amax(&v));
        for (g, &v) in v.iter().enumerate() {
            let (q, i) = q16(v, id);
            // SAFETY: `qs` has 16 bytes from `16 * g`.
            unsafe { _mm_storeu_si128(b.qs.as_mut_ptr().add(16 * g).cast(), q) };
            b.bsums[g] = _mm512_reduce_add_epi32(i) as i16;
        }
        b.d = q8k_scale(id);
        for g in 0..8 {
            b.bsum32[g] = b.bsums[2 * g] + b.bsums[2 * g + 1];
        }
        b.pad = [0; 12];
    }
}

/// AVX-512 version of `quant::quantize_q8s`.
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
        let (q0, i0) = q16(v[0], id);
        let (q1, i1) = q16(v[1], id);
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        // SAFETY: `qs` has 32 bytes.
        unsafe {
            _mm_storeu_si128(b.qs.as_mut_ptr().cast(), q0);
            _mm_storeu_si128(b.qs.as_mut_ptr().add(16).cast(), q1);
        }
        b.d = half_round(d);
        b.s = block_sum(d, sum, min);
        b.set_group_sums();
    }
}
