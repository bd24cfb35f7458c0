//! tollgate-registry end to end: Apiman's own test-plan beans (tests/fixtures/apiman) are sent to
//! tollgate-registry over HTTP exactly as Apiman's gateway tests send them, then requests go
//! through the real Envoy 1.40 with the real tollgate.wasm, which gets every change through the
//! files tollgate-registry writes (clusters by CDS, the registry by ECDS).
//!
//! The tests share one tollgate-registry, Envoy and echo backend, and take turns (the fixtures
//! share the API key 12345); each starts from an empty registry, emptied through the REST API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_harness::http_client::HttpResponse;
use tollgate_harness::live::{self, Backend, Envoy, RegistryServer};
use tollgate_harness::resttest::{self, RestTest};

/// The credentials Apiman's fixtures use.
const USER: &str = "admin";
const PASSWORD: &str = "admin";
const CREDENTIALS: Option<(&str, &str)> = Some((USER, PASSWORD));
/// What tollgate-registry is told the gateway's public URL is.
const PUBLIC_URL: &str = "http://gateway.test:8080";
/// How long a change may take to reach Envoy in these tests (the first test holds it to 2 s).
const APPLIED: Duration = Duration::from_secs(5);

struct Gateway {
    dir: PathBuf,
    /// `None` only while it restarts.
    server: Option<RegistryServer>,
    envoy: Envoy,
    backend: Backend,
}

static SHARED: Mutex<Option<Gateway>> = Mutex::new(None);

fn available() -> bool {
    if !live::e2e_available() {
        return false;
    }
    let required = std::env::var("TOLLGATE_E2E").is_ok_and(|v| v == "1");
    if let Err(e) = live::registry_binary() {
        if !required {
            eprintln!("skipping tollgate-registry end-to-end test: {e}");
            return false;
        }
    }
    true
}

/// The shared gateway, started on first use and emptied; holding the guard is the test's turn.
fn gateway() -> Option<MutexGuard<'static, Option<Gateway>>> {
    if !available() {
        return None;
    }
    let mut guard = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if guard.is_none() {
        *guard = Some(Gateway::start().unwrap_or_else(|e| panic!("{e}")));
    }
    guard.as_ref().unwrap().reset();
    Some(guard)
}

impl Gateway {
    fn start() -> Result<Gateway, String> {
        let dir = live::scratch_dir("registry-e2e")?;
        let wasm = live::wasm_path()?;
        std::fs::write(
            dir.join("gateway.def.yaml"),
            format!(
                "wasm: {}\nadmin: {{address: 127.0.0.1, port: 0}}\nlistener: {{address: 127.0.0.1, port: 0}}\nregistry: {{}}\n",
                wasm.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).map_err(|e| e.to_string())?;
        let registry = start_registry(&dir)?;
        let yaml =
            std::fs::read_to_string(dir.join("out/envoy.yaml")).map_err(|e| e.to_string())?;
        let envoy = Envoy::start(&yaml, 1)?;
        // Started after Envoy: Envoy cannot have heard of its port.
        let backend = Backend::echo("registry-e2e")?;
        Ok(Gateway {
            dir,
            server: Some(registry),
            envoy,
            backend,
        })
    }

    fn registry(&self) -> &RegistryServer {
        self.server.as_ref().unwrap()
    }

    fn restart_registry(&mut self) {
        // The old process goes first: it holds the state directory's lock.
        self.server = None;
        self.server = Some(start_registry(&self.dir).unwrap_or_else(|e| panic!("{e}")));
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "apiman.test.gateway.endpoints.echo",
                format!("http://127.0.0.1:{}", self.backend.port),
            ),
            ("apiman.test.gateway.gateway.endpoint", PUBLIC_URL.into()),
        ]
    }

    fn fixture(&self, name: &str) -> RestTest {
        let vars = self.vars();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        resttest::load(name, &vars).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A request to the Gateway REST API, authenticated.
    fn api(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        self.registry()
            .request(method, path, CREDENTIALS, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.registry().log()))
    }

    fn list(&self, path: &str) -> Vec<String> {
        let r = self.api("GET", path, b"");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        serde_json::from_value(r.json()).unwrap()
    }

    /// Everything unregistered and retired, through the REST API.
    fn reset(&self) {
        for org in self.list("/organizations") {
            for (kind, delete) in [("clients", "/clients"), ("apis", "/apis")] {
                for id in self.list(&format!("/organizations/{org}/{kind}")) {
                    for v in self.list(&format!("/organizations/{org}/{kind}/{id}/versions")) {
                        let r = self.api("DELETE", &format!("{delete}/{org}/{id}/{v}"), b"");
                        assert_eq!(r.status, 204, "{}", r.text());
                    }
                }
            }
        }
        assert!(self.list("/organizations").is_empty());
    }

    /// Runs one fixture: a Gateway API call is checked at once (status, headers, body subset);
    /// a request through Envoy is repeated until it answers as expected (changes reach Envoy
    /// within about a second), or fails with the last answer.
    fn check(&self, name: &str) -> HttpResponse {
        let t = self.fixture(name);
        let to_registry = ["/apis", "/clients", "/organizations", "/system"]
            .iter()
            .any(|p| t.path.starts_with(p));
        if to_registry {
            let r = self.api(&t.method, &t.path, t.body.as_bytes());
            if let Some(m) = mismatch(&t, &r, true) {
                panic!("{name}: {m}\n{}", self.registry().log());
            }
            return r;
        }
        let headers: Vec<(&str, &str)> = t
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut last = String::from("no answer from Envoy");
        live::wait_for(APPLIED, || {
            match self
                .envoy
                .request(&t.method, &t.path, &headers, t.body.as_bytes())
            {
                Ok(r) => match mismatch(&t, &r, false) {
                    None => Some(r),
                    Some(m) => {
                        last = m;
                        None
                    }
                },
                Err(e) => {
                    last = e;
                    None
                }
            }
        })
        .unwrap_or_else(|| panic!("{name}: {last}\n{}", self.registry().log()))
    }

    /// Waits until Envoy answers `path` (with `headers`) with `status`.
    fn wait_status(&self, path: &str, headers: &[(&str, &str)], status: u16) -> HttpResponse {
        let mut last = None;
        live::wait_for(APPLIED, || {
            let r = self.envoy.get(path, headers).ok()?;
            let done = r.status == status;
            last = Some(r.clone());
            done.then_some(r)
        })
        .unwrap_or_else(|| panic!("{path}: never {status}; last answer {last:?}"))
    }

    fn registry_file(&self) -> String {
        std::fs::read_to_string(self.dir.join("out/dynamic/registry.yaml")).unwrap()
    }
}

