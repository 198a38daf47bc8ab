//! Constrained generation with the real default model (smollm2-135m-instruct): JSON objects and
//! a strict schema parse and validate, sampling at temperature 1 never leaves the grammar, and
//! log-probabilities stay the model's own. `mask_cost` (ignored; run with `--ignored
//! --nocapture`) prints the per-token cost of the mask on smollm2's and qwen's vocabularies.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Constraint, ConstraintEnv, ConstraintSpec};
use crate::engine::generate::{self, Completion, FinishReason, GenerationRequest};
use crate::engine::gguf::GgufFile;
use crate::engine::loaded::LoadedModel;
use crate::engine::model::Model;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::{ChatMessage, ChatTemplate};
use crate::engine::tokenizer::Tokenizer;

struct Setup {
    model: Box<dyn Model>,
    tok: Arc<Tokenizer>,
    template: ChatTemplate,
    env: Arc<ConstraintEnv>,
}

/// The model, with a canonical environment ([`ConstraintEnv::with_tokenizer`]) or not.
fn setup_with(canonical: bool) -> Setup {
    let path = crate::catalog::ensure("smollm2-135m-instruct").expect("smollm2-135m-instruct");
    let LoadedModel {
        model,
        tokenizer,
        template,
        ..
    } = LoadedModel::open(&path).unwrap();
    let tok = Arc::new(tokenizer);
    let env = if canonical {
        ConstraintEnv::with_tokenizer(Arc::clone(&tok)).unwrap()
    } else {
        ConstraintEnv::new(&tok).unwrap()
    };
    assert_eq!(env.is_canonical(), canonical);
    Setup {
        model,
        tok,
        template,
        env: Arc::new(env),
    }
}

fn setup() -> Setup {
    setup_with(true)
}

impl Setup {
    fn run(&self, ask: &str, spec: Option<ConstraintSpec>, sampling: SamplingParams) -> Completion {
        let msg: ChatMessage =
            serde_json::from_value(json!({"role": "user", "content": ask})).unwrap();
        let prompt = self.template.render(&[msg], None, true).unwrap();
        let mut req = GenerationRequest::new(self.tok.encode(&prompt, true, true), 256);
        req.sampling = sampling;
        req.constraint = spec.map(|s| self.env.bind(s));
        let mut pool = self.model.new_pool(req.prompt.len() + req.max_tokens);
        generate::generate(self.model.as_ref(), &self.tok, &mut pool, req, |_| true).unwrap()
    }
}

fn sampling(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

const ASK_PERSON: &str = "Invent a person. Reply in JSON with their name, age, role and skills.";

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "maxLength": 40 },
            "age": { "type": "integer", "minimum": 0, "maximum": 150 },
            "role": { "type": "string", "enum": ["analyst", "engineer", "manager"] },
            "skills": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "skill": { "type": "string", "maxLength": 30 },
                        "years": { "type": "integer", "minimum": 0, "maximum": 60 }
                    },
                    "required": ["skill", "years"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["name", "age", "role", "skills"],
        "additionalProperties": false
    })
}

/// Checks a value against `person_schema`, by hand.
fn check_person(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["age", "name", "role", "skills"] {
        return Err(format!("keys {keys:?}"));
    }
    let name = o["name"].as_str().ok_or("name is not a string")?;
    if name.chars().count() > 40 {
        return Err("name too long".into());
    }
    let age = o["age"]
        .as_u64()
        .ok_or("age is not a non-negative integer")?;
    if age > 150 {
        return Err("age out of range".into());
    }
    if !["analyst", "engineer", "manager"].contains(&o["role"].as_str().unwrap_or("")) {
        return Err(format!("role {}", o["role"]));
    }
    let skills = o["skills"].as_array().ok_or("skills is not an array")?;
    if skills.len() > 3 {
        return Err("too many skills".into());
    }
    for s in skills {
        let s = s.as_object().ok_or("skill is not an object")?;
        let ok = s.len() == 2
            && s.get("skill")
                .and_then(Value::as_str)
                .is_some_and(|t| t.chars().count() <= 30)
            && s.get("years")
                .and_then(Value::as_u64)
                .is_some_and(|y| y <= 60);
        if !ok {
            return Err(format!("skill {s:?}"));
        }
    }
    Ok(())
}

#[test]
fn json_object_outputs_parse_as_objects() {
    let s = setup();
    let asks = [
        "Give me the capital and population of France as JSON.",
        "What is 2+2? Answer as a JSON object with the key \"answer\".",
        "Reply with a JSON object holding a name and an age.",
    ];
    for ask in asks {
        let out = s.run(
            ask,
            Some(ConstraintSpec::JsonObject),
            SamplingParams::greedy(),
        );
        assert_eq!(out.finish, FinishReason::Stop, "{ask}: {}", out.text);
        let v: Value =
            serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{}: {e}", out.text));
        assert!(v.is_object(), "{}", out.text);
    }
}

#[test]
fn strict_schema_output_validates() {
    let s = setup();
    let spec = ConstraintSpec::JsonSchema {
        schema: person_schema(),
        strict: true,
    };
    let out = s.run(ASK_PERSON, Some(spec), SamplingParams::greedy());
    assert_eq!(out.finish, FinishReason::Stop, "{}", out.text);
    let v: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{}: {e}", out.text));
    check_person(&v).unwrap_or_else(|e| panic!("{e}: {}", out.text));
}

