//! Attention kernels over the `f16` KV cache. Rows of keys or values come as a slab of
//! consecutive positions, `stride` halves apart; a group of query heads that share one KV head
//! is served in one pass, so that every cached row is read and converted once per group.
//!
//! Each has an AVX-512 path (16 lanes, hardware conversions) for head sizes that are a multiple
//! of 16, which every supported model's are, and a portable loop for the rest.

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

/// For each of `n` positions `p` and each of the `q.len() / hd` heads `g`:
/// `scores[g * n + p] = scale · Σ_i rows[p * stride + i] q[g * hd + i]`.
pub fn scores(
    rows: &[f16],
    stride: usize,
    n: usize,
    q: &[f32],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let g = q.len() / hd;
    assert!(
        n == 0 || rows.len() >= (n - 1) * stride + hd,
        "f16ops::scores: rows"
    );
    assert!(
        q.len() == g * hd && scores.len() == g * n,
        "f16ops::scores: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if wide(hd) {
        // SAFETY: AVX-512 F detected; lengths checked above; `hd` a multiple of 16.
        return unsafe { simd::scores(rows, stride, n, q, hd, scale, scores) };
    }
    for p in 0..n {
        let k = &rows[p * stride..p * stride + hd];
        for h in 0..g {
            let qh = &q[h * hd..(h + 1) * hd];
            let s: f32 = k.iter().zip(qh).map(|(k, q)| k.to_f32() * q).sum();
            scores[h * n + p] = s * scale;
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
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 4001) as f32 / 400.0 - 5.0)
            .collect()
    }

    #[test]
    fn kernels_match_reference() {
        for (hd, g, n, stride) in [
            (64, 3, 37, 192),
            (128, 7, 5, 256),
            (16, 1, 1, 16),
            (40, 2, 9, 80),
        ] {
            let rows: Vec<f16> = data((n - 1) * stride + hd, 1)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let q = data(g * hd, 2);
            let mut s = vec![0f32; g * n];
            scores(&rows, stride, n, &q, hd, 0.125, &mut s);
            for h in 0..g {
                for p in 0..n {
                    let want: f64 = (0..hd)
                        .map(|i| rows[p * stride + i].to_f64() * q[h * hd + i] as f64)
                        .sum::<f64>()
                        * 0.125;
                    let got = s[h * n + p] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{hd} {h} {p}: {got} vs {want}"
                    );
                }
            }
            let w = data(g * n, 3);
            let mut acc = data(g * hd, 4);
            let start = acc.clone();
            accumulate(&rows, stride, n, &w, hd, &mut acc);
            for h in 0..g {
                for i in 0..hd {
                    let want = start[h * hd + i] as f64
                        + (0..n)
                            .map(|p| w[h * n + p] as f64 * rows[p * stride + i].to_f64())
                            .sum::<f64>();
                    let got = acc[h * hd + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-3 * want.abs().max(1.0),
                        "{hd} {h} {i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
