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
    /// Print the prompt's token ids and the last position's top-10 logits as JSON.
    Logits {
        /// HF model directory.
        #[arg(long)]
        model: PathBuf,
        /// Prompt text.
        #[arg(long)]
        prompt: String,
    },
    /// Convert a llama.cpp GGUF (Llama architecture; F32/F16/Q8_0/Q4_0/Q4_1) to an HF directory.
    Import {
        /// The .gguf file.
        file: PathBuf,
        /// Output directory (model.safetensors, config.json, tokenizer files).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.action {
        Action::Init { from, out, seed } => {
            let n = bagel_train::weights::init_random(&from, &out, seed).with_context(|| format!("writing {}", out.display()))?;
            println!("initialised {n} parameters into {}", out.display());
        }
        Action::Logits { model, prompt } => {
            let (ids, top) = bagel_train::generate::top_logits(&model, &prompt, 10)?;
            let top: Vec<String> = top.iter().map(|(i, l)| format!("{{\"id\": {i}, \"logit\": {l}}}")).collect();
            println!("{{\"token_ids\": {ids:?}, \"top10\": [{}]}}", top.join(", "));
        }
        Action::Import { file, out } => {
            let c = bagel_train::gguf::import(&file, &out).with_context(|| format!("importing {}", file.display()))?;
            println!("imported {} ({} parameters, {} layers, vocab {}) into {}", file.display(), c.num_parameters(), c.num_hidden_layers, c.vocab_size, out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
