//! Splitting input text around special tokens before tokenizing the rest, with the semantics of
//! llama.cpp's `tokenizer_st_partition`: special tokens are tried one after another, longest
//! first, each splitting every remaining text fragment at all its occurrences; control and
//! unknown tokens take part only when special parsing is on, user-defined ones always; the
//! `lstrip`/`rstrip` attributes drop the ASCII whitespace beside a match.
//!
//! A byte trie over all special strings finds first which of them occur in the text at all, so
//! the sequential passes run only for those (usually none), even with vocabularies that have
//! thousands of special tokens.

use super::vocab::{FxMap, Vocab, attr};

/// A piece of input: raw text (a byte range of the input) or an already-decided token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fragment {
    /// Bytes `start..end` of the input, to be tokenized.
    Text(usize, usize),
    /// A special token.
    Token(u32),
}

/// Finds and splits out special tokens.
pub(super) struct SpecialMatcher {
    /// Candidate tokens in the order they are tried.
    order: Vec<u32>,
    /// Trie edges: `node << 8 | byte` → child node (the root is node 0).
    edges: FxMap<u64, u32>,
    /// Per node: 1 + the index in `order` of the token ending there, or 0.
    terminal: Vec<u32>,
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

impl SpecialMatcher {
    /// Builds the matcher for tokens in `order` (see `special::partition_order`).
    pub fn new(vocab: &Vocab, order: Vec<u32>) -> Self {
        let mut edges = FxMap::default();
        let mut terminal = vec![0u32];
        for (i, &id) in order.iter().enumerate() {
            let mut node = 0u32;
            for &b in vocab.piece(id).as_bytes() {
                let key = (u64::from(node) << 8) | u64::from(b);
                node = *edges.entry(key).or_insert_with(|| {
                    terminal.push(0);
                    (terminal.len() - 1) as u32
                });
            }
            if terminal[node as usize] == 0 {
                terminal[node as usize] = i as u32 + 1;
            }
        }
        Self {
            order,
            edges,
            terminal,
        }
    }

    /// Indices (into `order`) of the candidate tokens that occur somewhere in `text`, sorted.
    fn occurring(&self, text: &[u8]) -> Vec<usize> {
        let mut found = Vec::new();
        for start in 0..text.len() {
            let mut node = 0u32;
            for &b in &text[start..] {
                match self.edges.get(&((u64::from(node) << 8) | u64::from(b))) {
                    Some(&next) => node = next,
                    None => break,
                }
                if let Some(i) = self.terminal[node as usize].checked_sub(1) {
                    found.push(i as usize);
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Splits `text` into fragments around the special tokens it contains.
    pub fn partition(&self, vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        let bytes = text.as_bytes();
        for i in self.occurring(bytes) {
            let id = self.order[i];
            let a = vocab.attr(id);
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let pat = vocab.piece(id);
            let mut out = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let Fragment::Text(mut start, end) = frag else {
                    out.push(frag);
                    continue;
                };
                while let Some(found) = text[start..end].find(pat) {
                    let at = start + found;
                    let mut left_end = at;
                    if a & attr::LSTRIP != 0 {
                        while left_end > start && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        out.push(Fragment::Text(start, left_end));
                    }
                    out.push(Fragment::Token(id));
                    start = at + pat.len();
                    if a & attr::RSTRIP != 0 {
                        while start < end && is_c_space(bytes[start]) {
                            start += 1;
                        }
                    }
                }
                if start < end {
                    out.push(Fragment::Text(start, end));
                }
            }
            frags = out;
        }
        frags
    }
}
