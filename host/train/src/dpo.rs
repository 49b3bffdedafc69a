//! DPO on `dpo.parquet` (source, prompt, chosen, rejected) with precomputed reference
//! log-probs.
//!
//! - Tokens: prompt = [BOS] + tok(prompt) (no BOS when the prompt already starts with the
//!   BOS string); chosen/rejected = tok(reply) + [EOS]. Truncation: a prompt longer than
//!   `max_prompt_length` keeps its **last** `max_prompt_length` tokens; each reply is then
//!   cut to `max_length − len(prompt)` tokens (keeping its start).
//! - log π(y|x) is summed over the reply tokens only.
//! - Losses, with z = β·((log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r))):
//!   sigmoid −log σ(z) (Rafailov et al. 2023, eq. 7); IPO (z/β − 1/(2β))² (Azar et al.
//!   2023, eq. 17, as in TRL); hinge max(0, 1 − z) (SLiC, Zhao et al. 2023).
//! - Reference: by default the starting policy's log-probs are computed once over the
//!   pairs the run uses (train and eval), before the first step, and stored as
//!   `OUTPUT_DIR/reference_logps.json` (one `[chosen, rejected]` or `null` per pair of the
//!   file; reused on resume when `reference_logps.key` — dataset sha256, reference model,
//!   length limits — still matches); no second model is kept in memory. `ref_model` uses another model for
//!   them; `precompute_ref_log_probs = false` keeps the reference model loaded instead.
//! - Eval split: `eval_dataset_size` pairs drawn at random (seeded); eval metrics
//!   `eval_loss`, `eval_rewards/accuracies`, `eval_rewards/margins`.
//! - Checkpoints and resume as for SFT ([`crate::sft`]): `checkpoint-N/` with the HF model,
//!   burn records of model and AdamW state, and `trainer_state.json`.
//! - Metrics (TRL names): rewards/chosen = β(log π(y_c) − log π_ref(y_c)), rewards/rejected,
//!   rewards/accuracies (fraction with rewards/chosen > rewards/rejected), rewards/margins,
//!   logps/chosen, logps/rejected (means over the step's pairs).
use crate::data::{Example, Tok};
use crate::error::{io, Result, TrainError};
use crate::model::Llama;
use crate::sft::{adamw, batch_tensors, clip_global_norm_deferred, linear_lr, load_latest_checkpoint, save_checkpoint, schedule, TrainerState};
use crate::weights::{load_model, save_model};
use arrow_array::StringArray;
use burn::module::AutodiffModule;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// DPO loss variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LossType {
    /// −log σ(z).
    Sigmoid,
    /// (z/β − 1/(2β))².
    Ipo,
    /// max(0, 1 − z).
    Hinge,
}

/// Per-pair DPO loss [B] from policy and reference sequence log-probs [B].
pub fn dpo_loss<B: Backend>(pc: Tensor<B, 1>, pr: Tensor<B, 1>, rc: Tensor<B, 1>, rr: Tensor<B, 1>, beta: f64, kind: LossType) -> Tensor<B, 1> {
    let h = (pc - pr) - (rc - rr);
    match kind {
        LossType::Sigmoid => log_sigmoid(h.mul_scalar(beta)).neg(),
        LossType::Ipo => h.sub_scalar(1.0 / (2.0 * beta)).powf_scalar(2.0),
        LossType::Hinge => relu(h.mul_scalar(beta).neg().add_scalar(1.0)),
    }
}

/// One tokenized pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Prompt + chosen, mask on chosen.
    pub chosen: Example,
    /// Prompt + rejected, mask on rejected.
    pub rejected: Example,
}

