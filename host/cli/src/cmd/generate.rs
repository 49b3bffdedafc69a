//! `bagel generate --model DIR --prompt TEXT`: greedy decoding on the CPU.
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (special-token text such as <|im_start|> is recognised).
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let text = bagel_train::generate::generate_text(&a.model, &a.prompt, a.max_new_tokens)?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
