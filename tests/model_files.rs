//! The model layer on tiny GGUF files built in the test: clear errors for bad files, and the
//! batching invariants (several sequences in one pass, prefix forks) that the scheduler relies on.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ward::engine::error::EngineError;
use ward::engine::model::{self, Batch, SeqKv};

#[path = "support/pieces.rs"]
mod pieces;

const DIM: usize = 64;
const FF: usize = 128;
const VOCAB: usize = 96;
const LAYERS: usize = 2;

fn tensor(rows: usize, cols: usize, seed: u64, dtype: GgmlDType) -> QTensor {
    let n = rows * cols;
    let data: Vec<f32> = (0..n)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed * 1442695040888963407);
            ((x >> 33) % 2000) as f32 / 1000.0 - 1.0
        })
        .map(|v| v * 0.2)
        .collect();
    let shape: Vec<usize> = if rows == 1 {
        vec![cols]
    } else {
        vec![rows, cols]
    };
    let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

/// Writes a tiny llama-family model; `drop_key` omits one metadata key, `arch` overrides the architecture.
fn tiny_model(path: &std::path::Path, arch: &str, drop_key: Option<&str>) {
    tiny_model_ctx(path, arch, drop_key, 256);
}

/// [`tiny_model`] with a context of `ctx` positions.
fn tiny_model_ctx(path: &std::path::Path, arch: &str, drop_key: Option<&str>, ctx: u32) {
    let a = arch.to_string();
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.clone())),
        (format!("{a}.block_count"), Value::U32(LAYERS as u32)),
        (format!("{a}.context_length"), Value::U32(ctx)),
        (format!("{a}.embedding_length"), Value::U32(DIM as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(FF as u32)),
        (format!("{a}.attention.head_count"), Value::U32(4)),
        (format!("{a}.attention.head_count_kv"), Value::U32(2)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{a}.vocab_size"), Value::U32(VOCAB as u32)),
    ];
    let md: Vec<(String, Value)> = md
        .into_iter()
        .filter(|(k, _)| Some(k.as_str()) != drop_key)
        .collect();
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            tensor(VOCAB, DIM, 1, GgmlDType::Q8_0),
        ),
        (
            "output_norm.weight".into(),
            tensor(1, DIM, 2, GgmlDType::F32),
        ),
    ];
    let kv = DIM / 2;
    for il in 0..LAYERS {
        let s = 10 * il as u64 + 3;
        for (name, rows, cols, dt) in [
            ("attn_norm", 1, DIM, GgmlDType::F32),
            ("ffn_norm", 1, DIM, GgmlDType::F32),
            ("attn_q", DIM, DIM, GgmlDType::Q4_0),
            ("attn_k", kv, DIM, GgmlDType::Q4_1),
            ("attn_v", kv, DIM, GgmlDType::Q5_0),
            ("attn_output", DIM, DIM, GgmlDType::Q8_0),
            ("ffn_gate", FF, DIM, GgmlDType::Q5_1),
            ("ffn_up", FF, DIM, GgmlDType::Q4_0),
            ("ffn_down", DIM, FF, GgmlDType::Q8_0),
        ] {
            tensors.push((
                format!("blk.{il}.{name}.weight"),
                tensor(rows, cols, s + name.len() as u64, dt),
            ));
        }
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn err_of(path: &std::path::Path) -> EngineError {
    match model::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_files_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    tiny_model(&p, "mamba", None);
    assert!(matches!(err_of(&p), EngineError::UnsupportedArchitecture(a) if a == "mamba"));

    let p = dir.path().join("nokey.gguf");
    tiny_model(&p, "llama", Some("llama.block_count"));
    let e = err_of(&p);
    assert!(e.to_string().contains("llama.block_count"), "{e}");

    let good = dir.path().join("good.gguf");
    tiny_model(&good, "llama", None);
    let bytes = std::fs::read(&good).unwrap();
    for cut in [10, bytes.len() / 3, bytes.len() - 7] {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = err_of(&p);
        assert!(
            matches!(e, EngineError::BadGguf { .. }),
            "cut at {cut}: {e}"
        );
    }
    let p = dir.path().join("notgguf.gguf");
    std::fs::write(&p, b"definitely not a model").unwrap();
    assert!(matches!(err_of(&p), EngineError::BadGguf { .. }));
    assert!(matches!(
        err_of(&dir.path().join("absent.gguf")),
        EngineError::Io { .. }
    ));
}

fn logits_alone(m: &dyn model::Model, tokens: &[u32]) -> Vec<f32> {
    let mut pool = m.new_pool(512);
    let mut seqs = [SeqKv::default()];
    m.forward(&Batch::single(tokens, 0), &mut pool, &mut seqs)
        .unwrap()
}

#[test]
fn batched_sequences_match_separate_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model(&p, "llama", None);
    let m = model::load(&p).unwrap();
    let a: Vec<u32> = vec![1, 5, 9, 33, 2, 7];
    let b: Vec<u32> = vec![4, 4, 80, 12];
    let (la, lb) = (logits_alone(m.as_ref(), &a), logits_alone(m.as_ref(), &b));
    assert!(la.iter().all(|v| v.is_finite()));
    // Prefill a and b together, interleaved, in one pass.
    let mut pool = m.new_pool(512);
    let mut seqs = [SeqKv::default(), SeqKv::default()];
    let mut batch = Batch::default();
    for i in 0..a.len().max(b.len()) {
        if i < b.len() {
            batch.push(b[i], i, 1, i + 1 == b.len());
        }
        if i < a.len() {
            batch.push(a[i], i, 0, i + 1 == a.len());
        }
    }
    let out = m.forward(&batch, &mut pool, &mut seqs).unwrap();
    let (ob, oa) = out.split_at(VOCAB);
    // By default a pass of one sequence follows llama.cpp's orders (the one-row attention
    // kernel with its `f16` accumulator) and a pass of several ward's (the tiled kernel, `f32`;
    // `kernels::numerics_for`): the two agree to `f16` precision (logits here are at most
    // ~0.5; measured 2e-3 apart).
    let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 5e-3);
    assert!(
        close(oa, &la) && close(ob, &lb),
        "batched logits differ from separate runs"
    );
    // One decode step for both, then compare with full recomputation.
    let mut step = Batch::default();
    step.push(11, a.len(), 0, true);
    step.push(13, b.len(), 1, true);
    let out = m.forward(&step, &mut pool, &mut seqs).unwrap();
    let full_a = logits_alone(m.as_ref(), &[a.clone(), vec![11]].concat());
    let full_b = logits_alone(m.as_ref(), &[b.clone(), vec![13]].concat());
    assert!(close(&out[..VOCAB], &full_a) && close(&out[VOCAB..], &full_b));
}

