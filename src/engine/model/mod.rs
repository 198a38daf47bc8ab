//! The model layer: one [`Model`] trait that every backend implements, the [`Batch`] a forward
//! pass consumes, and [`load`], which picks the implementation from `general.architecture`
//! ([`load_on`] also picks the device: ward's own CPU engine, or candle's CUDA or CPU backend).

mod attention;
pub mod candle_backend;
pub mod config;
pub mod kv;
mod pieces;
mod transformer;
mod weights;

use std::path::Path;

pub use candle_backend::CandleTransformer;
pub use config::{Arch, ModelConfig};
pub use kv::{KvPool, SeqKv};
pub use transformer::{PIECE, Transformer};

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::{GgufFile, Metadata};

/// Tokens to run through the model in one forward pass, like llama.cpp's `llama_batch`:
/// each token has a position and belongs to one sequence (an index into the `seqs` slice given to
/// [`Model::forward`]); `logits` marks the tokens whose next-token logits are wanted.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence.
    pub pos: Vec<usize>,
    /// Sequence of each token.
    pub seq: Vec<usize>,
    /// Whether to return logits after each token.
    pub logits: Vec<bool>,
}

impl Batch {
    /// Appends one token.
    pub fn push(&mut self, token: u32, pos: usize, seq: usize, logits: bool) {
        self.tokens.push(token);
        self.pos.push(pos);
        self.seq.push(seq);
        self.logits.push(logits);
    }

    /// A batch holding one sequence's tokens from position `start`, asking for the last logits.
    pub fn single(tokens: &[u32], start: usize) -> Self {
        let mut b = Self::default();
        for (i, &t) in tokens.iter().enumerate() {
            b.push(t, start + i, 0, i + 1 == tokens.len());
        }
        b
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many sequences bring tokens to the batch.
    pub fn sequences(&self) -> usize {
        let mut seen: Vec<usize> = self.seq.clone();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    /// Lowest and highest position of sequence `s` in this batch.
    pub fn span(&self, s: usize) -> Option<(usize, usize)> {
        let mut it = self
            .seq
            .iter()
            .zip(&self.pos)
            .filter(|(q, _)| **q == s)
            .map(|(_, &p)| p);
        let first = it.next()?;
        Some(it.fold((first, first), |(lo, hi), p| (lo.min(p), hi.max(p))))
    }

    /// Rejects malformed batches before they reach the kernels.
    pub fn check(&self, n_seqs: usize, cfg: &ModelConfig) -> Result<()> {
        let n = self.tokens.len();
        if self.pos.len() != n || self.seq.len() != n || self.logits.len() != n {
            return Err(invalid(
                "batch",
                "tokens, positions, sequences and logits differ in length".into(),
            ));
        }
        if let Some(&t) = self.tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(invalid(
                "tokens",
                format!("token id {t} is outside the vocabulary of {}", cfg.vocab),
            ));
        }
        if let Some(&s) = self.seq.iter().find(|&&s| s >= n_seqs) {
            return Err(invalid("batch", format!("sequence {s} does not exist")));
        }
        if let Some(&p) = self.pos.iter().find(|&&p| p >= cfg.context_length) {
            return Err(invalid(
                "batch",
                format!(
                    "position {p} is beyond the context length {}",
                    cfg.context_length
                ),
            ));
        }
        Ok(())
    }
}

fn invalid(param: &'static str, reason: String) -> EngineError {
    EngineError::InvalidParameter { param, reason }
}

/// A language model that can run a forward pass over a batch. The CPU [`Transformer`] and the
/// [`CandleTransformer`] implement it; the KV cache lives outside the model so that one model
/// serves many sequences.
pub trait Model: Send + Sync {
    /// The model's shape.
    fn config(&self) -> &ModelConfig;

    /// The GGUF metadata it was loaded from (tokenizer, template).
    fn metadata(&self) -> &Metadata;

    /// A KV pool sized for `max_tokens` positions over all sequences.
    fn new_pool(&self, max_tokens: usize) -> KvPool {
        let c = self.config();
        KvPool::new(c.n_layer, c.kv_dim(), max_tokens).with_head_dim(c.head_dim)
    }

    /// Runs the batch, appending its keys and values to the sequences' caches, and returns the
    /// logits of the tokens marked in `batch.logits`, in batch order, `vocab` floats each.
    fn forward(&self, batch: &Batch, pool: &mut KvPool, seqs: &mut [SeqKv]) -> Result<Vec<f32>>;
}

/// Opens a GGUF file and builds the model named by its `general.architecture`.
pub fn load(path: &Path) -> Result<Box<dyn Model>> {
    let file = GgufFile::open(path)?;
    let arch = file.metadata().architecture()?;
    Arch::parse(arch)?;
    Ok(Box::new(Transformer::new(file)?))
}

/// Like [`load`], on the device named by `device` (`WARD_DEVICE`): `cpu` is ward's own engine;
/// `cuda`, `cuda:N` and `candle-cpu` run [`CandleTransformer`] on that candle device.
pub fn load_on(path: &Path, device: &str) -> Result<Box<dyn Model>> {
    match device.trim() {
        "" | "cpu" => load(path),
        spec => {
            let dev = candle_backend::device(spec)?;
            let file = GgufFile::open(path)?;
            Arch::parse(file.metadata().architecture()?)?;
            Ok(Box::new(CandleTransformer::new(file, dev)?))
        }
    }
}
