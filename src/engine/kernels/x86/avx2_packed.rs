//! AVX2 kernels for the 16-row packed 32-wide formats (see `packed.rs`), for CPUs without
//! AVX-512 (Zen 3 and older, Intel's client cores). A 64-byte group of a tile holds 4 values of
//! 16 rows; each half of it, one `ymm`, holds them for 8 rows, so `vpmaddubsw` and `vpmaddwd`
//! against a broadcast 4-byte activation group give the 4-value sums of 8 rows at once, with no
//! horizontal sums.
//!
//! In llama.cpp's order ([`Numerics::Reference`]) each row keeps eight `f32`
//! lanes, one per 4-value group, that fill the 16 registers for one token and one half (rows
//! 0-7 or 8-15): a batch's pass is one token and one half; a lone token takes both halves in
//! one pass, so that its weights stream once. Ward's order ([`Numerics::Fast`]) sums a block in
//! integers and scales it once, up to four tokens a pass. `Q4_K` / `Q5_K` tiles go to
//! `avx2_packed_k.rs`, `Q6_K` ones to `avx2_packed_q6.rs`.

use super::super::blocks::BlockQ8s;
use super::super::isa::{self, Numerics};
use super::super::packed::{Layout, R};
use super::super::packed_matmul::Sums;
use super::avx2::bit16;
use super::packed_fmt::{
    Ahead, DIRECT, FILL, Fmt, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, READ, XB, fmt_of, prefetch,
    with_unpacked,
};
use std::arch::x86_64::*;

