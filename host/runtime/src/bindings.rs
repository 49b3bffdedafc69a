//! wasmtime bindings for the worlds of every WIT version this host loads.
//!
//! `types` is identical in 0.1.0 and 0.2.0, so the 0.2.0 bindings reuse the 0.1.0 Rust
//! types (`with`): a 0.2.0 source plugin returns exactly the values a 0.1.0 one does,
//! and the conversion code in `job.rs` serves both.

/// `bagel:plugin@0.1.0`, world `source-plugin`.
pub mod source {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "source-plugin",
    });
}

/// `bagel:plugin@0.1.0`, world `format-plugin`.
pub mod format {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "format-plugin",
    });
}

/// `bagel:plugin@0.2.0`, world `source-plugin` (same interface as 0.1.0).
pub mod source_0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.2.0",
        world: "source-plugin",
        with: { "bagel:plugin/types@0.2.0": crate::bindings::source::bagel::plugin::types },
    });
}

/// `bagel:plugin@0.2.0`, world `format-plugin` (packed batches).
pub mod format_0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.2.0",
        world: "format-plugin",
        with: { "bagel:plugin/types@0.2.0": crate::bindings::format::bagel::plugin::types },
    });
}
