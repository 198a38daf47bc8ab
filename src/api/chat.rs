//! `POST /v1/chat/completions`: chat with tools, structured output, logprobs, `n` choices, and
//! streaming by server-sent events (role delta first, keep-alive comments during prefill,
//! index-keyed tool-call deltas, a usage chunk, then `[DONE]`).

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::constrain::{BoundConstraint, ConstraintSpec};
use crate::engine::sampler::TokenLogprob;
use crate::engine::scheduler::SeqEvent;
use crate::engine::template::ChatMessage;
use crate::service::{ServedModel, chat as chat_service, tools};

use super::error::Json;
use super::generation::{self, Collected, Timer, Valid};
use super::types::{ChatCompletionRequest, ResponseFormat};
use super::{ApiError, AppState};

/// How tools may be used in this request.
#[derive(Debug, Clone, PartialEq)]
enum ToolMode {
    Off,
    Auto,
    Forced(Vec<String>),
}

/// The request after validation.
struct Plan {
    valid: Valid,
    messages: Vec<ChatMessage>,
    tools: Vec<Value>,
    mode: ToolMode,
    parallel: bool,
    logprobs: Option<usize>,
    constraint: Option<ConstraintSpec>,
}

fn plan(req: &ChatCompletionRequest) -> Result<Plan, ApiError> {
    let valid = generation::validate(&req.sampling)?;
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
            let funcs: Vec<(String, Option<Value>)> = req
                .tools
                .iter()
                .flatten()
                .filter(|t| chosen.contains(&t.function.name))
                .map(|t| (t.function.name.clone(), t.function.parameters.clone()))
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
        Some(spec) => {
            let env = model.constraint_env().map_err(ApiError::Internal)?;
            Some(BoundConstraint {
                spec: spec.clone(),
                env,
            })
        }
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
        return Ok(stream(state, model, plan, receivers, id).into_response());
    }
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (prompt.len(), 0);
    for (i, rx) in receivers.into_iter().enumerate() {
        let c = generation::collect(&state, rx).await?;
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

fn fingerprint() -> String {
    format!("ward-{}", env!("CARGO_PKG_VERSION"))
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn tool_calls_json(calls: &[tools::ParsedCall]) -> Vec<Value> {
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

fn logprob_json(model: &ServedModel, token: u32, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let text = generation::token_text(model, id);
        json!({"token": text, "logprob": logprob, "bytes": model.loaded.tokenizer.token_bytes(id)})
    };
    let mut v = entry(token, lp.logprob);
    v["top_logprobs"] = Value::Array(lp.top.iter().map(|&(id, l)| entry(id, l)).collect());
    v
}

/// Per-choice streaming state.
struct ChoiceState {
    held: String,
    holding: bool,
    timer: Timer,
    tokens: usize,
    prompt: usize,
    done: bool,
}

fn stream(
    state: AppState,
    model: std::sync::Arc<ServedModel>,
    plan: Plan,
    receivers: Vec<tokio::sync::mpsc::UnboundedReceiver<SeqEvent>>,
    id: String,
) -> impl IntoResponse {
    let created = generation::unix_now();
    let n = receivers.len();
    let keep_alive = state.keep_alive;
    let include_usage = plan.valid.include_usage;
    let merged = futures::stream::select_all(
        receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |ev| (i, ev))),
    );
    let chunk = {
        let (id, name) = (id.clone(), model.name.clone());
        move |choices: Value, usage: Option<Value>| {
            let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": name, "system_fingerprint": fingerprint(), "choices": choices});
            if include_usage {
                v["usage"] = usage.unwrap_or(Value::Null);
            }
            Event::default().data(v.to_string())
        }
    };
    let first: Vec<Result<Event, Infallible>> = (0..n)
        .map(|i| Ok(chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None)))
        .collect();
    let tools_on = plan.mode != ToolMode::Off;
    let mut states: Vec<ChoiceState> = (0..n)
        .map(|_| ChoiceState {
            held: String::new(),
            holding: tools_on,
            timer: Timer::new(),
            tokens: 0,
            prompt: 0,
            done: false,
        })
        .collect();
    let body = merged.map(move |(i, ev)| {
        let mut out = Vec::new();
        let s = &mut states[i];
        match ev {
            SeqEvent::Started { prompt, .. } => s.prompt = prompt,
            SeqEvent::Error(e) => {
                let err = ApiError::from(e);
                out.push(Event::default().data(json!(err.body()).to_string()));
                s.done = true;
            }
            SeqEvent::Token(t) => {
                s.timer.token(&state);
                s.tokens += 1;
                let lp = plan.logprobs.and_then(|_| t.logprob.as_ref().map(|lp| json!({"content": [logprob_json(&model, t.token, lp)]})));
                let mut text = t.text.clone();
                if s.holding {
                    s.held.push_str(&text);
                    text.clear();
                    if !tools::may_be_call(&s.held) {
                        s.holding = false;
                        text = std::mem::take(&mut s.held);
                    }
                }
                if !text.is_empty() || (lp.is_some() && !s.holding) {
                    out.push(chunk(json!([{"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]), None));
                }
                if let Some(f) = t.finish {
                    let mut finish = f.as_str();
                    if s.holding {
                        let (content, calls) = tools::parse_calls(&s.held);
                        let calls: Vec<_> = if plan.parallel { calls } else { calls.into_iter().take(1).collect() };
                        if !content.is_empty() || calls.is_empty() {
                            let text = if calls.is_empty() { std::mem::take(&mut s.held) } else { content };
                            out.push(chunk(json!([{"index": i, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]), None));
                        }
                        for (k, (c, full)) in calls.iter().zip(tool_calls_json(&calls)).enumerate() {
                            let head = json!([{"index": i, "delta": {"tool_calls": [{"index": k, "id": full["id"], "type": "function", "function": {"name": c.name, "arguments": ""}}]}, "logprobs": null, "finish_reason": null}]);
                            out.push(chunk(head, None));
                            for frag in fragments(&c.arguments) {
                                out.push(chunk(json!([{"index": i, "delta": {"tool_calls": [{"index": k, "function": {"arguments": frag}}]}, "logprobs": null, "finish_reason": null}]), None));
                            }
                        }
                        if !calls.is_empty() {
                            finish = "tool_calls";
                        }
                    }
                    out.push(chunk(json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish}]), None));
                    s.done = true;
                }
            }
        }
        let all_done = states.iter().all(|s| s.done);
        if all_done {
            if include_usage {
                let prompt = states.iter().map(|s| s.prompt).max().unwrap_or(0);
                let completion: usize = states.iter().map(|s| s.tokens).sum();
                out.push(chunk(json!([]), Some(usage(prompt, completion))));
            }
            out.push(Event::default().data("[DONE]"));
        }
        out
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(futures::stream::iter(first).chain(body))
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}

/// Splits JSON argument text into a few fragments, as streamed deltas.
fn fragments(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(16).map(|c| c.iter().collect()).collect()
}