/// The weight vectors of 4-value groups `2g` and `2g + 1` of rows `8h..8h+8` of one block
/// column: unsigned values (with the fifth bit for the 5-bit formats), except `Q8_0`, whose
/// values come back signed (`vpmaddubsw` would saturate on `q + 128`). `HB`: the column holds
/// its fifth bits as bytes (`packed::Layout::high_bytes`), else as `u64` masks.
///
/// # Safety
/// AVX2; `col` points at one whole block column of format `F`, `h < 2`, `g < 4`.
#[inline(always)]
unsafe fn group_pair<const F: u8, const HB: bool>(
    col: *const u8,
    h: usize,
    g: usize,
) -> [__m256i; 2] {
    // SAFETY: as the caller guarantees; offsets follow `Fmt<F>`.
    unsafe {
        let v = col.add(Fmt::<F>::VALUES_AT + 32 * h);
        if Fmt::<F>::Q8 {
            let flip = _mm256_set1_epi8(0x80u8 as i8);
            return [
                _mm256_xor_si256(_mm256_loadu_si256(v.add(128 * g).cast()), flip),
                _mm256_xor_si256(_mm256_loadu_si256(v.add(128 * g + 64).cast()), flip),
            ];
        }
        let m4 = _mm256_set1_epi8(0x0F);
        let q = _mm256_loadu_si256(v.add(64 * g).cast());
        let mut w = [
            _mm256_and_si256(q, m4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
        ];
        if Fmt::<F>::Q5 && HB {
            // Bit `j` of each byte of this half's 32 (`packed::Layout::high_bytes`) moved to
            // bit 4 by a 16-bit shift: bits crossing from the neighbouring byte land outside
            // bit 4, and the mask drops them.
            let hb = _mm256_loadu_si256(col.add(Fmt::<F>::MASKS_AT + 32 * h).cast());
            let k10 = _mm256_set1_epi8(0x10);
            for (k, w) in w.iter_mut().enumerate() {
                let b = match 2 * g + k {
                    0 => _mm256_slli_epi16::<4>(hb),
                    1 => _mm256_slli_epi16::<3>(hb),
                    2 => _mm256_slli_epi16::<2>(hb),
                    3 => _mm256_slli_epi16::<1>(hb),
                    4 => hb,
                    5 => _mm256_srli_epi16::<1>(hb),
                    6 => _mm256_srli_epi16::<2>(hb),
                    _ => _mm256_srli_epi16::<3>(hb),
                };
                *w = _mm256_or_si256(*w, _mm256_and_si256(b, k10));
            }
        } else if Fmt::<F>::Q5 {
            for (k, w) in w.iter_mut().enumerate() {
                // Bits `32h..32h+32` of mask `j`: byte `4r + i` of this half.
                let j = 2 * g + k;
                let m = col
                    .add(Fmt::<F>::MASKS_AT + 8 * j + 4 * h)
                    .cast::<u32>()
                    .read_unaligned();
                *w = _mm256_or_si256(*w, bit16(m));
            }
        }
        w
    }
}

/// The eight weight vectors (4-value groups `j = 0..8`) of rows `8h..8h+8` of one block
/// column ([`group_pair`] for each pair).
///
/// # Safety
/// As [`group_pair`].
#[inline(always)]
unsafe fn values<const F: u8, const HB: bool>(col: *const u8, h: usize) -> [__m256i; 8] {
    // SAFETY: AVX2, as the caller guarantees.
    let mut wv = [unsafe { _mm256_setzero_si256() }; 8];
    for g in 0..4 {
        // SAFETY: as the caller guarantees. (A loop, not `array::from_fn`: its closure is not
        // always inlined, and the intrinsics inside it then become calls.)
        let p = unsafe { group_pair::<F, HB>(col, h, g) };
        wv[2 * g] = p[0];
        wv[2 * g + 1] = p[1];
    }
    wv
}

/// The 4-value sums `w_j · g` of 8 rows (`w` from [`values`], `g` a broadcast activation
/// group), as `i16` pairs.
#[inline(always)]
fn pairs<const F: u8>(w: __m256i, g: __m256i) -> __m256i {
    // SAFETY: only called from functions compiled with AVX2.
    let a = if Fmt::<F>::Q8 {
        unsafe { _mm256_abs_epi8(w) }
    } else {
        w
    };
    pairs_abs::<F>(w, a, g)
}

/// [`pairs`] with `|w|` given (`a`; `Q8_0` only, other formats' values are unsigned).
#[inline(always)]
fn pairs_abs<const F: u8>(w: __m256i, a: __m256i, g: __m256i) -> __m256i {
    // SAFETY: only called from functions compiled with AVX2.
    unsafe {
        if Fmt::<F>::Q8 {
            // `|w| · sign(g, w)`: `|w| ≤ 128`, `|g| ≤ 127`, so the pairs cannot saturate.
            _mm256_maddubs_epi16(a, _mm256_sign_epi8(g, w))
        } else {
            _mm256_maddubs_epi16(w, g)
        }
    }
}

/// Vectors a batch's first pass stores per block column and tile half: the 8 groups' weight
/// vectors, and for `Q8_0` their magnitudes too.
const fn cached<const F: u8>() -> usize {
    if Fmt::<F>::Q8 { 16 } else { 8 }
}

/// The broadcast 4-byte activation group `j` of `x`.
#[inline(always)]
fn group(x: &BlockQ8s, j: usize) -> __m256i {
    // SAFETY: 4 bytes at `4j` of the 32 quants; only called from functions compiled with AVX2.
    unsafe { _mm256_set1_epi32(x.qs.as_ptr().add(4 * j).cast::<i32>().read_unaligned()) }
}

thread_local! {
    /// The unpacked weight vectors of the tile half that a batch's passes share.
    static UNPACKED: std::cell::RefCell<Vec<__m256i>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The weight vectors of groups `2g`, `2g + 1` in cache mode `C`, then (`Q8_0`) their
/// magnitudes: unpacked from `col` (and, filling, stored at `at`), or loaded from `at` where an
/// earlier pass stored them. One pair at a time, so that few are live beside the accumulators.
///
/// # Safety
/// As [`group_pair`]; unless `C == DIRECT`, `at` points at the pair's `cached::<F>() / 4`
/// vectors of the buffer [`UNPACKED`] lends.
#[inline(always)]
unsafe fn cached_pair<const F: u8, const HB: bool, const C: u8>(
    col: *const u8,
    h: usize,
    g: usize,
    at: *mut __m256i,
) -> [__m256i; 4] {
    let k = cached::<F>() / 4;
    // SAFETY: as the caller guarantees.
    unsafe {
        if C == READ {
            let w = [_mm256_load_si256(at), _mm256_load_si256(at.add(1))];
            return if Fmt::<F>::Q8 {
                [
                    w[0],
                    w[1],
                    _mm256_load_si256(at.add(2)),
                    _mm256_load_si256(at.add(3)),
                ]
            } else {
                [w[0], w[1], w[0], w[1]]
            };
        }
        let w = group_pair::<F, HB>(col, h, g);
        let a = if Fmt::<F>::Q8 {
            [_mm256_abs_epi8(w[0]), _mm256_abs_epi8(w[1])]
        } else {
            w
        };
        if C == FILL {
            let all = [w[0], w[1], a[0], a[1]];
            for (i, &v) in all[..k].iter().enumerate() {
                _mm256_store_si256(at.add(i), v);
            }
        }
        [w[0], w[1], a[0], a[1]]
    }
}

/// Rows `8h0..8h0+8H` of a tile (`H` halves from half `h0`) against one token's activations
/// `x`, in llama.cpp's order (`ggml_vec_dot_q4_1_q8_1` and its siblings, AVX2 build): per row,
/// eight 4-value integer sums per block (offsets taken off in integers), each scaled and
/// accumulated in its own lane across the blocks, the lanes folded as `hsum_float_8` folds them,
/// then the separately accumulated minimum term added.
///
/// `H = 2` (a lone token) reads each block column once for both halves: its 16 accumulators
/// no longer fit the registers with the rest, but the weights stream in one pass instead of
/// being fetched by the first half's pass while the second's re-reads them from cache and the
/// memory waits (streamed `/1` 0.72-0.87x the time, level in cache; see BENCHMARKS.md). A
/// batch's passes take one half each (`H = 1`), sharing the unpacked weights through `cache`.
///
/// `PF`: the pass may prefetch (`ahead` is not [`Ahead::None`]). The passes that never do (a
/// prefill's, and a streamed batch's later ones on AMD) run a loop without the per-column test
/// and its counters: 57 instructions a `Q4_1` column instead of 75.
///
/// # Safety
/// AVX2, FMA, F16C; `tile` holds `nb` block columns of format `F`, `x` `nb` activation blocks;
/// `h0 + H <= 2`; unless `C == DIRECT` (required for `H = 2`), `cache` holds
/// `cached::<F>() * nb` vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves_x<const F: u8, const HB: bool, const C: u8, const PF: bool, const H: usize>(
    tile: *const u8,
    nb: usize,
    x: *const BlockQ8s,
    h0: usize,
    ahead: Ahead,
    cache: *mut __m256i,
) -> [__m256; H] {
    const { assert!(H == 1 || (H == 2 && C == DIRECT)) };
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 8]; H];
    let mut summ = [_mm256_setzero_ps(); H];
    for b in 0..nb {
        // SAFETY: column `b` and activation block `b` lie inside what the caller guarantees.
        unsafe {
            let col = tile.add(b * Fmt::<F>::BYTES);
            if PF {
                prefetch(ahead, b, col, Fmt::<F>::BYTES);
            }
            let x = &*x.add(b);
            for (i, (acc, summ)) in acc.iter_mut().zip(&mut summ).enumerate() {
                let h = h0 + i;
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(col.add(16 * h).cast()));
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d));
                for g in 0..4 {
                    let at = cache.wrapping_add(cached::<F>() * b + cached::<F>() / 4 * g);
                    let wp = cached_pair::<F, HB, C>(col, h, g, at);
                    for k in 0..2 {
                        let j = 2 * g + k;
                        let p = pairs_abs::<F>(wp[k], wp[2 + k], group(x, j));
                        let mut s = _mm256_madd_epi16(p, ones);
                        if !Fmt::<F>::MIN && !Fmt::<F>::Q8 {
                            // `-offset · Σ` of the group's activations (`c4`, scaled by the
                            // dispatch).
                            s = _mm256_add_epi32(s, _mm256_set1_epi32(x.c4[j]));
                        }
                        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[j]);
                    }
                }
                if Fmt::<F>::MIN {
                    let m =
                        _mm256_cvtph_ps(_mm_loadu_si128(col.add(Fmt::<F>::M_AT + 16 * h).cast()));
                    *summ = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), *summ);
                }
            }
        }
    }
    let mut r = [_mm256_setzero_ps(); H];
    for ((r, acc), summ) in r.iter_mut().zip(&acc).zip(summ) {
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        *r = _mm256_add_ps(lo, hi);
        if Fmt::<F>::MIN {
            *r = _mm256_add_ps(*r, summ);
        }
    }
    r
}

