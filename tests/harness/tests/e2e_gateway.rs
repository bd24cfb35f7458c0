//! End-to-end: the real Envoy 1.40 with the real tollgate.wasm and a real echo backend, all on
//! 127.0.0.1. One gateway is shared by the tests of this file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use serde_json::{json, Value};
use tollgate_harness::expect_status;
use tollgate_harness::http_client::HttpResponse;
use tollgate_harness::live::{self, Backend, Cluster, Envoy};

struct World {
    envoy: Envoy,
    _backend: Backend,
}

fn block(ip: &str, status: u16) -> Value {
    json!({"policyImpl": "class:io.apiman.gateway.engine.policies.IPBlacklistPolicy",
           "policyJsonConfig": json!({"ipList": [ip], "responseCode": status}).to_string()})
}

fn step(side: &str, name: &str, value: &str) -> Value {
    json!({"policy": "simple-header", "config": {"addHeaders": [
        {"headerName": name, "headerValue": value, "applyTo": side, "overwrite": true}]}})
}

fn plugin_config() -> Value {
    json!({
        "apis": [
            {"organizationId": "t", "apiId": "public", "version": "1", "publicAPI": true,
             "endpoint": "http://127.0.0.1/base/", "cluster": "echo",
             "apiPolicies": [
                {"policy": "cors", "config": {"allowOrigin": ["https://ok.test"], "allowMethods": ["GET", "PUT"], "maxAge": 60}},
                {"policy": "http-security", "config": {"frameOptions": "DENY", "contentTypeOptions": true,
                    "hsts": {"enabled": true, "maxAge": 100}}},
                {"policy": "ignored-resources", "config": {"rules": [{"verb": "*", "pathPattern": "/hidden/.*"}]}},
                {"policy": "header-allow-deny", "config": {"entries": [{"headerName": "X-Tier",
                    "allowIfHeaderMissing": true, "allowIfNoRulesMatch": true, "rules": [{"headerValueRegex": "banned", "allowRequest": false}]}]}}
             ]},
            {"organizationId": "t", "apiId": "private", "version": "1", "endpoint": "http://backend.internal:8080/svc",
             "cluster": "echo",
             "apiPolicies": [step("Request", "X-Step", "api"), step("Response", "X-Resp-Step", "api")]},
            {"organizationId": "t", "apiId": "keep", "version": "1", "endpoint": "http://127.0.0.1/", "cluster": "echo",
             "disableKeysStrip": true},
            {"organizationId": "t", "apiId": "nocluster", "version": "1", "publicAPI": true,
             "endpoint": "http://127.0.0.1/", "cluster": "does_not_exist"},
            {"organizationId": "t", "apiId": "down", "version": "1", "publicAPI": true,
             "endpoint": "http://127.0.0.1/", "cluster": "dead"}
        ],
        "plans": [{"planId": "Gold", "policies": [
            step("Request", "X-Step", "plan"), step("Response", "X-Resp-Step", "plan"),
            {"policy": "ip-allowlist", "config": {"ipList": ["127.0.0.0/8"], "responseCode": 403}}]}],
        "clients": [
            {"organizationId": "t", "clientId": "gold-app", "version": "1", "apiKey": "gold-key-0001",
             "policies": [step("Request", "X-Step", "client"), step("Response", "X-Resp-Step", "client")],
             "contracts": [{"apiOrgId": "t", "apiId": "private", "apiVersion": "1", "plan": "Gold"}]},
            {"organizationId": "t", "clientId": "blocked-app", "version": "1", "apiKey": "blocked-key-01",
             "contracts": [
                {"apiOrgId": "t", "apiId": "private", "apiVersion": "1", "plan": "Bronze", "policies": [block("127.0.0.1", 0)]},
                {"apiOrgId": "t", "apiId": "keep", "apiVersion": "1", "policies": [
                    {"policy": "api-key", "config": {"requestHeader": "X-Backend-Key"}}]}
             ]},
            {"organizationId": "t", "clientId": "lonely", "version": "1", "apiKey": "lonely-key-01", "contracts": []}
        ]
    })
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let backend = Backend::echo("echo").expect("backend");
        let yaml = live::gateway_yaml(
            &serde_json::to_string_pretty(&plugin_config()).unwrap(),
            &[
                Cluster::plain("echo", backend.port),
                Cluster::plain("dead", 1),
            ],
        )
        .expect("yaml");
        // No JWT policy here: the module tollgate-gen would pick for this registry.
        let yaml = live::with_lite_module(&yaml).expect("lite module");
        let envoy = Envoy::start(&yaml, 1).expect("envoy");
        World {
            envoy,
            _backend: backend,
        }
    })
}

