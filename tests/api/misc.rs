//! The smaller routes: `/v1/models`, `/v1/embeddings`, `/tokenize`, `/detokenize`, `/health`,
//! `/metrics` and `/openapi.json`.

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn models_lists_what_is_loaded() {
    let app = shared();
    let v = get(&app, "/v1/models").await.ok_json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&MODEL) && ids.contains(&EMBEDDER), "{v}");
    for m in data {
        assert_eq!(m["object"], "model");
        assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{m}");
    }
}

fn decode_f32(text: &str) -> Vec<f32> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let (mut n, mut bytes) = (0, Vec::new());
    for c in text.bytes().take_while(|&c| c != b'=') {
        bits = bits << 6
            | alphabet
                .iter()
                .position(|&a| a == c)
                .expect("base64 alphabet") as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            bytes.push((bits >> n) as u8);
        }
    }
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn norm(v: &Value) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt()
}

#[tokio::test]
async fn embeddings() {
    let app = shared();
    let one = post(
        &app,
        "/v1/embeddings",
        &json!({"model": EMBEDDER, "input": "failed ssh login"}),
    )
    .await
    .ok_json();
    assert_eq!(one["object"], "list");
    assert_eq!(one["model"], EMBEDDER);
    let d = one["data"].as_array().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["object"], "embedding");
    assert_eq!(d[0]["index"], 0);
    assert_eq!(d[0]["embedding"].as_array().unwrap().len(), 384);
    assert!((norm(&d[0]["embedding"]) - 1.0).abs() < 1e-3);
    assert!(one["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let texts = [
        "failed ssh login",
        "brute-force authentication attempts over SSH",
        "a recipe for banana bread",
    ];
    let many = post(&app, "/v1/embeddings", &json!({"input": texts}))
        .await
        .ok_json();
    let d = many["data"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    let vecs: Vec<Vec<f64>> = d
        .iter()
        .enumerate()
        .map(|(i, e)| {
            assert_eq!(e["index"], i);
            assert!((norm(&e["embedding"]) - 1.0).abs() < 1e-3);
            e["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let first: Vec<f64> = one["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(
        dot(&first, &vecs[0]) > 0.999,
        "a text embeds the same alone and in a batch"
    );
    assert!(
        dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]),
        "related texts are closer"
    );

    // base64, which the openai SDKs ask for by default: the same floats, little-endian.
    let b = post(
        &app,
        "/v1/embeddings",
        &json!({"input": "failed ssh login", "encoding_format": "base64"}),
    )
    .await
    .ok_json();
    let decoded = decode_f32(b["data"][0]["embedding"].as_str().expect("a base64 string"));
    assert_eq!(decoded.len(), 384);
    for (x, y) in decoded.iter().zip(&first) {
        assert!((f64::from(*x) - y).abs() < 1e-6);
    }
    assert_error(
        &post(
            &app,
            "/v1/embeddings",
            &json!({"input": "x", "encoding_format": "int8"}),
        )
        .await,
        400,
    );
    assert_error(
        &post(
            &app,
            "/v1/embeddings",
            &json!({"input": "x", "model": "nope"}),
        )
        .await,
        404,
    );
    assert_error(
        &post(&app, "/v1/embeddings", &json!({"input": []})).await,
        400,
    );
}

#[tokio::test]
async fn tokenize_detokenize() {
    let app = shared();
    let text = "Suspicious login from 203.0.113.7";
    let v = post(&app, "/tokenize", &json!({"content": text}))
        .await
        .ok_json();
    let ids = v["tokens"].as_array().unwrap().clone();
    assert!(ids.iter().all(Value::is_u64) && ids.len() > 3, "{v}");
    let back = post(&app, "/detokenize", &json!({"tokens": ids}))
        .await
        .ok_json();
    assert_eq!(back["content"], text);
    let p = post(
        &app,
        "/tokenize",
        &json!({"content": text, "with_pieces": true}),
    )
    .await
    .ok_json();
    let pieces = p["tokens"].as_array().unwrap();
    assert_eq!(pieces.len(), ids.len());
    let joined: String = pieces
        .iter()
        .zip(&ids)
        .map(|(p, id)| {
            assert_eq!(&p["id"], id);
            p["piece"]
                .as_str()
                .expect("ASCII pieces are strings")
                .to_string()
        })
        .collect();
    assert_eq!(joined, text);
    let s = post(
        &app,
        "/tokenize",
        &json!({"content": text, "add_special": true}),
    )
    .await
    .ok_json();
    assert!(s["tokens"].as_array().unwrap().len() >= ids.len());
    assert_error(
        &post(&app, "/detokenize", &json!({"tokens": [u32::MAX]})).await,
        400,
    );
}

#[tokio::test]
async fn health_and_openapi() {
    let app = shared();
    let v = get(&app, "/health").await.ok_json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["models"][MODEL], "ready");
    let doc = get(&app, "/openapi.json").await.ok_json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/embeddings",
        "/tokenize",
        "/detokenize",
        "/health",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        doc["components"]["schemas"]
            .get("ChatCompletionRequest")
            .is_some()
    );
}

#[tokio::test]
async fn metrics_count_requests() {
    // Its own app, so that other tests do not move the counters.
    let app = app_with(test_config(), &[]);
    post(
        &app,
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 3})),
    )
    .await
    .ok_json();
    post(
        &app,
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 3})),
    )
    .await
    .ok_json();
    assert_error(
        &post(
            &app,
            "/v1/chat/completions",
            &chat("Hi", json!({"temperature": 9})),
        )
        .await,
        400,
    );
    let r = get(&app, "/metrics").await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = &r.body;
    let count = |status: &str| {
        metric(
            m,
            &format!("ward_requests_total{{route=\"/v1/chat/completions\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(count("200"), Some(2.0), "{m}");
    assert_eq!(count("400"), Some(1.0), "{m}");
    for name in [
        "ward_queue_depth",
        "ward_running_sequences",
        "ward_time_to_first_token_seconds_count",
        "ward_inter_token_latency_seconds_count",
        "ward_prompt_tokens_total",
        "ward_generated_tokens_total",
    ] {
        assert!(metric(m, name).is_some(), "{name} missing:\n{m}");
    }
    assert!(m.contains("# TYPE ward_time_to_first_token_seconds histogram"));
    assert_eq!(
        metric(m, "ward_time_to_first_token_seconds_count"),
        Some(2.0),
        "{m}"
    );
    assert!(metric(m, "ward_generated_tokens_total").unwrap() >= 2.0);
    assert!(metric(m, "ward_prompt_tokens_total").unwrap() >= 10.0);
    assert_eq!(metric(m, "ward_running_sequences"), Some(0.0));
}
