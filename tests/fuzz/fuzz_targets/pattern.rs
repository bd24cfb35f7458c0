//! Patterns and paths: a pattern (compiled as the policies compile theirs) matched against a
//! text that a repeat byte can stretch to Envoy's 60 KiB, compared with the `regex` crate's
//! answer; and the path normalisation policies match on, held to its invariants.
//!
//! Findings: a panic, an allocation over the bound, a match slower than the bound, a different
//! answer from the `regex` crate, a normalised path that still has `//`, `.`/`..` segments or
//! a backslash.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tollgate_core::pattern::Pattern;
use tollgate_fuzz::{within, Reader};

/// Matching a 60 KiB text with the largest accepted pattern takes ~0.2 ms optimised; this build
/// is instrumented.
const MATCH_BOUND: Duration = Duration::from_millis(20);

const PIECES: &[&str] = &[
    "a", "b", "/", ".", ".*", ".+", "*", "+", "?", "*?", "|", "(", ")", "(?:", "(?i)", "[a-z]",
    "[^/]", "\\d", "\\w", "\\s", "\\b", "{2}", "{1,3}", "{0,40}", "^", "$", "\\.", "é", "%2F",
];

fn pattern_text(r: &mut Reader) -> String {
    let mut p = String::new();
    for _ in 0..r.below(16) {
        if r.below(4) == 0 {
            p.push_str(&r.text(3));
        } else {
            p.push_str(r.pick(PIECES));
        }
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let ignore_case = r.bool();
    let pattern = pattern_text(&mut r);
    let unit = r.bytes(32).to_vec();
    let repeat = if r.byte() > 200 {
        1 + r.below(60 * 1024 / unit.len().max(1))
    } else {
        1
    };
    let text: Vec<u8> = unit.repeat(repeat.min(60 * 1024));

    let compiled = if ignore_case {
        Pattern::any_full_ignore_case(&[&pattern])
    } else {
        Pattern::full(&pattern)
    };
    if let Ok(p) = compiled {
        let ours = within("a match", MATCH_BOUND, || p.is_match_bytes(&text));
        let oracle = regex::bytes::RegexBuilder::new(&format!("^(?:(?:{pattern}))$"))
            .unicode(false)
            .case_insensitive(ignore_case)
            .dot_matches_new_line(true)
            .build();
        if let Ok(re) = oracle {
            assert_eq!(
                ours,
                re.is_match(&text),
                "{pattern:?} on {:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    let raw = String::from_utf8_lossy(&text);
    let form = within("a path normalisation", MATCH_BOUND, || {
        tollgate_core::path::for_matching(&raw)
    });
    assert!(form.starts_with('/'), "{raw:?} -> {form:?}");
    assert!(
        !form.contains("//") && !form.contains('\\'),
        "{raw:?} -> {form:?}"
    );
    assert!(
        !form.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} -> {form:?}"
    );
});
