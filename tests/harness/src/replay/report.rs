//! Reports: a table for people, JSON and JUnit XML for CI systems.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::expect::one_line;
use super::run::{Change, Outcome, SuiteRun, Verdict};

/// Totals over every suite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Totals {
    pub fn of(runs: &[SuiteRun]) -> Totals {
        runs.iter().fold(Totals::default(), |t, r| Totals {
            passed: t.passed + r.passed,
            failed: t.failed + r.failed,
            skipped: t.skipped + r.skipped,
        })
    }

    /// `N passed, M failed` (and skipped ones, if any).
    pub fn line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            let _ = write!(s, ", {} skipped", self.skipped);
        }
        s
    }
}

fn status_text(s: Option<u16>) -> String {
    s.map_or("-".into(), |s| s.to_string())
}

fn got_text(o: &Outcome) -> String {
    match (&o.verdict, o.observed.status) {
        (Verdict::Skip(_), _) => "-".into(),
        (_, 0) => "none".into(),
        (_, s) => s.to_string(),
    }
}

fn verdict_text(o: &Outcome) -> &'static str {
    match o.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL",
        Verdict::Skip(_) => "skip",
    }
}

/// One line of at most `width` characters: a report row never breaks.
fn clip(s: &str, width: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= width {
        s
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The width of a reason line under a table row.
const REASON_WIDTH: usize = 160;

/// The reasons under a table row: a failed check whose expectation and observation do not fit
/// on one line (bodies, long headers) gets one line for each, so neither is cut off.
fn table_reasons(o: &Outcome) -> Vec<String> {
    if o.verdict != Verdict::Fail || o.change.is_some() {
        return reasons(o);
    }
    let mut out = Vec::new();
    for c in o.failures() {
        let line = format!("{}: expected {}, got {}", c.what, c.expected, c.got);
        if line.chars().count() <= REASON_WIDTH {
            out.push(line);
        } else {
            out.push(format!("{}:", c.what));
            out.push(format!("  expected {}", c.expected));
            out.push(format!("  got      {}", c.got));
        }
    }
    if let Some(n) = &o.observed.note {
        out.push(n.clone());
    }
    out
}

/// Why an outcome failed or was skipped, one line per reason.
pub fn reasons(o: &Outcome) -> Vec<String> {
    let mut out: Vec<String> = match &o.verdict {
        Verdict::Skip(why) => vec![format!("skipped: {why}")],
        _ if o.change.is_some() => o
            .failures()
            .map(|c| format!("recorded {}, now {}", c.expected, c.got))
            .collect(),
        _ => o
            .failures()
            .map(|c| format!("{}: expected {}, got {}", c.what, c.expected, c.got))
            .collect(),
    };
    if o.verdict == Verdict::Fail {
        if let Some(n) = &o.observed.note {
            out.push(n.clone());
        }
    }
    out
}

/// The table: one row per exchange, the reasons under each failure, a line per suite.
pub fn table(runs: &[SuiteRun], dry_run: bool, quiet: bool) -> String {
    let mut s = String::new();
    for run in runs {
        if quiet {
            continue;
        }
        let _ = writeln!(s, "{} ({})", run.file, run.target);
        for w in &run.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        let (exp, got, verdict) = if dry_run {
            ("recorded", "now", "change")
        } else {
            ("expected", "got", "verdict")
        };
        let _ = writeln!(
            s,
            "  {:>4}  {:<52} {:>8} {:>5}  {verdict}",
            "#", "request", exp, got
        );
        for o in &run.outcomes {
            let number = if o.round == 0 {
                format!("{}", o.index + 1)
            } else {
                format!("{}/r{}", o.index + 1, o.round + 1)
            };
            let verdict = match (dry_run, o.change) {
                (true, Some(c)) => c.name().to_string(),
                _ => verdict_text(o).to_string(),
            };
            let _ = writeln!(
                s,
                "  {:>4}  {:<52} {:>8} {:>5}  {verdict}",
                number,
                clip(&o.label, 52),
                status_text(o.expected_status),
                got_text(o),
            );
            if o.verdict != Verdict::Pass {
                for r in table_reasons(o) {
                    let _ = writeln!(s, "        {}", clip(&r, REASON_WIDTH));
                }
                for l in &o.logs {
                    let _ = writeln!(s, "        log {}", clip(l, 160));
                }
            }
        }
        if run.rounds > 1 {
            let _ = writeln!(
                s,
                "  ({} rounds; rows show the first, and failures of later rounds)",
                run.rounds
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "{}", summary_line(runs, dry_run));
    s
}

/// The last line of a report: `N passed, M failed`, or for a dry run what would change.
pub fn summary_line(runs: &[SuiteRun], dry_run: bool) -> String {
    if dry_run {
        dry_run_line(runs)
    } else {
        Totals::of(runs).line()
    }
}

/// `dry run: N unchanged, M would change (A newly blocked, B newly allowed, C status changed)`,
/// then exchanges the recording has no status for and skipped ones, if any.
pub fn dry_run_line(runs: &[SuiteRun]) -> String {
    let count = |c: Change| {
        runs.iter()
            .flat_map(|r| &r.outcomes)
            .filter(|o| o.round == 0 && o.change == Some(c))
            .count()
    };
    let (blocked, allowed, changed) = (
        count(Change::NewlyBlocked),
        count(Change::NewlyAllowed),
        count(Change::StatusChanged),
    );
    let mut line = format!(
        "dry run: {} unchanged, {} would change ({blocked} newly blocked, {allowed} newly \
         allowed, {changed} status changed)",
        count(Change::Unchanged),
        blocked + allowed + changed
    );
    let unknown = count(Change::Unknown);
    if unknown > 0 {
        let _ = write!(line, ", {unknown} without a recorded status");
    }
    let skipped = Totals::of(runs).skipped;
    if skipped > 0 {
        let _ = write!(line, ", {skipped} skipped");
    }
    line
}

fn outcome_json(o: &Outcome) -> Value {
    let mut v = json!({
        "index": o.index + 1,
        "entry": o.entry,
        "request": o.label,
        "expected_status": o.expected_status,
        "status": o.observed.status,
        "verdict": match &o.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skip(_) => "skip",
        },
        "checks": o.checks.iter().map(|c| json!({
            "what": c.what, "expected": c.expected, "got": c.got, "ok": c.ok,
        })).collect::<Vec<_>>(),
    });
    if let Some(n) = &o.observed.note {
        v["note"] = json!(n);
    }
    if let Verdict::Skip(why) = &o.verdict {
        v["skipped"] = json!(why);
    }
    if let Some(c) = o.change {
        v["change"] = json!(c.name());
    }
    if o.round > 0 {
        v["round"] = json!(o.round + 1);
    }
    if !o.logs.is_empty() {
        v["logs"] = json!(o.logs);
    }
    v
}

pub fn json_report(runs: &[SuiteRun], dry_run: bool) -> String {
    let t = Totals::of(runs);
    let mut summary = json!({
        "passed": t.passed, "failed": t.failed, "skipped": t.skipped,
        "elapsed_ms": runs.iter().map(|r| r.elapsed.as_secs_f64() * 1000.0).sum::<f64>(),
    });
    if dry_run {
        summary["dry_run"] = json!(dry_run_line(runs));
    }
    let report = json!({
        "summary": summary,
        "suites": runs.iter().map(|r| json!({
            "name": r.name,
            "file": r.file,
            "target": r.target,
            "rounds": r.rounds,
            "passed": r.passed,
            "failed": r.failed,
            "skipped": r.skipped,
            "elapsed_ms": r.elapsed.as_secs_f64() * 1000.0,
            "warnings": r.warnings,
            "exchanges": r.outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into()) + "\n"
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one `testsuite` per input file, one `testcase` per exchange.
pub fn junit(runs: &[SuiteRun]) -> String {
    let t = Totals::of(runs);
    let total_time: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"tollgate-replay\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total_time:.3}\">",
        t.passed + t.failed + t.skipped,
        t.failed,
        t.skipped
    );
    for r in runs {
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" file=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            xml_escape(&r.name),
            xml_escape(&r.file),
            r.outcomes.len(),
            r.outcomes.iter().filter(|o| o.verdict == Verdict::Fail).count(),
            r.outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Skip(_))).count(),
            r.elapsed.as_secs_f64()
        );
        for o in &r.outcomes {
            let name = format!("{} {}", o.entry, o.label);
            let _ = write!(
                s,
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml_escape(&r.name),
                xml_escape(&name)
            );
            let reasons = reasons(o);
            match &o.verdict {
                Verdict::Pass => s.push_str("/>\n"),
                Verdict::Skip(why) => {
                    let _ = writeln!(
                        s,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        xml_escape(why)
                    );
                }
                Verdict::Fail => {
                    let first = reasons.first().cloned().unwrap_or_default();
                    let _ = writeln!(
                        s,
                        ">\n      <failure type=\"mismatch\" message=\"{}\">{}</failure>",
                        xml_escape(&first),
                        xml_escape(&reasons.join("\n"))
                    );
                    if !o.logs.is_empty() {
                        let _ = writeln!(
                            s,
                            "      <system-out>{}</system-out>",
                            xml_escape(&o.logs.join("\n"))
                        );
                    }
                    s.push_str("    </testcase>\n");
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escaping_covers_markup_and_control_characters() {
        assert_eq!(
            xml_escape("<a href=\"x\">&'\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;\u{fffd}"
        );
    }

    #[test]
    fn the_summary_line_mentions_skips_only_when_there_are_some() {
        let t = Totals {
            passed: 3,
            failed: 1,
            skipped: 0,
        };
        assert_eq!(t.line(), "3 passed, 1 failed");
        assert_eq!(
            Totals { skipped: 2, ..t }.line(),
            "3 passed, 1 failed, 2 skipped"
        );
    }
}
