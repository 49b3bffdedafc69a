//! DPO: hand-computed losses, ln 2 at the first step with reference = policy, and
//! precomputed reference log-probs equal to those computed on the fly and to a live
//! reference model; eval split; resume continues the same curve.
use bagel_train::dpo::{compute_logps, dpo_loss, train_dpo, DpoArgs, LossType};
use bagel_train::model::Llama;
use bagel_train::CpuBackend;
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Inner = burn::backend::NdArray<f32>;

fn t(v: &[f32]) -> Tensor<Inner, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

#[test]
fn losses_by_hand() {
    // π(c) = −10, π(r) = −12, ref(c) = ref(r) = −11, β = 0.1 → h = 2, z = βh = 0.2.
    let l = |kind| dpo_loss(t(&[-10.0]), t(&[-12.0]), t(&[-11.0]), t(&[-11.0]), 0.1, kind).into_data().to_vec::<f32>().unwrap()[0] as f64;
    assert!((l(LossType::Sigmoid) - 0.598_138_869_3).abs() < 1e-6, "−log σ(0.2) = ln(1 + e^−0.2)");
    assert!((l(LossType::Ipo) - 9.0).abs() < 1e-5, "(2 − 1/(2·0.1))² = 9");
    assert!((l(LossType::Hinge) - 0.8).abs() < 1e-6, "max(0, 1 − 0.2)");
    // Hinge is 0 past the margin: h = 20 → z = 2.
    let h = dpo_loss(t(&[0.0]), t(&[-20.0]), t(&[0.0]), t(&[0.0]), 0.1, LossType::Hinge).into_data().to_vec::<f32>().unwrap()[0];
    assert_eq!(h, 0.0);
}

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/tiny-llama")
}

fn write_pairs(path: &Path) {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    let n = 8;
    let col = |f: &dyn Fn(usize) -> String| Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>())) as ArrayRef;
    let batch = RecordBatch::try_from_iter(vec![
        ("source", col(&|_| "hh_rlhf".into())),
        ("prompt", col(&|i| format!("USER: Is {i} even?\nASSISTANT: "))),
        ("chosen", col(&|i| if i % 2 == 0 { "Yes, it is even.".into() } else { "No, it is odd.".into() })),
        ("rejected", col(&|_| "I refuse to answer that question.".into())),
    ])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn args(model: &Path, data: &Path, out: &Path, kind: LossType) -> DpoArgs {
    DpoArgs {
        model_name_or_path: model.into(),
        ref_model: None,
        dataset: data.into(),
        output_dir: out.into(),
        beta: 0.1,
        loss_type: kind,
        max_length: 64,
        max_prompt_length: 32,
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        learning_rate: 5e-3,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        weight_decay: 0.0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        max_steps: Some(8),
        num_train_epochs: 1.0,
        max_train_samples: None,
        logging_steps: 1,
        data_seed: 3,
        precompute_ref_log_probs: true,
        eval_dataset_size: 0.0,
        max_eval_samples: None,
        eval_steps: 0,
        save_steps: 0,
        save_total_limit: None,
        resume: false,
    }
}

#[test]
fn first_step_loss_is_ln2_and_training_separates_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    bagel_train::weights::init_random(&tiny_dir(), &model, 9).unwrap();
    let data = tmp.path().join("dpo.parquet");
    write_pairs(&data);
    let out = tmp.path().join("out");
    let s = train_dpo::<CpuBackend>(&args(&model, &data, &out, LossType::Sigmoid), &Default::default()).unwrap();
    assert!((s.curve[0].1 - std::f64::consts::LN_2).abs() < 1e-4, "first loss {}", s.curve[0].1);
    let last = s.curve.last().unwrap();
    assert!(last.1 < s.curve[0].1, "loss falls: {:?}", s.curve);
    assert!(last.2 > 0.5 && last.3 > 0.0, "accuracy {} margin {}", last.2, last.3);
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(m.lines().next().unwrap()).unwrap();
    for key in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "loss", "grad_norm", "learning_rate"] {
        assert!(first.get(key).is_some(), "metrics lack {key}");
    }
}

