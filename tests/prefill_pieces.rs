//! Long prefills run in pieces (`Batch::pieces`) on the real catalog models, whose `Q4_K` and
//! `Q6_K` products depend on the batch size: the logits of the pieces and of one pass over the
//! whole prompt, and of a decode step after each, must be equal to the last bit.

use ward::engine::gguf::GgufFile;
use ward::engine::model::{Model, Transformer};

#[path = "support/pieces.rs"]
mod pieces;

fn check(name: &str) {
    let path = ward::catalog::ensure(name).expect("fetch model");
    let m = Transformer::new(GgufFile::open(&path).unwrap()).unwrap();
    let vocab = m.config().vocab as u32;
    // 522 tokens: pieces of 128, 128, 128 and 138, the last ending in the two tokens that the
    // `Q4_K` kernels take in their one-row order.
    let prompt: Vec<u32> = (0..522u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let run = |piece| pieces::logits(&m, &prompt, &[0, 200, 400], 42, piece);
    let (cut, whole) = (run(128), run(usize::MAX));
    assert_eq!(cut.len(), 5 * vocab as usize);
    assert!(
        cut == whole,
        "{name}: prefill in pieces differs from one pass"
    );
}

#[test]
fn smollm2_pieces_match_one_pass() {
    check("smollm2-135m-instruct");
}

#[test]
fn qwen_k_quant_pieces_match_one_pass() {
    check("qwen2.5-coder-0.5b-instruct");
}
