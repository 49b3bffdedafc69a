//! Jobs: a fresh `Store` + instance per job, every call guarded by the limits.
use crate::bindings::{format as fb, format_0_2 as fb2, source as sb, source_0_2 as sb2};
use crate::host::HostState;
use crate::load::{FormatPre, InputFormat, InputSpec, ParamSpec, Plugin, Pre, RecordKind, SourceInfo, SourcePre};
use crate::{Limits, PluginError, Runtime, RuntimeError};
use bagel_core::record::validate_turns;
use bagel_core::{DedupMode, DpoPair, Payload, Role, Turn};
use std::ops::Range;
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

/// An instance of a source plugin of either WIT version (same types: see bindings.rs).
enum SourceInst {
    V0_1(sb::SourcePlugin),
    V0_2(sb2::SourcePlugin),
}

/// An instance of a format plugin of either WIT version.
enum FormatInst {
    V0_1(fb::FormatPlugin),
    V0_2(fb2::FormatPlugin),
}

/// A running source job: a fresh instance of one source plugin.
pub struct SourceJob {
    store: Store<HostState>,
    inst: SourceInst,
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
        let ierr = |e: wasmtime::Error| RuntimeError::Instantiate { plugin: plugin.name.clone(), message: format!("{e:#}") };
        let inst = match pre {
            SourcePre::V0_1(p) => SourceInst::V0_1(p.instantiate(&mut store).map_err(ierr)?),
            SourcePre::V0_2(p) => SourceInst::V0_2(p.instantiate(&mut store).map_err(ierr)?),
        };
        Ok(SourceJob { store, inst, plugin: plugin.name.clone(), limits: rt.limits, poisoned: false })
    }

    fn call<T>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&mut Store<HostState>, &SourceInst) -> wasmtime::Result<Result<T, sb::bagel::plugin::types::PluginError>>,
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
        self.call("configure", |s, i| match i {
            SourceInst::V0_1(i) => i.bagel_plugin_source().call_configure(s, params),
            SourceInst::V0_2(i) => i.bagel_plugin_source().call_configure(s, params),
        })
    }

    /// `push-rows(input, first-row, rows)`.
    pub fn push_rows(&mut self, input: &str, first_row: u64, rows: &[String]) -> Result<BatchOutput, RuntimeError> {
        let b = self.call("push-rows", |s, i| match i {
            SourceInst::V0_1(i) => i.bagel_plugin_source().call_push_rows(s, input, first_row, rows),
            SourceInst::V0_2(i) => i.bagel_plugin_source().call_push_rows(s, input, first_row, rows),
        })?;
        conv_batch(&self.plugin, "push-rows", b).inspect_err(|_| self.poisoned = true)
    }

    /// `finish()`.
    pub fn finish(&mut self) -> Result<BatchOutput, RuntimeError> {
        let b = self.call("finish", |s, i| match i {
            SourceInst::V0_1(i) => i.bagel_plugin_source().call_finish(s),
            SourceInst::V0_2(i) => i.bagel_plugin_source().call_finish(s),
        })?;
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

/// A rendered batch as the plugin answered it: the inputs and outputs of all items back
/// to back in one text, and per item the byte ranges of its input and output in that
/// text (on UTF-8 boundaries, checked), or the plugin's error for that item. Lets the
/// host keep rendered rows as slices of one buffer instead of two `String`s each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedBatch {
    /// Inputs and outputs, back to back (a failed item adds no bytes).
    pub text: String,
    /// Per item, in order: (input range, output range) in `text` (bytes), or its error.
    pub items: Vec<Result<(Range<usize>, Range<usize>), PluginError>>,
}

impl RenderedBatch {
    /// One `Rendered` (two new `String`s) per item, in order. Panics if a range is not a
    /// character-boundary range of `text` (never for a batch from
    /// [`FormatJob::render_batch`], whose ranges are checked).
    pub fn into_rendered(self) -> Vec<Result<Rendered, PluginError>> {
        let text = self.text;
        self.items.into_iter().map(|r| r.map(|(i, o)| Rendered { input: text[i].to_string(), output: text[o].to_string() })).collect()
    }
}

