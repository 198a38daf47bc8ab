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
    // One item per (token, KV head) serves its whole group of query heads. Tokens whose items
    // alone cannot occupy the threads (a single decoding sequence) also split their positions
    // into chunks of at least MIN_CHUNK, merged afterwards (flash-decoding).
    let threads = kernels::threads();
    let units = batch.len() * cfg.n_kv_head;
    let want = if units >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(units)
    };
    let mut items = Vec::with_capacity(units * want);
    for t in 0..batch.len() {
        let pos = batch.pos[t];
        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let chunks = want.min((pos + 1 - lo).div_ceil(MIN_CHUNK)).max(1);
        let step = (pos + 1 - lo).div_ceil(chunks).next_multiple_of(BLOCK);
        for kvh in 0..cfg.n_kv_head {
            let mut a = lo;
            while a <= pos {
                let b = (a + step).min(pos + 1);
                items.push(Item {
                    t,
                    kvh,
                    span: a..b,
                    whole: a == lo && b == pos + 1,
                });
                a = b;
            }
        }
    }
    // Per item: the group's unnormalized outputs, then each head's running max and sum.
    let per = group * hd + 2 * group;
    let mut partial = vec![0f32; items.len() * per];
    let part_ptr = OutPtr(partial.as_mut_ptr());
    let (dst, part_ptr) = (&OutPtr(out.as_mut_ptr()), &part_ptr);
    kernels::parallel_for(items.len(), &|i| {
        let it = &items[i];
        let row0 = (it.t * cfg.n_head + it.kvh * group) * hd;
        // SAFETY: item `i` writes only its own `per` floats of `partial`, disjoint from every
        // other item's, and `partial` outlives the call.
        let mine = unsafe { std::slice::from_raw_parts_mut(part_ptr.0.add(i * per), per) };
        let (o, stats) = mine.split_at_mut(group * hd);
        let part = Part {
            pool,
            seq: &seqs[batch.seq[it.t]],
            il,
            kvo: it.kvh * hd,
            hd,
            span: it.span.clone(),
            scale: cfg.attn_scale,
        };
        if it.whole {
            // SAFETY: a whole item is the only one writing `out[row0..row0 + group * hd]`.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add(row0), group * hd) };
            part.attend(&q[row0..row0 + group * hd], out, stats, true);
        } else {
            part.attend(&q[row0..row0 + group * hd], o, stats, false);
        }
    });
    // Merge the chunks of split items: rescale each to the common max, sum, normalize.
    let mut i = 0;
    while i < items.len() {
        let (t, kvh) = (items[i].t, items[i].kvh);
        let n = items[i..]
            .iter()
            .take_while(|it| it.t == t && it.kvh == kvh)
            .count();
        if !items[i].whole {
            let row0 = (t * cfg.n_head + kvh * group) * hd;
            let chunks = &partial[i * per..(i + n) * per];
            for h in 0..group {
                let stat = |c: usize, k: usize| chunks[c * per + group * hd + k * group + h];
                let m = (0..n).map(|c| stat(c, 0)).fold(f32::NEG_INFINITY, f32::max);
                let y = &mut out[row0 + h * hd..row0 + (h + 1) * hd];
                y.fill(0.0);
                let mut sum = 0f32;
                for c in 0..n {
                    if stat(c, 1) == 0.0 {
                        continue;
                    }
                    let f = (stat(c, 0) - m).exp();
                    sum += f * stat(c, 1);
                    let o = &chunks[c * per + h * hd..c * per + (h + 1) * hd];
                    ops::axpy(f, o, y);
                }
                if sum > 0.0 {
                    ops::scale_inplace(y, 1.0 / sum);
                }
            }
        }
        i += n;
    }
}

/// Positions per chunk below which a sequence's span is not split across threads.
const MIN_CHUNK: usize = 2 * BLOCK;

/// One unit of attention work: the query heads of KV head `kvh` of token `t` over `span`
/// (`whole`: the token's entire span, so the result needs no merge).
struct Item {
    t: usize,
    kvh: usize,
    span: std::ops::Range<usize>,
    whole: bool,
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

    /// Scores, softmax and the weighted sum of values, all in `f32`: `q` and `o` hold the
    /// group's heads one after another; `stats` receives each head's maximum score, then each
    /// head's sum of weights. With `normalize` the weights are divided by their sum before
    /// the values are summed (`o` is the attention output); without, `o / sum` is, for merging
    /// with other parts of the span.
    fn attend(&self, q: &[f32], o: &mut [f32], stats: &mut [f32], normalize: bool) {
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
        for (h, row) in w.chunks_exact_mut(n).enumerate() {
            (stats[h], stats[g + h]) = ops::exp_shifted(row);
            if normalize && stats[g + h] > 0.0 {
                ops::scale_inplace(row, 1.0 / stats[g + h]);
            }
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
