//! `ward bench --url` against a mock OpenAI-compatible server on 127.0.0.1 that streams a known
//! number of chunks with known delays, split across writes and mixed with keep-alive comments.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::BenchError;
use super::endpoint::{self, EndpointConfig, chat_completions_url, synthetic_prompt};

/// Before the response headers (a server prefilling first) and after them (one that sends
/// headers at once): time to first token counts both, from the moment the request is sent.
const HEADER_DELAY: Duration = Duration::from_millis(30);
const FIRST_DELAY: Duration = Duration::from_millis(30);
const GAP: Duration = Duration::from_millis(5);
const CHUNKS: usize = 5;
/// The mock claims two tokens per text chunk in its usage chunk, so that tests can tell whether
/// the bench counted usage or chunks.
const TOKENS_PER_CHUNK: usize = 2;

struct Mock {
    url: String,
    served: Arc<AtomicUsize>,
}

/// Starts the mock. It answers 404 off `/v1/chat/completions`, 401 without `Bearer secret`, 400
/// when the body lacks the streaming fields, and picks its behaviour by model name: `json` answers
/// without streaming, `no-usage` omits the usage chunk, `flaky` answers every odd request 429.
fn mock() -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let n = count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = serve(conn, n);
            });
        }
    });
    Mock { url, served }
}

