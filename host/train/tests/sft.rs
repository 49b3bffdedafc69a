//! Trainer numerics and data rules on a tiny random model (tokenizer: examples/models/tiny-llama).
use bagel_train::config::LlamaConfig;
use bagel_train::data::{Example, Tok};
use bagel_train::model::{Llama, RandomInit};
use bagel_train::optim::FusedAdamW;
use bagel_train::sft::{batch_tensors, clip_global_norm, clip_global_norm_deferred, linear_lr};
use burn::optim::Optimizer;
use bagel_train::CpuBackend;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use std::path::PathBuf;

type B = CpuBackend;

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/tiny-llama")
}

fn tiny() -> (LlamaConfig, Llama<B>) {
    let device = Default::default();
    B::seed(&device, 7);
    let mut c = LlamaConfig::load(&tiny_dir()).unwrap();
    c.vocab_size = 64; // small vocab for fast numerics tests
    let m = Llama::from_source(&c, &mut RandomInit { device: &device }).unwrap();
    (c, m)
}

#[test]
fn linear_schedule_matches_hf_by_hand() {
    // T = 10 steps, w = 2: lr·k/w for k < w, then lr·(T−k)/(T−w).
    let lr = |k| linear_lr(1.0, k, 2, 10);
    assert_eq!(lr(0), 0.0);
    assert_eq!(lr(1), 0.5);
    assert_eq!(lr(2), 1.0);
    assert_eq!(lr(6), 0.5);
    assert_eq!(lr(10), 0.0);
    assert_eq!(linear_lr(3.0, 0, 0, 4), 3.0);
}

#[test]
fn loss_mask_covers_output_and_eos_and_no_double_bos() {
    let tok = Tok::load(&tiny_dir()).unwrap();
    assert_eq!((tok.bos.1, tok.eos.1), (1, 2));
    let e = tok.example("x_alpaca", "### Instruction:\nHi", "Hello", false).unwrap();
    assert_eq!(e.ids[0], 1);
    assert_eq!(*e.ids.last().unwrap(), 2);
    let n_out = tok.encode("Hello").unwrap().len() + 1;
    assert_eq!(e.mask.iter().filter(|&&m| m).count(), n_out);
    assert!(e.mask[e.ids.len() - n_out..].iter().all(|&m| m));
    // chatml rows start with the BOS string: exactly one BOS.
    let c = tok.example("x_chatml", "<s>user\nHi</s>\n<s>assistant\n", "Hello<|im_end|>", false).unwrap();
    assert_eq!(c.ids[0], 1);
    assert_ne!(c.ids[1], 1, "double BOS");
    let all = tok.example("x", "a", "b", true).unwrap();
    assert!(all.mask.iter().all(|&m| m));
}

fn ex(ids: &[u32], n_src: usize) -> Example {
    Example { source: "t".into(), ids: ids.to_vec(), mask: (0..ids.len()).map(|i| i >= n_src).collect() }
}

#[test]
fn accumulation_normalised_by_tokens_equals_one_big_batch() {
    let (_, model) = tiny();
    let device = Default::default();
    let a = ex(&[1, 5, 9, 12, 30, 2], 3);
    let b = ex(&[1, 7, 8, 40, 41, 42, 43, 2], 4);
    // One batch of 2 (b is longer: a is right-padded, its padding masked out).
    let (t, y, m, n) = batch_tensors::<B>(&[&a, &b], 2, &device);
    assert_eq!(n, 3 + 4, "targets: a's 3 output tokens + EOS-ending, b's 4");
    let big = model.loss_sum(t, y, m).div_scalar(n as f64);
    let big_v = big.clone().into_scalar().elem::<f64>();
    let mut g_big = GradientsParams::from_grads(big.backward(), &model);
    // Two micro-batches, each divided by the tokens of the whole accumulated batch.
    let mut acc = burn::optim::GradientsAccumulator::<Llama<B>>::new();
    let mut small_v = 0.0;
    for e in [&a, &b] {
        let (t, y, m, _) = batch_tensors::<B>(&[e], 2, &device);
        let l = model.loss_sum(t, y, m).div_scalar(n as f64);
        small_v += l.clone().into_scalar().elem::<f64>();
        acc.accumulate(&model, GradientsParams::from_grads(l.backward(), &model));
    }
    let mut g_acc = acc.grads();
    assert!((big_v - small_v).abs() < 1e-5, "{big_v} vs {small_v}");
    let n_big = clip_global_norm(&model, &mut g_big, 0.0);
    let n_acc = clip_global_norm(&model, &mut g_acc, 0.0);
    assert!((n_big - n_acc).abs() < 1e-4 * n_big.max(1.0), "grad norms {n_big} vs {n_acc}");
    // Random init gives a loss near ln(V) = ln 64 ≈ 4.159 per token.
    assert!((big_v - 64f64.ln()).abs() < 0.5, "{big_v}");
}

#[test]
fn global_clipping_scales_to_max_norm() {
    let (_, model) = tiny();
    let device = Default::default();
    let a = ex(&[1, 5, 9, 12, 30, 2], 2);
    let (t, y, m, n) = batch_tensors::<B>(&[&a], 2, &device);
    let l = model.loss_sum(t, y, m).div_scalar(n as f64);
    let mut g = GradientsParams::from_grads(l.backward(), &model);
    let before = clip_global_norm(&model, &mut g, 0.0);
    let cap = before / 4.0;
    let reported = clip_global_norm(&model, &mut g, cap);
    assert!((reported - before).abs() < 1e-9, "the pre-clip norm is reported");
    let after = clip_global_norm(&model, &mut g, 0.0);
    assert!((after - cap).abs() < 1e-3 * cap, "{after} vs {cap}");
}

