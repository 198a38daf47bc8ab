//! Weights repacked 16 rows at a time, about the same size as the GGUF data: the 32-wide
//! formats (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, laid out below) and `Q4_K` / `Q5_K` /
//! `Q6_K` (`packed_k.rs`).
//!
//! In the GGUF layout each row's dot product ends in horizontal sums and per-block scaling of
//! 8-lane partial sums. Interleaving 16 rows so that one 64-byte vector holds 4 consecutive
//! values of each of 16 rows lets `vpdpbusd` against a broadcast 4-byte activation group
//! compute one 4-value partial sum of all 16 rows at once, one lane per row, with no shuffles
//! or horizontal sums. The 32-wide formats keep llama.cpp's eight per-block partial sums apart
//! (its rounding order, see `x86/avx512_packed.rs`); the K-quants fold them in integers.
//!
//! Tile `t` (rows `16t..16t+16`, zero rows past the end) holds, for each block column `b`:
//! `d` (16 × `f16`), `m` (16 × `f16`, `Q4_1`/`Q5_1`), the fifth bits (8 × `u64` masks,
//! `Q5_0`/`Q5_1`), then the values as unsigned bytes (`Q8_0`: `q + 128`; 512 bytes) or nibbles
//! (256 bytes). Value `k` of row `r` sits in the 4-byte group `(k / 4) * 16 + r` of the byte
//! array; for nibbles, group `j` is the low (even `j`) or high (odd `j`) nibble of byte group
//! `(j / 2) * 16 + r`, and its fifth bits are bits `4r..4r+4` of mask `j`. Packed for AVX2
//! ([`Layout::high_bytes`]), the same 64 bytes hold the fifth bits as bytes instead: bit `j`
//! of byte `32 (r / 8) + 4 (r % 8) + i` is the fifth bit of value `4j + i` of row `r`, so that
//! a 16-bit shift and a mask put a group's bits in place for 8 rows.

use super::blocks::f16_le;
use super::isa::{self, Isa};
use super::packed_k;
use super::{GgmlDType, Line, QMatrix, SyncPtr, pool};

/// Rows per tile.
pub const R: usize = 16;

/// Source bytes packed between two calls of the `done` callback of
/// [`PackedMatrix::new_releasing`].
pub const RELEASE_BYTES: usize = 4 << 20;

/// A weight matrix repacked for the 16-row kernels; see the module docs.
pub struct PackedMatrix {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    /// See [`Layout::high_bytes`].
    high_bytes: bool,
    data: Vec<Line>,
}

/// Byte offsets inside one block column of a tile.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Layout {
    /// `Q4_K` / `Q5_K` / `Q6_K` (see `packed_k.rs`) rather than a 32-wide format.
    pub kquant: bool,
    /// `Q6_K` (`packed_k::q6`).
    pub q6: bool,
    /// Values per block column.
    pub block: usize,
    pub min: bool,
    pub q5: bool,
    pub m_at: usize,
    pub masks_at: usize,
    pub values_at: usize,
    /// Bytes of one block column (16 blocks).
    pub bytes: usize,
    /// Value offset: `w = d (v - offset)` (or `d v + m` with a min).
    pub offset: f32,
    /// 32-wide 5-bit formats and `Q6_K`: the high bits as bytes (for AVX2) rather than as
    /// `u64` masks per 4-value group (for AVX-512); see the module docs and `packed_k::q6`.
    /// [`Layout::of`] gives the masks.
    pub high_bytes: bool,
}

