//! Concurrency: several clients at once are all served; a client that goes away has its
//! generation cancelled; long prefills send SSE keep-alive comments.

use std::time::{Duration, Instant};

use axum::http::Method;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::common::*;
use ward::api::router;
use ward::engine::scheduler::SchedulerConfig;

fn small() -> SchedulerConfig {
    SchedulerConfig {
        kv_tokens: 8192,
        ..SchedulerConfig::default()
    }
}

async fn wait_idle(app: &App, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if app.running() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn wait_running(app: &App) {
    let start = Instant::now();
    while app.running() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the request never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_all_served() {
    let app = app_with(small(), &[]);
    let bodies: Vec<_> = (0..5)
        .map(|i| {
            chat(
                &format!("Give me fact number {i} about DNS."),
                json!({"max_tokens": 8}),
            )
        })
        .collect();
    let calls = bodies.iter().map(|b| post(&app, "/v1/chat/completions", b));
    for r in futures::future::join_all(calls).await {
        let v = r.ok_json();
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    assert!(wait_idle(&app, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_cancels() {
    let app = app_with(small(), &[]);
    let body = json!({"prompt": "Here is a very long list of random words:", "max_tokens": 6000, "temperature": 1.5, "stream": true});
    let resp = app
        .router
        .clone()
        .oneshot(request(Method::POST, "/v1/completions", Some(&body), None))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.into_body();
    let mut data_frames = 0;
    while data_frames < 3 {
        let frame = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
            .await
            .expect("frame timeout")
            .expect("stream ended early")
            .unwrap();
        if frame.data_ref().is_some_and(|d| d.starts_with(b"data:")) {
            data_frames += 1;
        }
    }
    assert_eq!(app.running(), 1, "generating while the client reads");
    drop(body);
    assert!(
        wait_idle(&app, Duration::from_secs(2)).await,
        "dropping the stream cancels the generation"
    );
    let m = get(&app, "/metrics").await.body;
    assert_eq!(metric(&m, "ward_running_sequences"), Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_while_waiting_cancels() {
    // A non-streamed request whose client gives up.
    let app = app_with(small(), &[]);
    let body = chat(
        "Write an endless story.",
        json!({"max_tokens": 6000, "temperature": 1.5}),
    );
    let router = app.router.clone();
    let task = tokio::spawn(async move {
        router
            .oneshot(request(
                Method::POST,
                "/v1/chat/completions",
                Some(&body),
                None,
            ))
            .await
    });
    wait_running(&app).await;
    task.abort();
    let _ = task.await;
    assert!(
        wait_idle(&app, Duration::from_secs(2)).await,
        "an abandoned request is cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_during_long_prefill() {
    let mut app = app_with(small(), &[]);
    app.state.keep_alive = Duration::from_millis(5);
    app.router = router(app.state.clone());
    let long = "Log line: connection accepted from a host. ".repeat(100);
    let resp = post(
        &app,
        "/v1/chat/completions",
        &chat(&long, json!({"max_tokens": 2, "stream": true})),
    )
    .await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.body);
    let first_comment = resp
        .body
        .lines()
        .position(|l| l.starts_with(':'))
        .expect("keep-alive comments during prefill");
    let first_content = resp
        .body
        .lines()
        .position(|l| l.contains("\"content\"") && !l.contains("\"role\""))
        .unwrap_or(usize::MAX);
    assert!(
        first_comment < first_content,
        "comments come while the prompt is processed"
    );
    sse_events(&resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cache_pressure_queues_instead_of_failing() {
    // Three prompts of 330 tokens with max_tokens 11 reserve 3 x 341 <= 1024 positions, but in
    // 32-position blocks they need 3 x 11 blocks > 32: the third must wait, not break the batch.
    let app = app_with(
        SchedulerConfig {
            kv_tokens: 1024,
            max_running: 3,
            ..SchedulerConfig::default()
        },
        &[],
    );
    let text = "Firewall rule updated for subnet 10.0.0.0/8 after repeated scans. ".repeat(40);
    let ids = post(&app, "/tokenize", &json!({"content": text}))
        .await
        .ok_json()["tokens"]
        .as_array()
        .unwrap()
        .clone();
    assert!(ids.len() >= 340);
    let bodies: Vec<_> = (0..3u64)
        .map(|i| {
            let mut p: Vec<serde_json::Value> = ids[..330].to_vec();
            p[0] = json!(100 + i); // distinct prompts: no prefix sharing
            json!({"prompt": p, "max_tokens": 11, "temperature": 1.0})
        })
        .collect();
    let calls = bodies.iter().map(|b| post(&app, "/v1/completions", b));
    for r in futures::future::join_all(calls).await {
        let v = r.ok_json();
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    // The same prompt again now comes partly from the prefix cache and still fits.
    let again = post(&app, "/v1/completions", &bodies[0]).await;
    again.ok_json();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_prompt_again_comes_from_the_prefix_cache_to_its_last_token() {
    // 101 prompt tokens: three whole 32-position blocks and 5 more. The second request runs
    // only its last token; the 100 before it, partial block included, come from the cache.
    let app = app_with(test_config(), &[]);
    let prompt: Vec<u32> = (0..101u32).map(|i| 200 + i * 13 % 900).collect();
    let body = json!({"prompt": prompt, "max_tokens": 3, "temperature": 0});
    let cached = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("ward_prompt_tokens_cached_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("cached-token counter in /metrics")
    };
    let first = post(&app, "/v1/completions", &body).await.ok_json();
    assert_eq!(cached(&get(&app, "/metrics").await.body), 0);
    let second = post(&app, "/v1/completions", &body).await.ok_json();
    assert_eq!(cached(&get(&app, "/metrics").await.body), 100);
    for v in [&first, &second] {
        assert_eq!(v["usage"]["prompt_tokens"], 101);
        assert_eq!(v["usage"]["completion_tokens"], 3);
    }
    // Continuing past the shared block's end (a copy on write) leaves the cached prompt
    // intact for a third request.
    post(&app, "/v1/completions", &body).await.ok_json();
    assert_eq!(cached(&get(&app, "/metrics").await.body), 200);
}
