//! NEON dot products for AArch64 (Graviton, Ampere, Apple silicon): the 32-wide formats one
//! block (two 16-byte vectors) at a time, `Q4_K` / `Q5_K` / `Q6_K` 16 values at a time, up to
//! four tokens sharing each unpacked weight block. `Q2_K` / `Q3_K` and the float formats use
//! the portable path, which the compiler vectorizes for NEON on its own.
//!
//! Integer sums go through `sdot` where the CPU has the dot-product extension (ARMv8.2:
//! Neoverse N1 and later, Apple M1 and later; [`Isa::NeonDot`](super::super::isa::Isa)), else
//! through widening multiplies and pairwise adds; both give the same 4-value sums in the same
//! lanes. The 32-wide formats sum in the order of llama.cpp's x86 kernels (as `x86/avx2.rs`
//! does: eight 4-value sums per block, each scaled into its own `f32` lane, the lanes folded as
//! `hsum_float_8` folds them), so their products equal the x86 ones to the bit and the greedy
//! references of `tests/greedy_reference.rs` hold on AArch64 too. `sdot` is written as inline
//! assembly because its intrinsic is not stable Rust yet.

use super::super::GgmlDType;
use super::super::blocks::{BlockQ8K, BlockQ8x2, k4_scales_mins};
use super::super::isa::DotFn;
use std::arch::aarch64::*;
use std::arch::asm;

/// In each `i32` lane `k`, the sum of the products `a · b` of bytes `4k..4k+4` (`DOT`:
/// `sdot`; else widening multiplies and two pairwise adds).
///
/// # Safety
/// `DOT` only where the CPU has the dot-product extension.
#[inline(always)]
unsafe fn dot<const DOT: bool>(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        // SAFETY: NEON is part of every AArch64 target.
        let mut acc = unsafe { vdupq_n_s32(0) };
        // SAFETY: the caller guarantees the extension; registers only.
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    } else {
        // `|a · b| ≤ 128 · 128` fits 16 bits; pairs go to 32 bits before they add up.
        // SAFETY: NEON is part of every AArch64 target.
        unsafe {
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
            let hi = vpaddlq_s16(vmull_high_s8(a, b));
            vpaddq_s32(lo, hi)
        }
    }
}

