//! Hyper-parameters of a decoder-only transformer, read from GGUF metadata.
//!
//! The four supported families differ only in the switches below (norm placement, QKV bias,
//! per-head Q/K norms, RoPE layout and bases, activation, sliding windows); one transformer
//! implementation reads them as data.

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::Metadata;

/// Model family, from `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM.
    Llama,
    /// Qwen2 / Qwen2.5.
    Qwen2,
    /// Qwen3.
    Qwen3,
    /// Gemma 3.
    Gemma3,
}

impl Arch {
    /// Parses `general.architecture`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" | "mistral" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU-gated (SwiGLU).
    Silu,
    /// tanh-approximated GELU, gated (GeGLU).
    GeluTanh,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Family.
    pub arch: Arch,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub dim: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub ffn_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Trained context length.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Number of leading dimensions of each head that RoPE rotates.
    pub rope_dim: usize,
    /// RoPE base for global-attention layers.
    pub rope_base: f32,
    /// RoPE base for sliding-window layers (Gemma 3).
    pub rope_base_local: f32,
    /// Linear RoPE scaling factor (positions are divided by it).
    pub rope_scale: f32,
    /// NeoX layout (rotate halves) rather than adjacent pairs.
    pub rope_neox: bool,
    /// Sliding-window size, for the layers that use one.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer is global when sliding windows are used (Gemma 3: 6).
    pub sliding_pattern: usize,
    /// Per-head RMSNorm on Q and K (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Extra norms after attention and feed-forward (Gemma).
    pub post_norms: bool,
    /// Multiply embeddings by this (Gemma: sqrt(dim)).
    pub embed_scale: Option<f32>,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Scale applied to attention scores.
    pub attn_scale: f32,
    /// Soft-cap of the final logits, if any.
    pub final_softcap: Option<f32>,
}

impl ModelConfig {
    /// Reads the configuration; every missing key is reported by name.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let arch_name = md.architecture()?.to_string();
        let arch = Arch::parse(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let dim = md.usize(&key("embedding_length"))?;
        let n_head = md.usize(&key("attention.head_count"))?;
        let n_kv_head = md
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head);
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(EngineError::WrongType {
                key: key("attention.head_count_kv"),
                expected: "a non-zero divisor of attention.head_count",
            });
        }
        let head_dim = md
            .opt_usize(&key("attention.key_length"))?
            .unwrap_or(dim / n_head);
        let rope_dim = md
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        let gemma = arch == Arch::Gemma3;
        let sliding_window = md.opt_usize(&key("attention.sliding_window"))?;
        let rope_scale = match md.opt_str(&key("rope.scaling.type"))? {
            Some("linear") => md.opt_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0),
            _ => 1.0,
        };
        Ok(Self {
            arch,
            n_layer: md.usize(&key("block_count"))?,
            dim,
            n_head,
            n_kv_head,
            head_dim,
            ffn_dim: md.usize(&key("feed_forward_length"))?,
            vocab: md.opt_usize(&key("vocab_size"))?.map_or_else(
                || md.str_array("tokenizer.ggml.tokens").map(|t| t.len()),
                Ok,
            )?,
            context_length: md.usize(&key("context_length"))?,
            rms_eps: md.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_dim,
            rope_base: md.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_base_local: if gemma { 10_000.0 } else { 0.0 },
            rope_scale,
            rope_neox: arch != Arch::Llama,
            sliding_window: if gemma { sliding_window } else { None },
            sliding_pattern: if gemma { 6 } else { 1 },
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            post_norms: gemma,
            embed_scale: gemma.then(|| (dim as f32).sqrt()),
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            final_softcap: md.opt_f32(&key("final_logit_softcapping"))?,
        })
    }

    /// Whether layer `il` uses a sliding window (Gemma 3: all but every sixth layer).
    pub fn is_sliding(&self, il: usize) -> bool {
        self.sliding_window.is_some() && !(il + 1).is_multiple_of(self.sliding_pattern)
    }

    /// Width of the key (and value) projection.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// RoPE cosines and sines for each position, `[pos.len() * rope_dim / 2]` each, for one base;
/// `freqs` are the optional per-dimension divisors of Llama 3 (`rope_freqs.weight`). Shared by
/// every backend so that they rotate identically.
///
/// The angles are built as llama.cpp builds them, `θ_{j+1} = θ_j · base^(-2/d)` from `θ_0 = pos`
/// in `f32`, so that ward's rotated keys round to the same halves in the cache.
pub fn rope_cos_sin(
    cfg: &ModelConfig,
    freqs: Option<&[f32]>,
    pos: &[usize],
    base: f32,
) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.rope_dim / 2;
    let step = base.powf(-2.0 / cfg.rope_dim as f32);
    let freq_scale = 1.0 / cfg.rope_scale;
    let (mut cos, mut sin) = (
        Vec::with_capacity(pos.len() * half),
        Vec::with_capacity(pos.len() * half),
    );
    for &p in pos {
        let mut theta = p as f32;
        for j in 0..half {
            let t = freq_scale * freqs.map_or(theta, |d| theta / d[j]);
            cos.push(t.cos());
            sin.push(t.sin());
            theta *= step;
        }
    }
    (cos, sin)
}
