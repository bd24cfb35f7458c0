//! Shared counters for limits (rate limits, quotas, transfer quotas), exact across worker VMs.
//!
//! Envoy runs one VM per worker; the only state they share is shared data, a key-value store
//! with compare-and-swap that never expires a key and cannot delete one (proxy-wasm ABI 0.2.1
//! has no call for it). So the key space must be bounded up front:
//!
//! - A counter is namespaced by its policy instance (`BuildContext::instance_id`) and its
//!   subject (a client, an API key, an address, a user). The subject is hashed into one of
//!   `SLOTS` slots: the key is `tollgate.ctr.<instance>.<slot>`, so an instance never holds
//!   more than `SLOTS` keys, whatever clients send (an address-keyed limit faces the internet).
//! - A slot's value carries the window it counts for and one entry per subject seen in it
//!   (a 64-bit fingerprint and a count). A write in a later window drops the old entries: the
//!   window lives in the value, not in the key, so windows never leak keys. A write for an
//!   *earlier* window (a worker whose clock read came just before the window turned) never
//!   overwrites a later one: it counts in the later window instead.
//! - A slot holds at most `MAX_ENTRIES` subjects per window. Further subjects in that window
//!   share one overflow entry: they are limited together (never over-admitted), and a slot's
//!   value never grows past `HEADER + (MAX_ENTRIES + 1) * ENTRY` bytes, whatever clients send.
//! - One read and one CAS write per request in the common case; a refusal writes nothing.
//!   Under contention the write is retried up to `CAS_RETRIES` times with a fresh read; after
//!   that the operation reports `Contended` and the policy refuses the request (fail closed:
//!   a limit is never exceeded because workers raced).
//! - `sweep` rewrites slots whose window has passed, so stale entries of subjects that went
//!   quiet do not keep their memory; policies call `sweep_step` from their tick, which claims
//!   the next batch of slots through a shared cursor (one batch per second for all workers
//!   together, not one per worker).

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::host::{Host, SharedError, CAS_RETRIES, CREATE_CAS};

/// Slots per policy instance: the most keys one instance can create.
pub const SLOTS: u32 = 1 << 16;

/// Subjects one slot counts separately per window; more share the overflow entry.
pub const MAX_ENTRIES: usize = 64;

const VERSION: u8 = 1;
const HEADER: usize = 9;
const ENTRY: usize = 16;
/// The fingerprint of the overflow entry (no subject's fingerprint is 0: see `locate`).
const OVERFLOW: u64 = 0;

/// The most bytes one slot's value takes.
pub const MAX_SLOT_BYTES: usize = HEADER + (MAX_ENTRIES + 1) * ENTRY;

/// A counting window: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// Whole seconds until the window ends (at least 1 while it is open).
    pub fn seconds_left(&self, now: u64) -> u64 {
        self.end.saturating_sub(now).max(1)
    }
}

/// Fixed calendar periods, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

impl Period {
    /// The window of this period that contains `now` (Unix seconds).
    pub fn window(self, now: u64) -> Window {
        let fixed = |len: u64| Window {
            start: now - now % len,
            end: now - now % len + len,
        };
        match self {
            Period::Second => fixed(1),
            Period::Minute => fixed(60),
            Period::Hour => fixed(3600),
            Period::Day => fixed(86_400),
            Period::Month | Period::Year => {
                let (y, m, _) = civil_from_days((now / 86_400) as i64);
                let (start, end) = if self == Period::Month {
                    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                    (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
                } else {
                    (days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1))
                };
                Window {
                    start: (start.max(0) as u64) * 86_400,
                    end: (end.max(0) as u64) * 86_400,
                }
            }
        }
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Which counter: a policy instance and a subject within it.
#[derive(Debug, Clone, Copy)]
pub struct Counter<'a> {
    pub instance: &'a str,
    pub subject: &'a str,
}

impl Counter<'_> {
    /// The slot's shared-data key and the subject's fingerprint within it.
    fn locate(&self) -> (String, u64) {
        let digest = Sha256::digest(self.subject.as_bytes());
        let slot = u32::from(u16::from_be_bytes([digest[0], digest[1]])) % SLOTS;
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&digest[8..16]);
        // 0 is the overflow entry's.
        let fp = u64::from_le_bytes(fp).max(1);
        (slot_key(self.instance, slot), fp)
    }
}

