//! Word n-gram overlap, the contamination test of GPT-3 (Brown et al. 2020, appendix C) and
//! lm-evaluation-harness (`decontamination/janitor.py`): texts are lower-cased, every
//! character that is not alphanumeric becomes a space, and the words are split on
//! whitespace. A training text is flagged when it shares at least one n-gram (default
//! n = 13) with a benchmark text, or — when it has fewer than n words — when its
//! normalised form equals a benchmark text's.
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Normalised words of `text` (lower-cased; non-alphanumerics are separators).
pub fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

fn hash_words(ws: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    for w in ws {
        w.hash(&mut h);
    }
    h.finish()
}

/// A hash set of the benchmark n-grams (64-bit hashes; a collision can only add a false
/// flag, at odds of about k²/2⁶⁴ for k n-grams), each mapped to the first item that has it.
#[derive(Debug, Clone)]
pub struct NgramIndex {
    n: usize,
    grams: HashMap<u64, u32>,
    whole: HashMap<u64, u32>,
}

impl NgramIndex {
    /// An empty index of n-grams of `n` words (`n` ≥ 1).
    pub fn new(n: usize) -> NgramIndex {
        NgramIndex { n: n.max(1), grams: HashMap::new(), whole: HashMap::new() }
    }

    /// Window size n (words).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of distinct n-grams held.
    pub fn len(&self) -> usize {
        self.grams.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.grams.is_empty() && self.whole.is_empty()
    }

    /// Add benchmark item `item`'s text.
    pub fn add(&mut self, item: u32, text: &str) {
        let ws = words(text);
        if ws.len() < self.n {
            self.whole.entry(hash_words(&ws)).or_insert(item);
        } else {
            for g in ws.windows(self.n) {
                self.grams.entry(hash_words(g)).or_insert(item);
            }
        }
    }

    /// The first benchmark item sharing an n-gram with `text` (or equal to it after
    /// normalisation when `text` has fewer than n words), if any.
    pub fn check(&self, text: &str) -> Option<u32> {
        let ws = words(text);
        if ws.len() < self.n {
            return if ws.is_empty() { None } else { self.whole.get(&hash_words(&ws)).copied() };
        }
        ws.windows(self.n).find_map(|g| self.grams.get(&hash_words(g)).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_windows() {
        assert_eq!(words("Janet’s ducks lay 16 eggs, per-day!"), vec!["janet", "s", "ducks", "lay", "16", "eggs", "per", "day"]);
        let mut ix = NgramIndex::new(3);
        ix.add(7, "the quick brown fox jumps");
        ix.add(8, "Hello world");
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.check("A QUICK, brown  fox!"), Some(7), "shares `quick brown fox`");
        assert_eq!(ix.check("the quick red fox jumps"), None, "no 3 consecutive words shared");
        assert_eq!(ix.check("hello, WORLD."), Some(8), "short text equal after normalisation");
        assert_eq!(ix.check("hello world again"), None, "3 words: only 3-grams count");
        assert_eq!(ix.check("..."), None);
    }
}
