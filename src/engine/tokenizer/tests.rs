//! Tests against llama.cpp: its tokenizer test vectors (`ggml-vocab-*.gguf.inp/.out`, tokenized
//! with `add_special = false, parse_special = false` as `test-tokenizer-0` does) and reference
//! tokenizations of the real models served by `llama-server` (special tokens parsed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Tokenizer;
use crate::engine::gguf::GgufFile;

fn load(path: &Path) -> Tokenizer {
    let gguf = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(gguf.metadata()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn model(name: &str) -> Tokenizer {
    let path = crate::catalog::ensure(name).unwrap_or_else(|e| panic!("model {name}: {e:#}"));
    load(&path)
}

fn vocab_file(name: &str) -> PathBuf {
    let dir = crate::catalog::ensure("llama-cpp-testdata")
        .unwrap_or_else(|e| panic!("llama-cpp-testdata: {e:#}"));
    dir.join(format!("ggml-vocab-{name}.gguf"))
}

/// Reads llama.cpp's `.inp`/`.out` pair the way `test-tokenizer-0` does.
fn read_vectors(vocab: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let p = PathBuf::from(format!("{}.{ext}", vocab.display()));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let (inp, out) = (read("inp"), read("out"));
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                inputs.push(rest[..i].to_string());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{}", vocab.display());
    inputs.into_iter().zip(outputs).collect()
}

fn check_vectors(name: &str) {
    let path = vocab_file(name);
    let tok = load(&path);
    let vectors = read_vectors(&path);
    let mut failures = Vec::new();
    for (text, want) in &vectors {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n    got {got:?}"));
        }
    }
    eprintln!(
        "ggml-vocab-{name}: {}/{} vectors match",
        vectors.len() - failures.len(),
        vectors.len()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

/// One test per llama.cpp vocabulary with test vectors that ward can load.
macro_rules! vector_tests {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_vectors($file);
            }
        )*
    };
}

vector_tests! {
    llama_spm_vectors => "llama-spm",
    llama_bpe_vectors => "llama-bpe",
    qwen2_vectors => "qwen2",
    phi3_vectors => "phi-3",
    gpt2_vectors => "gpt-2",
    deepseek_coder_vectors => "deepseek-coder",
    deepseek_llm_vectors => "deepseek-llm",
    falcon_vectors => "falcon",
    starcoder_vectors => "starcoder",
    refact_vectors => "refact",
    command_r_vectors => "command-r",
    mpt_vectors => "mpt",
}

fn check_reference(model_name: &str, file: &str) {
    let tok = model(model_name);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reference")
        .join(file);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = json["tokenize"].as_array().expect("`tokenize` array");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text, false, true),
            want,
            "{model_name}: {text:?}"
        );
    }
}

/// The greedy runs: prompts tokenized with BOS where the model adds one, and the generated
/// tokens' text.
fn check_reference_generation(model_name: &str, file: &str) {
    let tok = model(model_name);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reference")
        .join(file);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let runs = json["greedy"].as_array().expect("`greedy` array");
    assert!(!runs.is_empty());
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for run in runs {
        let prompt = run["prompt"].as_str().unwrap();
        assert_eq!(
            tok.encode(prompt, true, true),
            ids(&run["prompt_ids"]),
            "{prompt:?}"
        );
        let steps = run["steps"].as_array().unwrap();
        let generated: Vec<u32> = steps
            .iter()
            .map(|s| s["id"].as_u64().unwrap() as u32)
            .collect();
        // llama-server renders control tokens (the final `<|im_end|>`) as nothing.
        assert_eq!(tok.decode(&generated, true), run["text"].as_str().unwrap());
        for step in steps {
            for top in step["top"].as_array().unwrap() {
                let id = top[0].as_u64().unwrap() as u32;
                if let Ok(text) = String::from_utf8(tok.visible_bytes(id)) {
                    assert_eq!(text, top[1].as_str().unwrap(), "token {id}");
                }
            }
        }
    }
}

#[test]
fn smollm2_generation_reference() {
    check_reference_generation("smollm2-135m-instruct", "smollm2-shared.json");
}

#[test]
fn qwen05_generation_reference() {
    check_reference_generation("qwen2.5-coder-0.5b-instruct", "qwen05-shared.json");
}

#[test]
fn smollm2_matches_llama_server() {
    check_reference("smollm2-135m-instruct", "smollm2-shared.json");
}

#[test]
fn qwen05_matches_llama_server() {
    check_reference("qwen2.5-coder-0.5b-instruct", "qwen05-shared.json");
}

