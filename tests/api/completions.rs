//! `POST /v1/completions`: every prompt shape, `n`, streaming, and scoring a given text with
//! `echo`, `logprobs` and `max_tokens: 0`.

use serde_json::{Value, json};

use crate::common::*;

async fn complete(app: &App, body: Value) -> Value {
    post(app, "/v1/completions", &body).await.ok_json()
}

async fn tokens_of(app: &App, text: &str) -> Vec<u64> {
    let v = post(app, "/tokenize", &json!({"content": text}))
        .await
        .ok_json();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

fn texts(v: &Value) -> Vec<String> {
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn prompt_shapes() {
    // Its own app: the requests compared here must not batch with other tests' (a step of
    // several sequences sums in ward's order, a lone sequence in llama.cpp's).
    let app = app_with(test_config(), &[]);
    let prompt = "The three primary colours are";
    let v = complete(
        &app,
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl"));
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert!(c["logprobs"].is_null());
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    let text = texts(&v)[0].clone();
    assert!(!text.is_empty());
    let ids = tokens_of(&app, prompt).await;
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        ids.len() as u64
    );

    // The same prompt as token ids gives the same greedy text.
    let t = complete(
        &app,
        json!({"prompt": ids, "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(texts(&t), vec![text.clone()]);

    // Lists: one choice per prompt, in order.
    let other = "Firewalls filter";
    let v = complete(
        &app,
        json!({"prompt": [prompt, other], "max_tokens": 6, "temperature": 0}),
    )
    .await;
    let got = texts(&v);
    assert_eq!(got.len(), 2, "{v}");
    assert_eq!(v["choices"][1]["index"], 1);
    // The two prompts run as one step of two sequences, in either order: each choice follows
    // its own prompt.
    let swapped = complete(
        &app,
        json!({"prompt": [other, prompt], "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(texts(&swapped), vec![got[1].clone(), got[0].clone()]);
    let ids2 = tokens_of(&app, other).await;
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        (ids.len() + ids2.len()) as u64
    );
    let w = complete(
        &app,
        json!({"prompt": [ids, ids2], "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(texts(&w), got, "token-id lists give what the texts give");

    // n per prompt: prompts x n choices with distinct indices.
    let v = complete(
        &app,
        json!({"prompt": [prompt, other], "max_tokens": 3, "n": 2}),
    )
    .await;
    let idx: Vec<u64> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        (ids.len() + ids2.len()) as u64,
        "{v}"
    );
}

#[tokio::test]
async fn default_max_tokens_is_openais() {
    // OpenAI's legacy completions default to 16 tokens.
    let app = shared();
    let v = complete(&app, json!({"prompt": "Once upon a time", "seed": 3})).await;
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=16).contains(&n), "{v}");
}

#[tokio::test]
async fn echo_scores_the_prompt() {
    // Its own app: the requests compared here must not batch with other tests' (a step of
    // several sequences sums in ward's order, a lone sequence in llama.cpp's).
    let app = app_with(test_config(), &[]);
    let prompt = "The capital of France is Paris.";
    let ids = tokens_of(&app, prompt).await;
    let v = complete(
        &app,
        json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 3}),
    )
    .await;
    let c = &v["choices"][0];
    assert_eq!(c["text"], prompt, "echo returns the prompt only");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), ids.len());
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, prompt);
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    let tops = lp["top_logprobs"].as_array().unwrap();
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!(
        (token_lps.len(), tops.len(), offsets.len()),
        (ids.len(), ids.len(), ids.len())
    );
    assert!(
        token_lps[0].is_null() && tops[0].is_null(),
        "the first token has no logprob: {lp}"
    );
    let mut off = 0;
    for i in 0..ids.len() {
        assert_eq!(offsets[i].as_u64().unwrap(), off);
        off += tokens[i].as_str().unwrap().len() as u64;
        if i == 0 {
            continue;
        }
        let l = token_lps[i]
            .as_f64()
            .unwrap_or_else(|| panic!("logprob {i}: {lp}"));
        assert!(l <= 1e-6 && l.is_finite());
        let top = tops[i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{lp}");
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            l <= best + 1e-4,
            "a token is never likelier than the best alternative"
        );
        if let Some(x) = top.get(tokens[i].as_str().unwrap()) {
            assert!(
                (x.as_f64().unwrap() - l).abs() < 1e-4,
                "the token's own entry agrees"
            );
        }
    }
    // "Paris" after "The capital of France is" is the model's likeliest continuation.
    let paris = tokens
        .iter()
        .position(|t| t.as_str().unwrap().contains("Paris"))
        .unwrap();
    let top = tops[paris].as_object().unwrap();
    assert!(top.keys().any(|k| k.contains("Paris")), "{lp}");

    // Scoring agrees with generation: the greedy next token's logprob equals its score.
    let head = "The capital of France is";
    let g = complete(
        &app,
        json!({"prompt": head, "max_tokens": 1, "temperature": 0, "logprobs": 1}),
    )
    .await;
    let gen_lp = g["choices"][0]["logprobs"]["token_logprobs"][0]
        .as_f64()
        .unwrap();
    let gen_tok = g["choices"][0]["logprobs"]["tokens"][0]
        .as_str()
        .unwrap()
        .to_string();
    let mut with = tokens_of(&app, head).await;
    let next = post(
        &app,
        "/tokenize",
        &json!({"content": format!("{head}{gen_tok}")}),
    )
    .await
    .ok_json();
    let all: Vec<u64> = next["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert!(
        all.starts_with(&with) && all.len() == with.len() + 1,
        "the generated token re-tokenizes cleanly"
    );
    with = all;
    let s = complete(
        &app,
        json!({"prompt": with, "max_tokens": 0, "echo": true, "logprobs": 1}),
    )
    .await;
    let scored = s["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(
        (scored - gen_lp).abs() < 0.02,
        "scored {scored} vs generated {gen_lp}"
    );

    // echo with generation: prompt text, then the completion; logprobs cover both.
    let v = complete(
        &app,
        json!({"prompt": head, "max_tokens": 2, "echo": true, "logprobs": 1, "temperature": 0}),
    )
    .await;
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(head) && text.len() > head.len(), "{v}");
    let n = v["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert_eq!(
        n,
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            + v["usage"]["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn scoring_long_prompts_agrees_with_greedy_generation() {
    // A prompt scored in several chunks: at each checked position, the best alternative that
    // scoring reports is the token greedy generation picks there, with the same logprob.
    // Its own app: on the shared one, other tests' requests would batch with these, and a
    // step of several sequences sums the 32-wide products in ward's order, not llama.cpp's
    // (`kernels::numerics_for`), which on SmolLM2 moves a log-probability by up to ~0.3 nat.
    let app = app_with(test_config(), &[]);
    let text = "Incident report: at 02:14 the IDS flagged outbound traffic from the build server to an unknown host. ".repeat(8);
    let ids = tokens_of(&app, &text).await;
    assert!(ids.len() > 140, "{}", ids.len());
    let s = complete(
        &app,
        json!({"prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 3}),
    )
    .await;
    let tops = s["choices"][0]["logprobs"]["top_logprobs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(tops.len(), ids.len());
    for k in [31, 64, 65, 100, 129, ids.len() - 1] {
        let g = complete(
            &app,
            json!({"prompt": &ids[..k], "max_tokens": 1, "temperature": 0, "logprobs": 1}),
        )
        .await;
        let lp = &g["choices"][0]["logprobs"];
        let (token, logprob) = (
            lp["tokens"][0].as_str().unwrap(),
            lp["token_logprobs"][0].as_f64().unwrap(),
        );
        let top = tops[k].as_object().unwrap();
        let (best, best_lp) = top.iter().map(|(t, v)| (t, v.as_f64().unwrap())).fold(
            ("", f64::NEG_INFINITY),
            |a, (t, v)| {
                if v > a.1 { (t.as_str(), v) } else { a }
            },
        );
        // The same token, or a near tie that different batch shapes may order either way.
        let ours = top.get(token).and_then(Value::as_f64);
        assert!(
            best == token || ours.is_some_and(|o| best_lp - o < 0.02),
            "position {k}: {token:?} vs {top:?}"
        );
        // Scoring computes position `k` inside one long run (llama.cpp's tiled attention
        // kernel, `f32` accumulator); generation reuses the cached prefix and computes its last
        // prompt token alone (the one-row kernel, `f16` accumulator), as llama.cpp's server
        // does. On SmolLM2 that moves a log-probability by up to ~0.1 nat.
        let tol = 0.15;
        assert!(
            (best_lp - logprob).abs() < tol,
            "position {k}: scored {best_lp} vs generated {logprob}"
        );
    }
}

#[tokio::test]
async fn streamed_completions() {
    let app = shared();
    let body = json!({"prompt": ["Malware is", "Phishing is"], "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}});
    let resp = post(&app, "/v1/completions", &body).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.body);
    let events = sse_events(&resp.body);
    let mut finished = [false; 2];
    let mut text = [String::new(), String::new()];
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let u = &last["usage"];
    assert_eq!(
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap()
    );
    assert!(
        (2..=10).contains(&u["completion_tokens"].as_u64().unwrap()),
        "{last}"
    );
    for e in &events[..events.len() - 1] {
        assert_eq!(e["object"], "text_completion");
        for c in e["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            assert!(!finished[i], "nothing after finish_reason");
            text[i].push_str(c["text"].as_str().unwrap());
            finished[i] = c["finish_reason"].is_string();
        }
    }
    assert!(finished.iter().all(|f| *f), "{}", resp.body);
    // Streamed logprobs: every chunk carries its token's entry in the completions shape.
    let body = json!({"prompt": "Malware is", "max_tokens": 3, "logprobs": 2, "stream": true});
    let resp = post(&app, "/v1/completions", &body).await;
    let mut entries = 0;
    for e in &sse_events(&resp.body) {
        let lp = &e["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"].as_array().map(Vec::len), Some(1), "{e}");
        assert!(
            lp["token_logprobs"][0].as_f64().is_some_and(|l| l <= 1e-6),
            "{e}"
        );
        let top = lp["top_logprobs"][0]
            .as_object()
            .unwrap_or_else(|| panic!("{e}"));
        assert!(!top.is_empty() && top.len() <= 2, "{e}");
        entries += 1;
    }
    assert!((1..=3).contains(&entries), "{}", resp.body);
    // max_tokens 0 streams no tokens.
    let body = json!({"prompt": "Hello", "max_tokens": 0, "stream": true});
    let resp = post(&app, "/v1/completions", &body).await;
    let events = sse_events(&resp.body);
    let joined: String = events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .map(|c| c["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(joined, "", "{}", resp.body);
}

#[tokio::test]
async fn invalid_prompts() {
    let app = shared();
    for body in [
        json!({"prompt": [999_999_999u64]}),
        json!({"prompt": ""}),
        json!({"prompt": []}),
        json!({"prompt": [[1, 2], []]}),
        json!({"prompt": "x", "logprobs": 21}),
        json!({"prompt": "x", "max_tokens": -1}),
        json!({"prompt": "x", "n": 0}),
    ] {
        let r = post(&app, "/v1/completions", &body).await;
        assert_error(&r, 400);
    }
}
