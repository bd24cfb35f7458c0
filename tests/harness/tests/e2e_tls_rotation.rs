//! End-to-end certificate rotation: the client certificate is replaced on disk while requests
//! keep flowing through the real Envoy 1.40; no request fails and the backend sees the new
//! certificate afterwards, without restarting Envoy. Each test runs its own gateway (they
//! change files under it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_harness::live::{self, Backend, Envoy};

const OLD: &str = "CN=gateway-client,O=tollgate demo";
const NEW: &str = "CN=gateway-client-2,O=tollgate demo";

fn p(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

struct Gateway {
    envoy: Envoy,
    cluster: String,
    _backend: Backend,
}

/// A backend requiring client certificates, and a gateway reaching it with `keystore` (YAML).
fn gateway(dir: &Path, keystore: &str) -> Gateway {
    gateway_with(dir, keystore, &p(dir, "ca.pem"), "orders")
}

/// The same, trusting the CAs in `truststore` and with the backend serving `server_cert`.
fn gateway_with(dir: &Path, keystore: &str, truststore: &str, server_cert: &str) -> Gateway {
    let backend = Backend::mtls("orders", dir, server_cert).unwrap();
    let definition = format!(
        r#"
wasm: {wasm}
listener: {{port: 0}}
admin: {{port: 0}}
keystores:
  client: {keystore}
truststores:
  ca: {{type: pem, file: {ca}}}
# Pooled connections are replaced after 1 s, so the new certificate reaches all of them quickly.
outbound: {{keystore: client, truststore: ca, maxConnectionAge: 1s}}
registry:
  apis:
  - {{organizationId: t, apiId: orders, version: "1", publicAPI: true, endpoint: "https://orders.test:{port}/", connectTo: 127.0.0.1}}
"#,
        wasm = live::wasm_path().unwrap().display(),
        ca = truststore,
        port = backend.port,
    );
    let def_path = dir.join("gateway.def.yaml");
    std::fs::write(&def_path, definition).unwrap();
    live::generate(&def_path, &dir.join("envoy"), &dir.join("stores"))
        .unwrap_or_else(|e| panic!("tollgate-gen failed:\n{e}"));
    let yaml = std::fs::read_to_string(dir.join("envoy/envoy.yaml")).unwrap();
    Gateway {
        // Two workers, each with its own connection pool.
        envoy: Envoy::start(&yaml, 2).unwrap(),
        cluster: format!("orders-test_{}_mtls_ca_client", backend.port),
        _backend: backend,
    }
}

/// Runs a request loop on two threads while `rotate` runs, until the backend has seen only the
/// new certificate for a while. Returns every (status, subject) observed, in order.
fn under_load(envoy: &Envoy, rotate: impl FnOnce()) -> Vec<(u16, String)> {
    let seen: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = envoy.addr();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (seen, stop, addr) = (seen.clone(), stop.clone(), addr.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = tollgate_harness::http_client::send(
                        &addr,
                        "GET",
                        "/t/orders/1/x",
                        &[],
                        b"",
                        Duration::from_secs(10),
                    );
                    let entry = match r {
                        Ok(r) if r.status == 200 => (
                            200,
                            r.json()["client_subject"]
                                .as_str()
                                .unwrap_or("")
                                .to_string(),
                        ),
                        Ok(r) => (r.status, r.text()),
                        Err(e) => (0, e),
                    };
                    seen.lock().unwrap().push(entry);
                }
            })
        })
        .collect();
    let count = |subject: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(s, who)| *s == 200 && who == subject)
            .count()
    };
    // Traffic with the old certificate first.
    live::wait_for(Duration::from_secs(10), || (count(OLD) >= 20).then_some(()))
        .expect("no traffic with the first certificate");
    rotate();
    let rotated_at = seen.lock().unwrap().len();
    // Then until the last 40 answers all carry the new certificate (bounded).
    let settled = live::wait_for(Duration::from_secs(20), || {
        let all = seen.lock().unwrap();
        let tail = &all[rotated_at.max(all.len().saturating_sub(40))..];
        (tail.len() == 40 && tail.iter().all(|(s, who)| *s == 200 && who == NEW)).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let all = seen.lock().unwrap().clone();
    assert!(
        settled.is_some(),
        "the backend did not settle on the new certificate; last answers: {:?}",
        &all[all.len().saturating_sub(10)..]
    );
    all
}

fn assert_no_failures(all: &[(u16, String)]) {
    let failures: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during rotation: {:?}",
        failures.len(),
        all.len(),
        &failures[..failures.len().min(5)]
    );
}

