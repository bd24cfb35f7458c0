//! End-to-end: whole-body policies hold a body only up to their limit. A larger body (announced
//! by its Content-Length, or streamed in chunks without one) is passed on as the backend sent
//! it, with a log line, and never trips Envoy's own buffer limit (which would answer 500). The
//! real Envoy 1.40 and tollgate.wasm, a backend that streams chunked bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::OnceLock;

use serde_json::json;
use tollgate_harness::http_client::HttpResponse;
use tollgate_harness::live::{self, Answer, Cluster, Envoy, ScriptedServer};

struct World {
    envoy: Envoy,
    _fixed: ScriptedServer,
}

/// The body a backend sends: `kib` KiB of lines naming the backend's own URL.
fn body(kib: usize) -> Vec<u8> {
    let line = b"see http://shop.internal:8080/item and more text to pad...\n";
    let mut out = Vec::with_capacity(kib * 1024);
    while out.len() < kib * 1024 {
        out.extend_from_slice(line);
    }
    out.truncate(kib * 1024);
    out
}

/// A backend that answers `/chunked/<kib>` with that body in 16 KiB chunks, no Content-Length.
fn chunked_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let kib: usize = first
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/chunked/"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
                for chunk in body(kib).chunks(16 * 1024) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                let _ = conn.write_all(&out);
            });
        }
    });
    port
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let fixed = ScriptedServer::start(|r| {
            let kib = r
                .path
                .strip_prefix("/fixed/")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            Answer::new(200)
                .header("content-type", "text/plain")
                .body(&body(kib))
        })
        .expect("backend");
        let rewrite = json!([{"policy": "url-rewriting", "config": {
            "fromRegex": "http://shop\\.internal:8080/", "toReplacement": "https://api.example.com/",
            "processResponseBody": true}}]);
        let config = json!({"apis": [
            {"organizationId": "t", "apiId": "chunked", "version": "1", "publicAPI": true,
             "endpoint": "http://127.0.0.1/", "cluster": "chunked", "apiPolicies": rewrite},
            {"organizationId": "t", "apiId": "fixed", "version": "1", "publicAPI": true,
             "endpoint": "http://127.0.0.1/", "cluster": "fixed", "apiPolicies": rewrite}
        ]});
        let yaml = live::gateway_yaml(
            &config.to_string(),
            &[
                Cluster::plain("chunked", chunked_backend()),
                Cluster::plain("fixed", fixed.port),
            ],
        )
        .expect("yaml");
        World {
            envoy: Envoy::start(&yaml, 1).expect("envoy"),
            _fixed: fixed,
        }
    })
}

fn get(path: &str) -> HttpResponse {
    world().envoy.get(path, &[]).expect("request")
}

fn rewritten(kib: usize) -> Vec<u8> {
    String::from_utf8_lossy(&body(kib))
        .replace("http://shop.internal:8080/", "https://api.example.com/")
        .into_bytes()
}

macro_rules! e2e {
    () => {
        if !live::e2e_available() {
            return;
        }
    };
}

#[test]
fn a_chunked_body_within_the_limit_is_rewritten() {
    e2e!();
    let r = get("/t/chunked/1/chunked/64");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, rewritten(64));
}

#[test]
fn a_chunked_body_over_the_limit_and_over_envoys_buffer_passes_unchanged() {
    e2e!();
    let r = get("/t/chunked/1/chunked/2048");
    assert_eq!(r.status, 200, "{}", world().envoy.log());
    assert_eq!(r.body.len(), 2048 * 1024);
    assert_eq!(r.body, body(2048));
    assert!(
        live::wait_for(std::time::Duration::from_secs(5), || world()
            .envoy
            .log()
            .contains("response body is larger than 524288 bytes")
            .then_some(()))
        .is_some(),
        "no log line:\n{}",
        world().envoy.log()
    );
}

#[test]
fn a_body_announced_over_the_limit_is_not_held() {
    e2e!();
    let r = get("/t/fixed/1/fixed/2048");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body(2048));
}

#[test]
fn a_body_announced_within_the_limit_is_rewritten_with_its_length() {
    e2e!();
    let r = get("/t/fixed/1/fixed/100");
    assert_eq!(r.status, 200);
    let expected = rewritten(100);
    assert_eq!(
        r.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(r.body, expected);
}