/// The IEEE half at `p` as `f32` (`fcvt`, part of every AArch64 FPU; the `f16` vector type
/// that the intrinsic takes is not stable Rust yet).
///
/// # Safety
/// Two readable bytes at `p`.
#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: as the caller guarantees.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    let out: f32;
    // SAFETY: registers only.
    unsafe {
        asm!(
            "fmov {t:s}, {w:w}",
            "fcvt {o:s}, {t:h}",
            w = in(reg) u32::from(bits),
            t = out(vreg) _,
            o = lateout(vreg) out,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// Byte `i` is `0x10` where bit `i` of `bits` (16 bits) is set.
#[inline(always)]
fn bit16(bits: u32) -> uint8x16_t {
    const SEL: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: NEON is part of every AArch64 target; `SEL` is 16 bytes.
    unsafe {
        let v = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
        vandq_u8(vtstq_u8(v, vld1q_u8(SEL.as_ptr())), vdupq_n_u8(0x10))
    }
}

/// One 32-wide block unpacked: values `0..16` and `16..32` as signed bytes (offset taken off,
/// except for the formats with a minimum), `d`, and `m` (or 0).
struct Block {
    w: [int8x16_t; 2],
    d: f32,
    m: f32,
}

/// Unpacks block `p` of `dtype`.
///
/// # Safety
/// A whole block of `dtype` at `p`.
#[inline(always)]
unsafe fn unpack(dtype: GgmlDType, p: *const u8) -> Block {
    // SAFETY: offsets follow the GGUF block layouts; the caller guarantees the block.
    unsafe {
        let nibbles = |q: *const u8| {
            let q = vld1q_u8(q);
            [vandq_u8(q, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(q)]
        };
        let high = |qh: *const u8| {
            let h = qh.cast::<u32>().read_unaligned();
            [bit16(h), bit16(h >> 16)]
        };
        let signed = |v: [uint8x16_t; 2], off: u8| {
            v.map(|v| vreinterpretq_s8_u8(vsubq_u8(v, vdupq_n_u8(off))))
        };
        let d = f16(p);
        let (w, m) = match dtype {
            GgmlDType::Q4_0 => (signed(nibbles(p.add(2)), 8), 0.0),
            GgmlDType::Q4_1 => (signed(nibbles(p.add(4)), 0), f16(p.add(2))),
            GgmlDType::Q5_0 => {
                let [lo, hi] = nibbles(p.add(6));
                let [hl, hh] = high(p.add(2));
                (signed([vorrq_u8(lo, hl), vorrq_u8(hi, hh)], 16), 0.0)
            }
            GgmlDType::Q5_1 => {
                let [lo, hi] = nibbles(p.add(8));
                let [hl, hh] = high(p.add(4));
                (
                    signed([vorrq_u8(lo, hl), vorrq_u8(hi, hh)], 0),
                    f16(p.add(2)),
                )
            }
            _ => {
                let q = p.add(2).cast::<i8>();
                ([vld1q_s8(q), vld1q_s8(q.add(16))], 0.0)
            }
        };
        Block { w, d, m }
    }
}

/// `hsum_float_8`'s fold of eight lanes (`lo`: 0-3, `hi`: 4-7):
/// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
#[inline(always)]
fn hsum8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    // SAFETY: NEON is part of every AArch64 target.
    unsafe {
        let v = vaddq_f32(lo, hi);
        let h = vadd_f32(vget_low_f32(v), vget_high_f32(v));
        vget_lane_f32::<0>(h) + vget_lane_f32::<1>(h)
    }
}

/// A 32-wide weight row against `T` tokens of [`BlockQ8x2`] activations, in llama.cpp's
/// order (see the module docs); the minimum term accumulates apart, fused, as its build
/// contracts `summs += m * s`.
///
/// # Safety
/// `DOT` as for [`dot`].
#[inline(always)]
unsafe fn legacy<const T: usize, const DOT: bool>(
    dtype: GgmlDType,
    w: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [f32],
) {
    let size = dtype.type_size();
    let nb = w.len() / size;
    let pairs = nb.div_ceil(2);
    assert!(out.len() == T && a.len() >= (T - 1) * arow + pairs * 192);
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    // SAFETY: NEON is part of every AArch64 target; block `b` lies inside `w`, pair `b / 2`
    // of token `t` inside `a` (asserted), 64-byte aligned.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; T];
        let mut accm = [0f32; T];
        let flip = vdupq_n_u8(0x80);
        for b in 0..nb {
            let blk = unpack(dtype, w.as_ptr().add(b * size));
            let h = b % 2;
            for t in 0..T {
                let x = &*a.as_ptr().add(t * arow + b / 2 * 192).cast::<BlockQ8x2>();
                let u = x.u.as_ptr().add(32 * h);
                let x0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(u), flip));
                let x1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(u.add(16)), flip));
                let scale = blk.d * x.d[8 * h];
                for (k, xv) in [x0, x1].into_iter().enumerate() {
                    let s = dot::<DOT>(blk.w[k], xv);
                    acc[t][k] = vfmaq_n_f32(acc[t][k], vcvtq_f32_s32(s), scale);
                }
                accm[t] = blk.m.mul_add(x.s[8 * h], accm[t]);
            }
        }
        for t in 0..T {
            out[t] = hsum8(acc[t][0], acc[t][1]) + accm[t];
        }
    }
}

