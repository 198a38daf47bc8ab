//! Compute kernels for the CPU path: quantized block formats, dot products and matrix products.
//!
//! [`matmul`] multiplies a GGUF weight matrix ([`QMatrix`], borrowed straight from the mmap)
//! by `n` activation rows. It quantizes the activations once to 8-bit blocks (`Q8_0`-like for
//! the 32-wide formats, `Q8_K`-like for the K-quants), then runs fused integer dot products
//! (AVX-512 VNNI or AVX2 on x86-64, NEON with or without `sdot` on AArch64, or portable
//! scalar, chosen once at start-up) over tiles of rows × tokens spread across a small spinning
//! thread pool. [`ops`] holds the `f32` helpers the model graph needs around the matmuls.
//!
//! [`PackedMatrix`] is an owned copy of a weight matrix (about the same size) interleaved 16
//! rows at a time, for `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `Q4_K`, `Q5_K` and `Q6_K` on
//! AVX-512 VNNI and AVX2 CPUs; [`matmul_packed`] on it is 2-4×
//! faster than [`matmul`] for hot decode and about 2.5× for prefill with AVX-512, 1.7-1.8×
//! for both with AVX2. [`PackedMatrix::new`] returns `None` where it would not pay (other
//! formats, or no packed kernel for this CPU), so callers keep the [`QMatrix`] path then.
//!
//! Tuning knobs: [`set_threads`] (else `WARD_THREADS`, else all CPUs),
//! `WARD_ISA=scalar|neon|avx2` to force a slower path, `WARD_PREFETCH` (bytes ahead when
//! streaming decode weights), `WARD_NUMERICS=reference|fast` (which passes take the packed
//! 32-wide kernels in ward's own summation order instead of llama.cpp's, see
//! [`numerics_for`]).

/// Wraps a kernel `$f::<T, $c...>(dtype, w, a, arow, out)`, generic over up to four tokens at
/// a time (and any further const parameters `$c`), into an [`isa::DotFn`] for format `$dt`,
/// compiled with the target features `$feat`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! tokens {
    ($f:ident, $dt:ident, $feat:literal $(, $c:literal)*) => {{
        #[target_feature(enable = $feat)]
        unsafe fn run(w: &[u8], a: &[u8], arow: usize, out: &mut [f32]) {
            let d = GgmlDType::$dt;
            // SAFETY: same features; the table that hands out `run` only lists it for CPUs
            // with the kernel's features; the kernels check the lengths.
            unsafe {
                for (c, out) in out.chunks_mut(4).enumerate() {
                    let a = &a[4 * c * arow..];
                    match out.len() {
                        1 => $f::<1 $(, $c)*>(d, w, a, arow, out),
                        2 => $f::<2 $(, $c)*>(d, w, a, arow, out),
                        3 => $f::<3 $(, $c)*>(d, w, a, arow, out),
                        _ => $f::<4 $(, $c)*>(d, w, a, arow, out),
                    }
                }
            }
        }
        run as DotFn
    }};
}

#[cfg(target_arch = "aarch64")]
mod arm;
mod blocks;
mod dequant;
mod dot_scalar;
pub mod expf;
pub mod f16ops;
mod isa;
pub mod ops;
mod packed;
mod packed_k;
mod packed_matmul;
mod pool;
mod quant;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use candle_core::quantized::GgmlDType;
pub use isa::{Isa, Numerics, numerics_for};
pub use packed::PackedMatrix;
pub use packed_matmul::{matmul_packed, matmul_packed_many};
pub use pool::{set_threads, threads};

/// Runs `f(i)` for every `i` in `0..n` on the kernels' thread pool, the caller taking part.
/// Using the same pool as the matrix products keeps its spinning workers from competing with a
/// second pool for the cores.
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let chunks = pool::Chunks::new(n);
    pool::run(&|_| {
        while let Some(i) = chunks.claim() {
            f(i)
        }
    });
}

/// [`parallel_for`], where each thread claims its next index before it runs the current one
/// and calls `ahead` on it first: the memory the next item reads (attention's keys and values)
/// is then on its way while this one computes, instead of each item waiting for its own.
pub fn parallel_for_ahead(n: usize, ahead: &(dyn Fn(usize) + Sync), f: &(dyn Fn(usize) + Sync)) {
    let chunks = pool::Chunks::new(n);
    pool::run(&|_| {
        let mut cur = chunks.claim();
        if let Some(i) = cur {
            ahead(i);
        }
        while let Some(i) = cur {
            cur = chunks.claim();
            if let Some(j) = cur {
                ahead(j);
            }
            f(i);
        }
    });
}

