//! Streaming `POST /v1/chat/completions` by server-sent events: a role delta first for every
//! choice, then content deltas (with their logprobs), the `finish_reason`, with
//! `stream_options.include_usage` a last chunk with `choices: []` and `usage`, then `[DONE]`.
//! Keep-alive comments flow while the prompt is processed. Tool calls go out as index-keyed
//! `tool_calls` deltas: the first carries `id`, `type` and `function.name`, the later ones
//! fragments of `function.arguments`. A forced call streams as it is generated; with
//! `tool_choice: auto`, text that may be a call is held back and parsed at the end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::generate::StepEvent;
use crate::engine::scheduler::SeqEvent;
use crate::service::tool_stream::{CallPiece, CallStream};
use crate::service::{ServedModel, tools};

use super::chat::{Plan, ToolMode, fingerprint, logprob_json, tool_calls_json, usage};
use super::generation::{self, Timer};
use super::{ApiError, AppState};

/// Characters of tool-call arguments per streamed delta (for calls parsed at the end).
const ARGUMENT_FRAGMENT: usize = 16;

/// A chat completion about to be streamed.
pub(super) struct Stream {
    pub(super) state: AppState,
    pub(super) model: Arc<ServedModel>,
    pub(super) plan: Plan,
    pub(super) id: String,
    /// When the request arrived (for time-to-first-token).
    pub(super) start: Instant,
}

/// Per-choice state.
struct Choice {
    /// Text held back because it may be a tool call, and its tokens' logprobs.
    held: String,
    held_logprobs: Vec<Value>,
    holding: bool,
    /// Forced calls, read as they are generated, and how many have been sent.
    calls: Option<CallStream>,
    started: usize,
    timer: Timer,
    tokens: usize,
    prompt: usize,
    done: bool,
}

