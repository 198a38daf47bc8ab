//! AVX2 kernels for the 16-row packed `Q4_K` / `Q5_K` tiles (`packed_k.rs`), for CPUs without
//! AVX-512. Each tile half (rows `8h..8h+8`) is a pass with one row per 32-bit lane, so a row's
//! sums need no horizontal adds: `vpmaddubsw` of a group's 4 values of 8 rows against the
//! broadcast activations gives `i16` pairs; two 8-value groups (a 16-value run of one
//! sub-block, at most `8 · 31 · 128` per lane) add up in 16 bits, and `vpmaddwd` applies the
//! row's scale. The `f32` steps are llama.cpp's, as in the row kernels (`avx2::kquant`): its
//! multi-row order for the leading `gemm` tokens (every 64 values), its one-row order for the
//! rest (every block), the `Q4_K` minimum terms in their own sum. The same bits as the row
//! kernels, with about three quarters of their vector operations per value and no horizontal
//! sums or calls per row.

use super::super::blocks::BlockQ8K;
use super::super::isa;
use super::super::packed::{Layout, R};
use super::super::packed_k::{MN_AT, SC_AT};
use super::avx2::bit16;
use super::packed_fmt::{Ahead, prefetch};
use std::arch::x86_64::*;

/// Tokens a pass. Each has four accumulators, so four tokens spill some of them; they still
/// beat two (`Q4K/896x4864/packed/8` 0.69-0.84 -> 0.54-0.58 ms, one thread in cache).
const PER: usize = 4;

/// Rows `8h..8h+8` of a tile, for the `HS` halves `h` from `h0`, against `T` tokens (`x`,
/// `arow` bytes apart, `T · HS <= 4`), the first `gemm` in the multi-row order; row `r`'s sum
/// of half `h0 + i` for token `t` in lane `r % 8` of entry `i · T + t`.
///
/// # Safety
/// AVX2, FMA, F16C; `tile` holds whole block columns of `lay`, `a` `T` rows of as many
/// `BlockQ8K` blocks, 64-byte aligned, `arow` apart.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves<const T: usize, const Q5: bool, const HS: usize>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    h0: usize,
    ahead: Ahead,
    gemm: usize,
) -> [__m256; 4] {
    const XK: usize = std::mem::size_of::<BlockQ8K>();
    const { assert!(T * HS <= 4 && HS <= 2) };
    let nb = tile.len() / lay.bytes;
    assert!(a.len() >= (T - 1) * arow + nb * XK && h0 + HS <= 2);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let m4 = _mm256_set1_epi8(0x0F);
    // Byte `r` (of 8) of a broadcast `u64` as both `i16` of dword `r`.
    let spread = _mm256_setr_epi8(
        0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1, 4, -1, 4, -1, 5, -1, 5, -1, 6, -1,
        6, -1, 7, -1, 7, -1,
    );
    // Entry `i · T + t`: half `h0 + i`, token `t`.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut accm = [_mm256_setzero_ps(); 4];
    let bsum_pair = |x: &BlockQ8K, p: usize| {
        // SAFETY: two `i16` sums at `2p` of 8.
        _mm256_set1_epi32(unsafe { x.bsum32.as_ptr().add(2 * p).cast::<i32>().read_unaligned() })
    };
    for b in 0..nb {
        let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
        prefetch(ahead, b, col, lay.bytes);
        // SAFETY: token `t`'s block `b` lies inside `a` (asserted), 64-byte aligned.
        let x = |t: usize| unsafe { &*a.as_ptr().add(t * arow + b * XK).cast::<BlockQ8K>() };
        // SAFETY (the closures below): `col` is one whole column; offsets follow `packed_k`,
        // half `h`'s rows at `8h` of 16.
        let mins = |h: usize, p: usize| unsafe {
            _mm256_cvtepu8_epi16(_mm_loadu_si128(col.add(MN_AT + 32 * p + 16 * h).cast()))
        };
        let f16x8 = |at: usize| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(col.add(at).cast())) };
        // Each half's `d` and `dmin`.
        let dd: [(__m256, __m256); HS] =
            std::array::from_fn(|i| (f16x8(16 * (h0 + i)), f16x8(32 + 16 * (h0 + i))));
        let mut isum = [_mm256_setzero_si256(); 4];
        for sb in 0..8 {
            let mut s = [_mm256_setzero_si256(); 4];
            for i in 0..HS {
                let h = h0 + i;
                // SAFETY: 8 scale bytes of sub-block `sb`, this half's rows.
                let scv = _mm256_shuffle_epi8(
                    _mm256_set1_epi64x(unsafe {
                        col.add(SC_AT + 16 * sb + 8 * h)
                            .cast::<i64>()
                            .read_unaligned()
                    }),
                    spread,
                );
                for gi in 0..4 {
                    let g = 4 * sb + gi;
                    // SAFETY: group `g` of the nibbles (this half's 32 bytes), and its masks.
                    let (lo, hi) = unsafe {
                        let q = _mm256_loadu_si256(col.add(lay.values_at + 64 * g + 32 * h).cast());
                        let (lo, hi) = (
                            _mm256_and_si256(q, m4),
                            _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                        );
                        if Q5 {
                            let k = |j: usize| {
                                bit16(
                                    col.add(lay.masks_at + 8 * j + 4 * h)
                                        .cast::<u32>()
                                        .read_unaligned(),
                                )
                            };
                            (
                                _mm256_or_si256(lo, k(2 * g)),
                                _mm256_or_si256(hi, k(2 * g + 1)),
                            )
                        } else {
                            (lo, hi)
                        }
                    };
                    for t in 0..T {
                        let e = i * T + t;
                        // SAFETY: 8 bytes at `8g` of the 256 values.
                        let (xl, xh) = unsafe {
                            let p = x(t).qs.as_ptr().add(8 * g).cast::<i32>();
                            (
                                _mm256_set1_epi32(p.read_unaligned()),
                                _mm256_set1_epi32(p.add(1).read_unaligned()),
                            )
                        };
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, xl),
                            _mm256_maddubs_epi16(hi, xh),
                        );
                        s[e] = _mm256_add_epi16(s[e], p);
                        if gi % 2 == 1 {
                            isum[e] = _mm256_add_epi32(isum[e], _mm256_madd_epi16(s[e], scv));
                            s[e] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            if !Q5 && sb % 2 == 1 {
                // The end of a 64-value pair of sub-blocks: the multi-row order's step.
                let p = sb / 2;
                for i in 0..HS {
                    let (h, (dv, dmv)) = (h0 + i, dd[i]);
                    for t in 0..gemm.min(T) {
                        let (e, x) = (i * T + t, x(t));
                        let im = _mm256_madd_epi16(mins(h, p), bsum_pair(x, p));
                        let xd = _mm256_set1_ps(x.d);
                        acc[e] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isum[e]),
                            _mm256_mul_ps(dv, xd),
                            acc[e],
                        );
                        accm[e] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(im),
                            _mm256_mul_ps(dmv, xd),
                            accm[e],
                        );
                        isum[e] = _mm256_setzero_si256();
                    }
                }
            }
        }
        let first = if Q5 { 0 } else { gemm.min(T) };
        for i in 0..HS {
            let (h, (dv, dmv)) = (h0 + i, dd[i]);
            for t in first..T {
                let (e, x) = (i * T + t, x(t));
                let mut im = _mm256_setzero_si256();
                for p in 0..4 {
                    im = _mm256_add_epi32(im, _mm256_madd_epi16(mins(h, p), bsum_pair(x, p)));
                }
                let xd = _mm256_set1_ps(x.d);
                acc[e] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[e]), _mm256_mul_ps(dv, xd), acc[e]);
                let (im, dm) = (_mm256_cvtepi32_ps(im), _mm256_mul_ps(dmv, xd));
                if Q5 {
                    acc[e] = _mm256_fnmadd_ps(im, dm, acc[e]);
                } else {
                    accm[e] = _mm256_fmadd_ps(im, dm, accm[e]);
                }
            }
        }
    }
    std::array::from_fn(|e| {
        if Q5 {
            acc[e]
        } else {
            _mm256_sub_ps(acc[e], accm[e])
        }
    })
}

