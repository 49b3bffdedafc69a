//! bagel's Llama forward pass against HF transformers (PyTorch fp32) on a random tiny
//! model with GQA, an untied LM head and non-trivial RMSNorm weights. Fixture and
//! regenerate command: tests/scripts/llama_reference.py. Tolerance: 1e-4 absolute.
use bagel_train::model::Llama;
use bagel_train::CpuBackend;
use burn::tensor::{Int, Tensor, TensorData};
use std::path::PathBuf;

#[test]
fn logits_match_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama-ref");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tol = expected["tolerance"].as_f64().unwrap();
    let device = Default::default();
    let (_, model): (_, Llama<CpuBackend>) = bagel_train::weights::load_model(&dir, &device).unwrap();
    let tokens: Vec<Vec<i64>> = serde_json::from_value(expected["tokens"].clone()).unwrap();
    let (b, s) = (tokens.len(), tokens[0].len());
    let flat: Vec<i64> = tokens.concat();
    let t = Tensor::<CpuBackend, 2, Int>::from_data(TensorData::new(flat, [b, s]), &device);
    let got: Vec<f32> = model.forward(t).into_data().to_vec().unwrap();
    let want: Vec<f64> = expected["logits"].as_array().unwrap().iter().flat_map(|a| a.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))).collect();
    assert_eq!(got.len(), want.len());
    let max_err = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
    eprintln!("max abs logit difference vs transformers: {max_err:e}");
    assert!(max_err <= tol, "max abs logit difference {max_err} > {tol}");
}
