//! Time zones for policies that work in local time: IANA names (`Europe/Berlin`, links such as
//! `US/Eastern` too) and fixed offsets (`+05:30`).
//!
//! A zone is its current rule, a POSIX TZ string (`CET-1CEST,M3.5.0,M10.5.0/3`: UTC+1, UTC+2 from
//! the last Sunday of March 02:00 to the last Sunday of October 03:00), plus, for the few zones
//! whose changes follow no rule (Morocco, Gaza), their transitions listed until the 2080s. The
//! table (`tz_data.rs`) is generated from the tz database by `scripts/gen-tz-table`. History is
//! left out: policies ask about now and the days ahead, and the full database (chrono-tz) would
//! add ~0.9 MB to the wasm module where this adds ~30 KB. Calendar arithmetic is chrono's.

use chrono::{Datelike, NaiveDate, Weekday};

#[path = "tz_data.rs"]
mod data;

pub use data::TZDATA_VERSION;

/// A time zone: how far local time is from UTC at any instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Standard time's offset from UTC, in seconds (east positive).
    std: i32,
    dst: Option<Dst>,
    /// Transitions no rule expresses (UTC seconds, offset after): they win before the last one.
    explicit: &'static [(i64, i32)],
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dst {
    /// Daylight time's offset from UTC, in seconds.
    offset: i32,
    /// When daylight time starts, in local standard time.
    start: Change,
    /// When it ends, in local daylight time.
    end: Change,
}

/// A yearly change: a day and the local time of day (which may be negative or past 24 h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    day: Day,
    seconds: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Day {
    /// `Jn`: day 1 to 365, February 29 never counted.
    Julian(u16),
    /// `n`: day 0 to 365, February 29 counted.
    Ordinal(u16),
    /// `Mm.w.d`: weekday `d` (0 = Sunday) of week `w` (5 = the last) of month `m`.
    Month { month: u32, week: u32, weekday: u32 },
}

impl Zone {
    pub const UTC: Zone = Zone {
        std: 0,
        dst: None,
        explicit: &[],
    };

    /// A zone by IANA name (case-insensitive), `UTC`/`Z`, or a fixed offset `±HH:MM` / `±HHMM` /
    /// `±HH`.
    pub fn named(name: &str) -> Result<Zone, String> {
        let n = name.trim();
        if n.eq_ignore_ascii_case("z") {
            return Ok(Zone::UTC);
        }
        if n.starts_with(['+', '-']) {
            return fixed_offset(n)
                .map(|std| Zone {
                    std,
                    dst: None,
                    explicit: &[],
                })
                .ok_or_else(|| {
                    format!("\"{name}\" is not an offset like +05:30 (at most ±18:00)")
                });
        }
        let found = data::ZONES
            .binary_search_by(|(zone, _, _)| cmp_ignore_case(zone, n))
            .map_err(|_| format!("\"{name}\" is not a time zone (an IANA name like Europe/Berlin, or an offset like +05:30)"))?;
        let (_, rule, transitions) = data::ZONES[found];
        let rule = data::RULES
            .get(usize::from(rule))
            .copied()
            .unwrap_or("UTC0");
        let mut zone = Zone::posix(rule).map_err(|e| format!("{name}: rule \"{rule}\": {e}"))?;
        if transitions != data::NONE {
            zone.explicit = data::TRANSITIONS
                .get(usize::from(transitions))
                .copied()
                .unwrap_or(&[]);
        }
        Ok(zone)
    }

    /// A zone from a POSIX TZ string with rules (`EST5EDT,M3.2.0,M11.1.0`).
    pub fn posix(tz: &str) -> Result<Zone, String> {
        let mut p = Parser {
            s: tz.as_bytes(),
            at: 0,
        };
        p.name()?;
        let std = -p.offset(24)?;
        if p.done() {
            return Ok(Zone {
                std,
                dst: None,
                explicit: &[],
            });
        }
        p.name()?;
        let offset = if p.peek() == Some(b',') {
            std + 3600
        } else {
            -p.offset(24)?
        };
        p.expect(b',')?;
        let start = p.change()?;
        p.expect(b',')?;
        let end = p.change()?;
        if !p.done() {
            return Err("unexpected text after the rules".into());
        }
        Ok(Zone {
            std,
            dst: Some(Dst { offset, start, end }),
            explicit: &[],
        })
    }

