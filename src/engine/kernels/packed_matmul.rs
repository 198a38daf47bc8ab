//! Products over [`PackedMatrix`] weights: the tile kernel each instruction set provides, its
//! portable reference, and the dispatch that hands a product's tiles to the pool's threads
//! (the matrices of one call sharing one quantization of the activations).

use super::blocks::{BlockQ8K, BlockQ8s, f16_le};
use super::isa::{self, Act, Isa, Numerics};
use super::packed::{Layout, PackedMatrix, R, value};
use super::packed_k;
use super::{SyncPtr, has_min, pool, with_activations};

/// The summation orders of one tile kernel call.
#[derive(Clone, Copy, Debug)]
pub struct Sums {
    /// How many of the leading tokens take llama.cpp's multi-row order for `Q4_K` and `Q6_K`
    /// (whose kernels for batches sum in another order than its one-row kernels); other
    /// formats ignore it.
    pub gemm: usize,
    /// The 32-wide formats' order (the K-quants have only llama.cpp's).
    pub order: Numerics,
}

/// One row tile × `out.len()` tokens (1 to [`isa::MAX_TOKENS`]): `out[t][r] = W[16 tile + r] ·
/// a[t]`, with `a` holding [`BlockQ8s`] (32-wide formats) or [`BlockQ8K`] rows `arow` apart,
/// summed as `sums` says. `next`, unless 0: this is the tile's only call (a decode-sized
/// batch), so the kernel streams the weights from memory, fetching the tile `next` bytes from
/// this one (the one its thread takes next) while it reads this one.
pub type TileFn = unsafe fn(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    sums: Sums,
    next: isize,
    out: &mut [[f32; R]],
);

/// Portable reference for the packed kernels.
fn tile_scalar(
    lay: &Layout,
    tile: &[u8],
    a: &[u8],
    arow: usize,
    _sums: Sums,
    _next: isize,
    out: &mut [[f32; R]],
) {
    if lay.kquant {
        for (t, o) in out.iter_mut().enumerate() {
            let x: &[BlockQ8K] = super::blocks::cast(&a[t * arow..(t + 1) * arow]);
            for (r, o) in o.iter_mut().enumerate() {
                *o = tile
                    .chunks_exact(lay.bytes)
                    .zip(x)
                    .map(|(col, x)| {
                        if lay.q6 {
                            packed_k::q6::dot(col, r, x, lay.high_bytes)
                        } else {
                            packed_k::dot(lay.q5, col, r, x)
                        }
                    })
                    .sum();
            }
        }
        return;
    }
    for (t, o) in out.iter_mut().enumerate() {
        let x: &[BlockQ8s] = super::blocks::cast(&a[t * arow..(t + 1) * arow]);
        *o = [0.0; R];
        for (col, x) in tile.chunks_exact(lay.bytes).zip(x) {
            for (r, o) in o.iter_mut().enumerate() {
                let s: i32 = (0..32)
                    .map(|k| value(lay, col, r, k) as i32 * x.qs[k] as i32)
                    .sum();
                let d = f16_le([col[2 * r], col[2 * r + 1]]);
                let c = if lay.min {
                    f16_le([col[lay.m_at + 2 * r], col[lay.m_at + 2 * r + 1]])
                } else {
                    -lay.offset * d
                };
                *o += d * x.d * s as f32 + c * x.s;
            }
        }
    }
}

/// The tile kernel for `isa` and a layout (`Q6_K`: AVX-512 reads the high bits as masks, AVX2
/// as bytes; the portable kernel serves the other pairings, which only tests ask for).
fn tile_kernel(isa: Isa, lay: &Layout) -> TileFn {
    let q6_bytes = lay.q6 && lay.high_bytes;
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 if !q6_bytes => return super::x86::avx512_packed::tile,
        Isa::Avx2 if !lay.q6 || q6_bytes => return super::x86::avx2_packed::tile,
        _ => {}
    }
    let _ = (isa, lay, q6_bytes);
    tile_scalar
}

/// `out[t * rows + r] = dot(W[r], x[t * cols ..])` for `t` in `0..n`, on packed weights, in
/// the order of a pass over one sequence ([`isa::numerics_for`]).
pub fn matmul_packed(w: &PackedMatrix, x: &[f32], n: usize, out: &mut [f32]) {
    matmul_packed_isa(w, x, n, out, isa::get(), isa::numerics_for(1));
}

/// [`matmul_packed`] on a chosen instruction-set path, in a chosen order.
pub(crate) fn matmul_packed_isa(
    w: &PackedMatrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    isa: Isa,
    order: Numerics,
) {
    matmul_packed_many_isa(&[w], x, n, &mut [out], isa, order);
}

