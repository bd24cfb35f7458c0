//! tollgate-registry: Apiman's Gateway REST API for tollgate. Apiman Manager (and Scheer PAS API
//! Management) publish APIs and register clients here as they do into an Apiman gateway; each
//! change is checked by the filter's own loader, stored durably (`<state>/registry.json`), and
//! handed to Envoy through tollgate-gen's live-update files (clusters by CDS, the registry by
//! ECDS), so a new API with a backend Envoy has never heard of is served without a restart.
//!
//! `beans` holds the registry and Apiman's rules for changing it, `store` the durable state,
//! `gateway` the control path (check, write, store, one change at a time), `rest` the REST API,
//! `auth` BASIC authentication, `server` the HTTP server.

pub mod auth;
pub mod beans;
pub mod gateway;
pub mod rest;
pub mod server;
pub mod store;

use std::time::{SystemTime, UNIX_EPOCH};

/// One log line on stderr, with the UTC time: one per change, refusal and refused request.
pub fn log(line: &str) {
    eprintln!("{} tollgate-registry: {line}", utc_now());
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_gregorian() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(super::civil_from_days(20_454), (2026, 1, 1));
    }
}
