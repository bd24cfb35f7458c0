//! The native host answers call-outs as late as Envoy may: after the request body, between two
//! chunks, or never. Probe filters written against the SDK hold the request (or the response)
//! while their call is pending, or deliberately do not, and the event log shows what reached
//! the backend and the client, and when.
//!
//! What the host does here was checked against Envoy 1.40 with a probe filter that paused the
//! body while a slow cluster answered (see `release` and `proxy_continue_stream` in the host).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde_json::json;
use tollgate_harness::host::{
    BackendResponse, CallStub, CallTiming, Direction, Host, HostSettings, Origin, Returned,
    StreamEvent, StreamInput, StreamResult, StubAnswer, Upstream,
};
use tollgate_harness::replay::run::{self, Verdict};
use tollgate_harness::replay::{fixture, report};

fn stub(cluster: &str) -> CallStub {
    CallStub {
        cluster: cluster.into(),
        method: None,
        path: None,
        answer: StubAnswer::Respond {
            status: 200,
            headers: vec![],
            body: b"key set".to_vec(),
        },
        delay: Duration::ZERO,
    }
}

/// Runs one request through a probe; also says how often the backend was called.
fn run(init: fn(), input: StreamInput) -> (StreamResult, usize) {
    let host = Host::new(HostSettings {
        stubs: vec![stub("keys"), stub("more-keys")],
        ..HostSettings::default()
    });
    let vm = host.start_vm_with(init, b"").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let r = vm
        .run(input, move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Upstream::Respond(BackendResponse {
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: b"from backend".to_vec(),
                trailers: vec![],
            })
        })
        .unwrap();
    (r, calls.load(Ordering::SeqCst))
}

/// A POST whose body arrives in two chunks.
fn post(timing: CallTiming) -> StreamInput {
    StreamInput::new("POST", "/")
        .body(b"ab")
        .body(b"cd")
        .call_timing(timing)
}

/// Where the first event `matches` is; fails with the whole log when there is none.
fn at(r: &StreamResult, matches: impl Fn(&StreamEvent) -> bool) -> usize {
    r.position(matches)
        .unwrap_or_else(|| panic!("no such event in {:#?}", r.events))
}

fn is_answer(e: &StreamEvent) -> bool {
    matches!(e, StreamEvent::CallAnswered { .. })
}

fn is_upstream(e: &StreamEvent) -> bool {
    matches!(e, StreamEvent::UpstreamHeaders { .. })
}

/// What went upstream as body: (size, end of stream) per piece.
fn upstream_pieces(r: &StreamResult) -> Vec<(usize, bool)> {
    r.events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::UpstreamBody {
                size,
                end_of_stream,
            } => Some((*size, *end_of_stream)),
            _ => None,
        })
        .collect()
}

// ---- a request held while a call-out is pending ---------------------------------------------

struct GateRoot;
impl Context for GateRoot {}
impl RootContext for GateRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate::default()))
    }
}

/// Fetches a key set (cluster `keys`) when the request headers arrive, like a JWT policy, and
/// holds the request until it has the answer. Request headers choose variations:
/// `x-leaky` lets body chunks through while the call is pending (the bug the harness must
/// show); `x-read-body` copies the body it can read at the answer into `x-body-at-answer`;
/// `x-second-call` fetches `more-keys` from the first answer before letting go; `x-deny`
/// answers 403 itself once the keys arrive.
#[derive(Default)]
struct Gate {
    pending: bool,
    answers: u32,
    leaky: bool,
    read_body: bool,
    second_call: bool,
    deny: bool,
}

impl Gate {
    fn fetch(&mut self, cluster: &str) {
        let headers = vec![
            (":method", "GET"),
            (":path", "/jwks"),
            (":authority", "idp"),
        ];
        self.dispatch_http_call(cluster, headers, None, vec![], Duration::from_secs(5))
            .unwrap();
        self.pending = true;
    }

