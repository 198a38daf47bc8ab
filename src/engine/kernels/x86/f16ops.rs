//! AVX-512 versions of the attention kernels in `kernels/f16ops.rs`: each cached row is
//! converted to `f32` once into registers and used for every head of the group.

use half::f16;
use std::arch::x86_64::*;

/// Largest head size the register-resident row supports (16 `zmm`).
pub const MAX_HD: usize = 256;

/// Loads `hd / 16` vectors of a half-float row.
#[inline(always)]
unsafe fn load_row(p: *const f16, hd: usize, out: &mut [__m512; MAX_HD / 16]) {
    for (v, o) in out.iter_mut().enumerate().take(hd / 16) {
        // SAFETY: the caller guarantees `hd` halves at `p`.
        *o = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16 * v).cast())) };
    }
}

/// # Safety
/// AVX-512 F; the lengths `f16ops::scores` checks; `hd` a multiple of 16, at most [`MAX_HD`].
#[target_feature(enable = "avx512f")]
pub unsafe fn scores(
    rows: &[f16],
    stride: usize,
    n: usize,
    q: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let g = q.len() / hd;
    let mut k = [_mm512_setzero_ps(); MAX_HD / 16];
    for p in 0..n {
        // SAFETY: row `p` lies inside `rows` (checked by the caller).
        unsafe { load_row(rows.as_ptr().add(p * stride), hd, &mut k) };
        for h in 0..g {
            let mut acc = _mm512_setzero_ps();
            for (v, &kv) in k.iter().enumerate().take(hd / 16) {
                // SAFETY: `h * hd + 16 v + 16 <= q.len()`.
                let qv = unsafe { _mm512_loadu_ps(q.as_ptr().add(h * hd + 16 * v)) };
                acc = _mm512_fmadd_ps(kv, qv, acc);
            }
            out[h * n + p] = _mm512_reduce_add_ps(acc) * scale;
        }
    }
}

/// # Safety
/// AVX-512 F; the lengths `f16ops::accumulate` checks; `hd` as for [`scores`].
#[target_feature(enable = "avx512f")]
pub unsafe fn accumulate(
    rows: &[f16],
    stride: usize,
    n: usize,
    w: &[f32],
    hd: usize,
    acc: &mut [f32],
) {
    let g = acc.len() / hd;
    let mut v = [_mm512_setzero_ps(); MAX_HD / 16];
    for p in 0..n {
        // SAFETY: row `p` lies inside `rows` (checked by the caller).
        unsafe { load_row(rows.as_ptr().add(p * stride), hd, &mut v) };
        for h in 0..g {
            let a = _mm512_set1_ps(w[h * n + p]);
            for (j, &vv) in v.iter().enumerate().take(hd / 16) {
                // SAFETY: `h * hd + 16 j + 16 <= acc.len()`.
                unsafe {
                    let o = acc.as_mut_ptr().add(h * hd + 16 * j);
                    _mm512_storeu_ps(o, _mm512_fmadd_ps(vv, a, _mm512_loadu_ps(o)));
                }
            }
        }
    }
}
