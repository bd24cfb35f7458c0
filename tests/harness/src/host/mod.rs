//! A native proxy-wasm host that runs the real tollgate filter code the way Envoy 1.40 does.
//!
//! The harness links the `tollgate` crate natively; its proxy-wasm imports are defined in
//! [`abi`], and the SDK's `proxy_on_*` exports are called here just as Envoy calls them in the
//! wasm module. Each worker VM runs on its own OS thread (the SDK's dispatcher is
//! thread-local), all VMs of one [`Host`] share one shared-data store and one virtual clock.
//!
//! [`Guest::run`] drives one HTTP stream like Envoy's filter manager: header maps with
//! pseudo-headers, body chunks with buffering on `Pause`, local replies that end the stream,
//! call-outs answered from stubs at a chosen moment ([`CallTiming`]: at once, after the body,
//! after N callbacks, never), and the routing and error mapping of `envoy/gateway.yaml`.
//! Where Envoy's behaviour was checked with a probe filter, the code says so.
//!
//! This module is only ever built for native targets: the wasm build of tollgate never sees it.

pub mod abi;
mod grpc;
pub mod headers;
mod shared;
mod stream;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub use headers::Headers;
pub use shared::SharedStore;
pub use stream::{
    BackendResponse, CallRecord, CallTiming, Direction, Origin, Returned, StreamEvent, StreamInput,
    StreamResult, Upstream, UpstreamRequest,
};

/// proxy-wasm statuses (`proxy_wasm::types::Status`).
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const INTERNAL_FAILURE: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
}

/// A property value, encoded as Envoy encodes it (verified on Envoy 1.40: strings raw,
/// integers as 8 bytes little-endian, booleans as one byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Bytes(Vec<u8>),
}

impl PropertyValue {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropertyValue::Str(s) => s.as_bytes().to_vec(),
            PropertyValue::Int(i) => i.to_le_bytes().to_vec(),
            PropertyValue::Bool(b) => vec![u8::from(*b)],
            PropertyValue::Bytes(b) => b.clone(),
        }
    }
}

/// How a stubbed call-out is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StubAnswer {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The call times out: the filter gets a response without headers or body, as from Envoy.
    Timeout,
}

/// An answer for call-outs to one cluster (optionally only for one method and path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStub {
    pub cluster: String,
    pub method: Option<String>,
    /// Matched against the call's `:path` without its query string.
    pub path: Option<String>,
    pub answer: StubAnswer,
    /// Virtual time the call takes; the clock moves on by this much before the answer.
    pub delay: Duration,
}

impl CallStub {
    fn matches(&self, cluster: &str, headers: &[(String, String)]) -> bool {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        self.cluster == cluster
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(get(":method")))
            && self
                .path
                .as_deref()
                .is_none_or(|p| p == get(":path").split('?').next().unwrap_or(""))
    }
}

/// What the emulated Envoy looks like: the parts of `envoy/gateway.yaml` the filter can observe.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// The request header the filter writes the cluster into (`cluster_header` route).
    pub cluster_header: String,
    /// Clusters Envoy knows; `None` accepts any name. An unknown cluster is answered with the
    /// gateway's 503 "API backend cluster not found." (`cluster_not_found_response_code`).
    pub clusters: Option<BTreeSet<String>>,
    pub stubs: Vec<CallStub>,
    /// Envoy's own address, which it appends to `X-Forwarded-For` for a loopback peer
    /// (verified on Envoy 1.40 with `use_remote_address: true`).
    pub local_address: String,
    /// The listener's address (`destination.address`).
    pub listener_address: String,
    pub route_name: String,
    /// The route timeout, sent upstream as `x-envoy-expected-rq-timeout-ms` (unless the request
    /// carries `x-envoy-upstream-rq-timeout-ms`); a backend slower than it gets Envoy's 504.
    pub route_timeout_ms: u64,
    /// The gateway's `local_reply_config`, which turns Envoy's own errors into the gateway's
    /// JSON errors; without it Envoy answers in plain text (and tollgate maps them itself).
    pub local_reply_mapping: bool,
    /// The header the gateway's `header_mutation` filter sets to the client's address before
    /// tollgate runs (and the route removes), as `envoy/gateway.yaml` and `live::gateway_yaml`
    /// do for `gateway.clientAddressHeader`; `None` for an Envoy without that filter.
    pub client_address_header: Option<String>,
    /// The level `proxy_get_log_level` reports (proxy-wasm numbering: 2 = info).
    pub log_level: u32,
    /// Print guest log lines to stderr as they happen.
    pub echo_logs: bool,
    pub plugin_name: String,
    pub root_id: String,
    pub vm_id: String,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            cluster_header: "x-tollgate-cluster".to_string(),
            clusters: None,
            stubs: Vec::new(),
            local_address: local_address(),
            listener_address: "127.0.0.1:10000".to_string(),
            route_name: String::new(),
            route_timeout_ms: 30_000,
            local_reply_mapping: true,
            client_address_header: Some("x-tollgate-client-address".to_string()),
            log_level: 2,
            echo_logs: false,
            plugin_name: "tollgate".to_string(),
            root_id: "tollgate".to_string(),
            vm_id: "tollgate".to_string(),
        }
    }
}

