//! The README's "Put your own API behind tollgate": the example definitions in envoy/own-api/
//! generate with tollgate-gen and the gateways they describe answer the README's request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use tollgate_harness::expect_status;
use tollgate_harness::live::{self, Backend, Envoy};

/// Generates `definition` as the README does (from the repository root) into a scratch
/// directory and starts Envoy with it, on ports the OS picks and with the backend's port in
/// place of `backend_port`.
fn gateway(definition: &str, backend_port: u16, backend: &Backend) -> Envoy {
    let out = live::scratch_dir("own-api").unwrap();
    live::generate(
        &live::repo_root().join(definition),
        &out,
        &out.join("stores"),
    )
    .unwrap_or_else(|e| panic!("tollgate-gen {definition} failed:\n{e}"));
    let yaml = fs::read_to_string(out.join("envoy.yaml"))
        .unwrap()
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0");
    // The clusters are in their own file (CDS): point them at this test's backend.
    let clusters = out.join("dynamic/clusters.yaml");
    let patched = fs::read_to_string(&clusters).unwrap().replace(
        &format!("port_value: {backend_port}"),
        &format!("port_value: {}", backend.port),
    );
    fs::write(&clusters, patched).unwrap();
    Envoy::start(&yaml, 1).unwrap()
}

const KEY: [(&str, &str); 1] = [("X-API-Key", "shop-key-0001")];
const ITEMS: &str = "/acme/inventory/1.0/items";

#[test]
fn the_plain_own_api_example_generates_and_answers() {
    if !live::tls_e2e_available() {
        return;
    }
    let backend = Backend::echo("inventory").unwrap();
    let envoy = gateway("envoy/own-api/plain.def.yaml", 8080, &backend);
    let r = envoy.get(ITEMS, &KEY).unwrap();
    expect_status!(r, 200, "with the example's key");
    assert_eq!(r.json()["path"], "/inventory/items");
    assert_eq!(r.json()["tls"], false);
    let r = envoy.get(ITEMS, &[]).unwrap();
    expect_status!(r, 403, "without a key");
    assert_eq!(r.header("x-gateway-error"), Some("API not public."));
}

/// The README's certificates, made with its commands when they are not there yet.
fn own_certs(dir: &Path) {
    if dir.join("gateway-client.pem").exists() {
        return;
    }
    live::certs(dir, &["ca"]).unwrap();
    live::certs(
        dir,
        &["server", "--name", "inventory", "--san", "DNS:localhost"],
    )
    .unwrap();
    live::certs(dir, &["client", "--name", "gateway-client"]).unwrap();
}

#[test]
fn the_tls_own_api_example_generates_and_answers() {
    if !live::tls_e2e_available() {
        return;
    }
    // The definition names its certificates relative to the repository root, as the README
    // makes them.
    let certs = live::repo_root().join(".run/own-certs");
    own_certs(&certs);
    let backend = Backend::mtls("inventory-tls", &certs, "inventory").unwrap();
    let envoy = gateway("envoy/own-api/tls.def.yaml", 8443, &backend);
    let r = envoy.get(ITEMS, &KEY).unwrap();
    expect_status!(r, 200, "with the example's key");
    assert_eq!(r.json()["path"], "/inventory/items");
    assert_eq!(r.json()["tls"], true);
    assert_eq!(
        r.json()["client_subject"],
        "CN=gateway-client,O=tollgate demo"
    );
}