    fn hold(&self) -> Action {
        if self.pending && !self.leaky {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl Context for Gate {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        self.answers += 1;
        if self.second_call && self.answers == 1 {
            self.fetch("more-keys");
            return;
        }
        self.pending = false;
        if self.deny {
            self.send_http_response(403, vec![], Some(b"token refused"));
            return;
        }
        if self.read_body {
            let body = self
                .get_http_request_body(0, usize::MAX)
                .map_or("(none)".to_string(), |b| {
                    String::from_utf8_lossy(&b).into_owned()
                });
            self.set_http_request_header("x-body-at-answer", Some(&body));
        }
        self.resume_http_request();
    }
}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_request_header("x-tollgate-cluster", Some("c"));
        let flag = |name: &str| self.get_http_request_header(name).is_some();
        (self.leaky, self.read_body, self.second_call, self.deny) = (
            flag("x-leaky"),
            flag("x-read-body"),
            flag("x-second-call"),
            flag("x-deny"),
        );
        self.fetch("keys");
        Action::Pause
    }

    fn on_http_request_body(&mut self, _: usize, _: bool) -> Action {
        self.hold()
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        self.hold()
    }
}

fn gate_init() {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(GateRoot) });
}

#[test]
fn a_request_held_for_a_call_out_reaches_the_backend_after_the_answer_with_its_whole_body_once() {
    let (r, backend_calls) = run(gate_init, post(CallTiming::AfterBody));
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(backend_calls, 1);
    assert_eq!(r.upstream.as_ref().unwrap().body, b"abcd");
    assert!(at(&r, is_answer) < at(&r, is_upstream), "{:#?}", r.events);
    // The body went upstream in one piece, without the filter seeing it again.
    assert_eq!(upstream_pieces(&r), vec![(4, true)]);
}

#[test]
fn after_body_the_answer_comes_once_every_chunk_and_the_end_of_stream_reached_the_filter() {
    let (r, _) = run(gate_init, post(CallTiming::AfterBody));
    let bodies: Vec<&StreamEvent> = r
        .events
        .iter()
        .take(at(&r, is_answer))
        .filter(|e| matches!(e, StreamEvent::RequestBody { .. }))
        .collect();
    // Each callback is told everything held so far, as Envoy does while the filter buffers.
    assert_eq!(
        bodies,
        vec![
            &StreamEvent::RequestBody {
                chunk: 2,
                size: 2,
                end_of_stream: false,
                returned: Returned::Pause
            },
            &StreamEvent::RequestBody {
                chunk: 2,
                size: 4,
                end_of_stream: false,
                returned: Returned::Pause
            },
            &StreamEvent::RequestBody {
                chunk: 0,
                size: 4,
                end_of_stream: true,
                returned: Returned::Pause
            },
        ]
    );
}

#[test]
fn a_filter_that_lets_the_body_through_while_its_call_is_pending_reaches_the_backend_before_the_answer(
) {
    let (r, _) = run(
        gate_init,
        post(CallTiming::AfterBody).header("x-leaky", "1"),
    );
    assert!(at(&r, is_upstream) < at(&r, is_answer), "{:#?}", r.events);
    assert_eq!(r.upstream.as_ref().unwrap().body, b"abcd");
}

#[test]
fn a_call_out_that_is_never_answered_stalls_the_held_request_short_of_the_backend() {
    let (r, backend_calls) = run(gate_init, post(CallTiming::Never));
    assert_eq!(r.status, 0);
    assert_eq!(r.origin, Origin::None);
    assert_eq!(backend_calls, 0);
    assert!(r.upstream.is_none());
    assert!(r.position(is_upstream).is_none(), "{:#?}", r.events);
    assert!(
        r.stalled.as_deref().unwrap().contains("never answered"),
        "{:?}",
        r.stalled
    );
    assert!(!r.callouts[0].answered);
    // Envoy cancels what is still pending when the stream goes.
    assert!(r.events.contains(&StreamEvent::CallCancelled {
        token: r.callouts[0].token
    }));
}

#[test]
fn a_call_out_that_is_never_answered_does_not_stop_a_filter_that_let_the_request_through() {
    let (r, backend_calls) = run(gate_init, post(CallTiming::Never).header("x-leaky", "1"));
    assert_eq!(r.status, 200);
    assert_eq!(backend_calls, 1);
    assert!(r.position(is_answer).is_none());
}

