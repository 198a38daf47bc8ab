//! Locating a transformer's tensors in a GGUF file, checking their shapes once at load time.
//!
//! Matrices stay in the memory map (kept as byte ranges); only the small norm vectors and
//! biases are converted to `f32` up front.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::{GgmlDType, GgufFile};
use crate::engine::kernels::{PackedMatrix, QMatrix};

use super::config::ModelConfig;

/// A weight matrix `[rows, cols]` in the memory map, with an optional bias, and its repacked
/// copy for the fast kernels once it has been built.
#[derive(Clone)]
pub struct Linear {
    /// Block format.
    pub dtype: GgmlDType,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Byte range in the file.
    pub range: Range<usize>,
    /// Bias added to the output.
    pub bias: Option<Vec<f32>>,
    /// The repacked copy, built on first use (shared by clones, e.g. tied embeddings).
    pub packed: Arc<OnceLock<Option<PackedMatrix>>>,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linear")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("range", &self.range)
            .field("bias", &self.bias.is_some())
            .finish()
    }
}

impl Linear {
    /// The matrix as a kernel operand.
    #[inline]
    pub fn matrix<'a>(&self, file: &'a GgufFile) -> QMatrix<'a> {
        QMatrix {
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            data: file.bytes(self.range.clone()),
        }
    }
}

/// One transformer block's weights.
#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// All of a model's weights.
#[derive(Debug)]
pub struct Weights {
    pub embed: Linear,
    pub output: Linear,
    pub output_norm: Vec<f32>,
    pub rope_freqs: Option<Vec<f32>>,
    pub layers: Vec<LayerWeights>,
}

fn bad(name: &str, reason: String) -> EngineError {
    EngineError::BadTensor {
        name: name.to_string(),
        reason,
    }
}

/// Reads a 1-D tensor of `len` values as `f32`.
fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = file.tensor(name)?;
    let n: usize = t.dims.iter().product();
    if n != len {
        return Err(bad(name, format!("expected {len} values, found {n}")));
    }
    let m = QMatrix::new(t.dtype, 1, len, t.data).map_err(|e| bad(name, e))?;
    let mut out = vec![0.0; len];
    m.dequantize_row(0, &mut out);
    Ok(out)
}

fn opt_vector(file: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
    if file.has_tensor(name) {
        vector(file, name, len).map(Some)
    } else {
        Ok(None)
    }
}

/// Locates a `[rows, cols]` matrix and its optional `.bias` sibling.
fn linear(file: &GgufFile, base: &str, rows: usize, cols: usize) -> Result<Linear> {
    let name = format!("{base}.weight");
    let t = file.tensor(&name)?;
    if t.dims != [rows, cols] {
        return Err(bad(
            &name,
            format!("expected shape [{rows}, {cols}], found {:?}", t.dims),
        ));
    }
    QMatrix::new(t.dtype, rows, cols, t.data).map_err(|e| bad(&name, e))?;
    Ok(Linear {
        dtype: t.dtype,
        rows,
        cols,
        range: t.range,
        bias: opt_vector(file, &format!("{base}.bias"), rows)?,
        packed: Arc::new(OnceLock::new()),
    })
}

impl Weights {
    /// Locates and checks every tensor the configuration calls for.
    pub fn load(file: &GgufFile, cfg: &ModelConfig) -> Result<Self> {
        let (d, q, kv, ff) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
        let embed = linear(file, "token_embd", cfg.vocab, d)?;
        let output = if file.has_tensor("output.weight") {
            linear(file, "output", cfg.vocab, d)?
        } else {
            embed.clone()
        };
        let opt =
            |il: usize, n: &str, len: usize| opt_vector(file, &format!("blk.{il}.{n}.weight"), len);
        let req =
            |il: usize, n: &str, len: usize| vector(file, &format!("blk.{il}.{n}.weight"), len);
        let lin =
            |il: usize, n: &str, r: usize, c: usize| linear(file, &format!("blk.{il}.{n}"), r, c);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let hd = cfg.head_dim;
            layers.push(LayerWeights {
                attn_norm: req(il, "attn_norm", d)?,
                wq: lin(il, "attn_q", q, d)?,
                wk: lin(il, "attn_k", kv, d)?,
                wv: lin(il, "attn_v", kv, d)?,
                wo: lin(il, "attn_output", d, q)?,
                q_norm: if cfg.qk_norm {
                    Some(req(il, "attn_q_norm", hd)?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(req(il, "attn_k_norm", hd)?)
                } else {
                    None
                },
                post_attn_norm: if cfg.post_norms {
                    Some(req(il, "post_attention_norm", d)?)
                } else {
                    opt(il, "post_attention_norm", d)?
                },
                ffn_norm: req(il, "ffn_norm", d)?,
                w_gate: lin(il, "ffn_gate", ff, d)?,
                w_up: lin(il, "ffn_up", ff, d)?,
                w_down: lin(il, "ffn_down", d, ff)?,
                post_ffn_norm: if cfg.post_norms {
                    Some(req(il, "post_ffw_norm", d)?)
                } else {
                    opt(il, "post_ffw_norm", d)?
                },
            });
        }
        Ok(Self {
            embed,
            output,
            output_norm: vector(file, "output_norm.weight", d)?,
            rope_freqs: opt_vector(file, "rope_freqs.weight", cfg.rope_dim / 2)?,
            layers,
        })
    }
}
