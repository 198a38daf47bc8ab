//! Attention kernels over the `f16` KV cache, for a group of query heads that share one KV
//! head, so that every cached row is read and converted once per group:
//! - [`scores`] reads keys transposed (`[hd][stride]`: one dimension of consecutive positions
//!   is contiguous), so one vector holds 16 positions' partial scores and no horizontal sums
//!   are needed;
//! - [`accumulate`] reads values row by row (`stride` halves apart) into the heads' outputs.
//!
//! Each has an AVX-512 path (hardware conversions, accumulators in registers) for head sizes
//! that are a multiple of 16 up to 256, which every supported model's are, an AVX2 path for
//! CPUs without AVX-512, and a portable loop.

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::isa::{self, Isa};
#[cfg(target_arch = "x86_64")]
use super::x86::{f16ops as simd, f16ops_avx2 as avx2};

/// The SIMD path that takes head size `hd` on this CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Avx512,
    Avx2,
    Portable,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn path(hd: usize) -> Path {
    let isa = isa::get();
    if isa >= Isa::Avx512 && hd.is_multiple_of(16) && hd <= simd::MAX_HD {
        return Path::Avx512;
    }
    if isa >= Isa::Avx2 && hd.is_multiple_of(8) && hd <= avx2::MAX_HD {
        return Path::Avx2;
    }
    Path::Portable
}

/// Checks the shapes [`scores`] and [`scores_tree`] take; returns the number of heads.
fn check_scores(kt: &[f16], stride: usize, n: usize, q: &[f32], hd: usize, out: &[f32]) -> usize {
    let g = q.len() / hd;
    assert!(
        n <= stride && kt.len() >= (hd - 1) * stride + n,
        "f16ops: keys shorter than the positions asked for"
    );
    assert!(
        q.len() == g * hd && out.len() == g * n,
        "f16ops: query or output length"
    );
    g
}

/// For positions `p` in `0..n` and heads `g`:
/// `out[g * n + p] = scale · Σ_i kt[i * stride + p] q[g * hd + i]`.
pub fn scores(
    kt: &[f16],
    stride: usize,
    n: usize,
    q: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let g = check_scores(kt, stride, n, q, hd, out);
    #[cfg(target_arch = "x86_64")]
    match path(hd) {
        // SAFETY: AVX-512 F/BW/VL detected; lengths checked above; `hd` a multiple of 16.
        Path::Avx512 => return unsafe { simd::scores(kt, stride, n, q, hd, scale, out) },
        // SAFETY: AVX2/FMA/F16C detected; lengths checked above.
        Path::Avx2 => return unsafe { avx2::scores(kt, stride, n, q, hd, scale, out) },
        Path::Portable => {}
    }
    for h in 0..g {
        for p in 0..n {
            let s = (0..hd).fold(0f32, |s, i| {
                kt[i * stride + p].to_f32().mul_add(q[h * hd + i], s)
            });
            out[h * n + p] = s * scale;
        }
    }
}

/// Sums 16 lanes in the tree of `_mm512_reduce_add_ps` (halves, quarters, then pairs).
#[inline(always)]
pub fn reduce16(c: &[f32; 16]) -> f32 {
    let t: [f32; 8] = std::array::from_fn(|i| c[i + 8] + c[i]);
    let u: [f32; 4] = std::array::from_fn(|i| t[i + 4] + t[i]);
    (u[0] + u[2]) + (u[1] + u[3])
}

/// Like [`scores`], with each dot product summed in the order of llama.cpp's `f16` dot product
/// (`ggml_vec_dot_f16`, AVX-512 build): four 16-lane accumulators over 64-wide steps, folded
/// pairwise, the lanes reduced as [`reduce16`] does, any tail added in `f64`. `q` must hold
/// values already rounded to `f16`, so every product is exact.
pub fn scores_tree(
    kt: &[f16],
    stride: usize,
    n: usize,
    q: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    check_scores(kt, stride, n, q, hd, out);
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(64) {
        match path(hd) {
            // SAFETY: AVX-512 F/BW/VL detected; lengths checked above; `hd` a multiple of 64.
            Path::Avx512 => return unsafe { simd::scores_tree(kt, stride, n, q, hd, scale, out) },
            // SAFETY: AVX2/FMA/F16C detected; as above.
            Path::Avx2 => return unsafe { avx2::scores_tree(kt, stride, n, q, hd, scale, out) },
            Path::Portable => {}
        }
    }
    scores_tree_scalar(kt, stride, n, q, hd, scale, out)
}

