//! Engine, plugin discovery, compilation (cached) and validation.
use crate::bindings::{format as fb, format_0_2 as fb2, source as sb, source_0_2 as sb2};
use crate::host::{HostState, MemLimiter};
use crate::{cache, Limits, RuntimeError};
use bagel_core::refusal::{RefusalFilter, RefusalMode};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

/// Epoch tick period; [`Limits::call_timeout`] is measured in these ticks.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Epoch ticks for a call: one more than `call_timeout / TICK` (rounded up), because the
/// first tick can come at any time within the first period. A call is therefore stopped
/// after at least `call_timeout` and at most `call_timeout + 2·TICK` (plus scheduling).
pub(crate) fn deadline_ticks(limits: Limits) -> u64 {
    let t = TICK.as_nanos();
    (limits.call_timeout.as_nanos().div_ceil(t) as u64).max(1) + 1
}

/// Record kinds a source declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Conversations.
    Sft,
    /// DPO pairs.
    Dpo,
    /// Plain text.
    Text,
}

/// File-format hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// By extension.
    Auto,
    /// JSON array.
    Json,
    /// JSON lines.
    Jsonl,
    /// CSV with header.
    Csv,
    /// TSV with header.
    Tsv,
    /// Parquet.
    Parquet,
}

/// One declared input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Input name.
    pub name: String,
    /// HF dataset id.
    pub dataset: String,
    /// Globs relative to the dataset dir; `{param}` is replaced by parameter values.
    pub patterns: Vec<String>,
    /// Format hint.
    pub format: InputFormat,
}

/// One declared parameter (`default` is JSON text).
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Name.
    pub name: String,
    /// Default, JSON text.
    pub default: String,
    /// Description.
    pub description: String,
}

/// A source plugin's self-description.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Priority (higher first).
    pub priority: i32,
    /// Emitted kinds.
    pub kinds: Vec<RecordKind>,
    /// Inputs.
    pub inputs: Vec<InputSpec>,
    /// Parameters.
    pub params: Vec<ParamSpec>,
    /// Description.
    pub description: String,
}

/// A format plugin's self-description.
#[derive(Debug, Clone)]
pub struct FormatInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Description.
    pub description: String,
}

/// Which world a plugin implements, with its info.
#[derive(Debug, Clone)]
pub enum PluginKind {
    /// `source-plugin`.
    Source(SourceInfo),
    /// `format-plugin`.
    Format(FormatInfo),
}

/// Pre-instantiated component, per world and WIT version.
pub(crate) enum Pre {
    Source(SourcePre),
    Format(FormatPre),
}

pub(crate) enum SourcePre {
    V0_1(sb::SourcePluginPre<HostState>),
    V0_2(sb2::SourcePluginPre<HostState>),
}

pub(crate) enum FormatPre {
    V0_1(fb::FormatPluginPre<HostState>),
    V0_2(fb2::FormatPluginPre<HostState>),
}

/// WIT package versions this host loads, oldest first. A component must import and
/// export interfaces of exactly one of them.
pub const WIT_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// A loaded, validated plugin, ready to start jobs.
pub struct Plugin {
    /// Name from its info.
    pub name: String,
    /// File it was loaded from.
    pub file: PathBuf,
    /// sha256 of the component bytes, hex.
    pub sha256: String,
    /// World and info.
    pub kind: PluginKind,
    /// Whether compiled code came from the cache.
    pub from_cache: bool,
    /// The `bagel:plugin` WIT version it was built against (one of [`WIT_VERSIONS`]).
    pub wit_version: &'static str,
    pub(crate) pre: Pre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("file", &self.file).field("sha256", &self.sha256).field("kind", &self.kind).finish()
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The plugin runtime: one engine, linkers for both worlds, limits and the cache.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
    pub(crate) refusal: Arc<RefusalFilter>,
    cache_dir: Option<PathBuf>,
    /// Linkers per world, indexed like [`WIT_VERSIONS`].
    source_linkers: [Linker<HostState>; 2],
    format_linkers: [Linker<HostState>; 2],
    _ticker: Ticker,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_path_buf(), source }
}

