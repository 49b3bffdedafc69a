//! `bagel build`: recipe → sft.parquet, dpo.parquet, build-report.json.
use anyhow::{Context, Result};
use bagel_build::write::OutputCompression;
use bagel_build::{build_with, BuildOptions, OnBadRow, OnPluginError, Recipe};
use bagel_core::refusal::RefusalMode;
use bagel_runtime::Limits;
use bagel_train::embed::Backend;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Directory of plugin components (*.wasm).
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Data root; recipe file paths and dataset lookups (incl. HF hub cache layout) are relative to it.
    #[arg(long)]
    data: PathBuf,
    /// Build recipe (TOML).
    #[arg(long)]
    recipe: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Seed for coins and shuffles (default: the recipe's, else 42).
    #[arg(long)]
    seed: Option<u64>,
    /// Prompt formats by name, in order (default: the recipe's, else alpaca,vicuna,chatml,llama2).
    #[arg(long, value_delimiter = ',')]
    formats: Vec<String>,
    /// Tokenizer directory (tokenizer_config.json) for the BOS/EOS strings (default <s>, </s>).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// What to do with a malformed row.
    #[arg(long, value_enum, default_value = "skip")]
    on_bad_row: BadRow,
    /// What to do when a plugin fails (trap, limit, error): fail stops the build; skip goes
    /// on without that source, or without that prompt format (the other formats are
    /// rendered again over the remaining ones; the last format is never dropped).
    #[arg(long, value_enum, default_value = "fail")]
    on_plugin_error: PluginFail,
    /// Refusal check: intended (case-insensitive) or compat (the original's accidental behaviour).
    #[arg(long, value_enum, default_value = "intended")]
    refusal: Refusal,
    /// Wall-clock limit of one plugin call, seconds.
    #[arg(long, default_value_t = 60.0)]
    call_timeout: f64,
    /// Memory cap of one plugin instance, MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: usize,
    /// Rows per plugin call.
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// Sources converted in parallel (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Format chunking: reference (bagel's `_get_chunks`) or balanced (every instruction in
    /// exactly k-1 of k formats for any count).
    #[arg(long, value_enum, default_value = "reference")]
    chunking: ChunkingArg,
    /// Parquet compression of sft.parquet and dpo.parquet: snappy (parquet's default, as
    /// the Python original), lz4 (LZ4_RAW: faster to write) or none.
    #[arg(long, value_enum, default_value = "snappy")]
    compression: CompressionArg,
    /// Ignore the cached raw stage.
    #[arg(long)]
    no_cache: bool,
    /// Decontamination checks against the recipe's [[benchmark]]s: both (embedding + n-gram,
    /// default), embedding, ngram, or off.
    #[arg(long, value_enum, default_value = "both")]
    decontam: DecontamChecks,
    /// Sentence-embedding model for the embedding check (a sentence-transformers directory:
    /// config.json, model.safetensors, tokenizer.json; all-MiniLM-L6-v2 is what
    /// `cargo xtask fetch-models` puts in target/models/all-minilm-l6-v2).
    #[arg(long)]
    decontam_model: Option<PathBuf>,
    /// Exact (brute-force) nearest-neighbour search instead of the usearch index.
    #[arg(long)]
    decontam_exact: bool,
    /// Embedding rule: nearest neighbour at squared L2 ≤ this on unit vectors (0.05 ⇔ cosine ≥ 0.975).
    #[arg(long, default_value_t = 0.05)]
    decontam_max_l2: f32,
    /// Embedding rule: and |len(row) − len(benchmark)| / len(row) ≤ this (characters).
    #[arg(long, default_value_t = 0.20)]
    decontam_max_len_diff: f64,
    /// n-gram check window, in words.
    #[arg(long, default_value_t = 13)]
    decontam_ngram: usize,
    /// n-gram check: ignore n-grams found in more than this many benchmark items (prompt
    /// boilerplate); 0 uses every n-gram.
    #[arg(long, default_value_t = 10)]
    decontam_ngram_max_items: usize,
    /// Backend for the embedding model.
    #[arg(long, value_enum, default_value = "cpu")]
    decontam_backend: EmbedBackend,
    /// Texts per embedding forward pass.
    #[arg(long, default_value_t = 64)]
    decontam_batch: usize,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum DecontamChecks {
    Both,
    Embedding,
    Ngram,
    Off,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum EmbedBackend {
    Cpu,
    Cuda,
}

/// bagel-train's BERT sentence embedder behind bagel-decontam's `Embedder`.
struct BurnEmbedder<B: Backend> {
    inner: bagel_train::embed::SentenceEmbedder<B>,
    key: String,
}

impl<B: Backend> bagel_decontam::Embedder for BurnEmbedder<B>
where
    bagel_train::embed::SentenceEmbedder<B>: Sync,
{
    fn model_key(&self) -> &str {
        &self.key
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
        self.inner.embed(texts).map_err(|e| e.to_string())
    }
}

fn load_embedder<B: Backend>(dir: &std::path::Path, device: &B::Device, batch: usize) -> Result<BurnEmbedder<B>> {
    let mut inner = bagel_train::embed::SentenceEmbedder::<B>::load(dir, device).with_context(|| format!("loading the decontamination model {}", dir.display()))?;
    inner.batch_size = batch.max(1);
    let key = inner.content_key()?;
    Ok(BurnEmbedder { inner, key })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BadRow {
    Skip,
    Fail,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PluginFail {
    Fail,
    Skip,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ChunkingArg {
    Reference,
    Balanced,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Snappy,
    Lz4,
    None,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Refusal {
    Intended,
    Compat,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let recipe = Recipe::load(&a.recipe)?;
    let opts = BuildOptions {
        plugins: a.plugins,
        data: a.data,
        seed: a.seed.or(recipe.seed).unwrap_or(42),
        recipe,
        out: a.out,
        formats: a.formats,
        tokenizer: a.tokenizer,
        on_bad_row: match a.on_bad_row {
            BadRow::Skip => OnBadRow::Skip,
            BadRow::Fail => OnBadRow::Fail,
        },
        on_plugin_error: match a.on_plugin_error {
            PluginFail::Fail => OnPluginError::Fail,
            PluginFail::Skip => OnPluginError::Skip,
        },
        limits: Limits { call_timeout: Duration::from_secs_f64(a.call_timeout), memory_bytes: a.memory_mib << 20 },
        refusal: match a.refusal {
            Refusal::Intended => RefusalMode::Intended,
            Refusal::Compat => RefusalMode::Compat,
        },
        batch_size: a.batch_size,
        jobs: a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        wasm_cache: bagel_runtime::cache::default_dir(),
        use_stage_cache: !a.no_cache,
        chunking: match a.chunking {
            ChunkingArg::Reference => bagel_core::chunk::Chunking::Reference,
            ChunkingArg::Balanced => bagel_core::chunk::Chunking::Balanced,
        },
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        decontam: bagel_decontam::DecontamOptions {
            embedding: matches!(a.decontam, DecontamChecks::Both | DecontamChecks::Embedding),
            ngram: matches!(a.decontam, DecontamChecks::Both | DecontamChecks::Ngram),
            max_l2sq: a.decontam_max_l2,
            max_len_diff: a.decontam_max_len_diff,
            ngram_size: a.decontam_ngram,
            ngram_max_items: a.decontam_ngram_max_items,
            exact: a.decontam_exact,
            embed_chunk: 1024,
            cache_dir: bagel_core::cache_root().map(|r| r.join("decontam")),
        },
        compression: match a.compression {
            CompressionArg::Snappy => OutputCompression::Snappy,
            CompressionArg::Lz4 => OutputCompression::Lz4,
            CompressionArg::None => OutputCompression::None,
        },
    };
    if a.decontam_ngram == 0 {
        anyhow::bail!("--decontam-ngram must be at least 1");
    }
    let wants_embedder = opts.recipe.benchmarks.iter().any(|b| b.enabled) && opts.decontam.embedding;
    let embedder: Option<Box<dyn bagel_decontam::Embedder>> = match (&a.decontam_model, wants_embedder) {
        (_, false) => None,
        (None, true) => anyhow::bail!(
            "the recipe lists benchmarks and the embedding check is on: pass --decontam-model DIR (all-MiniLM-L6-v2; \
             `cargo xtask fetch-models` puts it in target/models/all-minilm-l6-v2), or --decontam ngram for the n-gram check only"
        ),
        (Some(dir), true) => match a.decontam_backend {
            EmbedBackend::Cpu => Some(Box::new(load_embedder::<bagel_train::CpuInference>(dir, &Default::default(), a.decontam_batch)?)),
            #[cfg(feature = "cuda")]
            EmbedBackend::Cuda => {
                bagel_train::configure_gpu_caches();
                Some(Box::new(load_embedder::<bagel_train::CudaInference>(dir, &Default::default(), a.decontam_batch)?))
            }
            #[cfg(not(feature = "cuda"))]
            EmbedBackend::Cuda => anyhow::bail!("this bagel was built without the `cuda` feature"),
        },
    };
    let report = build_with(&opts, embedder.as_deref()).with_context(|| format!("bagel build into {}", opts.out.display()))?;
    print!("{}", report.table());
    println!("wrote {}/sft.parquet (sha256 {}) and dpo.parquet (sha256 {})", opts.out.display(), report.sft_sha256, report.dpo_sha256);
    Ok(ExitCode::SUCCESS)
}
