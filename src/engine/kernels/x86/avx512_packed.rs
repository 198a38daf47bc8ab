//! AVX-512 VNNI kernels for the 16-row packed formats (see `packed.rs`, `packed_k.rs`): each
//! `zmm` of weights holds 4 values of 16 rows, so `vpdpbusd` against a broadcast 4-byte activation
//! group accumulates all 16 rows at once and no horizontal sums are needed.

use super::super::GgmlDType;
use super::super::blocks::{BlockQ8K, BlockQ8s};
use super::super::isa::{Numerics, numerics};
use super::super::packed::{Layout, R};
use super::super::packed_k::{MN_AT, SC_AT, q6};
use std::arch::x86_64::*;

/// What a tile kernel prefetches as it reads each block column.
#[derive(Clone, Copy)]
enum Ahead {
    /// Nothing: prefill reuses tiles from cache, and later passes read what the first fetched.
    None,
    /// A decode-sized batch streams the tile: its first pass fetches the next tile's column
    /// (this many bytes on) into L2 only, so that the tile any later passes re-read stays in
    /// L1. Measured on Zen 4 against fetching 2048 bytes on into L1 (the earlier choice),
    /// builds alternated 4 times: decode of Qwen2.5-0.5B 50 -> 62 t/s and of SmolLM2
    /// 179 -> 224 t/s, 8 batched tokens 165 -> 204 and 530 -> 680; two or four tiles on were
    /// no faster.
    NextTile(usize),
}

/// Issues `ahead`'s prefetches for the `bytes` of the column at `col`.
#[inline(always)]
fn prefetch(ahead: Ahead, col: *const u8, bytes: usize) {
    if let Ahead::NextTile(d) = ahead {
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetching never faults; the address is only a hint.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(col.wrapping_add(d + off).cast()) };
        }
    }
}

/// Bytes of one activation block.
const XB: usize = std::mem::size_of::<BlockQ8s>();

/// The 32-wide formats as a kernel's const parameter, with their block-column layout
/// (`packed::Layout`) as constants, so that the inner loops carry no format tests.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

struct Fmt<const F: u8>;

impl<const F: u8> Fmt<F> {
    const LAYOUT: Layout = match Layout::of(match F {
        Q4_0 => GgmlDType::Q4_0,
        Q4_1 => GgmlDType::Q4_1,
        Q5_0 => GgmlDType::Q5_0,
        Q5_1 => GgmlDType::Q5_1,
        _ => GgmlDType::Q8_0,
    }) {
        Some(l) => l,
        None => panic!("a 32-wide packed format"),
    };
    const MIN: bool = Self::LAYOUT.min;
    const Q5: bool = Self::LAYOUT.q5;
    const Q8: bool = F == Q8_0;
    const M_AT: usize = Self::LAYOUT.m_at;
    const MASKS_AT: usize = Self::LAYOUT.masks_at;
    const VALUES_AT: usize = Self::LAYOUT.values_at;
    const BYTES: usize = Self::LAYOUT.bytes;
    const OFFSET: f32 = Self::LAYOUT.offset;

    /// Checks that `lay` is this format's layout and the lengths of a tile kernel's call for
    /// `tokens` tokens; the number of block columns.
    fn columns(lay: &Layout, tile: &[u8], a: &[u8], arow: usize, tokens: usize) -> usize {
        assert_eq!(
            *lay,
            Self::LAYOUT,
            "packed kernel: layout of another format"
        );
        let nb = tile.len() / Self::BYTES;
        assert!(
            tile.len() == nb * Self::BYTES && a.len() >= (tokens - 1) * arow + nb * XB,
            "packed kernel: lengths"
        );
        nb
    }
}

/// The format constant of a 32-wide layout.
fn fmt_of(lay: &Layout) -> u8 {
    match (lay.min, lay.q5, lay.bytes - lay.values_at == 32 * R) {
        (_, _, true) => Q8_0,
        (true, true, _) => Q5_1,
        (true, false, _) => Q4_1,
        (false, true, _) => Q5_0,
        (false, false, _) => Q4_0,
    }
}

