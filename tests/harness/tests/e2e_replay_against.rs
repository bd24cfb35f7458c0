//! `tollgate-replay --against` a live Envoy: it warns when the gateway does not run the
//! configuration the exchanges were written for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::json;
use tollgate_harness::live::{self, Backend, Cluster, Envoy};

/// A gateway with one public API, which tests/fixtures/cors.json knows nothing of.
fn other_gateway() -> (Envoy, Backend, String) {
    let backend = Backend::echo("other").unwrap();
    let plugin = json!({"apis": [{"organizationId": "other", "apiId": "api", "version": "1",
        "publicAPI": true, "endpoint": "http://127.0.0.1/", "cluster": "echo"}]})
    .to_string();
    let yaml = live::gateway_yaml(&plugin, &[Cluster::plain("echo", backend.port)]).unwrap();
    (Envoy::start(&yaml, 1).unwrap(), backend, plugin)
}

fn replay(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-replay"))
        .args(args)
        .current_dir(live::repo_root())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn against_a_gateway_with_another_configuration_warns_of_the_apis_it_does_not_know() {
    if !live::e2e_available() {
        return;
    }
    let (envoy, _backend, _) = other_gateway();
    let url = format!("http://{}", envoy.addr());
    let out = replay(&["--against", &url, "tests/fixtures/cors.json"]);
    assert!(
        out.contains(&format!(
            "warning: the gateway at {} answers \"API not found.\" for acme/app/1",
            envoy.addr()
        )),
        "{out}"
    );
}

#[test]
fn against_with_the_admin_compares_the_configuration_the_gateway_runs() {
    if !live::e2e_available() {
        return;
    }
    let (envoy, _backend, plugin) = other_gateway();
    let url = format!("http://{}", envoy.addr());
    let admin = format!("http://{}", envoy.admin);
    let out = replay(&[
        "--against",
        &url,
        "--admin",
        &admin,
        "tests/fixtures/cors.json",
    ]);
    assert!(
        out.contains("runs another configuration than tests/fixtures/cors.json"),
        "{out}"
    );
    // The configuration the gateway runs: no warning.
    let same = live::scratch_dir("against").unwrap().join("same.json");
    std::fs::write(&same, &plugin).unwrap();
    let out = replay(&[
        "--against",
        &url,
        "--admin",
        &admin,
        "--config",
        same.to_str().unwrap(),
        "tests/fixtures/cors.json",
    ]);
    assert!(!out.contains("warning"), "{out}");
}