/// A packed `Q4_K` / `Q5_K` tile against `out.len()` tokens: a lone token takes both halves
/// in one pass; a batch takes each half [`PER`] tokens a pass.
///
/// # Safety
/// AVX2, FMA, F16C; `lay` is a `Q4_K` / `Q5_K` layout, `tile` whole columns of it, `a` the
/// tokens' `BlockQ8K` rows, 64-byte aligned, `arow` apart.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    gemm: usize,
    next: isize,
    out: &mut [[f32; R]],
) {
    let later = isa::prefetch_in_later_passes();
    let store = |o: &mut [f32; R], h: usize, r: __m256| {
        // SAFETY: 8 floats from `8h` of the 16.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), r) }
    };
    let q5 = lay.q5;
    if let [o] = out {
        // One token (decode): both halves in one pass, each cache line read once.
        let ahead = Ahead::of_pass(next, 0, 1, later);
        // SAFETY: same features; `halves` checks the lengths.
        let r = unsafe {
            if q5 {
                halves::<1, true, 2>(lay, tile, a, arow, 0, ahead, gemm)
            } else {
                halves::<1, false, 2>(lay, tile, a, arow, 0, ahead, gemm)
            }
        };
        store(o, 0, r[0]);
        store(o, 1, r[1]);
        return;
    }
    let chunks = out.len().div_ceil(PER);
    for h in 0..2 {
        for (c, o) in out.chunks_mut(PER).enumerate() {
            let ahead = Ahead::of_pass(next, h * chunks + c, 2 * chunks, later);
            let a = &a[PER * c * arow..];
            let g = gemm.saturating_sub(PER * c);
            macro_rules! run {
                ($t:literal) => {{
                    // SAFETY: same features; `halves` checks the lengths.
                    let r = unsafe {
                        if q5 {
                            halves::<$t, true, 1>(lay, tile, a, arow, h, ahead, g)
                        } else {
                            halves::<$t, false, 1>(lay, tile, a, arow, h, ahead, g)
                        }
                    };
                    for (o, r) in o.iter_mut().zip(r) {
                        store(o, h, r);
                    }
                }};
            }
            match o.len() {
                1 => run!(1),
                2 => run!(2),
                3 => run!(3),
                _ => run!(4),
            }
        }
    }
}
