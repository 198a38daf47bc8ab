//! GGUF weight block layouts (byte-exact, alignment 1) and the 8-bit activation blocks the
//! integer dot products consume.
//!
//! Weight blocks keep their `f16` fields as raw little-endian bytes so that any `&[u8]` of the
//! right length can be viewed as a slice of blocks, whatever its alignment (GGUF data is mmapped).

use half::f16;

/// Elements per block of the 32-wide ("legacy") formats.
pub const QK: usize = 32;
/// Elements per super-block of the K-quant formats.
pub const QK_K: usize = 256;

/// Reads a little-endian IEEE half stored as two bytes.
#[inline(always)]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// `Q4_0`: 32 weights `d * (q - 8)`, 4-bit `q`; element `j` in the low nibble of `qs[j]`,
/// element `j + 16` in its high nibble.
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}

/// `Q4_1`: 32 weights `d * q + m`, 4-bit `q`, nibbles as in [`BlockQ4_0`].
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}

/// `Q5_0`: 32 weights `d * (q - 16)`, 5-bit `q`; bit `j` of `qh` is the fifth bit of element `j`.
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// `Q5_1`: 32 weights `d * q + m`, 5-bit `q`, bits as in [`BlockQ5_0`].
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// `Q8_0`: 32 weights `d * q`, signed 8-bit `q`.
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}

/// `Q2_K`: 256 weights in 16 groups of 16; `scales[g]` holds a 4-bit scale (low) and min (high).
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

/// `Q3_K`: 256 weights in 16 groups of 16, 2 low bits in `qs`, the third in `hmask`, 6-bit
/// signed scales packed into 12 bytes.
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

/// `Q4_K`: 256 weights in 8 groups of 32, each `d * sc * q - dmin * m` with 6-bit `sc`, `m`.
#[repr(C)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// `Q5_K`: as [`BlockQ4K`] with a fifth bit per weight in `qh`.
#[repr(C)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// `Q6_K`: 256 weights in 16 groups of 16, each `d * sc * (q - 32)`, 6-bit `q`, 8-bit `sc`.
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}

/// Activations for the 32-wide formats, two blocks (64 values) at a time, laid out for the
/// SIMD kernels: `x[i] = d[i / 32 * 8] * (u[i] as i8 ^ 0x80)`, i.e. `u` holds `q + 128` so that
/// it can be the unsigned operand of `vpdpbusd`; `d` and `s = d * Σ q` are repeated 8 times per
/// block so that a kernel loads them as one vector. A missing second block is all zero.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct BlockQ8x2 {
    pub u: [u8; 64],
    pub d: [f32; 16],
    pub s: [f32; 16],
}

impl BlockQ8x2 {
    /// The signed value `i` of block `half` (0 or 1).
    #[inline(always)]
    pub fn q(&self, half: usize, i: usize) -> i8 {
        (self.u[32 * half + i] ^ 0x80) as i8
    }
}

/// Signed activations for the packed 32-wide kernels: `x ≈ d * qs`, `s = d * Σ qs`, and per
/// 4-value group `c4[j] = Σ qs[4j..4j+4]`, which `matmul_packed` turns in place into the
/// weights' offset term (to take it off in integers, see `x86/avx512_packed.rs`): in
/// llama.cpp's order each `c4[j]` times `-offset`, in ward's `c4[0]` the whole block's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8s {
    pub qs: [i8; 32],
    pub d: f32,
    pub s: f32,
    pub c4: [i32; 8],
}

impl BlockQ8s {
    /// Fills `c4` from `qs`.
    #[inline(always)]
    pub fn set_group_sums(&mut self) {
        for (j, c) in self.c4.iter_mut().enumerate() {
            *c = self.qs[4 * j..4 * j + 4].iter().map(|&q| q as i32).sum();
        }
    }
}

/// Activations for the K-quants: `x ≈ d * qs`, `bsums[g] = Σ qs[16g..16g+16]`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
    pub d: f32,
    /// `bsum32[g] = Σ qs[32g..32g+32]`, for the packed `Q4_K` / `Q5_K` kernel.
    pub bsum32: [i16; 8],
    pub pad: [u8; 12],
}

/// Plain-old-data blocks that can be viewed from raw bytes.
///
/// # Safety
/// Implementors must be `repr(C)`, contain only integer/float arrays (every bit pattern valid)
/// and have no padding.
pub unsafe trait Pod: Sized {}

