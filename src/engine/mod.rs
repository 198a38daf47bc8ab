//! The inference engine: GGUF loading, tokenizer, chat templates, model graph, kernels,
//! sampling and the generation loop. Nothing here knows about HTTP.

pub mod constrain;
pub mod embed;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod loaded;
pub mod model;
pub mod sampler;
pub mod scheduler;
pub mod stream;
pub mod template;
pub mod tokenizer;
