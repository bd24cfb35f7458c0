//! One request/response exchange through the gateway, host-independent: Apiman's request
//! resolution (API, key, client, contract), the policy chain per phase, and routing to the
//! API's backend. The proxy-wasm adapter drives it; so do the unit tests and the native harness.

use std::rc::Rc;

use crate::chain::{Chain, Cursor};
use crate::errors::{self, GatewayError};
use crate::host::Host;
use crate::http::{query_param, query_without, split_query, HeaderMap, HeaderOp, LocalReply};
use crate::http::{Request, Response};
use crate::policy::{
    BackendResponse, Body, CallOut, CallResponse, Context, Phase, RequestState, Subject, Verdict,
};
use crate::registry::Registry;

/// What the host should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Carry on (changes are in the exchange's views: `take_request_ops` and friends).
    Continue,
    /// Answer with this response; the backend is not called (or its answer is replaced).
    Reply(LocalReply),
    /// Dispatch this call, tell `call_dispatched` its token, and hand its answer to
    /// `on_call_response`. Until then the stream must be held: nothing of it may move on.
    CallOut(CallOut),
}

/// The request as parsed from its path: Apiman's `/{org}/{api}/{version}/{resource}`, or
/// `/{org}/{api}/{resource}` with the version in `X-API-Version` or `Accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath<'a> {
    pub org: &'a str,
    pub api: &'a str,
    pub version: &'a str,
    /// The rest of the path, with its leading `/`; empty when there is none.
    pub resource: &'a str,
    /// Whether the version came from a header (which is then not forwarded).
    pub version_from_header: bool,
}

/// Parses a request path (without query). `None` when it cannot name an API.
pub fn parse_api_path<'a>(
    path: &'a str,
    version_header: Option<&'a str>,
    accept: Option<&'a str>,
) -> Option<ApiPath<'a>> {
    let header_version = version_header
        .filter(|v| !v.trim().is_empty())
        .map(str::trim)
        .or_else(|| {
            accept
                .and_then(|a| a.trim().strip_prefix("application/apiman."))
                .map(|rest| rest.split('+').next().unwrap_or(rest))
                .filter(|v| !v.is_empty())
        });
    let rest = path.strip_prefix('/')?;
    let mut parts = rest.splitn(if header_version.is_some() { 3 } else { 4 }, '/');
    let org = parts.next().filter(|s| !s.is_empty())?;
    let api = parts.next().filter(|s| !s.is_empty())?;
    let version = match header_version {
        Some(v) => v,
        None => parts.next().filter(|s| !s.is_empty())?,
    };
    let remainder = parts.next();
    // `remainder` is what follows the slash after the version (or API id).
    let resource = match remainder {
        None => "",
        Some(r) => {
            let start = path.len() - r.len() - 1;
            &path[start..]
        }
    };
    Some(ApiPath {
        org,
        api,
        version,
        resource,
        version_from_header: header_version.is_some(),
    })
}

/// Joins the endpoint's path and the resource as Apiman does (`ApimanPathUtils.join`): exactly
/// one slash between them, the endpoint's own trailing slash kept when there is no resource.
pub fn upstream_path(endpoint_path: &str, resource: &str) -> String {
    match (endpoint_path.is_empty(), resource.is_empty()) {
        (true, true) => "/".to_string(),
        (true, false) => resource.to_string(),
        (false, true) => endpoint_path.to_string(),
        (false, false) => {
            if endpoint_path.ends_with('/') {
                format!("{endpoint_path}{}", &resource[1..])
            } else {
                format!("{endpoint_path}{resource}")
            }
        }
    }
}

/// How the gateway decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Passed every policy on the request (the backend was called, or Envoy answered for it).
    Allowed,
    /// A policy refused it with this failure code.
    Refused { policy: &'static str, code: u32 },
    /// A policy answered it itself (a CORS preflight, a cache hit).
    Answered { policy: &'static str },
    /// The gateway refused it before or outside the policies (unknown API, key, contract...).
    Error { kind: &'static str },
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused { .. } => "refused",
            Outcome::Answered { .. } => "answered",
            Outcome::Error { .. } => "error",
        }
    }

    /// The failure code or error kind (empty when allowed).
    pub fn code(self) -> String {
        match self {
            Outcome::Refused { code, .. } => code.to_string(),
            Outcome::Error { kind } => kind.to_string(),
            Outcome::Allowed | Outcome::Answered { .. } => String::new(),
        }
    }
}

/// What the gateway decided about one request, for metrics and decision logs. Never holds a
/// key or token: the key is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// `org`, `api`, `version` of the API the request named, if it named a known one.
    pub api: Option<(&'a str, &'a str, &'a str)>,
    pub client: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub outcome: Outcome,
    /// The status of the response the client got, if known yet.
    pub status: Option<u16>,
    /// The API key the request carried, masked.
    pub key: Option<String>,
    /// Events policies counted: (policy, event).
    pub events: &'a [(&'static str, &'static str)],
}

impl Decision<'_> {
    /// One JSON object for an access log.
    pub fn to_json(&self) -> String {
        let mut o = serde_json::Map::new();
        if let Some((org, api, version)) = self.api {
            o.insert("api".into(), format!("{org}/{api}/{version}").into());
        }
        if let Some(c) = self.client {
            o.insert("client".into(), c.into());
        }
        if let Some(p) = self.plan {
            o.insert("plan".into(), p.into());
        }
        o.insert("outcome".into(), self.outcome.label().into());
        match self.outcome {
            Outcome::Refused { policy, code } => {
                o.insert("policy".into(), policy.into());
                o.insert("code".into(), code.into());
            }
            Outcome::Answered { policy } => {
                o.insert("policy".into(), policy.into());
            }
            Outcome::Error { kind } => {
                o.insert("error".into(), kind.into());
            }
            Outcome::Allowed => {}
        }
        if let Some(status) = self.status {
            o.insert("status".into(), status.into());
        }
        if let Some(k) = &self.key {
            o.insert("key".into(), k.clone().into());
        }
        serde_json::Value::Object(o).to_string()
    }
}

/// The policy context for one exchange: the one place it is built.
fn context<'a>(
    registry: &'a Registry,
    api: usize,
    client: Option<usize>,
    state: &'a mut RequestState,
    host: &'a mut dyn Host,
) -> Option<Context<'a>> {
    let registered = registry.api_at(api)?;
    let client = client.and_then(|i| registry.client_at(i));
    Some(Context {
        api: &registered.api,
        client: client.map(|c| c.identity),
        plan: client.and_then(|c| c.contract(api)).and_then(|c| c.plan),
        settings: &registry.settings,
        state,
        host,
        position: 0,
        policy: "",
    })
}

/// A call-out the exchange waits for.
#[derive(Debug)]
struct PendingCall {
    cluster: String,
    /// The host's token, once dispatched.
    token: Option<u32>,
    /// For a call-out made in a data phase: the chunk it was made for.
    data: (usize, bool),
}

