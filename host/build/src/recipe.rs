//! Build recipes (TOML).
//!
//! ```toml
//! seed = 42                                      # optional; `--seed` wins
//! formats = ["alpaca", "vicuna", "chatml", "llama2"]   # optional; `--formats` wins
//!
//! [[source]]
//! plugin = "ai2_arc"                             # an installed source plugin
//! params = { config = "ARC-Easy", split = "train" }    # over the plugin's defaults
//! files = { data = ["sft/arc_easy/train.json"] } # input name → paths/globs under --data
//!
//! [[benchmark]]                                  # decontaminate against these
//! plugin = "benchmarks"
//! params = { set = "gsm8k" }
//! files = { data = ["benchmarks/gsm8k/test.jsonl"] }
//! ```
//! An input without `files` is looked up by its dataset id under `--data`:
//! `<data>/<org>/<name>/<pattern>` or a Hugging Face hub cache
//! `<data>/datasets--<org>--<name>/snapshots/<rev>/<pattern>` (also under `<data>/hub/`;
//! `<rev>` from the cache's `refs/main`, see [`dataset_globs`]), where `{param}` in a
//! pattern is replaced by that parameter's value.
use crate::error::{BuildError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed recipe.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Build seed (coins, shuffles); `--seed` overrides.
    pub seed: Option<u64>,
    /// Prompt formats by name, in order; `--formats` overrides.
    pub formats: Option<Vec<String>>,
    /// Sources to run.
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceEntry>,
    /// Benchmarks to decontaminate against: source plugins in the benchmark role (their
    /// text records, or the first human turn of their conversations, are indexed; the
    /// record label names the benchmark and the key is the item id).
    #[serde(rename = "benchmark", default)]
    pub benchmarks: Vec<SourceEntry>,
    /// The file it was read from ([`Recipe::load`]); `None` for a recipe built in code.
    /// Errors about the recipe name it (or `<recipe>`).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// One `[[source]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// Installed source plugin name.
    pub plugin: String,
    /// Parameter values (TOML values, passed to the plugin as JSON text).
    #[serde(default)]
    pub params: toml::Table,
    /// Input name → file paths or globs relative to `--data`.
    #[serde(default)]
    pub files: BTreeMap<String, Vec<String>>,
    /// Set false to keep an entry but skip it.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Recipe {
    /// Read and parse a recipe file. Errors: [`BuildError::Recipe`] naming the file.
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
        let mut recipe: Recipe = toml::from_str(&text).map_err(|e| BuildError::Recipe {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        recipe.path = Some(path.to_path_buf());
        Ok(recipe)
    }
}

impl SourceEntry {
    /// Parameters as (name, JSON text) pairs, sorted by name.
    pub fn params_json(&self) -> Vec<(String, String)> {
        self.params.iter().map(|(k, v)| (k.clone(), toml_to_json(v).to_string())).collect()
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

/// Expand globs relative to `data`; sorted, de-duplicated. Paths without glob
/// characters are returned when they exist.
pub fn expand_globs(data: &Path, patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for pat in patterns {
        let full = data.join(pat);
        let full_s = full.to_string_lossy().to_string();
        match glob::glob(&full_s) {
            Ok(paths) => {
                let mut v: Vec<PathBuf> = paths.filter_map(|p| p.ok()).filter(|p| p.is_file()).collect();
                v.sort();
                out.extend(v);
            }
            Err(_) => {
                if full.is_file() {
                    out.push(full);
                }
            }
        }
    }
    out.dedup();
    out
}

/// Substitute `{name}` in `pattern` with parameter values (strings unquoted).
pub fn substitute(pattern: &str, params: &BTreeMap<String, serde_json::Value>) -> String {
    let mut s = pattern.to_string();
    for (k, v) in params {
        let val = match v {
            serde_json::Value::String(x) => x.clone(),
            other => other.to_string(),
        };
        s = s.replace(&format!("{{{k}}}"), &val);
    }
    s
}

/// Candidate globs, relative to `data`, for a dataset id: the plain layout
/// `<org>/<name>/<pattern>` and the Hugging Face hub cache layout
/// `datasets--<org>--<name>/snapshots/<rev>/<pattern>` (also under `hub/`). `<rev>` is the
/// commit that the cache's `refs/main` names (the revision `huggingface-cli download` last
/// fetched for the default branch: older snapshots in the same cache are not read); a
/// cache without that file (downloaded by commit hash) has every snapshot read.
pub fn dataset_globs(data: &Path, dataset: &str, pattern: &str) -> Vec<String> {
    let hub = format!("datasets--{}", dataset.replace('/', "--"));
    let mut globs = vec![format!("{dataset}/{pattern}")];
    for root in [hub.clone(), format!("hub/{hub}")] {
        // A commit hash; anything else (a path, a glob) is not trusted as one.
        let rev = std::fs::read_to_string(data.join(&root).join("refs/main"))
            .ok()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()));
        globs.push(format!("{root}/snapshots/{}/{pattern}", rev.as_deref().unwrap_or("*")));
    }
    globs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_layout_is_found() {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join("datasets--allenai--ai2_arc/snapshots/abc123/ARC-Easy");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("train-00000-of-00001.parquet"), b"x").unwrap();
        let mut params = BTreeMap::new();
        params.insert("config".to_string(), serde_json::json!("ARC-Easy"));
        params.insert("split".to_string(), serde_json::json!("train"));
        let pat = substitute("{config}/{split}-*.parquet", &params);
        assert_eq!(pat, "ARC-Easy/train-*.parquet");
        let found = expand_globs(d.path(), &dataset_globs(d.path(), "allenai/ai2_arc", &pat));
        assert_eq!(found, vec![snap.join("train-00000-of-00001.parquet")]);
    }

    #[test]
    fn hub_cache_reads_the_revision_refs_main_names() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("hub/datasets--openai--gsm8k");
        for rev in ["0aaa", "1bbb"] {
            std::fs::create_dir_all(cache.join("snapshots").join(rev).join("main")).unwrap();
            std::fs::write(cache.join("snapshots").join(rev).join("main/train.jsonl"), rev).unwrap();
        }
        let globs = || dataset_globs(d.path(), "openai/gsm8k", "main/train*.jsonl");
        // No refs/main: every snapshot.
        assert_eq!(expand_globs(d.path(), &globs()).len(), 2);
        std::fs::create_dir_all(cache.join("refs")).unwrap();
        std::fs::write(cache.join("refs/main"), "0aaa\n").unwrap();
        assert_eq!(expand_globs(d.path(), &globs()), vec![cache.join("snapshots/0aaa/main/train.jsonl")]);
        // A ref that is not a commit hash is not followed as a path.
        std::fs::write(cache.join("refs/main"), "../../x").unwrap();
        assert_eq!(expand_globs(d.path(), &globs()).len(), 2);
    }

    #[test]
    fn recipe_parses_and_rejects_typos() {
        let r: Recipe = toml::from_str("seed = 7\n[[source]]\nplugin = \"ai2_arc\"\nparams = { config = \"ARC-Easy\", coin_p = 0.25 }\nfiles = { data = [\"a.json\"] }\n").unwrap();
        assert_eq!(r.seed, Some(7));
        assert_eq!(r.sources[0].params_json(), vec![("coin_p".to_string(), "0.25".to_string()), ("config".to_string(), "\"ARC-Easy\"".to_string())]);
        assert!(toml::from_str::<Recipe>("[[source]]\nplugn = \"x\"\n").is_err());
    }
}
