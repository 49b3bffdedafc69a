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

    pub fn render<T: Format>(o: wit::RenderOptions, items: Vec<wit::RenderItem>) -> Vec<Result<wit::Rendered, wit::PluginError>> {
        let o = opts(o);
        items
            .into_iter()
            .map(|item| {
                let turns: Vec<Turn> = item
                    .conversation
                    .into_iter()
                    .map(|t| Turn {
                        from: match t.from {
                            wit::Role::System => Role::System,
                            wit::Role::Human => Role::Human,
                            wit::Role::Gpt => Role::Gpt,
                        },
                        value: t.value,
                    })
                    .collect();
                T::render(&o, &turns, item.add_default_system)
                    .map(|r| wit::Rendered { input: r.input, output: r.output })
                    .map_err(err)
            })
            .collect()
    }

    pub fn render_dpo_prompt<T: Format>(o: wit::RenderOptions, items: Vec<wit::DpoItem>) -> Vec<Result<String, wit::PluginError>> {
        let o = opts(o);
        items
            .into_iter()
            .map(|i| T::render_dpo_prompt(&o, &i.prompt, &i.chosen, i.add_default_system).map_err(err))
            .collect()
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
                items: ::std::vec::Vec<$crate::format::bindings::bagel::plugin::types::RenderItem>,
            ) -> ::std::vec::Vec<
                ::std::result::Result<
                    $crate::format::bindings::bagel::plugin::types::Rendered,
                    $crate::format::bindings::bagel::plugin::types::PluginError,
                >,
            > {
                $crate::format::glue::render::<$t>(options, items)
            }
            fn render_dpo_prompt(
                options: $crate::format::bindings::bagel::plugin::types::RenderOptions,
                items: ::std::vec::Vec<$crate::format::bindings::bagel::plugin::types::DpoItem>,
            ) -> ::std::vec::Vec<
                ::std::result::Result<::std::string::String, $crate::format::bindings::bagel::plugin::types::PluginError>,
            > {
                $crate::format::glue::render_dpo_prompt::<$t>(options, items)
            }
        }
        $crate::format::bindings::export_format_world!(__BagelFormatExport with_types_in $crate::format::bindings);
    };
}