#[test]
fn sampling_at_temperature_one_never_leaves_the_grammar() {
    // Both ways of spelling forced text: the tokenizer's own, and any tokens the model picks.
    for canonical in [true, false] {
        let s = setup_with(canonical);
        temperature_one(&s, canonical);
    }
}

fn temperature_one(s: &Setup, canonical: bool) {
    let spec = ConstraintSpec::JsonSchema {
        schema: person_schema(),
        strict: true,
    };
    let mut finished = 0;
    for seed in 1..=3 {
        let out = s.run(ASK_PERSON, Some(spec.clone()), sampling(1.0, seed));
        let seed = format!("seed {seed}, canonical {canonical}");
        match out.finish {
            FinishReason::Stop => {
                let v: Value = serde_json::from_str(&out.text)
                    .unwrap_or_else(|e| panic!("{seed}: {e}: {}", out.text));
                check_person(&v).unwrap_or_else(|e| panic!("{seed}: {e}: {}", out.text));
                finished += 1;
            }
            // Cut off by max_tokens: what is there must be a prefix of valid JSON.
            _ => match serde_json::from_str::<Value>(&out.text) {
                Err(e) if e.is_eof() => {}
                other => panic!("{seed}: not a JSON prefix ({other:?}): {}", out.text),
            },
        }
    }
    assert!(
        finished >= 2,
        "canonical {canonical}: {finished} of 3 outputs finished"
    );
}

#[test]
fn logprobs_report_the_unmasked_distribution() {
    let s = setup();
    let first = |spec: Option<ConstraintSpec>| {
        let msg: ChatMessage =
            serde_json::from_value(json!({"role": "user", "content": "Hi!"})).unwrap();
        let prompt = s.template.render(&[msg], None, true).unwrap();
        let mut req = GenerationRequest::new(s.tok.encode(&prompt, true, true), 1);
        req.sampling = SamplingParams::greedy();
        req.logprobs = Some(5);
        req.constraint = spec.map(|c| s.env.bind(c));
        let mut pool = s.model.new_pool(req.prompt.len() + 1);
        generate::generate(s.model.as_ref(), &s.tok, &mut pool, req, |_| true).unwrap()
    };
    let free = first(None);
    let held = first(Some(ConstraintSpec::Regex("[0-9]{3}".into())));
    assert!(
        s.tok
            .token_bytes(held.tokens[0])
            .iter()
            .all(u8::is_ascii_digit)
    );
    assert_ne!(
        free.tokens, held.tokens,
        "the model's own choice is not a digit"
    );
    assert_eq!(free.logprobs[0].top, held.logprobs[0].top);
    assert!(held.logprobs[0].logprob < free.logprobs[0].logprob);
}

/// Replays the canonical tokens of a document through a fresh constraint, timing each mask.
fn time_masks(name: &str, tok: &Arc<Tokenizer>, spec: &ConstraintSpec, doc: &str) {
    let t0 = Instant::now();
    let env = ConstraintEnv::with_tokenizer(Arc::clone(tok)).unwrap();
    let env_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let mut c = Constraint::new(spec, &env).unwrap();
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let tokens = tok.encode(doc, false, false);
    let mut logits = vec![0.0f32; tok.vocab_size()];
    let mut us = Vec::new();
    for &t in &tokens {
        logits.fill(0.0);
        let t0 = Instant::now();
        c.mask(&mut logits);
        us.push(t0.elapsed().as_secs_f64() * 1e6);
        assert!(
            logits[t as usize].is_finite(),
            "{name}: {:?} masked",
            tok.piece(t)
        );
        c.commit(t).unwrap();
    }
    let first = us[0];
    let mean = us[1..].iter().sum::<f64>() / (us.len() - 1) as f64;
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize];
    // The write into the logit row alone, for a mask with every other token open.
    let words = vec![0x5555_5555u32; tok.vocab_size().div_ceil(32)];
    let t0 = Instant::now();
    for _ in 0..100 {
        super::mask::apply(&words, tok.vocab_size(), &mut logits);
    }
    let apply_us = t0.elapsed().as_secs_f64() * 1e4;
    println!(
        "{name}: vocab {}, canonical {}, env {env_ms:.0} ms, compile {compile_ms:.2} ms, \
         mask µs/token: first {first:.0}, then mean {mean:.0}, median {:.0}, p90 {:.0}, max {:.0} \
         ({} tokens); applying a mask {apply_us:.0} µs",
        tok.vocab_size(),
        env.is_canonical(),
        at(0.5),
        at(0.9),
        at(1.0),
        tokens.len()
    );
}

#[test]
#[ignore = "timing report, run with --ignored --nocapture"]
fn mask_cost() {
    let doc = r#"{"name": "Ada Lovelace", "age": 36, "role": "engineer", "skills": [{"skill": "mathematics", "years": 20}, {"skill": "poetry", "years": 3}]}"#;
    let schema = ConstraintSpec::JsonSchema {
        schema: person_schema(),
        strict: true,
    };
    for model in [
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "gemma-3-270m",
    ] {
        let path = crate::catalog::ensure(model).unwrap();
        let tok = Tokenizer::from_gguf(GgufFile::open(&path).unwrap().metadata()).unwrap();
        let tok = Arc::new(tok);
        time_masks(&format!("{model} json_schema"), &tok, &schema, doc);
        time_masks(
            &format!("{model} json_object"),
            &tok,
            &ConstraintSpec::JsonObject,
            doc,
        );
    }
}
