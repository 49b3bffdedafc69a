//! Decontamination end to end (issue 5): GSM8K test questions, paraphrased by a rule
//! (whitespace and punctuation), fed through the real `gsm8k` source plugin, must be
//! removed (≥ 95 %) while the bundled real training sources lose ≤ 1 %; the usearch and
//! exact searches must give the same verdicts.
//!
//! The n-gram checks run everywhere. The embedding checks need all-MiniLM-L6-v2
//! (`cargo xtask fetch-models` → target/models/all-minilm-l6-v2; BAGEL_MINILM_DIR
//! overrides) and say they skipped without it.
use arrow_array::Array;
use bagel_build::{build, build_with, BuildOptions, BuildReport, OnBadRow, OnPluginError, Recipe};
use bagel_core::chunk::Chunking;
use bagel_core::refusal::RefusalMode;
use bagel_decontam::{DecontamOptions, Embedder};
use bagel_runtime::Limits;
use bagel_train::embed::SentenceEmbedder;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn opts(data: &Path, recipe: Recipe, out: &Path, decontam: DecontamOptions) -> BuildOptions {
    let plugins = std::env::var_os("BAGEL_PLUGINS_DIR").map(PathBuf::from).unwrap_or_else(|| ws().join("target/plugins"));
    assert!(plugins.is_dir(), "{} missing: run `cargo xtask build-plugins` first", plugins.display());
    BuildOptions {
        plugins,
        data: data.to_path_buf(),
        recipe,
        out: out.to_path_buf(),
        seed: 42,
        formats: vec![],
        tokenizer: None,
        on_bad_row: OnBadRow::Skip,
        on_plugin_error: OnPluginError::Fail,
        limits: Limits::default(),
        refusal: RefusalMode::Intended,
        batch_size: 256,
        jobs: 2,
        wasm_cache: None,
        use_stage_cache: false,
        chunking: Chunking::Reference,
        progress: false,
        decontam,
        compression: Default::default(),
    }
}

/// The paraphrase rule: commas dropped, `?` → ` ?`, two spaces after every sentence end,
/// a trailing newline.
fn paraphrase(q: &str) -> String {
    let s = q.replace(',', "").replace('?', " ?").replace(". ", ".  ");
    format!("{s}\n")
}

/// examples/data plus `paraphrased/test.jsonl`: the 200 bundled GSM8K test rows with
/// paraphrased questions.
fn data_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = ws().join("examples/data/benchmarks/gsm8k/test.jsonl");
    let mut out = String::new();
    for line in std::fs::read_to_string(src).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let q = paraphrase(v["question"].as_str().unwrap());
        v["question"] = serde_json::Value::String(q);
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::create_dir_all(d.path().join("paraphrased")).unwrap();
    std::fs::write(d.path().join("paraphrased/test.jsonl"), out).unwrap();
    d
}

/// The demo recipe (every bundled source, three benchmark slices), paths made absolute.
fn recipe() -> Recipe {
    let demo = std::fs::read_to_string(ws().join("examples/recipes/demo.toml")).unwrap();
    let mut r: Recipe = toml::from_str(&demo).unwrap();
    for s in r.sources.iter_mut().chain(r.benchmarks.iter_mut()) {
        for files in s.files.values_mut() {
            for f in files.iter_mut() {
                *f = ws().join("examples/data").join(&*f).display().to_string();
            }
        }
    }
    r
}

/// The demo's benchmarks, and the real `gsm8k` source plugin reading the paraphrased file.
fn contaminated_recipe(data: &Path) -> Recipe {
    let mut r = recipe();
    r.sources.retain(|s| s.plugin == "gsm8k");
    r.sources[0].files.insert("data".into(), vec![data.join("paraphrased/test.jsonl").display().to_string()]);
    r
}

fn removed_rows(out: &Path) -> Vec<HashMap<String, String>> {
    let f = std::fs::File::open(out.join("decontam-report.parquet")).unwrap();
    let mut rows = Vec::new();
    for batch in ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
        let batch = batch.unwrap();
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut row = HashMap::new();
            for (c, field) in schema.fields().iter().enumerate() {
                let col = batch.column(c);
                let v = if let Some(s) = col.as_any().downcast_ref::<arrow_array::StringArray>() {
                    s.value(i).to_string()
                } else if let Some(x) = col.as_any().downcast_ref::<arrow_array::Float32Array>() {
                    if x.is_null(i) { "null".into() } else { x.value(i).to_string() }
                } else {
                    let x = col.as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
                    if x.is_null(i) { "null".into() } else { x.value(i).to_string() }
                };
                row.insert(field.name().clone(), v);
            }
            rows.push(row);
        }
    }
    rows
}

fn ngram_only() -> DecontamOptions {
    DecontamOptions { embedding: false, ..Default::default() }
}

