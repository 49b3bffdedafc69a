//! Host-side record model (mirrors WIT `bagel:plugin/types`, 0.1.0 and 0.2.0).
use serde::{Deserialize, Serialize};

/// ShareGPT role, serialised as `system` / `human` / `gpt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// First turn only.
    System,
    /// User.
    Human,
    /// Assistant.
    Gpt,
}

impl Role {
    /// The ShareGPT name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Human => "human",
            Role::Gpt => "gpt",
        }
    }
}

/// One ShareGPT turn `{from, value}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Turn {
    /// Role.
    pub from: Role,
    /// Text (byte-exact).
    pub value: String,
}

impl Turn {
    /// Convenience constructor.
    pub fn new(from: Role, value: impl Into<String>) -> Turn {
        Turn { from, value: value.into() }
    }
}

/// Dedup mode (SOURCES.md §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupMode {
    /// CA: skip when known, add when kept.
    CheckAdd,
    /// C: skip when known, never add.
    CheckOnly,
    /// A: add, never check.
    AddOnly,
    /// N: no dedup.
    None,
}

/// A DPO pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpoPair {
    /// Unrendered prompt.
    pub prompt: String,
    /// Preferred reply.
    pub chosen: String,
    /// Dispreferred reply.
    pub rejected: String,
    /// Optional SFT conversation of the same row.
    pub conversation: Option<Vec<Turn>>,
}

/// Record payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// SFT conversation.
    Conversation(Vec<Turn>),
    /// DPO pair.
    Dpo(DpoPair),
    /// Plain text.
    Text(String),
}

/// One record after a source ran: `id` = uuid5(key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// uuid5(NAMESPACE_OID, key), 36 chars.
    pub id: String,
    /// Source label (`source` column).
    pub source: String,
    /// Payload.
    pub payload: Payload,
}

impl Record {
    /// The conversation of an SFT row (also of a DPO row that carries one).
    pub fn conversation(&self) -> Option<&[Turn]> {
        match &self.payload {
            Payload::Conversation(c) => Some(c),
            Payload::Dpo(p) => p.conversation.as_deref(),
            Payload::Text(_) => None,
        }
    }

    /// The text decontamination checks (SOURCES.md §2): the DPO prompt, else the first
    /// human turn; `None` for plain text.
    pub fn checked_text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Dpo(p) => Some(&p.prompt),
            Payload::Conversation(c) => c.iter().find(|t| t.from == Role::Human).map(|t| t.value.as_str()),
            Payload::Text(_) => None,
        }
    }
}

/// Validate the turn layout every source must emit: non-empty, `system` only first.
/// Returns a description of the first violation.
pub fn validate_turns(turns: &[Turn]) -> Result<(), String> {
    if turns.is_empty() {
        return Err("empty conversation".into());
    }
    if let Some(i) = turns.iter().skip(1).position(|t| t.from == Role::System) {
        return Err(format!("system turn at position {} (only the first turn may be system)", i + 1));
    }
    Ok(())
}