impl Layout {
    pub const fn of(dtype: GgmlDType) -> Option<Layout> {
        use GgmlDType::*;
        if matches!(dtype, Q6K) {
            let q6 = packed_k::q6::BYTES;
            let (v, h) = (packed_k::q6::V_AT, packed_k::q6::H_AT);
            return Some(Layout {
                kquant: true,
                q6: true,
                block: 256,
                min: false,
                q5: false,
                m_at: 0,
                masks_at: h,
                values_at: v,
                bytes: q6,
                offset: 32.0,
                high_bytes: false,
            });
        }
        if matches!(dtype, Q4K | Q5K) {
            let q5 = matches!(dtype, Q5K);
            return Some(Layout {
                kquant: true,
                q6: false,
                block: 256,
                min: true,
                q5,
                m_at: 32,
                masks_at: packed_k::MASKS_AT,
                values_at: packed_k::values_at(q5),
                bytes: packed_k::column_bytes(q5),
                offset: 0.0,
                high_bytes: false,
            });
        }
        let (min, q5, offset) = match dtype {
            Q4_0 => (false, false, 8.0),
            Q4_1 => (true, false, 0.0),
            Q5_0 => (false, true, 16.0),
            Q5_1 => (true, true, 0.0),
            Q8_0 => (false, false, 128.0),
            _ => return None,
        };
        let m_at = 2 * R;
        let masks_at = m_at + if min { 2 * R } else { 0 };
        let values_at = masks_at + if q5 { 64 } else { 0 };
        let values = if matches!(dtype, Q8_0) {
            32 * R
        } else {
            16 * R
        };
        Some(Layout {
            kquant: false,
            q6: false,
            block: 32,
            min,
            q5,
            m_at,
            masks_at,
            values_at,
            bytes: values_at + values,
            offset,
            high_bytes: false,
        })
    }
}

/// The unsigned values (`0..2^bits`) and the `d`, `m` bytes of block `b` of GGUF row `row`.
fn block_values(w: &QMatrix, row: usize, b: usize) -> ([u8; 32], [u8; 2], [u8; 2]) {
    let size = w.dtype.type_size();
    let p = &w.row(row)[b * size..(b + 1) * size];
    let d = [p[0], p[1]];
    let mut v = [0u8; 32];
    let nibbles = |qs: &[u8], v: &mut [u8; 32]| {
        for j in 0..16 {
            v[j] = qs[j] & 0xF;
            v[j + 16] = qs[j] >> 4;
        }
    };
    let high = |qh: &[u8], v: &mut [u8; 32]| {
        let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (k, v) in v.iter_mut().enumerate() {
            *v |= (((h >> k) & 1) as u8) << 4;
        }
    };
    let mut m = [0u8; 2];
    match w.dtype {
        GgmlDType::Q4_0 => nibbles(&p[2..18], &mut v),
        GgmlDType::Q4_1 => {
            m = [p[2], p[3]];
            nibbles(&p[4..20], &mut v);
        }
        GgmlDType::Q5_0 => {
            nibbles(&p[6..22], &mut v);
            high(&p[2..6], &mut v);
        }
        GgmlDType::Q5_1 => {
            m = [p[2], p[3]];
            nibbles(&p[8..24], &mut v);
            high(&p[4..8], &mut v);
        }
        _ => {
            for (v, &q) in v.iter_mut().zip(&p[2..34]) {
                *v = q ^ 0x80;
            }
        }
    }
    (v, d, m)
}

/// Value `k` of row `r` in a packed block column.
#[inline(always)]
pub fn value(lay: &Layout, col: &[u8], r: usize, k: usize) -> u8 {
    let vals = &col[lay.values_at..];
    if lay.bytes - lay.values_at == 32 * R {
        return vals[(k / 4) * 64 + r * 4 + k % 4];
    }
    let j = k / 4;
    let byte = vals[(j / 2) * 64 + r * 4 + k % 4];
    let mut v = if j.is_multiple_of(2) {
        byte & 0xF
    } else {
        byte >> 4
    };
    if lay.q5 && lay.high_bytes {
        v |= ((col[high_byte(lay, r, k)] >> j) & 1) << 4;
    } else if lay.q5 {
        let at = lay.masks_at + 8 * j;
        let mask = u64::from_le_bytes(col[at..at + 8].try_into().expect("8 bytes"));
        v |= (((mask >> (4 * r + k % 4)) & 1) as u8) << 4;
    }
    v
}

/// The byte of a [`Layout::high_bytes`] column that holds the fifth bit of value `k` of row `r`
/// (as its bit `k / 4`).
#[inline(always)]
fn high_byte(lay: &Layout, r: usize, k: usize) -> usize {
    lay.masks_at + 32 * (r / 8) + 4 * (r % 8) + k % 4
}

