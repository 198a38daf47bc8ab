//! In-process engine benchmark, like llama.cpp's `llama-bench`: prefill (`pp`) of `p` random
//! tokens in one forward pass and decode (`tg`) of `n` tokens one forward pass each, repeated
//! `r` times after one untimed warm-up, reported as mean ± sample standard deviation of the
//! per-repetition tokens per second.
//!
//! Decode on a CPU is bound by memory bandwidth: every generated token reads every weight once.
//! The report turns decode speed into GB/s and compares it with the machine's read bandwidth,
//! measured after the runs with the same threads ([`super::bandwidth`]).
//!
//! With `depth` above 0 every test runs after that many tokens already in its sequence's cache
//! (llama-bench's `-d`), so that attention over a long context is part of what is measured.
//!
//! With `parallel` above 1 it also decodes that many sequences together, one token each per
//! forward pass (what a server's continuous batching does with as many streams), and reports
//! their aggregate tokens per second (`tg128 x8`), like llama.cpp's `llama-batched-bench`.

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::BenchError;
use super::stats::mean_stdev;
use crate::engine::gguf::GgufFile;
use crate::engine::kernels;
use crate::engine::loaded::LoadedModel;
use crate::engine::model::{Batch, KvPool, Model, SeqKv};

/// Tokens prefilled (untimed) before a decode run at depth 0, so that decoding attends to a
/// short context.
pub const DECODE_PROMPT: usize = 8;

/// What to measure.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Prompt tokens per prefill run (`-p`; 0 skips prefill).
    pub prompt_tokens: usize,
    /// Tokens per decode run (`-n`; 0 skips decode).
    pub gen_tokens: usize,
    /// Repetitions of each (`-r`).
    pub reps: usize,
    /// Compute threads; `None` keeps [`kernels::threads`].
    pub threads: Option<usize>,
    /// Sequences decoded together in the batched test (`--parallel`; 1 skips it).
    pub parallel: usize,
    /// Tokens already in each sequence's cache (prefilled untimed) when a test starts (`-d`).
    pub depth: usize,
    /// Seed of the random token ids.
    pub seed: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            prompt_tokens: 512,
            gen_tokens: 128,
            reps: 5,
            threads: None,
            parallel: 1,
            depth: 0,
            seed: 42,
        }
    }
}

/// Results of an engine run. Rates are `None` for a phase that was not run.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    /// The model as named on the command line.
    pub model: String,
    /// Compute threads.
    pub threads: usize,
    /// Prompt tokens per prefill run.
    pub pp: usize,
    /// Tokens per decode run.
    pub tg: usize,
    /// Repetitions.
    pub reps: usize,
    /// Mean prefill tokens per second.
    pub pp_tps: Option<f64>,
    /// Its sample standard deviation.
    pub pp_tps_stdev: Option<f64>,
    /// Mean decode tokens per second.
    pub tg_tps: Option<f64>,
    /// Its sample standard deviation.
    pub tg_tps_stdev: Option<f64>,
    /// Sequences of the batched decode test (1: not run).
    pub parallel: usize,
    /// Tokens in the cache before each test.
    pub depth: usize,
    /// Mean aggregate decode tokens per second of `parallel` sequences decoded together.
    pub tg_parallel_tps: Option<f64>,
    /// Its sample standard deviation.
    pub tg_parallel_tps_stdev: Option<f64>,
    /// Seconds to load the model (network, tokenizer, template).
    pub load_s: f64,
    /// Peak resident set size of this process (`VmHWM`), when the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Size of the GGUF file.
    pub file_bytes: u64,
    /// Weight bytes read per decoded token: all tensor data, less the token embedding table
    /// when the model has a separate output projection (the table is then only gathered from).
    pub weight_bytes_per_token: u64,
    /// `weight_bytes_per_token × tg_tps`, in GB/s (10⁹ bytes).
    pub decode_gbps: Option<f64>,
    /// The bound it is compared against: this machine's memory read bandwidth with `threads`
    /// threads, measured after the runs ([`super::bandwidth::read_gbps`]; `None` without a
    /// decode run).
    pub memory_read_gbps: Option<f64>,
}

