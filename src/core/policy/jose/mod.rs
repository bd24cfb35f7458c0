//! What the JWT and Keycloak OAuth policies share: reading the bearer token, parsing a compact
//! JWS, keys (inline or a fetched JWKS), the verified-token cache, and the checks. Each policy
//! maps the `Reason` a token is refused for to its own Apiman failure codes.

pub mod cache;
pub mod claims;
pub mod config;
pub mod der;
pub mod keys;
pub mod remote;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use self::cache::{TokenCache, Verified};
use self::keys::{verify_signature, Alg, KeySet, Selection, SignatureError, B64URL};
use self::remote::{Keys, Remote};
use crate::host::Host;
use crate::http::{query_param, query_without, HeaderMap, Request};
use crate::model::strip_prefix_ignore_case;
use crate::policy::{CallOut, Context};

/// Larger tokens are refused before anything else is done with them.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The verified-token cache's memory bound per policy instance and VM (estimated).
pub const CACHE_MAX_BYTES: usize = 4 << 20;

pub const ACCESS_TOKEN: &str = "access_token";

/// The bearer token: `Authorization: Bearer <token>` (scheme case-insensitive), else the
/// `access_token` query parameter, as Apiman reads it. Blank counts as absent.
pub fn bearer_token(request: &Request, query: Option<&str>) -> Option<String> {
    request
        .headers
        .get("authorization")
        .map(str::trim)
        .and_then(|h| strip_prefix_ignore_case(h, "bearer "))
        .map(|t| t.trim().to_string())
        .or_else(|| query.and_then(|q| query_param(q, ACCESS_TOKEN)))
        .filter(|t| !t.trim().is_empty())
}

/// Removes the token from what the backend gets: the `Authorization` header and the
/// `access_token` query parameter (Apiman's `stripTokens`).
pub fn strip_tokens(cx: &mut Context, headers: &mut HeaderMap) {
    headers.remove("authorization");
    if let Some(q) = cx.state.query.take() {
        cx.state.query = query_without(&q, ACCESS_TOKEN);
    }
}

/// Whether the request came over TLS, as Envoy says: `x-forwarded-proto` (which Envoy sets from
/// the downstream connection when it is the edge, `use_remote_address: true`), else `:scheme`.
pub fn transport_secure(headers: &HeaderMap) -> bool {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|p| p.split(',').next())
        .or_else(|| headers.get(":scheme"))
        .unwrap_or("");
    proto.trim().eq_ignore_ascii_case("https")
}

/// Seconds since the epoch, from the host's clock.
pub fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    TooLarge,
    Malformed(String),
    /// `alg: none`.
    Unsigned,
    /// An algorithm that is not accepted, or that no key can verify (HS256 against an RSA key).
    Algorithm(String),
    /// The token names a key the key set does not have (after a refetch, for fetched sets).
    UnknownKey(Option<String>),
    Signature,
    Expired {
        exp: u64,
        now: u64,
        skew: u64,
    },
    Premature {
        nbf: u64,
        now: u64,
        skew: u64,
    },
    Issuer {
        expected: String,
        found: Option<String>,
    },
    Audience {
        expected: Vec<String>,
        found: Option<String>,
    },
    Claim {
        name: String,
        expected: String,
        found: Option<String>,
    },
}

/// The result of verifying a token.
#[derive(Debug)]
pub enum Outcome {
    Accepted(Rc<Verified>),
    Rejected(Reason),
    /// Fetch the key set first; then verify again (with `allow_fetch` false).
    Fetch(CallOut),
    /// No key set to verify with, and none can be fetched now.
    Unavailable(String),
}

/// A compact JWS, read but not yet verified.
pub struct Token {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Value,
    pub payload_len: usize,
}

fn malformed(what: impl Into<String>) -> Reason {
    Reason::Malformed(what.into())
}

fn time_claim(claims: &Value, name: &str) -> Result<Option<u64>, Reason> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }) {
            Some(v) => Ok(Some(v)),
            None => Err(malformed(format!("the {name} claim is not a valid time"))),
        },
        Some(_) => Err(malformed(format!("the {name} claim is not a number"))),
    }
}

