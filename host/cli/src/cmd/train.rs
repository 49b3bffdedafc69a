//! `bagel train sft`: fine-tune a Llama/Mistral model on `sft.parquet` (CPU backend).
use anyhow::Result;
use bagel_train::sft::SftArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    phase: Phase,
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
    backend: Backend,
    /// Put examples of similar length in the same batch (HF group_by_length: mega-batches of
    /// 50 × batch size sorted by length).
    #[arg(long)]
    group_by_length: bool,
    /// Recompute element-wise ops in the backward pass instead of storing them (burn's
    /// BalancedCheckpointing; less memory, more compute).
    #[arg(long)]
    gradient_checkpointing: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Backend {
    Cpu,
    Cuda,
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
    };
    let kind = match f.backend {
        Backend::Cpu => bagel_train::BackendKind::Cpu,
        Backend::Cuda => bagel_train::BackendKind::Cuda,
    };
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
