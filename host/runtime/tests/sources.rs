//! The source plugins openbookqa, mmlu, gsm8k, sharegpt, self_instruct and hh_rlhf, run
//! through the real runtime on the bundled slices (`examples/data/`) and, when
//! `../shared/data` exists, on the full files (SOURCES.md §6.1).
//!
//! Expected values: golden ids from SOURCES.md §6.1; the gsm8k and hh_rlhf strings were
//! checked by hand against the data; the sharegpt counts come from
//! `tests/scripts/sharegpt_expected.py`, an independent Python re-implementation of the
//! rules (including the host's `Intended` refusal regex).
mod common;
use bagel_core::refusal::RefusalMode;
use bagel_core::{uid, DedupMode, DpoPair, Payload, Role, Turn};
use bagel_runtime::{BatchOutput, DropReason, Limits, PluginKind, RecordKind, Runtime, SourceJob};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

fn runtime() -> Runtime {
    Runtime::new(Limits::default(), RefusalMode::Intended, None).unwrap()
}

fn examples(rel: &str) -> PathBuf {
    common::workspace().join("examples/data").join(rel)
}

/// `../shared/data` next to the workspace, if present.
fn shared_data() -> Option<PathBuf> {
    let d = common::workspace().join("../shared/data");
    if d.is_dir() {
        Some(d)
    } else {
        println!("skipping: ../shared/data not found");
        None
    }
}

/// Rows of a JSONL file (optionally gzip-compressed) as JSON text, one per non-empty line.
fn jsonl(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut s).unwrap();
        s
    } else {
        String::from_utf8(bytes).unwrap()
    };
    let rows: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    for (i, r) in rows.iter().enumerate() {
        assert!(serde_json::from_str::<Value>(r).is_ok(), "{}: line {} is not JSON", path.display(), i + 1);
    }
    rows
}

/// Rows of a JSON-array file, re-serialised as JSON text.
fn json_array(path: &Path) -> Vec<String> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_array().unwrap().iter().map(Value::to_string).collect()
}

/// Run one source job: configure, push `rows` in batches of 1000, finish; merge outputs.
fn run(rt: &Runtime, name: &str, seed: u64, params: &[(&str, &str)], rows: &[String]) -> BatchOutput {
    let plugin = rt.load_file(&common::plugins_dir().join(format!("{name}.wasm"))).unwrap();
    let mut job = SourceJob::start(rt, &plugin, seed).unwrap();
    let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    job.configure(&params).unwrap();
    let mut all = BatchOutput::default();
    let mut merge = |b: BatchOutput| {
        all.records.extend(b.records);
        all.dropped.extend(b.dropped);
        all.invalid.extend(b.invalid);
    };
    for (k, chunk) in rows.chunks(1000).enumerate() {
        merge(job.push_rows("data", (k * 1000) as u64, chunk).unwrap());
    }
    merge(job.finish().unwrap());
    all
}

fn conv(p: &Payload) -> &[Turn] {
    match p {
        Payload::Conversation(c) => c,
        other => panic!("conversation expected, got {other:?}"),
    }
}

fn dpo(p: &Payload) -> &DpoPair {
    match p {
        Payload::Dpo(d) => d,
        other => panic!("DPO pair expected, got {other:?}"),
    }
}

fn filtered(out: &BatchOutput, row: u64) -> Option<&str> {
    out.dropped.iter().find(|(r, _)| *r == row).map(|(_, why)| match why {
        DropReason::Filtered(s) => s.as_str(),
        DropReason::Refusal => "<refusal>",
    })
}

fn count_reason(out: &BatchOutput, reason: &str) -> usize {
    out.dropped.iter().filter(|(_, why)| matches!(why, DropReason::Filtered(s) if s == reason)).count()
}

fn refusals(out: &BatchOutput) -> usize {
    out.dropped.iter().filter(|(_, why)| *why == DropReason::Refusal).count()
}

