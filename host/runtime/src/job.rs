//! Jobs: a fresh `Store` + instance per job, every call guarded by the limits.
use crate::bindings::{format as fb, source as sb};
use crate::host::HostState;
use crate::load::{InputFormat, InputSpec, ParamSpec, Plugin, Pre, RecordKind, SourceInfo};
use crate::{Limits, PluginError, Runtime, RuntimeError};
use bagel_core::record::validate_turns;
use bagel_core::{DedupMode, DpoPair, Payload, Role, Turn};
use wasmtime::{Store, Trap};

/// Run one call under the limits and turn failures into typed errors.
pub(crate) fn guard<T>(
    store: &mut Store<HostState>,
    plugin: &str,
    call: &'static str,
    limits: Limits,
    f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
) -> Result<T, RuntimeError> {
    store.set_epoch_deadline(crate::load::deadline_ticks(limits));
    store.data_mut().limiter.tripped = false;
    match f(store) {
        Ok(v) => Ok(v),
        Err(e) => {
            let plugin = plugin.to_string();
            if store.data().limiter.tripped {
                Err(RuntimeError::MemoryLimit { plugin, call, limit_bytes: limits.memory_bytes })
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                Err(RuntimeError::Timeout { plugin, call, limit: limits.call_timeout })
            } else {
                Err(RuntimeError::Trap { plugin, call, message: format!("{e:#}") })
            }
        }
    }
}

fn perr(e: sb::bagel::plugin::types::PluginError) -> PluginError {
    use sb::bagel::plugin::types::PluginError as P;
    match e {
        P::BadParam(s) => PluginError::BadParam(s),
        P::BadInput(s) => PluginError::BadInput(s),
        P::Internal(s) => PluginError::Internal(s),
    }
}

fn ferr(e: fb::bagel::plugin::types::PluginError) -> PluginError {
    use fb::bagel::plugin::types::PluginError as P;
    match e {
        P::BadParam(s) => PluginError::BadParam(s),
        P::BadInput(s) => PluginError::BadInput(s),
        P::Internal(s) => PluginError::Internal(s),
    }
}

pub(crate) fn conv_source_info(i: sb::bagel::plugin::types::SourceInfo) -> SourceInfo {
    use sb::bagel::plugin::types as t;
    SourceInfo {
        name: i.name,
        version: i.version,
        priority: i.priority,
        kinds: i
            .kinds
            .into_iter()
            .map(|k| match k {
                t::RecordKind::Sft => RecordKind::Sft,
                t::RecordKind::Dpo => RecordKind::Dpo,
                t::RecordKind::Text => RecordKind::Text,
            })
            .collect(),
        inputs: i
            .inputs
            .into_iter()
            .map(|s| InputSpec {
                name: s.name,
                dataset: s.dataset,
                patterns: s.patterns,
                format: match s.format {
                    t::InputFormat::Auto => InputFormat::Auto,
                    t::InputFormat::Json => InputFormat::Json,
                    t::InputFormat::Jsonl => InputFormat::Jsonl,
                    t::InputFormat::Csv => InputFormat::Csv,
                    t::InputFormat::Tsv => InputFormat::Tsv,
                    t::InputFormat::Parquet => InputFormat::Parquet,
                },
            })
            .collect(),
        params: i.params.into_iter().map(|p| ParamSpec { name: p.name, default: p.default, description: p.description }).collect(),
        description: i.description,
    }
}

/// One record as emitted by a source (before dedup): `key` is the text to hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// 0-based row within its input.
    pub row: u64,
    /// Source label.
    pub label: String,
    /// Key text (uuid5 of it is the id).
    pub key: String,
    /// Dedup mode.
    pub mode: DedupMode,
    /// Payload.
    pub payload: Payload,
}

/// Why a row was dropped by the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Refusal filter.
    Refusal,
    /// Named source filter.
    Filtered(String),
}

/// A row the plugin could not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRow {
    /// 0-based row within its input.
    pub row: u64,
    /// What was wrong.
    pub message: String,
}

/// Output of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutput {
    /// Records in order.
    pub records: Vec<Emitted>,
    /// Dropped rows.
    pub dropped: Vec<(u64, DropReason)>,
    /// Invalid rows.
    pub invalid: Vec<InvalidRow>,
}

fn conv_turns(turns: Vec<sb::bagel::plugin::types::Turn>) -> Vec<Turn> {
    use sb::bagel::plugin::types::Role as R;
    turns
        .into_iter()
        .map(|t| Turn {
            from: match t.from {
                R::System => Role::System,
                R::Human => Role::Human,
                R::Gpt => Role::Gpt,
            },
            value: t.value,
        })
        .collect()
}