/// The eight vectors of 4-value groups of one block column.
///
/// # Safety
/// `col` points at one whole block column of format `F`.
#[inline(always)]
unsafe fn values32<const F: u8>(col: *const u8) -> [__m512i; 8] {
    // SAFETY: as the caller guarantees; offsets follow `Fmt<F>`.
    unsafe {
        let v = col.add(Fmt::<F>::VALUES_AT);
        let mut wv = [_mm512_setzero_si512(); 8];
        if Fmt::<F>::Q8 {
            for (j, w) in wv.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(v.add(64 * j).cast());
            }
            return wv;
        }
        let m4 = _mm512_set1_epi8(0x0F);
        for g in 0..4 {
            let q = _mm512_loadu_si512(v.add(64 * g).cast());
            wv[2 * g] = _mm512_and_si512(q, m4);
            wv[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
        }
        if Fmt::<F>::Q5 {
            let k16 = _mm512_set1_epi8(16);
            for (j, w) in wv.iter_mut().enumerate() {
                let k = col
                    .add(Fmt::<F>::MASKS_AT + 8 * j)
                    .cast::<u64>()
                    .read_unaligned();
                *w = _mm512_mask_add_epi8(*w, k, *w, k16);
            }
        }
        wv
    }
}

/// How a [`tile_x`] pass gets a block column's weight vectors: unpacked from the tile, the
/// same and also stored to the cache, or loaded from the cache a previous pass filled.
const DIRECT: u8 = 0;
const FILL: u8 = 1;
const READ: u8 = 2;

thread_local! {
    /// The unpacked weight vectors of the tile a batch's passes share (see [`tile`]).
    static UNPACKED: std::cell::RefCell<Vec<__m512i>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The 32-wide formats in llama.cpp's summation order (`ggml_vec_dot_q4_1_q8_1` and its
/// siblings, AVX2/VNNI build), so that products round as the reference engine's do: per row,
/// eight 4-value integer sums per block (offsets taken off in integers), each scaled and
/// accumulated in its own `f32` lane across the blocks, the lanes folded as `hsum_float_8`
/// folds them, then the separately accumulated minimum term added. Two tokens at a time: the
/// eight lanes of 16 rows fill the registers. The format is a const parameter and the loop
/// walks raw pointers: at two tokens a pass, every instruction of per-block overhead costs
/// about as much as the arithmetic it feeds.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_x<const T: usize, const F: u8, const C: u8>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    ahead: Ahead,
    cache: *mut __m512i,
    out: &mut [[f32; R]],
) {
    assert_eq!(out.len(), T, "packed kernel: tokens");
    let (nb, bytes) = (Fmt::<F>::columns(lay, tile, a, arow, T), Fmt::<F>::BYTES);
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    let mut summ = [_mm512_setzero_ps(); T];
    let (mut col, mut x0) = (tile.as_ptr(), a.as_ptr());
    for b in 0..nb {
        prefetch(ahead, col, bytes);
        // SAFETY: `col` is one whole block column of format `F` (`nb` columns asserted), and
        // block `b` of each of the `T` tokens lies inside `a` (asserted); with a cache
        // (`C != DIRECT`), `cache` holds `8 * nb` vectors.
        unsafe {
            let wv = match C {
                READ => std::array::from_fn(|j| _mm512_load_si512(cache.add(8 * b + j).cast())),
                _ => {
                    let wv = values32::<F>(col);
                    if C == FILL {
                        for (j, &w) in wv.iter().enumerate() {
                            _mm512_store_si512(cache.add(8 * b + j).cast(), w);
                        }
                    }
                    wv
                }
            };
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
            for t in 0..T {
                let x = &*x0.add(t * arow).cast::<BlockQ8s>();
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d));
                for (j, &w) in wv.iter().enumerate() {
                    let g = x.qs.as_ptr().add(4 * j).cast::<i32>().read_unaligned();
                    // Offset formats: each lane starts from `-offset · Σ` of its 4 activations
                    // (`c4`, scaled by `matmul_packed`).
                    let init = if Fmt::<F>::MIN {
                        zero
                    } else {
                        _mm512_set1_epi32(x.c4[j])
                    };
                    let s = _mm512_dpbusd_epi32(init, w, _mm512_set1_epi32(g));
                    acc[t][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[t][j]);
                }
                if Fmt::<F>::MIN {
                    let m = _mm512_cvtph_ps(_mm256_loadu_si256(col.add(Fmt::<F>::M_AT).cast()));
                    summ[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), summ[t]);
                }
            }
            col = col.add(bytes);
            x0 = x0.add(XB);
        }
    }
    for t in 0..T {
        let a = &acc[t];
        let lo = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
        let hi = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
        let mut r = _mm512_add_ps(lo, hi);
        if Fmt::<F>::MIN {
            r = _mm512_add_ps(r, summ[t]);
        }
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), r) };
    }
}

