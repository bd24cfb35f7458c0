//! The limit policies through the real filter code on the native host: a rate limit service's
//! answers (gRPC call-outs answered from stubs) decide as the service says, and local counters
//! stay bounded over a long virtual run: expired windows are swept, keys never exceed the
//! slot bound, and no subject is ever admitted beyond its limit in a window.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_core::counters::{MAX_SLOT_BYTES, SLOTS, SWEEP_BATCH};
use tollgate_core::rls;
use tollgate_harness::host::{
    BackendResponse, CallStub, Host, HostSettings, StreamInput, StubAnswer, Upstream,
};

fn ok() -> Upstream {
    Upstream::Respond(BackendResponse {
        status: 200,
        ..BackendResponse::default()
    })
}

const RLS_PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

fn rls_config(failure_mode: &str) -> Vec<u8> {
    json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1", "publicAPI": true,
                  "endpoint": "http://127.0.0.1/", "cluster": "backend",
                  "apiPolicies": [{"policy": "rate-limiting", "config": {
                      "limit": 50, "granularity": "Api", "period": "Minute",
                      "rateLimitService": {"cluster": "ratelimit", "domain": "edge",
                                           "failureMode": failure_mode}}}]}]
    })
    .to_string()
    .into_bytes()
}

/// A host whose rate limit service answers every call with `answer`.
fn host_answering(answer: StubAnswer) -> Host {
    Host::new(HostSettings {
        stubs: vec![CallStub {
            cluster: "ratelimit".into(),
            method: Some("POST".into()),
            path: Some(RLS_PATH.into()),
            answer,
            delay: Duration::ZERO,
        }],
        ..HostSettings::default()
    })
}

fn grpc_ok(response: &rls::Response) -> StubAnswer {
    StubAnswer::Respond {
        status: 200,
        headers: vec![],
        body: rls::encode_response(response),
    }
}

fn status(code: u64, remaining: u64, reset: u64) -> rls::Response {
    rls::Response {
        overall_code: code,
        statuses: vec![rls::DescriptorStatus {
            code,
            limit: Some(50),
            remaining,
            reset_seconds: Some(reset),
        }],
    }
}

#[test]
fn a_rate_limit_services_ok_lets_the_request_through_with_its_numbers() {
    let host = host_answering(grpc_ok(&status(rls::CODE_OK, 12, 30)));
    let vm = host.start_vm(&rls_config("closed")).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/a/1/x"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("12"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("30"));
    assert_eq!(r.callouts.len(), 1);
    let sent = rls::decode_request(&r.callouts[0].body).unwrap();
    assert_eq!(sent.domain, "edge");
    assert_eq!(sent.limit, Some((50, 2)));
}

#[test]
fn a_rate_limit_services_over_limit_refuses_with_429_before_the_backend() {
    let host = host_answering(grpc_ok(&status(rls::CODE_OVER_LIMIT, 0, 7)));
    let vm = host.start_vm(&rls_config("closed")).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/a/1/x"), |_| {
            panic!("the backend was called")
        })
        .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-policy-failure-code"), Some("10005"));
    assert_eq!(r.header("retry-after"), Some("7"));
}

fn unavailable() -> StubAnswer {
    StubAnswer::Respond {
        status: 200,
        headers: vec![
            ("grpc-status".into(), "14".into()),
            ("grpc-message".into(), "redis unreachable".into()),
        ],
        body: vec![],
    }
}

#[test]
fn a_failing_rate_limit_service_refuses_by_default_and_says_why_in_the_log() {
    let host = host_answering(unavailable());
    let vm = host.start_vm(&rls_config("closed")).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/a/1/x"), |_| {
            panic!("the backend was called")
        })
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("A policy could not get an answer from ratelimit.")
    );
    assert!(
        r.logs
            .iter()
            .any(|l| l.message.contains("gRPC status 14, redis unreachable")
                && l.message.contains("refused (failureMode closed)")),
        "{:?}",
        r.logs
    );
}

