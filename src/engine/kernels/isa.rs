//! Instruction-set selection, detected once per process, and the per-format kernel table.

use super::GgmlDType;
use super::dot_scalar as sc;
use std::sync::OnceLock;

/// The instruction-set paths, ordered from the most portable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust; also what targets other than x86-64 and AArch64 use.
    Scalar,
    /// AArch64 NEON (every AArch64 CPU).
    Neon,
    /// NEON with the dot-product extension (`sdot`; ARMv8.2: Neoverse N1, Apple M1 and later).
    NeonDot,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/DQ with VNNI and VBMI (Ice Lake, Zen 4 and later), plus `Avx2`.
    Avx512,
}

/// The best path this CPU supports, overridable downwards with
/// `WARD_ISA=scalar|neon|avx2` (a path this CPU lacks is ignored).
pub fn get() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let all = available();
        let best = *all.last().expect("scalar is always available");
        let want = match std::env::var("WARD_ISA").as_deref() {
            Ok("scalar") => Some(Isa::Scalar),
            Ok("neon") => Some(Isa::Neon),
            Ok("avx2") => Some(Isa::Avx2),
            _ => None,
        };
        want.filter(|w| all.contains(w))
            .map_or(best, |w| w.min(best))
    })
}

/// Which summation order the packed 32-wide kernels follow in one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// llama.cpp's, to the bit on AVX-512 (see BENCHMARKS.md, "Parity").
    Reference,
    /// ward's own: each block's sum in integers, scaled once; about half the arithmetic, so
    /// about twice the prefill and batched-decode speed of the 32-wide formats.
    Fast,
}

/// When each order applies (`WARD_NUMERICS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// `reference`: llama.cpp's everywhere, so that a sequence's bits do not depend on what
    /// else runs beside it (for the 32-wide formats).
    Reference,
    /// `fast`: ward's everywhere.
    Fast,
    /// The default: llama.cpp's for a pass over one sequence (a prompt, a lone stream's
    /// decode), ward's for a pass over several (a continuous batch's step).
    Batched,
}

fn policy() -> Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    *P.get_or_init(|| match std::env::var("WARD_NUMERICS").as_deref() {
        Ok("fast") => Policy::Fast,
        Ok("reference") => Policy::Reference,
        Ok("") | Err(_) => Policy::Batched,
        Ok(other) => {
            tracing::warn!(
                value = other,
                "WARD_NUMERICS is `reference` or `fast`; using the default"
            );
            Policy::Batched
        }
    })
}

/// The order of a forward pass over tokens of `sequences` sequences. By default a pass of one
/// sequence keeps llama.cpp's bits (the greedy references of `shared/reference/` are single
/// sequences), and a step of several takes ward's order: there every token's products are
/// arithmetic the step pays in full (8 streams: 8 tokens a weight read), and ward's order
/// does half of it. The order changes each product in its last bits only (a chaotic model
/// such as SmolLM2 at `Q4_1` amplifies that over its layers to up to a few tenths of a nat in
/// a log-probability), as llama.cpp's own batched kernels (`Q4_K`, `Q6_K`, the tiled
/// attention) do to its server's streams.
pub fn numerics_for(sequences: usize) -> Numerics {
    match (policy(), sequences > 1) {
        (Policy::Fast, _) | (Policy::Batched, true) => Numerics::Fast,
        (Policy::Reference, _) | (Policy::Batched, false) => Numerics::Reference,
    }
}

/// Whether a batch's passes over a 4-bit packed tile share the weight vectors the first pass
/// unpacks, instead of each unpacking them again. It pays where 512-bit logic runs on the same
/// two ports as the multiplies (Intel's cores: the unpacking takes 12 of a block column's 68
/// port slots at two tokens a pass): on a Granite Rapids Xeon, `Q4_1/4864x896/packed/8` in
/// cache 349 -> 310-326 us and SmolLM2's 8 batched streams +4-5% (two sets of 6 paired runs).
/// Zen 4 runs the logic on pipes of its own and was slower through the buffer
/// (`Q4_1/1536x576/packed/8` 48-55 -> 65-76 us), so it reads the tile. The bits are the same
/// either way.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // The x86 kernels' choices.
pub fn unpack_4bit_once() -> bool {
    match UNPACK_4BIT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {
            let on = intel();
            set_unpack_4bit_once(on);
            on
        }
        v => v == 2,
    }
}

/// Overrides [`unpack_4bit_once`] (for tests that cover both ways on any CPU).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // The x86 kernels' choices.
pub fn set_unpack_4bit_once(on: bool) {
    UNPACK_4BIT.store(1 + u8::from(on), std::sync::atomic::Ordering::Relaxed);
}

/// 0: not chosen yet; 1: off; 2: on.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // The x86 kernels' choices.
static UNPACK_4BIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether a decode-sized batch of several passes over each tile fetches the next tile in its
/// later passes (each its share of the block columns) instead of in its first. The first pass
/// reads the tile that the passes before fetched, the later ones compute from the L1 cache;
/// on Intel's cores a software prefetch holds one of the core's few line fill buffers until
/// its line arrives, so a first pass that issues them all waits on memory while the later
/// passes leave it idle. On a Granite Rapids Xeon, streaming `.../4864x896/packed/8` on one
/// thread: `Q4_1` 479 -> 425 us, `Q5_0` 512 -> 484, `Q8_0` 597 -> 567 (`Q5_0` on two threads
/// 276 -> 256); 8 batched streams of Qwen2.5-0.5B +2.8% and +3.6% (paired medians of 8 and 6
/// runs), of SmolLM2 (whose weights the L3 holds) unchanged. Zen 4 (not measured this way)
/// keeps the first pass's prefetch, measured there against other distances.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // The x86 kernels' choices.
pub fn prefetch_in_later_passes() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(intel)
}

