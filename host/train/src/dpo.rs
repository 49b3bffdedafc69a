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
//!   training pairs, before the first step, and stored as `OUTPUT_DIR/reference_logps.json`;
//!   no second model is kept in memory. `ref_model` uses another model for them.
//! - Metrics (TRL names): rewards/chosen = β(log π(y_c) − log π_ref(y_c)), rewards/rejected,
//!   rewards/accuracies (fraction with rewards/chosen > rewards/rejected), rewards/margins,
//!   logps/chosen, logps/rejected (means over the step's pairs).
use crate::data::{Example, Tok};
use crate::error::{io, Result, TrainError};
use crate::model::Llama;
use crate::sft::{batch_tensors, clip_global_norm, linear_lr};
use crate::weights::{load_model, save_model};
use arrow_array::StringArray;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
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
    /// Reference model; `None`: the starting policy (precomputed).
    pub ref_model: Option<PathBuf>,
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
    /// Optimizer steps (overrides epochs).
    pub max_steps: Option<usize>,
    /// Epochs.
    pub num_train_epochs: f64,
    /// Cap on training pairs.
    pub max_train_samples: Option<usize>,
    /// Log every N steps.
    pub logging_steps: usize,
    /// Data seed.
    pub data_seed: u64,
}

#[derive(Serialize)]
struct DpoMetrics {
    step: usize,
    epoch: f64,
    loss: f64,
    learning_rate: f64,
    grad_norm: f64,
    tokens_per_second: f64,
    #[serde(rename = "rewards/chosen")]
    rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    logps_rejected: f64,
}

/// Summary of a DPO run: per logged step (loss, accuracy, margin).
#[derive(Debug, Clone, Serialize)]
pub struct DpoSummary {
    /// (step, loss, rewards/accuracies, rewards/margins) per step.
    pub curve: Vec<(usize, f64, f64, f64)>,
}

