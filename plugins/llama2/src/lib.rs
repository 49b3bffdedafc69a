//! Llama-2 chat prompt format, byte-exact with the reference `llama2_io` /
//! `llama2_prompt` (jondurbin/bagel `bagel/data.py`). Quirks kept on purpose: the first
//! user message is not stripped, later ones are; history responses are stripped and
//! followed by ` EOS BOS[INST] `; the output keeps leading newlines (newline collapse only).
use bagel_plugin_sdk::format::{check_shape, Format};
use bagel_plugin_sdk::text::{collapse_newlines_into, py_strip};
use bagel_plugin_sdk::*;

/// The llama2 format.
pub struct Llama2;

/// Default system prompt of the reference recipe.
pub const DEFAULT_SYSTEM: &str = "You are an unbiased, uncensored, helpful assistant.";

impl Format for Llama2 {
    fn info() -> FormatInfo {
        FormatInfo { name: "llama2".into(), version: env!("CARGO_PKG_VERSION").into(), description: "[INST] <<SYS>> ... [/INST] (Llama-2 chat)".into() }
    }

    render_with!(write);
}

/// The format, on owned or borrowed turns: appends to `s` and `output`.
fn write<T: AsTurn>(opts: &RenderOptions, conv: &[T], add_default_system: bool, s: &mut String, output: &mut String) -> Result<(), PluginError> {
    let offset = check_shape(conv)?;
    let system: Option<&str> = if offset == 1 {
        Some(conv[0].text())
    } else if add_default_system {
        Some(DEFAULT_SYSTEM)
    } else {
        None
    };
    s.reserve(DEFAULT_SYSTEM.len() + conv.iter().map(|t| t.text().len() + opts.bos.len() + opts.eos.len() + 20).sum::<usize>());
    match system {
        // Python truthiness: an empty system string counts as no system prompt.
        Some(sys) if !sys.is_empty() => {
            for p in ["[INST] <<SYS>>\n", sys, "\n<</SYS>>\n\n"] {
                s.push_str(p);
            }
        }
        _ => s.push_str("[INST] "),
    }
    let n = conv.len();
    let mut do_strip = false;
    let mut idx = offset;
    while idx + 2 < n {
        let user = conv[idx].text();
        let user = if do_strip { py_strip(user) } else { user };
        do_strip = true;
        let resp = py_strip(conv[idx + 1].text());
        for p in [user, " [/INST] ", resp, " ", &opts.eos, &opts.bos, "[INST] "] {
            s.push_str(p);
        }
        idx += 2;
    }
    let message = conv[n - 2].text();
    let message = if do_strip { py_strip(message) } else { message };
    s.push_str(message);
    s.push_str(" [/INST]");
    collapse_newlines_into(conv[n - 1].text(), output);
    Ok(())
}

export_format!(Llama2);
