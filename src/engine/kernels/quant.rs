//! Quantization of `f32` activations to 8-bit blocks, once per matmul.
//!
//! Every ISA path must produce bit-identical blocks, so that the integer dot products agree
//! exactly: the scale is `amax / 127`, the inverse `127 / amax`, and values round half to even
//! (what the SIMD conversions do).
//!
//! As in GGUF's `Q8_0` / `Q8_1` blocks (and llama.cpp's kernels) the 32-wide blocks keep their
//! scale as a half. The block sum `s` serves two kinds of weights: with a per-block minimum
//! (`Q4_1`, `Q5_1`, `min`) it is `half(d · Σq)`, as `Q8_1` stores it; with a fixed offset
//! (`Q4_0`, `Q5_0`, `Q8_0` in the packed kernels) it is exactly `half(d) · Σq`, so that the
//! offset correction cancels the offset to the last bit.

use super::blocks::{BlockQ8K, BlockQ8s, BlockQ8x2, QK, QK_K};

/// Quantizes `x` (a multiple of 32 long) to [`BlockQ8x2`] pairs (`x.len().div_ceil(64)`).
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8x2], min: bool) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::get() >= super::isa::Isa::Avx512 {
        // SAFETY: AVX-512 F/BW/VL were detected at runtime.
        return unsafe { super::x86::quant::quantize_q8(x, out, min) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::get() >= super::isa::Isa::Avx2 {
        // SAFETY: AVX2 was detected at runtime.
        return unsafe { super::x86::quant_avx2::quantize_q8(x, out, min) };
    }
    quantize_q8_scalar(x, out, min)
}

/// Quantizes `x` (a multiple of 256 long) to [`BlockQ8K`] blocks.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::get() >= super::isa::Isa::Avx512 {
        // SAFETY: AVX-512 F/BW/VL were detected at runtime.
        return unsafe { super::x86::quant::quantize_q8k(x, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::get() >= super::isa::Isa::Avx2 {
        // SAFETY: AVX2 was detected at runtime.
        return unsafe { super::x86::quant_avx2::quantize_q8k(x, out) };
    }
    quantize_q8k_scalar(x, out)
}

/// Quantizes `x` (a multiple of 32 long) to signed [`BlockQ8s`] blocks.
pub fn quantize_q8s(x: &[f32], out: &mut [BlockQ8s], min: bool) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::get() >= super::isa::Isa::Avx512 {
        // SAFETY: AVX-512 F/BW/VL were detected at runtime.
        return unsafe { super::x86::quant::quantize_q8s(x, out, min) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::get() >= super::isa::Isa::Avx2 {
        // SAFETY: AVX2 was detected at runtime.
        return unsafe { super::x86::quant_avx2::quantize_q8s(x, out, min) };
    }
    quantize_q8s_scalar(x, out, min)
}

/// Scalar reference for [`quantize_q8s`].
pub fn quantize_q8s_scalar(x: &[f32], out: &mut [BlockQ8s], min: bool) {
    assert_eq!(x.len(), out.len() * QK);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (d, id) = scales(amax);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        b.d = half_round(d);
        b.s = block_sum(d, sum, min);
        b.set_group_sums();
    }
}

/// The scale and inverse scale for a block whose largest magnitude is `amax`.
#[inline(always)]
pub fn scales(amax: f32) -> (f32, f32) {
    if amax == 0.0 {
        (0.0, 0.0)
    } else {
        (amax / 127.0, 127.0 / amax)
    }
}

/// Scalar reference for [`quantize_q8`].
pub fn quantize_q8_scalar(x: &[f32], out: &mut [BlockQ8x2], min: bool) {
    assert!(x.len().is_multiple_of(QK) && out.len() == x.len().div_ceil(2 * QK));
    for (xs, p) in x.chunks(2 * QK).zip(out.iter_mut()) {
        *p = BlockQ8x2 {
            u: [0x80; 64],
            d: [0.0; 16],
            s: [0.0; 16],
        };
        for (half, xs) in xs.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (d, id) = scales(amax);
            let mut sum = 0i32;
            for (u, &v) in p.u[32 * half..32 * half + 32].iter_mut().zip(xs) {
                let q = (v * id).round_ties_even() as i8;
                sum += q as i32;
                *u = q as u8 ^ 0x80;
            }
            p.d[8 * half..8 * half + 8].fill(half_round(d));
            p.s[8 * half..8 * half + 8].fill(block_sum(d, sum, min));
        }
    }
}

/// Scalar reference for [`quantize_q8k`].
pub fn quantize_q8k_scalar(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K);
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (_, id) = scales(amax);
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
        }
        for (g, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = q8k_scale(id);
        for g in 0..8 {
            b.bsum32[g] = b.bsums[2 * g] + b.bsums[2 * g + 1];
        }
        b.pad = [0; 12];
    }
}

/// A `Q8_K` block's scale from its inverse, as llama.cpp's `quantize_row_q8_K` rounds it
/// (`1 / (127 / amax)`, not `amax / 127`, which differs in the last bit now and then).
#[inline(always)]
pub fn q8k_scale(id: f32) -> f32 {
    if id == 0.0 { 0.0 } else { 1.0 / id }
}

/// Rounds an activation block's scale to half precision, as GGUF's `Q8_0` / `Q8_1` blocks
/// (and llama.cpp's kernels) store it.
#[inline(always)]
pub fn half_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// The block sum `s` for scale `d` (before rounding) and quant sum `sum` (see the module doc).
#[inline(always)]
pub fn block_sum(d: f32, sum: i32, min: bool) -> f32 {
    if min {
        half_round(d * sum as f32)
    } else {
        // Exact: |sum| < 2^12 and a half has an 11-bit significand.
        half_round(d) * sum as f32
    }
}
