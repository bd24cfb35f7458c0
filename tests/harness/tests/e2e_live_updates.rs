//! Live registry updates: tollgate-gen writes the registry and the clusters into files of their
//! own that Envoy watches (ECDS and CDS). Re-running it with a changed definition changes the
//! running gateway without a restart and without a failed request; a registry the filter
//! refuses is rejected by Envoy, visibly, and the running one keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_harness::live::{self, Backend, Envoy};

/// A plain-HTTP definition with APIs `t/v0/1` .. `t/v{n}/1`, all on the echo backend.
fn definition(dir: &Path, backend: u16, apis: usize) -> std::path::PathBuf {
    let mut yaml = format!(
        "wasm: {}\nadmin: {{address: 127.0.0.1, port: 0}}\nlistener: {{address: 127.0.0.1, port: 0}}\nregistry:\n  apis:\n",
        live::wasm_path().unwrap().display()
    );
    for i in 0..=apis {
        yaml.push_str(&format!(
            "  - {{organizationId: t, apiId: v{i}, version: '1', publicAPI: true, endpoint: 'http://127.0.0.1:{backend}/'}}\n"
        ));
    }
    let path = dir.join("gateway.def.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn generate(dir: &Path, backend: u16, apis: usize) {
    let def = definition(dir, backend, apis);
    live::generate(&def, &dir.join("out"), &dir.join("stores"))
        .unwrap_or_else(|e| panic!("tollgate-gen failed:\n{e}"));
}

fn status(envoy: &Envoy, path: &str) -> u16 {
    envoy.get(path, &[]).map(|r| r.status).unwrap_or(0)
}

#[test]
fn twenty_updates_under_load_lose_no_request_and_apply_within_two_seconds() {
    if !live::tls_e2e_available() {
        return;
    }
    let backend = Backend::echo("live-updates").unwrap();
    let dir = live::scratch_dir("live-updates").unwrap();
    generate(&dir, backend.port, 0);
    let yaml = std::fs::read_to_string(dir.join("out/envoy.yaml")).unwrap();
    let envoy = Arc::new(Envoy::start(&yaml, 2).unwrap());
    assert_eq!(status(&envoy, "/t/v0/1/x"), 200);

    // Load: wrk (scripts/test installs it) on the API every version has, for 30 s; without
    // wrk, four clients doing the same one request at a time.
    let wrk = std::process::Command::new("wrk")
        .args(["-t1", "-c16", "-d30s", "--latency"])
        .arg(format!("http://{}/t/v0/1/x", envoy.addr()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let unexpected = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..if wrk.is_some() { 0 } else { 4 })
        .map(|_| {
            let (envoy, stop, sent, unexpected) = (
                envoy.clone(),
                stop.clone(),
                sent.clone(),
                unexpected.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let s = status(&envoy, "/t/v0/1/x");
                    sent.fetch_add(1, Ordering::SeqCst);
                    if s != 200 {
                        unexpected.lock().unwrap().push(s);
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for version in 1..=20 {
        generate(&dir, backend.port, version);
        let written = Instant::now();
        let path = format!("/t/v{version}/1/x");
        let seen = live::wait_for(Duration::from_secs(5), || {
            (status(&envoy, &path) == 200).then_some(())
        });
        assert!(seen.is_some(), "version {version} never applied");
        slowest = slowest.max(written.elapsed());
        std::thread::sleep(Duration::from_millis(1_200).saturating_sub(written.elapsed()));
    }
    // Keep the load on for 30 s in all.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    if let Some(wrk) = wrk {
        let out = wrk.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("{report}");
        // "N requests in 30.00s" and, only when there were any, "Non-2xx or 3xx responses: M";
        // socket errors (connect, read, write, timeout) are failed requests too.
        let requests: usize = report
            .lines()
            .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        sent.fetch_add(requests, Ordering::SeqCst);
        for line in report.lines() {
            let line = line.trim();
            if line.starts_with("Non-2xx") || line.starts_with("Socket errors") {
                unexpected.lock().unwrap().push(0);
                eprintln!("wrk: {line}");
            }
        }
    }
    let unexpected = unexpected.lock().unwrap();
    eprintln!(
        "live updates: {} requests in {:?}, 20 updates, slowest applied after {slowest:?}",
        sent.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert!(
        unexpected.is_empty(),
        "{} of {} requests got {:?}",
        unexpected.len(),
        sent.load(Ordering::SeqCst),
        &unexpected[..unexpected.len().min(10)]
    );
    assert!(
        slowest <= Duration::from_secs(2),
        "an update took {slowest:?} to apply"
    );
    assert!(sent.load(Ordering::SeqCst) > 100);
    assert_eq!(
        envoy.stat_or_zero("extension_config_discovery.http_filter.tollgate.update_rejected"),
        0
    );
}

#[test]
fn a_registry_the_filter_refuses_is_rejected_visibly_and_the_running_one_keeps_serving() {
    if !live::tls_e2e_available() {
        return;
    }
    let backend = Backend::echo("live-refused").unwrap();
    let dir = live::scratch_dir("live-refused").unwrap();
    generate(&dir, backend.port, 1);
    let yaml = std::fs::read_to_string(dir.join("out/envoy.yaml")).unwrap();
    let envoy = Envoy::start(&yaml, 1).unwrap();
    assert_eq!(status(&envoy, "/t/v1/1/x"), 200);

    // A hand edit that breaks the registry, renamed into place as an update would be.
    let registry = dir.join("out/dynamic/registry.yaml");
    let broken = std::fs::read_to_string(&registry).unwrap().replace(
        &format!("http://127.0.0.1:{}/", backend.port),
        "ftp://nowhere",
    );
    let next = dir.join("out/dynamic/registry.yaml.new");
    std::fs::write(&next, broken).unwrap();
    std::fs::rename(&next, &registry).unwrap();

    let rejected = live::wait_for(Duration::from_secs(5), || {
        (envoy.stat_or_zero("extension_config_discovery.http_filter.tollgate.update_rejected") > 0)
            .then_some(())
    });
    assert!(rejected.is_some(), "{}", envoy.log());
    assert_eq!(status(&envoy, "/t/v1/1/x"), 200);
    assert!(
        envoy.log().contains("is not an http:// or https:// URL"),
        "{}",
        envoy.log()
    );
}

#[test]
fn tollgate_gen_refuses_a_broken_registry_and_leaves_the_running_files_alone() {
    if !live::tls_e2e_available() {
        return;
    }
    let dir = live::scratch_dir("live-gen-refuses").unwrap();
    generate(&dir, 9, 1);
    let registry = dir.join("out/dynamic/registry.yaml");
    let before = std::fs::read_to_string(&registry).unwrap();
    let def = definition(&dir, 9, 1);
    let text = std::fs::read_to_string(&def)
        .unwrap()
        .replace("http://127.0.0.1:9/", "ftp://nowhere");
    std::fs::write(&def, text).unwrap();
    let err = live::generate(&def, &dir.join("out"), &dir.join("stores")).unwrap_err();
    assert!(err.contains("is not an http:// or https:// URL"), "{err}");
    assert_eq!(std::fs::read_to_string(&registry).unwrap(), before);
}

/// A key-authenticated API whose plan names itself in a header, and one client per key.
fn keyed_definition(dir: &Path, backend: u16, keys: &[&str]) -> std::path::PathBuf {
    let mut yaml = format!(
        "wasm: {}\nadmin: {{address: 127.0.0.1, port: 0}}\nlistener: {{address: 127.0.0.1, port: 0}}\nregistry:\n  apis:\n  - {{organizationId: t, apiId: keyed, version: '1', endpoint: 'http://127.0.0.1:{backend}/'}}\n  plans:\n  - {{planId: gold, policies: [{{policy: simple-header, config: {{addHeaders: [{{headerName: X-Plan, headerValue: gold, applyTo: Request}}]}}}}]}}\n  clients:\n",
        live::wasm_path().unwrap().display()
    );
    for (i, key) in keys.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{organizationId: t, clientId: c{i}, version: '1', apiKey: '{key}', contracts: [{{apiOrgId: t, apiId: keyed, apiVersion: '1', plan: gold}}]}}\n"
        ));
    }
    let path = dir.join("gateway.def.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn a_registry_delivered_as_an_image_serves_updates_live_and_keeps_keys_out_of_envoys_config() {
    if !live::tls_e2e_available() {
        return;
    }
    let backend = Backend::echo("live-image").unwrap();
    let dir = live::scratch_dir("live-image").unwrap();
    let generate = |keys: &[&str]| {
        let def = keyed_definition(&dir, backend.port, keys);
        live::generate_with(
            &def,
            &dir.join("out"),
            &dir.join("stores"),
            &["--registry-image"],
        )
        .unwrap_or_else(|e| panic!("tollgate-gen failed:\n{e}"));
    };
    generate(&["first-key-0001"]);
    let yaml = std::fs::read_to_string(dir.join("out/envoy.yaml")).unwrap();
    assert!(yaml.contains("registry.pb"), "{yaml}");
    let envoy = Envoy::start(&yaml, 2).unwrap();
    let keyed = |key: &str| {
        envoy
            .get("/t/keyed/1/x", &[("X-API-Key", key)])
            .map(|r| r.status)
            .unwrap_or(0)
    };
    assert_eq!(keyed("first-key-0001"), 200);
    assert_eq!(keyed("second-key-0002"), 404);
    assert!(
        envoy
            .log()
            .contains("(a registry image compiled by tollgate-gen)"),
        "{}",
        envoy.log()
    );

    generate(&["first-key-0001", "second-key-0002"]);
    let applied = live::wait_for(Duration::from_secs(10), || {
        (keyed("second-key-0002") == 200).then_some(())
    });
    assert!(applied.is_some(), "the second image never applied");
    assert_eq!(keyed("first-key-0001"), 200);
    assert_eq!(
        envoy.stat_or_zero("extension_config_discovery.http_filter.tollgate.update_rejected"),
        0
    );
    // Envoy's configuration (what its admin interface shows) holds digests, not the keys.
    let dump = envoy.admin_get("/config_dump?include_eds");
    assert!(
        dump.contains("BytesValue"),
        "{}",
        &dump[..dump.len().min(2000)]
    );
    assert!(!dump.contains("first-key-0001"));
}
