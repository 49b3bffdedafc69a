//! BOS/EOS strings from a HF tokenizer directory (`tokenizer_config.json`).
use crate::error::{BuildError, Result};
use std::path::Path;

/// BOS and EOS token strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// BOS string, e.g. `<s>`.
    pub bos: String,
    /// EOS string, e.g. `</s>`.
    pub eos: String,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        SpecialTokens { bos: "<s>".into(), eos: "</s>".into() }
    }
}

/// Read `bos_token`/`eos_token` from `DIR/tokenizer_config.json` (a string or an
/// `{"content": ...}` object, as transformers writes them). Errors name the file.
pub fn special_tokens(dir: &Path) -> Result<SpecialTokens> {
    let path = dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&path).map_err(crate::error::io(&path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| BuildError::Tokenizer { path: path.clone(), message: e.to_string() })?;
    let get = |key: &str| -> Result<String> {
        match &v[key] {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string).ok_or_else(|| BuildError::Tokenizer { path: path.clone(), message: format!("`{key}` has no content") }),
            _ => Err(BuildError::Tokenizer { path: path.clone(), message: format!("missing `{key}`") }),
        }
    };
    Ok(SpecialTokens { bos: get("bos_token")?, eos: get("eos_token")? })
}
