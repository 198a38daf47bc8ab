//! `f32` helpers for the model graph: norms, activations, RoPE, the unnormalized softmax and the
//! axpy that attention merges its parts with.
//!
//! Each is written once as a plain loop that the compiler vectorizes, then compiled again
//! inside `#[target_feature]` wrappers for AVX-512 and AVX2 and picked by the runtime ISA.

use half::slice::HalfFloatSliceExt;

/// Defines `pub fn $name` running `$imp` compiled for the best ISA detected at runtime.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? => $imp:ident) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                fn v512($($a: $t),*) $(-> $r)? { $imp($($a),*) }
                #[target_feature(enable = "avx2,fma,f16c")]
                fn v256($($a: $t),*) $(-> $r)? { $imp($($a),*) }
                use $crate::engine::kernels::isa::{self, Isa};
                match isa::get() {
                    // SAFETY: AVX-512 F/BW/VL (and DQ, present on every VNNI CPU) detected.
                    Isa::Avx512 => return unsafe { v512($($a),*) },
                    // SAFETY: AVX2, FMA and F16C detected at runtime.
                    Isa::Avx2 => return unsafe { v256($($a),*) },
                    _ => {}
                }
            }
            $imp($($a),*)
        }
    };
}

pub(super) use multiversion;

#[inline(always)]
fn axpy_impl(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: lengths");
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `Σ x[i]²`, each square rounded to `f32` and summed in `f64` (as llama.cpp's RMSNorm does).
#[inline(always)]
fn sum_sq(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let c = x.chunks_exact(8);
    let r = c.remainder();
    for v in c {
        for i in 0..8 {
            acc[i] += (v[i] * v[i]) as f64;
        }
    }
    acc.iter().sum::<f64>() + r.iter().map(|v| (v * v) as f64).sum::<f64>()
}

#[inline(always)]
fn rms_norm_impl(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == w.len() && x.len() == out.len(),
        "rms_norm: lengths"
    );
    // The mean is rounded to `f32` before adding epsilon, as in llama.cpp.
    let mean = (sum_sq(x) / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *o = x * scale * w;
    }
}

/// `e^x` to about 1.5 ulp, branch-free so that loops over it vectorize; saturates to 0 / inf.
///
/// The same reduction and polynomial as llama.cpp's vectorized `expf` (ARM's optimized-routines
/// algorithm), with fused multiply-adds, so that activations round as the reference engine's do.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 0x1.8p23: adding it rounds to an integer
    let n = x.mul_add(f32::from_bits(0x3fb8_aa3b), SHIFT) - SHIFT; // x / ln 2
    // b = x - n ln2, in two parts.
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3efffedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    // j * 2^n in two steps, the first exact, so that the one rounding falls where `vscalefps`
    // puts it, down to the subnormals. Beyond |n| = 192 the result is 0 or infinity.
    // `n` is a whole number: its bits plus the shift give it as an integer, without the
    // saturating float-to-int cast that keeps the loops from vectorizing.
    let ni = (n.clamp(-192.0, 192.0) + SHIFT).to_bits() as i32 - SHIFT.to_bits() as i32;
    let (h, l) = (ni / 2, ni - ni / 2);
    let r = j * f32::from_bits(((h + 127) << 23) as u32) * f32::from_bits(((l + 127) << 23) as u32);
    if n.abs() > 192.0 {
        if n <= 0.0 { 0.0 } else { f32::INFINITY }
    } else {
        r
    }
}

#[inline(always)]
fn silu_one(x: f32) -> f32 {
    x / (1.0 + exp_approx(-x))
}

#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let u = C * (x + 0.044_715 * x * x * x);
    // 0.5 (1 + tanh u) = 1 / (1 + e^{-2u})
    x / (1.0 + exp_approx(-2.0 * u))
}

#[inline(always)]
fn silu_impl(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = silu_one(*v));
}

#[inline(always)]
fn silu_mul_impl(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: lengths");
    gate.iter_mut()
        .zip(up)
        .for_each(|(g, u)| *g = silu_one(*g) * u);
}

#[inline(always)]
fn gelu_impl(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu_one(*v));
}

#[inline(always)]
fn gelu_mul_impl(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gelu_tanh_mul: lengths");
    gate.iter_mut()
        .zip(up)
        .for_each(|(g, u)| *g = gelu_one(*g) * u);
}

#[inline(always)]
fn rescale_add_impl(y: &mut [f32], a: f32, x: &[f32], b: f32) {
    assert_eq!(x.len(), y.len(), "rescale_add: lengths");
    for (y, &x) in y.iter_mut().zip(x) {
        *y = y.mul_add(a, x * b);
    }
}

#[inline(always)]
fn exp_minus_impl(x: &[f32], m: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "exp_minus: lengths");
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_approx(v - m);
    }
}

