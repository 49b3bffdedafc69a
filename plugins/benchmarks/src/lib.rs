//! `benchmarks`: a source plugin used in the **benchmark role** (a recipe's
//! `[[benchmark]]` entries). It emits one plain-text record per text to index for
//! decontamination (SOURCES.md §6.2): the label is the benchmark name (parameter `label`,
//! default the `set`), the key is the benchmark item id, the mode is `none`.
//!
//! Parameter `set` picks how rows are read:
//!
//! | set | file (../shared/data/benchmarks) | text(s) | item id |
//! |---|---|---|---|
//! | `alpaca_eval` | alpaca_eval/alpaca_eval.json | `instruction` | `alpaca_eval/<row>` |
//! | `mt_bench` | mt_bench/question.jsonl | `turns[0]` | `mt_bench/<question_id>` |
//! | `mmlu` | mmlu/test.jsonl | `question` | `mmlu/<subject>/<row>` |
//! | `truthfulqa` | truthfulqa/generation_validation.jsonl | `question` | `truthfulqa/<row>` |
//! | `gsm8k` | gsm8k/test.jsonl | `question` | `gsm8k/<row>` |
//! | `arc_challenge` | arc_challenge/test.jsonl | stem + `<label>. <text>` lines; stem + `\n` + correct text | `<id>#choices`, `<id>#answer` |
//! | `humaneval` | humaneval/HumanEval.jsonl.gz | `prompt` | `<task_id>` |
//! | `winogrande` | llm_foundry/winogrande.jsonl | gold-filled sentence; blank form (`winogrande_blank`) | `winogrande/<row>#gold`, `#blank` |
//! | `boolq` | llm_foundry/boolq.jsonl | passage `\n` question | `boolq/<row>` |
//! | `piqa` | llm_foundry/piqa.jsonl | goal, `A. …`, `B. …` lines | `piqa/<row>` |
//! | `openbookqa` | llm_foundry/openbook_qa.jsonl | stem, `A. …`–`D. …` lines | `openbookqa/<row>` |
//!
//! A user adds a benchmark without rebuilding the host: any source plugin listed under
//! `[[benchmark]]` works (its text records, or the first human turn of its conversations,
//! are indexed).
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// The sets this plugin reads.
pub const SETS: [&str; 11] = ["alpaca_eval", "mt_bench", "mmlu", "truthfulqa", "gsm8k", "arc_challenge", "humaneval", "winogrande", "boolq", "piqa", "openbookqa"];

/// Plugin state.
pub struct Benchmarks {
    set: String,
    label: String,
    winogrande_blank: bool,
}

impl Source for Benchmarks {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "benchmarks".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 0,
            kinds: vec![RecordKind::Text],
            inputs: vec![InputSpec { name: "data".into(), dataset: "bagel/benchmarks".into(), patterns: vec!["{set}/*".into()], format: InputFormat::Auto }],
            params: vec![
                ParamSpec { name: "set".into(), default: "\"\"".into(), description: format!("which benchmark: {}", SETS.join(", ")) },
                ParamSpec { name: "label".into(), default: "\"\"".into(), description: "benchmark name in reports (default: the set)".into() },
                ParamSpec { name: "winogrande_blank".into(), default: "true".into(), description: "winogrande: also index the `_` blank form".into() },
            ],
            description: "benchmark test items (texts to index for decontamination)".into(),
        }
    }

    fn configure(params: &Params) -> Result<Self, PluginError> {
        let set = params.str("set").map_err(PluginError::BadParam)?;
        if !SETS.contains(&set.as_str()) {
            return Err(PluginError::BadParam(format!("set must be one of {}, got {set:?}", SETS.join(", "))));
        }
        let label = params.str("label").map_err(PluginError::BadParam)?;
        let label = if label.is_empty() { set.clone() } else { label };
        Ok(Benchmarks { set, label, winogrande_blank: params.bool("winogrande_blank").map_err(PluginError::BadParam)? })
    }

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match self.items(row, text) {
                Ok(items) => {
                    for (id, t) in items {
                        out.text(row, &self.label, id, DedupMode::None, t);
                    }
                }
                Err(msg) => out.invalid(row, msg),
            }
        }
        Ok(())
    }
}

