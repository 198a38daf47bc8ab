//! Constraints on a hand-built byte-level BPE vocabulary: the exact masks of a small regex,
//! special tokens, random walks through JSON grammars that must always stay valid, grammar
//! errors, and a sequence that stops when its grammar is complete.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value as Gguf;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::env::token_word;
use super::{Constraint, ConstraintEnv, ConstraintSpec};
use crate::engine::error::EngineError;
use crate::engine::generate::{FinishReason, GenerationRequest, Sequence};
use crate::engine::gguf::Metadata;
use crate::engine::tokenizer::Tokenizer;

/// GPT-2's printable stand-in for each byte.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// Merged tokens after the 256 bytes (ids 256..), then the user-defined token `<u>` and the
/// control token `<|end|>`.
const MERGED: [&str; 6] = ["ab", "bd", "cd", "{\"", "\":", "tr"];

/// Token ids 0..256 are the bytes themselves.
fn tokenizer() -> Tokenizer {
    let chars = byte_chars();
    let spell = |s: &str| -> String { s.bytes().map(|b| chars[b as usize]).collect() };
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    tokens.extend(MERGED.iter().map(|m| spell(m)));
    tokens.push("<u>".into());
    tokens.push("<|end|>".into());
    let merges: Vec<String> = MERGED
        .iter()
        .map(|m| {
            let (a, b) = m.split_at(1);
            format!("{} {}", spell(a), spell(b))
        })
        .collect();
    let mut types = vec![Gguf::I32(1); tokens.len() - 2];
    types.extend([Gguf::I32(4), Gguf::I32(3)]);
    let strings = |v: &[String]| Gguf::Array(v.iter().map(|s| Gguf::String(s.clone())).collect());
    let md = Metadata(HashMap::from([
        (
            "tokenizer.ggml.model".to_string(),
            Gguf::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Gguf::String("qwen2".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), strings(&tokens)),
        ("tokenizer.ggml.token_type".to_string(), Gguf::Array(types)),
        ("tokenizer.ggml.merges".to_string(), strings(&merges)),
        ("tokenizer.ggml.eos_token_id".to_string(), Gguf::U32(END)),
    ]));
    Tokenizer::from_gguf(&md).unwrap()
}

const USER: u32 = 256 + MERGED.len() as u32;
const END: u32 = USER + 1;
const AB: u32 = 256;
const BD: u32 = 257;
const CD: u32 = 258;

fn env() -> Arc<ConstraintEnv> {
    Arc::new(ConstraintEnv::with_tokenizer(Arc::new(tokenizer())).unwrap())
}

/// The tokens the mask leaves open (the row is two longer than the vocabulary, as padded
/// output matrices are).
fn allowed(c: &mut Constraint) -> Vec<u32> {
    let mut logits = vec![0.0f32; END as usize + 3];
    c.mask(&mut logits);
    (0..logits.len() as u32)
        .filter(|&t| logits[t as usize].is_finite())
        .collect()
}

#[test]
fn environment_spells_tokens_as_the_loop_emits_them() {
    let tok = tokenizer();
    assert_eq!(token_word(&tok, b'a' as u32), b"a");
    assert_eq!(token_word(&tok, AB), b"ab");
    assert_eq!(token_word(&tok, USER), b"<u>");
    assert_eq!(token_word(&tok, END), b"\xFF<|end|>");
    let env = ConstraintEnv::with_tokenizer(Arc::new(tok)).unwrap();
    assert!(env.is_canonical());
    assert_eq!(&*env.eos_ids(), [END]);
    assert!(!ConstraintEnv::new(&tokenizer()).unwrap().is_canonical());
}

#[test]
fn regex_masks_are_exact() {
    let env = env();
    let mut c = Constraint::new(&ConstraintSpec::Regex("a(b|c)d".into()), &env).unwrap();
    assert_eq!(allowed(&mut c), [b'a' as u32, AB]);
    assert!(!c.is_accepting());
    c.commit(b'a' as u32).unwrap();
    assert_eq!(allowed(&mut c), [b'b' as u32, b'c' as u32, BD, CD]);
    c.commit(b'c' as u32).unwrap();
    assert_eq!(allowed(&mut c), [b'd' as u32]);
    assert!(!c.is_finished());
    c.commit(b'd' as u32).unwrap();
    assert!(c.is_accepting() && c.is_finished() && c.error().is_none());
    assert_eq!(allowed(&mut c), [END]);
}

