//! The SFT loop.
//!
//! - AdamW (Loshchilov & Hutter 2019) via burn-optim, β1/β2/ε/weight decay as flags.
//! - Learning rate: HF `get_linear_schedule_with_warmup`: for optimizer step k (0-based),
//!   `lr·k/w` while k < w, then `lr·max(0, (T−k)/(T−w))`, with w = ⌈warmup_ratio·T⌉.
//! - Global gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`): all gradients are
//!   scaled by `min(1, max_grad_norm / ‖g‖₂)` where ‖g‖₂ is over every parameter at once
//!   (burn's own clipping is per parameter).
//! - Gradient accumulation: each micro-batch's summed token loss is divided by the number
//!   of target tokens in the whole accumulated batch, so the step's gradient is that of
//!   the mean loss over the accumulated tokens.
//! - Metrics: one JSON object per logging/eval step in `OUTPUT_DIR/metrics.jsonl`.
use crate::config::LlamaConfig;
use crate::data::{load_sft, stratified_split, DataOptions, Example, Tok};
use crate::error::{io, Result, TrainError};
use crate::model::Llama;
use crate::weights::{load_model, save_model};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// SFT arguments (HF Trainer names, kebab-case on the CLI).
#[derive(Debug, Clone, Serialize)]
pub struct SftArgs {
    /// HF model directory (config.json, safetensors, tokenizer files).
    pub model_name_or_path: PathBuf,
    /// `sft.parquet` written by `bagel build`.
    pub dataset: PathBuf,
    /// Where the final model and metrics go.
    pub output_dir: PathBuf,
    /// Examples per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Fraction of steps for linear warm-up.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_epsilon: f64,
    /// Epochs (fractional allowed).
    pub num_train_epochs: f64,
    /// Optimizer steps; overrides epochs when set.
    pub max_steps: Option<usize>,
    /// Longest example, tokens.
    pub model_max_len: usize,
    /// Skip (true) or truncate over-length examples.
    pub skip_excess_length: bool,
    /// Loss on input tokens too.
    pub train_on_source: bool,
    /// Source-prefix filter.
    pub include_sources: Vec<String>,
    /// Cap on training examples.
    pub max_train_samples: Option<usize>,
    /// Cap on eval examples.
    pub max_eval_samples: Option<usize>,
    /// Fraction held out for eval, stratified by source (0 disables).
    pub eval_dataset_size: f64,
    /// Evaluate every N steps (0: only at the end).
    pub eval_steps: usize,
    /// Log every N steps.
    pub logging_steps: usize,
    /// Save a checkpoint every N optimizer steps (0: none).
    pub save_steps: usize,
    /// Keep at most this many checkpoints (oldest deleted first).
    pub save_total_limit: Option<usize>,
    /// Resume from the latest `checkpoint-N` in `output_dir`.
    pub resume: bool,
    /// Model-init / general seed.
    pub seed: u64,
    /// Data order / split seed.
    pub data_seed: u64,
    /// Batch examples of similar length together (HF `group_by_length`, its
    /// `LengthGroupedSampler`): each epoch's shuffled order is cut into mega-batches of
    /// 50 × batch size, each sorted by length, longest first; less padding per batch.
    pub group_by_length: bool,
    /// Trade compute for memory: burn's `BalancedCheckpointing` autodiff strategy, which
    /// recomputes memory-bound (element-wise) ops in the backward pass instead of keeping
    /// their outputs. Unlike HF's per-layer checkpointing, matmul outputs are still kept.
    /// Same numbers either way; the choice is made by [`crate::train_sft_on`].
    pub gradient_checkpointing: bool,
    /// bf16 mixed precision (HF `--bf16`): f32 master weights and AdamW state, bf16
    /// matmuls and activations ([`Llama::with_bf16`]). Meant for CUDA; on the CPU backend
    /// bf16 is emulated and slow.
    pub bf16: bool,
    /// Round every batch's length up to a multiple of this many tokens (1: pad to the
    /// longest example only).
    pub pad_to_multiple_of: usize,
}

/// AdamW (Loshchilov & Hutter 2019) with HF Trainer's knobs; shared by SFT, DPO and the
/// step benchmark. Fused into one kernel per parameter on CUDA ([`crate::optim`]).
pub(crate) fn adamw(beta1: f64, beta2: f64, epsilon: f64, weight_decay: f64) -> crate::optim::FusedAdamW {
    crate::optim::FusedAdamW::new(beta1, beta2, epsilon, weight_decay)
}

