//! One HTTP stream through the filter, the way Envoy 1.40's filter manager drives it with the
//! listener, route and error mapping of `envoy/gateway.yaml`. Behaviour marked "verified" was
//! observed on Envoy 1.40 with a probe filter that logged every callback and map.

use std::net::IpAddr;
use std::sync::Arc;

use super::abi::{self, LocalReplyRequest, PendingCall, StreamState};
use super::headers::{is_connection_header, Headers};
use super::{guest, set_effective, Guest, HostSettings, LogLine, PropertyValue, StubAnswer};
use crate::time;

/// A request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInput {
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Client headers (names any case; pseudo-headers and `host` are ignored).
    pub headers: Vec<(String, String)>,
    /// The body as it arrived, chunk by chunk.
    pub body: Vec<Vec<u8>>,
    pub trailers: Vec<(String, String)>,
    /// The downstream peer, `ip:port`.
    pub source: String,
    /// Property overrides, e.g. `connection.mtls`.
    pub properties: Vec<(String, PropertyValue)>,
}

impl StreamInput {
    pub fn new(method: &str, path: &str) -> StreamInput {
        StreamInput {
            method: method.to_string(),
            path: path.to_string(),
            authority: "127.0.0.1:10000".to_string(),
            scheme: "http".to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            source: "127.0.0.1:40000".to_string(),
            properties: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> StreamInput {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> StreamInput {
        self.body.push(body.to_vec());
        self
    }
}

/// What the backend received: the request as the router sent it upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub cluster: String,
    /// Including `:method`, `:path`, `:authority`, `:scheme`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn method(&self) -> &str {
        self.header(":method").unwrap_or("")
    }

    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or("")
    }

    pub fn authority(&self) -> &str {
        self.header(":authority").unwrap_or("")
    }
}

/// The backend's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Respond(BackendResponse),
    /// The backend closes the connection without answering.
    Reset,
}

/// Who produced the response the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Backend,
    /// The filter's local reply.
    Filter,
    /// Envoy itself (unknown cluster, backend unavailable).
    Envoy,
    /// No response: the stream stalled or was reset.
    None,
}

/// A call-out the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether a stub answered it (else it got the harness's 503).
    pub stubbed: bool,
}

/// The outcome of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamResult {
    /// 0 when the client got no response.
    pub status: u16,
    /// As the client got them (no pseudo-headers).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub origin: Origin,
    /// The details the filter gave with its local reply.
    pub reply_details: Option<String>,
    /// What the backend received, if the request got there.
    pub upstream: Option<UpstreamRequest>,
    /// Why there is no response, when there is none.
    pub stalled: Option<String>,
    /// The stream was reset after the response started.
    pub reset: bool,
    pub callouts: Vec<CallRecord>,
    /// What the filter logged during this stream.
    pub logs: Vec<LogLine>,
}