#[inline(always)]
fn max_impl(x: &[f32]) -> f32 {
    // Sixteen running maxima, which vectorize (a fold of `f32::max` stays scalar: a chain of
    // dependent comparisons), reduced at the end. A NaN never wins, as with `f32::max`.
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    m.iter().fold(tail, |a, &v| a.max(v))
}

#[inline(always)]
fn exp_shifted_impl(x: &mut [f32]) -> (f32, f32) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        return (max, 0.0);
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = exp_approx(*v - max);
        sum += *v;
    }
    (max, sum)
}

#[inline(always)]
fn rope_impl(row: &mut [f32], hd: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = cos.len();
    assert!(sin.len() == half && 2 * half <= hd, "rope: lengths");
    for h in row.chunks_exact_mut(hd) {
        for j in 0..half {
            let (c, s) = (cos[j], sin[j]);
            let (a, b) = if neox {
                (j, j + half)
            } else {
                (2 * j, 2 * j + 1)
            };
            let (x0, x1) = (h[a], h[b]);
            h[a] = x0.mul_add(c, -(x1 * s));
            h[b] = x0.mul_add(s, x1 * c);
        }
    }
}

#[inline(always)]
fn add_impl(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_inplace: lengths");
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

#[inline(always)]
fn mul_impl(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "mul_inplace: lengths");
    x.iter_mut().zip(y).for_each(|(a, b)| *a *= b);
}

#[inline(always)]
fn scale_impl(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|a| *a *= s);
}

multiversion!(
    /// The largest element (`-inf` for none; NaNs are passed over), the same value as a fold of
    /// `f32::max` in any order.
    pub fn max(x: &[f32]) -> f32 => max_impl
);
multiversion!(
    /// `x[i] = e^(x[i] - max)`, returning `(max, Σ x[i])`: an unnormalized softmax, for
    /// softmaxes computed in parts and merged (`max` is `-inf` and nothing changes when every
    /// input is).
    pub fn exp_shifted(x: &mut [f32]) -> (f32, f32) => exp_shifted_impl
);
multiversion!(
    /// `y = y · a + x · b`, one fused multiply-add per element (llama.cpp's split-KV merge).
    pub fn rescale_add(y: &mut [f32], a: f32, x: &[f32], b: f32) => rescale_add_impl
);
multiversion!(
    /// `out[i] = e^(x[i] - m)` with [`exp_approx`].
    pub fn exp_minus(x: &[f32], m: f32, out: &mut [f32]) => exp_minus_impl
);
multiversion!(
    /// Rotates each `hd`-wide head of `row` by the angles whose cosines and sines are given:
    /// pairs `(j, j + d/2)` (`neox`) or `(2j, 2j + 1)`, fused as llama.cpp's compiled loop is.
    pub fn rope(row: &mut [f32], hd: usize, cos: &[f32], sin: &[f32], neox: bool) => rope_impl
);
multiversion!(
    /// `y += alpha * x`.
    pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) => axpy_impl
);
multiversion!(
    /// `out = x / sqrt(mean(x²) + eps) * w`. (Gemma's `1 + w` is folded into `w` at load.)
    pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) => rms_norm_impl
);
multiversion!(
    /// In-place `x * sigmoid(x)`.
    pub fn silu(x: &mut [f32]) => silu_impl
);
multiversion!(
    /// `gate = silu(gate) * up`, the SwiGLU feed-forward gate.
    pub fn silu_mul(gate: &mut [f32], up: &[f32]) => silu_mul_impl
);
multiversion!(
    /// In-place GELU, tanh approximation.
    pub fn gelu_tanh(x: &mut [f32]) => gelu_impl
);
multiversion!(
    /// `gate = gelu_tanh(gate) * up`, the GeGLU feed-forward gate.
    pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) => gelu_mul_impl
);
multiversion!(
    /// `x += y`.
    pub fn add_inplace(x: &mut [f32], y: &[f32]) => add_impl
);
multiversion!(
    /// `x *= y`, elementwise.
    pub fn mul_inplace(x: &mut [f32], y: &[f32]) => mul_impl
);
multiversion!(
    /// `x *= s`.
    pub fn scale_inplace(x: &mut [f32], s: f32) => scale_impl
);

/// Converts little-endian IEEE half bytes to `f32` (`out.len() * 2 == bytes.len()`).
pub fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * 2, "f16_to_f32: lengths");
    if (bytes.as_ptr() as usize).is_multiple_of(2) {
        // SAFETY: aligned for u16 (checked) and exactly `out.len()` halves long.
        let h =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<half::f16>(), out.len()) };
        h.convert_to_f32_slice(out);
    } else {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
    }
}

