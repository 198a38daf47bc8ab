//! AArch64 SIMD kernels: NEON dot products, with `sdot` where the CPU has it.

// Token loops index several per-token arrays in step; iterators would obscure that.
#![allow(clippy::needless_range_loop)]

mod neon;

use super::GgmlDType;
use super::isa::{DotFn, Isa};

/// The SIMD dot product in llama.cpp's multi-row order for `dtype` on `isa`, where it differs
/// from the one-row order of [`kernel`].
pub fn kernel_multi(dtype: GgmlDType, isa: Isa) -> Option<DotFn> {
    match isa {
        Isa::Neon => neon::kernel_multi(dtype, false),
        Isa::NeonDot => neon::kernel_multi(dtype, true),
        _ => None,
    }
}

/// The SIMD dot product for `dtype` on `isa`, if there is one.
pub fn kernel(dtype: GgmlDType, isa: Isa) -> Option<DotFn> {
    match isa {
        Isa::Neon => neon::kernel(dtype, false),
        Isa::NeonDot => neon::kernel(dtype, true),
        _ => None,
    }
}