impl StreamResult {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

const CONTINUE: u32 = 0;

/// How a phase ended.
enum Flow {
    Continue,
    Pause,
    Reply(LocalReplyRequest),
    Reset,
}

/// Messages of the gateway's `local_reply_config` mappers (`envoy/gateway.yaml`).
const NO_CLUSTER: &str = "API backend cluster not found.";
const UNAVAILABLE: &str = "API backend unavailable.";

struct Run {
    id: u32,
    settings: Arc<HostSettings>,
    callouts: Vec<CallRecord>,
    method: String,
}

fn state<R>(f: impl FnOnce(&mut StreamState) -> R) -> Option<R> {
    abi::with_vm(|vm| vm.stream.as_mut().map(f)).flatten()
}

impl Guest {
    /// Runs one request through the filter and, if it gets past it, through `backend`.
    pub fn run(
        &mut self,
        input: &StreamInput,
        backend: &mut dyn FnMut(&UpstreamRequest) -> Upstream,
    ) -> StreamResult {
        self.tick();
        let id = self.next_context();
        self.requests += 1;
        let Some((settings, now, log_start)) =
            abi::with_vm(|vm| (vm.settings.clone(), vm.clock.now_nanos(), vm.logs.len()))
        else {
            return no_response("the VM is not installed on this thread");
        };
        let request_id = format!("00000000-0000-4000-8000-{:012x}", self.requests);
        let headers = envoy_request_headers(input, &settings, &request_id);
        let facts = StreamFacts {
            id,
            source: input.source.clone(),
            authority: input.authority.clone(),
            scheme: input.scheme.clone(),
            method: input.method.to_ascii_uppercase(),
            path: headers.get(":path").unwrap_or("/").to_string(),
            request_id,
            start: now,
            user_agent: headers.get("user-agent").map(str::to_string),
        };
        let properties = input
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.encode()))
            .collect();
        abi::with_vm(|vm| {
            vm.stream = Some(StreamState {
                request_headers: headers,
                request_headers_open: true,
                properties,
                facts,
                ..StreamState::default()
            })
        });
        set_effective(id);
        unsafe { guest::proxy_on_context_create(id, self.root_id) };
        let mut run = Run {
            id,
            settings,
            callouts: Vec::new(),
            method: input.method.to_ascii_uppercase(),
        };
        let mut result = run.request(input, backend);
        result.callouts = std::mem::take(&mut run.callouts);
        if run.method == "HEAD" {
            result.body.clear();
        }
        // Verified on Envoy 1.40: on_log, then on_done.
        set_effective(id);
        unsafe {
            guest::proxy_on_log(id);
            if guest::proxy_on_done(id) {
                guest::proxy_on_delete(id);
            }
        }
        result.logs = abi::with_vm(|vm| {
            vm.stream = None;
            vm.logs.get(log_start..).map(<[LogLine]>::to_vec)
        })
        .flatten()
        .unwrap_or_default();
        result
    }
}

fn no_response(why: &str) -> StreamResult {
    StreamResult {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        trailers: Vec::new(),
        origin: Origin::None,
        reply_details: None,
        upstream: None,
        stalled: Some(why.to_string()),
        reset: false,
        callouts: Vec::new(),
        logs: Vec::new(),
    }
}

impl Run {
    /// Calls one guest callback, answers the call-outs it made, and says how the phase ends.
    fn call(&mut self, response: bool, callback: impl FnOnce(u32) -> u32) -> Flow {
        set_effective(self.id);
        let action = callback(self.id);
        self.answer_calls();
        let Some((reply, closed, continued)) = state(|s| {
            let continued = if response {
                std::mem::take(&mut s.continue_response)
            } else {
                std::mem::take(&mut s.continue_request)
            };
            (s.local_reply.take(), s.closed, continued)
        }) else {
            return Flow::Reset;
        };
        if let Some(r) = reply {
            Flow::Reply(r)
        } else if closed {
            Flow::Reset
        } else if action == CONTINUE || continued {
            Flow::Continue
        } else {
            Flow::Pause
        }
    }

    /// Answers every pending call-out from the stubs, in the order they were made.
    fn answer_calls(&mut self) {
        loop {
            let Some(calls) = abi::with_vm(|vm| std::mem::take(&mut vm.pending_calls)) else {
                return;
            };
            if calls.is_empty() {
                return;
            }
            for call in calls {
                self.answer(call);
            }
        }
    }

    fn answer(&mut self, call: PendingCall) {
        let stub = self
            .settings
            .stubs
            .iter()
            .find(|s| s.matches(&call.cluster, &call.headers))
            .cloned();
        self.callouts.push(CallRecord {
            cluster: call.cluster.clone(),
            headers: call.headers.clone(),
            body: call.body.clone(),
            stubbed: stub.is_some(),
        });
        let data = match &stub {
            Some(s) => {
                abi::with_vm(|vm| vm.clock.advance(s.delay));
                match &s.answer {
                    StubAnswer::Respond {
                        status,
                        headers,
                        body,
                    } => {
                        let mut h = Headers::response();
                        h.add(":status", &status.to_string());
                        for (k, v) in headers {
                            h.add(k, v);
                        }
                        h.add("x-envoy-upstream-service-time", "0");
                        abi::CallResponseData {
                            headers: h,
                            body: body.clone(),
                            trailers: Headers::new(),
                        }
                    }
                    StubAnswer::Timeout => abi::CallResponseData::default(),
                }
            }
            None => {
                let message = format!(
                    "no stub answers the call-out to cluster {} ({} {})",
                    call.cluster,
                    header_of(&call.headers, ":method"),
                    header_of(&call.headers, ":path")
                );
                abi::with_vm(|vm| vm.log(3, format!("tollgate-replay: {message}")));
                abi::CallResponseData {
                    headers: {
                        let mut h = Headers::response();
                        h.add(":status", "503");
                        h
                    },
                    body: message.into_bytes(),
                    trailers: Headers::new(),
                }
            }
        };
        if call.grpc.is_some() {
            super::grpc::answer(&call, stub.as_ref());
            return;
        }
        let (nh, nb, nt) = (data.headers.len(), data.body.len(), data.trailers.len());
        abi::with_vm(|vm| vm.call_response = Some(data));
        set_effective(call.context_id);
        unsafe { guest::proxy_on_http_call_response(call.context_id, call.token, nh, nb, nt) };
        abi::with_vm(|vm| vm.call_response = None);
    }

