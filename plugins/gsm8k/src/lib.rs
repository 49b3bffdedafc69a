//! `gsm8k` source (SOURCES.md §6.1, suggested plugin in the mathinstruct style):
//! `as_conversation(question, answer')`, where `answer'` is the answer with every
//! `<<…>>` calculator annotation removed (parameter `strip_calculator`, default true). The
//! final `#### N` line is kept. No coin. Key = the question, mode check+add. Label `gsm8k`.
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// Plugin state.
pub struct Gsm8k {
    strip_calculator: bool,
}

impl Source for Gsm8k {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "gsm8k".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 3,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec {
                name: "data".into(),
                dataset: "openai/gsm8k".into(),
                patterns: vec!["main/{split}-*.parquet".into(), "{split}.jsonl".into()],
                format: InputFormat::Auto,
            }],
            params: vec![
                ParamSpec { name: "split".into(), default: "\"train\"".into(), description: "dataset split (config `main`)".into() },
                ParamSpec { name: "strip_calculator".into(), default: "true".into(), description: "remove `<<expr=value>>` calculator annotations from answers".into() },
            ],
            description: "GSM8K grade-school math word problems with worked answers".into(),
        }
    }

    fn configure(params: &Params) -> Result<Self, PluginError> {
        params.str("split").map_err(PluginError::BadParam)?;
        Ok(Gsm8k { strip_calculator: params.bool("strip_calculator").map_err(PluginError::BadParam)? })
    }

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            let parsed = Row::parse(text).and_then(|r| Ok((r.str("question")?.to_string(), r.str("answer")?.to_string())));
            match parsed {
                Ok((question, answer)) => {
                    let answer = if self.strip_calculator { strip_annotations(&answer) } else { answer };
                    let conv = as_conversation(&question, &answer, None);
                    out.conversation(row, "gsm8k", question, DedupMode::CheckAdd, conv);
                }
                Err(msg) => out.invalid(row, msg),
            }
        }
        Ok(())
    }
}

/// Remove every `<<…>>` span, each running from a `<<` to the next `>>` (shortest match).
/// An unclosed `<<` and everything after it are kept as they are.
pub fn strip_annotations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<<") {
        match rest[start + 2..].find(">>") {
            Some(len) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + 2 + len + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

export_source!(Gsm8k);
