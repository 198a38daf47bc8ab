//! The machine's memory read bandwidth, measured the way decode reads weights: `threads`
//! threads each streaming a contiguous share of a buffer several times larger than the last-level
//! cache. `ward bench --engine` compares its decode GB/s with this figure, so that the share of the
//! bound it reports holds for the machine it runs on (a constant would describe one machine only).

use std::time::Instant;

/// The smallest buffer measured, and the largest.
const MIN_BYTES: usize = 256 << 20;
const MAX_BYTES: usize = 1 << 30;

/// Timed passes over the buffer; the fastest counts (the others absorb interference).
const PASSES: usize = 3;

/// Read bandwidth in GB/s (10⁹ bytes) with `threads` threads, best of [`PASSES`] passes, or
/// `None` if the buffer cannot be allocated.
pub fn read_gbps(threads: usize) -> Option<f64> {
    let bytes = buffer_bytes(last_level_cache_bytes());
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

/// Four times the last-level cache, within [`MIN_BYTES`]..=[`MAX_BYTES`].
fn buffer_bytes(llc: Option<usize>) -> usize {
    llc.map_or(MIN_BYTES, |c| c.saturating_mul(4))
        .clamp(MIN_BYTES, MAX_BYTES)
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
        assert_eq!(buffer_bytes(None), MIN_BYTES);
        assert_eq!(buffer_bytes(Some(32 << 20)), MIN_BYTES);
        assert_eq!(buffer_bytes(Some(128 << 20)), 512 << 20);
        assert_eq!(buffer_bytes(Some(260 << 20)), MAX_BYTES);
    }

    #[test]
    fn the_sum_covers_every_element() {
        let x: Vec<u64> = (1..=21).collect();
        assert_eq!(sum(&x), 21 * 22 / 2);
    }

    #[test]
    fn a_measured_bandwidth_is_positive_and_finite() {
        let g = read_gbps(2).expect("256 MiB buffer");
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