#[test]
fn a_failing_rate_limit_service_lets_requests_through_when_failure_mode_is_open() {
    let host = host_answering(unavailable());
    let vm = host.start_vm(&rls_config("open")).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/a/1/x"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.logs.iter().any(|l| l
        .message
        .contains("let through uncounted (failureMode open)")));
}

#[test]
fn a_rate_limit_service_that_times_out_is_no_answer() {
    let host = host_answering(StubAnswer::Timeout);
    let vm = host.start_vm(&rls_config("closed")).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/a/1/x"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.logs.iter().any(|l| l.message.contains("gRPC status 4")));
}

#[test]
fn an_unknown_rate_limit_service_cluster_refuses() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&rls_config("closed")).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/a/1/x"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 503);
}

/// Unix seconds 2026-01-01T00:00:00Z.
const START: u64 = 1_767_225_600;

fn set_clock(host: &Host, seconds: u64) {
    host.clock().set_nanos(seconds * 1_000_000_000);
}

#[test]
fn expired_windows_are_swept_and_counters_stay_bounded_over_a_long_run() {
    let host = Host::new(HostSettings::default());
    let config: Value = json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1", "publicAPI": true,
                  "endpoint": "http://127.0.0.1/", "cluster": "backend",
                  "apiPolicies": [{"policy": "rate-limiting", "config": {
                      "limit": 5, "granularity": "Ip", "period": "Second"}}]}]
    });
    let config = config.to_string().into_bytes();
    let vms = [
        host.start_vm(&config).unwrap(),
        host.start_vm(&config).unwrap(),
    ];
    // Ten virtual minutes: every second 20 addresses never seen before send one request each,
    // and one busy address sends 8 (5 may pass).
    let seconds = 600u64;
    let mut admitted: HashMap<(u64, String), u32> = HashMap::new();
    for t in 0..seconds {
        set_clock(&host, START + t);
        let mut sources: Vec<String> = (0..20)
            .map(|i| {
                let n = t * 20 + i;
                format!("10.{}.{}.{}:4000", n / 65536 % 256, n / 256 % 256, n % 256)
            })
            .collect();
        sources.extend(std::iter::repeat_n("192.0.2.1:4000".to_string(), 8));
        for (i, source) in sources.into_iter().enumerate() {
            let mut input = StreamInput::new("GET", "/t/a/1/x");
            input.source = source.clone();
            let r = vms[i % 2].run(input, |_| ok()).unwrap();
            if r.status == 200 {
                *admitted.entry((t, source)).or_default() += 1;
            } else {
                assert_eq!(r.status, 429, "{r:?}");
            }
        }
    }
    assert!(admitted.values().all(|n| *n <= 5), "over-admission");
    for t in 0..seconds {
        assert_eq!(
            admitted[&(t, "192.0.2.1:4000".to_string())],
            5,
            "second {t}"
        );
    }
    // Traffic stops; the ticks of one whole sweep pass follow.
    let pass = u64::from(SLOTS / SWEEP_BATCH);
    for t in 0..=pass {
        set_clock(&host, START + seconds + 1 + t);
        for vm in &vms {
            vm.exec(|g| g.tick()).unwrap();
        }
    }
    let counters: Vec<(String, usize)> = host
        .shared()
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("tollgate.ctr."))
        .map(|k| {
            let len = host.shared().get(&k).unwrap().0.len();
            (k, len)
        })
        .collect();
    assert!(!counters.is_empty());
    assert!(counters.len() <= SLOTS as usize);
    assert!(counters.iter().all(|(_, len)| *len <= MAX_SLOT_BYTES));
    // Every slot holds only its (empty) window header: nothing of the past windows is kept.
    let kept: usize = counters.iter().map(|(_, len)| len - 9).sum();
    assert_eq!(kept, 0, "{} bytes of expired entries left", kept);
}
