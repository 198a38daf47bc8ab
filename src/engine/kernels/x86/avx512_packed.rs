//! AVX-512 VNNI kernels for the 16-row packed formats (see `packed.rs`, `packed_k.rs`): each
//! `zmm` of weights holds 4 values of 16 rows, so `vpdpbusd` against a broadcast 4-byte activation
//! group accumulates all 16 rows at once and no horizontal sums are needed.

use super::super::blocks::{BlockQ8K, BlockQ8s};
use super::super::packed::{Layout, R};
use super::super::packed_k::{MN_AT, SC_AT, q6};
use std::arch::x86_64::*;

/// When streaming weights for one token, prefetch this far ahead.
const PREFETCH: usize = 2048;

/// Prefetches the column `PREFETCH` bytes after `col` (decode only: prefill reuses the tile).
#[inline(always)]
fn prefetch<const T: usize>(col: *const u8, bytes: usize) {
    if T == 1 {
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetching never faults; the address is only a hint.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(col.wrapping_add(PREFETCH + off).cast()) };
        }
    }
}

/// Bytes of one activation block.
const XB: usize = std::mem::size_of::<BlockQ8s>();

/// The 32-wide formats in llama.cpp's summation order (`ggml_vec_dot_q4_1_q8_1` and its
/// siblings, AVX2/VNNI build), so that products round as the reference engine's do: per row,
/// eight 4-value integer sums per block (offsets taken off in integers), each scaled and
/// accumulated in its own `f32` lane across the blocks, the lanes folded as `hsum_float_8`
/// folds them, then the separately accumulated minimum term added. Two tokens at a time: the
/// eight lanes of 16 rows fill the registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_x<const T: usize>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [[f32; R]],
) {
    let nb = tile.len() / lay.bytes;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * XB);
    let q8 = lay.bytes - lay.values_at == 32 * R;
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    let mut summ = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
        prefetch::<T>(col, lay.bytes);
        // SAFETY: `col` is one whole block column (`lay.bytes` bytes); offsets follow `Layout`.
        let (dw, m, wv) = unsafe {
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
            let m = if lay.min {
                _mm512_cvtph_ps(_mm256_loadu_si256(col.add(lay.m_at).cast()))
            } else {
                _mm512_setzero_ps()
            };
            let v = col.add(lay.values_at);
            let mut wv = [zero; 8];
            if q8 {
                for (j, w) in wv.iter_mut().enumerate() {
                    *w = _mm512_loadu_si512(v.add(64 * j).cast());
                }
            } else {
                let m4 = _mm512_set1_epi8(0x0F);
                for g in 0..4 {
                    let q = _mm512_loadu_si512(v.add(64 * g).cast());
                    wv[2 * g] = _mm512_and_si512(q, m4);
                    wv[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
                }
                if lay.q5 {
                    let k16 = _mm512_set1_epi8(16);
                    for (j, w) in wv.iter_mut().enumerate() {
                        let k = col.add(lay.masks_at + 8 * j).cast::<u64>().read_unaligned();
                        *w = _mm512_mask_add_epi8(*w, k, *w, k16);
                    }
                }
            }
            (dw, m, wv)
        };
        for t in 0..T {
            // SAFETY: block `b` of token `t` lies inside `a` (asserted).
            let x = unsafe { &*a.as_ptr().add(t * arow + b * XB).cast::<BlockQ8s>() };
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d));
            for (j, &w) in wv.iter().enumerate() {
                // SAFETY: 4 bytes at `4j` of the 32 values.
                let g = unsafe { x.qs.as_ptr().add(4 * j).cast::<i32>().read_unaligned() };
                // Offset formats: each lane starts from `-offset · Σ` of its 4 activations
                // (`c4`, scaled by `matmul_packed`).
                let init = if lay.min {
                    zero
                } else {
                    _mm512_set1_epi32(x.c4[j])
                };
                let s = _mm512_dpbusd_epi32(init, w, _mm512_set1_epi32(g));
                acc[t][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[t][j]);
            }
            if lay.min {
                summ[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), summ[t]);
            }
        }
    }
    for t in 0..T {
        let a = &acc[t];
        let lo = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
        let hi = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
        let mut r = _mm512_add_ps(lo, hi);
        if lay.min {
            r = _mm512_add_ps(r, summ[t]);
        }
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), r) };
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
    out: &mut [[f32; R]],
) {
    const XK: usize = std::mem::size_of::<BlockQ8K>();
    let nb = tile.len() / lay.bytes;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * XK);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
        prefetch::<T>(col, lay.bytes);
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
        }
        for t in 0..T {
            let x = x(t);
            let mut im = _mm512_setzero_si512();
            for (p, &mv) in mins.iter().enumerate() {
                // SAFETY: two `i16` sums at `2p`.
                let bp = unsafe { x.bsum32.as_ptr().add(2 * p).cast::<i32>().read_unaligned() };
                im = _mm512_dpwssd_epi32(im, mv, _mm512_set1_epi32(bp));
            }
            let xd = _mm512_set1_ps(x.d);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dv, xd), acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(im), _mm512_mul_ps(dmv, xd), acc[t]);
        }
    }
    for t in 0..T {
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
    }
}

