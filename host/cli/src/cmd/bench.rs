//! `bagel bench sft-step`: time the SFT training step on a random model of a given
//! config (no weights, tokenizer or data needed); `bench/gpu.sh` runs it next to the
//! PyTorch reference and prints one table.
use anyhow::Result;
use bagel_train::bench::StepBenchArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Forward + masked cross-entropy + backward + clip + AdamW on one fixed random batch.
    SftStep {
        /// Directory holding the model's HF config.json.
        #[arg(long)]
        config: PathBuf,
        /// Sequences per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 1024)]
        seq: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed warm-up steps (compilation, autotuning).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// bf16 mixed precision (f32 master weights and AdamW state).
        #[arg(long)]
        bf16: bool,
        /// cpu or cuda.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: super::train::BackendArg,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Dense bf16 peak of the device for MFU, TFLOP/s (H200 measured: 790).
        #[arg(long, default_value_t = 790.0)]
        peak_tflops: f64,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Action::SftStep { config, batch, seq, steps, warmup, bf16, backend, seed, peak_tflops, json } = a.action;
    let args = StepBenchArgs { config_dir: config, batch, seq, steps, warmup, bf16, seed, peak_tflops };
    let r = bagel_train::bench_sft_step_on(backend.kind(), &args)?;
    println!("{:<12} {:>10} {:>12} {:>10} {:>12} {:>8} {:>14}", "precision", "params", "tokens/step", "first (s)", "step (s)", "MFU", "tokens/s");
    println!("{:<12} {:>10} {:>12} {:>10.1} {:>12.4} {:>7.1}% {:>14.0}", r.precision, r.params, r.tokens_per_step, r.first_step_s, r.step_s_median, 100.0 * r.mfu, r.tokens_per_s);
    println!("host queueing a step (median): {:.4} s", r.queue_s_median);
    println!("losses: {}", r.losses.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>().join(" "));
    if r.cublas_gemms_per_step > 0.0 {
        println!(
            "custom CUDA ops per step: {:.0} ops ({:.0} cuBLAS GEMMs, {:.0} fused attention), {:.3} s host time in their sessions, {:.3} s waiting for CubeCL's queue (host waits only), {:.3} s in address-lookup round trips to CubeCL",
            r.cuda_ops_per_step, r.cublas_gemms_per_step, r.fused_attention_per_step, r.cuda_ops_s_per_step, r.cuda_ops_sync_s_per_step, r.cuda_ops_lookup_s_per_step
        );
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&r)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
