//! The decoder-only transformer shared by every supported family (Llama, Qwen2, Qwen3, Gemma 3).
//!
//! One forward pass runs a whole [`Batch`]: tokens from any number of sequences, each at its own
//! position, with keys and values in the paged [`KvPool`]. Matrix products run over all tokens of
//! the batch at once; attention runs per token against that token's sequence. Families differ
//! only through [`ModelConfig`] switches.

use crate::engine::error::Result;
use crate::engine::gguf::GgufFile;
use crate::engine::kernels::{self, Numerics, ops};

use super::attention;
use super::config::{Activation, ModelConfig, rope_cos_sin};
use super::kv::{KvPool, SeqKv};
use super::weights::{Linear, Weights};
use super::{Batch, Model};

/// A loaded transformer: configuration, memory-mapped weights.
pub struct Transformer {
    file: GgufFile,
    cfg: ModelConfig,
    w: Weights,
    /// Repack matrices for the fast kernels on first use (`WARD_PACK=0` keeps the GGUF layout).
    pack: bool,
}

impl Transformer {
    /// Builds the model over an open GGUF file.
    pub fn new(file: GgufFile) -> Result<Self> {
        let cfg = ModelConfig::from_metadata(file.metadata())?;
        let w = Weights::load(&file, &cfg)?;
        let pack = std::env::var("WARD_PACK").map_or(true, |v| v != "0");
        Ok(Self { file, cfg, w, pack })
    }

    /// `out[t] = W x[t] + b` for the `n` rows of `x`, the packed products in `order`.
    fn linear(&self, l: &Linear, x: &[f32], n: usize, order: Numerics, out: &mut Vec<f32>) {
        self.linear_many([l], x, n, order, [out]);
    }

    /// [`Self::linear`] for several matrices over the same input, in one dispatch of the
    /// packed kernels (the activations quantized once).
    fn linear_many<const N: usize>(
        &self,
        ls: [&Linear; N],
        x: &[f32],
        n: usize,
        order: Numerics,
        mut outs: [&mut Vec<f32>; N],
    ) {
        for (l, out) in ls.iter().zip(outs.iter_mut()) {
            out.resize(n * l.rows, 0.0);
        }
        let packed = ls.map(|l| self.packed(l));
        if packed.iter().all(Option::is_some) {
            let ws = packed.map(|p| p.expect("checked"));
            let mut outs = outs.each_mut().map(|o| o.as_mut_slice());
            kernels::matmul_packed_many(&ws, x, n, &mut outs, order);
        } else {
            for ((l, p), out) in ls.iter().zip(packed).zip(outs.iter_mut()) {
                match p {
                    Some(p) => kernels::matmul_packed_many(&[p], x, n, &mut [out], order),
                    None => kernels::matmul(&l.matrix(&self.file), x, n, out),
                }
            }
        }
        for (l, out) in ls.iter().zip(outs.iter_mut()) {
            if let Some(b) = &l.bias {
                for row in out.chunks_exact_mut(l.rows) {
                    ops::add_inplace(row, b);
                }
            }
        }
    }

    /// `l` repacked for the fast kernels (on first use), or `None` for the GGUF layout.
    fn packed<'a>(&'a self, l: &'a Linear) -> Option<&'a kernels::PackedMatrix> {
        if !self.pack {
            return None;
        }
        l.packed
            .get_or_init(|| {
                // The packed copy replaces the mapped pages: let the kernel drop them as each
                // slice is packed, so the two copies never coexist whole.
                let base = l.range.start;
                kernels::PackedMatrix::new_releasing(&l.matrix(&self.file), |r| {
                    self.file.release(base + r.start..base + r.end)
                })
            })
            .as_ref()
    }

    /// Rotates every head of row `t` of the batch in place.
    fn rope_row(&self, row: &mut [f32], t: usize, (cos, sin): &(Vec<f32>, Vec<f32>)) {
        let (hd, half) = (self.cfg.head_dim, self.cfg.rope_dim / 2);
        let span = t * half..(t + 1) * half;
        ops::rope(row, hd, &cos[span.clone()], &sin[span], self.cfg.rope_neox);
    }

