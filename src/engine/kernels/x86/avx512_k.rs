//! AVX-512 VNNI dot products for the K-quants (`Q2_K` … `Q6_K`) against [`BlockQ8K`].
//!
//! Weights are unpacked 64 at a time into unsigned bytes in element order; `vpdpbusd` against
//! the signed activations gives 4-element sums that fit in 16 bits, so `vpdpwssd` multiplies
//! them by the (sub-)block scales and accumulates in `i32` across the whole super-block. Offsets
//! (`-32` for `Q6_K`, `-4` for `Q3_K`) and mins come from the activations' 16-element sums.
//! One `f32` conversion per super-block and token; up to eight tokens share each unpacking.

use super::super::blocks::BlockQ8K;
use super::super::isa::DotFn;
use std::arch::x86_64::*;

const WB: usize = std::mem::size_of::<BlockQ8K>();

/// The `f16` at `p` as `f32`.
///
/// # Safety
/// F16C; two readable bytes at `p`.
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: see above.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Loads 32 bytes at `p` into both halves of a `zmm`.
///
/// # Safety
/// AVX-512 F; 32 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bcast32(p: *const u8) -> __m512i {
    // SAFETY: see above.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// Per-64-bit-lane shift counts: `lo` for the low 256 bits, `hi` for the high.
#[inline]
#[target_feature(enable = "avx512f")]
fn counts(lo: i64, hi: i64) -> __m512i {
    _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo)
}

/// Sets bits `mask` of `base` from `bits`: `mask ? bits : base`.
#[inline]
#[target_feature(enable = "avx512f")]
fn merge(mask: i8, bits: __m512i, base: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0xCA>(_mm512_set1_epi8(mask), bits, base)
}

/// Signed bytes widened to `i32` lanes holding the value in their low 16 bits and zero above,
/// as the `vpdpwssd` operand that multiplies whole 16-bit-range `i32` lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn scales_i16(s: __m128i) -> __m512i {
    _mm512_and_si512(_mm512_cvtepi8_epi32(s), _mm512_set1_epi32(0xFFFF))
}

/// `[s[k] ×4 for k in first..first+4]` as `i32` lanes, from 16 scales in `i32` lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn scales4(s: __m512i, first: i32) -> __m512i {
    let idx = _mm512_set_epi32(
        first + 3,
        first + 3,
        first + 3,
        first + 3,
        first + 2,
        first + 2,
        first + 2,
        first + 2,
        first + 1,
        first + 1,
        first + 1,
        first + 1,
        first,
        first,
        first,
        first,
    );
    _mm512_permutexvar_epi32(idx, s)
}

/// `[s[k] ×8, s[k + 1] ×8]` as `i32` lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn scales2(s: __m512i, k: i32) -> __m512i {
    let (a, b) = (k, k + 1);
    _mm512_permutexvar_epi32(
        _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a),
        s,
    )
}

/// Token `t`'s activation block `i`.
///
/// # Safety
/// Inside `a`, which holds [`BlockQ8K`]s (64-byte aligned) `arow` bytes apart per token.
#[inline(always)]
unsafe fn xblock(a: &[u8], arow: usize, t: usize, i: usize) -> &BlockQ8K {
    // SAFETY: see above.
    unsafe { &*a.as_ptr().add(t * arow + i * WB).cast::<BlockQ8K>() }
}

/// Accumulates `Σ sc · (w · x)` over one 64-element chunk for each token.
///
/// # Safety
/// AVX-512 VNNI; `xoff + 64 <= 256`; `a` as in [`xblock`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn chunk<const T: usize>(
    isum: &mut [__m512i; T],
    wv: __m512i,
    sc: __m512i,
    a: &[u8],
    arow: usize,
    i: usize,
    xoff: usize,
) {
    for (t, acc) in isum.iter_mut().enumerate() {
        // SAFETY: see above; 64 bytes of `qs` from `xoff`.
        let x = unsafe { _mm512_load_si512(xblock(a, arow, t, i).qs.as_ptr().add(xoff).cast()) };
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, x);
        *acc = _mm512_dpwssd_epi32(*acc, s, sc);
    }
}

/// The 16 activation sums of token `t`'s block `i`, as 16 `i16`.
///
/// # Safety
/// As [`xblock`].
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bsums(a: &[u8], arow: usize, t: usize, i: usize) -> __m256i {
    // SAFETY: see above; `bsums` is 32-byte aligned at offset 256.
    unsafe { _mm256_load_si256(xblock(a, arow, t, i).bsums.as_ptr().cast()) }
}

/// Unpacks the 6-bit scales and mins of a `Q4_K` / `Q5_K` block as two `u64` of 8 bytes.
///
/// # Safety
/// 12 readable bytes at `p`.
#[inline(always)]
unsafe fn k4_scales(p: *const u8) -> (u64, u64) {
    // SAFETY: see above.
    super::super::blocks::k4_scales_words(&unsafe { p.cast::<[u8; 12]>().read_unaligned() })
}

