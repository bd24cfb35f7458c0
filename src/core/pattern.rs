//! Regular expressions as Apiman's Java policies use them: `String.matches` semantics (the
//! whole input must match) and Java's defaults of ASCII classes (`\w`, `\d`, `\s`) and
//! ASCII-only case folding. Compiled once at configuration load.
//!
//! Matching runs on bytes, which keeps the Unicode tables out of the wasm module. A non-ASCII
//! literal in a pattern still matches its UTF-8 bytes; `.` matches one byte, not one character,
//! and a line break too (a decoded path can hold one; Java's `.` would stop there).
//!
//! **Cost.** Every pattern is compiled at load into a dense DFA: matching is one table lookup per
//! input byte, whatever the pattern, so a request can never make the gateway work harder than
//! the length of what it sent. (A lazy DFA with an NFA fallback, as the `regex` crate's default
//! engine uses, is linear too, but its factor is the size of the pattern's automaton: a pattern
//! like `/(?:[a-z0-9]{1,255}/?){1,255}x` took seconds on a 4 KB path.) Patterns whose
//! automaton would exceed the limits below are refused at load with the reason.

use std::sync::{Mutex, PoisonError};

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::hybrid;
use regex_automata::nfa::thompson::{self, pikevm::PikeVM, WhichCaptures, NFA};
use regex_automata::util::captures::{Captures, GroupInfo};
use regex_automata::util::iter::Searcher;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, Match, MatchError, MatchKind, PatternID};

/// The most a pattern's NFA may take (bytes): bounded repetitions such as `[a-z]{1,255}`
/// multiply it.
pub const NFA_SIZE_LIMIT: usize = 32 * 1024;
/// The most a pattern's DFA may take (bytes); what stays in memory per pattern and VM.
pub const DFA_SIZE_LIMIT: usize = 256 * 1024;
/// The most building a DFA may use on the way (bytes).
pub const DETERMINIZE_SIZE_LIMIT: usize = 4 * 1024 * 1024;
/// Group nesting deeper than this is refused (no real path or header pattern comes close).
pub const NEST_LIMIT: u32 = 64;

#[derive(Clone, Debug)]
pub struct Pattern(dense::DFA<Vec<u32>>);

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
        let shown = patterns.join("|");
        let alternatives: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
        let whole = format!("^(?:{})$", alternatives.join("|"));
        let hir = syntax::parse_with(
            &whole,
            &syntax::Config::new()
                .unicode(false)
                .utf8(false)
                .case_insensitive(ignore_case)
                // Paths are matched percent-decoded: `%0A` must not let `/admin/x%0A` slip
                // past `/admin/.*` (Java's `.` stops at a line break, but Apiman matches the
                // raw path). Header values never hold a line break, so nothing else changes.
                .dot_matches_new_line(true)
                .nest_limit(NEST_LIMIT),
        )
        .map_err(|e| {
            format!(
                "\"{shown}\" is not a valid regular expression ({})",
                reason(&e.to_string())
            )
        })?;
        let too_big = |what: &str, limit: usize| {
            format!(
                "\"{shown}\" is too complex: its {what} would exceed {} KiB (bounded repetitions like {{1,255}} multiply it; write a simpler pattern)",
                limit / 1024
            )
        };
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .utf8(false)
                    .shrink(false)
                    .nfa_size_limit(Some(NFA_SIZE_LIMIT)),
            )
            .build_from_hir(&hir)
            .map_err(|e| match e.size_limit() {
                Some(limit) => too_big("automaton", limit),
                None => format!("\"{shown}\" is not a valid regular expression ({e})"),
            })?;
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DETERMINIZE_SIZE_LIMIT)),
            )
            .build_from_nfa(&nfa)
            .map_err(|e| {
                if e.is_size_limit_exceeded() {
                    too_big("matching table", DFA_SIZE_LIMIT)
                } else {
                    format!("\"{shown}\" is not a valid regular expression ({e})")
                }
            })?;
        Ok(Pattern(dfa))
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.is_match_bytes(text.as_bytes())
    }

    pub fn is_match_bytes(&self, bytes: &[u8]) -> bool {
        let input = Input::new(bytes).anchored(Anchored::Yes).earliest(true);
        // A dense DFA without quit bytes has no way to fail a search.
        matches!(self.0.try_search_fwd(&input), Ok(Some(_)))
    }

    /// The bytes the compiled pattern holds in memory.
    pub fn memory_usage(&self) -> usize {
        self.0.memory_usage()
    }
}