/// Loads the GGUF file at `path` and measures it; `name` is only echoed in the report.
pub fn run(path: &Path, name: &str, cfg: &EngineConfig) -> Result<EngineReport, BenchError> {
    if cfg.reps == 0 {
        return Err(BenchError::Config("repetitions must be at least 1".into()));
    }
    if let Some(n) = cfg.threads {
        kernels::set_threads(n);
    }
    let file_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let weight_bytes_per_token = weight_bytes_per_token(path)?;
    let loaded = LoadedModel::open(path)?;
    let model = loaded.model.as_ref();
    let c = model.config();
    if cfg.parallel == 0 {
        return Err(BenchError::Config("--parallel must be at least 1".into()));
    }
    // The decode tests start after `context` cached tokens; the prefill test after `depth`.
    let context = cfg.depth.max(DECODE_PROMPT);
    let needed = (cfg.depth + cfg.prompt_tokens).max(context + cfg.gen_tokens);
    if needed > c.context_length {
        return Err(BenchError::Config(format!(
            "{needed} positions do not fit the model's context of {}",
            c.context_length
        )));
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let vocab = c.vocab as u32;
    let mut random = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.gen_range(0..vocab)).collect() };
    let prompt = random(cfg.prompt_tokens);
    let decode_prompt = random(context);
    let depth_prompt = &decode_prompt[..cfg.depth];
    let decode_tokens = random(cfg.gen_tokens);
    // Each sequence of the batched test takes whole cache blocks.
    let per_seq = (context + cfg.gen_tokens).next_multiple_of(crate::engine::model::kv::BLOCK);
    let mut pool = model.new_pool(needed.max(cfg.parallel * per_seq));
    let batched = cfg.parallel > 1 && cfg.gen_tokens > 0;

    // One untimed warm-up of each phase: page in the weights, spin up the thread pool.
    if cfg.prompt_tokens > 0 {
        prefill(model, &mut pool, depth_prompt, &prompt)?;
    }
    if cfg.gen_tokens > 0 {
        decode(model, &mut pool, &decode_prompt, &decode_tokens[..1])?;
    }
    if batched {
        decode_batched(
            model,
            &mut pool,
            &decode_prompt,
            &decode_tokens[..1],
            cfg.parallel,
        )?;
    }
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut tgp = Vec::new();
    for _ in 0..cfg.reps {
        if cfg.prompt_tokens > 0 {
            pp.push(cfg.prompt_tokens as f64 / prefill(model, &mut pool, depth_prompt, &prompt)?);
        }
        if cfg.gen_tokens > 0 {
            let secs = decode(model, &mut pool, &decode_prompt, &decode_tokens)?;
            tg.push(cfg.gen_tokens as f64 / secs);
        }
        if batched {
            let secs = decode_batched(
                model,
                &mut pool,
                &decode_prompt,
                &decode_tokens,
                cfg.parallel,
            )?;
            tgp.push((cfg.gen_tokens * cfg.parallel) as f64 / secs);
        }
    }
    let rate = |v: &[f64]| (!v.is_empty()).then(|| mean_stdev(v));
    let (pp_rate, tg_rate, tgp_rate) = (rate(&pp), rate(&tg), rate(&tgp));
    // Peak RSS first: the bandwidth test's buffer is not the model's memory.
    let peak_rss_bytes = peak_rss_bytes();
    drop(pool);
    let memory_read_gbps = tg_rate.and_then(|_| super::bandwidth::read_gbps(kernels::threads()));
    Ok(EngineReport {
        model: name.to_string(),
        threads: kernels::threads(),
        pp: cfg.prompt_tokens,
        tg: cfg.gen_tokens,
        reps: cfg.reps,
        pp_tps: pp_rate.map(|r| r.0),
        pp_tps_stdev: pp_rate.map(|r| r.1),
        tg_tps: tg_rate.map(|r| r.0),
        tg_tps_stdev: tg_rate.map(|r| r.1),
        parallel: cfg.parallel,
        depth: cfg.depth,
        tg_parallel_tps: tgp_rate.map(|r| r.0),
        tg_parallel_tps_stdev: tgp_rate.map(|r| r.1),
        load_s: loaded.load_seconds,
        peak_rss_bytes,
        file_bytes,
        weight_bytes_per_token,
        decode_gbps: tg_rate.map(|r| weight_bytes_per_token as f64 * r.0 / 1e9),
        memory_read_gbps,
    })
}

/// Prefills `context` into a fresh sequence (untimed), then seconds for one forward pass over
/// `tokens` after it.
fn prefill(
    model: &dyn Model,
    pool: &mut KvPool,
    context: &[u32],
    tokens: &[u32],
) -> Result<f64, BenchError> {
    let mut seqs = [SeqKv::default()];
    let result = (|| {
        if !context.is_empty() {
            model.forward(&Batch::single(context, 0), pool, &mut seqs)?;
        }
        let batch = Batch::single(tokens, context.len());
        let start = Instant::now();
        model.forward(&batch, pool, &mut seqs)?;
        Ok(start.elapsed().as_secs_f64())
    })();
    pool.release(&mut seqs[0]);
    result
}

/// Prefills `prompt` (untimed), then seconds for one forward pass per token of `tokens`.
fn decode(
    model: &dyn Model,
    pool: &mut KvPool,
    prompt: &[u32],
    tokens: &[u32],
) -> Result<f64, BenchError> {
    let mut seqs = [SeqKv::default()];
    let result = (|| {
        model.forward(&Batch::single(prompt, 0), pool, &mut seqs)?;
        let start = Instant::now();
        for (i, &t) in tokens.iter().enumerate() {
            model.forward(&Batch::single(&[t], prompt.len() + i), pool, &mut seqs)?;
        }
        Ok(start.elapsed().as_secs_f64())
    })();
    pool.release(&mut seqs[0]);
    result
}

