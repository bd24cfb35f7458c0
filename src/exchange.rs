//! One request/response exchange through the gateway, host-independent: Apiman's request
//! resolution (API, key, client, contract), the policy chain per phase, and routing to the
//! API's backend. The proxy-wasm adapter drives it; so do the unit tests and the native harness.

use std::rc::Rc;

use crate::chain::{Chain, Cursor, Phase, Subject};
use crate::errors::{self, GatewayError};
use crate::host::Host;
use crate::http::{split_query, LocalReply, Request, Response};
use crate::policy::{Body, CallOut, CallResponse, Context, Phases, RequestState, Verdict};
use crate::registry::{Api, Registry};

/// What the host should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Carry on (headers already modified in the view passed in).
    Continue,
    /// Answer with this response; the backend is not called.
    Reply(LocalReply),
    /// Dispatch this call and hand its answer to `on_call_response`.
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

/// Removes every `name=...` query parameter (name compared case-insensitively, as Apiman's
/// query map does), keeping the rest byte for byte.
fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            !pair.is_empty()
                && !pair
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .eq_ignore_ascii_case(name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find(|pair| {
            pair.split('=')
                .next()
                .unwrap_or("")
                .eq_ignore_ascii_case(name)
        })
        .map(|pair| crate::http::percent_decode(pair.split_once('=').map_or("", |(_, v)| v)))
}

