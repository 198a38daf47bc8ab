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
    /// The pool's blocks: only the slots below are written through it.
    blocks: *mut Box<[f16]>,
    /// Block id and position within the block of each row.
    slots: Vec<(u32, u16)>,
    taken: Vec<AtomicBool>,
    /// Offsets of the layer's keys and values in a block.
    kb: usize,
    vb: usize,
    kv_dim: usize,
    head_dim: usize,
    _pool: std::marker::PhantomData<&'a mut KvPool>,
}

// SAFETY: the writer holds the pool mutably borrowed, and writes through `blocks` only to the
// slots checked distinct in `KvPool::writer`, each at most once (`taken`), so no two threads
// write the same element and nothing reads them meanwhile.
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
        let slots: Vec<(u32, u16)> = rows
            .map(|(s, pos)| (seqs[s].blocks[pos / BLOCK], (pos % BLOCK) as u16))
            .collect();
        let mut sorted = slots.clone();
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[0] != w[1]),
            "KvPool::writer: two rows of one batch write one cache slot"
        );
        let taken = slots.iter().map(|_| AtomicBool::new(false)).collect();
        KvWriter {
            kb: self.base(layer, 0),
            vb: self.base(layer, 1),
            kv_dim: self.kv_dim,
            head_dim: self.head_dim,
            blocks: self.blocks.as_mut_ptr(),
            slots,
            taken,
            _pool: std::marker::PhantomData,
        }
    }
}

impl KvWriter<'_> {
    /// Rows the writer takes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it takes none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
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
        let (id, slot) = self.slots[t];
        // SAFETY: block `id` exists (its id came from a sequence's table); this row's slot is
        // distinct from every other row's and written once (see the `Sync` impl), so the
        // elements written below are this call's alone.
        let block = unsafe { &mut **self.blocks.add(id as usize) };
        store(block, self.kb, self.vb, self.head_dim, slot as usize, k, v);
    }
}

/// Stores one position's key (transposed, `[kv_dim][BLOCK]` from `kb`) and value (by head,
/// `[head][BLOCK][head_dim]` from `vb`) in `block`. The key's lines are asked for first, all at
/// once: each is a different line, and one store at a time would wait for each in turn.
pub(super) fn store(
    block: &mut [f16],
    kb: usize,
    vb: usize,
    hd: usize,
    slot: usize,
    k: &[f32],
    v: &[f32],
) {
    let keys = &mut block[kb..kb + k.len() * BLOCK];
    for line in keys.chunks(BLOCK) {
        crate::engine::kernels::prefetch_write(&line[slot..=slot]);
    }
    for (h, v) in v.chunks_exact(hd).enumerate() {
        let at = vb + (h * BLOCK + slot) * hd;
        to_halves(v, &mut block[at..at + hd]);
    }
    let mut kh = [f16::ZERO; 256];
    for (c0, k) in k.chunks(kh.len()).enumerate() {
        let kh = &mut kh[..k.len()];
        to_halves(k, kh);
        for (c, &h) in kh.iter().enumerate() {
            block[kb + (c0 * 256 + c) * BLOCK + slot] = h;
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
