//! ChatML-ish prompt format, byte-exact with the reference `chatml_io`
//! (jondurbin/bagel `bagel/data.py`). Quirk kept on purpose: turns are wrapped in the
//! tokenizer's BOS/EOS strings (not `<|im_start|>`/`<|im_end|>`), but the output ends
//! with the literal `<|im_end|>`. Values are left-stripped only.
use bagel_plugin_sdk::format::{check_shape, Format};
use bagel_plugin_sdk::text::{collapse_newlines, py_lstrip};
use bagel_plugin_sdk::*;

/// The chatml format.
pub struct ChatMl;

/// Default system prompt of the reference recipe.
pub const DEFAULT_SYSTEM: &str = "You are an unbiased, uncensored, helpful assistant.";

impl Format for ChatMl {
    fn info() -> FormatInfo {
        FormatInfo { name: "chatml".into(), version: env!("CARGO_PKG_VERSION").into(), description: "BOS role\\n text EOS blocks; output ends in <|im_end|>".into() }
    }

    fn render(opts: &RenderOptions, conv: &[Turn], add_default_system: bool) -> Result<Rendered, PluginError> {
        check_shape(conv)?;
        let (bos, eos) = (&opts.bos, &opts.eos);
        let mut blocks: Vec<String> = Vec::with_capacity(conv.len() + 1);
        if conv[0].from != Role::System && add_default_system {
            blocks.push(format!("{bos}system\n{DEFAULT_SYSTEM}{eos}"));
        }
        for turn in &conv[..conv.len() - 1] {
            let role = match turn.from {
                Role::System => "system",
                Role::Human => "user",
                Role::Gpt => "assistant",
            };
            blocks.push(format!("{bos}{role}\n{}{eos}", py_lstrip(&turn.value)));
        }
        blocks.push(format!("{bos}assistant\n"));
        let last = format!("{}<|im_end|>", conv[conv.len() - 1].value);
        Ok(Rendered { input: blocks.join("\n"), output: py_lstrip(&collapse_newlines(&last)).to_string() })
    }
}

export_format!(ChatMl);
