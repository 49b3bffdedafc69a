//! Data-source plugins: implement [`Source`], then `export_source!(MyType);`.

use crate::model::*;
use crate::row::Params;
use std::cell::RefCell;

/// Generated WIT bindings for world `source-plugin` (not needed by plugin authors).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "source-plugin",
        pub_export_macro: true,
        export_macro_name: "export_source_world",
        default_bindings_module: "bagel_plugin_sdk::source::bindings",
    });
}

use bindings::bagel::plugin::types as wit;

/// A data source: turns raw rows into records.
///
/// Lifecycle per build job (a fresh instance each time): [`Source::info`] any time;
/// [`Source::configure`] once; [`Source::push_rows`] for every batch of every input, in
/// the order of [`SourceInfo::inputs`]; [`Source::finish`] once.
pub trait Source: Sized + 'static {
    /// Describe the plugin (name, priority, inputs, parameters).
    fn info() -> SourceInfo;
    /// Build the state from parameters (declared defaults already merged in).
    fn configure(params: &Params) -> Result<Self, PluginError>;
    /// Convert one batch; `rows[i]` is row `first_row + i` of input `input`.
    fn push_rows(&mut self, input: &str, first_row: u64, rows: &[String], out: &mut Output) -> Result<(), PluginError>;
    /// Emit anything held back. Default: nothing.
    fn finish(&mut self, _out: &mut Output) -> Result<(), PluginError> {
        Ok(())
    }
}

