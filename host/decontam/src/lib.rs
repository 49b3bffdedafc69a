//! Decontamination for `bagel build`: remove training rows that are near-copies of
//! benchmark test items.
//!
//! Two checks, each optional:
//! - **Embedding** (the Python original's rule, SOURCES.md §6.2): the checked text's
//!   unit-length sentence embedding is compared with its single nearest benchmark
//!   neighbour; the row is flagged when the squared L2 distance is ≤ `max_l2sq` (default
//!   0.05; on unit vectors ‖a−b‖² = 2 − 2·cos, so cosine ≥ 0.975) **and** the relative
//!   length difference |len(row) − len(benchmark)| / len(row), in characters, is ≤
//!   `max_len_diff` (default 0.20). The neighbour comes from a usearch HNSW index
//!   ([`index`]) or, with `exact`, from a brute-force scan.
//! - **n-gram** ([`ngram`]): a shared lower-cased word 13-gram (GPT-3, lm-evaluation-harness).
//!
//! Embeddings come from an [`Embedder`] (bagel's burn BERT, wired in by the binary) and are
//! cached on disk per model and text hash ([`cache`]); the ANN index is cached per model
//! and benchmark content hash.
#![deny(missing_docs)]

pub mod cache;
pub mod index;
pub mod ngram;

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Instant;

/// Errors of the decontamination stage.
#[derive(Debug, thiserror::Error)]
pub enum DecontamError {
    /// The embedding model failed on some texts.
    #[error("embedding model {model}: {message}")]
    Embed {
        /// Model key or directory.
        model: String,
        /// What went wrong.
        message: String,
    },
    /// The usearch index could not be built, saved or loaded.
    #[error("decontamination index {path}: {message}")]
    Index {
        /// Index file (or `<memory>`).
        path: PathBuf,
        /// usearch's message.
        message: String,
    },
    /// A cache file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T, E = DecontamError> = std::result::Result<T, E>;

/// A sentence-embedding model.
pub trait Embedder: Sync {
    /// Identifies the model and its settings (a content hash); part of every cache key.
    fn model_key(&self) -> &str;
    /// Embedding width.
    fn dim(&self) -> usize;
    /// Unit-length embeddings of `texts`, in order. Errors: a message naming the cause.
    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String>;
}

/// One benchmark text to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchItem {
    /// Benchmark name (`gsm8k`, `mmlu`, …).
    pub benchmark: String,
    /// Item id within the benchmark.
    pub id: String,
    /// The indexed text.
    pub text: String,
}

/// Settings of the decontamination stage.
#[derive(Debug, Clone, PartialEq)]
pub struct DecontamOptions {
    /// Run the embedding check.
    pub embedding: bool,
    /// Run the n-gram check.
    pub ngram: bool,
    /// Flag when the nearest neighbour's squared L2 distance is ≤ this (unit vectors).
    pub max_l2sq: f32,
    /// … and the relative character-length difference is ≤ this.
    pub max_len_diff: f64,
    /// n-gram window (words).
    pub ngram_size: usize,
    /// n-grams held by more than this many benchmark items are boilerplate and ignored
    /// (0: use every n-gram, the reference rule).
    pub ngram_max_items: usize,
    /// Brute-force search instead of usearch.
    pub exact: bool,
    /// Texts per call to the embedder (progress granularity, cache flushes).
    pub embed_chunk: usize,
    /// Cache directory for embeddings and the ANN index (None: no disk cache).
    pub cache_dir: Option<PathBuf>,
}

impl Default for DecontamOptions {
    fn default() -> Self {
        DecontamOptions { embedding: true, ngram: true, max_l2sq: 0.05, max_len_diff: 0.20, ngram_size: 13, ngram_max_items: 10, exact: false, embed_chunk: 1024, cache_dir: None }
    }
}

/// What the checks found for one training text.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Nearest benchmark item by embedding, its cosine and the relative length
    /// difference (None when the embedding check is off).
    pub nearest: Option<(u32, f32, f64)>,
    /// The embedding rule fired.
    pub by_embedding: bool,
    /// First benchmark item sharing an n-gram (None when the check is off or nothing matched).
    pub by_ngram: Option<u32>,
}

