//! AVX-512 and AVX2 dot products for `f32`, `f16` and `bf16` weights against `f32` activations.
//!
//! Each weight vector is converted once and reused for up to four tokens.

use super::super::dot_scalar::cast_f32;
use super::super::isa::DotFn;
use super::GgmlDType;
use std::arch::x86_64::*;

/// Loads `n` (up to 16) weights from element `i` of `w` as `f32`, zeroing the rest.
///
/// # Safety
/// AVX-512 F; `w` holds at least `i + n` elements of `dtype`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load16(dtype: GgmlDType, w: &[u8], i: usize, n: usize) -> __m512 {
    let k: __mmask16 = if n >= 16 { !0 } else { (1u16 << n) - 1 };
    // SAFETY: masked loads touch only the `n` elements the caller guarantees.
    unsafe {
        match dtype {
            GgmlDType::F32 => _mm512_maskz_loadu_ps(k, w.as_ptr().add(4 * i).cast()),
            GgmlDType::F16 => {
                _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, w.as_ptr().add(2 * i).cast()))
            }
            _ => {
                let h = _mm256_maskz_loadu_epi16(k, w.as_ptr().add(2 * i).cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn dot512<const T: usize>(
    dtype: GgmlDType,
    w: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [f32],
) {
    let cols = w.len() / if dtype == GgmlDType::F32 { 4 } else { 2 };
    assert!(out.len() == T && a.len() >= (T - 1) * arow + 4 * cols && arow.is_multiple_of(4));
    let x: [&[f32]; T] = std::array::from_fn(|t| cast_f32(&a[t * arow..t * arow + 4 * cols]));
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    let mut i = 0;
    while i < cols {
        let n = (cols - i).min(16);
        let k: __mmask16 = if n >= 16 { !0 } else { (1u16 << n) - 1 };
        // SAFETY: `n` elements from `i` lie in `w`.
        let wv = unsafe { load16(dtype, w, i, n) };
        let j = (i / 16) & 1;
        for t in 0..T {
            // SAFETY: `n` floats from `i` lie in `x[t]`.
            let xv = unsafe { _mm512_maskz_loadu_ps(k, x[t].as_ptr().add(i)) };
            acc[t][j] = _mm512_fmadd_ps(wv, xv, acc[t][j]);
        }
        i += 16;
    }
    for t in 0..T {
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot256<const T: usize>(
    dtype: GgmlDType,
    w: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [f32],
) {
    let cols = w.len() / if dtype == GgmlDType::F32 { 4 } else { 2 };
    assert!(out.len() == T && a.len() >= (T - 1) * arow + 4 * cols && arow.is_multiple_of(4));
    let x: [&[f32]; T] = std::array::from_fn(|t| cast_f32(&a[t * arow..t * arow + 4 * cols]));
    let mut acc = [_mm256_setzero_ps(); T];
    let full = cols / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: 8 elements from `i < full` lie in `w`.
        let wv = unsafe {
            match dtype {
                GgmlDType::F32 => _mm256_loadu_ps(w.as_ptr().add(4 * i).cast()),
                GgmlDType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(2 * i).cast())),
                _ => {
                    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.as_ptr().add(2 * i).cast()));
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
                }
            }
        };
        for t in 0..T {
            // SAFETY: 8 floats from `i` lie in `x[t]`.
            acc[t] = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(x[t].as_ptr().add(i)) }, acc[t]);
        }
    }
    let mut tail = vec![0f32; cols - full];
    super::super::dequant::dequantize(dtype, &w[w.len() / cols * full..], &mut tail);
    for t in 0..T {
        let v = acc[t];
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        let rest: f32 = tail.iter().zip(&x[t][full..]).map(|(a, b)| a * b).sum();
        out[t] = _mm_cvtss_f32(s) + rest;
    }
}

/// The AVX-512 kernel for a float format.
pub fn kernel512(dtype: GgmlDType) -> Option<DotFn> {
    Some(match dtype {
        GgmlDType::F32 => tokens!(dot512, F32, "avx512f,avx512bw,avx512vl,f16c"),
        GgmlDType::F16 => tokens!(dot512, F16, "avx512f,avx512bw,avx512vl,f16c"),
        GgmlDType::BF16 => tokens!(dot512, BF16, "avx512f,avx512bw,avx512vl,f16c"),
        _ => return None,
    })
}

/// The AVX2 kernel for a float format.
pub fn kernel256(dtype: GgmlDType) -> Option<DotFn> {
    Some(match dtype {
        GgmlDType::F32 => tokens!(dot256, F32, "avx2,fma,f16c"),
        GgmlDType::F16 => tokens!(dot256, F16, "avx2,fma,f16c"),
        GgmlDType::BF16 => tokens!(dot256, BF16, "avx2,fma,f16c"),
        _ => return None,
    })
}