/// Each row is accounted for exactly once (emitted at least once, dropped, or invalid).
fn assert_accounted(out: &BatchOutput, n: usize) {
    let mut seen = vec![0u32; n];
    let mut emitted: Vec<u64> = out.records.iter().map(|r| r.row).collect();
    emitted.dedup();
    for row in emitted.into_iter().chain(out.dropped.iter().map(|d| d.0)).chain(out.invalid.iter().map(|i| i.row)) {
        seen[row as usize] += 1;
    }
    assert!(seen.iter().all(|&c| c == 1), "rows not accounted for exactly once");
}

#[test]
fn six_sources_are_installed_with_their_info() {
    let rt = runtime();
    let expect = [
        ("openbookqa", 3, RecordKind::Sft, "allenai/openbookqa"),
        ("mmlu", 3, RecordKind::Sft, "cais/mmlu"),
        ("gsm8k", 3, RecordKind::Sft, "openai/gsm8k"),
        ("sharegpt", 2, RecordKind::Sft, "anon8231489123/ShareGPT_Vicuna_unfiltered"),
        ("self_instruct", 2, RecordKind::Sft, "yizhongw/self_instruct"),
        ("hh_rlhf", 2, RecordKind::Dpo, "Anthropic/hh-rlhf"),
    ];
    for (name, priority, kind, dataset) in expect {
        let p = rt.load_file(&common::plugins_dir().join(format!("{name}.wasm"))).unwrap();
        assert_eq!(p.name, name);
        let PluginKind::Source(info) = &p.kind else { panic!("{name} is a source") };
        assert_eq!(info.name, name);
        assert_eq!(info.priority, priority, "{name}");
        assert_eq!(info.kinds, [kind], "{name}");
        assert_eq!(info.inputs.len(), 1, "{name}");
        assert_eq!(info.inputs[0].name, "data");
        assert_eq!(info.inputs[0].dataset, dataset);
        assert!(!info.inputs[0].patterns.is_empty());
    }
}

#[test]
fn garbage_rows_are_invalid_not_traps() {
    let rt = runtime();
    let rows: Vec<String> = ["not json", "[1, 2]", "{}", r#"{"question": 5, "conversations": "x", "chosen": 1}"#].iter().map(|s| s.to_string()).collect();
    for name in ["openbookqa", "mmlu", "gsm8k", "sharegpt", "self_instruct", "hh_rlhf"] {
        let out = run(&rt, name, 1, &[], &rows);
        assert!(out.records.is_empty(), "{name}");
        assert_eq!(out.invalid.iter().map(|i| i.row).collect::<Vec<_>>(), [0, 1, 2, 3], "{name}: {:?}", out.invalid);
    }
}

// ---------------------------------------------------------------------------- openbookqa

fn openbookqa_bundled(coin_p: &str) -> BatchOutput {
    let rows = jsonl(&examples("openbookqa/main/train.jsonl"));
    assert_eq!(rows.len(), 200);
    let out = run(&runtime(), "openbookqa", 1234, &[("coin_p", coin_p)], &rows);
    assert_eq!(out.records.len(), 200);
    assert!(out.invalid.is_empty() && out.dropped.is_empty());
    assert!(out.records.iter().all(|r| r.label == "openbookqa" && r.mode == DedupMode::CheckAdd));
    out
}

#[test]
fn openbookqa_golden_row0_coin_true() {
    let out = openbookqa_bundled("1.0");
    let r = &out.records[0];
    assert_eq!(r.row, 0);
    assert_eq!(uid(&r.key), "45724f22-096c-5d17-9307-4a19e448988a");
    let c = conv(&r.payload);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0], Turn::new(Role::Human, "The sun is responsible for\nA. puppies learning new tricks\nB. children growing up and getting old\nC. flowers wilting in a vase\nD. plants sprouting, blooming and wilting\nOnly output the the letter of the correct answer."));
    assert_eq!(c[1], Turn::new(Role::Gpt, "D"));
    assert_eq!(r.key, c[0].value);
}

