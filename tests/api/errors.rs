//! Every error status in OpenAI's `{"error": {"message", "type", "param", "code"}}` shape: 400
//! for bad parameters, malformed JSON and prompts that do not fit, 401, 404, 413, 429 with
//! `Retry-After`, and 503 while a model loads.

use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::json;

use crate::common::*;
use ward::api::{AppState, router};
use ward::engine::scheduler::SchedulerConfig;
use ward::service::Registry;

#[tokio::test]
async fn invalid_parameters_are_400() {
    let app = shared();
    let cases = [
        (json!({"temperature": 9}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"n": 0}), "n"),
        (json!({"n": 100}), "n"),
        (json!({"max_tokens": -5}), "max_tokens"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"tool_choice": "sometimes", "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tool_choice",
        ),
        (
            json!({"stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q"]}),
            "stop",
        ),
    ];
    for (extra, param) in cases {
        let e = assert_error(
            &post(&app, "/v1/chat/completions", &chat("Hi", extra.clone())).await,
            400,
        );
        assert_eq!(e["type"], "invalid_request_error", "{extra}");
        assert_eq!(e["param"], param, "{extra}: {e}");
    }
    let e = assert_error(
        &post(&app, "/v1/chat/completions", &json!({"messages": []})).await,
        400,
    );
    assert_eq!(e["param"], "messages");
    assert_error(
        &post(
            &app,
            "/v1/chat/completions",
            &json!({"messages": [{"content": "no role"}]}),
        )
        .await,
        400,
    );
    // Wrong types are 400 in the same shape.
    assert_error(
        &post(&app, "/v1/chat/completions", &json!({"messages": "hi"})).await,
        400,
    );
    assert_error(
        &post(
            &app,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}),
        )
        .await,
        400,
    );
    assert_error(
        &post(&app, "/v1/chat/completions", &json!({"model": MODEL})).await,
        400,
    );
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = shared();
    for (body, ct) in [
        ("{\"messages\": [", "application/json"),
        ("not json", "application/json"),
        ("", "application/json"),
        ("{\"messages\":[]}", "text/plain"),
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .unwrap();
        let e = assert_error(&send(&app.router, req).await, 400);
        assert_eq!(e["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn prompts_over_the_context_are_400() {
    let app = shared();
    let ctx = ward::engine::loaded::LoadedModel::context_length(&loaded());
    let e = assert_error(
        &post(
            &app,
            "/v1/chat/completions",
            &chat("Hi", json!({"max_tokens": ctx})),
        )
        .await,
        400,
    );
    assert_eq!(e["code"], "context_length_exceeded");
    // A prompt longer than the context on its own, without max_tokens: refused, not truncated.
    let long = "alert ".repeat(ctx + 100);
    for stream in [false, true] {
        let e = assert_error(
            &post(
                &app,
                "/v1/chat/completions",
                &chat(&long, json!({"stream": stream})),
            )
            .await,
            400,
        );
        assert_eq!(e["code"], "context_length_exceeded");
        let e = assert_error(
            &post(
                &app,
                "/v1/completions",
                &json!({"prompt": long, "stream": stream}),
            )
            .await,
            400,
        );
        assert_eq!(e["code"], "context_length_exceeded");
    }
    // Just fitting is fine: prompt + max_tokens == context.
    let ids = post(&app, "/tokenize", &json!({"content": "The sky is"}))
        .await
        .ok_json()["tokens"]
        .as_array()
        .unwrap()
        .len();
    let ok = post(
        &app,
        "/v1/completions",
        &json!({"prompt": "The sky is", "max_tokens": ctx - ids, "stop": [" "], "temperature": 0}),
    )
    .await;
    ok.ok_json();
    let over = post(
        &app,
        "/v1/completions",
        &json!({"prompt": "The sky is", "max_tokens": ctx - ids + 1}),
    )
    .await;
    assert_error(&over, 400);
}

#[tokio::test]
async fn missing_or_wrong_key_is_401() {
    let app = app_with(test_config(), &["key-one", "key-two"]);
    let body = chat("Hi", json!({"max_tokens": 2}));
    for key in [
        None,
        Some("wrong"),
        Some(""),
        Some("key-one-and-more"),
        Some("key-on"),
    ] {
        let r = send(
            &app.router,
            request(Method::POST, "/v1/chat/completions", Some(&body), key),
        )
        .await;
        let e = assert_error(&r, 401);
        assert_eq!(e["type"], "authentication_error", "{key:?}");
    }
    for path in [
        "/v1/models",
        "/v1/completions",
        "/v1/embeddings",
        "/tokenize",
        "/detokenize",
    ] {
        let method = if path == "/v1/models" {
            Method::GET
        } else {
            Method::POST
        };
        assert_error(
            &send(&app.router, request(method, path, Some(&json!({})), None)).await,
            401,
        );
    }
    // A malformed body without a key is still a 401 (authentication comes first).
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{"))
        .unwrap();
    assert_error(&send(&app.router, req).await, 401);
    for key in ["key-one", "key-two"] {
        let r = send(
            &app.router,
            request(Method::POST, "/v1/chat/completions", Some(&body), Some(key)),
        )
        .await;
        r.ok_json();
    }
    assert_eq!(
        send(&app.router, request(Method::GET, "/health", None, None))
            .await
            .status
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn unknown_model_and_route_are_404() {
    let app = shared();
    let e = assert_error(
        &post(
            &app,
            "/v1/chat/completions",
            &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    assert_error(
        &post(
            &app,
            "/v1/completions",
            &json!({"model": "gpt-9", "prompt": "x"}),
        )
        .await,
        404,
    );
    assert_error(
        &post(
            &app,
            "/tokenize",
            &json!({"model": "gpt-9", "content": "x"}),
        )
        .await,
        404,
    );
    assert_error(&get(&app, "/v1/nothing-here").await, 404);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = shared();
    let big = "a".repeat(ward::api::BODY_LIMIT + 1024);
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let body =
            json!({"messages": [{"role": "user", "content": big}], "prompt": big, "input": big});
        let e = assert_error(&post(&app, path, &body).await, 413);
        assert_eq!(e["type"], "invalid_request_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_with_retry_after() {
    let app = app_with(
        SchedulerConfig {
            queue_capacity: 1,
            max_running: 1,
            kv_tokens: 4096,
            ..SchedulerConfig::default()
        },
        &[],
    );
    let body = json!({"prompt": "Write a long report about intrusion detection:", "max_tokens": 48, "temperature": 1.0});
    let calls = (0..6).map(|_| post(&app, "/v1/completions", &body));
    let results = futures::future::join_all(calls).await;
    let (mut ok, mut busy) = (0, 0);
    for r in &results {
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                let e = assert_error(r, 429);
                assert_eq!(e["type"], "rate_limit_error");
                let after = r
                    .headers
                    .get(header::RETRY_AFTER)
                    .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"));
                assert!(after.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                busy += 1;
            }
            _ => panic!("unexpected {}: {}", r.status, r.body),
        }
    }
    assert!(
        busy >= 1,
        "six concurrent requests against a queue of one: some are refused"
    );
    assert!(ok >= 1, "the admitted requests are served");
}

#[tokio::test]
async fn loading_model_is_503() {
    let registry = Registry::new(&[MODEL.to_string()], EMBEDDER);
    let state = AppState::new(registry, vec![]);
    let app = App {
        router: router(state.clone()),
        state,
    };
    for (path, body) in [
        ("/v1/chat/completions", chat("Hi", json!({}))),
        ("/v1/completions", json!({"prompt": "Hi"})),
        ("/v1/embeddings", json!({"input": "Hi"})),
        ("/tokenize", json!({"content": "Hi"})),
    ] {
        let r = post(&app, path, &body).await;
        assert_error(&r, 503);
        assert!(
            r.headers.contains_key(header::RETRY_AFTER),
            "{path}: 503 carries Retry-After"
        );
    }
    let h = get(&app, "/health").await;
    assert_eq!(h.status.as_u16(), 503);
    assert_eq!(h.json()["status"], "loading");
    assert_eq!(get(&app, "/v1/models").await.ok_json()["data"], json!([]));
}