/// `Σ_g m_g · (bsums[2g] + bsums[2g+1])`: the minimum term of a `Q4_K` / `Q5_K` super-block.
#[inline(always)]
fn min_term(m: &[u8; 8], x: &BlockQ8K) -> i32 {
    // SAFETY: NEON is part of every AArch64 target; 16 `i16` of `bsums`, 8 bytes of `m`.
    unsafe {
        let b = x.bsums.as_ptr();
        let pairs = vpaddq_s16(vld1q_s16(b), vld1q_s16(b.add(8)));
        let m = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m.as_ptr())));
        let p = vmull_s16(vget_low_s16(pairs), vget_low_s16(m));
        vaddvq_s32(vmlal_high_s16(p, pairs, m))
    }
}

/// One K-quant super-block unpacked.
struct KBlock {
    /// The stored values in element order, 16 a vector (`Q6_K`'s as `q + 32`).
    w: [int8x16_t; 16],
    /// The scale of each 16-value group.
    sc: [i32; 16],
    /// `Q6_K`: the same scales as two `i16` vectors (its lanes' offset correction).
    sc16: [int16x8_t; 2],
    d: f32,
    /// `Q4_K` / `Q5_K`: the minimums' scale and the 8 group minimums.
    dmin: f32,
    m: [u8; 8],
}

/// Unpacks K-quant super-block `p` of `dtype`.
///
/// # Safety
/// A whole block of `dtype` at `p`.
#[inline(always)]
unsafe fn unpack_k(dtype: GgmlDType, p: *const u8) -> KBlock {
    // SAFETY: offsets follow the GGUF block layouts; the caller guarantees the block.
    unsafe {
        let m4 = vdupq_n_u8(0x0F);
        let mut w = [vdupq_n_s8(0); 16];
        let s = |u: uint8x16_t| vreinterpretq_s8_u8(u);
        if dtype == GgmlDType::Q6K {
            let (ql, qh) = (p, p.add(128));
            let scales = p.add(192).cast::<i8>();
            let m3 = vdupq_n_u8(3);
            for n in 0..2 {
                for l in 0..2 {
                    let h = vld1q_u8(qh.add(32 * n + 16 * l));
                    let a = vld1q_u8(ql.add(64 * n + 16 * l));
                    let b = vld1q_u8(ql.add(64 * n + 32 + 16 * l));
                    let hb = |k: i8| vshlq_n_u8::<4>(vandq_u8(vshlq_u8(h, vdupq_n_s8(-k)), m3));
                    let v = [
                        vorrq_u8(vandq_u8(a, m4), hb(0)),
                        vorrq_u8(vandq_u8(b, m4), hb(2)),
                        vorrq_u8(vshrq_n_u8::<4>(a), hb(4)),
                        vorrq_u8(vshrq_n_u8::<4>(b), hb(6)),
                    ];
                    for (k, v) in v.into_iter().enumerate() {
                        // Elements `128n + 32k + 16l ..+16`: vector `8n + 2k + l`.
                        w[8 * n + 2 * k + l] = s(v);
                    }
                }
            }
            let sc8 = vld1q_s8(scales);
            return KBlock {
                w,
                sc: std::array::from_fn(|g| i32::from(*scales.add(g))),
                sc16: [vmovl_s8(vget_low_s8(sc8)), vmovl_high_s8(sc8)],
                d: f16(p.add(208)),
                dmin: 0.0,
                m: [0; 8],
            };
        }
        let five = dtype == GgmlDType::Q5K;
        let scales = p.add(4).cast::<[u8; 12]>().read_unaligned();
        let (sc8, m) = k4_scales_mins(&scales);
        let (qh, qs) = if five {
            (p.add(16), p.add(48))
        } else {
            (p, p.add(16))
        };
        for c in 0..4 {
            for l in 0..2 {
                let q = vld1q_u8(qs.add(32 * c + 16 * l));
                let (mut lo, mut hi) = (vandq_u8(q, m4), vshrq_n_u8::<4>(q));
                if five {
                    let h = vld1q_u8(qh.add(16 * l));
                    let bit = |k: u8| vandq_u8(vtstq_u8(h, vdupq_n_u8(1 << k)), vdupq_n_u8(0x10));
                    lo = vorrq_u8(lo, bit(2 * c as u8));
                    hi = vorrq_u8(hi, bit(2 * c as u8 + 1));
                }
                // Elements `64c + 16l ..` and `64c + 32 + 16l ..`.
                w[4 * c + l] = s(lo);
                w[4 * c + 2 + l] = s(hi);
            }
        }
        KBlock {
            w,
            sc: std::array::from_fn(|g| i32::from(sc8[g / 2])),
            sc16: [vdupq_n_s16(0); 2],
            d: f16(p),
            dmin: f16(p.add(2)),
            m,
        }
    }
}

