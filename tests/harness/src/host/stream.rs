//! One HTTP stream through the filter, the way Envoy 1.40's filter manager drives it with the
//! listener, route and error mapping of `envoy/gateway.yaml`. Behaviour marked "verified" was
//! observed on Envoy 1.40 with a probe filter that logged every callback and map; behaviour
//! marked "Envoy's source" follows `source/common/http/filter_manager.cc` and
//! `source/extensions/common/wasm/context.cc`.
//!
//! The stream is event driven: request body chunks, trailers, the backend's answer and the
//! answers to the filter's call-outs arrive in an order the stream's [`CallTiming`] chooses,
//! and what the filter holds (headers, buffered body, trailers) goes on only when Envoy would
//! let it. [`StreamResult::events`] records the order things happened in.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use super::abi::{self, BodyState, LocalReplyRequest, PendingCall, StreamState};
use super::headers::{is_connection_header, Headers};
use super::{guest, set_effective, Guest, HostSettings, LogLine, PropertyValue, StubAnswer};
use crate::time;

/// When the host answers the filter's call-outs.
///
/// Envoy answers a call-out whenever its cluster does: before, between or after the request's
/// body chunks, or not before the client gives up. A filter that holds a request while a call
/// is pending has to cope with every one of these; each mode pins one down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallTiming {
    /// As soon as the callback that made the call has returned (and Envoy has acted on what it
    /// returned), before anything else reaches the filter.
    #[default]
    Immediate,
    /// Once everything else in the call's direction has reached the filter: every request
    /// body chunk, the end of stream and the trailers for a call made on the request path; the
    /// response's for a call made while the response passes.
    AfterBody,
    /// After this many further stream callbacks (headers, body or trailers, either direction);
    /// sooner only when nothing else can reach the filter first. `Delayed(0)` is `Immediate`.
    Delayed(u32),
    /// Never: the stream waits for the answer until Envoy would time it out. Calls still
    /// pending when the stream ends are cancelled, as Envoy cancels them with the filter's
    /// context.
    Never,
}

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
    /// When the filter's call-outs are answered.
    pub call_timing: CallTiming,
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
            call_timing: CallTiming::Immediate,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> StreamInput {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a body chunk (each call one more chunk).
    pub fn body(mut self, body: &[u8]) -> StreamInput {
        self.body.push(body.to_vec());
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> StreamInput {
        self.trailers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn call_timing(mut self, timing: CallTiming) -> StreamInput {
        self.call_timing = timing;
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
    /// The backend answers after this long (virtual time natively); the router gives up first
    /// when its timeout is shorter.
    Slow(std::time::Duration, BackendResponse),
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
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether a stub answers it (else it gets the harness's 503).
    pub stubbed: bool,
    /// Whether the filter got its answer (not when the stream ended first, or never came).
    pub answered: bool,
}

/// Which way data flows through the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the backend.
    Request,
    /// From the backend to the client.
    Response,
}

/// What a stream callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Continue,
    /// `Action::Pause`: Envoy's StopIteration (headers, trailers) or StopIterationAndBuffer
    /// (body).
    Pause,
}

/// One thing that happened on a stream, in the order it happened ([`StreamResult::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// `proxy_on_request_headers` ran.
    RequestHeaders {
        end_of_stream: bool,
        returned: Returned,
    },
    /// `proxy_on_request_body` ran for a chunk of `chunk` bytes; the filter was told `size`
    /// (everything it holds, while it buffers).
    RequestBody {
        chunk: usize,
        size: usize,
        end_of_stream: bool,
        returned: Returned,
    },
    /// `proxy_on_request_trailers` ran.
    RequestTrailers {
        returned: Returned,
    },
    /// The filter dispatched a call-out.
    CallDispatched {
        token: u32,
        cluster: String,
    },
    /// A call-out's answer arrived: `proxy_on_http_call_response` runs next.
    CallAnswered {
        token: u32,
    },
    /// A call-out was still pending when the stream ended; Envoy cancels it.
    CallCancelled {
        token: u32,
    },
    /// The filter called `proxy_continue_stream`.
    Continued(Direction),
    /// The request headers went past the filter to the router and upstream: the backend is
    /// reached.
    UpstreamHeaders {
        end_of_stream: bool,
    },
    /// Request body went upstream.
    UpstreamBody {
        size: usize,
        end_of_stream: bool,
    },
    UpstreamTrailers,
    /// The backend's response arrived at Envoy.
    UpstreamResponse {
        status: u16,
    },
    /// The backend dropped the connection without answering.
    UpstreamReset,
    /// `proxy_on_response_headers` ran (for the backend's response or a local reply).
    ResponseHeaders {
        end_of_stream: bool,
        returned: Returned,
    },
    /// `proxy_on_response_body` ran; `chunk` and `size` as for [`StreamEvent::RequestBody`].
    ResponseBody {
        chunk: usize,
        size: usize,
        end_of_stream: bool,
        returned: Returned,
    },
    /// `proxy_on_response_trailers` ran.
    ResponseTrailers {
        returned: Returned,
    },
    /// The filter sent a local reply.
    LocalReply {
        status: u16,
    },
    /// Envoy answered itself (unknown cluster, backend unavailable).
    EnvoyReply {
        status: u16,
    },
    /// The response headers went to the client.
    DownstreamHeaders {
        status: u16,
        end_of_stream: bool,
    },
    DownstreamBody {
        size: usize,
        end_of_stream: bool,
    },
    DownstreamTrailers,
    /// The filter closed the stream (`proxy_close_stream`).
    Closed,
    /// Envoy reset the stream: a local reply came after the client had the response headers.
    Reset,
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
    /// What the backend received, if the request got there (as far as it got, if the stream
    /// stopped half-way).
    pub upstream: Option<UpstreamRequest>,
    /// Why there is no response, when there is none.
    pub stalled: Option<String>,
    /// The stream was reset after the response started.
    pub reset: bool,
    pub callouts: Vec<CallRecord>,
    /// What happened, in order.
    pub events: Vec<StreamEvent>,
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

    /// Where the first event that `matches` is in [`StreamResult::events`].
    pub fn position(&self, matches: impl Fn(&StreamEvent) -> bool) -> Option<usize> {
        self.events.iter().position(matches)
    }
}

const CONTINUE: u32 = 0;

/// Messages of the gateway's `local_reply_config` mappers (`envoy/gateway.yaml`), Envoy's own
/// bodies without them, and the `response.code_details` Envoy gives (verified on Envoy 1.40).
const NO_CLUSTER: (&str, &str, &str) = ("API backend cluster not found.", "", "cluster_not_found");
const UNAVAILABLE: (&str, &str, &str) = (
    "API backend unavailable.",
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
    "upstream_reset_before_response_started{connection_termination}",
);
const TIMED_OUT: (&str, &str, &str) = (
    "API backend timed out.",
    "upstream request timeout",
    "response_timeout",
);

/// More call-out answers than this in one stream means the filter dispatches a new call from
/// every answer; the stream is given up rather than hang the replay.
const MAX_ANSWERS: usize = 10_000;

fn state<R>(f: impl FnOnce(&mut StreamState) -> R) -> Option<R> {
    abi::with_vm(|vm| vm.stream.as_mut().map(f)).flatten()
}

impl StreamState {
    fn body_mut(&mut self, direction: Direction) -> &mut BodyState {
        match direction {
            Direction::Request => &mut self.request_body,
            Direction::Response => &mut self.response_body,
        }
    }
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
        let mut run = Run::new(id, settings, input.call_timing, backend);
        let mut result = run.drive(input);
        if input.method.eq_ignore_ascii_case("HEAD") {
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
        events: Vec::new(),
        logs: Vec::new(),
    }
}

/// A call-out waiting for its answer.
struct Waiting {
    call: PendingCall,
    /// The direction the stream was passing in when the call was made.
    direction: Direction,
    /// How many stream callbacks had run when it was made.
    since: u32,
}

/// What reaches the filter next.
enum Input {
    /// A request body chunk, and whether it ends the stream.
    RequestBody(Vec<u8>, bool),
    RequestTrailers(Vec<(String, String)>),
    /// The backend's answer, once the whole request went upstream.
    Backend(Upstream),
    ResponseBody(Vec<u8>, bool),
    ResponseTrailers(Vec<(String, String)>),
}

impl Input {
    fn direction(&self) -> Direction {
        match self {
            Input::RequestBody(..) | Input::RequestTrailers(_) => Direction::Request,
            Input::Backend(_) | Input::ResponseBody(..) | Input::ResponseTrailers(_) => {
                Direction::Response
            }
        }
    }
}

/// What a stream callback was given, for what Envoy does with its verdict.
enum Delivered {
    Headers,
    /// The chunk as the filter left it (empty when it was added to the held buffer before the
    /// callback), and whether it ends the stream.
    Body(Vec<u8>, bool),
    Trailers,
}

/// One direction of the stream at the filter, as Envoy's filter manager tracks it.
#[derive(Debug, Default)]
struct Side {
    /// The filter stopped it (returned Pause) and nothing continued it since
    /// (`IterationState::StopSingleIteration`).
    stopped: bool,
    /// The headers went past the filter.
    headers_passed: bool,
    /// Everything in this direction has reached the filter (`complete()`).
    input_done: bool,
    /// The filter has seen trailers it has not let go yet.
    trailers_held: bool,
    /// The end of stream went past the filter.
    complete: bool,
}

/// One stream being driven.
struct Run<'a> {
    id: u32,
    settings: Arc<HostSettings>,
    timing: CallTiming,
    backend: &'a mut dyn FnMut(&UpstreamRequest) -> Upstream,
    /// What reaches the filter next, in order.
    input: VecDeque<Input>,
    /// Call-outs not answered yet, oldest first.
    waiting: Vec<Waiting>,
    answers: usize,
    /// Stream callbacks run so far (what `CallTiming::Delayed` counts).
    callbacks: u32,
    request: Side,
    response: Side,
    /// The backend's response (or a local reply) has reached the filter manager.
    response_started: bool,
    /// What went upstream so far.
    upstream: Option<UpstreamRequest>,
    /// The router's timeout for this request (the route's, or the request's
    /// `x-envoy-upstream-rq-timeout-ms`).
    route_timeout_ms: u64,
    /// The response headers the client got, once they went.
    downstream: Option<Headers>,
    client_body: Vec<u8>,
    client_trailers: Vec<(String, String)>,
    callouts: Vec<CallRecord>,
    events: Vec<StreamEvent>,
    /// How the stream ended, once it did.
    done: Option<StreamResult>,
}

