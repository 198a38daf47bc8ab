//! `ward bench`: its flags, and the glue from them to [`crate::bench`]. `--engine` measures a
//! model in-process like `llama-bench`; `--url` measures any OpenAI-compatible server.
//! Compute threads come from the global `--threads` flag (or `WARD_THREADS`).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::bench::endpoint::{self, EndpointConfig, Progress};
use crate::bench::engine::{self, EngineConfig};
use crate::bench::table;

/// `ward bench`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["engine", "url"])))]
pub struct BenchArgs {
    /// Measure the engine in-process: prefill and decode speed, like llama-bench.
    #[arg(long)]
    pub engine: bool,
    /// Measure an OpenAI-compatible server at this base URL (with or without /v1).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// With --engine: a catalog name, imported name or .gguf path (default: the default model).
    /// With --url: the model name to send (required).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Prompt tokens per prefill run (0: skip prefill).
    #[arg(short = 'p', long, default_value_t = 512, help_heading = "--engine")]
    pub n_prompt: usize,
    /// Tokens per decode run (0: skip decode).
    #[arg(short = 'n', long, default_value_t = 128, help_heading = "--engine")]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5, help_heading = "--engine")]
    pub repetitions: usize,
    /// Also decode this many sequences together (one token each per forward pass) and report
    /// their aggregate tokens per second.
    #[arg(long, default_value_t = 1, help_heading = "--engine")]
    pub parallel: usize,
    /// Tokens already in the cache (prefilled untimed) when each test starts, like
    /// llama-bench's -d: measures prefill and decode at that context depth.
    #[arg(short = 'd', long, default_value_t = 0, help_heading = "--engine")]
    pub depth: usize,

    /// Bearer token for the server.
    #[arg(long, help_heading = "--url")]
    pub api_key: Option<String>,
    /// Requests in flight, one level after another (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8",
        help_heading = "--url"
    )]
    pub concurrency: Vec<usize>,
    /// Approximate prompt length in tokens.
    #[arg(long, default_value_t = 512, help_heading = "--url")]
    pub prompt_tokens: usize,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 128, help_heading = "--url")]
    pub max_tokens: usize,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 16, help_heading = "--url")]
    pub requests: usize,
    /// Send the same prompt body in every request, so that prefix caches can hit.
    #[arg(long, help_heading = "--url")]
    pub shared_prefix: bool,
    /// Send "ignore_eos": true (vLLM, llama.cpp) so that every request runs to max_tokens.
    #[arg(long, help_heading = "--url")]
    pub ignore_eos: bool,
    /// Seconds to wait for the next byte of a response.
    #[arg(long, default_value_t = 300, help_heading = "--url")]
    pub timeout: u64,
}

/// Runs `ward bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.url.clone() {
        Some(url) => run_endpoint(url, a),
        None => run_engine(a),
    }
}

fn run_engine(a: BenchArgs) -> anyhow::Result<()> {
    let name = a
        .model
        .unwrap_or_else(|| crate::cli::DEFAULT_MODEL.to_string());
    let path = crate::catalog::resolve_model(&name)?;
    let cfg = EngineConfig {
        prompt_tokens: a.n_prompt,
        gen_tokens: a.n_gen,
        reps: a.repetitions,
        parallel: a.parallel,
        depth: a.depth,
        ..EngineConfig::default()
    };
    let report = engine::run(&path, &name, &cfg)
        .with_context(|| format!("benchmarking {}", path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table::engine(&report));
    }
    Ok(())
}

fn run_endpoint(url: String, a: BenchArgs) -> anyhow::Result<()> {
    let model = a
        .model
        .context("--url needs --model: the model name the server knows")?;
    let cfg = EndpointConfig {
        url,
        model,
        api_key: a.api_key,
        concurrency: a.concurrency,
        prompt_tokens: a.prompt_tokens,
        max_tokens: a.max_tokens,
        requests: a.requests,
        shared_prefix: a.shared_prefix,
        ignore_eos: a.ignore_eos,
        timeout: Duration::from_secs(a.timeout),
    };
    let bar = ProgressBar::new((cfg.concurrency.len() * cfg.requests) as u64);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} requests, {elapsed}")?;
        bar.set_style(style.progress_chars("=> "));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let result = endpoint::run(&cfg, &|p| match p {
        Progress::Level { concurrency } => bar.set_message(format!("concurrency {concurrency}")),
        Progress::RequestDone => bar.inc(1),
    });
    bar.finish_and_clear();
    let report = result?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table::endpoint(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::BenchArgs;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn bench_flags_parse() {
        let a = parse(&[
            "--engine", "-m", "x", "-p", "16", "-n", "4", "-r", "1", "--json",
        ])
        .unwrap();
        assert!(a.engine && a.json && a.url.is_none());
        assert_eq!((a.n_prompt, a.n_gen, a.repetitions), (16, 4, 1));
        let a = parse(&["--url", "http://h:8080", "-m", "m", "--concurrency", "1,3"]).unwrap();
        assert_eq!(a.concurrency, [1, 3]);
        assert_eq!((a.prompt_tokens, a.max_tokens, a.requests), (512, 128, 16));
        assert!(parse(&[]).is_err(), "a mode is required");
        assert!(
            parse(&["--engine", "--url", "http://h"]).is_err(),
            "modes exclude each other"
        );
    }
}
