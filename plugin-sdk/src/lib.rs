//! # bagel plugin SDK
//!
//! Write bagel **data-source** and **prompt-format** plugins in plain Rust; the SDK turns
//! them into WASM components for the WIT contract `bagel:plugin@0.2.0` (shipped in this
//! crate's `wit/`, a byte-identical copy of the host's frozen `wit/0.2.0/`).
//!
//! - Enable the `source` or the `format` feature (exactly one per plugin crate).
//! - Implement [`source::Source`] or [`format::Format`] and call [`export_source!`] or
//!   [`export_format!`] once.
//! - Helpers: [`as_conversation`] (the reference `as_conversation`), [`uid`] (uuid5 key),
//!   [`Row`] (typed access to a JSON row), [`rng`] (PRNG seeded by the host),
//!   [`has_refusal`] (the host's refusal check), [`text`] (Python-compatible strip and
//!   newline collapse).
//!
//! Build (see README.md): `cargo rustc --lib --crate-type cdylib --release --target
//! wasm32-unknown-unknown`, then `wasm-tools component new`.
#![deny(missing_docs)]

mod model;
mod row;

pub use bagel_text as text;
pub use bagel_text::uid;
pub use model::*;
pub use row::{multiple_choice, Params, Row};

#[cfg(feature = "format")]
pub mod format;
#[cfg(feature = "source")]
pub mod source;

/// Host access used by both worlds. On non-WASM targets (native `cargo test` of a plugin
/// crate) there is no host: [`has_refusal`] falls back to the no-op `false`, [`rng`] is
/// seeded with 0 and logging goes to stderr.
mod hostcalls {
    #[cfg(all(target_arch = "wasm32", feature = "source"))]
    use crate::source::bindings::bagel::plugin::{host, types::Level};
    #[cfg(all(target_arch = "wasm32", feature = "format", not(feature = "source")))]
    use crate::format::bindings::bagel::plugin::{host, types::Level};

    pub(crate) fn seed() -> u64 {
        #[cfg(all(target_arch = "wasm32", any(feature = "source", feature = "format")))]
        {
            host::seed()
        }
        #[cfg(not(all(target_arch = "wasm32", any(feature = "source", feature = "format"))))]
        {
            0
        }
    }

    pub(crate) fn has_refusal(text: &str) -> bool {
        #[cfg(all(target_arch = "wasm32", any(feature = "source", feature = "format")))]
        {
            host::has_refusal(text)
        }
        #[cfg(not(all(target_arch = "wasm32", any(feature = "source", feature = "format"))))]
        {
            let _ = text;
            false
        }
    }

    pub(crate) fn log(level: u8, msg: &str) {
        #[cfg(all(target_arch = "wasm32", any(feature = "source", feature = "format")))]
        {
            let level = match level {
                0 => Level::Debug,
                1 => Level::Info,
                2 => Level::Warn,
                _ => Level::Error,
            };
            host::log(level, msg)
        }
        #[cfg(not(all(target_arch = "wasm32", any(feature = "source", feature = "format"))))]
        {
            eprintln!("[{level}] {msg}");
        }
    }
}

/// The host's refusal / "AI-ism" check (SOURCES.md §1.4; one implementation, in the host).
pub fn has_refusal(text: &str) -> bool {
    hostcalls::has_refusal(text)
}

/// A small fast PRNG (`rand::rngs::SmallRng`) seeded from the host's per-plugin seed
/// (derived from the build `--seed` and the plugin name). Call once and keep it.
pub fn rng() -> rand::rngs::SmallRng {
    use rand::SeedableRng;
    rand::rngs::SmallRng::seed_from_u64(hostcalls::seed())
}

/// Re-export of `rand` so plugins use the same version as the SDK.
pub use rand;

/// Log through the host (shown under the plugin's name).
pub mod log {
    /// Debug message.
    pub fn debug(msg: &str) {
        super::hostcalls::log(0, msg)
    }
    /// Info message.
    pub fn info(msg: &str) {
        super::hostcalls::log(1, msg)
    }
    /// Warning.
    pub fn warn(msg: &str) {
        super::hostcalls::log(2, msg)
    }
    /// Error.
    pub fn error(msg: &str) {
        super::hostcalls::log(3, msg)
    }
}

#[cfg(test)]
mod readme {
    /// The README's complete plugin is the `plugin-sdk/example-source` crate, verbatim.
    #[test]
    fn readme_plugin_is_the_example_crate() {
        let readme = include_str!("../README.md");
        let code = include_str!("../example-source/src/lib.rs");
        assert!(readme.contains(code), "plugin-sdk/README.md and example-source/src/lib.rs differ");
        assert!(code.lines().count() < 40, "the README promises a plugin in under 40 lines");
    }
}
