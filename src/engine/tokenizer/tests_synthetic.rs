//! Tests on small hand-built vocabularies: errors, SentencePiece scoring and byte fallback,
//! BPE merge order, special-token partitioning and the end-of-generation set.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use super::Tokenizer;
use super::unicode::BYTE_CHARS;
use crate::engine::error::EngineError;
use crate::engine::gguf::Metadata;

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

fn meta(entries: Vec<(&str, Value)>) -> Metadata {
    Metadata(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
    )
}

fn err(md: &Metadata) -> String {
    match Tokenizer::from_gguf(md) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_models_are_rejected_clearly() {
    let md = meta(vec![
        ("tokenizer.ggml.model", Value::String("wordpiece-x".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
    ]);
    assert!(err(&md).contains("unsupported tokenizer model `wordpiece-x`"));
    let md = meta(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("mystery".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
        ("tokenizer.ggml.merges", strings(&[])),
    ]);
    assert!(err(&md).contains("unknown pre-tokenizer `mystery`"));
    let md = meta(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
    ]);
    assert!(
        matches!(Tokenizer::from_gguf(&md), Err(EngineError::MissingKey(k)) if k == "tokenizer.ggml.merges")
    );
    assert!(matches!(
        Tokenizer::from_gguf(&meta(vec![])),
        Err(EngineError::MissingKey(_))
    ));
}

fn spm() -> Tokenizer {
    let tokens = [
        "<unk>", "<s>", "</s>", "▁", "a", "b", "c", "ab", "bc", "▁ab", "<0x41>", "<0xC3>",
        "<0xA9>", "<ctl>",
    ];
    let scores = [
        0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -2.0, -3.0, -0.5, -4.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 6, 6, 6, 3];
    let md = meta(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
    ]);
    Tokenizer::from_gguf(&md).unwrap()
}

#[test]
fn spm_merges_by_score_and_falls_back_to_bytes() {
    let tok = spm();
    // "▁abc": ▁+a? no token; a+b (-3) vs b+c (-0.5): "bc" wins, then nothing joins "a"+"bc".
    assert_eq!(tok.encode("abc", false, false), [3, 4, 8]);
    // "ab" alone: a+b, then ▁+ab = "▁ab".
    assert_eq!(tok.encode("ab", false, false), [9]);
    // 'A' has a byte token, 'é' is two byte tokens; 'Z' has none and becomes <unk>.
    assert_eq!(tok.encode("A", true, false), [1, 3, 10]);
    assert_eq!(tok.encode("é", false, false), [3, 11, 12]);
    assert_eq!(tok.encode("Z", false, false), [3, 0]);
    assert_eq!(tok.decode(&[3, 11, 12], false), "é");
    assert_eq!(tok.decode(&[9, 3, 4], false), "ab a");
    // Control tokens are text unless parsed; after one, the space prefix is added again.
    assert_eq!(tok.encode("<ctl>ab", false, true), [13, 9]);
    assert_ne!(tok.encode("<ctl>", false, false), [3, 13]);
    assert_eq!(tok.decode(&[13, 9], true), " ab");
    assert_eq!(tok.decode(&[13, 9], false), "<ctl> ab");
    assert_eq!(tok.encode("", true, false), [1]);
    assert!(tok.encode("", false, false).is_empty());
    assert!(tok.is_eog(2) && !tok.is_eog(1));
    // Out-of-range ids decode to nothing instead of panicking.
    assert_eq!(tok.decode(&[999, 4], false), "a");
    assert_eq!(tok.piece(999), "");
}

fn bpe(pre: &str, merges: &[&str], extra: &[&str]) -> Tokenizer {
    let bytes: Vec<String> = BYTE_CHARS.iter().map(|c| c.to_string()).collect();
    let mut tokens: Vec<&str> = bytes.iter().map(String::as_str).collect();
    tokens.extend_from_slice(extra);
    let md = meta(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.merges", strings(merges)),
    ]);
    Tokenizer::from_gguf(&md).unwrap()
}

#[test]
fn bpe_merges_lowest_rank_first() {
    // Ranks: "b c" before "a b", so "abc" -> a + bc, never ab + c.
    let tok = bpe(
        "gpt-2",
        &["b c", "a b", "Ġ a", "Ġa bc"],
        &["bc", "ab", "Ġa", "Ġabc"],
    );
    let (a, bc, gabc) = (b'a' as u32, 256, 259);
    assert_eq!(tok.encode("abc", false, false), [a, bc]);
    assert_eq!(tok.encode(" abc", false, false), [gabc]);
    assert_eq!(tok.decode(&[gabc], false), " abc");
    // Every byte round-trips through the byte-level alphabet.
    let text = "\u{0}\t\n é語🔥";
    assert_eq!(tok.decode(&tok.encode(text, false, false), false), text);
}

#[test]
fn bpe_merge_results_outside_the_vocabulary_fall_back_to_bytes() {
    // "x y" merges into "xy" and "xy z" into "xyz", neither of them a token: the final symbol
    // is emitted byte by byte.
    let tok = bpe("gpt-2", &["x y", "xy z"], &[]);
    let ids = tok.encode("xyz", false, false);
    assert_eq!(ids, [b'x' as u32, b'y' as u32, b'z' as u32]);
}

#[test]
fn user_defined_tokens_split_even_without_special_parsing() {
    let tok = {
        let bytes: Vec<String> = BYTE_CHARS.iter().map(|c| c.to_string()).collect();
        let mut tokens: Vec<&str> = bytes.iter().map(String::as_str).collect();
        tokens.extend(["<user>", "<|im_end|>", "<|im_end|>x"]);
        let mut types = vec![Value::I32(1); 256];
        types.extend([Value::I32(4), Value::I32(3), Value::I32(3)]);
        Tokenizer::from_gguf(&meta(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("qwen2".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.merges", strings(&[])),
        ]))
        .unwrap()
    };
    assert_eq!(
        tok.encode("a<user>b", false, false),
        [b'a' as u32, 256, b'b' as u32]
    );
    // The longer special token is tried first.
    assert_eq!(tok.encode("<|im_end|>x<|im_end|>", false, true), [258, 257]);
    assert!(!tok.encode("<|im_end|>", false, false).contains(&257));
    assert!(tok.is_eog(257) && !tok.is_eog(256));
    assert!(tok.is_special(256) && tok.is_special(257));
    // Without GGUF keys, BPE vocabularies get llama.cpp's default BOS/EOS id 11.
    assert_eq!(tok.bos(), Some(11));
}

#[test]
fn every_known_pre_tokenizer_compiles() {
    let names = [
        "default",
        "llama3",
        "llama-bpe",
        "dbrx",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "gpt-2",
        "mpt",
        "trillion",
        "starcoder",
        "smollm",
        "qwen2",
        "stablelm2",
        "tekken",
        "gpt-4o",
        "poro-chat",
        "bloom",
        "viking",
        "seed-coder",
        "bailingmoe",
        "minicpm5",
    ];
    for name in names {
        let cfg = super::pre_config::config(Some(name)).unwrap_or_else(|| panic!("{name}"));
        let pre = super::pretokenize::PreTokenizer::new(cfg.patterns)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = "Hello, y'all! 1234567 语言 \u{3000}x  \n\n end";
        assert_eq!(pre.split(text).concat(), text, "{name}");
    }
    assert!(super::pre_config::config(Some("no-such-pre")).is_none());
    assert!(super::pre_config::config(None).is_some());
}