pub struct Exchange {
    registry: Rc<Registry>,
    api: Option<usize>,
    client: Option<usize>,
    chain: Chain,
    cursor: Cursor,
    state: RequestState,
    request: Request,
    response: Response,
    /// The body of a phase waiting for a call-out.
    held_body: Option<Body>,
    /// A body a policy replaced, for the host to write back.
    changed_body: Option<Vec<u8>>,
    pending: Option<PendingCall>,
    /// The chain is the API's preflight chain: if it lets the request through, it is still a
    /// keyless request to a private API.
    preflight: bool,
    /// The request path with the API key removed: what a local reply leaves in `:path`, so an
    /// access log never records the key.
    key_free_path: Option<String>,
    /// How the request was decided (for metrics and decision logs).
    outcome: Outcome,
    /// Set once the gateway has answered itself: the response phases are then skipped.
    replied: bool,
}

impl Exchange {
    pub fn new(registry: Rc<Registry>) -> Exchange {
        Exchange {
            registry,
            api: None,
            client: None,
            chain: Chain::default(),
            cursor: Cursor::default(),
            state: RequestState::default(),
            request: Request::default(),
            response: Response::default(),
            held_body: None,
            changed_body: None,
            pending: None,
            preflight: false,
            key_free_path: None,
            outcome: Outcome::Allowed,
            replied: false,
        }
    }