/// [`matmul_packed`] of several matrices over the same activations (a layer's query, key and
/// value projections; its gate and up projections): the activations are quantized once and
/// every matrix's tiles go to the threads in one dispatch, so that a decode step waits at one
/// barrier instead of three. Each output is the same as one matrix's product in `order`, bit
/// for bit.
pub fn matmul_packed_many(
    ws: &[&PackedMatrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    order: Numerics,
) {
    matmul_packed_many_isa(ws, x, n, outs, isa::get(), order);
}

/// What the activation blocks of a matrix look like: matrices share them only when equal.
fn act_key(w: &PackedMatrix) -> (bool, bool, u32) {
    let lay = w.layout();
    let offset = if lay.kquant || lay.min {
        0
    } else {
        lay.offset.to_bits()
    };
    (lay.kquant, has_min(w.dtype), offset)
}

/// One matrix's share of a [`matmul_packed_many`] dispatch.
struct Plan<'a> {
    w: &'a PackedMatrix,
    lay: Layout,
    out: SyncPtr<f32>,
    /// Tokens that take llama.cpp's multi-row order (`TileFn`).
    multi: usize,
}

/// One unit of work of a dispatch: one row tile of one matrix, for a range of tokens.
struct Chunk {
    plan: usize,
    tile: usize,
    tokens: std::ops::Range<usize>,
}

/// Tokens per chunk of a prefill-sized batch.
const PREFILL_TOKENS: usize = 64;

/// The chunks of a dispatch over matrices of `tiles[i]` row tiles and `n` tokens, in the
/// matrices' memory order, found from their index (a decode step runs a few hundred
/// dispatches: listing the chunks cost 0.5-0.7 us of each).
///
/// A decode-sized batch (`stream`) streams the weights once: a chunk is one tile for every
/// token, and the threads take them from contiguous segments of the dispatch
/// ([`pool::Segments`]), so that each reads (and prefetches) memory in order and none waits
/// at the end for a long run of the other's. A prefill-sized batch reuses each tile across
/// tokens from cache: chunks are single tiles for 64 tokens.
struct Work {
    /// Chunk index where each matrix's chunks end.
    ends: [usize; MAX_PLANS],
    plans: usize,
    /// Chunks per tile, and tokens per chunk.
    per_tile: usize,
    step: usize,
    n: usize,
}

/// Matrices one dispatch takes at most ([`matmul_packed_many`] splits longer lists).
const MAX_PLANS: usize = 4;

impl Work {
    fn new(tiles: &[usize], n: usize, stream: bool) -> Self {
        assert!(tiles.len() <= MAX_PLANS, "packed dispatch: matrices");
        let step = if stream { n.max(1) } else { PREFILL_TOKENS };
        let per_tile = n.div_ceil(step);
        let mut ends = [0; MAX_PLANS];
        let mut end = 0;
        for (e, &t) in ends.iter_mut().zip(tiles) {
            end += t * per_tile;
            *e = end;
        }
        Self {
            ends,
            plans: tiles.len(),
            per_tile,
            step,
            n,
        }
    }

    fn len(&self) -> usize {
        self.plans.checked_sub(1).map_or(0, |p| self.ends[p])
    }

    fn get(&self, c: usize) -> Chunk {
        let plan = self.ends[..self.plans]
            .iter()
            .position(|&e| c < e)
            .expect("chunk index in range");
        let local = c - plan.checked_sub(1).map_or(0, |p| self.ends[p]);
        let t0 = local % self.per_tile * self.step;
        Chunk {
            plan,
            tile: local / self.per_tile,
            tokens: t0..(t0 + self.step).min(self.n),
        }
    }
}