/// Tokenize one pair with the truncation rule above.
pub fn tokenize_pair(tok: &Tok, prompt: &str, chosen: &str, rejected: &str, max_length: usize, max_prompt_length: usize) -> Result<Pair> {
    let mut p = Vec::new();
    if !prompt.starts_with(&tok.bos.0) {
        p.push(tok.bos.1);
    }
    p.extend(tok.encode(prompt)?);
    if p.len() > max_prompt_length {
        p.drain(..p.len() - max_prompt_length);
    }
    let budget = max_length.saturating_sub(p.len()).max(1);
    let side = |reply: &str| -> Result<Example> {
        let mut r = tok.encode(reply)?;
        r.push(tok.eos.1);
        r.truncate(budget);
        let mut ids = p.clone();
        let n = ids.len();
        ids.extend(r);
        let mask = (0..ids.len()).map(|i| i >= n).collect();
        Ok(Example { source: String::new(), ids, mask })
    };
    Ok(Pair { chosen: side(chosen)?, rejected: side(rejected)? })
}

/// Read `dpo.parquet` and tokenize every pair.
pub fn load_dpo(path: &Path, tok: &Tok, max_length: usize, max_prompt_length: usize) -> Result<Vec<Pair>> {
    let bad = |m: String| TrainError::BadFile { path: path.to_path_buf(), message: m };
    let f = std::fs::File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| bad(e.to_string()))?.build().map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let col = |name: &str| -> Result<StringArray> {
            let c = batch.column_by_name(name).ok_or_else(|| bad(format!("no column `{name}`")))?;
            c.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| bad(format!("column `{name}` is not UTF-8")))
        };
        let (p, c, r) = (col("prompt")?, col("chosen")?, col("rejected")?);
        for i in 0..batch.num_rows() {
            out.push(tokenize_pair(tok, p.value(i), c.value(i), r.value(i), max_length, max_prompt_length)?);
        }
    }
    Ok(out)
}

/// Sequence log-probs (chosen, rejected) of every pair under `model`, no gradients.
pub fn compute_logps<B: Backend>(model: &Llama<B>, pairs: &[Pair], bs: usize, pad: u32, device: &B::Device) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(bs.max(1)) {
        let mut refs: Vec<&Example> = chunk.iter().map(|p| &p.chosen).collect();
        refs.extend(chunk.iter().map(|p| &p.rejected));
        let (t, y, m, _) = batch_tensors::<B>(&refs, pad, device);
        let v: Vec<f64> = model.sequence_logps(t, y, m).into_data().convert::<f64>().to_vec().expect("f64");
        let n = chunk.len();
        out.extend((0..n).map(|i| (v[i], v[n + i])));
    }
    out
}

/// DPO arguments (TRL/HF names).
#[derive(Debug, Clone, Serialize)]
pub struct DpoArgs {
    /// Policy model (HF directory), usually the SFT output.
    pub model_name_or_path: PathBuf,
    /// Reference model; `None`: the starting policy.
    pub ref_model: Option<PathBuf>,
    /// Precompute the reference log-probs once, before training (TRL
    /// `precompute_ref_log_probs`; default true here): no reference model is held in
    /// memory during training. False keeps the reference model loaded and runs it on
    /// every micro-batch.
    pub precompute_ref_log_probs: bool,
    /// `dpo.parquet`.
    pub dataset: PathBuf,
    /// Output directory.
    pub output_dir: PathBuf,
    /// β.
    pub beta: f64,
    /// Loss variant.
    pub loss_type: LossType,
    /// Longest prompt + reply, tokens.
    pub max_length: usize,
    /// Longest prompt, tokens (truncated from the front).
    pub max_prompt_length: usize,
    /// Pairs per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Micro-batches per step.
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warm-up fraction.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_epsilon: f64,
    /// Optimizer steps (overrides epochs).
    pub max_steps: Option<usize>,
    /// Epochs.
    pub num_train_epochs: f64,
    /// Cap on training pairs.
    pub max_train_samples: Option<usize>,
    /// Eval split: a fraction (< 1) or a count (≥ 1) of the pairs, drawn at random with
    /// `data_seed`; 0 = none.
    pub eval_dataset_size: f64,
    /// Cap on eval pairs.
    pub max_eval_samples: Option<usize>,
    /// Evaluate every N steps (and before the first and after the last); 0 = only those.
    pub eval_steps: usize,
    /// Save `checkpoint-N` every N steps (0 = never).
    pub save_steps: usize,
    /// Keep at most this many checkpoints.
    pub save_total_limit: Option<usize>,
    /// Continue from the latest checkpoint in `output_dir` (weights, AdamW state, schedule
    /// position, data position); the precomputed reference log-probs are reused.
    pub resume: bool,
    /// Log every N steps.
    pub logging_steps: usize,
    /// Data seed (eval split, pair order).
    pub data_seed: u64,
}

