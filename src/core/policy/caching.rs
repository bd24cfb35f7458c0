//! Caching Resources (Apiman `CachingResourcesPolicy`, and the older `CachingPolicy`): answers
//! repeated requests from a cache shared by Envoy's worker VMs, without calling the backend.
//!
//! Which requests: those whose method and path match an entry of
//! `cachingResourcesSettingsEntries` (`*` for any), while `ttl` > 0. Their backend response is
//! stored when its status matches one of those entries; a later identical request within `ttl`
//! seconds is answered from the cache with `Cache-Control: max-age=<ttl>` (as Apiman) and `Age`.
//! A hit is answered only once the request has passed the whole request chain (a later policy,
//! an authentication say, still decides), and every policy's response phases run on it as on
//! the backend's response: the cache stores the backend's response as it arrived.
//!
//! The key: the API, the API key, the method, the path below the API, the query (API key
//! removed), a digest of the `Authorization` header and the authenticated user, so one caller's
//! answer is never served to another; and the values of the request headers the response names
//! in `Vary`.
//!
//! Storage (Envoy's shared data, which never expires or deletes a key): a fixed pool of slots,
//! `tollgate.cache.<n>` for n below the largest `maxEntries` configured, each holding one entry
//! (`.h` beside it: the key digest, when it was stored and for how long, read first, so a miss
//! copies no body). An entry hashes to one slot; a newer entry replaces whatever is there.
//! Memory is bounded by `maxEntries` × (`maxEntrySize` + headers) whatever clients send.
//!
//! Differences from Apiman: the key includes the API for keyed requests (Apiman's key is the API
//! key alone, so two APIs of one client collide), the `Authorization` header and the user, and
//! `Vary`; a response with `Cache-Control: no-store`, `no-cache` or `private`, with
//! `Set-Cookie` or with `Vary: *` is not stored; `*` means GET and HEAD (Apiman adds POST, whose
//! answer depends on a body tollgate does not key on: an entry naming POST is ignored, with a
//! warning); the older `CachingPolicy` form (no entries) caches GET and HEAD, with the statuses
//! of `statusCodes` or else 200 only (Apiman: any method and any status, 5xx included).

use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::jsonp::{body_size, MAX_BODY};
use super::{
    Body, BuildContext, Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind,
    Verdict,
};
use crate::http::{HeaderMap, LocalReply, Request, Response};
use crate::json::{Fields, Problems};
use crate::pattern::Pattern;

pub const KIND: PolicyKind = PolicyKind {
    id: "caching-resources",
    name: "Caching Resources",
    apiman_names: &["CachingResourcesPolicy", "CachingPolicy", "caching"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Answers repeated requests from a cache shared by Envoy's workers (by method, path and status, for `ttl` seconds) without calling the backend.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "none",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "ttl",
            aliases: &[],
            ty: "integer",
            default: "0",
            apiman: true,
            meaning: "seconds an answer is served from the cache; 0 caches nothing",
        },
        FieldDoc {
            name: "cachingResourcesSettingsEntries",
            aliases: &[],
            ty: "[object]",
            default: "",
            apiman: true,
            meaning: "what is cached; without it (Apiman's older `CachingPolicy`), GET and HEAD answers with a status in `statusCodes`",
        },
        FieldDoc {
            name: "cachingResourcesSettingsEntries[].httpMethod",
            aliases: &[],
            ty: "string",
            default: "*",
            apiman: true,
            meaning: "`*` (GET and HEAD) or a method; POST is not cached (its answer depends on its body)",
        },
        FieldDoc {
            name: "cachingResourcesSettingsEntries[].pathPattern",
            aliases: &[],
            ty: "string",
            default: "*",
            apiman: true,
            meaning: "`*` or a regex that must match the whole path below the API (without the query)",
        },
        FieldDoc {
            name: "cachingResourcesSettingsEntries[].statusCode",
            aliases: &[],
            ty: "string",
            default: "*",
            apiman: true,
            meaning: "`*` or the status a response must have to be stored",
        },
        FieldDoc {
            name: "statusCodes",
            aliases: &[],
            ty: "[string]",
            default: "[\"200\"]",
            apiman: true,
            meaning: "the older form's statuses to store",
        },
        FieldDoc {
            name: "includeQueryInKey",
            aliases: &[],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "the older form's switch: false keys on the path alone",
        },
        FieldDoc {
            name: "maxEntries",
            aliases: &[],
            ty: "integer",
            default: "256",
            apiman: false,
            meaning: "cache slots (1 to 65536); a new entry replaces the one in its slot",
        },
        FieldDoc {
            name: "maxEntrySize",
            aliases: &[],
            ty: "integer",
            default: "262144",
            apiman: false,
            meaning: "bytes: a larger response body is not stored (nor held for it); memory stays below `maxEntries` × this",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"ttl": 60, "cachingResourcesSettingsEntries": [
                   {"httpMethod": "GET", "pathPattern": "/products/.*", "statusCode": "200"},
                   {"httpMethod": "*", "pathPattern": "*", "statusCode": "404"}],
                 "statusCodes": ["200"], "includeQueryInKey": true, "maxEntries": 1024, "maxEntrySize": 131072}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| build(cx, f, problems).map(|p| Box::new(p) as _),
};

