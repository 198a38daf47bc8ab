//! The candle backend (`WARD_DEVICE=candle-cpu`, or `cuda` with `--features cuda` and
//! `WARD_TEST_CUDA=1`) against ward's own CPU engine: the same top token with close
//! log-probabilities on SmolLM2 over a prefill and three decode steps, for one sequence and for
//! two in one batch; and, on tiny GGUF files written here, every family switch (QKV bias, Q/K
//! norms, partial and NeoX RoPE, post norms, sliding windows, soft-capping) and forked prefixes.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ward::engine::model::{self, Batch, Model, SeqKv};
use ward::engine::tokenizer::Tokenizer;

/// The candle devices to test: candle's CPU backend always, CUDA when asked for.
fn devices() -> Vec<&'static str> {
    let mut d = vec!["candle-cpu"];
    if cfg!(feature = "cuda") && std::env::var("WARD_TEST_CUDA").is_ok_and(|v| v == "1") {
        d.push("cuda");
    }
    d
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

fn log_prob(x: &[f32], i: usize) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    x[i] - max - x.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

/// Asserts that `got` picks ward's top token with a log-probability within `tol`; returns it.
fn agree(want: &[f32], got: &[f32], tol: f32, what: &str) -> u32 {
    assert_eq!(want.len(), got.len(), "{what}: logits length");
    let top = argmax(want);
    let picked = argmax(got);
    if picked != top {
        // Only a near-tie may flip: both backends quantize activations differently.
        let gap = log_prob(want, top) - log_prob(want, picked);
        assert!(
            gap < tol,
            "{what}: top token differs ({top} vs {picked}, gap {gap} nat)"
        );
    }
    let d = (log_prob(want, top) - log_prob(got, top)).abs();
    assert!(d < tol, "{what}: |Δ log p(top)| = {d}");
    top as u32
}

#[test]
fn smollm2_matches_ward_engine() {
    let path = ward::catalog::ensure("smollm2-135m-instruct").expect("fetch model");
    let reference = model::load(&path).unwrap();
    let tok = Tokenizer::from_gguf(reference.metadata()).unwrap();
    let prompts = [
        "The capital of France is",
        "fn main() {\n    println!(",
        "MITRE ATT&CK technique T1059 is",
    ];
    for dev in devices() {
        let m = model::load_on(&path, dev).unwrap();
        let vocab = m.config().vocab;
        for prompt in prompts {
            let ids = tok.encode(prompt, true, false);
            let (mut rp, mut cp) = (reference.new_pool(256), m.new_pool(256));
            let (mut rs, mut cs) = ([SeqKv::default()], [SeqKv::default()]);
            let mut batch = Batch::single(&ids, 0);
            for step in 0..4 {
                let want = reference.forward(&batch, &mut rp, &mut rs).unwrap();
                let got = m.forward(&batch, &mut cp, &mut cs).unwrap();
                assert_eq!(got.len(), vocab);
                let top = agree(&want, &got, 0.2, &format!("{dev} {prompt:?} step {step}"));
                batch = Batch::single(&[top], ids.len() + step);
            }
        }

        // Two sequences in one batch, interleaved, then one decode step for both.
        let a = tok.encode(prompts[0], true, false);
        let b = tok.encode(prompts[2], true, false);
        let mut batch = Batch::default();
        for i in 0..a.len().max(b.len()) {
            if i < b.len() {
                batch.push(b[i], i, 1, i + 1 == b.len());
            }
            if i < a.len() {
                batch.push(a[i], i, 0, i + 1 == a.len());
            }
        }
        let (mut rp, mut cp) = (reference.new_pool(512), m.new_pool(512));
        let (mut rs, mut cs) = (vec![SeqKv::default(); 2], vec![SeqKv::default(); 2]);
        let want = reference.forward(&batch, &mut rp, &mut rs).unwrap();
        let got = m.forward(&batch, &mut cp, &mut cs).unwrap();
        let tb = agree(
            &want[..vocab],
            &got[..vocab],
            0.2,
            &format!("{dev} batched b"),
        );
        let ta = agree(
            &want[vocab..],
            &got[vocab..],
            0.2,
            &format!("{dev} batched a"),
        );
        let mut step = Batch::default();
        step.push(ta, a.len(), 0, true);
        step.push(tb, b.len(), 1, true);
        let want = reference.forward(&step, &mut rp, &mut rs).unwrap();
        let got = m.forward(&step, &mut cp, &mut cs).unwrap();
        agree(
            &want[..vocab],
            &got[..vocab],
            0.2,
            &format!("{dev} decode a"),
        );
        agree(
            &want[vocab..],
            &got[vocab..],
            0.2,
            &format!("{dev} decode b"),
        );
    }
}