/// Whether the CPU is Intel's (CPUID vendor `GenuineIntel`).
pub fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let r = std::arch::x86_64::__cpuid(0);
        (r.ebx, r.edx, r.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Every path this CPU supports, from the most portable.
pub fn available() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Scalar];
    #[cfg(target_arch = "aarch64")]
    {
        v.push(Isa::Neon);
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            v.push(Isa::NeonDot);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            v.push(Isa::Avx2);
            if has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512dq")
                && has!("avx512vnni")
                && has!("avx512vbmi")
            {
                v.push(Isa::Avx512);
            }
        }
    }
    v
}

/// The format of the activations a weight format's dot product consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Plain `f32`.
    F32,
    /// [`super::blocks::BlockQ8x2`], 64 per pair of blocks.
    Q8,
    /// [`super::blocks::BlockQ8K`], 256 per block.
    Q8K,
    /// [`super::blocks::BlockQ8s`], 32 per block (the packed 32-wide kernels).
    Q8S,
}

impl Act {
    /// Bytes of one activation row of `cols` elements.
    pub fn row_bytes(self, cols: usize) -> usize {
        use super::blocks::{BlockQ8K, BlockQ8s, BlockQ8x2, QK, QK_K};
        match self {
            Act::F32 => cols * 4,
            Act::Q8 => cols.div_ceil(2 * QK) * std::mem::size_of::<BlockQ8x2>(),
            Act::Q8K => cols / QK_K * std::mem::size_of::<BlockQ8K>(),
            Act::Q8S => cols / QK * std::mem::size_of::<BlockQ8s>(),
        }
    }
}

/// Most tokens one [`DotFn`] call handles.
pub const MAX_TOKENS: usize = 8;

/// One weight row (bytes) · `out.len()` (1 to [`MAX_TOKENS`]) activation rows: `a` holds the
/// rows in the matching [`Act`] format, `arow` bytes apart; `out[t] = w · a[t]`.
///
/// `unsafe` because SIMD entries require their CPU features: only call an entry obtained
/// from [`kernel`] with an [`Isa`] listed by [`available`].
pub type DotFn = unsafe fn(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]);

/// The activation format for `dtype`.
pub fn act(dtype: GgmlDType) -> Act {
    use GgmlDType::*;
    match dtype {
        F32 | F16 | BF16 => Act::F32,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => Act::Q8,
        Q2K | Q3K | Q4K | Q5K | Q6K => Act::Q8K,
        Q8_1 | Q8K => unreachable!("rejected by QMatrix::new"),
    }
}

/// The dot product in llama.cpp's multi-row order for the first [`multi_rows`] tokens of a
/// batch, where `isa` has one that differs from [`kernel`]'s one-row order (`Q4_K` and `Q6_K`
/// on AVX2 and NEON; the packed kernels take this choice themselves).
pub fn kernel_multi(dtype: GgmlDType, isa: Isa) -> Option<DotFn> {
    #[cfg(target_arch = "x86_64")]
    return super::x86::kernel_multi(dtype, isa);
    #[cfg(target_arch = "aarch64")]
    return super::arm::kernel_multi(dtype, isa);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (dtype, isa);
        None
    }
}

/// How many leading tokens of an `n`-token batch llama.cpp takes through its multi-row kernel
/// for `dtype`: `Q4_K`'s repacked kernel takes tokens four at a time, its tiled K-quant kernel
/// takes `Q6_K` batches of 8 or more.
pub fn multi_rows(dtype: GgmlDType, n: usize) -> usize {
    match dtype {
        GgmlDType::Q4K => n - n % 4,
        GgmlDType::Q6K if n >= 8 => n,
        _ => 0,
    }
}

/// The dot product for `dtype` on `isa` (falling back to a slower path where a format has no
/// kernel for that ISA).
pub fn kernel(dtype: GgmlDType, isa: Isa) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = super::x86::kernel(dtype, isa) {
        return f;
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(f) = super::arm::kernel(dtype, isa) {
        return f;
    }
    let _ = isa;
    use GgmlDType::*;
    match dtype {
        F32 => |w, a, r, o| sc::each(sc::f32_f32, w, a, r, o),
        F16 => |w, a, r, o| sc::each(sc::f16_f32, w, a, r, o),
        BF16 => |w, a, r, o| sc::each(sc::bf16_f32, w, a, r, o),
        Q4_0 => |w, a, r, o| sc::each(sc::q4_0, w, a, r, o),
        Q4_1 => |w, a, r, o| sc::each(sc::q4_1, w, a, r, o),
        Q5_0 => |w, a, r, o| sc::each(sc::q5_0, w, a, r, o),
        Q5_1 => |w, a, r, o| sc::each(sc::q5_1, w, a, r, o),
        Q8_0 => |w, a, r, o| sc::each(sc::q8_0, w, a, r, o),
        Q2K => |w, a, r, o| sc::each(sc::q2k, w, a, r, o),
        Q3K => |w, a, r, o| sc::each(sc::q3k, w, a, r, o),
        Q4K => |w, a, r, o| sc::each(sc::q4k, w, a, r, o),
        Q5K => |w, a, r, o| sc::each(sc::q5k, w, a, r, o),
        Q6K => |w, a, r, o| sc::each(sc::q6k, w, a, r, o),
        Q8_1 | Q8K => unreachable!("rejected by QMatrix::new"),
    }
}