/// The training loops' clipping (the norm on the device, the coefficient applied inside the
/// optimizer step) against clipping the gradients in place and then stepping: same
/// reported norm, same parameters after the step. ε = 1 makes AdamW sensitive to the
/// gradient's scale (with a small ε it nearly cancels), so an ignored coefficient shows:
/// the unclipped step is checked to land elsewhere.
#[test]
fn deferred_clipping_matches_in_place_clipping() {
    let (_, model) = tiny();
    let device = Default::default();
    let a = ex(&[1, 5, 9, 12, 30, 2], 2);
    let grads = || {
        let (t, y, m, n) = batch_tensors::<B>(&[&a], 2, &device);
        GradientsParams::from_grads(model.loss_sum(t, y, m).div_scalar(n as f64).backward(), &model)
    };
    let adamw = || FusedAdamW::new(0.9, 0.95, 1.0, 0.0);
    let mut g = grads();
    let before = clip_global_norm(&model, &mut g, 0.0);
    let cap = before / 4.0;
    clip_global_norm(&model, &mut g, cap);
    let in_place = adamw().init::<B, Llama<B>>().step(1e-2, model.clone(), g);
    let opt = adamw();
    let scale = opt.grad_scale.clone();
    let mut optim = opt.init::<B, Llama<B>>();
    let g = grads();
    let norm = clip_global_norm_deferred(&model, &g, cap, &scale);
    let deferred = optim.step(1e-2, model.clone(), g);
    assert!((norm.value() - before).abs() < 1e-6 * before, "the pre-clip norm is reported");
    let unclipped = adamw().init::<B, Llama<B>>().step(1e-2, model.clone(), grads());
    let (t, _, _, _) = batch_tensors::<B>(&[&a], 2, &device);
    let logits = |m: &Llama<B>| -> Vec<f32> { m.forward(t.clone()).into_data().to_vec().unwrap() };
    let diff = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let (l_in, l_def, l_un) = (logits(&in_place), logits(&deferred), logits(&unclipped));
    assert!(diff(&l_in, &l_def) < 1e-6, "deferred vs in place: {}", diff(&l_in, &l_def));
    assert!(diff(&l_in, &l_un) > 1e-4, "clipping changed the step: {}", diff(&l_in, &l_un));
}

#[test]
fn save_then_load_gives_the_same_logits() {
    let (c, model) = tiny();
    let dir = tempfile::tempdir().unwrap();
    bagel_train::weights::save_model(&model, &c, &tiny_dir(), dir.path()).unwrap();
    assert!(dir.path().join("tokenizer.json").exists() && dir.path().join("config.json").exists());
    let device = Default::default();
    let (c2, loaded): (_, Llama<B>) = bagel_train::weights::load_model(dir.path(), &device).unwrap();
    assert_eq!(c2.vocab_size, 64);
    let a = ex(&[1, 5, 9, 12, 30, 2], 2);
    let (t, _, _, _) = batch_tensors::<B>(&[&a], 2, &device);
    let x: Vec<f32> = model.forward(t.clone()).into_data().to_vec().unwrap();
    let y: Vec<f32> = loaded.forward(t).into_data().to_vec().unwrap();
    assert_eq!(x, y);
}

/// Padding to a multiple adds only masked positions: the loss sum and the target count
/// stay the same, the length becomes the next multiple.
#[test]
fn pad_to_multiple_of_changes_shape_not_loss() {
    use bagel_train::sft::batch_tensors_padded;
    type B = burn::backend::NdArray<f32>;
    let device = Default::default();
    let a = bagel_train::data::Example { ids: vec![1, 5, 6, 7, 2], mask: vec![false, false, true, true, true], source: "x".into() };
    let (t, _, m, n) = batch_tensors_padded::<B>(&[&a], 2, 8, &device);
    assert_eq!(t.dims(), [1, 8]);
    assert_eq!(n, 3);
    assert_eq!(m.sum().into_scalar(), 3.0);
    let (t1, _, _, n1) = batch_tensors_padded::<B>(&[&a], 2, 1, &device);
    assert_eq!((t1.dims(), n1), ([1, 4], 3));
}

/// The step benchmark on the CPU: the tiny model's parameter count by hand
/// (embedding 32000·64 tied with the head, per layer q 64·64 + k, v 64·32 + o 64·64 +
/// SwiGLU 3·64·176 + two norms 2·64, final norm 64), a loss that falls on its fixed batch,
/// and bf16 refused with a clear error where the backend has no bf16.
#[test]
fn step_bench_counts_params_and_refuses_bf16_on_cpu() {
    use bagel_train::bench::StepBenchArgs;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/tiny-llama");
    let mut args = StepBenchArgs { config_dir: dir, batch: 2, seq: 16, steps: 3, warmup: 1, bf16: false, seed: 7, peak_tflops: 790.0 };
    let r = bagel_train::bench_sft_step_on(bagel_train::BackendKind::Cpu, &args).unwrap();
    assert_eq!(r.params, 32000 * 64 + 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 176 + 2 * 64) + 64);
    assert_eq!(r.tokens_per_step, 32);
    assert_eq!(r.losses.len(), 4);
    assert!(r.losses[3] < r.losses[0], "{:?}", r.losses);
    assert!((r.losses[0] - (32000f64).ln()).abs() < 0.1, "first loss near ln V: {}", r.losses[0]);
    args.bf16 = true;
    let err = bagel_train::bench_sft_step_on(bagel_train::BackendKind::Cpu, &args).unwrap_err();
    assert!(err.to_string().contains("no bf16 tensors"), "{err}");
}