impl Runtime {
    /// Create a runtime. `cache_dir = None` disables the compiled-code cache.
    ///
    /// Errors: [`RuntimeError::Compile`] if the engine cannot be configured.
    pub fn new(limits: Limits, refusal: RefusalMode, cache_dir: Option<PathBuf>) -> Result<Runtime, RuntimeError> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        // Fill function tables at instantiation instead of checking on every
        // `call_indirect` (Rust's `dyn` calls, e.g. all of `core::fmt`): instances are
        // created once per job and called many times.
        config.table_lazy_init(false);
        // `BAGEL_WASM_PERFMAP=1`: write /tmp/perf-PID.map so `perf report` names the
        // plugins' compiled functions (build plugins with `strip = false` to get names).
        if std::env::var_os("BAGEL_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Compile { plugin: "<engine>".into(), message: e.to_string() })?;
        let link_err = |e: wasmtime::Error| RuntimeError::Compile { plugin: "<linker>".into(), message: e.to_string() };
        type H = wasmtime::component::HasSelf<HostState>;
        let mut source_linkers = [Linker::new(&engine), Linker::new(&engine)];
        sb::SourcePlugin::add_to_linker::<_, H>(&mut source_linkers[0], |s: &mut HostState| s).map_err(link_err)?;
        sb2::SourcePlugin::add_to_linker::<_, H>(&mut source_linkers[1], |s: &mut HostState| s).map_err(link_err)?;
        let mut format_linkers = [Linker::new(&engine), Linker::new(&engine)];
        fb::FormatPlugin::add_to_linker::<_, H>(&mut format_linkers[0], |s: &mut HostState| s).map_err(link_err)?;
        fb2::FormatPlugin::add_to_linker::<_, H>(&mut format_linkers[1], |s: &mut HostState| s).map_err(link_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let engine = engine.clone();
            std::thread::Builder::new()
                .name("bagel-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .expect("spawn epoch ticker");
        }
        Ok(Runtime { engine, limits, refusal: Arc::new(RefusalFilter::new(refusal)), cache_dir, source_linkers, format_linkers, _ticker: Ticker { stop } })
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Paths of every `*.wasm` file directly under `dir`, sorted.
    pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Load every plugin under `dir`; one result per file, in file-name order.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<Result<Plugin, RuntimeError>>, RuntimeError> {
        Ok(Self::discover(dir)?.iter().map(|p| self.load_file(p)).collect())
    }

    /// Load, validate and describe one component file.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, RuntimeError> {
        let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes = std::fs::read(path).map_err(io(path))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let (component, from_cache) = self.compile_cached(&file_name, &bytes, &sha256)?;

        // Imports: only bagel:plugin interfaces, all of one supported version.
        let ty = component.component_type();
        let mut version: Option<&'static str> = None;
        for (name, _) in ty.imports(&self.engine) {
            let v = name.strip_prefix("bagel:plugin/").and_then(|rest| rest.split_once('@')).and_then(|(_, v)| WIT_VERSIONS.iter().find(|s| **s == v));
            match (v, version) {
                (Some(v), None) => version = Some(v),
                (Some(v), Some(seen)) if *v == seen => {}
                _ => return Err(RuntimeError::ForbiddenImport { plugin: file_name, import: name.to_string() }),
            }
        }
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let world = |w: &str| {
            WIT_VERSIONS.iter().position(|v| exports.iter().any(|e| *e == format!("bagel:plugin/{w}@{v}")) && version.is_none_or(|seen| seen == *v))
        };
        let inst_err = |e: wasmtime::Error| RuntimeError::Instantiate { plugin: file_name.clone(), message: format!("{e:#}") };
        let mut store = self.store(&file_name, 0);
        // Typed pre-instance of one world and version, plus that plugin's `info()`.
        macro_rules! pre_and_info {
            ($ipre:expr, $pre:ty, $iface:ident, $wrap:expr) => {{
                let pre = <$pre>::new($ipre).map_err(inst_err)?;
                let inst = pre.instantiate(&mut store).map_err(inst_err)?;
                (crate::job::guard(&mut store, &file_name, "info", self.limits, |s| inst.$iface().call_info(s))?, $wrap(pre))
            }};
        }
        let (kind, pre, v) = if let Some(v) = world("source") {
            let ipre = self.source_linkers[v].instantiate_pre(&component).map_err(inst_err)?;
            let (info, pre) = if v == 0 {
                pre_and_info!(ipre, sb::SourcePluginPre<HostState>, bagel_plugin_source, SourcePre::V0_1)
            } else {
                pre_and_info!(ipre, sb2::SourcePluginPre<HostState>, bagel_plugin_source, SourcePre::V0_2)
            };
            (PluginKind::Source(crate::job::conv_source_info(info)), Pre::Source(pre), v)
        } else if let Some(v) = world("format") {
            let ipre = self.format_linkers[v].instantiate_pre(&component).map_err(inst_err)?;
            let (info, pre) = if v == 0 {
                pre_and_info!(ipre, fb::FormatPluginPre<HostState>, bagel_plugin_format, FormatPre::V0_1)
            } else {
                pre_and_info!(ipre, fb2::FormatPluginPre<HostState>, bagel_plugin_format, FormatPre::V0_2)
            };
            (PluginKind::Format(FormatInfo { name: info.name, version: info.version, description: info.description }), Pre::Format(pre), v)
        } else {
            return Err(RuntimeError::UnknownWorld { plugin: file_name });
        };
        let name = match &kind {
            PluginKind::Source(i) => i.name.clone(),
            PluginKind::Format(i) => i.name.clone(),
        };
        Ok(Plugin { name, file: path.to_path_buf(), sha256, kind, from_cache, wit_version: WIT_VERSIONS[v], pre })
    }

    fn compile_cached(&self, plugin: &str, bytes: &[u8], sha256: &str) -> Result<(Component, bool), RuntimeError> {
        let compile_err = |e: wasmtime::Error| RuntimeError::Compile { plugin: plugin.to_string(), message: format!("{e:#}") };
        if let Some(dir) = &self.cache_dir {
            let key = cache::key(&self.engine, sha256);
            let file = cache::path(dir, &key);
            if file.exists() {
                // SAFETY: the file was produced by `Component::serialize` of this very
                // engine configuration (the key includes the engine's compatibility
                // hash) and is only ever written by us via rename, never in place.
                match unsafe { Component::deserialize_file(&self.engine, &file) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => tracing::warn!("ignoring unreadable cache entry {}: {e}", file.display()),
                }
            }
            let component = Component::new(&self.engine, bytes).map_err(compile_err)?;
            if let Ok(serialized) = component.serialize() {
                let _ = std::fs::create_dir_all(dir);
                let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
                if std::fs::write(&tmp, &serialized).is_ok() {
                    let _ = std::fs::rename(&tmp, &file);
                }
            }
            return Ok((component, false));
        }
        Ok((Component::new(&self.engine, bytes).map_err(compile_err)?, false))
    }

    pub(crate) fn store(&self, plugin: &str, seed: u64) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState { plugin: plugin.to_string(), seed, refusal: self.refusal.clone(), limiter: MemLimiter { cap: self.limits.memory_bytes, tripped: false } },
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        // Instantiation may run guest code too: it gets the same wall-clock budget.
        store.set_epoch_deadline(deadline_ticks(self.limits));
        store
    }
}
