//! AVX-512 VNNI kernels for the 16-row packed 32-wide formats (see `packed.rs`), and [`tile`],
//! which dispatches every packed tile (the K-quant kernels are in `avx512_packed_k.rs`): each
//! `zmm` of weights holds 4 values of 16 rows, so `vpdpbusd` against a broadcast 4-byte activation
//! group accumulates all 16 rows at once and no horizontal sums are needed.

use super::super::blocks::BlockQ8s;
use super::super::isa::{self, Numerics, unpack_4bit_once};
use super::super::packed::{Layout, R};
use super::super::packed_matmul::Sums;
use super::avx512_packed_k::{tile_k, tile_q6, tile_q6_tiled};
use super::packed_fmt::{
    Ahead, DIRECT, FILL, Fmt, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, READ, XB, fmt_of, prefetch,
};
use std::arch::x86_64::*;

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

thread_local! {
    /// The unpacked weight vectors of the tile a batch's passes share (see [`tile`]).
    static UNPACKED: std::cell::RefCell<Vec<__m512i>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A block column's `N` weight vectors in cache mode `C`: `unpack()` (and, filling, stored at
/// `at`), or loaded from `at` where an earlier pass stored them.
///
/// # Safety
/// Unless `C == DIRECT`, `at` points at `N` aligned vectors of the buffer [`with_unpacked`]
/// lent.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn unpacked<const C: u8, const N: usize>(
    at: *mut __m512i,
    unpack: impl FnOnce() -> [__m512i; N],
) -> [__m512i; N] {
    // SAFETY: as the caller guarantees.
    unsafe {
        if C == READ {
            return std::array::from_fn(|j| _mm512_load_si512(at.add(j).cast()));
        }
        let wv = unpack();
        if C == FILL {
            for (j, &w) in wv.iter().enumerate() {
                _mm512_store_si512(at.add(j).cast(), w);
            }
        }
        wv
    }
}

