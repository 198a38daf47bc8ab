//! The packed 16-row layout of `Q4_K` and `Q5_K` (see `packed.rs`), per super-block column:
//!
//! | bytes | content |
//! |---|---|
//! | 0..32, 32..64 | `d`, `dmin` of the 16 rows (`f16`) |
//! | 64..192 | 6-bit scales as bytes, `[sub-block (8)][row (16)]` |
//! | 192..320 | 6-bit mins as bytes, `[pair (4)][row (16)][2]` (sub-blocks `2p`, `2p + 1`) |
//! | 320..832 | `Q5_K` only: fifth bits, one `u64` mask per 64-value vector (64 of them) |
//! | then 2048 | nibbles, `[group (32)][row (16)][4 bytes]`: byte `i` of group `g` holds value |
//! | | `8g + i` (low nibble) and `8g + 4 + i` (high nibble) |
//!
//! Vector `2g` (low nibbles of group `g`) and `2g + 1` (high) hold values `8g..8g+4` and
//! `8g+4..8g+8` of each row; bit `4r + i` of mask `j` is the fifth bit of vector `j`'s byte.

use super::GgmlDType;
use super::blocks::{BlockQ8K, QK_K, f16_le, k4_scales_mins};
use super::dequant::{q4k_values, q5k_values};

pub const SC_AT: usize = 64;
pub const MN_AT: usize = 192;
pub const MASKS_AT: usize = 320;

/// Bytes of one super-block column.
pub const fn column_bytes(q5: bool) -> usize {
    MASKS_AT + if q5 { 512 } else { 0 } + 2048
}

/// Offset of the nibbles.
pub const fn values_at(q5: bool) -> usize {
    MASKS_AT + if q5 { 512 } else { 0 }
}

