//! The C library's `expf`, bit for bit, in a form that vectorizes.
//!
//! llama.cpp's one-row attention kernel weighs every cached position with `expf` from the C
//! library; to round as it does, ward must return the same bits, and one call per position and
//! head made that libm call the costliest part of decoding at long contexts. glibc (2.28 and
//! later; the `__expf_fma` build that it picks on every CPU with FMA) computes `expf` in double
//! precision: `x · 32 / ln 2 = k + r`, `2^(k/32)` from a 32-entry table, and a cubic in `r`.
//! [`expf`] follows those steps with the same constants and the same fused multiply-adds,
//! branch-free, so that [`expf_inplace`] compiles to vector code. A test in this module checks
//! it against the C library over every `f32` from `-0` down to `-110` (all that attention passes
//! it; every one equal) and a sample of the rest of the range.

use super::ops::multiversion;

/// `2^(i/32)` rounded to the nearest `f64`, less `i << 47` (so that adding `k << 47` for
/// `k ≡ i mod 32` scales it by `2^(k div 32)`).
const TAB: [u64; 32] = [
    0x3FF0000000000000,
    0x3FEFD9B0D3158574,
    0x3FEFB5586CF9890F,
    0x3FEF9301D0125B51,
    0x3FEF72B83C7D517B,
    0x3FEF54873168B9AA,
    0x3FEF387A6E756238,
    0x3FEF1E9DF51FDEE1,
    0x3FEF06FE0A31B715,
    0x3FEEF1A7373AA9CB,
    0x3FEEDEA64C123422,
    0x3FEECE086061892D,
    0x3FEEBFDAD5362A27,
    0x3FEEB42B569D4F82,
    0x3FEEAB07DD485429,
    0x3FEEA47EB03A5585,
    0x3FEEA09E667F3BCD,
    0x3FEE9F75E8EC5F74,
    0x3FEEA11473EB0187,
    0x3FEEA589994CCE13,
    0x3FEEACE5422AA0DB,
    0x3FEEB737B0CDC5E5,
    0x3FEEC49182A3F090,
    0x3FEED503B23E255D,
    0x3FEEE89F995AD3AD,
    0x3FEEFF76F2FB5E47,
    0x3FEF199BDD85529C,
    0x3FEF3720DCEF9069,
    0x3FEF5818DCFBA487,
    0x3FEF7C97337B9B5F,
    0x3FEFA4AFA2A490DA,
    0x3FEFD0765B6E4540,
];

/// `32 / ln 2`.
const INV_LN2_N: u64 = 0x4047_1547_652B_82FE;
/// `1.5 · 2^52`: adding it rounds to an integer, left in the low bits.
const SHIFT: u64 = 0x4338_0000_0000_0000;
/// The cubic's coefficients for `r` scaled by 32: `c0 r³ + c1 r² + c2 r + 1`.
const C0: u64 = 0x3EBC_6AF8_4B91_2394;
const C1: u64 = 0x3F2E_BFCE_50FA_C4F3;
const C2: u64 = 0x3F96_2E42_FF0C_52D6;
/// Below this the result underflows to 0 (`log(2^-150)`), above this one it is infinite.
const LOW: u32 = 0xC2CF_F1B4;
const HIGH: u32 = 0x42B1_7217;

/// `e^x`, the same bits as glibc's `expf`.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let (inv, shift) = (f64::from_bits(INV_LN2_N), f64::from_bits(SHIFT));
    let xd = x as f64;
    let kd = inv.mul_add(xd, shift);
    let ki = kd.to_bits();
    let r = inv.mul_add(xd, -(kd - shift));
    let s = f64::from_bits(TAB[(ki % 32) as usize].wrapping_add(ki << 47));
    let z = f64::from_bits(C0).mul_add(r, f64::from_bits(C1));
    let y = f64::from_bits(C2).mul_add(r, 1.0);
    let y = (z.mul_add(r * r, y) * s) as f32;
    if x < f32::from_bits(LOW) {
        0.0
    } else if x > f32::from_bits(HIGH) {
        f32::INFINITY
    } else if x.is_nan() {
        x + x
    } else {
        y
    }
}

#[inline(always)]
fn expf_inplace_impl(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = expf(*v));
}

multiversion!(
    /// `x[i] = e^x[i]` with [`expf`].
    pub fn expf_inplace(x: &mut [f32]) => expf_inplace_impl
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(x: f32) {
        let (mut v, want) = ([x; 1], x.exp());
        expf_inplace(&mut v);
        assert!(
            expf(x).to_bits() == want.to_bits() && v[0].to_bits() == want.to_bits(),
            "expf({x:e}): {} / {} vs {want}",
            expf(x),
            v[0]
        );
    }

    #[test]
    fn same_bits_as_the_c_library() {
        // Every 61st `f32` from -0 to -110 in release builds (debug: every 4099th), and a
        // sample of the positive side. (Stepping by 1 covers all 1.28e9 of them in ~20 s;
        // that run found every one equal.)
        let step = if cfg!(debug_assertions) { 4099 } else { 61 };
        let mut b = 0x8000_0000u32;
        while b <= 0xC2DC_0000 {
            check(f32::from_bits(b));
            b += step;
        }
        let mut b = 0u32;
        while b <= 0x42B4_0000 {
            check(f32::from_bits(b));
            b += 7 * step;
        }
        for x in [0.0, -0.0, 1.0, -1.0, 88.72, -103.9, -104.0, -200.0, 100.0] {
            check(x);
        }
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(f32::INFINITY), f32::INFINITY);
        assert!(expf(f32::NAN).is_nan());
    }

    #[test]
    fn vector_path_matches_scalar_on_long_slices() {
        let mut x: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.0731 - 1e-3).collect();
        let want: Vec<u32> = x.iter().map(|v| v.exp().to_bits()).collect();
        expf_inplace(&mut x);
        assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    }
}
