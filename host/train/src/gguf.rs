//! `bagel model import FILE.gguf --out DIR`: a llama.cpp GGUF (Llama architecture) to a
//! HF directory (model.safetensors F32, config.json, tokenizer.json,
//! tokenizer_config.json).
//!
//! Format: GGUF v2/v3 (ggml `docs/gguf.md`): header, metadata key/values, tensor infos,
//! aligned data. Dequantized types (ggml `ggml-quants.c`, blocks of 32 values):
//! F32, F16, Q8_0 (f16 d, 32 × i8: x = q·d), Q4_0 (f16 d, 16 bytes: x = (q − 8)·d),
//! Q4_1 (f16 d, f16 m, 16 bytes: x = q·d + m); low nibbles are elements 0..16, high
//! nibbles 16..32. llama.cpp's `convert_hf_to_gguf.py` permutes the rows of `q_proj`
//! and `k_proj` for its RoPE layout; [`unpermute`] undoes it. The tokenizer is rebuilt
//! from `tokenizer.ggml.{model,tokens,merges,token_type,bos_token_id,eos_token_id,pre}`;
//! supported: the `gpt2` (byte-level BPE) model.
use crate::config::LlamaConfig;
use crate::error::{io, Result, TrainError};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any integer type.
    Int(i128),
    /// f32/f64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// string.
    Str(String),
    /// array.
    Array(Vec<Value>),
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dims, fastest-varying first (`ne[0]`).
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Offset from the start of the data section, bytes.
    pub offset: u64,
}

/// A parsed GGUF file (data kept in memory).
pub struct Gguf {
    /// Metadata.
    pub meta: BTreeMap<String, Value>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        if self.p + n > self.b.len() {
            return Err(format!("truncated at byte {}", self.p));
        }
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()? as usize;
        let at = self.p;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("invalid UTF-8 string at byte {at}"))
    }
    fn value(&mut self, t: u32) -> std::result::Result<Value, String> {
        Ok(match t {
            0 => Value::Int(self.take(1)?[0] as i128),
            1 => Value::Int(self.take(1)?[0] as i8 as i128),
            2 => Value::Int(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i128),
            3 => Value::Int(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i128),
            4 => Value::Int(self.u32()? as i128),
            5 => Value::Int(self.u32()? as i32 as i128),
            6 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let et = self.u32()?;
                let n = self.u64()? as usize;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(et)?);
                }
                Value::Array(v)
            }
            10 => Value::Int(self.u64()? as i128),
            11 => Value::Int(self.u64()? as i64 as i128),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            other => return Err(format!("unknown metadata type {other} at byte {}", self.p)),
        })
    }
}

impl Gguf {
    /// Read and parse a GGUF file. Errors name the file and the byte position.
    pub fn open(path: &Path) -> Result<Gguf> {
        let mut bytes = Vec::new();
        std::fs::File::open(path).map_err(io(path))?.read_to_end(&mut bytes).map_err(io(path))?;
        Self::parse(bytes).map_err(|message| TrainError::BadFile { path: path.to_path_buf(), message })
    }