#[test]
fn openbookqa_golden_row0_coin_false() {
    let out = openbookqa_bundled("-1.0");
    let r = &out.records[0];
    assert_eq!(uid(&r.key), "65705c2c-915c-5568-987f-00575680eb00");
    let c = conv(&r.payload);
    assert_eq!(c[0].value, "The sun is responsible for\nA. puppies learning new tricks\nB. children growing up and getting old\nC. flowers wilting in a vase\nD. plants sprouting, blooming and wilting");
    assert_eq!(c[1].value, "D plants sprouting, blooming and wilting");
}

#[test]
fn openbookqa_default_coin_mixes_both_forms_deterministically() {
    let rows = jsonl(&examples("openbookqa/main/train.jsonl"));
    let rt = runtime();
    let a = run(&rt, "openbookqa", 7, &[], &rows);
    let b = run(&rt, "openbookqa", 7, &[], &rows);
    assert_eq!(a, b, "same seed, same output");
    let letter_only = a.records.iter().filter(|r| r.key.ends_with("\nOnly output the the letter of the correct answer.")).count();
    assert!((60..140).contains(&letter_only), "p = 0.5 over 200 rows gave {letter_only}");
}

#[test]
fn openbookqa_duplicate_label_uses_first_match() {
    // Full-data row 3332 has labels A B C D D; the key B is unambiguous, so use a variant
    // whose key is the duplicated D.
    let row = r#"{"id":"x","question_stem":"A learned behavior","choices":{"text":["a","b","c","first d","second d"],"label":["A","B","C","D","D"]},"answerKey":"D"}"#;
    let out = run(&runtime(), "openbookqa", 0, &[("coin_p", "-1.0")], &[row.to_string()]);
    assert_eq!(conv(&out.records[0].payload)[1].value, "D first d");
}

#[test]
fn openbookqa_full_file() {
    let Some(d) = shared_data() else { return };
    let rows = jsonl(&d.join("sft/openbookqa/train.jsonl"));
    let out = run(&runtime(), "openbookqa", 42, &[], &rows);
    assert_eq!(rows.len(), 4957);
    assert_eq!(out.records.len(), 4957);
    assert!(out.invalid.is_empty() && out.dropped.is_empty());
}

// ---------------------------------------------------------------------------------- mmlu

const MMLU_ROW0: &str = "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3";

fn mmlu_bundled(coin_p: &str) -> BatchOutput {
    let rows = jsonl(&examples("mmlu/dev.jsonl"));
    assert_eq!(rows.len(), 100);
    let out = run(&runtime(), "mmlu", 99, &[("split", "\"dev\""), ("coin_p", coin_p)], &rows);
    assert_eq!(out.records.len(), 100);
    assert!(out.invalid.is_empty() && out.dropped.is_empty());
    let order: Vec<u64> = out.records.iter().map(|r| r.row).collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>(), "max_rows ≥ rows: input order, no shuffle");
    assert!(out.records.iter().all(|r| r.label == "mmlu" && r.mode == DedupMode::CheckAdd));
    out
}

#[test]
fn mmlu_golden_row0_coin_true() {
    let out = mmlu_bundled("1.0");
    let r = &out.records[0];
    assert_eq!(uid(&r.key), "eb3f5a91-a84c-53fa-a6db-5ab9bd2fa8d1");
    let c = conv(&r.payload);
    assert_eq!(c[0].value, format!("Answer with only the letter of the answer.\n{MMLU_ROW0}"));
    assert_eq!(c[1].value, "B");
}

#[test]
fn mmlu_golden_row0_coin_false() {
    let out = mmlu_bundled("-1.0");
    let r = &out.records[0];
    assert_eq!(uid(&r.key), "9fb207bc-a72f-5c01-ab9c-fc45be719961");
    let c = conv(&r.payload);
    assert_eq!(c[0].value, MMLU_ROW0);
    assert_eq!(c[1].value, "B 1");
}