/// `Σ sc_v · (w_v · x_v)` over vectors `vs` of a super-block, spread over 4 lanes.
///
/// # Safety
/// `DOT` as for [`dot`].
#[inline(always)]
unsafe fn scaled<const DOT: bool>(
    k: &KBlock,
    x: &BlockQ8K,
    vs: impl Iterator<Item = usize>,
) -> int32x4_t {
    // SAFETY: NEON is part of every AArch64 target; `v < 16`, so 16 bytes at `16v` of `qs`.
    unsafe {
        let mut sum = vdupq_n_s32(0);
        for v in vs {
            let xv = vld1q_s8(x.qs.as_ptr().add(16 * v));
            sum = vmlaq_n_s32(sum, dot::<DOT>(k.w[v], xv), k.sc[v]);
        }
        sum
    }
}

/// A K-quant weight row against `T` tokens of [`BlockQ8K`] activations, in the orders of
/// llama.cpp's x86 kernels (as `x86/avx2.rs` computes them; the integer sums are exact, so
/// only the `f32` steps matter):
/// - `Q4_K` as its repacked kernels: one sum and one for the minimum terms, subtracted at the
///   end; the multi-row kernel (`MULTI`) accumulates every 64 values, the one-row kernel every
///   block. `Q5_K` takes both terms into one sum per block.
/// - `Q6_K` one-row: eight integer lanes per block (lane `l`: bytes `4l..4l+4` of each 32-value
///   run of stored `q + 32` values, less `32 Σ sc · bsum` over groups `2l`, `2l + 1`), each
///   accumulated in its own `f32` lane, folded as `hsum_float_8`; multi-row (batches of 8 or
///   more): one integer sum per block times the weight's scale, fused onto the sum with the
///   activation's.
///
/// # Safety
/// `DOT` as for [`dot`].
#[inline(always)]
unsafe fn kquant<const T: usize, const DOT: bool, const MULTI: bool>(
    dtype: GgmlDType,
    w: &[u8],
    a: &[u8],
    arow: usize,
    out: &mut [f32],
) {
    let size = dtype.type_size();
    let nb = w.len() / size;
    assert!(out.len() == T && a.len() >= (T - 1) * arow + nb * size_of::<BlockQ8K>());
    assert!((a.as_ptr() as usize).is_multiple_of(64) && arow.is_multiple_of(64));
    let q6 = dtype == GgmlDType::Q6K;
    let q5 = dtype == GgmlDType::Q5K;
    let (mut acc, mut accm) = ([0f32; T], [0f32; T]);
    // SAFETY (all blocks below): NEON is part of every AArch64 target; block `b` lies inside
    // `w`, block `b` of token `t` inside `a` (asserted), 64-byte aligned.
    let mut lanes = [[unsafe { vdupq_n_f32(0.0) }; 2]; T];
    for b in 0..nb {
        let k = unsafe { unpack_k(dtype, w.as_ptr().add(b * size)) };
        for t in 0..T {
            let x = unsafe {
                &*a.as_ptr()
                    .add(t * arow + b * size_of::<BlockQ8K>())
                    .cast::<BlockQ8K>()
            };
            let (dx, dmx) = (k.d * x.d, k.dmin * x.d);
            if q6 {
                // Lanes 0-3 from the first 16 bytes of each 32-value run, 4-7 from the rest.
                let half = |h: usize| unsafe { scaled::<DOT>(&k, x, (h..16).step_by(2)) };
                let corr = |h: usize| unsafe {
                    let bs = vld1q_s16(x.bsums.as_ptr().add(8 * h));
                    let sc = k.sc16[h];
                    let p = vpaddq_s32(
                        vmull_s16(vget_low_s16(bs), vget_low_s16(sc)),
                        vmull_high_s16(bs, sc),
                    );
                    vshlq_n_s32::<5>(p)
                };
                let isum = [0, 1].map(|h| unsafe { vsubq_s32(half(h), corr(h)) });
                if MULTI {
                    let total = unsafe { vaddvq_s32(vaddq_s32(isum[0], isum[1])) };
                    acc[t] = (total as f32 * k.d).mul_add(x.d, acc[t]);
                } else {
                    for h in 0..2 {
                        lanes[t][h] =
                            unsafe { vfmaq_n_f32(lanes[t][h], vcvtq_f32_s32(isum[h]), dx) };
                    }
                }
                continue;
            }
            if MULTI && !q5 {
                for c in 0..4 {
                    let cs = unsafe { vaddvq_s32(scaled::<DOT>(&k, x, 4 * c..4 * c + 4)) };
                    let im = i32::from(x.bsum32[2 * c]) * i32::from(k.m[2 * c])
                        + i32::from(x.bsum32[2 * c + 1]) * i32::from(k.m[2 * c + 1]);
                    acc[t] = (cs as f32).mul_add(dx, acc[t]);
                    accm[t] = (im as f32).mul_add(dmx, accm[t]);
                }
                continue;
            }
            let isum = unsafe { vaddvq_s32(scaled::<DOT>(&k, x, 0..16)) };
            let im = min_term(&k.m, x) as f32;
            acc[t] = (isum as f32).mul_add(dx, acc[t]);
            if q5 {
                acc[t] = (-im).mul_add(dmx, acc[t]);
            } else {
                accm[t] = im.mul_add(dmx, accm[t]);
            }
        }
    }
    for t in 0..T {
        out[t] = if q6 && !MULTI {
            hsum8(lanes[t][0], lanes[t][1])
        } else {
            acc[t] - accm[t]
        };
    }
}

