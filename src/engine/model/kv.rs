//! The paged key/value cache: a pool of fixed-size blocks owned by the engine, and per-sequence
//! block tables (vLLM's paged attention, on the CPU).
//!
//! A sequence owns a list of block ids; block `i` holds positions `i*BLOCK..(i+1)*BLOCK` for every
//! layer. Blocks are reference-counted so that sequences can share a prompt prefix; a shared
//! block is copied before it is written (copy-on-write). Blocks are allocated lazily and recycled
//! through a free list, and the pool is bounded.
//!
//! Keys and values are stored as IEEE half floats, as llama.cpp's default `f16` cache does: half
//! the memory and memory traffic of `f32`, and the same rounding as the reference engine.
//! Within a block, keys are transposed (`[kv_dim][BLOCK]`) and values are grouped by KV head
//! (`[head][BLOCK][head_dim]`), so that attention over one KV head reads contiguous memory for
//! both, which the hardware prefetchers follow.
//!
//! A backend that keeps keys and values elsewhere (the candle backend, on a GPU) uses the pool
//! for block bookkeeping only, and stores its own per-block data beside it
//! ([`KvPool::backend_store`]), addressed by the same block ids.

use std::any::Any;

use half::f16;

use crate::engine::error::{EngineError, Result};

mod write;
pub use write::KvWriter;

/// Positions per block.
pub const BLOCK: usize = 32;

/// The nearest half of every element, saturating at the largest finite one rather than
/// overflowing to infinity (which attention would turn into NaN); 16 at a time.
fn to_halves(x: &[f32], out: &mut [f16]) {
    use half::slice::HalfFloatSliceExt;
    let mut tmp = [0f32; 16];
    for (x, out) in x.chunks(16).zip(out.chunks_mut(16)) {
        let tmp = &mut tmp[..x.len()];
        for (t, &x) in tmp.iter_mut().zip(x) {
            *t = x.clamp(-65504.0, 65504.0);
        }
        out.convert_from_f32_slice(tmp);
    }
}

/// The block pool. One per loaded model.
pub struct KvPool {
    n_layer: usize,
    kv_dim: usize,
    /// Width of one KV head's value rows; `kv_dim` is a multiple of it.
    head_dim: usize,
    max_blocks: usize,
    blocks: Vec<Box<[f16]>>,
    refs: Vec<u32>,
    free: Vec<u32>,
    backend: Option<Box<dyn Any + Send + Sync>>,
}

/// A sequence's view of the cache: its block table and how many positions are filled.
#[derive(Debug, Default, Clone)]
pub struct SeqKv {
    blocks: Vec<u32>,
    len: usize,
}

impl SeqKv {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block table: block `i` holds positions `i*BLOCK..(i+1)*BLOCK`.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
}

impl KvPool {
    /// A pool for a model with `n_layer` layers of `kv_dim`-wide keys and values, holding at most
    /// `max_tokens` positions over all sequences; one KV head unless [`Self::with_head_dim`]
    /// says otherwise.
    pub fn new(n_layer: usize, kv_dim: usize, max_tokens: usize) -> Self {
        Self {
            n_layer,
            kv_dim,
            head_dim: kv_dim.max(1),
            max_blocks: max_tokens.div_ceil(BLOCK).max(1),
            blocks: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            backend: None,
        }
    }

    /// Data a backend keeps beside the blocks (per-block tensors on its device), dropped with
    /// the pool.
    pub fn backend_store(&mut self) -> &mut Option<Box<dyn Any + Send + Sync>> {
        &mut self.backend
    }

    /// The same pool with value rows grouped by KV heads of `head_dim` (which must divide
    /// `kv_dim`).
    pub fn with_head_dim(mut self, head_dim: usize) -> Self {
        assert!(
            head_dim > 0 && self.kv_dim.is_multiple_of(head_dim),
            "KvPool: head size {head_dim} does not divide {}",
            self.kv_dim
        );
        assert!(
            self.blocks.is_empty(),
            "KvPool::with_head_dim on a used pool"
        );
        self.head_dim = head_dim;
        self
    }

    /// Width of one cached key (or value) row: every KV head of one position.
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Halves from one position's value row of a KV head to the next position's
    /// ([`Self::values_from`]).
    pub fn value_stride(&self) -> usize {
        self.head_dim
    }

    /// Total capacity in positions.
    pub fn capacity_tokens(&self) -> usize {
        self.max_blocks * BLOCK
    }

