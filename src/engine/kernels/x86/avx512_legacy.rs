//! AVX-512 VNNI dot products for the 32-wide formats (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`).
//!
//! Two weight blocks are unpacked into one `zmm` of 64 signed bytes (one masked load, then
//! `vpermb` picks the bytes), in the element order of the [`BlockQ8x2`] activations, which
//! hold `q + 128`. `vpdpbusd(bias, u, w)` with `bias = -128 Σ w` then yields the exact `Σ w q`
//! per lane; lanes are scaled by `d_w d_x` in `f32`. The unpacked block pair is reused for up to
//! eight tokens.

use super::super::blocks::BlockQ8x2;
use super::super::isa::DotFn;
use std::arch::x86_64::*;

/// One 32-wide weight format, unpacked two blocks at a time.
trait Legacy {
    /// Bytes per block.
    const BYTES: usize;
    /// Whether blocks carry a min `m` (`w = d q + m`).
    const MIN: bool;
    /// Unpacks blocks at `p` (the second only if `two`): signed weights in activation order,
    /// `[d0 ×8, d1 ×8]`, and `[m0 ×8, m1 ×8]` (or zero).
    ///
    /// # Safety
    /// AVX-512 F/BW/VBMI; `p` must point at one block, or two if `two`.
    unsafe fn unpack(p: *const u8, two: bool) -> (__m512i, __m512, __m512);
}

/// `vpermb` indices building `[lo(q0), hi(q0), lo(q1), hi(q1)]` from two blocks' 16 nibble
/// bytes at offsets `q0`, `q1` (the high halves are shifted down afterwards).
const fn nib_idx(q0: usize, q1: usize) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = ((if i < 32 { q0 } else { q1 }) + i % 16) as u8;
        i += 1;
    }
    a
}

/// `vpermb` indices gathering the halves at byte offsets `o[k]` into 16-bit lanes `8k..8k+8`.
const fn half_idx(o: [usize; 4]) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = (o[i / 16] + i % 2) as u8;
        i += 1;
    }
    a
}

#[inline(always)]
fn vidx(a: &'static [u8; 64]) -> __m512i {
    // SAFETY: 64 readable bytes; unaligned load.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// Low nibbles in 64-bit lanes 0-1 and 4-5, high nibbles (shifted down) in 2-3 and 6-7.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibbles(v: __m512i) -> __m512i {
    let shifted = _mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F))
}

/// Loads `len` (up to 64) bytes from `p`, zeroing the rest.
///
/// # Safety
/// AVX-512 BW; `len` bytes readable at `p` (masked-off bytes are not accessed).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load(p: *const u8, len: usize) -> __m512i {
    let k: __mmask64 = if len >= 64 { !0 } else { (1u64 << len) - 1 };
    // SAFETY: see above.
    unsafe { _mm512_maskz_loadu_epi8(k, p.cast()) }
}

/// `[f16 lanes 0-15]` of `v` converted to `f32`.
#[inline]
#[target_feature(enable = "avx512f")]
fn halves_lo(v: __m512i) -> __m512 {
    _mm512_cvtph_ps(_mm512_castsi512_si256(v))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn halves_hi(v: __m512i) -> __m512 {
    _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v))
}

/// Reads the little-endian `u32` at `p`.
#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u64 {
    // SAFETY: the caller guarantees 4 readable bytes.
    unsafe { p.cast::<u32>().read_unaligned() as u64 }
}

struct Q4_0;
impl Legacy for Q4_0 {
    const BYTES: usize = 18;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn unpack(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        static Q: [u8; 64] = nib_idx(2, 20);
        static D: [u8; 64] = half_idx([0, 18, 0, 0]);
        // SAFETY: the caller guarantees the block(s) at `p`.
        let v = unsafe { load(p, if two { 36 } else { 18 }) };
        let w = nibbles(_mm512_permutexvar_epi8(vidx(&Q), v));
        let w = _mm512_sub_epi8(w, _mm512_set1_epi8(8));
        let d = halves_lo(_mm512_permutexvar_epi8(vidx(&D), v));
        (w, d, _mm512_setzero_ps())
    }
}

struct Q4_1;
impl Legacy for Q4_1 {
    const BYTES: usize = 20;
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn unpack(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        static Q: [u8; 64] = nib_idx(4, 24);
        static DM: [u8; 64] = half_idx([0, 20, 2, 22]);
        // SAFETY: the caller guarantees the block(s) at `p`.
        let v = unsafe { load(p, if two { 40 } else { 20 }) };
        let w = nibbles(_mm512_permutexvar_epi8(vidx(&Q), v));
        let dm = _mm512_permutexvar_epi8(vidx(&DM), v);
        (w, halves_lo(dm), halves_hi(dm))
    }
}

/// Adds 16 to the bytes whose bit is set in the two blocks' `qh` words.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn fifth_bit(w: __m512i, qh0: u64, qh1: u64) -> __m512i {
    _mm512_mask_add_epi8(w, qh0 | qh1 << 32, w, _mm512_set1_epi8(16))
}

struct Q5_0;
impl Legacy for Q5_0 {
    const BYTES: usize = 22;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn unpack(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        static Q: [u8; 64] = nib_idx(6, 28);
        static D: [u8; 64] = half_idx([0, 22, 0, 0]);
        // SAFETY: the caller guarantees the block(s) at `p`.
        let v = unsafe { load(p, if two { 44 } else { 22 }) };
        let w = nibbles(_mm512_permutexvar_epi8(vidx(&Q), v));
        // SAFETY: `qh` sits at bytes 2..6 of each present block.
        let (h0, h1) = unsafe { (u32_at(p.add(2)), if two { u32_at(p.add(24)) } else { 0 }) };
        let w = _mm512_sub_epi8(fifth_bit(w, h0, h1), _mm512_set1_epi8(16));
        let d = halves_lo(_mm512_permutexvar_epi8(vidx(&D), v));
        (w, d, _mm512_setzero_ps())
    }
}

