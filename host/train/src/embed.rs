//! Sentence embeddings with a BERT encoder (Devlin et al. 2019, "BERT"), computed the way
//! sentence-transformers does for `all-MiniLM-L6-v2` (Reimers & Gurevych 2019,
//! "Sentence-BERT"): token embeddings of the last layer, **mean pooling over the real
//! tokens only** (padding never enters the mean), then L2 normalisation.
//!
//! Layout and numerics follow HF transformers' `BertModel` (post-LayerNorm encoder,
//! absolute position embeddings, token type 0, erf GELU). Linear weights stay in HF
//! layout `[out, in]`.
//!
//! The tokenizer is `tokenizer.json` with its own padding switched off (the MiniLM file
//! pads to a fixed 128) and truncation at `max_seq_length` from
//! `sentence_bert_config.json` (256 for MiniLM; 512 when the file is absent).
//! Texts are embedded in batches sorted by token length, so little padding is computed.
use crate::error::{io, Result, TrainError};
use crate::model::{linear, TensorSource};
use crate::weights::SafetensorsSource;
use burn::tensor::activation::{gelu, softmax};
pub use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The HF `config.json` fields of a BERT encoder.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size (tokens).
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (H must be a multiple).
    pub num_attention_heads: usize,
    /// Feed-forward size I.
    pub intermediate_size: usize,
    /// Position embeddings (the longest input, tokens).
    pub max_position_embeddings: usize,
    /// Token-type embeddings.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (erf) is supported.
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu_name() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Read `DIR/config.json`. Errors: [`TrainError::BadFile`] for unreadable JSON, a
    /// `hidden_act` other than `gelu`, or heads not dividing the hidden size.
    pub fn load(dir: &Path) -> Result<BertConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let c: BertConfig = serde_json::from_str(&text).map_err(|e| TrainError::BadFile { path: path.clone(), message: e.to_string() })?;
        if c.hidden_act != "gelu" {
            return Err(TrainError::BadFile { path, message: format!("hidden_act `{}` is not supported (gelu)", c.hidden_act) });
        }
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(TrainError::BadFile { path, message: "num_attention_heads must divide hidden_size".into() });
        }
        Ok(c)
    }
}

/// One post-LayerNorm encoder layer; weights `[out, in]`, biases `[out]`.
#[derive(Debug, Clone)]
pub struct BertLayer<B: Backend> {
    /// Query/key/value/attention-output weights [H, H] and biases [H].
    pub q: (Tensor<B, 2>, Tensor<B, 1>),
    /// Key projection.
    pub k: (Tensor<B, 2>, Tensor<B, 1>),
    /// Value projection.
    pub v: (Tensor<B, 2>, Tensor<B, 1>),
    /// Attention output projection.
    pub o: (Tensor<B, 2>, Tensor<B, 1>),
    /// LayerNorm after attention (weight, bias) [H].
    pub ln1: (Tensor<B, 1>, Tensor<B, 1>),
    /// Intermediate [I, H] + [I].
    pub up: (Tensor<B, 2>, Tensor<B, 1>),
    /// Output [H, I] + [H].
    pub down: (Tensor<B, 2>, Tensor<B, 1>),
    /// LayerNorm after the feed-forward [H].
    pub ln2: (Tensor<B, 1>, Tensor<B, 1>),
}

/// BERT encoder (inference only).
#[derive(Debug, Clone)]
pub struct Bert<B: Backend> {
    /// Word embeddings [V, H].
    pub word: Tensor<B, 2>,
    /// Position embeddings [P, H].
    pub position: Tensor<B, 2>,
    /// Token-type-0 embedding [H].
    pub token_type0: Tensor<B, 1>,
    /// Embedding LayerNorm [H].
    pub ln: (Tensor<B, 1>, Tensor<B, 1>),
    /// Encoder layers.
    pub layers: Vec<BertLayer<B>>,
    /// Heads.
    pub heads: usize,
    /// LayerNorm ε.
    pub eps: f64,
}