#[derive(Serialize, Default)]
struct DpoMetrics {
    step: usize,
    epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    learning_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_second: Option<f64>,
    #[serde(rename = "rewards/chosen", skip_serializing_if = "Option::is_none")]
    rewards_chosen: Option<f64>,
    #[serde(rename = "rewards/rejected", skip_serializing_if = "Option::is_none")]
    rewards_rejected: Option<f64>,
    #[serde(rename = "rewards/accuracies", skip_serializing_if = "Option::is_none")]
    rewards_accuracies: Option<f64>,
    #[serde(rename = "rewards/margins", skip_serializing_if = "Option::is_none")]
    rewards_margins: Option<f64>,
    #[serde(rename = "logps/chosen", skip_serializing_if = "Option::is_none")]
    logps_chosen: Option<f64>,
    #[serde(rename = "logps/rejected", skip_serializing_if = "Option::is_none")]
    logps_rejected: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_loss: Option<f64>,
    #[serde(rename = "eval_rewards/accuracies", skip_serializing_if = "Option::is_none")]
    eval_rewards_accuracies: Option<f64>,
    #[serde(rename = "eval_rewards/margins", skip_serializing_if = "Option::is_none")]
    eval_rewards_margins: Option<f64>,
}

/// Summary of a DPO run.
#[derive(Debug, Clone, Serialize)]
pub struct DpoSummary {
    /// (step, loss, rewards/accuracies, rewards/margins) per step of this run.
    pub curve: Vec<(usize, f64, f64, f64)>,
    /// (step, eval loss, eval rewards/accuracies, eval rewards/margins) per evaluation.
    pub eval: Vec<(usize, f64, f64, f64)>,
    /// Training pairs.
    pub train_pairs: usize,
    /// Eval pairs.
    pub eval_pairs: usize,
}

/// Sums over a set of pairs: (loss, rewards/chosen, rewards/rejected, accuracies,
/// logps/chosen, logps/rejected).
#[derive(Default, Clone, Copy)]
struct Sums {
    loss: f64,
    rc: f64,
    rr: f64,
    acc: f64,
    pc: f64,
    pr: f64,
}

impl Sums {
    fn add(&mut self, beta: f64, pc: &[f64], pr: &[f64], ref_c: &[f64], ref_r: &[f64]) {
        for k in 0..pc.len() {
            let (r_c, r_r) = (beta * (pc[k] - ref_c[k]), beta * (pr[k] - ref_r[k]));
            self.rc += r_c;
            self.rr += r_r;
            self.acc += f64::from(u8::from(r_c > r_r));
            self.pc += pc[k];
            self.pr += pr[k];
        }
    }
}

/// Where the reference log-probs come from.
enum Reference<B: Backend> {
    /// Precomputed (chosen, rejected) per pair index.
    Table(Vec<(f64, f64)>),
    /// A model run on every micro-batch.
    Live(Llama<B>),
}

impl<B: Backend> Reference<B> {
    fn logps(&self, pairs: &[Pair], idx: &[usize], pad: u32, device: &B::Device) -> (Vec<f64>, Vec<f64>) {
        match self {
            Reference::Table(t) => (idx.iter().map(|&i| t[i].0).collect(), idx.iter().map(|&i| t[i].1).collect()),
            Reference::Live(m) => {
                let sel: Vec<Pair> = idx.iter().map(|&i| pairs[i].clone()).collect();
                let v = compute_logps(m, &sel, sel.len(), pad, device);
                (v.iter().map(|x| x.0).collect(), v.iter().map(|x| x.1).collect())
            }
        }
    }
}

