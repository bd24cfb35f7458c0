//! Shared data and shared queues: the state every worker VM of one host sees, with the
//! semantics of proxy-wasm-cpp-host's `SharedData` (which Envoy uses).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::status;

/// A `Mutex` whose poisoning (a panic while held) does not take the harness down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Data {
    values: HashMap<String, (Vec<u8>, u32)>,
    /// One counter for every key, as in cpp-host (`nextCas`): a token is never 0.
    cas: u32,
}

#[derive(Debug, Default)]
struct Queues {
    by_name: HashMap<String, u32>,
    items: HashMap<u32, VecDeque<Vec<u8>>>,
}

/// Key-value store shared by every VM of one host (Envoy scopes it per `vm_id`).
#[derive(Debug, Default)]
pub struct SharedStore {
    data: Mutex<Data>,
    queues: Mutex<Queues>,
}

impl SharedStore {
    pub fn new() -> SharedStore {
        SharedStore::default()
    }

    /// The value and its CAS token.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.data).values.get(key).cloned()
    }

    /// Envoy's CAS semantics: `cas == 0` writes unconditionally; a new key ignores `cas`
    /// (verified on Envoy 1.40); an existing key with a different non-zero token is refused
    /// with `CasMismatch`. Every write takes a fresh token.
    pub fn set(&self, key: &str, value: &[u8], cas: u32) -> u32 {
        let mut data = lock(&self.data);
        let next = data.cas.wrapping_add(1).max(1);
        match data.values.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return status::CAS_MISMATCH;
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                data.values.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        data.cas = next;
        status::OK
    }

    /// Every key currently stored, sorted (for reports and tests).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.data).values.keys().cloned().collect();
        keys.sort();
        keys
    }

    pub fn register_queue(&self, name: &str) -> u32 {
        let mut q = lock(&self.queues);
        if let Some(id) = q.by_name.get(name) {
            return *id;
        }
        let id = q.by_name.len() as u32 + 1;
        q.by_name.insert(name.to_string(), id);
        q.items.insert(id, VecDeque::new());
        id
    }

    pub fn resolve_queue(&self, name: &str) -> Option<u32> {
        lock(&self.queues).by_name.get(name).copied()
    }

    pub fn enqueue(&self, id: u32, value: &[u8]) -> u32 {
        match lock(&self.queues).items.get_mut(&id) {
            Some(q) => {
                q.push_back(value.to_vec());
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }

    pub fn dequeue(&self, id: u32) -> Result<Vec<u8>, u32> {
        match lock(&self.queues).items.get_mut(&id) {
            Some(q) => q.pop_front().ok_or(status::EMPTY),
            None => Err(status::NOT_FOUND),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_ignores_the_cas_token() {
        let s = SharedStore::new();
        assert_eq!(s.set("k", b"a", 12345), status::OK);
        assert_eq!(s.get("k"), Some((b"a".to_vec(), 1)));
    }

    #[test]
    fn a_stale_token_is_refused_and_zero_writes_unconditionally() {
        let s = SharedStore::new();
        s.set("k", b"a", 0);
        let (_, cas) = s.get("k").unwrap();
        assert_eq!(s.set("k", b"b", cas), status::OK);
        assert_eq!(s.set("k", b"c", cas), status::CAS_MISMATCH);
        assert_eq!(s.set("k", b"d", 0), status::OK);
        assert_eq!(s.get("k").unwrap().0, b"d");
    }

    #[test]
    fn every_write_takes_a_new_token() {
        let s = SharedStore::new();
        s.set("a", b"1", 0);
        s.set("b", b"1", 0);
        s.set("a", b"2", 0);
        assert_eq!(s.get("a").unwrap().1, 3);
        assert_eq!(s.get("b").unwrap().1, 2);
    }

    #[test]
    fn queues_hand_out_items_in_order_then_empty() {
        let s = SharedStore::new();
        let id = s.register_queue("q");
        assert_eq!(s.resolve_queue("q"), Some(id));
        s.enqueue(id, b"1");
        s.enqueue(id, b"2");
        assert_eq!(s.dequeue(id), Ok(b"1".to_vec()));
        assert_eq!(s.dequeue(id), Ok(b"2".to_vec()));
        assert_eq!(s.dequeue(id), Err(status::EMPTY));
    }
}