pub(crate) fn matmul_packed_many_isa(
    ws: &[&PackedMatrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    isa: Isa,
    order: Numerics,
) {
    assert_eq!(
        ws.len(),
        outs.len(),
        "matmul_packed_many: one output per matrix"
    );
    if ws.is_empty() {
        return;
    }
    if ws.len() > MAX_PLANS {
        for (ws, outs) in ws.chunks(MAX_PLANS).zip(outs.chunks_mut(MAX_PLANS)) {
            matmul_packed_many_isa(ws, x, n, outs, isa, order);
        }
        return;
    }
    if ws.iter().any(|w| act_key(w) != act_key(ws[0])) {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul_packed_many_isa(&[w], x, n, &mut [out], isa, order);
        }
        return;
    }
    let cols = ws[0].cols;
    assert_eq!(x.len(), n * cols, "matmul_packed: activation length");
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.cols, cols, "matmul_packed_many: matrices of one width");
        assert_eq!(out.len(), n * w.rows, "matmul_packed: output length");
    }
    if n == 0 {
        return;
    }
    let lay0 = ws[0].layout();
    let kernel = tile_kernel(isa, &lay0);
    let act = if lay0.kquant { Act::Q8K } else { Act::Q8S };
    // A decode-sized batch: one kernel call per tile, which streams the weights.
    let stream = n <= isa::MAX_TOKENS;
    let plans: Vec<Plan> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, out)| Plan {
            w,
            lay: w.layout(),
            out: SyncPtr(out.as_mut_ptr()),
            multi: isa::multi_rows(w.dtype, n),
        })
        .collect();
    let mut tiles = [0; MAX_PLANS];
    for (t, w) in tiles.iter_mut().zip(ws) {
        *t = w.rows.div_ceil(R);
    }
    let work = Work::new(&tiles[..ws.len()], n, stream);
    if work.len() == 0 {
        return;
    }
    with_activations(act, has_min(ws[0].dtype), x, cols, |act, arow| {
        if !lay0.kquant && !lay0.min {
            // Each lane of an offset format's sum starts from `-offset · Σ` of its activations;
            // in ward's order the AVX-512 kernel starts a block's whole sum from `c4[0]`.
            let off = lay0.offset as i32;
            for b in super::blocks::cast_mut::<BlockQ8s>(act) {
                match order {
                    Numerics::Reference => b.c4.iter_mut().for_each(|c| *c *= -off),
                    Numerics::Fast => b.c4[0] = -off * b.c4.iter().sum::<i32>(),
                }
            }
        }
        let act = &*act;
        let (claims, segments) = (
            pool::Chunks::new(if stream { 0 } else { work.len() }),
            pool::Segments::new(if stream { work.len() } else { 0 }, pool::threads()),
        );
        // The next chunks for participant `who`, in the order to run them.
        let claim = |who: usize| {
            if stream {
                segments.claim(who)
            } else {
                claims.claim().map(|c| pool::Run {
                    items: c..c + 1,
                    forward: true,
                })
            }
        };
        let task = |who| {
            // Each kernel call writes all of `v[..k]`.
            let mut v = [[0f32; R]; isa::MAX_TOKENS];
            while let Some(run) = claim(who) {
                let forward = run.forward;
                for c in run.iter() {
                    let Chunk { plan, tile, tokens } = work.get(c);
                    let p = &plans[plan];
                    let rows = p.w.rows;
                    let wt = p.w.tile(tile);
                    let next = match (stream, forward) {
                        (false, _) => 0,
                        (true, true) => wt.len() as isize,
                        (true, false) => -(wt.len() as isize),
                    };
                    let mut t0 = tokens.start;
                    while t0 < tokens.end {
                        let k = (tokens.end - t0).min(isa::MAX_TOKENS);
                        let a = &act[t0 * arow..(t0 + k) * arow];
                        let gemm = p.multi.saturating_sub(t0).min(k);
                        let sums = Sums { gemm, order };
                        // SAFETY: the kernel matches an ISA this CPU supports.
                        unsafe { kernel(&p.lay, wt, a, arow, sums, next, &mut v[..k]) };
                        let live = (rows - tile * R).min(R);
                        for (j, v) in v[..k].iter().enumerate() {
                            // SAFETY: each (t, row) of a matrix belongs to one claimed chunk;
                            // the `live` rows from `tile * R` of token `t0 + j` are below
                            // `n * rows`, inside that matrix's output.
                            unsafe {
                                let o = p.out.get().add((t0 + j) * rows + tile * R);
                                if live == R {
                                    o.cast::<[f32; R]>().write_unaligned(*v);
                                } else {
                                    std::ptr::copy_nonoverlapping(v.as_ptr(), o, live);
                                }
                            }
                        }
                        t0 += k;
                    }
                }
            }
        };
        if work.len() == 1 {
            task(0)
        } else {
            pool::run(&task)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::Work;

    /// Every (matrix, tile, token) lands in exactly one chunk, in memory order; decode-sized
    /// chunks cover all tokens.
    #[test]
    fn chunks_cover_the_dispatch_once() {
        for (tiles, n, stream) in [
            (vec![36, 12, 12], 8, true),
            (vec![96, 96], 1, true),
            (vec![3072], 5, true),
            (vec![1], 1, true),
            (vec![36, 12], 200, false),
            (vec![3, 0, 2, 5], 130, false),
            (vec![], 1, true),
        ] {
            let work = Work::new(&tiles, n, stream);
            let chunks: Vec<_> = (0..work.len()).map(|c| work.get(c)).collect();
            let mut seen: Vec<Vec<u32>> = tiles.iter().map(|&t| vec![0; t * n]).collect();
            for c in &chunks {
                assert!(c.tile < tiles[c.plan]);
                for t in c.tokens.clone() {
                    seen[c.plan][c.tile * n + t] += 1;
                }
            }
            assert!(seen.iter().flatten().all(|&k| k == 1), "{tiles:?} x {n}");
            assert!(
                chunks
                    .windows(2)
                    .all(|w| (w[0].plan, w[0].tile, w[0].tokens.start)
                        < (w[1].plan, w[1].tile, w[1].tokens.start))
            );
            if stream {
                assert!(chunks.iter().all(|c| c.tokens == (0..n)));
            }
        }
    }
}
