//! Throughput of the refusal check (`cargo bench -p bagel-core --bench refusal`).
//! Input: every gpt turn of ../shared/data/sft/sharegpt/sharegpt_v3_first2000.json when
//! present, else the bundled 100-record slice in examples/data.
use bagel_core::refusal::{RefusalFilter, RefusalMode};
use std::time::Instant;

fn main() {
    let ws = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let full = ws.join("../shared/data/sft/sharegpt/sharegpt_v3_first2000.json");
    let path = if full.exists() { full } else { ws.join("examples/data/sharegpt/sharegpt_first100.json") };
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let texts: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["conversations"].as_array().cloned().unwrap_or_default())
        .filter(|t| t["from"] == "gpt")
        .filter_map(|t| t["value"].as_str().map(str::to_string))
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    println!("{} gpt turns, {:.1} MB from {}", texts.len(), bytes as f64 / 1e6, path.display());
    println!("{:<10} {:>10} {:>10} {:>8}", "mode", "seconds", "MB/s", "hits");
    for mode in [RefusalMode::Intended, RefusalMode::Compat] {
        let f = RefusalFilter::new(mode);
        let t = Instant::now();
        let hits = texts.iter().filter(|s| f.is_refusal(s)).count();
        let s = t.elapsed().as_secs_f64();
        println!("{:<10} {:>10.3} {:>10.1} {:>8}", format!("{mode:?}"), s, bytes as f64 / 1e6 / s, hits);
    }
}