pub struct Exchange {
    registry: Rc<Registry>,
    api: Option<usize>,
    client: Option<usize>,
    chain: Chain,
    cursor: Cursor,
    state: RequestState,
    /// The request path below the API as sent (empty when there is none), for routing.
    resource: String,
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
            resource: String::new(),
            replied: false,
        }
    }

    pub fn registry(&self) -> &Rc<Registry> {
        &self.registry
    }

    fn reply(&mut self, mut reply: LocalReply) -> Step {
        reply.decorate(&self.state.response_headers);
        self.replied = true;
        Step::Reply(reply)
    }

    fn gateway_error(&mut self, error: GatewayError, xml: bool) -> Step {
        self.reply(error.reply(xml))
    }

    /// Resolves the request and runs the request chain. Header changes are made in `request`.
    pub fn on_request_headers(&mut self, request: &mut Request, host: &mut dyn Host) -> Step {
        let registry = self.registry.clone();
        let settings = &registry.settings;
        let full_path = request.headers.get(":path").unwrap_or("/").to_string();
        let (path, query) = split_query(&full_path);
        let version_header = request.headers.get("x-api-version").map(str::to_string);
        let accept = request.headers.get("accept").map(str::to_string);
        let Some(parsed) = parse_api_path(path, version_header.as_deref(), accept.as_deref())
        else {
            return self.gateway_error(GatewayError::ApiNotFound, false);
        };
        let Some((api_index, api)) = registry.api(parsed.org, parsed.api, parsed.version) else {
            return self.gateway_error(GatewayError::ApiNotFound, false);
        };
        self.api = Some(api_index);

        // The key: header first, then the query parameter; blank counts as absent.
        let key = request
            .headers
            .get(&settings.api_key_header)
            .filter(|k| !k.trim().is_empty())
            .map(str::to_string)
            .or_else(|| {
                query
                    .and_then(|q| query_value(q, &settings.api_key_query_param))
                    .filter(|k| !k.trim().is_empty())
            });
        let mut upstream_query = query.map(str::to_string);
        if api.strip_keys {
            request.headers.remove(&settings.api_key_header);
            upstream_query =
                upstream_query.and_then(|q| strip_query_param(&q, &settings.api_key_query_param));
        }
        if parsed.version_from_header {
            // Apiman drops X-API-Version and turns its versioned Accept into a plain one.
            request.headers.remove("x-api-version");
            if let Some(a) = accept
                .as_deref()
                .filter(|a| a.starts_with("application/apiman."))
            {
                if a.contains("+json") {
                    request.headers.set("accept", "application/json");
                } else if a.contains("+xml") {
                    request.headers.set("accept", "text/xml");
                }
            }
        }
        self.state.destination = if parsed.resource.is_empty() {
            "/".to_string()
        } else {
            parsed.resource.to_string()
        };
        self.resource = parsed.resource.to_string();
        self.state.query = upstream_query;

        let chain = match &key {
            Some(key) => {
                let Some((client_index, client)) = registry.client_by_key(key) else {
                    return self.gateway_error(
                        GatewayError::NoClientForKey(errors::mask_key(key)),
                        api.xml,
                    );
                };
                let Some(contract) = client.contract(api_index) else {
                    return self.gateway_error(
                        GatewayError::NoContract {
                            client_id: client.client_id.clone(),
                            api_id: api.api_id.clone(),
                        },
                        api.xml,
                    );
                };
                self.client = Some(client_index);
                contract.chain.clone()
            }
            None if api.public => api.chain.clone(),
            None => {
                // Browsers never send the key on a CORS preflight: let the API's own CORS
                // policy answer it rather than failing every cross-origin call with a 403.
                let preflight = request.method.eq_ignore_ascii_case("OPTIONS")
                    && request.headers.contains("origin")
                    && request.headers.contains("access-control-request-method");
                if preflight && !api.preflight_chain.is_empty() {
                    let chain = api.preflight_chain.clone();
                    return match self.run(&chain, Phase::Request, host, Subject::Request(request)) {
                        Verdict::Continue => {
                            self.gateway_error(GatewayError::ApiNotPublic, api.xml)
                        }
                        other => self.conclude_request(other, request),
                    };
                }
                return self.gateway_error(GatewayError::ApiNotPublic, api.xml);
            }
        };
        self.state.api_key = key;
        self.chain = chain.clone();
        let verdict = self.run(&chain, Phase::Request, host, Subject::Request(request));
        self.conclude_request(verdict, request)
    }

    /// Hands a call-out's answer to the policy waiting for it and finishes its phase. For the
    /// request phase, `subject` is the request again (its headers may still be changed).
    pub fn on_call_response(
        &mut self,
        response: &CallResponse,
        request: &mut Request,
        host: &mut dyn Host,
    ) -> Step {
        let Some(api_index) = self.api else {
            return Step::Continue;
        };
        let registry = self.registry.clone();
        let Some(api) = registry.api_at(api_index) else {
            return Step::Continue;
        };
        let chain = self.chain.clone();
        let client = self.client.and_then(|i| registry.clients().get(i));
        let mut cx = Context {
            api,
            client,
            settings: &registry.settings,
            state: &mut self.state,
            host,
            position: 0,
        };
        let verdict = self
            .cursor
            .resume(&chain, response, &mut cx, Subject::Request(request));
        self.conclude_request(verdict, request)
    }

    /// Turns the request phase's verdict into a step; on success, routes to the backend.
    fn conclude_request(&mut self, verdict: Verdict, request: &mut Request) -> Step {
        match verdict {
            Verdict::Continue => {
                self.route(request);
                Step::Continue
            }
            Verdict::CallOut(call) => Step::CallOut(call),
            Verdict::Fail(failure) => {
                let xml = self.api().is_some_and(|a| a.xml);
                self.reply(errors::policy_failure_reply(&failure, xml))
            }
            Verdict::Reply(reply) => self.reply(reply),
        }
    }

    fn api(&self) -> Option<&Api> {
        self.api.and_then(|i| self.registry.api_at(i))
    }

    /// Points the request at the API's backend: path, authority and the cluster header.
    fn route(&mut self, request: &mut Request) {
        let registry = self.registry.clone();
        let Some(api) = self.api.and_then(|i| registry.api_at(i)) else {
            return;
        };
        let mut path = upstream_path(&api.endpoint.path, &self.resource);
        if let Some(q) = &self.state.query {
            path.push('?');
            path.push_str(q);
        }
        request.headers.set(":path", &path);
        request.headers.set(":authority", &api.endpoint.authority);
        request
            .headers
            .set(&registry.settings.cluster_header, &api.cluster);
        if let Some(auth) = &api.upstream_authorization {
            request.headers.set("authorization", auth);
        }
    }

    fn run(
        &mut self,
        chain: &Chain,
        phase: Phase,
        host: &mut dyn Host,
        subject: Subject,
    ) -> Verdict {
        let registry = self.registry.clone();
        let Some(api) = self.api.and_then(|i| registry.api_at(i)) else {
            return Verdict::Continue;
        };
        let client = self.client.and_then(|i| registry.clients().get(i));
        let mut cx = Context {
            api,
            client,
            settings: &registry.settings,
            state: &mut self.state,
            host,
            position: 0,
        };
        self.cursor.run(chain, phase, &mut cx, subject)
    }

    /// Whether the request body must be buffered and passed to `on_request_body`.
    pub fn needs_request_body(&self) -> bool {
        !self.replied && self.chain.needs(Phases::REQUEST_BODY)
    }

    /// Whether `on_response_headers` has anything to do (else the host need not read them).
    pub fn needs_response_headers(&self) -> bool {
        !self.replied
            && self.api.is_some()
            && (self.chain.needs(Phases::RESPONSE) || !self.state.response_headers.is_empty())
    }

    /// Whether the response body must be buffered and passed to `on_response_body`.
    pub fn needs_response_body(&self) -> bool {
        !self.replied && self.chain.needs(Phases::RESPONSE_BODY)
    }

    /// Whether a call-out is pending.
    pub fn is_waiting(&self) -> bool {
        self.cursor.is_waiting()
    }

    pub fn on_request_body(&mut self, body: &mut Body, host: &mut dyn Host) -> Step {
        if !self.needs_request_body() {
            return Step::Continue;
        }
        let chain = self.chain.clone();
        match self.run(&chain, Phase::RequestBody, host, Subject::Body(body)) {
            Verdict::Continue => Step::Continue,
            Verdict::CallOut(call) => Step::CallOut(call),
            Verdict::Fail(failure) => {
                let xml = self.api().is_some_and(|a| a.xml);
                self.reply(errors::policy_failure_reply(&failure, xml))
            }
            Verdict::Reply(reply) => self.reply(reply),
        }
    }

    /// Adds the headers policies asked for, then runs the response chain in reverse.
    pub fn on_response_headers(&mut self, response: &mut Response, host: &mut dyn Host) -> Step {
        if !self.needs_response_headers() {
            return Step::Continue;
        }
        for (name, value) in &self.state.response_headers {
            if name.eq_ignore_ascii_case("vary") {
                merge_vary(response, value);
            } else {
                response.headers.set(name, value);
            }
        }
        let chain = self.chain.clone();
        match self.run(&chain, Phase::Response, host, Subject::Response(response)) {
            Verdict::Continue => Step::Continue,
            Verdict::CallOut(call) => Step::CallOut(call),
            Verdict::Fail(failure) => {
                let xml = self.api().is_some_and(|a| a.xml);
                self.reply(errors::policy_failure_reply(&failure, xml))
            }
            Verdict::Reply(reply) => self.reply(reply),
        }
    }

    pub fn on_response_body(&mut self, body: &mut Body, host: &mut dyn Host) -> Step {
        if !self.needs_response_body() {
            return Step::Continue;
        }
        let chain = self.chain.clone();
        match self.run(&chain, Phase::ResponseBody, host, Subject::Body(body)) {
            Verdict::Continue | Verdict::CallOut(_) => Step::Continue,
            Verdict::Fail(failure) => {
                let xml = self.api().is_some_and(|a| a.xml);
                self.reply(errors::policy_failure_reply(&failure, xml))
            }
            Verdict::Reply(reply) => self.reply(reply),
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