/// (total optimizer steps, warm-up steps) as HF Trainer derives them: `max_steps`, else
/// ⌈epochs · examples / examples per step⌉ (at least 1); warm-up ⌈ratio · total⌉.
pub(crate) fn schedule(max_steps: Option<usize>, epochs: f64, examples: usize, per_step: usize, warmup_ratio: f64) -> (usize, usize) {
    let total = max_steps.unwrap_or_else(|| ((epochs * examples as f64) / per_step as f64).ceil().max(1.0) as usize);
    (total, (warmup_ratio * total as f64).ceil() as usize)
}

/// HF's `LengthGroupedSampler` mega-batch factor.
pub const MEGABATCH_MULT: usize = 50;

/// Sort each run of `megabatch` consecutive entries of `order` by `len(i)`, longest first
/// (stable, so ties keep the shuffled order). HF `get_length_grouped_indices`.
pub fn group_by_length(order: &mut [usize], megabatch: usize, len: impl Fn(usize) -> usize) {
    for chunk in order.chunks_mut(megabatch.max(1)) {
        chunk.sort_by_key(|&i| std::cmp::Reverse(len(i)));
    }
}

/// One metrics line.
#[derive(Debug, Serialize)]
struct Metrics {
    step: usize,
    epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_loss: Option<f64>,
    learning_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm: Option<f64>,
    tokens_per_second: f64,
}

/// Where training stands; saved in every checkpoint as `trainer_state.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Position in `order`.
    pub cursor: usize,
    /// Data-order RNG state.
    pub rng: u64,
    /// Current epoch's example order.
    pub order: Vec<usize>,
    /// Examples consumed so far.
    pub seen: usize,
    /// Tokens processed so far.
    pub tokens_done: usize,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Eval loss before training (when there is an eval set).
    #[serde(default)]
    pub first_eval_loss: Option<f64>,
}

/// `checkpoint-N` directories under `dir`, sorted by N.
pub fn checkpoints(dir: &std::path::Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok().map(|n| (n, e.path()))).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    /// Optimizer steps done.
    pub steps: usize,
    /// Training / eval examples.
    pub train_examples: usize,
    /// Eval examples.
    pub eval_examples: usize,
    /// Loss of the first logged step.
    pub first_loss: f64,
    /// Loss of the last logged step.
    pub last_loss: f64,
    /// Mean training loss over the first quarter of this run's steps (per-step losses are
    /// noisy when batches mix short and long answers).
    pub first_quarter_loss: f64,
    /// Mean training loss over the last quarter of this run's steps.
    pub last_quarter_loss: f64,
    /// Eval loss before training, if any.
    pub initial_eval_loss: Option<f64>,
    /// Final eval loss, if any.
    pub final_eval_loss: Option<f64>,
    /// What data loading dropped.
    pub data: crate::data::DataReport,
}

/// HF linear schedule with warm-up (see module docs).
pub fn linear_lr(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * ((total.saturating_sub(step)) as f64 / (total - warmup).max(1) as f64).max(0.0)
    }
}

/// Sum of squares of all gradients, kept on the device (one read at the end, not one per
/// parameter: each read is a device sync).
struct SqNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sq: Option<Tensor<B::InnerBackend, 1>>,
    /// This crate's CUDA backend: the parameters' sums in one partials buffer, one launch
    /// each (`cuda_ops::SquareSums`).
    #[cfg(feature = "cuda")]
    fused: crate::cuda_ops::SquareSums<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SqNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            // One fused pass on this crate's CUDA backend (`cuda_ops::SquareSums`).
            #[cfg(feature = "cuda")]
            let g = match self.fused.add(g) {
                Ok(()) => return,
                Err(g) => g,
            };
            let g2 = g.powf_scalar(2.0);
            // Rows first, then the row sums: in the CUDA profile of bench/RESULTS.md (fifth
            // session) whole-tensor sums moved ≈ 90 GB/s, row reductions ≈ 490 GB/s.
            let s = if D >= 2 { g2.flatten::<2>(0, D - 2).sum_dim(1).sum() } else { g2.sum() };
            self.add(s);
        }
    }
}

impl<'a, B: AutodiffBackend> SqNorm<'a, B> {
    /// Nothing summed yet.
    fn new(grads: &'a GradientsParams) -> Self {
        SqNorm {
            grads,
            sq: None,
            #[cfg(feature = "cuda")]
            fused: crate::cuda_ops::SquareSums::new(),
        }
    }

