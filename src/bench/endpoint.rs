//! Benchmark of any OpenAI-compatible server: streaming `POST /v1/chat/completions` requests at
//! several concurrency levels, timed chunk by chunk.
//!
//! Per request: time to first token (TTFT, from sending the request to the first chunk with
//! generated text), inter-token latency (ITL, the gaps between such chunks), and tokens per second
//! after the first token, `(tokens - 1) / (end - first token)`, i.e. 1 / vLLM's TPOT. Tokens are
//! `usage.completion_tokens` when the server sends it, else the number of text chunks. Per level:
//! p50/p95/p99 of each, aggregate tokens per second over the level's wall time, and failures
//! counted by HTTP status or kind. One untimed warm-up request comes first; its failure aborts
//! the run with a clear [`BenchError`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::BenchError;
use super::request::{Client, Failure, Timing, colon, fatal, request_body};
use super::stats::Summary;

/// What to run.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Base URL, with or without `/v1` (or the full chat-completions URL).
    pub url: String,
    /// Model name sent in each request.
    pub model: String,
    /// Bearer token.
    pub api_key: Option<String>,
    /// Requests in flight, one level after another.
    pub concurrency: Vec<usize>,
    /// Approximate prompt length in tokens (one common English word each).
    pub prompt_tokens: usize,
    /// `max_tokens` of each request.
    pub max_tokens: usize,
    /// Requests per level.
    pub requests: usize,
    /// Give every request the same prompt body, so that prefix caches can hit.
    pub shared_prefix: bool,
    /// Send `"ignore_eos": true` (vLLM, llama.cpp) so that every request runs to `max_tokens`.
    pub ignore_eos: bool,
    /// Longest wait for the next byte of a response.
    pub timeout: Duration,
}

/// Results over all levels.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    /// The chat-completions URL used.
    pub url: String,
    /// The model name sent.
    pub model: String,
    /// One entry per concurrency level.
    pub levels: Vec<LevelReport>,
}

/// Results of one concurrency level. Latencies in milliseconds; `None` when no request gave one.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    /// Requests in flight.
    pub concurrency: usize,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Failures by HTTP status (`"429"`) or kind (`"transport"`, `"not_streaming"`,
    /// `"bad_stream"`, `"incomplete_stream"`, `"error_event"`).
    pub errors_by_kind: BTreeMap<String, usize>,
    /// The first failure's message.
    pub error_sample: Option<String>,
    /// Time to first token.
    pub ttft_ms: Option<Summary>,
    /// Gaps between text chunks.
    pub itl_ms: Option<Summary>,
    /// Whole-request latency.
    pub e2e_ms: Option<Summary>,
    /// Tokens per second of each request after its first token.
    pub tokens_per_s_per_request: Option<Summary>,
    /// Completion tokens of the successful requests over the level's wall time.
    pub aggregate_tokens_per_s: f64,
    /// Completion tokens of the successful requests.
    pub completion_tokens: u64,
    /// Wall time of the level in seconds.
    pub wall_s: f64,
}

/// Progress notifications for a caller that draws a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// A level starts.
    Level {
        /// Its concurrency.
        concurrency: usize,
    },
    /// A request finished.
    RequestDone,
}

/// Normalises a base URL into the chat-completions URL.
pub fn chat_completions_url(base: &str) -> Result<String, BenchError> {
    let bad = |reason: &str| BenchError::BadUrl {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    let url = base.trim().trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected http://HOST[:PORT][/PATH]"))?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.split('/').next().unwrap_or("").is_empty() {
        return Err(bad("no host"));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(bad("it contains whitespace"));
    }
    Ok(if url.ends_with("/chat/completions") {
        url.to_string()
    } else if url.ends_with("/v1") {
        format!("{url}/chat/completions")
    } else {
        format!("{url}/v1/chat/completions")
    })
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "water",
    "network", "server", "alert", "rule", "host", "file", "process", "user", "event", "log",
    "system", "attack", "signal",
];