#[test]
fn precomputed_reference_equals_on_the_fly() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    bagel_train::weights::init_random(&tiny_dir(), &model_dir, 11).unwrap();
    let data = tmp.path().join("dpo.parquet");
    write_pairs(&data);
    let out = tmp.path().join("out");
    let mut a = args(&model_dir, &data, &out, LossType::Ipo);
    a.max_steps = Some(1);
    train_dpo::<CpuBackend>(&a, &Default::default()).unwrap();
    let stored: Vec<Option<(f64, f64)>> = serde_json::from_slice(&std::fs::read(out.join("reference_logps.json")).unwrap()).unwrap();
    let stored: Vec<(f64, f64)> = stored.into_iter().map(|x| x.expect("every pair is used")).collect();
    // On the fly, with the autodiff model (as the training step computes policy log-probs).
    let device = Default::default();
    let tok = bagel_train::data::Tok::load(&model_dir).unwrap();
    let pairs = bagel_train::dpo::load_dpo(&data, &tok, 64, 32).unwrap();
    let (_, m): (_, Llama<CpuBackend>) = bagel_train::weights::load_model(&model_dir, &device).unwrap();
    let fly = compute_logps(&m, &pairs, 3, tok.eos.1, &device);
    let valid = compute_logps(&m.valid(), &pairs, 8, tok.eos.1, &device);
    assert_eq!(stored.len(), 8);
    for ((s, f), v) in stored.iter().zip(&fly).zip(&valid) {
        assert!((s.0 - f.0).abs() < 1e-4 && (s.1 - f.1).abs() < 1e-4, "{s:?} vs {f:?}");
        assert!((s.0 - v.0).abs() < 1e-4 && (s.1 - v.1).abs() < 1e-4);
        assert!(s.0 < 0.0 && s.1 < 0.0, "log-probs are negative");
    }
}

#[test]
fn live_reference_gives_the_same_run_as_precomputed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    bagel_train::weights::init_random(&tiny_dir(), &model, 13).unwrap();
    let data = tmp.path().join("dpo.parquet");
    write_pairs(&data);
    let mut a = args(&model, &data, &tmp.path().join("pre"), LossType::Sigmoid);
    a.max_steps = Some(3);
    let pre = train_dpo::<CpuBackend>(&a, &Default::default()).unwrap();
    a.output_dir = tmp.path().join("live");
    a.precompute_ref_log_probs = false;
    let live = train_dpo::<CpuBackend>(&a, &Default::default()).unwrap();
    assert!(!a.output_dir.join("reference_logps.json").exists());
    for (p, l) in pre.curve.iter().zip(&live.curve) {
        assert!((p.1 - l.1).abs() < 1e-4 && (p.3 - l.3).abs() < 1e-4, "{p:?} vs {l:?}");
    }
}

#[test]
fn eval_split_and_resume_continue_the_same_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    bagel_train::weights::init_random(&tiny_dir(), &model, 17).unwrap();
    let data = tmp.path().join("dpo.parquet");
    write_pairs(&data);
    let mut a = args(&model, &data, &tmp.path().join("full"), LossType::Sigmoid);
    a.max_steps = Some(6);
    a.per_device_train_batch_size = 1;
    a.eval_dataset_size = 2.0;
    a.eval_steps = 3;
    let full = train_dpo::<CpuBackend>(&a, &Default::default()).unwrap();
    assert_eq!((full.train_pairs, full.eval_pairs), (6, 2));
    assert_eq!(full.eval.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 3, 6], "eval before the first step, every 3, at the end");
    assert!((full.eval[0].1 - std::f64::consts::LN_2).abs() < 1e-4, "eval loss with policy = reference is ln 2");
    let m = std::fs::read_to_string(a.output_dir.join("metrics.jsonl")).unwrap();
    assert!(m.lines().any(|l| l.contains("\"eval_rewards/accuracies\"")));

    // Interrupted run: checkpoints every 2 steps, stopped after step 4 (max_steps 4 with the
    // same schedule length is not the same run, so emulate a kill: run 6 steps saving at 2
    // and 4, delete what came after checkpoint-4, resume).
    let mut b = a.clone();
    b.output_dir = tmp.path().join("cut");
    b.save_steps = 2;
    b.save_total_limit = Some(1);
    train_dpo::<CpuBackend>(&b, &Default::default()).unwrap();
    let cks = bagel_train::sft::checkpoints(&b.output_dir);
    assert_eq!(cks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![4], "save_total_limit keeps the newest");
    std::fs::remove_file(b.output_dir.join("model.safetensors")).unwrap();
    b.resume = true;
    let resumed = train_dpo::<CpuBackend>(&b, &Default::default()).unwrap();
    assert_eq!(resumed.curve.iter().map(|c| c.0).collect::<Vec<_>>(), vec![5, 6]);
    // metrics.jsonl holds each step once: lines after checkpoint-4 were dropped on resume.
    let steps: Vec<u64> = std::fs::read_to_string(b.output_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    for r in &resumed.curve {
        let f = full.curve.iter().find(|c| c.0 == r.0).unwrap();
        assert!((f.1 - r.1).abs() < 1e-4 && (f.3 - r.3).abs() < 1e-4, "step {}: {f:?} vs {r:?}", r.0);
    }
    assert!(b.output_dir.join("model.safetensors").exists());
}