#[test]
fn long_decode_split_across_threads_matches_unsplit() {
    // A lone decoding sequence with a long context runs its attention chunks as separate
    // work items and merges them afterwards; recomputing the whole sequence in one prefill
    // runs each token's chunks inside one item. Chunk cuts and merge order depend only on
    // positions, so the two must agree to the last bit.
    ward::engine::kernels::set_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model(&p, "llama", None);
    let m = model::load(&p).unwrap();
    let prompt: Vec<u32> = (0..200).map(|i| (i * 37 % VOCAB) as u32).collect();
    let mut pool = m.new_pool(1024);
    let mut seqs = [SeqKv::default()];
    m.forward(&Batch::single(&prompt, 0), &mut pool, &mut seqs)
        .unwrap();
    let split = m
        .forward(&Batch::single(&[5], prompt.len()), &mut pool, &mut seqs)
        .unwrap();
    let full = logits_alone(m.as_ref(), &[prompt, vec![5]].concat());
    assert_eq!(split, full, "split decode differs from recomputation");
}

#[test]
fn forked_prefix_gives_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model(&p, "llama", None);
    let m = model::load(&p).unwrap();
    let prompt: Vec<u32> = (0..70).map(|i| (i * 7 % VOCAB) as u32).collect();
    let mut pool = m.new_pool(1024);
    let mut base = [SeqKv::default()];
    m.forward(&Batch::single(&prompt, 0), &mut pool, &mut base)
        .unwrap();
    // Share the first 50 positions, then run a different continuation.
    let mut forked = [pool.fork(&base[0], 50)];
    let tail: Vec<u32> = vec![3, 1, 4, 1, 5];
    let out = m
        .forward(&Batch::single(&tail, 50), &mut pool, &mut forked)
        .unwrap();
    let full = logits_alone(m.as_ref(), &[&prompt[..50], &tail[..]].concat());
    // A run of 64 or more tokens of one sequence takes the tiled attention kernel (`f32`
    // accumulator), a shorter one the one-row kernel (`f16` accumulator), as in llama.cpp; so
    // a prefix cached from a long prefill and the same prefix recomputed in a short one agree
    // to `f16` precision, not to the bit (logits here are at most ~0.5).
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 5e-3);
    assert!(close(&out, &full));
    // The original sequence is untouched by the fork's writes.
    let next = m
        .forward(&Batch::single(&[9], 70), &mut pool, &mut base)
        .unwrap();
    let again = logits_alone(m.as_ref(), &[prompt.clone(), vec![9]].concat());
    assert!(close(&next, &again));
}