struct Q5_1;
impl Legacy for Q5_1 {
    const BYTES: usize = 24;
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn unpack(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        static Q: [u8; 64] = nib_idx(8, 32);
        static DM: [u8; 64] = half_idx([0, 24, 2, 26]);
        // SAFETY: the caller guarantees the block(s) at `p`.
        let v = unsafe { load(p, if two { 48 } else { 24 }) };
        let w = nibbles(_mm512_permutexvar_epi8(vidx(&Q), v));
        // SAFETY: `qh` sits at bytes 4..8 of each present block.
        let (h0, h1) = unsafe { (u32_at(p.add(4)), if two { u32_at(p.add(28)) } else { 0 }) };
        let dm = _mm512_permutexvar_epi8(vidx(&DM), v);
        (fifth_bit(w, h0, h1), halves_lo(dm), halves_hi(dm))
    }
}

struct Q8_0;
impl Legacy for Q8_0 {
    const BYTES: usize = 34;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn unpack(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        static Q: [u8; 64] = {
            let mut a = [0u8; 64];
            let mut i = 0;
            while i < 64 {
                // Block 0's bytes 2..34 of the first load, block 1's 36..68 (64 + 0..4 in the
                // second).
                a[i] = if i < 32 { i + 2 } else { i + 4 } as u8;
                i += 1;
            }
            a
        };
        static D: [u8; 64] = half_idx([0, 34, 0, 0]);
        // SAFETY: the caller guarantees the block(s) at `p`; with two blocks, bytes 64..68 are
        // block 1's last four values, and with one nothing is read from the second address.
        let (v0, v1) = unsafe {
            (
                load(p, if two { 64 } else { 34 }),
                load(p.wrapping_add(64), if two { 4 } else { 0 }),
            )
        };
        let w = _mm512_permutex2var_epi8(v0, vidx(&Q), v1);
        let d = halves_lo(_mm512_permutexvar_epi8(vidx(&D), v0));
        (w, d, _mm512_setzero_ps())
    }
}

/// `out[t] = w · a[t]` for `T` tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn dot<F: Legacy, const T: usize>(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
    let nb = w.len() / F::BYTES;
    let pairs = nb.div_ceil(2);
    assert!(out.len() == T && a.len() >= (T - 1) * arow + pairs * 192);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let mut acc = [_mm512_setzero_ps(); T];
    let k128 = _mm512_set1_epi8(0x80u8 as i8);
    for p in 0..pairs {
        let two = 2 * p + 1 < nb;
        // SAFETY: block `2p` (and `2p + 1` if `two`) lie inside `w`.
        let (wv, dw, mw) = unsafe { F::unpack(w.as_ptr().add(2 * p * F::BYTES), two) };
        // The min terms are repeated on 8 lanes per block.
        let mw = _mm512_mul_ps(mw, _mm512_set1_ps(0.125));
        let bias = _mm512_sub_epi32(
            _mm512_setzero_si512(),
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, wv),
        );
        for t in 0..T {
            // SAFETY: pair `p` of token `t` lies inside `a` (asserted), 64-byte aligned.
            let x = unsafe { &*a.as_ptr().add(t * arow + p * 192).cast::<BlockQ8x2>() };
            // SAFETY: `BlockQ8x2` is 64-byte aligned, its fields at 0, 64 and 128.
            let (u, dx) = unsafe {
                (
                    _mm512_load_si512(x.u.as_ptr().cast()),
                    _mm512_load_ps(x.d.as_ptr()),
                )
            };
            let s = _mm512_dpbusd_epi32(bias, u, wv);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, dx), acc[t]);
            if F::MIN {
                // SAFETY: as above.
                let sx = unsafe { _mm512_load_ps(x.s.as_ptr()) };
                acc[t] = _mm512_fmadd_ps(mw, sx, acc[t]);
            }
        }
    }
    for t in 0..T {
        out[t] = _mm512_reduce_add_ps(acc[t]);
    }
}

/// Dispatches on the token count.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn tokens<F: Legacy>(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
    // SAFETY: same features; `dot` checks the lengths.
    unsafe {
        match out.len() {
            1 => dot::<F, 1>(w, a, arow, out),
            2 => dot::<F, 2>(w, a, arow, out),
            3 => dot::<F, 3>(w, a, arow, out),
            4 => dot::<F, 4>(w, a, arow, out),
            5 => dot::<F, 5>(w, a, arow, out),
            6 => dot::<F, 6>(w, a, arow, out),
            7 => dot::<F, 7>(w, a, arow, out),
            8 => dot::<F, 8>(w, a, arow, out),
            n => unreachable!("{n} tokens"),
        }
    }
}

/// The kernel for a 32-wide format.
pub fn kernel(dtype: super::GgmlDType) -> Option<DotFn> {
    use super::GgmlDType as G;
    Some(match dtype {
        G::Q4_0 => tokens::<Q4_0>,
        G::Q4_1 => tokens::<Q4_1>,
        G::Q5_0 => tokens::<Q5_0>,
        G::Q5_1 => tokens::<Q5_1>,
        G::Q8_0 => tokens::<Q8_0>,
        _ => return None,
    })
}
