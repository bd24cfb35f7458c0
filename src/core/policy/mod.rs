//! Policies: one module per policy, all behind the `Policy` trait.
//!
//! A policy is compiled once per VM from its configuration (regexes, address tables) by its
//! kind's `build`, and then called per request with a `Context` and a view of what the phase is
//! about. It never talks to the host directly: time, the downstream address, shared state and
//! call-outs go through the context and verdicts, so every policy unit-tests natively.
//!
//! Each policy module holds its `KIND`: its id, the names Apiman knows it by, its documentation
//! (summary and fields, from which the README's reference is generated) and its `build`.
//!
//! The reference (summary, failures, fields, example) is left out of the wasm build: only the
//! native test that writes the README reads it, and it is ~30 KB of the module. Imports and
//! constants that serve only the reference are therefore unused there; the native build checks
//! them.
#![cfg_attr(target_arch = "wasm32", allow(unused_imports, dead_code))]

pub mod api_key;
pub mod authorization;
pub mod basic_auth;
pub mod caching;
pub mod cors;
#[cfg(not(target_arch = "wasm32"))]
pub mod docs;
pub mod ext_authz;
pub mod header_allow_deny;
pub mod http_security;
pub mod ignored_resources;
pub mod ip_allowlist;
pub mod ip_blocklist;
pub mod ip_list;
// Without the `jwt` feature (tollgate-lite.wasm) nothing reaches the JWT-signature policies'
// code, which the linker then leaves out.
#[cfg_attr(not(feature = "jwt"), allow(dead_code, unused_imports))]
pub mod jose;
pub mod jsonp;
#[cfg_attr(not(feature = "jwt"), allow(dead_code, unused_imports))]
pub mod jwt;
#[cfg_attr(not(feature = "jwt"), allow(dead_code, unused_imports))]
pub mod keycloak_oauth;
mod limits;
pub mod quota;
pub mod rate_limiting;
mod role_rules;
pub mod simple_header;
pub mod soap_authorization;
pub mod time_restricted;
pub mod timeout;
pub mod transfer_quota;
pub mod transport;
pub mod url_rewriting;

use std::any::Any;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::client_ip;
pub use crate::errors::{FailureType, GatewayError, PolicyFailure};
use crate::host::Host;
use crate::http::{HeaderMap, LocalReply, Request, Response};
use crate::json::{Fields, Problems};
use crate::model::{Api, ClientIdentity, Endpoint, GatewaySettings, Identity};

/// The phases of one exchange, in the order they happen. Response phases run the chain in
/// reverse (API → plan → client), as Apiman's response chain does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The request headers: resolution, routing and most policies.
    RequestHeaders,
    /// Request body chunks as they stream past: their sizes only, nothing is buffered.
    RequestData,
    /// The whole request body, buffered until the end of the stream.
    RequestBody,
    ResponseHeaders,
    ResponseData,
    ResponseBody,
    /// The stream has ended (Envoy's access-log callback): count what was transferred.
    Complete,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::RequestHeaders,
        Phase::RequestData,
        Phase::RequestBody,
        Phase::ResponseHeaders,
        Phase::ResponseData,
        Phase::ResponseBody,
        Phase::Complete,
    ];

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Response phases (and completion) visit the chain from its end.
    pub fn reversed(self) -> bool {
        matches!(
            self,
            Phase::ResponseHeaders | Phase::ResponseData | Phase::ResponseBody | Phase::Complete
        )
    }

    pub fn is_request(self) -> bool {
        matches!(
            self,
            Phase::RequestHeaders | Phase::RequestData | Phase::RequestBody
        )
    }
}

/// The phases a policy takes part in, so the chain and the adapter skip work nobody needs
/// (reading response headers, buffering bodies, the completion callback).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseSet(u8);

impl PhaseSet {
    pub const NONE: PhaseSet = PhaseSet(0);

    pub const fn of(phases: &[Phase]) -> PhaseSet {
        let mut bits = 0;
        let mut i = 0;
        while i < phases.len() {
            bits |= phases[i].bit();
            i += 1;
        }
        PhaseSet(bits)
    }

    pub const fn union(self, other: PhaseSet) -> PhaseSet {
        PhaseSet(self.0 | other.0)
    }

