//! Prometheus metrics, all prefixed `ward_`: requests by route and status, queue depth,
//! time-to-first-token and inter-token latency histograms, prompt (and prefix-cached prompt)
//! and generated token counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// All of ward's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time between tokens.
    pub itl: Histogram,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self, queue_depth: usize, running: usize, cached_tokens: u64) -> String {
        let mut out = String::new();
        out.push_str("# HELP ward_requests_total HTTP requests by route and status.\n# TYPE ward_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "ward_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ward_queue_depth Requests waiting for the engine.\n# TYPE ward_queue_depth gauge\nward_queue_depth {queue_depth}"
        );
        let _ = writeln!(
            out,
            "# HELP ward_running_sequences Sequences being generated.\n# TYPE ward_running_sequences gauge\nward_running_sequences {running}"
        );
        self.ttft.render(
            "ward_time_to_first_token_seconds",
            "Time from request to first generated token.",
            &mut out,
        );
        self.itl.render(
            "ward_inter_token_latency_seconds",
            "Time between consecutive generated tokens.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP ward_prompt_tokens_total Prompt tokens processed.\n# TYPE ward_prompt_tokens_total counter\nward_prompt_tokens_total {}",
            self.prompt_tokens.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ward_prompt_tokens_cached_total Prompt tokens served from the prefix cache.\n# TYPE ward_prompt_tokens_cached_total counter\nward_prompt_tokens_cached_total {cached_tokens}"
        );
        let _ = writeln!(
            out,
            "# HELP ward_generated_tokens_total Tokens generated.\n# TYPE ward_generated_tokens_total counter\nward_generated_tokens_total {}",
            self.generated_tokens.load(Ordering::Relaxed)
        );
        out
    }
}
