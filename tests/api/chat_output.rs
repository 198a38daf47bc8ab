//! `POST /v1/chat/completions` output options: `logprobs` with `top_logprobs`, plain and
//! streamed, and structured output (`json_object`, strict `json_schema`).

use serde_json::{Value, json};

use crate::chat::{assemble, chunks};
use crate::common::*;

fn check_logprob_entry(e: &Value, top: usize) {
    let token = e["token"].as_str().expect("token");
    let lp = e["logprob"].as_f64().expect("logprob");
    assert!(lp <= 1e-6 && lp.is_finite(), "{e}");
    let bytes: Vec<u8> = e["bytes"]
        .as_array()
        .expect("bytes")
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    if let Ok(s) = std::str::from_utf8(&bytes) {
        assert_eq!(s, token);
    }
    let tops = e["top_logprobs"].as_array().expect("top_logprobs");
    assert_eq!(tops.len(), top, "{e}");
    let mut prev = f64::INFINITY;
    for t in tops {
        let l = t["logprob"].as_f64().unwrap();
        assert!(l <= prev, "top_logprobs sorted: {e}");
        assert!(t["token"].is_string() && t["bytes"].is_array());
        prev = l;
    }
}

#[tokio::test]
async fn chat_logprobs() {
    let app = shared();
    let body = chat(
        "What is a CVE?",
        json!({"max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    );
    let v = post(&app, "/v1/chat/completions", &body).await.ok_json();
    let entries = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        entries.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in entries {
        check_logprob_entry(e, 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(e["top_logprobs"][0]["token"], e["token"], "{e}");
        assert!(
            (e["top_logprobs"][0]["logprob"].as_f64().unwrap() - e["logprob"].as_f64().unwrap())
                .abs()
                < 1e-4
        );
    }
    let text: String = entries
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert!(
        text.starts_with(&content(&v)) || content(&v).starts_with(&text),
        "{text:?} vs {:?}",
        content(&v)
    );
    // Without top_logprobs: only the chosen token; without logprobs: null.
    let v = post(
        &app,
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 2, "logprobs": true})),
    )
    .await
    .ok_json();
    check_logprob_entry(&v["choices"][0]["logprobs"]["content"][0], 0);
    let v = post(
        &app,
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 2})),
    )
    .await
    .ok_json();
    assert!(v["choices"][0]["logprobs"].is_null());
    // Streamed: every content chunk carries its token's logprobs.
    let body = chat(
        "What is a CVE?",
        json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2, "stream": true}),
    );
    let events = chunks(&post(&app, "/v1/chat/completions", &body).await);
    let mut n = 0;
    for e in &events {
        let c = &e["choices"][0];
        if let Some(list) = c["logprobs"]["content"].as_array() {
            for entry in list {
                check_logprob_entry(entry, 2);
                n += 1;
            }
        }
    }
    assert!(n >= 1, "streamed logprobs: {events:?}");
}

#[tokio::test]
async fn json_object_and_schema() {
    let app = shared();
    // Free-form JSON is greedy: at temperature 1 a 135M model can nest objects past any budget.
    let body = chat(
        "Reply with a short JSON object with the keys name and color for a cat.",
        json!({"max_tokens": 200, "temperature": 0, "response_format": {"type": "json_object"}}),
    );
    let v = post(&app, "/v1/chat/completions", &body).await.ok_json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let parsed: Value = serde_json::from_str(&content(&v))
        .unwrap_or_else(|e| panic!("json_object output does not parse ({e}): {v}"));
    assert!(parsed.is_object(), "{parsed}");

    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"type": "string", "enum": ["analyst", "engineer", "manager"]}},
        "required": ["name", "age", "role"], "additionalProperties": false});
    for stream in [false, true] {
        let body = chat(
            "Invent an employee of a security team.",
            json!({"max_tokens": 200, "stream": stream, "temperature": 1.0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "employee", "strict": true, "schema": schema}}}),
        );
        let resp = post(&app, "/v1/chat/completions", &body).await;
        let text = if stream {
            let got = assemble(&chunks(&resp), 1);
            assert_eq!(got[0].1.as_deref(), Some("stop"));
            got[0].0.clone()
        } else {
            let v = resp.ok_json();
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
            content(&v)
        };
        let p: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("json_schema output does not parse ({e}): {text}"));
        let o = p
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {p}"));
        assert_eq!(o.len(), 3, "exactly the schema's keys: {p}");
        assert!(
            p["name"].as_str().is_some_and(|s| s.chars().count() <= 40),
            "{p}"
        );
        assert!(
            p["age"].as_i64().is_some_and(|a| (0..=150).contains(&a)),
            "{p}"
        );
        assert!(
            ["analyst", "engineer", "manager"].contains(&p["role"].as_str().unwrap_or("")),
            "{p}"
        );
    }
    // A schema that is not an object is a 400.
    let body = chat(
        "x",
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}),
    );
    assert_error(&post(&app, "/v1/chat/completions", &body).await, 400);
}