    /// Σ g² over the visited parameters [1]; `None` when none had a gradient.
    fn total(self) -> Option<Tensor<B::InnerBackend, 1>> {
        #[cfg(feature = "cuda")]
        let sq = match (self.sq, self.fused.finish()) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        #[cfg(not(feature = "cuda"))]
        let sq = self.sq;
        sq
    }

    /// Add one parameter's Σ g² [1] to the running total.
    fn add(&mut self, s: Tensor<B::InnerBackend, 1>) {
        self.sq = Some(match self.sq.take() {
            Some(acc) => acc + s,
            None => s,
        });
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Global L2 norm of all gradients of `model`, still on the device ([`clip_global_norm_deferred`]).
pub struct GradNorm<B: Backend>(Option<Tensor<B, 1>>);

impl<B: Backend> GradNorm<B> {
    /// The norm as a number (a device read: call it after the optimizer step is queued,
    /// so the GPU is not drained mid-step). 0 without gradients.
    pub fn value(self) -> f64 {
        self.0.map_or(0.0, |n| n.into_scalar().elem::<f64>())
    }
}

/// Global-norm clipping as the training loops run it, without a host sync: ‖g‖₂ over every
/// gradient of `model` on the device, and the coefficient min(1, max_norm / (‖g‖₂ + 1e-6))
/// (`torch.nn.utils.clip_grad_norm_`'s) handed to the optimizer through `scale`, which its
/// next step multiplies every gradient by (inside the fused AdamW kernel on the CUDA
/// backend, so clipping costs no pass of its own). `max_norm` ≤ 0 clears the scale (no
/// clipping). Returns the pre-clip norm, to be read after the step ([`GradNorm::value`]).
/// Same update as [`clip_global_norm`] then the step, within f32 rounding (tested).
pub fn clip_global_norm_deferred<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &GradientsParams, max_norm: f64, scale: &crate::optim::GradScale) -> GradNorm<B::InnerBackend> {
    let mut v = SqNorm::<B>::new(grads);
    model.visit(&mut v);
    let norm = v.total().map(|sq| sq.sqrt());
    match &norm {
        Some(n) if max_norm > 0.0 => scale.set(n.clone().add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0)),
        _ => scale.clear(),
    }
    GradNorm(norm)
}

/// Global L2 norm of all gradients of `model`; scales them to `max_norm` when above it
/// (one device read, then one pass over the gradients; the training loops use
/// [`clip_global_norm_deferred`]).
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut v = SqNorm::<B>::new(grads);
    model.visit(&mut v);
    let norm = v.total().map_or(0.0, |sq| sq.into_scalar().elem::<f64>()).sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let mut s = Scale { grads, factor: max_norm / (norm + 1e-6) };
        model.visit(&mut s);
    }
    norm
}

/// Build (tokens, targets, mask) tensors [B, S−1] for a micro-batch, right-padded with EOS.
pub fn batch_tensors<B: Backend>(batch: &[&Example], pad: u32, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2>, usize) {
    batch_tensors_padded(batch, pad, 1, device)
}

/// [`batch_tensors`] with the sequence length S rounded up to a multiple of
/// `pad_to_multiple_of` (HF `DataCollatorForSeq2Seq(pad_to_multiple_of=…)`): on GPU
/// backends every new shape costs kernel compilation and autotuning, so fewer distinct
/// lengths mean a faster start. Padding positions are masked out; the loss is unchanged.
pub fn batch_tensors_padded<B: Backend>(batch: &[&Example], pad: u32, pad_to_multiple_of: usize, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2>, usize) {
    let s = (batch.iter().map(|e| e.ids.len()).max().unwrap_or(2).max(2) - 1).next_multiple_of(pad_to_multiple_of.max(1));
    let b = batch.len();
    let (mut tok, mut tgt, mut msk) = (Vec::with_capacity(b * s), Vec::with_capacity(b * s), Vec::with_capacity(b * s));
    let mut n = 0;
    for e in batch {
        for i in 0..s {
            let have = i + 1 < e.ids.len();
            tok.push(*e.ids.get(i).unwrap_or(&pad) as i64);
            tgt.push(if have { e.ids[i + 1] as i64 } else { pad as i64 });
            let m = have && e.mask[i + 1];
            n += usize::from(m);
            msk.push(if m { 1.0f32 } else { 0.0 });
        }
    }
    (
        Tensor::from_data(TensorData::new(tok, [b, s]), device),
        Tensor::from_data(TensorData::new(tgt, [b, s]), device),
        Tensor::from_data(TensorData::new(msk, [b, s]), device),
        n,
    )
}

