//! AVX2 kernel for the 16-row packed `Q6_K` tiles, their high bits laid out as bytes
//! (`packed_k::q6`, `packed::Layout::high_bytes`). One pass over the tile serves every token
//! of the call: each block column's half (rows `8h..8h+8`, one row per 32-bit lane) is
//! unpacked once into 64 weight vectors (4 values of 8 rows each, `q + 32`, unsigned) and the
//! per-row scales as `i16`, and every token then takes its products from that buffer, so the
//! unpacking is shared by the whole batch and the tile's bytes are read once. A lone token
//! (decode) unpacks as it goes instead. Each broadcast activation group serves both halves.
//!
//! Against the row kernels on a Zen 3 (one thread, in cache): `Q6K/896x4864/packed/64`
//! 5.6-7.1 ms against 7.8-8.6 (two 4-value groups' products add up in 16 bits before the
//! scale, where the row kernels' 32-value vectors span two scales); a lone token 5-10% slower
//! in cache and level with them streaming from memory, as decode does.
//!
//! The `f32` steps are llama.cpp's, as in the row kernels (`avx2::kquant`): its tiled order for
//! the leading `gemm` tokens (batches of 8 or more: one integer sum per block, times the
//! weight's scale, fused onto the sum with the activation's), its one-row order for the rest
//! (eight integer lanes per block, lane `l` the 4-value groups `l, l + 8, …` less
//! `32 (sc[2l] bsum[2l] + sc[2l+1] bsum[2l+1])`, each scaled and accumulated in its own `f32`
//! lane, folded as `hsum_float_8`). The integer sums are exact, so the bits are the row
//! kernels'.

use super::super::blocks::BlockQ8K;
use super::super::isa::{self, MAX_TOKENS};
use super::super::packed::{Layout, R};
use super::super::packed_k::q6;
use super::packed_fmt::Ahead;
use std::arch::x86_64::*;

/// One block column half unpacked: the weight vectors of the 64 4-value groups, the scale of
/// each 16-value group as both `i16` of a row's lane, and the scale pairs
/// `(sc[2l], sc[2l + 1])` of the one-row order's offsets.
#[repr(C, align(32))]
struct Half {
    w: [__m256i; 64],
    sc: [__m256i; 16],
    pairs: [__m256i; 8],
}

/// The weight vectors of 16-value group `gg` (4-value groups `4gg..4gg + 4`) of half `h` of
/// the column at `col`, and their scale as both `i16` of each row's lane.
///
/// # Safety
/// AVX2; `col` points at one whole high-bytes `Q6_K` column, `gg < 16`, `h < 2`.
#[inline(always)]
unsafe fn group_weights(col: *const u8, gg: usize, h: usize) -> ([__m256i; 4], __m256i) {
    // SAFETY: every offset below lies inside the column (`packed_k::q6`); AVX2 as the caller
    // guarantees.
    unsafe {
        let (m4, m30) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
        let ld = |at: usize| _mm256_loadu_si256(col.add(at).cast());
        // 8-value groups `2gg`, `2gg + 1`: 4-value groups `4gg`, `4gg + 1` in the low and high
        // nibbles of the first, `4gg + 2`, `4gg + 3` of the second.
        let q0 = ld(q6::nibbles_at(true, 2 * gg) + 32 * h);
        let q1 = ld(q6::nibbles_at(true, 2 * gg + 1) + 32 * h);
        let hb = ld(q6::high_at(gg) + 32 * h);
        // Group `e`'s two bits sit at `2e` of each byte; 16-bit shifts move them to 4 and the
        // mask drops what crosses from the neighbouring byte.
        let high = [
            _mm256_slli_epi16::<4>(hb),
            _mm256_slli_epi16::<2>(hb),
            hb,
            _mm256_srli_epi16::<2>(hb),
        ];
        let low = [
            q0,
            _mm256_srli_epi16::<4>(q0),
            q1,
            _mm256_srli_epi16::<4>(q1),
        ];
        let w = std::array::from_fn(|e| {
            _mm256_or_si256(_mm256_and_si256(low[e], m4), _mm256_and_si256(high[e], m30))
        });
        let s = _mm_loadl_epi64(col.add(q6::SC_AT + 16 * gg + 8 * h).cast());
        (w, _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(s, s)))
    }
}

/// The scale pair `(sc[2l], sc[2l + 1])` of each row of half `h`, as the two `i16` of its lane.
///
/// # Safety
/// As [`group_weights`], `l < 8`.
#[inline(always)]
unsafe fn scale_pair(col: *const u8, l: usize, h: usize) -> __m256i {
    // SAFETY: 8 bytes of each of the two scale rows, inside the column.
    unsafe {
        let ld8 = |g: usize| _mm_loadl_epi64(col.add(q6::SC_AT + 16 * g + 8 * h).cast());
        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(ld8(2 * l), ld8(2 * l + 1)))
    }
}