impl Verdict {
    /// Whether any check fired.
    pub fn flagged(&self) -> bool {
        self.by_embedding || self.by_ngram.is_some()
    }
    /// The benchmark item the removal is attributed to: the embedding neighbour when that
    /// check fired, else the n-gram match.
    pub fn item(&self) -> Option<u32> {
        if self.by_embedding { self.nearest.map(|n| n.0) } else { self.by_ngram }
    }
}

/// Counters and timings (seconds) of one run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecontamStats {
    /// Benchmark texts indexed.
    pub benchmark_texts: u64,
    /// Training texts checked.
    pub checked: u64,
    /// Texts embedded now (benchmark + training).
    pub embedded: u64,
    /// Texts whose embedding came from the cache.
    pub embedding_cache_hits: u64,
    /// Whether the ANN index came from its cache file.
    pub index_cache_hit: bool,
    /// Seconds embedding.
    pub seconds_embed: f64,
    /// Seconds building/loading the index.
    pub seconds_index: f64,
    /// Seconds searching (nearest neighbours and n-grams).
    pub seconds_search: f64,
}

/// The relative length difference |len(row) − len(bench)| / len(row) in characters
/// (infinite for an empty row).
pub fn len_diff(row: &str, bench: &str) -> f64 {
    let (a, b) = (row.chars().count() as f64, bench.chars().count() as f64);
    if a == 0.0 { f64::INFINITY } else { (a - b).abs() / a }
}

/// The benchmark side, ready to check training texts.
pub struct Decontaminator<'e> {
    items: Vec<BenchItem>,
    opts: DecontamOptions,
    embedder: Option<&'e dyn Embedder>,
    cache: Option<cache::EmbeddingCache>,
    index: Option<index::NeighbourIndex>,
    ngrams: Option<ngram::NgramIndex>,
    /// Counters so far.
    pub stats: DecontamStats,
}