/// Run DPO; writes `reference_logps.json` (when precomputed), `metrics.jsonl`,
/// `checkpoint-N/` and the final model in HF layout. Errors: unreadable model or data,
/// bad arguments, a checkpoint that does not fit the data.
pub fn train_dpo<B: AutodiffBackend>(args: &DpoArgs, device: &B::Device) -> Result<DpoSummary> {
    if args.per_device_train_batch_size == 0 || args.gradient_accumulation_steps == 0 {
        return Err(TrainError::Args("batch size and gradient accumulation must be ≥ 1".into()));
    }
    let tok = Tok::load(&args.model_name_or_path)?;
    let (config, mut model): (_, Llama<B>) = load_model(&args.model_name_or_path, device)?;
    let pairs = load_dpo(&args.dataset, &tok, args.max_length, args.max_prompt_length)?;
    // Random seeded split by pair index.
    let mut all: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = args.data_seed;
    crate::data::shuffle(&mut all, &mut rng);
    let n_eval = if args.eval_dataset_size <= 0.0 {
        0
    } else if args.eval_dataset_size < 1.0 {
        (args.eval_dataset_size * pairs.len() as f64).round() as usize
    } else {
        args.eval_dataset_size as usize
    }
    .min(pairs.len().saturating_sub(1));
    let mut eval_idx: Vec<usize> = all[..n_eval].to_vec();
    let mut train_idx: Vec<usize> = all[n_eval..].to_vec();
    train_idx.sort_unstable();
    eval_idx.sort_unstable();
    if let Some(m) = args.max_train_samples {
        train_idx.truncate(m);
    }
    if let Some(m) = args.max_eval_samples {
        eval_idx.truncate(m);
    }
    if train_idx.is_empty() {
        return Err(TrainError::Args(format!("no DPO pairs in {}", args.dataset.display())));
    }
    std::fs::create_dir_all(&args.output_dir).map_err(io(&args.output_dir))?;
    std::fs::write(args.output_dir.join("training_args.json"), serde_json::to_vec_pretty(args).expect("args serialise")).map_err(io(&args.output_dir))?;
    let pad = tok.eos.1;

    // Reference log-probs over every pair (train and eval), by pair index.
    let rp = args.output_dir.join("reference_logps.json");
    let reference: Reference<B::InnerBackend> = if !args.precompute_ref_log_probs {
        let r = match &args.ref_model {
            Some(dir) => load_model::<B::InnerBackend>(dir, device)?.1,
            None => model.valid(),
        };
        Reference::Live(r)
    } else {
        // Only the pairs this run uses (train and eval); `null` for the others.
        let used: Vec<usize> = {
            let mut u: Vec<usize> = train_idx.iter().chain(&eval_idx).copied().collect();
            u.sort_unstable();
            u
        };
        // What the table depends on; a resume reuses it only when this matches.
        let key = {
            use sha2::{Digest, Sha256};
            let data = std::fs::read(&args.dataset).map_err(io(&args.dataset))?;
            format!(
                "dataset sha256 {} pairs {} reference {:?} max_length {} max_prompt_length {}",
                hex::encode(Sha256::digest(&data)),
                pairs.len(),
                args.ref_model,
                args.max_length,
                args.max_prompt_length
            )
        };
        let kp = args.output_dir.join("reference_logps.key");
        let same_inputs = std::fs::read_to_string(&kp).is_ok_and(|k| k == key);
        let saved: Option<Vec<Option<(f64, f64)>>> =
            if args.resume && same_inputs { std::fs::read(&rp).ok().and_then(|b| serde_json::from_slice(&b).ok()) } else { None };
        let complete = |t: &Vec<Option<(f64, f64)>>| t.len() == pairs.len() && used.iter().all(|&i| t[i].is_some());
        match saved {
            Some(t) if complete(&t) => Reference::Table(t.into_iter().map(|x| x.unwrap_or((f64::NAN, f64::NAN))).collect()),
            _ => {
                let sel: Vec<Pair> = used.iter().map(|&i| pairs[i].clone()).collect();
                let v = match &args.ref_model {
                    Some(dir) => {
                        let (_, r): (_, Llama<B::InnerBackend>) = load_model(dir, device)?;
                        compute_logps(&r, &sel, args.per_device_train_batch_size, pad, device)
                    }
                    None => compute_logps(&model.valid(), &sel, args.per_device_train_batch_size, pad, device),
                };
                let mut t: Vec<Option<(f64, f64)>> = vec![None; pairs.len()];
                for (&i, x) in used.iter().zip(v) {
                    t[i] = Some(x);
                }
                crate::weights::write_atomic(&rp, &serde_json::to_vec(&t).expect("serialise"))?;
                crate::weights::write_atomic(&kp, key.as_bytes())?;
                Reference::Table(t.into_iter().map(|x| x.unwrap_or((f64::NAN, f64::NAN))).collect())
            }
        }
    };

    let per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps;
    let (total, warmup) = schedule(args.max_steps, args.num_train_epochs, train_idx.len(), per_step, args.warmup_ratio);
    let opt = adamw(args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay);
    let grad_scale = opt.grad_scale.clone();
    let mut optim = opt.init::<B, Llama<B>>();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let mut st = TrainerState { step: 0, cursor: 0, rng, order: (0..train_idx.len()).collect(), seen: 0, tokens_done: 0, first_loss: f64::NAN, first_eval_loss: None };
    crate::data::shuffle(&mut st.order, &mut st.rng);
    if args.resume {
        let restored;
        (model, optim, restored) = load_latest_checkpoint(&args.output_dir, model, optim, train_idx.len(), &recorder, device)?;
        if let Some(r) = restored {
            st = r;
        }
    }
    let mp = args.output_dir.join("metrics.jsonl");
    if args.resume {
        crate::sft::trim_metrics(&mp, st.step)?;
    }
    let mut metrics = std::fs::OpenOptions::new().create(true).append(args.resume).write(true).truncate(!args.resume).open(&mp).map_err(io(&mp))?;
    let mut log = |m: &DpoMetrics| -> Result<()> { writeln!(metrics, "{}", serde_json::to_string(m).expect("serialise")).map_err(io(&mp)) };
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    if let Ok(style) = indicatif::ProgressStyle::with_template("dpo [{bar:30}] {pos}/{len} {msg} eta {eta}") {
        pb.set_style(style);
    }
    pb.set_position(st.step as u64);
    let mut eval_curve = Vec::new();
    let evaluate = |model: &Llama<B>, step: usize| -> (f64, f64, f64) {
        let valid = model.valid();
        let mut s = Sums::default();
        for chunk in eval_idx.chunks(args.per_device_train_batch_size) {
            let sel: Vec<Pair> = chunk.iter().map(|&i| pairs[i].clone()).collect();
            let pol = compute_logps(&valid, &sel, sel.len(), pad, device);
            let (ref_c, ref_r) = reference.logps(&pairs, chunk, pad, device);
            let (pc, pr): (Vec<f64>, Vec<f64>) = pol.into_iter().unzip();
            let n = chunk.len();
            let t = |v: &[f64]| Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), [n]), device);
            s.loss += dpo_loss(t(&pc), t(&pr), t(&ref_c), t(&ref_r), args.beta, args.loss_type).sum().into_scalar().elem::<f64>();
            s.add(args.beta, &pc, &pr, &ref_c, &ref_r);
        }
        let k = eval_idx.len().max(1) as f64;
        let _ = step;
        (s.loss / k, s.acc / k, (s.rc - s.rr) / k)
    };
    if !eval_idx.is_empty() && st.step == 0 {
        let (l, a, m) = evaluate(&model, 0);
        log(&DpoMetrics { step: 0, eval_loss: Some(l), eval_rewards_accuracies: Some(a), eval_rewards_margins: Some(m), ..Default::default() })?;
        eval_curve.push((0, l, a, m));
        st.first_eval_loss = Some(l);
    }
    let t0 = Instant::now();
    let tokens_at_start = st.tokens_done;
    let mut curve = Vec::new();
    for step in st.step..total {
        let lr = linear_lr(args.learning_rate, step, warmup, total);
        let mut acc = GradientsAccumulator::<Llama<B>>::new();
        let mut s = Sums::default();
        for _ in 0..args.gradient_accumulation_steps {
            let mut idx = Vec::with_capacity(args.per_device_train_batch_size);
            for _ in 0..args.per_device_train_batch_size {
                if st.cursor == st.order.len() {
                    st.cursor = 0;
                    crate::data::shuffle(&mut st.order, &mut st.rng);
                }
                idx.push(train_idx[st.order[st.cursor]]);
                st.cursor += 1;
                st.seen += 1;
            }
            let n = idx.len();
            let mut refs: Vec<&Example> = idx.iter().map(|&i| &pairs[i].chosen).collect();
            refs.extend(idx.iter().map(|&i| &pairs[i].rejected));
            let (t, y, m, _) = batch_tensors::<B>(&refs, pad, device);
            st.tokens_done += t.dims()[0] * t.dims()[1];
            let (ref_c, ref_r) = reference.logps(&pairs, &idx, pad, device);
            let logps = model.sequence_logps(t, y, m);
            let pc = logps.clone().narrow(0, 0, n);
            let pr = logps.narrow(0, n, n);
            let f = |v: &[f64]| Tensor::<B, 1>::from_data(TensorData::new(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), [n]), device);
            let per_pair = dpo_loss(pc.clone(), pr.clone(), f(&ref_c), f(&ref_r), args.beta, args.loss_type);
            let loss = per_pair.sum().div_scalar(per_step as f64);
            s.loss += loss.clone().into_scalar().elem::<f64>();
            let pcv: Vec<f64> = pc.into_data().convert::<f64>().to_vec().expect("f64");
            let prv: Vec<f64> = pr.into_data().convert::<f64>().to_vec().expect("f64");
            s.add(args.beta, &pcv, &prv, &ref_c, &ref_r);
            acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let grads = acc.grads();
        let grad_norm = clip_global_norm_deferred(&model, &grads, args.max_grad_norm, &grad_scale);
        model = optim.step(lr, model, grads);
        let grad_norm = grad_norm.value();
        let k = per_step as f64;
        let done = step + 1;
        st.step = done;
        if st.first_loss.is_nan() {
            st.first_loss = s.loss;
        }
        let tps = (st.tokens_done - tokens_at_start) as f64 / t0.elapsed().as_secs_f64();
        let m = DpoMetrics {
            step: done,
            epoch: st.seen as f64 / train_idx.len() as f64,
            loss: Some(s.loss),
            learning_rate: Some(lr),
            grad_norm: Some(grad_norm),
            tokens_per_second: Some(tps),
            rewards_chosen: Some(s.rc / k),
            rewards_rejected: Some(s.rr / k),
            rewards_accuracies: Some(s.acc / k),
            rewards_margins: Some((s.rc - s.rr) / k),
            logps_chosen: Some(s.pc / k),
            logps_rejected: Some(s.pr / k),
            ..Default::default()
        };
        curve.push((done, s.loss, s.acc / k, (s.rc - s.rr) / k));
        pb.set_position(done as u64);
        pb.set_message(format!("loss {:.4} acc {:.2}", s.loss, s.acc / k));
        if args.logging_steps > 0 && (done % args.logging_steps == 0 || done == 1 || done == total) {
            log(&m)?;
            tracing::info!(step = done, loss = s.loss, lr, grad_norm, "dpo");
        }
        if !eval_idx.is_empty() && ((args.eval_steps > 0 && done % args.eval_steps == 0) || done == total) {
            let (l, a, mg) = evaluate(&model, done);
            log(&DpoMetrics { step: done, epoch: m.epoch, eval_loss: Some(l), eval_rewards_accuracies: Some(a), eval_rewards_margins: Some(mg), ..Default::default() })?;
            eval_curve.push((done, l, a, mg));
        }
        if args.save_steps > 0 && done % args.save_steps == 0 && done < total {
            save_checkpoint(&args.output_dir, args.save_total_limit, &args.model_name_or_path, &config, &model, &optim, &st, &recorder)?;
        }
    }
    pb.finish_and_clear();
    save_model(&model, &config, &args.model_name_or_path, &args.output_dir)?;
    crate::plot::plot_metrics(&mp, &args.output_dir.join("loss.png"), "DPO", &["loss", "eval_loss"])?;
    Ok(DpoSummary { curve, eval: eval_curve, train_pairs: train_idx.len(), eval_pairs: eval_idx.len() })
}
