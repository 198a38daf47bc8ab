//! The scheduler's prefix cache: a prompt whose prefill has finished leaves its KV blocks here
//! (ref-counted in the pool), and a later request that starts with the same tokens forks them
//! instead of running that part of the prefill again. Least recently used entries go first.
//!
//! A prompt is kept to its last token, so that the same prompt again (a retry, a template sent
//! verbatim) runs one token instead of up to a block's worth. A partly filled last block is
//! copied on write by whichever sequence writes into it next, so the cache's copy becomes its
//! own block: the scheduler keeps room for it ([`PrefixCache::register`]'s `room`), and counts
//! every entry in whole blocks. A sequence never holds more blocks than its own length, so the
//! scheduler's reservations stay exact.

use crate::engine::generate::Sequence;
use crate::engine::model::kv::BLOCK;
use crate::engine::model::{KvPool, SeqKv};

/// Shortest shared prefix worth forking.
const MIN_REUSE: usize = BLOCK;

struct Entry {
    tokens: Vec<u32>,
    kv: SeqKv,
    last_used: u64,
}

/// Cached prompt prefixes, each holding its blocks in the pool.
pub(super) struct PrefixCache {
    entries: Vec<Entry>,
    capacity: usize,
    clock: u64,
}

impl PrefixCache {
    /// A cache of at most `capacity` prompts (0 turns it off).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity,
            clock: 0,
        }
    }

    /// KV positions the cache holds, in whole blocks.
    pub(super) fn tokens(&self) -> usize {
        self.entries.iter().map(|e| blocks_for(e.kv.len())).sum()
    }

    /// Whether it holds nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the least recently used entry, giving its blocks back to the pool.
    pub(super) fn evict_lru(&mut self, pool: &mut KvPool) {
        let lru = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used);
        if let Some(i) = lru {
            let mut e = self.entries.swap_remove(i);
            pool.release(&mut e.kv);
        }
    }

    /// Forks the longest cached prefix of the sequence's prompt into it, leaving at least one
    /// prompt token to run. Returns the positions reused.
    pub(super) fn reuse(&mut self, pool: &mut KvPool, seq: &mut Sequence) -> usize {
        let prompt = &seq.tokens()[..seq.prompt_len()];
        let shared = |e: &Entry| {
            e.tokens
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, shared(e)))
            .max_by_key(|&(_, n)| n);
        let Some((i, n)) = best else { return 0 };
        let n = n.min(prompt.len() - 1);
        if n < MIN_REUSE {
            return 0;
        }
        self.clock += 1;
        self.entries[i].last_used = self.clock;
        seq.kv = pool.fork(&self.entries[i].kv, n);
        seq.mark_cached(n);
        n
    }

    /// Keeps the prompt of a sequence whose prefill just finished: all of it when `room` (the
    /// cache may hold one more block than the scheduler has counted, for the copy of a partly
    /// filled last block), else its whole blocks.
    pub(super) fn register(&mut self, pool: &mut KvPool, seq: &Sequence, room: bool) {
        let n = seq.prompt_len().min(seq.kv.len());
        let n = if room { n } else { whole_blocks(n) };
        if n < MIN_REUSE || self.capacity == 0 {
            return;
        }
        let tokens = &seq.tokens()[..n];
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens == tokens) {
            self.clock += 1;
            e.last_used = self.clock;
            return;
        }
        if self.entries.len() >= self.capacity {
            self.evict_lru(pool);
        }
        self.clock += 1;
        let kv = pool.fork(&seq.kv, n);
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            kv,
            last_used: self.clock,
        });
    }
}

fn whole_blocks(n: usize) -> usize {
    n / BLOCK * BLOCK
}

/// KV positions a sequence of `len` positions occupies (whole blocks).
pub(super) fn blocks_for(len: usize) -> usize {
    len.div_ceil(BLOCK) * BLOCK
}