impl<'e> Decontaminator<'e> {
    /// Index `items`. The embedding check needs `embedder`; without one it is switched
    /// off. Errors: embedding failures, unreadable or unwritable cache files.
    pub fn new(items: Vec<BenchItem>, embedder: Option<&'e dyn Embedder>, opts: DecontamOptions) -> Result<Decontaminator<'e>> {
        let stats = DecontamStats { benchmark_texts: items.len() as u64, ..Default::default() };
        let t = Instant::now();
        let ngrams = opts.ngram.then(|| {
            let mut ix = ngram::NgramIndex::new(opts.ngram_size, opts.ngram_max_items);
            for (i, it) in items.iter().enumerate() {
                ix.add(i as u32, &it.text);
            }
            ix
        });
        let embedder = if opts.embedding { embedder } else { None };
        let mut me = Decontaminator { items, opts, embedder, cache: None, index: None, ngrams, stats };
        me.stats.seconds_index = t.elapsed().as_secs_f64();
        if let Some(e) = me.embedder {
            me.cache = Some(cache::EmbeddingCache::open(me.opts.cache_dir.as_deref(), &short(e.model_key()), e.dim())?);
            let texts: Vec<String> = me.items.iter().map(|i| i.text.clone()).collect();
            let vecs = me.embed_all(&texts)?;
            let t = Instant::now();
            let vectors = index::Vectors { dim: e.dim(), data: vecs.into_iter().flatten().collect() };
            me.index = Some(if me.opts.exact {
                index::NeighbourIndex::exact(vectors)
            } else {
                let mut h = Sha256::new();
                h.update(format!("usearch {} cos f32 {}\n", usearch::version(), e.model_key()));
                for it in &me.items {
                    h.update(format!("{}\0{}\0{}\0", it.benchmark, it.id, it.text));
                }
                let key = hex::encode(&h.finalize()[..16]);
                let path = me.opts.cache_dir.as_ref().map(|d| d.join(format!("index-{key}.usearch")));
                index::NeighbourIndex::ann(vectors, path.as_deref())?
            });
            me.stats.index_cache_hit = me.index.as_ref().is_some_and(|i| i.cache_hit);
            me.stats.seconds_index += t.elapsed().as_secs_f64();
        }
        Ok(me)
    }

    /// The indexed benchmark texts.
    pub fn items(&self) -> &[BenchItem] {
        &self.items
    }

    /// Whether the embedding check runs (it is off when no embedder was given).
    pub fn embedding_on(&self) -> bool {
        self.embedder.is_some()
    }

    fn embed_all(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let e = self.embedder.expect("embedder present");
        let cache = self.cache.as_mut().expect("cache open");
        let keys: Vec<cache::TextKey> = texts.iter().map(|t| cache::text_key(t)).collect();
        let mut missing: Vec<usize> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            if cache.get(k).is_none() && seen.insert(*k) {
                missing.push(i);
            }
        }
        self.stats.embedding_cache_hits += (texts.len() - missing.len()) as u64;
        let t = Instant::now();
        let mut done = 0usize;
        for chunk in missing.chunks(self.opts.embed_chunk.max(1)) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            let out = e.embed(&batch).map_err(|message| DecontamError::Embed { model: e.model_key().to_string(), message })?;
            if out.len() != batch.len() || out.iter().any(|v| v.len() != e.dim()) {
                return Err(DecontamError::Embed { model: e.model_key().to_string(), message: "wrong number or width of embeddings".into() });
            }
            for (&i, v) in chunk.iter().zip(out) {
                cache.insert(keys[i], v);
            }
            cache.flush()?;
            self.stats.embedded += chunk.len() as u64;
            done += chunk.len();
            tracing::info!("decontamination: embedded {done} of {} new texts", missing.len());
        }
        self.stats.seconds_embed += t.elapsed().as_secs_f64();
        Ok(keys.iter().map(|k| cache.get(k).expect("just embedded").to_vec()).collect())
    }

    /// Check training texts; one verdict per text, in order.
    pub fn check(&mut self, texts: &[String]) -> Result<Vec<Verdict>> {
        self.stats.checked += texts.len() as u64;
        let nearest: Vec<Option<(u32, f32)>> = if self.embedder.is_some() {
            let vecs = self.embed_all(texts)?;
            let t = Instant::now();
            let q: Vec<&[f32]> = vecs.iter().map(|v| v.as_slice()).collect();
            let n = self.index.as_ref().expect("index built").nearest_many(&q);
            self.stats.seconds_search += t.elapsed().as_secs_f64();
            n
        } else {
            vec![None; texts.len()]
        };
        let t = Instant::now();
        let out = texts
            .iter()
            .zip(nearest)
            .map(|(text, near)| {
                let nearest = near.map(|(i, cos)| (i, cos, len_diff(text, &self.items[i as usize].text)));
                let by_embedding = nearest.is_some_and(|(_, cos, ld)| 2.0 - 2.0 * cos <= self.opts.max_l2sq && ld <= self.opts.max_len_diff);
                let by_ngram = self.ngrams.as_ref().and_then(|g| g.check(text));
                Verdict { nearest, by_embedding, by_ngram }
            })
            .collect();
        self.stats.seconds_search += t.elapsed().as_secs_f64();
        Ok(out)
    }
}

