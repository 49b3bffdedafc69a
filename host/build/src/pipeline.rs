//! The whole `bagel build`.
use crate::error::{io, BuildError, Result};
use crate::format::format_records;
use crate::read::{read_file, RowResult};
use crate::recipe::{dataset_globs, expand_globs, substitute, Recipe, SourceEntry};
use crate::report::{BadRow, BuildReport, FormatReport, SourceReport};
use crate::tokenizer::{special_tokens, SpecialTokens};
use crate::write::{write_atomic, write_atomic_with, write_string_parquet, OutputCompression};
use bagel_core::dedup::KnownKeys;
use bagel_core::refusal::RefusalMode;
use bagel_core::rng::derive_seed;
use bagel_core::{uid, Record};
use bagel_runtime::{DropReason, Emitted, Limits, Plugin, PluginKind, Runtime, SourceInfo, SourceJob};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to do with a malformed input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnBadRow {
    /// Count it in the report and go on (default).
    #[default]
    Skip,
    /// Stop the build with [`BuildError::BadRow`].
    Fail,
}

/// What to do when a plugin fails (trap, limit, plugin error, malformed output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPluginError {
    /// Stop the build (default).
    #[default]
    Fail,
    /// Drop that source's records (or that prompt format), record the error, and go on.
    /// A format that fails while rendering is dropped and the other formats are rendered
    /// again over the rest; the last format left is never dropped (its failure stops the
    /// build). A failure caused by the data (a row that trips a limit in every format) is
    /// blamed on the first format that hits it, so such a build drops formats one by one
    /// and then stops. A plugin that fails to load is skipped at load time; a format
    /// requested by name that did not load then stops the build as not installed.
    Skip,
}

/// Options of one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directory of plugin components.
    pub plugins: PathBuf,
    /// Data root.
    pub data: PathBuf,
    /// Recipe.
    pub recipe: Recipe,
    /// Output directory.
    pub out: PathBuf,
    /// Seed (coins, shuffles, plugin seeds).
    pub seed: u64,
    /// Format names in order (empty: the recipe's, else alpaca,vicuna,chatml,llama2).
    pub formats: Vec<String>,
    /// Tokenizer dir for BOS/EOS (None: `<s>`/`</s>`).
    pub tokenizer: Option<PathBuf>,
    /// Bad-row policy.
    pub on_bad_row: OnBadRow,
    /// Plugin-failure policy.
    pub on_plugin_error: OnPluginError,
    /// Per-call plugin limits.
    pub limits: Limits,
    /// Refusal check mode.
    pub refusal: RefusalMode,
    /// Rows per `push-rows` call.
    pub batch_size: usize,
    /// Max sources converted at once.
    pub jobs: usize,
    /// Compiled-plugin cache dir (None disables).
    pub wasm_cache: Option<PathBuf>,
    /// Reuse the cached raw stage when its key matches.
    pub use_stage_cache: bool,
    /// How instructions are spread over formats.
    pub chunking: bagel_core::chunk::Chunking,
    /// Show progress bars.
    pub progress: bool,
    /// Decontamination settings (used when the recipe lists benchmarks).
    pub decontam: bagel_decontam::DecontamOptions,
    /// Parquet compression of sft.parquet and dpo.parquet.
    pub compression: OutputCompression,
}

/// Default format order of the reference.
pub const DEFAULT_FORMATS: [&str; 4] = ["alpaca", "vicuna", "chatml", "llama2"];

struct Resolved<'a> {
    plugin: &'a Plugin,
    info: &'a SourceInfo,
    params: Vec<(String, String)>,
    inputs: Vec<(String, bagel_runtime::InputFormat, Vec<PathBuf>)>,
}

/// Output of one source job (before dedup).
#[derive(Debug, Default)]
struct SourceRun {
    report: SourceReport,
    /// Emitted records, in emit order.
    records: Vec<SourceRecord>,
    bad_rows: Vec<BadRow>,
}