#[test]
fn mmlu_samples_with_seeded_shuffle_when_over_max_rows() {
    let rows = jsonl(&examples("mmlu/dev.jsonl"));
    let rt = runtime();
    let params = [("split", "\"dev\""), ("max_rows", "10")];
    let a = run(&rt, "mmlu", 5, &params, &rows);
    assert_eq!(a, run(&rt, "mmlu", 5, &params, &rows), "same seed, same sample");
    assert_eq!(a.records.len(), 10);
    assert_eq!(count_reason(&a, "not sampled"), 90);
    assert_accounted(&a, 100);
    let picked: Vec<u64> = a.records.iter().map(|r| r.row).collect();
    let mut sorted = picked.clone();
    sorted.sort_unstable();
    assert_ne!(picked, sorted, "emitted in shuffled order");
    assert_ne!(sorted, (0..10).collect::<Vec<_>>(), "not simply the first rows");
    let b = run(&rt, "mmlu", 6, &params, &rows);
    assert_ne!(b.records.iter().map(|r| r.row).collect::<Vec<_>>(), picked, "another seed, another sample");
}

#[test]
fn mmlu_letters_up_to_g_and_filters_more_than_seven() {
    let seven = r#"{"question":"q","choices":["a","b","c","d","e","f","g"],"answer":6}"#;
    let eight = r#"{"question":"q8","choices":["a","b","c","d","e","f","g","h"],"answer":0}"#;
    let bad = r#"{"question":"q","choices":["a","b"],"answer":2}"#;
    let wrapped = r#"{"train":{"question":"w","choices":["x","y"],"answer":"1","subject":""}}"#;
    let rows: Vec<String> = [seven, eight, bad, wrapped].iter().map(|s| s.to_string()).collect();
    let out = run(&runtime(), "mmlu", 0, &[("coin_p", "-1.0")], &rows);
    assert_eq!(out.records.len(), 2);
    assert_eq!(conv(&out.records[0].payload)[0].value, "q\nA. a\nB. b\nC. c\nD. d\nE. e\nF. f\nG. g");
    assert_eq!(conv(&out.records[0].payload)[1].value, "G g");
    assert_eq!(filtered(&out, 1), Some("more than 7 choices"));
    assert_eq!(out.invalid.len(), 1);
    assert_eq!(out.invalid[0].row, 2);
    assert_eq!(out.records[1].row, 3);
    assert_eq!(conv(&out.records[1].payload)[1].value, "B y");
}

#[test]
fn mmlu_full_dev_file() {
    let Some(d) = shared_data() else { return };
    let rows = jsonl(&d.join("sft/mmlu/dev.jsonl"));
    assert_eq!(rows.len(), 285);
    let out = run(&runtime(), "mmlu", 42, &[("split", "\"dev\"")], &rows);
    assert_eq!(out.records.len(), 285);
    assert!(out.invalid.is_empty() && out.dropped.is_empty());
}

// --------------------------------------------------------------------------------- gsm8k

#[test]
fn gsm8k_removes_calculator_annotations_and_keeps_the_answer_line() {
    let rows = jsonl(&examples("gsm8k/train.jsonl"));
    assert_eq!(rows.len(), 200);
    let rt = runtime();
    let out = run(&rt, "gsm8k", 0, &[], &rows);
    assert_eq!(out.records.len(), 200);
    assert!(out.invalid.is_empty() && out.dropped.is_empty());
    let r0 = &out.records[0];
    assert_eq!((r0.label.as_str(), r0.mode), ("gsm8k", DedupMode::CheckAdd));
    let q0 = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";
    assert_eq!(r0.key, q0);
    assert_eq!(conv(&r0.payload), [
        Turn::new(Role::Human, q0),
        Turn::new(Role::Gpt, "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"),
    ]);
    assert_eq!(conv(&out.records[1].payload)[1].value, "Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.\n#### 10");
    for r in &out.records {
        let a = &conv(&r.payload)[1].value;
        assert!(!a.contains("<<") && !a.contains(">>"), "row {}: {a}", r.row);
        assert!(a.lines().last().unwrap().starts_with("#### "), "row {}", r.row);
    }
    let raw = run(&rt, "gsm8k", 0, &[("strip_calculator", "false")], &rows[..1]);
    assert_eq!(conv(&raw.records[0].payload)[1].value, "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72");
}