impl Stream {
    /// The SSE response over the choices' event receivers.
    pub(super) fn respond(self, receivers: Vec<UnboundedReceiver<SeqEvent>>) -> impl IntoResponse {
        let n = receivers.len();
        let keep_alive = self.state.keep_alive;
        let merged = futures::stream::select_all(
            receivers
                .into_iter()
                .enumerate()
                .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |ev| (i, ev))),
        );
        let created = generation::unix_now();
        let first: Vec<Result<Event, Infallible>> = (0..n)
            .map(|i| {
                let delta = json!({"role": "assistant", "content": ""});
                Ok(self.chunk(created, json!([self.delta(i, delta, Value::Null)]), None))
            })
            .collect();
        let holding = self.plan.mode != ToolMode::Off;
        let max_calls = match &self.plan.mode {
            ToolMode::Forced(names) if self.plan.parallel => Some(names.len().max(1)),
            ToolMode::Forced(_) => Some(1),
            _ => None,
        };
        let mut choices: Vec<Choice> = (0..n)
            .map(|_| Choice {
                held: String::new(),
                held_logprobs: Vec::new(),
                holding,
                calls: max_calls.map(CallStream::new),
                started: 0,
                timer: Timer::since(self.start),
                tokens: 0,
                prompt: 0,
                done: false,
            })
            .collect();
        let body = merged
            .map(move |(i, ev)| self.on_event(created, &mut choices, i, ev))
            .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
        Sse::new(futures::stream::iter(first).chain(body))
            .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
    }

    fn chunk(&self, created: u64, choices: Value, usage: Option<Value>) -> Event {
        let mut v = json!({"id": self.id, "object": "chat.completion.chunk", "created": created,
            "model": self.model.name, "system_fingerprint": fingerprint(), "choices": choices});
        if self.plan.valid.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(v.to_string())
    }

    fn delta(&self, index: usize, delta: Value, logprobs: Value) -> Value {
        json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null})
    }

    /// The SSE events one scheduler event turns into.
    fn on_event(&self, created: u64, choices: &mut [Choice], i: usize, ev: SeqEvent) -> Vec<Event> {
        let mut out = Vec::new();
        let failure = match ev {
            SeqEvent::Scored(_) => None,
            SeqEvent::Started { prompt, .. } => {
                choices[i].prompt = prompt;
                None
            }
            SeqEvent::Token(t) => {
                self.on_token(created, &mut choices[i], i, t, &mut out);
                None
            }
            SeqEvent::Error(e) => Some(ApiError::from(e)),
            SeqEvent::Failed(detail) => Some(ApiError::Internal(detail)),
        };
        if let Some(err) = failure {
            out.push(Event::default().data(json!(err.body()).to_string()));
            choices[i].done = true;
        }
        if choices[i].done && choices.iter().all(|c| c.done) {
            if self.plan.valid.include_usage {
                let prompt = choices.iter().map(|c| c.prompt).max().unwrap_or(0);
                let completion: usize = choices.iter().map(|c| c.tokens).sum();
                out.push(self.chunk(created, json!([]), Some(usage(prompt, completion))));
            }
            out.push(Event::default().data("[DONE]"));
        }
        out
    }

    fn on_token(&self, created: u64, s: &mut Choice, i: usize, t: StepEvent, out: &mut Vec<Event>) {
        s.timer.token(&self.state);
        s.tokens += 1;
        let lp = match (&self.plan.logprobs, &t.logprob) {
            (Some(_), Some(lp)) => Some(logprob_json(&self.model, t.token, lp)),
            _ => None,
        };
        if let Some(calls) = &mut s.calls {
            for piece in calls.push(&t.text) {
                let call = match piece {
                    CallPiece::Start(name) => {
                        s.started += 1;
                        json!({"index": s.started - 1, "id": generation::new_id("call"), "type": "function",
                            "function": {"name": name, "arguments": ""}})
                    }
                    CallPiece::Arguments(a) => {
                        json!({"index": s.started.saturating_sub(1), "function": {"arguments": a}})
                    }
                };
                let delta = json!({"tool_calls": [call]});
                out.push(self.chunk(created, json!([self.delta(i, delta, Value::Null)]), None));
            }
        }
        let (mut text, mut lps) = (t.text, Vec::from_iter(lp));
        if s.holding {
            s.held.push_str(&text);
            s.held_logprobs.append(&mut lps);
            text.clear();
            if !tools::may_be_call(&s.held) {
                s.holding = false;
                text = std::mem::take(&mut s.held);
                lps = std::mem::take(&mut s.held_logprobs);
            }
        }
        if !text.is_empty() || !lps.is_empty() {
            out.push(self.content_chunk(created, i, text, lps));
        }
        let Some(f) = t.finish else { return };
        let mut finish = f.as_str();
        if let Some(calls) = s.calls.as_ref().filter(|_| s.started > 0) {
            // A call cut off by max_tokens keeps the engine's reason.
            if calls.complete() {
                finish = "tool_calls";
            }
        } else if s.holding && self.flush_held(created, s, i, out) {
            finish = "tool_calls";
        }
        let end = json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": finish});
        out.push(self.chunk(created, json!([end]), None));
        s.done = true;
    }

    /// A content delta for choice `i`, with its log-probabilities when there are any.
    fn content_chunk(&self, created: u64, i: usize, text: String, lps: Vec<Value>) -> Event {
        let logprobs = if lps.is_empty() {
            Value::Null
        } else {
            json!({"content": lps})
        };
        self.chunk(
            created,
            json!([self.delta(i, json!({"content": text}), logprobs)]),
            None,
        )
    }

    /// Sends what was held back at the end of a choice: tool calls when it parses as some,
    /// else plain content. Returns whether there were calls.
    fn flush_held(&self, created: u64, s: &mut Choice, i: usize, out: &mut Vec<Event>) -> bool {
        let (content, calls) = tools::parse_calls(&s.held);
        let calls: Vec<_> = if self.plan.parallel {
            calls
        } else {
            calls.into_iter().take(1).collect()
        };
        if !content.is_empty() || calls.is_empty() {
            let text = if calls.is_empty() {
                std::mem::take(&mut s.held)
            } else {
                content
            };
            let lps = std::mem::take(&mut s.held_logprobs);
            let lps = if calls.is_empty() { lps } else { Vec::new() };
            out.push(self.content_chunk(created, i, text, lps));
        }
        for (k, (c, full)) in calls.iter().zip(tool_calls_json(&calls)).enumerate() {
            let head = json!({"tool_calls": [{"index": k, "id": full["id"], "type": "function",
                "function": {"name": c.name, "arguments": ""}}]});
            out.push(self.chunk(created, json!([self.delta(i, head, Value::Null)]), None));
            let chars: Vec<char> = c.arguments.chars().collect();
            for frag in chars.chunks(ARGUMENT_FRAGMENT) {
                let frag: String = frag.iter().collect();
                let delta = json!({"tool_calls": [{"index": k, "function": {"arguments": frag}}]});
                out.push(self.chunk(created, json!([self.delta(i, delta, Value::Null)]), None));
            }
        }
        !calls.is_empty()
    }
}