fn start_registry(dir: &std::path::Path) -> Result<RegistryServer, String> {
    let path = |p: &str| dir.join(p).display().to_string();
    RegistryServer::start(
        &[
            &path("gateway.def.yaml"),
            "--out",
            &path("out"),
            "--state",
            &path("state"),
            "--user",
            USER,
            "--password-file",
            &path("password"),
            "--public-url",
            PUBLIC_URL,
        ],
        &dir.join("registry.log"),
    )
}

/// How an answer differs from what a fixture expects: status, headers, body (a JSON subset).
fn mismatch(t: &RestTest, r: &HttpResponse, from_registry: bool) -> Option<String> {
    if r.status != t.status {
        return Some(format!(
            "{} {}: status {}, expected {}: {}",
            t.method,
            t.path,
            r.status,
            t.status,
            r.text()
        ));
    }
    for (k, v) in &t.expect_headers {
        if k.eq_ignore_ascii_case("content-type") && r.body.is_empty() {
            continue;
        }
        let got = r.header(k).unwrap_or_default();
        if !got.starts_with(v.as_str()) {
            return Some(format!("header {k}: {got:?}, expected {v:?}"));
        }
    }
    let expected = t.expect_json();
    if expected.is_null() {
        return None;
    }
    let actual = if from_registry || t.status != 200 {
        r.json()
    } else {
        // Apiman's echo server says `uri` where tollgate's test backend says `path`.
        let b = r.json();
        json!({"method": b["method"], "uri": b["path"], "resource": b["path"]})
    };
    (!resttest::json_subset(&expected, &actual))
        .then(|| format!("expected {expected}, got {actual}"))
}

fn body_of(t: &RestTest) -> Value {
    serde_json::from_str(&t.body).unwrap()
}

#[test]
fn an_api_whose_backend_port_envoy_never_saw_is_served_within_two_seconds_of_publishing() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    let fresh = Backend::echo("registry-fresh").unwrap();
    let cluster = format!("cluster.127-0-0-1_{}.", fresh.port);
    assert!(
        !gw.envoy.stats().contains(&cluster),
        "{cluster} known already"
    );
    let bean = gw
        .fixture("api-republish/001-publish-api.resttest")
        .body
        .replace(
            &format!("127.0.0.1:{}", gw.backend.port),
            &format!("127.0.0.1:{}", fresh.port),
        );
    let published = Instant::now();
    let r = gw.api("PUT", "/apis", bean.as_bytes());
    assert_eq!(r.status, 204, "{}", r.text());
    let answer = gw.wait_status("/ApiRepublishTest/public-echo/1.0/hello", &[], 200);
    let took = published.elapsed();
    assert_eq!(answer.json()["backend"], "registry-fresh");
    assert_eq!(answer.json()["path"], "/public-echo/hello");
    assert!(took <= Duration::from_secs(2), "served after {took:?}");
    assert!(gw.envoy.stats().contains(&cluster));
}

