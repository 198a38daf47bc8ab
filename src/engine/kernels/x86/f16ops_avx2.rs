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

/// `H` heads × `V` vectors of 8 positions from `p0` (`lanes` of the last vector valid): each
/// key vector is converted once for all `H` heads, each query value broadcast once for all `V`
/// vectors; the `H · V` accumulators stay in registers.
///
/// # Safety
/// AVX2/FMA/F16C; the lengths `f16ops::scores` checks; `p0 + 8 (V - 1) + lanes <= n`, heads
/// `h0..h0 + H` in `q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_pass<const H: usize, const V: usize>(
    kt: &[f16],
    stride: usize,
    (p0, lanes): (usize, usize),
    q: &[f32],
    hd: usize,
    h0: usize,
    scale: __m256,
    (out, n): (&mut [f32], usize),
) {
    let mut acc = [[_mm256_setzero_ps(); V]; H];
    for i in 0..hd {
        // SAFETY: `i * stride + p0 + 8 (V - 1) + lanes <= kt.len()` (the caller's lengths).
        let k: [__m256; V] = std::array::from_fn(|v| unsafe {
            let w = if v + 1 == V { lanes } else { 8 };
            load8(kt.as_ptr().add(i * stride + p0 + 8 * v), w)
        });
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: head `h0 + j` of `q` (the caller's lengths).
            let qv = _mm256_set1_ps(unsafe { *q.get_unchecked((h0 + j) * hd + i) });
            for (a, &k) in a.iter_mut().zip(&k) {
                *a = _mm256_fmadd_ps(k, qv, *a);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        for (v, &a) in a.iter().enumerate() {
            let w = if v + 1 == V { lanes } else { 8 };
            // SAFETY: `w` floats from `(h0 + j) * n + p0 + 8v` lie inside `out`.
            unsafe {
                store8(
                    out.as_mut_ptr().add((h0 + j) * n + p0 + 8 * v),
                    _mm256_mul_ps(a, scale),
                    w,
                )
            };
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
    // 16 positions at a time (two vectors), then the rest.
    let mut p0 = 0;
    while p0 < n {
        let two = n - p0 > 8;
        let lanes = if two { (n - p0 - 8).min(8) } else { n - p0 };
        let mut h0 = 0;
        while h0 < g {
            let h = (g - h0).min(if two { 4 } else { 8 });
            let args = (kt, stride, (p0, lanes), q, hd, h0, vs);
            // SAFETY: same features; lengths as checked by the caller.
            unsafe {
                let (kt, st, pl, q, hd, h0, vs) = args;
                let o = (&mut *out, n);
                match (two, h) {
                    (true, 1) => scores_pass::<1, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (true, 2) => scores_pass::<2, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (true, 3) => scores_pass::<3, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (true, _) => scores_pass::<4, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (false, 1) => scores_pass::<1, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (false, 2) => scores_pass::<2, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (false, 3) => scores_pass::<3, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (false, 4) => scores_pass::<4, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (false, 5) => scores_pass::<5, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (false, 6) => scores_pass::<6, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (false, 7) => scores_pass::<7, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (false, _) => scores_pass::<8, 1>(kt, st, pl, q, hd, h0, vs, o),
                }
            }
            h0 += h;
        }
        p0 += if two { 16 } else { 8 };
    }
}

/// `H` heads over 32 columns from `i0` (`cols` of them, a multiple of 8): each value row's
/// columns are converted once for all `H` heads. `FULL`: `cols` is 32, so the loops over the
/// vectors have a constant bound and the accumulators stay in registers (with `cols` known
/// only at run time they lived in memory: `accumulate/64x3/32` 0.82x the time with it).
///
/// # Safety
/// AVX2/FMA/F16C; the lengths `f16ops::accumulate` checks; heads `h0..h0 + H`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_pass<const H: usize, const FULL: bool>(
    rows: &[f16],
    stride: usize,
    n: usize,
    w: &[f32],
    hd: usize,
    (h0, i0, cols): (usize, usize, usize),
    acc: &mut [f32],
) {
    let vn = if FULL { 4 } else { cols / 8 };
    // SAFETY: `cols` floats of heads `h0..h0 + H` from `i0`, and row `p`'s halves (the
    // caller's lengths).
    unsafe {
        let base = acc.as_mut_ptr();
        let o = |h: usize| base.add((h0 + h) * hd + i0);
        let mut a: [[__m256; 4]; H] = std::array::from_fn(|h| {
            std::array::from_fn(|j| {
                if j < vn {
                    _mm256_loadu_ps(o(h).add(8 * j))
                } else {
                    _mm256_setzero_ps()
                }
            })
        });
        for p in 0..n {
            let row = rows.as_ptr().add(p * stride + i0);
            let v: [__m256; 4] = std::array::from_fn(|j| {
                if j < vn {
                    load8(row.add(8 * j), 8)
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (h, a) in a.iter_mut().enumerate() {
                let s = _mm256_set1_ps(*w.get_unchecked((h0 + h) * n + p));
                for j in 0..vn {
                    a[j] = _mm256_fmadd_ps(v[j], s, a[j]);
                }
            }
        }
        for (h, a) in a.iter().enumerate() {
            for (j, &a) in a[..vn].iter().enumerate() {
                _mm256_storeu_ps(o(h).add(8 * j), a);
            }
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
    // 32 columns of up to two heads in registers across all positions: their 8 accumulators,
    // the 4 converted row vectors and the broadcast weight fit the 16 registers (three heads
    // spilled: `accumulate/64x3/32` 0.67x the time with two, `64x7` 0.60x).
    for i0 in (0..hd).step_by(32) {
        let cols = (hd - i0).min(32);
        let mut h0 = 0;
        while h0 < g {
            let h = (g - h0).min(2);
            let at = (h0, i0, cols);
            // SAFETY: same features; lengths as checked by the caller.
            unsafe {
                match (h, cols == 32) {
                    (1, true) => accumulate_pass::<1, true>(rows, stride, n, w, hd, at, acc),
                    (_, true) => accumulate_pass::<2, true>(rows, stride, n, w, hd, at, acc),
                    (1, false) => accumulate_pass::<1, false>(rows, stride, n, w, hd, at, acc),
                    (_, false) => accumulate_pass::<2, false>(rows, stride, n, w, hd, at, acc),
                }
            }
            h0 += h;
        }
    }
}

/// Most heads [`tree_heads`] takes in one pass: their `4 · TREE_G` lane accumulators and the
/// key vector fill the 16 registers.
const TREE_G: usize = 3;
// The dispatches in `scores_tree` and `mad_f16_span` take one to three heads a pass.
const _: () = assert!(TREE_G == 3 && SPAN_G == 3);

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
        let mut h0 = 0;
        while h0 < g {
            let left = (g - h0).min(TREE_G);
            let q = &q[h0 * hd..(h0 + left) * hd];
            macro_rules! heads {
                ($g:literal) => {{
                    // SAFETY: `hd` rows of `lanes` halves from `p0` in `kt` (the caller's
                    // lengths), `$g` heads in `q`.
                    let r = unsafe { tree_heads::<$g>(keys, q) };
                    for (h, r) in r.into_iter().enumerate() {
                        // SAFETY: `lanes` floats from `(h0 + h) * n + p0` lie inside `out`.
                        unsafe {
                            store8(
                                out.as_mut_ptr().add((h0 + h) * n + p0),
                                _mm256_mul_ps(r, vs),
                                lanes,
                            )
                        };
                    }
                }};
            }
            match left {
                1 => heads!(1),
                2 => heads!(2),
                _ => heads!(3),
            }
            h0 += left;
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

/// The unscaled scores of `G` heads (`q`, one after another) for 8 positions from `p0`, in
/// `ggml_vec_dot_f16`'s order (AVX-512 build, as `f16ops::scores_tree_scalar`): per lane `l`
/// of 16, four accumulators over the 64-wide steps folded pairwise (`c[l]`), then
/// `t[i] = c[i + 8] + c[i]`, `u[i] = t[i + 4] + t[i]`, `(u0 + u2) + (u1 + u3)`. Each key vector
/// is loaded and converted once for all `G` heads (the AVX-512 kernel's structure), and the
/// lanes are visited in the order that lets the fold proceed as they come.
///
/// # Safety
/// AVX2/FMA/F16C; `keys` inside `kt`, `hd` a multiple of 64; `G * hd` floats in `q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tree_heads<const G: usize>(keys: Keys, q: &[f32]) -> [__m256; G] {
    let mut a = [_mm256_setzero_ps(); G];
    let mut r = [_mm256_setzero_ps(); G];
    for (k, i) in [0, 2, 1, 3].into_iter().enumerate() {
        // SAFETY: the caller's lengths, lanes `i`, `i + 4`, `i + 8`, `i + 12` below 16.
        let (ci, ci8) = unsafe { (lane_sums::<G>(keys, q, i), lane_sums::<G>(keys, q, i + 8)) };
        let t: [__m256; G] = std::array::from_fn(|h| _mm256_add_ps(ci8[h], ci[h]));
        // SAFETY: as above.
        let (ci4, ci12) = unsafe {
            (
                lane_sums::<G>(keys, q, i + 4),
                lane_sums::<G>(keys, q, i + 12),
            )
        };
        for h in 0..G {
            let u = _mm256_add_ps(_mm256_add_ps(ci12[h], ci4[h]), t[h]);
            match k {
                0 => a[h] = u,
                1 => a[h] = _mm256_add_ps(a[h], u),
                2 => r[h] = u,
                _ => r[h] = _mm256_add_ps(a[h], _mm256_add_ps(r[h], u)),
            }
        }
    }
    r
}

/// `c[l]` of [`tree_heads`] for each of the `G` heads.
///
/// # Safety
/// As [`tree_heads`], with `l < 16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane_sums<const G: usize>(keys: Keys, q: &[f32], l: usize) -> [__m256; G] {
    let Keys {
        kt,
        stride,
        p0,
        lanes,
        hd,
    } = keys;
    let mut s = [[_mm256_setzero_ps(); 4]; G];
    for st in (0..hd).step_by(64) {
        for j in 0..4 {
            let i = st + 16 * j + l;
            // SAFETY: row `i < hd` of `kt`, and `q[h * hd + i]` (the caller's lengths).
            unsafe {
                let k = load8(kt.as_ptr().add(i * stride + p0), lanes);
                for (h, s) in s.iter_mut().enumerate() {
                    let qi = _mm256_set1_ps(*q.get_unchecked(h * hd + i));
                    s[j] = _mm256_fmadd_ps(k, qi, s[j]);
                }
            }
        }
    }
    std::array::from_fn(|h| {
        let s = &s[h];
        _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]))
    })
}

/// `f32` rounded to `f16` and back, as storing and reloading an `f16` accumulator rounds it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_f16(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// Columns of each head that [`heads_span`] keeps in registers (4 vectors of 8): with up to
/// [`SPAN_G`] heads, 12 accumulators and the 4 converted row vectors they share, a spill or
/// two beyond the 16 registers.
const SPAN_COLS: usize = 32;
/// Most heads [`heads_span`] takes in one pass. Each accumulator is a chain of a multiply-add
/// and two conversions (the `f16` rounding) per row, so more chains in flight pay for the
/// spills: two heads a pass measured slower than three (`mad_f16_span/64x3/32`).
const SPAN_G: usize = 3;

/// The heads' `f16` accumulators over a run of value rows (`f16ops::mad_f16_span`), up to
/// [`SPAN_G`] heads and [`SPAN_COLS`] columns at a time, so that each value row is converted
/// once for all of them; the same roundings, the same bits as the portable loop.
///
/// # Safety
/// AVX2/FMA/F16C; the lengths `f16ops::mad_f16_span` checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mad_f16_span(y: &mut [f16], hd: usize, run: &ValueRun) {
    let g = y.len() / hd;
    let mut h0 = 0;
    while h0 < g {
        let left = (g - h0).min(SPAN_G);
        macro_rules! span {
            ($g:literal) => {
                if hd.is_multiple_of(SPAN_COLS) {
                    heads_span::<$g, true>(y, hd, h0, run)
                } else {
                    heads_span::<$g, false>(y, hd, h0, run)
                }
            };
        }
        // SAFETY: heads `h0..h0 + G` of `y`, their weights, and the rows (the caller's lengths).
        unsafe {
            match left {
                1 => span!(1),
                2 => span!(2),
                _ => span!(3),
            }
        }
        h0 += left;
    }
}

/// Heads `h0..h0 + G` of [`mad_f16_span`]; `FULL`: the head size is a multiple of
/// [`SPAN_COLS`], so every 8-column group is whole.
///
/// # Safety
/// As [`mad_f16_span`], with `h0 + G` heads in `y`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn heads_span<const G: usize, const FULL: bool>(
    y: &mut [f16],
    hd: usize,
    h0: usize,
    run: &ValueRun,
) {
    const C: usize = SPAN_COLS / 8;
    let ValueRun {
        rows,
        stride,
        w,
        raise,
        wstride,
        n,
    } = *run;
    let one = _mm256_set1_ps(1.0);
    for i0 in (0..hd).step_by(SPAN_COLS) {
        let ks: [usize; C] = if FULL {
            [8; C]
        } else {
            std::array::from_fn(|c| hd.saturating_sub(i0 + 8 * c).min(8))
        };
        // SAFETY: `ks[c]` halves at `i0 + 8 c` of each head of `y` and of every row, and
        // weights `(h0 + h) * wstride + p` for `p < n` (the caller's lengths).
        unsafe {
            let yh = |h: usize| y.as_ptr().add((h0 + h) * hd + i0);
            let mut acc: [[__m256; C]; G] = std::array::from_fn(|h| {
                std::array::from_fn(|c| match ks[c] {
                    0 => _mm256_setzero_ps(),
                    k => load8(yh(h).add(8 * c), k),
                })
            });
            for p in 0..n {
                let row = rows.as_ptr().add(p * stride + i0);
                let v: [__m256; C] = std::array::from_fn(|c| match ks[c] {
                    0 => _mm256_setzero_ps(),
                    k => load8(row.add(8 * c), k),
                });
                for (h, acc) in acc.iter_mut().enumerate() {
                    let at = (h0 + h) * wstride + p;
                    let e = *w.get_unchecked(at);
                    let vs = if *raise.get_unchecked(at) {
                        // The maximum rose: rescale (`ggml_vec_scale_f16`), then add the row
                        // once.
                        let ev = _mm256_set1_ps(e);
                        *acc = acc.map(|a| round_f16(_mm256_mul_ps(a, ev)));
                        one
                    } else {
                        _mm256_set1_ps(e)
                    };
                    for c in 0..C {
                        if ks[c] > 0 {
                            acc[c] = round_f16(_mm256_fmadd_ps(v[c], vs, acc[c]));
                        }
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                for c in 0..C {
                    if ks[c] > 0 {
                        let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(acc[c]);
                        let mut b = [0u16; 8];
                        _mm_storeu_si128(b.as_mut_ptr().cast(), r);
                        let dst = y.as_mut_ptr().add((h0 + h) * hd + i0 + 8 * c);
                        std::ptr::copy_nonoverlapping(b.as_ptr(), dst.cast(), ks[c]);
                    }
                }
            }
        }
    }
}