impl<'a> Run<'a> {
    fn new(
        id: u32,
        settings: Arc<HostSettings>,
        timing: CallTiming,
        backend: &'a mut dyn FnMut(&UpstreamRequest) -> Upstream,
    ) -> Run<'a> {
        Run {
            id,
            settings,
            timing,
            backend,
            input: VecDeque::new(),
            waiting: Vec::new(),
            answers: 0,
            callbacks: 0,
            request: Side::default(),
            response: Side::default(),
            response_started: false,
            upstream: None,
            route_timeout_ms: 0,
            downstream: None,
            client_body: Vec::new(),
            client_trailers: Vec::new(),
            callouts: Vec::new(),
            events: Vec::new(),
            done: None,
        }
    }

    fn side(&self, direction: Direction) -> &Side {
        match direction {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        }
    }

    fn side_mut(&mut self, direction: Direction) -> &mut Side {
        match direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    /// Runs the stream from the request headers to its end.
    fn drive(&mut self, input: &StreamInput) -> StreamResult {
        // Verified on Envoy 1.40 (HTTP/1.1 with content-length): each data chunk arrives with
        // end_stream false, then an empty chunk ends the stream (unless trailers do).
        let chunks: Vec<Vec<u8>> = input
            .body
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect();
        let has_trailers = !input.trailers.is_empty();
        let has_body = !chunks.is_empty();
        for chunk in chunks {
            self.input.push_back(Input::RequestBody(chunk, false));
        }
        if has_body && !has_trailers {
            self.input.push_back(Input::RequestBody(Vec::new(), true));
        }
        if has_trailers {
            self.input
                .push_back(Input::RequestTrailers(input.trailers.clone()));
        }
        self.request_headers(self.input.is_empty());
        self.settle();
        self.finish()
    }

    /// Until the stream ends: answers the call-outs that are due, else delivers what arrives
    /// next, else (nothing else can happen) lets the oldest pending answer arrive.
    fn settle(&mut self) {
        while self.done.is_none() {
            if self.answers >= MAX_ANSWERS {
                self.done = Some(no_response(
                    "the filter dispatched a new call-out from every answer",
                ));
            } else if let Some(i) = self.waiting.iter().position(|w| self.is_due(w)) {
                self.answer(i);
            } else if let Some(next) = self.input.pop_front() {
                self.deliver(next);
            } else if self.timing != CallTiming::Never && !self.waiting.is_empty() {
                self.answer(0);
            } else {
                break;
            }
        }
    }

    fn is_due(&self, w: &Waiting) -> bool {
        match self.timing {
            CallTiming::Immediate => true,
            CallTiming::Delayed(n) => self.callbacks.saturating_sub(w.since) >= n,
            CallTiming::AfterBody => !self.input.iter().any(|i| i.direction() == w.direction),
            CallTiming::Never => false,
        }
    }

    fn deliver(&mut self, next: Input) {
        match next {
            Input::RequestBody(chunk, eos) => self.body(Direction::Request, chunk, eos),
            Input::RequestTrailers(t) => self.trailers(Direction::Request, &t),
            Input::Backend(Upstream::Respond(r)) => self.response_headers(r),
            Input::Backend(Upstream::Slow(delay, r)) => {
                let timeout = std::time::Duration::from_millis(self.route_timeout_ms);
                if self.route_timeout_ms > 0 && delay >= timeout {
                    abi::with_vm(|vm| vm.clock.advance(timeout));
                    self.envoy_reply(504, TIMED_OUT);
                } else {
                    abi::with_vm(|vm| vm.clock.advance(delay));
                    self.response_headers(r);
                }
            }
            Input::Backend(Upstream::Reset) => {
                self.events.push(StreamEvent::UpstreamReset);
                self.envoy_reply(503, UNAVAILABLE);
            }
            Input::ResponseBody(chunk, eos) => self.body(Direction::Response, chunk, eos),
            Input::ResponseTrailers(t) => self.trailers(Direction::Response, &t),
        }
    }

    /// The stream is over (or stuck): pending call-outs are cancelled, and the result says
    /// what the client got and what the backend received.
    fn finish(&mut self) -> StreamResult {
        let why = {
            let which = if self.request.complete {
                "response"
            } else {
                "request"
            };
            match self.waiting.first() {
                Some(w) => format!(
                    "the filter paused the {which} and never resumed it: its call-out to cluster \
                     {} was never answered (Envoy would time the stream out)",
                    w.call.cluster
                ),
                None => format!(
                    "the filter paused the {which} and never resumed it (Envoy would time the \
                     stream out)"
                ),
            }
        };
        for w in std::mem::take(&mut self.waiting) {
            self.events.push(StreamEvent::CallCancelled {
                token: w.call.token,
            });
        }
        let mut result = self.done.take().unwrap_or_else(|| no_response(&why));
        result.upstream = self.upstream.take();
        result.callouts = std::mem::take(&mut self.callouts);
        result.events = std::mem::take(&mut self.events);
        result
    }

    // ---- the filter's callbacks ----------------------------------------------------------

    /// Calls one stream callback and says what it returned.
    fn stream_callback(&mut self, callback: impl FnOnce(u32) -> u32) -> Returned {
        set_effective(self.id);
        let action = callback(self.id);
        self.callbacks = self.callbacks.saturating_add(1);
        if action == CONTINUE {
            Returned::Continue
        } else {
            Returned::Pause
        }
    }

    fn request_headers(&mut self, eos: bool) {
        self.request.input_done = eos;
        let n = state(|s| s.request_headers.len()).unwrap_or(0);
        let returned =
            self.stream_callback(|id| unsafe { guest::proxy_on_request_headers(id, n, eos) });
        if returned == Returned::Continue {
            state(|s| s.request_headers_open = false);
        }
        self.events.push(StreamEvent::RequestHeaders {
            end_of_stream: eos,
            returned,
        });
        self.after_guest(Some((Direction::Request, returned, Delivered::Headers)));
    }

    /// The backend's response reaches the filter: its headers callback runs, the body and
    /// trailers queue up behind it.
    fn response_headers(&mut self, r: BackendResponse) {
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
        self.events
            .push(StreamEvent::UpstreamResponse { status: r.status });
        let n = h.len();
        state(|s| {
            s.properties.insert(
                "response.code".into(),
                PropertyValue::Int(i64::from(r.status)).encode(),
            );
            s.properties.insert(
                "response.code_details".into(),
                PropertyValue::Str("via_upstream".into()).encode(),
            );
            s.response_headers = h;
            s.response_headers_open = true;
        });
        self.response_started = true;
        let has_trailers = !r.trailers.is_empty();
        let eos = r.body.is_empty() && !has_trailers;
        if !r.body.is_empty() {
            self.input.push_back(Input::ResponseBody(r.body, false));
            if !has_trailers {
                self.input.push_back(Input::ResponseBody(Vec::new(), true));
            }
        }
        if has_trailers {
            self.input.push_back(Input::ResponseTrailers(r.trailers));
        }
        self.response.input_done = eos;
        let returned =
            self.stream_callback(|id| unsafe { guest::proxy_on_response_headers(id, n, eos) });
        if returned == Returned::Continue {
            state(|s| s.response_headers_open = false);
        }
        self.events.push(StreamEvent::ResponseHeaders {
            end_of_stream: eos,
            returned,
        });
        self.after_guest(Some((Direction::Response, returned, Delivered::Headers)));
    }

    /// A body chunk reaches the filter (Envoy's wasm `decodeData`/`encodeData`): while the
    /// filter buffers, the chunk joins the held buffer first and the filter is told the size
    /// of it all; otherwise it sees the chunk alone.
    fn body(&mut self, direction: Direction, chunk: Vec<u8>, eos: bool) {
        if eos {
            self.side_mut(direction).input_done = true;
        }
        let len = chunk.len();
        let size = state(|s| {
            let b = s.body_mut(direction);
            b.open = true;
            b.eos = eos;
            if b.buffering {
                b.held.extend_from_slice(&chunk);
                b.held.len()
            } else {
                b.chunk = chunk;
                b.chunk.len()
            }
        })
        .unwrap_or(0);
        let returned = self.stream_callback(|id| unsafe {
            match direction {
                Direction::Request => guest::proxy_on_request_body(id, size, eos),
                Direction::Response => guest::proxy_on_response_body(id, size, eos),
            }
        });
        let data = state(|s| {
            let b = s.body_mut(direction);
            b.open = false;
            b.eos = false;
            b.buffering = returned == Returned::Pause;
            std::mem::take(&mut b.chunk)
        })
        .unwrap_or_default();
        self.events.push(match direction {
            Direction::Request => StreamEvent::RequestBody {
                chunk: len,
                size,
                end_of_stream: eos,
                returned,
            },
            Direction::Response => StreamEvent::ResponseBody {
                chunk: len,
                size,
                end_of_stream: eos,
                returned,
            },
        });
        self.after_guest(Some((direction, returned, Delivered::Body(data, eos))));
    }

    fn trailers(&mut self, direction: Direction, trailers: &[(String, String)]) {
        {
            let side = self.side_mut(direction);
            side.input_done = true;
            side.trailers_held = true;
        }
        let n = state(|s| {
            let t = Headers::from_pairs(trailers);
            let n = t.len();
            match direction {
                Direction::Request => {
                    s.request_trailers = t;
                    s.request_trailers_open = true;
                }
                Direction::Response => {
                    s.response_trailers = t;
                    s.response_trailers_open = true;
                }
            }
            n
        })
        .unwrap_or(0);
        let returned = self.stream_callback(|id| unsafe {
            match direction {
                Direction::Request => guest::proxy_on_request_trailers(id, n),
                Direction::Response => guest::proxy_on_response_trailers(id, n),
            }
        });
        if returned == Returned::Continue {
            state(|s| match direction {
                Direction::Request => s.request_trailers_open = false,
                Direction::Response => s.response_trailers_open = false,
            });
        }
        self.events.push(match direction {
            Direction::Request => StreamEvent::RequestTrailers { returned },
            Direction::Response => StreamEvent::ResponseTrailers { returned },
        });
        self.after_guest(Some((direction, returned, Delivered::Trailers)));
    }

    /// What Envoy does once a call into the VM returns: takes note of the call-outs it
    /// dispatched, carries out its deferred actions (a local reply, closing the stream,
    /// continuing a stream) and, for a stream callback, what it returned.
    ///
    /// A `proxy_continue_stream` made inside a stream callback counts as that callback
    /// returning Continue.
    fn after_guest(&mut self, delivered: Option<(Direction, Returned, Delivered)>) {
        self.register_calls();
        let Some((reply, closed, continued)) = state(|s| {
            (
                s.local_reply.take(),
                s.closed,
                [
                    std::mem::take(&mut s.continue_request),
                    std::mem::take(&mut s.continue_response),
                ],
            )
        }) else {
            self.done = Some(no_response("the VM is not installed on this thread"));
            return;
        };
        if let Some(reply) = reply {
            self.local_reply(reply);
            return;
        }
        if closed {
            self.events.push(StreamEvent::Closed);
            self.done = Some(no_response("the filter closed the stream"));
            return;
        }
        let continued_in = |d: Direction| match d {
            Direction::Request => continued[0],
            Direction::Response => continued[1],
        };
        let mut own = None;
        if let Some((direction, returned, what)) = delivered {
            own = Some(direction);
            let cont = continued_in(direction);
            if cont {
                self.events.push(StreamEvent::Continued(direction));
            }
            self.carry_on(direction, returned == Returned::Continue || cont, what);
        }
        for direction in [Direction::Request, Direction::Response] {
            if own != Some(direction) && continued_in(direction) && self.done.is_none() {
                self.events.push(StreamEvent::Continued(direction));
                self.release(direction);
            }
        }
    }

    /// The filter manager acts on a stream callback's verdict
    /// (`commonHandleAfter{Headers,Data,Trailers}Callback`).
    fn carry_on(&mut self, direction: Direction, go: bool, what: Delivered) {
        let stopped = self.side(direction).stopped;
        match what {
            // Not stopped: this chunk goes on by itself (nothing is held: a stopped stream
            // holds, and continuing it sends what it held).
            Delivered::Body(data, eos) if go && !stopped => self.pass_body(direction, data, eos),
            Delivered::Body(data, _) => {
                state(|s| s.body_mut(direction).held.extend_from_slice(&data));
                if go {
                    self.release(direction);
                } else {
                    self.side_mut(direction).stopped = true;
                }
            }
            Delivered::Trailers if go && !stopped => self.pass_trailers(direction),
            Delivered::Headers | Delivered::Trailers => {
                if go {
                    self.release(direction);
                } else {
                    self.side_mut(direction).stopped = true;
                }
            }
        }
    }

    // ---- call-outs -----------------------------------------------------------------------

    /// Takes the call-outs the guest dispatched since the last look.
    fn register_calls(&mut self) {
        let calls = abi::with_vm(|vm| std::mem::take(&mut vm.pending_calls)).unwrap_or_default();
        let direction = if self.response_started {
            Direction::Response
        } else {
            Direction::Request
        };
        for call in calls {
            let stubbed = self
                .settings
                .stubs
                .iter()
                .any(|s| s.matches(&call.cluster, &call.headers));
            self.events.push(StreamEvent::CallDispatched {
                token: call.token,
                cluster: call.cluster.clone(),
            });
            self.callouts.push(CallRecord {
                token: call.token,
                cluster: call.cluster.clone(),
                headers: call.headers.clone(),
                body: call.body.clone(),
                stubbed,
                answered: false,
            });
            self.waiting.push(Waiting {
                call,
                direction,
                since: self.callbacks,
            });
        }
    }

    /// Answers a pending call-out from the stubs (the first that matches; none gives the
    /// harness's 503) and runs what the filter does with the answer.
    fn answer(&mut self, index: usize) {
        if index >= self.waiting.len() {
            return;
        }
        let call = self.waiting.remove(index).call;
        self.answers += 1;
        self.events
            .push(StreamEvent::CallAnswered { token: call.token });
        if let Some(record) = self.callouts.iter_mut().find(|c| c.token == call.token) {
            record.answered = true;
        }
        let stub = self
            .settings
            .stubs
            .iter()
            .find(|s| s.matches(&call.cluster, &call.headers))
            .cloned();
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
            self.after_guest(None);
            return;
        }
        let (nh, nb, nt) = (data.headers.len(), data.body.len(), data.trailers.len());
        abi::with_vm(|vm| vm.call_response = Some(data));
        set_effective(call.context_id);
        unsafe { guest::proxy_on_http_call_response(call.context_id, call.token, nh, nb, nt) };
        abi::with_vm(|vm| vm.call_response = None);
        self.after_guest(None);
    }

    // ---- what goes past the filter -------------------------------------------------------

    /// Envoy's `commonContinue()`: what the filter held goes on, the headers first, then the
    /// held body, then held trailers, without calling the filter again for data it has seen.
    /// Later chunks reach the filter on their own (verified on Envoy 1.40: after a
    /// continue from the call-out's answer, the next chunk's callback is told that chunk's
    /// size, and every chunk reaches the backend).
    fn release(&mut self, direction: Direction) {
        if self.done.is_some() || (direction == Direction::Response && !self.response_started) {
            return;
        }
        self.side_mut(direction).stopped = false;
        let held = state(|s| {
            let b = s.body_mut(direction);
            b.buffering = false;
            std::mem::take(&mut b.held)
        })
        .unwrap_or_default();
        if !self.side(direction).headers_passed {
            let side = self.side(direction);
            let eos = side.input_done && held.is_empty() && !side.trailers_held;
            self.pass_headers(direction, eos);
        }
        let side = self.side(direction);
        if !held.is_empty() || (side.input_done && !side.trailers_held) {
            let eos = side.input_done && !side.trailers_held;
            self.pass_body(direction, held, eos);
        }
        if self.side(direction).trailers_held {
            self.pass_trailers(direction);
        }
    }

    fn pass_headers(&mut self, direction: Direction, eos: bool) {
        if self.done.is_some() {
            return;
        }
        self.side_mut(direction).headers_passed = true;
        match direction {
            Direction::Request => {
                let headers = state(|s| s.request_headers.clone()).unwrap_or_default();
                self.route(headers, eos);
            }
            Direction::Response => {
                let headers = state(|s| s.response_headers.clone()).unwrap_or_default();
                self.events.push(StreamEvent::DownstreamHeaders {
                    status: status_of(&headers),
                    end_of_stream: eos,
                });
                self.downstream = Some(headers);
                if eos {
                    self.response_complete();
                }
            }
        }
    }

    fn pass_body(&mut self, direction: Direction, data: Vec<u8>, eos: bool) {
        // After the end of stream went on, Envoy drops what follows (the next filter's
        // `end_stream_` is set).
        if self.done.is_some() || self.side(direction).complete || (data.is_empty() && !eos) {
            return;
        }
        let event = match direction {
            Direction::Request => StreamEvent::UpstreamBody {
                size: data.len(),
                end_of_stream: eos,
            },
            Direction::Response => StreamEvent::DownstreamBody {
                size: data.len(),
                end_of_stream: eos,
            },
        };
        self.events.push(event);
        match direction {
            Direction::Request => {
                if let Some(u) = self.upstream.as_mut() {
                    u.body.extend(data);
                }
                if eos {
                    self.request_complete();
                }
            }
            Direction::Response => {
                self.client_body.extend(data);
                if eos {
                    self.response_complete();
                }
            }
        }
    }

    fn pass_trailers(&mut self, direction: Direction) {
        self.side_mut(direction).trailers_held = false;
        if self.done.is_some() || self.side(direction).complete {
            return;
        }
        match direction {
            Direction::Request => {
                let t = state(|s| s.request_trailers.pairs().to_vec()).unwrap_or_default();
                if let Some(u) = self.upstream.as_mut() {
                    u.trailers = t;
                }
                self.events.push(StreamEvent::UpstreamTrailers);
                self.request_complete();
            }
            Direction::Response => {
                self.client_trailers =
                    state(|s| s.response_trailers.pairs().to_vec()).unwrap_or_default();
                self.events.push(StreamEvent::DownstreamTrailers);
                self.response_complete();
            }
        }
    }

    /// The router gets the request headers: picks the cluster from the cluster header, as the
    /// `cluster_header` route of `envoy/gateway.yaml` does, and starts the upstream request.
    fn route(&mut self, mut headers: Headers, eos: bool) {
        let cluster = headers
            .get(&self.settings.cluster_header)
            .unwrap_or("")
            .to_string();
        if !self.settings.knows_route_cluster(&cluster) {
            self.envoy_reply(503, NO_CLUSTER);
            return;
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
        // The router takes its timeout from x-envoy-upstream-rq-timeout-ms (which it consumes),
        // else the route's, and tells the backend (verified on Envoy 1.40).
        self.route_timeout_ms = headers
            .get("x-envoy-upstream-rq-timeout-ms")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(self.settings.route_timeout_ms);
        headers.remove("x-envoy-upstream-rq-timeout-ms");
        headers.add(
            "x-envoy-expected-rq-timeout-ms",
            &self.route_timeout_ms.to_string(),
        );
        self.upstream = Some(UpstreamRequest {
            cluster,
            headers: headers.pairs().to_vec(),
            body: Vec::new(),
            trailers: Vec::new(),
        });
        self.events
            .push(StreamEvent::UpstreamHeaders { end_of_stream: eos });
        if eos {
            self.request_complete();
        }
    }

    /// The whole request went upstream: the backend answers it (its answer reaches the filter
    /// when nothing due comes first).
    fn request_complete(&mut self) {
        self.request.complete = true;
        let Some(request) = self.upstream.as_ref() else {
            return;
        };
        let answer = (self.backend)(request);
        self.input.push_back(Input::Backend(answer));
    }

    fn response_complete(&mut self) {
        self.response.complete = true;
        let headers = self.downstream.clone().unwrap_or_default();
        let mut result = final_response(
            headers,
            std::mem::take(&mut self.client_body),
            Origin::Backend,
            None,
        );
        result.trailers = std::mem::take(&mut self.client_trailers);
        self.done = Some(result);
    }

    // ---- local replies -------------------------------------------------------------------

    /// The filter's local reply (Envoy's `sendLocalReply`): before the backend's response
    /// reached Envoy it passes through the filter's response callbacks; once the response is
    /// there but the client has none of it, it replaces it without them (verified on Envoy
    /// 1.40 for a reply from the response headers); once the client has the response headers,
    /// Envoy can only reset the stream. Either way nothing more reaches the filter.
    fn local_reply(&mut self, reply: LocalReplyRequest) {
        self.events.push(StreamEvent::LocalReply {
            status: reply.status,
        });
        self.input.clear();
        let result = if !self.response_started {
            self.reply_through_filter(reply, Origin::Filter)
        } else if let Some(headers) = self.downstream.clone() {
            self.events.push(StreamEvent::Reset);
            let mut r = final_response(
                headers,
                std::mem::take(&mut self.client_body),
                Origin::Backend,
                None,
            );
            r.reset = true;
            r
        } else {
            let headers = local_reply_headers(&reply);
            self.events.push(StreamEvent::DownstreamHeaders {
                status: reply.status,
                end_of_stream: reply.body.is_empty(),
            });
            if !reply.body.is_empty() {
                self.events.push(StreamEvent::DownstreamBody {
                    size: reply.body.len(),
                    end_of_stream: true,
                });
            }
            final_response(headers, reply.body, Origin::Filter, Some(reply.details))
        };
        self.done = Some(result);
    }

    /// One of Envoy's own replies (the router's), before any response started, with its
    /// `response.code_details`, as the gateway's `local_reply_config` rewrites it (or as Envoy
    /// sends it without one).
    fn envoy_reply(&mut self, status: u16, (message, raw, details): (&str, &str, &str)) {
        state(|s| {
            s.properties.insert(
                "response.code".into(),
                PropertyValue::Int(i64::from(status)).encode(),
            );
            s.properties.insert(
                "response.code_details".into(),
                PropertyValue::Str(details.into()).encode(),
            );
        });
        let reply = if self.settings.local_reply_mapping {
            envoy_error(status, message)
        } else {
            LocalReplyRequest {
                status,
                details: details.to_string(),
                headers: Vec::new(),
                body: raw.as_bytes().to_vec(),
            }
        };
        self.events.push(StreamEvent::EnvoyReply {
            status: reply.status,
        });
        self.input.clear();
        let result = self.reply_through_filter(reply, Origin::Envoy);
        self.done = Some(result);
    }

    /// A reply made before the response started (the filter's or Envoy's own) goes through the
    /// filter's response callbacks like a backend response (verified on Envoy 1.40). The filter
    /// may replace one of Envoy's own replies with a reply of its own from its response headers
    /// (verified on Envoy 1.40); anything else it asks for meanwhile (another reply while its
    /// own passes, pausing, continuing) is ignored, as Envoy ignores it; call-outs it makes are
    /// cancelled when the stream ends.
    fn reply_through_filter(&mut self, reply: LocalReplyRequest, origin: Origin) -> StreamResult {
        self.response_started = true;
        let headers = local_reply_headers(&reply);
        let body = reply.body;
        let eos = body.is_empty();
        let n = headers.len();
        state(|s| {
            s.request_headers_open = false;
            s.response_headers = headers;
            s.response_headers_open = true;
        });
        let returned =
            self.stream_callback(|id| unsafe { guest::proxy_on_response_headers(id, n, eos) });
        self.events.push(StreamEvent::ResponseHeaders {
            end_of_stream: eos,
            returned,
        });
        if origin == Origin::Envoy {
            if let Some(replaced) = state(|s| s.local_reply.take()).flatten() {
                self.ignore_deferred();
                self.events.push(StreamEvent::LocalReply {
                    status: replaced.status,
                });
                return final_response(
                    local_reply_headers(&replaced),
                    replaced.body,
                    Origin::Filter,
                    Some(replaced.details),
                );
            }
        }
        self.ignore_deferred();
        let mut out_body = body.clone();
        if !body.is_empty() {
            let size = body.len();
            state(|s| {
                s.response_headers_open = false;
                s.response_body = BodyState {
                    chunk: body,
                    open: true,
                    eos: true,
                    ..BodyState::default()
                };
            });
            let returned =
                self.stream_callback(|id| unsafe { guest::proxy_on_response_body(id, size, true) });
            self.events.push(StreamEvent::ResponseBody {
                chunk: size,
                size,
                end_of_stream: true,
                returned,
            });
            self.ignore_deferred();
            out_body = state(|s| std::mem::take(&mut s.response_body).chunk).unwrap_or_default();
        }
        let headers = state(|s| {
            s.response_headers_open = false;
            s.response_headers.clone()
        })
        .unwrap_or_default();
        self.events.push(StreamEvent::DownstreamHeaders {
            status: status_of(&headers),
            end_of_stream: out_body.is_empty(),
        });
        if !out_body.is_empty() {
            self.events.push(StreamEvent::DownstreamBody {
                size: out_body.len(),
                end_of_stream: true,
            });
        }
        let details = (origin == Origin::Filter).then_some(reply.details);
        final_response(headers, out_body, origin, details)
    }

    fn ignore_deferred(&mut self) {
        self.register_calls();
        state(|s| {
            s.local_reply = None;
            s.continue_request = false;
            s.continue_response = false;
        });
    }
}

