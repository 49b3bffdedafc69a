//! Typed trainer errors.
use std::path::PathBuf;

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A model/config/tokenizer/dataset file is unusable.
    #[error("{path}: {message}")]
    BadFile {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor is missing or has the wrong shape.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// Weights file.
        path: PathBuf,
        /// HF tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Invalid training arguments.
    #[error("invalid argument: {0}")]
    Args(String),
}

/// Shorthand.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}
