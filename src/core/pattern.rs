//! Regular expressions as Apiman's Java policies use them: `String.matches` semantics (the
//! whole input must match) and Java's defaults of ASCII classes (`\w`, `\d`, `\s`) and
//! ASCII-only case folding. Compiled once at configuration load.
//!
//! Matching runs on bytes, which keeps the Unicode tables out of the wasm module. A non-ASCII
//! literal in a pattern still matches its UTF-8 bytes; `.` matches one byte, not one character
//! (the only difference from Java a path or header pattern is likely to meet).

use regex::bytes::{Regex, RegexBuilder};

#[derive(Debug, Clone)]
pub struct Pattern(Regex);

impl Pattern {
    /// A pattern that must match the whole input, case-sensitively.
    pub fn full(pattern: &str) -> Result<Pattern, String> {
        Pattern::build(&[pattern], false)
    }

    /// Any of `patterns`, matching the whole input, ignoring ASCII case.
    pub fn any_full_ignore_case(patterns: &[&str]) -> Result<Pattern, String> {
        Pattern::build(patterns, true)
    }

    fn build(patterns: &[&str], ignore_case: bool) -> Result<Pattern, String> {
        let alternatives: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
        RegexBuilder::new(&format!("^(?:{})$", alternatives.join("|")))
            .unicode(false)
            .case_insensitive(ignore_case)
            .build()
            .map(Pattern)
            .map_err(|e| {
                let shown = patterns.join("|");
                format!(
                    "\"{shown}\" is not a valid regular expression ({})",
                    reason(&e.to_string())
                )
            })
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text.as_bytes())
    }
}

/// The one-line reason from the regex crate's multi-line error.
fn reason(error: &str) -> String {
    error
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .map(|l| l.trim().trim_start_matches("error:").trim().to_string())
        .unwrap_or_else(|| error.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_input_must_match() {
        let p = Pattern::full("/admin").unwrap();
        assert!(p.is_match("/admin"));
        assert!(!p.is_match("/admin/x"));
        assert!(!p.is_match("/x/admin"));
    }

    #[test]
    fn alternation_stays_anchored() {
        let p = Pattern::full("a|b").unwrap();
        assert!(p.is_match("a"));
        assert!(!p.is_match("ab"));
    }

    #[test]
    fn classes_are_ascii_as_in_java() {
        let p = Pattern::full(r"\w+").unwrap();
        assert!(p.is_match("abc_1"));
        assert!(!p.is_match("é"));
    }

    #[test]
    fn ignore_case_folds_ascii() {
        let p = Pattern::any_full_ignore_case(&["x-secret-.*", "server"]).unwrap();
        assert!(p.is_match("X-Secret-Token"));
        assert!(p.is_match("SERVER"));
        assert!(!p.is_match("servers"));
    }

    #[test]
    fn non_ascii_literals_match_their_bytes() {
        assert!(Pattern::full("/caf\u{e9}").unwrap().is_match("/caf\u{e9}"));
    }

    #[test]
    fn an_invalid_pattern_is_one_line_naming_it() {
        let e = Pattern::full("/a(b").unwrap_err();
        assert!(
            e.starts_with("\"/a(b\" is not a valid regular expression ("),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