#[test]
fn decode_round_trips_vector_inputs() {
    // qwen2 keeps spaces as they are; SentencePiece drops only the space it added itself.
    for name in ["qwen2", "llama-spm"] {
        let path = vocab_file(name);
        let tok = load(&path);
        for (text, _) in read_vectors(&path) {
            let ids = tok.encode(&text, false, false);
            assert_eq!(tok.decode(&ids, false), text, "{name}");
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
            if name == "qwen2" {
                assert_eq!(bytes, text.as_bytes(), "{name}");
            }
        }
    }
}

#[test]
fn spm_adds_bos_and_space_prefix() {
    let tok = load(&vocab_file("llama-spm"));
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    let ids = tok.encode("Hello world", true, false);
    assert_eq!(ids[0], 1);
    assert_eq!(tok.piece(ids[1]), "▁Hello");
    // llama.cpp keeps the space after a BOS it does not strip.
    assert_eq!(tok.decode(&ids, true), " Hello world");
    assert_eq!(tok.decode(&ids[1..], true), "Hello world");
    // Byte fallback: a character missing from the vocabulary becomes its UTF-8 bytes.
    let ids = tok.encode("\u{10FFFD}", false, false);
    assert!(ids.len() >= 4, "{ids:?}");
    assert_eq!(tok.decode(&ids, false), "\u{10FFFD}");
}

#[test]
fn phi3_special_tokens_swallow_following_whitespace() {
    // llama.cpp gives Phi-3's special tokens `rstrip` (keyed on `general.name`), except `<s>`.
    let tok = load(&vocab_file("phi-3"));
    let end = tok.token_id("<|end|>").unwrap();
    let spaced = tok.encode("a<|end|>  \n b", false, true);
    assert!(spaced.contains(&end), "{spaced:?}");
    assert_eq!(spaced, tok.encode("a<|end|>b", false, true));
    // `</s>` is user-defined in the file, but llama.cpp makes it control as an EOG token, so
    // without special parsing it is plain text.
    assert!(
        !tok.encode("a</s>b", false, false)
            .contains(&tok.token_id("</s>").unwrap())
    );
    let bos = tok.encode("<s> b", false, true);
    assert_eq!(bos[0], 1);
    assert_ne!(bos, tok.encode("<s>b", false, true));
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let tok = model("qwen2.5-coder-0.5b-instruct");
    let im_start = tok.token_id("<|im_start|>").unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let text = "<|im_start|>user\nhi<|im_end|>";
    let parsed = tok.encode(text, false, true);
    assert_eq!(parsed.first(), Some(&im_start));
    assert_eq!(parsed.last(), Some(&im_end));
    let plain = tok.encode(text, false, false);
    assert!(!plain.contains(&im_start) && !plain.contains(&im_end));
    assert_eq!(tok.decode(&plain, false), text);
    assert_eq!(tok.decode(&parsed, false), text);
    assert_eq!(tok.decode(&parsed, true), "user\nhi");
    assert!(tok.is_special(im_start) && !tok.is_special(tok.token_id("hi").unwrap()));
    assert!(tok.is_eog(im_end) && tok.is_eog(tok.token_id("<|endoftext|>").unwrap()));
    assert!(!tok.is_eog(im_start));
    // Qwen2.5 does not add BOS.
    assert_eq!(tok.encode("hi", true, true), tok.encode("hi", false, true));
}

#[test]
fn smollm2_ids_and_eog() {
    let tok = model("smollm2-135m-instruct");
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(tok.is_eog(2) && tok.is_eog(0));
    assert!(!tok.is_eog(1));
    assert_eq!(tok.piece(1), "<|im_start|>");
    assert_eq!(tok.token_bytes(1), b"<|im_start|>");
    assert!(tok.visible_bytes(1).is_empty());
    assert_eq!(tok.token_bytes(tok.token_id("Ġworld").unwrap()), b" world");
}

#[test]
fn tokenizer_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    let tok = Arc::new(load(&vocab_file("gpt-2")));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let tok = Arc::clone(&tok);
            std::thread::spawn(move || tok.encode("Hello world", false, false))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), tok.encode("Hello world", false, false));
    }
}

/// Gemma 3 (SentencePiece, 262k tokens, user-defined whitespace tokens) against llama.cpp's
/// `llama-tokenize`, with and without BOS and special parsing.
#[test]
fn gemma3_matches_llama_tokenize() {
    let tok = model("gemma-3-270m");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/engine/tokenizer/testdata/gemma3-tokenize.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = json["tokenize"].as_array().unwrap();
    assert!(cases.len() > 50);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true, true),
            ids(&case["special"]),
            "{text:?}"
        );
        let plain = tok.encode(text, false, false);
        assert_eq!(plain, ids(&case["plain"]), "{text:?} (plain)");
        assert_eq!(tok.decode(&plain, false), text);
    }
    assert!(tok.is_eog(tok.token_id("<end_of_turn>").unwrap()));
    assert!(tok.is_eog(tok.eos().unwrap()));
}