impl HostSettings {
    /// Whether Envoy would accept a call-out to this cluster.
    pub(crate) fn knows_call_cluster(&self, cluster: &str) -> bool {
        self.stubs.iter().any(|s| s.cluster == cluster)
            || self.clusters.as_ref().is_some_and(|c| c.contains(cluster))
    }

    pub(crate) fn knows_route_cluster(&self, cluster: &str) -> bool {
        !cluster.is_empty() && self.clusters.as_ref().is_none_or(|c| c.contains(cluster))
    }
}

/// This machine's first non-loopback IPv4 address, the way Envoy picks its node address (a UDP
/// socket "connected" to a documentation address sends nothing but learns the local address).
pub fn local_address() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".to_string())
}

/// The virtual clock shared by every VM of a host.
#[derive(Debug, Default)]
pub struct Clock {
    nanos: AtomicU64,
}

impl Clock {
    pub fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }

    pub fn set_nanos(&self, nanos: u64) {
        self.nanos.store(nanos, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

/// A line the filter logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// proxy-wasm level: 0 trace .. 4 error, 5 critical.
    pub level: u32,
    pub context_id: u32,
    pub message: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", abi::level_name(self.level), self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// `proxy_on_configure` returned false: Envoy would refuse the configuration.
    ConfigRejected { log: Vec<String> },
    /// `proxy_on_vm_start` returned false.
    VmStartFailed { log: Vec<String> },
    /// The VM thread is gone (it could not start, or a host bug ended it).
    VmGone(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::ConfigRejected { log } => {
                write!(f, "the filter refused the configuration")?;
                for l in log {
                    write!(f, "\n  {l}")?;
                }
                Ok(())
            }
            HostError::VmStartFailed { log } => {
                write!(f, "the filter failed to start")?;
                for l in log {
                    write!(f, "\n  {l}")?;
                }
                Ok(())
            }
            HostError::VmGone(why) => write!(f, "worker VM stopped: {why}"),
        }
    }
}

impl std::error::Error for HostError {}

/// The guest's entry point that registers its contexts (the `proxy_wasm::main!` block).
pub type GuestInit = fn();

/// tollgate's own `proxy_wasm::main!` block.
pub fn tollgate_init() {
    tollgate::adapter::_initialize();
}

/// One emulated Envoy: settings, shared data and the clock, shared by its worker VMs.
#[derive(Clone)]
pub struct Host {
    settings: Arc<HostSettings>,
    shared: Arc<SharedStore>,
    clock: Arc<Clock>,
}

impl Host {
    pub fn new(settings: HostSettings) -> Host {
        Host {
            settings: Arc::new(settings),
            shared: Arc::new(SharedStore::new()),
            clock: Arc::new(Clock::default()),
        }
    }

    pub fn settings(&self) -> &HostSettings {
        &self.settings
    }

    pub fn shared(&self) -> &SharedStore {
        &self.shared
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Starts a worker VM running tollgate with this plugin configuration.
    pub fn start_vm(&self, plugin_config: &[u8]) -> Result<Vm, HostError> {
        self.start_vm_with(tollgate_init, plugin_config)
    }

    /// Starts a worker VM whose guest registers its contexts with `init`.
    pub fn start_vm_with(&self, init: GuestInit, plugin_config: &[u8]) -> Result<Vm, HostError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), HostError>>();
        let host = self.clone();
        let config = plugin_config.to_vec();
        let thread = thread::Builder::new()
            .name("tollgate-vm".to_string())
            .spawn(move || {
                let mut guest = match Guest::boot(&host, init, config) {
                    Ok(g) => {
                        let _ = ready_tx.send(Ok(()));
                        g
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in inbox {
                    job(&mut guest);
                }
            })
            .map_err(|e| HostError::VmGone(format!("cannot start a VM thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Vm {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(HostError::VmGone(
                    "the VM thread ended while starting".into(),
                ))
            }
        }
    }
}

