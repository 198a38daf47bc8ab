//! The machine's memory read bandwidth, measured the way decode reads weights: `threads`
//! threads each streaming a contiguous share of a buffer several times larger than the last-level
//! cache. `ward bench --engine` compares its decode GB/s with this figure, so that the share of the
//! bound it reports holds for the machine it runs on (a constant would describe one machine only).
//! The buffer never takes more than a quarter of the free memory.

use std::time::Instant;

/// The smallest buffer measured, and the largest.
const MIN_BYTES: usize = 256 << 20;
const MAX_BYTES: usize = 1 << 30;

/// Timed passes over the buffer; the fastest counts (the others absorb interference).
const PASSES: usize = 3;

/// Read bandwidth in GB/s (10⁹ bytes) with `threads` threads, best of [`PASSES`] passes, or
/// `None` if the machine has too little memory free to measure it.
pub fn read_gbps(threads: usize) -> Option<f64> {
    let bytes = buffer_bytes(last_level_cache_bytes(), available_bytes())?;
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(bytes / 8).ok()?;
    // Written, not just allocated, so every page is resident before the timed reads.
    buf.extend((0..bytes / 8).map(|i| i as u64));
    let threads = threads.max(1);
    let share = buf.len().div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..PASSES {
        let start = Instant::now();
        let total = std::thread::scope(|s| {
            let parts: Vec<_> = buf
                .chunks(share)
                .map(|part| s.spawn(move || sum(part)))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().expect("bandwidth reader"))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    Some(best)
}

/// Four times the last-level cache, within [`MIN_BYTES`]..=[`MAX_BYTES`], and at most a
/// quarter of the memory available (`None` when that is under [`MIN_BYTES`]: a benchmark must
/// not push a serving machine into swap or the OOM killer).
fn buffer_bytes(llc: Option<usize>, available: Option<usize>) -> Option<usize> {
    let want = llc
        .map_or(MIN_BYTES, |c| c.saturating_mul(4))
        .clamp(MIN_BYTES, MAX_BYTES);
    match available {
        Some(a) if a / 4 < MIN_BYTES => None,
        Some(a) => Some(want.min(a / 4)),
        None => Some(want),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_bytes() -> Option<usize> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The largest cache Linux reports for CPU 0 (`/sys/devices/system/cpu/cpu0/cache`).
fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
        .filter_map(|s| parse_size(s.trim()))
        .max()
}

/// `"32768K"`, `"260M"`, `"512"` as bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let mul = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// A sum the compiler cannot drop, over eight independent lanes so that loads, not adds, set
/// the pace.
fn sum(x: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &v| a.wrapping_add(v));
    acc.iter().fold(tail, |a, &v| a.wrapping_add(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("260M"), Some(260 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn the_buffer_outgrows_the_cache_within_bounds() {
        let plenty = Some(64 << 30);
        assert_eq!(buffer_bytes(None, None), Some(MIN_BYTES));
        assert_eq!(buffer_bytes(Some(32 << 20), plenty), Some(MIN_BYTES));
        assert_eq!(buffer_bytes(Some(128 << 20), plenty), Some(512 << 20));
        assert_eq!(buffer_bytes(Some(260 << 20), plenty), Some(MAX_BYTES));
        // Never more than a quarter of the free memory, and nothing when that is too little.
        assert_eq!(
            buffer_bytes(Some(260 << 20), Some(2 << 30)),
            Some(512 << 20)
        );
        assert_eq!(buffer_bytes(Some(32 << 20), Some(512 << 20)), None);
    }

    #[test]
    fn available_memory_parses_from_meminfo() {
        let m = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(parse_mem_available(m), Some(20_480_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn the_sum_covers_every_element() {
        let x: Vec<u64> = (1..=21).collect();
        assert_eq!(sum(&x), 21 * 22 / 2);
    }

    #[test]
    fn a_measured_bandwidth_is_positive_and_finite() {
        let Some(g) = read_gbps(2) else {
            // Too little free memory to measure: nothing to check.
            assert!(available_bytes().is_some_and(|a| a / 4 < MIN_BYTES));
            return;
        };
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