    fn request(
        &mut self,
        input: &StreamInput,
        backend: &mut dyn FnMut(&UpstreamRequest) -> Upstream,
    ) -> StreamResult {
        let chunks: Vec<&[u8]> = input
            .body
            .iter()
            .filter(|c| !c.is_empty())
            .map(Vec::as_slice)
            .collect();
        let has_trailers = !input.trailers.is_empty();
        let eos = chunks.is_empty() && !has_trailers;
        let n = state(|s| s.request_headers.len()).unwrap_or(0);
        let mut upstream: Option<Headers> = None;
        match self.call(false, |id| unsafe {
            guest::proxy_on_request_headers(id, n, eos)
        }) {
            Flow::Reply(r) => return self.reply_through_filter(r, Origin::Filter),
            Flow::Reset => return no_response("the filter closed the stream"),
            Flow::Continue => upstream = self.release_request_headers(),
            Flow::Pause => {}
        }

        // Verified on Envoy 1.40 (HTTP/1.1 with content-length): each data chunk arrives with
        // end_stream false, then an empty chunk ends the stream; while the filter pauses, the
        // size it is told is everything buffered so far.
        let mut body = Vec::new();
        let mut deliveries: Vec<(&[u8], bool)> = chunks.iter().map(|c| (*c, false)).collect();
        if !chunks.is_empty() && !has_trailers {
            deliveries.push((&[], true));
        }
        for (chunk, eos) in deliveries {
            let size = state(|s| {
                s.request_body.extend_from_slice(chunk);
                s.request_body_open = true;
                s.request_eos = eos;
                s.request_body.len()
            })
            .unwrap_or(0);
            let flow = self.call(false, |id| unsafe {
                guest::proxy_on_request_body(id, size, eos)
            });
            state(|s| {
                s.request_body_open = false;
                s.request_eos = false;
            });
            match flow {
                Flow::Reply(r) => return self.reply_through_filter(r, Origin::Filter),
                Flow::Reset => return no_response("the filter closed the stream"),
                Flow::Continue => {
                    if upstream.is_none() {
                        upstream = self.release_request_headers();
                    }
                    body.extend(state(|s| std::mem::take(&mut s.request_body)).unwrap_or_default());
                }
                Flow::Pause => {}
            }
        }
        let mut trailers = Vec::new();
        if has_trailers {
            let n = state(|s| {
                s.request_trailers = Headers::from_pairs(&input.trailers);
                s.request_trailers_open = true;
                s.request_trailers.len()
            })
            .unwrap_or(0);
            let flow = self.call(false, |id| unsafe {
                guest::proxy_on_request_trailers(id, n)
            });
            match flow {
                Flow::Reply(r) => return self.reply_through_filter(r, Origin::Filter),
                Flow::Reset => return no_response("the filter closed the stream"),
                Flow::Continue => {
                    if upstream.is_none() {
                        upstream = self.release_request_headers();
                    }
                    body.extend(state(|s| std::mem::take(&mut s.request_body)).unwrap_or_default());
                }
                Flow::Pause => {}
            }
            trailers = state(|s| {
                s.request_trailers_open = false;
                s.request_trailers.pairs().to_vec()
            })
            .unwrap_or_default();
        }
        let pending = state(|s| !s.request_body.is_empty()).unwrap_or(false);
        let Some(headers) = upstream.filter(|_| !pending) else {
            return no_response(
                "the filter paused the request and never resumed it (Envoy would time the stream out)",
            );
        };
        self.route(headers, body, trailers, backend)
    }

