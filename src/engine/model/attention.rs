//! Attention of every query of a batch against its sequence's keys and values in the paged
//! `f16` KV cache, computed as llama.cpp's CPU flash attention computes it, so that ward's
//! log-probabilities track the reference engine's to the last bit where the inputs agree:
//! - queries of a sequence that brings fewer than [`TILE`] tokens to the batch (decode steps,
//!   short prompts) follow its one-row kernel: the query rounded to `f16`, scores summed in its
//!   dot product's order, an online softmax whose output accumulates in `f16`;
//! - queries of a longer run of one sequence (prefill) follow its tiled kernel: `f32` scores,
//!   64-position tiles, a vectorized `exp` and an `f32` accumulator.
//!
//! A pass in ward's own order ([`Numerics::Fast`]: by default a step of several sequences, see
//! `kernels::numerics_for`) gives every query the tiled kernel: its `f32` accumulator costs
//! a fraction of the one-row kernel's `f16` round trips (SmolLM2, 8 streams after 512 tokens
//! of context: 425-442 -> 550-575 tokens/s on an Emerald Rapids Xeon).
//!
//! Spans longer than [`SPLIT`] positions are cut into [`CHUNK`]-position pieces at fixed
//! positions and merged as llama.cpp merges its split-KV parts, so results depend neither on
//! the thread count nor on the other sequences of the batch (only on how many tokens this
//! sequence brings to it, and on the pass's order).

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::engine::kernels::{self, Numerics, f16ops as h, ops};

use super::Batch;
use super::config::ModelConfig;
use super::kv::{BLOCK, KvPool, SeqKv};

/// The attention output buffer, shared by the pool's threads (each writes its own rows).
struct OutPtr(*mut f32);
// SAFETY: only used to hand disjoint slices of one buffer to the pool's threads.
unsafe impl Sync for OutPtr {}

/// Runs attention for layer `il`: `q` holds `batch.len()` rows of `n_head * head_dim` (after
/// RoPE), `out` receives as many rows. In ward's order ([`Numerics::Fast`]) every query takes
/// the tiled kernel.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    cfg: &ModelConfig,
    il: usize,
    batch: &Batch,
    q: &[f32],
    pool: &KvPool,
    seqs: &[SeqKv],
    order: Numerics,
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
    let mut run = vec![0usize; seqs.len()];
    for &sq in &batch.seq {
        run[sq] += 1;
    }
    let kernel = |t: usize| {
        if order == Numerics::Fast || run[batch.seq[t]] >= TILE {
            Kernel::Tiled
        } else {
            Kernel::Row
        }
    };
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
    // With enough tokens to occupy the threads, a thread takes all the KV heads of a token
    // at once (its items are consecutive): it then reads that token's keys and values as
    // contiguous memory, which the prefetchers follow, instead of every third line of it.
    let per_task = if !per_chunk && batch.len() >= 4 * kernels::threads() {
        cfg.n_kv_head
    } else {
        1
    };
    let part_of = |it: &Item, span| Part {
        pool,
        seq: &seqs[batch.seq[it.t]],
        il,
        kvh: it.kvh,
        hd,
        span,
        scale: cfg.attn_scale,
        kernel: kernel(it.t),
    };
    let item = |i: usize| {
        let it = &items[i];
        let row0 = (it.t * cfg.n_head + it.kvh * group) * hd;
        let part = |span| part_of(it, span);
        let q = &q[row0..row0 + gq];
        SCRATCH.with_borrow_mut(|scratch| {
            if per_chunk && it.span != spans[it.t] {
                // SAFETY: item `i` writes only its own `per` floats of `partial`, disjoint from
                // every other item's, and `partial` outlives the call.
                let mine = unsafe { std::slice::from_raw_parts_mut(part_ptr.0.add(i * per), per) };
                let (o, stats) = mine.split_at_mut(gq);
                part(it.span.clone()).attend(q, o, stats, false, scratch);
                return;
            }
            // SAFETY: this item is the only one writing its token's group,
            // `out[row0..row0 + gq]`.
            let y = unsafe { std::slice::from_raw_parts_mut(dst.0.add(row0), gq) };
            let n_chunks = chunks(it.span.clone()).count();
            if n_chunks == 1 {
                let mut stats = std::mem::take(&mut scratch.stats);
                stats.resize(2 * group, 0.0);
                part(it.span.clone()).attend(q, y, &mut stats, true, scratch);
                scratch.stats = stats;
                return;
            }
            let mut parts = vec![0f32; n_chunks * per];
            let mut cs = chunks(it.span.clone()).peekable();
            let mut ps = parts.chunks_exact_mut(per);
            while let (Some(c), Some(p)) = (cs.next(), ps.next()) {
                // The first chunk was fetched ahead of the item; each later one while the
                // previous computes.
                if let Some(next) = cs.peek() {
                    part(next.clone()).prefetch();
                }
                let (o, stats) = p.split_at_mut(gq);
                part(c).attend(q, o, stats, false, scratch);
            }
            merge(&parts, group, hd, y);
        });
    };
    let task = |k: usize| k * per_task..((k + 1) * per_task).min(items.len());
    kernels::parallel_for_ahead(
        items.len().div_ceil(per_task),
        &|k| {
            for it in &items[task(k)] {
                if let Some(first) = chunks(it.span.clone()).next() {
                    part_of(it, first).prefetch();
                }
            }
        },
        &|k| task(k).for_each(item),
    );
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

