//! AVX-512 versions of the attention kernels in `kernels/f16ops.rs`.

use half::f16;

use super::super::f16ops::ValueRun;
use std::arch::x86_64::*;

/// Largest head size these kernels take.
pub const MAX_HD: usize = 256;

/// Loads 16 halves from `p` (only the first `n`, the rest zero) as `f32`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load16(p: *const f16, n: usize) -> __m512 {
    // SAFETY: the caller guarantees `n` halves at `p`.
    unsafe {
        if n >= 16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            let m = ((1u32 << n) - 1) as u16;
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast()))
        }
    }
}

/// `H` heads of `16 · P` positions from `p0` (`lanes` of them valid), accumulators in
/// registers. Each accumulator sums its 16 positions over the dimensions in order, whatever
/// `P`: two vectors per head only give the fused multiply-adds of few heads independent chains
/// to overlap (3 heads of one vector each wait on their 4-cycle latency).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_pass<const H: usize, const P: usize>(
    kt: &[f16],
    stride: usize,
    (p0, lanes): (usize, usize),
    q: &[f32],
    hd: usize,
    h0: usize,
    scale: __m512,
    (out, n): (&mut [f32], usize),
) {
    let mut acc = [[_mm512_setzero_ps(); P]; H];
    let part = |v: usize| lanes.saturating_sub(16 * v).min(16);
    for i in 0..hd {
        let mut k = [_mm512_setzero_ps(); P];
        for (v, k) in k.iter_mut().enumerate() {
            // SAFETY: `i * stride + p0 + lanes <= kt.len()` (checked by the caller).
            *k = unsafe { load16(kt.as_ptr().add(i * stride + p0 + 16 * v), part(v)) };
        }
        for (j, a) in acc.iter_mut().enumerate() {
            let qv = _mm512_set1_ps(q[(h0 + j) * hd + i]);
            for (a, &k) in a.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(k, qv, *a);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        for (v, &a) in a.iter().enumerate() {
            let m = ((1u32 << part(v)) - 1) as u16;
            // SAFETY: `part(v)` floats from `(h0 + j) * n + p0 + 16 v` lie inside `out`.
            unsafe {
                let o = out.as_mut_ptr().add((h0 + j) * n + p0 + 16 * v);
                _mm512_mask_storeu_ps(o, m, _mm512_mul_ps(a, scale));
            }
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL; the lengths `f16ops::scores` checks; `hd` a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
    let vs = _mm512_set1_ps(scale);
    let mut p0 = 0;
    while p0 < n {
        // Two vectors of positions a pass while both have some and the heads are few.
        let two = n - p0 > 16 && g <= 4;
        let lanes = (n - p0).min(if two { 32 } else { 16 });
        let mut h0 = 0;
        while h0 < g {
            let h = (g - h0).min(8);
            let args = (kt, stride, (p0, lanes), q, hd, h0, vs);
            // SAFETY: same features; lengths as checked by the caller.
            unsafe {
                let (kt, st, pl, q, hd, h0, vs) = args;
                let o = (&mut *out, n);
                match (h, two) {
                    (1, true) => scores_pass::<1, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (2, true) => scores_pass::<2, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (3, true) => scores_pass::<3, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (_, true) => scores_pass::<4, 2>(kt, st, pl, q, hd, h0, vs, o),
                    (1, _) => scores_pass::<1, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (2, _) => scores_pass::<2, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (3, _) => scores_pass::<3, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (4, _) => scores_pass::<4, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (5, _) => scores_pass::<5, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (6, _) => scores_pass::<6, 1>(kt, st, pl, q, hd, h0, vs, o),
                    (7, _) => scores_pass::<7, 1>(kt, st, pl, q, hd, h0, vs, o),
                    _ => scores_pass::<8, 1>(kt, st, pl, q, hd, h0, vs, o),
                }
            }
            h0 += h;
        }
        p0 += lanes;
    }
}

/// `V` vectors per head, `H` heads per pass: the accumulators stay in registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn accumulate_pass<const V: usize, const H: usize>(
    rows: &[f16],
    stride: usize,
    n: usize,
    w: &[f32],
    h0: usize,
    acc: &mut [f32],
) {
    let hd = 16 * V;
    let mut a = [[_mm512_setzero_ps(); V]; H];
    for (h, a) in a.iter_mut().enumerate() {
        for (j, a) in a.iter_mut().enumerate() {
            // SAFETY: head `h0 + h` of `acc` has `hd` floats.
            *a = unsafe { _mm512_loadu_ps(acc.as_ptr().add((h0 + h) * hd + 16 * j)) };
        }
    }
    for p in 0..n {
        let mut v = [_mm512_setzero_ps(); V];
        for (j, v) in v.iter_mut().enumerate() {
            // SAFETY: row `p` (`hd` halves) lies inside `rows` (checked by the caller).
            *v = unsafe { load16(rows.as_ptr().add(p * stride + 16 * j), 16) };
        }
        for (h, a) in a.iter_mut().enumerate() {
            let s = _mm512_set1_ps(w[(h0 + h) * n + p]);
            for (a, &v) in a.iter_mut().zip(&v) {
                *a = _mm512_fmadd_ps(v, s, *a);
            }
        }
    }
    for (h, a) in a.iter().enumerate() {
        for (j, &a) in a.iter().enumerate() {
            // SAFETY: head `h0 + h` of `acc` has `hd` floats.
            unsafe {
                _mm512_storeu_ps(acc.as_mut_ptr().add((h0 + h) * hd + 16 * j), a);
            }
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL; the lengths `f16ops::accumulate` checks; `hd` a multiple of 16, at most
/// [`MAX_HD`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn accumulate(
    rows: &[f16],
    stride: usize,
    n: usize,
    w: &[f32],
    hd: usize,
    acc: &mut [f32],
) {
    let g = acc.len() / hd;
    macro_rules! passes {
        ($v:literal, $h:literal) => {{
            let mut h0 = 0;
            while h0 < g {
                // SAFETY: same features; lengths as checked by the caller.
                unsafe {
                    match g - h0 {
                        1 => accumulate_pass::<$v, 1>(rows, stride, n, w, h0, acc),
                        2 if $h >= 2 => accumulate_pass::<$v, 2>(rows, stride, n, w, h0, acc),
                        3 if $h >= 3 => accumulate_pass::<$v, 3>(rows, stride, n, w, h0, acc),
                        _ if $h >= 4 => accumulate_pass::<$v, 4>(rows, stride, n, w, h0, acc),
                        _ => accumulate_pass::<$v, $h>(rows, stride, n, w, h0, acc),
                    }
                }
                h0 += $h.min(g - h0).max(1);
            }
        }};
    }
    match hd / 16 {
        1 => passes!(1, 4),
        2 => passes!(2, 4),
        3 => passes!(3, 4),
        4 => passes!(4, 4),
        8 => passes!(8, 2),
        16 => passes!(16, 1),
        vn => {
            // Other sizes: one head at a time, vectors in a loop.
            for h in 0..g {
                for p in 0..n {
                    let s = _mm512_set1_ps(w[h * n + p]);
                    for j in 0..vn {
                        // SAFETY: in bounds as above.
                        unsafe {
                            let v = load16(rows.as_ptr().add(p * stride + 16 * j), 16);
                            let o = acc.as_mut_ptr().add(h * hd + 16 * j);
                            _mm512_storeu_ps(o, _mm512_fmadd_ps(v, s, _mm512_loadu_ps(o)));
                        }
                    }
                }
            }
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL; the lengths `f16ops::scores_tree` checks; `hd` a multiple of 64.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
    let vs = _mm512_set1_ps(scale);
    for p0 in (0..n).step_by(16) {
        let lanes = (n - p0).min(16);
        let m = ((1u32 << lanes) - 1) as u16;
        let keys = Keys {
            kt,
            stride,
            p0,
            lanes,
            hd,
        };
        let mut h0 = 0;
        while h0 < g {
            let left = (g - h0).min(3);
            let q = &q[h0 * hd..(h0 + left) * hd];
            macro_rules! heads {
                ($g:literal) => {{
                    // SAFETY: `hd` rows of `lanes` halves from `p0` in `kt` (the caller's
                    // lengths), `$g` heads in `q`.
                    let r = unsafe { tree_heads::<$g>(keys, q) };
                    for (h, r) in r.into_iter().enumerate() {
                        // SAFETY: `lanes` floats from `(h0 + h) * n + p0` lie inside `out`.
                        unsafe {
                            _mm512_mask_storeu_ps(
                                out.as_mut_ptr().add((h0 + h) * n + p0),
                                m,
                                _mm512_mul_ps(r, vs),
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

/// 16 positions of one KV head's transposed keys: `hd` rows of `lanes` valid halves from `p0`,
/// `stride` apart.
#[derive(Clone, Copy)]
struct Keys<'a> {
    kt: &'a [f16],
    stride: usize,
    p0: usize,
    lanes: usize,
    hd: usize,
}

/// The unscaled scores of `G` heads (`q`, one after another) for 16 positions from `p0`, in
/// `ggml_vec_dot_f16`'s order: per lane `l`, four accumulators over the 64-wide steps folded
/// pairwise (`c[l]`), then the lanes folded as [`reduce16`](super::super::f16ops::reduce16)
/// does (`t[i] = c[i + 8] + c[i]`, `u[i] = t[i + 4] + t[i]`, `(u0 + u2) + (u1 + u3)`). Each key
/// vector is loaded and converted once for all `G` heads, and the lanes are visited in the
/// order that lets the fold proceed as they come, so that few of them are live at once.
///
/// # Safety
/// AVX-512 F/BW/VL; `keys` inside `kt`, `hd` a multiple of 64; `G * hd` floats in `q`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tree_heads<const G: usize>(keys: Keys, q: &[f32]) -> [__m512; G] {
    let mut a = [_mm512_setzero_ps(); G];
    let mut r = [_mm512_setzero_ps(); G];
    for (k, i) in [0, 2, 1, 3].into_iter().enumerate() {
        // SAFETY: the caller's lengths, lanes `i`, `i + 4`, `i + 8`, `i + 12` below 16.
        let (ci, ci8, ci4, ci12) = unsafe {
            (
                lane_sums::<G>(keys, q, i),
                lane_sums::<G>(keys, q, i + 8),
                lane_sums::<G>(keys, q, i + 4),
                lane_sums::<G>(keys, q, i + 12),
            )
        };
        for h in 0..G {
            let u = _mm512_add_ps(_mm512_add_ps(ci12[h], ci4[h]), _mm512_add_ps(ci8[h], ci[h]));
            match k {
                0 => a[h] = u,
                1 => a[h] = _mm512_add_ps(a[h], u),
                2 => r[h] = u,
                _ => r[h] = _mm512_add_ps(a[h], _mm512_add_ps(r[h], u)),
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn lane_sums<const G: usize>(keys: Keys, q: &[f32], l: usize) -> [__m512; G] {
    let Keys {
        kt,
        stride,
        p0,
        lanes,
        hd,
    } = keys;
    let mut s = [[_mm512_setzero_ps(); 4]; G];
    for st in (0..hd).step_by(64) {
        for j in 0..4 {
            let i = st + 16 * j + l;
            // SAFETY: row `i < hd` of `kt`, and `q[h * hd + i]` (the caller's lengths).
            unsafe {
                let k = load16(kt.as_ptr().add(i * stride + p0), lanes);
                for (h, s) in s.iter_mut().enumerate() {
                    let qi = _mm512_set1_ps(*q.get_unchecked(h * hd + i));
                    s[j] = _mm512_fmadd_ps(k, qi, s[j]);
                }
            }
        }
    }
    let mut c = [_mm512_setzero_ps(); G];
    for h in 0..G {
        c[h] = _mm512_add_ps(
            _mm512_add_ps(s[h][0], s[h][2]),
            _mm512_add_ps(s[h][1], s[h][3]),
        );
    }
    c
}

/// `f32` rounded to `f16` and back, as storing and reloading an `f16` accumulator rounds it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round_f16(x: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// The heads' `f16` accumulators over a run of value rows (`f16ops::mad_f16_span`), up to
/// four heads at a time, 64 columns at a time; same roundings, same bits as one head at a time.
///
/// # Safety
/// AVX-512 F/BW/VL; the lengths `f16ops::mad_f16_span` checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn mad_f16_span(y: &mut [f16], hd: usize, run: &ValueRun) {
    let g = y.len() / hd;
    let mut h0 = 0;
    while h0 < g {
        let left = g - h0;
        macro_rules! span {
            ($g:literal) => {
                if hd.is_multiple_of(64) {
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
                3 => span!(3),
                _ => span!(4),
            }
        }
        h0 += left.min(4);
    }
}

/// Heads `h0..h0 + G` of [`mad_f16_span`]; `FULL`: the head size is a multiple of 64, so
/// every 16-column group is whole.
///
/// # Safety
/// As [`mad_f16_span`], with `h0 + G` heads in `y`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn heads_span<const G: usize, const FULL: bool>(
    y: &mut [f16],
    hd: usize,
    h0: usize,
    run: &ValueRun,
) {
    let ValueRun {
        rows,
        stride,
        w,
        raise,
        wstride,
        n,
    } = *run;
    let one = _mm512_set1_ps(1.0);
    for i0 in (0..hd).step_by(64) {
        let ks: [usize; 4] = if FULL {
            [16; 4]
        } else {
            std::array::from_fn(|c| hd.saturating_sub(i0 + 16 * c).min(16))
        };
        // SAFETY: `ks[c]` halves at `i0 + 16 c` of each head of `y` and of every row, and
        // weights `(h0 + h) * wstride + p` for `p < n` (the caller's lengths).
        unsafe {
            let yh = |h: usize| y.as_ptr().add((h0 + h) * hd + i0);
            let mut acc: [[__m512; 4]; G] = std::array::from_fn(|h| {
                std::array::from_fn(|c| match ks[c] {
                    0 => _mm512_setzero_ps(),
                    k => load16(yh(h).add(16 * c), k),
                })
            });
            for p in 0..n {
                let row = rows.as_ptr().add(p * stride + i0);
                let v: [__m512; 4] = std::array::from_fn(|c| match ks[c] {
                    0 => _mm512_setzero_ps(),
                    k => load16(row.add(16 * c), k),
                });
                for (h, acc) in acc.iter_mut().enumerate() {
                    let at = (h0 + h) * wstride + p;
                    let e = *w.get_unchecked(at);
                    let vs = if *raise.get_unchecked(at) {
                        // The maximum rose: rescale (`ggml_vec_scale_f16`), then add the row
                        // once.
                        let ev = _mm512_set1_ps(e);
                        *acc = acc.map(|a| round_f16(_mm512_mul_ps(a, ev)));
                        one
                    } else {
                        _mm512_set1_ps(e)
                    };
                    for c in 0..4 {
                        if ks[c] > 0 {
                            acc[c] = round_f16(_mm512_fmadd_ps(v[c], vs, acc[c]));
                        }
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                for c in 0..4 {
                    if ks[c] > 0 {
                        let m = ((1u32 << ks[c]) - 1) as u16;
                        let r = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(acc[c]);
                        let dst = y.as_mut_ptr().add((h0 + h) * hd + i0 + 16 * c);
                        _mm256_mask_storeu_epi16(dst.cast(), m, r);
                    }
                }
            }
        }
    }
}
