//! A model ready to serve: the network, its tokenizer and its chat template, all built from one
//! GGUF file.

use std::path::Path;
use std::time::Instant;

use crate::engine::error::Result;
use crate::engine::model::{self, Model};
use crate::engine::template::ChatTemplate;
use crate::engine::tokenizer::Tokenizer;

/// Everything needed to turn a chat into tokens and tokens into text.
pub struct LoadedModel {
    /// The network.
    pub model: Box<dyn Model>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template (or the plain fallback).
    pub template: ChatTemplate,
    /// Seconds it took to load.
    pub load_seconds: f64,
}

impl LoadedModel {
    /// Loads a GGUF file on the device named by `WARD_DEVICE` (`cpu`, the default: ward's own
    /// engine; `cuda`, `cuda:N` or `candle-cpu`: the candle backend). A model without
    /// `tokenizer.chat_template` gets the plain fallback template, with a warning.
    pub fn open(path: &Path) -> Result<Self> {
        let start = Instant::now();
        let device = std::env::var("WARD_DEVICE").unwrap_or_else(|_| "cpu".into());
        tracing::info!(path = %path.display(), device = %device, "loading model");
        let model = model::load_on(path, &device)?;
        let md = model.metadata();
        let tokenizer = Tokenizer::from_gguf(md)?;
        let piece = |id: Option<u32>| {
            id.map(|i| tokenizer.piece(i).to_string())
                .unwrap_or_default()
        };
        let (bos, eos) = (piece(tokenizer.bos()), piece(tokenizer.eos()));
        let template = match md.opt_str("tokenizer.chat_template")? {
            Some(src) => ChatTemplate::new(src, &bos, &eos)?,
            None => {
                tracing::warn!(
                    path = %path.display(),
                    "the model has no chat template; using ward's plain fallback template"
                );
                ChatTemplate::fallback(&bos, &eos)
            }
        };
        Ok(Self {
            model,
            tokenizer,
            template,
            load_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The model's context length.
    pub fn context_length(&self) -> usize {
        self.model.config().context_length
    }
}
