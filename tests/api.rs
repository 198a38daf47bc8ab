//! In-process integration tests of the HTTP API: the real router over the real model
//! (smollm2-135m-instruct) and embedder (all-minilm-l6-v2), driven with
//! `tower::ServiceExt::oneshot`. One module per resource; errors and concurrency have their own.

#[path = "common/mod.rs"]
mod common;

mod chat;
mod chat_tools;
mod completions;
mod concurrency;
mod errors;
mod misc;
