//! bagel's dataset logic without I/O or plugins: the record model, the shared known-keys
//! set (dedup), the refusal check, multi-turn expansion, the overlapping prompt-format
//! chunks and the seeded randomness the build uses.
//!
//! Reference behaviour: jondurbin/bagel at commit 3c7d241 (`bagel/data.py`,
//! `bagel/data_sources/util.py`), specified in `../shared/SOURCES.md`.
#![deny(missing_docs)]

pub mod chunk;
pub mod dedup;
pub mod expand;
pub mod record;
pub mod refusal;
pub mod rng;

pub use bagel_text::uid;
pub use record::{DedupMode, DpoPair, Payload, Record, Role, Turn};
