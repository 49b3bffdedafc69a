//! Typed runtime errors; each names the plugin.
use std::path::PathBuf;
use std::time::Duration;

/// An error a plugin returned on purpose (WIT `plugin-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Bad parameter.
    #[error("bad parameter: {0}")]
    BadParam(String),
    /// Bad input.
    #[error("bad input: {0}")]
    BadInput(String),
    /// Internal plugin error.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Reading a plugin file or the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid component, or compiling it failed.
    #[error("plugin {plugin}: cannot compile component: {message}")]
    Compile {
        /// Plugin file name.
        plugin: String,
        /// wasmtime's message.
        message: String,
    },
    /// The component imports something outside `bagel:plugin` (e.g. WASI).
    #[error("plugin {plugin}: refused: imports `{import}`, but plugins may import only bagel:plugin interfaces of one supported version (0.1.0 or 0.2.0; no WASI)")]
    ForbiddenImport {
        /// Plugin file name.
        plugin: String,
        /// The import name.
        import: String,
    },
    /// The component exports neither world.
    #[error("plugin {plugin}: exports neither bagel:plugin/source nor bagel:plugin/format of a supported version (0.1.0, 0.2.0) matching its imports")]
    UnknownWorld {
        /// Plugin file name.
        plugin: String,
    },
    /// Two plugins share a name.
    #[error("plugin name `{name}` is used by both {first} and {second}")]
    DuplicateName {
        /// The name.
        name: String,
        /// First file.
        first: String,
        /// Second file.
        second: String,
    },
    /// Instantiation failed (missing import, start trap).
    #[error("plugin {plugin}: cannot instantiate: {message}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// Message.
        message: String,
    },
    /// A call ran past [`crate::Limits::call_timeout`].
    #[error("plugin {plugin}: `{call}` exceeded the wall-clock limit of {limit:?} (limit: call_timeout)")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// Function called.
        call: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// The instance tried to grow memory past [`crate::Limits::memory_bytes`].
    #[error("plugin {plugin}: `{call}` exceeded the memory cap of {limit_bytes} bytes (limit: memory_bytes)")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// Function called.
        call: &'static str,
        /// The cap, bytes.
        limit_bytes: usize,
    },
    /// The plugin trapped (panic, unreachable, out-of-bounds access).
    #[error("plugin {plugin}: `{call}` trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// Function called.
        call: &'static str,
        /// Trap description.
        message: String,
    },
    /// The plugin returned a `plugin-error`.
    #[error("plugin {plugin}: `{call}` failed: {error}")]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// Function called.
        call: &'static str,
        /// The plugin's error.
        error: PluginError,
    },
    /// The plugin returned data that breaks the contract (e.g. a system turn not first).
    #[error("plugin {plugin}: malformed output from `{call}` (row {row}): {detail}")]
    Malformed {
        /// Plugin name.
        plugin: String,
        /// Function called.
        call: &'static str,
        /// Input row the record claimed.
        row: u64,
        /// What is wrong.
        detail: String,
    },
    /// The instance trapped earlier and cannot be re-entered.
    #[error("plugin {plugin}: instance is poisoned by an earlier trap")]
    Poisoned {
        /// Plugin name.
        plugin: String,
    },
}

impl RuntimeError {
    /// The plugin this error names, if it names one (every variant but [`RuntimeError::Io`]
    /// and [`RuntimeError::DuplicateName`]).
    pub fn plugin(&self) -> Option<&str> {
        match self {
            RuntimeError::Compile { plugin, .. }
            | RuntimeError::ForbiddenImport { plugin, .. }
            | RuntimeError::UnknownWorld { plugin }
            | RuntimeError::Instantiate { plugin, .. }
            | RuntimeError::Timeout { plugin, .. }
            | RuntimeError::MemoryLimit { plugin, .. }
            | RuntimeError::Trap { plugin, .. }
            | RuntimeError::Plugin { plugin, .. }
            | RuntimeError::Malformed { plugin, .. }
            | RuntimeError::Poisoned { plugin } => Some(plugin),
            RuntimeError::Io { .. } | RuntimeError::DuplicateName { .. } => None,
        }
    }

    /// The name of the limit this error reports, if it is a limit error
    /// (`call_timeout`, `memory_bytes`).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            RuntimeError::Timeout { .. } => Some("call_timeout"),
            RuntimeError::MemoryLimit { .. } => Some("memory_bytes"),
            _ => None,
        }
    }
}
