//! Scalar dequantization of one row of any supported weight format to `f32`.
//!
//! Used for embedding lookups and as the readable definition of each format.

use super::GgmlDType;
use super::blocks::*;

/// Dequantizes the blocks in `data` (one or more whole blocks of `dtype`) into `out`.
pub fn dequantize(dtype: GgmlDType, data: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlDType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlDType::F16 => super::ops::f16_to_f32(data, out),
        GgmlDType::BF16 => super::ops::bf16_to_f32(data, out),
        GgmlDType::Q4_0 => q4_0(cast(data), out),
        GgmlDType::Q4_1 => q4_1(cast(data), out),
        GgmlDType::Q5_0 => q5_0(cast(data), out),
        GgmlDType::Q5_1 => q5_1(cast(data), out),
        GgmlDType::Q8_0 => q8_0(cast(data), out),
        GgmlDType::Q2K => q2k(cast(data), out),
        GgmlDType::Q3K => q3k(cast(data), out),
        GgmlDType::Q4K => q4k(cast(data), out),
        GgmlDType::Q5K => q5k(cast(data), out),
        GgmlDType::Q6K => q6k(cast(data), out),
        GgmlDType::Q8_1 | GgmlDType::Q8K => unreachable!("rejected by QMatrix::new"),
    }
}

fn q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for j in 0..16 {
            y[j] = d * ((b.qs[j] & 0xF) as i32 - 8) as f32;
            y[j + 16] = d * ((b.qs[j] >> 4) as i32 - 8) as f32;
        }
    }
}

fn q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_le(b.d), f16_le(b.m));
        for j in 0..16 {
            y[j] = d * (b.qs[j] & 0xF) as f32 + m;
            y[j + 16] = d * (b.qs[j] >> 4) as f32 + m;
        }
    }
}

/// The 5-bit values of a `Q5_0` / `Q5_1` block, unsigned `0..32`.
#[inline(always)]
pub fn q5_values(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let h = u32::from_le_bytes(qh);
    let mut v = [0u8; 32];
    for j in 0..16 {
        v[j] = (qs[j] & 0xF) | ((((h >> j) & 1) as u8) << 4);
        v[j + 16] = (qs[j] >> 4) | ((((h >> (j + 16)) & 1) as u8) << 4);
    }
    v
}

fn q5_0(blocks: &[BlockQ5_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for (o, v) in y.iter_mut().zip(q5_values(b.qh, &b.qs)) {
            *o = d * (v as i32 - 16) as f32;
        }
    }
}

fn q5_1(blocks: &[BlockQ5_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_le(b.d), f16_le(b.m));
        for (o, v) in y.iter_mut().zip(q5_values(b.qh, &b.qs)) {
            *o = d * v as f32 + m;
        }
    }
}

fn q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for (o, &q) in y.iter_mut().zip(b.qs.iter()) {
            *o = d * q as f32;
        }
    }
}

/// The 2-bit values of a `Q2_K` block in element order.
#[inline(always)]
pub fn q2k_values(qs: &[u8; 64]) -> [u8; 256] {
    let mut v = [0u8; 256];
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for shift in 0..4 {
            for l in 0..32 {
                v[128 * half + 32 * shift + l] = (q[l] >> (2 * shift)) & 3;
            }
        }
    }
    v
}

fn q2k(blocks: &[BlockQ2K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
        let v = q2k_values(&b.qs);
        for g in 0..16 {
            let sc = b.scales[g];
            let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
            for l in 0..16 {
                y[16 * g + l] = dl * v[16 * g + l] as f32 - ml;
            }
        }
    }
}

/// The 3-bit values of a `Q3_K` block in element order, signed `-4..3`.
#[inline(always)]
pub fn q3k_values(hmask: &[u8; 32], qs: &[u8; 64]) -> [i8; 256] {
    let low = q2k_values(qs);
    let mut v = [0i8; 256];
    for (i, o) in v.iter_mut().enumerate() {
        let bit = (hmask[i % 32] >> (i / 32)) & 1;
        *o = low[i] as i8 - if bit == 0 { 4 } else { 0 };
    }
    v
}

fn q3k(blocks: &[BlockQ3K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let sc = k3_scales(&b.scales);
        let v = q3k_values(&b.hmask, &b.qs);
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * sc[i / 16] as f32 * v[i] as f32;
        }
    }
}

/// The 4-bit values of a `Q4_K` / `Q5_K` block in element order.
#[inline(always)]
pub fn q4k_values(qs: &[u8; 128]) -> [u8; 256] {
    let mut v = [0u8; 256];
    for c in 0..4 {
        for l in 0..32 {
            let q = qs[32 * c + l];
            v[64 * c + l] = q & 0xF;
            v[64 * c + 32 + l] = q >> 4;
        }
    }
    v
}

fn q4k(blocks: &[BlockQ4K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
        let (sc, m) = k4_scales_mins(&b.scales);
        let v = q4k_values(&b.qs);
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * sc[i / 32] as f32 * v[i] as f32 - dmin * m[i / 32] as f32;
        }
    }
}

/// The 5-bit values of a `Q5_K` block in element order.
#[inline(always)]
pub fn q5k_values(qh: &[u8; 32], qs: &[u8; 128]) -> [u8; 256] {
    let mut v = q4k_values(qs);
    for (i, o) in v.iter_mut().enumerate() {
        *o |= ((qh[i % 32] >> (i / 32)) & 1) << 4;
    }
    v
}

fn q5k(blocks: &[BlockQ5K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
        let (sc, m) = k4_scales_mins(&b.scales);
        let v = q5k_values(&b.qh, &b.qs);
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * sc[i / 32] as f32 * v[i] as f32 - dmin * m[i / 32] as f32;
        }
    }
}

/// The 6-bit values of a `Q6_K` block in element order, signed `-32..31`.
#[inline(always)]
pub fn q6k_values(ql: &[u8; 128], qh: &[u8; 64]) -> [i8; 256] {
    let mut v = [0i8; 256];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let y = &mut v[128 * half..];
        for l in 0..32 {
            let h = qh[l];
            y[l] = ((ql[l] & 0xF) | ((h & 3) << 4)) as i8 - 32;
            y[l + 32] = ((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
            y[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            y[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    v
}

fn q6k(blocks: &[BlockQ6K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let v = q6k_values(&b.ql, &b.qh);
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * b.scales[i / 16] as f32 * v[i] as f32;
        }
    }
}
