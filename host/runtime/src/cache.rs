//! On-disk cache of compiled components.
//!
//! Key: `sha256(component bytes)` + a hash of `Engine::precompile_compatibility_hash()`
//! (wasmtime version, target, and every codegen-relevant setting). File:
//! `<dir>/<key>.cwasm`, written to a temporary name and renamed.
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The default cache directory: `$BAGEL_CACHE_DIR`, else `$XDG_CACHE_HOME/bagel`, else
/// `$HOME/.cache/bagel`; compiled plugins live in its `wasm/` subdirectory.
pub fn default_dir() -> Option<PathBuf> {
    Some(bagel_core::cache_root()?.join("wasm"))
}

/// Cache key of a component for an engine: `<sha256 hex>-<engine hash hex>`.
pub fn key(engine: &wasmtime::Engine, sha256_hex: &str) -> String {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{sha256_hex}-{:016x}", h.finish())
}

/// Path of the cached artifact for `key` in `dir`.
pub fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.cwasm"))
}