/// A Java `replaceAll` / `replaceFirst`: a regex found anywhere in the input (not anchored) and
/// a replacement in Java's syntax (`$1`, `${name}`, `\$` for a literal `$`), checked at load
/// (Java fails on a missing group only when it first replaces).
///
/// The search is the one the `regex` crate runs for `bytes::Regex::captures_iter` (leftmost-first,
/// Unicode off), assembled from the engines `Pattern` already links: a lazy DFA finds each
/// match's bounds, then the PikeVM resolves the groups within them (and takes over the whole
/// search when the lazy DFA gives up, or could not be built within its cache).
#[derive(Debug)]
pub struct Rewrite {
    regex: Regex,
    replacement: Vec<Part>,
}

#[derive(Debug)]
struct Regex {
    lazy: Option<hybrid::regex::Regex>,
    pikevm: PikeVM,
    caches: Mutex<Caches>,
}

#[derive(Debug)]
struct Caches {
    lazy: Option<hybrid::regex::Cache>,
    pikevm: thompson::pikevm::Cache,
}

impl Clone for Rewrite {
    fn clone(&self) -> Rewrite {
        let caches = Mutex::new(Caches {
            lazy: self.regex.lazy.as_ref().map(|r| r.create_cache()),
            pikevm: self.regex.pikevm.create_cache(),
        });
        Rewrite {
            regex: Regex {
                lazy: self.regex.lazy.as_ref().map(|r| {
                    hybrid::regex::Builder::new()
                        .build_from_dfas(r.forward().clone(), r.reverse().clone())
                }),
                pikevm: self.regex.pikevm.clone(),
                caches,
            },
            replacement: self.replacement.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Group(usize),
    Named(String),
}

impl Regex {
    /// As `regex::bytes::RegexBuilder::new(from).unicode(false).nest_limit(NEST_LIMIT)
    /// .size_limit(nfa_limit).dfa_size_limit(cache).build()`, with its error messages.
    fn new(from: &str, nfa_limit: usize, cache: usize) -> Result<Regex, String> {
        let invalid = |e: &dyn std::fmt::Display| {
            format!(
                "\"{from}\" is not a valid regular expression ({})",
                reason(&e.to_string())
            )
        };
        let hir = syntax::parse_with(
            from,
            &syntax::Config::new()
                .unicode(false)
                .utf8(false)
                .nest_limit(NEST_LIMIT),
        )
        .map_err(|e| invalid(&e))?;
        let nfa_error = |e: thompson::BuildError| match e.size_limit() {
            Some(limit) => invalid(&format!(
                "Compiled regex exceeds size limit of {limit} bytes."
            )),
            None => invalid(&e),
        };
        let config = thompson::Config::new()
            .utf8(false)
            .nfa_size_limit(Some(nfa_limit))
            .shrink(false);
        let nfa = thompson::Compiler::new()
            .configure(config.clone().which_captures(WhichCaptures::All))
            .build_from_hir(&hir)
            .map_err(nfa_error)?;
        let nfarev = thompson::Compiler::new()
            .configure(config.which_captures(WhichCaptures::None).reverse(true))
            .build_from_hir(&hir)
            .map_err(nfa_error)?;
        let pikevm = PikeVM::builder()
            .configure(PikeVM::config().match_kind(MatchKind::LeftmostFirst))
            .build_from_nfa(nfa.clone())
            .map_err(|e| invalid(&e))?;
        let lazy = lazy_dfas(nfa, nfarev, cache);
        let caches = Mutex::new(Caches {
            lazy: lazy.as_ref().map(|r| r.create_cache()),
            pikevm: pikevm.create_cache(),
        });
        Ok(Regex {
            lazy,
            pikevm,
            caches,
        })
    }

    /// Calls `each` with the groups of every match, left to right, until it returns false.
    fn captures_each(&self, text: &[u8], mut each: impl FnMut(&Captures) -> bool) {
        let mut guard = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        let caches = &mut *guard;
        let mut caps = self.pikevm.create_captures();
        let mut searcher = Searcher::new(Input::new(text));
        loop {
            let found = searcher.advance(|input| {
                let bounds = match (&self.lazy, caches.lazy.as_mut()) {
                    (Some(lazy), Some(cache)) => match lazy.try_search(cache, input) {
                        Ok(None) => return Ok(None),
                        Ok(Some(m)) => Some(m),
                        Err(_) => None,
                    },
                    _ => None,
                };
                let narrowed;
                let input = match bounds {
                    Some(m) => {
                        narrowed = input
                            .clone()
                            .span(m.start()..m.end())
                            .anchored(Anchored::Pattern(m.pattern()));
                        &narrowed
                    }
                    None => input,
                };
                self.pikevm.search(&mut caches.pikevm, input, &mut caps);
                Ok::<Option<Match>, MatchError>(caps.get_match())
            });
            if found.is_none() || !each(&caps) {
                return;
            }
        }
    }
}

/// The forward and reverse lazy DFAs, configured as the `regex` crate's meta engine does; `None`
/// when `cache` cannot hold the few states they need (the PikeVM then does all the work).
fn lazy_dfas(nfa: NFA, nfarev: NFA, cache: usize) -> Option<hybrid::regex::Regex> {
    let config = hybrid::dfa::Config::new()
        .match_kind(MatchKind::LeftmostFirst)
        .starts_for_each_pattern(true)
        .unicode_word_boundary(true)
        .specialize_start_states(false)
        .cache_capacity(cache)
        .skip_cache_capacity_check(false)
        .minimum_cache_clear_count(Some(3))
        .minimum_bytes_per_state(Some(10));
    let fwd = hybrid::dfa::Builder::new()
        .configure(config.clone())
        .build_from_nfa(nfa)
        .ok()?;
    let rev = hybrid::dfa::Builder::new()
        .configure(config.match_kind(MatchKind::All))
        .build_from_nfa(nfarev)
        .ok()?;
    Some(hybrid::regex::Builder::new().build_from_dfas(fwd, rev))
}

impl Rewrite {
    pub fn new(from: &str, to: &str) -> Result<Rewrite, String> {
        // Bounded like `Pattern`: the automaton's size is the factor on every byte searched.
        let regex = Regex::new(from, NFA_SIZE_LIMIT * 8, DFA_SIZE_LIMIT)?;
        let replacement = parse_replacement(regex.pikevm.get_nfa().group_info(), to)?;
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
        self.regex.captures_each(text, |caps| {
            let Some(whole) = caps.get_match() else {
                return true;
            };
            out.extend_from_slice(&text[last..whole.start()]);
            for part in &self.replacement {
                let span = match part {
                    Part::Literal(bytes) => {
                        out.extend_from_slice(bytes);
                        None
                    }
                    Part::Group(i) => caps.get_group(*i),
                    Part::Named(name) => caps.get_group_by_name(name),
                };
                if let Some(span) = span {
                    out.extend_from_slice(&text[span.range()]);
                }
            }
            last = whole.end();
            replaced += 1;
            replaced < limit
        });
        if replaced == 0 {
            return None;
        }
        out.extend_from_slice(&text[last..]);
        Some(out)
    }
}

/// Java's `Matcher.appendReplacement` syntax: `\x` is `x`; `$n` takes as many digits as still
/// name a group; `${name}` a named group.
fn parse_replacement(groups_of: &GroupInfo, to: &str) -> Result<Vec<Part>, String> {
    let groups = groups_of.group_len(PatternID::ZERO).saturating_sub(1);
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
                        if groups_of.to_index(PatternID::ZERO, name).is_none() {
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
    fn a_shorter_alternative_does_not_hide_a_longer_one() {
        let p = Pattern::full("a|ab").unwrap();
        assert!(p.is_match("ab"));
    }

    #[test]
    fn classes_are_ascii_as_in_java() {
        let p = Pattern::full(r"\w+").unwrap();
        assert!(p.is_match("abc_1"));
        assert!(!p.is_match("é"));
    }

    #[test]
    fn dot_matches_a_line_break() {
        let p = Pattern::full("/admin/.*").unwrap();
        assert!(p.is_match("/admin/x\ny"));
        assert!(p.is_match("/admin/\r\n"));
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

    /// The search is the `regex` crate's: the same matches and groups, empty matches included.
    #[test]
    fn captures_are_the_regex_crates() {
        let patterns = [
            r"http://internal:8080/(\w+)",
            r"(?<id>\d+)|x(y)?",
            r"a*",
            r"(a|ab)(c|bcd)(d*)",
            r"\b\w+\b",
            r"(?i)HTTP(s)?://([^/]+)(/.*)?$",
            r"^|$",
            r"(?m)^(\w)",
            r".",
            r"(?s)(.)(.)?",
            r"[^\x00-\x7f]+",
            r"[a-z]{2,5}?",
        ];
        let texts: [&[u8]; 7] = [
            b"",
            b"a http://internal:8080/x b http://internal:8080/yz",
            b"abcd abd aab 42 xy x",
            b"HTTPS://Host.example/a/b\nhttp://h",
            b"caf\xc3\xa9 \xff\xfe\n\nline",
            b"aaaa",
            b"one two\nthree",
        ];
        for p in patterns {
            let ours = Regex::new(p, NFA_SIZE_LIMIT * 8, DFA_SIZE_LIMIT).unwrap();
            let theirs = regex::bytes::RegexBuilder::new(p)
                .unicode(false)
                .build()
                .unwrap();
            for text in texts {
                let mut got = Vec::new();
                ours.captures_each(text, |c| {
                    got.push(
                        (0..c.group_len())
                            .map(|i| c.get_group(i).map(|s| s.range()))
                            .collect::<Vec<_>>(),
                    );
                    true
                });
                let want: Vec<Vec<_>> = theirs
                    .captures_iter(text)
                    .map(|c| c.iter().map(|m| m.map(|m| m.range())).collect())
                    .collect();
                assert_eq!(got, want, "{p} on {:?}", String::from_utf8_lossy(text));
            }
        }
        for p in [
            "(a",
            "[z-a]",
            r"\p{L}",
            "(?<n>a)(?<n>b)",
            "(?:[a-z]{1,255}/?){1,255}x",
        ] {
            let theirs = regex::bytes::RegexBuilder::new(p)
                .unicode(false)
                .nest_limit(NEST_LIMIT)
                .size_limit(NFA_SIZE_LIMIT * 8)
                .build()
                .unwrap_err();
            assert_eq!(
                Regex::new(p, NFA_SIZE_LIMIT * 8, DFA_SIZE_LIMIT).unwrap_err(),
                format!(
                    "\"{p}\" is not a valid regular expression ({})",
                    reason(&theirs.to_string())
                )
            );
        }
    }

    /// Rewrite's cost per URL against the `regex` crate's on the same search: `cargo test -p
    /// tollgate-core rewrite_costs -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn rewrite_costs() {
        let (from, to) = (
            r"https?://internal:8080/(\w+)",
            "https://api.example.com/$1",
        );
        let urls: Vec<String> = (0..20_000)
            .map(|i| match i % 3 {
                0 => format!("http://internal:8080/item{i}?q=1"),
                1 => format!("https://cdn.example.org/static/{i}/app.js"),
                _ => format!("http://internal:8080/{i}/deeper/path/segment"),
            })
            .collect();
        let ours = Rewrite::new(from, to).unwrap();
        let theirs = regex::bytes::RegexBuilder::new(from)
            .unicode(false)
            .build()
            .unwrap();
        for round in 0..3 {
            let started = std::time::Instant::now();
            let n = urls
                .iter()
                .filter(|u| ours.replace_first(u.as_bytes()).is_some())
                .count();
            let a = started.elapsed();
            let started = std::time::Instant::now();
            let m = urls
                .iter()
                .filter(|u| theirs.captures(u.as_bytes()).is_some())
                .count();
            let b = started.elapsed();
            assert_eq!(n, m);
            println!(
                "rewrite-cost round {round}: Rewrite {:.0} ns/URL, regex captures {:.0} ns/URL",
                a.as_nanos() as f64 / urls.len() as f64,
                b.as_nanos() as f64 / urls.len() as f64
            );
        }
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

    #[test]
    fn backreferences_and_look_around_are_refused() {
        for p in [r"(a)\1", "(?=a)a", "(?<=a)b"] {
            assert!(Pattern::full(p).is_err(), "{p} accepted");
        }
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use std::time::{Duration, Instant};

    /// Envoy's default limit on request headers (60 KiB): a path can be that long.
    const ENVOY_MAX_PATH: usize = 60 * 1024;

    fn path_of_len(len: usize) -> String {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 == 0 {
                    '/'
                } else {
                    char::from(b'a' + (x % 26) as u8)
                }
            })
            .collect()
    }

    fn fastest(p: &Pattern, text: &str) -> Duration {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(p.is_match(std::hint::black_box(text)));
                t.elapsed()
            })
            .min()
            .unwrap_or_default()
    }

    /// The largest member of a growing family of patterns that still loads (by bisection), with
    /// the reason the next one is refused.
    fn largest_accepted(family: impl Fn(usize) -> String) -> (Pattern, String, String) {
        let (mut ok, mut refused) = (1, 1024);
        let mut reason = Pattern::full(&family(refused)).expect_err("the family grows too big");
        assert!(Pattern::full(&family(ok)).is_ok(), "{}", family(ok));
        while refused - ok > 1 {
            let mid = (ok + refused) / 2;
            match Pattern::full(&family(mid)) {
                Ok(_) => ok = mid,
                Err(e) => (refused, reason) = (mid, e),
            }
        }
        let text = family(ok);
        let started = Instant::now();
        let pattern = Pattern::full(&text).expect("loads");
        let took = started.elapsed();
        // Loading is bounded too: a pattern is compiled once per worker VM.
        assert!(
            took < Duration::from_secs(2),
            "{text} took {took:?} to load"
        );
        eprintln!("{text}: loads in {took:?}");
        (pattern, text, reason)
    }

    #[test]
    fn the_worst_accepted_pattern_matches_a_path_of_envoys_maximum_length_in_under_a_millisecond() {
        let path = path_of_len(ENVOY_MAX_PATH);
        let families: [&dyn Fn(usize) -> String; 3] = [
            // Each extra repetition doubles the DFA: the largest table that loads.
            &|k| format!("(?:[a-z/])*[a-z][a-z/]{{{k}}}"),
            // The issue's pattern with the largest bounds that load.
            &|n| format!("/(?:[a-z0-9]{{1,{n}}}/?){{1,{n}}}x"),
            // Nested unbounded repetitions and a long counted one.
            &|n| format!("(?:(?:[a-z]+/)*[a-z]{{0,{}}})*/x", n * 8),
        ];
        for family in families {
            let (pattern, text, refusal) = largest_accepted(family);
            assert!(refusal.contains("is too complex"), "{refusal}");
            let took = fastest(&pattern, &path);
            eprintln!("{text}: {} KiB, {took:?}", pattern.memory_usage() / 1024);
            assert!(
                took < Duration::from_millis(1),
                "{text} ({} KiB) took {took:?} on a {} KiB path",
                pattern.memory_usage() / 1024,
                ENVOY_MAX_PATH / 1024
            );
        }
    }

    #[test]
    fn the_pattern_that_starved_envoy_is_refused_at_load_with_the_reason() {
        let e = Pattern::full("/(?:[a-z0-9]{1,255}/?){1,255}x").unwrap_err();
        assert_eq!(
            e,
            "\"/(?:[a-z0-9]{1,255}/?){1,255}x\" is too complex: its automaton would exceed 32 KiB (bounded repetitions like {1,255} multiply it; write a simpler pattern)"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(Pattern::full(&deep).unwrap_err().contains("nest"));
    }
}