fn slot_key(instance: &str, slot: u32) -> String {
    format!("tollgate.ctr.{instance}.{slot:04x}")
}

/// Why a counter could not be updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterError {
    /// Other workers kept writing the slot: `CAS_RETRIES` attempts all lost the race.
    Contended,
    /// The host refused the write.
    Host,
}

/// The outcome of `admit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted; the count afterwards.
    Admitted(u64),
    /// Not counted: the count would have gone above the limit. The count as it stands.
    Refused(u64),
}

/// A slot's entries for one window.
struct Slot {
    window_start: u64,
    entries: Vec<(u64, u64)>,
}

impl Slot {
    /// Reads a slot value for `window`: its entries if it counts for that window or a later
    /// one (then the slot keeps the later window), else nothing. Anything unreadable counts as
    /// empty.
    fn parse(bytes: Option<&[u8]>, window: Window) -> Slot {
        let empty = Slot {
            window_start: window.start,
            entries: Vec::new(),
        };
        let Some(bytes) = bytes else {
            return empty;
        };
        if bytes.len() < HEADER || bytes[0] != VERSION || (bytes.len() - HEADER) % ENTRY != 0 {
            return empty;
        }
        let u64_at = |at: usize| -> u64 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let stored = u64_at(1);
        if stored < window.start {
            return empty;
        }
        let entries = (HEADER..bytes.len())
            .step_by(ENTRY)
            .map(|at| (u64_at(at), u64_at(at + 8)))
            .collect();
        Slot {
            window_start: stored,
            entries,
        }
    }

    /// The entry `fp` counts in: its own, a new one while the slot has room, else the
    /// overflow entry.
    fn entry_for(&self, fp: u64) -> u64 {
        if self.entries.iter().any(|(f, _)| *f == fp) {
            return fp;
        }
        let own = self.entries.iter().filter(|(f, _)| *f != OVERFLOW).count();
        if own < MAX_ENTRIES {
            fp
        } else {
            OVERFLOW
        }
    }

    fn count(&self, fp: u64) -> u64 {
        let fp = self.entry_for(fp);
        self.entries
            .iter()
            .find(|(f, _)| *f == fp)
            .map_or(0, |(_, c)| *c)
    }

