//! The [`Transformer`](super::Transformer) graph on candle tensors, so that `--features cuda` runs
//! the same models on an NVIDIA GPU (`WARD_DEVICE=cuda`); `candle-cpu` runs it on candle's CPU
//! backend, for testing.
//!
//! One graph for every family, driven by the same [`ModelConfig`] switches. Weights are candle
//! [`QMatMul`]s built from the GGUF bytes; embeddings are dequantized on the host row by row, as
//! the CPU engine does. The KV cache stays paged: the [`KvPool`] keeps the block tables (and
//! copy-on-write for forked prefixes), while the keys and values live on the device (module
//! `paged`). Matrix products run over the whole batch; attention runs per sequence.

use candle_core::quantized::{QMatMul, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Module, Tensor};
use candle_nn::ops::rms_norm;
use candle_nn::rotary_emb::{rope, rope_i};

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::{GgufFile, Metadata};

use super::config::{Activation, ModelConfig, rope_cos_sin};
use super::kv::{KvPool, SeqKv};
use super::weights::{Linear, Weights};
use super::{Batch, Model};

mod paged;

use paged::{DeviceKv, Plan, attention};

type CResult<T> = candle_core::Result<T>;

fn device_err(e: candle_core::Error) -> EngineError {
    EngineError::Device(e.to_string())
}

/// Parses a `WARD_DEVICE` value other than `cpu`: `candle-cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "candle-cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                EngineError::Device(format!(
                    "unknown device `{s}` (expected cpu, candle-cpu, cuda or cuda:N)"
                ))
            })?,
    };
    Device::new_cuda(ordinal).map_err(|e| EngineError::Device(format!("{spec}: {e}")))
}

/// A matrix on the device with its optional bias.
struct Lin {
    w: QMatMul,
    b: Option<Tensor>,
}

