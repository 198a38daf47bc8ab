//! A small persistent thread pool for the matmul kernels.
//!
//! Each decode step issues a few hundred matmuls of 10-100 µs, so a call must cost about a
//! microsecond of synchronisation: workers spin on a generation counter for a while after each
//! job and only then park on a condvar. The calling thread takes part in every job as worker 0.
//! A caller that finds the pool busy (another thread's job, or a nested call) runs its job
//! inline instead of waiting.

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

struct Shared {
    /// `generation << 16 | threads`: bumped (under `Pool::lock`) to publish a job that
    /// `threads` threads take part in, the caller included.
    state: AtomicU64,
    /// The current job; written only while no worker is reading it.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers still running the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding `Pool::lock` while `pending == 0`,
// and read by workers only between the generation bump and their `pending` decrement.
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
            state: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        }),
        lock: Mutex::new(0),
    })
}

/// Runs `f(i)` for `i` in `0..threads()` on distinct threads (the caller runs `f(0)`), and
/// returns when all have finished. Falls back to calling them one after the other on this
/// thread when the pool is busy.
pub fn run(f: &(dyn Fn(usize) + Sync)) {
    let n = threads();
    if n == 1 {
        return f(0);
    }
    let pool = pool();
    let mut spawned = match pool.lock.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return (0..n).for_each(f),
    };
    while *spawned < n - 1 {
        let shared = pool.shared.clone();
        let index = *spawned + 1;
        std::thread::Builder::new()
            .name(format!("ward-kernel-{index}"))
            .spawn(move || worker(&shared, index))
            .expect("spawn kernel worker");
        *spawned += 1;
    }
    let s = &*pool.shared;
    // SAFETY: we hold `pool.lock` and the previous job finished (`pending == 0`), so no
    // worker reads `job`. The 'static lifetime is a lie confined to this call: we wait for
    // every worker (even if `f` panics here, see `Wait`) before returning.
    unsafe {
        let ptr: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
        *s.job.get() = Some(ptr);
    }
    s.pending.store(n - 1, Relaxed);
    let generation = (s.state.load(Relaxed) >> 16) + 1;
    s.state.store(generation << 16 | n as u64, SeqCst);
    if s.sleepers.load(SeqCst) > 0 {
        let _g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    struct Wait<'a>(&'a Shared);
    impl Drop for Wait<'_> {
        fn drop(&mut self) {
            let mut spins = 0u32;
            while self.0.pending.load(Acquire) != 0 {
                spins += 1;
                if spins < 1 << 16 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
    let wait = Wait(s);
    f(0);
    drop(wait);
    if s.panicked.swap(false, Relaxed) {
        panic!("a kernel worker thread panicked");
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = s.state.load(SeqCst);
    loop {
        // Spin, then park, until a new generation is published.
        let start = Instant::now();
        let mut spins = 0u32;
        let state = loop {
            let state = s.state.load(Acquire);
            if state != seen {
                break state;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.state.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break s.state.load(Acquire);
            }
            std::hint::spin_loop();
        };
        seen = state;
        if index < (state & 0xFFFF) as usize {
            // SAFETY: the job was published before the generation bump we observed and stays
            // alive until we decrement `pending`.
            let job = unsafe { (*s.job.get()).expect("job published") };
            // SAFETY: see above.
            let job = unsafe { &*job };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index))).is_err() {
                s.panicked.store(true, Relaxed);
            }
            s.pending.fetch_sub(1, Release);
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
        Self { next: AtomicUsize::new(0), n }
    }

    /// The next unclaimed chunk, if any.
    #[inline]
    pub fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Relaxed);
        (i < self.n).then_some(i)
    }
}
