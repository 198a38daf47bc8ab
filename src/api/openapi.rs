//! `GET /openapi.json`: the OpenAPI document, generated from the handlers and wire types.

use axum::Json;
use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail};
use super::types::*;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ward",
        description = "OpenAI-compatible API of ward, a private LLM appliance for security operations."
    ),
    paths(
        super::chat::chat_completions,
        super::completions::completions,
        super::misc::models,
        super::misc::embeddings,
        super::misc::tokenize,
        super::misc::detokenize,
        super::misc::health,
        super::misc::metrics
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ChatCompletionRequest,
        CompletionRequest,
        EmbeddingRequest,
        TokenizeRequest,
        DetokenizeRequest,
        Tool,
        FunctionDef,
        ResponseFormat,
        JsonSchemaFormat,
        StopSpec,
        StreamOptions,
        PromptSpec,
        EmbeddingInput,
        SamplingFields
    ))
)]
pub struct ApiDoc;

/// The handler.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
