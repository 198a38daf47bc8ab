//! In-process integration tests of the HTTP API: the real router over the real model
//! (smollm2-135m-instruct) and embedder (all-minilm-l6-v2), driven with
//! `tower::ServiceExt::oneshot`. One module per resource; errors and concurrency have their own.

#[path = "common/mod.rs"]
mod common;

#[path = "api/chat.rs"]
mod chat;
#[path = "api/chat_output.rs"]
mod chat_output;
#[path = "api/chat_tools.rs"]
mod chat_tools;
#[path = "api/completions.rs"]
mod completions;
#[path = "api/concurrency.rs"]
mod concurrency;
#[path = "api/errors.rs"]
mod errors;
#[path = "api/misc.rs"]
mod misc;