/// The 32-wide formats in ward's own order (`WARD_NUMERICS=fast`): each block's 32-value
/// integer sum scaled once and the minimum (or offset) term fused in, up to 8 tokens a pass.
/// About twice the prefill and batched-decode speed of [`tile_x`], at the cost of last-bit
/// agreement with llama.cpp. Format and token count are const parameters, as in [`tile_x`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_fast<const T: usize, const F: u8>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    ahead: Ahead,
    out: &mut [[f32; R]],
) {
    assert_eq!(out.len(), T, "packed kernel: tokens");
    let (nb, bytes) = (Fmt::<F>::columns(lay, tile, a, arow, T), Fmt::<F>::BYTES);
    let mut acc = [_mm512_setzero_ps(); T];
    let (mut col, mut x0) = (tile.as_ptr(), a.as_ptr());
    for _ in 0..nb {
        prefetch(ahead, col, bytes);
        // SAFETY: `col` is one whole block column of format `F` (`nb` columns asserted), and
        // block `b` of each of the `T` tokens lies inside `a` (asserted).
        unsafe {
            let wv = values32::<F>(col);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
            let c = if Fmt::<F>::MIN {
                _mm512_cvtph_ps(_mm256_loadu_si256(col.add(Fmt::<F>::M_AT).cast()))
            } else {
                _mm512_mul_ps(dw, _mm512_set1_ps(-Fmt::<F>::OFFSET))
            };
            for t in 0..T {
                let x = &*x0.add(t * arow).cast::<BlockQ8s>();
                let mut s = _mm512_setzero_si512();
                for (j, &w) in wv.iter().enumerate() {
                    let g = x.qs.as_ptr().add(4 * j).cast::<i32>().read_unaligned();
                    s = _mm512_dpbusd_epi32(s, w, _mm512_set1_epi32(g));
                }
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[t]);
                acc[t] = _mm512_fmadd_ps(c, _mm512_set1_ps(x.s), acc[t]);
            }
            col = col.add(bytes);
            x0 = x0.add(XB);
        }
    }
    for t in 0..T {
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
    }
}

