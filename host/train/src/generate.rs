//! Greedy decoding (no sampling): each step recomputes the full sequence (no KV cache)
//! and appends the arg-max token, until EOS or `max_new_tokens`.
use crate::data::Tok;
use crate::error::{Result, TrainError};
use crate::model::Llama;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Token ids of `prompt` (special-token text recognised, nothing added).
pub fn prompt_ids(tok: &Tok, prompt: &str) -> Result<Vec<u32>> {
    tok.encode(prompt)
}

/// Logits of the last position [V] for `ids`.
pub fn last_logits<B: Backend>(model: &Llama<B>, ids: &[u32], device: &B::Device) -> Vec<f32> {
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]), device);
    let logits = model.forward(t);
    let [_, s, v] = logits.dims();
    logits.narrow(1, s - 1, 1).reshape([v]).into_data().convert::<f32>().to_vec().expect("f32 logits")
}

/// Greedy continuation of `ids`: returns the new token ids (EOS included when reached).
pub fn greedy<B: Backend>(model: &Llama<B>, tok: &Tok, ids: &[u32], max_new_tokens: usize, device: &B::Device) -> Result<Vec<u32>> {
    if ids.is_empty() {
        return Err(TrainError::Args("empty prompt".into()));
    }
    let mut seq = ids.to_vec();
    let mut out = Vec::new();
    for _ in 0..max_new_tokens {
        let l = last_logits(model, &seq, device);
        let next = l.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0 as u32;
        out.push(next);
        seq.push(next);
        if next == tok.eos.1 {
            break;
        }
    }
    Ok(out)
}

/// Decode ids to text (special tokens kept).
pub fn decode(tok: &Tok, ids: &[u32]) -> Result<String> {
    tok.tokenizer.decode(ids, false).map_err(|e| TrainError::Args(format!("tokenizer: {e}")))
}

/// Load `model_dir` on the CPU backend and greedily continue `prompt`; returns the
/// decoded continuation (special tokens kept).
pub fn generate_text(model_dir: &std::path::Path, prompt: &str, max_new_tokens: usize) -> Result<String> {
    type Cpu = burn::backend::NdArray<f32>;
    let device = Default::default();
    let tok = Tok::load(model_dir)?;
    let (_, model): (_, Llama<Cpu>) = crate::weights::load_model(model_dir, &device)?;
    let ids = prompt_ids(&tok, prompt)?;
    let out = greedy(&model, &tok, &ids, max_new_tokens, &device)?;
    decode(&tok, &out)
}

/// Token ids of `prompt` and the `k` largest last-position logits (id, logit), CPU backend.
pub fn top_logits(model_dir: &std::path::Path, prompt: &str, k: usize) -> Result<(Vec<u32>, Vec<(usize, f32)>)> {
    type Cpu = burn::backend::NdArray<f32>;
    let device = Default::default();
    let tok = Tok::load(model_dir)?;
    let (_, model): (_, Llama<Cpu>) = crate::weights::load_model(model_dir, &device)?;
    let ids = prompt_ids(&tok, prompt)?;
    let l = last_logits(&model, &ids, &device);
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap_or(std::cmp::Ordering::Equal));
    Ok((ids, order.into_iter().take(k).map(|i| (i, l[i])).collect()))
}
