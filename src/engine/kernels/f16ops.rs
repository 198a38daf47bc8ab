//! Attention kernels over the `f16` KV cache, for a group of query heads that share one KV
//! head, so that every cached row is read and converted once per group:
//! - [`scores`] reads keys transposed (`[hd][stride]`: one dimension of consecutive positions
//!   is contiguous), so one vector holds 16 positions' partial scores and no horizontal sums
//!   are needed;
//! - [`accumulate`] reads values row by row (`stride` halves apart) into the heads' outputs.
//!
//! Each has an AVX-512 path (hardware conversions, accumulators in registers) for head sizes
//! that are a multiple of 16 up to 256, which every supported model's are, and a portable loop.

use half::f16;

use super::isa::{self, Isa};

#[cfg(target_arch = "x86_64")]
use super::x86::f16ops as simd;

#[inline]
fn wide(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        hd.is_multiple_of(16) && hd <= simd::MAX_HD && isa::get() >= Isa::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hd;
        false
    }
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
    let g = q.len() / hd;
    assert!(
        n <= stride && kt.len() >= (hd - 1) * stride + n,
        "f16ops::scores: keys"
    );
    assert!(
        q.len() == g * hd && out.len() == g * n,
        "f16ops::scores: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if wide(hd) {
        // SAFETY: AVX-512 F/BW/VL detected; lengths checked above; `hd` a multiple of 16.
        return unsafe { simd::scores(kt, stride, n, q, hd, scale, out) };
    }
    for h in 0..g {
        for p in 0..n {
            let s: f32 = (0..hd)
                .map(|i| kt[i * stride + p].to_f32() * q[h * hd + i])
                .sum();
            out[h * n + p] = s * scale;
        }
    }
}

/// For each head `g`: `acc[g * hd + i] += Σ_p w[g * n + p] · rows[p * stride + i]`.
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
    if wide(hd) {
        // SAFETY: as in `scores`.
        return unsafe { simd::accumulate(rows, stride, n, w, hd, acc) };
    }
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
    fn kernels_match_reference() {
        // (head size, heads, positions, stride): full and partial 16-lane groups, GQA groups
        // wider than the register budget, odd head sizes on the portable path.
        for (hd, g, n, stride) in [
            (64, 3, 32, 32),
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
                }
            }
            let rows = halves(&data((n - 1) * (g * hd) + hd, 5));
            let w = data(g * n, 3);
            let mut acc = data(g * hd, 4);
            let start = acc.clone();
            accumulate(&rows, g * hd, n, &w, hd, &mut acc);
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
