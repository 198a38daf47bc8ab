//! x86-64 SIMD kernels: AVX2 and AVX-512 VNNI dot products and activation quantization.

use super::GgmlDType;
use super::isa::{DotFn, Isa};

/// The SIMD dot product for `dtype` on `isa`, if there is one.
pub fn kernel(_dtype: GgmlDType, _isa: Isa) -> Option<DotFn> {
    None
}
