//! End-to-end `bagel build` tests over the bundled samples (examples/data) and the
//! shipped plugins (target/plugins; `cargo xtask build-plugins` builds them).
use bagel_build::{build, BuildError, BuildOptions, OnBadRow, OnPluginError, Recipe};
use bagel_core::chunk::Chunking;
use bagel_core::refusal::RefusalMode;
use bagel_core::uid;
use bagel_runtime::Limits;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plugins() -> PathBuf {
    let d = std::env::var_os("BAGEL_PLUGINS_DIR").map(PathBuf::from).unwrap_or_else(|| ws().join("target/plugins"));
    assert!(d.is_dir(), "{} missing: run `cargo xtask build-plugins` first", d.display());
    d
}

fn opts(data: &Path, recipe: Recipe, out: &Path, seed: u64) -> BuildOptions {
    BuildOptions {
        plugins: plugins(),
        data: data.to_path_buf(),
        recipe,
        out: out.to_path_buf(),
        seed,
        formats: vec![],
        tokenizer: None,
        on_bad_row: OnBadRow::Skip,
        on_plugin_error: OnPluginError::Fail,
        limits: Limits::default(),
        refusal: RefusalMode::Intended,
        batch_size: 64,
        jobs: 2,
        wasm_cache: None,
        use_stage_cache: true,
        chunking: Chunking::Reference,
        progress: false,
        decontam: Default::default(),
        compression: Default::default(),
    }
}

fn demo_recipe() -> Recipe {
    Recipe::load(&ws().join("examples/recipes/demo.toml")).unwrap()
}

fn read_strings(path: &Path) -> Vec<HashMap<String, String>> {
    let f = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut row = HashMap::new();
            for (c, field) in schema.fields().iter().enumerate() {
                let col = batch.column(c).as_any().downcast_ref::<arrow_array::StringArray>().expect("utf8 column");
                row.insert(field.name().clone(), col.value(i).to_string());
            }
            rows.push(row);
        }
    }
    rows
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let data = ws().join("examples/data");
    let ra = build(&opts(&data, demo_recipe(), a.path(), 42)).unwrap();
    let rb = build(&opts(&data, demo_recipe(), b.path(), 42)).unwrap();
    assert_eq!(ra.sft_sha256, rb.sft_sha256);
    assert_eq!(ra.dpo_sha256, rb.dpo_sha256);
    assert_eq!(std::fs::read(a.path().join("sft.parquet")).unwrap(), std::fs::read(b.path().join("sft.parquet")).unwrap());
    // Sources convert in parallel; one worker must give the same bytes.
    let seq = tempfile::tempdir().unwrap();
    let mut o = opts(&data, demo_recipe(), seq.path(), 42);
    o.jobs = 1;
    assert_eq!(build(&o).unwrap().sft_sha256, ra.sft_sha256);
    let rc = build(&opts(&data, demo_recipe(), c.path(), 43)).unwrap();
    assert_ne!(ra.sft_sha256, rc.sft_sha256);
    // Warm rerun in the same directory reuses the raw stage and writes the same bytes.
    let warm = build(&opts(&data, demo_recipe(), a.path(), 42)).unwrap();
    assert!(warm.raw_cache_hit);
    assert!(!ra.raw_cache_hit);
    assert_eq!(warm.sft_sha256, ra.sft_sha256);
    assert!(warm.outputs_cache_hit, "nothing changed: the outputs are reused");
    // The report on disk describes this run, not the one that wrote the outputs.
    let on_disk: serde_json::Value = serde_json::from_slice(&std::fs::read(a.path().join("build-report.json")).unwrap()).unwrap();
    assert_eq!(on_disk["outputs_cache_hit"], true);
    assert_eq!(on_disk["sft_sha256"].as_str(), Some(ra.sft_sha256.as_str()));
    // Another compression: other bytes (the outputs cache must not hand back the snappy
    // files), the same rows, and the codec recorded in the file.
    let mut o = opts(&data, demo_recipe(), a.path(), 42);
    o.compression = bagel_build::write::OutputCompression::Lz4;
    let lz4 = build(&o).unwrap();
    assert_ne!(lz4.sft_sha256, ra.sft_sha256);
    let snappy_rows = read_strings(&b.path().join("sft.parquet"));
    assert_eq!(read_strings(&a.path().join("sft.parquet")), snappy_rows);
    let meta = parquet::file::reader::FileReader::metadata(&parquet::file::reader::SerializedFileReader::new(std::fs::File::open(a.path().join("sft.parquet")).unwrap()).unwrap()).clone();
    assert_eq!(meta.row_group(0).column(2).compression(), parquet::basic::Compression::LZ4_RAW);
}

