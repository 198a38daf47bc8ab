//! Writing a token bitmask (32 tokens per word, bit `i % 32` of word `i / 32`, as toktrie's
//! `SimpleVob` stores it) into a logit row: disallowed tokens become `-inf`. Whole words are
//! handled at once, so a mostly-open or mostly-closed mask costs little more than a pass over
//! the words.

/// Sets every logit whose bit is clear, or whose index is `vocab` or more, to `-inf`.
pub(super) fn apply(words: &[u32], vocab: usize, logits: &mut [f32]) {
    let (inside, outside) = logits.split_at_mut(vocab.min(logits.len()));
    for (i, chunk) in inside.chunks_mut(32).enumerate() {
        match words.get(i).copied().unwrap_or(0) {
            u32::MAX => {}
            0 => chunk.fill(f32::NEG_INFINITY),
            w => {
                // Branch-free, so that the compiler can vectorize it.
                for (bit, l) in chunk.iter_mut().enumerate() {
                    *l = if (w >> bit) & 1 == 1 {
                        *l
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
        }
    }
    outside.fill(f32::NEG_INFINITY);
}

/// Leaves only `allowed` (out-of-range ids are skipped).
pub(super) fn allow_only(allowed: &[u32], logits: &mut [f32]) {
    let kept: Vec<(usize, f32)> = allowed
        .iter()
        .filter_map(|&t| logits.get(t as usize).map(|&l| (t as usize, l)))
        .collect();
    logits.fill(f32::NEG_INFINITY);
    for (i, l) in kept {
        logits[i] = l;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_exactly_the_unset_bits() {
        let vocab = 70;
        let allowed = [0usize, 5, 31, 32, 63, 64, 69];
        let mut words = vec![0u32; 3];
        for &t in &allowed {
            words[t / 32] |= 1 << (t % 32);
        }
        // Padding rows past the vocabulary are never allowed, even with their bits set.
        words[2] |= 1 << 7;
        let mut logits: Vec<f32> = (0..80).map(|i| i as f32).collect();
        apply(&words, vocab, &mut logits);
        for (i, &l) in logits.iter().enumerate() {
            if allowed.contains(&i) {
                assert_eq!(l, i as f32, "token {i}");
            } else {
                assert_eq!(l, f32::NEG_INFINITY, "token {i}");
            }
        }
    }

    #[test]
    fn full_and_empty_words() {
        let mut logits = vec![1.0f32; 64];
        apply(&[u32::MAX, 0], 64, &mut logits);
        assert!(logits[..32].iter().all(|&l| l == 1.0));
        assert!(logits[32..].iter().all(|&l| l == f32::NEG_INFINITY));
        // A last word shorter than 32 tokens.
        let mut logits = vec![1.0f32; 40];
        apply(&[u32::MAX, u32::MAX], 40, &mut logits);
        assert!(logits.iter().all(|&l| l == 1.0));
    }

    #[test]
    fn allow_only_keeps_values() {
        let mut logits = vec![2.0f32; 10];
        allow_only(&[3, 7, 99], &mut logits);
        let kept: Vec<usize> = (0..10).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [3, 7]);
        assert_eq!(logits[3], 2.0);
    }
}