/// Runs of at least this many tokens of one sequence take the tiled kernel (llama.cpp's
/// `GGML_FA_TILE_Q`); it is also the tiled kernel's width in positions (`GGML_FA_TILE_KV`).
pub(super) const TILE: usize = 64;

/// Spans ending at or before this position are never split (llama.cpp pads its KV view to 256
/// cells and splits only views of 512 or more).
const SPLIT: usize = 256;

/// Positions per attention chunk of a longer span: it is cut at multiples of this.
const CHUNK: usize = 4 * BLOCK;

/// `span` whole if it ends by [`SPLIT`], else cut at multiples of [`CHUNK`].
fn chunks(span: std::ops::Range<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
    let end = span.end;
    let whole = end <= SPLIT;
    let mut a = span.start;
    std::iter::from_fn(move || {
        (a < end).then(|| {
            let b = if whole {
                end
            } else {
                ((a / CHUNK + 1) * CHUNK).min(end)
            };
            let c = a..b;
            a = b;
            c
        })
    })
}

/// Merges the parts of one span (each `group * hd` unnormalized outputs, then the heads'
/// maxima, then their sums) into the normalized output `y`, in part order, as llama.cpp
/// reduces its split-KV partials.
fn merge(parts: &[f32], group: usize, hd: usize, y: &mut [f32]) {
    let per = group * hd + 2 * group;
    let n = parts.len() / per;
    for h in 0..group {
        let stat = |c: usize, k: usize| parts[c * per + group * hd + k * group + h];
        let y = &mut y[h * hd..(h + 1) * hd];
        y.fill(0.0);
        let (mut m, mut sum) = (f32::NEG_INFINITY, 0f32);
        for c in 0..n {
            let (mc, sc) = (stat(c, 0), stat(c, 1));
            if sc == 0.0 {
                continue;
            }
            let mn = m.max(mc);
            let (so, sn) = ((m - mn).exp(), (mc - mn).exp());
            let part = &parts[c * per + h * hd..c * per + (h + 1) * hd];
            ops::rescale_add(y, so, part, sn);
            sum = sum.mul_add(so, sc * sn);
            m = mn;
        }
        if sum != 0.0 {
            ops::scale_inplace(y, 1.0 / sum);
        }
    }
}

/// Which of llama.cpp's two CPU flash-attention kernels a query follows (module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Row,
    Tiled,
}

/// One unit of attention work: the query heads of KV head `kvh` of token `t` over `span`
/// (the token's whole span, or one chunk of it).
struct Item {
    t: usize,
    kvh: usize,
    span: std::ops::Range<usize>,
}

thread_local! {
    /// Each thread's attention buffers, reused from item to item and step to step.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Buffers [`Part::attend`] reuses across work items.
#[derive(Default)]
struct Scratch {
    /// A whole span's heads' maxima and sums.
    stats: Vec<f32>,
    w: Vec<f32>,
    tmp: Vec<f32>,
    q: Vec<f32>,
    y: Vec<f16>,
    /// Tiled kernel: one tile's softmax weights per head.
    e: Vec<f32>,
    /// One-row kernel: whether each `[head][position]` score raises the head's maximum.
    raise: Vec<bool>,
}

/// Query heads sharing one KV head, against one sequence's cache.
struct Part<'a> {
    pool: &'a KvPool,
    seq: &'a SeqKv,
    il: usize,
    /// The KV head.
    kvh: usize,
    hd: usize,
    span: std::ops::Range<usize>,
    scale: f32,
    kernel: Kernel,
}

