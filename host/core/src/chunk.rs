//! Overlapping prompt-format chunks (reference `_get_chunks`, bagel `data.py`).
//!
//! For `n` items and `k` formats: `chunk = (n·(k−1)) div k`, `q = n − chunk`.
//! Format 0 gets items `[0, chunk)`; format `i ≥ 1` gets `[0, (i−1)·q) ∪ [i·q, n)`.
//! For k = 4 this is the reference exactly (every item in 3 of the 4 formats when
//! 4 | n; vectors in `../shared/vectors/chunk_vectors.json`); for general k every item
//! lands in k−1 formats when k | n. k = 1 renders everything in the one format.

/// Item indices per format; `result.len() == k`.
pub fn format_chunks(n: usize, k: usize) -> Vec<Vec<usize>> {
    match k {
        0 => Vec::new(),
        1 => vec![(0..n).collect()],
        _ => {
            let chunk = n * (k - 1) / k;
            let q = n - chunk;
            (0..k)
                .map(|i| {
                    if i == 0 {
                        (0..chunk).collect()
                    } else {
                        (0..((i - 1) * q).min(n)).chain((i * q).min(n)..n).collect()
                    }
                })
                .collect()
        }
    }
}