    /// RoPE on every row of `q` and `k`, then each row's key and value into the cache, row by
    /// row on the kernels' pool (one thread waiting on another
    /// core's cache lines was 7% of an 8-sequence step of SmolLM2).
    fn rope_and_cache(
        &self,
        il: usize,
        batch: &Batch,
        table: &(Vec<f32>, Vec<f32>),
        (q, k, v): (&mut [f32], &mut [f32], &[f32]),
        pool: &mut KvPool,
        seqs: &[SeqKv],
    ) {
        let kvd = self.cfg.kv_dim();
        let writer = pool.writer(
            il,
            seqs,
            (0..batch.len()).map(|t| (batch.seq[t], batch.pos[t])),
        );
        let row = |t: usize, q: &mut [f32], k: &mut [f32]| {
            self.rope_row(q, t, table);
            self.rope_row(k, t, table);
            writer.write(t, k, &v[t * kvd..(t + 1) * kvd]);
        };
        kernels::for_rows2(q, self.cfg.q_dim(), k, kvd, &row)
    }
}

impl Model for Transformer {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn metadata(&self) -> &crate::engine::gguf::Metadata {
        self.file.metadata()
    }

    fn forward(&self, batch: &Batch, pool: &mut KvPool, seqs: &mut [SeqKv]) -> Result<Vec<f32>> {
        self.forward_in_pieces(batch, pool, seqs, PIECE)
    }
}

/// Tokens per piece of a long batch ([`Batch::pieces`]): enough for the matrix products to run
/// at full speed (their chunks are 64 tokens), few enough that a 512-token prefill holds a
/// quarter of its activations.
pub const PIECE: usize = 128;

impl Transformer {
    /// [`Model::forward`], a batch longer than `2 * piece` tokens cut into pieces of at least
    /// `piece` that run one after another (`usize::MAX`: one pass). The logits are the same to
    /// the bit either way; only the memory the activations take changes.
    pub fn forward_in_pieces(
        &self,
        batch: &Batch,
        pool: &mut KvPool,
        seqs: &mut [SeqKv],
        piece: usize,
    ) -> Result<Vec<f32>> {
        batch.check(seqs.len(), &self.cfg)?;
        // The whole batch's order, which its pieces keep (a piece may hold one sequence of a
        // step of several).
        let order = kernels::numerics_for(batch.sequences());
        if batch.len() < piece.saturating_mul(2) {
            return self.pass(batch, pool, seqs, order);
        }
        let pieces = batch.pieces(piece, attention::TILE);
        if pieces.len() == 1 {
            return self.pass(batch, pool, seqs, order);
        }
        let mut logits = Vec::new();
        for r in pieces {
            logits.extend(self.pass(&batch.slice(r), pool, seqs, order)?);
        }
        Ok(logits)
    }

