//! x86-64 SIMD kernels: AVX2 and AVX-512 VNNI dot products and activation quantization.

// Token loops index several per-token register arrays in step; iterators would obscure that.
#![allow(clippy::needless_range_loop)]

mod avx2;
mod avx512_k;
mod avx512_legacy;
pub mod avx512_packed;
mod float;
pub mod quant;

use super::GgmlDType;
use super::isa::{DotFn, Isa};

/// The SIMD dot product for `dtype` on `isa`, if there is one.
pub fn kernel(dtype: GgmlDType, isa: Isa) -> Option<DotFn> {
    match isa {
        Isa::Avx512 => avx512_legacy::kernel(dtype)
            .or_else(|| avx512_k::kernel(dtype))
            .or_else(|| float::kernel512(dtype)),
        Isa::Avx2 => avx2::kernel(dtype).or_else(|| float::kernel256(dtype)),
        Isa::Scalar => None,
    }
}
