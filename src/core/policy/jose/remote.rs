//! A key set fetched from a JWKS URL through a call-out, shared by every worker VM.
//!
//! Shared data (bounded: two keys per JWKS URL in the configuration):
//! - `tollgate.jwks.<id>`: version, fetch time, content hash (the generation), and the JWKS as
//!   fetched (at most `MAX_JWKS_BYTES`);
//! - `tollgate.jwks.<id>.fetch`: the fetch marker: a fetch in flight since, the last attempt,
//!   no new attempt before (after a failure), and the fetch time and generation of the newest
//!   set.
//!
//! Each VM keeps its own parsed copy and parses a key set once per generation. Once a second
//! it reads the small marker and takes up a newer set from shared data (so a rotation one VM
//! fetched reaches every VM within a second); otherwise a request makes no host call for keys.
//! When the set is due for refresh, the first request (of any VM) that takes the marker with a
//! CAS write fetches it; the others go on with the set
//! they have. A VM without any usable set fetches anyway (there is nothing to go on with).
//! An unknown `kid` refetches once per `min_refetch` seconds at most. When a refresh fails,
//! the old set is used until `fetched_at + refresh + max_stale`, retried every
//! `RETRY_SECONDS`; past that the policy answers 503 (it cannot verify anything).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::keys::{parse_jwks, KeySet};
use crate::host::{update_shared, Host, SharedError, CREATE_CAS};
use crate::policy::{CallOut, CallResponse, CallTarget};

/// The largest key set accepted (as Higress does).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// After a failed fetch, no VM tries again for this long.
pub const RETRY_SECONDS: u64 = 5;

const VERSION: u8 = 1;

/// A parsed key set and when it was fetched.
pub struct Local {
    pub fetched_at: u64,
    pub generation: u64,
    pub set: Rc<KeySet>,
}

