//! The shared known-keys set (SOURCES.md §1.1): one set for all sources, consulted in
//! load order (priority high → low, ties by name).
use crate::record::DedupMode;
use std::collections::HashSet;

/// Known dedup keys (uuid5 strings).
#[derive(Debug, Default, Clone)]
pub struct KnownKeys {
    keys: HashSet<String>,
}

impl KnownKeys {
    /// Empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one record's mode; returns `true` when the record is kept.
    /// CA: keep iff unknown, then add. C: keep iff unknown, never add. A: add, keep.
    /// N: keep, set untouched.
    pub fn admit(&mut self, id: &str, mode: DedupMode) -> bool {
        match mode {
            DedupMode::CheckAdd => {
                if self.keys.contains(id) {
                    false
                } else {
                    self.keys.insert(id.to_string());
                    true
                }
            }
            DedupMode::CheckOnly => !self.keys.contains(id),
            DedupMode::AddOnly => {
                self.keys.insert(id.to_string());
                true
            }
            DedupMode::None => true,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_sources_md() {
        let mut k = KnownKeys::new();
        assert!(k.admit("a", DedupMode::CheckAdd));
        assert!(!k.admit("a", DedupMode::CheckAdd));
        assert!(!k.admit("a", DedupMode::CheckOnly));
        assert!(k.admit("b", DedupMode::CheckOnly));
        assert!(k.admit("b", DedupMode::CheckOnly), "C never adds, so duplicates survive");
        assert!(k.admit("a", DedupMode::AddOnly));
        assert!(k.admit("c", DedupMode::AddOnly));
        assert!(!k.admit("c", DedupMode::CheckAdd));
        assert!(k.admit("c", DedupMode::None));
        assert_eq!(k.len(), 2);
    }
}
