//! Attention of every query of a batch against its sequence's keys and values in the paged
//! `f16` KV cache: scores, softmax and the weighted sum of values in `f32`.
//!
//! Every query row is computed the same way whatever else shares its batch, so a sequence's
//! results do not depend on how the scheduler batched or chunked it. (llama.cpp's CPU flash
//! attention instead keeps short batches in a half-precision accumulator; on SmolLM2 that
//! changes log-probabilities about as much as it changes them against ward, see BENCHMARKS.md.)

use crate::engine::kernels::{self, f16ops as h, ops};

use super::Batch;
use super::config::ModelConfig;
use super::kv::{BLOCK, KvPool, SeqKv};

/// The attention output buffer, shared by the pool's threads (each writes its own rows).
struct OutPtr(*mut f32);
// SAFETY: only used to hand disjoint slices of one buffer to the pool's threads.
unsafe impl Sync for OutPtr {}

/// Runs attention for layer `il`: `q` holds `batch.len()` rows of `n_head * head_dim` (after
/// RoPE), `out` receives as many rows.
pub fn attend(
    cfg: &ModelConfig,
    il: usize,
    batch: &Batch,
    q: &[f32],
    pool: &KvPool,
    seqs: &[SeqKv],
    out: &mut [f32],
) {
    let hd = cfg.head_dim;
    let group = cfg.n_head / cfg.n_kv_head;
    let window = if cfg.is_sliding(il) {
        cfg.sliding_window
    } else {
        None
    };
    assert_eq!(out.len(), batch.len() * cfg.n_head * hd);
    let dst = OutPtr(out.as_mut_ptr());
    let dst = &dst;
    // One item per (token, KV head) serves its whole group of query heads; when that leaves
    // fewer items than threads (one decoding sequence), one item per query head instead.
    let per_item = if batch.len() * cfg.n_kv_head >= 2 * kernels::threads() {
        group
    } else {
        1
    };
    let items_per_token = cfg.n_head / per_item;
    kernels::parallel_for(batch.len() * items_per_token, &|i| {
        let (t, first) = (i / items_per_token, (i % items_per_token) * per_item);
        let w = per_item * hd;
        let row0 = t * cfg.n_head * hd + first * hd;
        // SAFETY: item `i` writes only `out[row0..row0 + w]`, disjoint from every other item,
        // and `out` outlives the call.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(row0), w) };
        let pos = batch.pos[t];
        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let part = Part {
            pool,
            seq: &seqs[batch.seq[t]],
            il,
            kvo: (first / group) * hd,
            hd,
            span: lo..pos + 1,
            scale: cfg.attn_scale,
        };
        part.attend(&q[row0..row0 + w], o);
    });
}

/// Query heads sharing one KV head, against one sequence's cache.
struct Part<'a> {
    pool: &'a KvPool,
    seq: &'a SeqKv,
    il: usize,
    /// Offset of the KV head in a cached row.
    kvo: usize,
    hd: usize,
    span: std::ops::Range<usize>,
    scale: f32,
}

impl Part<'_> {
    /// Visits the span block by block: `f(block, first position in it, count)`.
    fn runs(&self, mut f: impl FnMut(usize, usize, usize)) {
        let mut p = self.span.start;
        while p < self.span.end {
            let n = (BLOCK - p % BLOCK).min(self.span.end - p);
            f(p / BLOCK, p % BLOCK, n);
            p += n;
        }
    }

    /// Scores, softmax, then the weighted sum of values, all in `f32`; `q` and `o` hold the
    /// group's heads one after another.
    fn attend(&self, q: &[f32], o: &mut [f32]) {
        let (g, n, lo) = (q.len() / self.hd, self.span.len(), self.span.start);
        let stride = self.pool.kv_dim();
        let mut w = vec![0f32; g * n];
        let mut tmp = vec![0f32; g * BLOCK];
        self.runs(|b, p0, m| {
            // This KV head's transposed keys: `[hd][BLOCK]`, from position `p0` of the block.
            let kt = &self.pool.keys_t(self.seq, self.il, b)[self.kvo * BLOCK + p0..];
            h::scores(kt, BLOCK, m, q, self.hd, self.scale, &mut tmp[..g * m]);
            let at = b * BLOCK + p0 - lo;
            for h in 0..g {
                w[h * n + at..h * n + at + m].copy_from_slice(&tmp[h * m..(h + 1) * m]);
            }
        });
        for row in w.chunks_exact_mut(n) {
            ops::softmax_inplace(row);
        }
        o.fill(0.0);
        self.runs(|b, p0, m| {
            let at = b * BLOCK + p0 - lo;
            for h in 0..g {
                tmp[h * m..(h + 1) * m].copy_from_slice(&w[h * n + at..h * n + at + m]);
            }
            let rows = &self.pool.values_from(self.seq, self.il, b * BLOCK + p0)[self.kvo..];
            h::accumulate(rows, stride, m, &tmp[..g * m], self.hd, o);
        });
    }
}
