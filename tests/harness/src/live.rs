//! Real processes for end-to-end tests: Envoy 1.40 with the real `tollgate.wasm`, and the echo
//! backend (`scripts/backend.py`). Everything binds 127.0.0.1 on ports the OS picks, waits for
//! readiness with a deadline, and is killed when dropped.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::http_client::{self, HttpResponse};
use tollgate_gen::envoy::Render;

/// The repository root (this crate lives in `tests/harness`).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// Envoy: `$TOLLGATE_ENVOY`, else the project's `.venv/bin/envoy` (installed by scripts/lib.sh).
pub fn envoy_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("TOLLGATE_ENVOY") {
        return Ok(PathBuf::from(p));
    }
    let p = repo_root().join(".venv/bin/envoy");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "Envoy not found at {} (run scripts/test, which installs it, or set TOLLGATE_ENVOY)",
            p.display()
        ))
    }
}

/// The filter: `$TOLLGATE_WASM`, else the release build.
pub fn wasm_path() -> Result<PathBuf, String> {
    module_path(
        "TOLLGATE_WASM",
        "tollgate.wasm",
        "cargo build --release --target wasm32-wasip1 -p tollgate",
    )
}

/// The filter without the JWT-signature policies: `$TOLLGATE_WASM_LITE`, else the release
/// build beside `tollgate.wasm` (scripts/lib.sh's `build_wasm` makes both).
pub fn wasm_lite_path() -> Result<PathBuf, String> {
    module_path(
        "TOLLGATE_WASM_LITE",
        "tollgate-lite.wasm",
        "scripts/test builds it, as bash -c 'source scripts/lib.sh && build_wasm' does",
    )
}

/// `$var`, else `file` in the release build's directory; `Err` saying how to build it.
fn module_path(var: &str, file: &str, how: &str) -> Result<PathBuf, String> {
    let p = std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/wasm32-wasip1/release").join(file));
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} not found ({how})", p.display()))
    }
}

/// `yaml` (from `gateway_yaml`) loading `tollgate-lite.wasm` instead of `tollgate.wasm`.
pub fn with_lite_module(yaml: &str) -> Result<String, String> {
    let full = wasm_path()?.display().to_string();
    let lite = wasm_lite_path()?.display().to_string();
    if !yaml.contains(&full) {
        return Err(format!("the configuration does not load {full}"));
    }
    Ok(yaml.replace(&full, &lite))
}

