//! Every resource limit is tripped by a misbehaving fixture plugin
//! (tests/fixture-plugins), with a typed error naming the plugin and the limit, and the
//! host keeps working afterwards.
mod common;
use bagel_core::refusal::RefusalMode;
use bagel_core::{Role, Turn};
use bagel_runtime::{FormatJob, Limits, RenderItem, Runtime, RuntimeError, SourceJob};
use std::time::{Duration, Instant};

fn runtime(limits: Limits) -> Runtime {
    Runtime::new(limits, RefusalMode::Intended, None).unwrap()
}

fn still_works(rt: &Runtime) {
    let p = rt.load_file(&common::plugins_dir().join("vicuna.wasm")).unwrap();
    let conv = [Turn::new(Role::Human, "hi"), Turn::new(Role::Gpt, "yo")];
    let out = FormatJob::start(rt, &p, 0).unwrap().render("<s>", "</s>", &[RenderItem { conversation: &conv, add_default_system: false }]).unwrap();
    assert_eq!(out[0].as_ref().unwrap().input, "USER: hi\nASSISTANT: ");
}

#[test]
fn infinite_loop_trips_call_timeout() {
    let rt = runtime(Limits { call_timeout: Duration::from_millis(300), ..Limits::default() });
    let p = rt.load_file(&common::fixtures_dir().join("looper.wasm")).unwrap();
    let mut job = FormatJob::start(&rt, &p, 0).unwrap();
    let conv = [Turn::new(Role::Human, "q"), Turn::new(Role::Gpt, "a")];
    let t0 = Instant::now();
    let err = job.render("<s>", "</s>", &[RenderItem { conversation: &conv, add_default_system: false }]).unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, RuntimeError::Timeout { ref plugin, .. } if plugin == "looper"), "{err}");
    assert_eq!(err.limit(), Some("call_timeout"));
    assert!(err.to_string().contains("looper") && err.to_string().contains("call_timeout"));
    assert!(took >= Duration::from_millis(300), "stopped before the limit: {took:?}");
    // The instance is poisoned; a new one is needed.
    let again = job.render("<s>", "</s>", &[RenderItem { conversation: &conv, add_default_system: false }]).unwrap_err();
    assert!(matches!(again, RuntimeError::Poisoned { .. }));
    still_works(&rt);
}

#[test]
fn memory_bomb_trips_memory_cap() {
    let rt = runtime(Limits { memory_bytes: 64 << 20, ..Limits::default() });
    let p = rt.load_file(&common::fixtures_dir().join("membomb.wasm")).unwrap();
    let mut job = SourceJob::start(&rt, &p, 0).unwrap();
    job.configure(&[]).unwrap();
    let err = job.push_rows("data", 0, &["{}".to_string()]).unwrap_err();
    assert!(matches!(err, RuntimeError::MemoryLimit { ref plugin, limit_bytes, .. } if plugin == "membomb" && limit_bytes == 64 << 20), "{err}");
    assert_eq!(err.limit(), Some("memory_bytes"));
    still_works(&rt);
}

#[test]
fn panic_is_a_trap_naming_the_plugin() {
    let rt = runtime(Limits::default());
    let p = rt.load_file(&common::fixtures_dir().join("panicker.wasm")).unwrap();
    let mut job = SourceJob::start(&rt, &p, 0).unwrap();
    job.configure(&[]).unwrap();
    let err = job.push_rows("data", 0, &["{}".to_string()]).unwrap_err();
    assert!(matches!(err, RuntimeError::Trap { ref plugin, call: "push-rows", .. } if plugin == "panicker"), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    still_works(&rt);
}

#[test]
fn malformed_output_is_rejected() {
    let rt = runtime(Limits::default());
    let p = rt.load_file(&common::fixtures_dir().join("malformed.wasm")).unwrap();
    let mut job = SourceJob::start(&rt, &p, 0).unwrap();
    job.configure(&[]).unwrap();
    let err = job.push_rows("data", 7, &["{}".to_string()]).unwrap_err();
    match &err {
        RuntimeError::Malformed { plugin, row, detail, .. } => {
            assert_eq!(plugin, "malformed");
            assert_eq!(*row, 7);
            assert!(detail.contains("system turn at position 1"), "{detail}");
        }
        other => panic!("expected Malformed, got {other}"),
    }
}

#[test]
fn malformed_packed_format_output_is_rejected() {
    let rt = runtime(Limits::default());
    let p = rt.load_file(&common::fixtures_dir().join("malformed_format.wasm")).unwrap();
    let conv = vec![Turn::new(Role::Human, "q"), Turn::new(Role::Gpt, "a")];
    let mut job = FormatJob::start(&rt, &p, 0).unwrap();
    let err = job.render("<s>", "</s>", &[RenderItem { conversation: &conv, add_default_system: false }]).unwrap_err();
    match &err {
        RuntimeError::Malformed { plugin, call, row, detail } => {
            assert_eq!((plugin.as_str(), *call, *row), ("malformed_format", "render", 0));
            assert!(detail.contains("lengths 2+2 at byte 0 do not fit the 3-byte text"), "{detail}");
        }
        other => panic!("expected Malformed, got {other}"),
    }
    // The job is poisoned: no further calls into an instance that misbehaved.
    assert!(matches!(job.render("<s>", "</s>", &[]), Err(RuntimeError::Poisoned { .. })));
    let mut job = FormatJob::start(&rt, &p, 0).unwrap();
    let err = job.render_dpo_prompt("<s>", "</s>", &[("p", "c", false)]).unwrap_err();
    assert!(matches!(&err, RuntimeError::Malformed { detail, .. } if detail.contains("an error names no item")), "{err}");
}

#[test]
fn wasi_import_is_refused_at_load() {
    let rt = runtime(Limits::default());
    let err = rt.load_file(&common::fixtures_dir().join("wasi_importer.wasm")).unwrap_err();
    match &err {
        RuntimeError::ForbiddenImport { plugin, import } => {
            assert_eq!(plugin, "wasi_importer.wasm");
            assert_eq!(import, "wasi:cli/environment@0.2.0");
        }
        other => panic!("expected ForbiddenImport, got {other}"),
    }
}

#[test]
fn compiled_components_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Limits::default(), RefusalMode::Intended, Some(dir.path().to_path_buf())).unwrap();
    let path = common::plugins_dir().join("alpaca.wasm");
    let first = rt.load_file(&path).unwrap();
    assert!(!first.from_cache);
    let second = rt.load_file(&path).unwrap();
    assert!(second.from_cache);
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "one .cwasm per component");
}