fn conv_batch(plugin: &str, call: &'static str, b: sb::bagel::plugin::types::BatchOutput) -> Result<BatchOutput, RuntimeError> {
    use sb::bagel::plugin::types as t;
    let mut records = Vec::with_capacity(b.records.len());
    for r in b.records {
        let payload = match r.payload {
            t::Payload::Conversation(c) => Payload::Conversation(conv_turns(c)),
            t::Payload::Dpo(p) => Payload::Dpo(DpoPair { prompt: p.prompt, chosen: p.chosen, rejected: p.rejected, conversation: p.conversation.map(conv_turns) }),
            t::Payload::Text(s) => Payload::Text(s),
        };
        let bad = |detail: String| RuntimeError::Malformed { plugin: plugin.to_string(), call, row: r.row, detail };
        match &payload {
            Payload::Conversation(c) => validate_turns(c).map_err(bad)?,
            Payload::Dpo(p) => {
                if let Some(c) = &p.conversation {
                    validate_turns(c).map_err(bad)?;
                }
            }
            Payload::Text(_) => {}
        }
        let mode = match r.mode {
            t::DedupMode::CheckAdd => DedupMode::CheckAdd,
            t::DedupMode::CheckOnly => DedupMode::CheckOnly,
            t::DedupMode::AddOnly => DedupMode::AddOnly,
            t::DedupMode::None => DedupMode::None,
        };
        records.push(Emitted { row: r.row, label: r.label, key: r.key, mode, payload });
    }
    Ok(BatchOutput {
        records,
        dropped: b
            .dropped
            .into_iter()
            .map(|d| {
                (
                    d.row,
                    match d.reason {
                        t::DropReason::Refusal => DropReason::Refusal,
                        t::DropReason::Filtered(s) => DropReason::Filtered(s),
                    },
                )
            })
            .collect(),
        invalid: b.invalid.into_iter().map(|i| InvalidRow { row: i.row, message: i.message }).collect(),
    })
}

/// A running source job: a fresh instance of one source plugin.
pub struct SourceJob {
    store: Store<HostState>,
    inst: sb::SourcePlugin,
    plugin: String,
    limits: Limits,
    poisoned: bool,
}

impl SourceJob {
    /// Start a job for `plugin` (must be a source) with the plugin's `seed`.
    pub fn start(rt: &Runtime, plugin: &Plugin, seed: u64) -> Result<SourceJob, RuntimeError> {
        let Pre::Source(pre) = &plugin.pre else {
            return Err(RuntimeError::UnknownWorld { plugin: plugin.name.clone() });
        };
        let mut store = rt.store(&plugin.name, seed);
        let inst = pre.instantiate(&mut store).map_err(|e| RuntimeError::Instantiate { plugin: plugin.name.clone(), message: format!("{e:#}") })?;
        Ok(SourceJob { store, inst, plugin: plugin.name.clone(), limits: rt.limits, poisoned: false })
    }

    fn call<T>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&mut Store<HostState>, &sb::SourcePlugin) -> wasmtime::Result<Result<T, sb::bagel::plugin::types::PluginError>>,
    ) -> Result<T, RuntimeError> {
        if self.poisoned {
            return Err(RuntimeError::Poisoned { plugin: self.plugin.clone() });
        }
        let inst = &self.inst;
        let r = guard(&mut self.store, &self.plugin, call, self.limits, |s| f(s, inst));
        if r.is_err() {
            self.poisoned = true;
        }
        r?.map_err(|e| RuntimeError::Plugin { plugin: self.plugin.clone(), call, error: perr(e) })
    }

    /// `configure(params)`; params are (name, JSON text).
    pub fn configure(&mut self, params: &[(String, String)]) -> Result<(), RuntimeError> {
        self.call("configure", |s, i| i.bagel_plugin_source().call_configure(s, params))
    }

    /// `push-rows(input, first-row, rows)`.
    pub fn push_rows(&mut self, input: &str, first_row: u64, rows: &[String]) -> Result<BatchOutput, RuntimeError> {
        let b = self.call("push-rows", |s, i| i.bagel_plugin_source().call_push_rows(s, input, first_row, rows))?;
        conv_batch(&self.plugin, "push-rows", b).inspect_err(|_| self.poisoned = true)
    }

    /// `finish()`.
    pub fn finish(&mut self) -> Result<BatchOutput, RuntimeError> {
        let b = self.call("finish", |s, i| i.bagel_plugin_source().call_finish(s))?;
        conv_batch(&self.plugin, "finish", b).inspect_err(|_| self.poisoned = true)
    }
}

