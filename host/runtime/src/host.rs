//! Host state and the `bagel:plugin/host` imports.
use crate::bindings::{format as fb, format_0_2 as fb2, source as sb, source_0_2 as sb2};
use bagel_core::refusal::RefusalFilter;
use std::sync::Arc;

/// Per-store state.
pub(crate) struct HostState {
    pub plugin: String,
    pub seed: u64,
    pub refusal: Arc<RefusalFilter>,
    pub limiter: MemLimiter,
}

/// Memory limiter that remembers whether it refused growth.
pub(crate) struct MemLimiter {
    pub cap: usize,
    pub tripped: bool,
}

impl wasmtime::ResourceLimiter for MemLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.tripped = true;
            wasmtime::bail!("memory cap of {} bytes exceeded (wanted {desired})", self.cap);
        }
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

macro_rules! impl_host {
    ($m:ident, types) => {
        impl $m::bagel::plugin::types::Host for HostState {}
        impl_host!($m);
    };
    ($m:ident) => {
        impl $m::bagel::plugin::host::Host for HostState {
            fn log(&mut self, level: $m::bagel::plugin::types::Level, message: String) {
                use $m::bagel::plugin::types::Level;
                let p = &self.plugin;
                match level {
                    Level::Debug => tracing::debug!(plugin = %p, "{message}"),
                    Level::Info => tracing::info!(plugin = %p, "{message}"),
                    Level::Warn => tracing::warn!(plugin = %p, "{message}"),
                    Level::Error => tracing::error!(plugin = %p, "{message}"),
                }
            }
            fn seed(&mut self) -> u64 {
                self.seed
            }
            fn has_refusal(&mut self, text: String) -> bool {
                self.refusal.is_refusal(&text)
            }
        }
    };
}

impl_host!(sb, types);
impl_host!(fb, types);
// 0.2.0 reuses the 0.1.0 `types` (see bindings.rs); only `host` is new.
impl_host!(sb2);
impl_host!(fb2);
