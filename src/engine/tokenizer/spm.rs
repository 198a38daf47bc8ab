//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`), as llama.cpp's `llm_tokenizer_spm`
//! runs it: spaces become `▁`, then adjacent symbols are merged while their concatenation is a
//! vocabulary token, highest score first (ties: leftmost first); characters left without a token
//! fall back to byte tokens `<0xXX>`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;

/// Byte-fallback table of a SentencePiece vocabulary.
pub(super) struct Spm {
    byte_tokens: Vec<Option<u32>>,
    unk: Option<u32>,
}

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Candidate {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    /// Higher score first, then the leftmost (`BinaryHeap` pops the greatest).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then(other.left.cmp(&self.left))
    }
}

impl Spm {
    /// Finds the byte tokens (`<0xXX>`, or the byte itself as a string) of a vocabulary.
    pub fn new(vocab: &Vocab, unk: Option<u32>) -> Self {
        let mut byte_tokens = vec![None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = vocab.get(&format!("<0x{b:02X}>")).or_else(|| {
                std::str::from_utf8(&[b as u8])
                    .ok()
                    .and_then(|s| vocab.get(s))
            });
        }
        Self { byte_tokens, unk }
    }

    /// Appends the tokens of `text` (already `▁`-escaped) to `out`.
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            syms.push(Sym {
                start: start as u32,
                len: len as u32,
                prev: i as i32 - 1,
                next: if start + len == text.len() {
                    -1
                } else {
                    i as i32 + 1
                },
            });
        }
        let mut heap = BinaryHeap::new();
        let push = |syms: &[Sym], heap: &mut BinaryHeap<Candidate>, l: i32, r: i32| {
            if l < 0 || r < 0 {
                return;
            }
            let (a, b) = (syms[l as usize], syms[r as usize]);
            let s = &text[a.start as usize..(b.start + b.len) as usize];
            if let Some(id) = vocab.get(s) {
                heap.push(Candidate {
                    score: vocab.scores[id as usize],
                    left: l as u32,
                    right: r as u32,
                    size: s.len() as u32,
                });
            }
        };
        for i in 1..syms.len() {
            push(&syms, &mut heap, i as i32 - 1, i as i32);
        }
        while let Some(c) = heap.pop() {
            let (li, ri) = (c.left as usize, c.right as usize);
            let (left, right) = (syms[li], syms[ri]);
            if left.len == 0 || right.len == 0 || left.len + right.len != c.size {
                continue; // outdated
            }
            syms[li].len += right.len;
            syms[li].next = right.next;
            syms[ri].len = 0;
            if right.next >= 0 {
                syms[right.next as usize].prev = c.left as i32;
            }
            push(&syms, &mut heap, syms[li].prev, c.left as i32);
            push(&syms, &mut heap, c.left as i32, syms[li].next);
        }
        for s in syms.iter().filter(|s| s.len > 0) {
            let piece = &text[s.start as usize..(s.start + s.len) as usize];
            if let Some(id) = vocab.get(piece) {
                out.push(id);
                continue;
            }
            for b in piece.bytes() {
                if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                    out.push(id);
                }
            }
        }
    }
}
