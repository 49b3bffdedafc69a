//! Fixture: panics on the first batch (a trap).
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// See the crate doc.
pub struct Fixture;

impl Source for Fixture {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "panicker".into(),
            version: "0.0.0".into(),
            priority: 9,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec { name: "data".into(), dataset: "fixture/panicker".into(), patterns: vec!["*.jsonl".into()], format: InputFormat::Jsonl }],
            params: vec![],
            description: "panics on the first batch (a trap).".into(),
        }
    }
    fn configure(_p: &Params) -> Result<Self, PluginError> {
        Ok(Fixture)
    }
    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        let _ = (first_row, out);
        panic!("fixture panic after {} rows", rows.len());
    }
}

export_source!(Fixture);
