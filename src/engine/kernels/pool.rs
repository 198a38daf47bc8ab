//! A small persistent thread pool for the matmul kernels.
//!
//! Each decode step issues a few hundred matmuls of 10-100 µs, so a call must cost about a
//! microsecond of synchronisation: workers spin on a generation counter for a while after each
//! job and only then park on a condvar. The calling thread takes part in every job as worker 0
//! and never waits for a worker that has not started: work is split into chunks claimed from a
//! shared counter, and slots still open when the caller is done are closed. A caller that finds
//! the pool busy (another thread's job, or a nested call) runs its job alone.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(300);

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads a matmul uses, the caller included (at least 1).
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), Relaxed);
}

/// The number of threads a matmul uses: [`set_threads`], else `WARD_THREADS`, else the
/// number of available CPUs.
pub fn threads() -> usize {
    match THREADS.load(Relaxed) {
        0 => {
            let n = std::env::var("WARD_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1);
            THREADS.store(n, Relaxed);
            n
        }
        n => n,
    }
}

type Job = dyn Fn(usize) + Sync;

/// `Shared::slots` bit layout: open slots in the high half, running workers in the low half.
const OPEN: u64 = 1 << 32;
const RUNNING: u64 = OPEN - 1;

struct Shared {
    /// Bumped (under `Pool::lock`) to publish a new job; workers spin or sleep on it.
    generation: AtomicU64,
    /// The current job; written only while no worker can reach it (no open slot, none running).
    job: UnsafeCell<Option<*const Job>>,
    /// `open << 32 | running`: a worker takes part by turning an open slot into a running one;
    /// the caller closes the slots when it has finished, so a worker that wakes late skips the
    /// job instead of making the caller wait for it.
    slots: AtomicU64,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding `Pool::lock` while `slots == 0`, and
// read by a worker only while it holds a running slot, which the caller waits for.
unsafe impl Sync for Shared {}
// SAFETY: the raw job pointer is only dereferenced under the protocol above.
unsafe impl Send for Shared {}

struct Pool {
    shared: Arc<Shared>,
    /// Held by the thread dispatching a job; the value is the number of spawned workers.
    lock: Mutex<usize>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        shared: Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            slots: AtomicU64::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        }),
        lock: Mutex::new(0),
    })
}

/// Runs `f(i)` for participants `i` in `0..threads()`, the caller running `f(0)`, and returns
/// when all that started have finished. A worker that is not running yet when the caller is
/// done gets skipped, so `f` must not rely on every index being called: split the work with
/// [`Chunks`]. Falls back to running `f(0)` alone when the pool is busy.
pub fn run(f: &(dyn Fn(usize) + Sync)) {
    let n = threads();
    if n == 1 {
        return f(0);
    }
    let pool = pool();
    let mut spawned = match pool.lock.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return f(0),
    };
    while *spawned < n - 1 {
        let shared = pool.shared.clone();
        *spawned += 1;
        let seen = shared.generation.load(SeqCst);
        std::thread::Builder::new()
            .name(format!("ward-kernel-{}", *spawned))
            .spawn(move || worker(&shared, seen))
            .expect("spawn kernel worker");
    }
    let s = &*pool.shared;
    // SAFETY: we hold `pool.lock` and the previous job is over (`slots == 0`), so no worker
    // can read `job`. The 'static lifetime is confined to this call: `Close` closes the slots
    // and waits for running workers before we return, even if `f` panics.
    unsafe {
        let ptr: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
        *s.job.get() = Some(ptr);
    }
    s.slots.store((n as u64 - 1) * OPEN, Release);
    s.generation.fetch_add(1, SeqCst);
    if s.sleepers.load(SeqCst) > 0 {
        let _g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    struct Close<'a>(&'a Shared);
    impl Drop for Close<'_> {
        fn drop(&mut self) {
            self.0.slots.fetch_and(RUNNING, AcqRel);
            while self.0.slots.load(Acquire) != 0 {
                std::hint::spin_loop();
            }
        }
    }
    let close = Close(s);
    f(0);
    drop(close);
    if s.panicked.swap(false, Relaxed) {
        panic!("a kernel worker thread panicked");
    }
}

fn worker(s: &Shared, mut seen: u64) {
    loop {
        // Spin, then sleep, until a new generation is published.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.generation.load(Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.generation.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        seen = s.generation.load(Acquire);
        // Take an open slot, if any is left.
        let mut cur = s.slots.load(Acquire);
        while cur >= OPEN {
            match s
                .slots
                .compare_exchange_weak(cur, cur - OPEN + 1, AcqRel, Acquire)
            {
                Ok(_) => {
                    // SAFETY: the job was stored before the slots were opened (Release /
                    // Acquire through `slots`) and stays alive while we hold a running slot.
                    let job = unsafe { &*(*s.job.get()).expect("job published") };
                    let index = (cur / OPEN) as usize;
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index)))
                        .is_err()
                    {
                        s.panicked.store(true, Relaxed);
                    }
                    s.slots.fetch_sub(1, Release);
                    break;
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// A shared counter handing out chunk indices `0..n` to whichever thread asks first.
pub struct Chunks {
    next: AtomicUsize,
    n: usize,
}

impl Chunks {
    pub fn new(n: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            n,
        }
    }

    /// The next unclaimed chunk, if any.
    #[inline]
    pub fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Relaxed);
        (i < self.n).then_some(i)
    }
}

