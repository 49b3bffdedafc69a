//! Typed build errors; each names the plugin, file and row where one applies.
use std::path::PathBuf;

/// Errors of `bagel build`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file could not be opened/read/written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file is not what its name says (bad gzip, truncated JSON array, bad parquet).
    #[error("{path}: {message} (at {position})")]
    BadFile {
        /// File.
        path: PathBuf,
        /// Where: "line L column C", "byte N", "row group G".
        position: String,
        /// What is wrong.
        message: String,
    },
    /// A malformed row under `--on-bad-row fail`.
    #[error("{plugin}: {path}: row {row}: {message}")]
    BadRow {
        /// Plugin whose input it was.
        plugin: String,
        /// File.
        path: PathBuf,
        /// 1-based data row within the file (blank JSONL lines are not rows; the message
        /// of a row the reader rejects also names the JSONL line).
        row: u64,
        /// What is wrong.
        message: String,
    },
    /// The recipe is invalid.
    #[error("recipe {path}: {message}")]
    Recipe {
        /// Recipe file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A source's input matched no file.
    #[error("{plugin}: input `{input}` matched no file (looked for {looked})")]
    MissingInput {
        /// Plugin.
        plugin: String,
        /// Input name.
        input: String,
        /// Paths/patterns tried.
        looked: String,
    },
    /// A plugin named in the recipe or `--formats` is not installed.
    #[error("{kind} plugin `{name}` is not installed (installed: {installed})")]
    UnknownPlugin {
        /// "source" or "format".
        kind: &'static str,
        /// Name asked for.
        name: String,
        /// Installed names.
        installed: String,
    },
    /// A plugin failed (trap, limit, plugin error, malformed output).
    #[error(transparent)]
    Plugin(#[from] bagel_runtime::RuntimeError),
    /// The decontamination stage failed (embedding model, index or cache file).
    #[error("decontamination: {0}")]
    Decontam(#[from] bagel_decontam::DecontamError),
    /// Writing parquet failed.
    #[error("{path}: parquet: {message}")]
    Parquet {
        /// File.
        path: PathBuf,
        /// Message.
        message: String,
    },
    /// The tokenizer directory is unusable.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// Directory or file.
        path: PathBuf,
        /// Message.
        message: String,
    },
}

/// Shorthand.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}