fn certificates() -> std::path::PathBuf {
    let dir = live::scratch_dir("tls-rotation").unwrap();
    live::certs(&dir, &["ca"]).unwrap();
    live::certs(
        &dir,
        &["server", "--name", "orders", "--san", "DNS:orders.test"],
    )
    .unwrap();
    live::certs(&dir, &["client", "--name", "gateway-client", "--p12"]).unwrap();
    live::certs(&dir, &["client", "--name", "gateway-client-2", "--p12"]).unwrap();
    dir
}

#[test]
fn renaming_a_new_pem_keystore_into_place_rotates_the_client_certificate_under_load() {
    if !live::tls_e2e_available() {
        return;
    }
    let dir = certificates();
    // One file with key and chain: a rotation is one atomic rename.
    let keystore = dir.join("keystore");
    std::fs::create_dir_all(&keystore).unwrap();
    let bundle = |name: &str| {
        let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
        let cert = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
        format!("{key}{cert}")
    };
    let live_file = keystore.join("client.pem");
    std::fs::write(&live_file, bundle("gateway-client")).unwrap();
    let gw = gateway(
        &dir,
        &format!(
            "{{type: pem, cert: {f}, key: {f}}}",
            f = live_file.display()
        ),
    );
    let updates = format!(
        "cluster.{}.client_ssl_socket_factory.ssl_context_update_by_sds",
        gw.cluster
    );
    let before = gw.envoy.stat_or_zero(&updates);
    let all = under_load(&gw.envoy, || {
        let tmp = keystore.join(".client.pem.new");
        std::fs::write(&tmp, bundle("gateway-client-2")).unwrap();
        std::fs::rename(&tmp, &live_file).unwrap();
    });
    assert_no_failures(&all);
    assert!(
        gw.envoy.stat_or_zero(&updates) > before,
        "no SDS update counted"
    );
    assert_eq!(
        gw.envoy.stat_or_zero("sds.ks_client.key_rotation_failed"),
        0
    );
}

#[test]
fn rerunning_tollgate_gen_after_replacing_a_pkcs12_keystore_rotates_under_load() {
    if !live::tls_e2e_available() {
        return;
    }
    let dir = certificates();
    let store = dir.join("client.p12");
    std::fs::copy(dir.join("gateway-client.p12"), &store).unwrap();
    let gw = gateway(
        &dir,
        &format!(
            "{{type: pkcs12, file: {}, password: {{file: {}}}}}",
            store.display(),
            p(&dir, "password")
        ),
    );
    let all = under_load(&gw.envoy, || {
        std::fs::copy(dir.join("gateway-client-2.p12"), &store).unwrap();
        // The same command as the first time: it converts the new keystore and renames the
        // result into the stores directory Envoy watches. The Envoy files do not change.
        let report = live::generate(
            &dir.join("gateway.def.yaml"),
            &dir.join("envoy"),
            &dir.join("stores"),
        )
        .unwrap();
        assert!(
            report.contains("stores/client.pem") && !report.contains("envoy.yaml"),
            "{report}"
        );
    });
    assert_no_failures(&all);
}

#[test]
fn renaming_a_new_ca_bundle_into_place_rotates_the_truststore() {
    if !live::tls_e2e_available() {
        return;
    }
    let dir = certificates();
    // The backend's certificate comes from a second CA the gateway does not trust yet.
    live::certs(&dir, &["ca", "--name", "ca2", "--cn", "second CA"]).unwrap();
    live::certs(
        &dir,
        &[
            "server",
            "--name",
            "orders2",
            "--san",
            "DNS:orders.test",
            "--ca",
            "ca2",
        ],
    )
    .unwrap();
    let trust = dir.join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    let bundle = trust.join("ca.pem");
    std::fs::copy(dir.join("ca.pem"), &bundle).unwrap();
    let gw = gateway_with(
        &dir,
        &format!(
            "{{type: pem, cert: {}, key: {}}}",
            p(&dir, "gateway-client.pem"),
            p(&dir, "gateway-client.key")
        ),
        &bundle.display().to_string(),
        "orders2",
    );
    let status = || gw.envoy.get("/t/orders/1/x", &[]).unwrap().status;
    assert_eq!(
        status(),
        503,
        "the second CA is trusted before the rotation"
    );
    // Both CAs during the changeover, as one would roll a CA.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        std::fs::read_to_string(dir.join("ca2.pem")).unwrap()
    );
    let tmp = trust.join(".ca.pem.new");
    std::fs::write(&tmp, both).unwrap();
    std::fs::rename(&tmp, &bundle).unwrap();
    let ok = live::wait_for(Duration::from_secs(10), || (status() == 200).then_some(()));
    assert!(ok.is_some(), "the new truststore was not picked up");
}