type Job = Box<dyn FnOnce(&mut Guest) + Send>;

/// A worker VM: a thread that owns one guest dispatcher. Dropping it stops the thread.
pub struct Vm {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Vm {
    /// Runs `f` on the VM's thread and waits for its result.
    pub fn exec<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Guest) -> R + Send + 'static,
    ) -> Result<R, HostError> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |g| {
            let _ = tx.send(f(g));
        });
        self.jobs
            .as_ref()
            .ok_or_else(|| HostError::VmGone("stopped".into()))?
            .send(job)
            .map_err(|_| HostError::VmGone("the VM thread has ended".into()))?;
        rx.recv()
            .map_err(|_| HostError::VmGone("the VM thread ended during a call".into()))
    }

    /// Runs one stream (see [`Guest::run`]).
    pub fn run(
        &self,
        input: StreamInput,
        backend: impl FnMut(&UpstreamRequest) -> Upstream + Send + 'static,
    ) -> Result<StreamResult, HostError> {
        let mut backend = backend;
        self.exec(move |g| g.run(&input, &mut backend))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The guest side of one VM, used on its own thread.
pub struct Guest {
    root_id: u32,
    next_id: u32,
    /// The virtual time of the last tick delivered.
    last_tick: u64,
    /// Counter for the `x-request-id`s this Envoy generates.
    requests: u64,
}

/// Raw guest exports (defined by the SDK in the linked tollgate crate).
mod guest {
    extern "C" {
        pub fn proxy_on_context_create(context_id: u32, root_context_id: u32);
        pub fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
        pub fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
        pub fn proxy_on_tick(context_id: u32);
        pub fn proxy_on_request_headers(context_id: u32, headers: usize, eos: bool) -> u32;
        pub fn proxy_on_request_body(context_id: u32, size: usize, eos: bool) -> u32;
        pub fn proxy_on_request_trailers(context_id: u32, trailers: usize) -> u32;
        pub fn proxy_on_response_headers(context_id: u32, headers: usize, eos: bool) -> u32;
        pub fn proxy_on_response_body(context_id: u32, size: usize, eos: bool) -> u32;
        pub fn proxy_on_response_trailers(context_id: u32, trailers: usize) -> u32;
        pub fn proxy_on_http_call_response(
            context_id: u32,
            token: u32,
            headers: usize,
            body_size: usize,
            trailers: usize,
        );
        pub fn proxy_on_grpc_receive(context_id: u32, token: u32, response_size: usize);
        pub fn proxy_on_grpc_close(context_id: u32, token: u32, status_code: u32);
        pub fn proxy_on_log(context_id: u32);
        pub fn proxy_on_done(context_id: u32) -> bool;
        pub fn proxy_on_delete(context_id: u32);
    }
}

impl Guest {
    /// Boots a VM on the current thread as Envoy does: the `main!` block, the root context,
    /// `proxy_on_vm_start`, then `proxy_on_configure` with the plugin configuration.
    fn boot(host: &Host, init: GuestInit, plugin_config: Vec<u8>) -> Result<Guest, HostError> {
        // Natively all VMs share one process's statics (in Envoy each has its own memory), and
        // the SDK's one-time logger setup in `set_log_level` panics if two first calls race.
        // Booting one VM at a time keeps them apart.
        static BOOT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _booting = BOOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut vm = abi::VmHost::new(
            host.settings.clone(),
            host.shared.clone(),
            host.clock.clone(),
        );
        let s = &host.settings;
        for (k, v) in [
            ("plugin_name", &s.plugin_name),
            ("plugin_root_id", &s.root_id),
            ("plugin_vm_id", &s.vm_id),
        ] {
            vm.properties.insert(k.to_string(), v.as_bytes().to_vec());
        }
        abi::install(vm);
        let root_id = 1;
        init();
        set_effective(root_id);
        unsafe { guest::proxy_on_context_create(root_id, 0) };
        if !unsafe { guest::proxy_on_vm_start(root_id, 0) } {
            return Err(HostError::VmStartFailed { log: error_logs() });
        }
        if !configure(root_id, plugin_config) {
            return Err(HostError::ConfigRejected { log: error_logs() });
        }
        Ok(Guest {
            root_id,
            next_id: root_id + 1,
            last_tick: host.clock.now_nanos(),
            requests: 0,
        })
    }

    /// Configures another root context in this VM, as Envoy does for a second filter sharing
    /// the VM (same `vm_config`), with the same plugin name; streams keep going to the current
    /// one. Its id.
    pub fn add_root(&mut self, plugin_config: &[u8]) -> Result<u32, HostError> {
        let id = self.next_context();
        set_effective(id);
        unsafe { guest::proxy_on_context_create(id, 0) };
        if !configure(id, plugin_config.to_vec()) {
            return Err(HostError::ConfigRejected { log: error_logs() });
        }
        Ok(id)
    }

    /// Delivers a new configuration as Envoy does on a live update (ECDS): a new root context
    /// in this VM is configured with it and takes the streams that start from now on; the old
    /// one is then done and deleted at once (in Envoy, once no stream holds it, which can be
    /// before the new one has read all its configuration). A refused configuration leaves the
    /// old root context serving.
    pub fn reconfigure(&mut self, plugin_config: &[u8]) -> Result<(), HostError> {
        let id = self.next_context();
        set_effective(id);
        unsafe { guest::proxy_on_context_create(id, 0) };
        if !configure(id, plugin_config.to_vec()) {
            set_effective(id);
            unsafe { guest::proxy_on_delete(id) };
            return Err(HostError::ConfigRejected { log: error_logs() });
        }
        let old = std::mem::replace(&mut self.root_id, id);
        set_effective(old);
        if unsafe { guest::proxy_on_done(old) } {
            unsafe { guest::proxy_on_delete(old) };
        }
        Ok(())
    }

    fn next_context(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(self.root_id + 1);
        id
    }

    /// Delivers the ticks that fall due up to the current virtual time (at most 10,000 at
    /// once, so a long jump in time cannot stall the replay).
    pub fn tick(&mut self) {
        let Some((period, now)) = abi::with_vm(|vm| {
            (
                u64::from(vm.tick_period_ms) * 1_000_000,
                vm.clock.now_nanos(),
            )
        }) else {
            return;
        };
        if period == 0 {
            self.last_tick = now;
            return;
        }
        let mut due = 0;
        while self.last_tick.saturating_add(period) <= now && due < 10_000 {
            self.last_tick += period;
            due += 1;
            set_effective(self.root_id);
            unsafe { guest::proxy_on_tick(self.root_id) };
        }
        if due == 10_000 {
            self.last_tick = now;
        }
    }

    /// The log lines kept so far, oldest first, and clears them.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        abi::with_vm(|vm| std::mem::take(&mut vm.logs)).unwrap_or_default()
    }

    /// The tick period the filter asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        abi::with_vm(|vm| vm.tick_period_ms)
            .filter(|p| *p > 0)
            .map(|p| Duration::from_millis(u64::from(p)))
    }

    /// Metrics the filter defined, with their values.
    pub fn metrics(&self) -> Vec<(String, i64)> {
        abi::with_vm(|vm| vm.metrics.iter().map(|(_, n, v)| (n.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

/// `proxy_on_configure` on root context `id`, the plugin configuration readable only meanwhile.
fn configure(id: u32, plugin_config: Vec<u8>) -> bool {
    let size = plugin_config.len();
    abi::with_vm(|vm| vm.plugin_config = Some(plugin_config));
    set_effective(id);
    let accepted = unsafe { guest::proxy_on_configure(id, size) };
    abi::with_vm(|vm| vm.plugin_config = None);
    accepted
}

/// The error lines (level 3 and up) logged so far.
fn error_logs() -> Vec<String> {
    abi::with_vm(|vm| {
        vm.logs
            .iter()
            .filter(|l| l.level >= 3)
            .map(|l| l.message.clone())
            .collect()
    })
    .unwrap_or_default()
}

fn set_effective(context_id: u32) {
    abi::with_vm(|vm| vm.effective_context = context_id);
}
