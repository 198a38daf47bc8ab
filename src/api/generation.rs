//! What chat and text completions share: validating the sampling fields once into engine
//! types, finding the model, submitting `n` sequences, and collecting their events.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::constrain::{BoundConstraint, Constraint, ConstraintSpec};
use crate::engine::generate::{FinishReason, GenerationRequest};
use crate::engine::sampler::{SamplingParams, TokenLogprob};
use crate::engine::scheduler::SeqEvent;
use crate::service::{ServedModel, Slot};

use super::types::SamplingFields;
use super::{ApiError, AppState};

/// Sampling fields after validation.
#[derive(Debug, Clone)]
pub struct Valid {
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    /// The name the client gave the length limit (`max_tokens` or `max_completion_tokens`).
    pub max_tokens_param: &'static str,
    pub stop: Vec<String>,
    /// Generate past end-of-generation tokens.
    pub ignore_eos: bool,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

fn range(param: &str, v: Option<f32>, lo: f32, hi: f32, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        Some(x) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {x}"),
        )),
    }
}

/// Validates the shared fields (parse, don't validate: deeper layers get engine types).
pub fn validate(f: &SamplingFields) -> Result<Valid, ApiError> {
    let max_tokens_param = match f.max_completion_tokens {
        Some(_) => "max_completion_tokens",
        None => "max_tokens",
    };
    let max_tokens = match (f.max_completion_tokens, f.max_tokens) {
        (Some(v), _) | (None, Some(v)) if v < 0 => {
            return Err(ApiError::invalid(
                max_tokens_param,
                format!("`{max_tokens_param}` must be non-negative, got {v}"),
            ));
        }
        (Some(v), _) | (None, Some(v)) => Some(v as usize),
        (None, None) => None,
    };
    let n = f.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and 16, got {n}"),
        ));
    }
    let top_k = f.top_k.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::invalid("top_k", "`top_k` must be non-negative"));
    }
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 16 {
        return Err(ApiError::invalid("stop", "at most 16 stop strings"));
    }
    let top_p = range("top_p", f.top_p, 0.0, 1.0, 1.0)?;
    if top_p == 0.0 {
        return Err(ApiError::invalid("top_p", "`top_p` must be greater than 0"));
    }
    let sampling = SamplingParams {
        temperature: range("temperature", f.temperature, 0.0, 2.0, 1.0)?,
        top_k: top_k as usize,
        top_p,
        min_p: range("min_p", f.min_p, 0.0, 1.0, 0.0)?,
        repetition_penalty: range("repetition_penalty", f.repetition_penalty, 0.01, 10.0, 1.0)?,
        presence_penalty: range("presence_penalty", f.presence_penalty, -2.0, 2.0, 0.0)?,
        frequency_penalty: range("frequency_penalty", f.frequency_penalty, -2.0, 2.0, 0.0)?,
        penalty_last_n: 64,
        seed: f.seed.map(|s| s as u64),
    };
    Ok(Valid {
        sampling,
        max_tokens,
        max_tokens_param,
        stop,
        ignore_eos: f.ignore_eos,
        n: n as usize,
        stream: f.stream,
        include_usage: f.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

/// Finds a ready model: 404 when unknown, 503 while loading.
pub fn find_model(state: &AppState, name: Option<&str>) -> Result<Arc<ServedModel>, ApiError> {
    match state.registry.get(name) {
        Some(Slot::Ready(m)) => Ok(m),
        Some(Slot::Loading) => Err(ApiError::Loading),
        Some(Slot::Failed(e)) => Err(ApiError::Internal(format!("model failed to load: {e}"))),
        None => Err(ApiError::ModelNotFound(
            name.unwrap_or_default().to_string(),
        )),
    }
}

/// Builds the engine request for one choice, refusing prompts that do not fit.
pub fn request(
    model: &ServedModel,
    prompt: Vec<u32>,
    v: &Valid,
    choice: usize,
    logprobs: Option<usize>,
) -> Result<GenerationRequest, ApiError> {
    let ctx = model.loaded.context_length();
    let max_tokens = match v.max_tokens {
        Some(m) => m,
        None => ctx.saturating_sub(prompt.len()),
    };
    let mut req = GenerationRequest::new(prompt, max_tokens);
    req.sampling = v.sampling.clone();
    // Distinct but reproducible seeds for n > 1.
    req.sampling.seed = v.sampling.seed.map(|s| s.wrapping_add(choice as u64));
    req.stop = v.stop.clone();
    req.ignore_eos = v.ignore_eos;
    req.logprobs = logprobs;
    req.check(ctx)?;
    Ok(req)
}

/// Binds a constraint to the model and compiles it once, so that a grammar or schema that does
/// not compile is a 400 before anything is queued (and before a stream has started).
pub async fn bind_constraint(
    model: &Arc<ServedModel>,
    spec: ConstraintSpec,
) -> Result<BoundConstraint, ApiError> {
    let model = model.clone();
    tokio::task::spawn_blocking(move || {
        let env = model.constraint_env().map_err(ApiError::Internal)?;
        Constraint::new(&spec, &env)?;
        Ok(BoundConstraint { spec, env })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Submits every request; a full queue refuses the whole call.
pub fn submit_all(
    state: &AppState,
    model: &ServedModel,
    reqs: Vec<GenerationRequest>,
) -> Result<Vec<UnboundedReceiver<SeqEvent>>, ApiError> {
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        state
            .metrics
            .prompt_tokens
            .fetch_add(r.prompt.len() as u64, std::sync::atomic::Ordering::Relaxed);
        out.push(model.scheduler.submit(r)?);
    }
    Ok(out)
}

/// One choice, fully generated.
#[derive(Debug, Default)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<(u32, TokenLogprob)>,
    pub finish: Option<FinishReason>,
    pub prompt_tokens: usize,
}

/// Latency bookkeeping for metrics.
pub struct Timer {
    start: Instant,
    last: Option<Instant>,
}

impl Timer {
    /// Times a request that arrived at `start`.
    pub fn since(start: Instant) -> Self {
        Self { start, last: None }
    }

    /// Records a token.
    pub fn token(&mut self, state: &AppState) {
        let now = Instant::now();
        match self.last {
            None => state.metrics.ttft.observe((now - self.start).as_secs_f64()),
            Some(prev) => state.metrics.itl.observe((now - prev).as_secs_f64()),
        }
        self.last = Some(now);
        state
            .metrics
            .generated_tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits for a choice of a request submitted at `start` to finish.
pub async fn collect(
    state: &AppState,
    mut rx: UnboundedReceiver<SeqEvent>,
    start: Instant,
) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    let mut timer = Timer::since(start);
    while let Some(ev) = rx.recv().await {
        match ev {
            SeqEvent::Started { prompt, .. } => c.prompt_tokens = prompt,
            SeqEvent::Token(t) => {
                timer.token(state);
                c.text.push_str(&t.text);
                if let Some(lp) = t.logprob {
                    c.logprobs.push((t.token, lp));
                }
                c.tokens.push(t.token);
                if t.finish.is_some() {
                    c.finish = t.finish;
                    return Ok(c);
                }
            }
            SeqEvent::Error(e) => return Err(e.into()),
            SeqEvent::Failed(detail) => return Err(ApiError::Internal(detail)),
            SeqEvent::Scored(_) => {
                return Err(ApiError::Internal("scores for a generation".into()));
            }
        }
    }
    Err(ApiError::Internal(
        "the inference worker dropped the request".into(),
    ))
}

/// Waits for a scoring job's result.
pub async fn scores(
    mut rx: UnboundedReceiver<SeqEvent>,
) -> Result<Vec<Option<TokenLogprob>>, ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            SeqEvent::Started { .. } => {}
            SeqEvent::Scored(s) => return Ok(s),
            SeqEvent::Error(e) => return Err(e.into()),
            SeqEvent::Failed(detail) => return Err(ApiError::Internal(detail)),
            SeqEvent::Token(_) => {
                return Err(ApiError::Internal("tokens for a scoring job".into()));
            }
        }
    }
    Err(ApiError::Internal(
        "the inference worker dropped the request".into(),
    ))
}

/// Text of a token as clients see it.
pub fn token_text(model: &ServedModel, id: u32) -> String {
    String::from_utf8_lossy(&model.loaded.tokenizer.token_bytes(id)).into_owned()
}

/// A unique id with a prefix.
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