    /// Positions that can still be allocated.
    pub fn free_tokens(&self) -> usize {
        (self.max_blocks - self.blocks.len() + self.free.len()) * BLOCK
    }

    fn block_len(&self) -> usize {
        self.n_layer * 2 * BLOCK * self.kv_dim
    }

    fn alloc(&mut self) -> Result<u32> {
        if let Some(id) = self.free.pop() {
            self.refs[id as usize] = 1;
            return Ok(id);
        }
        if self.blocks.len() >= self.max_blocks {
            return Err(EngineError::InvalidParameter {
                param: "kv_cache",
                reason: format!(
                    "the KV cache is full ({} positions); retry later or raise the cache size",
                    self.capacity_tokens()
                ),
            });
        }
        self.blocks
            .push(vec![f16::ZERO; self.block_len()].into_boxed_slice());
        self.refs.push(1);
        Ok((self.blocks.len() - 1) as u32)
    }

    /// Makes room for positions up to `new_len` (exclusive) in `seq`, allocating blocks and
    /// un-sharing the block that the next write lands in. Positions at or beyond `from` will be
    /// overwritten, so the sequence is first truncated to `from`.
    pub fn prepare(&mut self, seq: &mut SeqKv, from: usize, new_len: usize) -> Result<()> {
        self.truncate(seq, from);
        let need = new_len.div_ceil(BLOCK);
        // Copy-on-write for a shared, partially filled last block that will be written to.
        if !seq.len.is_multiple_of(BLOCK) {
            let last = seq.len / BLOCK;
            let id = seq.blocks[last];
            if self.refs[id as usize] > 1 {
                let copy = self.alloc()?;
                let (src, dst) = (id as usize, copy as usize);
                let data = self.blocks[src].clone();
                self.blocks[dst] = data;
                self.refs[src] -= 1;
                seq.blocks[last] = copy;
            }
        }
        while seq.blocks.len() < need {
            let id = self.alloc()?;
            seq.blocks.push(id);
        }
        Ok(())
    }

    /// Marks positions up to `len` as filled (after a forward pass wrote them).
    pub fn commit(&mut self, seq: &mut SeqKv, len: usize) {
        debug_assert!(len <= seq.blocks.len() * BLOCK);
        seq.len = seq.len.max(len);
    }

    /// Drops cached positions from `len` on, releasing whole blocks no longer needed.
    pub fn truncate(&mut self, seq: &mut SeqKv, len: usize) {
        let keep = len.div_ceil(BLOCK);
        while seq.blocks.len() > keep {
            let id = seq.blocks.pop().unwrap_or_default();
            self.unref(id);
        }
        seq.len = seq.len.min(len);
    }

    /// Releases every block of a sequence.
    pub fn release(&mut self, seq: &mut SeqKv) {
        self.truncate(seq, 0);
    }

    fn unref(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r -= 1;
        if *r == 0 {
            self.free.push(id);
        }
    }

    /// A new sequence sharing the first `len` cached positions of `seq` (prefix reuse).
    pub fn fork(&mut self, seq: &SeqKv, len: usize) -> SeqKv {
        let len = len.min(seq.len);
        let blocks: Vec<u32> = seq.blocks[..len.div_ceil(BLOCK)].to_vec();
        for &b in &blocks {
            self.refs[b as usize] += 1;
        }
        SeqKv { blocks, len }
    }

    /// Start of layer `layer`'s keys (`which = 0`) or values (`1`) in a block.
    #[inline]
    fn base(&self, layer: usize, which: usize) -> usize {
        (layer * 2 + which) * BLOCK * self.kv_dim
    }

    /// Writes the key and value of one position of one layer (rounded to the nearest half),
    /// through a [`KvWriter`] of one row. Keys are stored transposed within the block
    /// (`[kv_dim][BLOCK]`), so that attention reads one dimension of 16 positions as one
    /// vector; values by KV head (`[head][BLOCK][head_dim]`).
    #[cfg(test)]
    pub fn write(&mut self, seq: &SeqKv, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        self.writer(layer, std::slice::from_ref(seq), std::iter::once((0, pos)))
            .write(0, k, v);
    }

    /// The key row (all KV heads) of one position, gathered from the transposed block.
    #[cfg(test)]
    pub fn key(&self, seq: &SeqKv, layer: usize, pos: usize) -> Vec<f16> {
        let t = self.keys_t(seq, layer, pos / BLOCK);
        (0..self.kv_dim)
            .map(|c| t[c * BLOCK + pos % BLOCK])
            .collect()
    }