/// Shared body of `Q4_K` (`QH = false`) and `Q5_K` (`QH = true`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
unsafe fn k45<const T: usize, const QH: bool>(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
    let bytes = if QH { 176 } else { 144 };
    let qs_at = if QH { 48 } else { 16 };
    let nb = w.len() / bytes;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * WB);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let b = w[i * bytes..].as_ptr();
        // SAFETY: block `i` is inside `w`; offsets follow the GGUF layout.
        let (d, dmin, (sc, mn)) = unsafe { (f16(b), f16(b.add(2)), k4_scales(b.add(4))) };
        let sc32 = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64));
        let mv = _mm_cvtsi64_si128(mn as i64);
        let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mv, mv));
        // SAFETY: `qh` at bytes 16..48 of a `Q5_K` block.
        let qh = if QH {
            unsafe { bcast32(b.add(16)) }
        } else {
            _mm512_setzero_si512()
        };
        let mut isum = [_mm512_setzero_si512(); T];
        for c in 0..4 {
            // SAFETY: 32 bytes of `qs` per chunk.
            let q = unsafe { bcast32(b.add(qs_at + 32 * c)) };
            let q = _mm512_srlv_epi64(q, counts(0, 4));
            let mut wv = _mm512_and_si512(q, _mm512_set1_epi8(0x0F));
            if QH {
                // Bit 2c (low half) / 2c + 1 (high half) of each `qh` byte, moved to bit 4.
                let r = |bit: i64| (bit - 4).rem_euclid(64);
                let h = _mm512_rorv_epi64(qh, counts(r(2 * c as i64), r(2 * c as i64 + 1)));
                wv = merge(0x10, h, wv);
            }
            // SAFETY: chunk `c` covers activation values 64c..64c+64.
            unsafe {
                chunk(
                    &mut isum,
                    wv,
                    scales2(sc32, 2 * c as i32),
                    a,
                    arow,
                    i,
                    64 * c,
                )
            };
        }
        for t in 0..T {
            // SAFETY: token `t`, block `i` inside `a`.
            let (x, bs) = unsafe { (xblock(a, arow, t, i), bsums(a, arow, t, i)) };
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(d * x.d), acc[t]);
            let m = _mm512_cvtepi32_ps(_mm512_zextsi256_si512(_mm256_madd_epi16(bs, mins)));
            acc[t] = _mm512_fnmadd_ps(m, _mm512_set1_ps(dmin * x.d), acc[t]);
        }
    }
    finish(&acc, out);
}

/// `out[t] = Σ acc[t]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn finish<const T: usize>(acc: &[__m512; T], out: &mut [f32]) {
    for t in 0..T {
        out[t] = _mm512_reduce_add_ps(acc[t]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
unsafe fn q6k<const T: usize>(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
    let nb = w.len() / 210;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * WB);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let b = w[i * 210..].as_ptr();
        // SAFETY: block `i` is inside `w`: `ql` at 0, `qh` at 128, scales at 192, `d` at 208.
        let (d, sc8) = unsafe { (f16(b.add(208)), _mm_loadu_si128(b.add(192).cast())) };
        let sc32 = scales_i16(sc8);
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let mut isum = [_mm512_setzero_si512(); T];
        for h in 0..2 {
            // SAFETY: as above.
            let (ql, qh) = unsafe {
                (
                    _mm512_loadu_si512(b.add(64 * h).cast()),
                    bcast32(b.add(128 + 32 * h)),
                )
            };
            let lo = _mm512_and_si512(ql, _mm512_set1_epi8(0x0F));
            let wa = merge(0x30, _mm512_rorv_epi64(qh, counts(60, 62)), lo);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(ql), _mm512_set1_epi8(0x0F));
            let wb = merge(0x30, _mm512_rorv_epi64(qh, counts(0, 2)), hi);
            let g = 8 * h as i32;
            // SAFETY: values 128h..128h+64 and 128h+64..128h+128.
            unsafe {
                chunk(&mut isum, wa, scales4(sc32, g), a, arow, i, 128 * h);
                chunk(
                    &mut isum,
                    wb,
                    scales4(sc32, g + 4),
                    a,
                    arow,
                    i,
                    128 * h + 64,
                );
            }
        }
        for t in 0..T {
            // SAFETY: token `t`, block `i` inside `a`.
            let (x, bs) = unsafe { (xblock(a, arow, t, i), bsums(a, arow, t, i)) };
            // The stored values are q + 32.
            let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sc16));
            let s = _mm512_sub_epi32(isum[t], _mm512_zextsi256_si512(corr));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(d * x.d), acc[t]);
        }
    }
    finish(&acc, out);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
