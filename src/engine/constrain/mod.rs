//! Constrained decoding with llguidance: the output of a sequence is held to a JSON schema, any
//! JSON object, a Lark grammar or a regular expression by masking the logits before each draw.
//!
//! Two halves, as in llguidance itself. [`ConstraintEnv`] is built once per model from its
//! tokenizer (a byte trie of the vocabulary, the end-of-generation set, llguidance's parser
//! factory) and shared behind an `Arc`. [`Constraint`] is one sequence's parser: it computes the
//! set of allowed tokens, masks the logits, and advances on the sampled token.
//!
//! A request names its constraint as a [`ConstraintSpec`] and binds it to the model's
//! environment with [`ConstraintEnv::bind`]; `Sequence::new` compiles the grammar.
//!
//! Layout: `env` builds the per-model side, `grammar` turns a spec into an llguidance grammar,
//! `mask` writes a token bitmask into a logit row.

mod env;
mod grammar;
mod mask;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_model;

use std::sync::Arc;

use llguidance::Matcher;
use llguidance::api::StopReason;

pub use env::ConstraintEnv;

use crate::engine::error::{EngineError, Result};

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON schema (OpenAI `response_format: {"type": "json_schema"}`). With `strict`, a schema
    /// that uses keywords llguidance cannot enforce is refused; without it they are ignored.
    JsonSchema {
        /// The schema.
        schema: serde_json::Value,
        /// OpenAI's `strict` flag.
        strict: bool,
    },
    /// A grammar in llguidance's Lark dialect (built by the API layer for tool calls).
    Lark(String),
    /// A regular expression the whole output must match.
    Regex(String),
}

impl ConstraintSpec {
    /// The request parameter a problem with this constraint is reported against.
    pub fn param(&self) -> &'static str {
        match self {
            Self::Lark(_) => "tools",
            Self::JsonObject | Self::JsonSchema { .. } | Self::Regex(_) => "response_format",
        }
    }
}

/// A [`ConstraintSpec`] together with the environment of the model that will run it: what a
/// generation request carries. Cloning it is cheap.
#[derive(Debug, Clone)]
pub struct BoundConstraint {
    /// What the output must match.
    pub spec: ConstraintSpec,
    /// The model's constraint environment.
    pub env: Arc<ConstraintEnv>,
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    param: &'static str,
    vocab: usize,
    eos: Arc<[u32]>,
    accepting: bool,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("param", &self.param)
            .field("accepting", &self.accepting)
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Longest llguidance message passed on to a client.
const MAX_REASON: usize = 1000;

fn invalid(param: &'static str, reason: impl std::fmt::Display) -> EngineError {
    let mut reason = reason.to_string();
    if reason.len() > MAX_REASON {
        let cut = (0..=MAX_REASON)
            .rev()
            .find(|&i| reason.is_char_boundary(i))
            .unwrap_or(0);
        reason.truncate(cut);
        reason.push('…');
    }
    EngineError::InvalidParameter { param, reason }
}

impl Constraint {
    /// Compiles the grammar of `spec` for the model behind `env`. A grammar that does not
    /// compile is an [`EngineError::InvalidParameter`] naming `response_format` (or `tools` for
    /// a Lark grammar).
    pub fn new(spec: &ConstraintSpec, env: &ConstraintEnv) -> Result<Self> {
        let param = spec.param();
        let grammar = grammar::top_level(spec).map_err(|e| invalid(param, e))?;
        let parser = env
            .factory()
            .create_parser(grammar)
            .map_err(|e| invalid(param, e))?;
        let mut matcher = Matcher::new(Ok(parser));
        for w in matcher.grammar_warnings() {
            tracing::debug!(param, warning = %w, "grammar warning");
        }
        let accepting = matcher.is_accepting().map_err(|e| invalid(param, e))?;
        Ok(Self {
            matcher,
            param,
            vocab: env.vocab_size(),
            eos: env.eos_ids(),
            accepting,
        })
    }

    /// Sets every token the grammar does not allow next to `-inf`. Logits past the vocabulary
    /// (padding rows of the output matrix) are always disallowed. Once the grammar is complete,
    /// or if the parser failed, only end-of-generation tokens stay.
    pub fn mask(&mut self, logits: &mut [f32]) {
        match self.matcher.compute_mask_or_eos() {
            Ok(allowed) if !allowed.is_zero() => {
                mask::apply(allowed.as_slice(), self.vocab, logits)
            }
            Ok(_) => {
                tracing::warn!(
                    param = self.param,
                    "the grammar allows no token; ending the output"
                );
                mask::allow_only(&self.eos, logits);
            }
            Err(e) => {
                tracing::warn!(param = self.param, error = %e, "grammar mask failed; ending the output");
                mask::allow_only(&self.eos, logits);
            }
        }
    }

    /// Advances the grammar past a sampled token. A token the grammar rejects puts the parser
    /// into an error state, after which only end-of-generation tokens are allowed. An
    /// end-of-generation token after the grammar finished is accepted and changes nothing.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        if self.matcher.is_stopped() && self.error().is_none() && self.eos.contains(&token) {
            // A complete grammar already ended the output; an end token adds nothing.
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| invalid(self.param, e))?;
        self.accepting = self.matcher.is_accepting().unwrap_or(false);
        Ok(())
    }

    /// Whether the output so far is a complete match (the grammar would accept end of text).
    pub fn is_accepting(&self) -> bool {
        self.accepting && !self.matcher.is_error()
    }

    /// Whether the grammar is done: complete with nothing more allowed, an end-of-generation
    /// token consumed, or the parser failed.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the parser failed (its error), as opposed to finishing normally.
    pub fn error(&self) -> Option<String> {
        match self.matcher.stop_reason() {
            StopReason::NotStopped
            | StopReason::NoExtension
            | StopReason::NoExtensionBias
            | StopReason::EndOfSentence => None,
            _ => Some(self.matcher.get_error().unwrap_or_else(|| "stopped".into())),
        }
    }
}