impl Part<'_> {
    /// Visits the span block by block: `f(block, first position in it, count)`.
    fn runs(&self, mut f: impl FnMut(usize, usize, usize)) {
        self.runs_in(self.span.clone(), &mut f);
    }

    fn runs_in(&self, span: std::ops::Range<usize>, f: &mut impl FnMut(usize, usize, usize)) {
        let mut p = span.start;
        while p < span.end {
            let n = (BLOCK - p % BLOCK).min(span.end - p);
            f(p / BLOCK, p % BLOCK, n);
            p += n;
        }
    }

    /// Hints this KV head's keys and values over the span into cache, so that the reads of
    /// the scores and of the value rows overlap instead of each waiting on memory.
    fn prefetch(&self) {
        let (hd, stride) = (self.hd, self.pool.value_stride());
        self.runs(|b, p0, m| {
            let kt = self.pool.keys_t(self.seq, self.il, b);
            kernels::prefetch_l2(&kt[self.kvo() * BLOCK..(self.kvo() + hd) * BLOCK]);
            let v = self.values_from(b * BLOCK + p0);
            kernels::prefetch_l2(&v[..(m - 1) * stride + hd]);
        });
    }

    /// Offset of the KV head in a cached key row.
    fn kvo(&self) -> usize {
        self.kvh * self.hd
    }

    /// This KV head's value rows from `pos` to the end of its block.
    fn values_from(&self, pos: usize) -> &[f16] {
        self.pool.values_from(self.seq, self.il, self.kvh, pos)
    }

    /// Scores of the group's heads `q` for the whole span into `w` (`[head][position]`).
    fn scores(&self, q: &[f32], w: &mut [f32], tmp: &mut Vec<f32>) {
        let (g, n, lo) = (q.len() / self.hd, self.span.len(), self.span.start);
        tmp.resize(g * BLOCK, 0.0);
        self.runs(|b, p0, m| {
            // This KV head's transposed keys: `[hd][BLOCK]`, from position `p0` of the block.
            let kt = &self.pool.keys_t(self.seq, self.il, b)[self.kvo() * BLOCK + p0..];
            let out = &mut tmp[..g * m];
            match self.kernel {
                Kernel::Row => h::scores_tree(kt, BLOCK, m, q, self.hd, self.scale, out),
                Kernel::Tiled => h::scores(kt, BLOCK, m, q, self.hd, self.scale, out),
            }
            let at = b * BLOCK + p0 - lo;
            for h in 0..g {
                w[h * n + at..h * n + at + m].copy_from_slice(&tmp[h * m..(h + 1) * m]);
            }
        });
    }

    /// Attention of the group's heads over the span: `q` and `o` hold the heads one after
    /// another; `stats` receives each head's maximum score, then each head's sum of weights.
    /// With `normalize`, `o` is the attention output; without, `o / sum` is, for merging with
    /// other parts of the span.
    fn attend(
        &self,
        q: &[f32],
        o: &mut [f32],
        stats: &mut [f32],
        normalize: bool,
        scratch: &mut Scratch,
    ) {
        let g = q.len() / self.hd;
        match self.kernel {
            Kernel::Row => self.attend_row(q, o, stats, scratch),
            Kernel::Tiled => self.attend_tiled(q, o, stats, scratch),
        }
        if normalize {
            for (h, o) in o.chunks_exact_mut(self.hd).enumerate() {
                let s = stats[g + h];
                ops::scale_inplace(o, if s == 0.0 { 0.0 } else { 1.0 / s });
            }
        }
    }

    /// llama.cpp's one-row kernel: position by position, a new maximum rescales the `f16`
    /// accumulator, every value row is added to it with its weight `e^(s - max)`.
    ///
    /// The exponentials do not depend on the accumulator, so they are taken first, for the
    /// whole span at once: the running maximum is a prefix maximum, and the C library's `expf`
    /// ([`kernels::expf`], the same bits) runs vectorized over all of them.
    fn attend_row(&self, q: &[f32], o: &mut [f32], stats: &mut [f32], scratch: &mut Scratch) {
        let (hd, n, lo) = (self.hd, self.span.len(), self.span.start);
        let g = q.len() / hd;
        let stride = self.pool.value_stride();
        let Scratch {
            w,
            tmp,
            q: qh,
            y,
            raise,
            ..
        } = scratch;
        // The query rounded to `f16` (llama.cpp converts it for its `f16` dot products).
        y.resize(q.len(), f16::ZERO);
        y.convert_from_f32_slice(q);
        qh.resize(q.len(), 0.0);
        y.convert_to_f32_slice(qh);
        w.resize(g * n, 0.0);
        self.scores(qh, w, tmp);
        let (m, s) = stats.split_at_mut(g);
        // Where a score raises its head's maximum, the weight is 1 and the accumulator is
        // rescaled by `e^(old max - score)`; elsewhere the weight is `e^(score - max)`.
        raise.clear();
        raise.resize(g * n, false);
        for h in 0..g {
            let mut mx = f32::NEG_INFINITY;
            let row = &mut w[h * n..(h + 1) * n];
            for (v, r) in row.iter_mut().zip(&mut raise[h * n..(h + 1) * n]) {
                if *v > mx {
                    (*v, mx, *r) = (mx - *v, *v, true);
                } else {
                    *v -= mx;
                }
            }
            m[h] = mx;
        }
        kernels::expf::expf_inplace(w);
        y.clear();
        y.resize(g * hd, f16::ZERO);
        s.fill(0.0);
        self.runs(|b, p0, cnt| {
            let rows = self.values_from(b * BLOCK + p0);
            let at = b * BLOCK + p0 - lo;
            for h in 0..g {
                let (wh, rh) = (&w[h * n + at..][..cnt], &raise[h * n + at..][..cnt]);
                // The sum is `fma(sum, ms, vs)`, where one of the two factors is 1.
                for (&e, &r) in wh.iter().zip(rh) {
                    s[h] = if r { s[h].mul_add(e, 1.0) } else { s[h] + e };
                }
            }
            // Every head's `y = y · ms + v · vs` over the run, in registers.
            let run = h::ValueRun {
                rows,
                stride,
                w: &w[at..],
                raise: &raise[at..],
                wstride: n,
                n: cnt,
            };
            h::mad_f16_span(y, hd, &run);
        });
        y.convert_to_f32_slice(o);
    }

    /// llama.cpp's tiled kernel: 64-position tiles (at multiples of 64), each raising the
    /// running maximum once, its weights from the vectorized `exp` summed 16 at a time in
    /// `f64`, its values added to an `f32` accumulator.
    fn attend_tiled(&self, q: &[f32], o: &mut [f32], stats: &mut [f32], scratch: &mut Scratch) {
        let (hd, n, lo, end) = (self.hd, self.span.len(), self.span.start, self.span.end);
        let g = q.len() / hd;
        let stride = self.pool.value_stride();
        let Scratch { w, tmp, e, .. } = scratch;
        w.resize(g * n, 0.0);
        self.scores(q, w, tmp);
        let (m, s) = stats.split_at_mut(g);
        m.fill(f32::NEG_INFINITY);
        s.fill(0.0);
        o.fill(0.0);
        let mut t0 = lo / TILE * TILE;
        e.resize(g * TILE, 0.0);
        // The scores are copied out; `tmp` now holds each block run's weights.
        let wt = tmp;
        while t0 < end {
            let (a, b) = (t0.max(lo), (t0 + TILE).min(end));
            for h in 0..g {
                let sl = &w[h * n + a - lo..h * n + b - lo];
                let eh = &mut e[h * TILE..(h + 1) * TILE];
                let top = ops::max(sl);
                let mn = m[h].max(top);
                if mn > m[h] {
                    let ms = (m[h] - mn).exp();
                    ops::scale_inplace(&mut o[h * hd..(h + 1) * hd], ms);
                    s[h] *= ms;
                }
                m[h] = mn;
                eh.fill(0.0);
                ops::exp_minus(sl, mn, &mut eh[a - t0..b - t0]);
                let sum: f64 = eh
                    .chunks_exact(16)
                    .map(|c| h::reduce16(c.try_into().unwrap()) as f64)
                    .sum();
                s[h] = (s[h] as f64 + sum) as f32;
            }
            self.runs_in(a..b, &mut |blk, p0, cnt| {
                let first = blk * BLOCK + p0;
                wt.clear();
                for h in 0..g {
                    wt.extend_from_slice(&e[h * TILE + first - t0..h * TILE + first - t0 + cnt]);
                }
                let rows = self.values_from(first);
                h::accumulate(rows, stride, cnt, wt, hd, o);
            });
            t0 += TILE;
        }
    }
}