/// A synthetic prompt of about `tokens` tokens. Request `index` gets its own words (so no two
/// prompts share a prefix beyond the chat template) unless `shared`, when only a short tail
/// differs. `nonce` makes runs differ from each other.
pub fn synthetic_prompt(index: usize, tokens: usize, shared: bool, nonce: u64) -> String {
    let seed = if shared {
        nonce
    } else {
        nonce ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = String::with_capacity(tokens * 6 + 64);
    if !shared {
        s.push_str(&format!("[{index}:{:08x}] ", rng.r#gen::<u32>()));
    }
    s.push_str("Continue this text:");
    for _ in 0..tokens.saturating_sub(16) {
        s.push(' ');
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    if shared {
        s.push_str(&format!(" (request {index})"));
    }
    s
}

/// Runs every level; `progress` hears of each level and each finished request.
pub fn run(
    cfg: &EndpointConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<EndpointReport, BenchError> {
    let url = chat_completions_url(&cfg.url)?;
    if cfg.requests == 0 || cfg.max_tokens == 0 || cfg.concurrency.contains(&0) {
        return Err(BenchError::Config(
            "requests, max tokens and concurrency must be at least 1".into(),
        ));
    }
    let widest = cfg.concurrency.iter().copied().max().unwrap_or(1);
    let client = Client::new(cfg, &url, widest);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let warm = request_body(
        cfg,
        &synthetic_prompt(usize::MAX, cfg.prompt_tokens, cfg.shared_prefix, nonce),
        4,
    );
    client.stream(&warm).map_err(|f| fatal(&url, f))?;
    let mut levels = Vec::new();
    for (li, &concurrency) in cfg.concurrency.iter().enumerate() {
        progress(Progress::Level { concurrency });
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        let outcomes: Vec<Result<Timing, Failure>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..concurrency.min(cfg.requests))
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= cfg.requests {
                                break;
                            }
                            let index = li * cfg.requests + i;
                            let prompt = synthetic_prompt(
                                index,
                                cfg.prompt_tokens,
                                cfg.shared_prefix,
                                nonce,
                            );
                            let body = request_body(cfg, &prompt, cfg.max_tokens);
                            mine.push(client.stream(&body));
                            progress(Progress::RequestDone);
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        levels.push(summarise(
            concurrency,
            outcomes,
            start.elapsed().as_secs_f64(),
        ));
    }
    Ok(EndpointReport {
        url,
        model: cfg.model.clone(),
        levels,
    })
}

fn summarise(
    concurrency: usize,
    outcomes: Vec<Result<Timing, Failure>>,
    wall_s: f64,
) -> LevelReport {
    let ms = |v: Vec<f64>| Summary::of(&v.iter().map(|s| s * 1e3).collect::<Vec<_>>());
    let (mut ttft, mut itl, mut e2e, mut tps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut errors_by_kind, mut error_sample, mut tokens) = (BTreeMap::new(), None, 0);
    let requests = outcomes.len();
    for o in outcomes {
        match o {
            Ok(t) => {
                tokens += t.tokens;
                e2e.push(t.e2e);
                itl.extend_from_slice(&t.itl);
                if let Some(first) = t.ttft {
                    ttft.push(first);
                    if t.tokens >= 2 && t.e2e > first {
                        tps.push((t.tokens - 1) as f64 / (t.e2e - first));
                    }
                }
            }
            Err(f) => {
                *errors_by_kind.entry(f.kind.clone()).or_insert(0) += 1;
                error_sample.get_or_insert_with(|| format!("{}{}", f.kind, colon(f.message)));
            }
        }
    }
    LevelReport {
        concurrency,
        requests,
        errors: errors_by_kind.values().sum(),
        errors_by_kind,
        error_sample,
        ttft_ms: ms(ttft),
        itl_ms: ms(itl),
        e2e_ms: ms(e2e),
        tokens_per_s_per_request: Summary::of(&tps),
        aggregate_tokens_per_s: if wall_s > 0.0 {
            tokens as f64 / wall_s
        } else {
            0.0
        },
        completion_tokens: tokens,
        wall_s,
    }
}
