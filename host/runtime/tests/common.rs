//! Shared helpers: where the built plugins are.
#![allow(dead_code)]
use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dir(var: &str, rel: &str) -> PathBuf {
    let d = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| workspace().join(rel));
    assert!(d.is_dir(), "{} does not exist: run `cargo xtask build-plugins` first (or set {var})", d.display());
    d
}

pub fn plugins_dir() -> PathBuf {
    dir("BAGEL_PLUGINS_DIR", "target/plugins")
}

pub fn fixtures_dir() -> PathBuf {
    dir("BAGEL_TEST_PLUGINS_DIR", "target/test-plugins")
}
