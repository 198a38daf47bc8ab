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
use super::kv::{KvPool, SeqKv};

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
    kernels::parallel_for(batch.len() * cfg.n_head, &|i| {
        // SAFETY: item `i` writes only `out[i*hd..(i+1)*hd]`, disjoint from every other
        // item, and `out` outlives the call.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(i * hd), hd) };
        let (t, head) = (i / cfg.n_head, i % cfg.n_head);
        let seq = &seqs[batch.seq[t]];
        let pos = batch.pos[t];
        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let kvo = (head / group) * hd;
        let row = Row {
            pool,
            seq,
            il,
            kv: kvo..kvo + hd,
            span: lo..pos + 1,
            scale: cfg.attn_scale,
        };
        row.attend(&q[i * hd..(i + 1) * hd], o);
    });
}

/// One query head's view of its sequence's cache.
struct Row<'a> {
    pool: &'a KvPool,
    seq: &'a SeqKv,
    il: usize,
    kv: std::ops::Range<usize>,
    span: std::ops::Range<usize>,
    scale: f32,
}

impl Row<'_> {
    /// Scores, softmax, then the weighted sum of values, all in `f32`.
    fn attend(&self, q: &[f32], o: &mut [f32]) {
        let mut scores: Vec<f32> = self
            .span
            .clone()
            .map(|p| h::dot(&self.pool.key(self.seq, self.il, p)[self.kv.clone()], q) * self.scale)
            .collect();
        ops::softmax_inplace(&mut scores);
        o.fill(0.0);
        for (p, &w) in self.span.clone().zip(&scores) {
            h::axpy(
                w,
                &self.pool.value(self.seq, self.il, p)[self.kv.clone()],
                o,
            );
        }
    }
}
