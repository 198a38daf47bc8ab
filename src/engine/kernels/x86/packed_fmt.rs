//! What the packed tile kernels of every instruction set share: the 32-wide formats as const
//! parameters with their block-column layouts (`packed::Layout`) as constants, and what a tile
//! kernel prefetches as it streams a decode-sized batch's weights.

use super::super::GgmlDType;
use super::super::blocks::BlockQ8s;
use super::super::packed::{Layout, R};
use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};

/// What a tile kernel prefetches as it reads each block column.
#[derive(Clone, Copy)]
pub(super) enum Ahead {
    /// Nothing: prefill reuses tiles from cache, and later passes read what the first fetched.
    None,
    /// A decode-sized batch streams the tile: its first pass fetches the next tile's column
    /// (this many bytes on) into L2 only, so that the tile any later passes re-read stays in
    /// L1. Measured on Zen 4 against fetching 2048 bytes on into L1 (the earlier choice),
    /// builds alternated 4 times: decode of Qwen2.5-0.5B 50 -> 62 t/s and of SmolLM2
    /// 179 -> 224 t/s, 8 batched tokens 165 -> 204 and 530 -> 680; two or four tiles on were
    /// no faster.
    NextTile(isize),
    /// One of a batch's later passes fetches its share of the next tile (this many bytes on):
    /// every `of`-th block column, from column `pass` on. See [`isa::prefetch_in_later_passes`].
    Share { d: isize, pass: usize, of: usize },
}

impl Ahead {
    /// What pass `pass` of `passes` over a tile prefetches when a decode-sized batch streams
    /// it (`next`, unless 0, is the distance to the tile this thread takes next); `later`:
    /// [`isa::prefetch_in_later_passes`].
    pub(super) fn of_pass(next: isize, pass: usize, passes: usize, later: bool) -> Ahead {
        match pass {
            _ if next == 0 => Ahead::None,
            0 if passes > 1 && later => Ahead::None,
            0 => Ahead::NextTile(next),
            p if later => Ahead::Share {
                d: next,
                pass: p - 1,
                of: passes - 1,
            },
            _ => Ahead::None,
        }
    }

    /// The distance to prefetch block column `b` at, if this pass fetches it.
    #[inline(always)]
    pub(super) fn fetches(self, b: usize) -> Option<isize> {
        match self {
            Ahead::NextTile(d) => Some(d),
            Ahead::Share { d, pass, of } if b % of == pass => Some(d),
            _ => None,
        }
    }
}

/// Issues `ahead`'s prefetches for the `bytes` of block column `b`, at `col`.
#[inline(always)]
pub(super) fn prefetch(ahead: Ahead, b: usize, col: *const u8, bytes: usize) {
    if let Some(d) = ahead.fetches(b) {
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetching never faults; the address is only a hint.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(col.wrapping_offset(d + off as isize).cast()) };
        }
    }
}

/// How a tile kernel's pass gets a block column's weight vectors: unpacked from the tile, the
/// same and also stored to a per-thread cache, or loaded from the cache a previous pass of the
/// same batch filled.
pub(super) const DIRECT: u8 = 0;
pub(super) const FILL: u8 = 1;
pub(super) const READ: u8 = 2;

/// Runs `f` on room for `vectors` unpacked weight vectors (`zero` fills new room) in this
/// thread's `buf`, or on a null pointer for a batch that keeps none: the buffer a batch's
/// passes over a tile share, one per vector type.
pub(super) fn with_unpacked<V: Copy + 'static>(
    buf: &'static std::thread::LocalKey<std::cell::RefCell<Vec<V>>>,
    vectors: Option<usize>,
    zero: V,
    f: impl FnOnce(*mut V),
) {
    match vectors {
        Some(n) => buf.with_borrow_mut(|b| {
            b.resize(n, zero);
            f(b.as_mut_ptr())
        }),
        None => f(std::ptr::null_mut()),
    }
}

/// Bytes of one activation block.
pub(super) const XB: usize = std::mem::size_of::<BlockQ8s>();

/// The 32-wide formats as a kernel's const parameter, with their block-column layout
/// (`packed::Layout`) as constants, so that the inner loops carry no format tests.
pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q5_0: u8 = 2;
pub(super) const Q5_1: u8 = 3;
pub(super) const Q8_0: u8 = 4;

pub(super) struct Fmt<const F: u8>;

impl<const F: u8> Fmt<F> {
    const LAYOUT: Layout = match Layout::of(match F {
        Q4_0 => GgmlDType::Q4_0,
        Q4_1 => GgmlDType::Q4_1,
        Q5_0 => GgmlDType::Q5_0,
        Q5_1 => GgmlDType::Q5_1,
        _ => GgmlDType::Q8_0,
    }) {
        Some(l) => l,
        None => panic!("a 32-wide packed format"),
    };
    pub(super) const MIN: bool = Self::LAYOUT.min;
    pub(super) const Q5: bool = Self::LAYOUT.q5;
    pub(super) const Q8: bool = F == Q8_0;
    pub(super) const M_AT: usize = Self::LAYOUT.m_at;
    pub(super) const MASKS_AT: usize = Self::LAYOUT.masks_at;
    pub(super) const VALUES_AT: usize = Self::LAYOUT.values_at;
    pub(super) const BYTES: usize = Self::LAYOUT.bytes;
    pub(super) const OFFSET: f32 = Self::LAYOUT.offset;

    /// Checks that `lay` is this format's layout and the lengths of a tile kernel's call for
    /// `tokens` tokens; the number of block columns.
    pub(super) fn columns(
        lay: &Layout,
        tile: &[u8],
        a: &[u8],
        arow: usize,
        tokens: usize,
    ) -> usize {
        let masks = Layout {
            high_bytes: false,
            ..*lay
        };
        assert_eq!(
            masks,
            Self::LAYOUT,
            "packed kernel: layout of another format"
        );
        let nb = tile.len() / Self::BYTES;
        assert!(
            tile.len() == nb * Self::BYTES && a.len() >= (tokens - 1) * arow + nb * XB,
            "packed kernel: lengths"
        );
        nb
    }
}

/// The format constant of a 32-wide layout.
pub(super) fn fmt_of(lay: &Layout) -> u8 {
    match (lay.min, lay.q5, lay.bytes - lay.values_at == 32 * R) {
        (_, _, true) => Q8_0,
        (true, true, _) => Q5_1,
        (true, false, _) => Q4_1,
        (false, true, _) => Q5_0,
        (false, false, _) => Q4_0,
    }
}

#[cfg(test)]
mod tests {
    use super::Ahead;

    /// However many passes a batch makes, and whichever pass fetches, each block column of the
    /// next tile is prefetched exactly once, and only when there is a next tile.
    #[test]
    fn a_batch_prefetches_each_column_of_the_next_tile_once() {
        for later in [false, true] {
            for passes in 1..=6 {
                for nb in [1, 3, 18, 28] {
                    for b in 0..nb {
                        let fetched = (0..passes)
                            .filter_map(|p| Ahead::of_pass(-4096, p, passes, later).fetches(b))
                            .collect::<Vec<_>>();
                        assert_eq!(
                            fetched,
                            [-4096],
                            "later {later}, {passes} passes, column {b}"
                        );
                        assert!(
                            (0..passes)
                                .all(|p| Ahead::of_pass(0, p, passes, later).fetches(b).is_none())
                        );
                    }
                }
                let first = Ahead::of_pass(64, 0, passes, later).fetches(0);
                assert_eq!(first.is_some(), passes == 1 || !later);
            }
        }
    }
}