fn get(path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    world().envoy.get(path, headers).expect("request")
}

/// What the echo backend received, as JSON.
fn seen(r: &HttpResponse) -> Value {
    expect_status!(r, 200, "the backend must be reached");
    r.json()
}

fn seen_header(seen: &Value, name: &str) -> Option<String> {
    seen["headers"].as_array()?.iter().find_map(|h| {
        (h[0].as_str()? == name).then(|| h[1].as_str().unwrap_or_default().to_string())
    })
}

macro_rules! e2e {
    () => {
        if !live::e2e_available() {
            return;
        }
    };
}

#[test]
fn unknown_api_is_404_api_not_found() {
    e2e!();
    let r = get("/t/nope/1/x", &[]);
    expect_status!(r, 404);
    assert_eq!(r.header("x-gateway-error"), Some("API not found."));
    assert_eq!(
        r.json(),
        json!({"responseCode": 404, "message": "API not found."})
    );
}

#[test]
fn private_api_without_key_is_403_api_not_public() {
    e2e!();
    let r = get("/t/private/1/x", &[]);
    expect_status!(r, 403);
    assert_eq!(r.header("x-gateway-error"), Some("API not public."));
    assert_eq!(r.json()["responseCode"], 403);
}

#[test]
fn unknown_key_is_404_with_the_key_masked() {
    e2e!();
    let r = get("/t/private/1/x", &[("X-API-Key", "unknown-secret-key")]);
    expect_status!(r, 404);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("No client found for API Key unkn****")
    );
    assert!(!r.text().contains("unknown-secret-key"));
}

#[test]
fn key_without_contract_is_404_no_contract() {
    e2e!();
    let r = get("/t/private/1/x", &[("X-API-Key", "lonely-key-01")]);
    expect_status!(r, 404);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("No contract found between Client lonely and API private.")
    );
}

#[test]
fn routing_rewrites_path_and_authority_and_hides_the_cluster_header() {
    e2e!();
    let r = get(
        "/t/private/1/orders/7?sort=asc",
        &[
            ("X-API-Key", "gold-key-0001"),
            ("x-tollgate-cluster", "dead"),
        ],
    );
    let s = seen(&r);
    assert_eq!(s["path"], "/svc/orders/7?sort=asc");
    assert_eq!(
        seen_header(&s, "host").as_deref(),
        Some("backend.internal:8080")
    );
    assert_eq!(seen_header(&s, "x-tollgate-cluster"), None);
}

#[test]
fn the_key_header_and_query_parameter_are_stripped_before_the_backend() {
    e2e!();
    let r = get("/t/private/1/x?a=1&apikey=gold-key-0001", &[]);
    let s = seen(&r);
    assert_eq!(s["path"], "/svc/x?a=1");
    let r = get("/t/private/1/x", &[("X-API-Key", "gold-key-0001")]);
    assert_eq!(seen_header(&seen(&r), "x-api-key"), None);
}

#[test]
fn keys_are_kept_when_the_api_disables_stripping_and_passed_on_by_the_api_key_policy() {
    e2e!();
    let r = get(
        "/t/keep/1/x?apikey=blocked-key-01",
        &[("X-API-Key", "blocked-key-01")],
    );
    let s = seen(&r);
    assert_eq!(s["path"], "/x?apikey=blocked-key-01");
    assert_eq!(
        seen_header(&s, "x-api-key").as_deref(),
        Some("blocked-key-01")
    );
    assert_eq!(
        seen_header(&s, "x-backend-key").as_deref(),
        Some("blocked-key-01")
    );
}

#[test]
fn the_chain_runs_client_plan_api_on_requests_and_in_reverse_on_responses() {
    e2e!();
    let r = get("/t/private/1/x", &[("X-API-Key", "gold-key-0001")]);
    assert_eq!(seen_header(&seen(&r), "x-step").as_deref(), Some("api"));
    assert_eq!(r.header("x-resp-step"), Some("client"));
}

#[test]
fn a_policy_failure_answers_with_apimans_failure_contract() {
    e2e!();
    let r = get("/t/private/1/x", &[("X-API-Key", "blocked-key-01")]);
    expect_status!(r, 500);
    assert_eq!(r.header("x-policy-failure-type"), Some("Other"));
    assert_eq!(r.header("x-policy-failure-code"), Some("10002"));
    assert_eq!(
        r.header("x-policy-failure-message"),
        Some("Inbound IP address \"127.0.0.1\" has been black-listed.")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["type"], "Other");
    assert_eq!(body["failureCode"], 10002);
    assert_eq!(body["responseCode"], 500);
}

