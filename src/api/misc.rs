//! The smaller routes: `/v1/models`, `/v1/embeddings`, `/tokenize`, `/detokenize`, `/health`,
//! `/metrics`, and the 404 fallback.

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::service::Slot;

use super::error::{ErrorBody, Json};
use super::generation;
use super::types::{DetokenizeRequest, EmbeddingInput, EmbeddingRequest, TokenizeRequest};
use super::{ApiError, AppState};

/// `GET /v1/models`: the models that are loaded.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "Loaded models")))]
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let mut data: Vec<Value> = state
        .registry
        .slots()
        .into_iter()
        .filter_map(|(name, slot)| match slot {
            Slot::Ready(m) => Some(json!({"id": name, "object": "model", "created": m.created, "owned_by": "ward",
                "meta": {"context_length": m.loaded.context_length(), "vocab_size": m.loaded.tokenizer.vocab_size()}})),
            _ => None,
        })
        .collect();
    if let Some(Ok(_)) = state.registry.embedder() {
        data.push(json!({"id": state.registry.embedding_name, "object": "model", "created": 0, "owned_by": "ward"}));
    }
    Json(json!({"object": "list", "data": data}))
}

/// `POST /v1/embeddings`: L2-normalised vectors.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingRequest,
    responses((status = 200, description = "Embeddings"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn embeddings(
    State(state): State<AppState>,
    Json(req): Json<EmbeddingRequest>,
) -> Result<Json<Value>, ApiError> {
    let name = state.registry.embedding_name.clone();
    if let Some(m) = req.model.as_deref().filter(|m| *m != name) {
        return Err(ApiError::ModelNotFound(m.to_string()));
    }
    // The openai SDKs ask for base64 unless told otherwise.
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let msg = format!("`encoding_format` must be `float` or `base64`, got `{other}`");
            return Err(ApiError::invalid("encoding_format", msg));
        }
    };
    let embedder = match state.registry.embedder() {
        None => return Err(ApiError::Loading),
        Some(Err(e)) => {
            return Err(ApiError::Internal(format!(
                "embedding model unavailable: {e}"
            )));
        }
        Some(Ok(e)) => e,
    };
    let (vectors, tokens) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        Ok(match req.input {
            EmbeddingInput::Text(t) => embed_texts(&embedder, vec![t])?,
            EmbeddingInput::Texts(ts) if ts.is_empty() => {
                return Err(ApiError::invalid("input", "`input` must not be empty"));
            }
            EmbeddingInput::Texts(ts) => embed_texts(&embedder, ts)?,
            EmbeddingInput::Tokens(ids) => (
                embedder.embed_tokens(std::slice::from_ref(&ids))?,
                ids.len(),
            ),
            EmbeddingInput::TokenLists(l) => {
                let n = l.iter().map(Vec::len).sum();
                (embedder.embed_tokens(&l)?, n)
            }
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                json!(base64_f32(&v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    ))
}

/// Little-endian `f32` bytes in standard base64 with padding, as OpenAI encodes embeddings.
fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            let c = if k <= chunk.len() {
                ALPHABET[(n >> shift) as usize & 63]
            } else {
                b'='
            };
            out.push(c as char);
        }
    }
    out
}

fn embed_texts(
    e: &crate::engine::embed::Embedder,
    texts: Vec<String>,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let mut tokens = 0;
    for t in &texts {
        tokens += e.count_tokens(t)?;
    }
    Ok((e.embed(&texts)?, tokens))
}

/// `POST /tokenize` (llama.cpp's shape).
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest, responses((status = 200, description = "Token ids")))]
pub async fn tokenize(
    State(state): State<AppState>,
    Json(req): Json<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = generation::find_model(&state, req.model.as_deref())?;
    let ids = model
        .loaded
        .tokenizer
        .encode(&req.content, req.add_special, true);
    if req.with_pieces {
        let tokens: Vec<Value> = ids
            .iter()
            .map(|&id| {
                let bytes = model.loaded.tokenizer.token_bytes(id);
                match String::from_utf8(bytes.clone()) {
                    Ok(s) => json!({"id": id, "piece": s}),
                    Err(_) => json!({"id": id, "piece": bytes}),
                }
            })
            .collect();
        return Ok(Json(json!({"tokens": tokens})));
    }
    Ok(Json(json!({"tokens": ids})))
}

/// `POST /detokenize` (llama.cpp's shape).
#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest, responses((status = 200, description = "Text")))]
pub async fn detokenize(
    State(state): State<AppState>,
    Json(req): Json<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = generation::find_model(&state, req.model.as_deref())?;
    let vocab = model.loaded.tokenizer.vocab_size() as u32;
    if let Some(bad) = req.tokens.iter().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary ({vocab} tokens)"),
        ));
    }
    Ok(Json(
        json!({"content": model.loaded.tokenizer.decode(&req.tokens, false)}),
    ))
}

/// `GET /health`: 200 `{"status":"ok"}` when every model is ready, 503 `loading` before.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Ready"), (status = 503, description = "Loading")))]
pub async fn health(State(state): State<AppState>) -> Response {
    let slots = state.registry.slots();
    let models: Value = slots
        .iter()
        .map(|(n, s)| {
            let st = match s {
                Slot::Loading => "loading",
                Slot::Ready(_) => "ready",
                Slot::Failed(_) => "failed",
            };
            (n.clone(), json!(st))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    if slots.iter().any(|(_, s)| matches!(s, Slot::Loading)) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "loading", "models": models})),
        )
            .into_response();
    }
    if slots.iter().any(|(_, s)| matches!(s, Slot::Failed(_))) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "error", "models": models})),
        )
            .into_response();
    }
    axum::Json(json!({"status": "ok", "models": models})).into_response()
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus metrics")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let (mut depth, mut running, mut cached) = (0, 0, 0);
    for (_, s) in state.registry.slots() {
        if let Slot::Ready(m) = s {
            depth += m.scheduler.queue_depth();
            running += m.scheduler.running();
            cached += m.scheduler.cached_tokens();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(depth, running, cached),
    )
        .into_response()
}

/// Unknown routes: OpenAI-shaped 404.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet() {
        // 1.0f32 = 00 00 80 3f; 2.0f32 = 00 00 00 40.
        assert_eq!(super::base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(super::base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(super::base64_f32(&[]), "");
    }
}
