//! Tokenizers built from GGUF metadata alone (no tokenizer.json), matching llama.cpp token for
//! token: byte-level BPE (`tokenizer.ggml.model = "gpt2"`, with the pre-tokenizer named by
//! `tokenizer.ggml.pre`) and SentencePiece (`"llama"`), special-token parsing, BOS/EOS rules,
//! the end-of-generation set, and detokenization.
//!
//! Layout: `vocab` holds the token table, `special` resolves special ids, `partition` splits
//! out special tokens written in text, `pre_config`, `pretokenize` and `regex_step` split text
//! into words for `bpe`, `spm` is SentencePiece, `decode` turns tokens back into bytes.
//! Performance: merges are ranked by a hash of the id pair, regexes are compiled once per
//! tokenizer, and every merge loop is a heap, so encoding is O(n log n) in the text length.

mod bpe;
mod decode;
mod partition;
mod pre_config;
mod pretokenize;
mod regex_step;
mod special;
mod spm;
mod unicode;
mod unicode_table;
mod vocab;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_synthetic;

use bpe::Bpe;
use partition::{Fragment, SpecialMatcher};
use pretokenize::PreTokenizer;
use special::SpecialIds;
use spm::Spm;
use vocab::{Vocab, attr};

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::Metadata;

/// The tokenizing algorithm of a vocabulary.
enum Model {
    Bpe(Bpe),
    Spm(Spm),
}

/// Flags read from the GGUF (or defaulted the way llama.cpp does).
#[derive(Clone, Copy, Debug)]
struct Options {
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

/// A tokenizer: immutable once built, `Send + Sync`, meant to be shared behind an `Arc`.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    ids: SpecialIds,
    options: Options,
    specials: SpecialMatcher,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = match self.model {
            Model::Bpe(_) => "bpe",
            Model::Spm(_) => "spm",
        };
        f.debug_struct("Tokenizer")
            .field("model", &model)
            .field("vocab_size", &self.vocab.len())
            .field("bos", &self.ids.bos)
            .field("eos", &self.ids.eos)
            .field("options", &self.options)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(md: &Metadata) -> Result<Self> {
        let kind = md.str("tokenizer.ggml.model")?;
        let pre = md.opt_str("tokenizer.ggml.pre")?;
        let mut vocab = Vocab::from_gguf(md)?;
        let (bpe, defaults, mut options) = match kind {
            "gpt2" => {
                let cfg = pre_config::config(pre).ok_or_else(|| {
                    EngineError::Tokenizer(format!(
                        "unknown pre-tokenizer `{}` (tokenizer.ggml.pre)",
                        pre.unwrap_or_default()
                    ))
                })?;
                let pre = PreTokenizer::new(cfg.patterns)?;
                let bpe = Bpe::new(md, &vocab, pre, cfg.ignore_merges)?;
                let options = Options {
                    add_bos: cfg.add_bos,
                    add_eos: false,
                    add_space_prefix: false,
                    clean_spaces: cfg.clean_spaces,
                };
                (Some(bpe), [Some(11), Some(11), None], options)
            }
            "llama" => {
                let options = Options {
                    add_bos: true,
                    add_eos: false,
                    add_space_prefix: true,
                    clean_spaces: false,
                };
                (None, [Some(1), Some(2), Some(0)], options)
            }
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "unsupported tokenizer model `{other}` (tokenizer.ggml.model); ward supports \
                     `gpt2` (byte-level BPE) and `llama` (SentencePiece)"
                )));
            }
        };
        let opt_bool = |key: &str, value: &mut bool| -> Result<()> {
            if let Some(v) = md.opt_bool(key)? {
                *value = v;
            }
            Ok(())
        };
        opt_bool(
            "tokenizer.ggml.add_space_prefix",
            &mut options.add_space_prefix,
        )?;
        opt_bool("tokenizer.ggml.add_bos_token", &mut options.add_bos)?;
        opt_bool("tokenizer.ggml.add_eos_token", &mut options.add_eos)?;

        let ids = special::resolve(md, &mut vocab, defaults);
        let model = match bpe {
            Some(bpe) => Model::Bpe(bpe),
            None => Model::Spm(Spm::new(&vocab, ids.unk)),
        };
        let order = special::partition_order(&vocab);
        special::apply_name_quirks(md, &mut vocab, &order);
        let specials = SpecialMatcher::new(&vocab, order);
        Ok(Self {
            vocab,
            model,
            ids,
            options,
            specials,
        })
    }

    /// Tokenizes `text`. `add_special` adds BOS (and EOS) where the model asks for them;
    /// `parse_special` makes control tokens written in the text (like `<|im_start|>`) count as
    /// those tokens rather than as plain text. User-defined tokens are always matched.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special
            && self.options.add_bos
            && let Some(bos) = self.ids.bos
        {
            out.push(bos);
        }
        let fragments = self.specials.partition(&self.vocab, text, parse_special);
        match &self.model {
            Model::Bpe(bpe) => {
                for frag in fragments {
                    match frag {
                        Fragment::Text(a, b) => bpe.encode(&self.vocab, &text[a..b], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Spm(spm) => {
                let mut after_special = true;
                let mut buf = String::new();
                for frag in fragments {
                    match frag {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.options.add_space_prefix && after_special {
                                buf.push('▁');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '▁' } else { c });
                            }
                            spm.encode(&self.vocab, &buf, &mut out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
        }
        if add_special
            && self.options.add_eos
            && let Some(eos) = self.ids.eos
        {
            out.push(eos);
        }
        out
    }

    /// The bytes a token stands for in output text: byte-level BPE characters decoded to bytes,
    /// SentencePiece `▁` as a space and `<0xXX>` as the byte; control and unknown tokens as
    /// their text (see [`Tokenizer::visible_bytes`] to drop them). Empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.piece_bytes(id, true)
    }

    /// Like [`Tokenizer::token_bytes`], but control and unknown tokens give nothing, as in
    /// llama.cpp's `token_to_piece(special = false)`.
    pub fn visible_bytes(&self, id: u32) -> Vec<u8> {
        self.piece_bytes(id, false)
    }

    /// Turns tokens back into text (invalid UTF-8 is replaced). With `skip_special`, control and
    /// unknown tokens are dropped, as are a leading BOS and trailing EOS the model adds itself.
    /// A space that SentencePiece's `add_space_prefix` put first is removed, as llama.cpp does.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned()
    }

    /// The vocabulary string of a token (empty for an unknown id).
    pub fn piece(&self, id: u32) -> &str {
        self.vocab.piece(id)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.ids.bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.ids.eos
    }

    /// The end-of-turn token (`tokenizer.ggml.eot_token_id` or detected by text), if any.
    pub fn eot(&self) -> Option<u32> {
        self.ids.eot
    }

    /// Whether BOS is added to prompts tokenized with `add_special`.
    pub fn adds_bos(&self) -> bool {
        self.options.add_bos && self.ids.bos.is_some()
    }

    /// Whether a token ends generation (EOS, EOT, and llama.cpp's list such as `<|im_end|>`,
    /// `<|eot_id|>`, `<end_of_turn>`, `<|endoftext|>`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.ids.eog.binary_search(&id).is_ok()
    }

    /// Every end-of-generation token, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.ids.eog
    }

    /// Whether a token is a control or user-defined token (per `tokenizer.ggml.token_type`).
    pub fn is_special(&self, id: u32) -> bool {
        self.vocab.attr(id) & (attr::CONTROL | attr::USER_DEFINED) != 0
    }

    /// The id of a vocabulary string.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.vocab.get(piece)
    }
}
