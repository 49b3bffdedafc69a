//! Multi-turn expansion, as the reference `expand_conversations` (bagel `data.py`):
//! - ≤ 3 turns: kept as is when the last two turns are human → gpt, else dropped;
//! - longer: optional leading system turn, then strict human/gpt alternation ending in
//!   gpt; one example per gpt turn (the prefix up to and including it). Anything else
//!   yields nothing. Vectors: `../shared/vectors/expand_vectors.json`.
use crate::record::{Role, Turn};

/// Expand one conversation into training examples (prefixes ending at each gpt turn),
/// each an owned copy. [`expansion_prefixes`] gives the same examples without copying.
pub fn expand(conv: &[Turn]) -> Vec<Vec<Turn>> {
    expansion_prefixes(conv)
        .map(|len| conv[..len].to_vec())
        .collect()
}

/// The examples [`expand`] makes of `conv`, as prefix lengths (turns): example k is
/// `conv[..len_k]`, lengths increasing. Empty when the conversation yields nothing.
pub fn expansion_prefixes(conv: &[Turn]) -> impl Iterator<Item = usize> {
    let n = conv.len();
    let (first, step) = if n <= 3 {
        // One example, the whole conversation, when it ends human → gpt.
        if n >= 2 && conv[n - 1].from == Role::Gpt && conv[n - 2].from == Role::Human {
            (n, n)
        } else {
            (n + 1, 1)
        }
    } else {
        let offset = usize::from(conv[0].from == Role::System);
        let alternates = conv.iter().enumerate().skip(offset).all(|(idx, t)| {
            t.from
                == if idx % 2 == offset {
                    Role::Human
                } else {
                    Role::Gpt
                }
        });
        if conv[n - 1].from == Role::Gpt && alternates {
            (offset + 2, 2)
        } else {
            (n + 1, 1)
        }
    };
    (first..=n).step_by(step)
}
