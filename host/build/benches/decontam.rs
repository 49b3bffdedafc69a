//! Decontamination benchmark (issue 5): embedding throughput and nearest-neighbour search,
//! on the real benchmark sets of examples/recipes/shared-data.toml (needs ../shared/data,
//! the built plugins and target/models/all-minilm-l6-v2).
//!
//! Run: `bench/decontam.sh` (this bench, then bench/decontam_reference.py with
//! sentence-transformers + faiss on the same texts and vectors). Alone:
//! `cargo bench -p bagel-build --bench decontam`.
//!
//! Prints one table; writes target/bench/decontam/{texts.json, bench_vectors.f32,
//! queries.f32, ours.json} for the reference script.
use bagel_build::{benchmark_items, BuildOptions, OnBadRow, OnPluginError, Recipe};
use bagel_decontam::cache::{text_key, EmbeddingCache};
use bagel_decontam::index::{NeighbourIndex, Vectors};
use bagel_train::embed::SentenceEmbedder;
use std::path::PathBuf;
use std::time::Instant;

/// Texts in the throughput sample.
const SAMPLE: usize = 2000;
/// Queries in the search timing.
const QUERIES: usize = 1000;

fn main() {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = std::env::var_os("BAGEL_SHARED_DATA").map(PathBuf::from).unwrap_or_else(|| ws.join("../shared/data"));
    let model = ws.join("target/models/all-minilm-l6-v2");
    if !data.is_dir() || !model.join("model.safetensors").exists() {
        eprintln!("skipping: needs {} and {} (cargo xtask fetch-models)", data.display(), model.display());
        return;
    }
    let recipe = Recipe::load(&ws.join("examples/recipes/shared-data.toml")).unwrap();
    let opts = BuildOptions {
        plugins: ws.join("target/plugins"),
        data: data.clone(),
        recipe,
        out: std::env::temp_dir(),
        seed: 42,
        formats: vec![],
        tokenizer: None,
        on_bad_row: OnBadRow::Skip,
        on_plugin_error: OnPluginError::Fail,
        limits: Default::default(),
        refusal: Default::default(),
        batch_size: 1024,
        jobs: 2,
        wasm_cache: None,
        use_stage_cache: false,
        chunking: Default::default(),
        progress: false,
        decontam: Default::default(),
        compression: Default::default(),
    };
    let items = benchmark_items(&opts).unwrap();
    let mut emb = SentenceEmbedder::<bagel_train::CpuInference>::load(&model, &Default::default()).unwrap();
    emb.batch_size = 64;
    let threads = emb.threads;

    // 1. Throughput: every k-th benchmark text (all sets, mixed lengths), embedded fresh.
    let step = (items.len() / SAMPLE).max(1);
    let sample: Vec<&str> = items.iter().step_by(step).take(SAMPLE).map(|i| i.text.as_str()).collect();
    let tokens: usize = sample.iter().map(|t| emb.token_ids(t).unwrap().len()).sum();
    let t = Instant::now();
    let _ = emb.embed(&sample).unwrap();
    let secs = t.elapsed().as_secs_f64();

    // 2. The full benchmark index: embeddings from the user cache (embedded once if missing).
    let key = emb.content_key().unwrap();
    let cache_dir = bagel_core::cache_root().map(|r| r.join("decontam"));
    let mut cache = EmbeddingCache::open(cache_dir.as_deref(), &key, emb.dim()).unwrap();
    let missing: Vec<&str> = items.iter().map(|i| i.text.as_str()).filter(|t| cache.get(&text_key(t)).is_none()).collect();
    if !missing.is_empty() {
        eprintln!("embedding {} benchmark texts not in the cache (once)…", missing.len());
        for (t, v) in missing.iter().zip(emb.embed(&missing).unwrap()) {
            cache.insert(text_key(t), v);
        }
        cache.flush().unwrap();
    }
    let dim = emb.dim();
    let vectors = Vectors { dim, data: items.iter().flat_map(|i| cache.get(&text_key(&i.text)).unwrap().to_vec()).collect() };

    // 3. Queries: real training questions (GSM8K train, OpenBookQA train), embedded.
    let mut qtexts = Vec::new();
    for (file, field) in [("sft/gsm8k/train.jsonl", "question"), ("sft/openbookqa/train.jsonl", "question_stem")] {
        for line in std::fs::read_to_string(data.join(file)).unwrap().lines().take(QUERIES / 2) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            qtexts.push(v[field].as_str().unwrap().to_string());
        }
    }
    let qrefs: Vec<&str> = qtexts.iter().map(|s| s.as_str()).collect();
    let queries = emb.embed(&qrefs).unwrap();
    let q: Vec<&[f32]> = queries.iter().map(|v| v.as_slice()).collect();

    let t = Instant::now();
    let ann = NeighbourIndex::ann(vectors.clone(), None).unwrap();
    let build_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ann_hits = ann.nearest_many(&q);
    let ann_secs = t.elapsed().as_secs_f64();
    let exact = NeighbourIndex::exact(vectors.clone());
    let t = Instant::now();
    let exact_hits = exact.nearest_many(&q);
    let exact_secs = t.elapsed().as_secs_f64();
    let agree = ann_hits.iter().zip(&exact_hits).filter(|(a, b)| a.map(|x| x.0) == b.map(|x| x.0)).count();

    println!("decontamination bench: all-MiniLM-L6-v2, {} benchmark texts indexed, {threads} threads", items.len());
    println!("| what | bagel (burn ndarray + usearch) |");
    println!("|---|---:|");
    println!("| embed {} texts ({} tokens) | {:.1} s = {:.0} texts/s, {:.0} tokens/s |", sample.len(), tokens, secs, sample.len() as f64 / secs, tokens as f64 / secs);
    println!("| usearch HNSW build, {} vectors | {:.2} s |", vectors.len(), build_secs);
    println!("| search {} queries, usearch (+ exact re-score of {} candidates) | {:.1} ms |", q.len(), bagel_decontam::index::ANN_CANDIDATES, ann_secs * 1000.0);
    println!("| search {} queries, exact scan | {:.1} ms |", q.len(), exact_secs * 1000.0);
    println!("| usearch top-1 = exact top-1 | {agree} / {} |", q.len());

    let out = ws.join("target/bench/decontam");
    std::fs::create_dir_all(&out).unwrap();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(out.join("bench_vectors.f32"), f32s(&vectors.data)).unwrap();
    std::fs::write(out.join("queries.f32"), f32s(&queries.concat())).unwrap();
    let texts = serde_json::json!({ "sample": sample, "queries": qtexts, "dim": dim });
    std::fs::write(out.join("texts.json"), texts.to_string()).unwrap();
    let ours = serde_json::json!({
        "embed_secs": secs, "sample": sample.len(), "tokens": tokens, "ann_ms": ann_secs * 1000.0, "exact_ms": exact_secs * 1000.0,
        "exact_top1": exact_hits.iter().map(|h| h.map(|x| x.0)).collect::<Vec<_>>(),
    });
    std::fs::write(out.join("ours.json"), ours.to_string()).unwrap();
}
