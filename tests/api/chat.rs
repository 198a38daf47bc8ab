//! `POST /v1/chat/completions`: plain and streamed answers, usage, `n`, seeds and stop strings.

use serde_json::{Value, json};

use crate::common::*;

/// Chunks of a streamed chat completion, checked for the fields every chunk carries.
pub(crate) fn chunks(resp: &Resp) -> Vec<Value> {
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.body);
    let ct = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
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
pub(crate) fn assemble(events: &[Value], n: usize) -> Vec<(String, Option<String>)> {
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
                assert!(
                    out[i].0.is_empty() && out[i].1.is_none(),
                    "role delta must come first"
                );
                seen_role[i] = true;
            } else {
                assert!(
                    seen_role[i],
                    "choice {i}: a chunk before the role delta: {e}"
                );
            }
            assert!(
                out[i].1.is_none(),
                "choice {i}: a chunk after finish_reason: {e}"
            );
            if let Some(t) = d["content"].as_str() {
                out[i].0.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                out[i].1 = Some(f.to_string());
            }
        }
    }
    assert!(
        seen_role.iter().all(|s| *s),
        "every choice gets a role delta"
    );
    out
}

fn usage_ok(v: &Value) -> (u64, u64) {
    let u = &v["usage"];
    let (p, c, t) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0, "prompt tokens: {v}");
    assert_eq!(p + c, t, "total = prompt + completion: {v}");
    (p, c)
}

