//! HF safetensors in and out.
//!
//! In: `model.safetensors`, or shards listed in `model.safetensors.index.json`
//! (`weight_map`: tensor name → file). Dtypes F32, F16, BF16 are widened to f32.
//! Out: one `model.safetensors` (F32), written to a temp name and renamed, plus
//! `config.json` and the tokenizer files copied from the source directory.
use crate::config::LlamaConfig;
use crate::error::{io, Result, TrainError};
use bagel_core::atomic::AtomicPath;
use crate::model::{Llama, TensorSource};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tensors of a HF model directory.
pub struct SafetensorsSource<'d, B: Backend> {
    files: Vec<(PathBuf, Vec<u8>)>,
    index: HashMap<String, usize>,
    device: &'d B::Device,
}

impl<'d, B: Backend> SafetensorsSource<'d, B> {
    /// Open `DIR/model.safetensors` or the sharded index.
    pub fn open(dir: &Path, device: &'d B::Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let mut files = Vec::new();
        let mut index = HashMap::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io(&index_path))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::BadFile { path: index_path.clone(), message: e.to_string() })?;
            let map = v["weight_map"].as_object().ok_or_else(|| TrainError::BadFile { path: index_path.clone(), message: "no weight_map".into() })?;
            let mut shard_ids: HashMap<String, usize> = HashMap::new();
            for (name, file) in map {
                let file = file.as_str().unwrap_or_default().to_string();
                let id = match shard_ids.get(&file) {
                    Some(&id) => id,
                    None => {
                        let p = dir.join(&file);
                        files.push((p.clone(), std::fs::read(&p).map_err(io(&p))?));
                        shard_ids.insert(file, files.len() - 1);
                        files.len() - 1
                    }
                };
                index.insert(name.clone(), id);
            }
        } else {
            let bytes = std::fs::read(&single).map_err(io(&single))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| TrainError::BadFile { path: single.clone(), message: e.to_string() })?;
            for name in st.names() {
                index.insert(name.to_string(), 0);
            }
            files.push((single, bytes));
        }
        Ok(SafetensorsSource { files, index, device })
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let &i = self.index.get(name).ok_or_else(|| TrainError::Tensor { path: self.files[0].0.clone(), name: name.into(), message: "missing".into() })?;
        let (path, bytes) = &self.files[i];
        let bad = |message: String| TrainError::Tensor { path: path.clone(), name: name.into(), message };
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        if t.shape() != shape {
            return Err(bad(format!("shape {:?}, expected {shape:?}", t.shape())));
        }
        let d = t.data();
        Ok(match t.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(bad(format!("dtype {other:?} is not supported (F32, F16, BF16)"))),
        })
    }
}

impl<B: Backend> TensorSource<B> for SafetensorsSource<'_, B> {
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        Ok(Tensor::from_data(TensorData::new(self.load(name, &shape)?, shape), self.device))
    }
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        Ok(Tensor::from_data(TensorData::new(self.load(name, &[len])?, [len]), self.device))
    }
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// Load a model directory (config.json + safetensors).
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<(LlamaConfig, Llama<B>)> {
    let config = LlamaConfig::load(dir)?;
    let mut src = SafetensorsSource::<B>::open(dir, device)?;
    let model = Llama::from_source(&config, &mut src)?;
    Ok((config, model))
}

/// Tokenizer files copied next to saved weights.
pub const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// Save in HF layout: `model.safetensors` (F32, atomic), `config.json`, tokenizer files
/// from `tokenizer_dir` (those that exist).
pub fn save_model<B: Backend>(model: &Llama<B>, config: &LlamaConfig, tokenizer_dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in model.named_tensors() {
        let dims = t.dims();
        let shape: Vec<usize> = if name.ends_with("norm.weight") { vec![dims[1]] } else { dims.to_vec() };
        let data: Vec<f32> = t.into_data().convert::<f32>().to_vec().map_err(|e| TrainError::Tensor { path: out.into(), name: name.clone(), message: format!("{e:?}") })?;
        named.push((name, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = named
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("consistent view")))
        .collect();
    let dest = out.join("model.safetensors");
    let tmp = AtomicPath::new(&dest);
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), tmp.path()).map_err(|e| TrainError::BadFile { path: dest.clone(), message: e.to_string() })?;
    tmp.commit().map_err(io(&dest))?;
    config.save(out)?;
    for f in TOKENIZER_FILES {
        let src = tokenizer_dir.join(f);
        if src.exists() && tokenizer_dir != out {
            std::fs::copy(&src, out.join(f)).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Write a randomly initialised model for `from/config.json` (tokenizer files copied from
/// `from`) to `out`; returns the parameter count. Uses the CPU backend, seeded.
pub fn init_random(from: &Path, out: &Path, seed: u64) -> Result<usize> {
    type B = burn::backend::NdArray<f32>;
    let device = Default::default();
    <B as Backend>::seed(&device, seed);
    let config = LlamaConfig::load(from)?;
    let model: Llama<B> = Llama::from_source(&config, &mut crate::model::RandomInit { device: &device })?;
    save_model(&model, &config, from, out)?;
    Ok(config.num_parameters())
}

/// Write `bytes` to `path` through a temp file in the same directory and a rename
/// ([`bagel_core::atomic`]), so a reader never sees a half-written file and an error leaves
/// nothing behind. Errors: [`TrainError::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    bagel_core::atomic::write(path, bytes).map_err(io(path))
}