/// Converts `f32` to `f16` values.
pub fn f32_to_f16(x: &[f32], out: &mut [half::f16]) {
    out.convert_from_f32_slice(x);
}

/// Converts little-endian bfloat16 bytes to `f32` (`out.len() * 2 == bytes.len()`).
pub fn bf16_to_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * 2, "bf16_to_f32: lengths");
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

/// Deterministic test data in `[-4, 4)`, for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 250.0 - 4.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        test_data(n, seed)
    }

    fn close(a: f32, b: f64, rel: f64) {
        assert!((a as f64 - b).abs() <= rel * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn exp_matches_std() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp_approx(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}): {got} vs {want}"
            );
        }
        // Saturation: underflows through the subnormals to (almost) zero, overflows to infinity.
        assert!(exp_approx(-1000.0) <= 1e-44 && exp_approx(-1000.0) >= 0.0);
        assert!((exp_approx(-100.0) as f64 - (-100f64).exp()).abs() < 1e-45);
        assert_eq!(exp_approx(1000.0), f32::INFINITY);
        assert!(exp_approx(88.5).is_finite());
    }

    #[test]
    fn max_is_the_fold_of_f32_max() {
        for n in [0, 1, 15, 16, 17, 64, 100] {
            let mut x = data(n, 9);
            assert_eq!(
                max(&x),
                x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)),
                "{n}"
            );
            if n > 3 {
                // A NaN is passed over, in the vector lanes and in the tail.
                x[1] = f32::NAN;
                x[n - 1] = f32::NAN;
                assert_eq!(max(&x), x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)));
            }
        }
        assert_eq!(max(&[f32::NEG_INFINITY; 20]), f32::NEG_INFINITY);
    }

    #[test]
    fn elementwise_ops_match_reference() {
        for n in [1, 15, 16, 33, 640, 4864] {
            let (a, b) = (data(n, 1), data(n, 7));
            let mut y = b.clone();
            axpy(0.5, &a, &mut y);
            y.iter()
                .zip(&a)
                .zip(&b)
                .for_each(|((&y, &a), &b)| close(y, b as f64 + 0.5 * a as f64, 1e-6));

            let mut out = vec![0f32; n];
            rms_norm(&a, &b, 1e-6, &mut out);
            let ms = a.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let s = 1.0 / (ms + 1e-6).sqrt();
            out.iter()
                .zip(&a)
                .zip(&b)
                .for_each(|((&o, &a), &w)| close(o, a as f64 * s * w as f64, 1e-5));

            let mut g = a.clone();
            silu_mul(&mut g, &b);
            let silu = |x: f64| x / (1.0 + (-x).exp());
            g.iter()
                .zip(&a)
                .zip(&b)
                .for_each(|((&g, &a), &u)| close(g, silu(a as f64) * u as f64, 1e-5));

            let mut g = a.clone();
            gelu_tanh_mul(&mut g, &b);
            let gelu =
                |x: f64| 0.5 * x * (1.0 + (0.797_884_560_8 * (x + 0.044715 * x * x * x)).tanh());
            g.iter()
                .zip(&a)
                .zip(&b)
                .for_each(|((&g, &a), &u)| close(g, gelu(a as f64) * u as f64, 1e-5));

            let mut p = a.clone();
            let (m, sum) = exp_shifted(&mut p);
            assert_eq!(m, a.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            p.iter_mut().for_each(|v| *v /= sum);
            let max = a.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let z: f64 = a.iter().map(|&v| (v as f64 - max).exp()).sum();
            p.iter()
                .zip(&a)
                .for_each(|(&p, &a)| close(p, (a as f64 - max).exp() / z, 1e-5));
        }
        let mut inf = vec![f32::NEG_INFINITY; 4];
        assert_eq!(exp_shifted(&mut inf), (f32::NEG_INFINITY, 0.0));
        assert!(inf.iter().all(|v| *v == f32::NEG_INFINITY));
    }

    #[test]
    fn half_conversions_round_trip() {
        let x = data(37, 3);
        let mut h = vec![half::f16::ZERO; 37];
        f32_to_f16(&x, &mut h);
        let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut back = vec![0f32; 37];
        f16_to_f32(&bytes, &mut back);
        back.iter()
            .zip(&x)
            .for_each(|(&b, &x)| close(b, x as f64, 1e-3));
        f16_to_f32(
            &[0u8].iter().chain(&bytes).copied().collect::<Vec<_>>()[1..],
            &mut back,
        );
        back.iter()
            .zip(&x)
            .for_each(|(&b, &x)| close(b, x as f64, 1e-3));
        let bf: Vec<u8> = x
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        bf16_to_f32(&bf, &mut back);
        back.iter()
            .zip(&x)
            .for_each(|(&b, &x)| close(b, x as f64, 1e-2));
    }
}
