//! `bagel train sft`: fine-tune a Llama/Mistral model on `sft.parquet` (CPU backend).
use anyhow::Result;
use bagel_train::sft::SftArgs;
use std::path::PathBuf;
use std::process::ExitCode;

/// `bagel train sft|dpo [--config FILE] …`
///
/// `--config FILE` (TOML) holds the same keys as the flags, snake_case or kebab-case
/// (`learning_rate = 2e-4`, `include_sources = ["a", "b"]`, `group_by_length = true`); flags
/// given on the command line win over the file.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    phase: Phase,
}

/// Replace `--config FILE` after `train sft|dpo` with the flags the TOML file holds, placed
/// before the command-line flags (later flags override earlier ones). Errors: unreadable
/// file, TOML syntax, a value that is a table.
pub fn expand_config(argv: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    use anyhow::Context;
    let s: Vec<String> = argv.iter().map(|a| a.to_string_lossy().to_string()).collect();
    let Some(t) = s.iter().position(|a| a == "train") else { return Ok(argv) };
    let Some(c) = s.iter().position(|a| a == "--config" || a.starts_with("--config=")) else { return Ok(argv) };
    if c < t + 2 {
        return Ok(argv);
    }
    let (file, skip) = match s[c].strip_prefix("--config=") {
        Some(f) => (f.to_string(), 1),
        None => (s.get(c + 1).cloned().context("--config needs a file")?, 2),
    };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading trainer config {file}"))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing trainer config {file}"))?;
    let mut flags: Vec<std::ffi::OsString> = Vec::new();
    for (k, v) in &table {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            toml::Value::Boolean(true) => flags.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string())).collect();
                flags.push(flag.into());
                flags.push(parts.join(",").into());
            }
            toml::Value::Table(_) => anyhow::bail!("trainer config {file}: `{k}` is a table; only flag = value pairs are allowed"),
            toml::Value::String(x) => {
                flags.push(flag.into());
                flags.push(x.into());
            }
            other => {
                flags.push(flag.into());
                flags.push(other.to_string().into());
            }
        }
    }
    let mut out: Vec<std::ffi::OsString> = argv[..t + 2].to_vec();
    out.extend(flags);
    out.extend(argv[t + 2..c].iter().cloned());
    out.extend(argv[c + skip..].iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_file_flags_come_first_and_cli_wins() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sft.toml");
        std::fs::write(&f, "learning_rate = 2e-4\nmax-steps = 10\ngroup_by_length = true\ntrain_on_source = false\ninclude_sources = [\"a_chatml\", \"b\"]\n").unwrap();
        let argv: Vec<std::ffi::OsString> = ["bagel", "train", "sft", "--max-steps", "3", "--config", f.to_str().unwrap()].iter().map(|s| s.into()).collect();
        let got: Vec<String> = super::expand_config(argv).unwrap().iter().map(|s| s.to_string_lossy().to_string()).collect();
        assert_eq!(
            got,
            ["bagel", "train", "sft", "--group-by-length", "--include-sources", "a_chatml,b", "--learning-rate", "0.0002", "--max-steps", "10", "--max-steps", "3"]
        );
    }
}

