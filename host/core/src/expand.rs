//! Multi-turn expansion, as the reference `expand_conversations` (bagel `data.py`):
//! - ≤ 3 turns: kept as is when the last two turns are human → gpt, else dropped;
//! - longer: optional leading system turn, then strict human/gpt alternation ending in
//!   gpt; one example per gpt turn (the prefix up to and including it). Anything else
//!   yields nothing. Vectors: `../shared/vectors/expand_vectors.json`.
use crate::record::{Role, Turn};

/// Expand one conversation into training examples (prefixes ending at each gpt turn).
pub fn expand(conv: &[Turn]) -> Vec<Vec<Turn>> {
    let n = conv.len();
    if n <= 3 {
        if n >= 2 && conv[n - 1].from == Role::Gpt && conv[n - 2].from == Role::Human {
            return vec![conv.to_vec()];
        }
        return Vec::new();
    }
    let offset = usize::from(conv[0].from == Role::System);
    if conv[n - 1].from != Role::Gpt {
        return Vec::new();
    }
    for (idx, t) in conv.iter().enumerate().skip(offset) {
        let expected = if idx % 2 == offset { Role::Human } else { Role::Gpt };
        if t.from != expected {
            return Vec::new();
        }
    }
    (offset..n).step_by(2).map(|idx| conv[..idx + 2].to_vec()).collect()
}