/// What the keys are for this request.
pub enum Keys {
    Ready(Rc<Local>),
    /// Fetch the set first.
    Fetch(CallOut),
    /// No usable set, and no fetch may be made now.
    Unavailable,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marker {
    in_flight_since: u64,
    last_attempt: u64,
    retry_after: u64,
    /// The newest set in shared data: VMs poll this small value to notice a new set.
    fetched_at: u64,
    generation: u64,
}

impl Marker {
    fn parse(bytes: &[u8]) -> Marker {
        let at = |i: usize| {
            bytes
                .get(1 + i * 8..9 + i * 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        if bytes.first() != Some(&VERSION) {
            return Marker::default();
        }
        Marker {
            in_flight_since: at(0),
            last_attempt: at(1),
            retry_after: at(2),
            fetched_at: at(3),
            generation: at(4),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        for v in [
            self.in_flight_since,
            self.last_attempt,
            self.retry_after,
            self.fetched_at,
            self.generation,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
}

pub struct Remote {
    pub target: CallTarget,
    pub timeout: Duration,
    pub refresh: u64,
    pub min_refetch: u64,
    pub max_stale: u64,
    /// Names the key set in logs.
    pub label: &'static str,
    shared_key: String,
    marker_key: String,
    local: RefCell<Option<Rc<Local>>>,
    next_look: Cell<u64>,
}

impl Remote {
    pub fn new(
        target: CallTarget,
        timeout: Duration,
        refresh: u64,
        min_refetch: u64,
        max_stale: u64,
        label: &'static str,
    ) -> Remote {
        let digest = Sha256::digest(format!("{}\n{}", target.cluster, target.endpoint.url));
        let id = crate::registry::hex(&digest[..8]);
        Remote {
            target,
            timeout,
            refresh,
            min_refetch,
            max_stale,
            label,
            shared_key: format!("tollgate.jwks.{id}"),
            marker_key: format!("tollgate.jwks.{id}.fetch"),
            local: RefCell::new(None),
            next_look: Cell::new(0),
        }
    }

    fn local(&self) -> Option<Rc<Local>> {
        self.local.try_borrow().ok().and_then(|l| l.clone())
    }

    fn set_local(&self, local: Rc<Local>) {
        if let Ok(mut l) = self.local.try_borrow_mut() {
            *l = Some(local);
        }
    }

    fn fresh(&self, l: &Local, now: u64) -> bool {
        now < l.fetched_at.saturating_add(self.refresh)
    }

    fn usable(&self, l: &Local, now: u64) -> bool {
        now < l
            .fetched_at
            .saturating_add(self.refresh)
            .saturating_add(self.max_stale)
    }

    /// The call that fetches the set.
    pub fn call(&self) -> CallOut {
        let e = &self.target.endpoint;
        CallOut {
            cluster: self.target.cluster.clone(),
            headers: vec![
                (":method".to_string(), "GET".to_string()),
                (
                    ":path".to_string(),
                    if e.path.is_empty() {
                        "/".to_string()
                    } else {
                        e.path.clone()
                    },
                ),
                (":authority".to_string(), e.authority.clone()),
                ("accept".to_string(), "application/json".to_string()),
            ],
            body: None,
            grpc: None,
            timeout: self.timeout,
        }
    }

    /// Takes up the set in shared data if it is newer than this VM's; true when it did.
    pub fn adopt_shared(&self, host: &mut dyn Host) -> bool {
        let Some((value, _)) = host.shared_get(&self.shared_key) else {
            return false;
        };
        let (Some(fetched_at), Some(generation)) = (u64_at(&value, 1), u64_at(&value, 9)) else {
            return false;
        };
        if value.first() != Some(&VERSION) {
            return false;
        }
        let local = self.local();
        if local.as_ref().is_some_and(|l| l.fetched_at >= fetched_at) {
            return false;
        }
        let set = match &local {
            Some(l) if l.generation == generation => l.set.clone(),
            _ => match self.parse(value.get(17..).unwrap_or_default()) {
                Ok(set) => Rc::new(set),
                Err(e) => {
                    log::warn!("{}: the shared key set is unusable: {e}", self.label);
                    return false;
                }
            },
        };
        self.set_local(Rc::new(Local {
            fetched_at,
            generation,
            set,
        }));
        true
    }

    fn parse(&self, body: &[u8]) -> Result<KeySet, String> {
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let (set, skipped) = parse_jwks(&json, false)?;
        for s in skipped {
            log::warn!(
                "{}: key set {}: {s} (skipped)",
                self.label,
                self.target.endpoint.url
            );
        }
        Ok(set)
    }

    /// The keys to verify with now, or a fetch to make first. Once a second a VM looks at the
    /// fetch marker (a few bytes) to take up a set another VM fetched.
    pub fn keys(&self, host: &mut dyn Host, now: u64, allow_fetch: bool) -> Keys {
        let mut local = self.local();
        if now >= self.next_look.get() {
            self.next_look.set(now + 1);
            let marker = self.marker(host).0;
            if local
                .as_ref()
                .is_none_or(|l| marker.fetched_at > l.fetched_at)
            {
                self.adopt_shared(host);
                local = self.local();
            }
        }
        if let Some(l) = local.as_ref().filter(|l| self.fresh(l, now)) {
            return Keys::Ready(l.clone());
        }
        let usable = local.filter(|l| self.usable(l, now));
        if allow_fetch && self.claim(host, now, usable.is_some(), false) {
            return Keys::Fetch(self.call());
        }
        match usable {
            Some(l) => Keys::Ready(l),
            None => Keys::Unavailable,
        }
    }

    fn marker(&self, host: &mut dyn Host) -> (Marker, u32) {
        match host.shared_get(&self.marker_key) {
            Some((v, cas)) => (Marker::parse(&v), cas),
            None => (Marker::default(), CREATE_CAS),
        }
    }

    /// A token names a key this VM's set lacks: take up a newer shared set, else refetch
    /// (at most once per `min_refetch`). `Ok(true)`: a newer set was taken up.
    pub fn unknown_kid(&self, host: &mut dyn Host, now: u64) -> Result<bool, Option<CallOut>> {
        if self.adopt_shared(host) {
            return Ok(true);
        }
        if self.claim(host, now, true, true) {
            return Err(Some(self.call()));
        }
        Err(None)
    }

    /// Takes the fetch marker. Without keys, a VM fetches even while another fetch is in
    /// flight (it has nothing else to go on with); a failure's back-off holds for everyone.
    fn claim(&self, host: &mut dyn Host, now: u64, have_keys: bool, for_kid: bool) -> bool {
        let (marker, cas) = self.marker(host);
        if now < marker.retry_after {
            return false;
        }
        if for_kid && now < marker.last_attempt.saturating_add(self.min_refetch) {
            return false;
        }
        let timeout = self.timeout.as_secs() + 2;
        if marker.in_flight_since != 0 && now < marker.in_flight_since + timeout {
            return !have_keys && !for_kid;
        }
        let next = Marker {
            in_flight_since: now,
            last_attempt: now,
            retry_after: 0,
            ..marker
        };
        match host.shared_set(&self.marker_key, &next.encode(), cas) {
            Ok(()) => true,
            Err(_) => !have_keys && !for_kid,
        }
    }

    /// The fetch's answer: a usable set is stored for every VM; a failure is logged and backs
    /// off. Returns whether a new set is in use.
    pub fn answer(&self, host: &mut dyn Host, now: u64, response: &CallResponse) -> bool {
        let result = if response.status != 200 {
            Err(if response.status == 0 {
                "no answer (unreachable, timeout or no such cluster)".to_string()
            } else {
                format!("status {}", response.status)
            })
        } else if response.body.len() > MAX_JWKS_BYTES {
            Err(format!(
                "{} bytes, more than the {MAX_JWKS_BYTES} accepted",
                response.body.len()
            ))
        } else {
            self.parse(&response.body)
        };
        let failed = result.is_err();
        let generation = fnv(&response.body);
        let _ = update_shared(host, &self.marker_key, |v| {
            let mut m = v.map(Marker::parse).unwrap_or_default();
            m.in_flight_since = 0;
            m.retry_after = if failed { now + RETRY_SECONDS } else { 0 };
            if !failed && now >= m.fetched_at {
                m.fetched_at = now;
                m.generation = generation;
            }
            (m.encode(), ())
        });
        match result {
            Err(e) => {
                log::warn!(
                    "{}: fetching the key set {} through cluster {} failed: {e}",
                    self.label,
                    self.target.endpoint.url,
                    self.target.cluster
                );
                false
            }
            Ok(set) => {
                let mut value = vec![VERSION];
                value.extend_from_slice(&now.to_le_bytes());
                value.extend_from_slice(&generation.to_le_bytes());
                value.extend_from_slice(&response.body);
                let stored = update_shared(host, &self.shared_key, |old| {
                    let newer = old.and_then(|o| u64_at(o, 1)).is_some_and(|t| t > now);
                    match (newer, old) {
                        (true, Some(o)) => (o.to_vec(), ()),
                        _ => (value.clone(), ()),
                    }
                });
                if let Err(SharedError::Failed | SharedError::CasMismatch) = stored {
                    log::warn!(
                        "{}: the key set could not be shared with other workers",
                        self.label
                    );
                }
                self.set_local(Rc::new(Local {
                    fetched_at: now,
                    generation,
                    set: Rc::new(set),
                }));
                true
            }
        }
    }
}