/// One conversation to render plus the host's default-system coin.
#[derive(Debug, Clone)]
pub struct RenderItem<'a> {
    /// Conversation (ends human → gpt).
    pub conversation: &'a [Turn],
    /// The coin.
    pub add_default_system: bool,
}

/// One rendered example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Model input.
    pub input: String,
    /// Target output.
    pub output: String,
}

/// A running format job.
pub struct FormatJob {
    store: Store<HostState>,
    inst: fb::FormatPlugin,
    plugin: String,
    limits: Limits,
    poisoned: bool,
}

impl FormatJob {
    /// Start a job for `plugin` (must be a format).
    pub fn start(rt: &Runtime, plugin: &Plugin, seed: u64) -> Result<FormatJob, RuntimeError> {
        let Pre::Format(pre) = &plugin.pre else {
            return Err(RuntimeError::UnknownWorld { plugin: plugin.name.clone() });
        };
        let mut store = rt.store(&plugin.name, seed);
        let inst = pre.instantiate(&mut store).map_err(|e| RuntimeError::Instantiate { plugin: plugin.name.clone(), message: format!("{e:#}") })?;
        Ok(FormatJob { store, inst, plugin: plugin.name.clone(), limits: rt.limits, poisoned: false })
    }

    fn call<T>(&mut self, call: &'static str, f: impl FnOnce(&mut Store<HostState>, &fb::FormatPlugin) -> wasmtime::Result<T>) -> Result<T, RuntimeError> {
        if self.poisoned {
            return Err(RuntimeError::Poisoned { plugin: self.plugin.clone() });
        }
        let inst = &self.inst;
        let r = guard(&mut self.store, &self.plugin, call, self.limits, |s| f(s, inst));
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    /// Render a batch; one result per item, in order.
    pub fn render(&mut self, bos: &str, eos: &str, items: &[RenderItem<'_>]) -> Result<Vec<Result<Rendered, PluginError>>, RuntimeError> {
        use fb::bagel::plugin::types as t;
        let opts = t::RenderOptions { bos: bos.to_string(), eos: eos.to_string() };
        let wit_items: Vec<t::RenderItem> = items
            .iter()
            .map(|i| t::RenderItem {
                conversation: i
                    .conversation
                    .iter()
                    .map(|turn| t::Turn {
                        from: match turn.from {
                            Role::System => t::Role::System,
                            Role::Human => t::Role::Human,
                            Role::Gpt => t::Role::Gpt,
                        },
                        value: turn.value.clone(),
                    })
                    .collect(),
                add_default_system: i.add_default_system,
            })
            .collect();
        let out = self.call("render", |s, i| i.bagel_plugin_format().call_render(s, &opts, &wit_items))?;
        if out.len() != items.len() {
            self.poisoned = true;
            return Err(RuntimeError::Malformed { plugin: self.plugin.clone(), call: "render", row: 0, detail: format!("{} results for {} items", out.len(), items.len()) });
        }
        Ok(out.into_iter().map(|r| r.map(|r| Rendered { input: r.input, output: r.output }).map_err(ferr)).collect())
    }

    /// Render DPO prompts: items are (prompt, chosen, coin).
    pub fn render_dpo_prompt(&mut self, bos: &str, eos: &str, items: &[(&str, &str, bool)]) -> Result<Vec<Result<String, PluginError>>, RuntimeError> {
        use fb::bagel::plugin::types as t;
        let opts = t::RenderOptions { bos: bos.to_string(), eos: eos.to_string() };
        let wit_items: Vec<t::DpoItem> =
            items.iter().map(|(p, c, coin)| t::DpoItem { prompt: p.to_string(), chosen: c.to_string(), add_default_system: *coin }).collect();
        let out = self.call("render-dpo-prompt", |s, i| i.bagel_plugin_format().call_render_dpo_prompt(s, &opts, &wit_items))?;
        if out.len() != items.len() {
            self.poisoned = true;
            return Err(RuntimeError::Malformed { plugin: self.plugin.clone(), call: "render-dpo-prompt", row: 0, detail: format!("{} results for {} items", out.len(), items.len()) });
        }
        Ok(out.into_iter().map(|r| r.map_err(ferr)).collect())
    }
}
