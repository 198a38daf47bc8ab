//! x86-64 SIMD kernels: AVX2 and AVX-512 VNNI dot products and activation quantization.

// Token loops index several per-token register arrays in step; iterators would obscure that.
#![allow(clippy::needless_range_loop)]

mod avx2;
pub mod avx2_packed;
mod avx2_packed_k;
mod avx2_packed_q6;
mod avx512_k;
mod avx512_legacy;
pub mod avx512_packed;
mod avx512_packed_k;
pub mod f16ops;
pub mod f16ops_avx2;
mod float;
mod packed_fmt;
pub mod quant;
pub mod quant_avx2;

use super::GgmlDType;
use super::isa::{DotFn, Isa};

/// The SIMD dot product in llama.cpp's multi-row order for `dtype` on `isa`, where it differs
/// from the one-row order of [`kernel`].
pub fn kernel_multi(dtype: GgmlDType, isa: Isa) -> Option<DotFn> {
    match isa {
        Isa::Avx2 => avx2::kernel_multi(dtype),
        _ => None,
    }
}

/// The SIMD dot product for `dtype` on `isa`, if there is one.
pub fn kernel(dtype: GgmlDType, isa: Isa) -> Option<DotFn> {
    match isa {
        Isa::Avx512 => avx512_legacy::kernel(dtype)
            .or_else(|| avx512_k::kernel(dtype))
            .or_else(|| float::kernel512(dtype)),
        Isa::Avx2 => avx2::kernel(dtype).or_else(|| float::kernel256(dtype)),
        _ => None,
    }
}
