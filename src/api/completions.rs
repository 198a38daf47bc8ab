//! `POST /v1/completions`: raw prompts (text, texts, token ids, lists of token ids), `echo`,
//! `logprobs`, `n`, streaming. With `echo: true` and `max_tokens: 0` it scores the prompt itself
//! (log-probability of every prompt token after the first, with alternatives), which is how
//! OpenAI clients score a given text. Scoring is a job of the scheduler, like generation.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::sampler::TokenLogprob;
use crate::engine::scheduler::SeqEvent;
use crate::service::{ServedModel, chat::tokenize_rendered};

use super::error::Json;
use super::generation::{self, Timer};
use super::types::{CompletionRequest, PromptSpec};
use super::{ApiError, AppState};

/// `max_tokens` when the request names none (OpenAI's default for completions).
const DEFAULT_MAX_TOKENS: usize = 16;

fn prompts(model: &ServedModel, spec: &PromptSpec) -> Result<Vec<Vec<u32>>, ApiError> {
    let vocab = model.loaded.tokenizer.vocab_size() as u32;
    let lists = match spec {
        PromptSpec::Text(t) => vec![tokenize_rendered(&model.loaded, t)],
        PromptSpec::Texts(ts) => ts
            .iter()
            .map(|t| tokenize_rendered(&model.loaded, t))
            .collect(),
        PromptSpec::Tokens(ids) => vec![ids.clone()],
        PromptSpec::TokenLists(l) => l.clone(),
    };
    if lists.is_empty() || lists.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "the prompt must not be empty"));
    }
    if let Some(bad) = lists.iter().flatten().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {bad} is outside the vocabulary ({vocab} tokens)"),
        ));
    }
    Ok(lists)
}

