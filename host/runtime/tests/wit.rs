//! The WIT contract is frozen once released, every released version is one the host
//! loads, and the SDK carries an identical copy of the newest.
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// sha256 of each `wit/<version>/plugin.wit` as released. Never update a line here: make
/// a new version directory instead (wit/README.md).
const RELEASED: [(&str, &str); 2] = [("0.1.0", include_str!("wit-0.1.0.sha256")), ("0.2.0", include_str!("wit-0.2.0.sha256"))];

#[test]
fn wit_is_frozen() {
    for (version, sha) in RELEASED {
        let bytes = std::fs::read(ws().join(format!("wit/{version}/plugin.wit"))).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha.trim(), "wit/{version} was edited; released WIT versions are frozen (see wit/README.md)");
    }
    let dirs: Vec<String> = std::fs::read_dir(ws().join("wit")).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for d in &dirs {
        assert!(RELEASED.iter().any(|(v, _)| v == d), "wit/{d} has no recorded sha256 in tests/wit.rs");
    }
    assert_eq!(RELEASED.map(|(v, _)| v), bagel_runtime::WIT_VERSIONS, "the host must load every released version");
}

#[test]
fn sdk_wit_matches_newest_release() {
    let newest = RELEASED.last().unwrap().0;
    assert_eq!(bagel_runtime::WIT_PACKAGE, format!("bagel:plugin@{newest}"));
    let a = std::fs::read(ws().join(format!("wit/{newest}/plugin.wit"))).unwrap();
    let b = std::fs::read(ws().join("plugin-sdk/wit/plugin.wit")).unwrap();
    assert!(a == b, "plugin-sdk/wit/plugin.wit must be a byte-identical copy of wit/{newest}/plugin.wit");
}
