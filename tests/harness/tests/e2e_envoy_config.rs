//! End-to-end: the bundled Envoy configurations validate and run, and Envoy refuses an invalid
//! tollgate configuration at startup with a message naming the JSON path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use tollgate_harness::expect_status;
use tollgate_harness::live::{self, Cluster, Envoy};

#[test]
fn every_bundled_envoy_config_validates() {
    if !live::e2e_available() {
        return;
    }
    let dir = live::repo_root().join("envoy");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(output) = live::validate(&path) {
                panic!("{} does not validate:\n{output}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no Envoy configs in {}", dir.display());
}

#[test]
fn an_invalid_config_stops_envoy_with_the_json_path_and_problem() {
    if !live::e2e_available() {
        return;
    }
    let config = r#"{"apis": [{"organizationId": "o", "apiId": "a", "version": "1", "endpoint": "http://x",
        "apiPolicies": [{"policy": "ip-allowlist", "config": {"ipList": ["10.0.0.300/8"]}}]}]}"#;
    let yaml = live::gateway_yaml(config, &[Cluster::plain("x", 1)]).unwrap();
    let error = match Envoy::start(&yaml, 1) {
        Ok(_) => panic!("Envoy started with an invalid tollgate configuration"),
        Err(e) => e,
    };
    assert!(
        error.contains(r#"apis[0].apiPolicies[0] (ip-allowlist): "10.0.0.300/8" is not an IP, CIDR, range or wildcard"#),
        "{error}"
    );
}

#[test]
fn the_lite_module_refuses_a_jwt_policy_at_startup_naming_the_module_that_has_it() {
    if !live::e2e_available() {
        return;
    }
    let config = r#"{"apis": [{"organizationId": "o", "apiId": "a", "version": "1", "endpoint": "http://x",
        "apiPolicies": [{"policy": "jwt", "config": {"signingKeyString": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "algorithms": ["HS256"]}}]}]}"#;
    let yaml = live::gateway_yaml(config, &[Cluster::plain("x", 1)]).unwrap();
    // The same configuration starts with tollgate.wasm.
    drop(Envoy::start(&yaml, 1).unwrap());
    let error = match Envoy::start(&live::with_lite_module(&yaml).unwrap(), 1) {
        Ok(_) => panic!("tollgate-lite.wasm started with a JWT policy"),
        Err(e) => e,
    };
    assert!(
        error.contains("apis[0].apiPolicies[0] (jwt): this policy verifies JWT signatures, which tollgate-lite.wasm leaves out: load tollgate.wasm"),
        "{error}"
    );
}

#[test]
fn the_demo_gateway_answers_as_the_readme_says() {
    if !live::e2e_available() {
        return;
    }
    // TLS only, requiring the demo client certificate, as scripts/demo starts it.
    let backend = live::demo_backend().unwrap();
    let yaml = fs::read_to_string(live::repo_root().join("envoy/gateway.yaml"))
        .unwrap()
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 8081", &format!("port_value: {}", backend.port))
        .replace(
            "target/wasm32-wasip1/release/tollgate.wasm",
            &live::wasm_path().unwrap().display().to_string(),
        );
    let envoy = Envoy::start(&yaml, 1).unwrap();
    let gold = [("X-API-Key", "demo-key-gold")];
    expect_status!(envoy.get("/demo/echo/1.0/hello", &[]).unwrap(), 200);
    let r = envoy.get("/demo/orders/1.0/items?page=2", &gold).unwrap();
    expect_status!(r, 200, "key demo-key-gold");
    assert_eq!(r.json()["path"], "/orders/items?page=2");
    assert_eq!(r.json()["tls"], true);
    assert_eq!(
        r.json()["client_subject"],
        "CN=gateway-client,O=tollgate demo"
    );
    expect_status!(
        envoy
            .get("/demo/orders/1.0/items?apikey=demo-key-gold", &[])
            .unwrap(),
        200
    );
    expect_status!(envoy.get("/demo/orders/1.0/items", &[]).unwrap(), 403);
    expect_status!(
        envoy
            .get("/demo/orders/1.0/items", &[("X-API-Key", "not-a-real-key")])
            .unwrap(),
        404,
        "key not-a-real-key"
    );
    let r = envoy
        .get(
            "/demo/orders/1.0/items",
            &[("X-API-Key", "demo-key-partner")],
        )
        .unwrap();
    expect_status!(r, 403, "key demo-key-partner");
    assert_eq!(r.header("x-policy-failure-code"), Some("10002"));
    let r = envoy
        .get("/demo/orders/1.0/internal/metrics", &gold)
        .unwrap();
    expect_status!(r, 404, "key demo-key-gold");
    assert_eq!(r.header("x-policy-failure-code"), Some("10007"));
    let r = envoy
        .request(
            "OPTIONS",
            "/demo/echo/1.0/hello",
            &[
                ("Origin", "https://app.example.com"),
                ("Access-Control-Request-Method", "POST"),
            ],
            b"",
        )
        .unwrap();
    expect_status!(r, 200, "a CORS preflight from https://app.example.com");
    expect_status!(
        envoy
            .get(
                "/demo/echo/1.0/hello",
                &[("Origin", "https://evil.example")]
            )
            .unwrap(),
        400,
        "Origin https://evil.example"
    );
}
