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
    // A token's span is cut into chunks at multiples of CHUNK positions; each chunk serves the
    // whole group of query heads of one KV head, and a span of several chunks is merged from
    // their parts (flash-decoding). The cuts depend only on positions, so results depend on
    // neither the thread count nor the rest of the batch. Work items are whole (token, KV head)
    // pairs when there are enough of them to occupy the threads, else single chunks, so that
    // one long sequence still uses every thread.
    let spans: Vec<std::ops::Range<usize>> = (0..batch.len())
        .map(|t| window.map_or(0, |w| (batch.pos[t] + 1).saturating_sub(w))..batch.pos[t] + 1)
        .collect();
    let units = batch.len() * cfg.n_kv_head;
    let per_chunk = units < 2 * kernels::threads();
    let mut items = Vec::with_capacity(units);
    for (t, span) in spans.iter().enumerate() {
        for kvh in 0..cfg.n_kv_head {
            if per_chunk {
                items.extend(chunks(span.clone()).map(|c| Item { t, kvh, span: c }));
            } else {
                items.push(Item {
                    t,
                    kvh,
                    span: span.clone(),
                });
            }
        }
    }
    let gq = group * hd;
    let per = gq + 2 * group;
    // Per-chunk items leave their parts here, merged below.
    let mut partial = vec![0f32; if per_chunk { items.len() * per } else { 0 }];
    let (dst, part_ptr) = (&OutPtr(out.as_mut_ptr()), &OutPtr(partial.as_mut_ptr()));
    kernels::parallel_for(items.len(), &|i| {
        let it = &items[i];
        let row0 = (it.t * cfg.n_head + it.kvh * group) * hd;
        let part = |span| Part {
            pool,
            seq: &seqs[batch.seq[it.t]],
            il,
            kvo: it.kvh * hd,
            hd,
            span,
            scale: cfg.attn_scale,
        };
        let q = &q[row0..row0 + gq];
        if per_chunk && it.span != spans[it.t] {
            // SAFETY: item `i` writes only its own `per` floats of `partial`, disjoint from
            // every other item's, and `partial` outlives the call.
            let mine = unsafe { std::slice::from_raw_parts_mut(part_ptr.0.add(i * per), per) };
            let (o, stats) = mine.split_at_mut(gq);
            part(it.span.clone()).attend(q, o, stats, false, &mut Scratch::default());
            return;
        }
        // SAFETY: this item is the only one writing its token's group, `out[row0..row0 + gq]`.
        let y = unsafe { std::slice::from_raw_parts_mut(dst.0.add(row0), gq) };
        let n_chunks = chunks(it.span.clone()).count();
        if n_chunks == 1 {
            let mut stats = vec![0.0; 2 * group];
            part(it.span.clone()).attend(q, y, &mut stats, true, &mut Scratch::default());
            return;
        }
        let mut parts = vec![0f32; n_chunks * per];
        let mut scratch = Scratch::default();
        for (c, p) in chunks(it.span.clone()).zip(parts.chunks_exact_mut(per)) {
            let (o, stats) = p.split_at_mut(gq);
            part(c).attend(q, o, stats, false, &mut scratch);
        }
        merge(&parts, group, hd, y);
    });
    if per_chunk {
        // Merge the chunks of split spans (items of one (token, KV head) are consecutive).
        let mut i = 0;
        while i < items.len() {
            let (t, kvh) = (items[i].t, items[i].kvh);
            let n = items[i..]
                .iter()
                .take_while(|it| it.t == t && it.kvh == kvh)
                .count();
            if n > 1 {
                let row0 = (t * cfg.n_head + kvh * group) * hd;
                merge(
                    &partial[i * per..(i + n) * per],
                    group,
                    hd,
                    &mut out[row0..row0 + gq],
                );
            }
            i += n;
        }
    }
}

/// Positions per attention chunk: spans are cut at its multiples.
const CHUNK: usize = 4 * BLOCK;

/// `span` cut at multiples of [`CHUNK`].
fn chunks(span: std::ops::Range<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
    let end = span.end;
    let mut a = span.start;
    std::iter::from_fn(move || {
        (a < end).then(|| {
            let b = ((a / CHUNK + 1) * CHUNK).min(end);
            let c = a..b;
            a = b;
            c
        })
    })
}

/// Merges the parts of one span (each `group * hd` unnormalized outputs, then the heads'
/// maxima, then their sums) into the normalized output `y`: every part rescaled to the common
/// maximum, summed in order, divided by the rescaled sum.
fn merge(parts: &[f32], group: usize, hd: usize, y: &mut [f32]) {
    let per = group * hd + 2 * group;
    let n = parts.len() / per;
    for h in 0..group {
        let stat = |c: usize, k: usize| parts[c * per + group * hd + k * group + h];
        let m = (0..n).map(|c| stat(c, 0)).fold(f32::NEG_INFINITY, f32::max);
        let y = &mut y[h * hd..(h + 1) * hd];
        y.fill(0.0);
        let mut sum = 0f32;
        for c in 0..n {
            if stat(c, 1) == 0.0 {
                continue;
            }
            let f = (stat(c, 0) - m).exp();
            sum += f * stat(c, 1);
            ops::axpy(f, &parts[c * per + h * hd..c * per + (h + 1) * hd], y);
        }
        if sum > 0.0 {
            ops::scale_inplace(y, 1.0 / sum);
        }
    }
}

/// One unit of attention work: the query heads of KV head `kvh` of token `t` over `span`
/// (the token's whole span, or one chunk of it).
struct Item {
    t: usize,
    kvh: usize,
    span: std::ops::Range<usize>,
}

/// Buffers [`Part::attend`] reuses across the chunks of one work item.
#[derive(Default)]
struct Scratch {
    w: Vec<f32>,
    tmp: Vec<f32>,
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
    fn attend(
        &self,
        q: &[f32],
        o: &mut [f32],
        stats: &mut [f32],
        normalize: bool,
        scratch: &mut Scratch,
    ) {
        let (g, n, lo) = (q.len() / self.hd, self.span.len(), self.span.start);
        let stride = self.pool.kv_dim();
        let Scratch { w, tmp } = scratch;
        w.resize(g * n, 0.0);
        tmp.resize(g * BLOCK, 0.0);
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
