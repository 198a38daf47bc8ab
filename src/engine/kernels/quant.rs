//! Quantization of `f32` activations to 8-bit blocks, once per matmul.
//!
//! Every ISA path must produce bit-identical blocks, so that the integer dot products agree
//! exactly: the scale is `amax / 127`, the inverse `127 / amax`, and values round half to even
//! (what the SIMD conversions do).

use super::blocks::{BlockQ8, BlockQ8K, QK, QK_K};

/// Quantizes `x` (a multiple of 32 long) to [`BlockQ8`] blocks.
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    quantize_q8_scalar(x, out)
}

/// Quantizes `x` (a multiple of 256 long) to [`BlockQ8K`] blocks.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    quantize_q8k_scalar(x, out)
}

/// The scale and inverse scale for a block whose largest magnitude is `amax`.
#[inline(always)]
pub fn scales(amax: f32) -> (f32, f32) {
    if amax == 0.0 { (0.0, 0.0) } else { (amax / 127.0, 127.0 / amax) }
}

/// Scalar reference for [`quantize_q8`].
pub fn quantize_q8_scalar(x: &[f32], out: &mut [BlockQ8]) {
    assert_eq!(x.len(), out.len() * QK);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (d, id) = scales(amax);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

/// Scalar reference for [`quantize_q8k`].
pub fn quantize_q8k_scalar(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K);
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (d, id) = scales(amax);
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
        }
        for (g, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = d;
    }
}
