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
///
/// Implement [`Format::render`]. A format that also implements [`Format::render_into`]
/// (usually both from one function generic over [`AsTurn`], with
/// [`render_with!`](crate::render_with), as the bundled formats do) renders a batch inside
/// the plugin without copying the turns or allocating per row.
pub trait Format: 'static {
    /// Describe the format.
    fn info() -> FormatInfo;
    /// Render `conversation` (ends human → gpt; optional leading system turn).
    /// `add_default_system` is the host's seeded coin (p = 0.5 in the reference).
    fn render(opts: &RenderOptions, conversation: &[Turn], add_default_system: bool) -> Result<Rendered, PluginError>;
    /// [`Format::render`] on borrowed turns into the caller's buffers: append the input
    /// to `input` and the output to `output`. Text already in the buffers belongs to the
    /// caller (earlier rows of a batch): append only, never read, change or shorten it.
    /// On an error, what was appended is discarded by the caller.
    ///
    /// Default: copies the turns and calls [`Format::render`].
    fn render_into(opts: &RenderOptions, conversation: &[TurnRef<'_>], add_default_system: bool, input: &mut String, output: &mut String) -> Result<(), PluginError> {
        let owned: Vec<Turn> = conversation.iter().map(|t| Turn::new(t.from, t.value)).collect();
        let r = Self::render(opts, &owned, add_default_system)?;
        input.push_str(&r.input);
        output.push_str(&r.output);
        Ok(())
    }
    /// Render a DPO prompt. Default (the reference `_dpo_format`): render the
    /// conversation `[human: prompt, gpt: collapse_newlines(chosen)]` and return its input.
    fn render_dpo_prompt(opts: &RenderOptions, prompt: &str, chosen: &str, add_default_system: bool) -> Result<String, PluginError> {
        let chosen = bagel_text::collapse_newlines(chosen);
        let conv = [TurnRef { from: Role::Human, value: prompt }, TurnRef { from: Role::Gpt, value: &chosen }];
        let mut input = String::new();
        Self::render_into(opts, &conv, add_default_system, &mut input, &mut String::new())?;
        Ok(input)
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
        /// Reused buffer for one row's output (the input is rendered straight into `text`).
        output: String,
        /// A `render_into` shortened `text`: earlier rows lost text, the batch is void.
        broken: bool,
    }

    impl Out {
        fn new(items: usize, text_hint: usize) -> Out {
            Out { text: String::with_capacity(text_hint), lens: Vec::with_capacity(2 * items), errors: Vec::new(), output: String::new(), broken: false }
        }
        /// Render one item with `f(input, output)`: the input is appended to `text`
        /// directly, the output to the reused buffer and then after it.
        fn render(&mut self, item: usize, f: impl FnOnce(&mut String, &mut String) -> Result<(), PluginError>) {
            let start = self.text.len();
            self.output.clear();
            let r = f(&mut self.text, &mut self.output);
            if self.text.len() < start || !self.text.is_char_boundary(start) {
                self.broken = true;
            }
            match r {
                Ok(()) if !self.broken => {
                    self.lens.extend([(self.text.len() - start) as u32, self.output.len() as u32]);
                    self.text.push_str(&self.output);
                }
                Ok(()) => self.err(item, wit::PluginError::Internal(String::new())),
                Err(e) => {
                    // A broken batch is voided in `done`; truncating there could split a char.
                    if !self.broken {
                        self.text.truncate(start);
                    }
                    self.err(item, err(e));
                }
            }
        }
        fn err(&mut self, item: usize, error: wit::PluginError) {
            self.lens.extend([0, 0]);
            self.errors.push(fmt::ItemError { item: item as u32, error });
        }
        fn done(self) -> fmt::RenderedBatch {
            if self.broken {
                let n = self.lens.len() / 2;
                let mut out = Out::new(n, 0);
                for item in 0..n {
                    out.err(item, wit::PluginError::Internal("the format's render_into changed text of earlier rows (it may only append)".into()));
                }
                return out.done();
            }
            fmt::RenderedBatch { text: self.text, lens: self.lens, errors: self.errors }
        }
    }

    /// Unpack a `render-batch`, render each conversation, pack the results. Turns are
    /// borrowed from the batch text and rows rendered into the answer text
    /// ([`Format::render_into`]), so a batch allocates only as the answer grows.
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
        let mut turns: Vec<TurnRef<'_>> = Vec::new();
        let (mut pos, mut next_turn) = (0usize, 0usize);
        for (item, (&count, &coin)) in batch.conversation_turns.iter().zip(&batch.add_default_system).enumerate() {
            let range = next_turn..next_turn + count as usize;
            next_turn = range.end;
            turns.clear();
            for (&len, &role) in batch.turn_lens[range.clone()].iter().zip(&batch.turn_roles[range]) {
                let from = [Role::System, Role::Human, Role::Gpt][role as usize];
                turns.push(TurnRef { from, value: take(&batch.text, &mut pos, len).expect("lengths checked above") });
            }
            out.render(item, |input, output| T::render_into(&o, &turns, coin, input, output));
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
            out.render(item, |input, _| {
                input.push_str(&T::render_dpo_prompt(&o, prompt, chosen, coin)?);
                Ok(())
            });
        }
        out.done()
    }
}

