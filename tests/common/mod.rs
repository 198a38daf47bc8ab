//! Helpers for the in-process API tests: the real model and embedder, loaded once per test
//! binary and shared; routers over fresh registries; requests through
//! `tower::ServiceExt::oneshot`; SSE parsing; checks of OpenAI's error shape.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use ward::api::{AppState, router};
use ward::engine::embed::Embedder;
use ward::engine::loaded::LoadedModel;
use ward::engine::scheduler::SchedulerConfig;
use ward::service::Registry;

/// The chat model every test serves.
pub const MODEL: &str = "smollm2-135m-instruct";
/// The embedding model.
pub const EMBEDDER: &str = "all-minilm-l6-v2";
/// Longest any single request may take before the test fails instead of hanging.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// The chat model, loaded once.
pub fn loaded() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| {
        let path = ward::catalog::ensure(MODEL).expect("fetch the chat model");
        Arc::new(LoadedModel::open(&path).expect("load the chat model"))
    })
    .clone()
}

/// The embedding model, loaded once.
pub fn embedder() -> Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        let dir = ward::catalog::ensure(EMBEDDER).expect("fetch the embedding model");
        Arc::new(Embedder::load(&dir).expect("load the embedding model"))
    })
    .clone()
}

/// A router with its registry, for tests that look behind the API.
#[derive(Clone)]
pub struct App {
    /// The router.
    pub router: Router,
    /// Its state.
    pub state: AppState,
}

impl App {
    /// Sequences the model's scheduler is generating.
    pub fn running(&self) -> usize {
        match self.state.registry.get(None) {
            Some(ward::service::Slot::Ready(m)) => m.scheduler.running(),
            _ => 0,
        }
    }
}

/// A fresh router over the shared model with its own scheduler.
pub fn app_with(cfg: SchedulerConfig, keys: &[&str]) -> App {
    let registry = Registry::new(&[MODEL.to_string()], EMBEDDER);
    registry.insert(MODEL, loaded(), cfg);
    registry.set_embedder(embedder());
    let state = AppState::new(registry, keys.iter().map(|k| k.to_string()).collect());
    App {
        router: router(state.clone()),
        state,
    }
}

/// The scheduler configuration of the shared app (the server's defaults, a smaller cache).
pub fn test_config() -> SchedulerConfig {
    SchedulerConfig {
        kv_tokens: 16_384,
        ..SchedulerConfig::default()
    }
}

/// One router shared by the tests that need nothing special.
pub fn shared() -> App {
    static A: OnceLock<App> = OnceLock::new();
    A.get_or_init(|| app_with(test_config(), &[])).clone()
}

/// A finished response.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body text.
    pub body: String,
}

impl Resp {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }

    /// Asserts a 200 and returns the JSON body.
    pub fn ok_json(&self) -> Value {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected 200, got {}: {}",
            self.status,
            self.body
        );
        self.json()
    }
}

/// Builds a request; `body` is sent as JSON.
pub fn request(
    method: Method,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// Sends a request and reads the whole response.
pub async fn send(router: &Router, req: Request<Body>) -> Resp {
    let fut = async {
        let resp = router
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("reading the body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .expect("request timed out")
}

/// `POST path` with a JSON body.
pub async fn post(app: &App, path: &str, body: &Value) -> Resp {
    send(&app.router, request(Method::POST, path, Some(body), None)).await
}

/// `GET path`.
pub async fn get(app: &App, path: &str) -> Resp {
    send(&app.router, request(Method::GET, path, None, None)).await
}

/// The `data:` payloads of an SSE body, in order. Asserts that the stream ends with
/// `data: [DONE]` and that every other payload is JSON.
pub fn sse_events(body: &str) -> Vec<Value> {
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        data.last().copied(),
        Some("[DONE]"),
        "the stream must end with [DONE]: {body}"
    );
    assert_eq!(
        data.iter().filter(|d| **d == "[DONE]").count(),
        1,
        "exactly one [DONE]: {body}"
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| {
            serde_json::from_str(d).unwrap_or_else(|e| panic!("SSE payload is not JSON ({e}): {d}"))
        })
        .collect()
}

/// Asserts OpenAI's error shape and status; returns the error object.
pub fn assert_error(resp: &Resp, status: u16) -> Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "expected {status}: {}",
        resp.body
    );
    let ct = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "error content-type {ct:?}"
    );
    let v = resp.json();
    let e = v
        .get("error")
        .unwrap_or_else(|| panic!("no `error` object: {v}"));
    let obj = e
        .as_object()
        .unwrap_or_else(|| panic!("`error` is not an object: {v}"));
    for key in ["message", "type", "param", "code"] {
        assert!(obj.contains_key(key), "`error.{key}` missing: {v}");
    }
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "empty message: {v}"
    );
    assert!(
        e["type"].as_str().is_some_and(|m| !m.is_empty()),
        "empty type: {v}"
    );
    assert!(e["param"].is_null() || e["param"].is_string(), "param: {v}");
    assert!(e["code"].is_null() || e["code"].is_string(), "code: {v}");
    e.clone()
}

/// A chat request body with one user message.
pub fn chat(content: &str, extra: Value) -> Value {
    let mut v =
        serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    merge(&mut v, extra);
    v
}

/// Adds `extra`'s fields to `v`.
pub fn merge(v: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}

/// The text of the first choice of a chat completion.
pub fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {v}"))
        .to_string()
}

/// A value of a Prometheus sample line `name{labels} value` (labels matched exactly).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}