/// `Q6_K` tiles: 4-value partial sums of 6-bit values fill 16 bits, so each 16-value group is
/// summed in `i32` and scaled in `f32`; the `+32` offset comes off through the activation sums.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q6<const T: usize>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [[f32; R]],
) {
    const XK: usize = std::mem::size_of::<BlockQ8K>();
    let nb = tile.len() / lay.bytes;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * XK);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let (m4, k16, k32) = (
        _mm512_set1_epi8(0x0F),
        _mm512_set1_epi8(16),
        _mm512_set1_epi8(32),
    );
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
        prefetch::<T>(col, lay.bytes);
        // SAFETY: token `t`'s block `b` lies inside `a` (asserted), 64-byte aligned.
        let x = |t: usize| unsafe { &*a.as_ptr().add(t * arow + b * XK).cast::<BlockQ8K>() };
        // SAFETY: `col` is one whole column; offsets follow `packed_k::q6`.
        let sc8 = |g: usize| unsafe { _mm_loadu_si128(col.add(q6::SC_AT + 16 * g).cast()) };
        // SAFETY: as above.
        let dv = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(col.cast()) });
        let mut accb = [_mm512_setzero_ps(); T];
        for gg in 0..16 {
            let fsc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8(gg))), dv);
            let mut wv = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                let g = 2 * gg + h;
                // SAFETY: nibble group `g` and the masks of its two vectors.
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
            for t in 0..T {
                // SAFETY: 16 bytes at `16gg` of the 256 values.
                let p = unsafe { x(t).qs.as_ptr().add(16 * gg).cast::<i32>() };
                let mut s = _mm512_setzero_si512();
                for (j, &w) in wv.iter().enumerate() {
                    // SAFETY: inside the 16 bytes above.
                    s = _mm512_dpbusd_epi32(
                        s,
                        w,
                        _mm512_set1_epi32(unsafe { p.add(j).read_unaligned() }),
                    );
                }
                accb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), fsc, accb[t]);
            }
        }
        // Σ_g sc_g · 32 · bsum_g, two groups per `vpdpwssd`.
        let pairs: [__m512i; 8] = std::array::from_fn(|p| {
            let (a, b) = (sc8(2 * p), sc8(2 * p + 1));
            let lo = _mm256_set_m128i(_mm_unpackhi_epi8(a, b), _mm_unpacklo_epi8(a, b));
            _mm512_cvtepi8_epi16(lo)
        });
        let d32 = _mm512_mul_ps(dv, _mm512_set1_ps(32.0));
        for t in 0..T {
            let x = x(t);
            let mut im = _mm512_setzero_si512();
            for (p, &sp) in pairs.iter().enumerate() {
                // SAFETY: two `i16` sums at `2p`.
                let bp = unsafe { x.bsums.as_ptr().add(2 * p).cast::<i32>().read_unaligned() };
                im = _mm512_dpwssd_epi32(im, sp, _mm512_set1_epi32(bp));
            }
            let b = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(im), d32, accb[t]);
            acc[t] = _mm512_fmadd_ps(b, _mm512_set1_ps(x.d), acc[t]);
        }
    }
    for t in 0..T {
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
    }
}

/// The packed tile kernel (`packed::TileFn`).
///
/// # Safety
/// Requires AVX-512 F/BW/VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(lay: &Layout, tile: &[u8], a: &[u8], arow: usize, out: &mut [[f32; R]]) {
    macro_rules! by_tokens {
        ($f:ident $(, $c:expr)?) => {
            match out.len() {
                1 => $f::<1 $(, $c)?>(lay, tile, a, arow, out),
                2 => $f::<2 $(, $c)?>(lay, tile, a, arow, out),
                3 => $f::<3 $(, $c)?>(lay, tile, a, arow, out),
                4 => $f::<4 $(, $c)?>(lay, tile, a, arow, out),
                5 => $f::<5 $(, $c)?>(lay, tile, a, arow, out),
                6 => $f::<6 $(, $c)?>(lay, tile, a, arow, out),
                7 => $f::<7 $(, $c)?>(lay, tile, a, arow, out),
                8 => $f::<8 $(, $c)?>(lay, tile, a, arow, out),
                n => unreachable!("{n} tokens"),
            }
        };
    }
    // SAFETY: same features; the kernels check the lengths.
    unsafe {
        match (lay.kquant, lay.q5) {
            _ if lay.q6 => by_tokens!(tile_q6),
            (true, true) => by_tokens!(tile_k, true),
            (true, false) => by_tokens!(tile_k, false),
            _ => {
                for (c, o) in out.chunks_mut(2).enumerate() {
                    let a = &a[2 * c * arow..];
                    match o.len() {
                        1 => tile_x::<1>(lay, tile, a, arow, o),
                        _ => tile_x::<2>(lay, tile, a, arow, o),
                    }
                }
            }
        }
    }
}
