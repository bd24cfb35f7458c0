//! Policies: one module per policy, all behind the `Policy` trait.
//!
//! A policy is compiled once per VM from its configuration (regexes, address tables) and then
//! called per request with a `Context` and a view of the request or response. It never talks to
//! the host directly: time, the downstream address and shared state come through the context, so
//! every policy unit-tests natively.

pub mod api_key;
pub mod cors;
pub mod header_allow_deny;
pub mod http_security;
pub mod ignored_resources;
pub mod ip_allowlist;
pub mod ip_blocklist;
mod ip_list;
pub mod simple_header;

use std::any::Any;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::client_ip;
use crate::config::json::{Fields, Problems};
use crate::host::Host;
use crate::http::{LocalReply, Request, Response};
use crate::registry::{Api, Client, Settings};

/// Apiman's failure types; each maps to an HTTP status unless the failure names its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureType {
    Authentication,
    Authorization,
    NotFound,
    Other,
}

impl FailureType {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::Authentication => "Authentication",
            FailureType::Authorization => "Authorization",
            FailureType::NotFound => "NotFound",
            FailureType::Other => "Other",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            FailureType::Authentication => 401,
            FailureType::Authorization => 403,
            FailureType::NotFound => 404,
            FailureType::Other => 500,
        }
    }
}

/// A policy's refusal of a request, answered with Apiman's policy-failure contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFailure {
    pub failure_type: FailureType,
    pub code: u32,
    pub message: String,
    /// The policy's own status; used when ≥ 300, else the type decides.
    pub response_code: u16,
    /// Extra headers for the failure response (e.g. `WWW-Authenticate`).
    pub headers: Vec<(String, String)>,
}

impl PolicyFailure {
    pub fn new(failure_type: FailureType, code: u32, message: impl Into<String>) -> PolicyFailure {
        PolicyFailure {
            failure_type,
            code,
            message: message.into(),
            response_code: 0,
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: u16) -> PolicyFailure {
        self.response_code = status;
        self
    }

    /// The HTTP status of the failure response.
    pub fn status(&self) -> u16 {
        if self.response_code >= 300 {
            self.response_code
        } else {
            self.failure_type.status()
        }
    }
}

/// An HTTP call a policy needs answered before it can decide (e.g. a JWKS fetch). The chain
/// pauses, the adapter dispatches it, and the same policy's `on_call_response` continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOut {
    /// The Envoy cluster to send the call to.
    pub cluster: String,
    /// Must include `:method`, `:path` and `:authority`.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// The answer to a `CallOut`; `status` is 0 when the call failed or timed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a policy decides in one phase.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    /// Stop the chain and answer with a policy failure.
    Fail(PolicyFailure),
    /// Stop the chain and answer with this response (e.g. a CORS preflight, a cache hit).
    Reply(LocalReply),
    /// Wait for this call's response, then `on_call_response` of the same policy continues.
    CallOut(CallOut),
}

/// The phases a policy takes part in, so the chain and the adapter skip work nobody needs
/// (reading response headers, buffering bodies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    pub const NONE: Phases = Phases(0);
    pub const REQUEST: Phases = Phases(1);
    pub const REQUEST_BODY: Phases = Phases(2);
    pub const RESPONSE: Phases = Phases(4);
    pub const RESPONSE_BODY: Phases = Phases(8);

    pub const fn union(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

/// A request or response body, buffered until the end of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// Set when a policy changed `bytes`; the adapter then writes them back.
    pub modified: bool,
}

pub trait Policy {
    /// The tollgate policy id (e.g. `ip-allowlist`), used in messages.
    fn id(&self) -> &'static str;

    /// The phases this policy needs.
    fn phases(&self) -> Phases;

    fn on_request(&self, _cx: &mut Context, _request: &mut Request) -> Verdict {
        Verdict::Continue
    }

    /// Called once with the whole request body (only if `phases` has `REQUEST_BODY`).
    fn on_request_body(&self, _cx: &mut Context, _body: &mut Body) -> Verdict {
        Verdict::Continue
    }

    fn on_response(&self, _cx: &mut Context, _response: &mut Response) -> Verdict {
        Verdict::Continue
    }

    /// Called once with the whole response body (only if `phases` has `RESPONSE_BODY`).
    fn on_response_body(&self, _cx: &mut Context, _body: &mut Body) -> Verdict {
        Verdict::Continue
    }

    /// The answer to this policy's `CallOut`; decides as the phase callback would have.
    fn on_call_response(&self, _cx: &mut Context, _response: &CallResponse) -> Verdict {
        Verdict::Continue
    }
}