    /// The request headers continue upstream: the filter can no longer see or change them.
    fn release_request_headers(&mut self) -> Option<Headers> {
        state(|s| {
            s.request_headers_open = false;
            s.request_headers.clone()
        })
    }

    /// The router: picks the cluster from the cluster header, as the `cluster_header` route of
    /// `envoy/gateway.yaml` does, and calls the backend.
    fn route(
        &mut self,
        mut headers: Headers,
        body: Vec<u8>,
        trailers: Vec<(String, String)>,
        backend: &mut dyn FnMut(&UpstreamRequest) -> Upstream,
    ) -> StreamResult {
        let cluster = headers
            .get(&self.settings.cluster_header)
            .unwrap_or("")
            .to_string();
        if !self.settings.knows_route_cluster(&cluster) {
            return self.reply_through_filter(envoy_error(503, NO_CLUSTER), Origin::Envoy);
        }
        state(|s| {
            s.properties.insert(
                "xds.cluster_name".into(),
                PropertyValue::Str(cluster.clone()).encode(),
            )
        });
        // request_headers_to_remove, then the router's own header (verified on Envoy 1.40).
        headers.remove(&self.settings.cluster_header);
        if let Some(name) = &self.settings.client_address_header {
            headers.remove(name);
        }
        headers.add(
            "x-envoy-expected-rq-timeout-ms",
            &self.settings.route_timeout_ms.to_string(),
        );
        let request = UpstreamRequest {
            cluster,
            headers: headers.pairs().to_vec(),
            body,
            trailers,
        };
        let answer = backend(&request);
        let mut result = match answer {
            Upstream::Respond(r) => self.response(r),
            Upstream::Reset => {
                self.reply_through_filter(envoy_error(503, UNAVAILABLE), Origin::Envoy)
            }
        };
        result.upstream = Some(request);
        result
    }

