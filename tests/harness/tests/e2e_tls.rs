//! End-to-end upstream TLS: a gateway definition with keystores, truststores and endpoint
//! aliases, turned into Envoy config by tollgate-gen, run by the real Envoy 1.40 against real
//! TLS backends on 127.0.0.1 that require client certificates and report the subject they saw.
//! One gateway is shared by the tests of this file; each failure case has its own cluster, so
//! its stats say what went wrong for that case alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tollgate_harness::expect_status;
use tollgate_harness::http_client::HttpResponse;
use tollgate_harness::live::{self, Backend, Envoy};

struct World {
    envoy: Envoy,
    /// Backend name -> port.
    ports: BTreeMap<&'static str, u16>,
    /// tollgate-gen's report (warnings, clusters).
    report: String,
    _backends: Vec<Backend>,
    _held: TcpListener,
}

const GATEWAY_CLIENT: &str = "CN=gateway-client,O=tollgate demo";
const PARTNER_CLIENT: &str = "CN=partner-client,O=tollgate demo";

fn p(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

fn tls_backend(name: &str, dir: &Path, cert: &str) -> Backend {
    Backend::mtls(name, dir, cert).unwrap()
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = live::scratch_dir("tls").unwrap();
        let certs = |args: &[&str]| live::certs(&dir, args).unwrap();
        certs(&["ca"]);
        certs(&["server", "--name", "orders", "--san", "DNS:orders.test"]);
        certs(&["server", "--name", "billing", "--san", "DNS:billing.test"]);
        certs(&["server", "--name", "expired", "--san", "DNS:expired.test", "--expired"]);
        certs(&["ca", "--name", "rogue", "--cn", "rogue CA"]);
        certs(&["server", "--name", "untrusted", "--san", "DNS:untrusted.test", "--ca", "rogue"]);
        certs(&["client", "--name", "gateway-client", "--p12"]);
        certs(&["client", "--name", "partner-client", "--jks"]);
        // The JKS password reaches both tollgate-gen and Envoy through the environment.
        let password = std::fs::read_to_string(dir.join("password")).unwrap();
        std::env::set_var("TOLLGATE_TEST_PARTNER_PASSWORD", password);

        let backends = vec![
            tls_backend("orders", &dir, "orders"),
            tls_backend("billing", &dir, "billing"),
            tls_backend("expired", &dir, "expired"),
            tls_backend("untrusted", &dir, "untrusted"),
            Backend::echo("plaintext").unwrap(),
        ];
        // Accepts connections and never answers: a TLS handshake that never completes.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ports: BTreeMap<&'static str, u16> = ["orders", "billing", "expired", "untrusted", "plaintext"]
            .into_iter()
            .zip(backends.iter().map(|b| b.port))
            .collect();
        ports.insert("held", held.local_addr().unwrap().port());

        let definition = format!(
            r#"
wasm: {wasm}
listener: {{port: 0}}
admin: {{port: 0}}
keystores:
  gateway-client: {{type: pkcs12, file: {gc}, password: {{file: {pw}}}}}
  partner-client: {{type: jks, file: {pc}, password: {{env: TOLLGATE_TEST_PARTNER_PASSWORD}}}}
truststores:
  internal-ca: {{type: pem, file: {ca}}}
outbound: {{keystore: gateway-client, truststore: internal-ca, connectTimeout: 2s}}
endpoints:
  billing: {{uri: "https://billing.test:{billing}/billing", connectTo: 127.0.0.1, keystore: partner-client}}
  held: {{uri: "https://held.test:{held}/", connectTo: 127.0.0.1, connectTimeout: 1s}}
registry:
  apis:
  - {{organizationId: t, apiId: global, version: "1", publicAPI: true, endpoint: "https://orders.test:{orders}/orders", connectTo: 127.0.0.1}}
  - {{organizationId: t, apiId: billing, version: "1", publicAPI: true, endpointAlias: billing}}
  - {{organizationId: t, apiId: own, version: "1", publicAPI: true, endpoint: "https://orders.test:{orders}/own", connectTo: 127.0.0.1, tls: {{keystore: partner-client}}}}
  - {{organizationId: t, apiId: untrusted, version: "1", publicAPI: true, endpoint: "https://untrusted.test:{untrusted}/", connectTo: 127.0.0.1}}
  - {{organizationId: t, apiId: wronghost, version: "1", publicAPI: true, endpoint: "https://wrong.test:{orders}/", connectTo: 127.0.0.1}}
  - {{organizationId: t, apiId: expired, version: "1", publicAPI: true, endpoint: "https://expired.test:{expired}/", connectTo: 127.0.0.1}}
  - {{organizationId: t, apiId: nocert, version: "1", publicAPI: true, endpoint: "https://orders.test:{orders}/", connectTo: 127.0.0.1, tls: {{keystore: none}}}}
  - {{organizationId: t, apiId: plaintext, version: "1", publicAPI: true, endpoint: "https://plain.test:{plaintext}/", connectTo: 127.0.0.1}}
  - {{organizationId: t, apiId: held, version: "1", publicAPI: true, endpointAlias: held}}
"#,
            wasm = live::wasm_path().unwrap().display(),
            gc = p(&dir, "gateway-client.p12"),
            pc = p(&dir, "partner-client.jks"),
            pw = p(&dir, "password"),
            ca = p(&dir, "ca.pem"),
            billing = ports["billing"],
            held = ports["held"],
            orders = ports["orders"],
            untrusted = ports["untrusted"],
            expired = ports["expired"],
            plaintext = ports["plaintext"],
        );
        let def_path = dir.join("gateway.def.yaml");
        std::fs::write(&def_path, definition).unwrap();
        let out = dir.join("envoy");
        let report = live::generate(&def_path, &out, &dir.join("stores"))
            .unwrap_or_else(|e| panic!("tollgate-gen failed:\n{e}"));
        let yaml = std::fs::read_to_string(out.join("envoy.yaml")).unwrap();
        let envoy = Envoy::start(&yaml, 1).unwrap();
        World {
            envoy,
            ports,
            report,
            _backends: backends,
            _held: held,
        }
    })
}

