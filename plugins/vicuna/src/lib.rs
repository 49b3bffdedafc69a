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
        let mut lines: Vec<String> = Vec::with_capacity(conv.len() + 1);
        if conv[0].from != Role::System && add_default_system {
            lines.push(DEFAULT_SYSTEM.to_string());
        }
        for turn in &conv[..conv.len() - 1] {
            let v = py_strip(&turn.value);
            lines.push(match turn.from {
                Role::System => v.to_string(),
                Role::Human => format!("USER: {v}"),
                Role::Gpt => format!("ASSISTANT: {v}"),
            });
        }
        lines.push("ASSISTANT: ".into());
        let last = &conv[conv.len() - 1].value;
        Ok(Rendered { input: lines.join("\n"), output: py_lstrip(&collapse_newlines(last)).to_string() })
    }
}

export_format!(Vicuna);
