//! Per-row cost of a prompt-format plugin called through the runtime in batches vs the
//! same Rust code called natively (issue: target ≤ 1.5× native).
//!
//! Run: `cargo xtask bench` (= build plugins, then
//! `cargo bench -p bagel-runtime --bench format_calls`). Prints a table per workload:
//! `synthetic` (20,000 short made-up conversations: the per-row overhead dominates) and
//! `samples` (the bundled ShareGPT and GSM8K samples in `examples/data`, expanded into
//! examples as `bagel build`'s multi-turn expansion does: real text lengths). `BAGEL_BENCH_WORKLOADS=synthetic` runs one.
use bagel_core::refusal::RefusalMode;
use bagel_core::{Role, Turn};
use bagel_plugin_sdk::format::Format;
use bagel_runtime::{FormatJob, Limits, RenderItem, Runtime};
use std::time::Instant;

fn conversations(n: usize) -> Vec<Vec<Turn>> {
    (0..n)
        .map(|i| {
            let mut c = Vec::new();
            if i % 3 == 0 {
                c.push(Turn::new(Role::System, "You are terse."));
            }
            for t in 0..(1 + i % 3) {
                c.push(Turn::new(Role::Human, format!("  Question {i}.{t}: what is {} + {}?\n", i, t)));
                c.push(Turn::new(Role::Gpt, format!("\n\nThe answer is {}.\n\n\n\nDone {t}.  ", i + t)));
            }
            c
        })
        .collect()
}

/// Conversations from the bundled samples: each ShareGPT conversation (those with a role
/// other than system/human/gpt are left out) expanded as `bagel build` expands it
/// (`bagel_core::expand::expansion_prefixes`), and each GSM8K row as question/answer;
/// examples the format refuses are left out. Repeated to at least `min` rows.
fn samples(min: usize) -> Vec<Vec<Turn>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data");
    let mut out = Vec::new();
    let sharegpt: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("sharegpt/sharegpt_first100.json")).unwrap()).unwrap();
    'rows: for row in sharegpt.as_array().unwrap() {
        let mut conv = Vec::new();
        for t in row["conversations"].as_array().unwrap() {
            let from = match t["from"].as_str().unwrap() {
                "system" => Role::System,
                "human" => Role::Human,
                "gpt" => Role::Gpt,
                _ => continue 'rows,
            };
            conv.push(Turn::new(from, t["value"].as_str().unwrap()));
        }
        out.extend(bagel_core::expand::expansion_prefixes(&conv).map(|len| conv[..len].to_vec()));
    }
    for line in std::fs::read_to_string(root.join("gsm8k/train.jsonl")).unwrap().lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        out.push(vec![Turn::new(Role::Human, row["question"].as_str().unwrap()), Turn::new(Role::Gpt, row["answer"].as_str().unwrap())]);
    }
    // As in a build, examples the format refuses (e.g. a 3-turn gpt/human/gpt
    // conversation, which the expansion keeps whole) are not rendered.
    out.retain(|c| bagel_plugin_sdk::format::check_shape(&sdk_turns(c)).is_ok());
    let unique = out.len();
    while out.len() < min {
        out.extend_from_within(..unique.min(min - out.len()));
    }
    out
}

fn sdk_role(r: Role) -> bagel_plugin_sdk::Role {
    match r {
        Role::System => bagel_plugin_sdk::Role::System,
        Role::Human => bagel_plugin_sdk::Role::Human,
        Role::Gpt => bagel_plugin_sdk::Role::Gpt,
    }
}

fn sdk_turns(c: &[Turn]) -> Vec<bagel_plugin_sdk::Turn> {
    c.iter().map(|t| bagel_plugin_sdk::Turn { from: sdk_role(t.from), value: t.value.clone() }).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let workloads: Vec<String> = match std::env::var("BAGEL_BENCH_WORKLOADS") {
        Ok(v) => v.split(',').map(|w| w.trim().to_string()).collect(),
        Err(_) => vec!["synthetic".into(), "samples".into()],
    };
    for w in workloads {
        match w.as_str() {
            "synthetic" => bench("synthetic: 20000 made-up conversations of 1–3 turns", conversations(20_000)),
            "samples" => bench("samples: ShareGPT + GSM8K samples in examples/data, expanded as in a build", samples(20_000)),
            other => panic!("BAGEL_BENCH_WORKLOADS: unknown workload {other:?} (synthetic, samples)"),
        }
    }
}

