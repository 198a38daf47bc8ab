//! The vocabulary read from GGUF metadata: token strings with a fast string→id index, scores,
//! token attributes (from `tokenizer.ggml.token_type`), and a small fast hasher used by the
//! tokenizer's hash maps.

use std::hash::{BuildHasherDefault, Hasher};

use crate::engine::error::{EngineError, Result};
use crate::engine::gguf::Metadata;

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub(super) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// FxHash-style multiply-rotate hashing with a strong finalizer: much faster than SipHash for
/// the integer and short-string keys here (built from the model file, never from requests).
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's finalizer: every output bit depends on every input bit, which the
        // multiply-rotate steps alone do not give the low bits that pick a hash-table slot.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

/// A `HashMap` using [`FxHasher`].
pub(super) type FxMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

fn hash_str(s: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(s.as_bytes());
    h.finish()
}

/// Token strings stored in one buffer, with an open-addressing index from string to id.
pub(super) struct Vocab {
    text: String,
    ends: Vec<u32>,
    /// Open-addressing table: 0 for empty, else `hash >> 32 << 32 | (id + 1)`, so that most
    /// probes are settled without touching the strings.
    slots: Vec<u64>,
    /// Score per token (SentencePiece log-probabilities; 0 when absent).
    pub scores: Vec<f32>,
    /// Attribute bits per token, see [`attr`].
    pub attrs: Vec<u16>,
}

impl Vocab {
    /// Reads `tokenizer.ggml.tokens`, `.scores` and `.token_type`.
    pub fn from_gguf(md: &Metadata) -> Result<Self> {
        let tokens = md.str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer.ggml.tokens has {n} entries"
            )));
        }
        let mut text = String::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut ends = Vec::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                text.push_str(&format!("[EMPTY_{i}]"));
            } else {
                text.push_str(t);
            }
            ends.push(
                u32::try_from(text.len()).map_err(|_| {
                    EngineError::Tokenizer("token strings exceed 4 GiB".to_string())
                })?,
            );
        }
        let scores = read_scores(md, n)?;
        let attrs = read_attrs(md, n)?;
        let mut vocab = Self {
            text,
            ends,
            slots: vec![0; (n * 2).next_power_of_two()],
            scores,
            attrs,
        };
        for id in 0..n as u32 {
            vocab.insert(id);
        }
        Ok(vocab)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The string of a token; empty for an id out of range.
    pub fn piece(&self, id: u32) -> &str {
        let i = id as usize;
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start as usize..end as usize]
    }

    /// Attribute bits of a token (0 when out of range).
    pub fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// The id of a token string. Like llama.cpp, a string listed twice maps to its last id.
    pub fn get(&self, s: &str) -> Option<u32> {
        let h = hash_str(s);
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            let id = (slot as u32).wrapping_sub(1);
            if slot >> 32 == h >> 32 && self.piece(id) == s {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, id: u32) {
        let h = hash_str(self.piece(id));
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                break;
            }
            let other = (slot as u32).wrapping_sub(1);
            if slot >> 32 == h >> 32 && self.piece(other) == self.piece(id) {
                break;
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = (h >> 32 << 32) | u64::from(id + 1);
    }
}

fn read_scores(md: &Metadata, n: usize) -> Result<Vec<f32>> {
    const KEY: &str = "tokenizer.ggml.scores";
    if md.get(KEY).is_none() {
        return Ok(vec![0.0; n]);
    }
    let mut scores = md.f32_array(KEY).or_else(|_| {
        Ok::<_, EngineError>(md.i64_array(KEY)?.iter().map(|&s| s as f32).collect())
    })?;
    if scores.len() < n {
        return Err(EngineError::Tokenizer(format!(
            "{KEY} has {} entries for {n} tokens",
            scores.len()
        )));
    }
    scores.truncate(n);
    Ok(scores)
}

fn read_attrs(md: &Metadata, n: usize) -> Result<Vec<u16>> {
    const KEY: &str = "tokenizer.ggml.token_type";
    if md.get(KEY).is_none() {
        return Ok(vec![attr::NORMAL; n]);
    }
    let types = md.i64_array(KEY)?;
    if types.len() < n {
        return Err(EngineError::Tokenizer(format!(
            "{KEY} has {} entries for {n} tokens",
            types.len()
        )));
    }
    Ok(types[..n]
        .iter()
        .map(|t| match t {
            1 => attr::NORMAL,
            2 => attr::UNKNOWN,
            3 => attr::CONTROL,
            4 => attr::USER_DEFINED,
            5 => attr::UNUSED,
            6 => attr::BYTE,
            _ => 0,
        })
        .collect())
}