#[test]
fn paraphrased_gsm8k_test_is_removed_by_the_ngram_check() {
    let data = data_dir();
    let out = tempfile::tempdir().unwrap();
    let report = build(&opts(data.path(), contaminated_recipe(data.path()), out.path(), ngram_only())).unwrap();
    let d = report.decontamination.as_ref().expect("recipe lists benchmarks");
    assert_eq!(d.benchmarks["gsm8k"], 200);
    assert_eq!(d.benchmarks["arc_challenge"], 400, "two renderings per ARC item");
    assert_eq!(d.checked, 200);
    assert!(d.removed >= 190, "removed {} of 200", d.removed);
    assert_eq!(report.sources[0].decontaminated, d.removed);
    assert_eq!(report.sources[0].kept, 200 - d.removed);
    let rows = removed_rows(out.path());
    assert_eq!(rows.len() as u64, d.removed);
    // Row k of the paraphrased file is GSM8K test item k.
    let first = &rows[0];
    assert_eq!(first["source"], "gsm8k");
    assert_eq!(first["benchmark"], "gsm8k");
    assert_eq!(first["checks"], "ngram");
    assert_eq!(first["cosine"], "null", "no embedding check");
    assert!(first["checked_text"].ends_with("?\n") || first["checked_text"].ends_with(".\n") || first["checked_text"].contains("  "));
    for r in &rows {
        let k: usize = r["benchmark_item_id"].strip_prefix("gsm8k/").unwrap().parse().unwrap();
        assert!(k < 200);
        assert_eq!(paraphrase(&r["benchmark_text"]), r["checked_text"], "matched its own original");
    }
    // The SFT output no longer holds them: 200 − removed instructions × 3 formats.
    assert_eq!(report.instructions, 200 - d.removed);
}

#[test]
fn real_training_sources_lose_at_most_one_percent() {
    let data = data_dir();
    let out = tempfile::tempdir().unwrap();
    let report = build(&opts(data.path(), recipe(), out.path(), ngram_only())).unwrap();
    let d = report.decontamination.unwrap();
    assert!(d.checked > 1000, "{} checked", d.checked);
    assert!(d.removed * 100 <= d.checked, "removed {} of {}", d.removed, d.checked);
}

#[test]
fn no_benchmarks_no_stage_and_stale_report_removed() {
    let data = data_dir();
    let out = tempfile::tempdir().unwrap();
    build(&opts(data.path(), contaminated_recipe(data.path()), out.path(), ngram_only())).unwrap();
    assert!(out.path().join("decontam-report.parquet").exists());
    let mut r = contaminated_recipe(data.path());
    r.benchmarks.clear();
    let report = build(&opts(data.path(), r, out.path(), ngram_only())).unwrap();
    assert!(report.decontamination.is_none());
    assert_eq!(report.sources[0].kept, 200);
    assert!(!out.path().join("decontam-report.parquet").exists(), "a report of an earlier build is removed");
}

struct Minilm {
    inner: SentenceEmbedder<bagel_train::CpuInference>,
    key: String,
}

impl Embedder for Minilm {
    fn model_key(&self) -> &str {
        &self.key
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.inner.embed(texts).map_err(|e| e.to_string())
    }
}

fn minilm() -> Option<Minilm> {
    let dir = std::env::var_os("BAGEL_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| ws().join("target/models/all-minilm-l6-v2"));
    if !dir.join("model.safetensors").exists() {
        eprintln!("skipping: {} not found (run `cargo xtask fetch-models`)", dir.display());
        return None;
    }
    let inner = SentenceEmbedder::load(&dir, &Default::default()).unwrap();
    let key = inner.content_key().unwrap();
    Some(Minilm { inner, key })
}

fn embedding_build(e: &Minilm, data: &Path, recipe: Recipe, exact: bool, ngram: bool, cache: &Path) -> (BuildReport, Vec<HashMap<String, String>>) {
    let out = tempfile::tempdir().unwrap();
    let o = DecontamOptions { exact, ngram, cache_dir: Some(cache.to_path_buf()), ..Default::default() };
    let report = build_with(&opts(data, recipe, out.path(), o), Some(e)).unwrap();
    let rows = removed_rows(out.path());
    (report, rows)
}

#[test]
fn embedding_check_removes_paraphrases_and_ann_agrees_with_exact() {
    let Some(e) = minilm() else { return };
    let data = data_dir();
    let cache = tempfile::tempdir().unwrap();
    // Embedding check alone, usearch index.
    let (report, ann) = embedding_build(&e, data.path(), contaminated_recipe(data.path()), false, false, cache.path());
    let d = report.decontamination.unwrap();
    assert!(d.embedding && !d.ngram);
    assert!(d.removed >= 190, "embedding check alone removed {} of 200", d.removed);
    for r in &ann {
        let cos: f32 = r["cosine"].parse().unwrap();
        let ld: f64 = r["length_diff"].parse().unwrap();
        assert!(2.0 - 2.0 * cos <= 0.05 && ld <= 0.20, "{r:?}");
        assert_eq!(r["checks"], "embedding");
    }
    // Exact scan: the same rows, benchmark items and cosines; nothing re-embedded.
    let (report_x, exact) = embedding_build(&e, data.path(), contaminated_recipe(data.path()), true, false, cache.path());
    assert_eq!(report_x.decontamination.as_ref().unwrap().stats.embedded, 0, "embeddings come from the cache");
    let key = |r: &HashMap<String, String>| (r["id"].clone(), r["benchmark_item_id"].clone());
    let mut a: Vec<_> = ann.iter().map(key).collect();
    let mut x: Vec<_> = exact.iter().map(key).collect();
    a.sort();
    x.sort();
    assert_eq!(a, x, "usearch and exact verdicts agree");
    // Both checks on the real (bundled) training sources: ≤ 1 % lost, same verdicts.
    let (full, rows_ann) = embedding_build(&e, data.path(), recipe(), false, true, cache.path());
    let (_, rows_exact) = embedding_build(&e, data.path(), recipe(), true, true, cache.path());
    let d = full.decontamination.unwrap();
    assert!(d.removed * 100 <= d.checked, "removed {} of {}", d.removed, d.checked);
    let mut a: Vec<_> = rows_ann.iter().map(key).collect();
    let mut x: Vec<_> = rows_exact.iter().map(key).collect();
    a.sort();
    x.sort();
    assert_eq!(a, x);
}