    /// The backend's response through the filter's response callbacks.
    fn response(&mut self, r: BackendResponse) -> StreamResult {
        let mut h = Headers::response();
        h.add(":status", &r.status.to_string());
        let mut had_length = false;
        for (k, v) in &r.headers {
            if k.starts_with(':') || is_connection_header(k) {
                continue;
            }
            if k.eq_ignore_ascii_case("content-length") {
                had_length = true;
                h.add(k, &r.body.len().to_string());
            } else {
                h.add(k, v);
            }
        }
        if !had_length && !r.body.is_empty() {
            h.add("content-length", &r.body.len().to_string());
        }
        h.add("x-envoy-upstream-service-time", "0");
        state(|s| {
            s.properties.insert(
                "response.code".into(),
                PropertyValue::Int(i64::from(r.status)).encode(),
            );
            s.response_headers = h;
            s.response_headers_open = true;
        });
        let has_trailers = !r.trailers.is_empty();
        let eos = r.body.is_empty() && !has_trailers;
        let n = state(|s| s.response_headers.len()).unwrap_or(0);
        let mut sent: Option<Headers> = None;
        match self.call(true, |id| unsafe {
            guest::proxy_on_response_headers(id, n, eos)
        }) {
            // Verified on Envoy 1.40: a reply from the response headers replaces the backend's
            // response and runs no further filter callbacks.
            Flow::Reply(reply) => {
                return final_response(
                    local_reply_headers(&reply),
                    reply.body,
                    Origin::Filter,
                    Some(reply.details),
                )
            }
            Flow::Reset => return no_response("the filter closed the stream"),
            Flow::Continue => sent = self.release_response_headers(),
            Flow::Pause => {}
        }
        let mut body = Vec::new();
        let mut deliveries: Vec<(&[u8], bool)> = Vec::new();
        if !r.body.is_empty() {
            deliveries.push((&r.body, false));
            if !has_trailers {
                deliveries.push((&[], true));
            }
        }
        for (chunk, eos) in deliveries {
            let size = state(|s| {
                s.response_body.extend_from_slice(chunk);
                s.response_body_open = true;
                s.response_eos = eos;
                s.response_body.len()
            })
            .unwrap_or(0);
            let flow = self.call(true, |id| unsafe {
                guest::proxy_on_response_body(id, size, eos)
            });
            state(|s| {
                s.response_body_open = false;
                s.response_eos = false;
            });
            match flow {
                Flow::Reply(reply) => {
                    if let Some(headers) = sent {
                        // The client already has the headers: Envoy can only reset.
                        let mut res = final_response(headers, body, Origin::Backend, None);
                        res.reset = true;
                        return res;
                    }
                    return final_response(
                        local_reply_headers(&reply),
                        reply.body,
                        Origin::Filter,
                        Some(reply.details),
                    );
                }
                Flow::Reset => return no_response("the filter closed the stream"),
                Flow::Continue => {
                    if sent.is_none() {
                        sent = self.release_response_headers();
                    }
                    body.extend(
                        state(|s| std::mem::take(&mut s.response_body)).unwrap_or_default(),
                    );
                }
                Flow::Pause => {}
            }
        }
        let mut trailers = Vec::new();
        if has_trailers {
            let n = state(|s| {
                s.response_trailers = Headers::from_pairs(&r.trailers);
                s.response_trailers_open = true;
                s.response_trailers.len()
            })
            .unwrap_or(0);
            match self.call(true, |id| unsafe {
                guest::proxy_on_response_trailers(id, n)
            }) {
                Flow::Reply(_) | Flow::Reset => {
                    let mut res = no_response("the filter closed the stream");
                    res.reset = true;
                    return res;
                }
                Flow::Continue => {
                    if sent.is_none() {
                        sent = self.release_response_headers();
                    }
                    body.extend(
                        state(|s| std::mem::take(&mut s.response_body)).unwrap_or_default(),
                    );
                }
                Flow::Pause => {}
            }
            trailers = state(|s| s.response_trailers.pairs().to_vec()).unwrap_or_default();
        }
        let pending = state(|s| !s.response_body.is_empty()).unwrap_or(false);
        match sent.filter(|_| !pending) {
            Some(headers) => {
                let mut res = final_response(headers, body, Origin::Backend, None);
                res.trailers = trailers;
                res
            }
            None => no_response(
                "the filter paused the response and never resumed it (Envoy would time the stream out)",
            ),
        }
    }

    fn release_response_headers(&mut self) -> Option<Headers> {
        state(|s| {
            s.response_headers_open = false;
            s.response_headers.clone()
        })
    }