impl Benchmarks {
    /// (item id, text) pairs of one row.
    pub fn items(&self, row: u64, text: &str) -> Result<Vec<(String, String)>, String> {
        let set = self.set.as_str();
        if set == "arc_challenge" {
            let (choices, _, answer) = multiple_choice(text, "question")?;
            let r = Row::parse(text)?;
            let id = r.str("id")?;
            let stem = r.str("question")?;
            return Ok(vec![(format!("{id}#choices"), choices), (format!("{id}#answer"), format!("{stem}\n{answer}"))]);
        }
        let r = Row::parse(text)?;
        Ok(match set {
            "alpaca_eval" => vec![(format!("alpaca_eval/{row}"), r.str("instruction")?.to_string())],
            "mt_bench" => {
                let id = r.get("question_id").map(|v| v.to_string()).unwrap_or_else(|| row.to_string());
                let turns = r.str_list("turns")?;
                let first = turns.first().ok_or("turns is empty")?;
                vec![(format!("mt_bench/{id}"), first.to_string())]
            }
            "mmlu" => vec![(format!("mmlu/{}/{row}", r.str("subject").unwrap_or("all")), r.str("question")?.to_string())],
            "truthfulqa" | "gsm8k" => vec![(format!("{set}/{row}"), r.str("question")?.to_string())],
            "humaneval" => vec![(r.str("task_id")?.to_string(), r.str("prompt")?.to_string())],
            "winogrande" => {
                let options = r.str_list("context_options")?;
                let cont = r.str("continuation")?;
                let gold = r.int("gold")?;
                let chosen = usize::try_from(gold).ok().and_then(|g| options.get(g)).ok_or_else(|| format!("gold {gold} is not an option index"))?;
                let mut v = vec![(format!("winogrande/{row}#gold"), format!("{chosen} {cont}"))];
                if self.winogrande_blank && options.len() >= 2 {
                    v.push((format!("winogrande/{row}#blank"), winogrande_blank(options[0], options[1], cont)));
                }
                v
            }
            "boolq" => {
                let q = r.str("query")?;
                let body = q.strip_prefix("Passage: ").unwrap_or(q);
                let (passage, question) = body.rsplit_once("\nQuestion: ").ok_or("query has no `\\nQuestion: `")?;
                vec![(format!("boolq/{row}"), format!("{passage}\n{question}"))]
            }
            "piqa" | "openbookqa" => {
                let q = r.str("query")?;
                let stem = if set == "piqa" { q.strip_prefix("Question: ").unwrap_or(q).trim_end_matches('\n') } else { q };
                let choices = r.str_list("choices")?;
                let lines: Vec<String> = choices.iter().enumerate().map(|(i, c)| format!("{}. {c}", (b'A' + i as u8) as char)).collect();
                vec![(format!("{set}/{row}"), format!("{stem}\n{}", lines.join("\n")))]
            }
            other => return Err(format!("unknown set {other:?}")),
        })
    }
}

/// Winogrande's blank form (SOURCES.md §6.2): the common prefix of the two options, cut
/// back to its last whitespace (kept), then `_`, a space and the continuation.
pub fn winogrande_blank(a: &str, b: &str, continuation: &str) -> String {
    let common: usize = a.char_indices().zip(b.chars()).take_while(|((_, x), y)| x == y).map(|((_, x), _)| x.len_utf8()).sum();
    let prefix = &a[..common];
    let cut = prefix.rfind(char::is_whitespace).map(|i| i + prefix[i..].chars().next().map(|c| c.len_utf8()).unwrap_or(1)).unwrap_or(0);
    format!("{}_ {continuation}", &prefix[..cut])
}

export_source!(Benchmarks);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(set: &str) -> Benchmarks {
        Benchmarks { set: set.into(), label: set.into(), winogrande_blank: true }
    }

    #[test]
    fn winogrande_gold_and_blank() {
        let row = r#"{"context_options": ["They were worried the wine would ruin the bed and the blanket, but the blanket", "They were worried the wine would ruin the bed and the blanket, but the bed"], "continuation": "was't ruined.", "gold": 1}"#;
        let items = plugin("winogrande").items(4, row).unwrap();
        assert_eq!(items[0], ("winogrande/4#gold".into(), "They were worried the wine would ruin the bed and the blanket, but the bed was't ruined.".into()));
        // The options share "b" after "the ": the cut goes back to the space.
        assert_eq!(items[1].1, "They were worried the wine would ruin the bed and the blanket, but the _ was't ruined.");
        assert_eq!(winogrande_blank("so Sarah", "so Maria", "won."), "so _ won.");
    }

    #[test]
    fn arc_challenge_two_renderings() {
        let row = r#"{"id": "X_1", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}"#;
        let items = plugin("arc_challenge").items(0, row).unwrap();
        assert_eq!(items, vec![("X_1#choices".to_string(), "Q?\nA. a\nB. b".to_string()), ("X_1#answer".to_string(), "Q?\nb".to_string())]);
    }

    #[test]
    fn llm_foundry_renderings() {
        let b = plugin("boolq").items(2, r#"{"query": "Passage: P p.\nQuestion: is it?", "choices": ["no", "yes"], "gold": 1}"#).unwrap();
        assert_eq!(b, vec![("boolq/2".to_string(), "P p.\nis it?".to_string())]);
        let p = plugin("piqa").items(0, r#"{"choices": ["x", "y"], "gold": 0, "query": "Question: How?\n"}"#).unwrap();
        assert_eq!(p[0].1, "How?\nA. x\nB. y");
        let o = plugin("openbookqa").items(0, r#"{"query": "Predators eat", "choices": ["a", "b", "c", "d"], "gold": 1}"#).unwrap();
        assert_eq!(o[0].1, "Predators eat\nA. a\nB. b\nC. c\nD. d");
        let m = plugin("mt_bench").items(0, r#"{"question_id": 81, "turns": ["first", "second"]}"#).unwrap();
        assert_eq!(m, vec![("mt_bench/81".to_string(), "first".to_string())]);
    }
}