/// Per-request state kept across phases: host facts fetched at most once, headers to add to
/// whatever response goes back, and one private slot per policy in the chain.
#[derive(Default)]
pub struct RequestState {
    now: Option<SystemTime>,
    downstream: Option<Option<IpAddr>>,
    /// Headers added to the response that goes back, be it the backend's or a local reply
    /// (CORS and rate-limit headers appear on failures too, as in Apiman).
    pub response_headers: Vec<(String, String)>,
    /// The API key the request carried, if any.
    pub api_key: Option<String>,
    /// The request path below the API (`/{org}/{api}/{version}` removed), without the query;
    /// empty when the request named no resource.
    pub resource: String,
    /// The raw query string as it goes to the backend (API key removed unless kept).
    pub query: Option<String>,
    /// One private slot per chain position (see `Context::slot`).
    pub slots: Vec<Option<Box<dyn Any>>>,
}

/// What a policy sees besides the request/response view.
pub struct Context<'a> {
    pub api: &'a Api,
    pub client: Option<&'a Client>,
    pub settings: &'a Settings,
    pub state: &'a mut RequestState,
    pub host: &'a mut dyn Host,
    /// The position of the running policy in the chain: its slot.
    pub position: usize,
}

impl RequestState {
    /// Records the downstream address when the request itself carries it (a trusted header
    /// set by Envoy), so no host call is needed.
    pub fn set_downstream(&mut self, ip: Option<IpAddr>) {
        self.downstream = Some(ip);
    }
}

impl Context<'_> {
    /// The host's time, fetched once per request.
    pub fn now(&mut self) -> SystemTime {
        match self.state.now {
            Some(t) => t,
            None => {
                let t = self.host.now();
                self.state.now = Some(t);
                t
            }
        }
    }

    /// The downstream peer's IP (port removed, IPv4-mapped IPv6 as IPv4), fetched once.
    pub fn downstream_ip(&mut self) -> Option<IpAddr> {
        if let Some(ip) = self.state.downstream {
            return ip;
        }
        let ip = self
            .host
            .downstream_address()
            .and_then(|a| client_ip::parse_socket_address(&a));
        self.state.downstream = Some(ip);
        ip
    }

    pub fn api_key(&self) -> Option<&str> {
        self.state.api_key.as_deref()
    }

    /// The request path below the API, without the query (`/` when empty), as Apiman matches
    /// every `pathPattern` against it.
    pub fn destination(&self) -> &str {
        if self.state.resource.is_empty() {
            "/"
        } else {
            &self.state.resource
        }
    }

    /// Adds a header to whatever response goes back, backend's or gateway's.
    pub fn add_response_header(&mut self, name: &str, value: &str) {
        self.state
            .response_headers
            .push((name.to_string(), value.to_string()));
    }

    /// This policy's private per-request value, if it stored one.
    pub fn slot<T: 'static>(&mut self) -> Option<&mut T> {
        self.state
            .slots
            .get_mut(self.position)
            .and_then(|s| s.as_mut())
            .and_then(|b| b.downcast_mut::<T>())
    }

    /// Stores this policy's private per-request value.
    pub fn set_slot<T: 'static>(&mut self, value: T) {
        if self.state.slots.len() <= self.position {
            self.state.slots.resize_with(self.position + 1, || None);
        }
        self.state.slots[self.position] = Some(Box::new(value));
    }
}

/// Everything tollgate knows about one policy kind: its id, the names Apiman uses for it, and
/// how to compile its configuration.
pub struct PolicyKind {
    /// tollgate's id, used in the friendly form `{"policy": "<id>", "config": {...}}`.
    pub id: &'static str,
    /// Apiman's names: the class of `class:` policy impls, the plugin artifact and class of
    /// `plugin:` impls, and the policy definition ids. Matched case-insensitively.
    pub apiman_names: &'static [&'static str],
    /// Compiles the configuration; problems are reported with paths below `config`'s path.
    pub build: fn(&mut Fields, &mut Problems) -> Option<Box<dyn Policy>>,
}

/// Every policy tollgate implements.
pub const KINDS: &[PolicyKind] = &[
    ip_allowlist::KIND,
    ip_blocklist::KIND,
    ignored_resources::KIND,
    header_allow_deny::KIND,
    simple_header::KIND,
    http_security::KIND,
    api_key::KIND,
    cors::KIND,
];