fn logprobs_json(
    model: &ServedModel,
    entries: &[(u32, Option<TokenLogprob>)],
    offset0: usize,
) -> Value {
    let mut offset = offset0;
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (t, lp) in entries {
        let text = generation::token_text(model, *t);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        lps.push(lp.as_ref().map(|l| json!(l.logprob)).unwrap_or(Value::Null));
        tops.push(
            lp.as_ref()
                .map(|l| {
                    Value::Object(
                        l.top
                            .iter()
                            .map(|&(id, v)| (generation::token_text(model, id), json!(v)))
                            .collect(),
                    )
                })
                .unwrap_or(Value::Null),
        );
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// The handler.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, description = "A completion, or an SSE stream"), (status = 400, body = super::error::ErrorBody)))]
pub async fn completions(
    State(state): State<AppState>,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let mut valid = generation::validate(&req.sampling)?;
    // OpenAI's default for (legacy) completions.
    valid.max_tokens.get_or_insert(DEFAULT_MAX_TOKENS);
    let top = match req.logprobs {
        Some(k) if !(0..=20).contains(&k) => {
            return Err(ApiError::invalid(
                "logprobs",
                "`logprobs` must be between 0 and 20",
            ));
        }
        k => k.map(|k| k as usize),
    };
    let model = generation::find_model(&state, req.model.as_deref())?;
    let lists = {
        let (m, spec) = (model.clone(), req.prompt.clone());
        tokio::task::spawn_blocking(move || prompts(&m, &spec))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
    };
    let mut reqs = Vec::new();
    for ids in &lists {
        for i in 0..valid.n {
            reqs.push(generation::request(&model, ids.clone(), &valid, i, top)?);
        }
    }
    let id = generation::new_id("cmpl");
    let generate = valid.max_tokens != Some(0);
    if valid.stream {
        if req.echo {
            return Err(ApiError::invalid(
                "echo",
                "`echo` is not supported with `stream`",
            ));
        }
        let receivers = if generate {
            generation::submit_all(&state, &model, reqs)?
        } else {
            Vec::new()
        };
        let prompt_tokens = lists.iter().map(Vec::len).sum();
        let s = Stream {
            state,
            model,
            id,
            start,
            top,
            include_usage: valid.include_usage,
        };
        return Ok(s
            .respond(receivers, lists.len() * valid.n, prompt_tokens)
            .into_response());
    }
    // Scoring the prompts (echo with logprobs) runs through the scheduler like generation.
    let mut scorers = Vec::new();
    if let (true, Some(k)) = (req.echo, top) {
        for ids in &lists {
            scorers.push(model.scheduler.score(ids.clone(), k)?);
        }
    }
    let mut scorers = scorers.into_iter();
    let receivers = if generate {
        generation::submit_all(&state, &model, reqs)?
    } else {
        Vec::new()
    };
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    let mut receivers = receivers.into_iter();
    for (p, ids) in lists.iter().enumerate() {
        let prompt_scores = match scorers.next() {
            Some(rx) => Some(generation::scores(rx).await?),
            None => None,
        };
        for j in 0..valid.n {
            let c = match receivers.next() {
                Some(rx) => generation::collect(&state, rx, start).await?,
                None => generation::Collected {
                    finish: Some(crate::engine::generate::FinishReason::Length),
                    ..Default::default()
                },
            };
            completion_tokens += c.tokens.len();
            let prompt_text = if req.echo {
                model.loaded.tokenizer.decode(ids, false)
            } else {
                String::new()
            };
            let mut entries: Vec<(u32, Option<TokenLogprob>)> = Vec::new();
            if let Some(scores) = &prompt_scores {
                entries.extend(ids.iter().copied().zip(scores.iter().cloned()));
            }
            entries.extend(c.logprobs.iter().map(|(t, lp)| (*t, Some(lp.clone()))));
            let text = format!(
                "{prompt_text}{}{}",
                c.text,
                req.suffix.clone().unwrap_or_default()
            );
            choices.push(json!({
                "index": p * valid.n + j,
                "text": text,
                "logprobs": top.map(|_| logprobs_json(&model, &entries, 0)),
                "finish_reason": c.finish.map(|f| f.as_str()).unwrap_or("length"),
            }));
        }
    }
    let prompt_tokens: usize = lists.iter().map(Vec::len).sum();
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": generation::unix_now(),
        "model": model.name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}

/// A completion about to be streamed.
struct Stream {
    state: AppState,
    model: Arc<ServedModel>,
    id: String,
    start: Instant,
    top: Option<usize>,
    include_usage: bool,
}

impl Stream {
    /// The SSE response for `n` choices; without receivers (`max_tokens: 0`) every choice
    /// finishes at once.
    fn respond(
        self,
        receivers: Vec<UnboundedReceiver<SeqEvent>>,
        n: usize,
        prompt_tokens: usize,
    ) -> impl IntoResponse {
        let created = generation::unix_now();
        let keep_alive = self.state.keep_alive;
        let mut empty = Vec::new();
        if receivers.is_empty() {
            for i in 0..n {
                empty.push(self.chunk(
                    created,
                    json!([{"index": i, "text": "", "logprobs": null, "finish_reason": "length"}]),
                ));
            }
            empty.extend(self.end(created, prompt_tokens, 0));
        }
        let merged = futures::stream::select_all(
            receivers
                .into_iter()
                .enumerate()
                .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |ev| (i, ev))),
        );
        let mut done = vec![false; n];
        let mut timers: Vec<Timer> = (0..n).map(|_| Timer::since(self.start)).collect();
        let mut offsets = vec![0usize; n];
        let mut completion = 0usize;
        let body = merged
            .map(move |(i, ev)| {
                let mut out = Vec::new();
                match ev {
                    SeqEvent::Started { .. } | SeqEvent::Scored(_) => {}
                    SeqEvent::Error(e) => {
                        out.push(Event::default().data(json!(ApiError::from(e).body()).to_string()));
                        done[i] = true;
                    }
                    SeqEvent::Failed(detail) => {
                        out.push(Event::default().data(json!(ApiError::Internal(detail).body()).to_string()));
                        done[i] = true;
                    }
                    SeqEvent::Token(t) => {
                        timers[i].token(&self.state);
                        completion += 1;
                        let finish = t.finish.map(|f| f.as_str());
                        let logprobs = match self.top {
                            Some(_) => logprobs_json(&self.model, &[(t.token, t.logprob)], offsets[i]),
                            None => Value::Null,
                        };
                        offsets[i] += t.text.len();
                        if !t.text.is_empty() || finish.is_some() || self.top.is_some() {
                            let c = json!([{"index": i, "text": t.text, "logprobs": logprobs, "finish_reason": finish}]);
                            out.push(self.chunk(created, c));
                        }
                        done[i] |= finish.is_some();
                    }
                }
                if done[i] && done.iter().all(|d| *d) {
                    out.extend(self.end(created, prompt_tokens, completion));
                }
                out
            })
            .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
        let body = futures::stream::iter(empty.into_iter().map(Ok::<_, Infallible>)).chain(body);
        Sse::new(body).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
    }

    fn chunk(&self, created: u64, choices: Value) -> Event {
        let v = json!({"id": self.id, "object": "text_completion", "created": created, "model": self.model.name, "choices": choices});
        Event::default().data(v.to_string())
    }

    /// The usage chunk (when asked for) and `[DONE]`.
    fn end(&self, created: u64, prompt: usize, completion: usize) -> Vec<Event> {
        let mut out = Vec::new();
        if self.include_usage {
            let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
            let v = json!({"id": self.id, "object": "text_completion", "created": created, "model": self.model.name, "choices": [], "usage": usage});
            out.push(Event::default().data(v.to_string()));
        }
        out.push(Event::default().data("[DONE]"));
        out
    }
}