/// Writes GGUF super-block `src` as row `r` of column `col`.
pub fn pack(dtype: GgmlDType, src: &[u8], col: &mut [u8], r: usize) {
    let q5 = dtype == GgmlDType::Q5K;
    col[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
    col[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&src[2..4]);
    let (sc, mn) = k4_scales_mins(src[4..16].try_into().expect("12 bytes"));
    for s in 0..8 {
        col[SC_AT + 16 * s + r] = sc[s];
        col[MN_AT + 32 * (s / 2) + 2 * r + s % 2] = mn[s];
    }
    let v = if q5 {
        q5k_values(
            src[16..48].try_into().expect("32 bytes"),
            src[48..176].try_into().expect("128"),
        )
    } else {
        q4k_values(src[16..144].try_into().expect("128 bytes"))
    };
    let at = values_at(q5);
    for (k, &v) in v.iter().enumerate() {
        let (g, i) = (k / 8, k % 8);
        col[at + 64 * g + 4 * r + i % 4] |= (v & 0xF) << (4 * (i / 4));
        if q5 && v >= 16 {
            let (j, bit) = (2 * g + i / 4, 4 * r + i % 4);
            col[MASKS_AT + 8 * j + bit / 8] |= 1 << (bit % 8);
        }
    }
}

/// Value `k` (`0..32`) of row `r`.
pub fn value(q5: bool, col: &[u8], r: usize, k: usize) -> u8 {
    let (g, i) = (k / 8, k % 8);
    let byte = col[values_at(q5) + 64 * g + 4 * r + i % 4];
    let mut v = (byte >> (4 * (i / 4))) & 0xF;
    if q5 {
        let (j, bit) = (2 * g + i / 4, 4 * r + i % 4);
        v |= ((col[MASKS_AT + 8 * j + bit / 8] >> (bit % 8)) & 1) << 4;
    }
    v
}

/// Scale, min of sub-block `s` of row `r`.
fn scale_min(col: &[u8], r: usize, s: usize) -> (u8, u8) {
    (
        col[SC_AT + 16 * s + r],
        col[MN_AT + 32 * (s / 2) + 2 * r + s % 2],
    )
}

fn d_dmin(col: &[u8], r: usize) -> (f32, f32) {
    (
        f16_le([col[2 * r], col[2 * r + 1]]),
        f16_le([col[32 + 2 * r], col[33 + 2 * r]]),
    )
}

/// Dequantizes row `r` of one column into 256 values.
pub fn dequantize(q5: bool, col: &[u8], r: usize, out: &mut [f32]) {
    let (d, dmin) = d_dmin(col, r);
    for (k, o) in out.iter_mut().enumerate().take(QK_K) {
        let (sc, m) = scale_min(col, r, k / 32);
        *o = d * sc as f32 * value(q5, col, r, k) as f32 - dmin * m as f32;
    }
}

/// Portable reference: `Σ` over one column for row `r` against activation block `x`.
pub fn dot(q5: bool, col: &[u8], r: usize, x: &BlockQ8K) -> f32 {
    let (d, dmin) = d_dmin(col, r);
    let (mut sum, mut summ) = (0i32, 0i32);
    for s in 0..8 {
        let (sc, m) = scale_min(col, r, s);
        let dot: i32 = (32 * s..32 * s + 32)
            .map(|k| value(q5, col, r, k) as i32 * x.qs[k] as i32)
            .sum();
        sum += sc as i32 * dot;
        summ += m as i32 * x.bsum32[s] as i32;
    }
    x.d * (d * sum as f32 - dmin * summ as f32)
}

/// The packed `Q6_K` column: `d` (16 × `f16`) at 0; scales `[group (16)][row (16)]` as `i8`
/// at [`q6::SC_AT`]; then the values (`q + 32`) as low nibbles (as in `Q4_K`, 64 bytes per
/// 8-value group) and high bits, in one of two layouts of the same 3072 bytes.
///
/// For AVX-512, at [`q6::H_AT`] a pair of `u64` masks (bit 4, bit 5) per 4-value group `j`,
/// at `16 j`, bit `4r + i` for value `4j + i` of row `r`; then all the nibbles at
/// [`q6::V_AT`]. For AVX2 (`packed::Layout::high_bytes`), 192 bytes per 16-value group `gg`
/// from [`q6::H_AT`], read in order: the nibbles of its two 8-value groups, then 64 bytes of
/// high bits, byte `32 (r / 8) + 4 (r % 8) + i` holding those of value `i` of row `r` in its
/// four 4-value groups, group `e`'s at bits `2e..2e+2`. A tile half's 32 bytes line up with
/// its nibbles, so that a 16-bit shift and a mask put a group's bits in place for 8 rows.
pub mod q6 {
    use super::super::blocks::{BlockQ8K, f16_le};
    use super::super::dequant::q6k_values;

    pub const SC_AT: usize = 32;
    pub const H_AT: usize = 288;
    pub const V_AT: usize = 1312;
    pub const BYTES: usize = 3360;

    /// Where the nibbles of 8-value group `g` start (`hb`: the byte layout).
    pub const fn nibbles_at(hb: bool, g: usize) -> usize {
        if hb {
            H_AT + 192 * (g / 2) + 64 * (g % 2)
        } else {
            V_AT + 64 * g
        }
    }

    /// Where the high bytes of 16-value group `gg` start in the byte layout.
    pub const fn high_at(gg: usize) -> usize {
        H_AT + 192 * gg + 128
    }

    /// The byte and the shift of the high bits of value `k` of row `r` in the byte layout.
    fn high_byte(r: usize, k: usize) -> (usize, usize) {
        (
            high_at(k / 16) + 32 * (r / 8) + 4 * (r % 8) + k % 4,
            2 * (k / 4 % 4),
        )
    }

    /// Writes GGUF super-block `src` as row `r` of column `col`, the high bits as bytes
    /// (`hb`) or masks.
    pub fn pack(src: &[u8], col: &mut [u8], r: usize, hb: bool) {
        col[2 * r..2 * r + 2].copy_from_slice(&src[208..210]);
        for g in 0..16 {
            col[SC_AT + 16 * g + r] = src[192 + g];
        }
        let v = q6k_values(
            src[0..128].try_into().expect("128"),
            src[128..192].try_into().expect("64"),
        );
        for (k, &v) in v.iter().enumerate() {
            let v = (v + 32) as u8;
            let (g, i) = (k / 8, k % 8);
            col[nibbles_at(hb, g) + 4 * r + i % 4] |= (v & 0xF) << (4 * (i / 4));
            if hb {
                let (at, shift) = high_byte(r, k);
                col[at] |= (v >> 4) << shift;
                continue;
            }
            let (j, bit) = (2 * g + i / 4, 4 * r + i % 4);
            for h in 0..2 {
                if (v >> (4 + h)) & 1 == 1 {
                    col[H_AT + 16 * j + 8 * h + bit / 8] |= 1 << (bit % 8);
                }
            }
        }
    }

    /// Value `k` of row `r`, `0..64`; `hb` as for [`pack`].
    pub fn value(col: &[u8], r: usize, k: usize, hb: bool) -> u8 {
        let (g, i) = (k / 8, k % 8);
        let mut v = (col[nibbles_at(hb, g) + 4 * r + i % 4] >> (4 * (i / 4))) & 0xF;
        if hb {
            let (at, shift) = high_byte(r, k);
            return v | ((col[at] >> shift) & 3) << 4;
        }
        let (j, bit) = (2 * g + i / 4, 4 * r + i % 4);
        for h in 0..2 {
            v |= ((col[H_AT + 16 * j + 8 * h + bit / 8] >> (bit % 8)) & 1) << (4 + h);
        }
        v
    }

    fn d_sc(col: &[u8], r: usize, k: usize) -> (f32, i32) {
        (
            f16_le([col[2 * r], col[2 * r + 1]]),
            col[SC_AT + 16 * (k / 16) + r] as i8 as i32,
        )
    }

    /// Dequantizes row `r` of one column into 256 values.
    pub fn dequantize(col: &[u8], r: usize, out: &mut [f32], hb: bool) {
        for (k, o) in out.iter_mut().enumerate().take(256) {
            let (d, sc) = d_sc(col, r, k);
            *o = d * sc as f32 * (value(col, r, k, hb) as i32 - 32) as f32;
        }
    }

    /// Portable reference: one column of row `r` against activation block `x`.
    pub fn dot(col: &[u8], r: usize, x: &BlockQ8K, hb: bool) -> f32 {
        let mut sum = 0i32;
        for k in 0..256 {
            let (_, sc) = d_sc(col, r, k);
            sum += sc * (value(col, r, k, hb) as i32 - 32) * x.qs[k] as i32;
        }
        x.d * f16_le([col[2 * r], col[2 * r + 1]]) * sum as f32
    }
}