#[test]
fn ip_allowlist_passes_a_listed_client() {
    e2e!();
    // gold-app's plan allows 127.0.0.0/8; the request reaching the backend proves it passed.
    seen(&get("/t/private/1/x", &[("X-API-Key", "gold-key-0001")]));
}

#[test]
fn ignored_resources_answer_404_with_code_10007() {
    e2e!();
    let r = get("/t/public/1/hidden/x", &[]);
    expect_status!(r, 404);
    assert_eq!(r.header("x-policy-failure-code"), Some("10007"));
    seen(&get("/t/public/1/visible", &[]));
}

#[test]
fn no_spelling_of_an_ignored_path_reaches_the_backend() {
    e2e!();
    for path in [
        "/t/public/1/hidden;x=1/y",
        "/t/public/1/hidden%2Fy",
        "/t/public/1/hidden%5Cy",
        "/t/public/1/x/..%2Fhidden/y",
    ] {
        let r = get(path, &[]);
        assert_eq!(
            (r.status, r.header("x-policy-failure-code")),
            (404, Some("10007")),
            "{path}"
        );
    }
}

#[test]
fn the_backend_receives_the_path_as_the_client_sent_it() {
    e2e!();
    let r = get("/t/public/1/a;v=1/b%2Fc", &[]);
    assert_eq!(seen(&r)["path"], "/base/a;v=1/b%2Fc");
}

#[test]
fn header_deny_rule_refuses_and_others_pass() {
    e2e!();
    let r = get("/t/public/1/x", &[("X-Tier", "banned")]);
    expect_status!(r, 403);
    assert_eq!(r.header("x-policy-failure-code"), Some("403"));
    seen(&get("/t/public/1/x", &[("X-Tier", "gold")]));
}

#[test]
fn http_security_headers_are_on_backend_responses() {
    e2e!();
    let r = get("/t/public/1/x", &[]);
    expect_status!(r, 200);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("strict-transport-security"), Some("max-age=100"));
}

#[test]
fn cors_preflight_is_answered_without_calling_the_backend() {
    e2e!();
    let r = world()
        .envoy
        .request(
            "OPTIONS",
            "/t/public/1/x",
            &[
                ("Origin", "https://ok.test"),
                ("Access-Control-Request-Method", "PUT"),
            ],
            b"",
        )
        .unwrap();
    expect_status!(r, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ok.test")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(r.header("access-control-max-age"), Some("60"));
    assert_eq!(
        r.header("x-backend"),
        None,
        "the backend must not answer a preflight"
    );
}

#[test]
fn cors_echoes_an_allowed_origin_with_vary() {
    e2e!();
    let r = get("/t/public/1/x", &[("Origin", "https://ok.test")]);
    expect_status!(r, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ok.test")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[test]
fn cors_refuses_an_unknown_origin_and_decorates_other_failures() {
    e2e!();
    let r = get("/t/public/1/x", &[("Origin", "https://evil.test")]);
    expect_status!(r, 400);
    assert_eq!(
        r.header("x-policy-failure-message"),
        Some("CORS: Origin not permitted.")
    );
    // A later policy's failure still carries the CORS headers for an allowed origin.
    let r = get("/t/public/1/hidden/x", &[("Origin", "https://ok.test")]);
    expect_status!(r, 404);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ok.test")
    );
}

#[test]
fn a_missing_cluster_is_a_503_json_error() {
    e2e!();
    let r = get("/t/nocluster/1/x", &[]);
    expect_status!(r, 503);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("API backend cluster not found.")
    );
    assert_eq!(r.json()["responseCode"], 503);
}

#[test]
fn an_unreachable_backend_is_a_503_json_error() {
    e2e!();
    let r = get("/t/down/1/x", &[]);
    expect_status!(r, 503);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("API backend unavailable.")
    );
    assert_eq!(r.json()["message"], "API backend unavailable.");
}

#[test]
fn the_version_can_come_from_x_api_version() {
    e2e!();
    let r = get("/t/public/x", &[("X-API-Version", "1")]);
    let s = seen(&r);
    assert_eq!(s["path"], "/base/x");
    assert_eq!(seen_header(&s, "x-api-version"), None);
}

#[test]
fn a_request_body_passes_through_unbuffered() {
    e2e!();
    // Larger than Envoy's default 1 MiB buffer limit: buffering it would answer 413.
    let body = vec![b'x'; 2 * 1024 * 1024 + 17];
    let r = world()
        .envoy
        .request(
            "POST",
            "/t/private/1/upload",
            &[
                ("X-API-Key", "gold-key-0001"),
                ("content-type", "text/plain"),
            ],
            &body,
        )
        .unwrap();
    let s = seen(&r);
    assert_eq!(s["method"], "POST");
    assert_eq!(s["body"].as_str().map(str::len), Some(body.len()));
}
