//! End-to-end: Envoy's own upstream failures become the gateway's JSON errors in tollgate itself,
//! so the error contract holds in an Envoy configuration without the bundled
//! `local_reply_config`; and the Timeout policy's read timeout is applied by Envoy's router.
//! The real Envoy 1.40 and tollgate.wasm, a scripted backend whose answers take their time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_harness::http_client::HttpResponse;
use tollgate_harness::live::{self, Answer, Cluster, Envoy, ScriptedServer};

struct World {
    envoy: Envoy,
    _backend: ScriptedServer,
}

fn api(id: &str, cluster: &str, policies: Value) -> Value {
    json!({"organizationId": "t", "apiId": id, "version": "1", "publicAPI": true,
           "endpoint": "http://127.0.0.1/", "cluster": cluster, "apiPolicies": policies})
}

fn timeout(read_ms: &str) -> Value {
    json!({"policy": "timeout", "config": {"timeoutRead": read_ms}})
}

/// A gateway without Envoy's `local_reply_config`: only tollgate can make Envoy's errors JSON.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // `/sleep/<ms>` answers after that long.
        let backend = ScriptedServer::start(|r| {
            let ms = r
                .path
                .strip_prefix("/sleep/")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Answer::new(200)
                .after(Duration::from_millis(ms))
                .header("content-type", "application/json")
                .body(b"{\"ok\":true}")
        })
        .expect("backend");
        let config = json!({"apis": [
            api("quick", "slow", json!([timeout("300")])),
            api("patient", "slow", json!([timeout("3000")])),
            api("route", "slow", json!([])),
            api("down", "dead", json!([])),
            api("nowhere", "no_such_cluster", json!([])),
            api("cors", "dead", json!([{"policy": "cors", "config": {"allowOrigin": ["*"]}}]))
        ]});
        let yaml = live::gateway_yaml_with(
            &config.to_string(),
            &[
                Cluster::plain("slow", backend.port),
                Cluster::plain("dead", 1),
            ],
            false,
        )
        .expect("yaml");
        assert!(!yaml.contains("local_reply_config"));
        World {
            envoy: Envoy::start(&yaml, 1).expect("envoy"),
            _backend: backend,
        }
    })
}

fn get(path: &str, headers: &[(&str, &str)]) -> (HttpResponse, Duration) {
    let envoy = &world().envoy;
    let started = Instant::now();
    let r = envoy.get(path, headers).expect("request");
    (r, started.elapsed())
}

fn gateway_error(r: &HttpResponse, status: u16, message: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("x-gateway-error"), Some(message));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"responseCode": status, "message": message}),
        "{}",
        r.text()
    );
}

macro_rules! e2e {
    () => {
        if !live::e2e_available() {
            return;
        }
    };
}

#[test]
fn a_backend_slower_than_the_read_timeout_gets_the_gateways_504_in_time() {
    e2e!();
    let (r, took) = get("/t/quick/1/sleep/2000", &[]);
    gateway_error(&r, 504, "API backend timed out.");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn a_backend_within_the_read_timeout_answers() {
    e2e!();
    let (r, _) = get("/t/patient/1/sleep/500", &[]);
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
}

#[test]
fn the_read_timeout_may_exceed_the_routes() {
    e2e!();
    // The test gateway's route timeout is 5 s; the policy's 300 ms and 3 s both replace it, and
    // without the policy a 1 s backend passes.
    let (r, _) = get("/t/route/1/sleep/1000", &[]);
    assert_eq!(r.status, 200);
}

#[test]
fn an_unreachable_backend_gets_the_gateways_503_without_envoys_error_mapping() {
    e2e!();
    let (r, _) = get("/t/down/1/x", &[]);
    gateway_error(&r, 503, "API backend unavailable.");
}

#[test]
fn an_unknown_cluster_gets_the_gateways_503_without_envoys_error_mapping() {
    e2e!();
    let (r, _) = get("/t/nowhere/1/x", &[]);
    gateway_error(&r, 503, "API backend cluster not found.");
}

#[test]
fn a_mapped_upstream_error_still_carries_the_cors_headers() {
    e2e!();
    let (r, _) = get("/t/cors/1/x", &[("origin", "https://a.test")]);
    gateway_error(&r, 503, "API backend unavailable.");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.test")
    );
}