/// What a source job's records are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunFor {
    /// A build source: records carry the uuid5 of their key for dedup.
    Build,
    /// A benchmark: records carry their key text (the benchmark item id).
    Benchmark,
}

/// One emitted record before dedup.
#[derive(Debug)]
struct SourceRecord {
    /// [`RunFor::Build`]: uuid5 of the dedup key text, computed on the source's worker
    /// thread so that the sequential dedup only consults the set.
    /// [`RunFor::Benchmark`]: the key text itself (the item id).
    id: String,
    mode: bagel_core::DedupMode,
    label: String,
    payload: bagel_core::Payload,
}

#[derive(Serialize, Deserialize)]
struct OutputsStamp {
    key: String,
    sft: Option<(u64, u128)>,
    dpo: Option<(u64, u128)>,
    report: BuildReport,
}

/// (size, mtime ns) of a file, if it exists.
fn file_stamp(path: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some((m.len(), mtime))
}

#[derive(Serialize, Deserialize)]
struct RawStage {
    key: String,
    reports: Vec<SourceReport>,
    records: Vec<Record>,
    /// Index into `reports` of the source of each record.
    origins: Vec<u32>,
    bad_rows: Vec<BadRow>,
}

/// Run a build without an embedding model (decontamination, if the recipe lists
/// benchmarks, runs the n-gram check only); see [`build_with`].
pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    build_with(opts, None)
}

