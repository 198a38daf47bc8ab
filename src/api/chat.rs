//! `POST /v1/chat/completions`: chat with tools, structured output, logprobs and `n` choices.
//! The request is validated into a [`Plan`] once; streaming lives in [`super::chat_stream`].

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::engine::constrain::ConstraintSpec;
use crate::engine::sampler::TokenLogprob;
use crate::engine::template::ChatMessage;
use crate::service::{ServedModel, chat as chat_service, tools};

use super::chat_stream;
use super::error::Json;
use super::generation::{self, Collected, Valid};
use super::types::{ChatCompletionRequest, ResponseFormat};
use super::{ApiError, AppState};

/// How tools may be used in this request.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ToolMode {
    Off,
    Auto,
    Forced(Vec<String>),
}

/// The request after validation.
pub(super) struct Plan {
    pub(super) valid: Valid,
    messages: Vec<ChatMessage>,
    tools: Vec<Value>,
    pub(super) mode: ToolMode,
    pub(super) parallel: bool,
    pub(super) logprobs: Option<usize>,
    constraint: Option<ConstraintSpec>,
}

fn plan(req: &ChatCompletionRequest) -> Result<Plan, ApiError> {
    let valid = generation::validate(&req.sampling)?;
    if valid.max_tokens == Some(0) {
        let p = valid.max_tokens_param;
        return Err(ApiError::invalid(p, format!("`{p}` must be at least 1")));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            serde_json::from_value::<ChatMessage>(m.clone())
                .map_err(|e| ApiError::invalid("messages", format!("messages[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(k)) if !(0..=20).contains(&k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` must be between 0 and 20",
            ));
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ));
        }
        (false, None) => None,
    };
    let tools: Vec<Value> = req
        .tools
        .iter()
        .flatten()
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .collect();
    let names: Vec<String> = req
        .tools
        .iter()
        .flatten()
        .map(|t| t.function.name.clone())
        .collect();
    let mode = match &req.tool_choice {
        _ if tools.is_empty() => {
            if matches!(&req.tool_choice, Some(Value::String(s)) if s == "required")
                || matches!(&req.tool_choice, Some(Value::Object(_)))
            {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` needs `tools`",
                ));
            }
            ToolMode::Off
        }
        None => ToolMode::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolMode::Auto,
            "none" => ToolMode::Off,
            "required" => ToolMode::Forced(names.clone()),
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("unknown tool_choice `{other}`"),
                ));
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice",
                        "expected {\"type\":\"function\",\"function\":{\"name\":...}}",
                    )
                })?;
            if !names.iter().any(|n| n == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("no tool named `{name}`"),
                ));
            }
            ToolMode::Forced(vec![name.to_string()])
        }
        Some(_) => return Err(ApiError::invalid("tool_choice", "invalid `tool_choice`")),
    };
    let parallel = req.parallel_tool_calls.unwrap_or(true);
    let constraint = match (&mode, &req.response_format) {
        (ToolMode::Forced(chosen), _) => {
            let funcs: Vec<tools::CallSpec> = req
                .tools
                .iter()
                .flatten()
                .filter(|t| chosen.contains(&t.function.name))
                .map(|t| tools::CallSpec {
                    name: &t.function.name,
                    parameters: t.function.parameters.as_ref(),
                    strict: t.function.strict.unwrap_or(false),
                })
                .collect();
            Some(ConstraintSpec::Lark(tools::forced_call_grammar(
                &funcs, parallel,
            )))
        }
        (_, Some(ResponseFormat::JsonObject)) => Some(ConstraintSpec::JsonObject),
        (_, Some(ResponseFormat::JsonSchema { json_schema })) => {
            if !json_schema.schema.is_object() {
                return Err(ApiError::invalid(
                    "response_format",
                    "`json_schema.schema` must be an object",
                ));
            }
            Some(ConstraintSpec::JsonSchema {
                schema: json_schema.schema.clone(),
                strict: json_schema.strict.unwrap_or(true),
            })
        }
        _ => None,
    };
    Ok(Plan {
        valid,
        messages,
        tools,
        mode,
        parallel,
        logprobs,
        constraint,
    })
}

/// The handler.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, description = "A chat completion, or an SSE stream of chunks"), (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    Json(req): Json<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let plan = plan(&req)?;
    let model = generation::find_model(&state, req.model.as_deref())?;
    let prompt = {
        let (m, msgs) = (model.clone(), plan.messages.clone());
        let tools = (plan.mode != ToolMode::Off).then(|| plan.tools.clone());
        tokio::task::spawn_blocking(move || {
            chat_service::chat_prompt(&m.loaded, &msgs, tools.as_deref())
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
    };
    let bound = match &plan.constraint {
        Some(spec) => Some(generation::bind_constraint(&model, spec.clone()).await?),
        None => None,
    };
    let mut reqs = Vec::with_capacity(plan.valid.n);
    for i in 0..plan.valid.n {
        let mut r = generation::request(&model, prompt.clone(), &plan.valid, i, plan.logprobs)?;
        r.constraint = bound.clone();
        reqs.push(r);
    }
    let receivers = generation::submit_all(&state, &model, reqs)?;
    let id = generation::new_id("chatcmpl");
    if plan.valid.stream {
        let stream = chat_stream::Stream {
            state,
            model,
            plan,
            id,
            start,
        };
        return Ok(stream.respond(receivers).into_response());
    }
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (prompt.len(), 0);
    for (i, rx) in receivers.into_iter().enumerate() {
        let c = generation::collect(&state, rx, start).await?;
        prompt_tokens = c.prompt_tokens.max(prompt_tokens);
        completion_tokens += c.tokens.len();
        choices.push(choice_json(&model, &plan, i, c));
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": generation::unix_now(),
        "model": model.name,
        "system_fingerprint": fingerprint(),
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

pub(super) fn fingerprint() -> String {
    format!("ward-{}", env!("CARGO_PKG_VERSION"))
}

pub(super) fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

pub(super) fn tool_calls_json(calls: &[tools::ParsedCall]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| json!({"id": generation::new_id("call"), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

fn choice_json(model: &ServedModel, plan: &Plan, index: usize, c: Collected) -> Value {
    let finish = c.finish.map(|f| f.as_str()).unwrap_or("stop");
    let (content, calls) = if plan.mode == ToolMode::Off {
        (c.text.clone(), Vec::new())
    } else {
        tools::parse_calls(&c.text)
    };
    let calls = if plan.parallel {
        calls
    } else {
        calls.into_iter().take(1).collect()
    };
    let mut message = json!({"role": "assistant", "content": if calls.is_empty() { Value::String(content) } else if content.is_empty() { Value::Null } else { Value::String(content) }});
    let finish = if calls.is_empty() {
        finish
    } else {
        message["tool_calls"] = Value::Array(tool_calls_json(&calls));
        "tool_calls"
    };
    json!({
        "index": index,
        "message": message,
        "logprobs": plan.logprobs.map(|_| json!({"content": c.logprobs.iter().map(|(t, lp)| logprob_json(model, *t, lp)).collect::<Vec<_>>()})),
        "finish_reason": finish,
    })
}

pub(super) fn logprob_json(model: &ServedModel, token: u32, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let text = generation::token_text(model, id);
        json!({"token": text, "logprob": logprob, "bytes": model.loaded.tokenizer.token_bytes(id)})
    };
    let mut v = entry(token, lp.logprob);
    v["top_logprobs"] = Value::Array(lp.top.iter().map(|&(id, l)| entry(id, l)).collect());
    v
}
