//! Writing a batch's keys and values into the cache from several threads at once.
//!
//! A step of 8 sequences writes 8 rows per layer, and a transposed key row touches one cache
//! line per dimension (192 for SmolLM2): alone on one thread, with each line a miss to the
//! shared cache, that was 7% of the step. [`KvWriter`] lets the kernels' pool split the rows.
//! It is safe to share: every row's slot is checked distinct when the writer is made, and each
//! row can be written once.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use half::f16;

use super::{BLOCK, KvPool, SeqKv, to_halves};

/// Writes rows `0..n` of one layer of a batch, each into its own slot, from any thread.
pub struct KvWriter<'a> {
    /// Each row's block and position within it: only that slot is written through the pointer.
    rows: Vec<(*mut f16, u16)>,
    /// Halves per block.
    block_len: usize,
    taken: Vec<AtomicBool>,
    /// Offsets of the layer's keys and values in a block.
    kb: usize,
    vb: usize,
    kv_dim: usize,
    head_dim: usize,
    _pool: std::marker::PhantomData<&'a mut KvPool>,
}

// SAFETY: the writer holds the pool mutably borrowed, and writes through `rows` (element by
// element, never through a reference to a whole block) only to the slots checked distinct in
// `KvPool::writer`, each at most once (`taken`), so no two threads write the same element and
// nothing reads them meanwhile.
unsafe impl Sync for KvWriter<'_> {}
// SAFETY: as above.
unsafe impl Send for KvWriter<'_> {}

impl KvPool {
    /// A writer of layer `layer`'s rows: row `t` goes to position `rows[t].1` of
    /// `seqs[rows[t].0]`, whose block must be allocated ([`Self::prepare`]).
    ///
    /// # Panics
    /// If two rows share a slot (the same position of one sequence, or of two sequences that
    /// share the block), or a position has no block.
    pub fn writer<'a>(
        &'a mut self,
        layer: usize,
        seqs: &[SeqKv],
        rows: impl Iterator<Item = (usize, usize)>,
    ) -> KvWriter<'a> {
        assert!(layer < self.n_layer, "KvPool::writer: layer {layer}");
        // (block, slot, row), sorted: equal slots end up side by side, and each block's
        // pointer is taken once, so rows that share a block write through one pointer, never
        // through a reference to the whole block.
        let mut order: Vec<(u32, u16, usize)> = (rows.enumerate())
            .map(|(t, (s, pos))| (seqs[s].blocks[pos / BLOCK], (pos % BLOCK) as u16, t))
            .collect();
        order.sort_unstable();
        let mut rows = vec![(std::ptr::null_mut(), 0); order.len()];
        let mut last: Option<(u32, u16, *mut f16)> = None;
        for &(id, slot, t) in &order {
            let ptr = match last {
                Some((b, s, _)) if (b, s) == (id, slot) => {
                    panic!("KvPool::writer: two rows of one batch write one cache slot")
                }
                Some((b, _, p)) if b == id => p,
                _ => self.blocks[id as usize].as_mut_ptr(),
            };
            rows[t] = (ptr, slot);
            last = Some((id, slot, ptr));
        }
        let taken = rows.iter().map(|_| AtomicBool::new(false)).collect();
        KvWriter {
            kb: self.base(layer, 0),
            vb: self.base(layer, 1),
            kv_dim: self.kv_dim,
            head_dim: self.head_dim,
            block_len: self.block_len(),
            rows,
            taken,
            _pool: std::marker::PhantomData,
        }
    }
}

impl KvWriter<'_> {
    /// Rows the writer takes.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it takes none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes row `t`'s key and value (rounded to the nearest half).
    ///
    /// # Panics
    /// If row `t` was written before, or a row's length is not the pool's `kv_dim`.
    pub fn write(&self, t: usize, k: &[f32], v: &[f32]) {
        let d = self.kv_dim;
        assert!(k.len() == d && v.len() == d, "KvWriter::write: row lengths");
        assert!(
            !self.taken[t].swap(true, Relaxed),
            "KvWriter::write: row {t} written twice"
        );
        let (block, slot) = self.rows[t];
        let offsets = (self.kb, self.vb, self.head_dim);
        // SAFETY: `block` points at a live block of `block_len` halves (the pool stays
        // borrowed); this row's slot is distinct from every other row's and written once (see
        // the `Sync` impl), so the elements `store` writes are this call's alone.
        unsafe { store(block, self.block_len, offsets, slot as usize, k, v) };
    }
}