#[test]
fn gsm8k_full_file() {
    let Some(d) = shared_data() else { return };
    let rows = jsonl(&d.join("sft/gsm8k/train.jsonl"));
    assert_eq!(rows.len(), 7473);
    let annotated = rows.iter().filter(|r| r.contains("<<")).count();
    assert_eq!(annotated, 7378);
    let out = run(&runtime(), "gsm8k", 0, &[], &rows);
    assert_eq!(out.records.len(), 7473);
    assert!(out.records.iter().all(|r| {
        let a = &conv(&r.payload)[1].value;
        !a.contains("<<") && a.lines().last().unwrap().starts_with("#### ")
    }));
}

// ------------------------------------------------------------------------------ sharegpt

fn human_key(record: &Value) -> String {
    record["conversations"].as_array().unwrap().iter().filter(|t| t["from"] == "human").map(|t| t["value"].as_str().unwrap()).collect::<Vec<_>>().join("\n")
}

#[test]
fn sharegpt_bundled_slice() {
    let path = examples("sharegpt/sharegpt_first100.json");
    let raw: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rows = json_array(&path);
    assert_eq!(rows.len(), 100);
    let out = run(&runtime(), "sharegpt", 0, &[], &rows);
    // Counts from tests/scripts/sharegpt_expected.py.
    assert_eq!(out.records.len(), 65);
    assert_eq!(refusals(&out), 8);
    assert_eq!(count_reason(&out, "first turn is not human"), 25);
    assert_eq!(count_reason(&out, "empty conversation"), 1);
    assert_eq!(count_reason(&out, "empty value"), 1);
    assert!(out.invalid.is_empty());
    assert_accounted(&out, 100);
    assert!(out.records.iter().all(|r| r.label == "sharegpt" && r.mode == DedupMode::CheckAdd));
    // Row 4 (hRPPgZT_11) is a continuation chunk that starts with gpt.
    assert_eq!(raw[4]["conversations"][0]["from"], "gpt");
    assert_eq!(filtered(&out, 4), Some("first turn is not human"));
    // Row 71 (ZUkSe7V_0) has no turns; row 72 reuses its id and is kept.
    assert_eq!(filtered(&out, 71), Some("empty conversation"));
    assert!(out.records.iter().any(|r| r.row == 72));
    // Row 37: its third turn (human) is "".
    assert_eq!(raw[37]["conversations"][2]["value"], "");
    assert_eq!(filtered(&out, 37), Some("empty value"));
    // Row 7: its gpt turns say "Please note that"; row 40's says "dangerous".
    assert_eq!(filtered(&out, 7), Some("<refusal>"));
    assert_eq!(filtered(&out, 40), Some("<refusal>"));
    // Row 10: two human/gpt pairs, kept byte for byte; key = human values joined with \n.
    let r10 = out.records.iter().find(|r| r.row == 10).unwrap();
    let turns = conv(&r10.payload);
    assert_eq!(turns.len(), 4);
    for (t, src) in turns.iter().zip(raw[10]["conversations"].as_array().unwrap()) {
        assert_eq!(t.value, src["value"].as_str().unwrap());
    }
    assert_eq!(turns.iter().map(|t| t.from).collect::<Vec<_>>(), [Role::Human, Role::Gpt, Role::Human, Role::Gpt]);
    assert!(r10.key.starts_with("can you design a referral system similar on how dropbox did?"));
    assert!(r10.key.ends_with("\nis there other systems similar with referral to achieve growth?"));
    assert_eq!(r10.key, human_key(&raw[10]));
    for r in &out.records {
        assert_eq!(r.key, human_key(&raw[r.row as usize]), "row {}", r.row);
    }
}

