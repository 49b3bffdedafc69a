//! `bagel model init`: random weights for a config (HF layout), e.g. the demo's tiny model.
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Write a randomly initialised model (N(0, 0.02²) weights) in HF layout.
    Init {
        /// Directory holding config.json and the tokenizer files.
        #[arg(long)]
        from: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Action::Init { from, out, seed } = a.action;
    let n = bagel_train::weights::init_random(&from, &out, seed).with_context(|| format!("writing {}", out.display()))?;
    println!("initialised {n} parameters into {}", out.display());
    Ok(ExitCode::SUCCESS)
}
