//! `self_instruct` source (SOURCES.md §6.1, suggested plugin): Self-Instruct's
//! user-oriented (human-evaluation) set, rows `{id, motivation_app, instruction,
//! instances: [{input, output}]}`. One record per instance: the instruction is the
//! instruction text, plus `\n` and the input when the input is non-empty; the response is
//! the output. Values are not stripped. Key = the final instruction (only 251 of the 252
//! instruction texts are distinct on their own), mode check+add. Label `self_instruct`.
//! `motivation_app` is not used. `instances` may also come column-wise, as
//! `{input: [...], output: [...]}` (the hub's `human_eval` layout).
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// Plugin state (none: the source is a pure row-by-row conversion).
pub struct SelfInstruct;

impl Source for SelfInstruct {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "self_instruct".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 2,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec {
                name: "data".into(),
                dataset: "yizhongw/self_instruct".into(),
                patterns: vec!["user_oriented_instructions.jsonl".into(), "human_eval/*.parquet".into()],
                format: InputFormat::Auto,
            }],
            params: vec![],
            description: "Self-Instruct user-oriented instructions (252 human-evaluation tasks; demo data)".into(),
        }
    }

    fn configure(_params: &Params) -> Result<Self, PluginError> {
        Ok(SelfInstruct)
    }

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match parse(text) {
                Err(msg) => out.invalid(row, msg),
                Ok((_, pairs)) if pairs.is_empty() => out.filtered(row, "no instances"),
                Ok((instruction, pairs)) => {
                    for (input, output) in pairs {
                        let instruction = if input.is_empty() { instruction.clone() } else { format!("{instruction}\n{input}") };
                        let conv = as_conversation(&instruction, &output, None);
                        out.conversation(row, "self_instruct", instruction, DedupMode::CheckAdd, conv);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parse one row into (instruction, [(input, output)]). A missing or null input is empty.
fn parse(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let row = Row::parse(text)?;
    let instruction = row.str("instruction")?.to_string();
    let pairs = if row.get("instances").is_some_and(|v| v.is_object()) {
        let inputs = row.str_list("instances.input")?;
        let outputs = row.str_list("instances.output")?;
        if inputs.len() != outputs.len() {
            return Err(format!("instances.input has {} items but instances.output has {}", inputs.len(), outputs.len()));
        }
        inputs.into_iter().zip(outputs).map(|(a, b)| (a.to_string(), b.to_string())).collect()
    } else {
        let mut pairs = Vec::new();
        for (k, inst) in row.array("instances")?.iter().enumerate() {
            let input = match inst.get("input") {
                None => "",
                Some(v) if v.is_null() => "",
                Some(v) => v.as_str().ok_or_else(|| format!("instances[{k}].input is not a string"))?,
            };
            let output = inst.get("output").and_then(|v| v.as_str()).ok_or_else(|| format!("instances[{k}].output is missing or not a string"))?;
            pairs.push((input.to_string(), output.to_string()));
        }
        pairs
    };
    Ok((instruction, pairs))
}

export_source!(SelfInstruct);