/// `Q4_K` (`Q5 = false`) / `Q5_K` tiles: per sub-block, 16-value (`Q5_K`: 8-value) partial
/// sums stay within 16 bits, so `vpdpwssd` applies the per-row scales in integers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_k<const T: usize, const Q5: bool>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    ahead: Ahead,
    gemm: usize,
    out: &mut [[f32; R]],
) {
    const XK: usize = std::mem::size_of::<BlockQ8K>();
    let nb = tile.len() / lay.bytes;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * XK);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let m4 = _mm512_set1_epi8(0x0F);
    // `Q4_K` keeps llama.cpp's order: the minimum terms in their own accumulator, subtracted at
    // the end; its multi-row kernel (the first `gemm` tokens) scales and accumulates every
    // 64 values, its one-row kernel every block. (`Q5_K` folds both into one accumulator.)
    let mut acc = [_mm512_setzero_ps(); T];
    let mut accm = [_mm512_setzero_ps(); T];
    let bsum_pair = |x: &BlockQ8K, p: usize| {
        // SAFETY: two `i16` sums at `2p` of 16.
        _mm512_set1_epi32(unsafe { x.bsum32.as_ptr().add(2 * p).cast::<i32>().read_unaligned() })
    };
    for b in 0..nb {
        let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
        prefetch(ahead, col, lay.bytes);
        // SAFETY: token `t`'s block `b` lies inside `a` (asserted), 64-byte aligned.
        let x = |t: usize| unsafe { &*a.as_ptr().add(t * arow + b * XK).cast::<BlockQ8K>() };
        // SAFETY: `col` is one whole column; offsets follow `packed_k`.
        let (dv, dmv, mins) = unsafe {
            let mins: [__m512i; 4] = std::array::from_fn(|p| {
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(col.add(MN_AT + 32 * p).cast()))
            });
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
            (
                dv,
                _mm512_cvtph_ps(_mm256_loadu_si256(col.add(32).cast())),
                mins,
            )
        };
        let mut isum = [_mm512_setzero_si512(); T];
        let mut s = [_mm512_setzero_si512(); T];
        for sb in 0..8 {
            // SAFETY: 16 scale bytes of sub-block `sb`.
            let scv =
                _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(col.add(SC_AT + 16 * sb).cast()) });
            for gi in 0..4 {
                let g = 4 * sb + gi;
                // SAFETY: group `g` of the nibbles, and its two masks.
                let (lo, hi) = unsafe {
                    let q = _mm512_loadu_si512(col.add(lay.values_at + 64 * g).cast());
                    let (lo, hi) = (
                        _mm512_and_si512(q, m4),
                        _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4),
                    );
                    if Q5 {
                        let k =
                            |j: usize| col.add(lay.masks_at + 8 * j).cast::<u64>().read_unaligned();
                        let k16 = _mm512_set1_epi8(16);
                        (
                            _mm512_mask_add_epi8(lo, k(2 * g), lo, k16),
                            _mm512_mask_add_epi8(hi, k(2 * g + 1), hi, k16),
                        )
                    } else {
                        (lo, hi)
                    }
                };
                for t in 0..T {
                    // SAFETY: 8 bytes at `8g` of the 256 values.
                    let (xl, xh) = unsafe {
                        let p = x(t).qs.as_ptr().add(8 * g).cast::<i32>();
                        (
                            _mm512_set1_epi32(p.read_unaligned()),
                            _mm512_set1_epi32(p.add(1).read_unaligned()),
                        )
                    };
                    s[t] = _mm512_dpbusd_epi32(s[t], lo, xl);
                    s[t] = _mm512_dpbusd_epi32(s[t], hi, xh);
                    if Q5 || gi % 2 == 1 {
                        isum[t] = _mm512_dpwssd_epi32(isum[t], s[t], scv);
                        s[t] = _mm512_setzero_si512();
                    }
                }
            }
            if !Q5 && sb % 2 == 1 {
                // The end of a 64-value pair of sub-blocks: the multi-row order's step.
                let p = sb / 2;
                for t in 0..gemm.min(T) {
                    let x = x(t);
                    let im = _mm512_dpwssd_epi32(_mm512_setzero_si512(), mins[p], bsum_pair(x, p));
                    let xd = _mm512_set1_ps(x.d);
                    acc[t] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dv, xd), acc[t]);
                    accm[t] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(im), _mm512_mul_ps(dmv, xd), accm[t]);
                    isum[t] = _mm512_setzero_si512();
                }
            }
        }
        let first = if Q5 { 0 } else { gemm.min(T) };
        for t in first..T {
            let x = x(t);
            let mut im = _mm512_setzero_si512();
            for (p, &mv) in mins.iter().enumerate() {
                im = _mm512_dpwssd_epi32(im, mv, bsum_pair(x, p));
            }
            let xd = _mm512_set1_ps(x.d);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dv, xd), acc[t]);
            if Q5 {
                acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(im), _mm512_mul_ps(dmv, xd), acc[t]);
            } else {
                accm[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(im), _mm512_mul_ps(dmv, xd), accm[t]);
            }
        }
    }
    for t in 0..T {
        let r = if Q5 {
            acc[t]
        } else {
            _mm512_sub_ps(acc[t], accm[t])
        };
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), r) };
    }
}

/// The 6-bit values of 16-value group `gg` of a `Q6_K` block column: four vectors, the 4-value
/// groups `4gg..4gg+4`, 16 rows each.
///
/// # Safety
/// `col` points at one whole `packed_k::q6` column.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6_values(col: *const u8, gg: usize) -> [__m512i; 4] {
    let (m4, k16, k32) = (
        _mm512_set1_epi8(0x0F),
        _mm512_set1_epi8(16),
        _mm512_set1_epi8(32),
    );
    let mut wv = [_mm512_setzero_si512(); 4];
    for h in 0..2 {
        let g = 2 * gg + h;
        // SAFETY: nibble group `g` and the masks of its two vectors lie inside the column.
        unsafe {
            let q = _mm512_loadu_si512(col.add(q6::V_AT + 64 * g).cast());
            let nib = [
                _mm512_and_si512(q, m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4),
            ];
            for (e, mut w) in nib.into_iter().enumerate() {
                let m = col.add(q6::H_AT + 16 * (2 * g + e)).cast::<u64>();
                w = _mm512_mask_add_epi8(w, m.read_unaligned(), w, k16);
                wv[2 * h + e] = _mm512_mask_add_epi8(w, m.add(1).read_unaligned(), w, k32);
            }
        }
    }
    wv
}