// SAFETY: each is repr(C), made only of byte/integer/float arrays, without padding.
unsafe impl Pod for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ4_1 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ5_0 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ5_1 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ8_0 {}
// SAFETY: as above.
unsafe impl Pod for BlockQ2K {}
// SAFETY: as above.
unsafe impl Pod for BlockQ3K {}
// SAFETY: as above.
unsafe impl Pod for BlockQ4K {}
// SAFETY: as above.
unsafe impl Pod for BlockQ5K {}
// SAFETY: as above.
unsafe impl Pod for BlockQ6K {}
// SAFETY: 64 + 64 + 64 bytes, alignment 64, no padding.
unsafe impl Pod for BlockQ8x2 {}
// SAFETY: 32 + 4 + 4 bytes, alignment 4, no padding.
unsafe impl Pod for BlockQ8s {}
// SAFETY: 256 + 32 + 4 + 16 + 12 bytes, alignment 64, no implicit padding.
unsafe impl Pod for BlockQ8K {}

/// Views `bytes` as blocks. Panics if the length is not a whole number of blocks or the
/// alignment is wrong (only possible for the `f32`-holding activation blocks).
#[inline(always)]
pub fn cast<T: Pod>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(bytes.len().is_multiple_of(size));
    assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: length and alignment checked above; `T: Pod` accepts every bit pattern.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) }
}

/// Views `bytes` as mutable blocks; panics as [`cast`] does.
#[inline(always)]
pub fn cast_mut<T: Pod>(bytes: &mut [u8]) -> &mut [T] {
    let size = std::mem::size_of::<T>();
    assert!(bytes.len().is_multiple_of(size));
    assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: length and alignment checked above; `T: Pod` accepts every bit pattern.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / size) }
}

/// Views blocks as bytes.
#[cfg(test)]
#[inline(always)]
pub fn as_bytes<T: Pod>(blocks: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so every byte is initialised.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// Unpacks the eight 6-bit scales and eight mins of a `Q4_K` / `Q5_K` block as the bytes of
/// two `u64` (scale or min `j` in byte `j`), four at a time in 32-bit words.
#[inline(always)]
pub fn k4_scales_words(s: &[u8; 12]) -> (u64, u64) {
    let u: [u32; 3] = std::array::from_fn(|k| {
        u32::from_le_bytes(s[4 * k..4 * k + 4].try_into().expect("4 bytes"))
    });
    const M6: u32 = 0x3f3f_3f3f;
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    // Scales and mins 0-3: the low 6 bits of bytes 0-3 and 4-7. 4-7: a nibble of bytes 8-11
    // below the top 2 bits of bytes 0-3 (scales) or 4-7 (mins).
    let sc = [u[0] & M6, (u[2] & M4) | (((u[0] >> 6) & M2) << 4)];
    let mn = [u[1] & M6, ((u[2] >> 4) & M4) | (((u[1] >> 6) & M2) << 4)];
    let join = |v: [u32; 2]| v[0] as u64 | (v[1] as u64) << 32;
    (join(sc), join(mn))
}

/// Unpacks the eight 6-bit (scale, min) pairs of a `Q4_K` / `Q5_K` block.
#[inline(always)]
pub fn k4_scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (sc, m) = k4_scales_words(s);
    (sc.to_le_bytes(), m.to_le_bytes())
}

/// Unpacks the sixteen 6-bit scales of a `Q3_K` block, already offset to `-32..31`.
#[inline(always)]
pub fn k3_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_gguf() {
        use std::mem::size_of;
        assert_eq!(size_of::<BlockQ4_0>(), 18);
        assert_eq!(size_of::<BlockQ4_1>(), 20);
        assert_eq!(size_of::<BlockQ5_0>(), 22);
        assert_eq!(size_of::<BlockQ5_1>(), 24);
        assert_eq!(size_of::<BlockQ8_0>(), 34);
        assert_eq!(size_of::<BlockQ2K>(), 84);
        assert_eq!(size_of::<BlockQ3K>(), 110);
        assert_eq!(size_of::<BlockQ4K>(), 144);
        assert_eq!(size_of::<BlockQ5K>(), 176);
        assert_eq!(size_of::<BlockQ6K>(), 210);
        assert_eq!(size_of::<BlockQ8x2>(), 192);
        assert_eq!(size_of::<BlockQ8s>(), 72);
        assert_eq!(size_of::<BlockQ8K>(), 320);
    }
}