/// Reads a compact JWS: three base64url parts, a JSON header naming an accepted algorithm and
/// a JSON object of claims whose registered claims have the right types.
pub fn parse(token: &str, accepted: &[Alg]) -> Result<Token, Reason> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed(format!(
            "JWT strings must contain exactly 2 period characters. Found: {}",
            parts.len() - 1
        )));
    }
    let header_bytes = B64URL
        .decode(parts[0])
        .map_err(|_| malformed("the header is not base64url"))?;
    let header: Value = serde_json::from_slice(&header_bytes)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| malformed("the header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(malformed("the header names no algorithm")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(Reason::Unsigned);
    }
    let alg = match Alg::parse(alg) {
        Some(a) if accepted.contains(&a) => a,
        _ => return Err(Reason::Algorithm(printable(alg))),
    };
    if header.get("crit").is_some_and(|c| !c.is_null()) {
        return Err(malformed("the header has critical extensions"));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed("the kid header is not a string")),
    };
    let payload = B64URL
        .decode(parts[1])
        .map_err(|_| malformed("the payload is not base64url"))?;
    let claims: Value = serde_json::from_slice(&payload)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| malformed("the payload is not a JSON object"))?;
    for name in ["exp", "nbf", "iat"] {
        time_claim(&claims, name)?;
    }
    for name in ["iss", "sub", "jti"] {
        if claims
            .get(name)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            return Err(malformed(format!("the {name} claim is not a string")));
        }
    }
    if let Some(aud) = claims.get("aud") {
        let ok = match aud {
            Value::String(_) | Value::Null => true,
            Value::Array(items) => items.iter().all(Value::is_string),
            _ => false,
        };
        if !ok {
            return Err(malformed(
                "the aud claim is not a string or a list of strings",
            ));
        }
    }
    if B64URL.decode(parts[2]).is_err() {
        return Err(malformed("the signature is not base64url"));
    }
    Ok(Token {
        alg,
        kid,
        claims,
        payload_len: payload.len(),
    })
}

/// At most 64 printable ASCII characters of a value from a token, for messages.
pub fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

/// Where the keys come from.
pub enum KeySource {
    Inline(Rc<KeySet>),
    Remote(Box<Remote>),
}

/// Which issuer a token must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    Any,
    Exact(String),
    /// A Keycloak realm given by name: the issuer is the name or ends with `/realms/<name>`.
    RealmName(String),
}

impl Issuer {
    fn check(&self, iss: Option<&str>) -> Result<(), Reason> {
        let ok = match self {
            Issuer::Any => true,
            Issuer::Exact(e) => iss.is_some_and(|i| i.trim_end_matches('/') == e),
            Issuer::RealmName(n) => iss.is_some_and(|i| {
                i == n || i.trim_end_matches('/').ends_with(&format!("/realms/{n}"))
            }),
        };
        if ok {
            return Ok(());
        }
        Err(Reason::Issuer {
            expected: match self {
                Issuer::Any => String::new(),
                Issuer::Exact(e) => e.clone(),
                Issuer::RealmName(n) => n.clone(),
            },
            found: iss.map(printable),
        })
    }
}

/// Where roles come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolesFrom {
    /// A claim name or dotted path (`roles`, `realm_access.roles`, `scope`).
    Claim(String),
    /// Explicit path segments (`resource_access`, `<client id>`, `roles`).
    Path(Vec<String>),
}

/// What a policy takes from a verified token (computed once per token, then cached).
#[derive(Debug, Clone, Default)]
pub struct Derive {
    /// Claims tried in order for the principal.
    pub principal: Vec<&'static str>,
    pub roles: Option<RolesFrom>,
    /// Header and claim (`access_token` is handled by the policy: it is the raw token).
    pub forward: Vec<(String, String)>,
}

pub struct Verifier {
    pub algorithms: Vec<Alg>,
    pub source: KeySource,
    /// The configured key id: only that key verifies (Apiman's `kid`).
    pub kid: Option<String>,
    pub skew: u64,
    pub issuer: Issuer,
    pub audiences: Vec<String>,
    pub required: Vec<(String, String)>,
    pub derive: Derive,
    pub ttl: u64,
    cache: RefCell<TokenCache>,
}

