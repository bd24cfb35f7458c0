//! End-to-end: limits in the real Envoy 1.40 with the real tollgate.wasm.
//!
//! - Exactness across worker VMs: Envoy with two workers, 200 requests at once against a limit
//!   of 50: exactly 50 pass.
//! - A soak: 30 s of keep-alive traffic from several threads over many keys, most driven past
//!   their limit, plus a stream of users never seen before: no window ever admits more than its
//!   limit, every window that refused admitted exactly its limit, and Envoy's heap stays
//!   within a bound.
//! - Shared across gateways: two Envoys asking one tollgate-rls (Limitador over Redis), 2 × 100
//!   requests at once against one limit of 50: exactly 50 pass in total. With Redis stopped, a
//!   `failureMode: closed` limit refuses with 503 and an `open` one lets requests through, each
//!   with a log line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tollgate_harness::http_client;
use tollgate_harness::live::{self, Cluster, Envoy, Process};

macro_rules! e2e {
    () => {
        if !live::e2e_available() {
            return;
        }
    };
}

// ---- a keep-alive backend and client (thousands of requests without a connection each) ----

/// An HTTP/1.1 backend that keeps connections open and answers every request `200 ok`.
struct KeepAliveBackend {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl KeepAliveBackend {
    fn start() -> KeepAliveBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || serve(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        KeepAliveBackend { port, stop }
    }
}

impl Drop for KeepAliveBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let Some((_, headers)) = read_head(&mut reader) else {
            return;
        };
        let length = content_length(&headers);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

/// Reads a message head: the first line and the headers (lower-cased names).
fn read_head(reader: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some((first.trim_end().to_string(), headers));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

fn content_length(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A keep-alive client connection to the gateway.
struct Client {
    addr: String,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    fn new(addr: &str) -> Client {
        Client {
            addr: addr.to_string(),
            conn: None,
        }
    }

    /// A GET; reconnects once if the connection was closed. Status 0 when it failed.
    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        for _ in 0..2 {
            if self.conn.is_none() {
                let Ok(s) = TcpStream::connect(&self.addr) else {
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                s.set_nodelay(true).ok();
                let r = BufReader::new(s.try_clone().unwrap());
                self.conn = Some((s, r));
            }
            let (w, r) = self.conn.as_mut().unwrap();
            let mut req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            if w.write_all(req.as_bytes()).is_err() {
                self.conn = None;
                continue;
            }
            let Some((line, headers)) = read_head(r) else {
                self.conn = None;
                continue;
            };
            let mut body = vec![0; content_length(&headers)];
            if r.read_exact(&mut body).is_err() {
                self.conn = None;
                continue;
            }
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if headers
                .iter()
                .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"))
            {
                self.conn = None;
            }
            return Answer { status, headers };
        }
        Answer {
            status: 0,
            headers: Vec::new(),
        }
    }
}

fn api(id: &str, policies: Value) -> Value {
    json!({"organizationId": "t", "apiId": id, "version": "1", "publicAPI": true,
           "endpoint": "http://127.0.0.1/", "cluster": "backend", "apiPolicies": policies})
}

/// Sends `n` GETs to `addr` at once (one thread and connection each); returns the statuses.
fn burst(addr: &str, n: usize, path: &str, headers: &[(&str, &str)]) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (addr, path, barrier) = (addr.to_string(), path.to_string(), barrier.clone());
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            std::thread::spawn(move || {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                barrier.wait();
                http_client::send(&addr, "GET", &path, &h, b"", Duration::from_secs(20))
                    .map(|r| r.status)
                    .unwrap_or(0)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn tally(statuses: &[u16]) -> HashMap<u16, usize> {
    let mut t = HashMap::new();
    for s in statuses {
        *t.entry(*s).or_default() += 1;
    }
    t
}

/// Downstream connections each worker accepted (`listener.<addr>.worker_<n>.downstream_cx_total`).
fn connections_per_worker(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.stats();
    (0..2)
        .map(|w| {
            let suffix = format!(".worker_{w}.downstream_cx_total");
            stats
                .lines()
                .filter(|l| l.starts_with("listener.127.0.0.1_"))
                .filter_map(|l| l.split_once(": "))
                .filter(|(k, _)| k.ends_with(&suffix))
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum()
        })
        .collect()
}

#[test]
fn exactly_the_limit_passes_when_200_requests_hit_two_workers_at_once() {
    e2e!();
    let backend = KeepAliveBackend::start();
    let config = json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1",
                  "endpoint": "http://127.0.0.1/", "cluster": "backend"}],
        "clients": [{"organizationId": "t", "clientId": "c", "version": "1", "apiKey": "exact-key-1",
            "contracts": [{"apiOrgId": "t", "apiId": "a", "apiVersion": "1", "plan": "p", "policies": [
                {"policy": "rate-limiting", "config": {"limit": 50, "granularity": "Client", "period": "Year"}}]}]}]
    });
    let yaml = live::gateway_yaml(
        &config.to_string(),
        &[Cluster::plain("backend", backend.port)],
    )
    .unwrap();
    let envoy = Envoy::start(&yaml, 2).unwrap();
    let statuses = burst(
        &envoy.addr(),
        200,
        "/t/a/1/x",
        &[("X-API-Key", "exact-key-1")],
    );
    let t = tally(&statuses);
    assert_eq!(t.get(&200), Some(&50), "{t:?}");
    assert_eq!(t.get(&429), Some(&150), "{t:?}");
    let per_worker = connections_per_worker(&envoy);
    eprintln!("exactness: 200 requests, {t:?}, connections per worker {per_worker:?}");
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "both workers must have served: {per_worker:?}"
    );
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
}