fn cluster(w: &World, host: &str, backend: &str, rest: &str) -> String {
    format!("{}_{}_{rest}", host.replace('.', "-"), w.ports[backend])
}

/// Sends a GET and measures how long the gateway took to answer.
fn timed_get(w: &World, path: &str) -> (HttpResponse, Duration) {
    let start = Instant::now();
    let r = w.envoy.get(path, &[]).unwrap();
    (r, start.elapsed())
}

/// The gateway's own 503: JSON body and x-gateway-error, quickly, and nothing from a backend.
fn assert_gateway_503(r: &HttpResponse, elapsed: Duration, limit: Duration) {
    expect_status!(r, 503);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("API backend unavailable.")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"responseCode": 503, "message": "API backend unavailable."})
    );
    assert_eq!(r.header("x-backend"), None, "a backend answered");
    assert!(elapsed < limit, "took {elapsed:?}");
}

/// Waits for a stat to reach at least 1 (Envoy updates stats shortly after the reply).
fn assert_stat(w: &World, name: &str) {
    let seen = live::wait_for(Duration::from_secs(5), || {
        (w.envoy.stat_or_zero(name) > 0).then_some(())
    });
    assert!(
        seen.is_some(),
        "{name} stayed 0; stats:\n{}",
        relevant_stats(w)
    );
}

fn relevant_stats(w: &World) -> String {
    w.envoy
        .stats()
        .lines()
        .filter(|l| (l.contains(".ssl.") || l.contains("connect_fail")) && !l.ends_with(": 0"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The access log line Envoy wrote for a failed request to `cluster`.
fn failure_log(w: &World, cluster: &str) -> String {
    // Envoy buffers access logs (flushed every 10 s by default); reopening them flushes.
    let _ = tollgate_harness::http_client::send(
        &w.envoy.admin,
        "POST",
        "/reopen_logs",
        &[],
        b"",
        Duration::from_secs(5),
    );
    live::wait_for(Duration::from_secs(12), || {
        w.envoy
            .log()
            .lines()
            .find(|l| {
                l.contains("tollgate upstream failure")
                    && l.contains(&format!("cluster={cluster} "))
            })
            .map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "no failure line for {cluster} in the Envoy log:\n{}",
            w.envoy.log()
        )
    })
}

#[test]
fn the_global_default_client_certificate_is_used_when_the_api_has_none() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let r = w.envoy.get("/t/global/1/items", &[]).unwrap();
    expect_status!(r, 200);
    let body = r.json();
    assert_eq!(body["backend"], "orders");
    assert_eq!(body["tls"], true);
    assert_eq!(body["client_subject"], GATEWAY_CLIENT);
    assert_eq!(body["path"], "/orders/items");
    assert!(body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "host" && h[1] == format!("orders.test:{}", w.ports["orders"])));
}

#[test]
fn an_endpoint_alias_keystore_overrides_the_global_default() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let r = w.envoy.get("/t/billing/1/invoices", &[]).unwrap();
    expect_status!(r, 200);
    assert_eq!(r.json()["backend"], "billing");
    assert_eq!(r.json()["client_subject"], PARTNER_CLIENT);
    assert_eq!(r.json()["path"], "/billing/invoices");
}

#[test]
fn an_api_keystore_overrides_the_global_default_for_the_same_backend() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let r = w.envoy.get("/t/own/1/x", &[]).unwrap();
    expect_status!(r, 200);
    assert_eq!(r.json()["backend"], "orders");
    assert_eq!(r.json()["client_subject"], PARTNER_CLIENT);
}

