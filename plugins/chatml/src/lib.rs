//! ChatML-ish prompt format, byte-exact with the reference `chatml_io`
//! (jondurbin/bagel `bagel/data.py`). Quirk kept on purpose: turns are wrapped in the
//! tokenizer's BOS/EOS strings (not `<|im_start|>`/`<|im_end|>`), but the output ends
//! with the literal `<|im_end|>`. Values are left-stripped only.
use bagel_plugin_sdk::format::{check_shape, Format};
use bagel_plugin_sdk::text::{collapse_newlines_into, py_lstrip};
use bagel_plugin_sdk::*;

/// The chatml format.
pub struct ChatMl;

/// Default system prompt of the reference recipe.
pub const DEFAULT_SYSTEM: &str = "You are an unbiased, uncensored, helpful assistant.";

impl Format for ChatMl {
    fn info() -> FormatInfo {
        FormatInfo { name: "chatml".into(), version: env!("CARGO_PKG_VERSION").into(), description: "BOS role\\n text EOS blocks; output ends in <|im_end|>".into() }
    }

    render_with!(write);
}

/// The format, on owned or borrowed turns: appends to `input` and `output`.
fn write<T: AsTurn>(opts: &RenderOptions, conv: &[T], add_default_system: bool, input: &mut String, output: &mut String) -> Result<(), PluginError> {
    check_shape(conv)?;
    let (bos, eos) = (&opts.bos, &opts.eos);
    // Blocks joined by "\n", written straight into one string.
    input.reserve(DEFAULT_SYSTEM.len() + conv.iter().map(|t| t.text().len() + 2 * (bos.len() + eos.len()) + 12).sum::<usize>());
    if conv[0].role() != Role::System && add_default_system {
        for p in [bos.as_str(), "system\n", DEFAULT_SYSTEM, eos, "\n"] {
            input.push_str(p);
        }
    }
    for turn in &conv[..conv.len() - 1] {
        let role = match turn.role() {
            Role::System => "system\n",
            Role::Human => "user\n",
            Role::Gpt => "assistant\n",
        };
        for p in [bos.as_str(), role, py_lstrip(turn.text()), eos, "\n"] {
            input.push_str(p);
        }
    }
    input.push_str(bos);
    input.push_str("assistant\n");
    // The reference appends "<|im_end|>" and then collapses newlines and lstrips; the
    // suffix starts with a non-space, so this equals collapse(lstrip(last)) + suffix.
    let last = py_lstrip(conv[conv.len() - 1].text());
    output.reserve(last.len() + "<|im_end|>".len());
    collapse_newlines_into(last, output);
    output.push_str("<|im_end|>");
    Ok(())
}

export_format!(ChatMl);