/// The portable [`scores_tree`] (the reference its SIMD path must equal bit for bit).
fn scores_tree_scalar(
    kt: &[f16],
    stride: usize,
    n: usize,
    q: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let g = q.len() / hd;
    let np = hd & !63;
    for h in 0..g {
        let q = &q[h * hd..(h + 1) * hd];
        for p in 0..n {
            let k = |i: usize| kt[i * stride + p].to_f32();
            let mut sum = [[0f32; 16]; 4];
            for st in (0..np).step_by(64) {
                for (j, s) in sum.iter_mut().enumerate() {
                    for (l, s) in s.iter_mut().enumerate() {
                        let i = st + 16 * j + l;
                        *s = k(i).mul_add(q[i], *s);
                    }
                }
            }
            let c: [f32; 16] =
                std::array::from_fn(|l| (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]));
            let mut s = reduce16(&c) as f64;
            for (i, &qi) in q.iter().enumerate().skip(np) {
                s += (k(i) * qi) as f64;
            }
            out[h * n + p] = s as f32 * scale;
        }
    }
}

/// `y = f16(x · v + y)` element by element, with one rounding to `f32` (llama.cpp's
/// `ggml_vec_mad_f16`); the portable path of [`mad_f16_span`].
fn mad_f16_scalar(y: &mut [f16], x: &[f16], v: f32) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = f16::from_f32(x.to_f32().mul_add(v, y.to_f32()));
    }
}

/// A run of `n` value rows (`rows[p * stride..]`) and the weights of several heads over it:
/// head `h` weighs row `p` by `w[h * wstride + p]`, and `raise[h * wstride + p]` says whether
/// that row raised the head's running maximum (see [`mad_f16_span`]).
#[derive(Clone, Copy)]
pub struct ValueRun<'a> {
    pub rows: &'a [f16],
    pub stride: usize,
    pub w: &'a [f32],
    pub raise: &'a [bool],
    pub wstride: usize,
    pub n: usize,
}

/// The `f16` accumulators of `y.len() / hd` heads (`y[h * hd..][..hd]`) over a run of value
/// rows, in row order: where the row raised the head's maximum, `y = f16(y · w)` and then
/// `y = f16(row + y)`; elsewhere `y = f16(row · w + y)`. Each step rounds as llama.cpp's
/// `ggml_vec_scale_f16` and `ggml_vec_mad_f16` do (its one-row attention); the accumulators
/// stay in registers across the run, several heads at a time so that each value row is
/// converted once for all of them and their rounding chains overlap.
pub fn mad_f16_span(y: &mut [f16], hd: usize, run: &ValueRun) {
    assert!(
        hd > 0 && y.len().is_multiple_of(hd),
        "f16ops::mad_f16_span: heads"
    );
    let n = run.n;
    if n == 0 || y.is_empty() {
        return;
    }
    let g = y.len() / hd;
    assert!(
        n <= run.wstride || g == 1,
        "f16ops::mad_f16_span: weight stride"
    );
    let need = (g - 1) * run.wstride + n;
    assert!(
        run.w.len() >= need && run.raise.len() >= need,
        "f16ops::mad_f16_span: lengths"
    );
    assert!(
        run.rows.len() >= (n - 1) * run.stride + hd,
        "f16ops::mad_f16_span: rows"
    );
    #[cfg(target_arch = "x86_64")]
    match isa::get() {
        // SAFETY: AVX-512 F/BW/VL detected; lengths checked.
        Isa::Avx512 => return unsafe { simd::mad_f16_span(y, hd, run) },
        // SAFETY: AVX2/FMA/F16C detected; lengths checked.
        Isa::Avx2 => return unsafe { avx2::mad_f16_span(y, hd, run) },
        _ => {}
    }
    for (h, y) in y.chunks_exact_mut(hd).enumerate() {
        let at = h * run.wstride;
        let (w, raise) = (&run.w[at..at + n], &run.raise[at..at + n]);
        mad_f16_span_scalar(y, run.rows, run.stride, w, raise);
    }
}

