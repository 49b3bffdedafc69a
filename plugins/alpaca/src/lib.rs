//! Alpaca-style prompt format, byte-exact with the reference `alpaca_io`
//! (jondurbin/bagel `bagel/data.py`). It has no default system prompt (the coin is
//! ignored); a system turn goes into the first `### Instruction:` block; every value is
//! stripped; the output is `collapse_newlines(response).lstrip()`.
use bagel_plugin_sdk::format::{check_shape, Format};
use bagel_plugin_sdk::text::{collapse_newlines, py_lstrip, py_strip};
use bagel_plugin_sdk::*;

/// The alpaca format.
pub struct Alpaca;

const PREAMBLE: &str = "Below is an instruction that describes a task.  Write a response that appropriately completes the request.";

impl Format for Alpaca {
    fn info() -> FormatInfo {
        FormatInfo { name: "alpaca".into(), version: env!("CARGO_PKG_VERSION").into(), description: "### Instruction / ### Response (no default system prompt)".into() }
    }

    fn render(_opts: &RenderOptions, conv: &[Turn], _add_default_system: bool) -> Result<Rendered, PluginError> {
        check_shape(conv)?;
        let has_system = conv[0].from == Role::System;
        let mut parts: Vec<String> = vec![PREAMBLE.to_string()];
        for (idx, turn) in conv[..conv.len() - 1].iter().enumerate() {
            let v = py_strip(&turn.value);
            parts.push(match turn.from {
                Role::System => format!("### Instruction: \n{v}"),
                Role::Human if has_system && idx == 1 => v.to_string(),
                Role::Human => format!("### Instruction: \n{v}"),
                Role::Gpt => format!("### Response:\n{v}"),
            });
        }
        parts.push("### Response:".into());
        let last = &conv[conv.len() - 1].value;
        Ok(Rendered { input: parts.join("\n\n"), output: py_lstrip(&collapse_newlines(last)).to_string() })
    }
}

export_format!(Alpaca);