/// Run DPO; writes `reference_logps.json`, `metrics.jsonl` and the final model.
pub fn train_dpo<B: AutodiffBackend>(args: &DpoArgs, device: &B::Device) -> Result<DpoSummary> {
    let tok = Tok::load(&args.model_name_or_path)?;
    let (config, mut model): (_, Llama<B>) = load_model(&args.model_name_or_path, device)?;
    let mut pairs = load_dpo(&args.dataset, &tok, args.max_length, args.max_prompt_length)?;
    if let Some(m) = args.max_train_samples {
        pairs.truncate(m);
    }
    if pairs.is_empty() {
        return Err(TrainError::Args(format!("no DPO pairs in {}", args.dataset.display())));
    }
    std::fs::create_dir_all(&args.output_dir).map_err(io(&args.output_dir))?;
    let pad = tok.eos.1;
    // Reference log-probs, computed once (inner backend: no autodiff graph).
    let reference = match &args.ref_model {
        Some(dir) => {
            let (_, r): (_, Llama<B::InnerBackend>) = load_model(dir, device)?;
            compute_logps(&r, &pairs, args.per_device_train_batch_size, pad, device)
        }
        None => compute_logps(&model.valid(), &pairs, args.per_device_train_batch_size, pad, device),
    };
    let rp = args.output_dir.join("reference_logps.json");
    std::fs::write(&rp, serde_json::to_vec(&reference).expect("serialise")).map_err(io(&rp))?;

    let per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps;
    let total = args.max_steps.unwrap_or_else(|| ((args.num_train_epochs * pairs.len() as f64) / per_step as f64).ceil().max(1.0) as usize);
    let warmup = (args.warmup_ratio * total as f64).ceil() as usize;
    let mut optim = AdamWConfig::new().with_weight_decay(args.weight_decay as f32).init::<B, Llama<B>>();
    let mp = args.output_dir.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&mp).map_err(io(&mp))?;
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = args.data_seed;
    let mut shuffle = |order: &mut Vec<usize>| {
        for i in (1..order.len()).rev() {
            let j = (crate::data::splitmix(&mut rng) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    };
    shuffle(&mut order);
    let (mut cursor, mut seen, mut tokens) = (0usize, 0usize, 0usize);
    let t0 = Instant::now();
    let mut curve = Vec::new();
    for step in 0..total {
        let lr = linear_lr(args.learning_rate, step, warmup, total);
        let mut acc = GradientsAccumulator::<Llama<B>>::new();
        let (mut loss_v, mut rc_sum, mut rr_sum, mut accs, mut pc_sum, mut pr_sum) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for _ in 0..args.gradient_accumulation_steps {
            let mut idx = Vec::with_capacity(args.per_device_train_batch_size);
            for _ in 0..args.per_device_train_batch_size {
                if cursor == order.len() {
                    cursor = 0;
                    shuffle(&mut order);
                }
                idx.push(order[cursor]);
                cursor += 1;
                seen += 1;
            }
            let n = idx.len();
            let mut refs: Vec<&Example> = idx.iter().map(|&i| &pairs[i].chosen).collect();
            refs.extend(idx.iter().map(|&i| &pairs[i].rejected));
            let (t, y, m, _) = batch_tensors::<B>(&refs, pad, device);
            tokens += t.dims()[0] * t.dims()[1];
            let logps = model.sequence_logps(t, y, m);
            let pc = logps.clone().narrow(0, 0, n);
            let pr = logps.narrow(0, n, n);
            let ref_c: Vec<f32> = idx.iter().map(|&i| reference[i].0 as f32).collect();
            let ref_r: Vec<f32> = idx.iter().map(|&i| reference[i].1 as f32).collect();
            let rc = Tensor::<B, 1>::from_data(TensorData::new(ref_c.clone(), [n]), device);
            let rr = Tensor::<B, 1>::from_data(TensorData::new(ref_r.clone(), [n]), device);
            let per_pair = dpo_loss(pc.clone(), pr.clone(), rc, rr, args.beta, args.loss_type);
            let loss = per_pair.sum().div_scalar(per_step as f64);
            loss_v += loss.clone().into_scalar().elem::<f64>();
            let pcv: Vec<f64> = pc.into_data().convert::<f64>().to_vec().expect("f64");
            let prv: Vec<f64> = pr.into_data().convert::<f64>().to_vec().expect("f64");
            for k in 0..n {
                let (r_c, r_r) = (args.beta * (pcv[k] - ref_c[k] as f64), args.beta * (prv[k] - ref_r[k] as f64));
                rc_sum += r_c;
                rr_sum += r_r;
                accs += f64::from(u8::from(r_c > r_r));
                pc_sum += pcv[k];
                pr_sum += prv[k];
            }
            acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let mut grads = acc.grads();
        let grad_norm = clip_global_norm(&model, &mut grads, args.max_grad_norm);
        model = optim.step(lr, model, grads);
        let k = per_step as f64;
        let done = step + 1;
        let m = DpoMetrics {
            step: done,
            epoch: seen as f64 / pairs.len() as f64,
            loss: loss_v,
            learning_rate: lr,
            grad_norm,
            tokens_per_second: tokens as f64 / t0.elapsed().as_secs_f64(),
            rewards_chosen: rc_sum / k,
            rewards_rejected: rr_sum / k,
            rewards_accuracies: accs / k,
            rewards_margins: (rc_sum - rr_sum) / k,
            logps_chosen: pc_sum / k,
            logps_rejected: pr_sum / k,
        };
        curve.push((done, m.loss, m.rewards_accuracies, m.rewards_margins));
        if args.logging_steps > 0 && (done % args.logging_steps == 0 || done == 1 || done == total) {
            writeln!(metrics, "{}", serde_json::to_string(&m).expect("serialise")).map_err(io(&mp))?;
        }
    }
    save_model(&model, &config, &args.model_name_or_path, &args.output_dir)?;
    Ok(DpoSummary { curve })
}