    /// The offset from UTC (seconds, east positive) at the UTC instant `t` (Unix seconds).
    pub fn offset_at(&self, t: i64) -> i32 {
        if let Some(&(last, _)) = self.explicit.last() {
            if t < last {
                let i = self.explicit.partition_point(|&(at, _)| at <= t);
                if i > 0 {
                    return self.explicit[i - 1].1;
                }
            }
        }
        let Some(dst) = &self.dst else {
            return self.std;
        };
        let year = year_of(t + i64::from(self.std));
        let mut current = self.std;
        let mut latest = i64::MIN;
        // The changes of the year before, this year and the next, in order: the last one at or
        // before `t` decides (a southern summer spans the turn of the year).
        for y in [year - 1, year, year + 1] {
            for (at, offset) in [
                (dst.start.utc(y, self.std), dst.offset),
                (dst.end.utc(y, dst.offset), self.std),
            ] {
                if let Some(at) = at {
                    if at <= t && at >= latest {
                        latest = at;
                        current = offset;
                    }
                }
            }
        }
        current
    }

    /// The UTC instant of local time `local` (Unix seconds of the local wall clock): the earlier
    /// one when the clock goes back over it, and the moment the clock jumps past it when it is
    /// skipped.
    pub fn to_utc(&self, local: i64) -> i64 {
        let offsets = [
            self.offset_at(local - 86_400),
            self.offset_at(local + 86_400),
        ];
        let valid = offsets
            .iter()
            .map(|&o| local - i64::from(o))
            .filter(|&u| u + i64::from(self.offset_at(u)) == local)
            .min();
        if let Some(u) = valid {
            return u;
        }
        // Skipped: the first instant whose local time is past `local`.
        let (a, b) = (i64::from(offsets[0]), i64::from(offsets[1]));
        let (mut lo, mut hi) = (local - a.max(b), local - a.min(b));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if mid + i64::from(self.offset_at(mid)) >= local {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }
}

/// `+05:30`, `-0800`, `+01`: seconds east of UTC.
fn fixed_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 5 {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i32>().ok()?, 0),
        4 => (
            digits[..2].parse::<i32>().ok()?,
            digits[2..].parse::<i32>().ok()?,
        ),
        _ => return None,
    };
    (h <= 18 && m < 60 && h * 3600 + m * 60 <= 18 * 3600).then_some(sign * (h * 3600 + m * 60))
}