/// Mean target-token loss of `model` over `examples` (no gradients).
pub fn evaluate<B: Backend>(model: &Llama<B>, examples: &[Example], bs: usize, pad: u32, device: &B::Device) -> f64 {
    evaluate_padded(model, examples, bs, pad, 1, device)
}

/// [`evaluate`] with batches padded as [`batch_tensors_padded`] does.
pub fn evaluate_padded<B: Backend>(model: &Llama<B>, examples: &[Example], bs: usize, pad: u32, pad_to_multiple_of: usize, device: &B::Device) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in examples.chunks(bs.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (t, y, m, k) = batch_tensors_padded::<B>(&refs, pad, pad_to_multiple_of, device);
        sum += model.loss_sum(t, y, m).into_scalar().elem::<f64>();
        n += k;
    }
    sum / n.max(1) as f64
}

/// Run SFT on backend `B`; writes the final model (HF layout) and `metrics.jsonl` to
/// `args.output_dir`, plus `training_args.json`.
pub fn train_sft<B: AutodiffBackend>(args: &SftArgs, device: &B::Device) -> Result<SftSummary> {
    if args.per_device_train_batch_size == 0 || args.gradient_accumulation_steps == 0 {
        return Err(TrainError::Args("batch size and gradient accumulation must be ≥ 1".into()));
    }
    if args.bf16 && !B::supports_dtype(device, burn::tensor::DType::BF16) {
        return Err(TrainError::Args("--bf16: this backend has no bf16 tensors (use --backend cuda)".into()));
    }
    B::seed(device, args.seed);
    let tok = Tok::load(&args.model_name_or_path)?;
    let (config, model): (LlamaConfig, Llama<B>) = load_model(&args.model_name_or_path, device)?;
    let mut model = model.with_bf16(args.bf16);
    let opts = DataOptions { model_max_len: args.model_max_len, skip_excess_length: args.skip_excess_length, train_on_source: args.train_on_source, include_sources: args.include_sources.clone() };
    let (examples, data_report) = load_sft(&args.dataset, &tok, &opts)?;
    let (mut train, mut eval) = if args.eval_dataset_size > 0.0 { stratified_split(examples, args.eval_dataset_size, args.data_seed) } else { (examples, Vec::new()) };
    if let Some(m) = args.max_train_samples {
        train.truncate(m);
    }
    if let Some(m) = args.max_eval_samples {
        eval.truncate(m);
    }
    if train.is_empty() {
        return Err(TrainError::Args(format!("no training examples left in {} ({data_report:?})", args.dataset.display())));
    }
    let per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps;
    let (total, warmup) = schedule(args.max_steps, args.num_train_epochs, train.len(), per_step, args.warmup_ratio);
    std::fs::create_dir_all(&args.output_dir).map_err(io(&args.output_dir))?;
    std::fs::write(args.output_dir.join("training_args.json"), serde_json::to_vec_pretty(args).expect("args serialise")).map_err(io(&args.output_dir))?;
    let opt = adamw(args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay);
    let grad_scale = opt.grad_scale.clone();
    let mut optim = opt.init::<B, Llama<B>>();
    let pad = tok.eos.1;
    let megabatch = MEGABATCH_MULT * args.per_device_train_batch_size;
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let shuffle = |order: &mut Vec<usize>, rng: &mut u64| {
        crate::data::shuffle(order, rng);
        if args.group_by_length {
            group_by_length(order, megabatch, |i| lengths[i]);
        }
    };
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let mut st = TrainerState { step: 0, cursor: 0, rng: args.data_seed, order: (0..train.len()).collect(), seen: 0, tokens_done: 0, first_loss: f64::NAN, first_eval_loss: None };
    shuffle(&mut st.order, &mut st.rng);
    if args.resume {
        let restored;
        (model, optim, restored) = load_latest_checkpoint(&args.output_dir, model, optim, train.len(), &recorder, device)?;
        if let Some(r) = restored {
            st = r;
        }
    }
    let metrics_path = args.output_dir.join("metrics.jsonl");
    if args.resume {
        trim_metrics(&metrics_path, st.step)?;
    }
    let mut metrics = std::fs::OpenOptions::new().create(true).append(args.resume).write(true).truncate(!args.resume).open(&metrics_path).map_err(io(&metrics_path))?;
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    if let Ok(style) = indicatif::ProgressStyle::with_template("sft [{bar:30}] {pos}/{len} {msg} eta {eta}") {
        pb.set_style(style);
    }
    let t0 = Instant::now();
    let tokens_at_start = st.tokens_done;
    let (mut last_loss, mut final_eval) = (f64::NAN, None);
    let mut step_losses: Vec<f64> = Vec::new();
    if !eval.is_empty() && st.step == 0 {
        // Baseline eval before the first update (HF `eval_on_start`), so the eval curve
        // starts from the untuned model.
        let el = evaluate_padded(&model.valid(), &eval, args.per_device_train_batch_size, pad, args.pad_to_multiple_of, device);
        let m = Metrics { step: 0, epoch: 0.0, loss: None, eval_loss: Some(el), learning_rate: 0.0, grad_norm: None, tokens_per_second: 0.0 };
        writeln!(metrics, "{}", serde_json::to_string(&m).expect("metrics serialise")).map_err(io(&metrics_path))?;
        st.first_eval_loss = Some(el);
    }
    for step in st.step..total {
        let lr = linear_lr(args.learning_rate, step, warmup, total);
        let mut micro: Vec<Vec<&Example>> = Vec::with_capacity(args.gradient_accumulation_steps);
        for _ in 0..args.gradient_accumulation_steps {
            let mut mb = Vec::with_capacity(args.per_device_train_batch_size);
            for _ in 0..args.per_device_train_batch_size {
                if st.cursor == st.order.len() {
                    st.cursor = 0;
                    shuffle(&mut st.order, &mut st.rng);
                }
                mb.push(&train[st.order[st.cursor]]);
                st.cursor += 1;
                st.seen += 1;
            }
            micro.push(mb);
        }
        let n_targets: usize = micro.iter().flatten().map(|e| e.mask.iter().skip(1).filter(|&&m| m).count()).sum();
        let mut acc = GradientsAccumulator::<Llama<B>>::new();
        // Micro-batch losses stay on the device until the step is queued (a read is a
        // device sync).
        let mut losses = Vec::with_capacity(micro.len());
        for mb in &micro {
            let (t, y, m, _) = batch_tensors_padded::<B>(mb, pad, args.pad_to_multiple_of, device);
            st.tokens_done += t.dims()[0] * t.dims()[1];
            let loss = model.loss_sum(t, y, m).div_scalar(n_targets.max(1) as f64);
            losses.push(loss.clone().inner());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            acc.accumulate(&model, grads);
        }
        let grads = acc.grads();
        let grad_norm = clip_global_norm_deferred(&model, &grads, args.max_grad_norm, &grad_scale);
        model = optim.step(lr, model, grads);
        let grad_norm = grad_norm.value();
        let loss: f64 = losses.into_iter().map(|l| l.into_scalar().elem::<f64>()).sum();
        if st.first_loss.is_nan() {
            st.first_loss = loss;
        }
        last_loss = loss;
        step_losses.push(loss);
        let done = step + 1;
        st.step = done;
        let epoch = st.seen as f64 / train.len() as f64;
        let tps = (st.tokens_done - tokens_at_start) as f64 / t0.elapsed().as_secs_f64();
        pb.set_position(done as u64);
        pb.set_message(format!("loss {loss:.4} {tps:.0} tok/s"));
        let log = |m: &Metrics, f: &mut std::fs::File| -> Result<()> {
            writeln!(f, "{}", serde_json::to_string(m).expect("metrics serialise")).map_err(io(&metrics_path))
        };
        if args.logging_steps > 0 && (done % args.logging_steps == 0 || done == 1 || done == total) {
            log(&Metrics { step: done, epoch, loss: Some(loss), eval_loss: None, learning_rate: lr, grad_norm: Some(grad_norm), tokens_per_second: tps }, &mut metrics)?;
            tracing::info!(step = done, loss, lr, grad_norm, tps, "sft");
        }
        let eval_now = !eval.is_empty() && ((args.eval_steps > 0 && done % args.eval_steps == 0) || done == total);
        if eval_now {
            let valid = model.valid();
            let el = evaluate_padded(&valid, &eval, args.per_device_train_batch_size, pad, args.pad_to_multiple_of, device);
            final_eval = Some(el);
            log(&Metrics { step: done, epoch, loss: None, eval_loss: Some(el), learning_rate: lr, grad_norm: None, tokens_per_second: tps }, &mut metrics)?;
        }
        if args.save_steps > 0 && done % args.save_steps == 0 && done < total {
            save_checkpoint(&args.output_dir, args.save_total_limit, &args.model_name_or_path, &config, &model, &optim, &st, &recorder)?;
        }
    }
    pb.finish_and_clear();
    save_model(&model, &config, &args.model_name_or_path, &args.output_dir)?;
    crate::plot::plot_metrics(&metrics_path, &args.output_dir.join("loss.png"), "SFT", &["loss", "eval_loss"])?;
    let q = step_losses.len().div_ceil(4).max(1);
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let first_quarter_loss = mean(&step_losses[..q.min(step_losses.len())]);
    let last_quarter_loss = mean(&step_losses[step_losses.len().saturating_sub(q)..]);
    Ok(SftSummary { first_quarter_loss, last_quarter_loss, steps: total, train_examples: train.len(), eval_examples: eval.len(), first_loss: st.first_loss, last_loss, initial_eval_loss: st.first_eval_loss, final_eval_loss: final_eval, data: data_report })
}