/// Envoy's heap in use (`/memory`, tcmalloc's allocated bytes).
fn allocated(envoy: &Envoy) -> u64 {
    http_client::send(
        &envoy.admin,
        "GET",
        "/memory",
        &[],
        b"",
        Duration::from_secs(5),
    )
    .ok()
    .and_then(|r| r.json()["allocated"].as_str().and_then(|s| s.parse().ok()))
    .unwrap_or(0)
}

/// A keyed request's outcome: the key, the end of the window it counted in, the status.
type Keyed = (usize, u64, u16);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn a_30_second_soak_never_over_admits_and_keeps_the_heap_bounded() {
    e2e!();
    const KEYS: usize = 16;
    const EDGE: u64 = 150;
    const THREADS: usize = 6;
    let soak = Duration::from_secs(
        std::env::var("TOLLGATE_SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let backend = KeepAliveBackend::start();
    // Keys 0..12 are driven past a limit of EDGE a minute; 12..16 have limits never reached.
    let limit_of = |k: usize| if k < 12 { EDGE } else { 1_000_000 };
    let clients: Vec<Value> = (0..KEYS)
        .map(|k| {
            json!({"organizationId": "t", "clientId": format!("c{k}"), "version": "1",
                   "apiKey": format!("soak-key-{k:02}"),
                   "contracts": [{"apiOrgId": "t", "apiId": "keyed", "apiVersion": "1", "plan": "p",
                       "policies": [{"policy": "rate-limiting", "config":
                           {"limit": limit_of(k), "granularity": "Client", "period": "Minute"}}]}]})
        })
        .collect();
    let config = json!({
        "apis": [
            {"organizationId": "t", "apiId": "keyed", "version": "1",
             "endpoint": "http://127.0.0.1/", "cluster": "backend"},
            // Every request a user never seen before: the counters' key space under pressure.
            api("users", json!([{"policy": "rate-limiting", "config":
                {"limit": 3, "granularity": "User", "period": "Minute", "userHeader": "X-User"}}]))
        ],
        "clients": clients
    });
    let yaml = live::gateway_yaml(
        &config.to_string(),
        &[Cluster::plain("backend", backend.port)],
    )
    .unwrap();
    let envoy = Envoy::start(&yaml, 2).unwrap();
    // Warm up (each worker VM compiles its chain on first use), then measure the heap.
    for _ in 0..20 {
        http_client::send(
            &envoy.addr(),
            "GET",
            "/t/users/1/x",
            &[("X-User", "warm")],
            b"",
            Duration::from_secs(5),
        )
        .ok();
    }
    let heap_before = allocated(&envoy);
    let started = Instant::now();
    let deadline = started + soak;
    let results: Vec<(Vec<Keyed>, Vec<u16>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let addr = envoy.addr();
                s.spawn(move || {
                    let mut client = Client::new(&addr);
                    let (mut keyed, mut users) = (Vec::new(), Vec::new());
                    let mut i = 0usize;
                    while Instant::now() < deadline {
                        i += 1;
                        if i % 4 == 0 {
                            let user = format!("u-{t}-{i}");
                            users.push(client.get("/t/users/1/x", &[("X-User", &user)]).status);
                            continue;
                        }
                        let k = (t * 7 + i) % KEYS;
                        let key = format!("soak-key-{k:02}");
                        let a = client.get("/t/keyed/1/x", &[("X-API-Key", &key)]);
                        let now = unix_now();
                        // The window this answer counted in: it ends `reset` seconds after the
                        // request; minute windows end on a multiple of 60.
                        let reset: u64 = a
                            .header("x-ratelimit-reset")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let end = (now + reset + 30) / 60 * 60;
                        keyed.push((k, end, a.status));
                    }
                    (keyed, users)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let heap_after = allocated(&envoy);
    let keyed: Vec<Keyed> = results.iter().flat_map(|r| r.0.clone()).collect();
    let users: Vec<u16> = results.iter().flat_map(|r| r.1.clone()).collect();
    let total = keyed.len() + users.len();

    let statuses = tally(&keyed.iter().map(|r| r.2).collect::<Vec<_>>());
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 429),
        "unexpected statuses: {statuses:?}"
    );
    let mut windows: HashMap<(usize, u64), (u64, u64)> = HashMap::new();
    for (k, end, status) in &keyed {
        let w = windows.entry((*k, *end)).or_default();
        if *status == 200 {
            w.0 += 1;
        } else {
            w.1 += 1;
        }
    }
    for ((k, end), (admitted, refused)) in &windows {
        assert!(
            *admitted <= limit_of(*k),
            "key {k}, window ending {end}: {admitted} admitted, limit {}",
            limit_of(*k)
        );
        if *refused > 0 {
            assert_eq!(
                *admitted,
                limit_of(*k),
                "key {k}, window ending {end}: refused {refused} with only {admitted} admitted"
            );
        }
    }
    let edge_windows = windows.iter().filter(|(_, (_, r))| *r > 0).count();
    let user_tally = tally(&users);
    assert_eq!(user_tally.get(&200), Some(&users.len()), "{user_tally:?}");
    let growth = heap_after.saturating_sub(heap_before);
    eprintln!(
        "soak: {total} requests in {:.1} s ({:.0}/s), keyed {statuses:?}, {} key windows of which {edge_windows} reached their limit exactly, {} new users, Envoy heap {} -> {} bytes (+{:.1} MiB)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        windows.len(),
        users.len(),
        heap_before,
        heap_after,
        growth as f64 / 1_048_576.0
    );
    assert!(
        edge_windows >= 12,
        "the limits were not reached: {windows:?}"
    );
    // Shared data for 2^16 slots of the users limit (at most a few dozen bytes each) and the
    // keyed slots: far below this, however many users come.
    assert!(growth < 64 << 20, "Envoy's heap grew by {growth} bytes");
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
}

// ---- shared across gateways: Redis, tollgate-rls, two Envoys ------------------------------

/// `redis-server` on a free port with its files in a scratch directory.
struct Redis {
    port: u16,
    process: Option<Process>,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = live::scratch_dir("redis").unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it: apt-get install redis-server)");
        let process = Process::new(child, "redis");
        let ready = live::wait_for(Duration::from_secs(10), || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok();
            s.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).ok()?;
            (&buf == b"+PONG\r\n").then_some(())
        });
        assert!(
            ready.is_some(),
            "redis-server did not answer PING within 10 s"
        );
        Redis {
            port,
            process: Some(process),
        }
    }

    fn stop(&mut self) {
        self.process.take();
    }
}