thread_local! {
    static STATE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

/// Glue used by [`crate::export_source!`].
#[doc(hidden)]
pub mod glue {
    use super::*;

    pub fn info<T: Source>() -> wit::SourceInfo {
        to_wit_info(T::info())
    }

    pub fn configure<T: Source>(params: Vec<(String, String)>) -> Result<(), wit::PluginError> {
        let info = T::info();
        let defaults: Vec<(String, String)> = info.params.iter().map(|p| (p.name.clone(), p.default.clone())).collect();
        let params = Params::from_pairs(&defaults, &params).map_err(wit::PluginError::BadParam)?;
        let state = T::configure(&params).map_err(to_wit_err)?;
        STATE.with(|s| *s.borrow_mut() = Some(Box::new(state)));
        Ok(())
    }

    fn with_state<T: Source, R>(f: impl FnOnce(&mut T) -> Result<R, PluginError>) -> Result<R, wit::PluginError> {
        STATE.with(|s| {
            let mut guard = s.borrow_mut();
            let state = guard
                .as_mut()
                .and_then(|b| b.downcast_mut::<T>())
                .ok_or_else(|| wit::PluginError::Internal("configure was not called".into()))?;
            f(state).map_err(to_wit_err)
        })
    }

    pub fn push_rows<T: Source>(input: String, first_row: u64, rows: Vec<String>) -> Result<wit::BatchOutput, wit::PluginError> {
        let mut out = Output::default();
        with_state::<T, ()>(|s| s.push_rows(&input, first_row, &rows, &mut out))?;
        Ok(to_wit_output(out))
    }

    pub fn finish<T: Source>() -> Result<wit::BatchOutput, wit::PluginError> {
        let mut out = Output::default();
        with_state::<T, ()>(|s| s.finish(&mut out))?;
        Ok(to_wit_output(out))
    }
}

fn to_wit_err(e: PluginError) -> wit::PluginError {
    match e {
        PluginError::BadParam(s) => wit::PluginError::BadParam(s),
        PluginError::BadInput(s) => wit::PluginError::BadInput(s),
        PluginError::Internal(s) => wit::PluginError::Internal(s),
    }
}

fn to_wit_turns(turns: Vec<Turn>) -> Vec<wit::Turn> {
    turns
        .into_iter()
        .map(|t| wit::Turn {
            from: match t.from {
                Role::System => wit::Role::System,
                Role::Human => wit::Role::Human,
                Role::Gpt => wit::Role::Gpt,
            },
            value: t.value,
        })
        .collect()
}

fn to_wit_output(out: Output) -> wit::BatchOutput {
    wit::BatchOutput {
        records: out
            .records
            .into_iter()
            .map(|r| wit::Emitted {
                row: r.row,
                label: r.label,
                key: r.key,
                mode: match r.mode {
                    DedupMode::CheckAdd => wit::DedupMode::CheckAdd,
                    DedupMode::CheckOnly => wit::DedupMode::CheckOnly,
                    DedupMode::AddOnly => wit::DedupMode::AddOnly,
                    DedupMode::None => wit::DedupMode::None,
                },
                payload: match r.payload {
                    Payload::Conversation(t) => wit::Payload::Conversation(to_wit_turns(t)),
                    Payload::Dpo(p) => wit::Payload::Dpo(wit::DpoPair {
                        prompt: p.prompt,
                        chosen: p.chosen,
                        rejected: p.rejected,
                        conversation: p.conversation.map(to_wit_turns),
                    }),
                    Payload::Text(t) => wit::Payload::Text(t),
                },
            })
            .collect(),
        dropped: out
            .dropped
            .into_iter()
            .map(|(row, reason)| wit::Dropped {
                row,
                reason: match reason {
                    DropReason::Refusal => wit::DropReason::Refusal,
                    DropReason::Filtered(s) => wit::DropReason::Filtered(s),
                },
            })
            .collect(),
        invalid: out.invalid.into_iter().map(|(row, message)| wit::InvalidRow { row, message }).collect(),
    }
}

fn to_wit_info(i: SourceInfo) -> wit::SourceInfo {
    wit::SourceInfo {
        name: i.name,
        version: i.version,
        priority: i.priority,
        kinds: i
            .kinds
            .into_iter()
            .map(|k| match k {
                RecordKind::Sft => wit::RecordKind::Sft,
                RecordKind::Dpo => wit::RecordKind::Dpo,
                RecordKind::Text => wit::RecordKind::Text,
            })
            .collect(),
        inputs: i
            .inputs
            .into_iter()
            .map(|s| wit::InputSpec {
                name: s.name,
                dataset: s.dataset,
                patterns: s.patterns,
                format: match s.format {
                    InputFormat::Auto => wit::InputFormat::Auto,
                    InputFormat::Json => wit::InputFormat::Json,
                    InputFormat::Jsonl => wit::InputFormat::Jsonl,
                    InputFormat::Csv => wit::InputFormat::Csv,
                    InputFormat::Tsv => wit::InputFormat::Tsv,
                    InputFormat::Parquet => wit::InputFormat::Parquet,
                },
            })
            .collect(),
        params: i
            .params
            .into_iter()
            .map(|p| wit::ParamSpec { name: p.name, default: p.default, description: p.description })
            .collect(),
        description: i.description,
    }
}

/// Export a [`Source`] implementation as the plugin's `bagel:plugin/source` interface.
#[macro_export]
macro_rules! export_source {
    ($t:ty) => {
        #[doc(hidden)]
        pub struct __BagelSourceExport;
        impl $crate::source::bindings::exports::bagel::plugin::source::Guest for __BagelSourceExport {
            fn info() -> $crate::source::bindings::bagel::plugin::types::SourceInfo {
                $crate::source::glue::info::<$t>()
            }
            fn configure(
                params: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), $crate::source::bindings::bagel::plugin::types::PluginError> {
                $crate::source::glue::configure::<$t>(params)
            }
            fn push_rows(
                input: ::std::string::String,
                first_row: u64,
                rows: ::std::vec::Vec<::std::string::String>,
            ) -> ::std::result::Result<
                $crate::source::bindings::bagel::plugin::types::BatchOutput,
                $crate::source::bindings::bagel::plugin::types::PluginError,
            > {
                $crate::source::glue::push_rows::<$t>(input, first_row, rows)
            }
            fn finish() -> ::std::result::Result<
                $crate::source::bindings::bagel::plugin::types::BatchOutput,
                $crate::source::bindings::bagel::plugin::types::PluginError,
            > {
                $crate::source::glue::finish::<$t>()
            }
        }
        $crate::source::bindings::export_source_world!(__BagelSourceExport with_types_in $crate::source::bindings);
    };
}