/// `Q6_K` tiles in llama.cpp's order (`ggml_vec_dot_q6_K_q8_K`, AVX2 build): per row, eight
/// integer lanes per block, lane `l` taking the 4-value groups `l, l + 8, …` of the block, each
/// times its 16-value group's scale, less `32 · (sc[2l] bsum[2l] + sc[2l+1] bsum[2l+1])`;
/// each lane scaled and accumulated in its own `f32` accumulator across the blocks, folded as
/// `hsum_float_8` folds them. One token at a time (the lanes fill the registers).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q6(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    ahead: Ahead,
    out: &mut [[f32; R]],
) {
    const XK: usize = std::mem::size_of::<BlockQ8K>();
    let nb = tile.len() / lay.bytes;
    let tokens = out.len();
    assert!(a.len() >= (tokens - 1) * arow + nb * XK);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let (zero, lo16) = (_mm512_setzero_si512(), _mm512_set1_epi32(0xFFFF));
    for (t, out) in out.iter_mut().enumerate() {
        let mut acc = [_mm512_setzero_ps(); 8];
        for b in 0..nb {
            let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
            prefetch(if t == 0 { ahead } else { Ahead::None }, col, lay.bytes);
            // SAFETY: token `t`'s block `b` lies inside `a` (asserted), 64-byte aligned.
            let x = unsafe { &*a.as_ptr().add(t * arow + b * XK).cast::<BlockQ8K>() };
            // SAFETY: `col` is one whole column; offsets follow `packed_k::q6`.
            let sc8 = |g: usize| unsafe { _mm_loadu_si128(col.add(q6::SC_AT + 16 * g).cast()) };
            // SAFETY: as above.
            let dv = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(col.cast()) });
            let mut isum = [zero; 8];
            for gg in 0..16 {
                // Each row's scale as the low half of an `i32` lane, for `vpdpwssd`.
                let sc = _mm512_and_si512(_mm512_cvtepi8_epi32(sc8(gg)), lo16);
                // SAFETY: `col` is one whole column.
                let wv = unsafe { q6_values(col, gg) };
                // SAFETY: 16 bytes at `16gg` of the 256 values.
                let p = unsafe { x.qs.as_ptr().add(16 * gg).cast::<i32>() };
                for (j, &w) in wv.iter().enumerate() {
                    // SAFETY: inside the 16 bytes above.
                    let g = _mm512_set1_epi32(unsafe { p.add(j).read_unaligned() });
                    // |Σ of 4 products| < 2^15, so the sum is exact in the low half.
                    let s = _mm512_dpbusd_epi32(zero, w, g);
                    let l = 4 * (gg % 2) + j;
                    isum[l] = _mm512_dpwssd_epi32(isum[l], s, sc);
                }
            }
            let d = _mm512_mul_ps(dv, _mm512_set1_ps(x.d));
            for (l, isum) in isum.iter().enumerate() {
                let (a, c) = (sc8(2 * l), sc8(2 * l + 1));
                let lo = _mm256_set_m128i(_mm_unpackhi_epi8(a, c), _mm_unpacklo_epi8(a, c));
                let pair = _mm512_cvtepi8_epi16(lo);
                // SAFETY: two `i16` sums at `2l` of 16.
                let bp = unsafe { x.bsums.as_ptr().add(2 * l).cast::<i32>().read_unaligned() };
                let im = _mm512_dpwssd_epi32(zero, pair, _mm512_set1_epi32(bp));
                let v = _mm512_sub_epi32(*isum, _mm512_slli_epi32::<5>(im));
                acc[l] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), d, acc[l]);
            }
        }
        let lo = _mm512_add_ps(_mm512_add_ps(acc[0], acc[4]), _mm512_add_ps(acc[2], acc[6]));
        let hi = _mm512_add_ps(_mm512_add_ps(acc[1], acc[5]), _mm512_add_ps(acc[3], acc[7]));
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(lo, hi)) };
    }
}

