use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// Question/answer rows `{"q": ..., "a": ...}` → one SFT conversation each.
pub struct MyQa;

impl Source for MyQa {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "my_qa".into(),
            version: "0.1.0".into(),
            priority: 2,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec { name: "data".into(), dataset: "me/my-qa".into(), patterns: vec!["*.jsonl".into()], format: InputFormat::Auto }],
            params: vec![],
            description: "my question/answer pairs".into(),
        }
    }
    fn configure(_params: &Params) -> Result<Self, PluginError> {
        Ok(MyQa)
    }
    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match Row::parse(text).and_then(|r| Ok((r.str("q")?.to_string(), r.str("a")?.to_string()))) {
                Ok((_, a)) if has_refusal(&a) => out.refused(row),
                Ok((q, a)) => out.conversation(row, "my_qa", q.clone(), DedupMode::CheckAdd, as_conversation(&q, &a, None)),
                Err(msg) => out.invalid(row, msg),
            }
        }
        Ok(())
    }
}

export_source!(MyQa);