    /// What was decided about the request so far.
    pub fn decision(&self) -> Decision<'_> {
        let api = self.api.and_then(|i| self.registry.api_at(i)).map(|a| {
            (
                a.api.organization_id.as_str(),
                a.api.api_id.as_str(),
                a.api.version.as_str(),
            )
        });
        let client = self.client.and_then(|i| self.registry.client_at(i));
        Decision {
            api,
            client: client.map(|c| c.identity.client_id),
            plan: match (client, self.api) {
                (Some(c), Some(api)) => c.contract(api).and_then(|c| c.plan),
                _ => None,
            },
            outcome: self.outcome,
            status: self.state.status,
            key: self.state.api_key.as_deref().map(errors::mask_key),
            events: &self.state.counts,
        }
    }

    /// The id of the policy that stopped the last phase.
    fn stopping_policy(&self) -> &'static str {
        self.cursor
            .stopped_at()
            .and_then(|i| self.chain.policies().get(i))
            .map_or("", |p| p.id())
    }

    /// The gateway's settings.
    pub fn settings(&self) -> &crate::model::GatewaySettings {
        &self.registry.settings
    }

    /// The request as policies left it.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The response as policies left it.
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// The changes made to the request headers since the last call, for the host to apply.
    pub fn take_request_ops(&mut self) -> Vec<HeaderOp> {
        self.request.headers.take_ops()
    }

    /// The changes made to the response headers since the last call.
    pub fn take_response_ops(&mut self) -> Vec<HeaderOp> {
        self.response.headers.take_ops()
    }

    /// A body a policy replaced in the last body phase, for the host to write back.
    pub fn take_changed_body(&mut self) -> Option<Vec<u8>> {
        self.changed_body.take()
    }

    /// The phase a call-out is pending in.
    pub fn waiting(&self) -> Option<Phase> {
        self.pending.as_ref().and(self.cursor.waiting())
    }

    fn reply(&mut self, mut reply: LocalReply) -> Step {
        reply.decorate(&self.state.response_headers);
        if let Some(path) = self.key_free_path.take() {
            // Still in the request phase: leave no key in `:path` for the access log.
            self.request.headers.set(":path", &path);
        }
        self.replied = true;
        self.state.status = Some(reply.status);
        Step::Reply(reply)
    }

    fn gateway_error(&mut self, error: GatewayError) -> Step {
        self.outcome = Outcome::Error { kind: error.kind() };
        let xml = self.xml();
        self.reply(error.reply(xml))
    }

    fn xml(&self) -> bool {
        self.api
            .and_then(|i| self.registry.api_at(i))
            .is_some_and(|a| a.api.xml)
    }

    /// Resolves the request and runs the request chain.
    pub fn on_request_headers(&mut self, headers: HeaderMap, host: &mut dyn Host) -> Step {
        self.request = Request {
            method: headers.get(":method").unwrap_or("GET").to_string(),
            headers,
        };
        let registry = self.registry.clone();
        let settings = &registry.settings;
        let full_path = self.request.headers.get(":path").unwrap_or("/").to_string();
        let (path, query) = split_query(&full_path);
        if let Some(q) = query {
            if query_param(q, &settings.api_key_query_param).is_some() {
                self.key_free_path = Some(match query_without(q, &settings.api_key_query_param) {
                    Some(rest) => format!("{path}?{rest}"),
                    None => path.to_string(),
                });
            }
        }
        let version_header = self
            .request
            .headers
            .get("x-api-version")
            .map(str::to_string);
        let accept = self.request.headers.get("accept").map(str::to_string);
        let Some(parsed) = parse_api_path(path, version_header.as_deref(), accept.as_deref())
        else {
            return self.gateway_error(GatewayError::ApiNotFound);
        };
        let Some((api_index, registered)) = registry.api(parsed.org, parsed.api, parsed.version)
        else {
            return self.gateway_error(GatewayError::ApiNotFound);
        };
        let api = &registered.api;
        self.api = Some(api_index);
        if let Some(header) = &settings.client_address_header {
            if let Some(address) = self.request.headers.get(header) {
                let ip = crate::client_ip::parse_socket_address(address);
                self.state.set_downstream(ip);
            }
            self.request.headers.remove(header);
        }

        // The key: header first, then the query parameter; blank counts as absent.
        let key = self
            .request
            .headers
            .get(&settings.api_key_header)
            .filter(|k| !k.trim().is_empty())
            .map(str::to_string)
            .or_else(|| {
                query
                    .and_then(|q| query_param(q, &settings.api_key_query_param))
                    .filter(|k| !k.trim().is_empty())
            });
        let mut upstream_query = query.map(str::to_string);
        if api.strip_keys {
            self.request.headers.remove(&settings.api_key_header);
            upstream_query =
                upstream_query.and_then(|q| query_without(&q, &settings.api_key_query_param));
        }
        if parsed.version_from_header {
            // Apiman drops X-API-Version and turns its versioned Accept into a plain one.
            self.request.headers.remove("x-api-version");
            if let Some(a) = accept
                .as_deref()
                .filter(|a| a.starts_with("application/apiman."))
            {
                if a.contains("+json") {
                    self.request.headers.set("accept", "application/json");
                } else if a.contains("+xml") {
                    self.request.headers.set("accept", "text/xml");
                }
            }
        }
        self.state.resource = parsed.resource.to_string();
        self.state.query = upstream_query;

        let chain = match &key {
            Some(key) => {
                let Some((client_index, client)) = registry.client_by_key(key) else {
                    return self.gateway_error(GatewayError::NoClientForKey(errors::mask_key(key)));
                };
                let Some(contract) = client.contract(api_index) else {
                    return self.gateway_error(GatewayError::NoContract {
                        client_id: client.identity.client_id.to_string(),
                        api_id: api.api_id.clone(),
                    });
                };
                self.client = Some(client_index);
                contract.chain.clone()
            }
            None if api.public => registered.chain.clone(),
            None => {
                // Browsers never send the key on a CORS preflight: let the API's own CORS
                // policy answer it rather than failing every cross-origin call with a 403.
                let preflight = self.request.method.eq_ignore_ascii_case("OPTIONS")
                    && self.request.headers.contains("origin")
                    && self
                        .request
                        .headers
                        .contains("access-control-request-method");
                if !preflight || registered.preflight_chain.is_empty() {
                    return self.gateway_error(GatewayError::ApiNotPublic);
                }
                self.preflight = true;
                registered.preflight_chain.clone()
            }
        };
        self.state.api_key = key;
        self.chain = chain;
        let verdict = self.run(Phase::RequestHeaders, host);
        let step = self.conclude(Phase::RequestHeaders, verdict);
        self.serve_when_passed(Phase::RequestHeaders, step, host)
    }

    /// Runs `phase` over the chain with the view it works on.
    fn run(&mut self, phase: Phase, host: &mut dyn Host) -> Verdict {
        self.run_with(phase, (0, false), host)
    }

    fn run_with(&mut self, phase: Phase, data: (usize, bool), host: &mut dyn Host) -> Verdict {
        let registry = self.registry.clone();
        let Some(api) = self.api else {
            return Verdict::Continue;
        };
        let Some(mut cx) = context(&registry, api, self.client, &mut self.state, host) else {
            return Verdict::Continue;
        };
        let mut body = self.held_body.take().unwrap_or_default();
        let subject = match phase {
            Phase::RequestHeaders => Subject::Request(&mut self.request),
            Phase::ResponseHeaders => Subject::Response(&mut self.response),
            Phase::RequestBody => Subject::Body(&mut body, &mut self.request.headers),
            Phase::ResponseBody => Subject::Body(&mut body, &mut self.response.headers),
            Phase::RequestData | Phase::ResponseData => Subject::Data {
                bytes: data.0,
                end_of_stream: data.1,
            },
            Phase::Complete => Subject::Complete,
        };
        let verdict = self.cursor.run(&self.chain, phase, &mut cx, subject);
        self.after_body_phase(phase, body, &verdict);
        if let Verdict::CallOut(call) = &verdict {
            self.pending = Some(PendingCall {
                cluster: call.cluster.clone(),
                token: None,
                data,
            });
        }
        verdict
    }

    /// A body phase keeps its body while it waits for a call-out, and hands a changed body to
    /// the host once it is done.
    fn after_body_phase(&mut self, phase: Phase, body: Body, verdict: &Verdict) {
        if !matches!(phase, Phase::RequestBody | Phase::ResponseBody) {
            return;
        }
        if matches!(verdict, Verdict::CallOut(_)) {
            self.held_body = Some(body);
        } else if body.modified {
            self.changed_body = Some(body.bytes);
        }
    }

    /// The host dispatched the pending call-out under `token`.
    pub fn call_dispatched(&mut self, token: u32) {
        if let Some(p) = self.pending.as_mut() {
            p.token = Some(token);
        }
    }

    /// Hands a call-out's answer to the policy waiting for it and finishes the phase that made
    /// it. `token` is the host's token, or `None` when the call could not be dispatched (then
    /// `response` says there was no answer). An answer nobody waits for is ignored.
    pub fn on_call_response(
        &mut self,
        token: Option<u32>,
        mut response: CallResponse,
        host: &mut dyn Host,
    ) -> Step {
        let matches = self.pending.as_ref().is_some_and(|p| p.token == token);
        let (Some(phase), true) = (self.cursor.waiting(), matches) else {
            return Step::Continue;
        };
        let Some(pending) = self.pending.take() else {
            return Step::Continue;
        };
        response.cluster = pending.cluster;
        let registry = self.registry.clone();
        let Some(api) = self.api else {
            return Step::Continue;
        };
        let Some(mut cx) = context(&registry, api, self.client, &mut self.state, host) else {
            return Step::Continue;
        };
        let mut body = self.held_body.take().unwrap_or_default();
        let subject = match phase {
            Phase::RequestHeaders => Subject::Request(&mut self.request),
            Phase::ResponseHeaders => Subject::Response(&mut self.response),
            Phase::RequestBody => Subject::Body(&mut body, &mut self.request.headers),
            Phase::ResponseBody => Subject::Body(&mut body, &mut self.response.headers),
            Phase::RequestData | Phase::ResponseData => Subject::Data {
                bytes: pending.data.0,
                end_of_stream: pending.data.1,
            },
            Phase::Complete => Subject::Complete,
        };
        let verdict = self.cursor.resume(&self.chain, &response, &mut cx, subject);
        self.after_body_phase(phase, body, &verdict);
        if let Verdict::CallOut(call) = &verdict {
            self.pending = Some(PendingCall {
                cluster: call.cluster.clone(),
                token: None,
                data: pending.data,
            });
        }
        let step = self.conclude(phase, verdict);
        self.serve_when_passed(phase, step, host)
    }

    /// Turns a phase's verdict into a step: failures become Apiman's failure reply; the request
    /// headers phase routes to the backend when it completes.
    fn conclude(&mut self, phase: Phase, verdict: Verdict) -> Step {
        match verdict {
            Verdict::Continue if phase == Phase::RequestHeaders && self.preflight => {
                // The preflight policies let it through: a keyless request to a private API.
                self.gateway_error(GatewayError::ApiNotPublic)
            }
            Verdict::Continue => {
                if phase == Phase::RequestHeaders && self.state.served.is_none() {
                    self.route();
                }
                Step::Continue
            }
            // The stream is over: a call-out can no longer hold anything.
            Verdict::CallOut(_) if phase == Phase::Complete => {
                self.pending = None;
                Step::Continue
            }
            Verdict::CallOut(call) => Step::CallOut(call),
            Verdict::Fail(failure) => {
                self.outcome = Outcome::Refused {
                    policy: self.stopping_policy(),
                    code: failure.code,
                };
                let xml = self.xml();
                self.reply(errors::policy_failure_reply(&failure, xml))
            }
            Verdict::Error(error) => self.gateway_error(error),
            Verdict::Reply(reply) => {
                self.outcome = Outcome::Answered {
                    policy: self.stopping_policy(),
                };
                self.reply(reply)
            }
        }
    }

    /// A request a policy has a response for (a cache hit) is answered with it once it has passed
    /// the request chain: after the request headers, or after its body when a policy reads that.
    fn serve_when_passed(&mut self, phase: Phase, step: Step, host: &mut dyn Host) -> Step {
        let passed = match phase {
            Phase::RequestHeaders => !self.needs(Phase::RequestBody),
            Phase::RequestBody => true,
            _ => false,
        };
        if step != Step::Continue || !passed || self.state.served.is_none() {
            return step;
        }
        self.serve(host)
    }

    /// Answers with the served response after running every policy's response phases on it,
    /// as on a backend's response (a refusal there answers instead).
    fn serve(&mut self, host: &mut dyn Host) -> Step {
        let Some(served) = self.state.served.take() else {
            return Step::Continue;
        };
        let mut pairs = vec![(":status".to_string(), served.status.to_string())];
        pairs.extend(served.headers);
        self.response = Response {
            status: served.status,
            headers: HeaderMap::from_pairs(pairs),
        };
        self.state.status = Some(served.status);
        self.decorate_response(true);
        let mut verdict = Verdict::Continue;
        if self.chain.needs(Phase::ResponseHeaders) {
            verdict = self.run(Phase::ResponseHeaders, host);
        }
        if matches!(verdict, Verdict::Continue) && self.chain.needs(Phase::ResponseData) {
            verdict = self.run_with(Phase::ResponseData, (served.body.len(), true), host);
        }
        let mut body = served.body;
        if matches!(verdict, Verdict::Continue) && self.needs(Phase::ResponseBody) {
            self.held_body = Some(Body::new(body.clone()));
            verdict = self.run(Phase::ResponseBody, host);
            if let Some(changed) = self.changed_body.take() {
                body = changed;
            }
        }
        self.response.headers.take_ops();
        match verdict {
            Verdict::Continue => {
                let headers = std::mem::take(&mut self.response.headers)
                    .into_pairs()
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with(':') && k != "content-length")
                    .collect();
                let status = self.response.status;
                self.reply(LocalReply {
                    status,
                    headers,
                    body,
                })
            }
            // Nothing can be waited for here: the stream is answered from this callback.
            Verdict::CallOut(call) => {
                self.pending = None;
                self.gateway_error(GatewayError::CallOutFailed {
                    cluster: call.cluster,
                })
            }
            other => self.conclude(Phase::ResponseHeaders, other),
        }
    }

    /// Points the request at the API's backend: path, authority and the cluster header.
    fn route(&mut self) {
        self.key_free_path = None;
        let registry = self.registry.clone();
        let Some(registered) = self.api.and_then(|i| registry.api_at(i)) else {
            return;
        };
        let api = &registered.api;
        let mut path = upstream_path(&api.endpoint.path, &self.state.resource);
        if let Some(q) = &self.state.query {
            path.push('?');
            path.push_str(q);
        }
        let headers = &mut self.request.headers;
        headers.set(":path", &path);
        headers.set(":authority", &api.endpoint.authority);
        headers.set(&registry.settings.cluster_header, &api.cluster);
        if let Some(auth) = &api.upstream_authorization {
            headers.set("authorization", auth);
        }
    }

    /// Whether `phase` has work to do. After a local reply only completion does.
    pub fn needs(&self, phase: Phase) -> bool {
        match phase {
            Phase::RequestHeaders => true,
            Phase::Complete => self.chain.needs(Phase::Complete),
            Phase::ResponseHeaders => {
                !self.replied
                    && self.api.is_some()
                    && (self.chain.needs(Phase::ResponseHeaders)
                        || self.chain.needs(Phase::ResponseBody)
                        || !self.state.response_headers.is_empty())
            }
            Phase::RequestBody | Phase::ResponseBody => !self.replied && self.wants_body(phase),
            other => !self.replied && self.chain.needs(other),
        }
    }

    /// Whether a policy of the chain reads `phase`'s whole body in this request.
    fn wants_body(&self, phase: Phase) -> bool {
        self.chain.needs(phase)
            && self
                .chain
                .policies()
                .iter()
                .enumerate()
                .any(|(i, p)| p.phases().contains(phase) && !self.state.skips_body(i, phase))
    }

    /// How large `phase`'s body may grow before it is passed on without its body phase: the
    /// largest limit of the policies waiting for it (`None` when one of them has none, or none
    /// waits for it).
    pub fn body_limit(&self, phase: Phase) -> Option<usize> {
        let mut limit = None;
        for (i, p) in self.chain.policies().iter().enumerate() {
            if p.phases().contains(phase) && !self.state.skips_body(i, phase) {
                limit = Some(limit.unwrap_or(0).max(p.body_limit()?));
            }
        }
        limit
    }

    /// `phase`'s body grew past `body_limit`: it is passed on as it is, without its body phase.
    pub fn body_too_large(&mut self, phase: Phase, size: usize) {
        let limit = self.body_limit(phase).unwrap_or(0);
        let mut skipped = Vec::new();
        for (i, p) in self.chain.policies().iter().enumerate() {
            if p.phases().contains(phase) && !self.state.skips_body(i, phase) {
                self.state.skip_body(i, phase);
                skipped.push(p.id());
            }
        }
        let what = if phase.is_request() {
            "request"
        } else {
            "response"
        };
        log::info!(
            "tollgate: the {what} body is larger than {limit} bytes ({size}): passed on unchanged, without {}",
            skipped.join(", ")
        );
    }

    /// Whether the response must be looked at for Envoy's own upstream failures: a request the
    /// gateway routed to a backend (a 5xx status then costs one more host call, for its cause).
    pub fn watches_upstream_errors(&self) -> bool {
        !self.replied && self.api.is_some()
    }

    /// Whether response-phase policies look at the response headers. When only headers are to be
    /// added (CORS, rate-limit headers), the host need not read them first.
    pub fn reads_response_headers(&self) -> bool {
        !self.replied
            && (self.chain.needs(Phase::ResponseHeaders) || self.chain.needs(Phase::ResponseBody))
    }

    /// Request body bytes streaming past (only when `needs(RequestData)`).
    pub fn on_request_data(
        &mut self,
        bytes: usize,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Step {
        if !self.needs(Phase::RequestData) {
            return Step::Continue;
        }
        let verdict = self.run_with(Phase::RequestData, (bytes, end_of_stream), host);
        self.conclude(Phase::RequestData, verdict)
    }

    /// The whole request body (only when `needs(RequestBody)`).
    pub fn on_request_body(&mut self, body: Body, host: &mut dyn Host) -> Step {
        if !self.needs(Phase::RequestBody) {
            return self.serve_when_passed(Phase::RequestBody, Step::Continue, host);
        }
        self.held_body = Some(body);
        let verdict = self.run(Phase::RequestBody, host);
        let step = self.conclude(Phase::RequestBody, verdict);
        self.serve_when_passed(Phase::RequestBody, step, host)
    }

    /// Adds the headers policies asked for, then runs the response chain in reverse. When
    /// `reads_response_headers` is false, `headers` holds nothing (they were not read): `Vary`
    /// is then added as a header line of its own rather than merged.
    pub fn on_response_headers(&mut self, headers: HeaderMap, host: &mut dyn Host) -> Step {
        let status = headers
            .get(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Envoy's own failure (timeout, unreachable backend, unknown cluster) becomes the
        // gateway's error, whatever Envoy's `local_reply_config` (one that already made it the
        // gateway's error leaves `x-gateway-error`).
        if status >= 500 && self.watches_upstream_errors() && !headers.contains("x-gateway-error") {
            let error = host
                .response_code_details()
                .and_then(|d| GatewayError::from_envoy_details(&d));
            if let Some(error) = error {
                self.state.status = Some(error.status());
                return self.gateway_error(error);
            }
        }
        if self.state.keeps_backend_response() {
            self.state.backend = Some(BackendResponse {
                status,
                headers: headers
                    .iter()
                    .filter(|(k, _)| !k.starts_with(':'))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: None,
            });
        }
        self.response = Response { status, headers };
        if status != 0 {
            self.state.status = Some(status);
        }
        if !self.needs(Phase::ResponseHeaders) {
            return Step::Continue;
        }
        let read = self.reads_response_headers();
        self.decorate_response(read);
        if self.chain.needs(Phase::ResponseHeaders) {
            let verdict = self.run(Phase::ResponseHeaders, host);
            let step = self.conclude(Phase::ResponseHeaders, verdict);
            if step != Step::Continue {
                return step;
            }
        }
        // A body announced larger than its policies read is not held for them at all.
        let length = self.response.headers.get("content-length");
        let length = length.and_then(|l| l.trim().parse::<usize>().ok());
        if let (Some(length), Some(limit)) = (length, self.body_limit(Phase::ResponseBody)) {
            if length > limit && self.needs(Phase::ResponseBody) {
                self.body_too_large(Phase::ResponseBody, length);
            }
        }
        Step::Continue
    }

    /// Adds the headers policies asked for to the response. When its headers were not read
    /// (`read` false), `Vary` is added as a header line of its own rather than merged.
    fn decorate_response(&mut self, read: bool) {
        for (name, value) in &self.state.response_headers {
            if !name.eq_ignore_ascii_case("vary") {
                self.response.headers.set(name, value);
            } else if read {
                merge_vary(&mut self.response, value);
            } else {
                self.response.headers.add(name, value);
            }
        }
    }

    /// Response body bytes streaming past (only when `needs(ResponseData)`).
    pub fn on_response_data(
        &mut self,
        bytes: usize,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Step {
        if !self.needs(Phase::ResponseData) {
            return Step::Continue;
        }
        let verdict = self.run_with(Phase::ResponseData, (bytes, end_of_stream), host);
        self.conclude(Phase::ResponseData, verdict)
    }

    /// The whole response body (only when `needs(ResponseBody)`).
    pub fn on_response_body(&mut self, body: Body, host: &mut dyn Host) -> Step {
        if !self.needs(Phase::ResponseBody) {
            return Step::Continue;
        }
        if let Some(backend) = self.state.backend.as_mut() {
            backend.body = Some(body.bytes.clone());
        }
        self.held_body = Some(body);
        let verdict = self.run(Phase::ResponseBody, host);
        self.conclude(Phase::ResponseBody, verdict)
    }

    /// The stream has ended (whatever happened to it): the completion phase.
    pub fn on_complete(&mut self, host: &mut dyn Host) {
        if self.needs(Phase::Complete) {
            let verdict = self.run(Phase::Complete, host);
            let _ = self.conclude(Phase::Complete, verdict);
        }
    }
}

/// Adds `token` to the response's `Vary` unless it is already listed (or `*`).
fn merge_vary(response: &mut Response, token: &str) {
    let existing: Vec<String> = response
        .headers
        .get_all("vary")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if existing
        .iter()
        .any(|t| t == "*" || t.eq_ignore_ascii_case(token))
    {
        return;
    }
    let mut tokens = existing;
    tokens.push(token.to_string());
    response.headers.set("vary", &tokens.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryHost;
    use crate::http::HeaderMap;
    use serde_json::{json, Value};

    fn registry(config: Value) -> Rc<Registry> {
        match crate::load(config.to_string().as_bytes(), &crate::config::no_env) {
            Ok(loaded) => Rc::new(loaded.registry),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn block(ip: &str) -> Value {
        json!({"policy": "ip-blocklist", "config": {"ipList": [ip], "responseCode": 403}})
    }

    fn config() -> Value {
        json!({
            "apis": [
                {"organizationId": "Org", "apiId": "echo", "version": "1.0", "publicAPI": true,
                 "endpoint": "http://backend.local:8080/svc/", "cluster": "echo_cluster"},
                {"organizationId": "Org", "apiId": "private", "version": "2.0",
                 "endpoint": "https://secure.local/base", "cluster": "secure",
                 "apiPolicies": [{"policy": "cors", "config": {"allowOrigin": ["https://app.test"], "allowMethods": ["GET"]}}]},
                {"organizationId": "Org", "apiId": "keep", "version": "1", "endpoint": "http://k.local",
                 "disableKeysStrip": true},
                {"organizationId": "Org", "apiId": "xml", "version": "1", "endpoint": "http://x.local",
                 "endpointContentType": "xml"}
            ],
            "clients": [
                {"organizationId": "Org", "clientId": "app", "version": "1.0", "apiKey": "key-12345678",
                 "contracts": [
                    {"apiOrgId": "Org", "apiId": "private", "apiVersion": "2.0", "plan": "Gold"},
                    {"apiOrgId": "Org", "apiId": "keep", "apiVersion": "1", "policies": []},
                    {"apiOrgId": "Org", "apiId": "xml", "apiVersion": "1", "policies": [block("10.0.0.0/8")]}
                 ]},
                {"organizationId": "Org", "clientId": "other", "version": "1.0", "apiKey": "other-key",
                 "contracts": []}
            ],
            "plans": [{"planId": "Gold", "policies": [block("192.0.2.66")]}]
        })
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut pairs = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "gw.local".to_string()),
        ];
        pairs.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Request {
            method: method.to_string(),
            headers: HeaderMap::from_pairs(pairs),
        }
    }

    /// Runs the request phase; `req` becomes the request as policies left it.
    fn run(config: Value, req: &mut Request, from: &str) -> (Exchange, Step) {
        let mut ex = Exchange::new(registry(config));
        let step =
            ex.on_request_headers(req.headers.clone(), &mut MemoryHost::with_downstream(from));
        *req = ex.request().clone();
        (ex, step)
    }

    fn respond(ex: &mut Exchange, status: u16, headers: &[(&str, &str)]) -> Response {
        let mut pairs = vec![(":status".to_string(), status.to_string())];
        pairs.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let headers = if ex.reads_response_headers() {
            HeaderMap::from_pairs(pairs)
        } else {
            HeaderMap::new()
        };
        ex.on_response_headers(headers, &mut MemoryHost::default());
        ex.response().clone()
    }

    fn reply(step: Step) -> LocalReply {
        match step {
            Step::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn body(r: &LocalReply) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn api_paths_parse_with_and_without_version_headers() {
        let p = parse_api_path("/o/a/1.0/x/y", None, None).unwrap();
        assert_eq!(
            (p.org, p.api, p.version, p.resource),
            ("o", "a", "1.0", "/x/y")
        );
        let p = parse_api_path("/o/a/x", Some("2.0"), None).unwrap();
        assert_eq!((p.version, p.resource), ("2.0", "/x"));
        let p = parse_api_path("/o/a", None, Some("application/apiman.3.1+json")).unwrap();
        assert_eq!((p.version, p.resource), ("3.1", ""));
        assert_eq!(parse_api_path("/o/a/1/", None, None).unwrap().resource, "/");
        assert!(parse_api_path("/o/a", None, None).is_none());
        assert!(parse_api_path("/", None, None).is_none());
    }

    #[test]
    fn upstream_paths_join_with_one_slash() {
        assert_eq!(upstream_path("/svc/", "/a"), "/svc/a");
        assert_eq!(upstream_path("/svc", "/a"), "/svc/a");
        assert_eq!(upstream_path("/svc/", ""), "/svc/");
        assert_eq!(upstream_path("", ""), "/");
        assert_eq!(upstream_path("", "/a/"), "/a/");
    }

    #[test]
    fn an_unknown_api_is_404_api_not_found() {
        let (_, step) = run(
            config(),
            &mut request("GET", "/Org/nope/1.0/x", &[]),
            "1.2.3.4:1",
        );
        let r = reply(step);
        assert_eq!(r.status, 404);
        assert_eq!(r.header("x-gateway-error"), Some("API not found."));
        assert_eq!(
            body(&r),
            json!({"responseCode": 404, "message": "API not found."})
        );
    }

    #[test]
    fn a_short_path_is_404_api_not_found() {
        let (_, step) = run(
            config(),
            &mut request("GET", "/favicon.ico", &[]),
            "1.2.3.4:1",
        );
        assert_eq!(reply(step).status, 404);
    }

    #[test]
    fn a_private_api_without_key_is_403_api_not_public() {
        let (_, step) = run(
            config(),
            &mut request("GET", "/Org/private/2.0/x", &[]),
            "1.2.3.4:1",
        );
        let r = reply(step);
        assert_eq!(
            (r.status, r.header("x-gateway-error")),
            (403, Some("API not public."))
        );
    }

    #[test]
    fn an_unknown_key_is_404_and_the_key_is_masked() {
        let (_, step) = run(
            config(),
            &mut request(
                "GET",
                "/Org/private/2.0/x",
                &[("x-api-key", "wrong-key-abcdef")],
            ),
            "1.2.3.4:1",
        );
        let r = reply(step);
        assert_eq!(r.status, 404);
        assert_eq!(
            r.header("x-gateway-error"),
            Some("No client found for API Key wron****")
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("wrong-key-abcdef"));
    }

    #[test]
    fn a_key_without_a_contract_is_404_no_contract() {
        let (_, step) = run(
            config(),
            &mut request("GET", "/Org/private/2.0/x", &[("x-api-key", "other-key")]),
            "1.2.3.4:1",
        );
        let r = reply(step);
        assert_eq!(r.status, 404);
        assert_eq!(
            r.header("x-gateway-error"),
            Some("No contract found between Client other and API private.")
        );
    }

    #[test]
    fn a_public_api_routes_to_its_endpoint_and_cluster() {
        let mut req = request("GET", "/Org/echo/1.0/a/b?q=1", &[]);
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
        assert_eq!(req.headers.get(":path"), Some("/svc/a/b?q=1"));
        assert_eq!(req.headers.get(":authority"), Some("backend.local:8080"));
        assert_eq!(req.headers.get("x-tollgate-cluster"), Some("echo_cluster"));
    }

    #[test]
    fn a_client_supplied_cluster_header_is_overwritten() {
        let mut req = request("GET", "/Org/echo/1.0/", &[("x-tollgate-cluster", "admin")]);
        run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(
            req.headers
                .get_all("x-tollgate-cluster")
                .collect::<Vec<_>>(),
            vec!["echo_cluster"]
        );
    }

    #[test]
    fn the_key_header_and_query_parameter_are_stripped() {
        let mut req = request(
            "GET",
            "/Org/private/2.0/x?a=1&apikey=key-12345678&b=2",
            &[("x-api-key", "key-12345678")],
        );
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
        assert_eq!(req.headers.get("x-api-key"), None);
        assert_eq!(req.headers.get(":path"), Some("/base/x?a=1&b=2"));
    }

    #[test]
    fn the_key_may_come_from_the_query_alone() {
        let mut req = request("GET", "/Org/private/2.0/x?apikey=key-12345678", &[]);
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
        assert_eq!(req.headers.get(":path"), Some("/base/x"));
    }

    #[test]
    fn the_header_key_wins_over_the_query_key() {
        let mut req = request(
            "GET",
            "/Org/private/2.0/x?apikey=wrong",
            &[("x-api-key", "key-12345678")],
        );
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
    }

    #[test]
    fn a_blank_key_header_falls_back_to_the_query() {
        let mut req = request(
            "GET",
            "/Org/private/2.0/x?apikey=key-12345678",
            &[("x-api-key", " ")],
        );
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
    }

    #[test]
    fn keys_are_kept_when_the_api_disables_stripping() {
        let mut req = request(
            "GET",
            "/Org/keep/1/x?apikey=key-12345678",
            &[("x-api-key", "key-12345678")],
        );
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
        assert_eq!(req.headers.get("x-api-key"), Some("key-12345678"));
        assert_eq!(req.headers.get(":path"), Some("/x?apikey=key-12345678"));
    }

    #[test]
    fn a_tollgate_plan_policy_runs_for_the_contract() {
        let mut req = request(
            "GET",
            "/Org/private/2.0/x",
            &[("x-api-key", "key-12345678")],
        );
        let (_, step) = run(config(), &mut req, "192.0.2.66:1");
        let r = reply(step);
        assert_eq!(r.status, 403);
        assert_eq!(r.header("x-policy-failure-code"), Some("10002"));
    }

    #[test]
    fn the_version_may_come_from_x_api_version_which_is_not_forwarded() {
        let mut req = request("GET", "/Org/echo/a", &[("x-api-version", "1.0")]);
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
        assert_eq!(req.headers.get(":path"), Some("/svc/a"));
        assert_eq!(req.headers.get("x-api-version"), None);
    }

    #[test]
    fn the_version_may_come_from_an_apiman_accept_header() {
        let mut req = request(
            "GET",
            "/Org/echo/a",
            &[("accept", "application/apiman.1.0+json")],
        );
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
        assert_eq!(req.headers.get("accept"), Some("application/json"));
    }

    #[test]
    fn xml_apis_answer_failures_in_xml() {
        let mut req = request("GET", "/Org/xml/1/x", &[("x-api-key", "key-12345678")]);
        let (_, step) = run(config(), &mut req, "10.1.1.1:1");
        let r = reply(step);
        assert_eq!(r.header("content-type"), Some("application/xml"));
        assert!(String::from_utf8_lossy(&r.body).starts_with("<?xml"));
    }

    #[test]
    fn a_keyless_preflight_to_a_private_api_is_answered_by_its_cors_policy() {
        let mut req = request(
            "OPTIONS",
            "/Org/private/2.0/x",
            &[
                ("origin", "https://app.test"),
                ("access-control-request-method", "GET"),
            ],
        );
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        let r = reply(step);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.test")
        );
    }

    #[test]
    fn a_keyless_non_preflight_options_to_a_private_api_is_still_403() {
        let mut req = request(
            "OPTIONS",
            "/Org/private/2.0/x",
            &[("origin", "https://app.test")],
        );
        let (_, step) = run(config(), &mut req, "1.2.3.4:1");
        assert_eq!(reply(step).status, 403);
    }

    #[test]
    fn cors_headers_decorate_later_policy_failures() {
        let mut c = config();
        c["apis"][0]["apiPolicies"] = json!([
            {"policy": "cors", "config": {"allowOrigin": ["*"]}},
            block("9.9.9.9")
        ]);
        let mut req = request("GET", "/Org/echo/1.0/x", &[("origin", "https://a.test")]);
        let (_, step) = run(c, &mut req, "9.9.9.9:1");
        let r = reply(step);
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://a.test")
        );
        assert_eq!(r.header("vary"), Some("Origin"));
    }

    #[test]
    fn response_policies_run_in_reverse_order() {
        let mut c = config();
        let add = |v: &str| {
            json!({"policy": "simple-header", "config": {"addHeaders": [
            {"headerName": "X-Order", "headerValue": v, "applyTo": "Response", "overwrite": true}]}})
        };
        c["apis"][0]["apiPolicies"] = json!([add("first"), add("last")]);
        let mut req = request("GET", "/Org/echo/1.0/x", &[]);
        let (mut ex, _) = run(c, &mut req, "1.2.3.4:1");
        assert!(ex.needs(Phase::ResponseHeaders));
        let resp = respond(&mut ex, 200, &[]);
        // The API's first policy runs last on the response, so its value wins.
        assert_eq!(resp.headers.get("x-order"), Some("first"));
    }

    #[test]
    fn a_chain_without_response_work_skips_the_response_phase() {
        let mut req = request("GET", "/Org/echo/1.0/x", &[]);
        let (ex, _) = run(config(), &mut req, "1.2.3.4:1");
        assert!(!ex.needs(Phase::ResponseHeaders));
        assert!(!ex.needs(Phase::RequestBody));
    }

    #[test]
    fn decorations_alone_need_no_read_of_the_response() {
        let mut c = config();
        c["apis"][0]["apiPolicies"] = json!([{"policy": "cors", "config": {"allowOrigin": ["*"]}}]);
        let mut req = request("GET", "/Org/echo/1.0/x", &[("origin", "https://a.test")]);
        let (mut ex, _) = run(c, &mut req, "1.2.3.4:1");
        assert!(ex.needs(Phase::ResponseHeaders));
        assert!(!ex.reads_response_headers());
        respond(&mut ex, 200, &[]);
        assert_eq!(
            ex.take_response_ops(),
            vec![
                crate::http::HeaderOp::Add("vary".into(), "Origin".into()),
                crate::http::HeaderOp::Set(
                    "access-control-allow-origin".into(),
                    "https://a.test".into()
                ),
            ]
        );
    }

    #[test]
    fn vary_from_cors_merges_with_the_backends() {
        let mut c = config();
        c["apis"][0]["apiPolicies"] = json!([
            {"policy": "cors", "config": {"allowOrigin": ["*"]}},
            {"policy": "http-security", "config": {"frameOptions": "DENY"}}
        ]);
        let mut req = request("GET", "/Org/echo/1.0/x", &[("origin", "https://a.test")]);
        let (mut ex, _) = run(c, &mut req, "1.2.3.4:1");
        let resp = respond(&mut ex, 200, &[("vary", "Accept-Encoding")]);
        assert_eq!(resp.headers.get("vary"), Some("Accept-Encoding, Origin"));
        assert_eq!(
            resp.headers.get("access-control-allow-origin"),
            Some("https://a.test")
        );
    }

    #[test]
    fn no_host_call_is_made_for_a_request_that_needs_none() {
        let mut ex = Exchange::new(registry(config()));
        let mut host = MemoryHost::default();
        ex.on_request_headers(request("GET", "/Org/echo/1.0/x", &[]).headers, &mut host);
        assert_eq!(host.calls, crate::host::HostCalls::default());
    }

    #[test]
    fn a_configured_client_address_header_replaces_the_property_lookup() {
        let mut c = config();
        c["gateway"] = json!({"clientAddressHeader": "X-Tollgate-Client-Address"});
        c["apis"][0]["apiPolicies"] = json!([block("203.0.113.7")]);
        let mut ex = Exchange::new(registry(c));
        let mut host = MemoryHost::with_downstream("10.0.0.1:1");
        let req = request(
            "GET",
            "/Org/echo/1.0/x",
            &[("x-tollgate-client-address", "203.0.113.7")],
        );
        let step = ex.on_request_headers(req.headers.clone(), &mut host);
        assert_eq!(reply(step).status, 403);
        assert_eq!(host.calls.downstream_address, 0);
        assert_eq!(ex.request().headers.get("x-tollgate-client-address"), None);
    }

    fn cached(before: Value, after: Value) -> Value {
        let mut c = config();
        let cache = json!({"policy": "caching-resources", "config": {"ttl": 60,
            "cachingResourcesSettingsEntries": [{"httpMethod": "GET", "pathPattern": "*", "statusCode": "200"}]}});
        let mut policies = before.as_array().cloned().unwrap_or_default();
        policies.push(cache);
        policies.extend(after.as_array().cloned().unwrap_or_default());
        c["apis"][0]["apiPolicies"] = Value::Array(policies);
        c
    }

    /// One request through a shared host: the backend (if reached) answers 200 with `x-b: 1`
    /// and `{"n":1}`. Returns the exchange's first step and what the client got.
    fn through(
        registry: &Rc<Registry>,
        host: &mut MemoryHost,
        headers: &[(&str, &str)],
        from: &str,
    ) -> (Step, Response, Option<Vec<u8>>) {
        let mut ex = Exchange::new(registry.clone());
        host.downstream = Some(from.to_string());
        let step =
            ex.on_request_headers(request("GET", "/Org/echo/1.0/items", headers).headers, host);
        if step != Step::Continue {
            return (step, Response::default(), None);
        }
        let response = HeaderMap::from_pairs(vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json".into()),
            ("x-b".into(), "1".into()),
        ]);
        ex.on_response_headers(response, host);
        let body = ex
            .needs(Phase::ResponseBody)
            .then(|| {
                ex.on_response_body(Body::new(b"{\"n\":1}".to_vec()), host);
                ex.take_changed_body()
            })
            .flatten();
        (step, ex.response().clone(), body)
    }

    #[test]
    fn a_cache_hit_is_answered_without_the_backend_through_the_response_policies() {
        let security = json!([{"policy": "http-security", "config": {"frameOptions": "DENY"}}]);
        let registry = registry(cached(security, json!([])));
        let mut host = MemoryHost::default();
        let (step, first, _) = through(&registry, &mut host, &[], "1.2.3.4:1");
        assert_eq!(step, Step::Continue);
        assert_eq!(first.headers.get("x-frame-options"), Some("DENY"));
        let (step, _, _) = through(&registry, &mut host, &[], "1.2.3.4:1");
        let hit = reply(step);
        assert_eq!(hit.status, 200);
        assert_eq!(hit.body, b"{\"n\":1}");
        assert_eq!(hit.header("x-b"), Some("1"));
        assert_eq!(hit.header("cache-control"), Some("max-age=60"));
        assert_eq!(hit.header("x-frame-options"), Some("DENY"));
    }

    #[test]
    fn a_cache_hit_still_passes_the_policies_after_the_cache() {
        let registry = registry(cached(json!([]), json!([block("9.9.9.9")])));
        let mut host = MemoryHost::default();
        through(&registry, &mut host, &[], "1.2.3.4:1");
        let (step, _, _) = through(&registry, &mut host, &[], "9.9.9.9:1");
        let r = reply(step);
        assert_eq!(r.status, 403);
        assert_eq!(r.header("x-policy-failure-code"), Some("10002"));
    }

    #[test]
    fn the_cache_stores_the_backends_response_not_what_later_policies_made_of_it() {
        let add = json!([{"policy": "simple-header", "config": {"addHeaders": [
            {"headerName": "X-Added", "headerValue": "v", "applyTo": "Response"}]}}]);
        let registry = registry(cached(json!([]), add));
        let mut host = MemoryHost::default();
        let (_, first, _) = through(&registry, &mut host, &[], "1.2.3.4:1");
        assert_eq!(first.headers.get("x-added"), Some("v"));
        // A hit passes every policy again, so what they add is there exactly once.
        let (step, _, _) = through(&registry, &mut host, &[], "1.2.3.4:1");
        let hit = reply(step);
        let added: Vec<&str> = hit
            .headers
            .iter()
            .filter(|(k, _)| k == "x-added")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(added, ["v"]);
    }

    #[test]
    fn a_cache_hit_carries_the_cors_headers_of_its_own_request() {
        let cors = json!([{"policy": "cors", "config": {"allowOrigin": ["*"]}}]);
        let registry = registry(cached(cors, json!([])));
        let mut host = MemoryHost::default();
        through(
            &registry,
            &mut host,
            &[("origin", "https://a.test")],
            "1.2.3.4:1",
        );
        let (step, _, _) = through(
            &registry,
            &mut host,
            &[("origin", "https://b.test")],
            "1.2.3.4:1",
        );
        let hit = reply(step);
        assert_eq!(
            hit.header("access-control-allow-origin"),
            Some("https://b.test")
        );
    }

    #[test]
    fn a_response_a_body_policy_changed_is_stored_as_the_backend_sent_it() {
        let jsonp = json!([{"policy": "jsonp", "config": {}}]);
        let registry = registry(cached(jsonp, json!([])));
        let mut host = MemoryHost::default();
        let mut ex = Exchange::new(registry.clone());
        ex.on_request_headers(
            request("GET", "/Org/echo/1.0/items?callback=cb", &[]).headers,
            &mut host,
        );
        let response = HeaderMap::from_pairs(vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json".into()),
        ]);
        ex.on_response_headers(response, &mut host);
        ex.on_response_body(Body::new(b"[1]".to_vec()), &mut host);
        assert_eq!(ex.take_changed_body(), Some(b"/**/cb([1])".to_vec()));
        // The same request again: served from the cache and wrapped once, by JSONP.
        let mut ex = Exchange::new(registry.clone());
        let step = ex.on_request_headers(
            request("GET", "/Org/echo/1.0/items?callback=cb", &[]).headers,
            &mut host,
        );
        let hit = reply(step);
        assert_eq!(hit.body, b"/**/cb([1])");
        assert_eq!(hit.header("content-type"), Some("application/javascript"));
    }

    /// Runs a public request, then hands the exchange a response Envoy or the backend made.
    fn upstream_answer(status: u16, headers: &[(&str, &str)], details: &str) -> (Step, MemoryHost) {
        let mut req = request("GET", "/Org/echo/1.0/x", &[]);
        let (mut ex, _) = run(config(), &mut req, "1.2.3.4:1");
        let mut pairs = vec![(":status".to_string(), status.to_string())];
        pairs.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut host = MemoryHost::default();
        host.code_details = Some(details.to_string());
        let step = ex.on_response_headers(HeaderMap::from_pairs(pairs), &mut host);
        (step, host)
    }

    #[test]
    fn an_envoy_timeout_becomes_the_gateways_504_json_error() {
        let (step, _) = upstream_answer(504, &[("content-type", "text/plain")], "response_timeout");
        let r = reply(step);
        assert_eq!(r.status, 504);
        assert_eq!(r.header("x-gateway-error"), Some("API backend timed out."));
        assert_eq!(
            body(&r),
            json!({"responseCode": 504, "message": "API backend timed out."})
        );
    }

    #[test]
    fn an_unknown_cluster_becomes_the_gateways_503() {
        let (step, _) = upstream_answer(503, &[], "cluster_not_found");
        assert_eq!(
            reply(step).header("x-gateway-error"),
            Some("API backend cluster not found.")
        );
    }

    #[test]
    fn an_upstream_error_envoy_already_mapped_is_left_alone() {
        let (step, host) = upstream_answer(
            503,
            &[("x-gateway-error", "API backend unavailable.")],
            "upstream_reset_before_response_started{connection_failure}",
        );
        assert_eq!(step, Step::Continue);
        assert_eq!(host.calls.code_details, 0);
    }

    #[test]
    fn a_backends_own_5xx_is_passed_on() {
        let (step, _) = upstream_answer(503, &[("retry-after", "5")], "via_upstream");
        assert_eq!(step, Step::Continue);
    }

    #[test]
    fn a_successful_response_asks_nothing_about_its_cause() {
        let (step, host) = upstream_answer(200, &[], "via_upstream");
        assert_eq!(step, Step::Continue);
        assert_eq!(host.calls.code_details, 0);
    }

    #[test]
    fn upstream_basic_credentials_are_sent_to_the_backend() {
        let mut c = config();
        c["apis"][0]["endpointProperties"] = json!({"authorization.type": "basic",
            "basic-auth.username": "u", "basic-auth.password": "p"});
        let mut req = request(
            "GET",
            "/Org/echo/1.0/x",
            &[("authorization", "Bearer client")],
        );
        run(c, &mut req, "1.2.3.4:1");
        assert_eq!(req.headers.get("authorization"), Some("Basic dTpw"));
    }

    #[test]
    fn a_refusal_is_decided_by_the_policy_and_code_that_refused() {
        let mut req = request(
            "GET",
            "/Org/private/2.0/x",
            &[("x-api-key", "key-12345678")],
        );
        let (ex, _) = run(config(), &mut req, "192.0.2.66:1");
        let d = ex.decision();
        assert_eq!(
            d.outcome,
            Outcome::Refused {
                policy: "ip-blocklist",
                code: 10002
            }
        );
        assert_eq!((d.client, d.plan), (Some("app"), Some("Gold")));
        assert_eq!(d.api, Some(("Org", "private", "2.0")));
    }

    #[test]
    fn a_decision_never_holds_the_key_in_clear() {
        let mut req = request("GET", "/Org/private/2.0/x?apikey=key-12345678", &[]);
        let (ex, _) = run(config(), &mut req, "1.2.3.4:1");
        let json = ex.decision().to_json();
        assert!(json.contains("\"key\":\"key****\""), "{json}");
        assert!(!json.contains("key-12345678"), "{json}");
    }

    #[test]
    fn gateway_errors_are_decided_by_their_kind() {
        let (ex, _) = run(
            config(),
            &mut request("GET", "/Org/private/2.0/x", &[]),
            "1.2.3.4:1",
        );
        assert_eq!(
            ex.decision().outcome,
            Outcome::Error {
                kind: "api_not_public"
            }
        );
    }
}
