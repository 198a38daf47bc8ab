//! Portable scalar dot products of one weight row with one quantized activation row.
//!
//! These are the reference the SIMD paths are tested against: integer sums per block, scaled
//! once per block, exactly as the SIMD kernels do (only the float summation order differs).

use super::blocks::*;
use super::dequant::{q2k_values, q3k_values, q4k_values, q5_values, q5k_values, q6k_values};

/// Runs a one-token dot product `f` for each of `out.len()` tokens.
#[inline(always)]
pub fn each(f: fn(&[u8], &[u8]) -> f32, w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
    for (t, o) in out.iter_mut().enumerate() {
        *o = f(w, &a[t * arow..(t + 1) * arow]);
    }
}

/// One 32-value activation block, unpacked from a [`BlockQ8x2`].
struct X {
    qs: [i8; 32],
    d: f32,
    s: f32,
}

/// The blocks of a [`BlockQ8x2`] row in order (a padding block at the end reads as zero).
#[inline(always)]
fn q8_blocks(a: &[u8]) -> impl Iterator<Item = X> + '_ {
    cast::<BlockQ8x2>(a).iter().flat_map(|p| {
        (0..2).map(move |h| X {
            qs: std::array::from_fn(|i| p.q(h, i)),
            d: p.d[8 * h],
            s: p.s[8 * h],
        })
    })
}

#[inline(always)]
fn idot(w: impl IntoIterator<Item = i32>, a: &[i8]) -> i32 {
    w.into_iter().zip(a).map(|(w, &a)| w * a as i32).sum()
}

/// `f32` weights · `f32` activations.
pub fn f32_f32(w: &[u8], a: &[u8]) -> f32 {
    let a: &[f32] = cast_f32(a);
    w.chunks_exact(4)
        .zip(a)
        .map(|(b, &x)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x)
        .sum()
}

/// `f16` weights · `f32` activations.
pub fn f16_f32(w: &[u8], a: &[u8]) -> f32 {
    let a: &[f32] = cast_f32(a);
    w.chunks_exact(2)
        .zip(a)
        .map(|(b, &x)| f16_le([b[0], b[1]]) * x)
        .sum()
}

/// `bf16` weights · `f32` activations.
pub fn bf16_f32(w: &[u8], a: &[u8]) -> f32 {
    let a: &[f32] = cast_f32(a);
    w.chunks_exact(2)
        .zip(a)
        .map(|(b, &x)| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) * x)
        .sum()
}

/// Views activation bytes as `f32` (they always come from an `&[f32]`).
pub fn cast_f32(a: &[u8]) -> &[f32] {
    assert!(a.len().is_multiple_of(4) && (a.as_ptr() as usize).is_multiple_of(4));
    // SAFETY: length and alignment checked; every bit pattern is a valid f32.
    unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<f32>(), a.len() / 4) }
}

pub fn q4_0(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ4_0>(w), q8_blocks(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let lo = b.qs.iter().map(|&q| (q & 0xF) as i32 - 8);
        let hi = b.qs.iter().map(|&q| (q >> 4) as i32 - 8);
        let s = idot(lo, &x.qs[..16]) + idot(hi, &x.qs[16..]);
        acc += f16_le(b.d) * x.d * s as f32;
    }
    acc
}

pub fn q4_1(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ4_1>(w), q8_blocks(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let lo = b.qs.iter().map(|&q| (q & 0xF) as i32);
        let hi = b.qs.iter().map(|&q| (q >> 4) as i32);
        let s = idot(lo, &x.qs[..16]) + idot(hi, &x.qs[16..]);
        acc += f16_le(b.d) * x.d * s as f32 + f16_le(b.m) * x.s;
    }
    acc
}

pub fn q5_0(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ5_0>(w), q8_blocks(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let v = q5_values(b.qh, &b.qs);
        let s = idot(v.iter().map(|&q| q as i32 - 16), &x.qs);
        acc += f16_le(b.d) * x.d * s as f32;
    }
    acc
}

pub fn q5_1(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ5_1>(w), q8_blocks(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let v = q5_values(b.qh, &b.qs);
        let s = idot(v.iter().map(|&q| q as i32), &x.qs);
        acc += f16_le(b.d) * x.d * s as f32 + f16_le(b.m) * x.s;
    }
    acc
}

pub fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ8_0>(w), q8_blocks(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let s = idot(b.qs.iter().map(|&q| q as i32), &x.qs);
        acc += f16_le(b.d) * x.d * s as f32;
    }
    acc
}

pub fn q2k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ2K>(w), cast::<BlockQ8K>(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let v = q2k_values(&b.qs);
        let (mut sum, mut summ) = (0i32, 0i32);
        for g in 0..16 {
            let r = 16 * g..16 * g + 16;
            let s = idot(v[r.clone()].iter().map(|&q| q as i32), &x.qs[r]);
            sum += (b.scales[g] & 0xF) as i32 * s;
            summ += (b.scales[g] >> 4) as i32 * x.bsums[g] as i32;
        }
        acc += x.d * (f16_le(b.d) * sum as f32 - f16_le(b.dmin) * summ as f32);
    }
    acc
}

pub fn q3k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ3K>(w), cast::<BlockQ8K>(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let v = q3k_values(&b.hmask, &b.qs);
        let sc = k3_scales(&b.scales);
        let mut sum = 0i32;
        for (g, &sc) in sc.iter().enumerate() {
            let r = 16 * g..16 * g + 16;
            sum += sc as i32 * idot(v[r.clone()].iter().map(|&q| q as i32), &x.qs[r]);
        }
        acc += x.d * f16_le(b.d) * sum as f32;
    }
    acc
}

/// Shared tail of `Q4_K` / `Q5_K`: values in `0..32`, 8 groups of 32 with 6-bit scale and min.
#[inline(always)]
fn k4_block(v: &[u8; 256], scales: &[u8; 12], d: f32, dmin: f32, x: &BlockQ8K) -> f32 {
    let (sc, m) = k4_scales_mins(scales);
    let (mut sum, mut summ) = (0i32, 0i32);
    for g in 0..8 {
        let r = 32 * g..32 * g + 32;
        sum += sc[g] as i32 * idot(v[r.clone()].iter().map(|&q| q as i32), &x.qs[r]);
        summ += m[g] as i32 * (x.bsums[2 * g] as i32 + x.bsums[2 * g + 1] as i32);
    }
    x.d * (d * sum as f32 - dmin * summ as f32)
}

pub fn q4k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ4K>(w), cast::<BlockQ8K>(a));
    w.iter()
        .zip(a)
        .map(|(b, x)| {
            k4_block(
                &q4k_values(&b.qs),
                &b.scales,
                f16_le(b.d),
                f16_le(b.dmin),
                x,
            )
        })
        .sum()
}

pub fn q5k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ5K>(w), cast::<BlockQ8K>(a));
    w.iter()
        .zip(a)
        .map(|(b, x)| {
            let v = q5k_values(&b.qh, &b.qs);
            k4_block(&v, &b.scales, f16_le(b.d), f16_le(b.dmin), x)
        })
        .sum()
}

pub fn q6k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (cast::<BlockQ6K>(w), cast::<BlockQ8K>(a));
    let mut acc = 0f32;
    for (b, x) in w.iter().zip(a) {
        let v = q6k_values(&b.ql, &b.qh);
        let mut sum = 0i32;
        for g in 0..16 {
            let r = 16 * g..16 * g + 16;
            sum += b.scales[g] as i32 * idot(v[r.clone()].iter().map(|&q| q as i32), &x.qs[r]);
        }
        acc += x.d * f16_le(b.d) * sum as f32;
    }
    acc
}