/// Apiman policies tollgate knows but does not implement yet. A registry using one is refused
/// rather than loaded without it: silently skipping an authentication or limiting policy would
/// open the API.
pub const NOT_YET_IMPLEMENTED: &[(&str, &[&str])] = &[
    (
        "basic-auth",
        &[
            "BASICAuthenticationPolicy",
            "basic-auth",
            "BasicAuthenticationPolicy",
        ],
    ),
    ("authorization", &["AuthorizationPolicy", "authorization"]),
    (
        "soap-authorization",
        &["soap-authorization-policy", "SoapAuthorizationPolicy"],
    ),
    ("jwt", &["jwt-policy", "JWTPolicy"]),
    (
        "keycloak-oauth",
        &["keycloak-oauth-policy", "KeycloakOauthPolicy"],
    ),
    (
        "time-restricted-access",
        &["TimeRestrictedAccessPolicy", "time-restricted-access"],
    ),
    ("rate-limiting", &["RateLimitingPolicy", "rate-limiting"]),
    ("quota", &["QuotaPolicy", "quota"]),
    ("transfer-quota", &["TransferQuotaPolicy", "transfer-quota"]),
    (
        "caching-resources",
        &["CachingResourcesPolicy", "CachingPolicy", "caching"],
    ),
    ("timeout", &["timeout-policy", "TimeoutPolicy"]),
    ("jsonp", &["jsonp-policy", "JsonpPolicy"]),
    ("url-rewriting", &["URLRewritingPolicy", "url-rewriting"]),
];

/// Finds a policy kind by tollgate id or any Apiman name.
pub fn kind_by_name(name: &str) -> Option<&'static PolicyKind> {
    KINDS.iter().find(|k| {
        k.id.eq_ignore_ascii_case(name)
            || k.apiman_names.iter().any(|n| n.eq_ignore_ascii_case(name))
    })
}

/// The tollgate id of a known but not yet implemented Apiman policy.
pub fn not_yet_implemented(name: &str) -> Option<&'static str> {
    NOT_YET_IMPLEMENTED
        .iter()
        .find(|(id, names)| {
            id.eq_ignore_ascii_case(name) || names.iter().any(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|(id, _)| *id)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the policies' unit tests.
    use super::*;
    use crate::host::MemoryHost;
    use crate::http::HeaderMap;
    use crate::registry::{Api, Settings};
    use serde_json::Value;

    /// Compiles a policy of `kind` from a JSON config, panicking on problems.
    pub fn compile(kind: &PolicyKind, config: Value) -> Box<dyn Policy> {
        let mut problems = Problems::default();
        let mut fields = Fields::of(&config, "config", &mut problems).unwrap();
        let policy = (kind.build)(&mut fields, &mut problems);
        assert!(problems.errors.is_empty(), "{:?}", problems.errors);
        policy.unwrap()
    }

    /// The errors compiling `config` reports.
    pub fn errors(kind: &PolicyKind, config: Value) -> Vec<String> {
        let mut problems = Problems::default();
        if let Some(mut fields) = Fields::of(&config, "config", &mut problems) {
            let _ = (kind.build)(&mut fields, &mut problems);
        }
        problems.errors
    }

    pub fn request(method: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.to_string(),
            headers: HeaderMap::from_pairs(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    pub fn response(status: u16, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: HeaderMap::from_pairs(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    /// A request context for one policy at position 0.
    pub struct Fixture {
        pub api: Api,
        pub settings: Settings,
        pub state: RequestState,
        pub host: MemoryHost,
    }

    impl Fixture {
        pub fn new() -> Fixture {
            Fixture::at("/")
        }

        /// A fixture whose request destination is `destination`.
        pub fn at(destination: &str) -> Fixture {
            let state = RequestState {
                resource: destination.to_string(),
                ..RequestState::default()
            };
            Fixture {
                api: Api::for_tests(),
                settings: Settings::default(),
                state,
                host: MemoryHost::default(),
            }
        }

        pub fn from(address: &str) -> Fixture {
            let mut f = Fixture::new();
            f.host = MemoryHost::with_downstream(address);
            f
        }

        pub fn cx(&mut self) -> Context<'_> {
            Context {
                api: &self.api,
                client: None,
                settings: &self.settings,
                state: &mut self.state,
                host: &mut self.host,
                position: 0,
            }
        }

        pub fn on_request(&mut self, policy: &dyn Policy, request: &mut Request) -> Verdict {
            let mut cx = self.cx();
            policy.on_request(&mut cx, request)
        }

        pub fn on_response(&mut self, policy: &dyn Policy, response: &mut Response) -> Verdict {
            let mut cx = self.cx();
            policy.on_response(&mut cx, response)
        }
    }

    /// The failure a verdict carries, panicking otherwise.
    pub fn failure(v: Verdict) -> PolicyFailure {
        match v {
            Verdict::Fail(f) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    pub fn is_continue(v: &Verdict) -> bool {
        matches!(v, Verdict::Continue)
    }
}