#[derive(clap::Subcommand)]
enum Phase {
    /// Supervised fine-tuning with the loss on the response only.
    Sft(SftFlags),
    /// DPO on dpo.parquet with precomputed reference log-probs.
    Dpo(DpoFlags),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Loss {
    Sigmoid,
    Ipo,
    Hinge,
}

/// TRL/HF flag names, kebab-case.
#[derive(clap::Args)]
struct DpoFlags {
    /// Policy model (HF directory), usually the SFT output.
    #[arg(long)]
    model_name_or_path: PathBuf,
    /// Reference model (default: the starting policy, log-probs precomputed once).
    #[arg(long)]
    ref_model: Option<PathBuf>,
    /// dpo.parquet written by `bagel build`.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long)]
    output_dir: PathBuf,
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    #[arg(long, value_enum, default_value = "sigmoid")]
    loss_type: Loss,
    /// Longest prompt + reply, tokens.
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Longest prompt, tokens (keeps the prompt's end).
    #[arg(long, default_value_t = 512)]
    max_prompt_length: usize,
    #[arg(long, default_value_t = 1)]
    per_device_train_batch_size: usize,
    #[arg(long, default_value_t = 1)]
    gradient_accumulation_steps: usize,
    #[arg(long, default_value_t = 5e-7)]
    learning_rate: f64,
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_epsilon: f64,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    num_train_epochs: f64,
    #[arg(long)]
    max_train_samples: Option<usize>,
    #[arg(long, default_value_t = 10)]
    logging_steps: usize,
    #[arg(long, default_value_t = 42)]
    data_seed: u64,
    /// Eval split: a fraction (< 1) or a count (≥ 1) of the pairs, drawn at random (seeded).
    #[arg(long, default_value_t = 0.0)]
    eval_dataset_size: f64,
    #[arg(long)]
    max_eval_samples: Option<usize>,
    /// Evaluate every N steps (also before the first and after the last).
    #[arg(long, default_value_t = 0)]
    eval_steps: usize,
    /// Save checkpoint-N every N steps (0 = never).
    #[arg(long, default_value_t = 0)]
    save_steps: usize,
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Resume from the latest checkpoint in --output-dir.
    #[arg(long)]
    resume: bool,
    /// Keep the reference model loaded and run it every micro-batch instead of
    /// precomputing its log-probs once (TRL `precompute_ref_log_probs=False`).
    #[arg(long)]
    live_reference: bool,
}

fn run_dpo(f: DpoFlags) -> Result<ExitCode> {
    use bagel_train::dpo::{train_dpo, DpoArgs, LossType};
    let args = DpoArgs {
        model_name_or_path: f.model_name_or_path,
        ref_model: f.ref_model,
        dataset: f.dataset,
        output_dir: f.output_dir,
        beta: f.beta,
        loss_type: match f.loss_type {
            Loss::Sigmoid => LossType::Sigmoid,
            Loss::Ipo => LossType::Ipo,
            Loss::Hinge => LossType::Hinge,
        },
        max_length: f.max_length,
        max_prompt_length: f.max_prompt_length,
        per_device_train_batch_size: f.per_device_train_batch_size,
        gradient_accumulation_steps: f.gradient_accumulation_steps,
        learning_rate: f.learning_rate,
        warmup_ratio: f.warmup_ratio,
        max_grad_norm: f.max_grad_norm,
        weight_decay: f.weight_decay,
        adam_beta1: f.adam_beta1,
        adam_beta2: f.adam_beta2,
        adam_epsilon: f.adam_epsilon,
        max_steps: f.max_steps,
        num_train_epochs: f.num_train_epochs,
        max_train_samples: f.max_train_samples,
        logging_steps: f.logging_steps,
        data_seed: f.data_seed,
        precompute_ref_log_probs: !f.live_reference,
        eval_dataset_size: f.eval_dataset_size,
        max_eval_samples: f.max_eval_samples,
        eval_steps: f.eval_steps,
        save_steps: f.save_steps,
        save_total_limit: f.save_total_limit,
        resume: f.resume,
    };
    let s = train_dpo::<bagel_train::CpuBackend>(&args, &Default::default())?;
    if let (Some(first), Some(last)) = (s.curve.first(), s.curve.last()) {
        println!(
            "dpo: {} steps; loss {:.4} -> {:.4}; rewards/accuracies {:.2} -> {:.2}; rewards/margins {:.4} -> {:.4}",
            s.curve.len(),
            first.1,
            last.1,
            first.2,
            last.2,
            first.3,
            last.3
        );
    }
    if let (Some(first), Some(last)) = (s.eval.first(), s.eval.last()) {
        println!("dpo eval ({} pairs): loss {:.4} -> {:.4}; rewards/accuracies {:.2} -> {:.2}", s.eval_pairs, first.1, last.1, first.2, last.2);
    }
    println!("model, reference_logps.json and metrics.jsonl written to {}", args.output_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// HF-Trainer flag names, kebab-case.
#[derive(clap::Args)]
struct SftFlags {
    /// HF model directory (config.json, model.safetensors or sharded index, tokenizer files).
    #[arg(long)]
    model_name_or_path: PathBuf,
    /// sft.parquet written by `bagel build`.
    #[arg(long)]
    dataset: PathBuf,
    /// Output directory (final model in HF layout, metrics.jsonl, training_args.json).
    #[arg(long)]
    output_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    per_device_train_batch_size: usize,
    #[arg(long, default_value_t = 1)]
    gradient_accumulation_steps: usize,
    #[arg(long, default_value_t = 2e-5)]
    learning_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_epsilon: f64,
    /// Epochs (fractional allowed).
    #[arg(long, default_value_t = 3.0)]
    num_train_epochs: f64,
    /// Optimizer steps (overrides epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Longest example, tokens.
    #[arg(long, default_value_t = 4096)]
    model_max_len: usize,
    /// Truncate over-length examples instead of skipping them.
    #[arg(long)]
    no_skip_excess_length: bool,
    /// Compute the loss on the input tokens too.
    #[arg(long)]
    train_on_source: bool,
    /// Keep only rows whose source starts with one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    include_sources: Vec<String>,
    #[arg(long)]
    max_train_samples: Option<usize>,
    #[arg(long)]
    max_eval_samples: Option<usize>,
    /// Fraction held out for eval, stratified by source.
    #[arg(long, default_value_t = 0.0)]
    eval_dataset_size: f64,
    /// Evaluate every N steps (and at the end).
    #[arg(long, default_value_t = 0)]
    eval_steps: usize,
    #[arg(long, default_value_t = 10)]
    logging_steps: usize,
    /// Save a checkpoint every N steps (0: none).
    #[arg(long, default_value_t = 0)]
    save_steps: usize,
    /// Keep at most N checkpoints.
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Resume from the latest checkpoint-N in --output-dir (weights, AdamW state, schedule
    /// position, data position).
    #[arg(long)]
    resume_from_checkpoint: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 42)]
    data_seed: u64,
    /// Compute backend: cpu (burn-ndarray) or cuda (needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendArg,
    /// Put examples of similar length in the same batch (HF group_by_length: mega-batches of
    /// 50 × batch size sorted by length).
    #[arg(long)]
    group_by_length: bool,
    /// Recompute element-wise ops in the backward pass instead of storing them (burn's
    /// BalancedCheckpointing; less memory, more compute).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// bf16 mixed precision: f32 master weights and AdamW state, bf16 matmuls and
    /// activations (for --backend cuda).
    #[arg(long)]
    bf16: bool,
    /// Pad each batch to a multiple of this many tokens (fewer distinct shapes: on CUDA
    /// each new shape compiles and autotunes kernels).
    #[arg(long, default_value_t = 1)]
    pad_to_multiple_of: usize,
}

/// `--backend`: where training runs.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    /// burn-ndarray on the CPU.
    Cpu,
    /// burn-cuda on GPU 0 (a build with `--features cuda`).
    Cuda,
}

impl BackendArg {
    /// The library's backend choice.
    pub fn kind(self) -> bagel_train::BackendKind {
        match self {
            BackendArg::Cpu => bagel_train::BackendKind::Cpu,
            BackendArg::Cuda => bagel_train::BackendKind::Cuda,
        }
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let f = match a.phase {
        Phase::Sft(f) => f,
        Phase::Dpo(f) => return run_dpo(f),
    };
    let args = SftArgs {
        model_name_or_path: f.model_name_or_path,
        dataset: f.dataset,
        output_dir: f.output_dir,
        per_device_train_batch_size: f.per_device_train_batch_size,
        gradient_accumulation_steps: f.gradient_accumulation_steps,
        learning_rate: f.learning_rate,
        warmup_ratio: f.warmup_ratio,
        max_grad_norm: f.max_grad_norm,
        weight_decay: f.weight_decay,
        adam_beta1: f.adam_beta1,
        adam_beta2: f.adam_beta2,
        adam_epsilon: f.adam_epsilon,
        num_train_epochs: f.num_train_epochs,
        max_steps: f.max_steps,
        model_max_len: f.model_max_len,
        skip_excess_length: !f.no_skip_excess_length,
        train_on_source: f.train_on_source,
        include_sources: f.include_sources,
        max_train_samples: f.max_train_samples,
        max_eval_samples: f.max_eval_samples,
        eval_dataset_size: f.eval_dataset_size,
        eval_steps: f.eval_steps,
        logging_steps: f.logging_steps,
        save_steps: f.save_steps,
        save_total_limit: f.save_total_limit,
        resume: f.resume_from_checkpoint,
        seed: f.seed,
        data_seed: f.data_seed,
        group_by_length: f.group_by_length,
        gradient_checkpointing: f.gradient_checkpointing,
        bf16: f.bf16,
        pad_to_multiple_of: f.pad_to_multiple_of,
    };
    let kind = f.backend.kind();
    let s = bagel_train::train_sft_on(kind, &args)?;
    println!(
        "sft: {} steps on {} examples ({} eval); train loss (mean of first / last quarter of steps) {:.4} -> {:.4}{}; dropped: {} too long, {} filtered by source, {} without targets",
        s.steps,
        s.train_examples,
        s.eval_examples,
        s.first_quarter_loss,
        s.last_quarter_loss,
        match (s.initial_eval_loss, s.final_eval_loss) {
            (Some(a), Some(b)) => format!(", eval loss {a:.4} -> {b:.4}"),
            (None, Some(b)) => format!(", eval loss {b:.4}"),
            _ => String::new(),
        },
        s.data.skipped_too_long,
        s.data.filtered_by_source,
        s.data.no_targets
    );
    println!("model and metrics.jsonl written to {}", args.output_dir.display());
    Ok(ExitCode::SUCCESS)
}
