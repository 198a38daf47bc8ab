//! `POST /v1/chat/completions`: plain and streamed answers, `n`, seeds, stop strings, logprobs
//! and structured output.

use serde_json::{Value, json};

use crate::common::*;

/// Chunks of a streamed chat completion, checked for the fields every chunk carries.
fn chunks(resp: &Resp) -> Vec<Value> {
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.body);
    let ct = resp.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    let events = sse_events(&resp.body);
    assert!(!events.is_empty());
    let id = events[0]["id"].as_str().expect("chunk id").to_string();
    for e in &events {
        assert_eq!(e["object"], "chat.completion.chunk", "{e}");
        assert_eq!(e["id"], id.as_str(), "one id for the whole stream");
        assert_eq!(e["model"], MODEL);
        assert!(e["created"].is_u64());
        assert!(e["choices"].is_array(), "{e}");
    }
    events
}

/// Per choice index: (concatenated content, finish reason, chunk count with a role).
fn assemble(events: &[Value], n: usize) -> Vec<(String, Option<String>)> {
    let mut out = vec![(String::new(), None::<String>); n];
    let mut seen_role = vec![false; n];
    for e in events {
        for c in e["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            assert!(i < n, "choice index {i} out of range: {e}");
            let d = &c["delta"];
            if d.get("role").is_some() {
                assert_eq!(d["role"], "assistant");
                assert!(!seen_role[i], "role sent twice for choice {i}");
                assert!(out[i].0.is_empty() && out[i].1.is_none(), "role delta must come first");
                seen_role[i] = true;
            } else {
                assert!(seen_role[i], "choice {i}: a chunk before the role delta: {e}");
            }
            assert!(out[i].1.is_none(), "choice {i}: a chunk after finish_reason: {e}");
            if let Some(t) = d["content"].as_str() {
                out[i].0.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                out[i].1 = Some(f.to_string());
            }
        }
    }
    assert!(seen_role.iter().all(|s| *s), "every choice gets a role delta");
    out
}

fn usage_ok(v: &Value) -> (u64, u64) {
    let u = &v["usage"];
    let (p, c, t) = (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap(), u["total_tokens"].as_u64().unwrap());
    assert!(p > 0, "prompt tokens: {v}");
    assert_eq!(p + c, t, "total = prompt + completion: {v}");
    (p, c)
}