#[tokio::test]
async fn chat_non_stream() {
    let app = shared();
    let v = post(
        &app,
        "/v1/chat/completions",
        &chat("Say hello to the security team.", json!({"max_tokens": 8})),
    )
    .await
    .ok_json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl"));
    assert_eq!(v["model"], MODEL);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert!(!content(&v).is_empty(), "{v}");
    assert!(
        choices[0]["message"]
            .get("tool_calls")
            .is_none_or(Value::is_null)
    );
    let finish = choices[0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{v}");
    let (_, c) = usage_ok(&v);
    assert!((1..=8).contains(&c), "{v}");
    if finish == "length" {
        assert_eq!(c, 8);
    }
    // `max_completion_tokens` is the newer name, and takes precedence.
    let v = post(
        &app,
        "/v1/chat/completions",
        &chat(
            "Write a long poem.",
            json!({"max_tokens": 50, "max_completion_tokens": 3}),
        ),
    )
    .await
    .ok_json();
    assert_eq!(usage_ok(&v).1, 3, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Content given as a list of parts, with a system message.
    let body = json!({"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 4});
    post(&app, "/v1/chat/completions", &body).await.ok_json();
}

#[tokio::test]
async fn chat_stream_with_usage() {
    // Its own app: the requests compared here must not batch with other tests' (a step of
    // several sequences sums in ward's order, a lone sequence in llama.cpp's).
    let app = app_with(test_config(), &[]);
    let body = chat(
        "Name three colours.",
        json!({"max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let events = chunks(&post(&app, "/v1/chat/completions", &body).await);
    let last = events.last().unwrap();
    assert_eq!(
        last["choices"],
        json!([]),
        "the usage chunk has no choices: {last}"
    );
    let (_, completion) = usage_ok(last);
    for e in &events[..events.len() - 1] {
        assert!(
            e["usage"].is_null(),
            "only the last chunk carries usage: {e}"
        );
        assert_eq!(e["choices"].as_array().unwrap().len(), 1);
    }
    let got = assemble(&events[..events.len() - 1], 1);
    let (text, finish) = &got[0];
    assert!(!text.is_empty());
    let finish = finish.clone().expect("a finish_reason");
    assert!(finish == "stop" || finish == "length");
    assert!((1..=12).contains(&completion));
    // The stream says what the non-streamed answer says (greedy).
    let plain = post(
        &app,
        "/v1/chat/completions",
        &chat(
            "Name three colours.",
            json!({"max_tokens": 12, "temperature": 0}),
        ),
    )
    .await
    .ok_json();
    assert_eq!(&content(&plain), text);
    assert_eq!(
        plain["usage"]["completion_tokens"].as_u64().unwrap(),
        completion
    );

    // Without include_usage: no usage anywhere, no empty-choices chunk.
    let body = chat(
        "Name three colours.",
        json!({"max_tokens": 4, "stream": true}),
    );
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
    let v = post(
        &app,
        "/v1/chat/completions",
        &chat(
            "Tell me a fact about networks.",
            json!({"max_tokens": 6, "n": 2, "seed": 7}),
        ),
    )
    .await
    .ok_json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{v}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(c["message"]["content"].is_string());
        assert!(c["finish_reason"].is_string());
    }
    let (_, completion) = usage_ok(&v);
    assert!(
        (2..=12).contains(&completion),
        "usage counts both choices: {v}"
    );

    let body = chat(
        "Tell me a fact about networks.",
        json!({"max_tokens": 6, "n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let events = chunks(&post(&app, "/v1/chat/completions", &body).await);
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let (_, completion) = usage_ok(last);
    assert!((2..=12).contains(&completion), "{last}");
    let got = assemble(&events[..events.len() - 1], 2);
    assert!(
        got.iter().all(|(_, f)| f.is_some()),
        "every choice finishes: {got:?}"
    );
}

#[tokio::test]
async fn seed_reproducibility() {
    // Its own app: the requests compared here must not batch with other tests' (a step of
    // several sequences sums in ward's order, a lone sequence in llama.cpp's).
    let app = app_with(test_config(), &[]);
    let ask = |seed: u64| {
        let app = app.clone();
        async move {
            let body = chat(
                "Invent a name for a firewall.",
                json!({"max_tokens": 16, "temperature": 1.0, "seed": seed}),
            );
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
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds should not all agree: {a:?} {others:?}"
    );
    // n=2 with a seed is reproducible too, and its two choices differ from each other.
    let body = chat(
        "Invent a name for a firewall.",
        json!({"max_tokens": 16, "temperature": 1.0, "seed": 99, "n": 2}),
    );
    let x = post(&app, "/v1/chat/completions", &body).await.ok_json();
    let y = post(&app, "/v1/chat/completions", &body).await.ok_json();
    assert_eq!(x["choices"], y["choices"]);
}

#[tokio::test]
async fn stop_strings() {
    let app = shared();
    let q = "Count from 1 to 10, separated by commas.";
    let full = content(
        &post(
            &app,
            "/v1/chat/completions",
            &chat(q, json!({"max_tokens": 40, "temperature": 0})),
        )
        .await
        .ok_json(),
    );
    let at = full
        .find('5')
        .unwrap_or_else(|| panic!("the model should count past 5: {full:?}"));
    for stop in [json!("5"), json!(["9", "5"])] {
        let v = post(
            &app,
            "/v1/chat/completions",
            &chat(q, json!({"max_tokens": 40, "temperature": 0, "stop": stop})),
        )
        .await
        .ok_json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        assert_eq!(
            content(&v),
            &full[..at],
            "the text ends right before the stop string"
        );
    }
    // Streamed: the stop string never reaches the client.
    let body = chat(
        q,
        json!({"max_tokens": 40, "temperature": 0, "stop": ["5"], "stream": true}),
    );
    let got = assemble(&chunks(&post(&app, "/v1/chat/completions", &body).await), 1);
    assert!(!got[0].0.contains('5'), "{got:?}");
    assert_eq!(got[0].0, &full[..at]);
    assert_eq!(got[0].1.as_deref(), Some("stop"));
}

/// `ignore_eos` (llama.cpp's and vLLM's extension, which `ward bench --ignore-eos` sends) runs
/// a request that would end at its end-of-turn token on to `max_tokens`.
#[tokio::test]
async fn ignore_eos_runs_to_max_tokens() {
    let app = shared();
    let q = "Answer with one word: what colour is the sky on a clear day?";
    let body = |extra: Value| {
        let mut b = chat(q, json!({"max_tokens": 48, "temperature": 0}));
        merge(&mut b, extra);
        b
    };
    let v = post(&app, "/v1/chat/completions", &body(json!({})))
        .await
        .ok_json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(usage_ok(&v).1 < 48, "{v}");
    let v = post(
        &app,
        "/v1/chat/completions",
        &body(json!({"ignore_eos": true})),
    )
    .await
    .ok_json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(usage_ok(&v).1, 48, "{v}");
}