#[test]
fn instructions_land_in_three_of_four_formats() {
    let data = ws().join("examples/data");
    for chunking in [Chunking::Reference, Chunking::Balanced] {
        let out = tempfile::tempdir().unwrap();
        let mut o = opts(&data, demo_recipe(), out.path(), 42);
        o.chunking = chunking;
        let report = build(&o).unwrap();
        let rows = read_strings(&out.path().join("sft.parquet"));
        assert_eq!(rows.len() as u64, report.sft_rows);
        let mut per_id: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in rows.iter().filter(|r| !r["source"].ends_with("_plain_text")) {
            per_id.entry(&r["id"]).or_default().push(r["source"].rsplit('_').next().unwrap());
        }
        assert_eq!(per_id.len() as u64, report.instructions);
        let n = report.instructions as usize;
        let exact = chunking == Chunking::Balanced || n % 4 == 0;
        for (id, fmts) in &per_id {
            let mut f = fmts.clone();
            f.sort();
            f.dedup();
            assert_eq!(f.len(), fmts.len(), "{id} rendered twice in one format");
            if exact {
                assert_eq!(fmts.len(), 3, "{id} in {fmts:?} ({chunking:?}, n={n})");
            }
        }
        // Under any chunking the histogram "formats per instruction" must be the one the
        // chunk function predicts for n.
        let predicted = bagel_core::chunk::chunks(n, 4, chunking);
        let mut want = [0usize; 5];
        for item in 0..n {
            want[predicted.iter().filter(|c| c.contains(&item)).count()] += 1;
        }
        let mut got_hist = [0usize; 5];
        for fmts in per_id.values() {
            got_hist[fmts.len()] += 1;
        }
        assert_eq!(got_hist, want, "{chunking:?} n={n}");
        let expected: Vec<usize> = bagel_core::chunk::chunks(n, 4, chunking).iter().map(Vec::len).collect();
        let got: Vec<u64> = report.format_stats.iter().map(|f| f.sft_rows).collect();
        assert_eq!(got, expected.iter().map(|&x| x as u64).collect::<Vec<_>>());
    }
}

