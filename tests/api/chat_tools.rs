//! Tool calling through `/v1/chat/completions`: forced calls (`required`, a named function) in
//! OpenAI's shape, plain and as index-keyed streamed deltas; `none`; tool messages round-trip.
//! Forced calls run greedy: they test the grammar and the wire shape, not how well a 135M model
//! fills in free-text arguments at temperature 1.

use serde_json::{Value, json};

use crate::common::*;

/// Tools whose arguments are bounded (length, pattern, range), so that a forced call always
/// completes within `max_tokens` and the bounds themselves are checked.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "block_ip", "description": "Block an IP address at the firewall.",
            "parameters": {"type": "object", "properties": {
                "ip": {"type": "string", "pattern": "^[0-9]{1,3}(\\.[0-9]{1,3}){3}$"},
                "minutes": {"type": "integer", "minimum": 1, "maximum": 10080}}, "required": ["ip", "minutes"]}}}
    ])
}

/// Checks one call's shape; returns (name, parsed arguments).
fn check_call(c: &Value) -> (String, Value) {
    assert!(
        c["id"].as_str().is_some_and(|s| !s.is_empty()),
        "call id: {c}"
    );
    assert_eq!(c["type"], "function", "{c}");
    let name = c["function"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("name: {c}"))
        .to_string();
    let args = c["function"]["arguments"]
        .as_str()
        .unwrap_or_else(|| panic!("arguments must be a JSON string: {c}"));
    let parsed: Value = serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("arguments do not parse ({e}): {args}"));
    (name, parsed)
}

fn check_args(name: &str, args: &Value) {
    let o = args
        .as_object()
        .unwrap_or_else(|| panic!("arguments are an object: {args}"));
    match name {
        "get_weather" => {
            assert!(
                o["city"].as_str().is_some_and(|c| c.chars().count() <= 24),
                "{args}"
            );
            assert_eq!(o.len(), 1, "no undeclared arguments: {args}");
        }
        "block_ip" => {
            let ip = o["ip"].as_str().unwrap_or_else(|| panic!("{args}"));
            let parts: Vec<&str> = ip.split('.').collect();
            assert!(
                parts.len() == 4
                    && parts.iter().all(
                        |p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
                    ),
                "{args}"
            );
            assert!(
                o["minutes"]
                    .as_i64()
                    .is_some_and(|m| (1..=10080).contains(&m)),
                "{args}"
            );
            assert_eq!(o.len(), 2, "no undeclared arguments: {args}");
        }
        other => panic!("unknown tool {other}"),
    }
}

#[tokio::test]
async fn forced_tool_calls() {
    let app = shared();
    let cases = [
        (json!("required"), None),
        (
            json!({"type": "function", "function": {"name": "block_ip"}}),
            Some("block_ip"),
        ),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            Some("get_weather"),
        ),
    ];
    for (choice, want) in cases {
        let body = chat(
            "What is the weather in Paris? Also block 10.0.0.5 for an hour.",
            json!({"max_tokens": 120, "temperature": 0, "tools": tools(), "tool_choice": choice, "parallel_tool_calls": false}),
        );
        let v = post(&app, "/v1/chat/completions", &body).await.ok_json();
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        assert_eq!(c["message"]["role"], "assistant");
        assert!(
            c["message"]["content"].is_null() || c["message"]["content"] == "",
            "{v}"
        );
        let calls = c["message"]["tool_calls"]
            .as_array()
            .unwrap_or_else(|| panic!("tool_calls: {v}"));
        assert_eq!(calls.len(), 1, "parallel_tool_calls false: one call: {v}");
        let (name, args) = check_call(&calls[0]);
        if let Some(w) = want {
            assert_eq!(name, w, "{v}");
        }
        check_args(&name, &args);
    }
}

#[tokio::test]
async fn tool_choice_none_gives_text() {
    let app = shared();
    let body = chat(
        "What is the weather in Paris?",
        json!({"max_tokens": 12, "tools": tools(), "tool_choice": "none"}),
    );
    let v = post(&app, "/v1/chat/completions", &body).await.ok_json();
    assert!(
        v["choices"][0]["message"]
            .get("tool_calls")
            .is_none_or(Value::is_null),
        "{v}"
    );
    assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
    assert!(v["choices"][0]["message"]["content"].is_string());
}

#[tokio::test]
async fn streamed_tool_calls() {
    let app = shared();
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "block_ip"}}),
    ] {
        let body = chat(
            "Block 10.0.0.5 for an hour.",
            json!({"max_tokens": 160, "temperature": 0, "tools": tools(), "tool_choice": choice, "stream": true, "stream_options": {"include_usage": true}}),
        );
        let resp = post(&app, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.body);
        let events = sse_events(&resp.body);
        // index -> (id, name, arguments)
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut finish = None;
        let mut text = String::new();
        for e in &events {
            for c in e["choices"].as_array().unwrap() {
                assert_eq!(c["index"], 0);
                assert!(finish.is_none(), "nothing after finish_reason: {e}");
                if let Some(t) = c["delta"]["content"].as_str() {
                    text.push_str(t);
                }
                for d in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    let k = d["index"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("tool call deltas carry an index: {d}"))
                        as usize;
                    if k == calls.len() {
                        // The first delta of a call: id, type and name.
                        let id = d["id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("first delta has the id: {d}"));
                        assert_eq!(d["type"], "function", "{d}");
                        let name = d["function"]["name"]
                            .as_str()
                            .unwrap_or_else(|| panic!("first delta has the name: {d}"));
                        let args = d["function"]["arguments"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        calls.push((id.to_string(), name.to_string(), args));
                    } else {
                        assert!(k < calls.len(), "indices grow by one: {d}");
                        assert!(
                            d.get("id").is_none_or(Value::is_null),
                            "later deltas carry no id: {d}"
                        );
                        assert!(
                            d["function"].get("name").is_none_or(Value::is_null),
                            "later deltas carry no name: {d}"
                        );
                        calls[k].2.push_str(
                            d["function"]["arguments"]
                                .as_str()
                                .expect("argument fragment"),
                        );
                    }
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
        }
        assert_eq!(finish.as_deref(), Some("tool_calls"), "{}", resp.body);
        assert!(!calls.is_empty(), "{}", resp.body);
        assert!(
            !text.contains("tool_call"),
            "no raw tool-call markup in content: {text:?}"
        );
        for (id, name, args) in &calls {
            let call = json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}});
            let (name, args) = check_call(&call);
            check_args(&name, &args);
        }
        if choice.is_object() {
            assert!(calls.iter().all(|c| c.1 == "block_ip"));
        }
        let last = events.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn tool_messages_round_trip() {
    let app = shared();
    let body = json!({"model": MODEL, "max_tokens": 16, "tools": tools(), "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature_c\": 21, \"sky\": \"clear\"}"}
    ]});
    let v = post(&app, "/v1/chat/completions", &body).await.ok_json();
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 20, "{v}");
    // The tool result reaches the prompt: more prompt tokens than without it.
    let mut short = body.clone();
    short["messages"].as_array_mut().unwrap().truncate(1);
    let w = post(&app, "/v1/chat/completions", &short).await.ok_json();
    assert!(v["usage"]["prompt_tokens"].as_u64() > w["usage"]["prompt_tokens"].as_u64());
    // A tool_choice naming no known tool, or without tools, is a 400.
    let bad = chat(
        "x",
        json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    );
    assert_error(&post(&app, "/v1/chat/completions", &bad).await, 400);
    let bad = chat("x", json!({"tool_choice": "required"}));
    assert_error(&post(&app, "/v1/chat/completions", &bad).await, 400);
}
