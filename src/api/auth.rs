//! API-key authentication (`Authorization: Bearer KEY`, compared in constant time) and the
//! request counter middleware.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Rejects requests without a valid key when keys are configured.
pub async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.api_keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    // Compare against every key, without an early exit, so timing reveals nothing.
    let mut ok = subtle::Choice::from(0u8);
    for key in state.api_keys.iter() {
        ok |= key.as_bytes().ct_eq(given.as_bytes());
    }
    if bool::from(ok) && !given.is_empty() {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Counts every response by route and status.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.uri().path().to_string();
    let known = matches!(
        route.as_str(),
        "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/models"
            | "/v1/embeddings"
            | "/tokenize"
            | "/detokenize"
            | "/health"
            | "/metrics"
            | "/openapi.json"
    );
    let resp = next.run(req).await;
    state
        .metrics
        .request(if known { &route } else { "other" }, resp.status().as_u16());
    resp
}
