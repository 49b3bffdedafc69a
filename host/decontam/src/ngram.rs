//! Word n-gram overlap, the contamination test of GPT-3 (Brown et al. 2020, appendix C) and
//! lm-evaluation-harness (`decontamination/janitor.py`): texts are lower-cased, every
//! character that is not alphanumeric becomes a space, and the words are split on
//! whitespace. A training text is flagged when it shares at least one n-gram (default
//! n = 13) with a benchmark text, or — when it has fewer than n words — when its
//! normalised form equals a benchmark text's.
//!
//! Extension over the reference rule: an n-gram found in more than `max_items` distinct
//! benchmark items is **boilerplate** (a prompt template, e.g. the 22-word stem shared by
//! all 895 MMLU `moral_scenarios` test questions) and is not used; without this, every
//! training question built on the same template is flagged. `max_items = 0` disables the
//! rule.
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
    max_items: usize,
    /// n-gram hash → (first item, distinct items holding it).
    grams: HashMap<u64, (u32, u32)>,
    whole: HashMap<u64, u32>,
}

impl NgramIndex {
    /// An empty index of n-grams of `n` words (`n` ≥ 1); n-grams held by more than
    /// `max_items` items are ignored as boilerplate (0: never).
    pub fn new(n: usize, max_items: usize) -> NgramIndex {
        NgramIndex { n: n.max(1), max_items, grams: HashMap::new(), whole: HashMap::new() }
    }

    /// Number of n-grams ignored as boilerplate.
    pub fn boilerplate(&self) -> usize {
        if self.max_items == 0 { 0 } else { self.grams.values().filter(|(_, c)| *c as usize > self.max_items).count() }
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
            let mut mine = std::collections::HashSet::new();
            for g in ws.windows(self.n) {
                let h = hash_words(g);
                if mine.insert(h) {
                    let e = self.grams.entry(h).or_insert((item, 0));
                    e.1 += 1;
                }
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
        ws.windows(self.n).find_map(|g| match self.grams.get(&hash_words(g)) {
            Some(&(item, count)) if self.max_items == 0 || count as usize <= self.max_items => Some(item),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_windows() {
        assert_eq!(words("Janet’s ducks lay 16 eggs, per-day!"), vec!["janet", "s", "ducks", "lay", "16", "eggs", "per", "day"]);
        let mut ix = NgramIndex::new(3, 2);
        ix.add(7, "the quick brown fox jumps");
        ix.add(8, "Hello world");
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.check("A QUICK, brown  fox!"), Some(7), "shares `quick brown fox`");
        assert_eq!(ix.check("the quick red fox jumps"), None, "no 3 consecutive words shared");
        assert_eq!(ix.check("hello, WORLD."), Some(8), "short text equal after normalisation");
        assert_eq!(ix.check("hello world again"), None, "3 words: only 3-grams count");
        assert_eq!(ix.check("..."), None);
        // `answer the question` in 3 items > max_items 2: boilerplate, ignored.
        ix.add(1, "answer the question what is red");
        ix.add(2, "answer the question who is blue");
        assert_eq!(ix.check("please answer the question now"), Some(1));
        ix.add(3, "answer the question why is green");
        assert_eq!(ix.boilerplate(), 1);
        assert_eq!(ix.check("please answer the question now"), None);
        assert_eq!(ix.check("question why is"), Some(3), "a rare n-gram still counts");
    }
}
