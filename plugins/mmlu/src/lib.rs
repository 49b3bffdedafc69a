//! `mmlu` source (SOURCES.md §4 "mmlu", §6.1).
//!
//! - Build: the question, then `\n`, then the lines `<letter>. <choice>` (letters `A`–`G`)
//!   joined with `\n`; the answer is `<letter> <choice text>` (`B 1`). Coin (p = `coin_p`,
//!   true when r ≤ p, seeded `rng()`): put `Answer with only the letter of the answer.\n`
//!   *before* the question and answer with the letter alone.
//! - Filter: rows with more than 7 choices are dropped (`more than 7 choices`).
//! - Sampling (the reference takes a seeded shuffle, first 50,000): rows are held until
//!   `finish()`. When there are at most `max_rows` of them they are emitted in input order,
//!   unshuffled. Otherwise they are permuted with a Fisher–Yates shuffle driven by the
//!   plugin's seeded `rng()` (for i from n−1 down to 1, swap i with a uniform j in 0..=i) and
//!   the first `max_rows` are emitted in that order; the others are reported as dropped
//!   (`not sampled`). As in the reference, sampling happens before the choice-count filter,
//!   and coins are drawn after the shuffle, in emission order.
//! - Key: the final question (depends on the coin), mode check+add. Label `mmlu`.
//! - Rows may be flat `{question, choices, answer}` or wrapped as `{train: {…}}` (the layout
//!   of the hub's `auxiliary_train` config).
use bagel_plugin_sdk::rand::{rngs::SmallRng, Rng};
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::*;

/// The prefix the reference puts before the question when the coin comes up true.
pub const LETTER_ONLY: &str = "Answer with only the letter of the answer.\n";

/// Choice letters; rows with more choices than letters are skipped.
pub const LETTERS: [char; 7] = ['A', 'B', 'C', 'D', 'E', 'F', 'G'];

/// One parsed row, held until `finish()`.
struct Item {
    row: u64,
    question: String,
    choices: Vec<String>,
    answer: usize,
}

/// Plugin state.
pub struct Mmlu {
    rng: SmallRng,
    coin_p: f64,
    max_rows: u64,
    items: Vec<Item>,
}

impl Source for Mmlu {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "mmlu".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 3,
            kinds: vec![RecordKind::Sft],
            inputs: vec![InputSpec {
                name: "data".into(),
                dataset: "cais/mmlu".into(),
                patterns: vec!["all/{split}-*.parquet".into(), "{split}.jsonl".into()],
                format: InputFormat::Auto,
            }],
            params: vec![
                ParamSpec { name: "split".into(), default: "\"auxiliary_train\"".into(), description: "dataset split (config `all`)".into() },
                ParamSpec { name: "max_rows".into(), default: "50000".into(), description: "sample size: seeded shuffle, first N (no shuffle when N ≥ rows)".into() },
                ParamSpec { name: "coin_p".into(), default: "0.5".into(), description: "probability of the letter-only form".into() },
            ],
            description: "MMLU-style multiple-choice questions (auxiliary_train by default)".into(),
        }
    }

    fn configure(params: &Params) -> Result<Self, PluginError> {
        params.str("split").map_err(PluginError::BadParam)?;
        Ok(Mmlu {
            rng: rng(),
            coin_p: params.f64("coin_p").map_err(PluginError::BadParam)?,
            max_rows: params.u64("max_rows").map_err(PluginError::BadParam)?,
            items: Vec::new(),
        })
    }

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            match parse(text) {
                Ok((question, choices, answer)) => self.items.push(Item { row, question, choices, answer }),
                Err(msg) => out.invalid(row, msg),
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Output) -> Result<(), PluginError> {
        let mut items = std::mem::take(&mut self.items);
        let n = items.len();
        let keep = usize::try_from(self.max_rows).unwrap_or(usize::MAX).min(n);
        if keep < n {
            for i in (1..n).rev() {
                let j = self.rng.random_range(0..=i);
                items.swap(i, j);
            }
            let mut unsampled: Vec<u64> = items[keep..].iter().map(|it| it.row).collect();
            unsampled.sort_unstable();
            for row in unsampled {
                out.filtered(row, "not sampled");
            }
            items.truncate(keep);
        }
        for it in items {
            if it.choices.len() > LETTERS.len() {
                out.filtered(it.row, "more than 7 choices");
                continue;
            }
            let lines: Vec<String> = it.choices.iter().zip(LETTERS).map(|(c, l)| format!("{l}. {c}")).collect();
            let question = format!("{}\n{}", it.question, lines.join("\n"));
            let letter = LETTERS[it.answer];
            let coin: f64 = self.rng.random();
            let (question, answer) = if coin <= self.coin_p {
                (format!("{LETTER_ONLY}{question}"), letter.to_string())
            } else {
                (question, format!("{letter} {}", it.choices[it.answer]))
            };
            let conv = as_conversation(&question, &answer, None);
            out.conversation(it.row, "mmlu", question, DedupMode::CheckAdd, conv);
        }
        Ok(())
    }
}

/// Parse one row into (question, choices, answer index). The answer must index a choice.
fn parse(text: &str) -> Result<(String, Vec<String>, usize), String> {
    let row = Row::parse(text)?;
    let p = if row.get("question").is_none() && row.get("train").is_some_and(|v| v.is_object()) { "train." } else { "" };
    let question = row.str(&format!("{p}question"))?;
    let choices = row.str_list(&format!("{p}choices"))?;
    let answer = row.int(&format!("{p}answer"))?;
    let idx = usize::try_from(answer).ok().filter(|&a| a < choices.len());
    let idx = idx.ok_or_else(|| format!("answer {answer} is out of range for {} choices", choices.len()))?;
    Ok((question.to_string(), choices.into_iter().map(str::to_string).collect(), idx))
}

export_source!(Mmlu);