impl Lin {
    fn new(file: &GgufFile, l: &Linear, dev: &Device) -> CResult<Self> {
        let q = qtensor_from_ggml(
            l.dtype,
            file.bytes(l.range.clone()),
            vec![l.rows, l.cols],
            dev,
        )?;
        Ok(Self {
            w: QMatMul::from_qtensor(q)?,
            b: l.bias.as_deref().map(|b| vector(b, dev)).transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let y = self.w.forward(x)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

fn vector(v: &[f32], dev: &Device) -> CResult<Tensor> {
    Tensor::from_slice(v, v.len(), dev)
}

fn opt_vector(v: &Option<Vec<f32>>, dev: &Device) -> CResult<Option<Tensor>> {
    v.as_deref().map(|v| vector(v, dev)).transpose()
}

/// One transformer block on the device.
struct Layer {
    attn_norm: Tensor,
    wq: Lin,
    wk: Lin,
    wv: Lin,
    wo: Lin,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Lin,
    up: Lin,
    down: Lin,
    post_ffn_norm: Option<Tensor>,
}

/// A transformer whose weights and KV cache live on a candle [`Device`].
pub struct CandleTransformer {
    file: GgufFile,
    cfg: ModelConfig,
    w: Weights,
    dev: Device,
    layers: Vec<Layer>,
    output: Lin,
    output_norm: Tensor,
}

impl CandleTransformer {
    /// Builds the model over an open GGUF file, copying its matrices to `dev`.
    pub fn new(file: GgufFile, dev: Device) -> Result<Self> {
        let cfg = ModelConfig::from_metadata(file.metadata())?;
        let mut w = Weights::load(&file, &cfg)?;
        let lw = std::mem::take(&mut w.layers);
        let build = || -> CResult<_> {
            let d = &dev;
            let layers = lw
                .iter()
                .map(|l| {
                    Ok(Layer {
                        attn_norm: vector(&l.attn_norm, d)?,
                        wq: Lin::new(&file, &l.wq, d)?,
                        wk: Lin::new(&file, &l.wk, d)?,
                        wv: Lin::new(&file, &l.wv, d)?,
                        wo: Lin::new(&file, &l.wo, d)?,
                        q_norm: opt_vector(&l.q_norm, d)?,
                        k_norm: opt_vector(&l.k_norm, d)?,
                        post_attn_norm: opt_vector(&l.post_attn_norm, d)?,
                        ffn_norm: vector(&l.ffn_norm, d)?,
                        gate: Lin::new(&file, &l.w_gate, d)?,
                        up: Lin::new(&file, &l.w_up, d)?,
                        down: Lin::new(&file, &l.w_down, d)?,
                        post_ffn_norm: opt_vector(&l.post_ffn_norm, d)?,
                    })
                })
                .collect::<CResult<Vec<_>>>()?;
            Ok((
                layers,
                Lin::new(&file, &w.output, d)?,
                vector(&w.output_norm, d)?,
            ))
        };
        let (layers, output, output_norm) = build().map_err(device_err)?;
        Ok(Self {
            file,
            cfg,
            w,
            dev,
            layers,
            output,
            output_norm,
        })
    }

    /// cos and sin `[n, 1, rope_dim / 2]` for the batch's positions.
    fn rope_table(&self, pos: &[usize], base: f32) -> CResult<(Tensor, Tensor)> {
        let half = self.cfg.rope_dim / 2;
        let (cos, sin) = rope_cos_sin(&self.cfg, self.w.rope_freqs.as_deref(), pos, base);
        let shape = (pos.len(), 1, half);
        Ok((
            Tensor::from_vec(cos, shape, &self.dev)?,
            Tensor::from_vec(sin, shape, &self.dev)?,
        ))
    }

    /// Rotates the first `rope_dim` dimensions of every head of `x` (`[n, heads * head_dim]`).
    fn rope(&self, x: &Tensor, heads: usize, cs: &(Tensor, Tensor)) -> CResult<Tensor> {
        let (n, hd, rd) = (x.dim(0)?, self.cfg.head_dim, self.cfg.rope_dim);
        let x = x.reshape((n, heads, 1, hd))?;
        let rot = x.narrow(3, 0, rd)?.contiguous()?;
        let rot = if self.cfg.rope_neox {
            rope(&rot, &cs.0, &cs.1)?
        } else {
            rope_i(&rot, &cs.0, &cs.1)?
        };
        let out = if rd < hd {
            Tensor::cat(&[&rot, &x.narrow(3, rd, hd - rd)?], 3)?
        } else {
            rot
        };
        out.reshape((n, heads * hd))
    }

    /// RMSNorm of each head of `x` (`[n, heads * head_dim]`).
    fn rms_heads(&self, x: &Tensor, w: &Tensor) -> CResult<Tensor> {
        let (n, hd) = (x.dim(0)?, self.cfg.head_dim);
        let y = rms_norm(&x.reshape((n, x.dim(1)? / hd, hd))?, w, self.cfg.rms_eps)?;
        y.reshape((n, x.dim(1)?))
    }

    /// The graph: writes the batch's keys and values to `kv`, returns the logits asked for.
    fn run(&self, batch: &Batch, seqs: &[SeqKv], kv: &DeviceKv) -> CResult<Vec<f32>> {
        let c = &self.cfg;
        let (n, d, eps) = (batch.len(), c.dim, c.rms_eps);
        let embed = self.w.embed.matrix(&self.file);
        let mut rows = vec![0.0f32; n * d];
        for (t, row) in rows.chunks_exact_mut(d).enumerate() {
            embed.dequantize_row(batch.tokens[t] as usize, row);
            if let Some(s) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        let mut x = Tensor::from_vec(rows, (n, d), &self.dev)?;
        let plan = Plan::new(c, batch, seqs, &self.dev)?;
        let rope_global = self.rope_table(&batch.pos, c.rope_base)?;
        let rope_local = (c.sliding_window.is_some())
            .then(|| self.rope_table(&batch.pos, c.rope_base_local))
            .transpose()?;

        for (il, l) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &l.attn_norm, eps)?;
            let (mut q, mut k, v) = (l.wq.forward(&h)?, l.wk.forward(&h)?, l.wv.forward(&h)?);
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                q = self.rms_heads(&q, qn)?;
                k = self.rms_heads(&k, kn)?;
            }
            let table = match (&rope_local, c.is_sliding(il)) {
                (Some(t), true) => t,
                _ => &rope_global,
            };
            let q = self.rope(&q, c.n_head, table)?;
            let k = self.rope(&k, c.n_kv_head, table)?;
            kv.write(il, &plan, &k, &v)?;
            let att = attention(c, il, &q, kv, &plan)?;
            let mut o = l.wo.forward(&att)?;
            if let Some(pn) = &l.post_attn_norm {
                o = rms_norm(&o, pn, eps)?;
            }
            x = (x + o)?;

            let h = rms_norm(&x, &l.ffn_norm, eps)?;
            let (g, u) = (l.gate.forward(&h)?, l.up.forward(&h)?);
            let g = match c.activation {
                Activation::Silu => g.silu()?,
                Activation::GeluTanh => g.gelu()?,
            };
            let mut o = l.down.forward(&(g * u)?)?;
            if let Some(pn) = &l.post_ffn_norm {
                o = rms_norm(&o, pn, eps)?;
            }
            x = (x + o)?;
        }

        let wanted: Vec<u32> = (0..n as u32)
            .filter(|&t| batch.logits[t as usize])
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let xs = x.index_select(&Tensor::new(wanted, &self.dev)?, 0)?;
        let mut logits = self
            .output
            .forward(&rms_norm(&xs, &self.output_norm, eps)?)?;
        if let Some(cap) = c.final_softcap {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        logits.flatten_all()?.to_vec1()
    }
}

impl Model for CandleTransformer {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn metadata(&self) -> &Metadata {
        self.file.metadata()
    }

    /// Block bookkeeping only: the keys and values live on the device.
    fn new_pool(&self, max_tokens: usize) -> KvPool {
        KvPool::new(self.cfg.n_layer, 0, max_tokens)
    }

    fn forward(&self, batch: &Batch, pool: &mut KvPool, seqs: &mut [SeqKv]) -> Result<Vec<f32>> {
        batch.check(seqs.len(), &self.cfg)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let kv = DeviceKv::prepare(pool, seqs, batch, &self.cfg, &self.dev)?;
        let logits = self.run(batch, seqs, kv).map_err(device_err)?;
        for (s, seq) in seqs.iter_mut().enumerate() {
            if let Some((_, hi)) = batch.span(s) {
                pool.commit(seq, hi + 1);
            }
        }
        Ok(logits)
    }
}
