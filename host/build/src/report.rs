//! The build report (`build-report.json`) and its printed table.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counters and timings of one source. Times are seconds (wall clock).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceReport {
    /// Plugin name.
    pub name: String,
    /// Priority.
    pub priority: i32,
    /// sha256 of the plugin component.
    pub plugin_sha256: String,
    /// Parameters (name → JSON text) as given in the recipe.
    pub params: BTreeMap<String, String>,
    /// Input files read.
    pub files: Vec<String>,
    /// Rows read from the files.
    pub rows_read: u64,
    /// Records the plugin emitted.
    pub emitted: u64,
    /// Rows that could not be parsed (by the host reader or the plugin).
    pub invalid: u64,
    /// Records dropped by dedup (key already known).
    pub duplicate: u64,
    /// Rows the plugin dropped by the refusal filter.
    pub refused: u64,
    /// Rows the plugin dropped by its own filters, per reason.
    pub filtered: BTreeMap<String, u64>,
    /// Records kept after dedup and decontamination.
    pub kept: u64,
    /// Records removed by decontamination (their id was flagged).
    #[serde(default)]
    pub decontaminated: u64,
    /// Set when the plugin failed and `--on-plugin-error skip` dropped the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Seconds spent reading and decoding input files.
    pub seconds_read: f64,
    /// Seconds spent inside the plugin (calls, including data transfer).
    pub seconds_plugin: f64,
}

/// A bad row noted in the report (the first 1,000 are kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadRow {
    /// Plugin.
    pub plugin: String,
    /// File.
    pub file: String,
    /// 1-based row within the file.
    pub row: u64,
    /// Message.
    pub message: String,
}

/// Seconds per stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageTimes {
    /// Loading/compiling plugins.
    pub load_plugins: f64,
    /// Sources (reading + plugin calls, sources in parallel; wall clock).
    pub sources: f64,
    /// Dedup.
    pub dedup: f64,
    /// Decontamination (benchmark sources, embeddings, index, checks).
    #[serde(default)]
    pub decontam: f64,
    /// Prompt formatting (expansion, chunks, render calls, shuffles).
    pub format: f64,
    /// Writing parquet and the report.
    pub write: f64,
    /// Whole build.
    pub total: f64,
}

/// Per-format counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FormatReport {
    /// Format name.
    pub name: String,
    /// SFT rows rendered.
    pub sft_rows: u64,
    /// DPO prompts rendered.
    pub dpo_rows: u64,
    /// Items the format refused (plugin-error), with the first message.
    pub errors: u64,
    /// Seconds in render calls.
    pub seconds: f64,
    /// Set when the plugin failed (trap, limit, malformed output) and
    /// `--on-plugin-error skip` dropped the format: the build was rendered without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// What decontamination did. Rows are records after dedup (before prompt formatting);
/// every removed row is listed in `decontam-report.parquet`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DecontamReport {
    /// Texts indexed per benchmark.
    pub benchmarks: BTreeMap<String, u64>,
    /// Embedding check on (needs a model).
    pub embedding: bool,
    /// Embedding model key (content hash of its files), when the check ran.
    pub model: Option<String>,
    /// n-gram check on.
    pub ngram: bool,
    /// Exact scan instead of the usearch index.
    pub exact: bool,
    /// Squared-L2 threshold on unit vectors (cosine ≥ 1 − t/2).
    pub max_l2sq: f32,
    /// Relative character-length difference threshold.
    pub max_len_diff: f64,
    /// n-gram window (words).
    pub ngram_size: usize,
    /// n-grams held by more than this many benchmark items were ignored (0: none).
    pub ngram_max_items: usize,
    /// Training records checked (plain-text records are not).
    pub checked: u64,
    /// Records removed.
    pub removed: u64,
    /// Removed per source label.
    pub by_source: BTreeMap<String, u64>,
    /// Removed per benchmark.
    pub by_benchmark: BTreeMap<String, u64>,
    /// Removed per check: `embedding`, `ngram`, `embedding+ngram`, `shared-id`.
    pub by_check: BTreeMap<String, u64>,
    /// Counters and seconds of the stage.
    pub stats: bagel_decontam::DecontamStats,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildReport {
    /// bagel version.
    pub bagel_version: String,
    /// Build seed.
    pub seed: u64,
    /// The formats rendered, in order (a format dropped under `--on-plugin-error skip` is
    /// not listed here; it is in `format_stats` with `failed` set).
    pub formats: Vec<String>,
    /// BOS/EOS used.
    pub bos: String,
    /// EOS.
    pub eos: String,
    /// Per source, in load order.
    pub sources: Vec<SourceReport>,
    /// Per format: the rendered ones in order, then any dropped under
    /// `--on-plugin-error skip`, in the order they failed.
    pub format_stats: Vec<FormatReport>,
    /// Conversations dropped by multi-turn expansion (invalid role order), per source.
    pub dropped_by_expansion: BTreeMap<String, u64>,
    /// Input rows expanded from multi-turn conversations (examples created).
    pub expanded_examples: u64,
    /// Instructions (SFT examples before format chunking).
    pub instructions: u64,
    /// Rows in sft.parquet.
    pub sft_rows: u64,
    /// Rows in dpo.parquet.
    pub dpo_rows: u64,
    /// sha256 of sft.parquet.
    pub sft_sha256: String,
    /// sha256 of dpo.parquet.
    pub dpo_sha256: String,
    /// Whether the raw stage came from the cache.
    pub raw_cache_hit: bool,
    /// Whether the existing outputs were reused (nothing changed since they were written).
    #[serde(default)]
    pub outputs_cache_hit: bool,
    /// Stage timings.
    pub stages: StageTimes,
    /// Decontamination summary (when the recipe lists benchmarks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decontamination: Option<DecontamReport>,
    /// First bad rows.
    pub bad_rows: Vec<BadRow>,
}