#[test]
fn a_retired_api_answers_404_api_not_found_through_envoy() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("api-republish/001-publish-api.resttest");
    gw.check("api-republish/002-api-success.resttest");
    gw.check("api-republish/003-retire-api.resttest");
    let r = gw.check("api-republish/004-api-failure.resttest");
    assert_eq!(r.header("x-gateway-error"), Some("API not found."));
    assert_eq!(r.json()["message"], "API not found.");
}

#[test]
fn a_republished_api_serves_its_new_endpoint() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("api-republish/001-publish-api.resttest");
    gw.check("api-republish/002-api-success.resttest");
    gw.check("api-republish/005-republish-api.resttest");
    gw.check("api-republish/006-api-success-republish.resttest");
}

#[test]
fn a_republished_api_applies_its_changed_policies() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("api-republish/001-publish-api.resttest");
    let path = "/ApiRepublishTest/public-echo/1.0/items/7";
    gw.wait_status(path, &[], 200);
    // The same API with the Ignored Resources policy of Apiman's ignored-resources test plan.
    let mut bean = body_of(&gw.fixture("api-republish/001-publish-api.resttest"));
    let client = body_of(&gw.fixture("policies/ignored-resources/002-register-client.resttest"));
    bean["apiPolicies"] = client["contracts"][0]["policies"].clone();
    let r = gw.api("PUT", "/apis", bean.to_string().as_bytes());
    assert_eq!(r.status, 204, "{}", r.text());
    let refused = gw.wait_status(path, &[], 404);
    assert_eq!(refused.header("x-policy-failure-code"), Some("10007"));
    assert_eq!(refused.header("x-policy-failure-type"), Some("NotFound"));
    gw.wait_status("/ApiRepublishTest/public-echo/1.0/other", &[], 200);
}

#[test]
fn a_registered_clients_key_reaches_its_contracted_api() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("client-reregister/setup/001-publish-api-1.resttest");
    gw.check("client-reregister/setup/003-register-client.resttest");
    let r = gw.check("client-reregister/echo/001-api-1.resttest");
    // The key is stripped before the backend, as Apiman strips it.
    assert!(!r.text().contains("12345"), "{}", r.text());
    gw.wait_status("/ClientReregisterTest/echo-1/1.0/x", &[], 403);
}

#[test]
fn a_reregistered_client_gains_loses_and_regains_contracts() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    for step in [
        "setup/001-publish-api-1",
        "setup/002-publish-api-2",
        "setup/003-register-client",
        "setup/004-reregister-client",
        "echo/001-api-1",
        "echo/002-api-2",
        "setup/005-break-contract",
        "echo/003-api-1-404",
        "echo/002-api-2",
        "setup/006-restore-contract-api-1",
        "echo/001-api-1",
        "echo/002-api-2",
    ] {
        gw.check(&format!("client-reregister/{step}.resttest"));
    }
}

#[test]
fn an_unregistered_clients_key_answers_404_no_client_found() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("client-reregister/setup/001-publish-api-1.resttest");
    gw.check("client-reregister/setup/003-register-client.resttest");
    gw.check("client-reregister/echo/001-api-1.resttest");
    let r = gw.api("DELETE", "/clients/ClientReregisterTest/test/1.0", b"");
    assert_eq!(r.status, 204, "{}", r.text());
    let r = gw.wait_status(
        "/ClientReregisterTest/echo-1/1.0/path",
        &[("X-API-Key", "12345")],
        404,
    );
    let message = r.header("x-gateway-error").unwrap_or_default();
    assert!(
        message.starts_with("No client found for API Key"),
        "{message}"
    );
}

