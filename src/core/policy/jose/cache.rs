//! The verified-token cache: per policy instance, per worker VM. A token seen before costs a
//! SHA-256 and a map lookup instead of a signature check (milliseconds for RSA in wasm).
//!
//! - Keyed by the SHA-256 of the token: the token itself is never stored.
//! - An entry is valid until `min(exp + skew, inserted + ttl)`; `exp`/`nbf` are still checked on
//!   every use (a premature token is cached and refused until its `nbf`).
//! - Bounded by entries and by an estimate of the memory its claims take; the oldest entries
//!   are evicted first.
//! - Only tokens whose signature and static checks (issuer, audience, required claims) passed
//!   are cached, together with what the policy derives from them (identity, headers).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use serde_json::Value;

/// What a verified token gave, reused on every cache hit.
#[derive(Debug)]
pub struct Verified {
    pub claims: Rc<Value>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    /// The key that verified it: for a fetched key set, a cached token stays valid only while
    /// its key is in the set.
    pub kid: Option<String>,
    pub generation: u64,
    /// The identity's principal.
    pub principal: Option<String>,
    /// The identity's roles (`None`: the policy extracts none).
    pub roles: Option<Vec<String>>,
    /// Headers for the backend: name and claim text (`None`: the claim is absent, so the
    /// header is removed and not forwarded from the client).
    pub forward: Vec<(String, Option<String>)>,
}

/// The digest is uniformly distributed already: its first 8 bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
}

type DigestMap<V> = HashMap<[u8; 32], V, BuildHasherDefault<DigestHasher>>;

struct Entry {
    until: u64,
    seq: u64,
    cost: usize,
    value: Rc<Verified>,
}

pub struct TokenCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    seq: u64,
    map: DigestMap<Entry>,
    /// Insertion order; an element whose `seq` no longer matches its entry is stale.
    order: VecDeque<([u8; 32], u64)>,
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            max_entries,
            max_bytes,
            bytes: 0,
            seq: 0,
            map: DigestMap::default(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry for `digest` if it is still valid at `now` (an expired one is dropped).
    pub fn get(&mut self, digest: &[u8; 32], now: u64) -> Option<Rc<Verified>> {
        let entry = self.map.get(digest)?;
        if now < entry.until {
            return Some(entry.value.clone());
        }
        self.remove(digest);
        None
    }

    pub fn remove(&mut self, digest: &[u8; 32]) {
        if let Some(e) = self.map.remove(digest) {
            self.bytes = self.bytes.saturating_sub(e.cost);
        }
    }

    pub fn insert(&mut self, digest: [u8; 32], until: u64, cost: usize, value: Rc<Verified>) {
        if self.max_entries == 0 || cost > self.max_bytes {
            return;
        }
        self.remove(&digest);
        self.seq += 1;
        let seq = self.seq;
        self.map.insert(
            digest,
            Entry {
                until,
                seq,
                cost,
                value,
            },
        );
        self.bytes += cost;
        self.order.push_back((digest, seq));
        while self.map.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((oldest, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&oldest).is_some_and(|e| e.seq == seq) {
                self.remove(&oldest);
            }
        }
        if self.order.len() > 2 * self.max_entries + 16 {
            let map = &self.map;
            self.order
                .retain(|(d, s)| map.get(d).is_some_and(|e| e.seq == *s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified() -> Rc<Verified> {
        Rc::new(Verified {
            claims: Rc::new(Value::Null),
            exp: None,
            nbf: None,
            kid: None,
            generation: 0,
            principal: None,
            roles: None,
            forward: Vec::new(),
        })
    }

    fn d(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn an_entry_is_valid_until_its_deadline() {
        let mut c = TokenCache::new(10, 1 << 20);
        c.insert(d(1), 100, 10, verified());
        assert!(c.get(&d(1), 99).is_some());
        assert!(c.get(&d(1), 100).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn the_oldest_entries_are_evicted_beyond_the_entry_limit() {
        let mut c = TokenCache::new(3, 1 << 20);
        for n in 0..5 {
            c.insert(d(n), 1000, 10, verified());
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&d(0), 1).is_none() && c.get(&d(1), 1).is_none());
        assert!(c.get(&d(4), 1).is_some());
    }

    #[test]
    fn the_memory_estimate_bounds_the_cache_too() {
        let mut c = TokenCache::new(100, 25);
        for n in 0..5 {
            c.insert(d(n), 1000, 10, verified());
        }
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn reinserting_a_token_does_not_let_its_old_place_evict_it() {
        let mut c = TokenCache::new(2, 1 << 20);
        c.insert(d(1), 1000, 1, verified());
        c.insert(d(2), 1000, 1, verified());
        c.insert(d(1), 1000, 1, verified());
        c.insert(d(3), 1000, 1, verified());
        assert!(
            c.get(&d(1), 1).is_some(),
            "the re-inserted token is the newest"
        );
        assert!(c.get(&d(2), 1).is_none());
    }

    #[test]
    fn a_zero_sized_cache_stores_nothing() {
        let mut c = TokenCache::new(0, 1 << 20);
        c.insert(d(1), 1000, 1, verified());
        assert!(c.is_empty());
    }
}
