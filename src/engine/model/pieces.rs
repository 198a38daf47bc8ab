//! Cutting a long [`Batch`] into pieces that run one after another, so that a long prefill
//! holds the activations of a piece rather than of the whole batch, with every result the same
//! to the bit as one pass over the whole batch.
//!
//! A cut may only fall where nothing a kernel decides from the batch changes: it falls at a
//! multiple of 4 tokens and leaves every piece at least 8 tokens long (so the `Q4_K` products
//! still take their last `n % 4` tokens in the one-row order, and `Q6_K` batches stay on the
//! tiled kernel), and a sequence with tokens on both sides keeps at least `min_run` of them on
//! each side (so its queries keep the attention kernel they had) with all earlier positions
//! before the cut (so each piece finds the keys and values it attends to already written).
//! Every piece runs in the whole batch's summation order (`Transformer::forward_in_pieces`),
//! even one that holds a single sequence of a step of several.

use std::collections::HashMap;
use std::ops::Range;

use super::Batch;

impl Batch {
    /// Consecutive ranges of token indices, each at least `piece` tokens long (rounded up to a
    /// multiple of 4, at least 8) where a cut is allowed (see the module docs), covering the
    /// batch; one range when it cannot or need not be cut.
    pub fn pieces(&self, piece: usize, min_run: usize) -> Vec<Range<usize>> {
        let n = self.len();
        let piece = piece.next_multiple_of(4).max(8);
        let mut cuts = vec![0];
        let mut at = piece;
        while at + piece <= n {
            let from = cuts[cuts.len() - 1];
            if at - from >= piece && self.can_cut(from, at, min_run) {
                cuts.push(at);
                at += piece;
            } else {
                at += 4;
            }
        }
        cuts.push(n);
        cuts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// Whether the batch may be cut at `at`, the previous cut being at `from`.
    fn can_cut(&self, from: usize, at: usize, min_run: usize) -> bool {
        // Per sequence: tokens and highest position in `from..at`.
        let mut left: HashMap<usize, (usize, usize)> = HashMap::new();
        for t in from..at {
            let e = left.entry(self.seq[t]).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(self.pos[t]);
        }
        // Per sequence crossing the cut: tokens and lowest position in `at..`.
        let mut right: HashMap<usize, (usize, usize)> = HashMap::new();
        for t in at..self.len() {
            if left.contains_key(&self.seq[t]) {
                let e = right.entry(self.seq[t]).or_insert((0, usize::MAX));
                e.0 += 1;
                e.1 = e.1.min(self.pos[t]);
            }
        }
        right.iter().all(|(s, &(rn, rlo))| {
            let (ln, lhi) = left[s];
            ln >= min_run && rn >= min_run && lhi < rlo
        })
    }

    /// The tokens `r` of the batch, as a batch of their own.
    pub fn slice(&self, r: Range<usize>) -> Batch {
        Batch {
            tokens: self.tokens[r.clone()].to_vec(),
            pos: self.pos[r.clone()].to_vec(),
            seq: self.seq[r.clone()].to_vec(),
            logits: self.logits[r].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lens(b: &Batch, piece: usize) -> Vec<usize> {
        b.pieces(piece, 64).iter().map(|r| r.len()).collect()
    }

    #[test]
    fn one_long_sequence_is_cut_evenly_with_the_rest_in_the_last_piece() {
        let b = Batch::single(&vec![1; 600], 0);
        assert_eq!(lens(&b, 128), [128, 128, 128, 216]);
        assert_eq!(lens(&Batch::single(&[1; 255], 0), 128), [255]);
        assert_eq!(lens(&Batch::single(&[1; 256], 0), 128), [128, 128]);
        // Odd piece sizes round up to a multiple of 4.
        assert_eq!(lens(&Batch::single(&[1; 300], 0), 99), [100, 100, 100]);
    }

    #[test]
    fn a_batch_counts_the_sequences_that_bring_tokens() {
        assert_eq!(Batch::single(&[1; 5], 0).sequences(), 1);
        let mut b = Batch::default();
        for (t, s) in [(1, 3), (2, 0), (3, 3), (4, 7)] {
            b.push(t, 0, s, true);
        }
        assert_eq!(b.sequences(), 3);
        assert_eq!(Batch::default().sequences(), 0);
    }

    #[test]
    fn short_runs_are_never_split() {
        // Eight decode tokens, then a 40-token and a 300-token prefill.
        let mut b = Batch::default();
        for s in 0..8 {
            b.push(1, 50, s, true);
        }
        for p in 0..40 {
            b.push(1, p, 8, p == 39);
        }
        for p in 0..300 {
            b.push(1, p, 9, p == 299);
        }
        let pieces = b.pieces(128, 64);
        for r in &pieces {
            assert_eq!(r.start % 4, 0);
            for s in 0..10 {
                let inside = b.seq[r.clone()].iter().filter(|&&q| q == s).count();
                let all = b.seq.iter().filter(|&&q| q == s).count();
                assert!(inside == 0 || inside == all || inside >= 64, "{pieces:?}");
            }
        }
        // The 48 short tokens stay together, and the long prefill is still cut.
        assert!(pieces[0].end >= 48 + 64, "{pieces:?}");
        assert!(pieces.len() >= 2, "{pieces:?}");
    }

    #[test]
    fn a_cut_never_puts_later_positions_first() {
        // Positions of one sequence running backwards cannot be cut anywhere.
        let mut b = Batch::default();
        for p in (0..400).rev() {
            b.push(1, p, 0, p == 0);
        }
        assert_eq!(lens(&b, 128), [400]);
    }
}