#[test]
fn an_answer_can_arrive_between_two_body_chunks() {
    let (r, _) = run(gate_init, post(CallTiming::Delayed(1)));
    let answer = at(&r, is_answer);
    let bodies: Vec<usize> = r
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, StreamEvent::RequestBody { .. }))
        .map(|(i, _)| i)
        .collect();
    assert!(bodies[0] < answer && answer < bodies[1], "{:#?}", r.events);
    // The first chunk went on with the headers at the answer; the rest followed by itself
    // (verified on Envoy 1.40: every chunk reaches the backend).
    assert_eq!(upstream_pieces(&r), vec![(2, false), (2, false), (0, true)]);
    assert_eq!(r.upstream.as_ref().unwrap().body, b"abcd");
}

#[test]
fn the_body_a_filter_paused_on_is_readable_when_its_call_out_is_answered() {
    let (r, _) = run(
        gate_init,
        post(CallTiming::AfterBody).header("x-read-body", "1"),
    );
    let up = r.upstream.unwrap();
    assert_eq!(up.header("x-body-at-answer"), Some("abcd"));
}

#[test]
fn no_body_is_readable_at_an_answer_that_comes_before_any_body_callback_paused() {
    let (r, _) = run(
        gate_init,
        post(CallTiming::Immediate).header("x-read-body", "1"),
    );
    let up = r.upstream.unwrap();
    assert_eq!(up.header("x-body-at-answer"), Some("(none)"));
    assert_eq!(up.body, b"abcd");
}

#[test]
fn a_second_call_out_made_from_the_first_answer_holds_the_request_until_it_is_answered_too() {
    let (r, _) = run(
        gate_init,
        post(CallTiming::AfterBody).header("x-second-call", "1"),
    );
    assert_eq!(r.status, 200);
    let clusters: Vec<&str> = r.callouts.iter().map(|c| c.cluster.as_str()).collect();
    assert_eq!(clusters, vec!["keys", "more-keys"]);
    assert!(r.callouts.iter().all(|c| c.answered));
    let second = r.callouts[1].token;
    let dispatched = at(
        &r,
        |e| matches!(e, StreamEvent::CallDispatched { token, .. } if *token == second),
    );
    let answered = at(&r, |e| *e == StreamEvent::CallAnswered { token: second });
    assert!(at(&r, is_answer) < dispatched, "{:#?}", r.events);
    assert!(answered < at(&r, is_upstream), "{:#?}", r.events);
    assert_eq!(r.upstream.as_ref().unwrap().body, b"abcd");
}

#[test]
fn held_trailers_reach_the_filter_before_the_answer_and_go_upstream_after_it() {
    let input = post(CallTiming::AfterBody).trailer("x-checksum", "abcd");
    let (r, _) = run(gate_init, input);
    let trailers = at(&r, |e| matches!(e, StreamEvent::RequestTrailers { .. }));
    let upstream_trailers = at(&r, |e| *e == StreamEvent::UpstreamTrailers);
    assert!(trailers < at(&r, is_answer), "{:#?}", r.events);
    assert!(at(&r, is_answer) < upstream_trailers, "{:#?}", r.events);
    let up = r.upstream.unwrap();
    assert_eq!(up.body, b"abcd");
    assert_eq!(
        up.trailers,
        vec![("x-checksum".to_string(), "abcd".to_string())]
    );
}

#[test]
fn a_local_reply_made_from_a_late_answer_ends_the_stream_without_the_backend() {
    let (r, backend_calls) = run(gate_init, post(CallTiming::AfterBody).header("x-deny", "1"));
    assert_eq!(r.status, 403);
    assert_eq!(r.origin, Origin::Filter);
    assert_eq!(r.text(), "token refused");
    assert_eq!(backend_calls, 0);
    assert!(r.upstream.is_none());
    // Like any reply made before the response started, it passes the response callbacks.
    let reply = at(&r, |e| *e == StreamEvent::LocalReply { status: 403 });
    assert!(at(&r, |e| matches!(e, StreamEvent::ResponseHeaders { .. })) > reply);
}

