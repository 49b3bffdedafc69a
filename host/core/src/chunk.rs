//! Overlapping prompt-format chunks (reference `_get_chunks`, bagel `data.py`).
//!
//! For `n` items and `k` formats: `chunk = (n·(k−1)) div k`, `q = n − chunk`.
//! Format 0 gets items `[0, chunk)`; format `i ≥ 1` gets `[0, (i−1)·q) ∪ [i·q, n)`.
//! For k = 4 this is the reference exactly (every item in 3 of the 4 formats when
//! 4 | n; vectors in `../shared/vectors/chunk_vectors.json`); for general k every item
//! lands in k−1 formats when k | n. k = 1 renders everything in the one format.

/// How instructions are spread over the formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunking {
    /// The reference `_get_chunks` (default). When k ∤ n a few tail items land in
    /// k−2 or k formats instead of k−1.
    #[default]
    Reference,
    /// Split [0, n) into k near-equal parts (part j = [⌊jn/k⌋, ⌊(j+1)n/k⌋)); format i
    /// gets every part except part (i−1) mod k. Every item lands in exactly k−1 formats
    /// for any n; identical to `Reference` when k | n.
    Balanced,
}

/// Item indices per format under `chunking`.
///
/// The reference rule is defined for the reference's 4 formats; for any other k it can
/// leave items in no format (k = 2, odd n), so `Reference` with k ≠ 4 uses `Balanced`.
pub fn chunks(n: usize, k: usize, chunking: Chunking) -> Vec<Vec<usize>> {
    match chunking {
        Chunking::Reference if k == 4 => format_chunks(n, k),
        Chunking::Reference => balanced_chunks(n, k),
        Chunking::Balanced => balanced_chunks(n, k),
    }
}

/// [`Chunking::Balanced`].
pub fn balanced_chunks(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k <= 1 {
        return (0..k).map(|_| (0..n).collect()).collect();
    }
    let bound = |j: usize| j * n / k;
    (0..k)
        .map(|i| {
            let skip = (i + k - 1) % k;
            (0..bound(skip)).chain(bound(skip + 1)..n).collect()
        })
        .collect()
}

/// Item indices per format (reference chunking); `result.len() == k`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_is_reference_when_k_divides_n_and_exact_otherwise() {
        for k in 2..=5 {
            for n in 0..40 {
                let b = balanced_chunks(n, k);
                if n % k == 0 {
                    assert_eq!(b, format_chunks(n, k), "n={n} k={k}");
                }
                for item in 0..n {
                    assert_eq!(b.iter().filter(|c| c.contains(&item)).count(), k - 1, "n={n} k={k} item={item}");
                }
            }
        }
        // Hand-checked: n = 5, k = 4: parts [0,1) [1,2) [2,3) [3,5).
        assert_eq!(balanced_chunks(5, 4), vec![vec![0, 1, 2], vec![1, 2, 3, 4], vec![0, 2, 3, 4], vec![0, 1, 3, 4]]);
    }
}