    fn set(&mut self, fp: u64, count: u64) {
        let fp = self.entry_for(fp);
        match self.entries.iter_mut().find(|(f, _)| *f == fp) {
            Some(e) => e.1 = count,
            None => self.entries.push((fp, count)),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.entries.len());
        out.push(VERSION);
        out.extend_from_slice(&self.window_start.to_le_bytes());
        for (fp, count) in &self.entries {
            out.extend_from_slice(&fp.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }
}

/// Read-modify-write of one counter with a bounded CAS loop. `decide` gets the current count
/// and returns the new count to write (or `None` to write nothing) and the result.
fn update<T>(
    host: &mut dyn Host,
    counter: Counter,
    window: Window,
    mut decide: impl FnMut(u64) -> (Option<u64>, T),
) -> Result<T, CounterError> {
    let (key, fp) = counter.locate();
    for _ in 0..CAS_RETRIES {
        let current = host.shared_get(&key);
        let mut slot = Slot::parse(current.as_ref().map(|(v, _)| v.as_slice()), window);
        let (next, result) = decide(slot.count(fp));
        let Some(next) = next else {
            return Ok(result);
        };
        slot.set(fp, next);
        let cas = current.map_or(CREATE_CAS, |(_, cas)| cas);
        match host.shared_set(&key, &slot.encode(), cas) {
            Ok(()) => return Ok(result),
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return Err(CounterError::Host),
        }
    }
    Err(CounterError::Contended)
}

/// Counts `amount` unless the count would then exceed `limit` (Apiman: a request is accepted
/// while the count is below the limit). A refusal writes nothing.
pub fn admit(
    host: &mut dyn Host,
    counter: Counter,
    window: Window,
    amount: u64,
    limit: u64,
) -> Result<Admission, CounterError> {
    update(host, counter, window, |count| {
        let next = count.saturating_add(amount);
        if next > limit {
            (None, Admission::Refused(count))
        } else {
            (Some(next), Admission::Admitted(next))
        }
    })
}

/// Adds `amount` whatever the count (bytes already transferred). Returns the count afterwards.
pub fn add(
    host: &mut dyn Host,
    counter: Counter,
    window: Window,
    amount: u64,
) -> Result<u64, CounterError> {
    update(host, counter, window, |count| {
        let next = count.saturating_add(amount);
        (Some(next), next)
    })
}

/// The count in `window` (0 for a subject not seen in it). One read, no write.
pub fn read(host: &mut dyn Host, counter: Counter, window: Window) -> u64 {
    let (key, fp) = counter.locate();
    let current = host.shared_get(&key);
    Slot::parse(current.as_ref().map(|(v, _)| v.as_slice()), window).count(fp)
}

/// Empties the slots in `slots` (of `instance`) whose window is not `window`, so subjects that
/// went quiet free their entries. Returns how many slots were rewritten. Slots that changed in
/// between are left to the next sweep.
pub fn sweep(host: &mut dyn Host, instance: &str, slots: Range<u32>, window: Window) -> usize {
    let mut swept = 0;
    for slot in slots.start.min(SLOTS)..slots.end.min(SLOTS) {
        let key = slot_key(instance, slot);
        let Some((value, cas)) = host.shared_get(&key) else {
            continue;
        };
        let stale = value.len() > HEADER && Slot::parse(Some(&value), window).entries.is_empty();
        if stale {
            let empty = Slot {
                window_start: window.start,
                entries: Vec::new(),
            };
            if host.shared_set(&key, &empty.encode(), cas).is_ok() {
                swept += 1;
            }
        }
    }
    swept
}

/// Slots one `sweep_step` visits.
pub const SWEEP_BATCH: u32 = 128;

/// One step of the sweep of `instance`'s slots, shared by every worker: the first worker to
/// call it in a second (`now`, Unix seconds) claims the next `SWEEP_BATCH` slots through a
/// shared cursor (one CAS write) and sweeps them; the others find the batch claimed and do
/// nothing. A whole pass takes `SLOTS / SWEEP_BATCH` seconds (about 9 minutes). Returns the
/// slots rewritten.
pub fn sweep_step(host: &mut dyn Host, instance: &str, window: Window, now: u64) -> usize {
    let key = format!("tollgate.sweep.{instance}");
    let current = host.shared_get(&key);
    let (next, last) = match current.as_ref().map(|(v, _)| v.as_slice()) {
        Some(v) if v.len() == 12 => {
            let mut n = [0u8; 4];
            n.copy_from_slice(&v[..4]);
            let mut t = [0u8; 8];
            t.copy_from_slice(&v[4..]);
            (u32::from_le_bytes(n) % SLOTS, u64::from_le_bytes(t))
        }
        _ => (0, 0),
    };
    if last >= now {
        return 0;
    }
    let mut claim = Vec::with_capacity(12);
    claim.extend_from_slice(&((next + SWEEP_BATCH) % SLOTS).to_le_bytes());
    claim.extend_from_slice(&now.to_le_bytes());
    let cas = current.map_or(CREATE_CAS, |(_, cas)| cas);
    if host.shared_set(&key, &claim, cas).is_err() {
        // Another worker claimed this batch.
        return 0;
    }
    sweep(host, instance, next..next + SWEEP_BATCH, window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryHost;

    const W: Window = Window {
        start: 1_000,
        end: 1_060,
    };

    fn c(subject: &str) -> Counter<'_> {
        Counter {
            instance: "i1",
            subject,
        }
    }

    #[test]
    fn admits_up_to_the_limit_then_refuses_without_writing() {
        let mut host = MemoryHost::default();
        for n in 1..=3 {
            assert_eq!(
                admit(&mut host, c("a"), W, 1, 3),
                Ok(Admission::Admitted(n))
            );
        }
        let writes = host.calls.shared_set;
        assert_eq!(admit(&mut host, c("a"), W, 1, 3), Ok(Admission::Refused(3)));
        assert_eq!(host.calls.shared_set, writes);
    }

    #[test]
    fn one_read_and_one_write_per_admission() {
        let mut host = MemoryHost::default();
        admit(&mut host, c("a"), W, 1, 10).unwrap();
        assert_eq!((host.calls.shared_get, host.calls.shared_set), (1, 1));
    }

    #[test]
    fn subjects_count_separately() {
        let mut host = MemoryHost::default();
        admit(&mut host, c("a"), W, 1, 1).unwrap();
        assert_eq!(
            admit(&mut host, c("b"), W, 1, 1),
            Ok(Admission::Admitted(1))
        );
        assert_eq!(admit(&mut host, c("a"), W, 1, 1), Ok(Admission::Refused(1)));
    }

    #[test]
    fn instances_count_separately() {
        let mut host = MemoryHost::default();
        let other = Counter {
            instance: "i2",
            subject: "a",
        };
        admit(&mut host, c("a"), W, 1, 1).unwrap();
        assert_eq!(admit(&mut host, other, W, 1, 1), Ok(Admission::Admitted(1)));
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let mut host = MemoryHost::default();
        admit(&mut host, c("a"), W, 1, 1).unwrap();
        let next = Window {
            start: 1_060,
            end: 1_120,
        };
        assert_eq!(
            admit(&mut host, c("a"), next, 1, 1),
            Ok(Admission::Admitted(1))
        );
    }

    #[test]
    fn subjects_sharing_a_slot_keep_their_own_counts() {
        // Find two subjects that hash into one slot.
        let (key, _) = c("s0").locate();
        let twin = (1..200_000)
            .map(|i| format!("s{i}"))
            .find(|s| c(s).locate().0 == key)
            .unwrap();
        let mut host = MemoryHost::default();
        add(&mut host, c("s0"), W, 5).unwrap();
        add(&mut host, c(&twin), W, 7).unwrap();
        assert_eq!(read(&mut host, c("s0"), W), 5);
        assert_eq!(read(&mut host, c(&twin), W), 7);
    }

    #[test]
    fn the_key_space_of_an_instance_is_bounded() {
        let mut host = MemoryHost::default();
        for i in 0..5_000 {
            add(&mut host, c(&format!("203.0.113.{i}")), W, 1).unwrap();
        }
        let (key, _) = c("x").locate();
        assert!(key.starts_with("tollgate.ctr.i1."));
        assert!(key.len() <= "tollgate.ctr.i1.ffff".len());
    }

    #[test]
    fn a_refused_amount_larger_than_what_is_left_counts_nothing() {
        let mut host = MemoryHost::default();
        add(&mut host, c("a"), W, 8).unwrap();
        assert_eq!(
            admit(&mut host, c("a"), W, 5, 10),
            Ok(Admission::Refused(8))
        );
        assert_eq!(read(&mut host, c("a"), W), 8);
    }

    #[test]
    fn sweeping_empties_slots_of_past_windows_only() {
        let mut host = MemoryHost::default();
        add(&mut host, c("old"), W, 1).unwrap();
        let next = Window {
            start: 1_060,
            end: 1_120,
        };
        add(&mut host, c("new"), next, 1).unwrap();
        assert_eq!(sweep(&mut host, "i1", 0..SLOTS, next), 1);
        assert_eq!(read(&mut host, c("new"), next), 1);
        assert_eq!(sweep(&mut host, "i1", 0..SLOTS, next), 0);
    }

    #[test]
    fn a_write_for_an_earlier_window_counts_in_the_later_one() {
        let mut host = MemoryHost::default();
        let next = Window {
            start: 1_060,
            end: 1_120,
        };
        add(&mut host, c("a"), next, 5).unwrap();
        // A worker that read the clock just before the window turned.
        assert_eq!(add(&mut host, c("a"), W, 1), Ok(6));
        assert_eq!(read(&mut host, c("a"), next), 6);
    }

    #[test]
    fn subjects_beyond_a_full_slot_share_the_overflow_entry() {
        let mut host = MemoryHost::default();
        let (key, fp) = c("a").locate();
        // The slot of "a" already holds MAX_ENTRIES other subjects in this window.
        let full = Slot {
            window_start: W.start,
            entries: (0..MAX_ENTRIES as u64).map(|i| (fp ^ (i + 1), 1)).collect(),
        };
        host.shared_set(&key, &full.encode(), 0).unwrap();
        assert_eq!(
            admit(&mut host, c("a"), W, 1, 2),
            Ok(Admission::Admitted(1))
        );
        assert_eq!(
            admit(&mut host, c("a"), W, 1, 2),
            Ok(Admission::Admitted(2))
        );
        assert_eq!(admit(&mut host, c("a"), W, 1, 2), Ok(Admission::Refused(2)));
        let slot = Slot::parse(host.shared_get(&key).map(|(v, _)| v).as_deref(), W);
        // "a" counted in the overflow entry, shared with any later newcomer ...
        assert_eq!(slot.count(fp ^ 0xdead_0000), 2);
        // ... while the subjects with their own entry kept theirs.
        assert_eq!(slot.count(fp ^ 1), 1);
        assert!(host.shared_get(&key).unwrap().0.len() <= MAX_SLOT_BYTES);
    }

    #[test]
    fn one_sweep_step_per_second_for_all_workers_and_the_cursor_moves_on() {
        let mut host = MemoryHost::default();
        let next = Window {
            start: 1_060,
            end: 1_120,
        };
        // One stale subject in every slot of the first two batches.
        let mut seen = std::collections::HashSet::new();
        let mut i = 0;
        while seen.len() < 2 * SWEEP_BATCH as usize {
            let s = format!("x{i}");
            i += 1;
            let (key, _) = c(&s).locate();
            let slot = u32::from_str_radix(key.rsplit('.').next().unwrap(), 16).unwrap();
            if slot < 2 * SWEEP_BATCH && seen.insert(slot) {
                add(&mut host, c(&s), W, 1).unwrap();
            }
        }
        assert_eq!(
            sweep_step(&mut host, "i1", next, 1_061),
            SWEEP_BATCH as usize
        );
        // Another worker in the same second: the batch is taken.
        assert_eq!(sweep_step(&mut host, "i1", next, 1_061), 0);
        assert_eq!(
            sweep_step(&mut host, "i1", next, 1_062),
            SWEEP_BATCH as usize
        );
        assert_eq!(sweep_step(&mut host, "i1", next, 1_063), 0);
    }

    #[test]
    fn garbage_in_a_slot_counts_as_empty() {
        let mut host = MemoryHost::default();
        let (key, _) = c("a").locate();
        host.shared_set(&key, b"\x01garbage", 0).unwrap();
        assert_eq!(
            admit(&mut host, c("a"), W, 1, 1),
            Ok(Admission::Admitted(1))
        );
    }

    #[test]
    fn calendar_windows_are_utc_months_and_years() {
        // 2026-02-14T12:00:00Z
        let now = 1_771_070_400;
        let month = Period::Month.window(now);
        assert_eq!(month.start, 1_769_904_000); // 2026-02-01
        assert_eq!(month.end, 1_772_323_200); // 2026-03-01
        let year = Period::Year.window(now);
        assert_eq!(year.start, 1_767_225_600); // 2026-01-01
        assert_eq!(year.end, 1_798_761_600); // 2027-01-01
        let hour = Period::Hour.window(now + 59);
        assert_eq!((hour.start, hour.end), (now, now + 3600));
        assert_eq!(Period::Minute.window(now + 61).start, now + 60);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1_000, 0, 59, 365, 10_957, 20_498, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
