//! The request path: method, path (a repeat byte stretches it up to Envoy's 60 KiB), query,
//! headers, body chunks, the peer and the backend's answer, through the real filter in the
//! native proxy-wasm host (the harness's emulated Envoy), on a gateway with every policy.
//!
//! Findings: a panic (the VM thread aborts), an allocation over the bound, a request slower
//! than the bound, a request that gets no answer, a gateway answer outside the error contract,
//! or an ignored resource that reaches the backend.
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::{within, Reader, VALUES};
use tollgate_harness::host::{
    BackendResponse, Host, HostSettings, Origin, StreamInput, Upstream, Vm,
};

/// The bound on one request, in this instrumented, unoptimised-for-speed build: it is there to
/// catch work that grows faster than the request (a quadratic step over a 60 KiB path or query
/// takes seconds), not constant factors. An ordinary request takes ~20 µs; the largest linear
/// one, a 60 KiB query of empty `&` pairs, ~22 ms here (25 ms failed CI on a busy machine).
const REQUEST_BOUND: Duration = Duration::from_millis(100);

const CONFIG: &str = r#"{"gateway": {"trustedProxies": ["10.0.0.0/8"], "clientAddressHeader": "x-tollgate-client-address"},
  "apis": [
    {"organizationId": "o", "apiId": "pub", "version": "1", "publicAPI": true, "endpoint": "http://127.0.0.1/base/", "cluster": "echo",
     "apiPolicies": [
      {"policy": "cors", "config": {"allowOrigin": ["https://*.example.org", "https://a.test"], "allowMethods": ["GET", "PUT"], "allowHeaders": ["x-a"], "maxAge": 5}},
      {"policy": "ip-blocklist", "config": {"ipList": ["10.0.0.1-10.0.0.9", "2001:db8::/32", "203.0.113.0/24"], "httpHeader": "X-Forwarded-For", "responseCode": 403}},
      {"policy": "ignored-resources", "config": {"rules": [{"verb": "*", "pathPattern": "/hidden/.*"}, {"verb": "DELETE", "pathPattern": "/items/[0-9]+"}]}},
      {"policy": "header-allow-deny", "config": {"entries": [{"headerName": "x-tier", "allowIfHeaderMissing": true, "allowIfNoRulesMatch": true, "rules": [{"headerValueRegex": "banned|evil.*", "allowRequest": false}]}]}},
      {"policy": "simple-header", "config": {"addHeaders": [{"headerName": "x-copy", "headerValue": "User-Agent", "valueType": "Header", "applyTo": "Both"}],
         "stripHeaders": [{"stripType": "Value", "with": "Regex", "pattern": ".*secret.*", "applyTo": "Both"}, {"stripType": "Key", "with": "String", "pattern": "server", "applyTo": "Response"}]}},
      {"policy": "http-security", "config": {"frameOptions": "DENY", "hsts": {"enabled": true, "maxAge": 5}, "contentSecurityPolicy": {"mode": "ENABLED", "csp": "default-src 'self'"}}}]},
    {"organizationId": "o", "apiId": "priv", "version": "1", "endpoint": "http://backend.local:8080/svc", "cluster": "echo", "endpointContentType": "xml",
     "apiPolicies": [{"policy": "cors", "config": {"allowOrigin": ["https://a.test"], "allowMethods": ["POST"]}},
                     {"policy": "ignored-resources", "config": {"pathsToIgnore": ["/admin.*", "/caf\u00e9/.*"]}}]},
    {"organizationId": "o", "apiId": "keep", "version": "1", "publicAPI": true, "endpoint": "http://127.0.0.1/", "cluster": "echo", "disableKeysStrip": true},
    {"organizationId": "o", "apiId": "gone", "version": "1", "publicAPI": true, "endpoint": "http://127.0.0.1/", "cluster": "nowhere"}],
  "plans": [{"planId": "Gold", "policies": [{"policy": "ip-allowlist", "config": {"ipList": ["127.0.0.0/8", "::1", "10.0.0.0/8"], "httpHeader": "Forwarded", "responseCode": 403}},
     {"policy": "simple-header", "config": {"addHeaders": [{"headerName": "X-Plan", "headerValue": "Gold", "applyTo": "Request"}]}}]}],
  "clients": [
    {"organizationId": "o", "clientId": "gold", "version": "1", "apiKey": "gold-key",
     "contracts": [{"apiOrgId": "o", "apiId": "priv", "apiVersion": "1", "plan": "Gold"},
                   {"apiOrgId": "o", "apiId": "keep", "apiVersion": "1", "policies": [{"policy": "api-key", "config": {"requestHeader": "X-Backend-Key"}}]}]},
    {"organizationId": "o", "clientId": "other", "version": "1", "apiKey": "other-key", "contracts": []}]}"#;