/// Run a build; returns the report (also written to `out/build-report.json`). The records
/// are freed on a short-lived background thread as writing starts (so that, with an
/// allocator that reuses freed pages across threads such as the CLI's mimalloc, the
/// writers need less fresh memory), the rows once the outputs are written; memory may
/// still fall for some tens of ms after this returns.
/// `embedder` serves the embedding check of decontamination. Errors: [`BuildError`]
/// naming the plugin, file and row, or the stage that failed; outputs are left as they were.
pub fn build_with(opts: &BuildOptions, embedder: Option<&dyn bagel_decontam::Embedder>) -> Result<BuildReport> {
    let t_total = Instant::now();
    let mut report = BuildReport { bagel_version: env!("CARGO_PKG_VERSION").into(), seed: opts.seed, ..Default::default() };
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let SpecialTokens { bos, eos } = match &opts.tokenizer {
        Some(dir) => special_tokens(dir)?,
        None => SpecialTokens::default(),
    };
    report.bos = bos.clone();
    report.eos = eos.clone();

    // Plugins.
    let t = Instant::now();
    let (rt, plugins) = load_plugins(opts)?;
    report.stages.load_plugins = t.elapsed().as_secs_f64();
    let format_names: Vec<String> = if !opts.formats.is_empty() {
        opts.formats.clone()
    } else if let Some(f) = &opts.recipe.formats {
        f.clone()
    } else {
        DEFAULT_FORMATS.iter().map(|s| s.to_string()).collect()
    };
    let installed = |want_format: bool| -> String {
        plugins.iter().filter(|p| matches!(p.kind, PluginKind::Format(_)) == want_format).map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
    };
    let mut formats = Vec::new();
    for (i, name) in format_names.iter().enumerate() {
        if format_names[..i].contains(name) {
            return Err(BuildError::Recipe { path: "--formats".into(), message: format!("format `{name}` is listed twice") });
        }
        let p = plugins
            .iter()
            .find(|p| &p.name == name && matches!(p.kind, PluginKind::Format(_)))
            .ok_or_else(|| BuildError::UnknownPlugin { kind: "format", name: name.clone(), installed: installed(true) })?;
        formats.push(p);
    }
    report.formats = format_names.clone();

    // Resolve sources: priority high → low, ties by name.
    let mut resolved = Vec::new();
    for entry in opts.recipe.sources.iter().filter(|e| e.enabled) {
        let plugin = plugins
            .iter()
            .find(|p| p.name == entry.plugin && matches!(p.kind, PluginKind::Source(_)))
            .ok_or_else(|| BuildError::UnknownPlugin { kind: "source", name: entry.plugin.clone(), installed: installed(false) })?;
        let PluginKind::Source(info) = &plugin.kind else { unreachable!() };
        resolved.push(resolve(opts, plugin, info, entry)?);
    }
    resolved.sort_by(|a, b| b.info.priority.cmp(&a.info.priority).then_with(|| a.info.name.cmp(&b.info.name)));
    let checks_on = opts.decontam.ngram || (opts.decontam.embedding && embedder.is_some());
    let benches = if checks_on { resolve_benchmarks(opts, &plugins)? } else { Vec::new() };
    let decontam_on = !benches.is_empty();

    // Raw stage (sources + dedup), cached.
    let key = stage_key(opts, &resolved)?;
    let cache_dir = opts.out.join(".bagel-cache");
    let cache_file = cache_dir.join(format!("raw-{key}.msgpack"));
    let mut raw: RawStage = match (opts.use_stage_cache, std::fs::read(&cache_file)) {
        (true, Ok(bytes)) => match rmp_serde::from_slice::<RawStage>(&bytes) {
            Ok(r) if r.key == key => {
                report.raw_cache_hit = true;
                r
            }
            _ => run_raw(opts, &rt, &resolved, key.clone(), &mut report)?,
        },
        _ => run_raw(opts, &rt, &resolved, key.clone(), &mut report)?,
    };
    let save_raw = !report.raw_cache_hit && !raw.reports.iter().any(|r| r.failed.is_some());
    let write_raw_cache = |raw: &RawStage| -> Result<()> {
        std::fs::create_dir_all(&cache_dir).map_err(io(&cache_dir))?;
        // Keep only the newest raw stage.
        if let Ok(rd) = std::fs::read_dir(&cache_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("raw-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // MessagePack with named fields, streamed to the file: strings are copied, not
        // escaped as in JSON (about 2.5x less time to write; 15 MB for the anchor recipe).
        write_atomic_with(&cache_file, |mut w| {
            rmp_serde::encode::write_named(&mut w, raw).map_err(std::io::Error::other)
        })
    };
    report.sources = raw.reports.clone();
    report.bad_rows = raw.bad_rows.clone();

    // Output stage cache: same raw stage, formats, tokens, seed and chunking, and the
    // outputs untouched since we wrote them (size + mtime) → nothing to redo.
    let sft_path = opts.out.join("sft.parquet");
    let dpo_path = opts.out.join("dpo.parquet");
    let mut fkey = Sha256::new();
    fkey.update(format!("{key} {bos:?} {eos:?} {:?} {} {:?}", opts.chunking, opts.seed, opts.compression));
    for f in &formats {
        fkey.update(format!(" {}={}", f.name, f.sha256));
    }
    if decontam_on {
        let model = embedder.filter(|_| opts.decontam.embedding).map(|e| e.model_key().to_string());
        let d = &opts.decontam;
        fkey.update(format!(
            " decontam {} {:?} {} {} {} {} {} {}",
            stage_key(opts, &benches)?,
            model,
            d.ngram,
            d.max_l2sq,
            d.max_len_diff,
            d.ngram_size,
            d.ngram_max_items,
            d.exact
        ));
    }
    let fkey = hex::encode(&fkey.finalize()[..16]);
    let outputs_file = cache_dir.join("outputs.json");
    if opts.use_stage_cache && report.raw_cache_hit {
        if let Some(mut cached) = std::fs::read(&outputs_file).ok().and_then(|b| serde_json::from_slice::<OutputsStamp>(&b).ok()) {
            if cached.key == fkey && cached.sft == file_stamp(&sft_path) && cached.dpo == file_stamp(&dpo_path) {
                cached.report.raw_cache_hit = true;
                cached.report.outputs_cache_hit = true;
                cached.report.stages = Default::default();
                cached.report.stages.load_plugins = report.stages.load_plugins;
                cached.report.stages.total = t_total.elapsed().as_secs_f64();
                // The report on disk describes this run (cache hits, stage times).
                write_report(&opts.out, &cached.report)?;
                return Ok(cached.report);
            }
        }
    }

    // Decontamination.
    let decontam_path = opts.out.join(crate::decontam::REPORT_FILE);
    let mut removed = None;
    let mut kept_records = None;
    if decontam_on {
        if save_raw {
            write_raw_cache(&raw)?;
        }
        let t = Instant::now();
        let items = run_benchmarks(opts, &rt, &benches)?;
        // Embedding is the long part (minutes on a CPU): a counter of texts embedded (how
        // many are new is known only inside, after the embedding cache is read).
        let pb = progress_with(opts.progress, 0, "embed", "{msg:>10} {pos} texts {per_sec} {elapsed_precise}");
        let counted = embedder.map(|inner| Counted { inner, progress: pb.clone() });
        let embedder_counted = counted.as_ref().map(|c| c as &dyn bagel_decontam::Embedder);
        let (kept, gone, summary) = crate::decontam::decontaminate(std::mem::take(&mut raw.records), items, embedder_counted, &opts.decontam)?;
        pb.finish_and_clear();
        for r in &gone {
            if let Some(&o) = raw.origins.get(r.index) {
                let rep = &mut report.sources[o as usize];
                rep.decontaminated += 1;
                rep.kept -= 1;
            }
        }
        kept_records = Some(kept);
        report.decontamination = Some(summary);
        removed = Some(gone);
        report.stages.decontam = t.elapsed().as_secs_f64();
    }

    // Format stage. Without decontamination the raw stage is saved to the cache on
    // another thread meanwhile (it only reads the records).
    let t = Instant::now();
    let records: &[Record] = kept_records.as_deref().unwrap_or(&raw.records);
    let (formatted, saved) = std::thread::scope(|scope| {
        let saved = (save_raw && !decontam_on).then(|| scope.spawn(|| write_raw_cache(&raw)));
        // A format plugin that fails (trap, limit, malformed output) under
        // `--on-plugin-error skip` is dropped and the stage rerun without it: the chunks
        // depend on the number of formats, so the others are rendered again.
        let mut failed = Vec::new();
        let formatted = loop {
            let pb = progress(opts.progress, 0, "format");
            let r = format_records(&rt, &formats, records, &bos, &eos, opts.seed, opts.chunking, &pb);
            pb.finish_and_clear();
            match r {
                Err(BuildError::Plugin(e)) if opts.on_plugin_error == OnPluginError::Skip && formats.len() > 1 => {
                    let Some(i) = e.plugin().and_then(|name| formats.iter().position(|f| f.name == name)) else { break Err(BuildError::Plugin(e)) };
                    tracing::error!("skipping format {}: {e}", formats[i].name);
                    failed.push(FormatReport { name: formats.remove(i).name.clone(), failed: Some(e.to_string()), ..Default::default() });
                }
                r => break r.map(|f| (f, failed)),
            }
        };
        (formatted, saved.map(|h| h.join().expect("raw-stage cache writer panicked")))
    });
    let (formatted, failed_formats) = formatted?;
    saved.transpose()?;
    report.stages.format = t.elapsed().as_secs_f64();
    let complete = failed_formats.is_empty();
    report.formats = formats.iter().map(|f| f.name.clone()).collect();
    report.format_stats = formatted.stats;
    report.format_stats.extend(failed_formats);
    report.dropped_by_expansion = formatted.dropped_by_expansion;
    report.expanded_examples = formatted.expanded_examples;
    report.instructions = formatted.instructions;

    // Write. The records are not needed any more: a short-lived thread frees them
    // meanwhile, so that the writers reuse their memory instead of touching fresh pages
    // (see `free_later`).
    let t = Instant::now();
    free_later((std::mem::take(&mut raw.records), kept_records.take()));
    let s = &formatted.sft;
    let d = &formatted.dpo;
    let pb = progress(opts.progress, (s.len() + d.len()) as u64, "write");
    let (sft_res, dpo_res) = std::thread::scope(|scope| {
        let dpo = scope.spawn(|| {
            write_string_parquet(
                &dpo_path,
                &[
                    ("source", d.iter().map(|r| r.source.as_str()).collect()),
                    ("prompt", d.iter().map(|r| r.prompt.as_str()).collect()),
                    ("chosen", d.iter().map(|r| r.chosen.as_str()).collect()),
                    ("rejected", d.iter().map(|r| r.rejected.as_str()).collect()),
                ],
                opts.compression,
                &pb,
            )
        });
        let sft = write_string_parquet(
            &sft_path,
            &[
                ("id", s.iter().map(|r| r.id.as_str()).collect()),
                ("source", s.iter().map(|r| &*r.source).collect()),
                ("input", s.iter().map(|r| r.input.as_str()).collect()),
                ("output", s.iter().map(|r| r.output.as_str()).collect()),
            ],
            opts.compression,
            &pb,
        );
        (sft, dpo.join().expect("dpo writer panicked"))
    });
    pb.finish_and_clear();
    // Put in place only once both writers succeeded: a failure in either writer leaves
    // the previous pair. (Should the second rename fail, the outputs stamp below is not
    // written, so the next build redoes both.)
    let ((sft_file, sft_sha256), (dpo_file, dpo_sha256)) = (sft_res?, dpo_res?);
    crate::write::commit(sft_file)?;
    crate::write::commit(dpo_file)?;
    report.sft_sha256 = sft_sha256;
    report.dpo_sha256 = dpo_sha256;
    match &removed {
        Some(rows) => crate::decontam::write_report(&decontam_path, rows)?,
        None => {
            // A report from an earlier build would no longer describe these outputs.
            if decontam_path.exists() {
                std::fs::remove_file(&decontam_path).map_err(io(&decontam_path))?;
            }
        }
    }
    report.sft_rows = s.len() as u64;
    report.dpo_rows = d.len() as u64;
    report.stages.write = t.elapsed().as_secs_f64();
    report.stages.total = t_total.elapsed().as_secs_f64();
    write_report(&opts.out, &report)?;
    // Outputs rendered without a failed format are not what the key describes: the next
    // build redoes them.
    if complete {
        let stamp = OutputsStamp { key: fkey, sft: file_stamp(&sft_path), dpo: file_stamp(&dpo_path), report: report.clone() };
        write_atomic(&outputs_file, &serde_json::to_vec(&stamp).expect("stamp serialises"))?;
    } else if outputs_file.exists() {
        std::fs::remove_file(&outputs_file).map_err(io(&outputs_file))?;
    }
    free_later((formatted.sft, formatted.dpo, raw));
    Ok(report)
}

/// An embedder that advances `progress` by the texts it embeds.
struct Counted<'a> {
    inner: &'a dyn bagel_decontam::Embedder,
    progress: indicatif::ProgressBar,
}

impl bagel_decontam::Embedder for Counted<'_> {
    fn model_key(&self) -> &str {
        self.inner.model_key()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
        let out = self.inner.embed(texts)?;
        self.progress.inc(texts.len() as u64);
        Ok(out)
    }
}