fn mad_f16_span_scalar(y: &mut [f16], rows: &[f16], stride: usize, w: &[f32], raise: &[bool]) {
    let hd = y.len();
    for (p, (&e, &r)) in w.iter().zip(raise).enumerate() {
        let row = &rows[p * stride..p * stride + hd];
        if r {
            scale_f16_scalar(y, e);
            mad_f16_scalar(y, row, 1.0);
        } else {
            mad_f16_scalar(y, row, e);
        }
    }
}

fn scale_f16_scalar(y: &mut [f16], v: f32) {
    for y in y.iter_mut() {
        *y = f16::from_f32(y.to_f32() * v);
    }
}

/// For each head `g`: `acc[g * hd + i] = Σ_p w[g * n + p] · rows[p * stride + i]` summed onto
/// the value already in `acc` with one fused multiply-add per position, in position order.
pub fn accumulate(rows: &[f16], stride: usize, n: usize, w: &[f32], hd: usize, acc: &mut [f32]) {
    let g = acc.len() / hd;
    assert!(
        n == 0 || rows.len() >= (n - 1) * stride + hd,
        "f16ops::accumulate: rows"
    );
    assert!(
        acc.len() == g * hd && w.len() == g * n,
        "f16ops::accumulate: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    match path(hd) {
        // SAFETY: as in `scores`.
        Path::Avx512 => return unsafe { simd::accumulate(rows, stride, n, w, hd, acc) },
        // SAFETY: as in `scores`.
        Path::Avx2 => return unsafe { avx2::accumulate(rows, stride, n, w, hd, acc) },
        Path::Portable => {}
    }
    accumulate_scalar(rows, stride, n, w, hd, acc)
}