/// True when the end-to-end prerequisites exist; tests skip with a message otherwise, and
/// `scripts/test` sets `TOLLGATE_E2E=1` so that a missing prerequisite fails instead.
pub fn e2e_available() -> bool {
    let ok = envoy_binary().is_ok() && wasm_path().is_ok() && wasm_lite_path().is_ok();
    if !ok && std::env::var("TOLLGATE_E2E").is_ok_and(|v| v == "1") {
        // Required but missing: make the test fail loudly.
        return true;
    }
    if !ok {
        eprintln!(
            "skipping end-to-end test: Envoy or tollgate.wasm missing (scripts/test builds both)"
        );
    }
    ok
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(label: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// A child process killed on drop, and by a watchdog when this process ends without dropping
/// it (test fixtures shared through a `static` are never dropped).
pub struct Process {
    child: Child,
    pub name: String,
}

impl Process {
    pub fn new(child: Child, name: &str) -> Process {
        let _ = Command::new("sh")
            .arg("-c")
            .arg("while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.3; done; kill \"$2\" 2>/dev/null")
            .args(["watchdog", &std::process::id().to_string(), &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        Process {
            child,
            name: name.to_string(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo backend.
pub struct Backend {
    pub port: u16,
    pub process: Process,
}

impl Backend {
    /// Starts `scripts/backend.py` with `args` (plus `--port 0`) and waits until it listens.
    pub fn start(name: &str, args: &[&str]) -> Result<Backend, String> {
        let script = repo_root().join("scripts/backend.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--name", name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", script.display()))?;
        let stdout = child.stdout.take().ok_or("backend has no stdout")?;
        let process = Process::new(child, name);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("backend {name} did not start within 10 s"))?;
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("backend {name} said {line:?}"))?;
        Ok(Backend { port, process })
    }

    pub fn echo(name: &str) -> Result<Backend, String> {
        Backend::start(name, &[])
    }

    /// A TLS-only echo backend serving `dir/<cert>.pem` and `.key` and requiring a client
    /// certificate signed by `dir/ca.pem` (the layout scripts/certs writes).
    pub fn mtls(name: &str, dir: &Path, cert: &str) -> Result<Backend, String> {
        let file = |f: String| dir.join(f).display().to_string();
        Backend::start(
            name,
            &[
                "--cert",
                &file(format!("{cert}.pem")),
                "--key",
                &file(format!("{cert}.key")),
                "--client-ca",
                &file("ca.pem".to_string()),
            ],
        )
    }
}

/// A running Envoy.
pub struct Envoy {
    /// `127.0.0.1:<port>` of the admin interface.
    pub admin: String,
    /// Listener ports, in the order of the configuration.
    pub ports: Vec<u16>,
    pub dir: PathBuf,
    pub process: Process,
}

/// How long Envoy may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Envoy {
    /// Starts Envoy with `yaml` (written to a scratch directory) and waits until it is ready.
    /// Listener and admin ports may be 0; the ports Envoy bound are read back from the admin.
    pub fn start(yaml: &str, concurrency: u32) -> Result<Envoy, String> {
        let dir = scratch_dir("envoy")?;
        let config = dir.join("envoy.yaml");
        fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let admin_file = dir.join("admin.txt");
        let log = fs::File::create(dir.join("envoy.log")).map_err(|e| e.to_string())?;
        // Stdout carries the access log (tollgate's decisions).
        let access = fs::File::create(dir.join("access.log")).map_err(|e| e.to_string())?;
        let child = Command::new(envoy_binary()?)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["-l", "warn", "--component-log-level", "wasm:info"])
            .current_dir(repo_root())
            .stdout(access)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting Envoy: {e}"))?;
        let mut process = Process::new(child, "envoy");
        let deadline = Instant::now() + START_TIMEOUT;
        // The admin address file is re-read on every try: Envoy may not have finished writing
        // it when it first appears, and a half-written port would be polled forever.
        let admin = loop {
            let address = fs::read_to_string(&admin_file)
                .map(|t| t.trim().to_string())
                .unwrap_or_default();
            if !address.is_empty() {
                if let Ok(r) =
                    http_client::send(&address, "GET", "/ready", &[], b"", Duration::from_secs(2))
                {
                    if r.status == 200 {
                        break address;
                    }
                }
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!(
                    "Envoy exited ({status}) before it was ready:\n{}",
                    tail(&dir.join("envoy.log"), 40)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready within {START_TIMEOUT:?} (admin address {address:?}):\n{}",
                    tail(&dir.join("envoy.log"), 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let listeners = http_client::send(
            &admin,
            "GET",
            "/listeners?format=json",
            &[],
            b"",
            Duration::from_secs(2),
        )?;
        let ports = listener_ports(&listeners.json());
        Ok(Envoy {
            admin,
            ports,
            dir,
            process,
        })
    }

    /// `127.0.0.1:<port>` of the first listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.first().copied().unwrap_or(0))
    }

    /// Sends a request to the first listener.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        http_client::send(
            &self.addr(),
            method,
            path,
            headers,
            body,
            Duration::from_secs(10),
        )
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, String> {
        self.request("GET", path, headers, b"")
    }

    /// Envoy's stats as text (`name: value` lines).
    pub fn stats(&self) -> String {
        self.admin_get("/stats")
    }

    /// A page of Envoy's admin interface (`/stats`, `/config_dump`, ...) as text.
    pub fn admin_get(&self, path: &str) -> String {
        http_client::send(&self.admin, "GET", path, &[], b"", Duration::from_secs(5))
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// One counter or gauge from the stats, if present.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// What Envoy wrote to stdout: the access log.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

fn listener_ports(listeners: &serde_json::Value) -> Vec<u16> {
    listeners["listener_statuses"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `envoy --mode validate` on a file; returns Envoy's output on failure.
pub fn validate(config: &Path) -> Result<(), String> {
    let out = Command::new(envoy_binary()?)
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .current_dir(repo_root())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// An upstream cluster for a test gateway.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub port: u16,
    /// Extra YAML for the cluster (e.g. a transport socket), indented to the cluster's level.
    pub extra: String,
}

impl Cluster {
    pub fn plain(name: &str, port: u16) -> Cluster {
        Cluster {
            name: name.into(),
            port,
            extra: String::new(),
        }
    }
}

/// The gateway configuration the tests run: `tollgate-gen`'s bootstrap (the listener, route,
/// error mapping and filter chain of `envoy/gateway.yaml`) with the given plugin configuration
/// and clusters, on ports the OS picks.
pub fn gateway_yaml(plugin_config: &str, clusters: &[Cluster]) -> Result<String, String> {
    gateway_yaml_with(plugin_config, clusters, true)
}

/// `gateway_yaml`, with or without Envoy's own mapping of its errors (`local_reply_config`).
pub fn gateway_yaml_with(
    plugin_config: &str,
    clusters: &[Cluster],
    local_reply_config: bool,
) -> Result<String, String> {
    let wasm = wasm_path()?.display().to_string();
    let extra: String = clusters
        .iter()
        .map(|c| {
            format!(
                r#"  - name: {name}
    type: STATIC
    connect_timeout: 2s
    per_connection_buffer_limit_bytes: 32768
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
{extra}"#,
                name = c.name,
                port = c.port,
                extra = c.extra
            )
        })
        .collect();
    Ok(tollgate_gen::envoy::bootstrap_yaml(&Render {
        source: "the test harness",
        node: ("tollgate-test", "tollgate"),
        admin: ("127.0.0.1", 0),
        listener: ("127.0.0.1", 0),
        wasm: &wasm,
        route_timeout_ms: 5000,
        local_reply_config,
        cluster_header: "x-tollgate-cluster",
        client_address_header: "x-tollgate-client-address",
        plugin_json: plugin_config,
        clusters: &[],
        keys: &[],
        trusts: &[],
        sds_dir: "",
        extra_clusters: &extra,
        delivery: tollgate_gen::envoy::Delivery::Inline,
        decision_log: plugin_config.contains("\"decisionLog\": true")
            || plugin_config.contains("\"decisionLog\":true"),
    }))
}

// ---- Upstream TLS: tollgate-gen, certificates and waiting on stats (tests/harness/tests/e2e_tls*.rs).

/// tollgate-gen: `$TOLLGATE_GEN`, else `target/debug/tollgate-gen`
/// (`cargo build -p tollgate-gen`; scripts/test builds it).
pub fn gen_binary() -> Result<PathBuf, String> {
    let p = std::env::var("TOLLGATE_GEN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/debug/tollgate-gen"));
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found (cargo build -p tollgate-gen)",
            p.display()
        ))
    }
}

/// Like [`e2e_available`], for tests that also need tollgate-gen, openssl and keytool.
pub fn tls_e2e_available() -> bool {
    if !e2e_available() {
        return false;
    }
    let required = std::env::var("TOLLGATE_E2E").is_ok_and(|v| v == "1");
    let missing: Vec<String> = [
        gen_binary().err(),
        Command::new("openssl")
            .arg("version")
            .output()
            .err()
            .map(|_| "openssl not found".to_string()),
        Command::new("keytool")
            .arg("-help")
            .output()
            .err()
            .map(|_| "keytool not found".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() || required {
        // Required but missing: the test fails on the first use, naming what is missing.
        return true;
    }
    eprintln!("skipping TLS end-to-end test: {}", missing.join("; "));
    false
}

/// Runs `scripts/certs <args> --dir <dir>`.
pub fn certs(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(repo_root().join("scripts/certs"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .map_err(|e| format!("scripts/certs: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/certs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs tollgate-gen on a definition, from the repository root. Ok: its report (warnings,
/// files written); Err: its errors.
pub fn generate(definition: &Path, out: &Path, stores: &Path) -> Result<String, String> {
    generate_with(definition, out, stores, &[])
}

/// `generate` with more of tollgate-gen's options (`--registry-image`).
pub fn generate_with(
    definition: &Path,
    out: &Path,
    stores: &Path,
    options: &[&str],
) -> Result<String, String> {
    let result = Command::new(gen_binary()?)
        .arg(definition)
        .arg("--out")
        .arg(out)
        .arg("--stores")
        .arg(stores)
        .args(options)
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("tollgate-gen: {e}"))?;
    let report = String::from_utf8_lossy(&result.stderr).into_owned();
    if result.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Polls `probe` every 50 ms until it gives a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Envoy {
    /// A counter or gauge, 0 when Envoy has not created it (yet).
    pub fn stat_or_zero(&self, name: &str) -> u64 {
        self.stat(name).unwrap_or(0)
    }
}

/// The demo certificates in `.run/certs` (what scripts/demo and the bundled configs use),
/// made once per test process; existing ones are kept.
pub fn demo_certs() -> Result<PathBuf, String> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join(".run/certs");
        certs(&dir, &["demo"]).map(|_| dir)
    })
    .clone()
}

/// The demo backend as scripts/demo runs it: TLS only, requiring the demo client certificate.
pub fn demo_backend() -> Result<Backend, String> {
    Backend::mtls("demo-backend", &demo_certs()?, "demo-backend")
}

// ---- A scripted HTTP/1.1 server for call-out services (auth, JWKS) and backends whose timing a
// test controls.

/// A request a `ScriptedServer` received, and when its head arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a `ScriptedServer` answers: after `delay`, this status, headers and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub delay: Duration,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn new(status: u16) -> Answer {
        Answer {
            delay: Duration::ZERO,
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Answer {
        self.body = body.to_vec();
        self
    }
}

type Script = dyn Fn(&Received) -> Answer + Send + Sync;

/// A small threaded HTTP/1.1 server on 127.0.0.1 (one request per connection, then close) that
/// answers as a script says and records every request with the time its head arrived, and the
/// time each answer was sent.
pub struct ScriptedServer {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    answered: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ScriptedServer {
    pub fn start(
        script: impl Fn(&Received) -> Answer + Send + Sync + 'static,
    ) -> Result<ScriptedServer, String> {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("binding a scripted server: {e}"))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        listener.set_nonblocking(true).ok();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (r, a, s) = (received.clone(), answered.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, a, script) = (r.clone(), a.clone(), script.clone());
                        std::thread::spawn(move || serve_one(stream, &r, &a, script.as_ref()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(ScriptedServer {
            port,
            received,
            answered,
            stop,
        })
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// When each answer went out, in order.
    pub fn answered(&self) -> Vec<Instant> {
        self.answered.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_one(
    mut stream: std::net::TcpStream,
    received: &std::sync::Mutex<Vec<Received>>,
    answered: &std::sync::Mutex<Vec<Instant>>,
    script: &Script,
) {
    use std::io::{Read, Write};
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut at = None;
    let head_end = loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                at.get_or_insert_with(Instant::now);
                raw.extend_from_slice(&buf[..n]);
                if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
            }
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let request = Received {
        at: at.unwrap_or_else(Instant::now),
        method,
        path,
        headers,
        body,
    };
    if let Ok(mut r) = received.lock() {
        r.push(request.clone());
    }
    let answer = script(&request);
    std::thread::sleep(answer.delay);
    let mut out = format!("HTTP/1.1 {} X\r\n", answer.status);
    for (k, v) in &answer.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        answer.body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&answer.body);
    if let Ok(mut a) = answered.lock() {
        a.push(Instant::now());
    }
    let _ = stream.write_all(&bytes);
    let _ = stream.flush();
}

// ---- tollgate-registry (Apiman's Gateway REST API) for tests/harness/tests/e2e_registry_server.rs.

/// tollgate-registry: `$TOLLGATE_REGISTRY`, else `target/debug/tollgate-registry`
/// (`cargo build -p tollgate-registry`; scripts/test builds it).
pub fn registry_binary() -> Result<PathBuf, String> {
    let p = std::env::var("TOLLGATE_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/debug/tollgate-registry"));
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found (cargo build -p tollgate-registry)",
            p.display()
        ))
    }
}

/// A running tollgate-registry.
pub struct RegistryServer {
    /// `127.0.0.1:<port>` of its REST API.
    pub addr: String,
    pub process: Process,
    log: PathBuf,
}

impl RegistryServer {
    /// Starts tollgate-registry with `args` (plus `--listen 127.0.0.1:0`), from the repository
    /// root, and waits until it listens; its log is appended to `log`.
    pub fn start(args: &[&str], log: &Path) -> Result<RegistryServer, String> {
        let mut child = Command::new(registry_binary()?)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(repo_root())
            .stdout(Stdio::piped())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .map_err(|e| format!("{}: {e}", log.display()))?,
            )
            .spawn()
            .map_err(|e| format!("starting tollgate-registry: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("tollgate-registry has no stdout")?;
        let process = Process::new(child, "tollgate-registry");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "tollgate-registry did not start: {line:?}\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                )
            })?;
        Ok(RegistryServer {
            addr,
            process,
            log: log.to_path_buf(),
        })
    }

    /// Sends a request, with BASIC credentials when given.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        credentials: Option<(&str, &str)>,
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        use base64::Engine;
        let authorization = credentials.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let mut headers = vec![("content-type", "application/json; charset=utf-8")];
        if let Some(a) = &authorization {
            headers.push(("authorization", a));
        }
        http_client::send(
            &self.addr,
            method,
            path,
            &headers,
            body,
            Duration::from_secs(20),
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