    /// A reply made before the response started (the filter's or Envoy's own) goes through the
    /// filter's response callbacks like a backend response (verified on Envoy 1.40).
    fn reply_through_filter(&mut self, reply: LocalReplyRequest, origin: Origin) -> StreamResult {
        let headers = local_reply_headers(&reply);
        let body = reply.body;
        let eos = body.is_empty();
        let n = headers.len();
        state(|s| {
            s.request_headers_open = false;
            s.response_headers = headers;
            s.response_headers_open = true;
        });
        // A reply while replying is ignored, as Envoy does.
        let _ = self.call(true, |id| unsafe {
            guest::proxy_on_response_headers(id, n, eos)
        });
        let mut out_body = body.clone();
        if !body.is_empty() {
            let size = state(|s| {
                s.response_headers_open = false;
                s.response_body = body;
                s.response_body_open = true;
                s.response_eos = true;
                s.response_body.len()
            })
            .unwrap_or(0);
            let _ = self.call(true, |id| unsafe {
                guest::proxy_on_response_body(id, size, true)
            });
            out_body = state(|s| {
                s.response_body_open = false;
                std::mem::take(&mut s.response_body)
            })
            .unwrap_or_default();
        }
        let headers = state(|s| {
            s.response_headers_open = false;
            s.response_headers.clone()
        })
        .unwrap_or_default();
        let details = (origin == Origin::Filter).then_some(reply.details);
        final_response(headers, out_body, origin, details)
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The header map Envoy builds for a local reply (verified on Envoy 1.40): `:status`, the
/// filter's headers lower-cased in order, then `content-length` and, for a body without a
/// content type, `content-type: text/plain`.
fn local_reply_headers(reply: &LocalReplyRequest) -> Headers {
    let mut h = Headers::response();
    h.add(":status", &reply.status.to_string());
    for (k, v) in &reply.headers {
        h.add(k, v);
    }
    if !reply.body.is_empty() {
        h.set("content-length", &reply.body.len().to_string());
        if !h.contains("content-type") {
            h.add("content-type", "text/plain");
        }
    }
    h
}

/// A reply from Envoy's router, as the gateway's `local_reply_config` mappers rewrite it.
fn envoy_error(status: u16, message: &str) -> LocalReplyRequest {
    LocalReplyRequest {
        status,
        details: String::new(),
        headers: vec![
            ("x-gateway-error".to_string(), message.to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ],
        body: format!("{{\"message\":\"{message}\",\"responseCode\":{status}}}\n").into_bytes(),
    }
}

/// What the client gets: pseudo-headers dropped, `server: envoy` (Envoy overwrites it after
/// the filters, in place) and a `date` when there is none.
fn final_response(
    headers: Headers,
    body: Vec<u8>,
    origin: Origin,
    details: Option<String>,
) -> StreamResult {
    let status = headers
        .get(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut client = headers;
    client.remove_pseudo();
    if !client.contains("date") {
        let now = abi::with_vm(|vm| vm.clock.now_nanos()).unwrap_or(0);
        client.add("date", &time::format_http_date(now));
    }
    client.set_in_place("server", "envoy");
    StreamResult {
        status,
        headers: client.into_pairs(),
        body,
        trailers: Vec::new(),
        origin,
        reply_details: details,
        upstream: None,
        stalled: None,
        reset: false,
        callouts: Vec::new(),
        logs: Vec::new(),
    }
}

fn peer_ip(source: &str) -> Option<IpAddr> {
    tollgate_core::client_ip::parse_socket_address(source)
}

/// The request headers as Envoy's connection manager hands them to the first filter, with the
/// gateway's `use_remote_address: true`, `normalize_path` and `merge_slashes` (verified on
/// Envoy 1.40): pseudo-headers first, the client's headers in order (lower-cased, without
/// `host` and hop-by-hop headers, without the `x-envoy-*` headers an external client may not
/// set), then `x-forwarded-for`, `x-forwarded-proto`, `x-envoy-external-address` and a fresh
/// `x-request-id`.
pub fn envoy_request_headers(
    input: &StreamInput,
    settings: &HostSettings,
    request_id: &str,
) -> Headers {
    let mut h = Headers::request();
    h.reserve(input.headers.len() + 9);
    h.add(":authority", &input.authority);
    h.add(":path", &normalize_path(&input.path));
    h.add(":method", &input.method.to_ascii_uppercase());
    h.add(":scheme", &input.scheme);
    let body_len: usize = input.body.iter().map(Vec::len).sum();
    let mut has_length = false;
    for (k, v) in &input.headers {
        let k = k.to_ascii_lowercase();
        if k.starts_with(':') || is_connection_header(&k) || k.starts_with("x-envoy-") {
            continue;
        }
        if k == "content-length" {
            has_length = true;
            h.add(&k, &body_len.to_string());
            continue;
        }
        h.add(&k, v);
    }
    if !has_length && body_len > 0 {
        h.add("content-length", &body_len.to_string());
    }
    let peer = peer_ip(&input.source);
    let appended = match peer {
        Some(ip) if !ip.is_loopback() => ip.to_string(),
        _ => settings.local_address.clone(),
    };
    let existing: Vec<String> = h.get_all("x-forwarded-for").map(str::to_string).collect();
    if existing.is_empty() {
        h.add("x-forwarded-for", &appended);
    } else {
        h.set_in_place(
            "x-forwarded-for",
            &format!("{},{appended}", existing.join(",")),
        );
    }
    h.set("x-forwarded-proto", &input.scheme);
    if let Some(ip) = peer {
        h.add("x-envoy-external-address", &ip.to_string());
    }
    h.set("x-request-id", request_id);
    // The header_mutation filter in front of tollgate (%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%,
    // overwriting whatever the client sent).
    if let (Some(name), Some(ip)) = (&settings.client_address_header, peer) {
        h.set(name, &ip.to_string());
    }
    h
}

/// RFC 3986 dot-segment removal plus merged slashes on the path (the query is kept as is).
pub fn normalize_path(target: &str) -> String {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i..])),
        None => (target, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing = i == last && i > 0,
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut p = String::from("/");
    p.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        p.push('/');
    }
    if let Some(q) = query {
        p.push_str(q);
    }
    p
}

/// What a stream's properties are computed from, when the filter asks (most requests ask for
/// none or one, so nothing is encoded up front).
#[derive(Debug, Default)]
pub(super) struct StreamFacts {
    pub id: u32,
    pub source: String,
    pub authority: String,
    pub scheme: String,
    pub method: String,
    pub path: String,
    pub request_id: String,
    pub start: u64,
    pub user_agent: Option<String>,
}

fn port_of(address: &str) -> i64 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<i64>().ok())
        .unwrap_or(0)
}