#[test]
fn eos_is_allowed_only_where_the_grammar_may_end() {
    let env = env();
    let mut c = Constraint::new(&ConstraintSpec::Regex("a+".into()), &env).unwrap();
    assert!(!allowed(&mut c).contains(&END));
    c.commit(b'a' as u32).unwrap();
    let open = allowed(&mut c);
    assert!(open.contains(&END) && open.contains(&(b'a' as u32)));
    assert!(c.is_accepting() && !c.is_finished());
    c.commit(END).unwrap();
    assert!(c.is_finished() && c.error().is_none());
}

#[test]
fn special_tokens_are_reached_only_by_name() {
    let env = env();
    // The text "<|end|>" is spelled with bytes, never with the control token.
    let mut c = Constraint::new(&ConstraintSpec::Regex(r"<\|end\|>x".into()), &env).unwrap();
    assert_eq!(allowed(&mut c), [b'<' as u32]);
    // User-defined tokens are text, as the generation loop emits them: the forced text
    // "<u>x" is spelled canonically, starting with the user-defined token.
    let mut c = Constraint::new(&ConstraintSpec::Regex("<u>x".into()), &env).unwrap();
    assert_eq!(allowed(&mut c), [USER]);
    // A Lark grammar asks for the control token by name.
    let mut c =
        Constraint::new(&ConstraintSpec::Lark("start: \"a\" <|end|>".into()), &env).unwrap();
    c.commit(b'a' as u32).unwrap();
    assert_eq!(allowed(&mut c), [END]);
}

#[test]
fn a_rejected_token_is_an_error_and_only_eos_remains() {
    let env = env();
    let mut c = Constraint::new(&ConstraintSpec::Regex("ab".into()), &env).unwrap();
    assert!(c.commit(b'z' as u32).is_err());
    assert!(c.is_finished() && c.error().is_some());
    assert_eq!(allowed(&mut c), [END]);
}

/// Walks a grammar with random allowed tokens, preferring to close: EOS when allowed, else
/// a closing byte half of the time. Returns the text if the grammar finished.
fn walk(c: &mut Constraint, tok: &Tokenizer, rng: &mut StdRng) -> Option<String> {
    let mut out = Vec::new();
    for _ in 0..400 {
        let open = allowed(c);
        assert!(!open.is_empty());
        let closers: Vec<u32> = open
            .iter()
            .copied()
            .filter(|&t| t < 256 && b"}]\"0".contains(&(t as u8)))
            .collect();
        let t = if open.contains(&END) {
            END
        } else if !closers.is_empty() && rng.gen_bool(0.5) {
            closers[rng.gen_range(0..closers.len())]
        } else {
            open[rng.gen_range(0..open.len())]
        };
        c.commit(t)
            .unwrap_or_else(|e| panic!("the mask allowed {t}, which the grammar rejects: {e}"));
        if t != END {
            out.extend(token_word(tok, t));
        }
        if c.is_finished() {
            assert!(c.error().is_none() && c.is_accepting());
            return Some(String::from_utf8(out).expect("the grammar allows only UTF-8"));
        }
    }
    None
}

#[test]
fn random_walks_through_json_object_stay_valid() {
    let (tok, env) = (tokenizer(), env());
    let mut finished = 0;
    for seed in 0..40 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c = Constraint::new(&ConstraintSpec::JsonObject, &env).unwrap();
        if let Some(text) = walk(&mut c, &tok, &mut rng) {
            // Syntax only: random exponents overflow f64, which JSON allows.
            serde_json::from_str::<IgnoredAny>(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(text.trim_start().starts_with('{'), "{text}");
            finished += 1;
        }
    }
    assert!(finished >= 10, "only {finished} walks finished");
}