    pub const fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }
}

/// A call a policy needs answered before it can decide (a JWKS fetch, an introspection, a rate
/// limit service): HTTP, or a unary gRPC call when `grpc` names the method. The exchange pauses
/// the stream (headers, data and trailers are held), the adapter dispatches it, and the same
/// policy's `on_call_response` continues the phase that started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOut {
    /// The Envoy cluster to send the call to (HTTP/2 for gRPC).
    pub cluster: String,
    /// HTTP: the headers, which must include `:method`, `:path` and `:authority`. gRPC: the
    /// initial metadata.
    pub headers: Vec<(String, String)>,
    /// HTTP: the body. gRPC: the serialized request message.
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Set for a gRPC call (boxed: keeps `CallOut` small on the HTTP path).
    pub grpc: Option<Box<GrpcMethod>>,
}

/// The gRPC method a `CallOut` calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethod {
    /// The fully qualified service, e.g. `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: String,
    pub method: String,
}

/// The answer to a `CallOut`. `status` is 0 when there was none: the call could not be sent
/// (no such cluster), timed out, or the connection was reset. A gRPC answer is `status` 200
/// with the response message as `body` when the call succeeded (gRPC status 0); any other gRPC
/// status is `status` 0 with `grpc-status` and `grpc-message` in `headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResponse {
    /// The cluster the call went to.
    pub cluster: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CallResponse {
    /// No answer, or the service failed (5xx): nothing to decide on.
    pub fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a policy decides in one phase.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    /// Stop the chain and answer with a policy failure.
    Fail(PolicyFailure),
    /// Stop the chain and answer with a gateway error (`X-Gateway-Error`).
    Error(GatewayError),
    /// Stop the chain and answer with this response (e.g. a CORS preflight, a cache hit).
    Reply(LocalReply),
    /// Wait for this call's response, then `on_call_response` of the same policy continues.
    CallOut(CallOut),
}

/// A request or response body, buffered until the end of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// Set when a policy changed `bytes`; the adapter then writes them back.
    pub modified: bool,
}

impl Body {
    pub fn new(bytes: Vec<u8>) -> Body {
        Body {
            bytes,
            modified: false,
        }
    }

    /// Replaces the body; the adapter writes it back.
    pub fn replace(&mut self, bytes: Vec<u8>) {
        self.bytes = bytes;
        self.modified = true;
    }
}

