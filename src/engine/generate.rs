//! The generation loop, written once for every model: a [`Sequence`] holds one request's state
//! (tokens, sampler, detokenizer, stop strings) and turns each step's logits into a
//! [`StepEvent`]; [`generate`] drives one sequence from prompt to finish. The batching scheduler
//! drives many sequences through the same [`Sequence::step`].

use crate::engine::constrain::{BoundConstraint, Constraint};
use crate::engine::error::{EngineError, Result};
use crate::engine::model::{Batch, KvPool, Model, SeqKv};
use crate::engine::sampler::{self, Sampler, SamplingParams, TokenLogprob};
use crate::engine::stream::{StopMatcher, StopResult, Utf8Stream};
use crate::engine::tokenizer::Tokenizer;

/// Longest prompt slice run through one forward pass during prefill.
pub const PREFILL_CHUNK: usize = 512;

/// A validated generation request, in tokens.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The prompt, already tokenized.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings; the text ends before the first one found.
    pub stop: Vec<String>,
    /// Report log-probabilities with this many alternatives (`Some(0)`: only the chosen token).
    pub logprobs: Option<usize>,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Grammar the output must match (JSON, tool calls), bound to the model's environment.
    pub constraint: Option<BoundConstraint>,
}

impl GenerationRequest {
    /// A request with default sampling.
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            logprobs: None,
            ignore_eos: false,
            constraint: None,
        }
    }

    /// Checks the request against the model's context window. Never truncates.
    pub fn check(&self, context: usize) -> Result<()> {
        if self.prompt.is_empty() {
            return Err(EngineError::InvalidParameter {
                param: "prompt",
                reason: "the prompt is empty".into(),
            });
        }
        if self.prompt.len() + self.max_tokens > context {
            return Err(EngineError::ContextOverflow {
                prompt: self.prompt.len(),
                max_tokens: self.max_tokens,
                context,
            });
        }
        self.sampling.validate()
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The client went away.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What one decode step produced for a sequence.
#[derive(Debug, Clone)]
pub struct StepEvent {
    /// The sampled token.
    pub token: u32,
    /// Text that became final with this token (may be empty).
    pub text: String,
    /// Log-probabilities, when asked for.
    pub logprob: Option<TokenLogprob>,
    /// Set on the last event.
    pub finish: Option<FinishReason>,
}

/// One request being generated.
pub struct Sequence {
    req: GenerationRequest,
    sampler: Sampler,
    utf8: Utf8Stream,
    stop: StopMatcher,
    tokens: Vec<u32>,
    cached: usize,
    generated: usize,
    finish: Option<FinishReason>,
    constraint: Option<Constraint>,
    /// This sequence's KV cache blocks.
    pub kv: SeqKv,
}

impl Sequence {
    /// Starts a sequence (checks parameters, compiles the constraint's grammar).
    pub fn new(req: GenerationRequest) -> Result<Self> {
        let sampler = Sampler::new(req.sampling.clone())?;
        let constraint = match &req.constraint {
            Some(c) => Some(Constraint::new(&c.spec, &c.env)?),
            None => None,
        };
        Ok(Self {
            stop: StopMatcher::new(&req.stop),
            tokens: req.prompt.clone(),
            req,
            sampler,
            utf8: Utf8Stream::default(),
            cached: 0,
            generated: 0,
            finish: None,
            constraint,
            kv: SeqKv::default(),
        })
    }

    /// All tokens so far, prompt first.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Prompt length.
    pub fn prompt_len(&self) -> usize {
        self.req.prompt.len()
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Why it finished, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Tokens not yet in the KV cache (the prompt, then one token per step).
    pub fn uncached(&self) -> &[u32] {
        &self.tokens[self.cached..]
    }

    /// Positions already in the cache.
    pub fn cached(&self) -> usize {
        self.cached
    }

    /// Records that `n` more tokens went through the model (or came from a shared prefix).
    pub fn mark_cached(&mut self, n: usize) {
        self.cached = (self.cached + n).min(self.tokens.len());
    }

    /// Why the constraint's parser failed, if it did (the sequence then ended with `Stop` and
    /// its output does not match the grammar). An internal error, for the log and a 500.
    pub fn constraint_error(&self) -> Option<String> {
        self.constraint.as_ref().and_then(Constraint::error)
    }

    /// Ends the sequence early (client gone).
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// Samples the next token from the logits after the last cached token. With a constraint,
    /// tokens the grammar does not allow are masked out first (log-probabilities still report
    /// the model's own distribution), and the sequence stops once the grammar is complete.
    pub fn step(&mut self, logits: &mut [f32], tok: &Tokenizer) -> StepEvent {
        let logprob = self.req.logprobs.map(|k| (k, logits.to_vec()));
        if let Some(c) = &mut self.constraint {
            c.mask(logits);
        }
        let history = &self.tokens[self
            .tokens
            .len()
            .saturating_sub(self.req.sampling.penalty_last_n)..];
        let mut token = self.sampler.sample(logits, history);
        if self.constraint.is_some() && logits.get(token as usize) == Some(&f32::NEG_INFINITY) {
            // Rounding in the sampler's draw can land on a zero-weight candidate.
            token = sampler::argmax(logits);
        }
        let logprob = logprob.map(|(k, raw)| sampler::logprobs(&raw, token, k));
        self.tokens.push(token);
        self.generated += 1;
        let grammar_done = self.constraint.as_mut().is_some_and(|c| {
            if let Err(e) = c.commit(token) {
                tracing::error!(error = %e, token, "constrained sequence ended by a grammar error");
            }
            c.is_finished()
        });
        let mut text = String::new();
        let mut stop_string = false;
        if !self.req.ignore_eos && tok.is_eog(token) {
            self.finish = Some(FinishReason::Stop);
        } else {
            let piece = tok.visible_bytes(token);
            let fresh = self.utf8.push(&piece);
            match self.stop.push(&fresh) {
                StopResult::Continue(t) => text = t,
                StopResult::Stop(t) => {
                    text = t;
                    stop_string = true;
                    self.finish = Some(FinishReason::Stop);
                }
            }
        }
        if self.finish.is_none() && grammar_done {
            self.finish = Some(FinishReason::Stop);
        }
        if self.finish.is_none() && self.generated >= self.req.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        // Flush what was held back, unless a stop string cut the text.
        if self.finish.is_some() && !stop_string {
            let tail = self.utf8.finish();
            match self.stop.push(&tail) {
                StopResult::Continue(t) => {
                    text.push_str(&t);
                    text.push_str(&self.stop.finish());
                }
                StopResult::Stop(t) => text.push_str(&t),
            }
        }
        StepEvent {
            token,
            text,
            logprob,
            finish: self.finish,
        }
    }
}

/// The whole result of a generation.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated text.
    pub text: String,
    /// Generated tokens (including a final end-of-generation token, if any).
    pub tokens: Vec<u32>,
    /// Per-token log-probabilities, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
}

/// Runs one request to completion on a model that nothing else is using. `on_event` sees every
/// step and returns `false` to cancel.
pub fn generate(
    model: &dyn Model,
    tok: &Tokenizer,
    pool: &mut KvPool,
    req: GenerationRequest,
    mut on_event: impl FnMut(&StepEvent) -> bool,
) -> Result<Completion> {
    req.check(model.config().context_length)?;
    let mut seq = Sequence::new(req)?;
    let mut out = Completion {
        text: String::new(),
        tokens: Vec::new(),
        logprobs: Vec::new(),
        finish: FinishReason::Stop,
        prompt_tokens: seq.prompt_len(),
    };
    let result = (|| {
        if seq.req.max_tokens == 0 {
            out.finish = FinishReason::Length;
            return Ok(());
        }
        loop {
            let mut logits = Vec::new();
            while !seq.uncached().is_empty() {
                let chunk: Vec<u32> = seq.uncached().iter().take(PREFILL_CHUNK).copied().collect();
                let batch = Batch::single(&chunk, seq.cached());
                logits = model.forward(&batch, pool, std::slice::from_mut(&mut seq.kv))?;
                seq.mark_cached(chunk.len());
            }
            let ev = seq.step(&mut logits, tok);
            out.text.push_str(&ev.text);
            out.tokens.push(ev.token);
            if let Some(lp) = &ev.logprob {
                out.logprobs.push(lp.clone());
            }
            let go_on = on_event(&ev);
            if let Some(f) = ev.finish {
                out.finish = f;
                return Ok(());
            }
            if !go_on {
                seq.cancel();
                out.finish = FinishReason::Cancelled;
                return Ok(());
            }
        }
    })();
    pool.release(&mut seq.kv);
    result.map(|()| out)
}