fn cmp_ignore_case(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// The proleptic Gregorian year of Unix second `t` (in whatever clock `t` is).
fn year_of(t: i64) -> i32 {
    chrono::DateTime::from_timestamp(t, 0).map_or(1970, |d| d.year())
}

impl Change {
    /// The UTC instant of this change in `year`, whose local time is `offset` ahead of UTC.
    fn utc(&self, year: i32, offset: i32) -> Option<i64> {
        let date = match self.day {
            Day::Julian(n) => {
                let leap = NaiveDate::from_ymd_opt(year, 2, 29).is_some();
                let n = u32::from(n);
                NaiveDate::from_yo_opt(year, if leap && n >= 60 { n + 1 } else { n })?
            }
            Day::Ordinal(n) => NaiveDate::from_yo_opt(year, u32::from(n) + 1)?,
            Day::Month {
                month,
                week,
                weekday,
            } => {
                let first = NaiveDate::from_ymd_opt(year, month, 1)?;
                let first_weekday = first.weekday().num_days_from_sunday();
                let mut day = 1 + (weekday + 7 - first_weekday) % 7 + 7 * (week - 1);
                let next = if month == 12 {
                    NaiveDate::from_ymd_opt(year + 1, 1, 1)?
                } else {
                    NaiveDate::from_ymd_opt(year, month + 1, 1)?
                };
                let days_in_month = u32::try_from((next - first).num_days()).ok()?;
                while day > days_in_month {
                    day -= 7;
                }
                NaiveDate::from_ymd_opt(year, month, day)?
            }
        };
        let midnight = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
        Some(midnight + i64::from(self.seconds) - i64::from(offset))
    }
}

/// Reads a POSIX TZ string.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn done(&self) -> bool {
        self.at >= self.s.len()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at {}", c as char, self.at))
        }
    }

    /// `CET` or `<+0530>`.
    fn name(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'<') {
            while let Some(c) = self.peek() {
                self.at += 1;
                if c == b'>' {
                    return Ok(());
                }
            }
            return Err("unterminated <name>".into());
        }
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.at += 1;
        }
        if self.at - start < 3 {
            return Err(format!("expected a zone abbreviation at {start}"));
        }
        Ok(())
    }

    fn number(&mut self) -> Result<i32, String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        std::str::from_utf8(&self.s[start..self.at])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("expected a number at {start}"))
    }

    /// `[+-]hh[:mm[:ss]]` in seconds, hours at most `max_hours`.
    fn offset(&mut self, max_hours: i32) -> Result<i32, String> {
        let sign = match self.peek() {
            Some(b'-') => {
                self.at += 1;
                -1
            }
            Some(b'+') => {
                self.at += 1;
                1
            }
            _ => 1,
        };
        let hours = self.number()?;
        if hours > max_hours {
            return Err(format!("{hours} hours is out of range"));
        }
        let mut seconds = hours * 3600;
        for unit in [60, 1] {
            if self.peek() != Some(b':') {
                break;
            }
            self.at += 1;
            let n = self.number()?;
            if n >= 60 {
                return Err(format!("{n} is not a minute or second"));
            }
            seconds += n * unit;
        }
        Ok(sign * seconds)
    }

    /// `Jn`, `n` or `Mm.w.d`, then an optional `/time` (default 02:00).
    fn change(&mut self) -> Result<Change, String> {
        let day = match self.peek() {
            Some(b'J') => {
                self.at += 1;
                match self.number()? {
                    n @ 1..=365 => Day::Julian(n as u16),
                    n => return Err(format!("J{n} is not a day 1 to 365")),
                }
            }
            Some(b'M') => {
                self.at += 1;
                let month = self.number()?;
                self.expect(b'.')?;
                let week = self.number()?;
                self.expect(b'.')?;
                let weekday = self.number()?;
                if !(1..=12).contains(&month) || !(1..=5).contains(&week) || weekday > 6 {
                    return Err(format!("M{month}.{week}.{weekday} is not a valid day"));
                }
                Day::Month {
                    month: month as u32,
                    week: week as u32,
                    weekday: weekday as u32,
                }
            }
            _ => match self.number()? {
                n @ 0..=365 => Day::Ordinal(n as u16),
                n => return Err(format!("{n} is not a day 0 to 365")),
            },
        };
        let seconds = if self.peek() == Some(b'/') {
            self.at += 1;
            // RFC 8536 extends the time of day to -167..167 hours.
            self.offset(167)?
        } else {
            7200
        };
        Ok(Change { day, seconds })
    }
}

