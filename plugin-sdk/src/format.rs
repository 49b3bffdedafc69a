//! Prompt-format plugins: implement [`Format`], then `export_format!(MyType);`.

use crate::model::*;

/// Generated WIT bindings for world `format-plugin` (not needed by plugin authors).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "format-plugin",
        pub_export_macro: true,
        export_macro_name: "export_format_world",
        default_bindings_module: "bagel_plugin_sdk::format::bindings",
    });
}

use bindings::bagel::plugin::types as wit;
use bindings::exports::bagel::plugin::format as fmt;

/// A prompt format: renders a conversation that ends in a gpt turn into
/// (input, output). Stateless; called in batches.
pub trait Format: 'static {
    /// Describe the format.
    fn info() -> FormatInfo;
    /// Render `conversation` (ends human → gpt; optional leading system turn).
    /// `add_default_system` is the host's seeded coin (p = 0.5 in the reference).
    fn render(opts: &RenderOptions, conversation: &[Turn], add_default_system: bool) -> Result<Rendered, PluginError>;
    /// Render a DPO prompt. Default (the reference `_dpo_format`): render the
    /// conversation `[human: prompt, gpt: collapse_newlines(chosen)]` and return its input.
    fn render_dpo_prompt(opts: &RenderOptions, prompt: &str, chosen: &str, add_default_system: bool) -> Result<String, PluginError> {
        let conv = [
            Turn::new(Role::Human, prompt),
            Turn::new(Role::Gpt, bagel_text::collapse_newlines(chosen)),
        ];
        Ok(Self::render(opts, &conv, add_default_system)?.input)
    }
}

/// Glue used by [`crate::export_format!`].
#[doc(hidden)]
pub mod glue {
    use super::*;

    fn err(e: PluginError) -> wit::PluginError {
        match e {
            PluginError::BadParam(s) => wit::PluginError::BadParam(s),
            PluginError::BadInput(s) => wit::PluginError::BadInput(s),
            PluginError::Internal(s) => wit::PluginError::Internal(s),
        }
    }

    fn opts(o: wit::RenderOptions) -> RenderOptions {
        RenderOptions { bos: o.bos, eos: o.eos }
    }

    pub fn info<T: Format>() -> wit::FormatInfo {
        let i = T::info();
        wit::FormatInfo { name: i.name, version: i.version, description: i.description }
    }