#[test]
fn rows_are_re_derived_from_the_inputs() {
    let data = ws().join("examples/data");
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(&data, demo_recipe(), out.path(), 42);
    o.chunking = Chunking::Balanced;
    build(&o).unwrap();
    let rows = read_strings(&out.path().join("sft.parquet"));
    // ai2_arc: recompute both coin outcomes for every input row.
    let arc: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(data.join("ai2_arc/ARC-Easy/train.json")).unwrap()).unwrap();
    let mut expected: HashMap<String, (String, String)> = HashMap::new();
    for r in &arc {
        let labels: Vec<&str> = r["choices"]["label"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let texts: Vec<&str> = r["choices"]["text"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let key = r["answerKey"].as_str().unwrap();
        let lines: Vec<String> = labels.iter().zip(&texts).map(|(l, t)| format!("{l}. {t}")).collect();
        let base = format!("{}\n{}", r["question"].as_str().unwrap(), lines.join("\n"));
        let with = format!("{base}\nOnly output the the letter of the correct answer.");
        let idx = labels.iter().position(|l| *l == key).unwrap();
        expected.insert(uid(&with), (with, key.to_string()));
        expected.insert(uid(&base), (base, format!("{key} {}", texts[idx])));
    }
    let arc_rows: Vec<_> = rows.iter().filter(|r| r["source"].starts_with("ai2_arc_")).collect();
    assert_eq!(arc_rows.len(), 150 * 4, "200 rows, each in 3 of 4 formats");
    for r in arc_rows {
        let (instruction, answer) = expected.get(&r["id"]).unwrap_or_else(|| panic!("id {} not derivable from the input", r["id"]));
        let out = if r["source"] == "ai2_arc_chatml" { format!("{answer}<|im_end|>") } else { answer.clone() };
        assert_eq!(&r["output"], &out);
        match r["source"].as_str() {
            "ai2_arc_alpaca" => assert!(r["input"].contains(&format!("### Instruction: \n{instruction}\n\n### Response:"))),
            "ai2_arc_vicuna" => assert!(r["input"].ends_with(&format!("USER: {instruction}\nASSISTANT: "))),
            "ai2_arc_chatml" => assert!(r["input"].ends_with(&format!("<s>user\n{instruction}</s>\n<s>assistant\n"))),
            "ai2_arc_llama2" => assert!(r["input"].ends_with(&format!("{instruction} [/INST]"))),
            other => panic!("unexpected source {other}"),
        }
    }
}

fn single_source_recipe(plugin: &str, file: &str) -> Recipe {
    toml::from_str(&format!("[[source]]\nplugin = \"{plugin}\"\nfiles = {{ data = [\"{file}\"] }}\n")).unwrap()
}

/// File names in `dir` (none if it does not exist).
fn file_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default()
}

fn assert_no_outputs(out: &Path) {
    let names = file_names(out);
    for n in &names {
        assert!(!n.ends_with(".parquet") && !n.contains(".tmp-") && n != "build-report.json", "partial output left: {n} in {names:?}");
    }
}

#[test]
fn a_failed_output_writer_leaves_the_previous_pair() {
    let out = tempfile::tempdir().unwrap();
    let data = ws().join("examples/data");
    let first = build(&opts(&data, demo_recipe(), out.path(), 42)).unwrap();
    // The DPO writer cannot create its temp file (a directory has its name): the build
    // fails, and the SFT file it already wrote is not put in place either.
    let blocker = out
        .path()
        .join(format!(".dpo.parquet.tmp-{}", std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    let mut o = opts(&data, demo_recipe(), out.path(), 7);
    o.use_stage_cache = false;
    let err = build(&o).unwrap_err();
    assert!(err.to_string().contains(".dpo.parquet.tmp-"), "{err}");
    let sha = |name: &str| {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(out.path().join(name)).unwrap(),
        ))
    };
    assert_eq!(sha("sft.parquet"), first.sft_sha256);
    assert_eq!(sha("dpo.parquet"), first.dpo_sha256);
    std::fs::remove_dir(&blocker).unwrap();
    let names = file_names(out.path());
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "temp files left: {names:?}");
}

