//! End-to-end: the Caching Resources policy on the real Envoy 1.40 with two worker threads (two
//! VMs sharing the cache through shared data), against a backend that counts its calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;
use tollgate_harness::live::{self, Answer, Cluster, Envoy, ScriptedServer};

struct World {
    envoy: Envoy,
    backend: ScriptedServer,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // `/big` answers 300 KiB, over the default maxEntrySize (256 KiB).
        let backend = ScriptedServer::start(|r| {
            let body = if r.path.starts_with("/big") {
                vec![b'x'; 300 * 1024]
            } else {
                format!("answer for {}", r.path).into_bytes()
            };
            Answer::new(200)
                .header("content-type", "text/plain")
                .body(&body)
        })
        .expect("backend");
        let config = json!({"apis": [{"organizationId": "t", "apiId": "c", "version": "1",
            "publicAPI": true, "endpoint": "http://127.0.0.1/", "cluster": "backend",
            "apiPolicies": [{"policy": "caching-resources", "config": {"ttl": 2,
                "cachingResourcesSettingsEntries": [{"httpMethod": "GET", "pathPattern": "*", "statusCode": "200"}]}}]}]});
        let yaml = live::gateway_yaml(
            &config.to_string(),
            &[Cluster::plain("backend", backend.port)],
        )
        .expect("yaml");
        World {
            envoy: Envoy::start(&yaml, 2).expect("envoy"),
            backend,
        }
    })
}

fn calls(path: &str) -> usize {
    world()
        .backend
        .received()
        .iter()
        .filter(|r| r.path == path)
        .count()
}

macro_rules! e2e {
    () => {
        if !live::e2e_available() {
            return;
        }
    };
}

#[test]
fn parallel_clients_across_the_workers_share_one_backend_call() {
    e2e!();
    let w = world();
    let first = w.envoy.get("/t/c/1/shared", &[]).unwrap();
    assert_eq!(first.text(), "answer for /shared");
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let r = w.envoy.get("/t/c/1/shared", &[]).unwrap();
                assert_eq!((r.status, r.text()), (200, "answer for /shared".into()));
                assert_eq!(r.header("cache-control"), Some("max-age=2"));
            });
        }
    });
    assert_eq!(calls("/shared"), 1);
}

#[test]
fn an_entry_expires_after_its_ttl() {
    e2e!();
    let w = world();
    w.envoy.get("/t/c/1/expiring", &[]).unwrap();
    w.envoy.get("/t/c/1/expiring", &[]).unwrap();
    assert_eq!(calls("/expiring"), 1);
    std::thread::sleep(Duration::from_millis(2100));
    let r = w.envoy.get("/t/c/1/expiring", &[]).unwrap();
    assert_eq!(r.header("age"), None);
    assert_eq!(calls("/expiring"), 2);
}

#[test]
fn a_response_over_max_entry_size_is_passed_on_and_not_stored() {
    e2e!();
    let w = world();
    for _ in 0..2 {
        let r = w.envoy.get("/t/c/1/big", &[]).unwrap();
        assert_eq!((r.status, r.body.len()), (200, 300 * 1024));
    }
    assert_eq!(calls("/big"), 2);
}