#[test]
fn out_of_range_batches_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model(&p, "llama", None);
    let m = model::load(&p).unwrap();
    let mut pool = m.new_pool(512);
    let mut seqs = [SeqKv::default()];
    assert!(
        m.forward(&Batch::single(&[VOCAB as u32], 0), &mut pool, &mut seqs)
            .is_err()
    );
    assert!(
        m.forward(&Batch::single(&[1], 300), &mut pool, &mut seqs)
            .is_err()
    );
}

#[test]
fn long_prefill_in_pieces_matches_one_pass() {
    // A long prefill runs in pieces of 128 tokens to bound its activations; the cuts keep
    // every kernel's choices, so logits and the cache (seen through a decode step after it)
    // must equal one pass over the whole prompt to the last bit.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model_ctx(&p, "llama", None, 2048);
    let file = ward::engine::gguf::GgufFile::open(&p).unwrap();
    let m = model::Transformer::new(file).unwrap();
    let prompt: Vec<u32> = (0..601).map(|i| (i * 37 % VOCAB) as u32).collect();
    // Logits at a few places inside the pieces too.
    let run = |piece| pieces::logits(&m, &prompt, &[3, 127, 128, 300], 7, piece);
    let (cut, whole) = (run(128), run(usize::MAX));
    assert_eq!(cut.len(), 6 * VOCAB);
    assert_eq!(cut, whole, "prefill in pieces differs from one pass");
}

#[test]
fn a_step_of_two_long_prompts_in_pieces_matches_one_pass() {
    // Two prompts in one batch (a step of several sequences, which takes ward's order by
    // default) cut into pieces that each hold only one of them: every piece keeps the whole
    // batch's order, so the logits equal one pass over it to the last bit.
    use ward::engine::model::Model;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    tiny_model_ctx(&p, "llama", None, 2048);
    let file = ward::engine::gguf::GgufFile::open(&p).unwrap();
    let m = model::Transformer::new(file).unwrap();
    let run = |piece| {
        let mut pool = m.new_pool(1024);
        let mut seqs = [SeqKv::default(), SeqKv::default()];
        let mut b = Batch::default();
        for i in 0..300 {
            b.push((i * 37 % VOCAB) as u32, i, 0, i == 299);
        }
        for i in 0..212 {
            b.push((i * 11 % VOCAB) as u32, i, 1, i == 211);
        }
        assert!(b.pieces(128, 64).len() > 2, "the batch is cut into pieces");
        m.forward_in_pieces(&b, &mut pool, &mut seqs, piece)
            .unwrap()
    };
    assert_eq!(run(128), run(usize::MAX), "pieces differ from one pass");
}
