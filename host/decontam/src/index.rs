//! Nearest benchmark neighbour of an embedding: an exact scan (`--decontam-exact`) or a
//! usearch HNSW index (Malkov & Yashunin 2018) with the cosine metric. Both return the
//! same thing, the neighbour with the highest cosine similarity; the ANN path re-scores
//! its top candidates exactly, so a neighbour it finds carries the same cosine as in the
//! exact scan.
use crate::{DecontamError, Result};
use std::path::Path;

/// Candidates the ANN search returns before exact re-scoring.
pub const ANN_CANDIDATES: usize = 8;

/// Unit vectors of the benchmark texts, row-major `[n, dim]`.
#[derive(Debug, Clone)]
pub struct Vectors {
    /// Width.
    pub dim: usize,
    /// `n · dim` values.
    pub data: Vec<f32>,
}

impl Vectors {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Vector `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Dot product with eight independent accumulators (vectorises; summation order fixed).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Exact nearest neighbour: (index, cosine), ties to the lower index.
pub fn exact_nearest(v: &Vectors, q: &[f32]) -> Option<(u32, f32)> {
    let mut best: Option<(u32, f32)> = None;
    for i in 0..v.len() {
        let c = dot(v.row(i), q);
        if best.is_none_or(|(_, b)| c > b) {
            best = Some((i as u32, c));
        }
    }
    best
}

/// Queries per SGEMM block of the exact scan.
pub const EXACT_BLOCK: usize = 64;

/// Exact nearest neighbours of many queries: scores = Q·Vᵀ per block of queries.
pub fn exact_nearest_many(v: &Vectors, queries: &[&[f32]]) -> Vec<Option<(u32, f32)>> {
    let (n, d) = (v.len(), v.dim);
    if n == 0 {
        return vec![None; queries.len()];
    }
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let blocks: Vec<&[&[f32]]> = queries.chunks(EXACT_BLOCK).collect();
    let mut out: Vec<Vec<Option<(u32, f32)>>> = vec![Vec::new(); blocks.len()];
    std::thread::scope(|s| {
        let per = blocks.len().div_ceil(threads).max(1);
        for (outs, bs) in out.chunks_mut(per).zip(blocks.chunks(per)) {
            s.spawn(move || {
                let mut q = Vec::new();
                let mut scores = vec![0f32; EXACT_BLOCK * n];
                for (o, block) in outs.iter_mut().zip(bs) {
                    let b = block.len();
                    q.clear();
                    for row in block.iter() {
                        q.extend_from_slice(row);
                    }
                    // scores[b×n] = q[b×d] · V[n×d]ᵀ (row-major; Vᵀ via strides).
                    // SAFETY: pointers and strides describe `q`, `v.data` and `scores`,
                    // which hold b·d, n·d and ≥ b·n f32s.
                    unsafe {
                        matrixmultiply::sgemm(b, d, n, 1.0, q.as_ptr(), d as isize, 1, v.data.as_ptr(), 1, d as isize, 0.0, scores.as_mut_ptr(), n as isize, 1);
                    }
                    *o = (0..b)
                        .map(|r| {
                            let row = &scores[r * n..(r + 1) * n];
                            let mut best = (0u32, row[0]);
                            for (i, &c) in row.iter().enumerate().skip(1) {
                                if c > best.1 {
                                    best = (i as u32, c);
                                }
                            }
                            // Report the cosine as the ANN path does (same summation order).
                            Some((best.0, dot(v.row(best.0 as usize), block[r])))
                        })
                        .collect();
                }
            });
        }
    });
    out.into_iter().flatten().collect()
}

/// The search structure.
pub enum Search {
    /// Brute-force scan over every benchmark vector.
    Exact,
    /// usearch HNSW (cosine), keys = vector indices.
    Ann(usearch::Index),
}

/// Benchmark vectors plus their search structure.
pub struct NeighbourIndex {
    /// The vectors.
    pub vectors: Vectors,
    /// How queries are answered.
    pub search: Search,
    /// Whether the ANN index was loaded from its cache file.
    pub cache_hit: bool,
}

fn ierr(path: &Path, e: impl std::fmt::Display) -> DecontamError {
    DecontamError::Index { path: path.to_path_buf(), message: e.to_string() }
}

impl NeighbourIndex {
    /// Exact scan.
    pub fn exact(vectors: Vectors) -> NeighbourIndex {
        NeighbourIndex { vectors, search: Search::Exact, cache_hit: false }
    }

    /// usearch index over `vectors`; loaded from `cache` when that file exists and holds
    /// the same number of vectors of the same width, otherwise built and saved there
    /// (temp file + rename). Errors: [`DecontamError::Index`] naming the file.
    pub fn ann(vectors: Vectors, cache: Option<&Path>) -> Result<NeighbourIndex> {
        let opts = usearch::IndexOptions {
            dimensions: vectors.dim,
            metric: usearch::MetricKind::Cos,
            quantization: usearch::ScalarKind::F32,
            connectivity: 0,
            expansion_add: 0,
            expansion_search: 0,
            multi: false,
        };
        let here = cache.unwrap_or(Path::new("<memory>"));
        let index = usearch::Index::new(&opts).map_err(|e| ierr(here, e))?;
        if let Some(path) = cache {
            if path.exists() && index.load(&path.to_string_lossy()).is_ok() && index.size() == vectors.len() && index.dimensions() == vectors.dim {
                return Ok(NeighbourIndex { vectors, search: Search::Ann(index), cache_hit: true });
            }
            index.reset().map_err(|e| ierr(path, e))?;
        }
        // One thread, in index order: the graph (and so every verdict) is the same on every
        // run; a multi-threaded build interleaves inserts differently each time.
        index.reserve(vectors.len().max(1)).map_err(|e| ierr(here, e))?;
        for i in 0..vectors.len() {
            index.add(i as u64, vectors.row(i)).map_err(|e| ierr(here, e))?;
        }
        if let Some(path) = cache {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| ierr(dir, e))?;
            }
            let tmp = bagel_core::atomic::AtomicPath::new(path);
            index.save(&tmp.path().to_string_lossy()).map_err(|e| ierr(path, e))?;
            tmp.commit().map_err(|e| ierr(path, e))?;
        }
        Ok(NeighbourIndex { vectors, search: Search::Ann(index), cache_hit: false })
    }

    /// Nearest benchmark vector of unit vector `q`: (index, cosine).
    pub fn nearest(&self, q: &[f32]) -> Option<(u32, f32)> {
        match &self.search {
            Search::Exact => exact_nearest(&self.vectors, q),
            Search::Ann(index) => {
                let m = match index.search(q, ANN_CANDIDATES) {
                    Ok(m) => m,
                    Err(e) => {
                        // Never skip a row: a failed ANN query falls back to the exact scan.
                        tracing::warn!("usearch search failed ({e}); exact scan for this query");
                        return exact_nearest(&self.vectors, q);
                    }
                };
                let mut best: Option<(u32, f32)> = None;
                for &k in &m.keys {
                    let c = dot(self.vectors.row(k as usize), q);
                    if best.is_none_or(|(bi, b)| c > b || (c == b && (k as u32) < bi)) {
                        best = Some((k as u32, c));
                    }
                }
                best
            }
        }
    }

    /// [`Self::nearest`] for many queries, spread over the available cores. The exact scan
    /// runs as blocks of [`EXACT_BLOCK`] queries × all vectors through an SGEMM
    /// (`matrixmultiply`), then an arg-max per query (ties to the lower index).
    pub fn nearest_many(&self, queries: &[&[f32]]) -> Vec<Option<(u32, f32)>> {
        if let Search::Exact = self.search {
            return exact_nearest_many(&self.vectors, queries);
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let per = queries.len().div_ceil(threads).max(1);
        let mut out = vec![None; queries.len()];
        std::thread::scope(|s| {
            for (chunk_out, chunk_q) in out.chunks_mut(per).zip(queries.chunks(per)) {
                s.spawn(move || {
                    for (o, q) in chunk_out.iter_mut().zip(chunk_q) {
                        *o = self.nearest(q);
                    }
                });
            }
        });
        out
    }
}
