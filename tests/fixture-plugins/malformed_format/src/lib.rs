//! Fixture: a format plugin written against the raw 0.2.0 bindings (not the SDK's
//! `Format` trait, whose glue always packs correctly). `render` answers every item with
//! lengths that run past the returned text; `render-dpo-prompt` reports an error for an
//! item the batch does not have.
use bagel_plugin_sdk::format::bindings::bagel::plugin::types::{FormatInfo, PluginError, RenderOptions};
use bagel_plugin_sdk::format::bindings::exports::bagel::plugin::format::{DpoBatch, Guest, ItemError, RenderBatch, RenderedBatch};

/// See the crate doc.
pub struct Fixture;

impl Guest for Fixture {
    fn info() -> FormatInfo {
        FormatInfo { name: "malformed_format".into(), version: "0.0.0".into(), description: "packs lengths that do not fit its text".into() }
    }
    fn render(_options: RenderOptions, batch: RenderBatch) -> RenderedBatch {
        let n = batch.conversation_turns.len();
        RenderedBatch { text: "abc".into(), lens: (0..n).flat_map(|_| [2, 2]).collect(), errors: vec![] }
    }
    fn render_dpo_prompt(_options: RenderOptions, batch: DpoBatch) -> RenderedBatch {
        let n = batch.add_default_system.len() as u32;
        RenderedBatch { text: String::new(), lens: vec![0; 2 * n as usize], errors: vec![ItemError { item: n + 5, error: PluginError::Internal("x".into()) }] }
    }
}

bagel_plugin_sdk::format::bindings::export_format_world!(Fixture with_types_in bagel_plugin_sdk::format::bindings);
