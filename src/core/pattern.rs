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

/// A Java `replaceAll` / `replaceFirst`: a regex found anywhere in the input (not anchored) and
/// a replacement in Java's syntax (`$1`, `${name}`, `\$` for a literal `$`), checked at load
/// (Java fails on a missing group only when it first replaces).
#[derive(Debug, Clone)]
pub struct Rewrite {
    regex: Regex,
    replacement: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Group(usize),
    Named(String),
}

impl Rewrite {
    pub fn new(from: &str, to: &str) -> Result<Rewrite, String> {
        let regex = RegexBuilder::new(from)
            .unicode(false)
            .build()
            .map_err(|e| {
                format!(
                    "\"{from}\" is not a valid regular expression ({})",
                    reason(&e.to_string())
                )
            })?;
        let replacement = parse_replacement(&regex, to)?;
        Ok(Rewrite { regex, replacement })
    }

    /// Every match replaced (Java's `replaceAll`); `None` when nothing matched.
    pub fn replace_all(&self, text: &[u8]) -> Option<Vec<u8>> {
        self.replace(text, usize::MAX)
    }

    /// The first match replaced (Java's `replaceFirst`); `None` when nothing matched.
    pub fn replace_first(&self, text: &[u8]) -> Option<Vec<u8>> {
        self.replace(text, 1)
    }

    /// `replace_all` on text, invalid UTF-8 in the result replaced.
    pub fn replace_all_str(&self, text: &str) -> Option<String> {
        self.replace_all(text.as_bytes())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn replace(&self, text: &[u8], limit: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut last = 0;
        let mut replaced = 0;
        for caps in self.regex.captures_iter(text).take(limit) {
            let Some(whole) = caps.get(0) else {
                continue;
            };
            out.extend_from_slice(&text[last..whole.start()]);
            for part in &self.replacement {
                match part {
                    Part::Literal(bytes) => out.extend_from_slice(bytes),
                    Part::Group(i) => {
                        if let Some(m) = caps.get(*i) {
                            out.extend_from_slice(m.as_bytes());
                        }
                    }
                    Part::Named(name) => {
                        if let Some(m) = caps.name(name) {
                            out.extend_from_slice(m.as_bytes());
                        }
                    }
                }
            }
            last = whole.end();
            replaced += 1;
        }
        if replaced == 0 {
            return None;
        }
        out.extend_from_slice(&text[last..]);
        Some(out)
    }
}

/// Java's `Matcher.appendReplacement` syntax: `\x` is `x`; `$n` takes as many digits as still
/// name a group; `${name}` a named group.
fn parse_replacement(regex: &Regex, to: &str) -> Result<Vec<Part>, String> {
    let groups = regex.captures_len().saturating_sub(1);
    let bytes = to.as_bytes();
    let mut parts = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    let flush = |literal: &mut Vec<u8>, parts: &mut Vec<Part>| {
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(literal)));
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let Some(&next) = bytes.get(i + 1) else {
                    return Err(format!("\"{to}\" ends with a \\ that escapes nothing"));
                };
                literal.push(next);
                i += 2;
            }
            b'$' => {
                flush(&mut literal, &mut parts);
                match bytes.get(i + 1) {
                    Some(b'{') => {
                        let end = to[i + 2..]
                            .find('}')
                            .ok_or_else(|| format!("\"{to}\" has a ${{ without }}"))?;
                        let name = &to[i + 2..i + 2 + end];
                        if regex.capture_names().flatten().all(|n| n != name) {
                            return Err(format!(
                                "\"{to}\" names group {name}, which the regex does not have"
                            ));
                        }
                        parts.push(Part::Named(name.to_string()));
                        i += 3 + end;
                    }
                    Some(d) if d.is_ascii_digit() => {
                        let mut group = usize::from(d - b'0');
                        i += 2;
                        while let Some(d) = bytes.get(i).filter(|d| d.is_ascii_digit()) {
                            let longer = group * 10 + usize::from(d - b'0');
                            if longer > groups {
                                break;
                            }
                            group = longer;
                            i += 1;
                        }
                        if group > groups {
                            return Err(format!(
                                "\"{to}\" refers to group {group}, but the regex has {groups}"
                            ));
                        }
                        parts.push(Part::Group(group));
                    }
                    _ => {
                        return Err(format!(
                            "\"{to}\" has a $ that is not a group reference (write \\$ for a $)"
                        ))
                    }
                }
            }
            b => {
                literal.push(b);
                i += 1;
            }
        }
    }
    flush(&mut literal, &mut parts);
    Ok(parts)
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

    fn rewrite(from: &str, to: &str, text: &str) -> Option<String> {
        Rewrite::new(from, to).unwrap().replace_all_str(text)
    }

    #[test]
    fn replace_all_uses_java_group_references() {
        assert_eq!(
            rewrite(
                "http://internal:8080/(\\w+)",
                "https://api.example.com/v2/$1",
                "a http://internal:8080/x b http://internal:8080/y"
            )
            .as_deref(),
            Some("a https://api.example.com/v2/x b https://api.example.com/v2/y")
        );
        assert_eq!(
            rewrite("(?<id>\\d+)", "#${id}", "order 42").as_deref(),
            Some("order #42")
        );
        assert_eq!(rewrite("x", "y", "abc"), None);
    }

    #[test]
    fn a_group_number_takes_only_the_digits_that_name_a_group() {
        // Java: "$12" with one group is group 1 followed by "2".
        assert_eq!(rewrite("(a)", "$12", "a").as_deref(), Some("a2"));
        assert_eq!(rewrite("(a)", "\\$1", "a").as_deref(), Some("$1"));
    }

    #[test]
    fn replace_first_replaces_one_match() {
        let r = Rewrite::new("a", "b").unwrap();
        assert_eq!(r.replace_first(b"aaa"), Some(b"baa".to_vec()));
    }

    #[test]
    fn a_replacement_naming_a_missing_group_is_refused_at_load() {
        assert_eq!(
            Rewrite::new("(a)", "$2").unwrap_err(),
            "\"$2\" refers to group 2, but the regex has 1"
        );
        assert!(Rewrite::new("a", "$x")
            .unwrap_err()
            .contains("not a group reference"));
        assert!(Rewrite::new("a", "${n}")
            .unwrap_err()
            .contains("does not have"));
        assert!(Rewrite::new("a", "x\\")
            .unwrap_err()
            .contains("escapes nothing"));
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