#[test]
fn the_answer_releases_the_held_request_through_the_filters_continue() {
    let (r, _) = run(gate_init, post(CallTiming::AfterBody));
    let answer = at(&r, is_answer);
    let continued = at(&r, |e| *e == StreamEvent::Continued(Direction::Request));
    assert!(answer < continued && continued < at(&r, is_upstream));
}

// ---- a response held while a call-out is pending --------------------------------------------

struct InspectRoot;
impl Context for InspectRoot {}
impl RootContext for InspectRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Inspect { pending: false }))
    }
}

/// Lets the request through, then asks cluster `keys` about the response when its headers
/// arrive and holds the response (headers and body) until the answer, which it marks on the
/// response headers.
struct Inspect {
    pending: bool,
}

impl Context for Inspect {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        self.pending = false;
        self.set_http_response_header("x-checked", Some("yes"));
        self.resume_http_response();
    }
}

impl HttpContext for Inspect {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_request_header("x-tollgate-cluster", Some("c"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let headers = vec![(":method", "GET"), (":path", "/check"), (":authority", "k")];
        self.dispatch_http_call("keys", headers, None, vec![], Duration::from_secs(5))
            .unwrap();
        self.pending = true;
        Action::Pause
    }

    fn on_http_response_body(&mut self, _: usize, _: bool) -> Action {
        if self.pending {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

fn inspect_init() {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(InspectRoot) });
}

#[test]
fn a_call_out_made_in_the_response_headers_holds_the_response_body_until_the_answer() {
    let input = StreamInput::new("GET", "/").call_timing(CallTiming::AfterBody);
    let (r, _) = run(inspect_init, input);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "from backend");
    // Set from the answer: the held response headers were still the filter's to change.
    assert_eq!(r.header("x-checked"), Some("yes"));
    let answer = at(&r, is_answer);
    let last_body = r
        .events
        .iter()
        .rposition(|e| matches!(e, StreamEvent::ResponseBody { .. }))
        .unwrap();
    let to_client = at(&r, |e| matches!(e, StreamEvent::DownstreamHeaders { .. }));
    assert!(last_body < answer && answer < to_client, "{:#?}", r.events);
}

#[test]
fn a_response_whose_call_out_is_never_answered_never_reaches_the_client() {
    let input = StreamInput::new("GET", "/").call_timing(CallTiming::Never);
    let (r, backend_calls) = run(inspect_init, input);
    assert_eq!(backend_calls, 1);
    assert_eq!(r.status, 0);
    assert!(
        r.stalled
            .as_deref()
            .unwrap()
            .contains("paused the response"),
        "{:?}",
        r.stalled
    );
    assert!(r
        .position(|e| matches!(e, StreamEvent::DownstreamHeaders { .. }))
        .is_none());
}

// ---- the fixture format ---------------------------------------------------------------------

#[test]
fn a_fixture_exchange_chooses_when_its_call_outs_are_answered() {
    let exchange = |timing: serde_json::Value, seen: &str| {
        let mut e = json!({
            "request": {"method": "POST", "path": "/", "headers": {"x-read-body": "1"},
                        "chunks": ["ab", "cd"]},
            "response": {"status": 200},
            "expect": {"status": 200, "backend": {"headers": {"x-body-at-answer": seen}}}
        });
        if !timing.is_null() {
            e["callTiming"] = timing;
        }
        e
    };
    let suite = fixture::parse(
        std::path::Path::new("timing.json"),
        &json!({
            "config": {},
            "clusters": ["c"],
            "stubs": [{"cluster": "keys", "body": "key set"}],
            "exchanges": [
                exchange(serde_json::Value::Null, "(none)"),
                exchange(json!("afterBody"), "abcd"),
                exchange(json!({"delayed": 1}), "ab")
            ]
        })
        .to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let opts = run::Options {
        init: gate_init,
        ..run::Options::default()
    };
    let result = run::native(&suite, &opts).unwrap_or_else(|e| panic!("{e}"));
    let failures: Vec<String> = result
        .outcomes
        .iter()
        .filter(|o| o.verdict != Verdict::Pass)
        .map(|o| format!("{}: {}", o.label, report::reasons(o).join("; ")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
