//! Checkpoints: a run resumed from checkpoint-3 continues the same loss curve as the
//! uninterrupted run, and `save_total_limit` rotates old checkpoints.
use bagel_train::sft::{checkpoints, train_sft, SftArgs};
use bagel_train::CpuBackend;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/tiny-llama")
}

fn write_dataset(path: &Path) {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    let n = 24;
    let col = |f: &dyn Fn(usize) -> String| Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>())) as ArrayRef;
    let batch = RecordBatch::try_from_iter(vec![
        ("id", col(&|i| format!("id{i}"))),
        ("source", col(&|i| if i % 2 == 0 { "a_alpaca".into() } else { "b_vicuna".into() })),
        ("input", col(&|i| format!("USER: What is {i} plus {i}?\nASSISTANT: "))),
        ("output", col(&|i| format!("{} is the answer.", 2 * i))),
    ])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn args(model: &Path, data: &Path, out: &Path) -> SftArgs {
    SftArgs {
        bf16: false,
        pad_to_multiple_of: 1,
        model_name_or_path: model.into(),
        dataset: data.into(),
        output_dir: out.into(),
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        learning_rate: 3e-3,
        warmup_ratio: 0.2,
        max_grad_norm: 1.0,
        weight_decay: 0.01,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        num_train_epochs: 1.0,
        max_steps: Some(6),
        model_max_len: 64,
        skip_excess_length: true,
        train_on_source: false,
        include_sources: vec![],
        max_train_samples: None,
        max_eval_samples: None,
        eval_dataset_size: 0.0,
        eval_steps: 0,
        logging_steps: 1,
        save_steps: 3,
        save_total_limit: None,
        resume: false,
        seed: 1,
        data_seed: 2,
        group_by_length: false,
        gradient_checkpointing: false,
    }
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn resumed_run_continues_the_same_loss_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    bagel_train::weights::init_random(&tiny_dir(), &model, 5).unwrap();
    let data = tmp.path().join("sft.parquet");
    write_dataset(&data);
    let device = Default::default();

    let a = tmp.path().join("a");
    train_sft::<CpuBackend>(&args(&model, &data, &a), &device).unwrap();
    let full = losses(&a);
    assert_eq!(full.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    let cks = checkpoints(&a);
    assert_eq!(cks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![3]);
    assert!(cks[0].1.join("model.safetensors").exists() && cks[0].1.join("trainer_state.json").exists());

    // Interrupted after step 3: only checkpoint-3 exists; resume.
    let b = tmp.path().join("b");
    std::fs::create_dir_all(b.join("checkpoint-3")).unwrap();
    for e in std::fs::read_dir(&cks[0].1).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), b.join("checkpoint-3").join(e.file_name())).unwrap();
    }
    let mut r = args(&model, &data, &b);
    r.resume = true;
    train_sft::<CpuBackend>(&r, &device).unwrap();
    let resumed = losses(&b);
    assert_eq!(resumed.iter().map(|x| x.0).collect::<Vec<_>>(), vec![4, 5, 6]);
    for ((s1, l1), (s2, l2)) in full[3..].iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert!((l1 - l2).abs() < 1e-5, "step {s1}: {l1} uninterrupted vs {l2} resumed");
    }
    assert!(full[5].1 < full[0].1, "loss falls: {full:?}");
}

#[test]
fn save_total_limit_keeps_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    bagel_train::weights::init_random(&tiny_dir(), &model, 5).unwrap();
    let data = tmp.path().join("sft.parquet");
    write_dataset(&data);
    let out = tmp.path().join("o");
    let mut a = args(&model, &data, &out);
    a.save_steps = 1;
    a.save_total_limit = Some(2);
    train_sft::<CpuBackend>(&a, &Default::default()).unwrap();
    assert_eq!(checkpoints(&out).iter().map(|c| c.0).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn gradient_checkpointing_and_group_by_length() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    bagel_train::weights::init_random(&tiny_dir(), &model, 5).unwrap();
    let data = tmp.path().join("sft.parquet");
    write_dataset(&data);
    let mut a = args(&model, &data, &tmp.path().join("plain"));
    a.resume = false;
    a.save_steps = 0;
    a.max_steps = Some(3);
    let plain = bagel_train::train_sft_on(bagel_train::BackendKind::Cpu, &a).unwrap();
    a.output_dir = tmp.path().join("ckpt");
    a.gradient_checkpointing = true;
    let ck = bagel_train::train_sft_on(bagel_train::BackendKind::Cpu, &a).unwrap();
    assert!((plain.last_loss - ck.last_loss).abs() < 1e-4, "checkpointing recomputes, same numbers: {} vs {}", plain.last_loss, ck.last_loss);
    assert!(a.output_dir.join("loss.png").exists(), "loss curve plotted");
    // Grouping: mega-batches sorted longest first.
    let mut order = vec![0, 1, 2, 3, 4, 5];
    let len = [5, 9, 1, 7, 3, 8];
    bagel_train::sft::group_by_length(&mut order, 3, |i| len[i]);
    assert_eq!(order, vec![1, 0, 2, 5, 3, 4]);
    a.output_dir = tmp.path().join("grouped");
    a.gradient_checkpointing = false;
    a.group_by_length = true;
    let g = bagel_train::train_sft_on(bagel_train::BackendKind::Cpu, &a).unwrap();
    assert!(g.last_loss.is_finite());
}