    /// One forward pass over the whole batch, its products and attention in `order`.
    fn pass(
        &self,
        batch: &Batch,
        pool: &mut KvPool,
        seqs: &mut [SeqKv],
        order: Numerics,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let n = batch.tokens.len();
        let (d, qd) = (cfg.dim, cfg.q_dim());
        for (s, seq) in seqs.iter_mut().enumerate() {
            if let Some((lo, hi)) = batch.span(s) {
                pool.prepare(seq, lo, hi + 1)?;
            }
        }

        // Embeddings, dequantized row by row at lookup: from the packed copy once a tied output
        // projection has made one (its mapped pages are gone), else from the file.
        let embed = self.w.embed.matrix(&self.file);
        let packed = self.w.embed.packed.get().and_then(Option::as_ref);
        let mut x = vec![0.0f32; n * d];
        for (t, row) in x.chunks_exact_mut(d).enumerate() {
            match packed {
                Some(p) => p.dequantize_row(batch.tokens[t] as usize, row),
                None => embed.dequantize_row(batch.tokens[t] as usize, row),
            }
            if let Some(s) = cfg.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }

        let freqs = self.w.rope_freqs.as_deref();
        let rope_global = rope_cos_sin(cfg, freqs, &batch.pos, cfg.rope_base);
        let rope_local = (cfg.sliding_window.is_some())
            .then(|| rope_cos_sin(cfg, freqs, &batch.pos, cfg.rope_base_local));
        let (mut h, mut q, mut k, mut v) = (vec![0.0; n * d], Vec::new(), Vec::new(), Vec::new());
        let (mut att, mut o, mut g, mut u) =
            (vec![0.0; n * qd], Vec::new(), Vec::new(), Vec::new());

        for (il, lw) in self.w.layers.iter().enumerate() {
            rms_rows(&x, &lw.attn_norm, cfg.rms_eps, &mut h);
            self.linear_many(
                [&lw.wq, &lw.wk, &lw.wv],
                &h,
                n,
                order,
                [&mut q, &mut k, &mut v],
            );
            if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                rms_rows_inplace(&mut q, qn, cfg.rms_eps);
                rms_rows_inplace(&mut k, kn, cfg.rms_eps);
            }
            let table = match (&rope_local, cfg.is_sliding(il)) {
                (Some(t), true) => t,
                _ => &rope_global,
            };
            self.rope_and_cache(il, batch, table, (&mut q, &mut k, &v), pool, seqs);
            attention::attend(cfg, il, batch, &q, pool, seqs, order, &mut att);
            self.linear(&lw.wo, &att, n, order, &mut o);
            if let Some(pn) = &lw.post_attn_norm {
                rms_rows_inplace(&mut o, pn, cfg.rms_eps);
            }
            ops::add_inplace(&mut x, &o);

            rms_rows(&x, &lw.ffn_norm, cfg.rms_eps, &mut h);
            self.linear_many([&lw.w_gate, &lw.w_up], &h, n, order, [&mut g, &mut u]);
            let gate = |_: usize, g: &mut [f32], u: &mut [f32]| match cfg.activation {
                Activation::Silu => ops::silu_mul(g, u),
                Activation::GeluTanh => ops::gelu_tanh_mul(g, u),
            };
            kernels::for_rows2(&mut g, cfg.ffn_dim, &mut u, cfg.ffn_dim, &gate);
            self.linear(&lw.w_down, &g, n, order, &mut o);
            if let Some(pn) = &lw.post_ffn_norm {
                rms_rows_inplace(&mut o, pn, cfg.rms_eps);
            }
            ops::add_inplace(&mut x, &o);
        }
        for (s, seq) in seqs.iter_mut().enumerate() {
            if let Some((_, hi)) = batch.span(s) {
                pool.commit(seq, hi + 1);
            }
        }

        // Logits only for the rows asked for.
        let rows: Vec<usize> = (0..n).filter(|&t| batch.logits[t]).collect();
        let mut xs = vec![0.0; rows.len() * d];
        for (i, &t) in rows.iter().enumerate() {
            ops::rms_norm(
                &x[t * d..(t + 1) * d],
                &self.w.output_norm,
                cfg.rms_eps,
                &mut xs[i * d..(i + 1) * d],
            );
        }
        let mut logits = Vec::new();
        self.linear(&self.w.output, &xs, rows.len(), order, &mut logits);
        if let Some(cap) = cfg.final_softcap {
            logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        }
        Ok(logits)
    }
}

/// RMSNorm of every `w.len()`-wide row of `x` into `out`.
fn rms_rows(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        ops::rms_norm(xr, w, eps, or);
    }
}

fn rms_rows_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let mut tmp = vec![0.0; w.len()];
    for row in x.chunks_exact_mut(w.len()) {
        ops::rms_norm(row, w, eps, &mut tmp);
        row.copy_from_slice(&tmp);
    }
}