/// What a phase works on, handed to the policy (and back to it with its call-out's answer).
pub enum Subject<'a> {
    Request(&'a mut Request),
    Response(&'a mut Response),
    /// A whole body and the headers of its direction (still changeable: they are held).
    Body(&'a mut Body, &'a mut HeaderMap),
    /// Bytes streaming past (a chunk's size), without buffering.
    Data {
        bytes: usize,
        end_of_stream: bool,
    },
    Complete,
}

pub trait Policy {
    /// The tollgate policy id (e.g. `ip-allowlist`), used in messages.
    fn id(&self) -> &'static str;

    /// The phases this policy needs.
    fn phases(&self) -> PhaseSet;

    fn on_request(&self, _cx: &mut Context, _request: &mut Request) -> Verdict {
        Verdict::Continue
    }

    /// A request body chunk of `bytes` went past (only with `RequestData`).
    fn on_request_data(&self, _cx: &mut Context, _bytes: usize, _end_of_stream: bool) -> Verdict {
        Verdict::Continue
    }

    /// The whole request body (only with `RequestBody`); the request headers may still change.
    fn on_request_body(
        &self,
        _cx: &mut Context,
        _body: &mut Body,
        _headers: &mut HeaderMap,
    ) -> Verdict {
        Verdict::Continue
    }

    fn on_response(&self, _cx: &mut Context, _response: &mut Response) -> Verdict {
        Verdict::Continue
    }

    /// A response body chunk of `bytes` went past (only with `ResponseData`).
    fn on_response_data(&self, _cx: &mut Context, _bytes: usize, _end_of_stream: bool) -> Verdict {
        Verdict::Continue
    }

    /// The whole response body (only with `ResponseBody`); the response headers may still change.
    fn on_response_body(
        &self,
        _cx: &mut Context,
        _body: &mut Body,
        _headers: &mut HeaderMap,
    ) -> Verdict {
        Verdict::Continue
    }

    /// The stream has ended, whatever its outcome (only with `Complete`).
    fn on_complete(&self, _cx: &mut Context) {}

    /// The largest body this policy's whole-body phases read. A body that grows past the
    /// largest limit of the policies waiting for it is passed on as it is, without their body
    /// phase (it is not held in memory); `None`: no limit of its own.
    fn body_limit(&self) -> Option<usize> {
        None
    }

    /// The answer to this policy's `CallOut`, with the view of the phase that made it; decides as
    /// that phase would have. The default refuses the request: a policy that makes call-outs
    /// says what an answer means, and no answer never lets a request through.
    fn on_call_response(
        &self,
        _cx: &mut Context,
        response: &CallResponse,
        _subject: Subject,
    ) -> Verdict {
        Verdict::Error(GatewayError::CallOutFailed {
            cluster: response.cluster.clone(),
        })
    }

    /// Whether `on_tick` has work to do (sweeping, refreshing).
    fn wants_tick(&self) -> bool {
        false
    }

    /// Called periodically on every worker VM, outside any request.
    fn on_tick(&self, _host: &mut dyn Host, _now: SystemTime) {}
}

/// Per-request state kept across phases: host facts fetched at most once, headers to add to
/// whatever response goes back, who the request is, and one private slot per policy in the chain.
#[derive(Default)]
pub struct RequestState {
    now: Option<SystemTime>,
    downstream: Option<Option<IpAddr>>,
    /// Whether the request came over TLS, once a policy asked (see `transport`).
    transport_secure: Option<bool>,
    /// Headers added to the response that goes back, be it the backend's or a local reply
    /// (CORS and rate-limit headers appear on failures too, as in Apiman).
    pub response_headers: Vec<(String, String)>,
    /// The API key the request carried, if any.
    pub api_key: Option<String>,
    /// The request path below the API (`/{org}/{api}/{version}` removed), without the query,
    /// as the client sent it; empty when the request named no resource. Set before the chain
    /// runs: the matching form is computed from it once.
    pub resource: String,
    /// `resource` in the form policies match (`path::for_matching`), on first use.
    destination: std::cell::OnceCell<String>,
    /// The raw query string as it goes to the backend (API key removed unless kept).
    pub query: Option<String>,
    /// Who the request is, as authentication policies established it.
    pub identity: Identity,
    /// The response status, once there is one (the backend's or the gateway's).
    pub status: Option<u16>,
    /// Events policies counted for metrics: (policy id, event), e.g. (`jwt`, `jwks_fetch`).
    pub counts: Vec<(&'static str, &'static str)>,
    /// One private slot per chain position (see `Context::slot`).
    pub slots: Vec<Option<Box<dyn Any>>>,
    /// Whole-body phases chain positions need no body for, in this request (`skip_body`).
    skipped_bodies: Vec<(usize, Phase)>,
    /// A response a policy has for this request (a cache hit): once the request has passed the
    /// whole chain, it is answered with this instead of calling the backend, through every
    /// policy's response phases as if the backend had sent it.
    pub served: Option<LocalReply>,
    /// Keep the backend's response as it arrived, before any policy changed it
    /// (`keep_backend_response`).
    keep_backend: bool,
    /// The backend's response as it arrived: status, headers, and the body once it was read.
    pub backend: Option<BackendResponse>,
    /// Policy instances that acted once already in this request (see `Context::first_time`).
    pub acted: Vec<String>,
}

/// The backend's response as it reached the gateway, before any policy changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The whole body, once a whole-body phase read it.
    pub body: Option<Vec<u8>>,
}

impl RequestState {
    /// Records the downstream address when the request itself carries it (a trusted header
    /// set by Envoy), so no host call is needed.
    pub fn set_downstream(&mut self, ip: Option<IpAddr>) {
        self.downstream = Some(ip);
    }

    /// Whether the policy at `position` declined `phase`'s body for this request.
    pub fn skips_body(&self, position: usize, phase: Phase) -> bool {
        self.skipped_bodies.contains(&(position, phase))
    }