unsafe fn q2k<const T: usize>(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
    let nb = w.len() / 84;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * WB);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let b = w[i * 84..].as_ptr();
        // SAFETY: block `i` is inside `w`: scales at 0, `qs` at 16, `d` at 80, `dmin` at 82.
        let (d, dmin, s8) = unsafe { (f16(b.add(80)), f16(b.add(82)), _mm_loadu_si128(b.cast())) };
        let sc32 = _mm512_cvtepu8_epi32(_mm_and_si128(s8, _mm_set1_epi8(0x0F)));
        let mins =
            _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(s8), _mm_set1_epi8(0x0F)));
        let mut isum = [_mm512_setzero_si512(); T];
        for h in 0..2 {
            // SAFETY: as above.
            let q = unsafe { bcast32(b.add(16 + 32 * h)) };
            for j in 0..2 {
                let sh = 4 * j as i64;
                let wv = _mm512_and_si512(
                    _mm512_srlv_epi64(q, counts(sh, sh + 2)),
                    _mm512_set1_epi8(3),
                );
                let at = 128 * h + 64 * j;
                // SAFETY: values `at..at + 64`.
                unsafe { chunk(&mut isum, wv, scales4(sc32, at as i32 / 16), a, arow, i, at) };
            }
        }
        for t in 0..T {
            // SAFETY: token `t`, block `i` inside `a`.
            let (x, bs) = unsafe { (xblock(a, arow, t, i), bsums(a, arow, t, i)) };
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(d * x.d), acc[t]);
            let m = _mm512_cvtepi32_ps(_mm512_zextsi256_si512(_mm256_madd_epi16(bs, mins)));
            acc[t] = _mm512_fnmadd_ps(m, _mm512_set1_ps(dmin * x.d), acc[t]);
        }
    }
    finish(&acc, out);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
unsafe fn q3k<const T: usize>(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
    let nb = w.len() / 110;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * WB);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let b = w[i * 110..].as_ptr();
        // SAFETY: block `i` is inside `w`: `hmask` at 0, `qs` at 32, scales at 96, `d` at 108.
        let (d, raw) = unsafe {
            (
                f16(b.add(108)),
                std::ptr::read_unaligned(b.add(96).cast::<[u8; 12]>()),
            )
        };
        let sc8 = super::super::blocks::k3_scales(&raw);
        // SAFETY: 16 bytes.
        let sc8 = unsafe { _mm_loadu_si128(sc8.as_ptr().cast()) };
        let (sc32, sc16) = (scales_i16(sc8), _mm256_cvtepi8_epi16(sc8));
        // SAFETY: as above.
        let hm = unsafe { bcast32(b) };
        let mut isum = [_mm512_setzero_si512(); T];
        for h in 0..2 {
            // SAFETY: as above.
            let q = unsafe { bcast32(b.add(32 + 32 * h)) };
            for j in 0..2 {
                let sh = 4 * j as i64;
                let low = _mm512_and_si512(
                    _mm512_srlv_epi64(q, counts(sh, sh + 2)),
                    _mm512_set1_epi8(3),
                );
                // High bit 4h + 2j (+1) of each `hmask` byte, moved to bit 2.
                let bit = (4 * h + 2 * j) as i64;
                let r = |b: i64| (b - 2).rem_euclid(64);
                let wv = merge(0x04, _mm512_rorv_epi64(hm, counts(r(bit), r(bit + 1))), low);
                let at = 128 * h + 64 * j;
                // SAFETY: values `at..at + 64`.
                unsafe { chunk(&mut isum, wv, scales4(sc32, at as i32 / 16), a, arow, i, at) };
            }
        }
        for t in 0..T {
            // SAFETY: token `t`, block `i` inside `a`.
            let (x, bs) = unsafe { (xblock(a, arow, t, i), bsums(a, arow, t, i)) };
            // The stored values are q + 4.
            let corr = _mm256_slli_epi32::<2>(_mm256_madd_epi16(bs, sc16));
            let s = _mm512_sub_epi32(isum[t], _mm512_zextsi256_si512(corr));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(d * x.d), acc[t]);
        }
    }
    finish(&acc, out);
}

/// Expands a kernel generic over the token count into a [`DotFn`].
macro_rules! tokens {
    ($f:ident $(, $extra:literal)?) => {{
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
        unsafe fn run(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
            // SAFETY: same features; the kernels check the lengths.
            unsafe {
                match out.len() {
                    1 => $f::<1 $(, $extra)?>(w, a, arow, out),
                    2 => $f::<2 $(, $extra)?>(w, a, arow, out),
                    3 => $f::<3 $(, $extra)?>(w, a, arow, out),
                    4 => $f::<4 $(, $extra)?>(w, a, arow, out),
                    5 => $f::<5 $(, $extra)?>(w, a, arow, out),
                    6 => $f::<6 $(, $extra)?>(w, a, arow, out),
                    7 => $f::<7 $(, $extra)?>(w, a, arow, out),
                    8 => $f::<8 $(, $extra)?>(w, a, arow, out),
                    n => unreachable!("{n} tokens"),
                }
            }
        }
        run as DotFn
    }};
}

/// The kernel for a K-quant format.
pub fn kernel(dtype: super::GgmlDType) -> Option<DotFn> {
    use super::GgmlDType::*;
    Some(match dtype {
        Q2K => tokens!(q2k),
        Q3K => tokens!(q3k),
        Q4K => tokens!(k45, false),
        Q5K => tokens!(k45, true),
        Q6K => tokens!(q6k),
        _ => return None,
    })
}