/// `Q6_K` tiles for batches of 8 or more tokens, in the order of llama.cpp's tiled K-quant
/// kernel: one integer sum per row and block (`Σ_g sc_g (Σ q x - 32 bsum_g)`), scaled by the
/// weight's scale, then by the activation's in a fused step onto the running sum (GCC contracts
/// its `add(acc, mul(r, d))`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q6_tiled<const T: usize, const C: u8>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    ahead: Ahead,
    cache: *mut __m512i,
    out: &mut [[f32; R]],
) {
    const XK: usize = std::mem::size_of::<BlockQ8K>();
    let nb = tile.len() / lay.bytes;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * XK);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let zero = _mm512_setzero_si512();
    let mut sum = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
        prefetch(ahead, col, lay.bytes);
        // SAFETY: token `t`'s block `b` lies inside `a` (asserted), 64-byte aligned.
        let x = |t: usize| unsafe { &*a.as_ptr().add(t * arow + b * XK).cast::<BlockQ8K>() };
        // SAFETY: `col` is one whole column; offsets follow `packed_k::q6`.
        let sc8 = |g: usize| unsafe { _mm_loadu_si128(col.add(q6::SC_AT + 16 * g).cast()) };
        // SAFETY: as above.
        let dv = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(col.cast()) });
        let mut isum = [zero; T];
        for gg in 0..16 {
            let sc = _mm512_cvtepi8_epi32(sc8(gg));
            // SAFETY: `col` is one whole column; with a cache (`C != DIRECT`), `cache` holds
            // `64 * nb` vectors.
            let wv: [__m512i; 4] = unsafe {
                let at = cache.wrapping_add(4 * (16 * b + gg));
                match C {
                    READ => std::array::from_fn(|e| _mm512_load_si512(at.add(e).cast())),
                    _ => {
                        let wv = q6_values(col, gg);
                        if C == FILL {
                            for (e, &w) in wv.iter().enumerate() {
                                _mm512_store_si512(at.add(e).cast(), w);
                            }
                        }
                        wv
                    }
                }
            };
            for t in 0..T {
                // SAFETY: 16 bytes at `16gg` of the 256 values.
                let p = unsafe { x(t).qs.as_ptr().add(16 * gg).cast::<i32>() };
                let mut s = zero;
                for (j, &w) in wv.iter().enumerate() {
                    // SAFETY: inside the 16 bytes above.
                    let g = _mm512_set1_epi32(unsafe { p.add(j).read_unaligned() });
                    s = _mm512_dpbusd_epi32(s, w, g);
                }
                let off = _mm512_set1_epi32(32 * x(t).bsums[gg] as i32);
                isum[t] =
                    _mm512_add_epi32(isum[t], _mm512_mullo_epi32(_mm512_sub_epi32(s, off), sc));
            }
        }
        for t in 0..T {
            let r = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[t]), dv);
            sum[t] = _mm512_fmadd_ps(r, _mm512_set1_ps(x(t).d), sum[t]);
        }
    }
    for t in 0..T {
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), sum[t]) };
    }
}