#[test]
fn random_walks_through_a_schema_match_it() {
    let schema = json!({
        "type": "object",
        "properties": {
            "n": { "type": "integer" },
            "kind": { "enum": ["ab", "cd"] },
            "tags": { "type": "array", "items": { "type": "boolean" }, "maxItems": 3 }
        },
        "required": ["n", "kind", "tags"],
        "additionalProperties": false
    });
    let (tok, env) = (tokenizer(), env());
    let spec = ConstraintSpec::JsonSchema {
        schema,
        strict: true,
    };
    let mut finished = 0;
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c = Constraint::new(&spec, &env).unwrap();
        // Whitespace may follow `{`, so both spellings are open; `"` alone is not.
        assert_eq!(allowed(&mut c), [b'{' as u32, 256 + 3]);
        let Some(text) = walk(&mut c, &tok, &mut rng) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3, "{text}");
        assert!(o["n"].is_i64() || o["n"].is_u64(), "{text}");
        assert!(o["kind"] == "ab" || o["kind"] == "cd", "{text}");
        let tags = o["tags"].as_array().unwrap();
        assert!(
            tags.len() <= 3 && tags.iter().all(Value::is_boolean),
            "{text}"
        );
        finished += 1;
    }
    assert!(finished >= 5, "only {finished} walks finished");
}

#[test]
fn bad_grammars_are_invalid_parameters() {
    let env = env();
    let param = |spec: ConstraintSpec| match Constraint::new(&spec, &env) {
        Err(EngineError::InvalidParameter { param, reason }) => {
            assert!(!reason.is_empty());
            param
        }
        Err(e) => panic!("{spec:?}: unexpected {e}"),
        Ok(_) => panic!("{spec:?} compiled"),
    };
    let schema = |schema: Value, strict| ConstraintSpec::JsonSchema { schema, strict };
    assert_eq!(param(schema(json!("string"), true)), "response_format");
    assert_eq!(
        param(schema(json!({"type": "no-such-type"}), false)),
        "response_format"
    );
    assert_eq!(param(ConstraintSpec::Lark("start: (".into())), "tools");
    assert_eq!(param(ConstraintSpec::Lark("  ".into())), "tools");
    assert_eq!(param(ConstraintSpec::Regex("a(".into())), "response_format");
    // Keywords llguidance cannot enforce: refused when strict, ignored otherwise.
    let odd = json!({"type": "string", "format": "no-such-format"});
    assert_eq!(param(schema(odd.clone(), true)), "response_format");
    assert!(Constraint::new(&schema(odd, false), &env).is_ok());
    assert!(Constraint::new(&schema(json!(true), true), &env).is_ok());
}

#[test]
fn a_sequence_stops_when_its_grammar_is_complete() {
    let tok = tokenizer();
    let env = env();
    let mut req = GenerationRequest::new(vec![b'x' as u32], 50);
    req.sampling.seed = Some(7);
    req.logprobs = Some(0);
    req.constraint = Some(env.bind(ConstraintSpec::Regex("a(b|c)d".into())));
    let mut seq = Sequence::new(req).unwrap();
    let mut text = String::new();
    loop {
        // The model prefers the control token; the grammar forbids it until the end.
        let mut logits = vec![0.0f32; END as usize + 1];
        logits[END as usize] = 5.0;
        let ev = seq.step(&mut logits, &tok);
        let lp = ev.logprob.unwrap();
        assert!(lp.logprob < -4.0, "logprobs come from the unmasked row");
        text.push_str(&ev.text);
        if let Some(f) = ev.finish {
            assert_eq!(f, FinishReason::Stop);
            break;
        }
    }
    assert!(["abd", "acd"].contains(&text.as_str()), "{text}");
    assert!(seq.generated() <= 3 && seq.constraint_error().is_none());
}

#[test]
fn an_unusable_grammar_fails_the_sequence_at_start() {
    let mut req = GenerationRequest::new(vec![1], 5);
    req.constraint = Some(env().bind(ConstraintSpec::Lark("start: nowhere".into())));
    assert!(matches!(
        Sequence::new(req),
        Err(EngineError::InvalidParameter { param: "tools", .. })
    ));
}

#[test]
fn thread_safety() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<ConstraintEnv>();
    send::<Constraint>();
    send::<Sequence>();
}
