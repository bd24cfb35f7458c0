//! The native host drives the real tollgate filter like Envoy does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use tollgate_harness::host::{BackendResponse, Host, HostSettings, Origin, StreamInput, Upstream};

fn config() -> Vec<u8> {
    json!({
        "apis": [{"organizationId": "t", "apiId": "echo", "version": "1", "publicAPI": true,
                  "endpoint": "http://backend.internal:8080/svc", "cluster": "echo"}]
    })
    .to_string()
    .into_bytes()
}

fn ok() -> Upstream {
    Upstream::Respond(BackendResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: b"hi".to_vec(),
        trailers: vec![],
    })
}

#[test]
fn a_public_api_request_is_routed_to_its_backend() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&config()).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/echo/1/x?a=1"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.origin, Origin::Backend);
    let up = r.upstream.unwrap();
    assert_eq!(up.path(), "/svc/x?a=1");
    assert_eq!(up.authority(), "backend.internal:8080");
    assert_eq!(up.cluster, "echo");
    assert_eq!(up.header("x-tollgate-cluster"), None);
}

#[test]
fn an_unknown_api_gets_the_filters_404() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&config()).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/nope/1/x"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.origin, Origin::Filter);
    assert_eq!(r.header("x-gateway-error"), Some("API not found."));
    assert!(r.upstream.is_none());
}