#[test]
fn a_publish_tollgate_refuses_gets_apimans_error_and_the_running_registry_serves_on() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("api-republish/001-publish-api.resttest");
    gw.check("api-republish/002-api-success.resttest");
    let before = gw.registry_file();
    let mut bean = body_of(&gw.fixture("api-republish/005-republish-api.resttest"));
    bean["apiPolicies"] =
        json!([{"policyImpl": "class:com.example.NoSuchPolicy", "policyJsonConfig": "{}"}]);
    let r = gw.api("PUT", "/apis", bean.to_string().as_bytes());
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header("x-api-gateway-error"), Some("true"));
    let error = r.json();
    assert_eq!(error["errorType"], "PublishingException");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("API ApiRepublishTest/public-echo/1.0: apiPolicies[0]")
            && message.contains("com.example.NoSuchPolicy"),
        "{message}"
    );
    // Nothing changed: the files, the stored bean, and what Envoy serves.
    assert_eq!(gw.registry_file(), before);
    let stored = gw
        .api(
            "GET",
            "/organizations/ApiRepublishTest/apis/public-echo/versions/1.0",
            b"",
        )
        .json();
    assert!(stored.get("apiPolicies").is_none(), "{stored}");
    std::thread::sleep(Duration::from_millis(1500));
    gw.check("api-republish/002-api-success.resttest");
    assert!(gw
        .registry()
        .log()
        .contains("refused (500 PublishingException)"));
}

#[test]
fn apimans_rate_limiting_contract_registers_and_refuses_the_sixth_request_in_the_hour() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("policies/rate-limiting/001-publish-api.resttest");
    gw.check("policies/rate-limiting/002-register-client.resttest");
    let key = [("X-API-Key", "12345")];
    let path = "/Policy_RateLimitingTest/echo/1.0.0/path";
    // The first answer may follow retried polls while the update applies, so each request is
    // checked against the count the gateway reports rather than against a count kept here.
    let remaining = |r: &HttpResponse| -> u64 {
        r.header("x-ratelimit-remaining")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-RateLimit-Remaining: {r:?}"))
    };
    let mut r = gw.wait_status(path, &key, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    while remaining(&r) > 0 {
        let next = gw.envoy.get(path, &key).unwrap();
        assert_eq!(next.status, 200, "{}", next.text());
        assert_eq!(
            remaining(&next),
            remaining(&r) - 1,
            "each request counts once"
        );
        r = next;
    }
    let r = gw.envoy.get(path, &key).unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}

#[test]
fn a_restarted_registry_server_keeps_its_state() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    gw.check("client-reregister/setup/001-publish-api-1.resttest");
    gw.check("client-reregister/setup/003-register-client.resttest");
    gw.check("client-reregister/echo/001-api-1.resttest");
    gw.restart_registry();
    assert_eq!(
        gw.list("/organizations/ClientReregisterTest/apis"),
        ["echo-1"]
    );
    assert_eq!(
        gw.list("/organizations/ClientReregisterTest/clients"),
        ["test"]
    );
    // A change after the restart builds on the stored state: the contract to echo-1 (published
    // before the restart) is accepted, and both APIs are served.
    gw.check("client-reregister/setup/002-publish-api-2.resttest");
    gw.check("client-reregister/setup/004-reregister-client.resttest");
    gw.check("client-reregister/echo/001-api-1.resttest");
    gw.check("client-reregister/echo/002-api-2.resttest");
}

#[test]
fn the_gateway_api_requires_basic_authentication() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    let bean = gw.fixture("api-republish/001-publish-api.resttest").body;
    for credentials in [None, Some((USER, "wrong")), Some(("other", PASSWORD))] {
        for (method, path, body) in [
            ("GET", "/system/status", ""),
            ("PUT", "/apis", bean.as_str()),
        ] {
            let r = gw
                .registry()
                .request(method, path, credentials, body.as_bytes())
                .unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {credentials:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Basic realm=\"tollgate-registry\"")
            );
        }
    }
    assert!(gw.list("/organizations").is_empty());
    assert_eq!(gw.api("GET", "/system/status", b"").status, 200);
}

#[test]
fn apimans_gateway_api_test_plan_passes() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    // test-plans/api/api-testPlan.xml, in its order.
    for step in [
        "apis/001-publish-api",
        "apis/002-publish-duplicate",
        "apis/003-publish-api-2.0",
        "apis/004-publish-api-3.0",
        "apis/005-retire-api-3.0",
        "apis/006-get-endpoint",
        "apis/007-republish-api-3.0",
        "apis/005-retire-api-3.0",
        "clients/001-register-client",
        "clients/002-register-client-invalid",
        "clients/003-register-client-retired",
        "clients/004-register-client-duplicate",
        "clients/005-unregister-client",
        "clients/006-reregister-client",
        "list/000-list-orgs",
        "list/001-list-apis",
        "list/002-list-api-versions",
        "list/003-list-clients",
        "list/004-list-client-versions",
    ] {
        gw.check(&format!("api/{step}.resttest"));
    }
}

