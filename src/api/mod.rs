//! The HTTP API: OpenAI-compatible routes plus llama.cpp-style `/tokenize` and `/detokenize`,
//! health, metrics and the generated OpenAPI document. axum lives here and nowhere else.

mod auth;
mod chat;
mod chat_stream;
mod completions;
pub mod error;
mod generation;
pub mod metrics;
mod misc;
mod openapi;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::service::Registry;

pub use error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The served models.
    pub registry: Arc<Registry>,
    /// Accepted API keys (none: no authentication).
    pub api_keys: Arc<Vec<String>>,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
}

impl AppState {
    /// State over a registry.
    pub fn new(registry: Arc<Registry>, api_keys: Vec<String>) -> Self {
        Self {
            registry,
            api_keys: Arc::new(api_keys),
            metrics: Arc::new(metrics::Metrics::default()),
            keep_alive: Duration::from_secs(5),
        }
    }
}

/// The router with every route, authentication, body limit and metrics.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(misc::models))
        .route("/v1/embeddings", post(misc::embeddings))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(misc::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::count_requests,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}