fn status_of(headers: &Headers) -> u16 {
    headers
        .get(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
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
        events: Vec::new(),
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
    // Envoy's `isLoopbackAddress` is 127.0.0.1 or ::1 exactly (verified on 1.40: a peer
    // 127.0.0.5 is appended as itself).
    let loopback = |ip: &IpAddr| {
        *ip == IpAddr::from([127, 0, 0, 1]) || *ip == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
    };
    let appended = match peer {
        Some(ip) if !loopback(&ip) => ip.to_string(),
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
    fn only_127_0_0_1_and_ipv6_loopback_are_replaced_by_envoys_own_address() {
        // Verified on Envoy 1.40 (use_remote_address): a peer 127.0.0.5 is appended as itself.
        let settings = HostSettings {
            local_address: "192.0.2.2".into(),
            ..HostSettings::default()
        };
        for (source, appended) in [
            ("127.0.0.1:1", "192.0.2.2"),
            ("[::1]:1", "192.0.2.2"),
            ("127.0.0.5:1", "127.0.0.5"),
        ] {
            let mut input = StreamInput::new("GET", "/");
            input.source = source.into();
            let h = envoy_request_headers(&input, &settings, "id");
            assert_eq!(h.get("x-forwarded-for"), Some(appended), "{source}");
        }
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
