//! Per-row cost of a prompt-format plugin called through the runtime in batches vs the
//! same Rust code called natively (issue: target ≤ 1.5× native).
//!
//! Run: `cargo xtask bench` (= build plugins, then
//! `cargo bench -p bagel-runtime --bench format_calls`). Prints a table.
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

fn sdk_turns(c: &[Turn]) -> Vec<bagel_plugin_sdk::Turn> {
    c.iter()
        .map(|t| bagel_plugin_sdk::Turn {
            from: match t.from {
                Role::System => bagel_plugin_sdk::Role::System,
                Role::Human => bagel_plugin_sdk::Role::Human,
                Role::Gpt => bagel_plugin_sdk::Role::Gpt,
            },
            value: t.value.clone(),
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let n = 20_000;
    let reps = 7;
    let convs = conversations(n);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
    let rt = Runtime::new(Limits::default(), RefusalMode::Intended, None).unwrap();
    let plugin = rt.load_file(&dir.join("llama2.wasm")).expect("run `cargo xtask build-plugins` first");

    // Native: the same crate, linked as an rlib; input conversion counted (the runtime
    // path converts too).
    let opts = bagel_plugin_sdk::RenderOptions::default();
    let mut native = Vec::new();
    let mut check_native = 0usize;
    for _ in 0..reps {
        let t = Instant::now();
        for c in &convs {
            let turns = sdk_turns(c);
            let r = bagel_format_llama2::Llama2::render(&opts, &turns, c.len() % 2 == 0).unwrap();
            check_native += r.input.len() + r.output.len();
        }
        native.push(t.elapsed().as_secs_f64());
    }

    let mut rows = Vec::new();
    // `BAGEL_BENCH_BATCHES=512` runs one batch size (e.g. under `perf record`).
    let batches: Vec<usize> = match std::env::var("BAGEL_BENCH_BATCHES") {
        Ok(v) => v.split(',').map(|b| b.trim().parse().expect("BAGEL_BENCH_BATCHES: comma-separated sizes")).collect(),
        Err(_) => vec![1, 64, 512, 4096],
    };
    // `render`: two `String`s per row, like the native call. `render_batch` (packed): the
    // rows stay byte ranges of the plugin's one answer text (what `bagel build` uses).
    for packed in [false, true] {
        for &batch in &batches {
            let mut times = Vec::new();
            let mut check = 0usize;
            for _ in 0..reps {
                let mut job = FormatJob::start(&rt, &plugin, 0).unwrap();
                let t = Instant::now();
                for chunk in convs.chunks(batch) {
                    let items: Vec<RenderItem> = chunk.iter().map(|c| RenderItem { conversation: c, add_default_system: c.len() % 2 == 0 }).collect();
                    if packed {
                        let out = job.render_batch("<s>", "</s>", &items).unwrap();
                        for r in &out.items {
                            let (i, o) = r.as_ref().unwrap();
                            check += out.text[i.clone()].len() + out.text[o.clone()].len();
                        }
                    } else {
                        for r in job.render("<s>", "</s>", &items).unwrap() {
                            let r = r.unwrap();
                            check += r.input.len() + r.output.len();
                        }
                    }
                }
                times.push(t.elapsed().as_secs_f64());
            }
            assert_eq!(check, check_native, "runtime and native outputs differ in size");
            rows.push((if packed { format!("wasm, batch {batch}, packed") } else { format!("wasm, batch {batch}") }, median(times)));
        }
    }
    let nat = median(native);
    println!("format plugin `llama2`, {n} conversations (1–3 turns), median of {reps} runs");
    println!("{:<28} {:>12} {:>14} {:>10}", "path", "ns/row", "rows/s", "× native");
    println!("{:<28} {:>12.0} {:>14.0} {:>10.2}", "native (rlib)", nat / n as f64 * 1e9, n as f64 / nat, 1.0);
    for (path, t) in rows {
        println!("{:<28} {:>12.0} {:>14.0} {:>10.2}", path, t / n as f64 * 1e9, n as f64 / t, t / nat);
    }
}
