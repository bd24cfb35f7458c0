//! Time Restricted Access (Apiman's `TimeRestrictedAccessPolicy`): paths open only on some days
//! and at some times.
//!
//! As in Apiman: the rules whose `pathPattern` matches the whole resource path apply; with none,
//! the request passes; else it passes when any applying rule is open now. A rule is open on the
//! days `dayStart`..`dayEnd` (1 = Monday .. 7 = Sunday) from `timeStart` (inclusive) to
//! `timeEnd` (exclusive), in UTC.
//!
//! Differences from Apiman (where it is broken or unhelpful): a window whose start is after its
//! end runs overnight (22:00–06:00 is open from 22:00 until 06:00 the next morning, the night
//! belonging to the day it starts on), and a day range whose start is after its end wraps around
//! the week (6..1 is Saturday, Sunday, Monday): Apiman treats both as never open. A rule may name
//! its own `timeZone` (IANA, so daylight saving time is followed). A closed window is answered
//! 403 (Apiman: 500, as for a server error) with Apiman's failure type, code and message, plus
//! `Retry-After` with the seconds until the next opening of an applying rule. Times may omit the
//! seconds or carry milliseconds and a `Z` (Apiman's own docs write `10:00:00.000Z`, which its
//! parser refuses); a missing day bound means the first or last day of the week (Apiman fails
//! every request), a missing time bound the start or end of the day (Apiman ignores the other
//! one and opens the whole day).

use std::time::UNIX_EPOCH;

use chrono::{Datelike, Days, NaiveDate, Timelike};

use super::{
    Capabilities, Context, FailureType, FieldDoc, Phase, PhaseSet, Policy, PolicyFailure,
    PolicyKind, Verdict,
};
use crate::http::Request;
use crate::json::{Fields, Problems};
use crate::pattern::Pattern;
use crate::tz::{self, Zone};