const DIM: usize = 64;
const HEAD: usize = 16;
const FF: usize = 128;
const VOCAB: usize = 96;
const LAYERS: usize = 2;

fn tensor(rows: usize, cols: usize, seed: u64, dtype: GgmlDType) -> QTensor {
    let data: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed.wrapping_mul(1442695040888963407));
            (((x >> 33) % 2000) as f32 / 1000.0 - 1.0) * 0.3
        })
        .collect();
    let shape = if rows == 1 {
        vec![cols]
    } else {
        vec![rows, cols]
    };
    QTensor::quantize(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap(), dtype).unwrap()
}

/// A norm weight near 1, as trained models have.
fn norm(len: usize, seed: u64) -> QTensor {
    let t = tensor(1, len, seed, GgmlDType::F32)
        .dequantize(&Device::Cpu)
        .unwrap();
    QTensor::quantize(&(t + 1.0).unwrap(), GgmlDType::F32).unwrap()
}

/// Writes a tiny model of family `arch` with the tensors and keys that family calls for.
fn tiny_model(path: &std::path::Path, arch: &str) {
    let a = arch.to_string();
    let u = |k: &str, v: usize| (format!("{a}.{k}"), Value::U32(v as u32));
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.clone())),
        u("block_count", LAYERS),
        u("context_length", 256),
        u("embedding_length", DIM),
        u("feed_forward_length", FF),
        u("attention.head_count", DIM / HEAD),
        u("attention.head_count_kv", 2),
        u("vocab_size", VOCAB),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(50_000.0)),
    ];
    match arch {
        "qwen2" => md.push(u("rope.dimension_count", HEAD / 2)),
        "gemma3" => {
            md.push(u("attention.sliding_window", 5));
            md.push((format!("{a}.final_logit_softcapping"), Value::F32(3.0)));
        }
        _ => {}
    }
    let kv = 2 * HEAD;
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            tensor(VOCAB, DIM, 1, GgmlDType::Q8_0),
        ),
        ("output_norm.weight".into(), norm(DIM, 2)),
    ];
    for il in 0..LAYERS {
        let s = 10 * il as u64 + 3;
        let mut push = |name: &str, t: QTensor| {
            tensors.push((format!("blk.{il}.{name}"), t));
        };
        for (name, rows, cols, dt) in [
            ("attn_q", DIM, DIM, GgmlDType::Q4_0),
            ("attn_k", kv, DIM, GgmlDType::Q4_1),
            ("attn_v", kv, DIM, GgmlDType::Q5_0),
            ("attn_output", DIM, DIM, GgmlDType::Q8_0),
            ("ffn_gate", FF, DIM, GgmlDType::Q5_1),
            ("ffn_up", FF, DIM, GgmlDType::Q4_0),
            ("ffn_down", DIM, FF, GgmlDType::Q8_0),
        ] {
            push(
                &format!("{name}.weight"),
                tensor(rows, cols, s + name.len() as u64, dt),
            );
        }
        push("attn_norm.weight", norm(DIM, s + 100));
        push("ffn_norm.weight", norm(DIM, s + 101));
        if arch == "qwen2" {
            for (name, len) in [("attn_q", DIM), ("attn_k", kv), ("attn_v", kv)] {
                push(
                    &format!("{name}.bias"),
                    tensor(1, len, s + 200, GgmlDType::F32),
                );
            }
        }
        if matches!(arch, "qwen3" | "gemma3") {
            push("attn_q_norm.weight", norm(HEAD, s + 300));
            push("attn_k_norm.weight", norm(HEAD, s + 301));
        }
        if arch == "gemma3" {
            push("post_attention_norm.weight", norm(DIM, s + 400));
            push("post_ffw_norm.weight", norm(DIM, s + 401));
        }
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// Largest absolute difference, relative to the largest reference logit.
fn rel_diff(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    want.iter()
        .zip(got)
        .fold(0.0f32, |m, (w, g)| m.max((w - g).abs()))
        / scale
}

const TINY_TOL: f32 = 0.05;

fn run(m: &dyn Model, pool: &mut model::KvPool, seqs: &mut [SeqKv], b: &Batch) -> Vec<f32> {
    m.forward(b, pool, seqs).unwrap()
}

fn alone(m: &dyn Model, tokens: &[u32]) -> Vec<f32> {
    let mut pool = m.new_pool(512);
    run(
        m,
        &mut pool,
        &mut [SeqKv::default()],
        &Batch::single(tokens, 0),
    )
}

#[test]
fn tiny_families_match_ward_engine() {
    let dir = tempfile::tempdir().unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % VOCAB) as u32).collect();
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let p = dir.path().join(format!("{arch}.gguf"));
        tiny_model(&p, arch);
        let reference = model::load(&p).unwrap();
        for dev in devices() {
            let m = model::load_on(&p, dev).unwrap();
            // Prefill, then decode steps that cross a KV block boundary (32 positions).
            let (mut rp, mut cp) = (reference.new_pool(512), m.new_pool(512));
            let (mut rs, mut cs) = ([SeqKv::default()], [SeqKv::default()]);
            let mut batch = Batch::single(&prompt[..30], 0);
            for step in 0..5 {
                let want = run(reference.as_ref(), &mut rp, &mut rs, &batch);
                let got = run(m.as_ref(), &mut cp, &mut cs, &batch);
                let d = rel_diff(&want, &got);
                assert!(d < TINY_TOL, "{arch} on {dev}, step {step}: relative Δ {d}");
                batch = Batch::single(&[argmax(&want) as u32], 30 + step);
            }
            // Every row's logits, not only the last.
            let mut all = Batch::single(&prompt, 0);
            all.logits.iter_mut().for_each(|l| *l = true);
            let mut pool = reference.new_pool(512);
            let want = run(reference.as_ref(), &mut pool, &mut [SeqKv::default()], &all);
            let mut pool = m.new_pool(512);
            let got = run(m.as_ref(), &mut pool, &mut [SeqKv::default()], &all);
            let d = rel_diff(&want, &got);
            assert!(d < TINY_TOL, "{arch} on {dev}, all rows: relative Δ {d}");
        }
    }
}