/// A running format job.
pub struct FormatJob {
    store: Store<HostState>,
    inst: FormatInst,
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
        let ierr = |e: wasmtime::Error| RuntimeError::Instantiate { plugin: plugin.name.clone(), message: format!("{e:#}") };
        let inst = match pre {
            FormatPre::V0_1(p) => FormatInst::V0_1(p.instantiate(&mut store).map_err(ierr)?),
            FormatPre::V0_2(p) => FormatInst::V0_2(p.instantiate(&mut store).map_err(ierr)?),
        };
        Ok(FormatJob { store, inst, plugin: plugin.name.clone(), limits: rt.limits, poisoned: false })
    }

    fn call<T>(&mut self, call: &'static str, f: impl FnOnce(&mut Store<HostState>, &FormatInst) -> wasmtime::Result<T>) -> Result<T, RuntimeError> {
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
    ///
    /// A 0.2.0 plugin gets the batch packed (one text, fixed-size turn records) and
    /// answers with one text plus spans; a 0.1.0 plugin gets one record per turn.
    /// Errors: a trap or tripped limit ([`RuntimeError`]), or spans that do not fit the
    /// returned text ([`RuntimeError::Malformed`]); a plugin's own per-item error is the
    /// inner `Err`.
    pub fn render(&mut self, bos: &str, eos: &str, items: &[RenderItem<'_>]) -> Result<Vec<Result<Rendered, PluginError>>, RuntimeError> {
        if let FormatInst::V0_1(_) = self.inst {
            // 0.1.0 answers one record per item already.
            let opts = fb::bagel::plugin::types::RenderOptions { bos: bos.to_string(), eos: eos.to_string() };
            return self.render_0_1(&opts, items);
        }
        Ok(self.render_batch(bos, eos, items)?.into_rendered())
    }

    /// Render a batch and keep the answer packed ([`RenderedBatch`]): no per-item
    /// `String`s. Errors: as [`FormatJob::render`].
    pub fn render_batch(&mut self, bos: &str, eos: &str, items: &[RenderItem<'_>]) -> Result<RenderedBatch, RuntimeError> {
        use fb::bagel::plugin::types as t;
        let opts = t::RenderOptions { bos: bos.to_string(), eos: eos.to_string() };
        if let FormatInst::V0_1(_) = self.inst {
            // 0.1.0 answers one record per item: pack it.
            let rendered = self.render_0_1(&opts, items)?;
            let bytes = rendered.iter().flatten().map(|r| r.input.len() + r.output.len()).sum();
            let mut packed = RenderedBatch { text: String::with_capacity(bytes), items: Vec::with_capacity(items.len()) };
            for r in rendered {
                packed.items.push(r.map(|r| {
                    let start = packed.text.len();
                    packed.text.push_str(&r.input);
                    packed.text.push_str(&r.output);
                    (start..start + r.input.len(), start + r.input.len()..packed.text.len())
                }));
            }
            return Ok(packed);
        }
        use fb2::exports::bagel::plugin::format as f;
        let n_turns = items.iter().map(|i| i.conversation.len()).sum();
        let mut batch = f::RenderBatch {
            text: String::with_capacity(items.iter().flat_map(|i| i.conversation).map(|t| t.value.len()).sum()),
            turn_lens: Vec::with_capacity(n_turns),
            turn_roles: Vec::with_capacity(n_turns),
            conversation_turns: Vec::with_capacity(items.len()),
            add_default_system: Vec::with_capacity(items.len()),
        };
        for item in items {
            for turn in item.conversation {
                batch.text.push_str(&turn.value);
                batch.turn_lens.push(len32(&self.plugin, turn.value.len())?);
                batch.turn_roles.push(match turn.from {
                    Role::System => 0,
                    Role::Human => 1,
                    Role::Gpt => 2,
                });
            }
            batch.conversation_turns.push(len32(&self.plugin, item.conversation.len())?);
            batch.add_default_system.push(item.add_default_system);
        }
        let out = self.call("render", |s, i| match i {
            FormatInst::V0_2(i) => i.bagel_plugin_format().call_render(s, &opts, &batch),
            FormatInst::V0_1(_) => unreachable!("0.1.0 handled above"),
        })?;
        self.unpack(items.len(), "render", false, out)
    }

    fn render_0_1(&mut self, opts: &fb::bagel::plugin::types::RenderOptions, items: &[RenderItem<'_>]) -> Result<Vec<Result<Rendered, PluginError>>, RuntimeError> {
        use fb::bagel::plugin::types as t;
        let wit_items: Vec<t::RenderItem> = items
            .iter()
            .map(|i| t::RenderItem {
                conversation: i.conversation.iter().map(|turn| t::Turn { from: role(turn.from), value: turn.value.clone() }).collect(),
                add_default_system: i.add_default_system,
            })
            .collect();
        let out = self.call("render", |s, i| match i {
            FormatInst::V0_1(i) => i.bagel_plugin_format().call_render(s, opts, &wit_items),
            FormatInst::V0_2(_) => unreachable!("only called for 0.1.0"),
        })?;
        if out.len() != items.len() {
            self.poisoned = true;
            return Err(RuntimeError::Malformed { plugin: self.plugin.clone(), call: "render", row: 0, detail: format!("{} results for {} items", out.len(), items.len()) });
        }
        Ok(out.into_iter().map(|r| r.map(|r| Rendered { input: r.input, output: r.output }).map_err(ferr)).collect())
    }

    /// Turn a packed `rendered-batch` into per-item (input, output) byte ranges of its
    /// text, checking that the lengths tile the text exactly and fall on UTF-8
    /// boundaries and that errors name items of the batch in order.
    /// `prompts_only`: DPO prompts, whose output lengths must be 0 (WIT).
    fn unpack(&mut self, n: usize, call: &'static str, prompts_only: bool, out: fb2::exports::bagel::plugin::format::RenderedBatch) -> Result<RenderedBatch, RuntimeError> {
        let plugin = self.plugin.clone();
        let bad = |row: u64, detail: String| RuntimeError::Malformed { plugin: plugin.clone(), call, row, detail };
        let r = (|| {
            if out.lens.len() != 2 * n {
                return Err(bad(0, format!("{} lengths for {} items (want 2 per item)", out.lens.len(), n)));
            }
            let mut errors = out.errors.into_iter().peekable();
            let mut pos = 0usize;
            let mut res = Vec::with_capacity(n);
            for (item, lens) in out.lens.chunks_exact(2).enumerate() {
                if errors.peek().is_some_and(|e| e.item as usize == item) {
                    let e = errors.next().expect("peeked");
                    if lens != [0, 0] {
                        return Err(bad(item as u64, "a failed item has text".into()));
                    }
                    res.push(Err(ferr(e.error)));
                    continue;
                }
                if prompts_only && lens[1] != 0 {
                    return Err(bad(item as u64, format!("a DPO prompt came back with {} bytes of output (must be 0)", lens[1])));
                }
                let (a, b) = (pos + lens[0] as usize, pos + lens[0] as usize + lens[1] as usize);
                if out.text.get(pos..a).is_none() || out.text.get(a..b).is_none() {
                    return Err(bad(item as u64, format!("lengths {}+{} at byte {pos} do not fit the {}-byte text on character boundaries", lens[0], lens[1], out.text.len())));
                }
                res.push(Ok((pos..a, a..b)));
                pos = b;
            }
            if let Some(e) = errors.next() {
                return Err(bad(u64::from(e.item), "an error names no item of the batch, or errors are out of order".into()));
            }
            if pos != out.text.len() {
                return Err(bad(0, format!("lengths cover {pos} of {} bytes of text", out.text.len())));
            }
            Ok(RenderedBatch { text: out.text, items: res })
        })();
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    /// Render DPO prompts: items are (prompt, chosen, coin).
    pub fn render_dpo_prompt(&mut self, bos: &str, eos: &str, items: &[(&str, &str, bool)]) -> Result<Vec<Result<String, PluginError>>, RuntimeError> {
        use fb::bagel::plugin::types as t;
        let opts = t::RenderOptions { bos: bos.to_string(), eos: eos.to_string() };
        if let FormatInst::V0_1(_) = self.inst {
            let wit_items: Vec<t::DpoItem> =
                items.iter().map(|(p, c, coin)| t::DpoItem { prompt: p.to_string(), chosen: c.to_string(), add_default_system: *coin }).collect();
            let out = self.call("render-dpo-prompt", |s, i| match i {
                FormatInst::V0_1(i) => i.bagel_plugin_format().call_render_dpo_prompt(s, &opts, &wit_items),
                FormatInst::V0_2(_) => unreachable!("checked above"),
            })?;
            if out.len() != items.len() {
                self.poisoned = true;
                return Err(RuntimeError::Malformed { plugin: self.plugin.clone(), call: "render-dpo-prompt", row: 0, detail: format!("{} results for {} items", out.len(), items.len()) });
            }
            return Ok(out.into_iter().map(|r| r.map_err(ferr)).collect());
        }
        use fb2::exports::bagel::plugin::format as f;
        let mut batch = f::DpoBatch {
            text: String::with_capacity(items.iter().map(|(p, c, _)| p.len() + c.len()).sum()),
            lens: Vec::with_capacity(2 * items.len()),
            add_default_system: Vec::with_capacity(items.len()),
        };
        for (p, c, coin) in items {
            batch.text.push_str(p);
            batch.text.push_str(c);
            batch.lens.push(len32(&self.plugin, p.len())?);
            batch.lens.push(len32(&self.plugin, c.len())?);
            batch.add_default_system.push(*coin);
        }
        let out = self.call("render-dpo-prompt", |s, i| match i {
            FormatInst::V0_2(i) => i.bagel_plugin_format().call_render_dpo_prompt(s, &opts, &batch),
            FormatInst::V0_1(_) => unreachable!("checked above"),
        })?;
        let packed = self.unpack(items.len(), "render-dpo-prompt", true, out)?;
        let text = packed.text;
        Ok(packed.items.into_iter().map(|r| r.map(|(input, _)| text[input].to_string())).collect())
    }
}

fn role(r: Role) -> fb::bagel::plugin::types::Role {
    use fb::bagel::plugin::types::Role as R;
    match r {
        Role::System => R::System,
        Role::Human => R::Human,
        Role::Gpt => R::Gpt,
    }
}

/// A length as the u32 the packed ABI carries (a batch text is at most 4 GiB).
fn len32(plugin: &str, n: usize) -> Result<u32, RuntimeError> {
    u32::try_from(n).map_err(|_| RuntimeError::Malformed { plugin: plugin.to_string(), call: "render", row: 0, detail: format!("a length of {n} bytes does not fit the packed batch (u32)") })
}