impl<B: Backend> Bert<B> {
    /// Load `config.json` + safetensors (single or sharded; names with or without a
    /// `bert.` prefix). Errors: missing or mis-shaped tensors name the file and tensor.
    pub fn load(dir: &Path, device: &B::Device) -> Result<(BertConfig, Bert<B>)> {
        let c = BertConfig::load(dir)?;
        let mut src = SafetensorsSource::<B>::open(dir, device)?;
        let prefix = if src.has("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let mut m = |name: &str, shape: [usize; 2]| src.matrix(&format!("{prefix}{name}"), shape);
        let word = m("embeddings.word_embeddings.weight", [c.vocab_size, h])?;
        let position = m("embeddings.position_embeddings.weight", [c.max_position_embeddings, h])?;
        let types = m("embeddings.token_type_embeddings.weight", [c.type_vocab_size, h])?;
        let token_type0 = types.slice([0..1, 0..h]).reshape([h]);
        let mut v = |name: &str, len: usize| src.vector(&format!("{prefix}{name}"), len);
        let ln = (v("embeddings.LayerNorm.weight", h)?, v("embeddings.LayerNorm.bias", h)?);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{l}.");
            let mut lin = |name: &str, out: usize, inp: usize| -> Result<(Tensor<B, 2>, Tensor<B, 1>)> {
                Ok((src.matrix(&format!("{p}{name}.weight"), [out, inp])?, src.vector(&format!("{p}{name}.bias"), out)?))
            };
            let q = lin("attention.self.query", h, h)?;
            let k = lin("attention.self.key", h, h)?;
            let vv = lin("attention.self.value", h, h)?;
            let o = lin("attention.output.dense", h, h)?;
            let up = lin("intermediate.dense", i, h)?;
            let down = lin("output.dense", h, i)?;
            let mut norm = |name: &str| -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
                Ok((src.vector(&format!("{p}{name}.weight"), h)?, src.vector(&format!("{p}{name}.bias"), h)?))
            };
            let ln1 = norm("attention.output.LayerNorm")?;
            let ln2 = norm("output.LayerNorm")?;
            layers.push(BertLayer { q, k, v: vv, o, ln1, up, down, ln2 });
        }
        let heads = c.num_attention_heads;
        let eps = c.layer_norm_eps;
        Ok((c, Bert { word, position, token_type0, ln, layers, heads, eps }))
    }

    /// Last hidden states [B, S, H] for token ids [B, S] and `mask` [B, S] (1 = real
    /// token, 0 = padding). Padded keys get a −1e9 score bias before the softmax, as HF's
    /// extended attention mask does with the dtype minimum, so they get zero weight.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, s] = tokens.dims();
        let h = self.word.dims()[1];
        let hd = h / self.heads;
        let words = self.word.clone().select(0, tokens.reshape([b * s])).reshape([b, s, h]);
        let pos = self.position.clone().slice([0..s, 0..h]).unsqueeze::<3>();
        let x = words + pos + self.token_type0.clone().unsqueeze::<3>();
        let mut x = layer_norm(x, &self.ln, self.eps);
        // [B, 1, 1, S]: 0 for real keys, -1e9 for padding.
        let bias = (mask.ones_like() - mask).mul_scalar(-1e9).reshape([b, 1, 1, s]);
        for l in &self.layers {
            let heads = |t: Tensor<B, 3>| t.reshape([b, s, self.heads, hd]).swap_dims(1, 2);
            let q = heads(affine(x.clone(), &l.q));
            let k = heads(affine(x.clone(), &l.k));
            let v = heads(affine(x.clone(), &l.v));
            let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((hd as f64).sqrt()) + bias.clone();
            let ctx = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, s, h]);
            x = layer_norm(affine(ctx, &l.o) + x, &l.ln1, self.eps);
            let ff = affine(gelu(affine(x.clone(), &l.up)), &l.down);
            x = layer_norm(ff + x, &l.ln2, self.eps);
        }
        x
    }

    /// Sentence embeddings [B, H]: mean of `forward` over positions where `mask` is 1,
    /// then divided by max(‖·‖₂, 1e-12) (`torch.nn.functional.normalize`).
    pub fn embed(&self, tokens: Tensor<B, 2, Int>, mask: Tensor<B, 2>) -> Tensor<B, 2> {
        let [b, s] = mask.dims();
        let hidden = self.forward(tokens, mask.clone());
        let h = hidden.dims()[2];
        let m = mask.reshape([b, s, 1]);
        let summed = (hidden * m.clone()).sum_dim(1).reshape([b, h]);
        let counts = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
        let mean = summed / counts;
        let norm = mean.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
        mean / norm
    }
}

/// `x W^T + b` for x [B, S, in].
fn affine<B: Backend>(x: Tensor<B, 3>, (w, b): &(Tensor<B, 2>, Tensor<B, 1>)) -> Tensor<B, 3> {
    linear(x, w.clone()) + b.clone().unsqueeze::<3>()
}

/// LayerNorm over the last dim (Ba et al. 2016): (x − mean) / sqrt(var + ε) · w + b, with
/// the biased variance, as `torch.nn.LayerNorm`.
fn layer_norm<B: Backend>(x: Tensor<B, 3>, (w, b): &(Tensor<B, 1>, Tensor<B, 1>), eps: f64) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(2);
    let centered = x - mean;
    let var = centered.clone().powf_scalar(2.0).mean_dim(2);
    centered / var.add_scalar(eps).sqrt() * w.clone().unsqueeze::<3>() + b.clone().unsqueeze::<3>()
}

