//! The WIT contract is frozen once released, and the SDK carries an identical copy.
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// sha256 of wit/0.1.0/plugin.wit as released. Never update this for 0.1.0: make a new
/// version directory instead (wit/README.md).
const RELEASED_0_1_0: &str = include_str!("wit-0.1.0.sha256");

#[test]
fn wit_is_frozen() {
    let bytes = std::fs::read(ws().join("wit/0.1.0/plugin.wit")).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), RELEASED_0_1_0.trim(), "wit/0.1.0 was edited; released WIT versions are frozen (see wit/README.md)");
}

#[test]
fn sdk_wit_matches_release() {
    let a = std::fs::read(ws().join("wit/0.1.0/plugin.wit")).unwrap();
    let b = std::fs::read(ws().join("plugin-sdk/wit/plugin.wit")).unwrap();
    assert!(a == b, "plugin-sdk/wit/plugin.wit must be a byte-identical copy of wit/0.1.0/plugin.wit");
}
