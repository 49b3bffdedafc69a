//! `hh_rlhf` DPO source (SOURCES.md §6.1, suggested plugin). Rows are `{chosen, rejected}`,
//! each a full transcript `\n\nHuman: …\n\nAssistant: …`. With M = `\n\nAssistant:`:
//! - `prompt` = chosen up to (not including) its **last** M, leading newlines removed;
//!   `chosen` / `rejected` = the text after the last M of each transcript, stripped.
//! - Dropped (reason in backticks): no M in chosen (`no assistant turn`); rejected's text
//!   before its last M differs from chosen's (`prompts differ`); a reply is empty after
//!   stripping (`empty reply`); the replies are equal (`replies are equal`).
//! - `single_turn_only` (default false): keep only prompts with one `Human:` turn
//!   (others: `multi-turn prompt`), and use the bare human text, without `Human: `.
//! - Key = the prompt, mode none (DPO ignores known keys). Label `hh_rlhf`. No SFT
//!   conversation is attached.
use bagel_plugin_sdk::source::Source;
use bagel_plugin_sdk::text::py_strip;
use bagel_plugin_sdk::*;

/// The separator before each assistant reply.
pub const ASSISTANT: &str = "\n\nAssistant:";

/// Plugin state.
pub struct HhRlhf {
    single_turn_only: bool,
}

impl Source for HhRlhf {
    fn info() -> SourceInfo {
        SourceInfo {
            name: "hh_rlhf".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            priority: 2,
            kinds: vec![RecordKind::Dpo],
            inputs: vec![InputSpec {
                name: "data".into(),
                dataset: "Anthropic/hh-rlhf".into(),
                patterns: vec!["{subset}/{split}.jsonl.gz".into(), "{subset}_{split}.jsonl.gz".into()],
                format: InputFormat::Auto,
            }],
            params: vec![
                ParamSpec { name: "subset".into(), default: "\"harmless-base\"".into(), description: "data directory (harmless-base, helpful-base, …)".into() },
                ParamSpec { name: "split".into(), default: "\"test\"".into(), description: "train or test".into() },
                ParamSpec { name: "single_turn_only".into(), default: "false".into(), description: "keep only one-turn prompts, as bare human text".into() },
            ],
            description: "Anthropic HH-RLHF preference pairs (last assistant reply chosen vs rejected)".into(),
        }
    }

    fn configure(params: &Params) -> Result<Self, PluginError> {
        params.str("subset").map_err(PluginError::BadParam)?;
        params.str("split").map_err(PluginError::BadParam)?;
        Ok(HhRlhf { single_turn_only: params.bool("single_turn_only").map_err(PluginError::BadParam)? })
    }

    fn push_rows(&mut self, _input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError> {
        for (i, text) in rows.iter().enumerate() {
            let row = first_row + i as u64;
            let parsed = Row::parse(text).and_then(|r| Ok((r.str("chosen")?.to_string(), r.str("rejected")?.to_string())));
            match parsed {
                Err(msg) => out.invalid(row, msg),
                Ok((chosen, rejected)) => match pair(&chosen, &rejected, self.single_turn_only) {
                    Ok(p) => out.dpo(row, "hh_rlhf", p.prompt.clone(), DedupMode::None, p),
                    Err(why) => out.filtered(row, why),
                },
            }
        }
        Ok(())
    }
}

/// Build the DPO pair from two transcripts, or say why the row is dropped.
pub fn pair(chosen: &str, rejected: &str, single_turn_only: bool) -> Result<DpoPair, &'static str> {
    let c = chosen.rfind(ASSISTANT).ok_or("no assistant turn")?;
    let (prefix, reply) = (&chosen[..c], &chosen[c + ASSISTANT.len()..]);
    let r = rejected.rfind(ASSISTANT).filter(|&r| &rejected[..r] == prefix).ok_or("prompts differ")?;
    let (chosen, rejected) = (py_strip(reply), py_strip(&rejected[r + ASSISTANT.len()..]));
    if chosen.is_empty() || rejected.is_empty() {
        return Err("empty reply");
    }
    if chosen == rejected {
        return Err("replies are equal");
    }
    let mut prompt = prefix.trim_start_matches('\n');
    if single_turn_only {
        let humans = format!("\n\n{prompt}").matches("\n\nHuman:").count();
        match prompt.strip_prefix("Human:") {
            Some(bare) if humans == 1 => prompt = bare.strip_prefix(' ').unwrap_or(bare),
            _ => return Err("multi-turn prompt"),
        }
    }
    Ok(DpoPair { prompt: prompt.to_string(), chosen: chosen.to_string(), rejected: rejected.to_string(), conversation: None })
}

export_source!(HhRlhf);
