//! The format stage, as the reference `format_io` (bagel `data.py`):
//! 1. SFT instructions = expanded multi-turn conversations (> 3 turns) followed by the
//!    single-turn ones (≤ 3 turns, kept only when they end human → gpt), then shuffled
//!    with the seeded RNG (the reference shuffles with HF `shuffle(seed=42)`).
//! 2. [`bagel_core::chunk::chunks`] (reference or balanced) assigns instructions to formats (every
//!    instruction lands in k−1 of k formats); each format draws its own default-system
//!    coin per item (p = 0.5, seeded by build seed + format name).
//! 3. Plain-text records become (input "", output text, source `<label>_plain_text`).
//! 4. DPO records are chunked the same way (in record order, unshuffled), their prompt
//!    rendered by the format; `chosen` gets the newline collapse, `rejected` is kept.
//! 5. SFT (formatted rows, then plain text) and DPO rows are shuffled (seeded).
//!
//! Ids: a single-turn row keeps its record id; the k-th example expanded from a
//! multi-turn record gets `uuid5(record id + "/" + k)` (the reference used random
//! uuid4s; ours are reproducible).
use crate::error::Result;
use crate::report::FormatReport;
use bagel_core::chunk::{chunks, Chunking};
use bagel_core::expand::expansion_prefixes;
use bagel_core::rng::{derive_seed, Rng};
use bagel_core::{uid, Payload, Record, Turn};
use bagel_runtime::{FormatJob, Plugin, RenderItem, Runtime};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Most items per render call.
pub const RENDER_BATCH: usize = 512;

/// A render call also closes once its items hold this many bytes of turn text (the
/// host packs them into one text, the plugin answers with about as much again): long
/// rows make smaller batches, so that a batch's texts stay in the CPU's cache. On the
/// bundled ShareGPT/GSM8K samples (2.3 KB of turn text per row) batches of 64 rows took
/// 18 % less time per row than batches of 512 (bench/RESULTS.md, ninth session; only
/// those two sizes were measured, so the limit is not tuned).
pub const RENDER_BATCH_BYTES: usize = 128 * 1024;

/// Cut `idx` into consecutive batches of at most [`RENDER_BATCH`] items, each closed
/// once it holds [`RENDER_BATCH_BYTES`] of text (`bytes(i)` for item `i`; an item is
/// never split, so one long item can exceed it alone).
fn batches<'a>(idx: &'a [usize], bytes: impl Fn(usize) -> usize + 'a) -> impl Iterator<Item = &'a [usize]> + 'a {
    let mut rest = idx;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut total) = (0, 0);
        while n < rest.len() && n < RENDER_BATCH && (n == 0 || total < RENDER_BATCH_BYTES) {
            total += bytes(rest[n]);
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

/// A row's text: a byte range of a text it may share with other rows (a format
/// plugin's rendered batch), so that rendered rows are not copied into `String`s of
/// their own on their way to the parquet writer.
#[derive(Debug, Clone)]
pub struct RowText {
    text: Arc<String>,
    range: Range<usize>,
}

impl RowText {
    /// A text of its own.
    pub fn owned(text: String) -> RowText {
        let range = 0..text.len();
        RowText { text: Arc::new(text), range }
    }
    /// Bytes `range` of a shared text. Panics unless `range` lies in `text` on character
    /// boundaries (the runtime checks a plugin's ranges before handing them out).
    pub fn slice(text: &Arc<String>, range: Range<usize>) -> RowText {
        assert!(text.get(range.clone()).is_some(), "row text range {range:?} is not a slice of the {}-byte batch text", text.len());
        RowText { text: Arc::clone(text), range }
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text[self.range.clone()]
    }
}

impl PartialEq for RowText {
    fn eq(&self, other: &RowText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RowText {}

/// One SFT output row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftRow {
    /// Row id (uuid5).
    pub id: String,
    /// `<label>_<format>` or `<label>_plain_text` (shared by the rows of one source).
    pub source: Arc<str>,
    /// Rendered input ("" for plain text).
    pub input: RowText,
    /// Rendered output.
    pub output: RowText,
}

/// One DPO output row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpoRow {
    /// Source label.
    pub source: String,
    /// Prompt rendered in a format.
    pub prompt: String,
    /// Chosen reply (newline-collapsed).
    pub chosen: String,
    /// Rejected reply (as emitted).
    pub rejected: String,
}

/// Result of the format stage.
#[derive(Debug, Default)]
pub struct Formatted {
    /// SFT rows in final (shuffled) order.
    pub sft: Vec<SftRow>,
    /// DPO rows in final (shuffled) order.
    pub dpo: Vec<DpoRow>,
    /// Per-format counts and times.
    pub stats: Vec<FormatReport>,
    /// Conversations dropped by expansion, per source label.
    pub dropped_by_expansion: BTreeMap<String, u64>,
    /// Examples produced by expanding multi-turn conversations.
    pub expanded_examples: u64,
    /// Instructions before chunking.
    pub instructions: u64,
}

struct Instruction<'a> {
    id: String,
    source: &'a str,
    /// The record's conversation or, for an expanded example, a prefix of it (borrowed:
    /// expansion copies no text).
    conversation: &'a [Turn],
}

