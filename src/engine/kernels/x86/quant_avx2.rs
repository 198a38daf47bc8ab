//! AVX2 activation quantization, bit-identical to the scalar reference in `quant.rs` (for CPUs
//! without AVX-512; `vcvtps2dq` rounds half to even, as `round_ties_even` does).

use super::super::blocks::{BlockQ8K, BlockQ8s, BlockQ8x2, QK, QK_K};
use super::super::quant::{block_sum, half_round, q8k_scale, scales};
use std::arch::x86_64::*;

/// The largest magnitude of `v`'s lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn amax(v: &[__m256]) -> f32 {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_setzero_ps();
    for &v in v {
        m = _mm256_max_ps(m, _mm256_and_ps(v, abs));
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// 32 floats quantized by `id`, as 32 `i8` in order.
///
/// # Safety
/// AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q32(v: &[__m256; 4], id: f32) -> __m256i {
    let s = _mm256_set1_ps(id);
    let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, s)));
    // Packing works within 128-bit lanes: the 4-byte groups come out as
    // [0, 2, 4, 6, 1, 3, 5, 7] of the order wanted.
    let w = _mm256_packs_epi16(
        _mm256_packs_epi32(i[0], i[1]),
        _mm256_packs_epi32(i[2], i[3]),
    );
    _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Loads 32 floats.
///
/// # Safety
/// AVX; 32 readable floats at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(p: *const f32) -> [__m256; 4] {
    // SAFETY: as the caller guarantees.
    std::array::from_fn(|i| unsafe { _mm256_loadu_ps(p.add(8 * i)) })
}

/// The sum of 32 `i8`, and their 4-value group sums (`1 · q` in 16-bit pairs, then pairs of
/// pairs); the AVX-512 quantization uses it too.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sums(q: __m256i) -> (i32, __m256i) {
    let c4 = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
        _mm256_set1_epi16(1),
    );
    let c2 = _mm_add_epi32(
        _mm256_castsi256_si128(c4),
        _mm256_extracti128_si256::<1>(c4),
    );
    let c1 = _mm_add_epi32(c2, _mm_unpackhi_epi64(c2, c2));
    (_mm_cvtsi128_si32(c1) + _mm_extract_epi32::<1>(c1), c4)
}

/// AVX2 version of `quant::quantize_q8`.
///
/// # Safety
/// Requires AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8x2], min: bool) {
    assert!(x.len().is_multiple_of(QK) && out.len() == x.len().div_ceil(2 * QK));
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    for (xs, p) in x.chunks(2 * QK).zip(out.iter_mut()) {
        *p = BlockQ8x2 {
            u: [0x80; 64],
            d: [0.0; 16],
            s: [0.0; 16],
        };
        for (half, xs) in xs.chunks_exact(QK).enumerate() {
            // SAFETY: `xs` holds 32 floats.
            let v = unsafe { load32(xs.as_ptr()) };
            let (d, id) = scales(amax(&v));
            // SAFETY: same features.
            let q = unsafe { q32(&v, id) };
            let (sum, _) = sums(q);
            // SAFETY: `u` has 32 bytes from `32 * half`.
            unsafe {
                _mm256_storeu_si256(
                    p.u[32 * half..].as_mut_ptr().cast(),
                    _mm256_xor_si256(q, flip),
                )
            };
            p.d[8 * half..8 * half + 8].fill(half_round(d));
            p.s[8 * half..8 * half + 8].fill(block_sum(d, sum, min));
        }
    }
}

/// AVX2 version of `quant::quantize_q8k`; the 16-value sums from `vpsadbw` over the stored
/// quants biased to unsigned.
///
/// # Safety
/// Requires AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K);
    let (flip, zero) = (_mm256_set1_epi8(0x80u8 as i8), _mm256_setzero_si256());
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // SAFETY: `xs` holds 256 floats.
        let v: [[__m256; 4]; 8] = std::array::from_fn(|i| unsafe { load32(xs[32 * i..].as_ptr()) });
        let (_, id) = scales(amax(v.as_flattened()));
        for (c, v) in v.iter().enumerate() {
            // SAFETY: same features; `qs` has 32 bytes from `32 * c`.
            unsafe {
                let q = q32(v, id);
                _mm256_storeu_si256(b.qs.as_mut_ptr().add(32 * c).cast(), q);
                // Sums of 8 quants, each biased by 8 · 128; groups of 16 are lane pairs.
                let mut s = [0u64; 4];
                _mm256_storeu_si256(
                    s.as_mut_ptr().cast(),
                    _mm256_sad_epu8(_mm256_xor_si256(q, flip), zero),
                );
                b.bsums[2 * c] = (s[0] + s[1]) as i16 - 2048;
                b.bsums[2 * c + 1] = (s[2] + s[3]) as i16 - 2048;
            }
        }
        b.d = q8k_scale(id);
        for g in 0..8 {
            b.bsum32[g] = b.bsums[2 * g] + b.bsums[2 * g + 1];
        }
        b.pad = [0; 12];
    }
}

/// AVX2 version of `quant::quantize_q8s`.
///
/// # Safety
/// Requires AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8s(x: &[f32], out: &mut [BlockQ8s], min: bool) {
    assert_eq!(x.len(), out.len() * QK);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        // SAFETY: `xs` holds 32 floats.
        let v = unsafe { load32(xs.as_ptr()) };
        let (d, id) = scales(amax(&v));
        // SAFETY: same features.
        let q = unsafe { q32(&v, id) };
        let (sum, c4) = sums(q);
        // SAFETY: `qs` has 32 bytes, `c4` eight `i32`.
        unsafe {
            _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), q);
            _mm256_storeu_si256(b.c4.as_mut_ptr().cast(), c4);
        }
        b.d = half_round(d);
        b.s = block_sum(d, sum, min);
    }
}