/// Stores one position's key (transposed, `[kv_dim][BLOCK]` from `kb`) and value (by head,
/// `[head][BLOCK][head_dim]` from `vb`) in the block of `len` halves at `block`, element by
/// element. The key's lines are asked for first, all at once: each is a different line, and
/// one store at a time would wait for each in turn.
///
/// # Safety
/// `block` points at `len` halves that no one else reads or writes at this slot meanwhile.
unsafe fn store(
    block: *mut f16,
    len: usize,
    (kb, vb, hd): (usize, usize, usize),
    slot: usize,
    k: &[f32],
    v: &[f32],
) {
    let d = k.len();
    assert!(
        slot < BLOCK && kb + d * BLOCK <= len && vb + d * BLOCK <= len && d.is_multiple_of(hd),
        "KV store: slot {slot} outside the block"
    );
    for c in 0..d {
        crate::engine::kernels::prefetch_write_at(block.wrapping_add(kb + c * BLOCK + slot));
    }
    let mut h = [f16::ZERO; 256];
    for (h0, v) in v.chunks_exact(hd).enumerate() {
        let at = vb + (h0 * BLOCK + slot) * hd;
        for (c, v) in v.chunks(h.len()).enumerate() {
            let h = &mut h[..v.len()];
            to_halves(v, h);
            // SAFETY: `at + hd <= vb + d * BLOCK <= len` (asserted), inside the block.
            unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), block.add(at + 256 * c), h.len()) };
        }
    }
    for (c0, k) in k.chunks(h.len()).enumerate() {
        let h = &mut h[..k.len()];
        to_halves(k, h);
        for (c, &x) in h.iter().enumerate() {
            // SAFETY: `kb + (c0 * 256 + c) * BLOCK + slot < kb + d * BLOCK <= len`.
            unsafe { block.add(kb + (c0 * 256 + c) * BLOCK + slot).write(x) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BLOCK, KvPool, SeqKv};

    /// Two sequences of 40 cached positions, a 6-wide cache of two 3-wide heads.
    fn two_sequences(pool: &mut KvPool) -> Vec<SeqKv> {
        let mut seqs = vec![SeqKv::default(), SeqKv::default()];
        for s in &mut seqs {
            pool.prepare(s, 0, 40).unwrap();
        }
        seqs
    }

    fn row(t: usize, sign: f32) -> Vec<f32> {
        (0..6).map(|i| sign * (10 * t + i) as f32).collect()
    }

    #[test]
    fn rows_written_from_the_pool_match_rows_written_one_by_one() {
        // Both sequences' rows interleaved, across a block boundary.
        let rows: Vec<(usize, usize)> = (0..12).map(|t| (t % 2, BLOCK - 3 + t / 2)).collect();
        let mut serial = KvPool::new(3, 6, 1024).with_head_dim(3);
        let mut parallel = KvPool::new(3, 6, 1024).with_head_dim(3);
        let (a, b) = (two_sequences(&mut serial), two_sequences(&mut parallel));
        for (t, &(s, pos)) in rows.iter().enumerate() {
            serial.write(&a[s], 2, pos, &row(t, 1.0), &row(t, -1.0));
        }
        let writer = parallel.writer(2, &b, rows.iter().copied());
        assert_eq!(writer.len(), rows.len());
        crate::engine::kernels::parallel_for(rows.len(), &|t| {
            writer.write(t, &row(t, 1.0), &row(t, -1.0))
        });
        drop(writer);
        for &(s, pos) in &rows {
            assert_eq!(serial.key(&a[s], 2, pos), parallel.key(&b[s], 2, pos));
            assert_eq!(serial.value(&a[s], 2, pos), parallel.value(&b[s], 2, pos));
        }
        assert_eq!(
            parallel.key(&b[1], 2, BLOCK + 2)[1],
            half::f16::from_f32(111.0)
        );
    }

    #[test]
    #[should_panic(expected = "write one cache slot")]
    fn two_rows_of_one_slot_are_refused() {
        let mut pool = KvPool::new(1, 6, 1024);
        let seqs = two_sequences(&mut pool);
        let _ = pool.writer(0, &seqs, [(0, 5), (1, 5), (0, 5)].into_iter());
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_row_is_written_once() {
        let mut pool = KvPool::new(1, 6, 1024);
        let seqs = two_sequences(&mut pool);
        let writer = pool.writer(0, &seqs, [(0, 5), (1, 5)].into_iter());
        writer.write(1, &row(0, 1.0), &row(0, 1.0));
        writer.write(1, &row(0, 1.0), &row(0, 1.0));
    }
}