impl BuildReport {
    /// The per-source table plus totals and stage times, as printed by `bagel build`.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<16} {:>3} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8}\n",
            "source", "P", "read", "emitted", "invalid", "duplicate", "refused", "filtered", "contam", "kept", "seconds"
        ));
        let mut t = SourceReport::default();
        for r in &self.sources {
            let filtered: u64 = r.filtered.values().sum();
            s.push_str(&format!(
                "{:<16} {:>3} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8.3}\n",
                r.name, r.priority, r.rows_read, r.emitted, r.invalid, r.duplicate, r.refused, filtered, r.decontaminated, r.kept, r.seconds_read + r.seconds_plugin
            ));
            if let Some(f) = &r.failed {
                s.push_str(&format!("  ^ {} FAILED and was skipped: {f}\n", r.name));
            }
            t.rows_read += r.rows_read;
            t.emitted += r.emitted;
            t.invalid += r.invalid;
            t.duplicate += r.duplicate;
            t.refused += r.refused;
            t.kept += r.kept;
            t.decontaminated += r.decontaminated;
            t.filtered.insert(String::new(), t.filtered.get("").copied().unwrap_or(0) + filtered);
            t.seconds_read += r.seconds_read + r.seconds_plugin;
        }
        s.push_str(&format!(
            "{:<16} {:>3} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8.3}\n",
            "TOTAL", "", t.rows_read, t.emitted, t.invalid, t.duplicate, t.refused, t.filtered.values().sum::<u64>(), t.decontaminated, t.kept, t.seconds_read
        ));
        if let Some(d) = &self.decontamination {
            let checks = match (d.embedding, d.ngram) {
                (true, true) => format!("embedding (L2² ≤ {}, length diff ≤ {}{}) + {}-gram", d.max_l2sq, d.max_len_diff, if d.exact { ", exact" } else { ", usearch" }, d.ngram_size),
                (true, false) => format!("embedding (L2² ≤ {}, length diff ≤ {})", d.max_l2sq, d.max_len_diff),
                (false, true) => format!("{}-gram only", d.ngram_size),
                (false, false) => "off".into(),
            };
            s.push_str(&format!(
                "decontamination: {checks}; {} benchmark texts, {} rows checked, {} removed ({} embedded, {} from cache)\n",
                d.stats.benchmark_texts, d.checked, d.removed, d.stats.embedded, d.stats.embedding_cache_hits
            ));
            for (b, texts) in &d.benchmarks {
                s.push_str(&format!("  {b:<16} {texts:>6} texts  {:>6} removed\n", d.by_benchmark.get(b).copied().unwrap_or(0)));
            }
            let checks: Vec<String> = d.by_check.iter().map(|(k, v)| format!("{k} {v}")).collect();
            if !checks.is_empty() {
                s.push_str(&format!("  by check: {}\n", checks.join(", ")));
            }
        }
        for f in &self.format_stats {
            match &f.failed {
                Some(e) => s.push_str(&format!("format {:<10} FAILED and was skipped: {e}\n", f.name)),
                None => s.push_str(&format!("format {:<10} sft {:>8}  dpo {:>7}  errors {:>5}  {:>7.3} s\n", f.name, f.sft_rows, f.dpo_rows, f.errors, f.seconds)),
            }
        }
        s.push_str(&format!(
            "instructions {} (expanded {}), sft.parquet {} rows, dpo.parquet {} rows\nstages: plugins-load {:.3}s sources {:.3}s dedup {:.3}s decontam {:.3}s format {:.3}s write {:.3}s total {:.3}s{}\n",
            self.instructions,
            self.expanded_examples,
            self.sft_rows,
            self.dpo_rows,
            self.stages.load_plugins,
            self.stages.sources,
            self.stages.dedup,
            self.stages.decontam,
            self.stages.format,
            self.stages.write,
            self.stages.total,
            if self.outputs_cache_hit {
                " (nothing changed: outputs reused)"
            } else if self.raw_cache_hit {
                " (raw stage from cache)"
            } else {
                ""
            }
        ));
        s
    }
}
