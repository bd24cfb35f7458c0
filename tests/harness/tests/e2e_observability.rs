//! End-to-end: what an operator sees. tollgate's counters reach Envoy's Prometheus endpoint
//! with labels (api, client, plan, outcome, code), and every request is in the access log with
//! tollgate's decision, the key masked: no key or token appears in any log line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use tollgate_harness::live::{self, Backend, Cluster, Envoy};

const KEY: &str = "observable-key-0123456789";
const TOKEN: &str = "Bearer very-secret-token-value";

fn gateway() -> Option<(Envoy, Backend)> {
    if !live::e2e_available() {
        return None;
    }
    let backend = Backend::echo("observability").unwrap();
    let config = json!({
        "gateway": {"decisionLog": true},
        "apis": [
            {"organizationId": "t", "apiId": "private", "version": "1.0", "endpoint": "http://127.0.0.1/", "cluster": "echo"},
            {"organizationId": "t", "apiId": "public", "version": "1", "publicAPI": true, "endpoint": "http://127.0.0.1/", "cluster": "echo",
             "apiPolicies": [{"policy": "ip-blocklist", "config": {"ipList": ["127.0.0.1"], "responseCode": 403}}]}
        ],
        "clients": [{"organizationId": "t", "clientId": "app", "version": "1", "apiKey": KEY,
                     "contracts": [{"apiOrgId": "t", "apiId": "private", "apiVersion": "1.0", "plan": "Gold", "policies": []}]}]
    });
    let yaml =
        live::gateway_yaml(&config.to_string(), &[Cluster::plain("echo", backend.port)]).unwrap();
    Some((Envoy::start(&yaml, 1).unwrap(), backend))
}

fn prometheus(envoy: &Envoy) -> String {
    tollgate_harness::http_client::send(
        &envoy.admin,
        "GET",
        "/stats/prometheus",
        &[],
        b"",
        Duration::from_secs(5),
    )
    .unwrap()
    .text()
}

#[test]
fn decisions_are_counted_in_prometheus_with_labels_and_logged_without_keys() {
    let Some((envoy, _backend)) = gateway() else {
        return;
    };
    for _ in 0..3 {
        let r = envoy
            .get(
                "/t/private/1.0/x",
                &[("X-API-Key", KEY), ("Authorization", TOKEN)],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = envoy
        .get(&format!("/t/private/1.0/x?apikey={KEY}x"), &[])
        .unwrap();
    assert_eq!(r.status, 404);
    let r = envoy.get("/t/public/1/x", &[]).unwrap();
    assert_eq!(r.status, 403);

    // Counters reach Envoy on the filter's tick (every second).
    let text = live::wait_for(Duration::from_secs(5), || {
        let t = prometheus(&envoy);
        t.contains("outcome=\"refused\"").then_some(t)
    })
    .unwrap_or_else(|| prometheus(&envoy));
    for line in [
        "tollgate_requests_total{api=\"t_private_1_0\",client=\"app\",plan=\"Gold\",outcome=\"allowed\",code=\"_none\"} 3",
        "tollgate_requests_total{api=\"t_private_1_0\",client=\"_none\",plan=\"_none\",outcome=\"error\",code=\"no_client\"} 1",
        "tollgate_requests_total{api=\"t_public_1\",client=\"_none\",plan=\"_none\",outcome=\"refused\",code=\"10002\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }

    // Envoy flushes its file access log every 10 s (--file-flush-interval-msec) unless its buffer
    // fills: on a busy machine the lines can take that long.
    let access = live::wait_for(Duration::from_secs(15), || {
        let a = envoy.access_log();
        (a.lines().count() >= 5).then_some(a)
    })
    .unwrap_or_else(|| envoy.access_log());
    let decisions: Vec<serde_json::Value> = access
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(decisions.len(), 5, "{access}");
    let allowed = &decisions[0]["tollgate"];
    assert_eq!(allowed["client"], "app");
    assert_eq!(allowed["plan"], "Gold");
    assert_eq!(allowed["outcome"], "allowed");
    assert_eq!(allowed["key"], "obse****");
    let refused = &decisions[4]["tollgate"];
    assert_eq!(refused["policy"], "ip-blocklist");
    assert_eq!(refused["code"], 10002);
    // No key or token in any log line, access log or Envoy's own.
    for text in [access, envoy.log()] {
        assert!(!text.contains(KEY), "a key reached a log:\n{text}");
        assert!(
            !text.contains("very-secret-token"),
            "a token reached a log:\n{text}"
        );
    }
}