impl StreamFacts {
    /// A stream property by dotted path, encoded as Envoy encodes it.
    pub(super) fn property(&self, path: &str, settings: &HostSettings) -> Option<Vec<u8>> {
        let v = match path {
            "source.address" => PropertyValue::Str(self.source.clone()),
            "source.port" => PropertyValue::Int(port_of(&self.source)),
            "destination.address" => PropertyValue::Str(settings.listener_address.clone()),
            "destination.port" => PropertyValue::Int(port_of(&settings.listener_address)),
            "connection.mtls" => PropertyValue::Bool(false),
            "connection.id" => PropertyValue::Int(i64::from(self.id)),
            "request.path" => PropertyValue::Str(self.path.clone()),
            "request.url_path" => {
                PropertyValue::Str(self.path.split('?').next().unwrap_or("/").to_string())
            }
            "request.host" => PropertyValue::Str(self.authority.clone()),
            "request.scheme" => PropertyValue::Str(self.scheme.clone()),
            "request.method" => PropertyValue::Str(self.method.clone()),
            "request.id" => PropertyValue::Str(self.request_id.clone()),
            "request.protocol" => PropertyValue::Str("HTTP/1.1".into()),
            "request.time" => PropertyValue::Int(i64::try_from(self.start).unwrap_or(i64::MAX)),
            "request.useragent" => PropertyValue::Str(self.user_agent.clone()?),
            "xds.route_name" => PropertyValue::Str(settings.route_name.clone()),
            _ => return None,
        };
        Some(v.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_double_slashes_are_normalised() {
        assert_eq!(normalize_path("/a//b/../c?q=1"), "/a/c?q=1");
        assert_eq!(normalize_path("/a/./b/"), "/a/b/");
        assert_eq!(normalize_path("/../x"), "/x");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("/a/b/.."), "/a/");
    }

    #[test]
    fn envoy_headers_follow_the_client_headers() {
        let settings = HostSettings {
            local_address: "192.0.2.2".into(),
            ..HostSettings::default()
        };
        let input = StreamInput::new("get", "/x")
            .header("Host", "h")
            .header("X-Forwarded-For", "1.2.3.4")
            .header("X-Envoy-Internal", "true")
            .header("Accept", "*/*");
        let h = envoy_request_headers(&input, &settings, "id-1");
        let names: Vec<&str> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            vec![
                ":authority",
                ":path",
                ":method",
                ":scheme",
                "x-forwarded-for",
                "accept",
                "x-forwarded-proto",
                "x-envoy-external-address",
                "x-request-id",
                "x-tollgate-client-address"
            ]
        );
        assert_eq!(h.get("x-forwarded-for"), Some("1.2.3.4,192.0.2.2"));
        assert_eq!(h.get(":method"), Some("GET"));
    }

    #[test]
    fn a_remote_peer_is_appended_to_x_forwarded_for_itself() {
        let mut input = StreamInput::new("GET", "/");
        input.source = "203.0.113.9:5000".into();
        let h = envoy_request_headers(&input, &HostSettings::default(), "id");
        assert_eq!(h.get("x-forwarded-for"), Some("203.0.113.9"));
        assert_eq!(h.get("x-envoy-external-address"), Some("203.0.113.9"));
    }
}