/// Run the format stage over deduplicated records (in load order). `progress` gets the
/// number of items to render (SFT instructions and DPO prompts, over all formats) as its
/// length and advances as each render call returns.
#[allow(clippy::too_many_arguments)]
pub fn format_records(rt: &Runtime, formats: &[&Plugin], records: &[Record], bos: &str, eos: &str, seed: u64, chunking: Chunking, progress: &ProgressBar) -> Result<Formatted> {
    let mut out = Formatted::default();
    let mut multi: Vec<Instruction> = Vec::new();
    let mut single: Vec<Instruction> = Vec::new();
    for r in records {
        let Some(conv) = r.conversation() else { continue };
        let mut prefixes = expansion_prefixes(conv).peekable();
        if prefixes.peek().is_none() {
            *out.dropped_by_expansion.entry(r.source.clone()).or_default() += 1;
        } else if conv.len() > 3 {
            for (k, len) in prefixes.enumerate() {
                out.expanded_examples += 1;
                multi.push(Instruction { id: uid(&format!("{}/{}", r.id, k)), source: &r.source, conversation: &conv[..len] });
            }
        } else {
            single.push(Instruction { id: r.id.clone(), source: &r.source, conversation: conv });
        }
    }
    let mut instructions = multi;
    instructions.append(&mut single);
    Rng::new(derive_seed(seed, "sft-shuffle")).shuffle(&mut instructions);
    out.instructions = instructions.len() as u64;

    let dpo_records: Vec<&Record> = records.iter().filter(|r| matches!(r.payload, Payload::Dpo(_))).collect();
    let k = formats.len();
    let sft_chunks = chunks(instructions.len(), k, chunking);
    let dpo_chunks = chunks(dpo_records.len(), k, chunking);
    progress.set_length(sft_chunks.iter().chain(&dpo_chunks).map(|c| c.len() as u64).sum());

    // Formats are independent: render them in parallel (one WASM instance each).
    let results: Vec<Result<(Vec<SftRow>, Vec<DpoRow>, FormatReport)>> = std::thread::scope(|s| {
        let handles: Vec<_> = formats
            .iter()
            .enumerate()
            .map(|(i, plugin)| {
                let (instructions, dpo_records, sft_idx, dpo_idx) = (&instructions, &dpo_records, &sft_chunks[i], &dpo_chunks[i]);
                s.spawn(move || render_one(rt, plugin, instructions, sft_idx, dpo_records, dpo_idx, bos, eos, seed, progress))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("format thread panicked")).collect()
    });
    for r in results {
        let (sft, dpo, stats) = r?;
        out.sft.extend(sft);
        out.dpo.extend(dpo);
        out.stats.push(stats);
    }
    let mut plain_sources: BTreeMap<&str, Arc<str>> = BTreeMap::new();
    let empty = Arc::new(String::new());
    for r in records {
        if let Payload::Text(t) = &r.payload {
            let source = plain_sources.entry(&r.source).or_insert_with(|| format!("{}_plain_text", r.source).into()).clone();
            out.sft.push(SftRow { id: r.id.clone(), source, input: RowText::slice(&empty, 0..0), output: RowText::owned(t.clone()) });
        }
    }
    Rng::new(derive_seed(seed, "sft-final")).shuffle(&mut out.sft);
    Rng::new(derive_seed(seed, "dpo-final")).shuffle(&mut out.dpo);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn render_one(
    rt: &Runtime,
    plugin: &Plugin,
    instructions: &[Instruction],
    sft_idx: &[usize],
    dpo_records: &[&Record],
    dpo_idx: &[usize],
    bos: &str,
    eos: &str,
    seed: u64,
    progress: &ProgressBar,
) -> Result<(Vec<SftRow>, Vec<DpoRow>, FormatReport)> {
    let t0 = Instant::now();
    let name = &plugin.name;
    let mut job = FormatJob::start(rt, plugin, derive_seed(seed, name))?;
    let mut coins = Rng::new(derive_seed(seed, &format!("coin:{name}")));
    let mut stats = FormatReport { name: name.clone(), ..Default::default() };
    let mut sft = Vec::with_capacity(sft_idx.len());
    let mut sources: BTreeMap<&str, Arc<str>> = BTreeMap::new();
    let conversation_bytes = |i: usize| instructions[i].conversation.iter().map(|t| t.value.len()).sum::<usize>();
    for chunk in batches(sft_idx, conversation_bytes) {
        let items: Vec<RenderItem> = chunk.iter().map(|&i| RenderItem { conversation: instructions[i].conversation, add_default_system: coins.coin(0.5) }).collect();
        let rendered = job.render_batch(bos, eos, &items)?;
        progress.inc(chunk.len() as u64);
        let text = Arc::new(rendered.text);
        for (&i, r) in chunk.iter().zip(rendered.items) {
            match r {
                Ok((input, output)) => {
                    let label = instructions[i].source;
                    let source = sources.entry(label).or_insert_with(|| format!("{label}_{name}").into()).clone();
                    sft.push(SftRow { id: instructions[i].id.clone(), source, input: RowText::slice(&text, input), output: RowText::slice(&text, output) });
                }
                Err(e) => {
                    stats.errors += 1;
                    tracing::warn!(format = %name, id = %instructions[i].id, "format refused an item: {e}");
                }
            }
        }
    }
    let mut dpo = Vec::with_capacity(dpo_idx.len());
    let pair = |i: usize| match &dpo_records[i].payload {
        Payload::Dpo(p) => p,
        _ => unreachable!("filtered to DPO records"),
    };
    for chunk in batches(dpo_idx, |i| pair(i).prompt.len() + pair(i).chosen.len()) {
        let pairs: Vec<&bagel_core::DpoPair> = chunk.iter().map(|&i| pair(i)).collect();
        let items: Vec<(&str, &str, bool)> = pairs.iter().map(|p| (p.prompt.as_str(), p.chosen.as_str(), coins.coin(0.5))).collect();
        let rendered = job.render_dpo_prompt(bos, eos, &items)?;
        progress.inc(chunk.len() as u64);
        for ((&i, p), r) in chunk.iter().zip(&pairs).zip(rendered) {
            match r {
                Ok(prompt) => dpo.push(DpoRow { source: dpo_records[i].source.clone(), prompt, chosen: bagel_text::collapse_newlines(&p.chosen), rejected: p.rejected.clone() }),
                Err(e) => {
                    stats.errors += 1;
                    tracing::warn!(format = %name, id = %dpo_records[i].id, "format refused a DPO prompt: {e}");
                }
            }
        }
    }
    stats.sft_rows = sft.len() as u64;
    stats.dpo_rows = dpo.len() as u64;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok((sft, dpo, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes<'a>(idx: &'a [usize], bytes: impl Fn(usize) -> usize + 'a) -> Vec<usize> {
        batches(idx, bytes).map(<[usize]>::len).collect()
    }

    #[test]
    fn batches_close_on_items_or_bytes_and_keep_order() {
        let idx: Vec<usize> = (0..1200).collect();
        // Short items: the item cap, 512 + 512 + 176.
        assert_eq!(sizes(&idx, |_| 10), [512, 512, 176]);
        // 50,000-byte items: a batch closes at the 3rd (150,000 >= 131,072 bytes).
        assert_eq!(sizes(&idx[..10], |_| 50_000), [3, 3, 3, 1]);
        // An item over the limit closes the batch it joins (items are never split).
        assert_eq!(sizes(&idx[..4], |i| if i == 1 { 1 << 20 } else { 100 }), [2, 2]);
        // Batches tile the input in order.
        let flat: Vec<usize> = batches(&idx, |i| i * 300).flatten().copied().collect();
        assert_eq!(flat, idx);
        assert_eq!(batches(&[], |_| 1).count(), 0);
    }
}
