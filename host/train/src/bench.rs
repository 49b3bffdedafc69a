//! SFT step benchmark (issue: CUDA trainer throughput): the training step of
//! [`crate::sft`] (forward, masked cross-entropy, backward, global-norm clip, AdamW) on a
//! randomly initialised model of a given `config.json` and one fixed random batch, so
//! it needs no weights, tokenizer or data. The PyTorch reference doing the same work is
//! `bench/torch_sft_step.py`; `bench/gpu.sh` runs both and prints one table.
//!
//! MFU (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM", appendix B) is
//! `6 · N · tokens/s / peak`, N = parameter count, with the peak a caller-given
//! number (790 TFLOP/s: the measured bf16 dense peak of one H200 on this project's
//! device; see bench/RESULTS.md). It ignores attention FLOPs, as PaLM's simple form does.
use crate::config::LlamaConfig;
use crate::error::{Result, TrainError};
use crate::model::{Llama, RandomInit};
use crate::sft::clip_global_norm_deferred;
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, ElementConversion, Int, Tensor};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct StepBenchArgs {
    /// Directory holding the model's HF `config.json`.
    pub config_dir: PathBuf,
    /// Sequences per step (one micro-batch).
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Steps timed after the warm-up.
    pub steps: usize,
    /// Untimed steps first (kernel compilation, autotuning, allocator warm-up).
    pub warmup: usize,
    /// bf16 mixed precision ([`Llama::with_bf16`]).
    pub bf16: bool,
    /// Seed of the weights and the batch.
    pub seed: u64,
    /// Dense peak of the device, TFLOP/s, for MFU.
    pub peak_tflops: f64,
}

/// What was measured (seconds are wall-clock, each step ending in a device sync).
#[derive(Debug, Clone, Serialize)]
pub struct StepBenchReport {
    /// Backend name as burn reports it.
    pub backend: String,
    /// `bf16-mixed` or `f32`.
    pub precision: String,
    /// Parameter count N.
    pub params: usize,
    /// Tokens per step (`batch · seq`).
    pub tokens_per_step: usize,
    /// Seconds from process-level start of the benchmark (model built) to the end of the
    /// first step: what a user waits before training runs (compilation, autotuning).
    pub first_step_s: f64,
    /// Median of the timed steps, seconds.
    pub step_s_median: f64,
    /// Fastest timed step, seconds.
    pub step_s_min: f64,
    /// `tokens_per_step / step_s_median`.
    pub tokens_per_s: f64,
    /// `6 · params · tokens_per_s / (peak_tflops · 10¹²)`.
    pub mfu: f64,
    /// Loss of every step (warm-up included): it must fall on a fixed batch.
    pub losses: Vec<f64>,
    /// cuBLAS GEMMs per timed step (linear layers and attention on the CUDA backend; 0
    /// elsewhere).
    pub cublas_gemms_per_step: f64,
    /// Fused attention calls per timed step (one per layer on the CUDA backend; 0 elsewhere).
    pub fused_attention_per_step: f64,
    /// Seconds per timed step the host spent in the custom CUDA ops' sessions (the ops that
    /// call cuBLAS: linear layers and attention) after the address lookups: queueing their
    /// work (device-side ordering, the default) or queueing it and waiting for it
    /// (`BAGEL_CUDA_HOST_WAIT=1`). The fused element-wise kernels and AdamW run on
    /// CubeCL's stream and are not in it.
    pub cuda_ops_s_per_step: f64,
    /// Custom CUDA ops (sessions) per timed step.
    pub cuda_ops_per_step: f64,
    /// Seconds per timed step the host waited for CubeCL's queue to finish before those ops
    /// (host waits, `BAGEL_CUDA_HOST_WAIT=1`; 0 under device-side ordering).
    pub cuda_ops_sync_s_per_step: f64,
    /// Seconds per timed step in the round trips to CubeCL's device thread that look up
    /// their operands' device addresses (including waiting for that thread to catch up).
    pub cuda_ops_lookup_s_per_step: f64,
    /// Median over the timed steps of the seconds the host took to queue a step's work
    /// (forward, backward, clipping, the optimizer step) before it first waits for the
    /// device (the loss read): near `step_s_median` when the host, not the GPU, sets the
    /// pace. It includes the host's blocking round trips to CubeCL's device thread (the
    /// CUDA ops' address lookups), so it bounds the queueing work from above.
    pub queue_s_median: f64,
}

