//! Fixture: allocates 1 MiB blocks forever; the host's memory cap must stop it.
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// See the crate doc.
pub struct Fixture;

impl Source for Fixture {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "membomb".into(),
            version: "0.0.0".into(),
            priority: 9,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec { name: "data".into(), dataset: "fixture/membomb".into(), patterns: vec!["*.jsonl".into()], format: InputFormat::Jsonl }],
            params: vec![],
            description: "allocates 1 MiB blocks forever; the host's memory cap must stop it.".into(),
        }
    }
    fn configure(_p: &Params) -> Result<Self, PluginError> {
        Ok(Fixture)
    }
    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        let _ = (first_row, out);
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![rows.len() as u8 + 1; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export_source!(Fixture);