/// Drop `value` on a short-lived thread (inline if no thread can be started). Freeing
/// some 300,000 strings takes tens of ms (bench/RESULTS.md, issue 3) that the build need
/// not wait for.
fn free_later<T: Send + 'static>(value: T) {
    // If the thread cannot start, `spawn` drops the closure, and `value` with it, here.
    let _ = std::thread::Builder::new()
        .name("bagel-free".into())
        .spawn(move || drop(value));
}

/// Load every plugin under `opts.plugins` (failures skipped or fatal per
/// `opts.on_plugin_error`); two plugins of one name are an error.
fn load_plugins(opts: &BuildOptions) -> Result<(Runtime, Vec<Plugin>)> {
    let rt = Runtime::new(opts.limits, opts.refusal, opts.wasm_cache.clone())?;
    let mut plugins: Vec<Plugin> = Vec::new();
    for p in rt.load_dir(&opts.plugins)? {
        match p {
            Ok(p) => plugins.push(p),
            Err(e) if opts.on_plugin_error == OnPluginError::Skip => tracing::error!("skipping plugin: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    for (i, p) in plugins.iter().enumerate() {
        if let Some(q) = plugins[..i].iter().find(|q| q.name == p.name) {
            return Err(bagel_runtime::RuntimeError::DuplicateName { name: p.name.clone(), first: q.file.display().to_string(), second: p.file.display().to_string() }.into());
        }
    }
    Ok((rt, plugins))
}

fn resolve_benchmarks<'a>(opts: &'a BuildOptions, plugins: &'a [Plugin]) -> Result<Vec<Resolved<'a>>> {
    let mut benches = Vec::new();
    for entry in opts.recipe.benchmarks.iter().filter(|e| e.enabled) {
        let plugin = plugins.iter().find(|p| p.name == entry.plugin && matches!(p.kind, PluginKind::Source(_))).ok_or_else(|| {
            let installed = plugins.iter().filter(|p| matches!(p.kind, PluginKind::Source(_))).map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
            BuildError::UnknownPlugin { kind: "benchmark (source)", name: entry.plugin.clone(), installed }
        })?;
        let PluginKind::Source(info) = &plugin.kind else { unreachable!() };
        benches.push(resolve(opts, plugin, info, entry)?);
    }
    Ok(benches)
}

fn run_benchmarks(opts: &BuildOptions, rt: &Runtime, benches: &[Resolved]) -> Result<Vec<bagel_decontam::BenchItem>> {
    let mut items = Vec::new();
    for b in benches {
        let run = run_source(opts, rt, b, RunFor::Benchmark)?;
        for SourceRecord { id, label, payload, .. } in run.records {
            if let Some(text) = crate::decontam::bench_text(&payload) {
                items.push(bagel_decontam::BenchItem { benchmark: label, id, text: text.to_string() });
            }
        }
    }
    Ok(items)
}

/// The benchmark texts the recipe's `[[benchmark]]` entries index (their plugins run as in
/// a build). Errors: as [`build`].
pub fn benchmark_items(opts: &BuildOptions) -> Result<Vec<bagel_decontam::BenchItem>> {
    let (rt, plugins) = load_plugins(opts)?;
    let benches = resolve_benchmarks(opts, &plugins)?;
    run_benchmarks(opts, &rt, &benches)
}

/// Write `out/build-report.json` (pretty JSON), atomically.
fn write_report(out: &Path, report: &BuildReport) -> Result<()> {
    write_atomic(&out.join("build-report.json"), &serde_json::to_vec_pretty(report).expect("report serialises"))
}

fn resolve<'a>(opts: &BuildOptions, plugin: &'a Plugin, info: &'a SourceInfo, entry: &'a SourceEntry) -> Result<Resolved<'a>> {
    let params = entry.params_json();
    let mut merged: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for p in &info.params {
        merged.insert(p.name.clone(), serde_json::from_str(&p.default).unwrap_or(serde_json::Value::Null));
    }
    for (k, v) in &params {
        merged.insert(k.clone(), serde_json::from_str(v).unwrap_or(serde_json::Value::Null));
    }
    for name in entry.files.keys() {
        if !info.inputs.iter().any(|i| &i.name == name) {
            let known: Vec<&str> = info.inputs.iter().map(|i| i.name.as_str()).collect();
            let path = opts.recipe.path.clone().unwrap_or_else(|| "<recipe>".into());
            return Err(BuildError::Recipe { path, message: format!("source {}: unknown input `{name}` (inputs: {})", info.name, known.join(", ")) });
        }
    }
    let mut inputs = Vec::new();
    for input in &info.inputs {
        let globs: Vec<String> = match entry.files.get(&input.name) {
            Some(files) => files.clone(),
            None => input.patterns.iter().flat_map(|p| dataset_globs(&opts.data, &input.dataset, &substitute(p, &merged))).collect(),
        };
        let files = expand_globs(&opts.data, &globs);
        if files.is_empty() {
            return Err(BuildError::MissingInput {
                plugin: info.name.clone(),
                input: input.name.clone(),
                looked: globs.iter().map(|g| opts.data.join(g).display().to_string()).collect::<Vec<_>>().join(", "),
            });
        }
        inputs.push((input.name.clone(), input.format, files));
    }
    Ok(Resolved { plugin, info, params, inputs })
}