    /// Declines `phase`'s body for the policy at `position`.
    pub fn skip_body(&mut self, position: usize, phase: Phase) {
        if !self.skips_body(position, phase) {
            self.skipped_bodies.push((position, phase));
        }
    }

    /// Whether a policy asked for the backend's response as it arrived.
    pub fn keeps_backend_response(&self) -> bool {
        self.keep_backend
    }
}

/// What a policy sees besides the view of its phase.
pub struct Context<'a> {
    pub api: &'a Api,
    /// The client whose key the request carried (none for public requests).
    pub client: Option<ClientIdentity<'a>>,
    /// The plan of the contract the request runs under.
    pub plan: Option<&'a str>,
    pub settings: &'a GatewaySettings,
    pub state: &'a mut RequestState,
    pub host: &'a mut dyn Host,
    /// The position of the running policy in the chain: its slot.
    pub position: usize,
    /// The running policy's id.
    pub policy: &'static str,
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

    /// The request path below the API, without the query (`/` when empty), in the form every
    /// `pathPattern` is matched against: path parameters removed, percent-decoded, dot segments
    /// resolved (see `path::for_matching`), so that no spelling of a path slips past a rule.
    pub fn destination(&self) -> &str {
        self.state
            .destination
            .get_or_init(|| crate::path::for_matching(&self.state.resource))
    }

    /// The request path below the API as the client sent it (`/` when empty), for messages.
    pub fn requested_path(&self) -> &str {
        if self.state.resource.is_empty() {
            "/"
        } else {
            &self.state.resource
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.state.identity
    }

    pub fn identity_mut(&mut self) -> &mut Identity {
        &mut self.state.identity
    }

    /// Counts an event for metrics (`tollgate_policy_events{policy, event, api}`): a name from a
    /// small fixed set per policy, never request data.
    pub fn count(&mut self, event: &'static str) {
        self.state.counts.push((self.policy, event));
    }

    /// Adds a header to whatever response goes back, backend's or gateway's.
    pub fn add_response_header(&mut self, name: &str, value: &str) {
        self.state
            .response_headers
            .push((name.to_string(), value.to_string()));
    }

    /// This policy needs no whole body of `phase` (`RequestBody` or `ResponseBody`) for this
    /// request: unless another policy does, the body streams through without being held.
    pub fn skip_body(&mut self, phase: Phase) {
        self.state.skip_body(self.position, phase);
    }

    /// Answers the request with `reply` once it has passed the whole request chain (a later
    /// policy may still refuse it), without calling the backend: every policy's response
    /// phases run on it as on the backend's response.
    pub fn serve(&mut self, reply: LocalReply) {
        self.state.served = Some(reply);
    }

    /// Asks for the backend's response as it arrives, before any policy changes it
    /// (`backend_response()` in the response phases; its body once a body phase read it).
    pub fn keep_backend_response(&mut self) {
        self.state.keep_backend = true;
    }

    /// The backend's response as it arrived, if `keep_backend_response` asked for it.
    pub fn backend_response(&self) -> Option<&BackendResponse> {
        self.state.backend.as_ref()
    }

    /// Whether the policy instance `instance` acts for the first time in this request, and
    /// records that it does. A policy that appears twice in one chain (the same configuration
    /// in a plan and in its API) is one policy: a limit counts a request once.
    pub fn first_time(&mut self, instance: &str) -> bool {
        if self.state.acted.iter().any(|i| i == instance) {
            return false;
        }
        self.state.acted.push(instance.to_string());
        true
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

/// A service a policy calls (a JWKS URL, an introspection endpoint): the Envoy cluster the
/// call goes through and the URL's parts. tollgate-gen creates the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTarget {
    pub cluster: String,
    pub endpoint: Endpoint,
    /// The service speaks gRPC: its cluster must use HTTP/2.
    pub grpc: bool,
}

/// What a policy's `build` gets besides its configuration.
pub struct BuildContext<'a> {
    /// Stable across worker VMs and reloads for the same kind and configuration: a namespace
    /// for shared counters and metrics.
    pub instance_id: &'a str,
    pub settings: &'a GatewaySettings,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Services this policy calls.
    pub call_targets: Vec<CallTarget>,
}

