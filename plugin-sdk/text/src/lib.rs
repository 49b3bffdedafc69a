//! Python-compatible text helpers shared by the plugin SDK (inside WASM) and the host.
//!
//! The reference recipe (jondurbin/bagel, commit 3c7d241) is Python; these functions
//! reproduce the exact string semantics it relies on:
//! - [`is_py_space`] / [`py_strip`] / [`py_lstrip`]: Python `str.isspace` / `str.strip()`.
//! - [`collapse_newlines`] / [`collapse_newlines_into`]: `re.sub(r"(\s*\n){3,}", "\n\n", s)` (bagel `data.py`).
//! - [`uid`]: `str(uuid.uuid5(uuid.NAMESPACE_OID, text))` (SOURCES.md §1.1).
#![forbid(unsafe_code)]

/// Python's `str.isspace()` for one code point: Rust's Unicode `White_Space` plus
/// U+001C..=U+001F (which Python counts as whitespace and Rust does not).
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `s.strip()`: trims [`is_py_space`] characters from both ends.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python `s.lstrip()`.
pub fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(is_py_space)
}

/// Python `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// `re.sub(r"(\s*\n){3,}", "\n\n", s)` with Python's Unicode `\s`, as a new string.
/// See [`collapse_newlines_into`].
pub fn collapse_newlines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    collapse_newlines_into(s, &mut out);
    out
}

/// Append `re.sub(r"(\s*\n){3,}", "\n\n", s)` (Python's Unicode `\s`) to `out`.
///
/// Equivalent closed form: in every maximal run of whitespace that holds at least three
/// `\n`, the part from the run's start through its last `\n` becomes `"\n\n"`; whitespace
/// after that last `\n` is kept. Runs with fewer than three newlines are unchanged.
///
/// Only whitespace runs that contain a `\n` can change. Newlines are found with
/// `str::find` (word-at-a-time), and text is copied only where a run collapses and at the
/// end, so a text with nothing to collapse is one copy.
pub fn collapse_newlines_into(s: &str, out: &mut String) {
    // `copied`: bytes of `s` already in `out`; 0 or just past a collapsed run's last `\n`.
    // `from`: where to look for the next newline; 0 or the end of a maximal whitespace
    // run, so the char at `from` (if any) is not whitespace.
    let mut copied = 0;
    let mut from = 0;
    while let Some(off) = s[from..].find('\n') {
        let nl = from + off;
        // Maximal whitespace run around this newline: [start, end).
        let start = s[from..nl].char_indices().rev().take_while(|&(_, c)| is_py_space(c)).last().map_or(nl, |(i, _)| from + i);
        let mut end = nl;
        let mut newlines = 0usize;
        let mut last_nl_end = nl + 1;
        for c in s[nl..].chars() {
            if !is_py_space(c) {
                break;
            }
            end += c.len_utf8();
            if c == '\n' {
                newlines += 1;
                last_nl_end = end;
            }
        }
        if newlines >= 3 {
            out.push_str(&s[copied..start]);
            out.push_str("\n\n");
            copied = last_nl_end;
        }
        from = end;
    }
    out.push_str(&s[copied..]);
}

/// The dedup key / row id: `uuid5(NAMESPACE_OID, text)` as a lowercase hyphenated string
/// of 36 characters (SOURCES.md §1.1; RFC 4122 §4.3: the first 16 bytes of
/// SHA-1(namespace ‖ name) with the version and variant bits set). SHA-1 comes from the
/// `sha1` crate, which uses the CPU's SHA instructions where it has them (the `uuid`
/// crate's own v5 hashes in portable code, 3–4× slower on long keys).
pub fn uid(text: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::new()
        .chain_update(uuid::Uuid::NAMESPACE_OID.as_bytes())
        .chain_update(text.as_bytes())
        .finalize();
    let bytes: [u8; 16] = digest[..16].try_into().expect("SHA-1 digests are 20 bytes");
    let id = uuid::Builder::from_sha1_bytes(bytes).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_equals_char_by_char_definition() {
        // The closed form above, written char by char: the previous implementation.
        fn oracle(s: &str) -> String {
            let mut out = String::new();
            let mut chars = s.char_indices().peekable();
            while let Some((start, c)) = chars.next() {
                if !is_py_space(c) {
                    out.push(c);
                    continue;
                }
                let (mut end, mut newlines, mut last) = (start + c.len_utf8(), usize::from(c == '\n'), None);
                if c == '\n' {
                    last = Some(end);
                }
                while let Some(&(i, d)) = chars.peek() {
                    if !is_py_space(d) {
                        break;
                    }
                    chars.next();
                    end = i + d.len_utf8();
                    if d == '\n' {
                        newlines += 1;
                        last = Some(end);
                    }
                }
                match last {
                    Some(l) if newlines >= 3 => {
                        out.push_str("\n\n");
                        out.push_str(&s[l..end]);
                    }
                    _ => out.push_str(&s[start..end]),
                }
            }
            out
        }
        // Every string of length <= 6 over an alphabet with ASCII and Unicode whitespace.
        let alphabet = ['a', '\n', ' ', '\t', '\u{3000}', '\u{1f}', '語'];
        let mut count = 0;
        for len in 0..=6u32 {
            for mut code in 0..(alphabet.len() as u64).pow(len) {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(alphabet[(code % alphabet.len() as u64) as usize]);
                    code /= alphabet.len() as u64;
                }
                assert_eq!(collapse_newlines(&s), oracle(&s), "{s:?}");
                count += 1;
            }
        }
        assert_eq!(count, 137_257);
    }

    #[test]
    fn collapse_matches_python_examples() {
        // Hand-checked against CPython 3.11 `re.sub(r"(\s*\n){3,}", "\n\n", s)`.
        assert_eq!(
            collapse_newlines("\n\nLine one\n\n\n\nLine two\n \n \n\nLine three  "),
            "\n\nLine one\n\nLine two\n\nLine three  "
        );
        assert_eq!(collapse_newlines("a\n\nb"), "a\n\nb");
        assert_eq!(collapse_newlines("a\n\n\nb"), "a\n\nb");
        assert_eq!(collapse_newlines("a \n \n \n  b"), "a\n\n  b");
        assert_eq!(collapse_newlines("\n\n\n"), "\n\n");
        assert_eq!(collapse_newlines("x\u{1f}\n\n\ny"), "x\n\ny");
        assert_eq!(collapse_newlines("日本\n\n\n\n語"), "日本\n\n語");
        // `_into` appends to what the buffer holds.
        let mut out = String::from("kept|");
        collapse_newlines_into("a \n \n \n  b\n\n\n", &mut out);
        assert_eq!(out, "kept|a\n\n  b\n\n");
    }

    #[test]
    fn strip_is_python_strip() {
        assert_eq!(py_strip("\u{1c} a b \u{3000}\n"), "a b");
        assert_eq!(py_lstrip("  x  "), "x  ");
        assert_eq!(py_rstrip("  x  "), "  x");
    }

    #[test]
    fn uid_vectors_from_sources_md() {
        assert_eq!(uid(""), "0a68eb57-c88a-5f34-9e9d-27f85e68af4f");
        assert_eq!(uid("hello"), "4d71d03f-f19b-5d9e-8523-9628ba18063c");
    }
}
