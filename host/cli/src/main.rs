//! `bagel` — thin binary over the library crates (one file per subcommand in `cmd/`).
use clap::{Parser, Subcommand};

mod cmd;

/// mimalloc instead of glibc malloc: a build allocates and frees hundreds of thousands of
/// strings and tens of MB of buffers; glibc maps and faults in fresh pages for each large
/// buffer and frees slowly (bench/RESULTS.md, issue 3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Build a composite LLM fine-tuning dataset from sandboxed WASM plugins.
#[derive(Parser)]
#[command(name = "bagel", version, about, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect installed plugins.
    Plugins(cmd::plugins::Args),
    /// Build sft.parquet and dpo.parquet from a recipe.
    Build(cmd::build::Args),
    /// Fine-tune a model on a built dataset.
    Train(cmd::train::Args),
    /// Create or convert models.
    Model(cmd::model::Args),
    /// Greedy text generation with a model.
    Generate(cmd::generate::Args),
    /// Benchmarks (the SFT training step).
    Bench(cmd::bench::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BAGEL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    let argv = match cmd::train::expand_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    let res = match cli.command {
        Command::Plugins(a) => cmd::plugins::run(a),
        Command::Build(a) => cmd::build::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Model(a) => cmd::model::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
