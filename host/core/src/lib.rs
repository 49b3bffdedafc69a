//! bagel's dataset logic without I/O or plugins: the record model, the shared known-keys
//! set (dedup), the refusal check, multi-turn expansion, the overlapping prompt-format
//! chunks and the seeded randomness the build uses; plus [`atomic`], the one
//! write-then-rename every crate uses for its outputs.
//!
//! Reference behaviour: jondurbin/bagel at commit 3c7d241 (`bagel/data.py`,
//! `bagel/data_sources/util.py`), specified in `../shared/SOURCES.md`.
#![deny(missing_docs)]

pub mod atomic;
pub mod chunk;
pub mod dedup;
pub mod expand;
pub mod record;
pub mod refusal;
pub mod rng;

pub use bagel_text::uid;

/// bagel's cache root: `$BAGEL_CACHE_DIR`, else `$XDG_CACHE_HOME/bagel`, else
/// `$HOME/.cache/bagel`; `None` when none of these is set. Each cache (compiled plugins,
/// decontamination embeddings, GPU kernels) is a subdirectory.
pub fn cache_root() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    std::env::var_os("BAGEL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("bagel")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/bagel")))
}
pub use record::{DedupMode, DpoPair, Payload, Record, Role, Turn};