/// The custom CUDA ops' totals so far: (GEMMs, attention calls, ops) and (seconds on
/// their stream, seconds waiting for CubeCL before them, seconds looking up addresses);
/// zeros without the `cuda` feature.
fn ops_stats() -> ([u64; 3], [f64; 3]) {
    #[cfg(feature = "cuda")]
    {
        let s = crate::cuda_ops::stats();
        ([s.gemms, s.attention_calls, s.sessions], [s.seconds, s.sync_seconds, s.lookup_seconds])
    }
    #[cfg(not(feature = "cuda"))]
    ([0; 3], [0.0; 3])
}

/// Run the benchmark on `device`. Errors: an unreadable config, zero sizes, or bf16 on a
/// backend without bf16 ([`TrainError::Args`]).
pub fn bench_sft_step<B: AutodiffBackend>(args: &StepBenchArgs, device: &B::Device) -> Result<StepBenchReport> {
    if args.batch == 0 || args.seq < 2 || args.steps == 0 {
        return Err(TrainError::Args("batch ≥ 1, seq ≥ 2 and steps ≥ 1 are needed".into()));
    }
    if args.bf16 && !B::supports_dtype(device, DType::BF16) {
        return Err(TrainError::Args("--bf16: this backend has no bf16 tensors (use --backend cuda)".into()));
    }
    B::seed(device, args.seed);
    let config = LlamaConfig::load(&args.config_dir)?;
    let t_start = Instant::now();
    let mut model = Llama::<B>::from_source(&config, &mut RandomInit { device })?.with_bf16(args.bf16);
    let params = model.num_params();
    let tokens = Tensor::<B, 2, Int>::random([args.batch, args.seq + 1], Distribution::Uniform(0.0, config.vocab_size as f64), device);
    let inputs = tokens.clone().narrow(1, 0, args.seq);
    let targets = tokens.narrow(1, 1, args.seq);
    let mask = Tensor::<B, 2>::ones([args.batch, args.seq], device);
    let n_targets = (args.batch * args.seq) as f64;
    // burn's AdamWConfig defaults (β 0.9 / 0.999, ε 1e-5), no weight decay.
    let opt = crate::sft::adamw(0.9, 0.999, 1e-5, 0.0);
    let grad_scale = opt.grad_scale.clone();
    let mut optim = opt.init::<B, Llama<B>>();
    let (mut losses, mut times, mut queue_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_step_s = 0.0;
    let mut at_warmup = ops_stats();
    for step in 0..args.warmup + args.steps {
        if step == args.warmup {
            at_warmup = ops_stats();
        }
        let t = Instant::now();
        let loss = model.loss_sum(inputs.clone(), targets.clone(), mask.clone()).div_scalar(n_targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let _norm = clip_global_norm_deferred(&model, &grads, 1.0, &grad_scale);
        model = optim.step(1e-4, model, grads);
        let queued = t.elapsed().as_secs_f64();
        losses.push(loss.into_scalar().elem::<f64>());
        B::sync(device).map_err(|e| TrainError::Args(format!("device sync failed: {e:?}")))?;
        if step == 0 {
            first_step_s = t_start.elapsed().as_secs_f64();
        }
        if step >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
            queue_times.push(queued);
        }
        tracing::info!(step, loss = losses[step], seconds = t.elapsed().as_secs_f64(), "bench step");
    }
    let (counts, secs) = ops_stats();
    let per_step = |now: u64, then: u64| (now - then) as f64 / args.steps as f64;
    let per_step_s = |now: f64, then: f64| (now - then) / args.steps as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    queue_times.sort_by(f64::total_cmp);
    let queue_s_median = queue_times[queue_times.len() / 2];
    let tokens_per_step = args.batch * args.seq;
    let tokens_per_s = tokens_per_step as f64 / median;
    Ok(StepBenchReport {
        backend: B::name(device),
        precision: if args.bf16 { "bf16-mixed".into() } else { "f32".into() },
        params,
        tokens_per_step,
        first_step_s,
        step_s_median: median,
        step_s_min: sorted[0],
        tokens_per_s,
        mfu: 6.0 * params as f64 * tokens_per_s / (args.peak_tflops * 1e12),
        losses,
        cublas_gemms_per_step: per_step(counts[0], at_warmup.0[0]),
        fused_attention_per_step: per_step(counts[1], at_warmup.0[1]),
        cuda_ops_s_per_step: per_step_s(secs[0], at_warmup.1[0]),
        cuda_ops_per_step: per_step(counts[2], at_warmup.0[2]),
        cuda_ops_sync_s_per_step: per_step_s(secs[1], at_warmup.1[1]),
        cuda_ops_lookup_s_per_step: per_step_s(secs[2], at_warmup.1[2]),
        queue_s_median,
    })
}