fn bench(label: &str, convs: Vec<Vec<Turn>>) {
    let n = convs.len();
    let reps = 7;
    let bytes: usize = convs.iter().flatten().map(|t| t.value.len()).sum();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
    let rt = Runtime::new(Limits::default(), RefusalMode::Intended, None).unwrap();
    let plugin = rt.load_file(&dir.join("llama2.wasm")).expect("run `cargo xtask build-plugins` first");

    let opts = bagel_plugin_sdk::RenderOptions::default();
    // `BAGEL_BENCH_BATCHES=512` runs one batch size (e.g. under `perf record`).
    let batches: Vec<usize> = match std::env::var("BAGEL_BENCH_BATCHES") {
        Ok(v) => v.split(',').map(|b| b.trim().parse().expect("BAGEL_BENCH_BATCHES: comma-separated sizes")).collect(),
        Err(_) => vec![1, 64, 512, 4096],
    };
    // Paths: 0 = native `render` (owned turns in, two `String`s out: the input conversion
    // is counted, as the runtime path converts too); 1 = native `render_into` (turns
    // borrowed from the host's conversation, output into buffers reused across rows: the
    // fastest native call of the same code); then the wasm paths. `render`: two `String`s
    // per row, like the native call; `render_batch` (packed): the rows stay byte ranges of
    // the plugin's one answer text (what `bagel build` uses). Repetitions interleave the
    // paths, so a drift of the machine's speed hits all of them alike.
    let wasm_paths: Vec<(bool, usize)> = [false, true].iter().flat_map(|&p| batches.iter().map(move |&b| (p, b))).collect();
    let mut times = vec![Vec::new(); 2 + wasm_paths.len()];
    let mut checks = vec![0usize; 2 + wasm_paths.len()];
    for _ in 0..reps {
        let t = Instant::now();
        for c in &convs {
            let turns = sdk_turns(c);
            let r = bagel_format_llama2::Llama2::render(&opts, &turns, c.len() % 2 == 0).unwrap();
            checks[0] += r.input.len() + r.output.len();
        }
        times[0].push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let (mut input, mut output, mut turns) = (String::new(), String::new(), Vec::new());
        for c in &convs {
            turns.clear();
            turns.extend(c.iter().map(|t| bagel_plugin_sdk::TurnRef { from: sdk_role(t.from), value: &t.value }));
            input.clear();
            output.clear();
            bagel_format_llama2::Llama2::render_into(&opts, &turns, c.len() % 2 == 0, &mut input, &mut output).unwrap();
            checks[1] += input.len() + output.len();
        }
        times[1].push(t.elapsed().as_secs_f64());

        for (k, &(packed, batch)) in wasm_paths.iter().enumerate() {
            let check = &mut checks[2 + k];
            let mut job = FormatJob::start(&rt, &plugin, 0).unwrap();
            let t = Instant::now();
            for chunk in convs.chunks(batch) {
                let items: Vec<RenderItem> = chunk.iter().map(|c| RenderItem { conversation: c, add_default_system: c.len() % 2 == 0 }).collect();
                if packed {
                    let out = job.render_batch("<s>", "</s>", &items).unwrap();
                    for r in &out.items {
                        let (i, o) = r.as_ref().unwrap();
                        *check += out.text[i.clone()].len() + out.text[o.clone()].len();
                    }
                } else {
                    for r in job.render("<s>", "</s>", &items).unwrap() {
                        let r = r.unwrap();
                        *check += r.input.len() + r.output.len();
                    }
                }
            }
            times[2 + k].push(t.elapsed().as_secs_f64());
        }
    }
    assert!(checks.iter().all(|&c| c == checks[0]), "paths disagree on the output size: {checks:?}");
    let names: Vec<String> = ["native, render (owned)".to_string(), "native, render_into".to_string()]
        .into_iter()
        .chain(wasm_paths.iter().map(|&(packed, batch)| if packed { format!("wasm, batch {batch}, packed") } else { format!("wasm, batch {batch}") }))
        .collect();
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    println!("\nformat plugin `llama2`, workload {label}: {n} rows, {:.0} bytes of turn text per row; median of {reps} interleaved runs", bytes as f64 / n as f64);
    println!("{:<28} {:>8} {:>12} {:>12} {:>12}", "path", "ns/row", "rows/s", "× render", "× render_into");
    for (name, t) in names.iter().zip(&medians) {
        println!("{:<28} {:>8.0} {:>12.0} {:>12.2} {:>12.2}", name, t / n as f64 * 1e9, n as f64 / t, t / medians[0], t / medians[1]);
    }
}
