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
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;

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

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match convert(text) {
                Err(msg) => out.invalid(row, msg),
                Ok(Err(why)) => out.filtered(row, why),
                Ok(Ok(turns)) => {
                    if turns.iter().any(|t| t.from == Role::Gpt && has_refusal(&t.value)) {
                        out.refused(row);
                        continue;
                    }
                    let humans: Vec<&str> = turns.iter().filter(|t| t.from == Role::Human).map(|t| t.value.as_str()).collect();
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
    let mut turns = parse_turns(text)?;
    if turns.is_empty() {
        return Ok(Err("empty conversation"));
    }
    if turns[0].0 == "system" && py_strip(&turns[0].1).is_empty() {
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
            let role = match &*from {
                "system" => Role::System,
                "human" => Role::Human,
                _ => Role::Gpt,
            };
            Turn::new(role, value.into_owned())
        })
        .collect()))
}

// The typed fast path. Its types are deserialized by hand so that it accepts exactly what
// the `Row` reader (a `serde_json::Value`) accepts: JSON objects only (serde's derive also
// takes an array for a struct), every other field fully checked (numbers in range, `\u`
// escapes valid: serde's skipping checks neither), and a duplicate key is an error here
// (the `Row` reader keeps the last one, so such rows take the slow path).

/// A row: its `conversations`.
struct FastRow<'a> {
    conversations: Vec<FastTurn<'a>>,
}

/// One turn: `from` and `value`.
struct FastTurn<'a> {
    from: Cow<'a, str>,
    value: Cow<'a, str>,
}

/// A string, borrowed from the row text unless it holds escapes.
struct Text<'a>(Cow<'a, str>);

/// Any JSON value, checked as `serde_json::Value` would parse it, and not kept.
struct Checked;

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
                while a.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
                while a.next_key::<Text>()?.is_some() {
                    a.next_value::<Checked>()?;
                }
                Ok(Checked)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FastRow<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FastRow<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a row object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<FastRow<'de>, A::Error> {
                let mut conversations = None;
                while let Some(Text(key)) = a.next_key()? {
                    match &*key {
                        "conversations" if conversations.is_some() => {
                            return Err(de::Error::duplicate_field("conversations"))
                        }
                        "conversations" => conversations = Some(a.next_value()?),
                        _ => {
                            a.next_value::<Checked>()?;
                        }
                    }
                }
                let conversations =
                    conversations.ok_or_else(|| de::Error::missing_field("conversations"))?;
                Ok(FastRow { conversations })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FastTurn<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FastTurn<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a turn object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<FastTurn<'de>, A::Error> {
                let (mut from, mut value) = (None, None);
                while let Some(Text(key)) = a.next_key()? {
                    let slot = match &*key {
                        "from" => &mut from,
                        "value" => &mut value,
                        _ => {
                            a.next_value::<Checked>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom("duplicate field"));
                    }
                    *slot = Some(a.next_value::<Text>()?.0);
                }
                Ok(FastTurn {
                    from: from.ok_or_else(|| de::Error::missing_field("from"))?,
                    value: value.ok_or_else(|| de::Error::missing_field("value"))?,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// The row's `(from, value)` pairs. A well-formed row takes the typed fast path; anything
/// it rejects (a missing or non-string field, a duplicate key, invalid JSON) is read again
/// through [`Row`], which accepts what the format allows and words the error.
fn parse_turns(text: &str) -> Result<Vec<(Cow<'_, str>, Cow<'_, str>)>, String> {
    if let Ok(row) = serde_json::from_str::<FastRow>(text) {
        return Ok(row
            .conversations
            .into_iter()
            .map(|t| (t.from, t.value))
            .collect());
    }
    dynamic_turns(text)
}

/// The `(from, value)` pairs read through [`Row`] (the reference for the fast path).
fn dynamic_turns(text: &str) -> Result<Vec<(Cow<'_, str>, Cow<'_, str>)>, String> {
    let row = Row::parse(text)?;
    let raw = row.array("conversations")?;
    let mut turns = Vec::with_capacity(raw.len());
    for (k, t) in raw.iter().enumerate() {
        let from = t
            .get("from")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("conversations[{k}].from is missing or not a string"))?;
        let value = t
            .get("value")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("conversations[{k}].value is missing or not a string"))?;
        turns.push((Cow::Owned(from.to_string()), Cow::Owned(value.to_string())));
    }
    Ok(turns)
}

export_source!(ShareGpt);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_reads_what_the_row_reader_reads() {
        let rows = [
            // escapes (owned strings), unicode, extra fields before and after, nesting
            r#"{"id":"x","meta":{"a":[1,{"b":"}"}]},"conversations":[{"from":"human","value":"a\n\"b\" \u00e9\ud83d\ude00","x":1},{"value":"ok","from":"gpt"}],"z":null}"#,
            r#"{"conversations":[]}"#,
            // a duplicate key: the last one wins, as in the row reader
            r#"{"conversations":[{"from":"human","from":"gpt","value":"v"}]}"#,
            // errors are the row reader's words
            r#"{"conversations":[{"from":null,"value":"v"}]}"#,
            r#"{"conversations":[{"from":"human","value":7}]}"#,
            r#"{"conversations":null}"#,
            r#"{"id":1}"#,
            r#"[[{"from":"human","value":"v"}]]"#,
            r#"{"conversations":[{"from":"human","value":"v"}"#,
            // turns as arrays (serde's derive would read a struct from one)
            r#"{"conversations":[["human","hi"],["gpt","yo"]]}"#,
            // skipped fields are checked as the row reader checks them: numbers in range,
            // valid \u escapes, in the row and in a turn, in values and in keys
            r#"{"x":1e400,"conversations":[{"from":"human","value":"v"}]}"#,
            r#"{"conversations":[{"from":"human","value":"v","n":[-1e999]}]}"#,
            r#"{"x":"\ud800","conversations":[{"from":"human","value":"v"}]}"#,
            r#"{"conversations":[{"from":"human","value":"v","\udc00":1}]}"#,
            r#"{"conversations":[{"from":"human","value":"\ud800"}]}"#,
            r#"{"conversations":[{"from":"human","value":"v"}],"conversations":[]}"#,
            r#"{"conversations":[{"from":"human","value":"v"}],"big":18446744073709551616,"e":[1.5e300,true,null,{}]}"#,
        ];
        for text in rows {
            let owned = |r: Result<Vec<(Cow<str>, Cow<str>)>, String>| {
                r.map(|v| {
                    v.into_iter()
                        .map(|(a, b)| (a.into_owned(), b.into_owned()))
                        .collect::<Vec<_>>()
                })
            };
            assert_eq!(
                owned(parse_turns(text)),
                owned(dynamic_turns(text)),
                "{text}"
            );
        }
        let first = parse_turns(rows[0]).unwrap();
        assert_eq!(
            first,
            vec![
                (
                    Cow::Borrowed("human"),
                    Cow::Owned("a\n\"b\" é😀".to_string())
                ),
                (Cow::Borrowed("gpt"), Cow::Borrowed("ok"))
            ]
        );
        assert!(
            matches!(first[1].1, Cow::Borrowed(_)),
            "an unescaped value is borrowed"
        );
        assert_eq!(
            parse_turns(rows[2]).unwrap(),
            vec![(Cow::Borrowed("gpt"), Cow::Borrowed("v"))]
        );
        assert_eq!(
            parse_turns(rows[3]).unwrap_err(),
            "conversations[0].from is missing or not a string"
        );
    }
}