impl<'a> BuildContext<'a> {
    pub fn new(
        instance_id: &'a str,
        settings: &'a GatewaySettings,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> BuildContext<'a> {
        BuildContext {
            instance_id,
            settings,
            env,
            call_targets: Vec::new(),
        }
    }

    /// An environment variable of the VM (Envoy's `vm_config.environment_variables`).
    pub fn env(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    /// Declares a service this policy calls at `url`, through `cluster` or by default the
    /// cluster named `host:port` of the URL (as backends are named). Returns the target.
    pub fn call_target(&mut self, url: &str, cluster: Option<&str>) -> Result<CallTarget, String> {
        self.target(url, cluster, false)
    }

    /// As `call_target`, for a gRPC service (the cluster gets HTTP/2).
    pub fn grpc_target(&mut self, url: &str, cluster: Option<&str>) -> Result<CallTarget, String> {
        self.target(url, cluster, true)
    }

    fn target(
        &mut self,
        url: &str,
        cluster: Option<&str>,
        grpc: bool,
    ) -> Result<CallTarget, String> {
        let endpoint = Endpoint::parse(url)?;
        let cluster = match cluster.map(str::trim) {
            Some("") => return Err("cluster must not be empty".to_string()),
            Some(c) => c.to_string(),
            None => endpoint.default_cluster(),
        };
        let target = CallTarget {
            cluster,
            endpoint,
            grpc,
        };
        if !self.call_targets.contains(&target) {
            self.call_targets.push(target.clone());
        }
        Ok(target)
    }
}

/// One field of a policy's configuration, for the generated reference.
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    /// The name as written in the configuration (Apiman's, where Apiman has the field); nested
    /// fields as `rules[].verb`.
    pub name: &'static str,
    /// Other spellings accepted (Apiman's docs and code disagree on some).
    pub aliases: &'static [&'static str],
    /// `string`, `boolean`, `integer`, `[string]`, `object`, `[object]`, or `A|B|C` for a choice.
    pub ty: &'static str,
    /// The default when absent (`` for none: required or simply unset).
    pub default: &'static str,
    /// Whether Apiman has this field (else it is tollgate's own).
    pub apiman: bool,
    pub meaning: &'static str,
}

/// What a policy kind can do beyond its phases.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    /// Answers a keyless CORS preflight to a private API (browsers never send the API key on a
    /// preflight): the API's policies of such kinds run for it instead of a 403.
    pub answers_keyless_preflight: bool,
    /// Verifies JWT signatures: only in `tollgate.wasm`, never in `tollgate-lite.wasm` (tollgate-gen
    /// picks the module by it).
    pub verifies_jwt: bool,
}

/// Everything tollgate knows about one policy kind.
pub struct PolicyKind {
    /// tollgate's id, used in the friendly form `{"policy": "<id>", "config": {...}}`.
    pub id: &'static str,
    /// The name Apiman's UI shows.
    pub name: &'static str,
    /// Apiman's names: the class of `class:` policy impls, the plugin artifact and class of
    /// `plugin:` impls, and the policy definition ids. Matched case-insensitively.
    pub apiman_names: &'static [&'static str],
    /// One line: what the policy does.
    #[cfg(not(target_arch = "wasm32"))]
    pub summary: &'static str,
    /// Failure codes and statuses, one line.
    #[cfg(not(target_arch = "wasm32"))]
    pub failures: &'static str,
    #[cfg(not(target_arch = "wasm32"))]
    pub fields: &'static [FieldDoc],
    /// A configuration that uses every documented field.
    #[cfg(not(target_arch = "wasm32"))]
    pub example: &'static str,
    pub capabilities: Capabilities,
    /// Compiles the configuration; problems are reported with paths below the configuration.
    pub build: fn(&mut BuildContext, &mut Fields, &mut Problems) -> Option<Box<dyn Policy>>,
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
    ext_authz::KIND,
    basic_auth::KIND,
    authorization::KIND,
    soap_authorization::KIND,
    time_restricted::KIND,
    timeout::KIND,
    jsonp::KIND,
    url_rewriting::KIND,
    caching::KIND,
    jwt::KIND,
    keycloak_oauth::KIND,
    rate_limiting::KIND,
    quota::KIND,
    transfer_quota::KIND,
];