/// Check the shape every format expects: optional leading system turn, then strictly
/// alternating human/gpt, ending with gpt. Returns the index of the first non-system turn.
///
/// Errors: [`PluginError::BadInput`] naming the count or the first turn out of place.
pub fn check_shape<T: AsTurn>(conversation: &[T]) -> Result<usize, PluginError> {
    let offset = usize::from(conversation.first().map(|t| t.role()) == Some(Role::System));
    let rest = &conversation[offset..];
    if rest.len() < 2 || rest.len() % 2 != 0 {
        return Err(PluginError::BadInput(format!(
            "conversation must alternate human/gpt and end with gpt; got {} non-system turns",
            rest.len()
        )));
    }
    for (i, t) in rest.iter().enumerate() {
        let want = if i % 2 == 0 { Role::Human } else { Role::Gpt };
        if t.role() != want {
            return Err(PluginError::BadInput(format!("turn {} is {:?}, expected {:?}", i + offset, t.role(), want)));
        }
    }
    Ok(offset)
}

/// Implement [`Format::render`] and [`Format::render_into`] inside an `impl Format` block
/// with one function generic over [`AsTurn`], so owned and borrowed turns run the same
/// code:
///
/// ```text
/// impl Format for MyFormat {
///     fn info() -> FormatInfo { /* ... */ }
///     render_with!(write);
/// }
///
/// /// Appends the input to `input` and the output to `output`.
/// fn write<T: AsTurn>(opts: &RenderOptions, conversation: &[T], add_default_system: bool, input: &mut String, output: &mut String) -> Result<(), PluginError> {
///     /* ... */
/// }
/// ```
#[macro_export]
macro_rules! render_with {
    ($write:path) => {
        fn render(opts: &$crate::RenderOptions, conversation: &[$crate::Turn], add_default_system: bool) -> Result<$crate::Rendered, $crate::PluginError> {
            let mut r = $crate::Rendered::default();
            $write(opts, conversation, add_default_system, &mut r.input, &mut r.output)?;
            Ok(r)
        }

        fn render_into(opts: &$crate::RenderOptions, conversation: &[$crate::TurnRef<'_>], add_default_system: bool, input: &mut String, output: &mut String) -> Result<(), $crate::PluginError> {
            $write(opts, conversation, add_default_system, input, output)
        }
    };
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

#[cfg(test)]
mod tests {
    use super::bindings::exports::bagel::plugin::format as fmt;
    use super::*;

    /// A format that implements only `render` (as a third-party plugin written against
    /// the first SDK does): `role:value|` per prompt turn; the output is the last value,
    /// collapsed. A human turn "fail" is a `BadInput`.
    struct OnlyRender;

    impl Format for OnlyRender {
        fn info() -> FormatInfo {
            FormatInfo { name: "only-render".into(), version: "0".into(), description: String::new() }
        }
        fn render(_o: &RenderOptions, conv: &[Turn], coin: bool) -> Result<Rendered, PluginError> {
            check_shape(conv)?;
            let mut input = String::from(if coin { "S|" } else { "" });
            for t in &conv[..conv.len() - 1] {
                if t.value == "fail" {
                    return Err(PluginError::BadInput("fail".into()));
                }
                input.push_str(&format!("{:?}:{}|", t.from, t.value));
            }
            Ok(Rendered { input, output: bagel_text::collapse_newlines(&conv[conv.len() - 1].value) })
        }
    }

    /// A format whose `render_into` breaks the contract by clearing the text it was given.
    struct Clears;

    impl Format for Clears {
        fn info() -> FormatInfo {
            FormatInfo { name: "clears".into(), version: "0".into(), description: String::new() }
        }
        fn render(_o: &RenderOptions, _c: &[Turn], _coin: bool) -> Result<Rendered, PluginError> {
            Ok(Rendered::default())
        }
        fn render_into(_o: &RenderOptions, c: &[TurnRef<'_>], _coin: bool, input: &mut String, _output: &mut String) -> Result<(), PluginError> {
            input.clear();
            input.push_str(c[0].value);
            // A value "fail" also errs after the damage (the glue must not split the "é").
            if c[1].value == "fail" {
                return Err(PluginError::BadInput("fail".into()));
            }
            Ok(())
        }
    }

    fn wit_opts() -> wit::RenderOptions {
        wit::RenderOptions { bos: "<s>".into(), eos: "</s>".into() }
    }

    /// Pack conversations the way the host does (text + per-turn lengths and roles).
    fn batch(convs: &[(&[(u8, &str)], bool)]) -> fmt::RenderBatch {
        let mut b = fmt::RenderBatch { text: String::new(), turn_lens: vec![], turn_roles: vec![], conversation_turns: vec![], add_default_system: vec![] };
        for (turns, coin) in convs {
            for (role, value) in turns.iter() {
                b.text.push_str(value);
                b.turn_lens.push(value.len() as u32);
                b.turn_roles.push(*role);
            }
            b.conversation_turns.push(turns.len() as u32);
            b.add_default_system.push(*coin);
        }
        b
    }

    /// Split a packed answer into per-item (input, output) or the item's error.
    fn unpack(r: &fmt::RenderedBatch) -> Vec<Result<(String, String), String>> {
        let mut pos = 0;
        r.lens
            .chunks_exact(2)
            .enumerate()
            .map(|(i, l)| {
                if let Some(e) = r.errors.iter().find(|e| e.item as usize == i) {
                    return Err(format!("{:?}", e.error));
                }
                let (a, b) = (pos + l[0] as usize, pos + l[0] as usize + l[1] as usize);
                let item = (r.text[pos..a].to_string(), r.text[a..b].to_string());
                pos = b;
                Ok(item)
            })
            .collect()
    }

    #[test]
    fn default_render_into_appends_what_render_returns() {
        let (mut input, mut output) = ("kept|".to_string(), "out|".to_string());
        let conv = [TurnRef { from: Role::Human, value: "q" }, TurnRef { from: Role::Gpt, value: "a\n\n\n\nb" }];
        OnlyRender::render_into(&RenderOptions::default(), &conv, true, &mut input, &mut output).unwrap();
        assert_eq!((input.as_str(), output.as_str()), ("kept|S|Human:q|", "out|a\n\nb"));
        // The default DPO prompt goes through `render_into` too.
        assert_eq!(OnlyRender::render_dpo_prompt(&RenderOptions::default(), "p", "c", false).unwrap(), "Human:p|");
    }

    #[test]
    fn glue_renders_a_batch_through_the_default_render_into() {
        let b = batch(&[
            (&[(1, "q1"), (2, "a1")], false),
            (&[(0, "sys"), (1, "fail"), (2, "a2")], false),
            (&[(1, "q3"), (2, "x\n \n\n\ny"), (1, "q4"), (2, "a4")], true),
            (&[(2, "gpt first"), (1, "h")], false),
        ]);
        let r = glue::render::<OnlyRender>(wit_opts(), b);
        let items = unpack(&r);
        assert_eq!(items[0], Ok(("Human:q1|".into(), "a1".into())));
        assert_eq!(items[1], Err("PluginError::BadInput(\"fail\")".into()), "a failed row leaves no text behind");
        assert_eq!(items[2], Ok(("S|Human:q3|Gpt:x\n \n\n\ny|Human:q4|".into(), "a4".into())));
        assert!(matches!(&items[3], Err(e) if e.contains("expected Human")), "{:?}", items[3]);
        assert_eq!(r.text, "Human:q1|a1S|Human:q3|Gpt:x\n \n\n\ny|Human:q4|a4");
    }

    #[test]
    fn glue_voids_the_batch_when_render_into_shortens_earlier_rows() {
        let b = batch(&[(&[(1, "q1"), (2, "a1")], false), (&[(1, ""), (2, "a2")], false), (&[(1, "q3"), (2, "a3")], false)]);
        let r = glue::render::<Clears>(wit_opts(), b);
        assert_eq!((r.text.as_str(), r.lens.as_slice()), ("", &[0u32; 6][..]));
        let items = unpack(&r);
        assert!(items.iter().all(|i| matches!(i, Err(e) if e.contains("changed text of earlier rows"))), "{items:?}");
        // Row 1 writes "é" over row 0's text, so its own start (byte 1) falls inside the
        // char, and then errs: the batch is voided, nothing is cut mid-char.
        let b = batch(&[(&[(1, "q"), (2, "a1")], false), (&[(1, "é"), (2, "fail")], false)]);
        let items = unpack(&glue::render::<Clears>(wit_opts(), b));
        assert!(items.iter().all(|i| matches!(i, Err(e) if e.contains("changed text of earlier rows"))), "{items:?}");
    }
}