pub const KIND: PolicyKind = PolicyKind {
    id: "time-restricted-access",
    name: "Time Restricted Access",
    apiman_names: &["TimeRestrictedAccessPolicy", "time-restricted-access-policy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Opens paths only on some days of the week and at some times of day (UTC or a rule's time zone); overnight windows and wrapping day ranges work.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10014: 403 Other (Apiman: 500), `Request <path> was rejected. Resource cannot be accessed in this time period.`, with `Retry-After` (seconds until the next opening)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "rules",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "the windows; a request passes if no rule's path matches it, or if one whose path matches is open",
        },
        FieldDoc {
            name: "rules[].pathPattern",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "a regex that must match the whole resource path (below the API, without the query); required",
        },
        FieldDoc {
            name: "rules[].timeStart",
            aliases: &[],
            ty: "string",
            default: "00:00:00",
            apiman: true,
            meaning: "opening time `HH:mm[:ss[.SSS]]` (a trailing `Z` is allowed), inclusive",
        },
        FieldDoc {
            name: "rules[].timeEnd",
            aliases: &[],
            ty: "string",
            default: "end of day",
            apiman: true,
            meaning: "closing time, exclusive; before `timeStart` means the window runs overnight into the next day; equal to it, never open",
        },
        FieldDoc {
            name: "rules[].dayStart",
            aliases: &[],
            ty: "integer",
            default: "1",
            apiman: true,
            meaning: "first day, 1 = Monday .. 7 = Sunday (an overnight window belongs to the day it starts on)",
        },
        FieldDoc {
            name: "rules[].dayEnd",
            aliases: &[],
            ty: "integer",
            default: "7",
            apiman: true,
            meaning: "last day; before `dayStart` wraps around the week (6..1 = Saturday to Monday)",
        },
        FieldDoc {
            name: "rules[].timeZone",
            aliases: &[],
            ty: "string",
            default: "UTC",
            apiman: false,
            meaning: "the zone the times and days are in: an IANA name (`Europe/Berlin`, daylight saving time followed) or an offset (`+05:30`)",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"rules": [
        {"pathPattern": "/reports/.*", "timeStart": "08:00:00", "timeEnd": "18:00:00", "dayStart": 1, "dayEnd": 5, "timeZone": "Europe/Berlin"},
        {"pathPattern": "/batch/.*", "timeStart": "22:00", "timeEnd": "06:00", "dayStart": 6, "dayEnd": 1}]}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

/// Apiman's ACCESS_TIME_RESTRICTED.
pub const FAILURE_CODE: u32 = 10014;

const DAY_MS: u32 = 86_400_000;

#[derive(Debug)]
struct Rule {
    path: Pattern,
    /// Milliseconds after local midnight; `end` may be `DAY_MS` (the end of the day).
    start: u32,
    end: u32,
    /// ISO weekdays, 1 = Monday.
    day_start: u32,
    day_end: u32,
    zone: Zone,
}

pub struct TimeRestricted {
    rules: Vec<Rule>,
}

/// `HH:mm`, `HH:mm:ss` or `HH:mm:ss.SSS`, optionally ending in `Z`: milliseconds after midnight
/// and whether it said `Z`.
fn time_of_day(text: &str) -> Option<(u32, bool)> {
    let t = text.trim();
    let (t, utc) = match t.strip_suffix(['Z', 'z']) {
        Some(rest) => (rest, true),
        None => (t, false),
    };
    let (hms, fraction) = match t.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (t, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let two_digits = |s: &str| -> Option<u32> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (h, m, s) = match parts.as_slice() {
        [h, m] if fraction.is_none() => (two_digits(h)?, two_digits(m)?, 0),
        [h, m, s] => (two_digits(h)?, two_digits(m)?, two_digits(s)?),
        _ => return None,
    };
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let ms = match fraction {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<3}");
            padded[..3].parse::<u32>().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    Some(((h * 3600 + m * 60 + s) * 1000 + ms, utc))
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<TimeRestricted> {
    let mut rules = Vec::new();
    let mut ok = true;
    for (path, value) in f.array(&["rules"], problems) {
        let Some(mut r) = Fields::of(value, &path, problems) else {
            ok = false;
            continue;
        };
        match rule(&mut r, problems) {
            Some(rule) => rules.push(rule),
            None => ok = false,
        }
        r.finish(problems);
    }
    ok.then_some(TimeRestricted { rules })
}

fn rule(r: &mut Fields, problems: &mut Problems) -> Option<Rule> {
    let errors = problems.errors.len();
    let path = match r.string(&["pathPattern"], problems) {
        Some(p) => Pattern::full(&p)
            .map_err(|e| problems.error(&r.field_path("pathPattern"), e))
            .ok(),
        None => {
            if !r.has("pathPattern") {
                problems.error(&r.field_path("pathPattern"), "is required");
            }
            None
        }
    };
    let zone = match r.string(&["timeZone"], problems) {
        Some(z) => Zone::named(&z)
            .map_err(|e| problems.error(&r.field_path("timeZone"), e))
            .ok(),
        None => Some(Zone::UTC),
    };
    let mut time = |name: &str, default: u32, problems: &mut Problems| -> u32 {
        let Some(text) = r.string(&[name], problems) else {
            return default;
        };
        match time_of_day(&text) {
            Some((ms, utc)) => {
                if utc && zone.as_ref().is_some_and(|z| *z != Zone::UTC) {
                    problems.error(
                        &r.field_path(name),
                        format!("\"{text}\" is UTC (Z) but the rule's timeZone is not"),
                    );
                }
                ms
            }
            None => {
                problems.error(
                    &r.field_path(name),
                    format!("\"{text}\" is not a time of day like 08:30, 08:30:00 or 08:30:00.000"),
                );
                default
            }
        }
    };
    let start = time("timeStart", 0, problems);
    let end = time("timeEnd", DAY_MS, problems);
    let mut day = |name: &str, default: u32, problems: &mut Problems| -> u32 {
        match r.integer(&[name], problems) {
            None => default,
            Some(d @ 1..=7) => d as u32,
            Some(d) => {
                problems.error(
                    &r.field_path(name),
                    format!("{d} is not a day of the week (1 = Monday .. 7 = Sunday)"),
                );
                default
            }
        }
    };
    let day_start = day("dayStart", 1, problems);
    let day_end = day("dayEnd", 7, problems);
    if start == end {
        problems.warning(
            r.path(),
            "timeStart equals timeEnd: this rule is never open (its paths are always refused unless another rule opens them)",
        );
    }
    if problems.errors.len() > errors {
        return None;
    }
    Some(Rule {
        path: path?,
        start,
        end,
        day_start,
        day_end,
        zone: zone?,
    })
}

impl Rule {
    fn on_day(&self, weekday: u32) -> bool {
        if self.day_start <= self.day_end {
            (self.day_start..=self.day_end).contains(&weekday)
        } else {
            weekday >= self.day_start || weekday <= self.day_end
        }
    }

    /// Open at local `date` and `ms` after its midnight?
    fn open_at(&self, date: NaiveDate, ms: u32) -> bool {
        let today = tz::iso_weekday(date.weekday());
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Less => self.on_day(today) && (self.start..self.end).contains(&ms),
            std::cmp::Ordering::Greater => {
                let yesterday = tz::iso_weekday(date.weekday().pred());
                (self.on_day(today) && ms >= self.start)
                    || (self.on_day(yesterday) && ms < self.end)
            }
            std::cmp::Ordering::Equal => false,
        }
    }

    /// The local date and time of day at the UTC instant `now_ms`.
    fn local(&self, now_ms: i64) -> Option<(NaiveDate, u32)> {
        let offset = self.zone.offset_at(now_ms.div_euclid(1000));
        let local_ms = now_ms.saturating_add(i64::from(offset) * 1000);
        let local = chrono::DateTime::from_timestamp_millis(local_ms)?.naive_utc();
        let ms = local.num_seconds_from_midnight() * 1000 + local.nanosecond() / 1_000_000;
        Some((local.date(), ms))
    }

    fn is_open(&self, now_ms: i64) -> bool {
        self.local(now_ms)
            .is_some_and(|(date, ms)| self.open_at(date, ms))
    }

    /// The first UTC instant (ms) after `now_ms` at which this rule opens, within the next week.
    fn next_opening(&self, now_ms: i64) -> Option<i64> {
        if self.start == self.end {
            return None;
        }
        let (today, _) = self.local(now_ms)?;
        (0..=8u64).find_map(|d| {
            let date = today.checked_add_days(Days::new(d))?;
            if !self.on_day(tz::iso_weekday(date.weekday())) {
                return None;
            }
            let midnight = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
            let local = midnight + i64::from(self.start / 1000);
            let at = self.zone.to_utc(local) * 1000 + i64::from(self.start % 1000);
            (at > now_ms).then_some(at)
        })
    }
}

impl Policy for TimeRestricted {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, _request: &mut Request) -> Verdict {
        let destination = cx.destination();
        let mut applying = self
            .rules
            .iter()
            .filter(|r| r.path.is_match(destination))
            .peekable();
        if applying.peek().is_none() {
            return Verdict::Continue;
        }
        let applying: Vec<&Rule> = applying.collect();
        let now_ms = cx
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        if applying.iter().any(|r| r.is_open(now_ms)) {
            return Verdict::Continue;
        }
        let destination = cx.destination();
        let mut failure = PolicyFailure::new(
            FailureType::Other,
            FAILURE_CODE,
            format!(
                "Request {destination} was rejected. Resource cannot be accessed in this time period."
            ),
        )
        .with_status(403);
        if let Some(next) = applying.iter().filter_map(|r| r.next_opening(now_ms)).min() {
            // Whole seconds, rounded up: a client retrying then finds it open.
            let seconds = next.saturating_sub(now_ms).saturating_add(999) / 1000;
            failure
                .headers
                .push(("Retry-After".to_string(), seconds.max(1).to_string()));
        }
        Verdict::Fail(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;
    use std::time::{Duration, SystemTime};

    /// Unix seconds of a UTC date and time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> SystemTime {
        let t = NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|d| d.and_hms_opt(h, mi, s))
            .unwrap()
            .and_utc()
            .timestamp();
        UNIX_EPOCH + Duration::from_secs(t as u64)
    }

    /// 2026-11-30 is a Monday.
    fn monday(h: u32, mi: u32, s: u32) -> SystemTime {
        utc(2026, 11, 30, h, mi, s)
    }

    fn decide(p: &dyn Policy, destination: &str, at: SystemTime) -> Verdict {
        let mut f = Fixture::at(destination);
        f.host.now = at;
        f.on_request(p, &mut request("GET", &[]))
    }

    fn open(p: &dyn Policy, at: SystemTime) -> bool {
        is_continue(&decide(p, "/reports/1", at))
    }

    fn rule(r: serde_json::Value) -> Box<dyn Policy> {
        let mut r = r;
        r["pathPattern"] = json!("/reports/.*");
        compile(&KIND, json!({"rules": [r]}))
    }

    fn office_hours() -> Box<dyn Policy> {
        rule(json!({"timeStart": "09:00:00", "timeEnd": "17:00:00", "dayStart": 1, "dayEnd": 5}))
    }

    #[test]
    fn inside_the_window_passes() {
        assert!(open(office_hours().as_ref(), monday(12, 0, 0)));
    }

    #[test]
    fn the_start_is_inclusive_and_the_end_exclusive() {
        let p = office_hours();
        assert!(!open(p.as_ref(), monday(8, 59, 59)));
        assert!(open(p.as_ref(), monday(9, 0, 0)));
        assert!(open(p.as_ref(), monday(16, 59, 59)));
        assert!(!open(p.as_ref(), monday(17, 0, 0)));
    }

    #[test]
    fn outside_the_days_is_closed() {
        // 2026-12-05 is a Saturday.
        assert!(!open(office_hours().as_ref(), utc(2026, 12, 5, 12, 0, 0)));
    }

    #[test]
    fn a_closed_window_is_403_other_10014_with_apimans_message() {
        let f = failure(decide(
            office_hours().as_ref(),
            "/reports/7",
            monday(18, 0, 0),
        ));
        assert_eq!(
            (f.failure_type, f.code, f.status()),
            (FailureType::Other, 10014, 403)
        );
        assert_eq!(
            f.message,
            "Request /reports/7 was rejected. Resource cannot be accessed in this time period."
        );
    }

    #[test]
    fn retry_after_counts_the_seconds_to_the_next_opening() {
        let p = office_hours();
        // Monday 18:00 → Tuesday 09:00.
        let f = failure(decide(p.as_ref(), "/reports/7", monday(18, 0, 0)));
        assert_eq!(f.headers, vec![("Retry-After".into(), "54000".into())]);
        // Monday 08:59:59.5 → 09:00: rounded up to one second.
        let at = monday(8, 59, 59) + Duration::from_millis(500);
        let f = failure(decide(p.as_ref(), "/reports/7", at));
        assert_eq!(f.headers[0].1, "1");
        // Friday 17:00 → Monday 09:00.
        let f = failure(decide(p.as_ref(), "/reports/7", utc(2026, 12, 4, 17, 0, 0)));
        assert_eq!(f.headers[0].1, (64 * 3600).to_string());
    }

    #[test]
    fn an_unmatched_path_passes() {
        let p = office_hours();
        assert!(is_continue(&decide(p.as_ref(), "/other", monday(3, 0, 0))));
    }

    #[test]
    fn any_open_matching_rule_opens_the_path() {
        let p = compile(
            &KIND,
            json!({"rules": [
                {"pathPattern": "/reports/.*", "timeStart": "09:00", "timeEnd": "12:00"},
                {"pathPattern": "/reports/.*", "timeStart": "14:00", "timeEnd": "17:00"}
            ]}),
        );
        assert!(open(p.as_ref(), monday(15, 0, 0)));
        let f = failure(decide(p.as_ref(), "/reports/1", monday(12, 30, 0)));
        assert_eq!(f.headers[0].1, (90 * 60).to_string());
    }

    #[test]
    fn an_overnight_window_runs_into_the_next_morning() {
        let p = rule(
            json!({"timeStart": "22:00:00", "timeEnd": "06:00:00", "dayStart": 1, "dayEnd": 1}),
        );
        assert!(open(p.as_ref(), monday(23, 0, 0)));
        // Tuesday 05:59:59 still belongs to Monday's night; Tuesday 06:00 does not.
        assert!(open(p.as_ref(), utc(2026, 12, 1, 5, 59, 59)));
        assert!(!open(p.as_ref(), utc(2026, 12, 1, 6, 0, 0)));
        // Monday early morning belongs to Sunday's night, and Sunday is not a day of the rule.
        assert!(!open(p.as_ref(), monday(3, 0, 0)));
        assert!(!open(p.as_ref(), monday(21, 59, 59)));
    }

    #[test]
    fn a_wrapping_day_range_covers_the_weekend() {
        let p = rule(json!({"dayStart": 6, "dayEnd": 1}));
        assert!(open(p.as_ref(), utc(2026, 12, 5, 12, 0, 0))); // Saturday
        assert!(open(p.as_ref(), utc(2026, 12, 6, 12, 0, 0))); // Sunday
        assert!(open(p.as_ref(), monday(12, 0, 0)));
        assert!(!open(p.as_ref(), utc(2026, 12, 1, 12, 0, 0))); // Tuesday
                                                                // Tuesday noon → Saturday 00:00.
        let f = failure(decide(p.as_ref(), "/reports/1", utc(2026, 12, 1, 12, 0, 0)));
        assert_eq!(f.headers[0].1, (3 * 86_400 + 12 * 3600).to_string());
    }

    #[test]
    fn a_rule_time_zone_follows_daylight_saving_time() {
        let p =
            rule(json!({"timeStart": "09:00", "timeEnd": "17:00", "timeZone": "Europe/Berlin"}));
        // Winter: 09:00 Berlin is 08:00 UTC; summer: 07:00 UTC.
        assert!(open(p.as_ref(), utc(2026, 1, 15, 8, 0, 0)));
        assert!(!open(p.as_ref(), utc(2026, 1, 15, 7, 30, 0)));
        assert!(open(p.as_ref(), utc(2026, 7, 15, 7, 30, 0)));
        assert!(!open(p.as_ref(), utc(2026, 7, 15, 15, 0, 0)));
    }

    #[test]
    fn days_are_judged_in_the_rules_time_zone() {
        // Monday 23:30 UTC is already Tuesday in Tokyo.
        let p = rule(json!({"dayStart": 2, "dayEnd": 2, "timeZone": "Asia/Tokyo"}));
        assert!(open(p.as_ref(), monday(23, 30, 0)));
        assert!(!open(p.as_ref(), monday(12, 0, 0)));
    }

    #[test]
    fn retry_after_accounts_for_the_zone() {
        let p = rule(json!({"timeStart": "09:00", "timeEnd": "17:00", "timeZone": "+05:30"}));
        // 00:00 UTC is 05:30 local: 3.5 hours to go.
        let f = failure(decide(p.as_ref(), "/reports/1", monday(0, 0, 0)));
        assert_eq!(f.headers[0].1, (3 * 3600 + 1800).to_string());
    }

    #[test]
    fn retry_after_crosses_a_daylight_saving_change() {
        let p =
            rule(json!({"timeStart": "09:00", "timeEnd": "17:00", "timeZone": "Europe/Berlin"}));
        // Saturday 2026-03-28 18:00 UTC (19:00 CET) → Sunday 09:00 CEST = 07:00 UTC: 13 hours,
        // not the 14 a fixed offset would say.
        let f = failure(decide(p.as_ref(), "/reports/1", utc(2026, 3, 28, 18, 0, 0)));
        assert_eq!(f.headers[0].1, (13 * 3600).to_string());
    }

    #[test]
    fn a_missing_time_bound_is_the_start_or_end_of_the_day() {
        let from_noon = rule(json!({"timeStart": "12:00"}));
        assert!(open(from_noon.as_ref(), monday(23, 59, 59)));
        assert!(!open(from_noon.as_ref(), monday(11, 0, 0)));
        let until_noon = rule(json!({"timeEnd": "12:00"}));
        assert!(open(until_noon.as_ref(), monday(0, 0, 0)));
        assert!(!open(until_noon.as_ref(), monday(12, 0, 0)));
    }

    #[test]
    fn no_days_means_every_day() {
        let p = rule(json!({"timeStart": "00:00", "timeEnd": "23:00"}));
        assert!(open(p.as_ref(), utc(2026, 12, 6, 1, 0, 0))); // Sunday
    }

    #[test]
    fn equal_start_and_end_never_open_and_warn() {
        let config =
            json!({"rules": [{"pathPattern": "/x", "timeStart": "10:00", "timeEnd": "10:00"}]});
        let (p, problems) = crate::policy::testing::build(&KIND, config, &|_| None);
        assert_eq!(problems.warnings.len(), 1);
        let p = p.unwrap();
        let f = failure(decide(p.as_ref(), "/x", monday(10, 0, 0)));
        assert!(f.headers.is_empty(), "never opens: no Retry-After");
    }

    #[test]
    fn times_may_carry_seconds_milliseconds_and_z() {
        assert_eq!(time_of_day("10:00"), Some((36_000_000, false)));
        assert_eq!(time_of_day("10:00:01.5"), Some((36_001_500, false)));
        assert_eq!(time_of_day("10:00:00.000Z"), Some((36_000_000, true)));
        assert_eq!(time_of_day("24:00:00"), None);
        assert_eq!(time_of_day("9:00"), None);
        assert_eq!(time_of_day("10:00.5"), None);
    }

    #[test]
    fn invalid_rules_name_their_paths() {
        let e = errors(
            &KIND,
            json!({"rules": [{"timeStart": "25:00", "dayEnd": 8, "timeZone": "Nowhere/City"}]}),
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(e[0], "config.rules[0].pathPattern: is required");
        assert!(e[1].starts_with("config.rules[0].timeZone: \"Nowhere/City\" is not a time zone"));
        assert!(e[2].starts_with("config.rules[0].timeStart: \"25:00\" is not a time of day"));
        assert_eq!(
            e[3],
            "config.rules[0].dayEnd: 8 is not a day of the week (1 = Monday .. 7 = Sunday)"
        );
    }

    #[test]
    fn z_times_conflict_with_another_zone() {
        let e = errors(
            &KIND,
            json!({"rules": [{"pathPattern": "/x", "timeStart": "10:00Z", "timeZone": "Europe/Paris"}]}),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("is UTC (Z)"));
    }
}