    /// Take the next `len` bytes of `text` from `*pos` (on character boundaries).
    fn take<'a>(text: &'a str, pos: &mut usize, len: u32) -> Option<&'a str> {
        let end = pos.checked_add(len as usize)?;
        let s = text.get(*pos..end)?;
        *pos = end;
        Some(s)
    }

    fn bad_batch(what: &str) -> wit::PluginError {
        wit::PluginError::Internal(format!("malformed packed batch from the host: {what}"))
    }

    /// Output under construction: texts back to back, two lengths per item, errors.
    struct Out {
        text: String,
        lens: Vec<u32>,
        errors: Vec<fmt::ItemError>,
    }

    impl Out {
        fn new(items: usize, text_hint: usize) -> Out {
            Out { text: String::with_capacity(text_hint), lens: Vec::with_capacity(2 * items), errors: Vec::new() }
        }
        fn ok(&mut self, input: &str, output: &str) {
            self.text.push_str(input);
            self.text.push_str(output);
            self.lens.extend([input.len() as u32, output.len() as u32]);
        }
        fn err(&mut self, item: usize, error: wit::PluginError) {
            self.lens.extend([0, 0]);
            self.errors.push(fmt::ItemError { item: item as u32, error });
        }
        fn done(self) -> fmt::RenderedBatch {
            fmt::RenderedBatch { text: self.text, lens: self.lens, errors: self.errors }
        }
    }

    /// Unpack a `render-batch`, render each conversation, pack the results. Turn
    /// buffers are reused across conversations, so a batch allocates per turn only
    /// when a value outgrows its buffer.
    pub fn render<T: Format>(o: wit::RenderOptions, batch: fmt::RenderBatch) -> fmt::RenderedBatch {
        let o = opts(o);
        let n = batch.conversation_turns.len();
        let mut out = Out::new(n, batch.text.len() + batch.text.len() / 2);
        // Check the whole batch before rendering anything, so that a broken batch fails
        // every item instead of shifting the text under the items after the break.
        let turns_total: Option<usize> = batch.conversation_turns.iter().try_fold(0usize, |a, &c| a.checked_add(c as usize));
        let problem = if batch.add_default_system.len() != n || batch.turn_roles.len() != batch.turn_lens.len() || turns_total != Some(batch.turn_lens.len()) {
            Some("list lengths disagree")
        } else if batch.turn_roles.iter().any(|&r| r > 2) {
            Some("a role index is not 0, 1 or 2")
        } else if !tiles(&batch.text, &batch.turn_lens) {
            Some("turn lengths do not tile the text on character boundaries")
        } else {
            None
        };
        if let Some(p) = problem {
            for item in 0..n {
                out.err(item, bad_batch(p));
            }
            return out.done();
        }
        // The batch is valid from here on: counts add up, roles are 0..=2, and the
        // lengths tile the text on character boundaries.
        let mut turns: Vec<Turn> = Vec::new();
        let (mut pos, mut next_turn) = (0usize, 0usize);
        for (item, (&count, &coin)) in batch.conversation_turns.iter().zip(&batch.add_default_system).enumerate() {
            let range = next_turn..next_turn + count as usize;
            next_turn = range.end;
            turns.truncate(range.len());
            for (i, (&len, &role)) in batch.turn_lens[range.clone()].iter().zip(&batch.turn_roles[range.clone()]).enumerate() {
                let from = [Role::System, Role::Human, Role::Gpt][role as usize];
                let value = take(&batch.text, &mut pos, len).expect("lengths checked above");
                if let Some(t) = turns.get_mut(i) {
                    t.from = from;
                    t.value.clear();
                    t.value.push_str(value);
                } else {
                    turns.push(Turn { from, value: value.to_string() });
                }
            }
            match T::render(&o, &turns[..range.len()], coin) {
                Ok(r) => out.ok(&r.input, &r.output),
                Err(e) => out.err(item, err(e)),
            }
        }
        out.done()
    }

    /// Whether `lens` cut `text` into consecutive pieces on character boundaries that
    /// use it up exactly.
    fn tiles(text: &str, lens: &[u32]) -> bool {
        let mut pos = 0usize;
        lens.iter().all(|&l| take(text, &mut pos, l).is_some()) && pos == text.len()
    }

    /// Unpack a `dpo-batch`, render each prompt, pack the results (no outputs).
    pub fn render_dpo_prompt<T: Format>(o: wit::RenderOptions, batch: fmt::DpoBatch) -> fmt::RenderedBatch {
        let o = opts(o);
        let n = batch.add_default_system.len();
        let mut out = Out::new(n, batch.text.len());
        if batch.lens.len() != 2 * n || !tiles(&batch.text, &batch.lens) {
            for item in 0..n {
                out.err(item, bad_batch("lengths do not tile the text on character boundaries"));
            }
            return out.done();
        }
        let mut pos = 0usize;
        for (item, (&coin, lens)) in batch.add_default_system.iter().zip(batch.lens.chunks_exact(2)).enumerate() {
            let prompt = take(&batch.text, &mut pos, lens[0]).expect("lengths checked above");
            let chosen = take(&batch.text, &mut pos, lens[1]).expect("lengths checked above");
            match T::render_dpo_prompt(&o, prompt, chosen, coin) {
                Ok(s) => out.ok(&s, ""),
                Err(e) => out.err(item, err(e)),
            }
        }
        out.done()
    }
}

/// Check the shape every format expects: optional leading system turn, then strictly
/// alternating human/gpt, ending with gpt. Returns the index of the first non-system turn.
pub fn check_shape(conversation: &[Turn]) -> Result<usize, PluginError> {
    let offset = usize::from(conversation.first().map(|t| t.from) == Some(Role::System));
    let rest = &conversation[offset..];
    if rest.len() < 2 || rest.len() % 2 != 0 {
        return Err(PluginError::BadInput(format!(
            "conversation must alternate human/gpt and end with gpt; got {} non-system turns",
            rest.len()
        )));
    }
    for (i, t) in rest.iter().enumerate() {
        let want = if i % 2 == 0 { Role::Human } else { Role::Gpt };
        if t.from != want {
            return Err(PluginError::BadInput(format!("turn {} is {:?}, expected {:?}", i + offset, t.from, want)));
        }
    }
    Ok(offset)
}

/// Export a [`Format`] implementation as the plugin's `bagel:plugin/format` interface.
#[macro_export]
macro_rules! export_format {
    ($t:ty) => {
        #[doc(hidden)]
        pub struct __BagelFormatExport;
        impl $crate::format::bindings::exports::bagel::plugin::format::Guest for __BagelFormatExport {
            fn info() -> $crate::format::bindings::bagel::plugin::types::FormatInfo {
                $crate::format::glue::info::<$t>()
            }
            fn render(
                options: $crate::format::bindings::bagel::plugin::types::RenderOptions,
                batch: $crate::format::bindings::exports::bagel::plugin::format::RenderBatch,
            ) -> $crate::format::bindings::exports::bagel::plugin::format::RenderedBatch {
                $crate::format::glue::render::<$t>(options, batch)
            }
            fn render_dpo_prompt(
                options: $crate::format::bindings::bagel::plugin::types::RenderOptions,
                batch: $crate::format::bindings::exports::bagel::plugin::format::DpoBatch,
            ) -> $crate::format::bindings::exports::bagel::plugin::format::RenderedBatch {
                $crate::format::glue::render_dpo_prompt::<$t>(options, batch)
            }
        }
        $crate::format::bindings::export_format_world!(__BagelFormatExport with_types_in $crate::format::bindings);
    };
}
