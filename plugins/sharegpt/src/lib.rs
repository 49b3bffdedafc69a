//! `sharegpt` source (SOURCES.md §6.1, suggested plugin in the slimorca/capybara style).
//! Input rows are `{id, conversations: [{from, value}]}`. Rules, applied in this order
//! (each drop is reported with the reason in backticks):
//! 1. No turns at all: `empty conversation`.
//! 2. A leading `system` turn is dropped when its value is empty (whitespace only counts as
//!    empty); a non-empty one is kept as the system turn.
//! 3. The first non-system turn must be `human`: `first turn is not human`.
//! 4. From there on roles must alternate strictly human, gpt, human, … (any other role, or
//!    a later `system`, breaks it): `roles do not alternate`.
//! 5. Every value must be non-empty (whitespace only counts as empty): `empty value`.
//! 6. A trailing `human` turn is dropped; at least one human → gpt pair must remain:
//!    `no human/gpt pair`.
//! 7. Refusal filter (host `has_refusal`) on each gpt value: reported as a refusal.
//!
//! Values are kept byte for byte. Key = the human values joined with `\n`, mode
//! check+add. Label `sharegpt`.
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::text::py_strip;
use bagel_plugin_sdk::*;

/// Plugin state (none: the source is a pure row-by-row conversion).
pub struct ShareGpt;

impl Source for ShareGpt {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "sharegpt".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 2,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec {
                name: "data".into(),
                dataset: "anon8231489123/ShareGPT_Vicuna_unfiltered".into(),
                patterns: vec!["ShareGPT_V3_unfiltered_cleaned_split.json".into(), "sharegpt_*.json".into()],
                format: InputFormat::Auto,
            }],
            params: vec![],
            description: "ShareGPT (ChatGPT) multi-turn conversations, strictly alternating, refusals removed".into(),
        }
    }

    fn configure(_params: &Params) -> Result<Self, PluginError> {
        Ok(ShareGpt)
    }

    fn push_rows(
        &mut self,
        _input: &str,
        first_row: u64,
        rows: &[String],
        out: &mut Output,
    ) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match convert(text) {
                Err(msg) => out.invalid(row, msg),
                Ok(Err(why)) => out.filtered(row, why),
                Ok(Ok(turns)) => {
                    if turns
                        .iter()
                        .any(|t| t.from == Role::Gpt && has_refusal(&t.value))
                    {
                        out.refused(row);
                        continue;
                    }
                    let humans: Vec<&str> = turns
                        .iter()
                        .filter(|t| t.from == Role::Human)
                        .map(|t| t.value.as_str())
                        .collect();
                    let key = humans.join("\n");
                    out.conversation(row, "sharegpt", key, DedupMode::CheckAdd, turns);
                }
            }
        }
        Ok(())
    }
}

/// Apply rules 1–6 to one row. `Err` = invalid row; `Ok(Err(reason))` = filtered;
/// `Ok(Ok(turns))` = a clean conversation (refusals not yet checked).
pub fn convert(text: &str) -> Result<Result<Vec<Turn>, &'static str>, String> {
    let row = Row::parse(text)?;
    let raw = row.array("conversations")?;
    let mut turns: Vec<(&str, &str)> = Vec::with_capacity(raw.len());
    for (k, t) in raw.iter().enumerate() {
        let from = t
            .get("from")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("conversations[{k}].from is missing or not a string"))?;
        let value = t
            .get("value")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("conversations[{k}].value is missing or not a string"))?;
        turns.push((from, value));
    }
    if turns.is_empty() {
        return Ok(Err("empty conversation"));
    }
    if turns[0].0 == "system" && py_strip(turns[0].1).is_empty() {
        turns.remove(0);
    }
    let start = usize::from(turns.first().is_some_and(|t| t.0 == "system"));
    if turns.get(start).is_none_or(|t| t.0 != "human") {
        return Ok(Err("first turn is not human"));
    }
    for (k, (from, _)) in turns[start..].iter().enumerate() {
        if *from != if k % 2 == 0 { "human" } else { "gpt" } {
            return Ok(Err("roles do not alternate"));
        }
    }
    if turns.iter().any(|(_, v)| py_strip(v).is_empty()) {
        return Ok(Err("empty value"));
    }
    if turns.last().is_some_and(|t| t.0 == "human") {
        turns.pop();
    }
    if turns.len() - start < 2 {
        return Ok(Err("no human/gpt pair"));
    }
    Ok(Ok(turns
        .into_iter()
        .map(|(from, value)| {
            let role = match from {
                "system" => Role::System,
                "human" => Role::Human,
                _ => Role::Gpt,
            };
            Turn::new(role, value)
        })
        .collect()))
}

export_source!(ShareGpt);