/// Rows `8h0..8h0+8H` of a tile (`H` halves from `h0`) against `T` tokens (`x`, `arow` bytes
/// apart) in ward's own order ([`Numerics::Fast`]): each block's 32-value sum in integers, the
/// offset term of `Q4_0` / `Q5_0` added to it (`c4[0]`, as `matmul_packed` leaves it in this
/// order), scaled once, and the minimum term of `Q4_1` / `Q5_1` fused in. (The offset in
/// integers instead of a second fused multiply-add: `Q4_0/1536x576/packed/8` 92-100 -> 87-89
/// us, `Q5_0` 131-147 -> 129-140 us, one thread, three alternated rounds, on an Emerald Rapids
/// Xeon held to AVX2 with `WARD_ISA=avx2`.) 4-bit pairs are at most `2 · 15 · 127`,
/// so eight of them add up in 16 bits; 5-bit ones four at a time; `Q8_0` ones go to 32 bits
/// one by one. A lone token takes both halves (`H = 2`) in one pass, as in [`halves_x`].
///
/// # Safety
/// As [`halves_x`], for `T` tokens; `h0 + H <= 2`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves_fast<const T: usize, const F: u8, const HB: bool, const H: usize>(
    tile: *const u8,
    nb: usize,
    x: *const u8,
    arow: usize,
    h0: usize,
    ahead: Ahead,
) -> [[__m256; T]; H] {
    let ones = _mm256_set1_epi16(1);
    let mut accs = [[_mm256_setzero_ps(); T]; H];
    for b in 0..nb {
        // SAFETY: column `b` and each token's block `b` lie inside what the caller guarantees.
        unsafe {
            let col = tile.add(b * Fmt::<F>::BYTES);
            prefetch(ahead, b, col, Fmt::<F>::BYTES);
            for (i, acc) in accs.iter_mut().enumerate() {
                let h = h0 + i;
                let wv = values::<F, HB>(col, h);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(col.add(16 * h).cast()));
                // `Q4_1` / `Q5_1`: the rows' minima, for every token.
                let m = if Fmt::<F>::MIN {
                    _mm256_cvtph_ps(_mm_loadu_si128(col.add(Fmt::<F>::M_AT + 16 * h).cast()))
                } else {
                    _mm256_setzero_ps()
                };
                for (t, acc) in acc.iter_mut().enumerate() {
                    let x = &*x.add(t * arow + b * XB).cast::<BlockQ8s>();
                    // No closures here: they would not inherit the target features.
                    let mut p = [_mm256_setzero_si256(); 8];
                    for (j, p) in p.iter_mut().enumerate() {
                        *p = pairs::<F>(wv[j], group(x, j));
                    }
                    let s = if Fmt::<F>::Q8 {
                        let mut s = _mm256_madd_epi16(p[0], ones);
                        for &p in &p[1..] {
                            s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
                        }
                        s
                    } else {
                        let lo = _mm256_add_epi16(
                            _mm256_add_epi16(p[0], p[1]),
                            _mm256_add_epi16(p[2], p[3]),
                        );
                        let hi = _mm256_add_epi16(
                            _mm256_add_epi16(p[4], p[5]),
                            _mm256_add_epi16(p[6], p[7]),
                        );
                        if Fmt::<F>::Q5 {
                            // Four 5-bit pairs fit 16 bits, eight do not.
                            _mm256_add_epi32(
                                _mm256_madd_epi16(lo, ones),
                                _mm256_madd_epi16(hi, ones),
                            )
                        } else {
                            _mm256_madd_epi16(_mm256_add_epi16(lo, hi), ones)
                        }
                    };
                    // `Q8_0`'s values are signed here: no offset to take off.
                    let s = if Fmt::<F>::MIN || Fmt::<F>::Q8 {
                        s
                    } else {
                        _mm256_add_epi32(s, _mm256_set1_epi32(x.c4[0]))
                    };
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, *acc);
                    if Fmt::<F>::MIN {
                        *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), *acc);
                    }
                }
            }
        }
    }
    accs
}

