//! Fixture: emits a conversation whose system turn is not first (malformed output).
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// See the crate doc.
pub struct Fixture;

impl Source for Fixture {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "malformed".into(),
            version: "0.0.0".into(),
            priority: 9,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec { name: "data".into(), dataset: "fixture/malformed".into(), patterns: vec!["*.jsonl".into()], format: InputFormat::Jsonl }],
            params: vec![],
            description: "emits a conversation whose system turn is not first (malformed output).".into(),
        }
    }
    fn configure(_p: &Params) -> Result<Self, PluginError> {
        Ok(Fixture)
    }
    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, _) in rows.iter().enumerate() {
            let turns = vec![Turn::new(Role::Human, "q"), Turn::new(Role::System, "late system"), Turn::new(Role::Gpt, "a")];
            out.conversation(first_row + i as u64, "malformed", format!("k{i}"), DedupMode::CheckAdd, turns);
        }
        Ok(())
    }
}

export_source!(Fixture);
