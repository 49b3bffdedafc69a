//! Plain-Rust data model mirroring `bagel:plugin/types` (unchanged from 0.1.0 to 0.2.0).

/// ShareGPT role (`from`): `system` (first turn only), `human`, `gpt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// System prompt; only valid as the first turn.
    System,
    /// The user.
    Human,
    /// The assistant.
    Gpt,
}

/// One ShareGPT turn `{from, value}`; the value is carried byte-exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// The role.
    pub from: Role,
    /// The text, unmodified.
    pub value: String,
}

impl Turn {
    /// A turn with the given role and text.
    pub fn new(from: Role, value: impl Into<String>) -> Self {
        Turn { from, value: value.into() }
    }

    /// This turn, borrowed.
    pub fn to_ref(&self) -> TurnRef<'_> {
        TurnRef { from: self.from, value: &self.value }
    }
}

/// One ShareGPT turn borrowed from someone else's text: what the format glue hands to
/// [`crate::format::Format::render_into`] (slices of the host's batch, no copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnRef<'a> {
    /// The role.
    pub from: Role,
    /// The text, unmodified.
    pub value: &'a str,
}

/// Read access to a turn, owned ([`Turn`]) or borrowed ([`TurnRef`]), so that one
/// prompt-format implementation (generic over `T: AsTurn`) serves both
/// [`crate::format::Format::render`] and [`crate::format::Format::render_into`].
pub trait AsTurn {
    /// The role (`from`).
    fn role(&self) -> Role;
    /// The text (`value`).
    fn text(&self) -> &str;
}

impl AsTurn for Turn {
    fn role(&self) -> Role {
        self.from
    }
    fn text(&self) -> &str {
        &self.value
    }
}

impl AsTurn for TurnRef<'_> {
    fn role(&self) -> Role {
        self.from
    }
    fn text(&self) -> &str {
        self.value
    }
}

/// The reference `as_conversation(instruction, response, system)` (SOURCES.md §1.2):
/// an optional system turn (only when non-empty), then human, then gpt. No stripping.
pub fn as_conversation(instruction: &str, response: &str, system: Option<&str>) -> Vec<Turn> {
    let mut turns = Vec::with_capacity(3);
    if let Some(s) = system.filter(|s| !s.is_empty()) {
        turns.push(Turn::new(Role::System, s));
    }
    turns.push(Turn::new(Role::Human, instruction));
    turns.push(Turn::new(Role::Gpt, response));
    turns
}

/// How a record's key interacts with the host's known-keys set (SOURCES.md §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// CA: skip if known; add when emitted.
    CheckAdd,
    /// C: skip if known; never add.
    CheckOnly,
    /// A: add without checking.
    AddOnly,
    /// N: not deduplicated; the key is only the row id.
    None,
}

/// A DPO pair; `conversation` is set when the row is also an SFT row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpoPair {
    /// The prompt (human text), not yet rendered in a prompt format.
    pub prompt: String,
    /// The preferred reply.
    pub chosen: String,
    /// The dispreferred reply.
    pub rejected: String,
    /// Optional SFT conversation carried by the same row.
    pub conversation: Option<Vec<Turn>>,
}

/// What a record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A ShareGPT conversation (SFT).
    Conversation(Vec<Turn>),
    /// A DPO pair.
    Dpo(DpoPair),
    /// Plain text (written with input "" and source `<label>_plain_text`).
    Text(String),
}

/// One record a source emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 0-based row index within its input.
    pub row: u64,
    /// Value of the `source` column.
    pub label: String,
    /// Text whose uuid5 is the dedup key and the row id.
    pub key: String,
    /// Dedup mode.
    pub mode: DedupMode,
    /// The payload.
    pub payload: Payload,
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

/// File-format hint for an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Decide by extension.
    Auto,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated with a header row.
    Csv,
    /// Tab-separated with a header row.
    Tsv,
    /// Apache Parquet.
    Parquet,
}

/// One input a source needs.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Name used in `push_rows` and in recipes.
    pub name: String,
    /// HF dataset id (`allenai/ai2_arc`); also the hub-cache lookup key.
    pub dataset: String,
    /// Globs relative to the dataset directory.
    pub patterns: Vec<String>,
    /// Format hint.
    pub format: InputFormat,
}

/// A declared parameter; `default` is JSON text (`"0.5"`, `"\"ARC-Easy\""`, `"true"`).
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Name.
    pub name: String,
    /// Default value as JSON text.
    pub default: String,
    /// One-line description.
    pub description: String,
}

/// Self-description of a source plugin.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Plugin name (unique among installed plugins).
    pub name: String,
    /// Plugin version (semver).
    pub version: String,
    /// Higher runs first; ties run by name.
    pub priority: i32,
    /// What it emits.
    pub kinds: Vec<RecordKind>,
    /// What it reads.
    pub inputs: Vec<InputSpec>,
    /// Parameters with defaults.
    pub params: Vec<ParamSpec>,
    /// Description.
    pub description: String,
}

/// Why a row was dropped on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The refusal filter fired.
    Refusal,
    /// A source-specific filter (named).
    Filtered(String),
}

/// Errors a plugin returns to the host (WIT `plugin-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// A parameter was unknown or malformed.
    BadParam(String),
    /// An input is unusable as a whole.
    BadInput(String),
    /// A bug or unexpected state.
    Internal(String),
}

/// Collects what a source produces for one batch.
#[derive(Debug, Default)]
pub struct Output {
    /// Emitted records, in order.
    pub records: Vec<Record>,
    /// Rows dropped by filters: (row, reason).
    pub dropped: Vec<(u64, DropReason)>,
    /// Rows that could not be parsed: (row, message).
    pub invalid: Vec<(u64, String)>,
}

impl Output {
    /// Emit a conversation record.
    pub fn conversation(&mut self, row: u64, label: &str, key: String, mode: DedupMode, turns: Vec<Turn>) {
        self.records.push(Record { row, label: label.to_string(), key, mode, payload: Payload::Conversation(turns) });
    }
    /// Emit a DPO record.
    pub fn dpo(&mut self, row: u64, label: &str, key: String, mode: DedupMode, pair: DpoPair) {
        self.records.push(Record { row, label: label.to_string(), key, mode, payload: Payload::Dpo(pair) });
    }
    /// Emit a plain-text record.
    pub fn text(&mut self, row: u64, label: &str, key: String, mode: DedupMode, text: String) {
        self.records.push(Record { row, label: label.to_string(), key, mode, payload: Payload::Text(text) });
    }
    /// Record a refusal drop.
    pub fn refused(&mut self, row: u64) {
        self.dropped.push((row, DropReason::Refusal));
    }
    /// Record a filter drop.
    pub fn filtered(&mut self, row: u64, why: &str) {
        self.dropped.push((row, DropReason::Filtered(why.to_string())));
    }
    /// Record an invalid row.
    pub fn invalid(&mut self, row: u64, message: impl Into<String>) {
        self.invalid.push((row, message.into()));
    }
}

/// Format metadata.
#[derive(Debug, Clone)]
pub struct FormatInfo {
    /// Name used by `--formats`.
    pub name: String,
    /// Version.
    pub version: String,
    /// Description.
    pub description: String,
}

/// BOS/EOS strings from the tokenizer (default `<s>` / `</s>`).
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// BOS string.
    pub bos: String,
    /// EOS string.
    pub eos: String,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions { bos: "<s>".into(), eos: "</s>".into() }
    }
}

/// One rendered SFT example.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Model input (prompt), no BOS token prepended by the format unless the format says so.
    pub input: String,
    /// Target output (loss is computed on it).
    pub output: String,
}