#[test]
fn concurrent_publishes_are_serialised_and_none_is_lost() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    let endpoint = format!("http://127.0.0.1:{}/c", gw.backend.port);
    let gw = &*gw;
    std::thread::scope(|s| {
        for i in 0..8 {
            let endpoint = endpoint.clone();
            s.spawn(move || {
                let bean = json!({"organizationId": "Concurrent", "apiId": format!("api-{i}"),
                    "version": "1.0", "publicAPI": true, "endpointType": "rest", "endpoint": endpoint});
                let r = gw.api("PUT", "/apis", bean.to_string().as_bytes());
                assert_eq!(r.status, 204, "{}", r.text());
            });
        }
    });
    let ids: Vec<String> = (0..8).map(|i| format!("api-{i}")).collect();
    assert_eq!(gw.list("/organizations/Concurrent/apis"), ids);
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.dir.join("state/registry.json")).unwrap())
            .unwrap();
    assert_eq!(stored["apis"].as_array().unwrap().len(), 8);
    for id in &ids {
        gw.wait_status(&format!("/Concurrent/{id}/1.0/x"), &[], 200);
    }
}

#[test]
fn status_and_endpoints_answer_exactly_the_fields_of_apimans_beans() {
    let Some(mut guard) = gateway() else { return };
    let gw = guard.as_mut().unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let status = gw.api("GET", "/system/status", b"").json();
    assert_eq!(
        keys(&status),
        ["description", "id", "name", "up", "version"]
    );
    assert_eq!(status["up"], true);
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()));
    let endpoint = gw.api("GET", "/system/endpoint", b"").json();
    assert_eq!(endpoint, json!({"endpoint": format!("{PUBLIC_URL}/")}));
    let api = gw.api("GET", "/apis/o/a/1.0/endpoint", b"").json();
    assert_eq!(api, json!({"endpoint": format!("{PUBLIC_URL}/o/a/1.0")}));
}

#[test]
fn a_published_https_api_gets_the_definitions_outbound_tls_with_its_client_certificate() {
    // A gateway of its own: its definition has an outbound keystore and truststore.
    if !available() || !live::tls_e2e_available() {
        return;
    }
    let dir = live::scratch_dir("registry-tls").unwrap();
    let certs = |args: &[&str]| live::certs(&dir, args).unwrap();
    certs(&["ca"]);
    certs(&["server", "--name", "local", "--san", "IP:127.0.0.1"]);
    certs(&["client", "--name", "gateway-client"]);
    let file = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("gateway.def.yaml"),
        format!(
            "wasm: {}\nadmin: {{port: 0}}\nlistener: {{port: 0}}\n\
             keystores:\n  gateway-client: {{type: pem, cert: {}, key: {}}}\n\
             truststores:\n  internal-ca: {{type: pem, file: {}}}\n\
             outbound: {{keystore: gateway-client, truststore: internal-ca}}\nregistry: {{}}\n",
            live::wasm_path().unwrap().display(),
            file("gateway-client.pem"),
            file("gateway-client.key"),
            file("ca.pem"),
        ),
    )
    .unwrap();
    std::fs::write(dir.join("password"), PASSWORD).unwrap();
    let registry = start_registry(&dir).unwrap();
    let envoy = Envoy::start(
        &std::fs::read_to_string(dir.join("out/envoy.yaml")).unwrap(),
        1,
    )
    .unwrap();
    // Requires a client certificate signed by the CA; started after Envoy.
    let backend = Backend::mtls("registry-mtls", &dir, "local").unwrap();
    let bean = json!({"organizationId": "Secure", "apiId": "orders", "version": "1.0",
        "publicAPI": true, "endpointType": "rest", "endpointContentType": "json",
        "endpoint": format!("https://127.0.0.1:{}/orders", backend.port),
        "endpointProperties": {"authorization.type": "mtls"}, "apiPolicies": []});
    let r = registry
        .request("PUT", "/apis", CREDENTIALS, bean.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status, 204, "{}\n{}", r.text(), registry.log());
    let mut last = None;
    let answer = live::wait_for(APPLIED, || {
        let r = envoy.get("/Secure/orders/1.0/items", &[]).ok()?;
        let ok = r.status == 200;
        last = Some(r.clone());
        ok.then_some(r)
    })
    .unwrap_or_else(|| panic!("never served: {last:?}\n{}", envoy.log()));
    let body = answer.json();
    assert_eq!(body["tls"], true);
    assert_eq!(body["client_subject"], "CN=gateway-client,O=tollgate demo");
    assert_eq!(body["path"], "/orders/items");
    let cluster = format!("127-0-0-1_{}_mtls_internal-ca_gateway-client", backend.port);
    assert!(envoy.stats().contains(&format!("cluster.{cluster}.")));
}