#[tokio::test]
async fn chat_non_stream() {
    let app = shared();
    let v = post(&app, "/v1/chat/completions", &chat("Say hello to the security team.", json!({"max_tokens": 8}))).await.ok_json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl"));
    assert_eq!(v["model"], MODEL);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert!(!content(&v).is_empty(), "{v}");
    assert!(choices[0]["message"].get("tool_calls").is_none_or(Value::is_null));
    let finish = choices[0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{v}");
    let (_, c) = usage_ok(&v);
    assert!((1..=8).contains(&c), "{v}");
    if finish == "length" {
        assert_eq!(c, 8);
    }
    // `max_completion_tokens` is the newer name, and takes precedence.
    let v = post(&app, "/v1/chat/completions", &chat("Write a long poem.", json!({"max_tokens": 50, "max_completion_tokens": 3}))).await.ok_json();
    assert_eq!(usage_ok(&v).1, 3, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Content given as a list of parts, with a system message.
    let body = json!({"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 4});
    post(&app, "/v1/chat/completions", &body).await.ok_json();
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let app = shared();
    let body = chat("Name three colours.", json!({"max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}));
    let events = chunks(&post(&app, "/v1/chat/completions", &body).await);
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]), "the usage chunk has no choices: {last}");
    let (_, completion) = usage_ok(last);
    for e in &events[..events.len() - 1] {
        assert!(e["usage"].is_null(), "only the last chunk carries usage: {e}");
        assert_eq!(e["choices"].as_array().unwrap().len(), 1);
    }
    let got = assemble(&events[..events.len() - 1], 1);
    let (text, finish) = &got[0];
    assert!(!text.is_empty());
    let finish = finish.clone().expect("a finish_reason");
    assert!(finish == "stop" || finish == "length");
    assert!((1..=12).contains(&completion));
    // The stream says what the non-streamed answer says (greedy).
    let plain = post(&app, "/v1/chat/completions", &chat("Name three colours.", json!({"max_tokens": 12, "temperature": 0}))).await.ok_json();
    assert_eq!(&content(&plain), text);
    assert_eq!(plain["usage"]["completion_tokens"].as_u64().unwrap(), completion);

    // Without include_usage: no usage anywhere, no empty-choices chunk.
    let body = chat("Name three colours.", json!({"max_tokens": 4, "stream": true}));
    let events = chunks(&post(&app, "/v1/chat/completions", &body).await);
    for e in &events {
        assert!(e.get("usage").is_none_or(Value::is_null), "{e}");
        assert_eq!(e["choices"].as_array().unwrap().len(), 1, "{e}");
    }
    assert!(assemble(&events, 1)[0].1.is_some());
}

#[tokio::test]
async fn chat_n2_plain_and_streamed() {
    let app = shared();
    let v = post(&app, "/v1/chat/completions", &chat("Tell me a fact about networks.", json!({"max_tokens": 6, "n": 2, "seed": 7}))).await.ok_json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{v}");
    let mut lens = 0;
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(c["message"]["content"].is_string());
        assert!(c["finish_reason"].is_string());
        lens += 1;
    }
    assert_eq!(lens, 2);
    let (_, completion) = usage_ok(&v);
    assert!((2..=12).contains(&completion), "usage counts both choices: {v}");

    let body = chat("Tell me a fact about networks.", json!({"max_tokens": 6, "n": 2, "stream": true, "stream_options": {"include_usage": true}}));
    let events = chunks(&post(&app, "/v1/chat/completions", &body).await);
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let (_, completion) = usage_ok(last);
    assert!((2..=12).contains(&completion), "{last}");
    let got = assemble(&events[..events.len() - 1], 2);
    assert!(got.iter().all(|(_, f)| f.is_some()), "every choice finishes: {got:?}");
}

#[tokio::test]
async fn seed_reproducibility() {
    let app = shared();
    let ask = |seed: u64| {
        let app = app.clone();
        async move {
            let body = chat("Invent a name for a firewall.", json!({"max_tokens": 16, "temperature": 1.0, "seed": seed}));
            content(&post(&app, "/v1/chat/completions", &body).await.ok_json())
        }
    };
    let a = ask(1234).await;
    let b = ask(1234).await;
    assert_eq!(a, b, "same seed, same text");
    let mut others = Vec::new();
    for seed in [1, 2, 3] {
        others.push(ask(seed).await);
    }
    assert!(others.iter().any(|o| *o != a), "different seeds should not all agree: {a:?} {others:?}");
    // n=2 with a seed is reproducible too, and its two choices differ from each other.
    let body = chat("Invent a name for a firewall.", json!({"max_tokens": 16, "temperature": 1.0, "seed": 99, "n": 2}));
    let x = post(&app, "/v1/chat/completions", &body).await.ok_json();
    let y = post(&app, "/v1/chat/completions", &body).await.ok_json();
    assert_eq!(x["choices"], y["choices"]);
}

#[tokio::test]
async fn stop_strings() {
    let app = shared();
    let q = "Count from 1 to 10, separated by commas.";
    let full = content(&post(&app, "/v1/chat/completions", &chat(q, json!({"max_tokens": 40, "temperature": 0}))).await.ok_json());
    let at = full.find('5').unwrap_or_else(|| panic!("the model should count past 5: {full:?}"));
    for stop in [json!("5"), json!(["9", "5"])] {
        let v = post(&app, "/v1/chat/completions", &chat(q, json!({"max_tokens": 40, "temperature": 0, "stop": stop}))).await.ok_json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        assert_eq!(content(&v), full[..at].trim_end(), "text ends before the stop string");
    }
    // Streamed: the stop string never reaches the client.
    let body = chat(q, json!({"max_tokens": 40, "temperature": 0, "stop": ["5"], "stream": true}));
    let got = assemble(&chunks(&post(&app, "/v1/chat/completions", &body).await), 1);
    assert!(!got[0].0.contains('5'), "{got:?}");
    assert_eq!(got[0].0.trim_end(), full[..at].trim_end());
    assert_eq!(got[0].1.as_deref(), Some("stop"));
}

fn check_logprob_entry(e: &Value, top: usize) {
    let token = e["token"].as_str().expect("token");
    let lp = e["logprob"].as_f64().expect("logprob");
    assert!(lp <= 1e-6 && lp.is_finite(), "{e}");
    let bytes: Vec<u8> = e["bytes"].as_array().expect("bytes").iter().map(|b| b.as_u64().unwrap() as u8).collect();
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
    let body = chat("What is a CVE?", json!({"max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 3}));
    let v = post(&app, "/v1/chat/completions", &body).await.ok_json();
    let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(entries.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    for e in entries {
        check_logprob_entry(e, 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(e["top_logprobs"][0]["token"], e["token"], "{e}");
        assert!((e["top_logprobs"][0]["logprob"].as_f64().unwrap() - e["logprob"].as_f64().unwrap()).abs() < 1e-4);
    }
    let text: String = entries.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert!(text.starts_with(&content(&v)) || content(&v).starts_with(&text), "{text:?} vs {:?}", content(&v));
    // Without top_logprobs: only the chosen token; without logprobs: null.
    let v = post(&app, "/v1/chat/completions", &chat("Hi", json!({"max_tokens": 2, "logprobs": true}))).await.ok_json();
    check_logprob_entry(&v["choices"][0]["logprobs"]["content"][0], 0);
    let v = post(&app, "/v1/chat/completions", &chat("Hi", json!({"max_tokens": 2}))).await.ok_json();
    assert!(v["choices"][0]["logprobs"].is_null());
    // Streamed: every content chunk carries its token's logprobs.
    let body = chat("What is a CVE?", json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2, "stream": true}));
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
    let body = chat("Describe a cat as a JSON object.", json!({"max_tokens": 200, "response_format": {"type": "json_object"}}));
    let v = post(&app, "/v1/chat/completions", &body).await.ok_json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let parsed: Value = serde_json::from_str(&content(&v)).unwrap_or_else(|e| panic!("json_object output does not parse ({e}): {v}"));
    assert!(parsed.is_object(), "{parsed}");

    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"type": "string", "enum": ["analyst", "engineer", "manager"]}},
        "required": ["name", "age", "role"], "additionalProperties": false});
    for stream in [false, true] {
        let body = chat("Invent an employee of a security team.", json!({"max_tokens": 200, "stream": stream, "temperature": 1.0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "employee", "strict": true, "schema": schema}}}));
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
        let p: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("json_schema output does not parse ({e}): {text}"));
        let o = p.as_object().unwrap_or_else(|| panic!("not an object: {p}"));
        assert_eq!(o.len(), 3, "exactly the schema's keys: {p}");
        assert!(p["name"].as_str().is_some_and(|s| s.chars().count() <= 40), "{p}");
        assert!(p["age"].as_i64().is_some_and(|a| (0..=150).contains(&a)), "{p}");
        assert!(["analyst", "engineer", "manager"].contains(&p["role"].as_str().unwrap_or("")), "{p}");
    }
    // A schema that is not an object is a 400.
    let body = chat("x", json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}));
    assert_error(&post(&app, "/v1/chat/completions", &body).await, 400);
}