/// Per-row work of [`for_rows2`]: `f(t, a_t, b_t)`.
pub type RowFn<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a;

/// Runs `f(t, a_t, b_t)` for every row `t` of `a` (rows of `aw`) and `b` (rows of `bw`, as
/// many), on the kernels' pool: for the per-row work between two products of a batch (RoPE,
/// cache writes, gates), which one thread would do while the others wait.
pub fn for_rows2(a: &mut [f32], aw: usize, b: &mut [f32], bw: usize, f: &RowFn) {
    assert!(aw > 0 && a.len().is_multiple_of(aw), "for_rows2: rows of a");
    let n = a.len() / aw;
    assert_eq!(b.len(), n * bw, "for_rows2: rows of b");
    if n == 1 {
        // One row (a lone stream's step): not worth waking the pool.
        return f(0, a, b);
    }
    let (pa, pb) = (SyncPtr(a.as_mut_ptr()), SyncPtr(b.as_mut_ptr()));
    // Runs of consecutive rows for a long batch (a prompt): its neighbouring rows write the
    // same cache lines (a transposed key line holds 32 positions), which two threads taking
    // alternate rows would pass back and forth.
    let grain = (n / (8 * threads())).max(1);
    parallel_for(n.div_ceil(grain), &|c| {
        for t in c * grain..((c + 1) * grain).min(n) {
            // SAFETY: `parallel_for` hands out each run once, so row `t < n` is disjoint from
            // every other call's, and `a`, `b` stay borrowed until it returns.
            let (ra, rb) = unsafe {
                (
                    std::slice::from_raw_parts_mut(pa.get().add(t * aw), aw),
                    std::slice::from_raw_parts_mut(pb.get().add(t * bw), bw),
                )
            };
            f(t, ra, rb)
        }
    });
}

use blocks::{BlockQ8K, BlockQ8s, BlockQ8x2};
use isa::Act;
use std::cell::RefCell;

/// A weight matrix in GGUF block format: `rows` rows of `cols` elements, row-major, each row
/// `cols / block_size` blocks.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `dtype` is supported, `cols` is a whole number of blocks and `data` holds
    /// exactly `rows` rows.
    pub fn new(dtype: GgmlDType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, String> {
        if matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
            return Err(format!(
                "weight type {dtype:?} is not supported by the CPU kernels"
            ));
        }
        let block = dtype.block_size();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(format!(
                "{dtype:?} row width {cols} is not a positive multiple of {block}"
            ));
        }
        let expected = rows * (cols / block) * dtype.type_size();
        if data.len() != expected {
            return Err(format!(
                "{dtype:?} matrix {rows}x{cols} needs {expected} bytes, got {}",
                data.len()
            ));
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// The bytes of row `row`.
    pub fn row(&self, row: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[row * rb..(row + 1) * rb]
    }

    /// Dequantizes row `row` into `out` (`cols` long), e.g. for an embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        dequant::dequantize(self.dtype, self.row(row), out);
    }
}

/// 64-byte aligned storage for quantized activations.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    static SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// `out[t * rows + r] = dot(W[r], x[t * cols ..])` for `t` in `0..n`.
///
/// Multithreaded over tiles of rows × tokens (see [`set_threads`]). Panics if the lengths of
/// `x` (`n * cols`) or `out` (`n * rows`) are wrong.
pub fn matmul(w: &QMatrix, x: &[f32], n: usize, out: &mut [f32]) {
    matmul_isa(w, x, n, out, isa::get());
}

/// [`matmul`] on a chosen instruction-set path (which must be in [`isa::available`]).
pub(crate) fn matmul_isa(w: &QMatrix, x: &[f32], n: usize, out: &mut [f32], isa: Isa) {
    assert_eq!(x.len(), n * w.cols, "matmul: activation length");
    assert_eq!(out.len(), n * w.rows, "matmul: output length");
    assert!(isa::available().contains(&isa) || isa == Isa::Scalar);
    if n == 0 || w.rows == 0 {
        return;
    }
    let act = isa::act(w.dtype);
    let dots = Dots {
        one: isa::kernel(w.dtype, isa),
        multi: isa::kernel_multi(w.dtype, isa).map(|f| (f, isa::multi_rows(w.dtype, n))),
    };
    if act == Act::F32 {
        // SAFETY: `x` is a valid `f32` slice; viewing it as bytes is always sound.
        let bytes = unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), x.len() * 4) };
        return run_tiles(w, bytes, act.row_bytes(w.cols), n, out, dots);
    }
    let min = has_min(w.dtype);
    with_activations(act, min, x, w.cols, |a, arow| {
        run_tiles(w, a, arow, n, out, dots)
    });
}