/// The NEON dot product for `dtype` (`dot`: with `sdot`), if there is one.
pub fn kernel(dtype: GgmlDType, dot: bool) -> Option<DotFn> {
    use GgmlDType::*;
    // `sdot` only where the CPU has the dot-product extension.
    macro_rules! pick {
        ($f:ident, $dt:ident $(, $c:literal)*) => {
            if dot {
                tokens!($f, $dt, "neon", true $(, $c)*)
            } else {
                tokens!($f, $dt, "neon", false $(, $c)*)
            }
        };
    }
    Some(match dtype {
        Q4_0 => pick!(legacy, Q4_0),
        Q4_1 => pick!(legacy, Q4_1),
        Q5_0 => pick!(legacy, Q5_0),
        Q5_1 => pick!(legacy, Q5_1),
        Q8_0 => pick!(legacy, Q8_0),
        Q4K => pick!(kquant, Q4K, false),
        Q5K => pick!(kquant, Q5K, false),
        Q6K => pick!(kquant, Q6K, false),
        _ => return None,
    })
}

/// The NEON dot product in llama.cpp's multi-row order for the leading tokens of a batch
/// (`isa::multi_rows` says how many), where it differs from [`kernel`]'s.
pub fn kernel_multi(dtype: GgmlDType, dot: bool) -> Option<DotFn> {
    use GgmlDType::*;
    Some(match (dtype, dot) {
        (Q4K, true) => tokens!(kquant, Q4K, "neon", true, true),
        (Q4K, false) => tokens!(kquant, Q4K, "neon", false, true),
        (Q6K, true) => tokens!(kquant, Q6K, "neon", true, true),
        (Q6K, false) => tokens!(kquant, Q6K, "neon", false, true),
        _ => return None,
    })
}
