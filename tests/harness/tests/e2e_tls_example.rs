//! The bundled gateway definition (envoy/example/gateway.def.yaml): the committed Envoy files
//! are what tollgate-gen writes from it, they validate, and the gateway they describe reaches
//! the demo backend over mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use tollgate_harness::expect_status;
use tollgate_harness::live::{self, Envoy};

const EXAMPLE: &str = "envoy/example";

/// Every file tollgate-gen writes for the example, relative to `root`.
fn generated_files(root: &Path) -> Vec<String> {
    let mut files = vec![
        format!("{EXAMPLE}/envoy.yaml"),
        format!("{EXAMPLE}/dynamic/clusters.yaml"),
        format!("{EXAMPLE}/dynamic/registry.yaml"),
    ];
    let mut sds: Vec<String> = fs::read_dir(root.join(EXAMPLE).join("sds"))
        .unwrap()
        .map(|e| format!("{EXAMPLE}/sds/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    sds.sort();
    files.extend(sds);
    files
}

#[test]
fn the_committed_example_is_what_tollgate_gen_writes_from_its_definition() {
    if !live::tls_e2e_available() {
        return;
    }
    // The same command as documented, run in a scratch copy so the repository is not touched:
    // same relative paths, fresh demo certificates (the output does not depend on their keys).
    let scratch = live::scratch_dir("example").unwrap();
    fs::create_dir_all(scratch.join(EXAMPLE)).unwrap();
    let def = format!("{EXAMPLE}/gateway.def.yaml");
    fs::copy(live::repo_root().join(&def), scratch.join(&def)).unwrap();
    live::certs(&scratch.join(".run/certs"), &["demo"]).unwrap();
    let out = std::process::Command::new(live::gen_binary().unwrap())
        .args([&def, "--out", EXAMPLE, "--stores", ".run/example-stores"])
        .current_dir(&scratch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = live::repo_root();
    assert_eq!(generated_files(&scratch), generated_files(&root));
    for file in generated_files(&root) {
        let committed = fs::read_to_string(root.join(&file)).unwrap();
        let fresh = fs::read_to_string(scratch.join(&file)).unwrap();
        assert!(
            committed == fresh,
            "{file} is stale: run tollgate-gen {def} --out {EXAMPLE} --stores .run/example-stores"
        );
    }
}

#[test]
fn the_committed_example_validates_with_envoy() {
    if !live::tls_e2e_available() {
        return;
    }
    let config = live::repo_root().join(EXAMPLE).join("envoy.yaml");
    if let Err(output) = live::validate(&config) {
        panic!("{} does not validate:\n{output}", config.display());
    }
}

#[test]
fn the_example_gateway_reaches_the_demo_backend_over_mutual_tls() {
    if !live::tls_e2e_available() {
        return;
    }
    live::demo_certs().unwrap();
    let backend = live::demo_backend().unwrap();
    // Generated from the repository root like the committed files, into a scratch directory.
    let out = live::scratch_dir("example-run").unwrap();
    live::generate(
        &live::repo_root().join(EXAMPLE).join("gateway.def.yaml"),
        &out,
        &out.join("stores"),
    )
    .unwrap_or_else(|e| panic!("tollgate-gen failed:\n{e}"));
    let yaml = fs::read_to_string(out.join("envoy.yaml"))
        .unwrap()
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0");
    // The clusters come from their own file (CDS): point them at this test's backend.
    let clusters = out.join("dynamic/clusters.yaml");
    let patched = fs::read_to_string(&clusters)
        .unwrap()
        .replace("port_value: 8081", &format!("port_value: {}", backend.port));
    fs::write(&clusters, patched).unwrap();
    let envoy = Envoy::start(&yaml, 1).unwrap();

    // demo/echo: an IP endpoint with the global default keystore (PKCS#12).
    let r = envoy.get("/demo/echo/1.0/hello", &[]).unwrap();
    expect_status!(r, 200);
    assert_eq!(r.json()["tls"], true);
    assert_eq!(
        r.json()["client_subject"],
        "CN=gateway-client,O=tollgate demo"
    );
    assert_eq!(r.json()["path"], "/echo/hello");

    // demo/orders: the endpoint alias, a DNS name (localhost) and the JKS keystore.
    let r = envoy
        .get("/demo/orders/1.0/items", &[("X-API-Key", "demo-key-gold")])
        .unwrap();
    expect_status!(r, 200);
    assert_eq!(
        r.json()["client_subject"],
        "CN=gateway-client,O=tollgate demo"
    );
    assert_eq!(r.json()["path"], "/orders/items");
    assert_eq!(
        envoy.stat_or_zero("cluster.localhost_8081_mtls_demo-ca_partner-client.ssl.handshake"),
        1
    );
}