    fn parse(bytes: Vec<u8>) -> std::result::Result<Gguf, String> {
        let mut c = Cur { b: &bytes, p: 0 };
        if c.take(4)? != b"GGUF" {
            return Err("not a GGUF file (bad magic)".into());
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2, 3)"));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut meta = BTreeMap::new();
        for _ in 0..n_kv {
            let k = c.string()?;
            let t = c.u32()?;
            meta.insert(k, c.value(t)?);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            let dims = (0..nd).map(|_| c.u64()).collect::<std::result::Result<Vec<_>, _>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let align = meta.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        let data_start = c.p.div_ceil(align) * align;
        Ok(Gguf { meta, tensors, bytes, data_start })
    }

    /// Dequantize one tensor to f32 (ggml order: `ne[0]` fastest).
    pub fn dequantize(&self, t: &TensorInfo) -> std::result::Result<Vec<f32>, String> {
        let n: u64 = t.dims.iter().product();
        let n = n as usize;
        let start = self.data_start + t.offset as usize;
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let block = |bytes_per_block: usize| -> std::result::Result<&[u8], String> {
            if n % 32 != 0 {
                return Err(format!("{}: {} values is not a multiple of the block size 32", t.name, n));
            }
            self.bytes.get(start..start + n / 32 * bytes_per_block).ok_or_else(|| format!("{}: data past the end of the file", t.name))
        };
        let mut out = Vec::with_capacity(n);
        match t.ggml_type {
            0 => {
                let d = self.bytes.get(start..start + 4 * n).ok_or("data past the end of the file")?;
                out.extend(d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())));
            }
            1 => {
                let d = self.bytes.get(start..start + 2 * n).ok_or("data past the end of the file")?;
                out.extend(d.chunks_exact(2).map(f16));
            }
            2 => {
                for b in block(18)?.chunks_exact(18) {
                    let d = f16(&b[0..2]);
                    let qs = &b[2..18];
                    out.extend(qs.iter().map(|q| ((q & 0x0F) as i32 - 8) as f32 * d));
                    out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
                }
            }
            3 => {
                for b in block(20)?.chunks_exact(20) {
                    let (d, m) = (f16(&b[0..2]), f16(&b[2..4]));
                    let qs = &b[4..20];
                    out.extend(qs.iter().map(|q| (q & 0x0F) as f32 * d + m));
                    out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
                }
            }
            8 => {
                for b in block(34)?.chunks_exact(34) {
                    let d = f16(&b[0..2]);
                    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
                }
            }
            other => return Err(format!("{}: ggml type {other} is not supported (F32, F16, Q4_0, Q4_1, Q8_0)", t.name)),
        }
        Ok(out)
    }
}

/// Undo llama.cpp's Q/K row permutation: rows `[n_head, 2, d/2]` were reordered to
/// `[n_head, d/2, 2]`; `w` is `[rows, cols]` row-major.
pub fn unpermute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) holds HF row (h, j, i).
                let src = h * hd + i * 2 + j;
                let dst = h * hd + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn hf_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{mapped}"))
}

/// Import `gguf` into `out` (HF layout). Returns the config written.
pub fn import(path: &Path, out: &Path) -> Result<LlamaConfig> {
    let g = Gguf::open(path)?;
    let bad = |message: String| TrainError::BadFile { path: path.to_path_buf(), message };
    let arch = g.meta.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    if arch != "llama" {
        return Err(bad(format!("architecture {arch:?} is not supported (llama)")));
    }
    let num = |k: &str| g.meta.get(&format!("llama.{k}")).and_then(Value::as_u64).ok_or_else(|| bad(format!("missing llama.{k}")));
    let tokens: Vec<String> = match g.meta.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        _ => return Err(bad("missing tokenizer.ggml.tokens".into())),
    };
    let n_head = num("attention.head_count")? as usize;
    let n_kv = g.meta.get("llama.attention.head_count_kv").and_then(Value::as_u64).unwrap_or(n_head as u64) as usize;
    let has_output = g.tensors.iter().any(|t| t.name == "output.weight");
    let bos = g.meta.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).map(|v| v as u32);
    let eos = g.meta.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64).map(|v| v as u32);
    let mut extra = serde_json::Map::new();
    extra.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
    extra.insert("model_type".into(), serde_json::json!("llama"));
    extra.insert("hidden_act".into(), serde_json::json!("silu"));
    let config = LlamaConfig {
        vocab_size: tokens.len(),
        hidden_size: num("embedding_length")? as usize,
        intermediate_size: num("feed_forward_length")? as usize,
        num_hidden_layers: num("block_count")? as usize,
        num_attention_heads: n_head,
        num_key_value_heads: Some(n_kv),
        rms_norm_eps: g.meta.get("llama.attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-5),
        rope_theta: g.meta.get("llama.rope.freq_base").and_then(Value::as_f64).unwrap_or(10_000.0),
        tie_word_embeddings: !has_output,
        max_position_embeddings: num("context_length").unwrap_or(2048) as usize,
        bos_token_id: bos,
        eos_token_id: eos.map(serde_json::Value::from),
        rope_scaling: None,
        extra,
    };
    config.validate().map_err(bad)?;
    std::fs::create_dir_all(out).map_err(io(out))?;

    // Tensors → safetensors (F32).
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in &g.tensors {
        let Some(name) = hf_name(&t.name) else {
            tracing::warn!("skipping unknown GGUF tensor {}", t.name);
            continue;
        };
        let mut data = g.dequantize(t).map_err(bad)?;
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            let heads = if name.ends_with("q_proj.weight") { n_head } else { n_kv };
            data = unpermute(&data, shape[0], shape[1], heads);
        }
        named.push((name, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        named.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("consistent view"))).collect();
    let dest = out.join("model.safetensors");
    let tmp = bagel_core::atomic::AtomicPath::new(&dest);
    safetensors::serialize_to_file(views, None, tmp.path()).map_err(|e| bad(e.to_string()))?;
    tmp.commit().map_err(io(&dest))?;
    config.save(out)?;
    write_tokenizer(&g, &tokens, out).map_err(bad)?;
    Ok(config)
}

