//! `bagel build`: recipe → sft.parquet, dpo.parquet, build-report.json.
use anyhow::{Context, Result};
use bagel_build::{build, BuildOptions, OnBadRow, OnPluginError, Recipe};
use bagel_core::refusal::RefusalMode;
use bagel_runtime::Limits;
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
    /// What to do when a plugin fails (trap, limit, error).
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
    /// Ignore the cached raw stage.
    #[arg(long)]
    no_cache: bool,
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
    };
    let report = build(&opts).with_context(|| format!("bagel build into {}", opts.out.display()))?;
    print!("{}", report.table());
    println!("wrote {}/sft.parquet (sha256 {}) and dpo.parquet (sha256 {})", opts.out.display(), report.sft_sha256, report.dpo_sha256);
    Ok(ExitCode::SUCCESS)
}