impl Verifier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        algorithms: Vec<Alg>,
        source: KeySource,
        kid: Option<String>,
        skew: u64,
        issuer: Issuer,
        audiences: Vec<String>,
        required: Vec<(String, String)>,
        derive: Derive,
        cache_entries: usize,
        ttl: u64,
    ) -> Verifier {
        Verifier {
            algorithms,
            source,
            kid,
            skew,
            issuer,
            audiences,
            required,
            derive,
            ttl,
            cache: RefCell::new(TokenCache::new(cache_entries, CACHE_MAX_BYTES)),
        }
    }

    pub fn remote(&self) -> Option<&Remote> {
        match &self.source {
            KeySource::Remote(r) => Some(r),
            KeySource::Inline(_) => None,
        }
    }

    /// Cached tokens (for tests and diagnostics).
    pub fn cached(&self) -> usize {
        self.cache.try_borrow().map_or(0, |c| c.len())
    }

    /// A call-out's answer for the key set.
    pub fn key_set_answer(
        &self,
        host: &mut dyn Host,
        now: u64,
        answer: &crate::policy::CallResponse,
    ) {
        if let Some(r) = self.remote() {
            r.answer(host, now, answer);
        }
    }

    fn time_check(&self, v: &Verified, now: u64) -> Result<(), Reason> {
        if let Some(exp) = v.exp {
            if now > exp.saturating_add(self.skew) {
                return Err(Reason::Expired {
                    exp,
                    now,
                    skew: self.skew,
                });
            }
        }
        if let Some(nbf) = v.nbf {
            if now.saturating_add(self.skew) < nbf {
                return Err(Reason::Premature {
                    nbf,
                    now,
                    skew: self.skew,
                });
            }
        }
        Ok(())
    }

    fn static_checks(&self, claims: &Value) -> Result<(), Reason> {
        self.issuer
            .check(claims.get("iss").and_then(Value::as_str))?;
        if !self.audiences.is_empty() {
            let aud = claims.get("aud");
            let ok = aud.is_some_and(|a| self.audiences.iter().any(|x| claims::matches(a, x)));
            if !ok {
                return Err(Reason::Audience {
                    expected: self.audiences.clone(),
                    found: aud.and_then(claims::header_text).map(|s| printable(&s)),
                });
            }
        }
        for (name, expected) in &self.required {
            let found = claims::lookup(claims, name);
            if !found.is_some_and(|v| claims::matches(v, expected)) {
                return Err(Reason::Claim {
                    name: name.clone(),
                    expected: expected.clone(),
                    found: found.and_then(claims::header_text).map(|s| printable(&s)),
                });
            }
        }
        Ok(())
    }

    fn derive(&self, token: Token, kid: Option<String>, generation: u64) -> Verified {
        let claims = token.claims;
        let principal = self
            .derive
            .principal
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .map(str::to_string);
        let roles = self.derive.roles.as_ref().map(|from| match from {
            RolesFrom::Claim(name) => claims::roles(claims::lookup(&claims, name)),
            RolesFrom::Path(path) => claims::roles(claims::lookup_segments(&claims, path)),
        });
        let forward = self
            .derive
            .forward
            .iter()
            .map(|(header, field)| {
                (
                    header.clone(),
                    claims::lookup(&claims, field).and_then(claims::header_text),
                )
            })
            .collect();
        Verified {
            exp: claims
                .get("exp")
                .and_then(|_| time_claim(&claims, "exp").ok().flatten()),
            nbf: claims
                .get("nbf")
                .and_then(|_| time_claim(&claims, "nbf").ok().flatten()),
            claims: Rc::new(claims),
            kid,
            generation,
            principal,
            roles,
            forward,
        }
    }

    /// Verifies `token` at `now`. `allow_fetch`: a key set may be fetched first (false when
    /// verifying again after such a fetch).
    pub fn verify(&self, host: &mut dyn Host, now: u64, token: &str, allow_fetch: bool) -> Outcome {
        if token.len() > MAX_TOKEN_BYTES {
            return Outcome::Rejected(Reason::TooLarge);
        }
        let (mut set, mut generation) = match &self.source {
            KeySource::Inline(set) => (set.clone(), 0),
            KeySource::Remote(r) => match r.keys(host, now, allow_fetch) {
                Keys::Ready(l) => (l.set.clone(), l.generation),
                Keys::Fetch(call) => return Outcome::Fetch(call),
                Keys::Unavailable => return Outcome::Unavailable(r.target.cluster.clone()),
            },
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            if let Some(hit) = cache.get(&digest, now) {
                let key_kept = hit.generation == generation
                    || hit.kid.as_deref().is_some_and(|k| set.has_kid(k));
                if key_kept {
                    return match self.time_check(&hit, now) {
                        Ok(()) => Outcome::Accepted(hit),
                        Err(r) => Outcome::Rejected(r),
                    };
                }
                cache.remove(&digest);
            }
        }
        let parsed = match parse(token, &self.algorithms) {
            Ok(p) => p,
            Err(r) => return Outcome::Rejected(r),
        };
        let kid = self.kid.clone().or_else(|| parsed.kid.clone());
        let mut refreshed = false;
        let verified_by = loop {
            match set.select(kid.as_deref(), parsed.alg) {
                Selection::UnknownKid => {
                    if let (Some(r), true, false) = (self.remote(), allow_fetch, refreshed) {
                        refreshed = true;
                        match r.unknown_kid(host, now) {
                            Ok(_) => {
                                if let Keys::Ready(l) = r.keys(host, now, false) {
                                    set = l.set.clone();
                                    generation = l.generation;
                                }
                                continue;
                            }
                            Err(Some(call)) => return Outcome::Fetch(call),
                            Err(None) => {}
                        }
                    }
                    return Outcome::Rejected(Reason::UnknownKey(kid.as_deref().map(printable)));
                }
                Selection::NoKeyForAlg => {
                    return Outcome::Rejected(Reason::Algorithm(parsed.alg.name().to_string()))
                }
                Selection::Keys(candidates) => {
                    let mut matched = None;
                    for entry in candidates {
                        match verify_signature(&entry.key, parsed.alg, token) {
                            Ok(()) => {
                                matched = Some(entry.kid.clone());
                                break;
                            }
                            Err(SignatureError::Invalid) => {}
                            Err(SignatureError::Malformed(m)) => {
                                return Outcome::Rejected(Reason::Malformed(m))
                            }
                        }
                    }
                    match matched {
                        Some(k) => break k,
                        None => return Outcome::Rejected(Reason::Signature),
                    }
                }
            }
        };
        let payload_len = parsed.payload_len;
        let verified = self.derive(parsed, verified_by, generation);
        if let Err(r) = self.time_check(&verified, now) {
            return Outcome::Rejected(r);
        }
        if let Err(r) = self.static_checks(&verified.claims) {
            return Outcome::Rejected(r);
        }
        let until = verified
            .exp
            .map_or(u64::MAX, |e| e.saturating_add(self.skew).saturating_add(1))
            .min(now.saturating_add(self.ttl));
        let cost = payload_len * 3
            + 256
            + verified
                .forward
                .iter()
                .map(|(h, v)| h.len() + v.as_ref().map_or(0, String::len))
                .sum::<usize>();
        let verified = Rc::new(verified);
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            cache.insert(digest, until, cost, verified.clone());
        }
        Outcome::Accepted(verified)
    }
}