/// Default slots per policy.
pub const DEFAULT_ENTRIES: usize = 256;
/// Default largest body stored.
pub const DEFAULT_ENTRY_SIZE: usize = 256 * 1024;
const MAX_ENTRIES: i64 = 65_536;

const VERSION: u8 = 1;
const MARK_LEN: usize = 1 + 32 + 8 + 4;

#[derive(Debug, Clone)]
enum Methods {
    /// `*`: GET and HEAD.
    Safe,
    One(String),
}

#[derive(Debug, Clone)]
struct Entry {
    methods: Methods,
    /// `None`: any path.
    path: Option<Pattern>,
    /// `None`: any status.
    status: Option<u16>,
}

pub struct Caching {
    instance: String,
    ttl: u32,
    entries: Vec<Entry>,
    include_query: bool,
    slots: u32,
    max_entry: usize,
}

fn build(cx: &mut BuildContext, f: &mut Fields, problems: &mut Problems) -> Option<Caching> {
    let ttl = match f.integer(&["ttl"], problems).unwrap_or(0) {
        t if (0..=i64::from(u32::MAX)).contains(&t) => t as u32,
        t => {
            problems.error(
                &f.field_path("ttl"),
                format!("{t} is not a number of seconds"),
            );
            0
        }
    };
    let mut entries = Vec::new();
    let legacy = !f.has("cachingResourcesSettingsEntries");
    for (path, v) in f.array(&["cachingResourcesSettingsEntries"], problems) {
        let Some(mut e) = Fields::of(v, &path, problems) else {
            continue;
        };
        let method = e
            .string(&["httpMethod"], problems)
            .map(|m| m.trim().to_ascii_uppercase())
            .unwrap_or_else(|| "*".into());
        let pattern = e
            .string(&["pathPattern"], problems)
            .unwrap_or_else(|| "*".into());
        let status = e
            .string(&["statusCode"], problems)
            .unwrap_or_else(|| "*".into());
        let path_pattern = match pattern.trim() {
            "*" => None,
            p => match Pattern::full(p) {
                Ok(p) => Some(p),
                Err(err) => {
                    problems.error(&e.field_path("pathPattern"), err);
                    None
                }
            },
        };
        let status = match status.trim() {
            "*" => None,
            s => match s.parse::<u16>() {
                Ok(n) if (100..=599).contains(&n) => Some(n),
                _ => {
                    problems.error(
                        &e.field_path("statusCode"),
                        format!("\"{s}\" is not * or an HTTP status"),
                    );
                    None
                }
            },
        };
        e.finish(problems);
        let methods = match method.as_str() {
            "*" => Methods::Safe,
            "POST" => {
                problems.warning(
                    &path,
                    "POST answers are not cached (their answer depends on the request body, which is not part of the key): entry ignored",
                );
                continue;
            }
            m => Methods::One(m.to_string()),
        };
        entries.push(Entry {
            methods,
            path: path_pattern,
            status,
        });
    }
    // Apiman's older CachingPolicy: GET and HEAD, the statuses listed (200 when none).
    let mut statuses: Vec<u16> = Vec::new();
    for (path, s) in f.strings(&["statusCodes"], problems) {
        match s.trim().parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => statuses.push(n),
            _ => problems.error(&path, format!("\"{s}\" is not an HTTP status")),
        }
    }
    let include_query = f.bool(&["includeQueryInKey"], problems).unwrap_or(true);
    if legacy {
        if statuses.is_empty() {
            statuses.push(200);
        }
        entries.extend(statuses.iter().map(|s| Entry {
            methods: Methods::Safe,
            path: None,
            status: Some(*s),
        }));
    }
    let slots = match f.integer(&["maxEntries"], problems) {
        None => DEFAULT_ENTRIES as u32,
        Some(n) if (1..=MAX_ENTRIES).contains(&n) => n as u32,
        Some(n) => {
            problems.error(
                &f.field_path("maxEntries"),
                format!("{n} is not from 1 to {MAX_ENTRIES}"),
            );
            DEFAULT_ENTRIES as u32
        }
    };
    let max_entry =
        body_size(f, "maxEntrySize", DEFAULT_ENTRY_SIZE, problems).min(MAX_BODY as usize);
    if ttl == 0 {
        problems.warning(f.path(), "ttl is 0: nothing is cached");
    }
    Some(Caching {
        instance: cx.instance_id.to_string(),
        ttl,
        entries,
        include_query,
        slots,
        max_entry,
    })
}

