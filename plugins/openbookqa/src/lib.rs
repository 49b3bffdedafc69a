//! `openbookqa` source (SOURCES.md §4 "openbookqa", §6.1): identical to `ai2_arc` except
//! that the question comes from `question_stem`. The instruction is the stem, then one
//! `<label>. <text>` line per choice. Coin (p = `coin_p`, true when r ≤ p, seeded `rng()`):
//! append `\nOnly output the the letter of the correct answer.` (doubled "the" kept) and
//! answer with the key alone; otherwise answer `<key> <choice text>`, the text being that of
//! the *first* choice whose label equals the key (one train row repeats `D`). Key = the
//! final instruction, mode check+add. Label `openbookqa`.
use bagel_plugin_sdk::rand::{rngs::SmallRng, Rng};
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// The suffix the reference appends when the coin comes up true.
pub const LETTER_ONLY: &str = "\nOnly output the the letter of the correct answer.";

/// Plugin state.
pub struct OpenBookQa {
    rng: SmallRng,
    coin_p: f64,
}

impl Source for OpenBookQa {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "openbookqa".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 3,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec {
                name: "data".into(),
                dataset: "allenai/openbookqa".into(),
                patterns: vec!["{config}/{split}-*.parquet".into(), "{config}/{split}.jsonl".into()],
                format: InputFormat::Auto,
            }],
            params: vec![
                ParamSpec { name: "config".into(), default: "\"main\"".into(), description: "main or additional".into() },
                ParamSpec { name: "split".into(), default: "\"train\"".into(), description: "dataset split".into() },
                ParamSpec { name: "coin_p".into(), default: "0.5".into(), description: "probability of the letter-only form".into() },
            ],
            description: "OpenBookQA multiple-choice science questions".into(),
        }
    }

    fn configure(params: &Params) -> Result<Self, PluginError> {
        let config = params.str("config").map_err(PluginError::BadParam)?;
        if config != "main" && config != "additional" {
            return Err(PluginError::BadParam(format!("config must be main or additional, got {config:?}")));
        }
        params.str("split").map_err(PluginError::BadParam)?;
        Ok(OpenBookQa { rng: rng(), coin_p: params.f64("coin_p").map_err(PluginError::BadParam)? })
    }

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match multiple_choice(text, "question_stem") {
                Ok((instruction, key, answer_text)) => {
                    let coin: f64 = self.rng.random();
                    let (instruction, answer) = if coin <= self.coin_p {
                        (format!("{instruction}{LETTER_ONLY}"), key)
                    } else {
                        (instruction, format!("{key} {answer_text}"))
                    };
                    let conv = as_conversation(&instruction, &answer, None);
                    out.conversation(row, "openbookqa", instruction, DedupMode::CheckAdd, conv);
                }
                Err(msg) => out.invalid(row, msg),
            }
        }
        Ok(())
    }
}

export_source!(OpenBookQa);
