//! Timestamps without a date crate: RFC 3339 / ISO 8601 parsing (HAR `startedDateTime`, tap
//! `headers_received_time`, fixture `at`) and HTTP dates, all as nanoseconds since the epoch.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of `days_from_civil`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn digits(s: &str, from: usize, len: usize) -> Option<u32> {
    let part = s.get(from..from + len)?;
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// Parses `2026-01-01T00:00:00Z`, with optional fraction (any precision) and a `Z` or `±hh:mm`
/// offset (a space may stand for the `T`). Returns nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let year = i64::from(digits(s, 0, 4)?);
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    if s.get(4..5)? != "-" || s.get(7..8)? != "-" || !matches!(s.get(10..11)?, "T" | "t" | " ") {
        return None;
    }
    let hour = digits(s, 11, 2)?;
    let minute = digits(s, 14, 2)?;
    let second = digits(s, 17, 2)?;
    if s.get(13..14)? != ":" || s.get(16..17)? != ":" {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos: u64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let mut scale = 100_000_000u64;
        for b in frac[..len].bytes().take(9) {
            nanos += u64::from(b - b'0') * scale;
            scale /= 10;
        }
        rest = &frac[len..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" | "" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let oh = i64::from(digits(rest, 1, 2)?);
            let om = match rest.get(3..)? {
                "" => 0,
                r => i64::from(digits(r.strip_prefix(':').unwrap_or(r), 0, 2)?),
            };
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second.min(60))
        - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// `2026-01-01T00:00:00.000Z` (milliseconds, UTC).
pub fn format_rfc3339(nanos: u64) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let millis = (nanos / 1_000_000) % 1000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

/// An HTTP date (`Thu, 01 Jan 2026 00:00:00 GMT`), as Envoy writes `date`.
pub fn format_http_date(nanos: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = (nanos / 1_000_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let t = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(mo as usize).saturating_sub(1) % 12],
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1_2026: u64 = 1_767_225_600 * 1_000_000_000;

    #[test]
    fn parses_utc_with_and_without_fractions() {
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Some(JAN_1_2026));
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:01.5Z"),
            Some(JAN_1_2026 + 1_500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00.123456789Z"),
            Some(JAN_1_2026 + 123_456_789)
        );
    }

    #[test]
    fn applies_offsets() {
        assert_eq!(parse_rfc3339("2026-01-01T01:00:00+01:00"), Some(JAN_1_2026));
        assert_eq!(parse_rfc3339("2025-12-31T23:00:00-01:00"), Some(JAN_1_2026));
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in [
            "",
            "2026-01-01",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00+x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(
            format_rfc3339(JAN_1_2026 + 7_000_000),
            "2026-01-01T00:00:00.007Z"
        );
        assert_eq!(
            format_http_date(JAN_1_2026),
            "Thu, 01 Jan 2026 00:00:00 GMT"
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }
}