/// File-name form of a model key: a readable prefix (≤ 40 safe characters) and 16 hex
/// digits of sha256 over the whole key, so two keys never share a file.
fn short(key: &str) -> String {
    let prefix: String = key.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(40).collect();
    format!("{prefix}-{}", hex::encode(&Sha256::digest(key.as_bytes())[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy embedder: bag of letters a–h, normalised. Deterministic, hand-checkable.
    struct Letters;
    impl Embedder for Letters {
        fn model_key(&self) -> &str {
            "letters-v1"
        }
        fn dim(&self) -> usize {
            8
        }
        fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
            Ok(texts
                .iter()
                .map(|t| {
                    let mut v = vec![0f32; 8];
                    for c in t.chars() {
                        if ('a'..='h').contains(&c) {
                            v[(c as u8 - b'a') as usize] += 1.0;
                        }
                    }
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter().map(|x| x / n).collect()
                })
                .collect())
        }
    }

    fn items() -> Vec<BenchItem> {
        ["aaaa bbbb", "cccc dddd", "eeee ffff gggg"]
            .iter()
            .enumerate()
            .map(|(i, t)| BenchItem { benchmark: "toy".into(), id: format!("toy/{i}"), text: t.to_string() })
            .collect()
    }

    #[test]
    fn embedding_rule_uses_l2_and_length() {
        let opts = DecontamOptions { ngram: false, exact: true, ..Default::default() };
        let mut d = Decontaminator::new(items(), Some(&Letters), opts).unwrap();
        let v = d.check(&["bbbb aaaa".into(), "aaaa bbbb aaaa bbbb".into(), "aaaa bbbc".into(), "hhhh".into()]).unwrap();
        // Same letters, same length: cosine 1, length diff 0.
        assert!(v[0].by_embedding && v[0].nearest.unwrap().0 == 0);
        // Same direction but twice as long: |19 − 9| / 19 = 0.526 > 0.20.
        let (i, cos, ld) = v[1].nearest.unwrap();
        assert_eq!(i, 0);
        assert!((cos - 1.0).abs() < 1e-6 && (ld - 10.0 / 19.0).abs() < 1e-9 && !v[1].by_embedding);
        // a4 b3 c1 vs a4 b4: cos = (16+12)/(sqrt(26)·sqrt(32)) = 0.97073, L2² = 0.0585 > 0.05.
        let (_, cos, _) = v[2].nearest.unwrap();
        assert!((cos - 0.970_725).abs() < 1e-5, "{cos}");
        assert!(!v[2].by_embedding);
        assert!(!v[3].flagged());
    }

    #[test]
    fn ann_and_exact_agree_and_cache_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let many: Vec<BenchItem> = (0..300)
            .map(|i| BenchItem { benchmark: "toy".into(), id: i.to_string(), text: format!("{}{}{}", "a".repeat(i % 7 + 1), "c".repeat(i % 11 + 1), "g".repeat(i % 5 + 1)) })
            .collect();
        let queries: Vec<String> = (0..100).map(|i| format!("{}{}{}x", "a".repeat(i % 7 + 1), "c".repeat(i % 11 + 1), "g".repeat(i % 5 + 2))).collect();
        let opts = DecontamOptions { ngram: false, cache_dir: Some(dir.path().into()), ..Default::default() };
        let mut ann = Decontaminator::new(many.clone(), Some(&Letters), opts.clone()).unwrap();
        assert!(!ann.stats.index_cache_hit);
        assert_eq!(ann.stats.embedded, 300, "cold cache: every distinct benchmark text is embedded");
        let a = ann.check(&queries).unwrap();
        let mut exact = Decontaminator::new(many.clone(), Some(&Letters), DecontamOptions { exact: true, ..opts.clone() }).unwrap();
        assert_eq!(exact.stats.embedded, 0, "warm cache: nothing re-embedded");
        let e = exact.check(&queries).unwrap();
        let mut same = 0;
        for (k, (x, y)) in a.iter().zip(&e).enumerate() {
            let (xa, ya) = (x.nearest.unwrap().1, y.nearest.unwrap().1);
            assert!(xa <= ya + 1e-6, "query {k}: the exact scan finds the maximum ({xa} vs {ya})");
            same += usize::from((xa - ya).abs() < 1e-6);
            assert_eq!(x.by_embedding, y.by_embedding, "query {k}: same verdict");
        }
        assert!(same >= 98, "usearch found the exact best neighbour for {same} of 100 queries");
        let again = Decontaminator::new(many, Some(&Letters), opts).unwrap();
        assert!(again.stats.index_cache_hit, "index loaded from its cache file");
    }

    #[test]
    fn ngram_check_and_attribution() {
        let opts = DecontamOptions { embedding: false, ngram_size: 2, ..Default::default() };
        let mut d = Decontaminator::new(items(), Some(&Letters), opts).unwrap();
        assert!(!d.embedding_on());
        let v = d.check(&["x FFFF, gggg y".into(), "gggg ffff".into()]).unwrap();
        assert_eq!(v[0].by_ngram, Some(2));
        assert_eq!(v[0].item(), Some(2));
        assert!(!v[1].flagged(), "word order matters");
    }
}