/// Whether a 32-wide weight format has a per-block minimum (which sets how the activation
/// blocks' sums are rounded, see `quant`).
fn has_min(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1)
}

/// Quantizes the `x.len() / cols` activation rows to `act` in a per-thread scratch buffer
/// and runs `f(rows, bytes_per_row)` on them (which may rewrite them); `min` as for [`has_min`].
fn with_activations(act: Act, min: bool, x: &[f32], cols: usize, f: impl FnOnce(&mut [u8], usize)) {
    let n = x.len() / cols;
    let arow = act.row_bytes(cols);
    let mut scratch = SCRATCH.with_borrow_mut(std::mem::take);
    scratch.resize((n * arow).div_ceil(64), Line([0; 64]));
    // SAFETY: `Line` is plain bytes; the view covers exactly the vector's storage.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), scratch.len() * 64)
    };
    let bytes = &mut bytes[..n * arow];
    // The pool's threads read the previous product's rows from this buffer, so its lines are
    // shared with their caches: ask for all of them at once instead of one store at a time.
    prefetch_write(bytes);
    quantize_rows(act, min, x, cols, bytes);
    f(bytes, arow);
    SCRATCH.with_borrow_mut(|s| *s = scratch);
}

/// Quantizes `n` activation rows of `cols` into `out`, in parallel for large batches.
fn quantize_rows(act: Act, min: bool, x: &[f32], cols: usize, out: &mut [u8]) {
    let n = x.len() / cols;
    let arow = out.len() / n;
    let one = |t: usize, o: &mut [u8]| {
        let xs = &x[t * cols..(t + 1) * cols];
        match act {
            Act::Q8 => quant::quantize_q8(xs, blocks::cast_mut::<BlockQ8x2>(o), min),
            Act::Q8K => quant::quantize_q8k(xs, blocks::cast_mut::<BlockQ8K>(o)),
            Act::Q8S => quant::quantize_q8s(xs, blocks::cast_mut::<BlockQ8s>(o), min),
            Act::F32 => unreachable!(),
        }
    };
    if n * cols < 1 << 16 {
        for (t, o) in out.chunks_exact_mut(arow).enumerate() {
            one(t, o);
        }
        return;
    }
    let ptr = SyncPtr(out.as_mut_ptr());
    let chunks = pool::Chunks::new(n);
    pool::run(&|_| {
        while let Some(t) = chunks.claim() {
            // SAFETY: each token index is claimed once, so the row slices are disjoint and
            // inside `out`.
            let o = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(t * arow), arow) };
            one(t, o);
        }
    });
}

/// A raw pointer that may be shared between the pool's threads, each writing disjoint parts.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: users only write disjoint elements from different threads (see each use).
unsafe impl<T> Sync for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Send for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    #[inline(always)]
    fn get(self) -> *mut T {
        self.0
    }
}

/// Rows per tile when decoding one token: enough tiles per thread to balance load.
fn decode_tile_rows(rows: usize, threads: usize) -> usize {
    (rows / (threads * 8)).clamp(16, 512).next_multiple_of(4)
}

/// How far ahead of the row being read to prefetch weights when streaming them through the row
/// kernels (decode): `WARD_PREFETCH`, else 2048 bytes on Intel's cores and none on others.
/// On a Zen 3 (AVX2 only, where every K-quant decodes through the row kernels) the hardware
/// prefetchers stream the rows better alone: Qwen2.5-Coder-1.5B (Q4_K_M) 15.9-18.1 -> 16.5-18.8
/// t/s, Qwen2.5-Coder-0.5B 37.9-45.7 -> 41.1-50.4 (alternating runs).
fn prefetch_distance() -> usize {
    static D: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *D.get_or_init(|| {
        std::env::var("WARD_PREFETCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if isa::intel() { 2048 } else { 0 })
    })
}

/// Hints the cache lines of the `len` bytes at `p` into L1 (`L2 = false`) or L2.
#[inline(always)]
fn prefetch_lines<const L2: bool>(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..len).step_by(64) {
        use std::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1, _mm_prefetch};
        // SAFETY: prefetching never faults and does not change memory; the callers pass
        // addresses inside one allocation.
        unsafe {
            if L2 {
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(i).cast())
            } else {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i).cast())
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Hints the cache lines of `data[range]` (clipped to `data`) into L1.
#[inline(always)]
fn prefetch(data: &[u8], range: std::ops::Range<usize>) {
    let end = range.end.min(data.len());
    if range.start < end {
        prefetch_lines::<false>(data[range.start..].as_ptr(), end - range.start);
    }
}

