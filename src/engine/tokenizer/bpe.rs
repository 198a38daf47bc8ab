//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): words from the pre-tokenizer are mapped to
//! GPT-2's printable byte characters, then merged pair by pair, lowest merge rank first (ties:
//! leftmost first), exactly like llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Merges are keyed by the pair of token ids, so one hash lookup ranks a pair. A merge whose
//! parts or result are not vocabulary strings still takes part, through ids numbered past the
//! vocabulary; a final symbol that is not a token falls back to single-byte tokens.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::pretokenize::PreTokenizer;
use super::unicode::BYTE_CHARS;
use super::vocab::{FxMap, Vocab};
use crate::engine::error::Result;
use crate::engine::gguf::Metadata;

const NO_ID: u32 = u32::MAX;

/// The merge table and pre-tokenizer of a byte-level BPE vocabulary.
pub(super) struct Bpe {
    /// `left << 32 | right` → (rank, id of the merged string).
    merges: FxMap<u64, (u32, u32)>,
    /// Strings that merges mention but the vocabulary lacks, numbered from the vocabulary size.
    extra: FxMap<String, u32>,
    pre: PreTokenizer,
    ignore_merges: bool,
}

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
    id: u32,
}

/// A candidate merge: (rank, left index, right index, left id, right id, merged id).
type Candidate = Reverse<(u32, u32, u32, u32, u32, u32)>;

impl Bpe {
    /// Reads `tokenizer.ggml.merges` ("left right" per line, in rank order).
    pub fn new(
        md: &Metadata,
        vocab: &Vocab,
        pre: PreTokenizer,
        ignore_merges: bool,
    ) -> Result<Self> {
        let lines = md.str_array("tokenizer.ggml.merges")?;
        let mut merges = FxMap::default();
        merges.reserve(lines.len());
        let mut extra = FxMap::default();
        let id_of = |s: &str, extra: &mut FxMap<String, u32>| match vocab.get(s) {
            Some(id) => id,
            None => {
                let next = (vocab.len() + extra.len()) as u32;
                *extra.entry(s.to_string()).or_insert(next)
            }
        };
        let mut joined = String::new();
        for (rank, line) in lines.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let Some(pos) = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&line[..pos], &line[pos + 1..]);
            if right.is_empty() {
                continue;
            }
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let l = id_of(left, &mut extra);
            let r = id_of(right, &mut extra);
            let m = id_of(&joined, &mut extra);
            merges
                .entry((u64::from(l) << 32) | u64::from(r))
                .or_insert((rank as u32, m));
        }
        Ok(Self {
            merges,
            extra,
            pre,
            ignore_merges,
        })
    }

    /// Appends the tokens of `text` (a fragment without special tokens) to `out`.
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut word = String::new();
        let mut syms = Vec::new();
        let mut heap = BinaryHeap::new();
        for w in self.pre.split(text) {
            word.clear();
            word.extend(w.bytes().map(|b| BYTE_CHARS[b as usize]));
            if self.ignore_merges
                && let Some(id) = vocab.get(&word)
            {
                out.push(id);
                continue;
            }
            self.merge_word(vocab, &word, &mut syms, &mut heap);
            for s in syms.iter().filter(|s| s.len > 0) {
                if (s.id as usize) < vocab.len() {
                    out.push(s.id);
                    continue;
                }
                // Not a token: emit its bytes one by one, where they are tokens themselves.
                let text = &word.as_bytes()[s.start as usize..(s.start + s.len) as usize];
                for &b in text {
                    if let Some(id) = std::str::from_utf8(&[b]).ok().and_then(|c| vocab.get(c)) {
                        out.push(id);
                    }
                }
            }
        }
    }

    fn lookup(&self, vocab: &Vocab, s: &str) -> u32 {
        vocab
            .get(s)
            .or_else(|| self.extra.get(s).copied())
            .unwrap_or(NO_ID)
    }

    fn merge_word(
        &self,
        vocab: &Vocab,
        word: &str,
        syms: &mut Vec<Sym>,
        heap: &mut BinaryHeap<Candidate>,
    ) {
        syms.clear();
        heap.clear();
        for (i, (start, c)) in word.char_indices().enumerate() {
            let len = c.len_utf8();
            syms.push(Sym {
                start: start as u32,
                len: len as u32,
                prev: i as i32 - 1,
                next: if start + len == word.len() {
                    -1
                } else {
                    i as i32 + 1
                },
                id: self.lookup(vocab, &word[start..start + len]),
            });
        }
        for i in 1..syms.len() {
            self.push_pair(syms, heap, i as i32 - 1, i as i32);
        }
        while let Some(Reverse((_, l, r, lid, rid, merged))) = heap.pop() {
            let (li, ri) = (l as usize, r as usize);
            let (left, right) = (syms[li], syms[ri]);
            if left.len == 0 || right.len == 0 || left.id != lid || right.id != rid {
                continue; // outdated
            }
            syms[li].len += right.len;
            syms[li].id = merged;
            syms[li].next = right.next;
            syms[ri].len = 0;
            if right.next >= 0 {
                syms[right.next as usize].prev = l as i32;
            }
            self.push_pair(syms, heap, syms[li].prev, l as i32);
            self.push_pair(syms, heap, l as i32, syms[li].next);
        }
    }

    fn push_pair(&self, syms: &[Sym], heap: &mut BinaryHeap<Candidate>, l: i32, r: i32) {
        if l < 0 || r < 0 {
            return;
        }
        let (lid, rid) = (syms[l as usize].id, syms[r as usize].id);
        if lid == NO_ID || rid == NO_ID {
            return;
        }
        if let Some(&(rank, merged)) = self.merges.get(&((u64::from(lid) << 32) | u64::from(rid))) {
            heap.push(Reverse((rank, l as u32, r as u32, lid, rid, merged)));
        }
    }
}
