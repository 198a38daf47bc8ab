//! AVX2 versions of the attention kernels in `kernels/f16ops.rs`, for CPUs without AVX-512:
//! the same loops as `f16ops.rs`'s AVX-512 ones on 8 lanes instead of 16, F16C for the
//! conversions. The llama.cpp-order kernels ([`scores_tree`], [`mad_f16_span`]) give the very
//! bits of the portable ones.

use half::f16;

use super::super::f16ops::ValueRun;
use std::arch::x86_64::*;

/// Largest head size these kernels take.
pub const MAX_HD: usize = 256;

/// Loads 8 halves from `p` (only the first `n`, the rest zero) as `f32`.
///
/// # Safety
/// AVX2/F16C; `n.min(8)` readable halves at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(p: *const f16, n: usize) -> __m256 {
    // SAFETY: the caller guarantees `n` halves at `p`.
    unsafe {
        if n >= 8 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            let mut b = [0u16; 8];
            std::ptr::copy_nonoverlapping(p.cast::<u16>(), b.as_mut_ptr(), n);
            _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().cast()))
        }
    }
}

/// Stores the first `n` (at most 8) lanes of `v` at `p`.
///
/// # Safety
/// `n.min(8)` writable floats at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store8(p: *mut f32, v: __m256, n: usize) {
    // SAFETY: as the caller guarantees.
    unsafe {
        if n >= 8 {
            _mm256_storeu_ps(p, v);
        } else {
            let mut b = [0f32; 8];
            _mm256_storeu_ps(b.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(b.as_ptr(), p, n);
        }
    }
}

/// # Safety
/// AVX2/FMA/F16C; the lengths `f16ops::scores` checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores(
    kt: &[f16],
    stride: usize,
    n: usize,
    q: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let g = q.len() / hd;
    let vs = _mm256_set1_ps(scale);
    for p0 in (0..n).step_by(8) {
        let lanes = (n - p0).min(8);
        let mut h0 = 0;
        while h0 < g {
            let hn = (g - h0).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for i in 0..hd {
                // SAFETY: `i * stride + p0 + lanes <= kt.len()` (checked by the caller).
                let k = unsafe { load8(kt.as_ptr().add(i * stride + p0), lanes) };
                for (j, a) in acc[..hn].iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(k, _mm256_set1_ps(q[(h0 + j) * hd + i]), *a);
                }
            }
            for (j, &a) in acc[..hn].iter().enumerate() {
                // SAFETY: `lanes` floats from `(h0 + j) * n + p0` lie inside `out`.
                unsafe {
                    store8(
                        out.as_mut_ptr().add((h0 + j) * n + p0),
                        _mm256_mul_ps(a, vs),
                        lanes,
                    )
                };
            }
            h0 += hn;
        }
    }
}

/// # Safety
/// AVX2/FMA/F16C; the lengths `f16ops::accumulate` checks; `hd` a multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate(
    rows: &[f16],
    stride: usize,
    n: usize,
    w: &[f32],
    hd: usize,
    acc: &mut [f32],
) {
    let g = acc.len() / hd;
    // Up to 64 columns of one head in registers across all positions.
    for h in 0..g {
        for i0 in (0..hd).step_by(64) {
            let vn = ((hd - i0) / 8).min(8);
            // SAFETY: `vn * 8` floats of head `h` from `i0`, and row `p`'s halves (the
            // caller's lengths).
            unsafe {
                let o = acc.as_mut_ptr().add(h * hd + i0);
                let mut a: [__m256; 8] = std::array::from_fn(|j| {
                    if j < vn {
                        _mm256_loadu_ps(o.add(8 * j))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                for p in 0..n {
                    let s = _mm256_set1_ps(w[h * n + p]);
                    let row = rows.as_ptr().add(p * stride + i0);
                    for (j, a) in a[..vn].iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(load8(row.add(8 * j), 8), s, *a);
                    }
                }
                for (j, &a) in a[..vn].iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * j), a);
                }
            }
        }
    }
}

/// # Safety
/// AVX2/FMA/F16C; the lengths `f16ops::scores_tree` checks; `hd` a multiple of 64.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_tree(
    kt: &[f16],
    stride: usize,
    n: usize,
    q: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let g = q.len() / hd;
    let vs = _mm256_set1_ps(scale);
    for p0 in (0..n).step_by(8) {
        let lanes = (n - p0).min(8);
        let keys = Keys {
            kt,
            stride,
            p0,
            lanes,
            hd,
        };
        for h in 0..g {
            // SAFETY: `hd` rows of `lanes` halves from `p0` in `kt` (the caller's lengths),
            // head `h` in `q`; `lanes` floats from `h * n + p0` inside `out`.
            unsafe {
                let r = tree_head(keys, &q[h * hd..(h + 1) * hd]);
                store8(
                    out.as_mut_ptr().add(h * n + p0),
                    _mm256_mul_ps(r, vs),
                    lanes,
                );
            }
        }
    }
}

