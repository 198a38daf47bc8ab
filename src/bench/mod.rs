//! `ward bench`: throughput and latency measurements, in two modes.
//!
//! - [`engine`] runs a model in-process like llama.cpp's `llama-bench`: prefill of `p` tokens and
//!   decode of `n` tokens, repeated, reported as mean ± standard deviation in tokens per second.
//! - [`endpoint`] drives any OpenAI-compatible server over HTTP with streaming chat completions
//!   at several concurrency levels, and reports time to first token, inter-token latency and
//!   throughput percentiles.
//!
//! [`bandwidth`] measures the machine's memory read bandwidth, decode's bound.
//! [`sse`] parses the event stream by hand so that every chunk is timed when it arrives,
//! [`stats`] holds the percentile maths and [`table`] lays the reports out for the terminal.
//! Nothing here prints or parses flags: that is `src/cli/bench.rs`.

pub mod bandwidth;
pub mod endpoint;
pub mod engine;
mod request;
pub mod sse;
pub mod stats;
pub mod table;

#[cfg(test)]
mod tests;

/// Why a benchmark could not run. Per-request failures during an endpoint run are counted in the
/// report instead; these are the failures that make the whole run meaningless.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The URL cannot be used.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot reach {url}: {reason}")]
    Connect {
        /// The endpoint.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("authentication failed at {url} (HTTP {status}); check --api-key{body}")]
    Auth {
        /// The endpoint.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The start of the server's answer, prefixed with ": " when not empty.
        body: String,
    },
    /// The server answered with another error status.
    #[error("{url} answered HTTP {status}{hint}{body}")]
    Http {
        /// The endpoint.
        url: String,
        /// The status code.
        status: u16,
        /// A hint for common statuses.
        hint: &'static str,
        /// The start of the server's answer, prefixed with ": " when not empty.
        body: String,
    },
    /// The server answered, but not with an event stream of chat-completion chunks.
    #[error("{url} did not stream: {reason} (does it support \"stream\": true?)")]
    NotStreaming {
        /// The endpoint.
        url: String,
        /// What came back instead.
        reason: String,
    },
    /// The stream carried an error event.
    #[error("{url} reported an error in the stream: {message}")]
    Server {
        /// The endpoint.
        url: String,
        /// The error's message.
        message: String,
    },
    /// An invalid setting.
    #[error("invalid benchmark setting: {0}")]
    Config(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::error::EngineError),
}
