//! The per-model half of constrained decoding: the vocabulary as llguidance sees it (a byte trie
//! in which every token is spelled as the bytes the generation loop emits for it), the
//! end-of-generation set, and llguidance's parser factory. Built once per model, shared by every
//! constrained sequence.

use std::sync::Arc;

use llguidance::ParserFactory;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use super::{BoundConstraint, ConstraintSpec};
use crate::engine::error::{EngineError, Result};
use crate::engine::tokenizer::Tokenizer;

/// The vocabulary and parser factory of one model, for [`super::Constraint`]. `Send + Sync`;
/// share it behind an `Arc`.
pub struct ConstraintEnv {
    factory: ParserFactory,
    vocab: usize,
    eos: Arc<[u32]>,
    canonical: bool,
}

impl std::fmt::Debug for ConstraintEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintEnv")
            .field("vocab", &self.vocab)
            .field("eos", &self.eos)
            .field("canonical", &self.canonical)
            .finish()
    }
}

impl ConstraintEnv {
    /// Builds the environment of a tokenizer. Text the grammar forces (such as the keys of a
    /// JSON schema) may then be spelled with any tokens; the model picks.
    pub fn new(tok: &Tokenizer) -> Result<Self> {
        Self::build(tok, None)
    }

    /// Like [`ConstraintEnv::new`], but keeps the tokenizer so that text the grammar forces is
    /// spelled with the tokens the tokenizer itself would produce, as the model saw in training
    /// (llguidance's "canonical" mode). Falls back to [`ConstraintEnv::new`]'s behaviour for a
    /// tokenizer that does not round-trip text, such as SentencePiece with a space prefix.
    pub fn with_tokenizer(tok: Arc<Tokenizer>) -> Result<Self> {
        Self::build(&tok, Some(Arc::clone(&tok)))
    }

    /// Pairs a constraint with this environment, for a generation request.
    pub fn bind(self: &Arc<Self>, spec: ConstraintSpec) -> BoundConstraint {
        BoundConstraint {
            spec,
            env: Arc::clone(self),
        }
    }

    fn build(tok: &Tokenizer, owned: Option<Arc<Tokenizer>>) -> Result<Self> {
        let vocab = tok.vocab_size();
        let words: Vec<Vec<u8>> = (0..vocab as u32).map(|id| token_word(tok, id)).collect();
        let mut eos: Vec<u32> = tok.eos().into_iter().collect();
        eos.extend(tok.eog_ids().iter().filter(|&&id| Some(id) != tok.eos()));
        eos.retain(|&id| (id as usize) < vocab);
        let Some(&first) = eos.first() else {
            return Err(EngineError::Tokenizer(
                "constrained decoding needs an end-of-generation token and the vocabulary has none"
                    .into(),
            ));
        };
        let info = TokRxInfo {
            vocab_size: vocab as u32,
            tok_eos: first,
            tok_bos: tok.bos(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: tok.eot(),
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let tokenizer = owned.filter(|t| round_trips(t));
        let canonical = tokenizer.is_some();
        let tok_env: TokEnv = Arc::new(WardTokEnv { trie, tokenizer });
        let mut factory = ParserFactory::new(
            &tok_env,
            InferenceCapabilities::default(),
            &SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| EngineError::Tokenizer(format!("building the grammar engine: {e}")))?;
        factory.quiet();
        Ok(Self {
            factory,
            vocab,
            eos: eos.into(),
            canonical,
        })
    }

    pub(super) fn factory(&self) -> &ParserFactory {
        &self.factory
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The end-of-generation tokens a complete grammar allows, primary EOS first.
    pub fn eos_ids(&self) -> Arc<[u32]> {
        Arc::clone(&self.eos)
    }

    /// Whether forced text is spelled the tokenizer's way (see [`ConstraintEnv::with_tokenizer`]).
    pub fn is_canonical(&self) -> bool {
        self.canonical
    }
}

/// A token as llguidance must see it: the bytes the generation loop appends to the output
/// (`visible_bytes`, user-defined tokens included), or, for control, unknown and
/// end-of-generation tokens, toktrie's special form `0xFF` + name, which a grammar can only ask
/// for by name. Empty: never allowed.
pub(super) fn token_word(tok: &Tokenizer, id: u32) -> Vec<u8> {
    let visible = tok.visible_bytes(id);
    if !visible.is_empty() && !tok.is_eog(id) {
        return visible;
    }
    let name = tok.token_bytes(id);
    if name.is_empty() {
        return name;
    }
    let mut word = Vec::with_capacity(name.len() + 1);
    word.push(TokTrie::SPECIAL_TOKEN_MARKER);
    word.extend_from_slice(&name);
    word
}

/// Whether the tokenizer spells text back exactly (no added space prefix, no lost bytes).
fn round_trips(tok: &Tokenizer) -> bool {
    let probe = "{\"key\": [1, -2.5e3, true, null], \"s\": \"héllo\\n wörld 語\"}";
    let ids = tok.encode(probe, false, false);
    let spelled: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
    spelled == probe.as_bytes() && ids.iter().all(|&id| !tok.is_special(id))
}

/// toktrie's view of the tokenizer.
struct WardTokEnv {
    trie: TokTrie,
    /// Present when tokenization is canonical.
    tokenizer: Option<Arc<Tokenizer>>,
}

impl WardTokEnv {
    fn tokenize(&self, s: &[u8], parse_special: bool) -> Vec<u32> {
        match &self.tokenizer {
            Some(t) => self
                .trie
                .tokenize_with_greedy_fallback(s, |text| t.encode(text, false, parse_special)),
            None => self.trie.greedy_tokenize(s),
        }
    }
}

impl TokenizerEnv for WardTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.tokenize(s, false)
    }

    fn tokenize_bytes_special(&self, s: &[u8]) -> Vec<u32> {
        self.tokenize(s, true)
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.tokenizer.is_some()
    }
}