/// Rebuild `tokenizer.json` / `tokenizer_config.json` (byte-level BPE, `gpt2` model).
fn write_tokenizer(g: &Gguf, tokens: &[String], out: &Path) -> std::result::Result<(), String> {
    let model = g.meta.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
    if model != "gpt2" {
        return Err(format!("tokenizer model {model:?} is not supported (gpt2 byte-level BPE)"));
    }
    let merges: Vec<String> = match g.meta.get("tokenizer.ggml.merges") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        _ => return Err("missing tokenizer.ggml.merges".into()),
    };
    let types: Vec<i128> = match g.meta.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| if let Value::Int(i) = v { *i } else { 1 }).collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = g.meta.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    // token_type 3 = control, 4 = user-defined: added (special) tokens.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    // llama.cpp's `smollm` pre-tokenizer splits digits one by one before byte-level BPE.
    let pre_tokenizer = match pre {
        "smollm" => serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]}),
        "default" | "gpt2" | "gpt-2" => byte_level.clone(),
        other => return Err(format!("pre-tokenizer {other:?} is not supported (smollm, gpt2, default)")),
    };
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let id_tok = |k: &str| g.meta.get(k).and_then(Value::as_u64).and_then(|i| tokens.get(i as usize)).cloned();
    let mut cfg = serde_json::Map::new();
    if let Some(b) = id_tok("tokenizer.ggml.bos_token_id") {
        cfg.insert("bos_token".into(), b.into());
    }
    if let Some(e) = id_tok("tokenizer.ggml.eos_token_id") {
        cfg.insert("eos_token".into(), e.into());
    }
    if let Some(t) = g.meta.get("tokenizer.chat_template").and_then(Value::as_str) {
        cfg.insert("chat_template".into(), t.into());
    }
    cfg.insert("tokenizer_class".into(), "GPT2Tokenizer".into());
    std::fs::write(out.join("tokenizer.json"), serde_json::to_vec(&tok).unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp permute for n_head = 1, head_dim 4: HF rows [0,1,2,3] → [0,2,1,3].
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 4 rows × 2 cols
        let gguf = vec![0., 1., 4., 5., 2., 3., 6., 7.];
        assert_eq!(unpermute(&gguf, 4, 2, 1), hf);
    }

    #[test]
    fn q4_1_and_q8_0_blocks_by_hand() {
        // One Q4_1 block: d = 0.5, m = -1, nibbles q_j = j mod 16 (low) and 15 − j (high).
        let mut b = Vec::new();
        b.extend(half::f16::from_f32(0.5).to_le_bytes());
        b.extend(half::f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let g = Gguf { meta: BTreeMap::new(), tensors: vec![], bytes: b, data_start: 0 };
        let t = TensorInfo { name: "x".into(), dims: vec![32], ggml_type: 3, offset: 0 };
        let v = g.dequantize(&t).unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[3], 0.5);
        assert_eq!(v[16], 6.5);
        assert_eq!(v[31], -1.0);
        // Q8_0: d = 0.25, q = −3.
        let mut b = half::f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend(std::iter::repeat_n((-3i8) as u8, 32));
        let g = Gguf { meta: BTreeMap::new(), tensors: vec![], bytes: b, data_start: 0 };
        let v = g.dequantize(&TensorInfo { name: "y".into(), dims: vec![32], ggml_type: 8, offset: 0 }).unwrap();
        assert!(v.iter().all(|&x| x == -0.75));
        // Q4_0: d = 2, nibble 8 → 0, nibble 0 → −16.
        let mut b = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend(std::iter::repeat_n(0x08u8, 16));
        let g = Gguf { meta: BTreeMap::new(), tensors: vec![], bytes: b, data_start: 0 };
        let v = g.dequantize(&TensorInfo { name: "z".into(), dims: vec![32], ggml_type: 2, offset: 0 }).unwrap();
        assert!(v[..16].iter().all(|&x| x == 0.0) && v[16..].iter().all(|&x| x == -16.0));
    }
}
