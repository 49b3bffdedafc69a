//! HF `config.json` of a Llama/Mistral-architecture model.
use crate::error::{io, Result, TrainError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The fields bagel uses; unknown fields are kept in `extra` and written back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Model width H.
    pub hidden_size: usize,
    /// SwiGLU inner width I.
    pub intermediate_size: usize,
    /// Decoder layers L.
    pub num_hidden_layers: usize,
    /// Query heads (H / head_dim).
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm ε.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ (Su et al. 2021, "RoFormer").
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Whether the LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Longest position the model was trained for, tokens.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// BOS token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// `rope_scaling` (must be null: no scaling types are supported yet).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Everything else, preserved.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Read `DIR/config.json`. Errors: unreadable, not JSON, unsupported `rope_scaling`,
    /// heads that do not divide the width.
    pub fn load(dir: &Path) -> Result<LlamaConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let c: LlamaConfig = serde_json::from_str(&text).map_err(|e| TrainError::BadFile { path: path.clone(), message: e.to_string() })?;
        c.validate().map_err(|message| TrainError::BadFile { path, message })?;
        Ok(c)
    }

    /// Check the shapes are consistent.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is set, but no rope_scaling type is supported yet".into());
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!("hidden_size {} is not a multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(format!("num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_attention_heads, self.kv_heads()));
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Parameter count (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (h, i, v, l) = (self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers);
        let kv = self.kv_heads() * self.head_dim();
        let layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h;
        v * h + l * layer + h + if self.tie_word_embeddings { 0 } else { v * h }
    }

    /// Write `DIR/config.json` (pretty JSON).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(self).expect("config serialises")).map_err(io(&path))
    }
}