/// What the policy knows about its request, between phases.
enum State {
    /// Answered from the cache: nothing to store.
    Hit,
    /// Not in the cache: the response is stored if it qualifies.
    Miss {
        digest: [u8; 32],
        slot: u32,
        statuses: Vec<Option<u16>>,
        request: Vec<(String, String)>,
    },
}

fn entry_key(slot: u32) -> String {
    format!("tollgate.cache.{slot}")
}

fn mark_key(slot: u32) -> String {
    format!("tollgate.cache.{slot}.h")
}

/// Response headers not kept with an entry: the connection's, the moment's, and what a hit
/// sets itself.
fn stored_header(name: &str) -> bool {
    !(name.starts_with(':')
        || name.starts_with("x-envoy-")
        || matches!(
            name,
            "content-length"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "date"
                | "age"
                | "server"
                | "cache-control"
                | "expires"
                | "set-cookie"
        ))
}

/// Every value of header `name`.
fn values<'a>(headers: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether a response with these headers may be stored at all.
fn storable(headers: &[(String, String)]) -> bool {
    let forbids = values(headers, "cache-control")
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.trim()
                .split('=')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .any(|d| d == "no-store" || d == "private" || d == "no-cache");
    let varies_on_anything = values(headers, "vary")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*");
    !forbids && !varies_on_anything && values(headers, "set-cookie").next().is_none()
}

/// The request headers a response names in `Vary`, with the request's values.
fn variant(headers: &[(String, String)], request: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for token in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("vary"))
        .flat_map(|(_, v)| v.split(','))
    {
        let name = token.trim().to_ascii_lowercase();
        if name.is_empty() || out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let value: Vec<&str> = request
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
            .collect();
        out.push((name, value.join(",")));
    }
    out
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    digest: [u8; 32],
    status: u16,
    headers: Vec<(String, String)>,
    /// Request headers the response varies on, with the values it was stored for.
    vary: Vec<(String, String)>,
    body: Vec<u8>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

/// Reads what `Stored::encode` wrote; anything malformed reads as nothing.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn pairs(&mut self) -> Option<Vec<(String, String)>> {
        let n = self.u32()? as usize;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push((self.text()?, self.text()?));
        }
        Some(out)
    }
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 512);
        out.push(VERSION);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.status.to_le_bytes());
        put_pairs(&mut out, &self.headers);
        put_pairs(&mut out, &self.vary);
        put_bytes(&mut out, &self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Stored> {
        let mut r = Reader(bytes);
        if r.take(1)? != [VERSION] {
            return None;
        }
        let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let headers = r.pairs()?;
        let vary = r.pairs()?;
        let body = r.bytes()?.to_vec();
        Some(Stored {
            digest,
            status,
            headers,
            vary,
            body,
        })
    }
}

