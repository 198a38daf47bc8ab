//! The inference engine: GGUF loading, tokenizer, chat templates, model graph, kernels,
//! sampling and the generation loop. Nothing here knows about HTTP.

pub mod embed;
pub mod constrain;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod sampler;
pub mod template;
pub mod tokenizer;
pub mod generate;
pub mod stream;
pub mod loaded;
pub mod scheduler;