/// Work items `0..n` cut into one contiguous segment per participant: participant `who` takes
/// runs of its own segment's items from the front, in ascending order, and once that is empty
/// takes runs of the other segments' items from their backs, in descending order. Each thread
/// so walks contiguous memory in one direction, which its prefetches can follow, and the
/// threads still finish together: a run is a quarter of what its segment has left, so runs
/// shrink to single items at the end. Each segment's counters live on their own cache line.
/// (A claim is a locked instruction, which waits for the thread's earlier stores: runs keep
/// those waits to a few per thread and dispatch.)
pub struct Segments {
    segs: Box<[Segment]>,
}

/// The unclaimed items of one segment: `front | back << 32`.
#[repr(align(64))]
struct Segment(AtomicU64);

impl Segments {
    /// `n` items (below 2^32) in `parts` segments (at least one).
    pub fn new(n: usize, parts: usize) -> Self {
        let parts = parts.max(1) as u64;
        let n = u32::try_from(n).expect("Segments: fewer than 2^32 items") as u64;
        let segs = (0..parts)
            .map(|i| {
                Segment(AtomicU64::new(
                    (n * i / parts) | ((n * (i + 1) / parts) << 32),
                ))
            })
            .collect();
        Self { segs }
    }

    /// The next run of items for participant `who`, in the order to take them: ascending
    /// from the front of its own segment, or descending from the back of another's.
    #[inline]
    pub fn claim(&self, who: usize) -> Option<Run> {
        let own = who % self.segs.len();
        if let Some(r) = self.take(own, true) {
            return Some(r);
        }
        loop {
            // The segment with the most left.
            let (left, k) = self
                .segs
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let v = s.0.load(Relaxed);
                    (((v >> 32) as u32).saturating_sub(v as u32), k)
                })
                .max()?;
            if left == 0 {
                return None;
            }
            if let Some(r) = self.take(k, false) {
                return Some(r);
            }
        }
    }

    /// A run from the front or the back of segment `k`, if it has any items left.
    fn take(&self, k: usize, front: bool) -> Option<Run> {
        let s = &self.segs[k].0;
        let mut cur = s.load(Relaxed);
        loop {
            let (f, b) = (cur as u32, (cur >> 32) as u32);
            if f >= b {
                return None;
            }
            let m = (b - f).div_ceil(4);
            let (new, run) = if front {
                (cur + m as u64, f..f + m)
            } else {
                (cur - ((m as u64) << 32), b - m..b)
            };
            // Relaxed: the counters only partition the items; what the items write is
            // published by `run`'s join.
            match s.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => {
                    return Some(Run {
                        items: run.start as usize..run.end as usize,
                        forward: front,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Items claimed from [`Segments`]: `items`, to be taken in ascending order if `forward`, else
/// in descending order.
pub struct Run {
    pub items: std::ops::Range<usize>,
    pub forward: bool,
}

impl Run {
    /// The items in the order to take them.
    pub fn iter(&self) -> impl Iterator<Item = usize> + use<> {
        let (r, fwd) = (self.items.clone(), self.forward);
        r.clone()
            .filter(move |_| fwd)
            .chain(r.rev().filter(move |_| !fwd))
    }
}

#[cfg(test)]
mod tests {
    use super::Segments;

    #[test]
    fn segments_hand_out_every_item_once() {
        for (n, parts) in [(0, 2), (1, 2), (7, 2), (96, 2), (100, 3), (5, 8)] {
            let s = Segments::new(n, parts);
            let mut seen = vec![0u32; n];
            // Participant 1 takes its own segment, in ascending runs that shrink; then
            // participant 0 drains the rest: its own ascending, the others' descending.
            let (lo, hi) = (n * (1 % parts) / parts, n * (1 % parts + 1) / parts);
            let mut next = lo;
            let mut sizes = Vec::new();
            while next < hi {
                let r = s.claim(1 % parts).expect("own segment");
                assert!(r.forward && r.items.start == next, "own segment in order");
                sizes.push(r.items.len());
                next = r.items.end;
                r.iter().for_each(|i| seen[i] += 1);
            }
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            while let Some(r) = s.claim(0) {
                let order: Vec<usize> = r.iter().collect();
                assert_eq!(order.len(), r.items.len());
                assert!(order.windows(2).all(|w| (w[1] > w[0]) == r.forward));
                order.into_iter().for_each(|i| seen[i] += 1);
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "n={n} parts={parts}: {seen:?}"
            );
        }
    }

    #[test]
    fn segments_are_shared_by_racing_threads() {
        let n = 10_000;
        let s = Segments::new(n, 3);
        let seen: Vec<std::sync::atomic::AtomicU32> = (0..n)
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect();
        std::thread::scope(|sc| {
            for who in 0..4 {
                let (s, seen) = (&s, &seen);
                sc.spawn(move || {
                    while let Some(r) = s.claim(who) {
                        for i in r.iter() {
                            seen[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert!(
            seen.iter()
                .all(|c| c.load(std::sync::atomic::Ordering::Relaxed) == 1)
        );
    }
}
