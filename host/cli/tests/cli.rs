//! The `bagel` binary end to end.
use std::path::PathBuf;
use std::process::Command;

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bagel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bagel"));
    c.env("BAGEL_CACHE_DIR", std::env::temp_dir().join("bagel-cli-test-cache"));
    c
}

#[test]
fn plugins_list_shows_formats_and_sources() {
    let out = bagel().args(["plugins", "list", "--plugins"]).arg(ws().join("target/plugins")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["alpaca", "vicuna", "chatml", "llama2"] {
        assert!(text.lines().any(|l| l.starts_with("format") && l.split_whitespace().nth(1) == Some(name)), "{name} missing:\n{text}");
    }
    let arc = text.lines().find(|l| l.split_whitespace().nth(1) == Some("ai2_arc")).expect("ai2_arc listed");
    assert!(arc.starts_with("source") && arc.contains("allenai/ai2_arc"));
    assert_eq!(arc.split_whitespace().nth(3), Some("0.2.0"), "wit column: {arc}");
    assert_eq!(arc.split_whitespace().last().unwrap().len(), 64, "sha256 column");
}

#[test]
fn plugins_check_fails_on_a_bad_plugin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(ws().join("target/plugins/alpaca.wasm"), dir.path().join("alpaca.wasm")).unwrap();
    let ok = bagel().args(["plugins", "check", "--plugins"]).arg(dir.path()).output().unwrap();
    assert!(ok.status.success());
    std::fs::copy(ws().join("target/test-plugins/wasi_importer.wasm"), dir.path().join("wasi_importer.wasm")).unwrap();
    let bad = bagel().args(["plugins", "check", "--plugins"]).arg(dir.path()).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("wasi_importer.wasm") && text.contains("wasi:cli/environment@0.2.0"), "{text}");
}

/// `bagel build` of the demo recipe on the bundled samples into `out`, with `extra` flags.
fn build_demo(extra: &[&str], out: &std::path::Path) -> std::process::Output {
    bagel()
        .arg("build")
        .args(extra)
        .arg("--plugins")
        .arg(ws().join("target/plugins"))
        .arg("--data")
        .arg(ws().join("examples/data"))
        .arg("--recipe")
        .arg(ws().join("examples/recipes/demo.toml"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn build_prints_the_report_table() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = build_demo(&[], out_dir.path());
    // The demo recipe lists benchmarks: without a model the embedding check cannot run.
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--decontam-model DIR") && err.contains("--decontam ngram"), "{err}");
    assert!(!out_dir.path().join("sft.parquet").exists(), "nothing written");
    let out = build_demo(&["--decontam", "ngram"], out_dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TOTAL") && text.contains("sharegpt") && text.contains("hh_rlhf"), "{text}");
    assert!(text.contains("decontamination: 13-gram only; 900 benchmark texts"), "{text}");
    assert!(out_dir.path().join("decontam-report.parquet").exists());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.path().join("build-report.json")).unwrap()).unwrap();
    assert_eq!(report["formats"], serde_json::json!(["alpaca", "vicuna", "chatml", "llama2"]));
    assert!(report["sft_rows"].as_u64().unwrap() > 0 && report["dpo_rows"].as_u64().unwrap() > 0);
}