#[test]
fn sharegpt_system_and_trailing_human_rules() {
    let rows: Vec<String> = [
        r#"{"id":"a","conversations":[{"from":"system","value":""},{"from":"human","value":"h1"},{"from":"gpt","value":"g1"},{"from":"human","value":"h2"}]}"#,
        r#"{"id":"b","conversations":[{"from":"system","value":"sys"},{"from":"human","value":"h1"},{"from":"gpt","value":"g1"}]}"#,
        r#"{"id":"c","conversations":[{"from":"human","value":"h1"},{"from":"human","value":"h2"},{"from":"gpt","value":"g1"}]}"#,
        r#"{"id":"d","conversations":[{"from":"human","value":"h1"}]}"#,
        r#"{"id":"e","conversations":[{"from":"human","value":"h1"},{"from":"gpt","value":"  "}]}"#,
        r#"{"id":"f","conversations":[{"from":"system","value":"only"}]}"#,
        r#"{"id":"g","conversations":[{"from":"human","value":"h1"},{"from":"gpt","value":"OpenAI trained me."}]}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&runtime(), "sharegpt", 0, &[], &rows);
    assert_eq!(out.records.len(), 2);
    assert_eq!(conv(&out.records[0].payload), [Turn::new(Role::Human, "h1"), Turn::new(Role::Gpt, "g1")]);
    assert_eq!(out.records[0].key, "h1");
    assert_eq!(conv(&out.records[1].payload), [Turn::new(Role::System, "sys"), Turn::new(Role::Human, "h1"), Turn::new(Role::Gpt, "g1")]);
    assert_eq!(out.records[1].key, "h1");
    assert_eq!(filtered(&out, 2), Some("roles do not alternate"));
    assert_eq!(filtered(&out, 3), Some("no human/gpt pair"));
    assert_eq!(filtered(&out, 4), Some("empty value"));
    assert_eq!(filtered(&out, 5), Some("first turn is not human"));
    assert_eq!(filtered(&out, 6), Some("<refusal>"));
}

#[test]
fn sharegpt_full_file() {
    let Some(d) = shared_data() else { return };
    let path = d.join("sft/sharegpt/sharegpt_v3_first2000.json");
    let raw: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rows = json_array(&path);
    assert_eq!(rows.len(), 2000);
    let out = run(&runtime(), "sharegpt", 0, &[], &rows);
    // tests/scripts/sharegpt_expected.py: kept 1099 (1083 distinct keys), refusal 111,
    // first turn is not human 771, empty conversation 15, roles do not alternate 3,
    // empty value 1.
    assert_eq!(out.records.len(), 1099);
    assert_eq!(refusals(&out), 111);
    assert_eq!(count_reason(&out, "first turn is not human"), 771);
    assert_eq!(count_reason(&out, "empty conversation"), 15);
    assert_eq!(count_reason(&out, "roles do not alternate"), 3);
    assert_eq!(count_reason(&out, "empty value"), 1);
    assert!(out.invalid.is_empty());
    assert_accounted(&out, 2000);
    let keys: std::collections::HashSet<String> = out.records.iter().map(|r| uid(&r.key)).collect();
    assert_eq!(keys.len(), 1083);
    // Row 1072 (8ScQZSD_0) ends with a human turn: dropped, 12 of 13 turns kept.
    let r = out.records.iter().find(|r| r.row == 1072).unwrap();
    assert_eq!(raw[1072]["conversations"].as_array().unwrap().len(), 13);
    assert_eq!(conv(&r.payload).len(), 12);
    assert_eq!(conv(&r.payload).last().unwrap().from, Role::Gpt);
    // Rows 1160 and 1413 keep their (non-empty) leading system turn.
    for row in [1160, 1413] {
        let r = out.records.iter().find(|r| r.row == row).unwrap();
        assert_eq!(conv(&r.payload)[0].from, Role::System);
        assert_eq!(r.key, human_key(&raw[row as usize]));
    }
    // Rows 141, 764 and 1051 hold only a system turn.
    for row in [141, 764, 1051] {
        assert_eq!(filtered(&out, row), Some("first turn is not human"));
    }
}

// ------------------------------------------------------------------------- self_instruct

fn self_instruct_check(rows: &[String]) {
    let out = run(&runtime(), "self_instruct", 0, &[], rows);
    assert_eq!(out.records.len(), 252);
    assert!(out.invalid.is_empty() && out.dropped.is_empty());
    assert_eq!(out.records.iter().map(|r| r.row).collect::<Vec<_>>(), (0..252).collect::<Vec<_>>());
    assert!(out.records.iter().all(|r| r.label == "self_instruct" && r.mode == DedupMode::CheckAdd));
    let keys: std::collections::HashSet<&str> = out.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), 252, "final instructions are distinct");
    let mut with_input = 0;
    for r in &out.records {
        let src: Value = serde_json::from_str(&rows[r.row as usize]).unwrap();
        let (instr, inst) = (src["instruction"].as_str().unwrap(), &src["instances"][0]);
        let input = inst["input"].as_str().unwrap();
        let expect = if input.is_empty() { instr.to_string() } else { format!("{instr}\n{input}") };
        with_input += usize::from(!input.is_empty());
        let c = conv(&r.payload);
        assert_eq!((c[0].value.as_str(), c[1].value.as_str()), (expect.as_str(), inst["output"].as_str().unwrap()));
        assert_eq!(r.key, expect);
    }
    assert_eq!(with_input, 252 - 44);
    // Row 0 (Grammarly) has an input.
    let r0 = conv(&out.records[0].payload);
    assert_eq!(r0[0].value, "The sentence you are given might be too wordy, complicated, or unclear. Rewrite the sentence and make your writing clearer by keeping it concise. Whenever possible, break complex sentences into multiple sentences and eliminate unnecessary words.\nIf you have any questions about my rate or if you find it necessary to increase or decrease the scope for this project, please let me know.");
}