fn stage_key(opts: &BuildOptions, resolved: &[Resolved]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!(
        "bagel {} seed {} refusal {:?} bad-row {:?} plugin-error {:?} limits {:?} batch {}\n",
        env!("CARGO_PKG_VERSION"),
        opts.seed,
        opts.refusal,
        opts.on_bad_row,
        opts.on_plugin_error,
        opts.limits,
        opts.batch_size
    ));
    for r in resolved {
        h.update(format!("source {} {} {:?}\n", r.info.name, r.plugin.sha256, r.params));
        for (name, _, files) in &r.inputs {
            for f in files {
                let m = std::fs::metadata(f).map_err(io(f))?;
                let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
                h.update(format!("input {name} {} {} {mtime}\n", f.display(), m.len()));
            }
        }
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

fn run_raw(opts: &BuildOptions, rt: &Runtime, resolved: &[Resolved], key: String, report: &mut BuildReport) -> Result<RawStage> {
    let t = Instant::now();
    let pb = progress(opts.progress, resolved.len() as u64, "sources");
    // Convert in parallel (bounded by `jobs`), then dedup sequentially in load order:
    // the result equals the sequential reference. Sources start largest input first
    // (longest-processing-time-first scheduling), so the longest one does not start last.
    let jobs = opts.jobs.max(1);
    let mut runs: Vec<Option<Result<SourceRun>>> = (0..resolved.len()).map(|_| None).collect();
    let input_bytes = |r: &Resolved| -> u64 { r.inputs.iter().flat_map(|(_, _, files)| files).filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum() };
    let mut start_order: Vec<usize> = (0..resolved.len()).collect();
    start_order.sort_by_key(|&i| std::cmp::Reverse(input_bytes(&resolved[i])));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(resolved.len().max(1)) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&i) = start_order.get(k) else { break };
                let r = run_source(opts, rt, &resolved[i], RunFor::Build);
                pb.inc(1);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    pb.finish_and_clear();
    for (i, r) in results.into_inner().unwrap() {
        runs[i] = Some(r);
    }
    report.stages.sources = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut known = KnownKeys::new();
    let mut records = Vec::new();
    let mut origins = Vec::new();
    let mut reports = Vec::new();
    let mut bad_rows = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        let run = match run.expect("every source ran") {
            Ok(run) => run,
            Err(BuildError::Plugin(e)) if opts.on_plugin_error == OnPluginError::Skip => {
                tracing::error!("skipping source {}: {e}", resolved[i].info.name);
                let rep = SourceReport { name: resolved[i].info.name.clone(), priority: resolved[i].info.priority, failed: Some(e.to_string()), ..Default::default() };
                reports.push(rep);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut rep = run.report;
        for SourceRecord { id, mode, label, payload, .. } in run.records {
            if known.admit(&id, mode) {
                records.push(Record { id, source: label, payload });
                origins.push(reports.len() as u32);
                rep.kept += 1;
            } else {
                rep.duplicate += 1;
            }
        }
        bad_rows.extend(run.bad_rows);
        reports.push(rep);
    }
    bad_rows.truncate(1000);
    report.stages.dedup = t.elapsed().as_secs_f64();
    Ok(RawStage { key, reports, records, origins, bad_rows })
}

/// A progress bar of `len` steps labelled `what` on stderr (bar, count, elapsed time), or
/// a hidden one when `show` is false.
fn progress(show: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    progress_with(show, len, what, "{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise}")
}

/// A progress bar on stderr with an indicatif `template`, or a hidden one.
fn progress_with(show: bool, len: u64, what: &str, template: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    // Set up hidden, so that nothing is drawn before the first update (the format
    // stage's length is known only once it starts).
    let pb = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::hidden());
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    pb
}