fn vm() -> &'static Mutex<Vm> {
    static VM: OnceLock<Mutex<Vm>> = OnceLock::new();
    VM.get_or_init(|| {
        let host = Host::new(HostSettings {
            clusters: Some(["echo".to_string()].into_iter().collect()),
            ..HostSettings::default()
        });
        Mutex::new(host.start_vm(CONFIG.as_bytes()).expect("the gateway loads"))
    })
}

const PREFIXES: &[&str] = &[
    "/o/pub/1",
    "/o/pub/1/hidden/",
    "/o/priv/1",
    "/o/priv/1/admin",
    "/o/keep/1",
    "/o/gone/1",
    "/o/pub",
    "/o/nope/1",
    "",
    "/",
];

const NAMES: &[&str] = &[
    "x-api-key",
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-tier",
    "user-agent",
    "x-api-version",
    "accept",
    "content-type",
    "authorization",
    "x-tollgate-client-address",
    "x-tollgate-cluster",
    "x-secret",
    "content-length",
    "transfer-encoding",
    "cookie",
];

const HEADER_VALUES: &[&str] = &[
    "gold-key",
    "other-key",
    "https://a.test",
    "https://x.example.org",
    "https://evil.com/.example.org",
    "null",
    "GET",
    "PUT, DELETE",
    "x-a, x-b",
    "10.0.0.5",
    "203.0.113.7, 10.0.0.2",
    "for=203.0.113.7",
    "for=\"[2001:db8::1]:80\";proto=https, for=unknown",
    "banned",
    "my secret",
    "application/apiman.1+json",
    "1",
];

const PEERS: &[&str] = &[
    "127.0.0.1:40000",
    "10.0.0.5:1234",
    "10.9.9.9:1",
    "203.0.113.9:80",
    "[::1]:5",
    "[::ffff:10.1.1.1]:7",
    "[2001:db8::7]:9",
];

fn input(r: &mut Reader) -> (StreamInput, BackendResponse) {
    let method = match r.below(8) {
        0 => r.path_text(8),
        1 => "OPTIONS".to_string(),
        2 => "POST".to_string(),
        3 => "DELETE".to_string(),
        4 => "HEAD".to_string(),
        _ => "GET".to_string(),
    };
    let mut path = r.pick(PREFIXES).to_string();
    let segment = r.path_text(24);
    // Stretch: a path as long as Envoy lets through (60 KiB of headers).
    let repeat = if r.byte() > 240 {
        1 + r.below(60 * 1024 / segment.len().max(1))
    } else {
        1
    };
    path.push_str(&segment.repeat(repeat.min(60 * 1024)));
    if r.bool() {
        path.push('?');
        path.push_str(&r.path_text(32));
        if r.bool() {
            path.push_str("&apikey=gold-key");
        }
    }
    let mut request = StreamInput::new(&method, &path);
    request.source = r.pick(PEERS).to_string();
    for _ in 0..r.below(9) {
        let name = if r.below(6) == 0 {
            r.path_text(10)
                .to_ascii_lowercase()
                .replace([':', '/', '?', '\\', ';', '%', '.', '=', '&'], "-")
        } else {
            r.pick(NAMES).to_string()
        };
        let value = match r.below(3) {
            0 => r.header_value(40),
            _ => r.pick(HEADER_VALUES).to_string(),
        };
        if !name.is_empty() {
            request.headers.push((name, value));
        }
    }
    for _ in 0..r.below(3) {
        request.body.push(r.bytes(64).to_vec());
    }
    let response = BackendResponse {
        status: *r.pick(&[&200u16, &204, &302, &404, &500, &503]),
        headers: (0..r.below(4))
            .map(|_| {
                let name = r.pick(NAMES).to_string();
                let value = r.pick(VALUES).replace(['\r', '\n'], "");
                (name, value)
            })
            .collect(),
        body: r.rest().to_vec(),
        trailers: Vec::new(),
    };
    (request, response)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let (request, response) = input(&mut r);
    let vm = vm().lock().unwrap_or_else(|e| e.into_inner());
    let result = within("one request", REQUEST_BOUND, || {
        let answer = response.clone();
        vm.run(request.clone(), move |_| Upstream::Respond(answer.clone()))
            .expect("the VM is alive")
    });
    // Every request gets an answer.
    assert!(
        result.status != 0 && result.origin != Origin::None,
        "no answer: {:?}",
        result.stalled
    );
    // The gateway's own answers keep to the error contract (a CORS preflight is a 200).
    if result.origin != Origin::Backend && result.status >= 400 {
        assert!(
            result.header("x-gateway-error").is_some()
                || result.header("x-policy-failure-type").is_some(),
            "{} without the error contract: {:?} {}",
            result.status,
            result.headers,
            result.text()
        );
    }
    // No spelling of an ignored resource reaches the backend.
    if let Some(upstream) = &result.upstream {
        let path = upstream.path().split('?').next().unwrap_or("");
        if let Some(resource) = path.strip_prefix("/base") {
            let form = tollgate_core::path::for_matching(resource);
            assert!(!form.starts_with("/hidden/"), "{path} reached the backend");
        }
    }
});
