//! AVX-512 versions of the half-float attention helpers in `kernels/f16ops.rs`, bit-identical to
//! the portable loops (fused multiply-adds).

use half::f16;
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn load_h(p: *const f16) -> __m512 {
    // SAFETY: the caller guarantees 16 halves at `p`.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
}

/// # Safety
/// AVX-512 F; `k.len() == q.len()`, a multiple of 16.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot(k: &[f16], q: &[f32]) -> f32 {
    let mut acc = _mm512_setzero_ps();
    for i in (0..k.len()).step_by(16) {
        // SAFETY: `i + 16 <= len` for both slices.
        unsafe {
            acc = _mm512_fmadd_ps(
                load_h(k.as_ptr().add(i)),
                _mm512_loadu_ps(q.as_ptr().add(i)),
                acc,
            );
        }
    }
    _mm512_reduce_add_ps(acc)
}

/// # Safety
/// As [`dot`].
#[target_feature(enable = "avx512f")]
pub unsafe fn axpy(a: f32, x: &[f16], y: &mut [f32]) {
    let va = _mm512_set1_ps(a);
    for i in (0..x.len()).step_by(16) {
        // SAFETY: `i + 16 <= len` for both slices.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            _mm512_storeu_ps(
                p,
                _mm512_fmadd_ps(load_h(x.as_ptr().add(i)), va, _mm512_loadu_ps(p)),
            );
        }
    }
}
