//! Shared by the tests of long prefills in pieces: the logits of a prompt (at its last token
//! and at `extra` positions inside it) and of one decode step after it, run with a given
//! piece size.

use ward::engine::model::{Batch, Model, SeqKv, Transformer};

/// The logits of `prompt` (last token and `extra`), then of `next` at the following position,
/// with prefills cut into pieces of `piece` tokens (`usize::MAX`: one pass).
pub fn logits(
    m: &Transformer,
    prompt: &[u32],
    extra: &[usize],
    next: u32,
    piece: usize,
) -> Vec<f32> {
    let mut pool = m.new_pool(prompt.len() + 64);
    let mut seqs = [SeqKv::default()];
    let mut batch = Batch::single(prompt, 0);
    for &t in extra {
        batch.logits[t] = true;
    }
    let mut out = m
        .forward_in_pieces(&batch, &mut pool, &mut seqs, piece)
        .unwrap();
    let step = Batch::single(&[next], prompt.len());
    out.extend(
        m.forward_in_pieces(&step, &mut pool, &mut seqs, piece)
            .unwrap(),
    );
    out
}