/// Civil UTC time as jjwt prints it in its messages (`yyyy-MM-ddTHH:mm:ssZ`).
pub fn iso_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (y, m, d) = crate::counters::civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
pub(crate) mod testing {
    //! Signing test tokens with the keys in tests/fixtures/keys.
    use jwt_simple::algorithms::*;
    use jwt_simple::claims::{Claims, JWTClaims};
    use jwt_simple::prelude::Duration;
    use serde_json::Value;

    pub const RSA_A_KEY: &str = include_str!("../../../../tests/fixtures/keys/rsa-a.key");
    pub const RSA_A_PUB: &str = include_str!("../../../../tests/fixtures/keys/rsa-a.pub.pem");
    pub const RSA_A_CERT: &str = include_str!("../../../../tests/fixtures/keys/rsa-a.cert.pem");
    pub const RSA_B_KEY: &str = include_str!("../../../../tests/fixtures/keys/rsa-b.key");
    pub const RSA_B_PUB: &str = include_str!("../../../../tests/fixtures/keys/rsa-b.pub.pem");
    pub const EC_KEY: &str = include_str!("../../../../tests/fixtures/keys/ec-p256.key");
    pub const EC_PUB: &str = include_str!("../../../../tests/fixtures/keys/ec-p256.pub.pem");
    pub const ED_KEY: &str = include_str!("../../../../tests/fixtures/keys/ed25519.key");
    pub const ED_PUB: &str = include_str!("../../../../tests/fixtures/keys/ed25519.pub.pem");

    /// 2026-01-01T00:00:00Z, the MemoryHost's clock.
    pub const NOW: u64 = 1_767_225_600;

    fn claims(extra: Value) -> JWTClaims<Value> {
        let mut c = Claims::with_custom_claims(extra, Duration::from_secs(0));
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        c
    }

    /// A token whose claims are exactly `payload` (exp/nbf/iat included as given).
    pub fn rs256(payload: Value, kid: Option<&str>) -> String {
        let mut key = RS256KeyPair::from_pem(RSA_A_KEY).unwrap();
        if let Some(k) = kid {
            key = key.with_key_id(k);
        }
        key.sign(claims(payload)).unwrap()
    }

    pub fn rs256_with(key_pem: &str, payload: Value, kid: Option<&str>) -> String {
        let mut key = RS256KeyPair::from_pem(key_pem).unwrap();
        if let Some(k) = kid {
            key = key.with_key_id(k);
        }
        key.sign(claims(payload)).unwrap()
    }

    pub fn hs256(secret: &[u8], payload: Value) -> String {
        HS256Key::from_bytes(secret)
            .authenticate(claims(payload))
            .unwrap()
    }

    pub fn es256(payload: Value) -> String {
        ES256KeyPair::from_pem(EC_KEY)
            .unwrap()
            .sign(claims(payload))
            .unwrap()
    }

    pub fn eddsa(payload: Value) -> String {
        Ed25519KeyPair::from_pem(ED_KEY)
            .unwrap()
            .sign(claims(payload))
            .unwrap()
    }

    /// A token with a hand-made header and payload and a given signature part.
    pub fn raw(header: &str, payload: &str, signature: &str) -> String {
        use base64::Engine as _;
        let b = super::keys::B64URL;
        format!("{}.{}.{signature}", b.encode(header), b.encode(payload))
    }
}