/// On resume from step `step`: keep only the metrics lines up to that step (the lines the
/// interrupted run logged after its last checkpoint are logged again), atomically. With
/// no checkpoint (`step` 0) the file starts empty.
pub(crate) fn trim_metrics(path: &std::path::Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| step > 0 && serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v.get("step")?.as_u64()).is_some_and(|s| s as usize <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::weights::write_atomic(path, kept.as_bytes())
}

/// Restore model, optimizer and trainer state from the latest `checkpoint-N` under
/// `output_dir`; with no checkpoint, `model` and `optim` come back unchanged with `None`.
/// Errors: unreadable records, or a checkpoint saved for a different number of training
/// examples (`n_train`).
pub(crate) fn load_latest_checkpoint<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
    output_dir: &std::path::Path,
    model: Llama<B>,
    optim: O,
    n_train: usize,
    recorder: &NamedMpkFileRecorder<FullPrecisionSettings>,
    device: &B::Device,
) -> Result<(Llama<B>, O, Option<TrainerState>)> {
    let Some((_, ck)) = checkpoints(output_dir).pop() else { return Ok((model, optim, None)) };
    let rec = |e: burn::record::RecorderError| TrainError::BadFile { path: ck.clone(), message: e.to_string() };
    let model = model.load_record(recorder.load(ck.join("model"), device).map_err(rec)?);
    let optim = optim.load_record(recorder.load(ck.join("optimizer"), device).map_err(rec)?);
    let sp = ck.join("trainer_state.json");
    let st: TrainerState = serde_json::from_slice(&std::fs::read(&sp).map_err(io(&sp))?).map_err(|e| TrainError::BadFile { path: sp.clone(), message: e.to_string() })?;
    if st.order.len() != n_train {
        return Err(TrainError::Args(format!("{} was saved for {} training examples, the dataset now gives {n_train}", ck.display(), st.order.len())));
    }
    tracing::info!("resuming from {} at step {}", ck.display(), st.step);
    Ok((model, optim, Some(st)))
}