impl PackedMatrix {
    /// Repacks `w`, or `None` for formats without a packed kernel.
    pub fn new(w: &QMatrix) -> Option<PackedMatrix> {
        Self::new_releasing(w, |_| {})
    }

    /// [`Self::new`], calling `done(bytes)` with each range of `w.data` once it is packed, in
    /// slices of about [`RELEASE_BYTES`]: the caller can drop those source pages as it goes,
    /// so that packing a large matrix never holds both copies whole.
    pub fn new_releasing(
        w: &QMatrix,
        done: impl FnMut(std::ops::Range<usize>),
    ) -> Option<PackedMatrix> {
        if !packs(w.dtype) {
            return None;
        }
        Self::pack_releasing(w, done)
    }

    /// Repacks `w` whatever the CPU (the portable tile kernel is slow: see [`Self::new`]).
    #[cfg(test)]
    pub(crate) fn pack(w: &QMatrix) -> Option<PackedMatrix> {
        Self::pack_releasing(w, |_| {})
    }

    /// [`Self::pack`] with the fifth bits laid out as asked (`Layout::high_bytes`).
    #[cfg(test)]
    pub(crate) fn pack_high(w: &QMatrix, high_bytes: bool) -> Option<PackedMatrix> {
        Self::pack_as(w, high_bytes, |_| {})
    }

    fn pack_releasing(
        w: &QMatrix,
        done: impl FnMut(std::ops::Range<usize>),
    ) -> Option<PackedMatrix> {
        Self::pack_as(w, avx2_high_bytes(), done)
    }

    fn pack_as(
        w: &QMatrix,
        high_bytes: bool,
        mut done: impl FnMut(std::ops::Range<usize>),
    ) -> Option<PackedMatrix> {
        let lay = Layout::of(w.dtype)?;
        let lay = Layout {
            high_bytes: high_bytes && ((lay.q5 && !lay.kquant) || lay.q6),
            ..lay
        };
        let nb = w.cols / lay.block;
        let tiles = w.rows.div_ceil(R);
        let tile_bytes = nb * lay.bytes;
        let mut data = vec![Line([0; 64]); (tiles * tile_bytes).div_ceil(64)];
        huge_pages(&mut data);
        let ptr = SyncPtr(data.as_mut_ptr().cast::<u8>());
        let step = (RELEASE_BYTES / (R * w.row_bytes())).max(1);
        for first in (0..tiles).step_by(step) {
            let end = (first + step).min(tiles);
            let chunks = pool::Chunks::new(end - first);
            pool::run(&|_| {
                while let Some(i) = chunks.claim() {
                    let t = first + i;
                    // SAFETY: each tile index is claimed once, so the slices are disjoint, and
                    // tile `t` lies inside the `tiles * tile_bytes` bytes allocated above.
                    let tile = unsafe {
                        std::slice::from_raw_parts_mut(ptr.get().add(t * tile_bytes), tile_bytes)
                    };
                    pack_tile(w, &lay, t, tile);
                }
            });
            done(first * R * w.row_bytes()..(end * R).min(w.rows) * w.row_bytes());
        }
        Some(PackedMatrix {
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            high_bytes: lay.high_bytes,
            data,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is plain bytes; the view covers exactly the vector's storage.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), self.data.len() * 64) }
    }

    /// The block-column layout of the tiles.
    pub(super) fn layout(&self) -> Layout {
        Layout {
            high_bytes: self.high_bytes,
            ..Layout::of(self.dtype).expect("packed formats only")
        }
    }

    /// The bytes of row tile `t` (rows `16t..16t+16`).
    pub(super) fn tile(&self, t: usize) -> &[u8] {
        let lay = self.layout();
        let len = self.cols / lay.block * lay.bytes;
        &self.bytes()[t * len..(t + 1) * len]
    }

    /// Dequantizes row `row` into `out` (`cols` long), e.g. for an embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows && out.len() == self.cols,
            "dequantize_row: row or length"
        );
        let lay = self.layout();
        let r = row % R;
        for (col, y) in self
            .tile(row / R)
            .chunks_exact(lay.bytes)
            .zip(out.chunks_exact_mut(lay.block))
        {
            if lay.kquant {
                if lay.q6 {
                    packed_k::q6::dequantize(col, r, y, lay.high_bytes);
                } else {
                    packed_k::dequantize(lay.q5, col, r, y);
                }
                continue;
            }
            let d = f16_le([col[2 * r], col[2 * r + 1]]);
            let m = if lay.min {
                f16_le([col[lay.m_at + 2 * r], col[lay.m_at + 2 * r + 1]])
            } else {
                0.0
            };
            for (k, y) in y.iter_mut().enumerate() {
                *y = d * (value(&lay, col, r, k) as f32 - lay.offset) + m;
            }
        }
    }
}

