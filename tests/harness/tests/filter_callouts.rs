//! tollgate itself (not a probe) holds the whole request while a policy's call-out is pending,
//! whenever the answer comes: immediately, after the body and trailers, between two chunks, or
//! never. The policy is External Authorization; the backend must be reached only after the
//! answer, with the whole body exactly once, and never when the answer refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tollgate_harness::host::{
    BackendResponse, CallStub, CallTiming, Host, HostSettings, Origin, StreamEvent, StreamInput,
    StreamResult, StubAnswer, Upstream,
};

fn config(extra_policies: serde_json::Value) -> Vec<u8> {
    let mut policies = vec![json!({"policy": "ext-authz", "config": {
        "url": "http://authz.internal/check", "cluster": "authz", "upstreamHeaders": ["x-auth-user"]}})];
    if let Some(more) = extra_policies.as_array() {
        policies.extend(more.iter().cloned());
    }
    json!({"apis": [{"organizationId": "t", "apiId": "a", "version": "1", "publicAPI": true,
                     "endpoint": "http://backend.internal/", "cluster": "backend",
                     "apiPolicies": policies}]})
    .to_string()
    .into_bytes()
}

fn authz(status: u16) -> CallStub {
    CallStub {
        cluster: "authz".into(),
        method: None,
        path: None,
        answer: StubAnswer::Respond {
            status,
            headers: vec![("x-auth-user".into(), "alice".into())],
            body: Vec::new(),
        },
        delay: Duration::ZERO,
    }
}

/// One request through tollgate; the backend echoes the body it got. Also counts backend calls.
fn run(status: u16, input: StreamInput, extra: serde_json::Value) -> (StreamResult, usize) {
    let host = Host::new(HostSettings {
        stubs: vec![authz(status)],
        ..HostSettings::default()
    });
    let vm = host.start_vm(&config(extra)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let r = vm
        .run(input, move |req| {
            counted.fetch_add(1, Ordering::SeqCst);
            Upstream::Respond(BackendResponse {
                status: 200,
                headers: vec![],
                body: req.body.clone(),
                trailers: vec![],
            })
        })
        .unwrap();
    (r, calls.load(Ordering::SeqCst))
}

fn post(timing: CallTiming) -> StreamInput {
    StreamInput::new("POST", "/t/a/1/upload")
        .header("authorization", "Bearer t")
        .body(b"first,")
        .body(b"second")
        .call_timing(timing)
}

fn answered_before_upstream(r: &StreamResult) {
    let answer = r
        .position(|e| matches!(e, StreamEvent::CallAnswered { .. }))
        .unwrap_or_else(|| panic!("no answer in {:#?}", r.events));
    let upstream = r
        .position(|e| matches!(e, StreamEvent::UpstreamHeaders { .. }))
        .unwrap_or_else(|| panic!("backend never reached: {:#?}", r.events));
    assert!(
        answer < upstream,
        "the backend was reached before the answer: {:#?}",
        r.events
    );
}

#[test]
fn an_answer_after_the_body_and_end_of_stream_still_comes_before_the_backend() {
    let (r, calls) = run(200, post(CallTiming::AfterBody), json!([]));
    assert_eq!((r.status, calls), (200, 1), "{:#?}", r.events);
    answered_before_upstream(&r);
    assert_eq!(r.body, b"first,second");
    assert_eq!(r.upstream.unwrap().header("x-auth-user"), Some("alice"));
}

#[test]
fn an_answer_between_two_chunks_still_comes_before_the_backend() {
    let (r, calls) = run(200, post(CallTiming::Delayed(1)), json!([]));
    assert_eq!((r.status, calls), (200, 1), "{:#?}", r.events);
    answered_before_upstream(&r);
    assert_eq!(r.body, b"first,second");
}

#[test]
fn trailers_arriving_while_the_call_is_pending_are_held_too() {
    let input = post(CallTiming::AfterBody).trailer("x-checksum", "abc");
    let (r, calls) = run(200, input, json!([]));
    assert_eq!((r.status, calls), (200, 1), "{:#?}", r.events);
    answered_before_upstream(&r);
    assert_eq!(
        r.upstream.unwrap().trailers,
        vec![("x-checksum".to_string(), "abc".to_string())]
    );
}

#[test]
fn a_refusal_after_the_body_arrived_never_reaches_the_backend() {
    let (r, calls) = run(403, post(CallTiming::AfterBody), json!([]));
    assert_eq!((r.status, calls), (403, 0), "{:#?}", r.events);
    assert_eq!(r.origin, Origin::Filter);
}

#[test]
fn no_answer_leaves_the_request_held_and_the_backend_uncalled() {
    let (r, calls) = run(200, post(CallTiming::Never), json!([]));
    assert_eq!(calls, 0, "{:#?}", r.events);
    assert!(r.stalled.is_some());
}

#[test]
fn policies_after_the_call_out_run_once_the_answer_came() {
    let deny = json!([{"policy": "ip-blocklist", "config": {"ipList": ["127.0.0.1"], "responseCode": 403}}]);
    let (r, calls) = run(200, post(CallTiming::AfterBody), deny);
    assert_eq!((r.status, calls), (403, 0), "{:#?}", r.events);
    assert_eq!(
        r.header("x-policy-failure-code"),
        Some("10002"),
        "{:#?}",
        r.headers
    );
}

#[test]
fn a_bodiless_get_is_held_until_the_answer() {
    let input = StreamInput::new("GET", "/t/a/1/x").call_timing(CallTiming::Delayed(1));
    let (r, calls) = run(200, input, json!([]));
    assert_eq!((r.status, calls), (200, 1), "{:#?}", r.events);
    answered_before_upstream(&r);
}
