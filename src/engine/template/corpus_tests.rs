//! Tests against real templates: the GGUF templates of the reference models, whose renderings by
//! llama.cpp are recorded in `tests/data/reference/`, and llama.cpp's collection of ~70 templates
//! from popular models (catalog entry `llama-cpp-testdata`, folder `templates/`).

use std::path::Path;

use serde_json::json;

use super::*;
use crate::engine::gguf::GgufFile;

/// The model's template with its BOS / EOS token texts.
fn gguf_template(model: &str) -> ChatTemplate {
    let path = crate::catalog::ensure(model).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    let meta = gguf.metadata();
    let tokens = meta.str_array("tokenizer.ggml.tokens").unwrap();
    let token = |key: &str| {
        let id = meta.opt_usize(key).unwrap();
        id.map(|id| tokens[id].to_string()).unwrap_or_default()
    };
    let source = meta.str("tokenizer.chat_template").unwrap();
    let bos = token("tokenizer.ggml.bos_token_id");
    let eos = token("tokenizer.ggml.eos_token_id");
    ChatTemplate::new(source, &bos, &eos).unwrap()
}

fn check_reference(model: &str, file: &str) {
    let template = gguf_template(model);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reference")
        .join(file);
    let data: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = data["chat_template"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let rendered = template.render(&messages, None, true).unwrap();
        assert_eq!(
            rendered,
            case["prompt"].as_str().unwrap(),
            "{model}: {messages:?}"
        );
    }
}

#[test]
fn smollm2_template_matches_llama_cpp() {
    check_reference("smollm2-135m-instruct", "smollm2-shared.json");
}

#[test]
fn qwen_template_matches_llama_cpp() {
    check_reference("qwen2.5-coder-0.5b-instruct", "qwen05-shared.json");
}

const SYSTEM: &str = "You are a SOC analyst.";
const QUESTION: &str = "Is 203.0.113.77 in any blocklist?";
const FOLLOW_UP: &str = "And what about web-01?";

fn weather_tool() -> serde_json::Value {
    json!({"type": "function", "function": {
        "name": "lookup_ip", "description": "Looks an IP address up in threat intelligence.",
        "parameters": {"type": "object",
            "properties": {"ip": {"type": "string", "description": "The IPv4 address."}},
            "required": ["ip"]}}})
}

/// System, user, assistant, user.
fn plain_conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(SYSTEM),
        ChatMessage::user(QUESTION),
        ChatMessage::assistant("Let me check."),
        ChatMessage::user(FOLLOW_UP),
    ]
}

/// System, user, assistant tool call, tool result, assistant, user. The call id has 9
/// alphanumerics, which Mistral's templates require.
fn tool_conversation() -> Vec<ChatMessage> {
    let call: ChatMessage = serde_json::from_value(json!({"role": "assistant", "content": null,
        "tool_calls": [{"id": "call12345", "type": "function",
            "function": {"name": "lookup_ip", "arguments": "{\"ip\": \"203.0.113.77\"}"}}]}))
    .unwrap();
    let mut result = ChatMessage::new("tool", "{\"listed\": true}");
    result.tool_call_id = Some("call12345".to_string());
    result.name = Some("lookup_ip".to_string());
    vec![
        ChatMessage::system(SYSTEM),
        ChatMessage::user(QUESTION),
        call,
        result,
        ChatMessage::assistant("It is listed."),
        ChatMessage::user(FOLLOW_UP),
    ]
}

/// The variables firefunction-v2 requires besides the standard ones, which transformers callers
/// pass as keyword arguments: `datetime` (llama.cpp always defines it) and `functions`, the tool
/// definitions as JSON text. Other templates ignore them.
fn extra(tools: Option<&[serde_json::Value]>) -> serde_json::Map<String, serde_json::Value> {
    let functions = serde_json::to_string(tools.unwrap_or_default()).unwrap();
    let mut extra = serde_json::Map::new();
    extra.insert("datetime".into(), json!("Jul 26 2024"));
    extra.insert("functions".into(), json!(functions));
    extra
}

#[test]
fn llama_cpp_templates_render() {
    let dir = crate::catalog::ensure("llama-cpp-testdata")
        .unwrap()
        .join("templates");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jinja"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 50,
        "only {} templates in {}",
        files.len(),
        dir.display()
    );
    let (mut plain, mut with_tools, mut failures) = (0, 0, Vec::new());
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(file).unwrap();
        let template = match ChatTemplate::new(&source, "<s>", "</s>") {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let tools = [weather_tool()];
        let mut runs = vec![(plain_conversation(), None)];
        if source.contains("tool_calls") {
            runs.push((tool_conversation(), Some(&tools[..])));
        }
        for (messages, tools) in runs {
            match template.render_with(&messages, tools, true, &extra(tools)) {
                Ok(out) if out.contains(FOLLOW_UP) && out.contains(SYSTEM) => {
                    if tools.is_some() {
                        with_tools += 1;
                    } else {
                        plain += 1;
                    }
                }
                Ok(out) => failures.push(format!("{name}: turns missing from {out:?}")),
                Err(e) => failures.push(format!("{name} (tools: {}): {e}", tools.is_some())),
            }
        }
    }
    eprintln!(
        "{} templates: {plain} rendered a plain conversation, {with_tools} one with tool calls",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
