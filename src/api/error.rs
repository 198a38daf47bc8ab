//! The one error table of the HTTP API: every failure maps to a status and to OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` body, for JSON and SSE alike. Internal details
//! go to the log, not to the client.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::error::EngineError;
use crate::engine::scheduler::SubmitError;

/// Every error the API returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter is missing or out of range.
    #[error("{message}")]
    InvalidRequest {
        /// Human-readable message.
        message: String,
        /// The offending parameter.
        param: Option<String>,
    },
    /// The body is not valid JSON or does not have the expected shape.
    #[error("{0}")]
    BadJson(String),
    /// Prompt plus max_tokens exceeds the context window.
    #[error("{0}")]
    ContextLength(String),
    /// Missing or wrong API key.
    #[error("invalid or missing API key")]
    Unauthorized,
    /// No such model.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The body is too large.
    #[error("the request body is too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    /// The queue is full.
    #[error("the server is busy: the request queue is full; retry shortly")]
    QueueFull,
    /// The model is still loading.
    #[error("the model is loading; retry shortly")]
    Loading,
    /// Something failed inside ward.
    #[error("internal error")]
    Internal(String),
}

/// OpenAI's error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// OpenAI's error object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Human-readable message.
    pub message: String,
    /// Error class (`invalid_request_error`, `authentication_error`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Offending parameter, if any.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 for a named parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// Status, type and code: the table.
    fn table(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        use StatusCode as S;
        match self {
            Self::InvalidRequest { .. } => (
                S::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
            ),
            Self::BadJson(_) => (
                S::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_json"),
            ),
            Self::ContextLength(_) => (
                S::BAD_REQUEST,
                "invalid_request_error",
                Some("context_length_exceeded"),
            ),
            Self::Unauthorized => (
                S::UNAUTHORIZED,
                "authentication_error",
                Some("invalid_api_key"),
            ),
            Self::ModelNotFound(_) => (
                S::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            Self::NotFound(_) => (S::NOT_FOUND, "invalid_request_error", Some("not_found")),
            Self::PayloadTooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("payload_too_large"),
            ),
            Self::QueueFull => (S::TOO_MANY_REQUESTS, "rate_limit_error", Some("queue_full")),
            Self::Loading => (
                S::SERVICE_UNAVAILABLE,
                "server_error",
                Some("model_loading"),
            ),
            Self::Internal(_) => (
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                Some("internal_error"),
            ),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        self.table().0
    }

    /// The OpenAI error body.
    pub fn body(&self) -> ErrorBody {
        let (_, kind, code) = self.table();
        if let Self::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        let param = match self {
            Self::InvalidRequest { param, .. } => param.clone(),
            Self::ContextLength(_) => Some("messages".to_string()),
            Self::ModelNotFound(_) => Some("model".to_string()),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ContextOverflow { .. } => Self::ContextLength(e.to_string()),
            EngineError::InvalidParameter { param, .. } => Self::InvalidRequest {
                message: e.to_string(),
                param: Some(param.to_string()),
            },
            EngineError::Template(_) | EngineError::Tokenizer(_) => Self::InvalidRequest {
                message: e.to_string(),
                param: Some("messages".into()),
            },
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull(_) => Self::QueueFull,
            SubmitError::Stopped => Self::Internal(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge(crate::api::BODY_LIMIT)
            }
            other => Self::BadJson(other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A JSON body extractor whose rejection is an OpenAI-shaped error.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