/// The small value beside an entry: whose it is and until when it is fresh.
fn mark(digest: &[u8; 32], stored_at: u64, ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(MARK_LEN);
    out.push(VERSION);
    out.extend_from_slice(digest);
    out.extend_from_slice(&stored_at.to_le_bytes());
    out.extend_from_slice(&ttl.to_le_bytes());
    out
}

/// `(stored_at, ttl)` if the mark is this key's.
fn read_mark(bytes: &[u8], digest: &[u8; 32]) -> Option<(u64, u32)> {
    let mut r = Reader(bytes);
    if r.take(1)? != [VERSION] || r.take(32)? != digest.as_slice() {
        return None;
    }
    let stored_at = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let ttl = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    Some((stored_at, ttl))
}

fn seconds(cx: &mut Context) -> u64 {
    cx.now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Caching {
    /// The statuses of the entries matching this request (`None`: any), or nothing to cache.
    fn candidates(&self, method: &str, path: &str) -> Vec<Option<u16>> {
        let method = method.to_ascii_uppercase();
        self.entries
            .iter()
            .filter(|e| match &e.methods {
                Methods::Safe => method == "GET" || method == "HEAD",
                Methods::One(m) => *m == method,
            })
            .filter(|e| e.path.as_ref().is_none_or(|p| p.is_match(path)))
            .map(|e| e.status)
            .collect()
    }

    fn digest(&self, cx: &Context, request: &Request) -> [u8; 32] {
        let api = cx.api;
        let mut h = Sha256::new();
        for part in [
            self.instance.as_str(),
            &api.organization_id,
            &api.api_id,
            &api.version,
            cx.api_key().unwrap_or(""),
            &request.method.to_ascii_uppercase(),
            cx.destination(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        if self.include_query {
            h.update(cx.state.query.as_deref().unwrap_or("").as_bytes());
        }
        h.update([0]);
        for value in request.headers.get_all("authorization") {
            h.update(value.as_bytes());
            h.update([1]);
        }
        h.update([0]);
        h.update(cx.identity().principal.as_deref().unwrap_or("").as_bytes());
        h.finalize().into()
    }

    fn slot(&self, digest: &[u8; 32]) -> u32 {
        u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]) % self.slots
    }

    /// The fresh entry for `digest`, if the cache has one.
    fn lookup(&self, cx: &mut Context, digest: &[u8; 32], slot: u32) -> Option<(Stored, u64)> {
        let (mark, _) = cx.host.shared_get(&mark_key(slot))?;
        let (stored_at, ttl) = read_mark(&mark, digest)?;
        let now = seconds(cx);
        if now >= stored_at.saturating_add(u64::from(ttl)) {
            return None;
        }
        let (bytes, _) = cx.host.shared_get(&entry_key(slot))?;
        let stored = Stored::decode(&bytes).filter(|s| s.digest == *digest)?;
        Some((stored, now.saturating_sub(stored_at)))
    }
}

impl Policy for Caching {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[
            Phase::RequestHeaders,
            Phase::ResponseHeaders,
            Phase::ResponseBody,
        ])
    }

    fn body_limit(&self) -> Option<usize> {
        Some(self.max_entry)
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let statuses = if self.ttl == 0 {
            Vec::new()
        } else {
            self.candidates(&request.method, cx.destination())
        };
        if statuses.is_empty() {
            cx.skip_body(Phase::ResponseBody);
            return Verdict::Continue;
        }
        let digest = self.digest(cx, request);
        let slot = self.slot(&digest);
        let request_headers: Vec<(String, String)> = request
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some((stored, age)) = self.lookup(cx, &digest, slot) {
            let same_variant = stored.vary.iter().all(|(name, value)| {
                let now: Vec<&str> = request.headers.get_all(name).collect();
                now.join(",") == *value
            });
            if same_variant {
                let mut headers = stored.headers;
                headers.push(("cache-control".into(), format!("max-age={}", self.ttl)));
                headers.push(("age".into(), age.to_string()));
                cx.set_slot(State::Hit);
                cx.skip_body(Phase::ResponseBody);
                cx.serve(LocalReply {
                    status: stored.status,
                    headers,
                    body: stored.body,
                });
                return Verdict::Continue;
            }
        }
        cx.keep_backend_response();
        cx.set_slot(State::Miss {
            digest,
            slot,
            statuses,
            request: request_headers,
        });
        Verdict::Continue
    }

    fn on_response(&self, cx: &mut Context, _response: &mut Response) -> Verdict {
        let stores = match (cx.backend_response(), cx.state.slots.get(cx.position)) {
            (Some(backend), Some(Some(slot))) => match slot.downcast_ref::<State>() {
                Some(State::Miss { statuses, .. }) => {
                    let length = backend
                        .headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
                    statuses
                        .iter()
                        .any(|s| s.is_none_or(|s| s == backend.status))
                        && storable(&backend.headers)
                        && length.is_none_or(|l| l <= self.max_entry)
                }
                _ => false,
            },
            _ => false,
        };
        if !stores {
            cx.skip_body(Phase::ResponseBody);
        }
        Verdict::Continue
    }

    fn on_response_body(
        &self,
        cx: &mut Context,
        _body: &mut Body,
        _headers: &mut HeaderMap,
    ) -> Verdict {
        let Some(backend) = cx.backend_response() else {
            return Verdict::Continue;
        };
        let Some(body) = backend.body.as_ref().filter(|b| b.len() <= self.max_entry) else {
            return Verdict::Continue;
        };
        let (status, headers) = (backend.status, backend.headers.clone());
        let body = body.clone();
        let Some(State::Miss {
            digest,
            slot,
            request,
            ..
        }) = cx.slot::<State>()
        else {
            return Verdict::Continue;
        };
        let (digest, slot) = (*digest, *slot);
        let vary = variant(&headers, request);
        let stored = Stored {
            digest,
            status,
            headers: headers
                .into_iter()
                .filter(|(k, _)| stored_header(&k.to_ascii_lowercase()))
                .collect(),
            vary,
            body,
        };
        let now = seconds(cx);
        // The entry first, then the mark naming it: a reader that sees the new mark with the old
        // entry finds the digests differ and treats it as a miss.
        let written = cx
            .host
            .shared_set(&entry_key(slot), &stored.encode(), 0)
            .and_then(|()| {
                cx.host
                    .shared_set(&mark_key(slot), &mark(&digest, now, self.ttl), 0)
            });
        if let Err(e) = written {
            log::warn!("tollgate: caching-resources could not store an entry ({e:?})");
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use crate::policy::BackendResponse;
    use serde_json::json;
    use std::time::Duration;

    fn policy(config: serde_json::Value) -> Box<dyn Policy> {
        compile(&KIND, config)
    }

    fn get_all() -> Box<dyn Policy> {
        policy(json!({"ttl": 60, "cachingResourcesSettingsEntries": [
            {"httpMethod": "*", "pathPattern": "*", "statusCode": "200"}]}))
    }

    /// One exchange through the policy on `f`'s host: the request, then (on a miss) the
    /// backend's `status` answer with `headers` and `body`. Returns the served reply, if any.
    fn exchange(
        p: &dyn Policy,
        f: &mut Fixture,
        req: &mut Request,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<LocalReply> {
        let fresh = RequestState {
            resource: f.state.resource.clone(),
            query: f.state.query.clone(),
            api_key: f.state.api_key.clone(),
            ..RequestState::default()
        };
        f.state = fresh;
        assert!(is_continue(&f.on_request(p, req)));
        if let Some(served) = f.state.served.take() {
            return Some(served);
        }
        if f.state.keeps_backend_response() {
            f.state.backend = Some(BackendResponse {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: None,
            });
        }
        let mut resp = response(status, headers);
        f.on_response(p, &mut resp);
        if !f.state.skips_body(0, Phase::ResponseBody) {
            if let Some(b) = f.state.backend.as_mut() {
                b.body = Some(body.as_bytes().to_vec());
            }
            let mut b = Body::new(body.as_bytes().to_vec());
            let mut cx = f.cx();
            p.on_response_body(&mut cx, &mut b, &mut resp.headers);
        }
        None
    }

    fn ok(p: &dyn Policy, f: &mut Fixture, req: &mut Request) -> Option<LocalReply> {
        exchange(
            p,
            f,
            req,
            200,
            &[("content-type", "application/json"), ("x-b", "1")],
            "{\"n\":1}",
        )
    }

    use crate::host::Host as _;
    use crate::policy::RequestState;

    #[test]
    fn a_second_identical_get_is_answered_from_the_cache_with_max_age_and_age() {
        let p = get_all();
        let mut f = Fixture::at("/items");
        assert!(ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_none());
        f.host.now += Duration::from_secs(7);
        let hit = ok(p.as_ref(), &mut f, &mut request("GET", &[])).expect("a hit");
        assert_eq!(hit.status, 200);
        assert_eq!(hit.body, b"{\"n\":1}");
        assert_eq!(hit.header("content-type"), Some("application/json"));
        assert_eq!(hit.header("cache-control"), Some("max-age=60"));
        assert_eq!(hit.header("age"), Some("7"));
    }

    #[test]
    fn an_entry_expires_after_its_ttl() {
        let p = get_all();
        let mut f = Fixture::at("/items");
        ok(p.as_ref(), &mut f, &mut request("GET", &[]));
        f.host.now += Duration::from_secs(60);
        assert!(ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_none());
    }

    #[test]
    fn another_query_or_api_key_is_another_entry() {
        let p = get_all();
        let mut f = Fixture::at("/items");
        f.state.query = Some("page=1".into());
        ok(p.as_ref(), &mut f, &mut request("GET", &[]));
        f.state.query = Some("page=2".into());
        assert!(ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_none());
        f.state.api_key = Some("other-key".into());
        assert!(ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_none());
    }

    #[test]
    fn a_request_with_other_credentials_is_not_served_another_callers_entry() {
        let p = get_all();
        let mut f = Fixture::at("/me");
        ok(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[("authorization", "Bearer alice")]),
        );
        assert!(ok(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[("authorization", "Bearer bob")])
        )
        .is_none());
        assert!(ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_none());
        assert!(ok(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[("authorization", "Bearer alice")])
        )
        .is_some());
    }

    #[test]
    fn responses_the_backend_marks_private_or_no_store_are_not_stored() {
        let p = get_all();
        for cc in ["no-store", "private, max-age=60", "no-cache"] {
            let mut f = Fixture::at("/x");
            exchange(
                p.as_ref(),
                &mut f,
                &mut request("GET", &[]),
                200,
                &[("cache-control", cc)],
                "x",
            );
            assert!(f.state.skips_body(0, Phase::ResponseBody), "{cc}");
            assert!(
                ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_none(),
                "{cc}"
            );
        }
    }

    #[test]
    fn a_response_setting_a_cookie_or_varying_on_everything_is_not_stored() {
        let p = get_all();
        for h in [("set-cookie", "s=1"), ("vary", "*")] {
            let mut f = Fixture::at("/x");
            exchange(p.as_ref(), &mut f, &mut request("GET", &[]), 200, &[h], "x");
            assert!(f.state.skips_body(0, Phase::ResponseBody), "{h:?}");
        }
    }

    #[test]
    fn a_response_varying_on_a_header_is_served_only_to_the_same_value() {
        let p = get_all();
        let mut f = Fixture::at("/x");
        exchange(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[("accept-encoding", "gzip")]),
            200,
            &[("vary", "Accept-Encoding")],
            "x",
        );
        assert!(exchange(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[("accept-encoding", "br")]),
            200,
            &[("vary", "Accept-Encoding")],
            "y"
        )
        .is_none());
        assert!(exchange(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[("accept-encoding", "br")]),
            200,
            &[],
            "z"
        )
        .is_some());
    }

    #[test]
    fn only_matching_statuses_methods_and_paths_are_cached() {
        let p = policy(json!({"ttl": 60, "cachingResourcesSettingsEntries": [
            {"httpMethod": "GET", "pathPattern": "/products/.*", "statusCode": "200"}]}));
        let mut f = Fixture::at("/products/1");
        exchange(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[]),
            500,
            &[],
            "boom",
        );
        assert!(f.state.skips_body(0, Phase::ResponseBody));
        let mut f = Fixture::at("/orders/1");
        ok(p.as_ref(), &mut f, &mut request("GET", &[]));
        assert!(f.state.skips_body(0, Phase::ResponseBody));
        assert!(!f.state.keeps_backend_response());
        let mut f = Fixture::at("/products/1");
        ok(p.as_ref(), &mut f, &mut request("DELETE", &[]));
        assert!(!f.state.keeps_backend_response());
    }

    #[test]
    fn a_wildcard_method_caches_get_and_head_but_not_post() {
        let p = get_all();
        for (method, cached) in [
            ("GET", true),
            ("HEAD", true),
            ("POST", false),
            ("PUT", false),
        ] {
            let mut f = Fixture::at("/x");
            ok(p.as_ref(), &mut f, &mut request(method, &[]));
            assert_eq!(f.state.keeps_backend_response(), cached, "{method}");
        }
    }

    #[test]
    fn a_body_larger_than_max_entry_size_is_not_stored() {
        let p = policy(json!({"ttl": 60, "maxEntrySize": 4,
            "cachingResourcesSettingsEntries": [{"httpMethod": "GET", "pathPattern": "*", "statusCode": "*"}]}));
        let mut f = Fixture::at("/x");
        exchange(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[]),
            200,
            &[("content-length", "5")],
            "12345",
        );
        assert!(f.state.skips_body(0, Phase::ResponseBody));
        exchange(
            p.as_ref(),
            &mut f,
            &mut request("GET", &[]),
            200,
            &[],
            "12345",
        );
        assert!(ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_none());
    }

    #[test]
    fn the_older_caching_policy_form_caches_gets_with_status_200() {
        let p = policy(json!({"ttl": 30}));
        let mut f = Fixture::at("/x");
        ok(p.as_ref(), &mut f, &mut request("GET", &[]));
        assert!(ok(p.as_ref(), &mut f, &mut request("GET", &[])).is_some());
        let mut f = Fixture::at("/y");
        exchange(p.as_ref(), &mut f, &mut request("GET", &[]), 404, &[], "no");
        assert!(f.state.skips_body(0, Phase::ResponseBody));
    }

    #[test]
    fn memory_stays_within_max_entries_slots() {
        let p = policy(json!({"ttl": 60, "maxEntries": 4,
            "cachingResourcesSettingsEntries": [{"httpMethod": "GET", "pathPattern": "*", "statusCode": "*"}]}));
        let mut f = Fixture::at("/");
        for i in 0..100 {
            f.state.resource = format!("/item/{i}");
            ok(p.as_ref(), &mut f, &mut request("GET", &[]));
        }
        for slot in 4..100 {
            assert!(f.host.shared_get(&entry_key(slot)).is_none());
        }
        assert!((0..4).all(|s| f.host.shared_get(&entry_key(s)).is_some()));
    }

    #[test]
    fn a_post_entry_is_ignored_with_a_warning() {
        let (_, problems) = crate::policy::testing::build(
            &KIND,
            json!({"ttl": 5, "cachingResourcesSettingsEntries": [{"httpMethod": "POST", "pathPattern": "*", "statusCode": "*"}]}),
            &|_| None,
        );
        assert!(problems.errors.is_empty());
        assert_eq!(problems.warnings.len(), 1, "{:?}", problems.warnings);
    }

    #[test]
    fn bad_entries_are_refused_with_their_paths() {
        let errs = errors(
            &KIND,
            json!({"ttl": 5, "cachingResourcesSettingsEntries": [
            {"httpMethod": "GET", "pathPattern": "/a(", "statusCode": "abc"}]}),
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("config.cachingResourcesSettingsEntries[0].pathPattern: "));
        assert_eq!(
            errs[1],
            "config.cachingResourcesSettingsEntries[0].statusCode: \"abc\" is not * or an HTTP status"
        );
    }

    #[test]
    fn entries_survive_encoding() {
        let s = Stored {
            digest: [7; 32],
            status: 203,
            headers: vec![("a".into(), "b".into())],
            vary: vec![("accept".into(), "x".into())],
            body: b"hello".to_vec(),
        };
        assert_eq!(Stored::decode(&s.encode()), Some(s.clone()));
        assert_eq!(Stored::decode(&s.encode()[..10]), None);
    }
}