/// [`packed_fmt::with_unpacked`](super::packed_fmt::with_unpacked) on this thread's
/// [`UNPACKED`].
fn with_unpacked(vectors: Option<usize>, f: impl FnOnce(*mut __m512i)) {
    // SAFETY: an all-zero vector is a valid `__m512i`.
    let zero = unsafe { std::mem::zeroed() };
    super::packed_fmt::with_unpacked(&UNPACKED, vectors, zero, f)
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
        prefetch(ahead, b, col, bytes);
        // SAFETY: `col` is one whole block column of format `F` (`nb` columns asserted), and
        // block `b` of each of the `T` tokens lies inside `a` (asserted); with a cache
        // (`C != DIRECT`), `cache` holds `8 * nb` vectors.
        unsafe {
            let wv = unpacked::<C, 8>(cache.wrapping_add(8 * b), || values32::<F>(col));
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

/// The 32-wide formats in ward's own order ([`Numerics::Fast`]): each block's 32-value integer
/// sum, started from the offset term (`c4[0]`, `-offset · Σ` of the block's activations, as
/// `matmul_packed` leaves it in this order), scaled once, and for `Q4_1` / `Q5_1` the minimum
/// term fused in; up to 8 tokens a pass. About twice the prefill and batched-decode speed of
/// [`tile_x`], at the cost of last-bit agreement with llama.cpp. Format and token count are
/// const parameters, as in [`tile_x`].
///
/// Each token's sum runs as two chains of four `vpdpbusd` (even and odd groups) added at the
/// end: one chain of eight is 40 cycles of latency a block, which 8 tokens' chains do not
/// hide. Measured on an Emerald Rapids Xeon, one thread, eight tokens, the tile in L1 (a C
/// model of this loop, minimum of 6 runs): 9.2 cycles per 16 rows × block × token with one
/// chain and the offset as a second fused multiply-add, 8.1 with two chains, 7.3 with the
/// offset taken in integers as here; 12 operations on the two multiply ports allow 6.
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
    let offset = !Fmt::<F>::MIN && Fmt::<F>::OFFSET != 0.0;
    let mut acc = [_mm512_setzero_ps(); T];
    let (mut col, mut x0) = (tile.as_ptr(), a.as_ptr());
    for b in 0..nb {
        prefetch(ahead, b, col, bytes);
        // SAFETY: `col` is one whole block column of format `F` (`nb` columns asserted), and
        // block `b` of each of the `T` tokens lies inside `a` (asserted).
        unsafe {
            let wv = values32::<F>(col);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
            // `Q4_1` / `Q5_1`: the rows' minima, for every token.
            let m = if Fmt::<F>::MIN {
                _mm512_cvtph_ps(_mm256_loadu_si256(col.add(Fmt::<F>::M_AT).cast()))
            } else {
                _mm512_setzero_ps()
            };
            for t in 0..T {
                let x = &*x0.add(t * arow).cast::<BlockQ8s>();
                let mut s = [_mm512_setzero_si512(); 2];
                if offset {
                    s[0] = _mm512_set1_epi32(x.c4[0]);
                }
                for (j, &w) in wv.iter().enumerate() {
                    let g = x.qs.as_ptr().add(4 * j).cast::<i32>().read_unaligned();
                    s[j % 2] = _mm512_dpbusd_epi32(s[j % 2], w, _mm512_set1_epi32(g));
                }
                let s = _mm512_add_epi32(s[0], s[1]);
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[t]);
                if Fmt::<F>::MIN {
                    acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), acc[t]);
                }
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

/// The packed tile kernel (`packed_matmul::TileFn`).
///
/// # Safety
/// Requires AVX-512 F/BW/VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    sums: Sums,
    next: isize,
    out: &mut [[f32; R]],
) {
    let Sums { gemm, order } = sums;
    assert!(
        !lay.high_bytes,
        "AVX-512 packed kernel: fifth bits as masks"
    );
    let later = isa::prefetch_in_later_passes();
    let ahead = |pass: usize, passes: usize| Ahead::of_pass(next, pass, passes, later);
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
            let passes = g.div_ceil(4) + usize::from(!rows.is_empty());
            let passes_over = |ptr: *mut __m512i| {
                for (c, o) in batched.chunks_mut(4).enumerate() {
                    let (a, ah) = (&a[4 * c * arow..], ahead(c, passes));
                    macro_rules! q {
                        ($m:ident) => {
                            match o.len() {
                                1 => tile_q6_tiled::<1, $m>(lay, tile, a, arow, ah, ptr, o),
                                2 => tile_q6_tiled::<2, $m>(lay, tile, a, arow, ah, ptr, o),
                                3 => tile_q6_tiled::<3, $m>(lay, tile, a, arow, ah, ptr, o),
                                _ => tile_q6_tiled::<4, $m>(lay, tile, a, arow, ah, ptr, o),
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
            with_unpacked(cache.then_some(64 * (tile.len() / lay.bytes)), passes_over);
            if !rows.is_empty() {
                // The pass after the batched ones (the first when there are none).
                let pass = g.div_ceil(4);
                tile_q6(lay, tile, &a[g * arow..], arow, ahead(pass, passes), rows);
            }
            return;
        }
        if lay.kquant {
            // Four tokens at a time: two accumulators and two partial sums each.
            let passes = out.len().div_ceil(4);
            for (c, o) in out.chunks_mut(4).enumerate() {
                let a = &a[4 * c * arow..];
                let g = gemm.saturating_sub(4 * c);
                macro_rules! k {
                    ($t:literal) => {
                        if lay.q5 {
                            tile_k::<$t, true>(lay, tile, a, arow, ahead(c, passes), g, o)
                        } else {
                            tile_k::<$t, false>(lay, tile, a, arow, ahead(c, passes), g, o)
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
        if order == Numerics::Fast {
            let ahead = ahead(0, 1);
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
        // in 12 operations, which only Intel's cores gain by sharing (`unpack_4bit_once`).
        let passes = out.len().div_ceil(2);
        let cache = passes > 1 && (lay.q5 || (f != Q8_0 && unpack_4bit_once()));
        let passes_over = |ptr: *mut __m512i| {
            for (c, o) in out.chunks_mut(2).enumerate() {
                let a = &a[2 * c * arow..];
                let ahead = ahead(c, passes);
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
                    (true, 0) => x!(FILL; Q4_0, Q4_1, Q5_0, Q5_1),
                    (true, _) => x!(READ; Q4_0, Q4_1, Q5_0, Q5_1),
                }
            }
        };
        with_unpacked(cache.then_some(8 * (tile.len() / lay.bytes)), passes_over);
    }
}
