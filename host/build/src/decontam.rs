//! The decontamination stage of `bagel build` (between dedup and prompt formatting).
//!
//! 1. Every `[[benchmark]]` entry of the recipe runs as a source plugin; its text records
//!    (or the first human turn of its conversations, or the prompt of DPO pairs) become
//!    [`BenchItem`]s: benchmark = the record label, item id = the record key.
//! 2. Each training record's **checked text** — the DPO prompt, else the first human turn;
//!    plain-text records are skipped — goes through [`Decontaminator::check`].
//! 3. A flagged id removes every record sharing it. Each removed record becomes a row of
//!    `decontam-report.parquet`: `id, source, checked_text, benchmark, benchmark_item_id,
//!    benchmark_text, cosine (f32, null without the embedding check), length_diff (f64,
//!    null likewise), checks` (`embedding`, `ngram`, `embedding+ngram`, or `shared-id` for
//!    a record removed only because another record with its id was flagged).
use crate::error::Result;
use crate::report::DecontamReport;
use crate::write::write_batch_parquet;
use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray};
use bagel_core::{Payload, Record, Role};
use bagel_decontam::{BenchItem, DecontamOptions, Decontaminator, Embedder};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// File name of the per-row report.
pub const REPORT_FILE: &str = "decontam-report.parquet";

/// The text a record is checked by: the DPO prompt, else the first human turn.
pub fn checked_text(p: &Payload) -> Option<&str> {
    match p {
        Payload::Dpo(d) => Some(d.prompt.as_str()),
        Payload::Conversation(turns) => turns.iter().find(|t| t.from == Role::Human).map(|t| t.value.as_str()),
        Payload::Text(_) => None,
    }
}

/// The text a benchmark record contributes to the index.
pub fn bench_text(p: &Payload) -> Option<&str> {
    match p {
        Payload::Text(t) => Some(t.as_str()),
        other => checked_text(other),
    }
}

/// One removed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Removed {
    /// Index of the record in the input `records`.
    pub index: usize,
    /// Row id (uuid5 of the key).
    pub id: String,
    /// Source label.
    pub source: String,
    /// Checked text (empty for a plain-text record removed by a shared id).
    pub checked_text: String,
    /// Benchmark name.
    pub benchmark: String,
    /// Benchmark item id.
    pub item_id: String,
    /// Benchmark text.
    pub bench_text: String,
    /// Cosine to the nearest benchmark text.
    pub cosine: Option<f32>,
    /// Relative length difference to it.
    pub length_diff: Option<f64>,
    /// Which check(s) fired.
    pub checks: String,
}

/// Run the checks over `records`; returns the kept records, the removed ones and the summary.
pub fn decontaminate(records: Vec<Record>, items: Vec<BenchItem>, embedder: Option<&dyn Embedder>, opts: &DecontamOptions) -> Result<(Vec<Record>, Vec<Removed>, DecontamReport)> {
    let mut benchmarks = BTreeMap::new();
    for it in &items {
        *benchmarks.entry(it.benchmark.clone()).or_insert(0u64) += 1;
    }
    let mut d = Decontaminator::new(items, embedder, opts.clone())?;
    let checked: Vec<usize> = (0..records.len()).filter(|&i| checked_text(&records[i].payload).is_some()).collect();
    let texts: Vec<String> = checked.iter().map(|&i| checked_text(&records[i].payload).unwrap_or_default().to_string()).collect();
    let verdicts = d.check(&texts)?;
    let mut flagged: HashMap<String, usize> = HashMap::new(); // id → index into `verdicts`
    for (k, v) in verdicts.iter().enumerate() {
        if v.flagged() {
            flagged.entry(records[checked[k]].id.clone()).or_insert(k);
        }
    }
    let verdict_of: HashMap<usize, usize> = checked.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let mut kept = Vec::with_capacity(records.len());
    let mut removed = Vec::new();
    let mut report = DecontamReport {
        benchmarks,
        embedding: d.embedding_on(),
        model: embedder.filter(|_| opts.embedding).map(|e| e.model_key().to_string()),
        ngram: opts.ngram,
        exact: opts.exact,
        max_l2sq: opts.max_l2sq,
        max_len_diff: opts.max_len_diff,
        ngram_size: opts.ngram_size,
        ngram_max_items: opts.ngram_max_items,
        checked: texts.len() as u64,
        ..Default::default()
    };
    for (i, r) in records.into_iter().enumerate() {
        let Some(&fk) = flagged.get(&r.id) else {
            kept.push(r);
            continue;
        };
        let own = verdict_of.get(&i).map(|&k| &verdicts[k]).filter(|v| v.flagged());
        let v = own.unwrap_or(&verdicts[fk]);
        let checks = match own {
            None => "shared-id".to_string(),
            Some(v) => match (v.by_embedding, v.by_ngram.is_some()) {
                (true, true) => "embedding+ngram".into(),
                (true, false) => "embedding".into(),
                _ => "ngram".into(),
            },
        };
        let item = &d.items()[v.item().expect("a flagged verdict names an item") as usize];
        *report.by_source.entry(r.source.clone()).or_default() += 1;
        *report.by_benchmark.entry(item.benchmark.clone()).or_default() += 1;
        *report.by_check.entry(checks.clone()).or_default() += 1;
        removed.push(Removed {
            index: i,
            id: r.id.clone(),
            source: r.source.clone(),
            checked_text: checked_text(&r.payload).unwrap_or_default().to_string(),
            benchmark: item.benchmark.clone(),
            item_id: item.id.clone(),
            bench_text: item.text.clone(),
            cosine: own.and_then(|v| v.nearest).map(|n| n.1),
            length_diff: own.and_then(|v| v.nearest).map(|n| n.2),
            checks,
        });
    }
    report.removed = removed.len() as u64;
    report.stats = d.stats.clone();
    Ok((kept, removed, report))
}

/// Write `decontam-report.parquet` (atomically).
pub fn write_report(path: &Path, rows: &[Removed]) -> Result<()> {
    let s = |f: fn(&Removed) -> &str| Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
    let batch = RecordBatch::try_from_iter(vec![
        ("id", s(|r| &r.id)),
        ("source", s(|r| &r.source)),
        ("checked_text", s(|r| &r.checked_text)),
        ("benchmark", s(|r| &r.benchmark)),
        ("benchmark_item_id", s(|r| &r.item_id)),
        ("benchmark_text", s(|r| &r.bench_text)),
        ("cosine", Arc::new(Float32Array::from(rows.iter().map(|r| r.cosine).collect::<Vec<_>>())) as ArrayRef),
        ("length_diff", Arc::new(Float64Array::from(rows.iter().map(|r| r.length_diff).collect::<Vec<_>>())) as ArrayRef),
        ("checks", s(|r| &r.checks)),
    ])
    .map_err(|e| crate::error::BuildError::Parquet { path: path.to_path_buf(), message: e.to_string() })?;
    write_batch_parquet(path, &batch)
}
