//! `ai2_arc` source (SOURCES.md §4 "ai2_arc", §6.1): the question, then one
//! `<label>. <text>` line per choice. Coin (p = `coin_p`, true when r ≤ p): append
//! `\nOnly output the the letter of the correct answer.` (doubled "the" kept) and answer
//! with the key alone; otherwise answer `<key> <choice text>`. Key = the final
//! instruction, mode check+add. Label `ai2_arc`.
use bagel_plugin_sdk::rand::{rngs::SmallRng, Rng};
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// The suffix the reference appends when the coin comes up true.
pub const LETTER_ONLY: &str = "\nOnly output the the letter of the correct answer.";

/// Plugin state.
pub struct Ai2Arc {
    rng: SmallRng,
    coin_p: f64,
}

impl Source for Ai2Arc {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "ai2_arc".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 3,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec {
                name: "data".into(),
                dataset: "allenai/ai2_arc".into(),
                patterns: vec!["{config}/{split}-*.parquet".into()],
                format: InputFormat::Auto,
            }],
            params: vec![
                ParamSpec { name: "config".into(), default: "\"ARC-Challenge\"".into(), description: "ARC-Easy or ARC-Challenge".into() },
                ParamSpec { name: "split".into(), default: "\"train\"".into(), description: "dataset split".into() },
                ParamSpec { name: "coin_p".into(), default: "0.5".into(), description: "probability of the letter-only form".into() },
            ],
            description: "AI2 Reasoning Challenge multiple-choice questions".into(),
        }
    }

    fn configure(params: &Params) -> Result<Self, PluginError> {
        let config = params.str("config").map_err(PluginError::BadParam)?;
        if config != "ARC-Easy" && config != "ARC-Challenge" {
            return Err(PluginError::BadParam(format!("config must be ARC-Easy or ARC-Challenge, got {config:?}")));
        }
        Ok(Ai2Arc { rng: rng(), coin_p: params.f64("coin_p").map_err(PluginError::BadParam)? })
    }

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match multiple_choice(text, "question") {
                Ok((instruction, key, answer_text)) => {
                    let coin: f64 = self.rng.random();
                    let (instruction, answer) = if coin <= self.coin_p {
                        (format!("{instruction}{LETTER_ONLY}"), key)
                    } else {
                        (instruction, format!("{key} {answer_text}"))
                    };
                    let id = instruction.clone();
                    out.conversation(row, "ai2_arc", id, DedupMode::CheckAdd, as_conversation(&instruction, &answer, None));
                }
                Err(msg) => out.invalid(row, msg),
            }
        }
        Ok(())
    }
}

export_source!(Ai2Arc);
