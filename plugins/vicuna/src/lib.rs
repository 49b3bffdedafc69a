//! Vicuna-style prompt format, byte-exact with the reference `vicuna_io`
//! (jondurbin/bagel `bagel/data.py`): `USER: ` / `ASSISTANT: ` lines; when there is no
//! system turn and the coin says so, the system line
//! `A chat between a user and an unbiased, uncensored assistant.` is added.
use bagel_plugin_sdk::format::{check_shape, Format};
use bagel_plugin_sdk::text::{collapse_newlines, py_lstrip, py_strip};
use bagel_plugin_sdk::*;

/// The vicuna format.
pub struct Vicuna;

/// Vicuna's default system prompt (differs from the other formats' on purpose).
pub const DEFAULT_SYSTEM: &str = "A chat between a user and an unbiased, uncensored assistant.";

impl Format for Vicuna {
    fn info() -> FormatInfo {
        FormatInfo { name: "vicuna".into(), version: env!("CARGO_PKG_VERSION").into(), description: "USER: / ASSISTANT: lines".into() }
    }

    fn render(_opts: &RenderOptions, conv: &[Turn], add_default_system: bool) -> Result<Rendered, PluginError> {
        check_shape(conv)?;
        // Lines joined by "\n", written straight into one string.
        let mut input = String::with_capacity(DEFAULT_SYSTEM.len() + conv.iter().map(|t| t.value.len() + 12).sum::<usize>());
        if conv[0].from != Role::System && add_default_system {
            input.push_str(DEFAULT_SYSTEM);
            input.push('\n');
        }
        for turn in &conv[..conv.len() - 1] {
            input.push_str(match turn.from {
                Role::System => "",
                Role::Human => "USER: ",
                Role::Gpt => "ASSISTANT: ",
            });
            input.push_str(py_strip(&turn.value));
            input.push('\n');
        }
        input.push_str("ASSISTANT: ");
        // lstrip(collapse(x)) == collapse(lstrip(x)) (see the alpaca plugin).
        let last = &conv[conv.len() - 1].value;
        Ok(Rendered { input, output: collapse_newlines(py_lstrip(last)) })
    }
}

export_format!(Vicuna);
