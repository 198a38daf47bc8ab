//! The engine's error type: every way loading a model, tokenizing, templating or generating can fail.

use std::path::PathBuf;

/// Errors raised by the engine layer. Messages name the problem precisely (file, key, type),
/// because they reach operators who have to fix a model file or a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not a well-formed GGUF file (bad magic, truncated, inconsistent tensors).
    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf {
        /// File involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A required metadata key is absent.
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(String),
    /// A metadata key holds a value of an unexpected type.
    #[error("GGUF metadata key `{key}` should be {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// Expected type, in words.
        expected: &'static str,
    },
    /// A required tensor is absent.
    #[error("GGUF tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor has a shape or type the model cannot use.
    #[error("GGUF tensor `{name}`: {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `general.architecture` names an architecture ward does not implement.
    #[error("unsupported architecture `{0}` (ward runs llama, qwen2, qwen3 and gemma3)")]
    UnsupportedArchitecture(String),
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A request does not fit the model's context window.
    #[error(
        "the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the context length of {context} tokens"
    )]
    ContextOverflow {
        /// Prompt length in tokens.
        prompt: usize,
        /// Requested completion length.
        max_tokens: usize,
        /// Model context length.
        context: usize,
    },
    /// Invalid generation parameters.
    #[error("invalid parameter `{param}`: {reason}")]
    InvalidParameter {
        /// Parameter name.
        param: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The compute device (`WARD_DEVICE`) is unknown or unavailable, or an operation on it failed.
    #[error("device: {0}")]
    Device(String),
}

/// Result type of the engine layer.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