/// Write `output_dir/checkpoint-N/`: the model in HF layout (loadable by transformers), the
/// burn records of model and optimizer (parameter ids included, so AdamW state matches on
/// resume) and `trainer_state.json`; then delete the oldest beyond `save_total_limit`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_checkpoint<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
    output_dir: &std::path::Path,
    save_total_limit: Option<usize>,
    tokenizer_dir: &std::path::Path,
    config: &LlamaConfig,
    model: &Llama<B>,
    optim: &O,
    st: &TrainerState,
    recorder: &NamedMpkFileRecorder<FullPrecisionSettings>,
) -> Result<()> {
    let dir = output_dir.join(format!("checkpoint-{}", st.step));
    // Filled under a temp name and renamed into place (replacing an older one), or
    // removed on an error: a checkpoint directory is always complete.
    let tmp = bagel_core::atomic::AtomicPath::new_dir(&dir).map_err(io(&dir))?;
    save_model(model, config, tokenizer_dir, tmp.path())?;
    let rec = |e: burn::record::RecorderError| TrainError::BadFile { path: dir.clone(), message: e.to_string() };
    recorder.record(model.clone().into_record(), tmp.path().join("model")).map_err(rec)?;
    recorder.record(optim.to_record(), tmp.path().join("optimizer")).map_err(rec)?;
    std::fs::write(tmp.path().join("trainer_state.json"), serde_json::to_vec(st).expect("state serialises")).map_err(io(&dir))?;
    tmp.commit().map_err(io(&dir))?;
    if let Some(limit) = save_total_limit {
        let all = checkpoints(output_dir);
        for (_, old) in all.iter().take(all.len().saturating_sub(limit.max(1))) {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    Ok(())
}
