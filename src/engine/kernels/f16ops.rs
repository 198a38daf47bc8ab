//! Helpers for attention over the `f16` KV cache: dot products and axpy with half-float rows.
//!
//! Each has an AVX-512 path (16 lanes, hardware conversions) for the widths that are a multiple
//! of 16, which every supported head size is, and a portable loop for the rest.

use half::f16;

use super::isa::{self, Isa};

#[cfg(target_arch = "x86_64")]
use super::x86::f16ops as simd;

#[inline]
fn wide(n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        n.is_multiple_of(16) && isa::get() >= Isa::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = n;
        false
    }
}

/// `Σ k[i] q[i]` in `f32`.
pub fn dot(k: &[f16], q: &[f32]) -> f32 {
    assert_eq!(k.len(), q.len(), "f16ops::dot: lengths");
    #[cfg(target_arch = "x86_64")]
    if wide(k.len()) {
        // SAFETY: AVX-512 F detected; lengths equal and a multiple of 16.
        return unsafe { simd::dot(k, q) };
    }
    k.iter().zip(q).map(|(k, q)| k.to_f32() * q).sum()
}

/// `y += a · x` in `f32`.
pub fn axpy(a: f32, x: &[f16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "f16ops::axpy: lengths");
    #[cfg(target_arch = "x86_64")]
    if wide(x.len()) {
        // SAFETY: as in `dot`.
        return unsafe { simd::axpy(a, x, y) };
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y = x.to_f32().mul_add(a, *y);
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

    fn halves(x: &[f32]) -> Vec<f16> {
        x.iter().map(|&v| f16::from_f32(v)).collect()
    }

    #[test]
    fn simd_matches_portable() {
        for n in [16, 64, 128, 256, 40] {
            let (k, q) = (halves(&data(n, 1)), data(n, 2));
            let want: f64 = k.iter().zip(&q).map(|(k, q)| k.to_f64() * *q as f64).sum();
            assert!((dot(&k, &q) as f64 - want).abs() < 1e-3 * want.abs().max(1.0));

            let mut a = data(n, 3);
            let mut b = a.clone();
            axpy(0.37, &k, &mut a);
            for (b, k) in b.iter_mut().zip(&k) {
                *b = k.to_f32().mul_add(0.37, *b);
            }
            assert_eq!(a, b);
        }
    }
}
