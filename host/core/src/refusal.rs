//! The refusal / "AI-ism" check (SOURCES.md §1.4), the one implementation every plugin
//! reaches through the host import `has-refusal`.
//!
//! Patterns are the reference list (bagel `data_sources/util.py`, `REFUSALS`).
//! - [`RefusalMode::Intended`] (default): case-insensitive search over the whole text, and
//!   family 7 also accepts zero words between the negation and its object
//!   (`(\w+\s)*` instead of `(\w+\s)+`): the labelled vectors
//!   (`refusal_vectors.json`: "I cannot provide you with medical advice." is a refusal)
//!   follow the recipe's intent, which the `+` misses.
//! - [`RefusalMode::Compat`]: what the original actually did (`re.I` passed as the start
//!   position): case-sensitive, starting at code point 2.
use regex::Regex;

/// Which matching the check uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefusalMode {
    /// Case-insensitive over the whole text (the recipe's intent).
    #[default]
    Intended,
    /// Case-sensitive, from code point 2 (the reference's accidental behaviour).
    Compat,
}

/// The reference patterns, in order (Python `re` syntax that the `regex` crate accepts
/// unchanged; `\w`/`\s` are Unicode in both).
pub const PATTERNS: &[&str] = &[
    r"(against|violate) my programming",
    r"openai",
    r"language model",
    r"large language",
    r"as an? (ai|generative language|gpt|bot)",
    r"important to note",
    r"i do(n't| not) (possess|have|exhibit) (personal|consciousness|subjective)",
    r"personal (feelings|thoughts|emotions|desires|experiences|goals|objective|belief)",
    r"(can('t| ?not)|w(on't|will not)|unable.?) (\w+\s)+(with (that|your)|your \w+|provide)",
    r"my limitations",
    r"the limitations of my",
    r"my abilities",
    r"violates my",
    r"i (can('t| ?not)|w(on't|will not)|am (not |un)able.?).{0,30}(you are|you're|your )",
    r"please note that",
    r"unethical|illegal|dangerous",
    r"a text-based",
    r"(engag(e|ing)|participat(e|ing)|be involved (in|with)|promot(e|ing)|discuss(ing)?|provid(e|ing))( in)?(\s*\w+ that)?(\s+potentially)? (derogatory|inappropriate|offensive|discriminate|discriminatory|sexist|unacceptable|immoral|unethical|unacceptable|hateful|harmful)",
    r"i am commited to",
    r"adhere to safety guidelines",
    r"maintain user safety",
    r"about something else instead",
];

/// Compiled refusal check.
#[derive(Debug, Clone)]
pub struct RefusalFilter {
    mode: RefusalMode,
    re: Regex,
}

impl RefusalFilter {
    /// Compile all patterns into one alternation.
    pub fn new(mode: RefusalMode) -> RefusalFilter {
        let body = PATTERNS
            .iter()
            .map(|p| match mode {
                RefusalMode::Intended => format!("(?:{})", p.replace(r") (\w+\s)+(with", r") (\w+\s)*(with")),
                RefusalMode::Compat => format!("(?:{p})"),
            })
            .collect::<Vec<_>>()
            .join("|");
        let flags = match mode {
            RefusalMode::Intended => "(?i)",
            RefusalMode::Compat => "",
        };
        let re = Regex::new(&format!("{flags}{body}")).expect("refusal patterns are valid");
        RefusalFilter { mode, re }
    }

    /// True when any pattern occurs in `text`.
    pub fn is_refusal(&self, text: &str) -> bool {
        match self.mode {
            RefusalMode::Intended => self.re.is_match(text),
            RefusalMode::Compat => {
                let start = text.char_indices().nth(2).map(|(i, _)| i);
                match start {
                    Some(i) => self.re.is_match_at(text, i),
                    None => false,
                }
            }
        }
    }
}

impl Default for RefusalFilter {
    fn default() -> Self {
        RefusalFilter::new(RefusalMode::Intended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_mode_reproduces_the_bug() {
        let c = RefusalFilter::new(RefusalMode::Compat);
        assert!(!c.is_refusal("OpenAI made me"), "case-sensitive");
        assert!(!c.is_refusal("illegal"), "starts at code point 0");
        assert!(c.is_refusal("xx illegal"));
        assert!(!c.is_refusal("é"), "short text");
        let i = RefusalFilter::default();
        assert!(i.is_refusal("OpenAI made me"));
        assert!(i.is_refusal("illegal"));
        assert!(i.is_refusal("as a bottle"), "prefix match is part of the reference");
    }
}