/// A format plugin that breaks the contract (`malformed_format`, a test fixture: its
/// lengths do not fit its text) stops the build by default; under `--on-plugin-error
/// skip` the build renders without it, reports it, and does not stamp the outputs as
/// complete.
#[test]
fn a_failing_format_stops_the_build_or_is_skipped() {
    let fixture = ws().join("target/test-plugins/malformed_format.wasm");
    assert!(fixture.exists(), "{} missing: run `cargo xtask build-plugins` first", fixture.display());
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(plugins()).unwrap().flatten() {
        std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    std::os::unix::fs::symlink(&fixture, dir.path().join("malformed_format.wasm")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(&ws().join("examples/data"), single_source_recipe("gsm8k", "gsm8k/train.jsonl"), out.path(), 42);
    o.plugins = dir.path().to_path_buf();
    o.formats = ["alpaca", "malformed_format", "chatml"].map(String::from).to_vec();

    let err = build(&o).unwrap_err();
    assert!(matches!(err, BuildError::Plugin(_)) && err.to_string().contains("malformed_format"), "{err}");
    assert_no_outputs(out.path());

    o.on_plugin_error = OnPluginError::Skip;
    let report = build(&o).unwrap();
    assert_eq!(report.formats, ["alpaca", "chatml"]);
    let failed: Vec<&str> = report.format_stats.iter().filter(|f| f.failed.is_some()).map(|f| f.name.as_str()).collect();
    assert_eq!(failed, ["malformed_format"]);
    assert!(report.table().contains("malformed_format FAILED and was skipped"), "{}", report.table());
    let rows = read_strings(&out.path().join("sft.parquet"));
    assert!(!rows.is_empty());
    assert_eq!(rows.len() as u64, report.sft_rows);
    assert_eq!(report.format_stats.iter().map(|f| f.sft_rows).sum::<u64>(), report.sft_rows);
    assert!(rows.iter().all(|r| r["source"] == "gsm8k_alpaca" || r["source"] == "gsm8k_chatml"), "{:?}", rows[0]["source"]);
    assert!(!out.path().join(".bagel-cache/outputs.json").exists(), "outputs without a format must not be stamped complete");
    assert!(!build(&o).unwrap().outputs_cache_hit);
}

#[test]
fn unknown_input_names_the_recipe_file() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = data.path().join("mine.toml");
    std::fs::write(
        &path,
        "[[source]]\nplugin = \"ai2_arc\"\nfiles = { questions = [\"arc.json\"] }\n",
    )
    .unwrap();
    let err = build(&opts(
        data.path(),
        Recipe::load(&path).unwrap(),
        out.path(),
        1,
    ))
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, BuildError::Recipe { path: p, .. } if *p == path),
        "{msg}"
    );
    assert!(
        msg.contains("mine.toml")
            && msg.contains("unknown input `questions`")
            && msg.contains("inputs: data"),
        "{msg}"
    );
    // A recipe built in code has no file to name.
    let err = build(&opts(
        data.path(),
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
        out.path(),
        1,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("<recipe>"), "{err}");
}

#[test]
fn truncated_json_array_fails_with_position_and_no_output() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("arc.json"), "[{\"id\": \"x\", \"question\": \"q\",\n \"choices\": {\"text\": [\"a\"], \"label\": [\"A\"]}, \"answerKey\": \"A\"},\n {\"id\": \"y\", \"quest").unwrap();
    let err = build(&opts(data.path(), single_source_recipe("ai2_arc", "arc.json"), out.path(), 1)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::BadFile { .. }), "{msg}");
    assert!(msg.contains("arc.json") && msg.contains("truncated JSON array") && msg.contains("line 3"), "{msg}");
    assert_no_outputs(out.path());
}

#[test]
fn gz_that_is_not_gzip_fails_and_leaves_nothing() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("train.jsonl.gz"), "{\"question\": \"1+1?\", \"answer\": \"2\\n#### 2\"}\n").unwrap();
    let err = build(&opts(data.path(), single_source_recipe("gsm8k", "train.jsonl.gz"), out.path(), 1)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("train.jsonl.gz") && msg.contains("not gzip"), "{msg}");
    assert_no_outputs(out.path());
}

