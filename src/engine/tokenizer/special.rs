//! Special tokens: BOS/EOS/EOT/… ids from GGUF keys with llama.cpp's defaults, the auto-detection
//! by token text that llama.cpp applies (EOT, FIM tokens, the end-of-generation set), and the
//! attribute fix-ups it makes along the way.

use super::vocab::{Vocab, attr};
use crate::engine::gguf::Metadata;

/// Resolved special token ids.
#[derive(Clone, Debug, Default)]
pub(super) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    /// Every token that ends generation, sorted.
    pub eog: Vec<u32>,
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// FIM prefix/suffix/middle: (key, deprecated key, texts that identify the token).
const FIM_OTHER: &[(&str, &str, &[&str])] = &[
    (
        "fim_pre",
        "prefix",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        "fim_suf",
        "suffix",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        "fim_mid",
        "middle",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss tokens llama.cpp always renders (it makes them user-defined).
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Reads a token-id key; absent, negative, wrongly typed or out-of-range values count as absent.
fn key_id(md: &Metadata, key: &str, n: usize) -> Option<u32> {
    let id = md.u64(key).ok()?;
    (id < n as u64).then_some(id as u32)
}

/// The lowest id whose text is one of `texts`, marking it a control token as llama.cpp does.
fn detect(vocab: &mut Vocab, texts: &[&str]) -> Option<u32> {
    let id = texts.iter().filter_map(|t| vocab.get(t)).min()?;
    vocab.attrs[id as usize] |= attr::CONTROL;
    Some(id)
}

/// Resolves the special ids of a vocabulary, given the tokenizer model's default
/// `[bos, eos, unk]`, and updates token attributes the way llama.cpp does.
pub(super) fn resolve(md: &Metadata, vocab: &mut Vocab, defaults: [Option<u32>; 3]) -> SpecialIds {
    let n = vocab.len();
    let in_range = |d: Option<u32>| d.filter(|&d| (d as usize) < n);
    let pick = |key: &str, default: Option<u32>| key_id(md, key, n).or(in_range(default));
    let bos = pick("tokenizer.ggml.bos_token_id", defaults[0]);
    let eos = pick("tokenizer.ggml.eos_token_id", defaults[1]);
    let unk = pick("tokenizer.ggml.unknown_token_id", defaults[2]);
    let mut eot = key_id(md, "tokenizer.ggml.eot_token_id", n);
    let mut eom = key_id(md, "tokenizer.ggml.eom_token_id", n);
    // A deprecated key (`prefix_token_id`, ...) is read last in llama.cpp, so it wins.
    let fim_key = |new: &str, old: Option<&str>| {
        old.and_then(|o| key_id(md, &format!("tokenizer.ggml.{o}_token_id"), n))
            .or_else(|| key_id(md, &format!("tokenizer.ggml.{new}_token_id"), n))
    };
    let mut fim_pad = fim_key("fim_pad", None);
    let mut fim_rep = fim_key("fim_rep", None);
    let mut fim_sep = fim_key("fim_sep", None);

    if eot.is_none() {
        eot = detect(vocab, EOT_TEXTS);
    }
    if eom.is_none() {
        eom = detect(vocab, &["<|eom_id|>"]);
    }
    for (key, old, texts) in FIM_OTHER {
        if fim_key(key, Some(old)).is_none() {
            detect(vocab, texts);
        }
    }
    if fim_pad.is_none() {
        fim_pad = detect(vocab, FIM_PAD_TEXTS);
    }
    if fim_rep.is_none() {
        fim_rep = detect(vocab, FIM_REP_TEXTS);
    }
    if fim_sep.is_none() {
        fim_sep = detect(vocab, FIM_SEP_TEXTS);
    }

    let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
    for text in EOG_TEXTS {
        if let Some(id) = vocab.get(text) {
            eog.push(id);
            vocab.attrs[id as usize] |= attr::CONTROL;
        }
    }
    for text in ALWAYS_RENDERED {
        if let Some(id) = vocab.get(text) {
            vocab.attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.extend([eos, eot, eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();

    // o200k_harmony / solar-open: `<|end|>` ends a message, not the generation.
    let has = |t: &str| vocab.get(t).is_some_and(|id| eog.contains(&id));
    let has_call = has("<|call|>") || has("<|calls|>");
    if has_call
        && (has("<|return|>") || has("<|flush|>"))
        && let Some(end) = vocab.get("<|end|>").filter(|id| eog.contains(id))
    {
        eog.retain(|&id| id != end);
        vocab.attrs[end as usize] = attr::USER_DEFINED;
    }

    SpecialIds {
        bos,
        eos,
        eot,
        unk,
        eog,
    }
}

/// The tokens matched in text before tokenizing (control, user-defined and unknown ones),
/// longest first, then by id.
pub(super) fn partition_order(vocab: &Vocab) -> Vec<u32> {
    let mask = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
    let mut order: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&id| vocab.attr(id) & mask != 0)
        .collect();
    order.sort_by_key(|&id| std::cmp::Reverse(vocab.piece(id).len()));
    order
}

/// llama.cpp's per-model attribute fix-ups keyed on `general.name` (Phi-3 strips the whitespace
/// after its special tokens).
pub(super) fn apply_name_quirks(md: &Metadata, vocab: &mut Vocab, order: &[u32]) {
    let name = md
        .opt_str("general.name")
        .ok()
        .flatten()
        .unwrap_or("")
        .to_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return;
    }
    for &id in order {
        vocab.attrs[id as usize] |= attr::RSTRIP;
    }
    if let Some(id) = vocab.get("</s>") {
        vocab.attrs[id as usize] |= attr::RSTRIP;
    }
    for t in ["<unk>", "<s>", "<|endoftext|>"] {
        if let Some(id) = vocab.get(t) {
            vocab.attrs[id as usize] &= !attr::RSTRIP;
        }
    }
}
