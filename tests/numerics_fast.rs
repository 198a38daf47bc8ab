//! `WARD_NUMERICS=fast`: the packed 32-wide kernels in ward's own summation order agree with the
//! unpacked kernels to rounding (its own process, since the order is chosen once per process).

use ward::engine::kernels::{self, GgmlDType, PackedMatrix, QMatrix};

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

/// A `rows x cols` matrix of `dtype` blocks with small random scales.
fn matrix(dtype: GgmlDType, rows: usize, cols: usize) -> Vec<u8> {
    let (size, scales): (usize, &[usize]) = match dtype {
        GgmlDType::Q4_1 => (20, &[0, 2]),
        GgmlDType::Q5_0 => (22, &[0]),
        GgmlDType::Q8_0 => (34, &[0]),
        _ => unreachable!(),
    };
    let mut data = bytes(rows * cols / 32 * size, 7);
    for (i, block) in data.chunks_exact_mut(size).enumerate() {
        for &at in scales {
            let v = half::f16::from_f32(0.01 + (i % 7) as f32 * 0.003);
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    data
}

#[test]
fn fast_order_agrees_with_the_unpacked_kernels() {
    // SAFETY: set before any kernel runs, in this test binary's only test.
    unsafe { std::env::set_var("WARD_NUMERICS", "fast") };
    let (rows, cols) = (48, 576);
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
        let data = matrix(dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        let Some(p) = PackedMatrix::new(&w) else {
            return; // no packed kernel on this CPU: nothing to test
        };
        for n in [1usize, 3, 8, 19] {
            let x: Vec<f32> = bytes(n * cols, n as u64)
                .iter()
                .map(|&b| (b as f32 - 127.5) / 64.0)
                .collect();
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            kernels::matmul(&w, &x, n, &mut a);
            kernels::matmul_packed(&p, &x, n, &mut b);
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                    "{dtype:?} n={n} #{i}: {a} vs {b}"
                );
            }
        }
    }
}