/// The portable [`accumulate`] (the SIMD paths give its very bits: the same fused
/// multiply-add per position, in position order).
fn accumulate_scalar(rows: &[f16], stride: usize, n: usize, w: &[f32], hd: usize, acc: &mut [f32]) {
    let g = acc.len() / hd;
    for p in 0..n {
        let v = &rows[p * stride..p * stride + hd];
        for h in 0..g {
            let a = w[h * n + p];
            for (o, v) in acc[h * hd..(h + 1) * hd].iter_mut().zip(v) {
                *o = v.to_f32().mul_add(a, *o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ops::test_data as data;
    use super::*;

    fn halves(x: &[f32]) -> Vec<f16> {
        x.iter().map(|&v| f16::from_f32(v)).collect()
    }

    #[test]
    fn llama_cpp_order_kernels_equal_their_portable_versions() {
        // The SIMD paths must give the very bits of the portable ones (llama.cpp's order).
        for (hd, g, n) in [
            (64, 3, 32),
            (64, 7, 21),
            (64, 4, 16),
            (64, 1, 7),
            (128, 2, 19),
            (256, 1, 16),
            (40, 2, 5),
        ] {
            let stride = 32;
            let kt = halves(&data(hd * stride, 7));
            let q: Vec<f32> = data(g * hd, 8)
                .iter()
                .map(|&v| f16::from_f32(v).to_f32())
                .collect();
            let (mut a, mut b) = (vec![0f32; g * n], vec![0f32; g * n]);
            scores_tree(&kt, stride, n, &q, hd, 0.125, &mut a);
            scores_tree_scalar(&kt, stride, n, &q, hd, 0.125, &mut b);
            assert_eq!(a, b, "scores_tree {hd} {g} {n}");
            let rstride = hd + 8;
            let rows = halves(&data(n * rstride, 9));
            // Heads' weights `n + 3` apart; up to 7 heads (one group of 4, then the rest).
            let wstride = n + 3;
            for heads in [g, 5, 7] {
                let w: Vec<f32> = (0..heads * wstride)
                    .map(|p| 0.05 + (p % 7) as f32 * 0.13)
                    .collect();
                let raise: Vec<bool> = (0..heads * wstride)
                    .map(|p| p % 5 == p / wstride % 3)
                    .collect();
                let (mut y1, mut y2) =
                    (halves(&data(heads * hd, 10)), halves(&data(heads * hd, 10)));
                let run = ValueRun {
                    rows: &rows,
                    stride: rstride,
                    w: &w,
                    raise: &raise,
                    wstride,
                    n,
                };
                mad_f16_span(&mut y1, hd, &run);
                for (h, y) in y2.chunks_exact_mut(hd).enumerate() {
                    let at = h * wstride;
                    mad_f16_span_scalar(y, &rows, rstride, &w[at..at + n], &raise[at..at + n]);
                }
                assert_eq!(y1, y2, "mad_f16_span {hd} {heads} {n}");
            }
        }
    }

    #[test]
    fn tree_order_sums_the_dot_product() {
        let (hd, stride) = (128, 32);
        let kt = halves(&data(hd * stride, 11));
        let q: Vec<f32> = data(hd, 12)
            .iter()
            .map(|&v| f16::from_f32(v).to_f32())
            .collect();
        let mut s = vec![0f32; 4];
        scores_tree(&kt, stride, 4, &q, hd, 1.0, &mut s);
        for (p, &s) in s.iter().enumerate() {
            let want: f64 = (0..hd)
                .map(|i| kt[i * stride + p].to_f64() * q[i] as f64)
                .sum();
            assert!(
                (s as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                "{s} vs {want}"
            );
        }
    }

    #[test]
    fn kernels_match_reference() {
        // (head size, heads, positions, stride): full and partial 16-lane groups, GQA groups
        // wider than the register budget, odd head sizes on the portable path.
        for (hd, g, n, stride) in [
            (64, 3, 32, 32),
            (64, 3, 48, 64),
            (64, 4, 31, 32),
            (64, 7, 19, 32),
            (128, 5, 5, 32),
            (256, 2, 17, 32),
            (16, 1, 1, 32),
            (40, 2, 9, 32),
        ] {
            let kt = halves(&data(hd * stride, 1));
            let q = data(g * hd, 2);
            let mut s = vec![0f32; g * n];
            scores(&kt, stride, n, &q, hd, 0.125, &mut s);
            for h in 0..g {
                for p in 0..n {
                    let want: f64 = (0..hd)
                        .map(|i| kt[i * stride + p].to_f64() * q[h * hd + i] as f64)
                        .sum::<f64>()
                        * 0.125;
                    let got = s[h * n + p] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "scores {hd} {h} {p}: {got} vs {want}"
                    );
                    // Every path sums each position's products over the dimensions in order,
                    // so the prefill's scores keep the portable loop's bits.
                    let fold = (0..hd).fold(0f32, |s, i| {
                        kt[i * stride + p].to_f32().mul_add(q[h * hd + i], s)
                    }) * 0.125;
                    assert_eq!(s[h * n + p], fold, "scores {hd} {g} {n}: {h} {p}");
                }
            }
            let rows = halves(&data((n - 1) * (g * hd) + hd, 5));
            let w = data(g * n, 3);
            let mut acc = data(g * hd, 4);
            let start = acc.clone();
            accumulate(&rows, g * hd, n, &w, hd, &mut acc);
            let mut exact = start.clone();
            accumulate_scalar(&rows, g * hd, n, &w, hd, &mut exact);
            assert_eq!(
                acc, exact,
                "accumulate {hd} {g} {n}: the portable loop's bits"
            );
            for h in 0..g {
                for i in 0..hd {
                    let want = start[h * hd + i] as f64
                        + (0..n)
                            .map(|p| w[h * n + p] as f64 * rows[p * g * hd + i].to_f64())
                            .sum::<f64>();
                    let got = acc[h * hd + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-3 * want.abs().max(1.0),
                        "accumulate {hd} {h} {i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