/// The packed tile kernel (`packed::TileFn`).
///
/// # Safety
/// Requires AVX-512 F/BW/VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    gemm: usize,
    stream: bool,
    out: &mut [[f32; R]],
) {
    // What pass `pass` over the tile prefetches: the first of a decode-sized batch, the next tile.
    let first = |pass: usize| {
        if stream && pass == 0 {
            Ahead::NextTile(tile.len())
        } else {
            Ahead::None
        }
    };
    // SAFETY: same features; the kernels check the lengths.
    unsafe {
        if lay.q6 {
            let g = gemm.min(out.len());
            let (batched, rows) = out.split_at_mut(g);
            // Several passes of 4 share the unpacked weights, as the 5-bit formats' do below
            // (24 vector operations and 8 mask loads per 64 values). `Q6K/896x4864/packed/8`:
            // 377-480 -> 326-336 us on one thread in cache, 335-373 -> 316-337 us on two
            // streaming; Qwen2.5-0.5B's 8 batched tokens 199 -> 206 t/s.
            let cache = g > 4;
            let mut passes_over = |ptr: *mut __m512i| {
                for (c, o) in batched.chunks_mut(4).enumerate() {
                    let a = &a[4 * c * arow..];
                    macro_rules! q {
                        ($m:ident) => {
                            match o.len() {
                                1 => tile_q6_tiled::<1, $m>(lay, tile, a, arow, first(c), ptr, o),
                                2 => tile_q6_tiled::<2, $m>(lay, tile, a, arow, first(c), ptr, o),
                                3 => tile_q6_tiled::<3, $m>(lay, tile, a, arow, first(c), ptr, o),
                                _ => tile_q6_tiled::<4, $m>(lay, tile, a, arow, first(c), ptr, o),
                            }
                        };
                    }
                    match (cache, c) {
                        (false, _) => q!(DIRECT),
                        (true, 0) => q!(FILL),
                        (true, _) => q!(READ),
                    }
                }
            };
            if cache {
                UNPACKED.with_borrow_mut(|buf| {
                    buf.resize(64 * (tile.len() / lay.bytes), _mm512_setzero_si512());
                    passes_over(buf.as_mut_ptr())
                })
            } else {
                passes_over(std::ptr::null_mut())
            }
            if !rows.is_empty() {
                // The pass after the batched ones (the first when there are none).
                tile_q6(lay, tile, &a[g * arow..], arow, first(g.div_ceil(4)), rows);
            }
            return;
        }
        if lay.kquant {
            // Four tokens at a time: two accumulators and two partial sums each.
            for (c, o) in out.chunks_mut(4).enumerate() {
                let a = &a[4 * c * arow..];
                let g = gemm.saturating_sub(4 * c);
                macro_rules! k {
                    ($t:literal) => {
                        if lay.q5 {
                            tile_k::<$t, true>(lay, tile, a, arow, first(c), g, o)
                        } else {
                            tile_k::<$t, false>(lay, tile, a, arow, first(c), g, o)
                        }
                    };
                }
                match o.len() {
                    1 => k!(1),
                    2 => k!(2),
                    3 => k!(3),
                    _ => k!(4),
                }
            }
            return;
        }
        let f = fmt_of(lay);
        if numerics() == Numerics::Fast {
            let ahead = first(0);
            macro_rules! fast {
                ($($f:ident),*) => {
                    match f {
                        $($f => match out.len() {
                            1 => tile_fast::<1, $f>(lay, tile, a, arow, ahead, out),
                            2 => tile_fast::<2, $f>(lay, tile, a, arow, ahead, out),
                            3 => tile_fast::<3, $f>(lay, tile, a, arow, ahead, out),
                            4 => tile_fast::<4, $f>(lay, tile, a, arow, ahead, out),
                            5 => tile_fast::<5, $f>(lay, tile, a, arow, ahead, out),
                            6 => tile_fast::<6, $f>(lay, tile, a, arow, ahead, out),
                            7 => tile_fast::<7, $f>(lay, tile, a, arow, ahead, out),
                            8 => tile_fast::<8, $f>(lay, tile, a, arow, ahead, out),
                            n => unreachable!("{n} tokens"),
                        },)*
                        _ => unreachable!("format {f}"),
                    }
                };
            }
            return fast!(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0);
        }
        // A batch of several passes over a 5-bit tile unpacks its weights once: the first
        // pass stores the vectors it builds (28 vector operations and 8 mask loads a block
        // column), the others load them. Measured on Zen 4: `Q5_0/4864x896/packed/8` 487-504
        // -> 401-417 us on one thread in cache, 300-346 -> 241-266 us on two streaming;
        // Qwen2.5-0.5B (mostly `Q5_0`) 8 batched tokens 196 -> 217 t/s. The 4-bit tiles unpack
        // in 12 operations and were no faster through the cache, so they read the tile.
        let passes = out.len().div_ceil(2);
        let cache = passes > 1 && lay.q5;
        let mut passes_over = |ptr: *mut __m512i| {
            for (c, o) in out.chunks_mut(2).enumerate() {
                let a = &a[2 * c * arow..];
                let ahead = first(c);
                macro_rules! x {
                    ($m:ident; $($f:ident),*) => {
                        match (f, o.len()) {
                            $(($f, 1) => tile_x::<1, $f, $m>(lay, tile, a, arow, ahead, ptr, o),
                              ($f, _) => tile_x::<2, $f, $m>(lay, tile, a, arow, ahead, ptr, o),)*
                            _ => unreachable!("format {f}"),
                        }
                    };
                }
                match (cache, c) {
                    (false, _) => x!(DIRECT; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0),
                    (true, 0) => x!(FILL; Q5_0, Q5_1),
                    (true, _) => x!(READ; Q5_0, Q5_1),
                }
            }
        };
        if cache {
            UNPACKED.with_borrow_mut(|buf| {
                buf.resize(8 * (tile.len() / lay.bytes), _mm512_setzero_si512());
                passes_over(buf.as_mut_ptr())
            })
        } else {
            passes_over(std::ptr::null_mut())
        }
    }
}
