//! Vicuna-style prompt format, byte-exact with the reference `vicuna_io`
//! (jondurbin/bagel `bagel/data.py`): `USER: ` / `ASSISTANT: ` lines; when there is no
//! system turn and the coin says so, the system line
//! `A chat between a user and an unbiased, uncensored assistant.` is added.
use bagel_plugin_sdk::format::{check_shape, Format};
use bagel_plugin_sdk::text::{collapse_newlines_into, py_lstrip, py_strip};
use bagel_plugin_sdk::*;

/// The vicuna format.
pub struct Vicuna;

/// Vicuna's default system prompt (differs from the other formats' on purpose).
pub const DEFAULT_SYSTEM: &str = "A chat between a user and an unbiased, uncensored assistant.";

impl Format for Vicuna {
    fn info() -> FormatInfo {
        FormatInfo { name: "vicuna".into(), version: env!("CARGO_PKG_VERSION").into(), description: "USER: / ASSISTANT: lines".into() }
    }

    render_with!(write);
}

/// The format, on owned or borrowed turns: appends to `input` and `output`.
fn write<T: AsTurn>(_opts: &RenderOptions, conv: &[T], add_default_system: bool, input: &mut String, output: &mut String) -> Result<(), PluginError> {
    check_shape(conv)?;
    // Lines joined by "\n", written straight into one string.
    input.reserve(DEFAULT_SYSTEM.len() + conv.iter().map(|t| t.text().len() + 12).sum::<usize>());
    if conv[0].role() != Role::System && add_default_system {
        input.push_str(DEFAULT_SYSTEM);
        input.push('\n');
    }
    for turn in &conv[..conv.len() - 1] {
        input.push_str(match turn.role() {
            Role::System => "",
            Role::Human => "USER: ",
            Role::Gpt => "ASSISTANT: ",
        });
        input.push_str(py_strip(turn.text()));
        input.push('\n');
    }
    input.push_str("ASSISTANT: ");
    // lstrip(collapse(x)) == collapse(lstrip(x)) (see the alpaca plugin).
    collapse_newlines_into(py_lstrip(conv[conv.len() - 1].text()), output);
    Ok(())
}

export_format!(Vicuna);