    /// Layer `layer`'s keys of block `b` of `seq`, transposed: `[kv_dim][BLOCK]`.
    #[inline]
    pub fn keys_t(&self, seq: &SeqKv, layer: usize, b: usize) -> &[f16] {
        let o = self.base(layer, 0);
        &self.blocks[seq.blocks[b] as usize][o..o + BLOCK * self.kv_dim]
    }

    /// KV head `kvh`'s value rows of layer `layer` from position `pos` to the end of its block,
    /// [`Self::value_stride`] halves apart (contiguous).
    #[inline]
    pub fn values_from(&self, seq: &SeqKv, layer: usize, kvh: usize, pos: usize) -> &[f16] {
        let (o, hd) = (
            self.base(layer, 1) + kvh * BLOCK * self.head_dim,
            self.head_dim,
        );
        &self.blocks[seq.blocks[pos / BLOCK] as usize][o + pos % BLOCK * hd..o + BLOCK * hd]
    }

    /// The value row (all KV heads) of one position, gathered from the heads' rows.
    #[cfg(test)]
    pub fn value(&self, seq: &SeqKv, layer: usize, pos: usize) -> Vec<f16> {
        (0..self.kv_dim / self.head_dim)
            .flat_map(|h| self.values_from(seq, layer, h, pos)[..self.head_dim].to_vec())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_shares_and_copy_on_write_isolates() {
        let mut pool = KvPool::new(2, 4, 1024);
        let mut a = SeqKv::default();
        pool.prepare(&mut a, 0, 40).unwrap();
        for p in 0..40 {
            let x = [p as f32; 4];
            pool.write(&a, 1, p, &x, &x);
        }
        pool.commit(&mut a, 40);
        let mut b = pool.fork(&a, 36);
        assert_eq!(b.len(), 36);
        pool.prepare(&mut b, 36, 37).unwrap();
        pool.write(&b, 1, 36, &[-1.0; 4], &[-1.0; 4]);
        pool.commit(&mut b, 37);
        let h = |x: f32| [f16::from_f32(x); 4];
        assert_eq!(pool.key(&a, 1, 36), h(36.0));
        assert_eq!(pool.key(&b, 1, 36), h(-1.0));
        assert_eq!(pool.value(&b, 1, 3), h(3.0));
        pool.release(&mut a);
        pool.release(&mut b);
        assert_eq!(pool.free_tokens(), pool.capacity_tokens());
    }

    #[test]
    fn values_beyond_half_range_saturate() {
        let mut pool = KvPool::new(1, 2, 64);
        let mut a = SeqKv::default();
        pool.prepare(&mut a, 0, 1).unwrap();
        pool.write(&a, 0, 0, &[1e6, -1e6], &[7e4, -f32::INFINITY]);
        assert_eq!(pool.key(&a, 0, 0), [f16::MAX, f16::MIN]);
        assert_eq!(pool.value(&a, 0, 0), [f16::MAX, f16::MIN]);
    }

    #[test]
    fn value_rows_are_grouped_by_kv_head() {
        let mut pool = KvPool::new(1, 4, 64).with_head_dim(2);
        let mut a = SeqKv::default();
        pool.prepare(&mut a, 0, 3).unwrap();
        for p in 0..3 {
            let x = [p as f32, 10.0 + p as f32, 20.0 + p as f32, 30.0 + p as f32];
            pool.write(&a, 0, p, &x, &x);
        }
        pool.commit(&mut a, 3);
        let h = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
        // Head 1's rows from position 1: contiguous, two halves apart.
        assert_eq!(pool.value_stride(), 2);
        assert_eq!(
            &pool.values_from(&a, 0, 1, 1)[..4],
            h(&[21.0, 31.0, 22.0, 32.0]).as_slice()
        );
        assert_eq!(pool.value(&a, 0, 2), h(&[2.0, 12.0, 22.0, 32.0]));
        assert_eq!(pool.key(&a, 0, 1), h(&[1.0, 11.0, 21.0, 31.0]));
    }

    #[test]
    fn bounded() {
        let mut pool = KvPool::new(1, 2, 64);
        let mut a = SeqKv::default();
        assert!(pool.prepare(&mut a, 0, 65).is_err());
        pool.prepare(&mut a, 0, 64).unwrap();
    }
}