/// tollgate-rls: `$TOLLGATE_RLS`, else `target/debug/tollgate-rls` (`cargo build -p tollgate-rls`).
fn rls_binary() -> Option<std::path::PathBuf> {
    let p = std::env::var("TOLLGATE_RLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| live::repo_root().join("target/debug/tollgate-rls"));
    let have_redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if p.exists() && have_redis {
        return Some(p);
    }
    if std::env::var("TOLLGATE_E2E").is_ok_and(|v| v == "1") {
        panic!(
            "the two-gateway test needs {} (cargo build -p tollgate-rls) and redis-server (apt-get install redis-server)",
            p.display()
        );
    }
    eprintln!("skipping the two-gateway test: tollgate-rls or redis-server missing");
    None
}

/// Starts tollgate-rls against Redis; returns its port and process.
fn start_rls(binary: &std::path::Path, redis: u16) -> (u16, Process) {
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--redis"])
        .arg(format!("redis://127.0.0.1:{redis}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let process = Process::new(child, "tollgate-rls");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("tollgate-rls did not start within 10 s");
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("tollgate-rls said {line:?}"));
    (port, process)
}

/// An HTTP/2 (gRPC) cluster.
fn grpc_cluster(name: &str, port: u16) -> Cluster {
    Cluster {
        name: name.into(),
        port,
        extra: r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#
        .into(),
    }
}

#[test]
fn two_gateways_share_one_limit_through_a_rate_limit_service_and_fail_as_configured() {
    e2e!();
    let Some(binary) = rls_binary() else {
        return;
    };
    let mut redis = Redis::start();
    let backend = KeepAliveBackend::start();
    let limit = |failure_mode: &str| {
        json!([{"policy": "rate-limiting", "config": {"limit": 50, "granularity": "Api", "period": "Hour",
            "rateLimitService": {"cluster": "ratelimit", "domain": "two-gateways",
                                 "timeoutMs": 2000, "failureMode": failure_mode}}}])
    };
    let config = json!({"apis": [api("shared", limit("closed")), api("lenient", limit("open"))]});
    // One rate limit service for both gateways (it serializes the checks of a counter; see
    // tests/rls), its counts in Redis.
    let (rls_port, _rls) = start_rls(&binary, redis.port);
    let yaml = live::gateway_yaml(
        &config.to_string(),
        &[
            Cluster::plain("backend", backend.port),
            grpc_cluster("ratelimit", rls_port),
        ],
    )
    .unwrap();
    let gateways: Vec<Envoy> = (0..2).map(|_| Envoy::start(&yaml, 2).unwrap()).collect();
    // 2 × 100 requests at once, half through each gateway.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = gateways
            .iter()
            .map(|envoy| {
                let addr = envoy.addr();
                s.spawn(move || burst(&addr, 100, "/t/shared/1/x", &[]))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let t = tally(&statuses);
    eprintln!("two gateways: 200 requests, {t:?}");
    assert_eq!(t.get(&200), Some(&50), "{t:?}");
    assert_eq!(t.get(&429), Some(&150), "{t:?}");

    // Redis goes away: the closed limit refuses, the open one lets requests through.
    redis.stop();
    let envoy = &gateways[0];
    let closed = envoy.get("/t/shared/1/x", &[]).unwrap();
    assert_eq!(closed.status, 503, "{}", closed.text());
    assert_eq!(
        closed.header("x-gateway-error"),
        Some("A policy could not get an answer from ratelimit.")
    );
    let open = envoy.get("/t/lenient/1/x", &[]).unwrap();
    assert_eq!(open.status, 200, "{}", open.text());
    let logged = live::wait_for(Duration::from_secs(5), || {
        let log = envoy.log();
        (log.contains("refused (failureMode closed)")
            && log.contains("let through uncounted (failureMode open)"))
        .then_some(log)
    });
    assert!(
        logged.is_some(),
        "no log line for the failing service:\n{}",
        envoy.log()
    );
}

#[test]
fn tollgate_gen_creates_the_rate_limit_services_cluster_from_its_url() {
    e2e!();
    let Some(binary) = rls_binary() else {
        return;
    };
    let redis = Redis::start();
    let backend = KeepAliveBackend::start();
    let (rls_port, _rls) = start_rls(&binary, redis.port);
    let dir = live::scratch_dir("rls-gen").unwrap();
    // No hand-written cluster: the policy's url is all tollgate-gen needs.
    let definition = format!(
        "wasm: {}\nadmin: {{address: 127.0.0.1, port: 0}}\nlistener: {{address: 127.0.0.1, port: 0}}\nregistry:\n  apis:\n  - {{organizationId: t, apiId: a, version: '1', publicAPI: true, endpoint: 'http://127.0.0.1:{}/', apiPolicies: [{{policy: rate-limiting, config: {{limit: 3, granularity: Api, period: Hour, rateLimitService: {{url: 'http://127.0.0.1:{rls_port}', domain: gen-made, timeoutMs: 2000}}}}}}]}}\n",
        live::wasm_path().unwrap().display(),
        backend.port
    );
    let path = dir.join("gateway.def.yaml");
    std::fs::write(&path, definition).unwrap();
    live::generate(&path, &dir.join("out"), &dir.join("stores"))
        .unwrap_or_else(|e| panic!("tollgate-gen failed:\n{e}"));
    let clusters = std::fs::read_to_string(dir.join("out/dynamic/clusters.yaml")).unwrap();
    assert!(
        clusters.contains(&format!("name: \"127.0.0.1:{rls_port}\"")),
        "{clusters}"
    );
    let yaml = std::fs::read_to_string(dir.join("out/envoy.yaml")).unwrap();
    let envoy = Envoy::start(&yaml, 1).unwrap();
    let statuses: Vec<u16> = (0..5)
        .map(|_| envoy.get("/t/a/1/x", &[]).map(|r| r.status).unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{}", envoy.log());
}