/// Hints the cache lines of `data` into the second-level cache, ahead of reads that would
/// otherwise wait on memory (attention's keys and values, evicted by the weights that streamed
/// through the last-level cache since the previous step).
#[inline]
pub fn prefetch_l2<T>(data: &[T]) {
    prefetch_lines::<true>(data.as_ptr().cast(), std::mem::size_of_val(data));
}

/// Hints the cache lines of `data` into L1 for writing (`prefetchw`), so that stores to lines
/// another core holds do not each wait for that core to let go of them.
#[inline]
pub fn prefetch_write<T>(data: &[T]) {
    let (p, len) = (data.as_ptr().cast::<u8>(), std::mem::size_of_val(data));
    for i in (0..len).step_by(64) {
        prefetch_write_at(p.wrapping_add(i));
    }
}

/// [`prefetch_write`] of the one line holding `p` (any address: a prefetch never faults).
#[inline]
pub fn prefetch_write_at<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
        // SAFETY: prefetching never faults and does not change memory.
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A row product's dot products: llama.cpp's one-row order, and where a kernel differs for its
/// multi-row order, that kernel and how many leading tokens take it.
#[derive(Clone, Copy)]
struct Dots {
    one: isa::DotFn,
    multi: Option<(isa::DotFn, usize)>,
}

/// Splits the `rows × n` output into tiles and runs them on the pool.
fn run_tiles(w: &QMatrix, act: &[u8], arow: usize, n: usize, out: &mut [f32], dots: Dots) {
    let rows = w.rows;
    let (tr, tt) = if n == 1 {
        (decode_tile_rows(rows, pool::threads()), 1)
    } else {
        (16, 64)
    };
    let (nr, nt) = (rows.div_ceil(tr), n.div_ceil(tt));
    let chunks = pool::Chunks::new(nr * nt);
    let optr = SyncPtr(out.as_mut_ptr());
    let wq = *w;
    let pf = prefetch_distance();
    let task = |_| {
        while let Some(c) = chunks.claim() {
            let (ri, ti) = (c / nt, c % nt);
            let r_end = ((ri + 1) * tr).min(rows);
            let t_end = ((ti + 1) * tt).min(n);
            let mut t0 = ti * tt;
            while t0 < t_end {
                let mut k = (t_end - t0).min(isa::MAX_TOKENS);
                let dot = match dots.multi {
                    Some((f, m)) if t0 < m => {
                        k = k.min(m - t0);
                        f
                    }
                    _ => dots.one,
                };
                let a = &act[t0 * arow..(t0 + k) * arow];
                for r in ri * tr..r_end {
                    if k == 1 && pf > 0 {
                        prefetch(
                            wq.data,
                            (r * wq.row_bytes() + pf)..((r + 1) * wq.row_bytes() + pf),
                        );
                    }
                    let mut v = [0f32; isa::MAX_TOKENS];
                    // SAFETY: `dot` came from `isa::kernel` for an ISA this CPU supports.
                    unsafe { dot(wq.row(r), a, arow, &mut v[..k]) };
                    for (j, &v) in v[..k].iter().enumerate() {
                        // SAFETY: each (t, r) belongs to exactly one tile, claimed once; the
                        // index is below `n * rows == out.len()`.
                        unsafe { optr.get().add((t0 + j) * rows + r).write(v) };
                    }
                }
                t0 += k;
            }
        }
    };
    // Below this much work (weight bytes × tokens) waking a worker costs more than it saves.
    const INLINE_BYTES: usize = 48 << 10;
    if nr * nt == 1 || w.data.len() * n < INLINE_BYTES {
        task(0)
    } else {
        pool::run(&task)
    }
}
