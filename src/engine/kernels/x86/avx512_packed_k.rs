//! AVX-512 VNNI kernels for the 16-row packed K-quant formats (`packed_k.rs`): `Q4_K` / `Q5_K`
//! tiles with their per-row scales applied in integers, and `Q6_K` tiles in llama.cpp's
//! one-row and tiled orders. [`super::avx512_packed::tile`] dispatches to them.

use super::super::blocks::BlockQ8K;
use super::super::packed::{Layout, R};
use super::super::packed_k::{MN_AT, SC_AT, q6};
use super::avx512_packed::unpacked;
use super::packed_fmt::{Ahead, prefetch};
use std::arch::x86_64::*;

/// `Q4_K` (`Q5 = false`) / `Q5_K` tiles: per sub-block, 16-value (`Q5_K`: 8-value) partial
/// sums stay within 16 bits, so `vpdpwssd` applies the per-row scales in integers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_k<const T: usize, const Q5: bool>(
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
        prefetch(ahead, b, col, lay.bytes);
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
pub(super) unsafe fn tile_q6(
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
            prefetch(if t == 0 { ahead } else { Ahead::None }, b, col, lay.bytes);
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
pub(super) unsafe fn tile_q6_tiled<const T: usize, const C: u8>(
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
        prefetch(ahead, b, col, lay.bytes);
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
            let wv = unsafe {
                unpacked::<C, 4>(cache.wrapping_add(4 * (16 * b + gg)), || q6_values(col, gg))
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
