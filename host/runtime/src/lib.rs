//! The bagel plugin runtime: the only crate that imports wasmtime.
//!
//! - [`Runtime::load_dir`] loads every `*.wasm` component under a directory, refusing any
//!   component that imports something outside `bagel:plugin` (no WASI), and compiling
//!   each once: compiled code is cached on disk keyed by the component's sha256 and the
//!   engine's compatibility hash ([`cache`]).
//! - Each job ([`SourceJob`], [`FormatJob`]) gets a fresh `Store` and instance.
//! - Every call runs under [`Limits`]: a wall-clock timeout (epoch interruption) and a
//!   linear-memory cap (`ResourceLimiter`). A tripped limit, a trap (panic) or malformed
//!   output is a typed [`RuntimeError`] naming the plugin; the host process survives.
#![deny(missing_docs)]

mod bindings;
pub mod cache;
mod error;
mod host;
mod job;
mod load;

pub use error::{PluginError, RuntimeError};
pub use job::{BatchOutput, DropReason, Emitted, FormatJob, InvalidRow, RenderItem, Rendered, RenderedBatch, SourceJob};
pub use load::{FormatInfo, WIT_VERSIONS, InputFormat, InputSpec, ParamSpec, Plugin, PluginKind, RecordKind, Runtime, SourceInfo};

use std::time::Duration;

/// Per-call resource limits. Each has a test that trips it (`tests/limits.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit of one call into a plugin. Default 60 s. Enforced with epoch
    /// interruption at a 10 ms tick: a call is stopped after at least this long and at
    /// most 20 ms more (plus OS scheduling).
    pub call_timeout: Duration,
    /// Cap on a plugin instance's linear memory, bytes. Default 1 GiB.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { call_timeout: Duration::from_secs(60), memory_bytes: 1 << 30 }
    }
}

/// The WIT package version the SDK targets and new plugins are built against; the host
/// also loads every older version in [`WIT_VERSIONS`].
pub const WIT_PACKAGE: &str = "bagel:plugin@0.2.0";