#[test]
fn bad_rows_are_skipped_and_counted_or_fail_with_row_number() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("train.jsonl"),
        "{\"question\": \"1+1?\", \"answer\": \"2\\n#### 2\"}\n{\"question\": \"broken\n{\"question\": 5, \"answer\": \"x\"}\n{\"question\": \"2+2?\", \"answer\": \"<<2+2=4>>4\\n#### 4\"}\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = build(&opts(data.path(), single_source_recipe("gsm8k", "train.jsonl"), out.path(), 1)).unwrap();
    let s = &report.sources[0];
    assert_eq!((s.rows_read, s.invalid, s.kept), (3, 2, 2), "{s:?}");
    assert_eq!(report.bad_rows[0].row, 2);
    assert!(report.bad_rows[0].message.contains("line 2"));
    assert_eq!(report.bad_rows[1].row, 3, "{:?}", report.bad_rows);
    let out2 = tempfile::tempdir().unwrap();
    let mut o = opts(data.path(), single_source_recipe("gsm8k", "train.jsonl"), out2.path(), 1);
    o.on_bad_row = OnBadRow::Fail;
    let err = build(&o).unwrap_err();
    match &err {
        BuildError::BadRow { plugin, path, row, .. } => {
            assert_eq!(plugin, "gsm8k");
            assert!(path.ends_with("train.jsonl"));
            assert_eq!(*row, 2);
        }
        other => panic!("expected BadRow, got {other}"),
    }
    assert_no_outputs(out2.path());
}

#[test]
fn dedup_keeps_the_higher_priority_source_and_counts_duplicates() {
    // The same question in gsm8k (P3) and self_instruct (P2): gsm8k keeps it.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("g.jsonl"), "{\"question\": \"Same?\", \"answer\": \"yes\\n#### 1\"}\n{\"question\": \"Same?\", \"answer\": \"again\\n#### 1\"}\n").unwrap();
    std::fs::write(data.path().join("s.jsonl"), "{\"id\": \"u1\", \"motivation_app\": \"x\", \"instruction\": \"Same?\", \"instances\": [{\"input\": \"\", \"output\": \"no\"}]}\n").unwrap();
    let recipe: Recipe = toml::from_str("[[source]]\nplugin = \"self_instruct\"\nfiles = { data = [\"s.jsonl\"] }\n[[source]]\nplugin = \"gsm8k\"\nfiles = { data = [\"g.jsonl\"] }\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = build(&opts(data.path(), recipe, out.path(), 1)).unwrap();
    let names: Vec<&str> = report.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["gsm8k", "self_instruct"], "priority order");
    assert_eq!((report.sources[0].kept, report.sources[0].duplicate), (1, 1));
    assert_eq!((report.sources[1].kept, report.sources[1].duplicate), (0, 1));
    let rows = read_strings(&out.path().join("sft.parquet"));
    assert!(rows.iter().all(|r| r["id"] == uid("Same?")));
    assert!(rows.iter().all(|r| r["output"].contains("yes")));
}

#[test]
fn hf_hub_cache_layout_and_parquet_input() {
    // Convert the bundled ARC slice to parquet inside a hub-cache layout; no `files`.
    use arrow_json::reader::{infer_json_schema_from_seekable, ReaderBuilder};
    let data = tempfile::tempdir().unwrap();
    let snap = data.path().join("datasets--allenai--ai2_arc/snapshots/0123abc/ARC-Easy");
    std::fs::create_dir_all(&snap).unwrap();
    let arc: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(ws().join("examples/data/ai2_arc/ARC-Easy/train.json")).unwrap()).unwrap();
    let jsonl: String = arc.iter().take(40).map(|r| r.to_string() + "\n").collect();
    let mut cur = std::io::Cursor::new(jsonl.into_bytes());
    let (schema, _) = infer_json_schema_from_seekable(&mut cur, None).unwrap();
    let schema = std::sync::Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone()).build(cur).unwrap();
    let file = std::fs::File::create(snap.join("train-00000-of-00001.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    for b in reader {
        w.write(&b.unwrap()).unwrap();
    }
    w.close().unwrap();
    let recipe: Recipe = toml::from_str("[[source]]\nplugin = \"ai2_arc\"\nparams = { config = \"ARC-Easy\" }\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = build(&opts(data.path(), recipe, out.path(), 42)).unwrap();
    assert_eq!(report.sources[0].rows_read, 40);
    assert_eq!(report.sources[0].invalid, 0);
    assert_eq!(report.sources[0].kept, 40);
    assert!(report.sources[0].files[0].contains("snapshots/0123abc/ARC-Easy/train-00000-of-00001.parquet"));
}