/// Prefills `prompt` into `n` sequences (untimed), then seconds for one forward pass per token
/// of `tokens`, each pass carrying one token of every sequence.
fn decode_batched(
    model: &dyn Model,
    pool: &mut KvPool,
    prompt: &[u32],
    tokens: &[u32],
    n: usize,
) -> Result<f64, BenchError> {
    let mut seqs = vec![SeqKv::default(); n];
    let result = (|| {
        let mut batch = Batch::default();
        for s in 0..n {
            for (i, &t) in prompt.iter().enumerate() {
                batch.push(t, i, s, i + 1 == prompt.len());
            }
        }
        model.forward(&batch, pool, &mut seqs)?;
        let start = Instant::now();
        for (i, &t) in tokens.iter().enumerate() {
            let mut batch = Batch::default();
            for s in 0..n {
                // Different tokens per sequence, as independent streams would have.
                batch.push(
                    (t + s as u32) % model.config().vocab as u32,
                    prompt.len() + i,
                    s,
                    true,
                );
            }
            model.forward(&batch, pool, &mut seqs)?;
        }
        Ok(start.elapsed().as_secs_f64())
    })();
    for s in &mut seqs {
        pool.release(s);
    }
    result
}

/// Bytes of weights a decode step reads; see [`EngineReport::weight_bytes_per_token`].
fn weight_bytes_per_token(path: &Path) -> Result<u64, BenchError> {
    let file = GgufFile::open(path)?;
    let infos = file.tensor_infos();
    let total: usize = infos.values().map(|t| t.size).sum();
    let gathered = match (infos.get("token_embd.weight"), infos.get("output.weight")) {
        (Some(embd), Some(_)) => embd.size,
        _ => 0,
    };
    Ok((total - gathered) as u64)
}

/// The process's peak resident set size, from `VmHWM` in `/proc/self/status` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tward\nVmPeak:\t  900 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 5 kB"), None);
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }

    /// `-p 16 -n 4 -r 1` on the default model: every figure must be present and plausible.
    #[test]
    fn engine_bench_runs_on_the_default_model() {
        let path = crate::catalog::ensure("smollm2-135m-instruct").expect("fetch the model");
        let cfg = EngineConfig {
            prompt_tokens: 16,
            gen_tokens: 4,
            reps: 1,
            parallel: 3,
            ..EngineConfig::default()
        };
        let r = run(&path, "smollm2-135m-instruct", &cfg).expect("bench");
        assert_eq!(r.parallel, 3);
        assert!(
            r.tg_parallel_tps.is_some_and(|t| t.is_finite() && t > 0.0),
            "{r:?}"
        );
        assert_eq!((r.pp, r.tg, r.reps), (16, 4, 1));
        for rate in [r.pp_tps, r.tg_tps] {
            assert!(rate.is_some_and(|t| t.is_finite() && t > 0.0), "{r:?}");
        }
        assert_eq!((r.pp_tps_stdev, r.tg_tps_stdev), (Some(0.0), Some(0.0)));
        assert!(r.load_s > 0.0 && r.threads >= 1);
        assert!(r.peak_rss_bytes.is_some_and(|b| b > 0));
        // Tied embeddings: every tensor is read per token, so the figure is the file less its
        // header (a few MB of tokenizer metadata).
        assert!(r.weight_bytes_per_token < r.file_bytes, "{r:?}");
        assert!(r.weight_bytes_per_token > r.file_bytes * 9 / 10, "{r:?}");
        assert!(r.decode_gbps.is_some_and(|g| g > 0.0));
        assert!(r.memory_read_gbps.is_some_and(|g| g > 0.0));
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "pp_tps",
            "tg_tps",
            "load_s",
            "peak_rss_bytes",
            "model",
            "threads",
        ] {
            assert!(!json[key].is_null(), "{key} missing from {json}");
        }
        // At a depth every test runs after that many cached tokens; past the context it fails.
        let deep = EngineConfig {
            depth: 40,
            ..cfg.clone()
        };
        let r = run(&path, "smollm2-135m-instruct", &deep).expect("bench at depth");
        assert_eq!(r.depth, 40);
        for rate in [r.pp_tps, r.tg_tps, r.tg_parallel_tps] {
            assert!(rate.is_some_and(|t| t.is_finite() && t > 0.0), "{r:?}");
        }
        let too_deep = EngineConfig {
            depth: 1 << 20,
            ..cfg.clone()
        };
        assert!(matches!(
            run(&path, "x", &too_deep),
            Err(BenchError::Config(_))
        ));
        let none = EngineConfig { reps: 0, ..cfg };
        assert!(matches!(run(&path, "x", &none), Err(BenchError::Config(_))));
    }
}
