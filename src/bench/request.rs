//! One streaming chat-completion request, timed event by event: the request body, the read
//! loop over [`SseParser`], and the failures it can end in.

use std::io::Read;
use std::time::{Duration, Instant};

use super::BenchError;
use super::endpoint::EndpointConfig;
use super::sse::{ChatChunk, SseParser};

/// One request's measurements.
#[derive(Debug, Default)]
pub(super) struct Timing {
    pub(super) ttft: Option<f64>,
    pub(super) itl: Vec<f64>,
    pub(super) tokens: u64,
    pub(super) e2e: f64,
}

/// One request's failure: a key for `LevelReport::errors_by_kind` (the HTTP status or a kind)
/// and a message.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) kind: String,
    pub(super) message: String,
    pub(super) status: Option<u16>,
}

impl Failure {
    pub(super) fn new(kind: &str, message: String) -> Self {
        Self {
            kind: kind.into(),
            message,
            status: None,
        }
    }
}

/// The JSON body of a streaming request.
pub(super) fn request_body(cfg: &EndpointConfig, prompt: &str, max_tokens: usize) -> String {
    let mut body = serde_json::json!({
        "model": cfg.model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if cfg.ignore_eos {
        body["ignore_eos"] = true.into();
    }
    body.to_string()
}

/// The HTTP side: a pool of keep-alive connections, and a second agent that never reuses one.
///
/// Some servers (llama.cpp's) close a connection after a streamed response without saying so, and
/// ureq does not retry a POST on a stale pooled connection; a request that fails that way before
/// any answer is sent once more on a fresh connection, with its clock restarted.
pub(super) struct Client {
    pooled: ureq::Agent,
    fresh: ureq::Agent,
    url: String,
    auth: Option<String>,
}

impl Client {
    /// A client for `url` that keeps up to `connections` connections alive.
    pub(super) fn new(cfg: &EndpointConfig, url: &str, connections: usize) -> Self {
        let agent = |idle: usize| {
            ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(cfg.timeout)
                .max_idle_connections(idle)
                .max_idle_connections_per_host(idle)
                .user_agent(concat!("ward-bench/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Self {
            pooled: agent(connections),
            fresh: agent(0),
            url: url.to_string(),
            auth: cfg.api_key.as_ref().map(|k| format!("Bearer {k}")),
        }
    }

    fn request(&self, agent: &ureq::Agent) -> ureq::Request {
        let req = agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("Accept", "text/event-stream")
            .set("Accept-Encoding", "identity");
        match &self.auth {
            Some(auth) => req.set("Authorization", auth),
            None => req,
        }
    }

    /// Sends one streaming request and times its chunks.
    pub(super) fn stream(&self, body: &str) -> Result<Timing, Failure> {
        let mut start = Instant::now();
        let sent = match self.request(&self.pooled).send_string(body) {
            Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::Io => {
                start = Instant::now();
                self.request(&self.fresh).send_string(body)
            }
            sent => sent,
        };
        let resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let mut f = Failure::new(&code.to_string(), excerpt(&text, 200));
                f.status = Some(code);
                return Err(f);
            }
            Err(ureq::Error::Transport(t)) => {
                let kind = if t.kind() == ureq::ErrorKind::InvalidUrl {
                    "bad_url"
                } else {
                    "transport"
                };
                return Err(Failure::new(kind, t.to_string()));
            }
        };
        read_stream(resp, start)
    }
}

/// Reads a response as an event stream, timing each chunk from `start`.
fn read_stream(resp: ureq::Response, start: Instant) -> Result<Timing, Failure> {
    if resp.content_type().eq_ignore_ascii_case("application/json") {
        let text = resp.into_string().unwrap_or_default();
        return Err(Failure::new(
            "not_streaming",
            format!("a JSON body instead of events: {}", excerpt(&text, 200)),
        ));
    }
    let mut reader = resp.into_reader();
    let (mut parser, mut events, mut buf) = (SseParser::new(), Vec::new(), vec![0u8; 16 * 1024]);
    let mut t = Timing::default();
    let (mut last, mut chunks, mut usage, mut seen) = (None::<Instant>, 0u64, None, 0usize);
    let (mut finished, mut done) = (false, false);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Failure::new("transport", e.to_string()))?;
        let now = Instant::now();
        if n == 0 {
            parser.finish(&mut events);
        } else {
            parser.feed(&buf[..n], &mut events);
        }
        for ev in events.drain(..) {
            seen += 1;
            let chunk = ChatChunk::parse(&ev.data).map_err(|e| Failure::new("bad_stream", e))?;
            if let Some(message) = chunk
                .error
                .or_else(|| (ev.event.as_deref() == Some("error")).then(|| ev.data.clone()))
            {
                return Err(Failure::new("error_event", message));
            }
            if !chunk.text.is_empty() {
                chunks += 1;
                match last {
                    None => t.ttft = Some((now - start).as_secs_f64()),
                    Some(prev) => t.itl.push((now - prev).as_secs_f64()),
                }
                last = Some(now);
            }
            usage = chunk.completion_tokens.or(usage);
            done |= chunk.done;
            finished |= chunk.done || chunk.finish_reason.is_some();
        }
        if n == 0 || done || finished && usage.is_some() {
            break;
        }
    }
    t.e2e = start.elapsed().as_secs_f64();
    // Read to the end so that the connection goes back to the pool.
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    if seen == 0 {
        return Err(Failure::new(
            "not_streaming",
            "the response held no server-sent events".into(),
        ));
    }
    if !finished {
        return Err(Failure::new(
            "incomplete_stream",
            "the stream ended before [DONE] or a finish_reason".into(),
        ));
    }
    t.tokens = usage.unwrap_or(chunks);
    Ok(t)
}

fn excerpt(text: &str, chars: usize) -> String {
    text.trim().chars().take(chars).collect()
}

/// `": body"`, or nothing for an empty body.
pub(super) fn colon(body: String) -> String {
    if body.is_empty() {
        body
    } else {
        format!(": {body}")
    }
}

/// Turns a failed warm-up request into the error that explains it.
pub(super) fn fatal(url: &str, f: Failure) -> BenchError {
    let url = url.to_string();
    match (f.status, f.kind.as_str()) {
        (Some(status @ (401 | 403)), _) => BenchError::Auth {
            url,
            status,
            body: colon(f.message),
        },
        (Some(status), _) => {
            let hint = match status {
                404 => " (no chat-completions route there, or an unknown model)",
                405 => " (method not allowed: is this an OpenAI-compatible server?)",
                _ => "",
            };
            BenchError::Http {
                url,
                status,
                hint,
                body: colon(f.message),
            }
        }
        (None, "bad_url") => BenchError::BadUrl {
            url,
            reason: f.message,
        },
        (None, "transport") => BenchError::Connect {
            url,
            reason: f.message,
        },
        (None, "error_event") => BenchError::Server {
            url,
            message: f.message,
        },
        (None, _) => BenchError::NotStreaming {
            url,
            reason: f.message,
        },
    }
}
