//! What policies may ask of the host beyond the request itself: the clock, the downstream address,
//! other properties of the stream and state shared across worker VMs. The proxy-wasm adapter implements this over host calls
//! (lazily, so a request that needs none of it makes no host call); `MemoryHost` implements it in
//! memory for unit tests.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// Another worker wrote the key since it was read: re-read and retry.
    CasMismatch,
    /// The host refused the write for another reason.
    Failed,
}

pub trait Host {
    /// The host's clock (Envoy's, or the replay's virtual clock).
    fn now(&mut self) -> SystemTime;
    /// The downstream peer as the host reports it, e.g. `127.0.0.1:43436` or `[::1]:5000`.
    fn downstream_address(&mut self) -> Option<String>;
    /// A shared value and its CAS token. Shared data is visible to every worker VM.
    fn shared_get(&mut self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes a shared value if its CAS token still matches (`cas == 0` writes unconditionally),
    /// with Envoy's semantics.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError>;
    /// A property of the stream by its path (`["connection", "tls_version"]`), as the host
    /// encodes it (strings raw). Each lookup is a host call (~15 µs in Envoy): policies ask only
    /// when their configuration needs the answer, never on every request.
    fn property(&mut self, _path: &[&str]) -> Option<Vec<u8>> {
        None
    }
    /// Why the response has the status it has (Envoy's `response.code_details`): `via_upstream`
    /// for the backend's own answer, else what Envoy answered for (`response_timeout`,
    /// `cluster_not_found`, `upstream_reset_before_response_started{...}`, ...). `None` where
    /// the host cannot tell.
    fn response_code_details(&mut self) -> Option<String> {
        None
    }
}

/// How often a read-modify-write of shared data is retried before giving up (Istio uses 20).
pub const CAS_RETRIES: usize = 20;

/// The CAS token used to create a key. Envoy treats `cas == 0` as an unconditional write, so
/// two workers that both found a key absent and both wrote it with 0 would both succeed and one
/// update would be lost (worse: a slow writer can reset a counter others have advanced since).
/// A write to a *new* key ignores the token, while a write to a key that now exists with any
/// other token fails with `CasMismatch`: so a create uses a token no live key holds (the host's
/// counter reaches it once per 2^32 writes, and only a racing creator could then collide).
pub const CREATE_CAS: u32 = u32::MAX;

/// Read-modify-write of one shared value with a bounded CAS retry loop. `update` gets the current
/// value (if any) and returns the new value and a result to hand back.
pub fn update_shared<T>(
    host: &mut dyn Host,
    key: &str,
    mut update: impl FnMut(Option<&[u8]>) -> (Vec<u8>, T),
) -> Result<T, SharedError> {
    for _ in 0..CAS_RETRIES {
        let current = host.shared_get(key);
        let (value, cas) = match &current {
            Some((v, cas)) => (Some(v.as_slice()), *cas),
            None => (None, CREATE_CAS),
        };
        let (next, result) = update(value);
        match host.shared_set(key, &next, cas) {
            Ok(()) => return Ok(result),
            Err(SharedError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(SharedError::CasMismatch)
}

/// An in-memory host with a settable clock, for unit tests and native tools.
#[derive(Debug, Clone)]
pub struct MemoryHost {
    pub now: SystemTime,
    pub downstream: Option<String>,
    /// Stream properties by dotted path (`connection.tls_version`).
    pub properties: HashMap<String, Vec<u8>>,
    /// What `response_code_details` answers.
    pub code_details: Option<String>,
    shared: HashMap<String, (Vec<u8>, u32)>,
    /// Host calls made, by kind, so tests can assert that work is not done needlessly.
    pub calls: HostCalls,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCalls {
    pub now: usize,
    pub downstream_address: usize,
    pub shared_get: usize,
    pub shared_set: usize,
    pub property: usize,
    pub code_details: usize,
}

impl Default for MemoryHost {
    fn default() -> Self {
        MemoryHost {
            // 2026-01-01T00:00:00Z: a fixed, recognisable instant.
            now: UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            downstream: Some("127.0.0.1:40000".to_string()),
            properties: HashMap::new(),
            code_details: None,
            shared: HashMap::new(),
            calls: HostCalls::default(),
        }
    }
}

impl MemoryHost {
    pub fn with_downstream(address: &str) -> MemoryHost {
        MemoryHost {
            downstream: Some(address.to_string()),
            ..MemoryHost::default()
        }
    }
}

impl Host for MemoryHost {
    fn now(&mut self) -> SystemTime {
        self.calls.now += 1;
        self.now
    }

    fn downstream_address(&mut self) -> Option<String> {
        self.calls.downstream_address += 1;
        self.downstream.clone()
    }

    fn shared_get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.calls.shared_get += 1;
        self.shared.get(key).cloned()
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
        self.calls.shared_set += 1;
        // Envoy: a new key ignores the CAS; an existing key needs cas == 0 or the current token.
        match self.shared.get_mut(key) {
            Some((v, token)) => {
                if cas != 0 && cas != *token {
                    return Err(SharedError::CasMismatch);
                }
                *v = value.to_vec();
                *token = token.wrapping_add(1).max(1);
            }
            None => {
                self.shared.insert(key.to_string(), (value.to_vec(), 1));
            }
        }
        Ok(())
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        self.calls.property += 1;
        self.properties.get(&path.join(".")).cloned()
    }

    fn response_code_details(&mut self) -> Option<String> {
        self.calls.code_details += 1;
        self.code_details.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_cas_token_is_refused() {
        let mut host = MemoryHost::default();
        host.shared_set("k", b"1", 0).unwrap();
        let (_, cas) = host.shared_get("k").unwrap();
        host.shared_set("k", b"2", cas).unwrap();
        assert_eq!(
            host.shared_set("k", b"3", cas),
            Err(SharedError::CasMismatch)
        );
    }

    #[test]
    fn creating_a_key_that_another_worker_created_meanwhile_is_refused() {
        let mut host = MemoryHost::default();
        // Both workers found the key absent; the other one wrote first.
        host.shared_set("k", b"theirs", CREATE_CAS).unwrap();
        assert_eq!(
            host.shared_set("k", b"mine", CREATE_CAS),
            Err(SharedError::CasMismatch)
        );
        assert_eq!(host.shared_get("k").unwrap().0, b"theirs");
    }

    #[test]
    fn update_shared_applies_the_update_to_the_current_value() {
        let mut host = MemoryHost::default();
        for _ in 0..3 {
            update_shared(&mut host, "n", |v| {
                let n = v.map_or(0, |b| b[0]) + 1;
                (vec![n], ())
            })
            .unwrap();
        }
        assert_eq!(host.shared_get("n").unwrap().0, vec![3]);
    }
}