#[test]
fn two_apis_with_different_client_certificates_reach_two_backends_each_seeing_its_own() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    for _ in 0..5 {
        let a = w.envoy.get("/t/global/1/a", &[]).unwrap();
        let b = w.envoy.get("/t/billing/1/b", &[]).unwrap();
        expect_status!(a, 200);
        expect_status!(b, 200);
        assert_eq!(
            (&a.json()["backend"], &a.json()["client_subject"]),
            (&"orders".into(), &GATEWAY_CLIENT.into())
        );
        assert_eq!(
            (&b.json()["backend"], &b.json()["client_subject"]),
            (&"billing".into(), &PARTNER_CLIENT.into())
        );
    }
}

#[test]
fn generated_clusters_require_tls_1_2_send_sni_and_check_the_san() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let dump = tollgate_harness::http_client::send(
        &w.envoy.admin,
        "GET",
        "/config_dump?resource=dynamic_active_clusters",
        &[],
        b"",
        Duration::from_secs(5),
    )
    .unwrap()
    .text();
    let name = cluster(
        w,
        "orders.test",
        "orders",
        "mtls_internal-ca_gateway-client",
    );
    assert!(
        dump.contains(&format!("\"name\": \"{name}\"")),
        "{name} not in the config dump"
    );
    assert!(dump.contains("\"tls_minimum_protocol_version\": \"TLSv1_2\""));
    assert!(dump.contains("\"sni\": \"orders.test\""));
    assert!(dump.contains("\"exact\": \"orders.test\""));
    assert!(!w.report.contains("verification is OFF"), "{}", w.report);
}

#[test]
fn a_backend_certificate_from_an_untrusted_ca_gives_a_503_and_a_verify_error() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let (r, elapsed) = timed_get(w, "/t/untrusted/1/");
    assert_gateway_503(&r, elapsed, Duration::from_secs(2));
    let name = cluster(
        w,
        "untrusted.test",
        "untrusted",
        "mtls_internal-ca_gateway-client",
    );
    assert_stat(w, &format!("cluster.{name}.ssl.fail_verify_error"));
    assert_stat(w, &format!("cluster.{name}.upstream_cx_connect_fail"));
    let line = failure_log(w, &name);
    assert!(line.contains("CERTIFICATE_VERIFY_FAILED"), "{line}");
}

#[test]
fn a_backend_certificate_for_another_host_gives_a_503_and_a_san_failure() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let (r, elapsed) = timed_get(w, "/t/wronghost/1/");
    assert_gateway_503(&r, elapsed, Duration::from_secs(2));
    let name = cluster(w, "wrong.test", "orders", "mtls_internal-ca_gateway-client");
    assert_stat(w, &format!("cluster.{name}.ssl.fail_verify_san"));
    let line = failure_log(w, &name);
    assert!(line.contains("CERTIFICATE_VERIFY_FAILED"), "{line}");
}

#[test]
fn an_expired_backend_certificate_gives_a_503_and_a_verify_error_saying_expired() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let (r, elapsed) = timed_get(w, "/t/expired/1/");
    assert_gateway_503(&r, elapsed, Duration::from_secs(2));
    let name = cluster(
        w,
        "expired.test",
        "expired",
        "mtls_internal-ca_gateway-client",
    );
    assert_stat(w, &format!("cluster.{name}.ssl.fail_verify_error"));
    let line = failure_log(w, &name);
    assert!(line.contains("expired"), "{line}");
}

#[test]
fn a_backend_refusing_a_connection_without_client_certificate_gives_a_503() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let (r, elapsed) = timed_get(w, "/t/nocert/1/");
    assert_gateway_503(&r, elapsed, Duration::from_secs(2));
    let name = cluster(w, "orders.test", "orders", "tls_internal-ca");
    assert_stat(w, &format!("cluster.{name}.ssl.connection_error"));
    let line = failure_log(w, &name);
    assert!(
        line.contains("CERTIFICATE_REQUIRED") || line.contains("HANDSHAKE_FAILURE"),
        "{line}"
    );
}

#[test]
fn a_tls_endpoint_never_falls_back_to_plaintext() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    // The backend speaks plain HTTP only: a fallback would return its echo (x-backend).
    let (r, elapsed) = timed_get(w, "/t/plaintext/1/");
    assert_gateway_503(&r, elapsed, Duration::from_secs(2));
    let name = cluster(
        w,
        "plain.test",
        "plaintext",
        "mtls_internal-ca_gateway-client",
    );
    assert_stat(w, &format!("cluster.{name}.ssl.connection_error"));
    assert_stat(w, &format!("cluster.{name}.upstream_cx_connect_fail"));
}

#[test]
fn a_backend_that_never_completes_the_handshake_gives_a_503_after_the_connect_timeout() {
    if !live::tls_e2e_available() {
        return;
    }
    let w = world();
    let (r, elapsed) = timed_get(w, "/t/held/1/");
    assert_gateway_503(&r, elapsed, Duration::from_secs(4));
    assert!(
        elapsed >= Duration::from_millis(900),
        "answered before the 1s connect timeout: {elapsed:?}"
    );
    let name = cluster(w, "held.test", "held", "mtls_internal-ca_gateway-client");
    assert_stat(w, &format!("cluster.{name}.upstream_cx_connect_timeout"));
}