/// Unpacks half `h` of the column at `col` into `out`.
///
/// # Safety
/// AVX2; `col` points at one whole high-bytes `Q6_K` column, `h < 2`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack(col: *const u8, h: usize, out: &mut Half) {
    for gg in 0..16 {
        // SAFETY: as the caller guarantees.
        let (w, sc) = unsafe { group_weights(col, gg, h) };
        out.w[4 * gg..4 * gg + 4].copy_from_slice(&w);
        out.sc[gg] = sc;
    }
    for l in 0..8 {
        // SAFETY: as the caller guarantees.
        out.pairs[l] = unsafe { scale_pair(col, l, h) };
    }
}

/// A lone token in the one-row order, unpacking each 16-value group of both halves as it
/// goes, with no buffer; `part` as in [`tile`]. Adds the block's lanes to `lanes`.
///
/// # Safety
/// AVX2, FMA, F16C; `col` points at one whole high-bytes `Q6_K` column.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lone_token(
    col: *const u8,
    x: &BlockQ8K,
    dv: [__m256; 2],
    part: impl Fn(usize),
    lanes: &mut [[__m256; 8]; 2],
) {
    for p in 0..2 {
        let mut isum = [[_mm256_setzero_si256(); 4]; 2];
        for m in 0..8 {
            part(8 * p + m);
            let gg = 2 * m + p;
            for (h, isum) in isum.iter_mut().enumerate() {
                // SAFETY: as the caller guarantees.
                let (w, sc) = unsafe { group_weights(col, gg, h) };
                for (e, s) in isum.iter_mut().enumerate() {
                    let v = _mm256_maddubs_epi16(w[e], group(x, 4 * gg + e));
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(v, sc));
                }
            }
        }
        // SAFETY: as the caller guarantees.
        add_lanes(
            p,
            &isum,
            |h, l| unsafe { scale_pair(col, l, h) },
            x,
            dv,
            lanes,
        );
    }
}

/// The parts a column's prefetch is issued in.
const PARTS: usize = 16;

/// Prefetches part `j` of [`PARTS`] of the `bytes` at `p` into L2. A column's lines fetched
/// all at once, ahead of its unpacking, left that unpacking waiting on its own loads on a
/// Zen 3: `Q6K/896x4864/packed/1`, two threads streaming, 248-268 us with the fetches before
/// the unpacking, 211 after it, 182-208 spread between the steps (the row kernels: 176-217).
#[inline(always)]
fn fetch_part(p: *const u8, bytes: usize, j: usize) {
    let lines = bytes.div_ceil(64);
    for l in lines * j / PARTS..lines * (j + 1) / PARTS {
        // SAFETY: prefetching never faults; the address is only a hint.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * l).cast()) };
    }
}

/// The activations of 4-value group `k` of `x`, broadcast.
#[inline(always)]
fn group(x: &BlockQ8K, k: usize) -> __m256i {
    // SAFETY: 4 bytes at `4k` of the 256 quants; only called from functions compiled with AVX2.
    unsafe { _mm256_set1_epi32(x.qs.as_ptr().add(4 * k).cast::<i32>().read_unaligned()) }
}

/// The one-row order's offset of lane `l`, `sc[2l] bsum[2l] + sc[2l + 1] bsum[2l + 1]`
/// (`pair` from [`scale_pair`]).
#[inline(always)]
fn offset(pair: __m256i, x: &BlockQ8K, l: usize) -> __m256i {
    // SAFETY: two `i16` sums at `2l` of 16; only called from functions compiled with AVX2.
    unsafe {
        let b = x.bsums.as_ptr().add(2 * l).cast::<i32>().read_unaligned();
        _mm256_madd_epi16(pair, _mm256_set1_epi32(b))
    }
}

/// The one-row order's step for lanes `4p..4p + 4` of both halves: each lane's integer sum
/// (`isum[h][e]` for lane `4p + e`) less its offset, scaled by `d · x.d` and accumulated;
/// `pair(h, l)` gives [`scale_pair`].
#[inline(always)]
fn add_lanes(
    p: usize,
    isum: &[[__m256i; 4]; 2],
    pair: impl Fn(usize, usize) -> __m256i,
    x: &BlockQ8K,
    dv: [__m256; 2],
    lanes: &mut [[__m256; 8]; 2],
) {
    // SAFETY: only called from functions compiled with AVX2, FMA.
    unsafe {
        for h in 0..2 {
            let dx = _mm256_mul_ps(dv[h], _mm256_set1_ps(x.d));
            for (e, &s) in isum[h].iter().enumerate() {
                let l = 4 * p + e;
                let off = _mm256_slli_epi32::<5>(offset(pair(h, l), x, l));
                let v = _mm256_sub_epi32(s, off);
                lanes[h][l] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), dx, lanes[h][l]);
            }
        }
    }
}