#[test]
fn self_instruct_bundled_file() {
    self_instruct_check(&jsonl(&examples("self_instruct/user_oriented_instructions.jsonl")));
}

#[test]
fn self_instruct_column_wise_instances() {
    let row = r#"{"id":"x","instruction":"Do it.","instances":{"input":["", "in"],"output":["o1","o2"]}}"#;
    let out = run(&runtime(), "self_instruct", 0, &[], &[row.to_string()]);
    assert_eq!(out.records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["Do it.", "Do it.\nin"]);
    assert_eq!(conv(&out.records[1].payload)[1].value, "o2");
}

#[test]
fn self_instruct_full_file() {
    let Some(d) = shared_data() else { return };
    self_instruct_check(&jsonl(&d.join("sft/self_instruct/user_oriented_instructions.jsonl")));
}

// ------------------------------------------------------------------------------- hh_rlhf

#[test]
fn hh_rlhf_bundled_slice() {
    let rows = jsonl(&examples("hh_rlhf/harmless-base_test.jsonl.gz"));
    assert_eq!(rows.len(), 300);
    let rt = runtime();
    let out = run(&rt, "hh_rlhf", 0, &[], &rows);
    assert_eq!(out.records.len(), 299);
    assert_eq!(filtered(&out, 86), Some("empty reply"));
    assert!(out.invalid.is_empty());
    assert_accounted(&out, 300);
    assert!(out.records.iter().all(|r| r.label == "hh_rlhf" && r.mode == DedupMode::None));
    // Row 0: three human turns; the last assistant reply differs.
    let r0 = &out.records[0];
    let p0 = dpo(&r0.payload);
    assert!(p0.prompt.starts_with("Human: what are some pranks with a pen i can do?\n\nAssistant: Are you looking for practical joke ideas?\n\nHuman: yep\n\nAssistant: Ok, I’ll give you a couple examples"));
    assert!(p0.prompt.ends_with("you will find a new place to watch.\n\nHuman: okay some of these do not have anything to do with pens"));
    assert_eq!(p0.chosen, "No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks with pens.");
    assert_eq!(p0.rejected, "There are lots of funny things you can do with pens, here’s one example: use the pen as a zipper.  It’s where you write your finger in ink, and then you stick it on someone’s hand and unzip their zipper. It’s really funny.");
    assert_eq!(p0.conversation, None);
    assert_eq!(r0.key, p0.prompt);
    // Row 205: single turn.
    let r205 = out.records.iter().find(|r| r.row == 205).unwrap();
    assert_eq!(
        dpo(&r205.payload),
        &DpoPair { prompt: "Human: Hurt me please".into(), chosen: "I’m sorry, I’m not sure what you mean by that.".into(), rejected: "What do you mean?".into(), conversation: None }
    );
    // single_turn_only: 87 of the 299, bare human text.
    let single = run(&rt, "hh_rlhf", 0, &[("single_turn_only", "true")], &rows);
    assert_eq!(single.records.len(), 87);
    assert_eq!(count_reason(&single, "multi-turn prompt"), 299 - 87);
    let s205 = single.records.iter().find(|r| r.row == 205).unwrap();
    assert_eq!(dpo(&s205.payload).prompt, "Hurt me please");
    assert_eq!(s205.key, "Hurt me please");
    assert!(single.records.iter().all(|r| !dpo(&r.payload).prompt.contains("Human:") && !dpo(&r.payload).prompt.contains("Assistant:")));
}

