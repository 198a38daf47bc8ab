//! `POST /v1/completions`: raw prompts (text, texts, token ids, lists of token ids), `echo`,
//! `logprobs`, `n`, streaming. With `echo: true` and `max_tokens: 0` it scores the prompt itself
//! (log-probability of every prompt token after the first, with alternatives), which is how
//! OpenAI clients score a given text.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::model::{Batch, SeqKv};
use crate::engine::sampler::{self, TokenLogprob};
use crate::engine::scheduler::SeqEvent;
use crate::service::{ServedModel, chat::tokenize_rendered};

use super::error::Json;
use super::generation::{self, Timer};
use super::types::{CompletionRequest, PromptSpec};
use super::{ApiError, AppState};

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

/// Log-probabilities of every prompt token given the ones before it (the first has none).
fn score(
    model: &ServedModel,
    ids: &[u32],
    top: usize,
) -> Result<Vec<Option<TokenLogprob>>, ApiError> {
    let m = &model.loaded.model;
    let mut pool = m.new_pool(ids.len());
    let mut seqs = [SeqKv::default()];
    let mut batch = Batch::default();
    for (i, &t) in ids.iter().enumerate() {
        batch.push(t, i, 0, i + 1 < ids.len());
    }
    let logits = m.forward(&batch, &mut pool, &mut seqs)?;
    let vocab = m.config().vocab;
    let mut out = vec![None];
    for (i, &t) in ids.iter().enumerate().skip(1) {
        out.push(Some(sampler::logprobs(
            &logits[(i - 1) * vocab..i * vocab],
            t,
            top,
        )));
    }
    Ok(out)
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
    let valid = generation::validate(&req.sampling)?;
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
        let receivers = generation::submit_all(&state, &model, reqs)?;
        return Ok(stream(state, model, receivers, id, valid.include_usage).into_response());
    }
    let receivers = if generate {
        generation::submit_all(&state, &model, reqs)?
    } else {
        Vec::new()
    };
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    let mut receivers = receivers.into_iter();
    for (p, ids) in lists.iter().enumerate() {
        let prompt_scores = match (req.echo, top) {
            (true, Some(k)) => {
                let (m, ids) = (model.clone(), ids.clone());
                Some(
                    tokio::task::spawn_blocking(move || score(&m, &ids, k))
                        .await
                        .map_err(|e| ApiError::Internal(e.to_string()))??,
                )
            }
            _ => None,
        };
        for j in 0..valid.n {
            let c = match receivers.next() {
                Some(rx) => generation::collect(&state, rx).await?,
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

fn stream(
    state: AppState,
    model: Arc<ServedModel>,
    receivers: Vec<tokio::sync::mpsc::UnboundedReceiver<SeqEvent>>,
    id: String,
    include_usage: bool,
) -> impl IntoResponse {
    let created = generation::unix_now();
    let n = receivers.len();
    let keep_alive = state.keep_alive;
    let merged = futures::stream::select_all(
        receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |ev| (i, ev))),
    );
    let mut done = vec![false; n];
    let mut timers: Vec<Timer> = (0..n).map(|_| Timer::new()).collect();
    let (mut prompt, mut completion) = (vec![0usize; n], 0usize);
    let body = merged
        .map(move |(i, ev)| {
            let chunk = |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model.name, "choices": choices});
            let mut out = Vec::new();
            match ev {
                SeqEvent::Started { prompt: p, .. } => prompt[i] = p,
                SeqEvent::Error(e) => {
                    out.push(Event::default().data(json!(ApiError::from(e).body()).to_string()));
                    done[i] = true;
                }
                SeqEvent::Token(t) => {
                    timers[i].token(&state);
                    completion += 1;
                    let finish = t.finish.map(|f| f.as_str());
                    if !t.text.is_empty() || finish.is_some() {
                        out.push(Event::default().data(chunk(json!([{"index": i, "text": t.text, "logprobs": null, "finish_reason": finish}])).to_string()));
                    }
                    done[i] |= finish.is_some();
                }
            }
            if done.iter().all(|d| *d) {
                if include_usage {
                    let p: usize = prompt.iter().sum();
                    let mut v = chunk(json!([]));
                    v["usage"] = json!({"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion});
                    out.push(Event::default().data(v.to_string()));
                }
                out.push(Event::default().data("[DONE]"));
            }
            out
        })
        .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(body).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}
