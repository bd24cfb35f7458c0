//! End-to-end: a policy waiting for a call-out holds the whole request in the real Envoy 1.40.
//! The authorization service (an External Authorization policy's) answers slowly; the request
//! carries a body that arrives while the call is pending. The backend must not be reached before
//! the answer, and never when the answer refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_harness::expect_status;
use tollgate_harness::live::{self, Answer, Cluster, Envoy, ScriptedServer};

const AUTH_DELAY: Duration = Duration::from_millis(800);

struct World {
    envoy: Envoy,
    authz: ScriptedServer,
    backend: ScriptedServer,
}

fn world(failure_mode: &str) -> Option<World> {
    if !live::e2e_available() {
        return None;
    }
    // Allows `Bearer good`, refuses anything else; always slowly.
    let authz = ScriptedServer::start(|r| {
        let answer = if r.header("authorization") == Some("Bearer good") {
            Answer::new(200).header("x-auth-user", "alice")
        } else {
            Answer::new(403)
        };
        answer.after(AUTH_DELAY)
    })
    .unwrap();
    let backend = ScriptedServer::start(|r| Answer::new(200).body(&r.body)).unwrap();
    let config = json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1", "publicAPI": true,
                  "endpoint": "http://127.0.0.1/", "cluster": "backend",
                  "apiPolicies": [{"policy": "ext-authz", "config": {
                      "url": format!("http://127.0.0.1:{}/check", authz.port), "cluster": "authz",
                      "timeoutMs": 3000, "upstreamHeaders": ["x-auth-user"], "failureMode": failure_mode}}]}]
    });
    let yaml = live::gateway_yaml(
        &config.to_string(),
        &[
            Cluster::plain("backend", backend.port),
            Cluster::plain("authz", authz.port),
        ],
    )
    .unwrap();
    let envoy = Envoy::start(&yaml, 1).unwrap();
    Some(World {
        envoy,
        authz,
        backend,
    })
}

/// Sends a POST whose body comes in two parts, the second `gap` after the first, and returns
/// the status line and body of the answer.
fn post_in_parts(addr: &str, token: &str, parts: [&[u8]; 2], gap: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let len = parts[0].len() + parts[1].len();
    let head = format!(
        "POST /t/a/1/upload HTTP/1.1\r\nhost: gw\r\nauthorization: {token}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(parts[0]).unwrap();
    std::thread::sleep(gap);
    let _ = s.write_all(parts[1]);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn a_post_is_held_until_the_authorization_service_answers() {
    let Some(w) = world("closed") else { return };
    let sent = Instant::now();
    let (status, body) = post_in_parts(
        &w.envoy.addr(),
        "Bearer good",
        [b"first half,", b" second half"],
        Duration::from_millis(200),
    );
    assert_eq!(
        status,
        200,
        "POST /t/a/1/upload in two parts with Bearer good: expected 200\n{body}\n{}",
        w.envoy.log()
    );
    assert_eq!(body, "first half, second half");
    let answered = w.authz.answered()[0];
    let reached = w.backend.received();
    assert_eq!(reached.len(), 1);
    assert!(
        reached[0].at >= answered,
        "the backend was reached {:?} after sending, before the authorization answer ({:?})",
        reached[0].at - sent,
        answered - sent
    );
    assert_eq!(reached[0].header("x-auth-user"), Some("alice"));
}

#[test]
fn a_refused_post_never_reaches_the_backend() {
    let Some(w) = world("closed") else { return };
    let (status, body) = post_in_parts(
        &w.envoy.addr(),
        "Bearer bad",
        [b"sensitive", b" payload"],
        Duration::from_millis(200),
    );
    assert_eq!(
        status, 403,
        "POST /t/a/1/upload in two parts with Bearer bad: expected 403\n{body}"
    );
    assert!(body.contains("14001"), "{body}");
    // Give a leaked request time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.backend.received().is_empty());
    assert_eq!(w.authz.received().len(), 1);
}

#[test]
fn an_unreachable_authorization_service_refuses_with_the_gateways_503() {
    if !live::e2e_available() {
        return;
    }
    let backend = ScriptedServer::start(|_| Answer::new(200)).unwrap();
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1", "publicAPI": true,
                  "endpoint": "http://127.0.0.1/", "cluster": "backend",
                  "apiPolicies": [{"policy": "ext-authz", "config": {
                      "url": format!("http://127.0.0.1:{dead}/check"), "cluster": "authz"}}]}]
    });
    let yaml = live::gateway_yaml(
        &config.to_string(),
        &[
            Cluster::plain("backend", backend.port),
            Cluster::plain("authz", dead),
        ],
    )
    .unwrap();
    let envoy = Envoy::start(&yaml, 1).unwrap();
    let r = envoy
        .request(
            "POST",
            "/t/a/1/x",
            &[("authorization", "Bearer good")],
            b"data",
        )
        .unwrap();
    expect_status!(r, 503);
    assert!(r.header("x-gateway-error").is_some());
    assert!(backend.received().is_empty());
}

#[test]
fn a_call_to_a_cluster_envoy_does_not_know_refuses_the_request() {
    if !live::e2e_available() {
        return;
    }
    let backend = ScriptedServer::start(|_| Answer::new(200)).unwrap();
    let config = json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1", "publicAPI": true,
                  "endpoint": "http://127.0.0.1/", "cluster": "backend",
                  "apiPolicies": [{"policy": "ext-authz", "config": {
                      "url": "http://authz.invalid:9/check", "cluster": "no_such_cluster"}}]}]
    });
    let yaml = live::gateway_yaml(
        &config.to_string(),
        &[Cluster::plain("backend", backend.port)],
    )
    .unwrap();
    let envoy = Envoy::start(&yaml, 1).unwrap();
    let r = envoy.get("/t/a/1/x", &[]).unwrap();
    expect_status!(r, 503);
    assert!(backend.received().is_empty());
}