/// A BERT sentence embedder: tokenizer + encoder on one device.
pub struct SentenceEmbedder<B: Backend> {
    tokenizer: tokenizers::Tokenizer,
    model: Bert<B>,
    device: B::Device,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Truncation length (tokens, including [CLS] and [SEP]).
    pub max_seq_length: usize,
    /// Threads running batches at once (default: available cores; 1 on a GPU backend is
    /// enough).
    pub threads: usize,
    dir: PathBuf,
}

impl<B: Backend> SentenceEmbedder<B>
where
    Bert<B>: Sync,
{
    /// Load a sentence-transformers model directory (config.json, model.safetensors,
    /// tokenizer.json, optional sentence_bert_config.json). Errors name the file.
    pub fn load(dir: &Path, device: &B::Device) -> Result<SentenceEmbedder<B>> {
        let (config, model) = Bert::load(dir, device)?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| TrainError::BadFile { path: tok_path.clone(), message: e.to_string() })?;
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq_length = match std::fs::read_to_string(&st_path) {
            Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| TrainError::BadFile { path: st_path.clone(), message: e.to_string() })?
                .get("max_seq_length")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .unwrap_or(config.max_position_embeddings),
            Err(_) => config.max_position_embeddings,
        }
        .min(config.max_position_embeddings);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_seq_length, ..Default::default() }))
            .map_err(|e| TrainError::BadFile { path: tok_path.clone(), message: e.to_string() })?;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(SentenceEmbedder { tokenizer, model, device: device.clone(), batch_size: 32, max_seq_length, threads, dir: dir.to_path_buf() })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A key naming this model and its settings for caches: `<dir name>-<16 hex>` of
    /// sha256 over config.json, the safetensors file(s), tokenizer.json and the
    /// truncation length. Errors: unreadable files (named).
    pub fn content_key(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut files: Vec<PathBuf> = ["config.json", "tokenizer.json", "model.safetensors.index.json"].iter().map(|f| self.dir.join(f)).collect();
        let mut weights: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        weights.sort();
        files.extend(weights);
        for f in files.iter().filter(|f| f.exists()) {
            h.update(f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default());
            h.update(std::fs::read(f).map_err(io(f))?);
        }
        h.update(format!("max_seq_length {}", self.max_seq_length));
        let name = self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
        Ok(format!("{name}-{}", hex::encode(&h.finalize()[..8])))
    }

    /// Embedding width H (384 for MiniLM).
    pub fn dim(&self) -> usize {
        self.model.word.dims()[1]
    }

    /// Token ids of `text` with [CLS]/[SEP], truncated to `max_seq_length`.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| TrainError::Args(format!("tokenizing for embeddings: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeddings [rows, H] (flattened) of the texts `chunk` (indices into `ids`), padded
    /// with id 0 to the longest.
    fn embed_batch(&self, chunk: &[usize], ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        let s = chunk.iter().map(|&i| ids[i].len()).max().unwrap_or(1).max(1);
        let mut tok = vec![0i64; chunk.len() * s];
        let mut mask = vec![0f32; chunk.len() * s];
        for (r, &i) in chunk.iter().enumerate() {
            for (c, &t) in ids[i].iter().enumerate() {
                tok[r * s + c] = t as i64;
                mask[r * s + c] = 1.0;
            }
        }
        let tok = Tensor::<B, 2, Int>::from_data(TensorData::new(tok, [chunk.len(), s]), &self.device);
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [chunk.len(), s]), &self.device);
        self.model.embed(tok, mask).into_data().convert::<f32>().to_vec().map_err(|e| TrainError::Args(format!("{e:?}")))
    }

    /// Unit-length embeddings, one `Vec<f32>` of length [`Self::dim`] per text, in input
    /// order. Batches of `batch_size` texts sorted by token count, padded with id 0, run on
    /// `threads` threads.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.token_ids(t)).collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let dim = self.dim();
        let batches: Vec<&[usize]> = order.chunks(self.batch_size.max(1)).collect();
        // Batches are independent: spread them over the cores (burn-ndarray runs each op
        // on one thread), each thread taking every `threads`-th batch.
        let threads = self.threads.max(1).min(batches.len().max(1));
        let results: Vec<Result<Vec<(usize, Vec<f32>)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (batches, ids) = (&batches, &ids);
                    s.spawn(move || -> Result<Vec<(usize, Vec<f32>)>> {
                        let mut got = Vec::new();
                        for chunk in batches.iter().skip(t).step_by(threads) {
                            let e = self.embed_batch(chunk, ids)?;
                            for (r, &i) in chunk.iter().enumerate() {
                                got.push((i, e[r * dim..(r + 1) * dim].to_vec()));
                            }
                        }
                        Ok(got)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("embedding thread panicked")).collect()
        });
        let mut out = vec![Vec::new(); texts.len()];
        for r in results {
            for (i, v) in r? {
                out[i] = v;
            }
        }
        Ok(out)
    }
}
