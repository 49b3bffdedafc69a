//! `bagel build`: the dataset half of bagel.
//!
//! Stages (each timed in the report):
//! 1. **read** — the host reads every input a source asks for ([`read`]: JSON arrays,
//!    JSONL, CSV/TSV, parquet; optionally gzip), streaming in batches of rows.
//! 2. **plugins** — each source plugin converts its rows (sources run in parallel, one
//!    fresh WASM instance each).
//! 3. **dedup** — records go through the shared known-keys set in priority order
//!    (highest first, ties by name), so the result equals the sequential reference.
//! 4. **decontam** — when the recipe lists `[[benchmark]]`s: drop records whose checked
//!    text is a near-copy of a benchmark item ([`decontam`], crate `bagel-decontam`).
//! 5. **format** — multi-turn expansion, seeded shuffle, overlapping chunks over the
//!    prompt formats, per-format default-system coin, DPO prompts through the same
//!    formats ([`format`]).
//! 6. **write** — `sft.parquet`, `dpo.parquet`, `build-report.json`, each written to a
//!    temporary name and renamed ([`write`]).
//!
//! Reference: jondurbin/bagel `bagel/data.py` (`format_io`, `_get_chunks`,
//! `expand_conversations`) and `../shared/SOURCES.md`.
#![deny(missing_docs)]

pub mod decontam;
pub mod error;
pub mod format;
pub mod pipeline;
pub mod read;
pub mod recipe;
pub mod report;
pub mod tokenizer;
pub mod write;

pub use error::BuildError;
pub use pipeline::{benchmark_items, build, build_with, BuildOptions, OnBadRow, OnPluginError};
pub use recipe::Recipe;
pub use report::BuildReport;