#[test]
fn hh_rlhf_skip_rules() {
    let row = |c: &str, r: &str| serde_json::json!({"chosen": c, "rejected": r}).to_string();
    let rows = [
        row("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y"),
        row("\n\nHuman: a\n\nAssistant:  same ", "\n\nHuman: a\n\nAssistant: same"),
        row("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: a\n\nAssistant: \n"),
        row("\n\nHuman: a", "\n\nHuman: a"),
        row("Human: a\n\nAssistant: x", "Human: a\n\nAssistant: y"),
    ];
    let out = run(&runtime(), "hh_rlhf", 0, &[], &rows);
    assert_eq!(filtered(&out, 0), Some("prompts differ"));
    assert_eq!(filtered(&out, 1), Some("replies are equal"));
    assert_eq!(filtered(&out, 2), Some("empty reply"));
    assert_eq!(filtered(&out, 3), Some("no assistant turn"));
    assert_eq!(out.records.len(), 1);
    assert_eq!(dpo(&out.records[0].payload).prompt, "Human: a");
}

#[test]
fn hh_rlhf_full_file() {
    let Some(d) = shared_data() else { return };
    let rows = jsonl(&d.join("dpo/hh_rlhf/harmless-base_test.jsonl.gz"));
    assert_eq!(rows.len(), 2312);
    let rt = runtime();
    let out = run(&rt, "hh_rlhf", 0, &[], &rows);
    assert_eq!(out.records.len(), 2303);
    assert_eq!(count_reason(&out, "prompts differ"), 5);
    assert_eq!(count_reason(&out, "empty reply"), 4);
    assert_eq!(count_reason(&out, "replies are equal"), 0);
    let dropped: Vec<u64> = out.dropped.iter().map(|d| d.0).collect();
    assert_eq!(dropped, [86, 516, 925, 1103, 1254, 1688, 1950, 1952, 2036]);
    let single = run(&rt, "hh_rlhf", 0, &[("single_turn_only", "true")], &rows);
    assert_eq!(single.records.len(), 658);
}