/// The build of the JWT-signature policies (JWT, Keycloak OAuth) in a module without them
/// (`tollgate-lite.wasm`): the configuration is refused, never run without its check.
#[cfg(not(feature = "jwt"))]
fn without_jwt(
    _: &mut BuildContext,
    f: &mut Fields,
    problems: &mut Problems,
) -> Option<Box<dyn Policy>> {
    problems.error(
        f.path(),
        "this policy verifies JWT signatures, which tollgate-lite.wasm leaves out: load tollgate.wasm",
    );
    None
}

fn named(id: &str, names: &[&str], name: &str) -> bool {
    id.eq_ignore_ascii_case(name) || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Finds a policy kind by tollgate id or any Apiman name.
pub fn kind_by_name(name: &str) -> Option<&'static PolicyKind> {
    KINDS.iter().find(|k| named(k.id, k.apiman_names, name))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the policies' unit tests.
    use super::*;
    use crate::host::MemoryHost;
    use crate::http::HeaderMap;
    use serde_json::Value;

    /// Compiles a policy of `kind` from a JSON config, panicking on problems.
    pub fn compile(kind: &PolicyKind, config: Value) -> Box<dyn Policy> {
        let (policy, problems) = build(kind, config, &|_| None);
        assert!(problems.errors.is_empty(), "{:?}", problems.errors);
        policy.unwrap()
    }

    /// Compiles with an environment.
    pub fn build(
        kind: &PolicyKind,
        config: Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Option<Box<dyn Policy>>, Problems) {
        build_in(kind, config, env, &GatewaySettings::default())
    }

    /// Compiles with an environment, for a gateway with these settings.
    pub fn build_in(
        kind: &PolicyKind,
        config: Value,
        env: &dyn Fn(&str) -> Option<String>,
        settings: &GatewaySettings,
    ) -> (Option<Box<dyn Policy>>, Problems) {
        let mut problems = Problems::default();
        // The instance id the registry would give it: distinct configurations count apart.
        let id = crate::registry::instance_id(kind.id, &config);
        let mut cx = BuildContext::new(&id, settings, env);
        let policy = Fields::of(&config, "config", &mut problems).and_then(|mut fields| {
            let p = (kind.build)(&mut cx, &mut fields, &mut problems);
            fields.finish(&mut problems);
            p
        });
        (policy, problems)
    }

    /// The errors compiling `config` reports.
    pub fn errors(kind: &PolicyKind, config: Value) -> Vec<String> {
        build(kind, config, &|_| None).1.errors
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

    /// A public API for unit tests.
    pub fn test_api() -> Api {
        Api {
            organization_id: "Org".into(),
            api_id: "echo".into(),
            version: "1.0".into(),
            public: true,
            endpoint: Endpoint::parse("http://127.0.0.1:8080").unwrap(),
            cluster: "backend".into(),
            strip_keys: true,
            xml: false,
            upstream_authorization: None,
        }
    }

    /// A request context for one policy at position 0.
    pub struct Fixture {
        pub api: Api,
        pub settings: GatewaySettings,
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
                api: test_api(),
                settings: GatewaySettings::default(),
                state,
                host: MemoryHost::default(),
            }
        }

        pub fn from(address: &str) -> Fixture {
            let mut f = Fixture::new();
            f.host = MemoryHost::with_downstream(address);
            f
        }

        /// A request from `address` to a gateway that trusts the proxies in `networks`.
        pub fn trusting(address: &str, networks: &[&str], hops: usize) -> Fixture {
            let mut f = Fixture::from(address);
            f.settings.trusted_proxies = crate::client_ip::TrustedProxies {
                networks: networks.iter().filter_map(|n| n.parse().ok()).collect(),
                hops,
            };
            f
        }

        pub fn cx(&mut self) -> Context<'_> {
            Context {
                api: &self.api,
                client: None,
                plan: None,
                settings: &self.settings,
                state: &mut self.state,
                host: &mut self.host,
                position: 0,
                policy: "",
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