/// 8 positions of one KV head's transposed keys: `hd` rows of `lanes` valid halves from `p0`,
/// `stride` apart.
#[derive(Clone, Copy)]
struct Keys<'a> {
    kt: &'a [f16],
    stride: usize,
    p0: usize,
    lanes: usize,
    hd: usize,
}

/// The unscaled scores of one head for 8 positions from `p0`, in `ggml_vec_dot_f16`'s order
/// (AVX-512 build, as `f16ops::scores_tree_scalar`): per lane `l` of 16, four accumulators
/// over the 64-wide steps folded pairwise (`c[l]`), then `t[i] = c[i + 8] + c[i]`,
/// `u[i] = t[i + 4] + t[i]`, `(u0 + u2) + (u1 + u3)`.
///
/// # Safety
/// AVX2/FMA/F16C; `keys` inside `kt`, `hd` a multiple of 64; `hd` floats in `q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tree_head(keys: Keys, q: &[f32]) -> __m256 {
    // SAFETY: the caller's lengths, lanes below 16.
    let c = |l: usize| unsafe { lane_sum(keys, q, l) };
    let u: [__m256; 4] = std::array::from_fn(|i| {
        let t = _mm256_add_ps(c(i + 8), c(i));
        let t4 = _mm256_add_ps(c(i + 12), c(i + 4));
        _mm256_add_ps(t4, t)
    });
    _mm256_add_ps(_mm256_add_ps(u[0], u[2]), _mm256_add_ps(u[1], u[3]))
}

/// `c[l]` of [`tree_head`].
///
/// # Safety
/// As [`tree_head`], with `l < 16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane_sum(keys: Keys, q: &[f32], l: usize) -> __m256 {
    let Keys {
        kt,
        stride,
        p0,
        lanes,
        hd,
    } = keys;
    let mut s = [_mm256_setzero_ps(); 4];
    for st in (0..hd).step_by(64) {
        for (j, s) in s.iter_mut().enumerate() {
            let i = st + 16 * j + l;
            // SAFETY: row `i < hd` of `kt`, and `q[i]` (the caller's lengths).
            unsafe {
                let k = load8(kt.as_ptr().add(i * stride + p0), lanes);
                *s = _mm256_fmadd_ps(k, _mm256_set1_ps(*q.get_unchecked(i)), *s);
            }
        }
    }
    _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]))
}

/// `f32` rounded to `f16` and back, as storing and reloading an `f16` accumulator rounds it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_f16(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// The heads' `f16` accumulators over a run of value rows (`f16ops::mad_f16_span`), one head
/// and 64 columns at a time; the same roundings, the same bits as the portable loop.
///
/// # Safety
/// AVX2/FMA/F16C; the lengths `f16ops::mad_f16_span` checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mad_f16_span(y: &mut [f16], hd: usize, run: &ValueRun) {
    let ValueRun {
        rows,
        stride,
        w,
        raise,
        wstride,
        n,
    } = *run;
    let one = _mm256_set1_ps(1.0);
    for h in 0..y.len() / hd {
        for i0 in (0..hd).step_by(64) {
            let ks: [usize; 8] = std::array::from_fn(|c| hd.saturating_sub(i0 + 8 * c).min(8));
            // SAFETY: `ks[c]` halves at `i0 + 8 c` of head `h` of `y` and of every row, and
            // weights `h * wstride + p` for `p < n` (the caller's lengths).
            unsafe {
                let yh = y.as_mut_ptr().add(h * hd + i0);
                let mut acc: [__m256; 8] = std::array::from_fn(|c| match ks[c] {
                    0 => _mm256_setzero_ps(),
                    k => load8(yh.add(8 * c), k),
                });
                for p in 0..n {
                    let row = rows.as_ptr().add(p * stride + i0);
                    let at = h * wstride + p;
                    let e = *w.get_unchecked(at);
                    let vs = if *raise.get_unchecked(at) {
                        // The maximum rose: rescale (`ggml_vec_scale_f16`), then add the row
                        // once.
                        let ev = _mm256_set1_ps(e);
                        acc = acc.map(|a| round_f16(_mm256_mul_ps(a, ev)));
                        one
                    } else {
                        _mm256_set1_ps(e)
                    };
                    for c in 0..8 {
                        if ks[c] > 0 {
                            let v = load8(row.add(8 * c), ks[c]);
                            acc[c] = round_f16(_mm256_fmadd_ps(v, vs, acc[c]));
                        }
                    }
                }
                for c in 0..8 {
                    if ks[c] > 0 {
                        let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(acc[c]);
                        let mut b = [0u16; 8];
                        _mm_storeu_si128(b.as_mut_ptr().cast(), r);
                        std::ptr::copy_nonoverlapping(b.as_ptr(), yh.add(8 * c).cast(), ks[c]);
                    }
                }
            }
        }
    }
}
