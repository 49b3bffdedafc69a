//! Alpaca-style prompt format, byte-exact with the reference `alpaca_io`
//! (jondurbin/bagel `bagel/data.py`). It has no default system prompt (the coin is
//! ignored); a system turn goes into the first `### Instruction:` block; every value is
//! stripped; the output is `collapse_newlines(response).lstrip()`.
use bagel_plugin_sdk::format::{check_shape, Format};
use bagel_plugin_sdk::text::{collapse_newlines_into, py_lstrip, py_strip};
use bagel_plugin_sdk::*;

/// The alpaca format.
pub struct Alpaca;

const PREAMBLE: &str = "Below is an instruction that describes a task.  Write a response that appropriately completes the request.";

impl Format for Alpaca {
    fn info() -> FormatInfo {
        FormatInfo { name: "alpaca".into(), version: env!("CARGO_PKG_VERSION").into(), description: "### Instruction / ### Response (no default system prompt)".into() }
    }

    render_with!(write);
}

/// The format, on owned or borrowed turns: appends to `input` and `output`.
fn write<T: AsTurn>(_opts: &RenderOptions, conv: &[T], _add_default_system: bool, input: &mut String, output: &mut String) -> Result<(), PluginError> {
    check_shape(conv)?;
    let has_system = conv[0].role() == Role::System;
    // Blocks joined by a blank line, written straight into one string.
    input.reserve(PREAMBLE.len() + conv.iter().map(|t| t.text().len() + 24).sum::<usize>());
    input.push_str(PREAMBLE);
    for (idx, turn) in conv[..conv.len() - 1].iter().enumerate() {
        input.push_str("\n\n");
        input.push_str(match turn.role() {
            Role::Human if has_system && idx == 1 => "",
            Role::System | Role::Human => "### Instruction: \n",
            Role::Gpt => "### Response:\n",
        });
        input.push_str(py_strip(turn.text()));
    }
    input.push_str("\n\n### Response:");
    // lstrip(collapse(x)) == collapse(lstrip(x)): collapsing maps whitespace runs to
    // whitespace, so the leading run is removed either way.
    collapse_newlines_into(py_lstrip(conv[conv.len() - 1].text()), output);
    Ok(())
}

export_format!(Alpaca);