/// One format's passes over a tile: two halves × the tokens, one token a pass in llama.cpp's
/// order, up to four in ward's; a lone token's one pass takes both halves.
///
/// # Safety
/// AVX2, FMA, F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn passes<const F: u8, const HB: bool>(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    next: isize,
    fast: bool,
    out: &mut [[f32; R]],
) {
    let n = out.len();
    let nb = Fmt::<F>::columns(lay, tile, a, arow, n);
    let later = isa::prefetch_in_later_passes();
    let per = if fast { 4 } else { 1 };
    let passes = 2 * n.div_ceil(per);
    let p = tile.as_ptr();
    if n == 1 {
        // A lone token: one pass over both halves, in either order.
        let ahead = Ahead::of_pass(next, 0, 1, later);
        // SAFETY: lengths asserted by `columns`; same features.
        let r = unsafe {
            if fast {
                halves_fast::<1, F, HB, 2>(p, nb, a.as_ptr(), arow, 0, ahead).map(|[r]| r)
            } else {
                let (x, null) = (a.as_ptr().cast(), std::ptr::null_mut());
                halves_x::<F, HB, DIRECT, true, 2>(p, nb, x, 0, ahead, null)
            }
        };
        for (h, r) in r.into_iter().enumerate() {
            // SAFETY: 8 floats from `8h` of the 16.
            unsafe { _mm256_storeu_ps(out[0].as_mut_ptr().add(8 * h), r) };
        }
        return;
    }
    if !fast {
        // One token and one half a pass: the first pass over each half stores the weight
        // vectors it unpacks (and `Q8_0`'s magnitudes), the others load them.
        // SAFETY: an all-zero vector is a valid `__m256i`.
        let zero = unsafe { std::mem::zeroed() };
        return with_unpacked(&UNPACKED, Some(cached::<F>() * nb), zero, |buf| {
            for h in 0..2 {
                for (t, o) in out.iter_mut().enumerate() {
                    let ahead = Ahead::of_pass(next, h * n + t, passes, later);
                    let x = a[t * arow..].as_ptr().cast();
                    // SAFETY: lengths asserted by `columns`; `buf` holds `cached::<F>() * nb`
                    // vectors; same features.
                    let [r] = unsafe {
                        match (t, !matches!(ahead, Ahead::None)) {
                            (0, _) => halves_x::<F, HB, FILL, true, 1>(p, nb, x, h, ahead, buf),
                            (_, true) => halves_x::<F, HB, READ, true, 1>(p, nb, x, h, ahead, buf),
                            (_, false) => {
                                halves_x::<F, HB, READ, false, 1>(p, nb, x, h, ahead, buf)
                            }
                        }
                    };
                    // SAFETY: 8 floats from `8h` of the 16.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), r) };
                }
            }
        });
    }
    let mut pass = 0;
    for h in 0..2 {
        for (c, o) in out.chunks_mut(per).enumerate() {
            let ahead = Ahead::of_pass(next, pass, passes, later);
            pass += 1;
            let x = a[c * per * arow..].as_ptr();
            macro_rules! run {
                ($t:literal) => {{
                    // SAFETY: lengths asserted by `columns`; same features.
                    let [r] = unsafe { halves_fast::<$t, F, HB, 1>(p, nb, x, arow, h, ahead) };
                    for (o, r) in o.iter_mut().zip(r) {
                        // SAFETY: 8 floats from `8h` of the 16.
                        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), r) };
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

/// The AVX2 packed tile kernel (`packed_matmul::TileFn`) of every packed format (`Q6_K`
/// with its high bits as bytes).
///
/// # Safety
/// Requires AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
    let fast = order == Numerics::Fast;
    // SAFETY: same features.
    unsafe {
        if lay.q6 {
            return super::avx2_packed_q6::tile(lay, tile, a, arow, gemm, next, out);
        }
        if lay.kquant {
            return super::avx2_packed_k::tile(lay, tile, a, arow, gemm, next, out);
        }
        match (fmt_of(lay), lay.high_bytes) {
            (Q4_0, _) => passes::<Q4_0, false>(lay, tile, a, arow, next, fast, out),
            (Q4_1, _) => passes::<Q4_1, false>(lay, tile, a, arow, next, fast, out),
            (Q5_0, false) => passes::<Q5_0, false>(lay, tile, a, arow, next, fast, out),
            (Q5_0, true) => passes::<Q5_0, true>(lay, tile, a, arow, next, fast, out),
            (Q5_1, false) => passes::<Q5_1, false>(lay, tile, a, arow, next, fast, out),
            (Q5_1, true) => passes::<Q5_1, true>(lay, tile, a, arow, next, fast, out),
            (Q8_0, _) => passes::<Q8_0, false>(lay, tile, a, arow, next, fast, out),
            (f, _) => unreachable!("format {f}"),
        }
    }
}
