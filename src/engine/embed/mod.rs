//! Sentence embeddings for `POST /v1/embeddings`: a BERT encoder in sentence-transformers layout
//! (all-MiniLM-L6-v2: Reimers & Gurevych, "Sentence-BERT", 2019; Wang et al., "MiniLM", 2020).
//!
//! The encoder is candle's `BertModel` on the CPU. A sentence vector is the mean of the last
//! hidden states over the attention mask, L2-normalised. Inputs are sorted by length and run in
//! right-padded batches; an input longer than the model's `max_seq_length` is an error, never
//! silently truncated.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::engine::error::{EngineError, Result};

#[cfg(test)]
mod tests;

/// Most sequences in one forward pass.
const MAX_BATCH: usize = 32;
/// Most padded tokens (batch × longest sequence) in one forward pass, to bound activation memory.
const MAX_BATCH_TOKENS: usize = 8192;

/// A loaded sentence-embedding model. Immutable after loading, so one instance can serve
/// concurrent callers (`Send + Sync`).
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimensions: usize,
    max_tokens: usize,
    vocab_size: usize,
    cls: u32,
    sep: u32,
}

/// `1_Pooling/config.json`.
#[derive(Deserialize)]
struct Pooling {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// `sentence_bert_config.json` (optional).
#[derive(Deserialize)]
struct SentenceBert {
    max_seq_length: Option<usize>,
}

impl Embedder {
    /// Loads a sentence-transformers model directory: `config.json`, `1_Pooling/config.json`,
    /// `tokenizer.json`, `model.safetensors` and, when present, `sentence_bert_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let config: Config = read_json(&dir.join("config.json"))?;
        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling: Pooling = read_json(&pooling_path)?;
        if !pooling.pooling_mode_mean_tokens
            || pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
            || pooling.pooling_mode_mean_sqrt_len_tokens
        {
            return Err(invalid(
                &pooling_path,
                "only plain mean pooling is supported",
            ));
        }
        if pooling.word_embedding_dimension != config.hidden_size {
            let reason = format!(
                "word_embedding_dimension {} differs from hidden_size {} in config.json",
                pooling.word_embedding_dimension, config.hidden_size
            );
            return Err(invalid(&pooling_path, &reason));
        }
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq = if st_path.exists() {
            read_json::<SentenceBert>(&st_path)?.max_seq_length
        } else {
            None
        };
        let max_tokens = max_seq.map_or(config.max_position_embeddings, |m| {
            m.min(config.max_position_embeddings)
        });

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        // The file asks for truncation and fixed padding to 128; lengths are checked and
        // batches padded here instead.
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        tokenizer.with_padding(None);
        let special = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                EngineError::Tokenizer(format!("{}: no `{t}` token", tok_path.display()))
            })
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);

        let device = Device::Cpu;
        let weights_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|source| EngineError::Io {
            path: weights_path.clone(),
            source,
        })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
            .map_err(|e| invalid(&weights_path, &e.to_string()))?;
        drop(bytes);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model =
            BertModel::load(vb, &config).map_err(|e| invalid(&weights_path, &e.to_string()))?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dimensions: config.hidden_size,
            max_tokens,
            vocab_size: config.vocab_size,
            cls,
            sep,
        })
    }

    /// Length of every embedding vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Most tokens in one input, counted as [`count_tokens`](Self::count_tokens) does.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokens the model processes for `text`, including its `[CLS]` and `[SEP]`: the number
    /// compared with [`max_tokens`](Self::max_tokens) and the one to report as usage.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode(&[text])?[0].len())
    }

    /// Embeds each text; the vectors are L2-normalised and in input order.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let seqs = self.encode(&texts)?;
        self.embed_sequences(&seqs)
    }

    /// Embeds pre-tokenized inputs. Each is a list of content token ids from this model's
    /// vocabulary, without special tokens: `[CLS]` and `[SEP]` are added here, as for text.
    pub fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut seqs = Vec::with_capacity(ids.len());
        for (i, content) in ids.iter().enumerate() {
            if content.is_empty() {
                return Err(bad_input(format!("input {i} is an empty token list")));
            }
            if let Some(&id) = content.iter().find(|&&id| id as usize >= self.vocab_size) {
                let n = self.vocab_size;
                return Err(bad_input(format!(
                    "input {i} holds token id {id}, outside this model's vocabulary of {n}"
                )));
            }
            let mut seq = Vec::with_capacity(content.len() + 2);
            seq.push(self.cls);
            seq.extend_from_slice(content);
            seq.push(self.sep);
            seqs.push(seq);
        }
        self.embed_sequences(&seqs)
    }

    /// Tokenizes texts with special tokens, rejecting empty texts.
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        if let Some(i) = texts.iter().position(|t| t.is_empty()) {
            return Err(bad_input(format!("input {i} is an empty string")));
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// Checks lengths, then runs length-sorted padded batches and restores input order.
    fn embed_sequences(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if let Some((i, s)) = seqs
            .iter()
            .enumerate()
            .find(|(_, s)| s.len() > self.max_tokens)
        {
            return Err(bad_input(format!(
                "input {i} is {} tokens; this model accepts at most {}",
                s.len(),
                self.max_tokens
            )));
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![Vec::new(); seqs.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted ascending, so the last member of a batch is its longest.
            let mut end = start + 1;
            while end < order.len()
                && end - start < MAX_BATCH
                && (end - start + 1) * seqs[order[end]].len() <= MAX_BATCH_TOKENS
            {
                end += 1;
            }
            let batch: Vec<&[u32]> = order[start..end].iter().map(|&i| &seqs[i][..]).collect();
            let vectors = self.forward(&batch).map_err(compute_error)?;
            for (&i, v) in order[start..end].iter().zip(vectors) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }

    /// One padded forward pass, mean pooling over the mask and L2 normalisation.
    fn forward(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        for seq in batch {
            ids.extend_from_slice(seq);
            ids.resize(ids.len() + len - seq.len(), 0);
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.resize(mask.len() + len - seq.len(), 0);
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let mean = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        mean.broadcast_div(&norm)?.to_vec2()
    }
}

/// Reads and parses a JSON file, naming the file in any error.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| invalid(path, &e.to_string()))
}

/// A file that exists but whose content is unusable.
fn invalid(path: &Path, reason: &str) -> EngineError {
    EngineError::Io {
        path: PathBuf::from(path),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_owned()),
    }
}

fn bad_input(reason: String) -> EngineError {
    EngineError::InvalidParameter {
        param: "input",
        reason,
    }
}

/// A failure inside the forward pass: weights and inputs were checked, so this is internal.
fn compute_error(e: candle_core::Error) -> EngineError {
    EngineError::BadTensor {
        name: "embedding forward pass".to_owned(),
        reason: e.to_string(),
    }
}

/// One embedder serves concurrent requests.
const _: fn() = || {
    fn check<T: Send + Sync>() {}
    check::<Embedder>();
};