/// ISO weekday number, Monday 1 to Sunday 7 (Apiman's `dayStart`/`dayEnd`).
pub fn iso_weekday(day: Weekday) -> u32 {
    day.number_from_monday()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-29T01:00:00Z: Europe switches to summer time.
    const EU_SPRING_2026: i64 = 1_774_746_000;

    #[test]
    fn names_are_found_case_insensitively_and_links_resolve() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(Zone::named("europe/berlin").unwrap(), berlin);
        assert_eq!(
            Zone::named("US/Eastern").unwrap(),
            Zone::named("America/New_York").unwrap()
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_saying_what_is_expected() {
        let e = Zone::named("Mars/Olympus").unwrap_err();
        assert!(e.contains("IANA name like Europe/Berlin"), "{e}");
    }

    #[test]
    fn utc_and_fixed_offsets() {
        assert_eq!(Zone::named("UTC").unwrap().offset_at(0), 0);
        assert_eq!(Zone::named("Z").unwrap(), Zone::UTC);
        assert_eq!(Zone::named("+05:30").unwrap().offset_at(0), 19_800);
        assert_eq!(Zone::named("-0800").unwrap().offset_at(0), -28_800);
        assert_eq!(Zone::named("+01").unwrap().offset_at(0), 3600);
        assert!(Zone::named("+19:00").is_err());
        assert!(Zone::named("+5:3").is_err());
    }

    #[test]
    fn european_summer_time_starts_on_the_last_sunday_of_march() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(berlin.offset_at(EU_SPRING_2026 - 1), 3600);
        assert_eq!(berlin.offset_at(EU_SPRING_2026), 7200);
    }

    #[test]
    fn a_southern_summer_spans_the_new_year() {
        let sydney = Zone::named("Australia/Sydney").unwrap();
        // 2026-01-01T00:00:00Z: summer (UTC+11); 2026-07-01: winter (UTC+10).
        assert_eq!(sydney.offset_at(1_767_225_600), 39_600);
        assert_eq!(sydney.offset_at(1_782_864_000), 36_000);
    }

    #[test]
    fn explicit_transitions_win_over_the_rule() {
        // Morocco's rule says UTC+1 all year; around Ramadan 2026 (from 2026-02-15) it is UTC+0.
        let casablanca = Zone::named("Africa/Casablanca").unwrap();
        assert_eq!(casablanca.offset_at(1_771_200_000), 0);
        assert_eq!(casablanca.offset_at(1_767_225_600), 3600);
    }

    #[test]
    fn local_times_convert_back_to_utc() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        // 2026-03-29 12:00 local (summer) is 10:00 UTC.
        let noon = 1_774_785_600;
        assert_eq!(berlin.to_utc(noon), noon - 7200);
    }

    #[test]
    fn a_skipped_local_time_converts_to_the_moment_of_the_jump() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        // 2026-03-29 02:30 local does not exist: the clock jumps from 02:00 to 03:00.
        let skipped = 1_774_751_400;
        assert_eq!(berlin.to_utc(skipped), EU_SPRING_2026);
    }

    #[test]
    fn a_repeated_local_time_converts_to_its_first_occurrence() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        // 2026-10-25 02:30 local happens twice; first at 00:30 UTC (summer time).
        let repeated = 1_792_895_400;
        assert_eq!(berlin.to_utc(repeated), repeated - 7200);
    }

    #[test]
    fn posix_rules_parse_all_day_forms() {
        let z = Zone::posix("<-03>3<-02>,M3.5.0/-2,M10.5.0/-1").unwrap();
        assert_eq!(z.std, -10_800);
        assert!(Zone::posix("XXX3YYY,J60/2,300/25").is_ok());
        assert!(Zone::posix("XX3").is_err());
        assert!(Zone::posix("CET-1CEST,M13.1.0,M10.5.0").is_err());
    }

    #[test]
    fn every_rule_in_the_table_parses() {
        for (name, _, _) in data::ZONES {
            assert!(Zone::named(name).is_ok(), "{name}");
        }
    }

    /// The table against chrono-tz (the full tz database, a test-only dependency) for every zone,
    /// every day from 2026 to 2031 and on both sides of every change to the second: a stale
    /// table or a rule read wrong shows here. Native only: chrono-tz is not built for the wasm
    /// test run.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn the_table_agrees_with_the_full_tz_database() {
        use chrono::{Offset, TimeZone};
        const FROM: i64 = 1_767_225_600; // 2026-01-01
        const TO: i64 = 1_924_992_000; // 2031-01-01
        const STEP: i64 = 86_400;
        let mut checked = 0;
        let mut disagreements = Vec::new();
        for (name, _, _) in data::ZONES {
            let Ok(tz) = name.parse::<chrono_tz::Tz>() else {
                disagreements.push(format!("{name}: unknown to chrono-tz"));
                continue;
            };
            let theirs = |t: i64| {
                chrono::DateTime::from_timestamp(t, 0).map_or(i32::MIN, |utc| {
                    tz.offset_from_utc_datetime(&utc.naive_utc())
                        .fix()
                        .local_minus_utc()
                })
            };
            let zone = Zone::named(name).unwrap();
            let mut t = FROM;
            let mut before = theirs(t);
            while t < TO {
                let mut wrong = (zone.offset_at(t) != before).then_some(t);
                let after = theirs(t + STEP);
                if after != before && wrong.is_none() {
                    // A change within the step: find its second and check both sides of it.
                    let (mut lo, mut hi) = (t, t + STEP);
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        if theirs(mid) == before {
                            lo = mid;
                        } else {
                            hi = mid;
                        }
                    }
                    if zone.offset_at(lo) != theirs(lo) {
                        wrong = Some(lo);
                    } else if zone.offset_at(hi) != theirs(hi) {
                        wrong = Some(hi);
                    }
                }
                if let Some(at) = wrong {
                    disagreements.push(format!(
                        "{name} at {at}: ours {}, chrono-tz {}",
                        zone.offset_at(at),
                        theirs(at)
                    ));
                    break;
                }
                checked += 1;
                before = after;
                t += STEP;
            }
        }
        assert!(checked > 1_000_000, "{checked}");
        assert!(
            disagreements.is_empty(),
            "{} zones disagree (tzdata {TZDATA_VERSION}):\n{}",
            disagreements.len(),
            disagreements.join("\n")
        );
    }
}