fn serve(mut conn: TcpStream, n: usize) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let (mut length, mut auth) = (0, String::new());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "authorization" => auth = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let reply = |status: &str, ctype: &str, text: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
    };
    let streaming = body["stream"] == true
        && body["stream_options"]["include_usage"] == true
        && body["temperature"] == 0
        && body["max_tokens"].is_u64()
        && body["messages"][0]["content"].is_string();
    let model = body["model"].as_str().unwrap_or("");
    let early = if !request_line.starts_with("POST /v1/chat/completions ") {
        Some(reply("404 Not Found", "text/plain", "no route"))
    } else if auth != "Bearer secret" {
        Some(reply(
            "401 Unauthorized",
            "application/json",
            r#"{"error":{"message":"bad key"}}"#,
        ))
    } else if !streaming {
        Some(reply(
            "400 Bad Request",
            "text/plain",
            "missing streaming fields",
        ))
    } else if model == "json" {
        Some(reply("200 OK", "application/json", r#"{"choices":[]}"#))
    } else if model == "flaky" && n % 2 == 1 {
        Some(reply("429 Too Many Requests", "text/plain", "slow down"))
    } else {
        None
    };
    if let Some(r) = early {
        return conn.write_all(r.as_bytes());
    }
    // Like llama.cpp's server: chunked and keep-alive, yet the connection is closed after the
    // stream, so a client that pools it finds it dead on the next request.
    std::thread::sleep(HEADER_DELAY);
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    let mut send = |bytes: &[u8]| -> std::io::Result<()> {
        conn.write_all(format!("{:x}\r\n", bytes.len()).as_bytes())?;
        conn.write_all(bytes)?;
        conn.write_all(b"\r\n")?;
        conn.flush()
    };
    std::thread::sleep(FIRST_DELAY);
    send(b": keep-alive\n\n")?;
    send(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n")?;
    for k in 0..CHUNKS {
        let event = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{k} \"}}}}]}}\n\n"
        );
        // Split one event across two writes, mid-JSON.
        let (a, b) = event.as_bytes().split_at(event.len() / 2);
        send(a)?;
        std::thread::sleep(GAP);
        send(b)?;
        send(b": keep-alive\n\n")?;
        std::thread::sleep(GAP);
    }
    send(b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n")?;
    if model != "no-usage" {
        let usage = format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":30,\"completion_tokens\":{}}}}}\n\n",
            CHUNKS * TOKENS_PER_CHUNK
        );
        send(usage.as_bytes())?;
    }
    send(b"data: [DONE]\n\n")?;
    conn.write_all(b"0\r\n\r\n")
}

fn config(url: &str, model: &str) -> EndpointConfig {
    EndpointConfig {
        url: url.to_string(),
        model: model.to_string(),
        api_key: Some("secret".into()),
        concurrency: vec![1, 3],
        prompt_tokens: 40,
        max_tokens: CHUNKS,
        requests: 4,
        shared_prefix: false,
        ignore_eos: false,
        timeout: Duration::from_secs(20),
    }
}

#[test]
fn endpoint_bench_times_the_mock_stream() {
    let m = mock();
    let levels = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let report = endpoint::run(&config(&format!("{}/v1/", m.url), "mock"), &|p| match p {
        endpoint::Progress::Level { .. } => _ = levels.fetch_add(1, Ordering::SeqCst),
        endpoint::Progress::RequestDone => _ = done.fetch_add(1, Ordering::SeqCst),
    })
    .unwrap();
    assert_eq!(report.url, format!("{}/v1/chat/completions", m.url));
    assert_eq!((levels.into_inner(), done.into_inner()), (2, 8));
    assert_eq!(
        m.served.load(Ordering::SeqCst),
        1 + 2 * 4,
        "a warm-up, then 4 requests per level"
    );
    for (level, c) in report.levels.iter().zip([1, 3]) {
        assert_eq!(
            (level.concurrency, level.requests, level.errors),
            (c, 4, 0),
            "{level:?}"
        );
        assert_eq!(
            level.completion_tokens,
            (4 * CHUNKS * TOKENS_PER_CHUNK) as u64,
            "usage counts"
        );
        let ttft = level.ttft_ms.unwrap();
        assert_eq!(ttft.count, 4);
        let floor = (HEADER_DELAY + FIRST_DELAY).as_secs_f64() * 1e3;
        assert!(
            ttft.p50 >= floor && ttft.mean >= floor,
            "TTFT below the mock's delay: {ttft:?}"
        );
        assert_eq!(level.itl_ms.unwrap().count, 4 * (CHUNKS - 1));
        assert_eq!(level.tokens_per_s_per_request.unwrap().count, 4);
        assert!(level.e2e_ms.unwrap().p50 >= floor + 2.0 * (CHUNKS - 1) as f64 * 5.0);
        assert!(level.aggregate_tokens_per_s > 0.0);
    }
    let json = serde_json::to_value(&report).unwrap();
    for key in ["ttft_ms", "itl_ms", "tokens_per_s_per_request"] {
        assert!(json["levels"][0][key]["p99"].is_f64(), "{key}: {json}");
    }
    assert!(json["levels"][1]["aggregate_tokens_per_s"].is_f64());
}

#[test]
fn endpoint_bench_counts_chunks_without_usage_and_errors_by_status() {
    let m = mock();
    let mut cfg = config(&m.url, "no-usage");
    cfg.concurrency = vec![2];
    let level = &endpoint::run(&cfg, &|_| {}).unwrap().levels[0];
    assert_eq!(
        (level.errors, level.completion_tokens),
        (0, (4 * CHUNKS) as u64)
    );

    let m = mock();
    let mut cfg = config(&m.url, "flaky");
    cfg.concurrency = vec![1];
    let level = &endpoint::run(&cfg, &|_| {}).unwrap().levels[0];
    assert_eq!(level.errors, 2, "{level:?}");
    assert_eq!(level.errors_by_kind.get("429"), Some(&2));
    assert_eq!(level.error_sample.as_deref(), Some("429: slow down"));
    assert_eq!(level.ttft_ms.unwrap().count, 2);
}

#[test]
fn endpoint_bench_explains_fatal_failures() {
    let m = mock();
    let run = |cfg: EndpointConfig| endpoint::run(&cfg, &|_| {}).unwrap_err();
    let mut cfg = config(&m.url, "mock");
    cfg.api_key = Some("wrong".into());
    let e = run(cfg);
    assert!(matches!(e, BenchError::Auth { status: 401, .. }), "{e}");
    assert!(
        e.to_string().contains("--api-key") && e.to_string().contains("bad key"),
        "{e}"
    );
    let e = run(config(&m.url, "json"));
    assert!(matches!(e, BenchError::NotStreaming { .. }), "{e}");
    let e = run(config(&format!("{}/elsewhere", m.url), "mock"));
    assert!(matches!(e, BenchError::Http { status: 404, .. }), "{e}");
    let e = run(config("ftp://example.com", "mock"));
    assert!(matches!(e, BenchError::BadUrl { .. }), "{e}");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = run(config(&format!("http://{closed}"), "mock"));
    assert!(matches!(e, BenchError::Connect { .. }), "{e}");
    let mut cfg = config(&m.url, "mock");
    cfg.concurrency = vec![0];
    assert!(matches!(run(cfg), BenchError::Config(_)));
}

#[test]
fn urls_are_normalised() {
    let u = |s: &str| chat_completions_url(s).unwrap();
    assert_eq!(u("http://h:8080"), "http://h:8080/v1/chat/completions");
    assert_eq!(u("http://h:8080/"), "http://h:8080/v1/chat/completions");
    assert_eq!(
        u("https://api.x.com/v1"),
        "https://api.x.com/v1/chat/completions"
    );
    assert_eq!(
        u("https://api.x.com/v1/"),
        "https://api.x.com/v1/chat/completions"
    );
    assert_eq!(
        u("http://h/openai/v1/chat/completions"),
        "http://h/openai/v1/chat/completions"
    );
    assert_eq!(u("HTTP://h/proxy"), "HTTP://h/proxy/v1/chat/completions");
    for bad in [
        "localhost:8080",
        "ftp://h",
        "http://",
        "http:///v1",
        "http://h /v1",
    ] {
        assert!(chat_completions_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn synthetic_prompts_vary_unless_shared() {
    let a = synthetic_prompt(0, 200, false, 7);
    let b = synthetic_prompt(1, 200, false, 7);
    assert_ne!(
        a[..12],
        b[..12],
        "distinct prompts must differ from the start"
    );
    let words = a.split_whitespace().count();
    assert!((180..=220).contains(&words), "{words} words for 200 tokens");
    assert_eq!(a, synthetic_prompt(0, 200, false, 7));
    let (s0, s1) = (
        synthetic_prompt(0, 200, true, 7),
        synthetic_prompt(1, 200, true, 7),
    );
    assert_ne!(s0, s1);
    let common = s0
        .bytes()
        .zip(s1.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(
        common > s0.len() - 20,
        "shared prompts share all but a tail"
    );
}