/// A packed `Q6_K` tile (high bits as bytes) against `out.len()` tokens (at most
/// [`MAX_TOKENS`]), the first `gemm` in llama.cpp's tiled order; see the module docs.
///
/// # Safety
/// AVX2, FMA, F16C; `lay` is a high-bytes `Q6_K` layout, `tile` whole columns of it, `a` the
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
    const XK: usize = std::mem::size_of::<BlockQ8K>();
    assert!(
        lay.q6 && lay.high_bytes,
        "AVX2 Q6_K tiles: high bits as bytes"
    );
    let (n, nb) = (out.len(), tile.len() / lay.bytes);
    assert!((1..=MAX_TOKENS).contains(&n) && a.len() >= (n - 1) * arow + nb * XK);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let gemm = gemm.min(n);
    let ahead = Ahead::of_pass(next, 0, 1, isa::prefetch_in_later_passes());
    // The tiled order's sums (per half and token), the one-row order's eight lanes (per token
    // and half).
    let zero = _mm256_setzero_ps();
    let mut sums = [[zero; MAX_TOKENS]; 2];
    let mut lanes = [[[zero; 8]; 2]; MAX_TOKENS];
    // The unpacked halves, made (5.6 KiB zeroed) only where a batch needs them, not per lone
    // token of decode.
    let mut buf: Option<[Half; 2]> = None;
    for b in 0..nb {
        let col = tile[b * lay.bytes..(b + 1) * lay.bytes].as_ptr();
        // SAFETY: token `t`'s block `b` lies inside `a` (asserted), 64-byte aligned.
        let x = |t: usize| unsafe { &*a.as_ptr().add(t * arow + b * XK).cast::<BlockQ8K>() };
        // SAFETY: 8 `f16` at `16h` of the column.
        let dv: [__m256; 2] = std::array::from_fn(|h| unsafe {
            _mm256_cvtph_ps(_mm_loadu_si128(col.add(16 * h).cast()))
        });
        // Part `j` of [`PARTS`] of the next tile's column, fetched between the first token's
        // steps.
        let fetch = ahead.fetches(b).map(|d| col.wrapping_offset(d));
        let part = |j: usize| {
            if let Some(p) = fetch {
                fetch_part(p, lay.bytes, j);
            }
        };
        if n == 1 && gemm == 0 {
            // SAFETY: `col` is one whole high-bytes column (asserted layout); same features.
            unsafe { lone_token(col, x(0), dv, part, &mut lanes[0]) };
            continue;
        }
        // SAFETY: all-zero bits are valid vectors.
        let u = buf.get_or_insert_with(|| unsafe { std::mem::zeroed() });
        for (h, u) in u.iter_mut().enumerate() {
            // SAFETY: as above.
            unsafe { unpack(col, h, u) };
        }
        let u = &*u;
        // Each broadcast activation group serves both halves.
        for t in 0..gemm {
            let x = x(t);
            let mut isum = [_mm256_setzero_si256(); 2];
            for k in (0..64).step_by(2) {
                if t == 0 && k % 4 == 0 {
                    part(k / 4);
                }
                let (g0, g1) = (group(x, k), group(x, k + 1));
                for (u, s) in u.iter().zip(&mut isum) {
                    // Two pairs of products add up in 16 bits (at most `4 · 63 · 128`).
                    let p = _mm256_add_epi16(
                        _mm256_maddubs_epi16(u.w[k], g0),
                        _mm256_maddubs_epi16(u.w[k + 1], g1),
                    );
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, u.sc[k / 4]));
                }
            }
            for h in 0..2 {
                let mut off = _mm256_setzero_si256();
                for l in 0..8 {
                    off = _mm256_add_epi32(off, offset(u[h].pairs[l], x, l));
                }
                let isum = _mm256_sub_epi32(isum[h], _mm256_slli_epi32::<5>(off));
                let r = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dv[h]);
                sums[h][t] = _mm256_fmadd_ps(r, _mm256_set1_ps(x.d), sums[h][t]);
            }
        }
        for t in gemm..n {
            let x = x(t);
            // Lanes `4p..4p + 4` take the 4-value groups of the even (`p = 0`) or odd
            // 16-value groups: group `4gg + e` is lane `4 (gg % 2) + e`.
            for p in 0..2 {
                let mut isum = [[_mm256_setzero_si256(); 4]; 2];
                for m in 0..8 {
                    if gemm == 0 && t == 0 {
                        part(8 * p + m);
                    }
                    let gg = 2 * m + p;
                    for e in 0..4 {
                        let (k, g) = (4 * gg + e, group(x, 4 * gg + e));
                        for (u, s) in u.iter().zip(&mut isum) {
                            let v = _mm256_maddubs_epi16(u.w[k], g);
                            s[e] = _mm256_add_epi32(s[e], _mm256_madd_epi16(v, u.sc[gg]));
                        }
                    }
                }
                add_lanes(p, &isum, |h, l| u[h].pairs[l], x, dv, &mut lanes[t]);
            }
        }
    }
    for (t, o) in out.iter_mut().enumerate() {
        for h in 0..2 {
            let r = if t < gemm {
                sums[h][t]
            } else {
                let a = &lanes[t][h];
                let lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
                let hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
                _mm256_add_ps(lo, hi)
            };
            // SAFETY: 8 floats from `8h` of the 16.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), r) };
        }
    }
}
