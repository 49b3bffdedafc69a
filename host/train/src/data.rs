//! `sft.parquet` → tokenized examples with the loss mask.
//!
//! Rule (axolotl/bagel style): tokens = [BOS] + tok(input) + tok(output) + [EOS]; BOS is
//! not added when the input already starts with the BOS string (the chatml rows do), so
//! there is never a double BOS. The loss mask covers output + EOS only, unless
//! `train_on_source`. Over-length rows (more than `model_max_len` tokens) are skipped when
//! `skip_excess_length` (default), else truncated to `model_max_len` from the end.
use crate::error::{io, Result, TrainError};
use arrow_array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// `source` column (for stratified eval splits and filters).
    pub source: String,
    /// Token ids, BOS first, EOS last.
    pub ids: Vec<u32>,
    /// `mask[i]`: token i is a training target.
    pub mask: Vec<bool>,
}

/// Tokenizer with its BOS/EOS.
pub struct Tok {
    /// The HF tokenizer.
    pub tokenizer: Tokenizer,
    /// BOS string and id.
    pub bos: (String, u32),
    /// EOS string and id.
    pub eos: (String, u32),
}

impl Tok {
    /// Load `DIR/tokenizer.json`, BOS/EOS from `DIR/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<Tok> {
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| TrainError::BadFile { path: path.clone(), message: e.to_string() })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?).map_err(|e| TrainError::BadFile { path: cfg_path.clone(), message: e.to_string() })?;
        let special = |key: &str| -> Result<(String, u32)> {
            let s = match &cfg[key] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
                _ => return Err(TrainError::BadFile { path: cfg_path.clone(), message: format!("no `{key}`") }),
            };
            let id = tokenizer.token_to_id(&s).ok_or_else(|| TrainError::BadFile { path: path.clone(), message: format!("{key} {s:?} is not in the vocabulary") })?;
            Ok((s, id))
        };
        Ok(Tok { bos: special("bos_token")?, eos: special("eos_token")?, tokenizer })
    }

    /// Token ids of `text` (no special tokens added; special-token text is recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, false).map_err(|e| TrainError::Args(format!("tokenizer: {e}")))?.get_ids().to_vec())
    }

    /// One example from (input, output).
    pub fn example(&self, source: &str, input: &str, output: &str, train_on_source: bool) -> Result<Example> {
        let mut ids = Vec::new();
        if !input.starts_with(&self.bos.0) {
            ids.push(self.bos.1);
        }
        ids.extend(self.encode(input)?);
        let n_src = ids.len();
        ids.extend(self.encode(output)?);
        ids.push(self.eos.1);
        let mask = (0..ids.len()).map(|i| train_on_source || i >= n_src).collect();
        Ok(Example { source: source.to_string(), ids, mask })
    }
}

/// Dataset loading options.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Longest example, tokens.
    pub model_max_len: usize,
    /// Skip (true) or truncate (false) longer examples.
    pub skip_excess_length: bool,
    /// Train on input tokens too.
    pub train_on_source: bool,
    /// Keep only rows whose source starts with one of these (empty: all).
    pub include_sources: Vec<String>,
}

/// Counts of what loading dropped.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DataReport {
    /// Rows read.
    pub rows: usize,
    /// Rows dropped by `include_sources`.
    pub filtered_by_source: usize,
    /// Rows over `model_max_len` skipped.
    pub skipped_too_long: usize,
    /// Rows truncated.
    pub truncated: usize,
    /// Rows with no target token left.
    pub no_targets: usize,
}

/// Read and tokenize `sft.parquet` (columns id, source, input, output).
pub fn load_sft(path: &Path, tok: &Tok, o: &DataOptions) -> Result<(Vec<Example>, DataReport)> {
    let bad = |m: String| TrainError::BadFile { path: path.to_path_buf(), message: m };
    let f = std::fs::File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| bad(e.to_string()))?.build().map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    let mut rep = DataReport::default();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let col = |name: &str| -> Result<StringArray> {
            let c = batch.column_by_name(name).ok_or_else(|| bad(format!("no column `{name}`")))?;
            c.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| bad(format!("column `{name}` is not UTF-8")))
        };
        let (source, input, output) = (col("source")?, col("input")?, col("output")?);
        for i in 0..batch.num_rows() {
            rep.rows += 1;
            let s = source.value(i);
            if !o.include_sources.is_empty() && !o.include_sources.iter().any(|p| s.starts_with(p.as_str())) {
                rep.filtered_by_source += 1;
                continue;
            }
            if input.is_null(i) || output.is_null(i) {
                return Err(bad(format!("row {}: null input/output", rep.rows)));
            }
            let mut ex = tok.example(s, input.value(i), output.value(i), o.train_on_source)?;
            if ex.ids.len() > o.model_max_len {
                if o.skip_excess_length {
                    rep.skipped_too_long += 1;
                    continue;
                }
                ex.ids.truncate(o.model_max_len);
                ex.mask.truncate(o.model_max_len);
                rep.truncated += 1;
            }
            if !ex.mask.iter().skip(1).any(|&m| m) {
                rep.no_targets += 1;
                continue;
            }
            out.push(ex);
        }
    }
    Ok((out, rep))
}

/// Split off an eval set stratified by source: from each source, `round(frac · n)`
/// examples (seeded Fisher–Yates per source) go to eval. Returns (train, eval).
pub fn stratified_split(examples: Vec<Example>, frac: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut groups: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for e in examples {
        groups.entry(e.source.clone()).or_default().push(e);
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    let mut state = seed;
    for (_, mut g) in groups {
        shuffle(&mut g, &mut state);
        let k = (frac * g.len() as f64).round() as usize;
        eval.extend(g.drain(..k.min(g.len())));
        train.extend(g);
    }
    (train, eval)
}

/// Fisher–Yates shuffle driven by SplitMix64 (`bagel_core::rng::splitmix64`; the
/// data-order RNG of SFT and DPO, whose state is saved in checkpoints). Unlike
/// `bagel_core::rng::Rng::shuffle` (the dataset build's, Lemire's multiply-shift) it picks
/// the swap index as `draw % (i + 1)`; it stays so, so that the eval splits, data orders and
/// checkpoints of earlier runs stay valid.
pub fn shuffle<T>(items: &mut [T], rng: &mut u64) {
    for i in (1..items.len()).rev() {
        let j = (bagel_core::rng::splitmix64(rng) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    /// The data order is part of a run's identity (checkpoints save the RNG state): pinned
    /// to values from an independent Python SplitMix64 + `draw % (i + 1)` Fisher–Yates.
    #[test]
    fn shuffle_order_is_pinned() {
        let (mut items, mut rng) = ((0..8).collect::<Vec<usize>>(), 42u64);
        super::shuffle(&mut items, &mut rng);
        assert_eq!(items, [3, 1, 6, 2, 4, 0, 7, 5]);
        assert_eq!(rng, 0x5384_5412_7b09_64bd);
    }
}