fn run_source(opts: &BuildOptions, rt: &Runtime, r: &Resolved, run_for: RunFor) -> Result<SourceRun> {
    let name = &r.info.name;
    let mut job = SourceJob::start(rt, r.plugin, derive_seed(opts.seed, name))?;
    job.configure(&r.params)?;
    let mut run = SourceRun::default();
    run.report.name = name.clone();
    run.report.priority = r.info.priority;
    run.report.plugin_sha256 = r.plugin.sha256.clone();
    run.report.params = r.params.iter().cloned().collect();
    let mut plugin_secs = 0.0;
    let t_all = Instant::now();
    for (input, hint, files) in &r.inputs {
        let mut input_row: u64 = 0;
        for file in files {
            run.report.files.push(file.display().to_string());
            let file_start = input_row;
            let mut on_batch = |first_in_file: u64, rows: Vec<RowResult>| -> Result<()> {
                let first = file_start + first_in_file;
                let mut good = Vec::with_capacity(rows.len());
                let mut good_rows = Vec::with_capacity(rows.len());
                for (k, row) in rows.into_iter().enumerate() {
                    let row_in_file = first_in_file + k as u64 + 1;
                    match row {
                        Ok(text) => {
                            good.push(text);
                            good_rows.push(first + k as u64);
                        }
                        Err(message) => {
                            run.report.invalid += 1;
                            if opts.on_bad_row == OnBadRow::Fail {
                                return Err(BuildError::BadRow { plugin: name.clone(), path: file.clone(), row: row_in_file, message });
                            }
                            run.bad_rows.push(BadRow { plugin: name.clone(), file: file.display().to_string(), row: row_in_file, message });
                        }
                    }
                }
                run.report.rows_read += good.len() as u64;
                if good.is_empty() {
                    return Ok(());
                }
                // Rows are renumbered contiguously for the plugin only when no row was bad;
                // otherwise each contiguous run is pushed separately to keep row numbers true.
                let t = Instant::now();
                let mut start = 0;
                while start < good.len() {
                    let mut end = start + 1;
                    while end < good.len() && good_rows[end] == good_rows[end - 1] + 1 {
                        end += 1;
                    }
                    let out = job.push_rows(input, good_rows[start], &good[start..end])?;
                    absorb(opts, name, file, file_start, out, run_for, &mut run)?;
                    start = end;
                }
                plugin_secs += t.elapsed().as_secs_f64();
                Ok(())
            };
            let n = read_file(file, *hint, opts.batch_size, &mut on_batch)?;
            input_row += n;
        }
    }
    let t = Instant::now();
    let out = job.finish()?;
    absorb(opts, name, Path::new("<finish>"), 0, out, run_for, &mut run)?;
    plugin_secs += t.elapsed().as_secs_f64();
    run.report.seconds_plugin = plugin_secs;
    run.report.seconds_read = (t_all.elapsed().as_secs_f64() - plugin_secs).max(0.0);
    Ok(run)
}

fn absorb(opts: &BuildOptions, name: &str, file: &Path, file_start: u64, out: bagel_runtime::BatchOutput, run_for: RunFor, run: &mut SourceRun) -> Result<()> {
    for inv in out.invalid {
        run.report.invalid += 1;
        let row = inv.row.saturating_sub(file_start) + 1;
        if opts.on_bad_row == OnBadRow::Fail {
            return Err(BuildError::BadRow { plugin: name.to_string(), path: file.to_path_buf(), row, message: inv.message });
        }
        run.bad_rows.push(BadRow { plugin: name.to_string(), file: file.display().to_string(), row, message: inv.message });
    }
    for (_, reason) in out.dropped {
        match reason {
            DropReason::Refusal => run.report.refused += 1,
            DropReason::Filtered(why) => *run.report.filtered.entry(why).or_default() += 1,
        }
    }
    run.report.emitted += out.records.len() as u64;
    for Emitted { key, mode, label, payload, .. } in out.records {
        let id = match run_for {
            RunFor::Build => uid(&key),
            RunFor::Benchmark => key,
        };
        run.records.push(SourceRecord { id, mode, label, payload });
    }
    Ok(())
}