/// Whether this CPU has a packed tile kernel for `dtype` that beats the row kernels: AVX-512
/// VNNI for every packed format, AVX2 too (for `Q6_K` only where the tiles hold the high bits
/// as bytes, see [`avx2_high_bytes`]). The portable tile kernel is slower than the row kernels.
pub fn packs(dtype: GgmlDType) -> bool {
    match isa::get() {
        Isa::Avx512 => Layout::of(dtype).is_some(),
        Isa::Avx2 => Layout::of(dtype).is_some_and(|l| !l.q6 || avx2_high_bytes()),
        Isa::Scalar | Isa::Neon | Isa::NeonDot => false,
    }
}

/// Whether packing lays the high bits out as bytes ([`Layout::high_bytes`]): AVX2 kernels read
/// bytes, AVX-512 ones masks. A CPU with AVX-512 keeps the masks even where `WARD_ISA=avx2`
/// asks for the AVX2 kernels; those read the 32-wide formats' masks too, and leave `Q6_K` in
/// the GGUF layout.
fn avx2_high_bytes() -> bool {
    isa::get() == Isa::Avx2 && !isa::available().contains(&Isa::Avx512)
}

/// Asks the kernel to back `data` (not yet touched: zeroed allocations this large come as fresh
/// pages) with transparent huge pages, so that streaming the weights for every token does not
/// walk a page table entry per 4 KiB.
fn huge_pages(data: &mut [Line]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, len) = (data.as_mut_ptr() as usize, std::mem::size_of_val(data));
        let (lo, hi) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
        if hi > lo {
            // SAFETY: the range lies inside `data`'s allocation; MADV_HUGEPAGE is a hint that
            // changes no contents and no mapping.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// Packs rows `16t..16t+16` of `w` into `tile` (zeroed).
fn pack_tile(w: &QMatrix, lay: &Layout, t: usize, tile: &mut [u8]) {
    let size = w.dtype.type_size();
    for (b, col) in tile.chunks_exact_mut(lay.bytes).enumerate() {
        for r in 0..R.min(w.rows - t * R) {
            let src = &w.row(t * R + r)[b * size..(b + 1) * size];
            if lay.kquant {
                if lay.q6 {
                    packed_k::q6::pack(src, col, r, lay.high_bytes);
                } else {
                    packed_k::pack(w.dtype, src, col, r);
                }
                continue;
            }
            col[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
            if w.dtype == GgmlDType::Q8_0 {
                // Four values at a time: `q + 128` is `q ^ 0x80`.
                for j in 0..8 {
                    let q =
                        u32::from_le_bytes(src[2 + 4 * j..6 + 4 * j].try_into().expect("4 bytes"));
                    let at = lay.values_at + j * 64 + r * 4;
                    col[at..at + 4].copy_from_slice(&(q ^ 0x8080_8080).to_le_bytes());
                }
                continue;
            }
            let (v, _, m) = block_values(w, t * R + r, b);
            if lay.min {
                col[lay.m_at + 2 * r..lay.m_at + 2 * r + 2].copy_from_slice(&m);
            }
            for (k, &v) in v.iter().enumerate() {
                let j = k / 4;
                let at = lay.values_at + (j / 2) * 64 + r * 4 + k % 4;
                col[at] |= (v & 0xF) << (4 * (j % 2));
                if lay.q5 && v >= 16 && lay.high_bytes {
                    col[high_byte(lay, r, k)] |= 1 << j;
                } else if lay.q5 && v >= 16 {
                    let bit = 4 * r + k % 4;
                    col[lay.masks_at + 8 * j + bit / 8] |= 1 << (bit % 8);
                }
            }
        }
    }
}