#[test]
fn tiny_batches_and_forks_match_separate_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model(&p, "qwen3");
    for dev in devices() {
        let m = model::load_on(&p, dev).unwrap();
        let m = m.as_ref();
        // On CUDA, candle quantizes activations for small batches only, so batch size matters.
        let tol = if dev == "candle-cpu" { 1e-3 } else { TINY_TOL };
        let close = |x: &[f32], y: &[f32], what: &str| {
            let d = rel_diff(x, y);
            assert!(d < tol, "{dev} {what}: relative Δ {d}");
        };
        // Two sequences interleaved in one pass, then one decode step for both.
        let (a, b): (Vec<u32>, Vec<u32>) = ((1..40).collect(), vec![4, 4, 80, 12]);
        let mut pool = m.new_pool(512);
        let mut seqs = [SeqKv::default(), SeqKv::default()];
        let mut batch = Batch::default();
        for i in 0..a.len() {
            if i < b.len() {
                batch.push(b[i], i, 1, i + 1 == b.len());
            }
            batch.push(a[i], i, 0, i + 1 == a.len());
        }
        let out = run(m, &mut pool, &mut seqs, &batch);
        close(&out[..VOCAB], &alone(m, &b), "batched b");
        close(&out[VOCAB..], &alone(m, &a), "batched a");
        let mut step = Batch::default();
        step.push(13, b.len(), 1, true);
        step.push(11, a.len(), 0, true);
        let out = run(m, &mut pool, &mut seqs, &step);
        close(
            &out[..VOCAB],
            &alone(m, &[&b[..], &[13]].concat()),
            "decode b",
        );
        close(
            &out[VOCAB..],
            &alone(m, &[&a[..], &[11]].concat()),
            "decode a",
        );

        // A fork shares the first 50 positions; its writes copy the shared block on write.
        let prompt: Vec<u32> = (0..70).map(|i| (i * 7 % VOCAB) as u32).collect();
        let mut pool = m.new_pool(1024);
        let mut base = [SeqKv::default()];
        run(m, &mut pool, &mut base, &Batch::single(&prompt, 0));
        let mut forked = [pool.fork(&base[0], 50)];
        let tail = [3, 1, 4, 1, 5];
        let out = run(m, &mut pool, &mut forked, &Batch::single(&tail, 50));
        close(&out, &alone(m, &[&prompt[..50], &tail].concat()), "fork");
        let next = run(m, &mut pool, &mut base, &Batch::single(&[9], 70));
        close(
            &next,
            &alone(m, &[&prompt[..], &[9]].concat()),
            "original after fork",
        );
    }
}

#[test]
fn unknown_or_unavailable_devices_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model(&p, "llama");
    let err = |dev: &str| match model::load_on(&p, dev) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    let e = err("tpu").expect("an unknown device is refused");
    assert!(e.contains("`tpu`"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = err("cuda:1").expect("CUDA needs --features cuda");
        assert!(e.contains("cuda:1"), "{e}");
    }
}
