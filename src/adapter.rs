//! The proxy-wasm adapter: the only module that touches `proxy_wasm`.
//!
//! It turns Envoy's callbacks into calls on `Exchange` and applies what comes back with as few
//! host calls as possible: one call reads the request headers, one call per changed header
//! writes them back, and the response headers are read only when a policy needs them.
//!
//! Nothing moves on while a decision is pending. A call-out (in any phase) pauses its direction
//! of the stream: body chunks and trailers that arrive meanwhile are held too (Envoy buffers
//! them), as Envoy's own `jwt_authn` holds data while its key set is fetched. When the answer
//! comes, the phase that made the call finishes (and the body phase runs, if the body is
//! already complete) before the stream is resumed. A chain with a whole-body policy holds the
//! headers until the body has been seen, so a body policy can still refuse before the backend
//! is reached. This needs `allow_on_headers_stop_iteration: true` (the bundled configs set it):
//! without it Envoy stops delivering the body while the headers are paused.
//!
//! Host calls on the request path go through the small `abi` module below rather than the SDK's
//! wrappers: the SDK panics on any status it does not expect, and a panic kills the VM (every
//! later request on that worker fails until Envoy reloads it). Here an unexpected status is
//! logged and handled.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use tollgate_core::exchange::{Exchange, Step};
use tollgate_core::host::{Host, SharedError};
use tollgate_core::http::{HeaderMap, HeaderOp, LocalReply};
use tollgate_core::policy::{Body, CallOut, CallResponse, Phase};
use tollgate_core::registry::image::Reading;
use tollgate_core::registry::Registry;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root::new(id)) });
}}

/// Raw proxy-wasm ABI 0.2.1 imports with statuses returned, not panicked on.
pub(crate) mod abi {
    use std::ptr::{null, null_mut};

    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const CAS_MISMATCH: u32 = 8;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *mut *mut u8,
            value_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        fn proxy_set_buffer_bytes(
            buffer: u32,
            start: usize,
            size: usize,
            data: *const u8,
            data_size: usize,
        ) -> u32;
        fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        fn proxy_get_property(
            path: *const u8,
            size: usize,
            data: *mut *mut u8,
            out: *mut usize,
        ) -> u32;
        fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            data: *const u8,
            size: usize,
            cas: u32,
        ) -> u32;
        fn proxy_continue_stream(stream: u32) -> u32;
        fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_get_status(code: *mut u32, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    }

    /// Asks for the calling root context's tick every `period` (the SDK's wrapper panics on a
    /// status it does not expect; this is called on the request path too).
    pub fn set_tick_period(period: std::time::Duration) -> u32 {
        let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        unsafe { proxy_set_tick_period_milliseconds(ms) }
    }

    /// A counter (metric type 0), defined once per VM.
    pub fn define_counter(name: &str) -> Result<u32, u32> {
        let mut id = 0u32;
        match unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) } {
            OK => Ok(id),
            status => Err(status),
        }
    }

    pub fn increment_metric(id: u32, by: i64) -> u32 {
        unsafe { proxy_increment_metric(id, by) }
    }

    /// Sets a stream property; Envoy keeps it as filter state `wasm.<name>`.
    pub fn set_property(name: &str, value: &[u8]) -> u32 {
        unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
    }

    /// Takes ownership of a host-allocated buffer (allocated through the guest's allocator).
    unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(data, size, size)
        }
    }

    pub fn get_map(map: u32) -> Result<Vec<u8>, u32> {
        let (mut data, mut size) = (null_mut(), 0usize);
        match unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) } {
            OK => Ok(unsafe { owned(data, size) }),
            status => Err(status),
        }
    }

    pub fn get(map: u32, key: &str) -> Option<Vec<u8>> {
        let (mut data, mut size) = (null_mut(), 0usize);
        match unsafe {
            proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut data, &mut size)
        } {
            OK => Some(unsafe { owned(data, size) }),
            _ => None,
        }
    }

    pub fn replace(map: u32, key: &str, value: &str) -> u32 {
        unsafe {
            proxy_replace_header_map_value(
                map,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        }
    }

    pub fn add(map: u32, key: &str, value: &str) -> u32 {
        unsafe {
            proxy_add_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len())
        }
    }

    pub fn remove(map: u32, key: &str) -> u32 {
        unsafe { proxy_remove_header_map_value(map, key.as_ptr(), key.len()) }
    }

    pub fn get_buffer(buffer: u32, start: usize, max: usize) -> Result<Vec<u8>, u32> {
        let (mut data, mut size) = (null_mut(), 0usize);
        match unsafe { proxy_get_buffer_bytes(buffer, start, max, &mut data, &mut size) } {
            OK => Ok(unsafe { owned(data, size) }),
            NOT_FOUND => Ok(Vec::new()),
            status => Err(status),
        }
    }

    pub fn set_buffer(buffer: u32, start: usize, size: usize, value: &[u8]) -> u32 {
        unsafe { proxy_set_buffer_bytes(buffer, start, size, value.as_ptr(), value.len()) }
    }

    pub fn send_local_response(status: u32, headers: &[u8], body: &[u8]) -> u32 {
        let details = b"tollgate";
        unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                if body.is_empty() {
                    null()
                } else {
                    body.as_ptr()
                },
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        }
    }

    pub fn get_property(path: &[&str]) -> Option<Vec<u8>> {
        let serialized = path.join("\0");
        let (mut data, mut size) = (null_mut(), 0usize);
        match unsafe {
            proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size)
        } {
            OK => Some(unsafe { owned(data, size) }),
            _ => None,
        }
    }

    pub fn now_nanos() -> Option<u64> {
        let mut t = 0u64;
        (unsafe { proxy_get_current_time_nanoseconds(&mut t) } == OK).then_some(t)
    }

    pub fn get_shared(key: &str) -> Option<(Vec<u8>, u32)> {
        let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
        match unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        } {
            OK => Some((unsafe { owned(data, size) }, cas)),
            _ => None,
        }
    }

    pub fn set_shared(key: &str, value: &[u8], cas: u32) -> u32 {
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
    }

    pub fn resume(stream: u32) -> u32 {
        unsafe { proxy_continue_stream(stream) }
    }

    /// The status of the last gRPC call that closed (its code and message).
    pub fn grpc_status() -> Option<(u32, String)> {
        let (mut code, mut data, mut size) = (0u32, null_mut(), 0usize);
        match unsafe { proxy_get_status(&mut code, &mut data, &mut size) } {
            OK => Some((
                code,
                String::from_utf8_lossy(&unsafe { owned(data, size) }).into_owned(),
            )),
            _ => None,
        }
    }
}

const STREAM_REQUEST: u32 = 0;
const STREAM_RESPONSE: u32 = 1;

/// Serializes header pairs in the proxy-wasm map format.
pub fn serialize_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses the proxy-wasm map format; invalid UTF-8 is replaced, malformed input yields what
/// could be read (never a panic).
pub fn deserialize_map(bytes: &[u8]) -> Vec<(String, String)> {
    let read_u32 = |at: usize| -> Option<usize> {
        bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
    };
    let Some(count) = read_u32(0) else {
        return Vec::new();
    };
    let mut pairs = Vec::with_capacity(count.min(256));
    let mut data = 4 + count.saturating_mul(8);
    for i in 0..count {
        let (Some(klen), Some(vlen)) = (read_u32(4 + i * 8), read_u32(8 + i * 8)) else {
            break;
        };
        let Some(key) = bytes.get(data..data + klen) else {
            break;
        };
        data += klen + 1;
        let Some(value) = bytes.get(data..data + vlen) else {
            break;
        };
        data += vlen + 1;
        pairs.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    pairs
}

fn read_headers(map: MapType) -> HeaderMap {
    match abi::get_map(map as u32) {
        Ok(bytes) => HeaderMap::from_pairs(deserialize_map(&bytes)),
        Err(status) => {
            log::warn!("tollgate: reading headers failed with status {status}");
            HeaderMap::new()
        }
    }
}

/// Writes the changes policies made back to the host's header map.
fn write_headers(map: MapType, ops: Vec<HeaderOp>) {
    for op in ops {
        let status = match &op {
            HeaderOp::Set(k, v) => abi::replace(map as u32, k, v),
            HeaderOp::Add(k, v) => abi::add(map as u32, k, v),
            HeaderOp::Remove(k) => abi::remove(map as u32, k),
        };
        if status != abi::OK {
            log::warn!("tollgate: header change {op:?} failed with status {status}");
        }
    }
}

fn send(reply: &LocalReply) {
    let pairs: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let status =
        abi::send_local_response(u32::from(reply.status), &serialize_map(&pairs), &reply.body);
    if status != abi::OK {
        log::error!("tollgate: sending the local reply failed with status {status}");
    }
}

/// `Host` over proxy-wasm host calls; each fact is fetched only when a policy asks for it.
struct WasmHost;

impl Host for WasmHost {
    fn now(&mut self) -> SystemTime {
        abi::now_nanos()
            .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
            .unwrap_or_else(SystemTime::now)
    }

    fn downstream_address(&mut self) -> Option<String> {
        abi::get_property(&["source", "address"]).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn shared_get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::get_shared(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
        match abi::set_shared(key, value, cas) {
            abi::OK => Ok(()),
            abi::CAS_MISMATCH => Err(SharedError::CasMismatch),
            _ => Err(SharedError::Failed),
        }
    }
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        abi::get_property(path)
    }

    fn response_code_details(&mut self) -> Option<String> {
        abi::get_property(&["response", "code_details"])
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

/// Whether the response's status is a 5xx (one small host call): Envoy's own upstream failures
/// are among them, and become the gateway's error whatever Envoy's configuration.
fn server_error() -> bool {
    abi::get(MapType::HttpResponseHeaders as u32, ":status")
        .is_some_and(|s| s.first() == Some(&b'5'))
}

fn init_logging() {
    // Envoy's own level for the wasm component (e.g. --component-log-level wasm:debug), so
    // disabled log lines cost nothing.
    let level = proxy_wasm::hostcalls::get_log_level().unwrap_or(LogLevel::Info);
    proxy_wasm::set_log_level(level);
}

/// How often stats are handed to Envoy and policies with periodic work get their tick.
const TICK: Duration = Duration::from_secs(1);

/// While a registry image's tables are read between requests: how often, and for how long at a
/// time. A slice ends between two record groups (about 64 KiB each) once `SLICE` has passed.
const SLICE_TICK: Duration = Duration::from_millis(1);
const SLICE: u64 = 5_000_000;

/// The VM's environment: Envoy's `vm_config.environment_variables` (WASI environ).
fn vm_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A root context as the others in its VM see it: where a new configuration of a filter finds
/// the registry to serve while it reads its own.
struct Rostered {
    root: u32,
    identity: Identity,
    /// The registry its requests are served with now: its own once read, its predecessor's
    /// meanwhile, none while it has neither.
    serves: Option<Weak<Registry>>,
    /// A later configuration of the same filter has read its registry: not a predecessor.
    superseded: bool,
}

/// A filter's `plugin_name` and `plugin_root_id`.
type Identity = (Vec<u8>, Vec<u8>);

thread_local! {
    /// Every configured root context of this VM.
    static ROSTER: RefCell<Vec<Rostered>> = const { RefCell::new(Vec::new()) };
}

/// The registry to serve while `me` reads its own: that of the one other root context of
/// this identity that is not superseded, if exactly one is (Envoy asks that filters sharing a
/// VM have distinct names; if two configured root contexts share one anyway, serving or not,
/// neither is taken for the other's predecessor).
fn predecessor(identity: &Identity, me: u32) -> Option<(u32, Rc<Registry>)> {
    ROSTER.with(|roster| {
        let roster = roster.borrow();
        let mut same = roster
            .iter()
            .filter(|r| r.root != me && !r.superseded && r.identity == *identity);
        let only = same.next()?;
        if same.next().is_some() {
            return None;
        }
        Some((only.root, only.serves.as_ref()?.upgrade()?))
    })
}

/// Enters or updates `root` in the roster.
fn roster(root: u32, identity: &Identity, serves: Option<&Rc<Registry>>) {
    ROSTER.with(|roster| {
        let mut roster = roster.borrow_mut();
        let serves = serves.map(Rc::downgrade);
        match roster.iter_mut().find(|r| r.root == root) {
            Some(r) => r.serves = serves,
            None => roster.push(Rostered {
                root,
                identity: identity.clone(),
                serves,
                superseded: false,
            }),
        }
    })
}

fn supersede(root: u32) {
    ROSTER.with(|roster| {
        for r in roster.borrow_mut().iter_mut().filter(|r| r.root == root) {
            r.superseded = true;
        }
    })
}

fn retire(root: u32) {
    // `try_with`: natively, roots are dropped as the thread ends, maybe after `ROSTER` is gone.
    let _ = ROSTER.try_with(|roster| roster.borrow_mut().retain(|r| r.root != root));
}

/// A delivered registry image accepted with its tables still to read. `on_configure` checks the
/// image whole (its fingerprint) and reads what the configuration is accepted on (settings,
/// APIs, plans, every distinct policy compiled); the client, contract and key tables are read
/// later: a VM that never serves (Envoy's validation VM, the main thread's) never reads them,
/// and a worker taking a live update reads them a slice at a time between requests while the
/// registry before serves, instead of stalling every request for the whole read.
struct Pending {
    reading: Reading<'static>,
    /// The root context whose registry serves meanwhile, and that registry, held here: Envoy
    /// deletes the old root context once no stream holds it, which can be long before the
    /// tables are read. `None`: the first request reads them, as nothing else can serve it.
    predecessor: Option<(u32, Rc<Registry>)>,
    /// Time spent reading so far, in ms, in how many slices, and the longest slice (the longest
    /// any request waited for the reading).
    spent: u64,
    slices: u32,
    longest: u64,
}

struct Root {
    id: u32,
    /// This filter's `plugin_name` and `plugin_root_id`: a root context of the same identity
    /// in this VM is an earlier configuration of the same filter.
    identity: Option<Identity>,
    registry: RefCell<Option<Rc<Registry>>>,
    pending: RefCell<Option<Pending>>,
}

impl Context for Root {}

impl Drop for Root {
    fn drop(&mut self) {
        retire(self.id);
    }
}

fn elapsed_ms(since: Option<u64>) -> u64 {
    abi::now_nanos()
        .zip(since)
        .map_or(0, |(end, start)| end.saturating_sub(start) / 1_000_000)
}

impl Root {
    fn new(id: u32) -> Root {
        Root {
            id,
            identity: None,
            registry: RefCell::new(None),
            pending: RefCell::new(None),
        }
    }

    /// Puts this root context on the VM's roster (see `Rostered`), serving `serves` now.
    #[inline(never)]
    fn enroll(&self, serves: Option<&Rc<Registry>>) {
        if let Some(identity) = &self.identity {
            roster(self.id, identity, serves);
        }
    }

    /// Serves `registry` from now on.
    #[inline(never)]
    fn serve(&self, registry: Registry) {
        // Stats are handed to Envoy on the tick, and policies may sweep on it.
        abi::set_tick_period(TICK);
        let registry = Rc::new(registry);
        self.enroll(Some(&registry));
        *self.registry.borrow_mut() = Some(registry);
    }

    /// Serves a registry read from an image, with the load log line saying which image.
    #[inline(never)]
    fn serve_image(&self, registry: Registry, ms: u64, image: &str) {
        log::info!(
            "loaded {} APIs and {} clients in {ms} ms ({image})",
            registry.apis().len(),
            registry.client_count(),
        );
        self.serve(registry);
    }

    /// Takes a delivered image, copied from the host, to read later (see `Pending`); `Err`
    /// refuses the configuration. Where a registry of this filter already serves in this VM,
    /// Envoy has checked these very bytes before (its validation VM and the main thread's
    /// accept or refuse a configuration before any worker gets it), so the image is read
    /// between requests from its first byte, its fingerprint checked at the end; elsewhere it
    /// is checked here, and what the configuration is accepted on read.
    #[inline(never)]
    fn defer(
        &self,
        mut pieces: std::collections::VecDeque<Vec<u8>>,
        started: Option<u64>,
    ) -> Result<(), String> {
        // Configured again (Envoy may reuse a root context): its own registry serves meanwhile.
        let own = self
            .registry
            .borrow()
            .clone()
            .map(|registry| (self.id, registry));
        let predecessor =
            own.or_else(|| (self.identity.as_ref()).and_then(|who| predecessor(who, self.id)));
        if let Some((_, serves)) = &predecessor {
            self.enroll(Some(serves));
        }
        let first_read = predecessor.is_none();
        if first_read {
            tollgate_core::registry::image::sealed(pieces.make_contiguous())?;
        }
        let mut reading = Reading::new(&vm_env, Box::new(move || pieces.pop_front()));
        if first_read {
            reading.accept()?;
        }
        let ms = elapsed_ms(started);
        if first_read {
            log::info!(
                "registry image accepted in {ms} ms; its tables are read at the first request"
            );
        } else {
            log::info!(
                "registry image taken in {ms} ms; it is read between requests, the configuration before it serving meanwhile"
            );
            abi::set_tick_period(SLICE_TICK);
        }
        *self.pending.borrow_mut() = Some(Pending {
            reading,
            predecessor,
            spent: ms,
            slices: 0,
            longest: ms,
        });
        Ok(())
    }

    /// Reads on in the pending image while `more()`; once it is read, serves it.
    fn read_on(&self, more: &mut dyn FnMut() -> bool) {
        let mut slot = self.pending.borrow_mut();
        let Some(pending) = slot.as_mut() else {
            return;
        };
        let started = abi::now_nanos();
        let step = pending.reading.step(more);
        let took = elapsed_ms(started);
        pending.spent += took;
        pending.slices += 1;
        pending.longest = pending.longest.max(took);
        match step {
            Ok(None) => {}
            Ok(Some(registry)) => {
                let (spent, slices, longest) = (pending.spent, pending.slices, pending.longest);
                let predecessor = slot.take().and_then(|p| p.predecessor);
                drop(slot);
                // The predecessor is superseded: a later configuration of this filter must not
                // find two registries of its identity and take neither.
                if let Some((id, _)) = predecessor.filter(|(id, _)| *id != self.id) {
                    supersede(id);
                }
                log::info!(
                    "loaded {} APIs and {} clients in {spent} ms, its tables in {slices} slice{} (the longest {longest} ms) (a registry image compiled by tollgate-gen)",
                    registry.apis().len(),
                    registry.client_count(),
                    if slices == 1 { "" } else { "s" }
                );
                self.serve(registry);
            }
            Err(why) => {
                *slot = None;
                drop(slot);
                // Its own registry of an earlier configuration, if any, does not serve on.
                *self.registry.borrow_mut() = None;
                abi::set_tick_period(TICK);
                self.enroll(None);
                log::error!(
                    "the registry image does not read: {why}; requests under this configuration are answered 503 until another is delivered"
                );
            }
        }
    }

    /// The registry a new request is served with. While the image's tables are read, the
    /// predecessor's; without one, the request waits for the rest of the tables.
    fn registry_for_request(&self) -> Option<Rc<Registry>> {
        if let Some(registry) = self.registry.borrow().as_ref() {
            return Some(registry.clone());
        }
        let meanwhile = (self.pending.borrow().as_ref())
            .map(|p| p.predecessor.as_ref().map(|(_, r)| r.clone()))?;
        if meanwhile.is_some() {
            return meanwhile;
        }
        self.read_on(&mut || true);
        self.registry.borrow().clone()
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        init_logging();
        true
    }

    // What this calls once is kept out of it (`#[inline(never)]` on `defer`, `serve`, the
    // `image` functions…): LLVM inlines every function with a single caller, and V8 compiles
    // one large function in more than linear time, at Envoy's start (docs/performance.md →
    // Start-up).
    fn on_configure(&mut self, size: usize) -> bool {
        init_logging();
        // The registry is read from the host in chunks, never whole: a wasm VM's memory never
        // shrinks, so a 150 MB registry read at once would stay the VM's size for good.
        let config = tollgate_core::config::ReadDocument(|| HostConfig { offset: 0, size });
        let started = abi::now_nanos();
        let took = || elapsed_ms(started);
        // A configuration replaces whatever this root context was still reading.
        *self.pending.borrow_mut() = None;
        self.identity =
            (abi::get_property(&["plugin_name"])).zip(abi::get_property(&["plugin_root_id"]));
        self.enroll(self.registry.borrow().as_ref());
        if let Some(pieces) = image::delivered(size) {
            return match self.defer(pieces, started) {
                Ok(()) => true,
                Err(why) => {
                    log::error!("configuration refused: the registry image does not read: {why}");
                    false
                }
            };
        }
        // A large registry is loaded once per configuration, not once per VM: the first VM
        // writes its image to shared data and the others adopt it (see registry::image).
        let image = (size >= image::MIN_CONFIG_SIZE)
            .then(|| image::key(size))
            .flatten();
        if let Some(key) = &image {
            match image::adopt(key, &vm_env) {
                Some(Ok(registry)) => {
                    let ms = took();
                    self.serve_image(
                        registry,
                        ms,
                        "the registry image another VM compiled from this configuration",
                    );
                    return true;
                }
                Some(Err(why)) => log::info!("registry image not used: {why}"),
                None => {}
            }
        }
        let seen = tollgate_core::registry::image::EnvRecord::default();
        let recording = |name: &str| {
            let value = vm_env(name);
            seen.note(name, &value);
            value
        };
        match tollgate_core::load_document(&config, &recording) {
            Ok(mut loaded) => {
                log_warnings_once(&loaded.warnings);
                // Once per VM and configuration: how big and how long, for capacity planning.
                log::info!(
                    "loaded {} APIs and {} clients in {} ms",
                    loaded.registry.apis().len(),
                    loaded.registry.client_count(),
                    took()
                );
                let recipe = loaded.registry.take_recipe();
                if let (Some(key), Some(recipe)) = (image, recipe) {
                    let before = took();
                    match image::store(&key, &loaded.registry, &recipe, &seen) {
                        Ok(bytes) => log::info!(
                            "registry image written for the other VMs: {bytes} bytes in {} ms",
                            took().saturating_sub(before)
                        ),
                        Err(why) => log::warn!("registry image not written: {why}"),
                    }
                }
                self.serve(loaded.registry);
                true
            }
            Err(errors) => {
                log::error!(
                    "configuration refused ({} problem{}):\n  {}",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" },
                    errors.join("\n  ")
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if self.pending.borrow().is_some() {
            let until = abi::now_nanos().map(|now| now.saturating_add(SLICE));
            self.read_on(&mut || {
                abi::now_nanos()
                    .zip(until)
                    .is_none_or(|(now, until)| now < until)
            });
            return;
        }
        crate::stats::flush();
        let Some(registry) = self.registry.borrow().clone() else {
            return;
        };
        let now = WasmHost.now();
        for policy in registry.tickers() {
            policy.on_tick(&mut WasmHost, now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            exchange: self.registry_for_request().map(Exchange::new),
            waiting: None,
            waiting_cluster: String::new(),
            request: Direction::default(),
            response: Direction::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Registry images in Envoy's shared data (the format is `tollgate_core::registry::image`'s).
///
/// An image of a configuration lives under `tollgate.registry-image.<size>.<fingerprint>-<build>`:
/// its pieces under that name plus `.0`, `.1`, …, and, written last, the name itself holding
/// the number of pieces. An image ends with the fingerprint of its bytes, so an image
/// half-written, or rewritten by another VM while it was read (one whose environment differs
/// writes its own under the same name), is never adopted. `tollgate.registry-images` lists the images newest last; only the newest
/// `KEEP` are kept (the older ones' values are emptied: shared data has no delete), so live
/// updates do not pile up images in Envoy's memory. An emptied image only costs a VM that
/// would have adopted it a full load.
mod image {
    use super::abi;
    use proxy_wasm::types::BufferType;
    use std::collections::VecDeque;
    use tollgate_core::config::Env;
    use tollgate_core::host::{CAS_RETRIES, CREATE_CAS};
    use tollgate_core::registry::image::{self, EnvRecord, Fingerprint, Recipe};
    use tollgate_core::registry::Registry;

    /// Smaller configurations load in a few milliseconds: no image.
    pub const MIN_CONFIG_SIZE: usize = 1 << 20;
    const INDEX: &str = "tollgate.registry-images";
    /// The images kept: the configuration in use and the one before it.
    const KEEP: usize = 2;

    /// The shared-data name of this configuration's image: its size and fingerprint (reading
    /// it once, a megabyte at a time). `None` if the configuration cannot be read.
    #[inline(never)]
    pub fn key(size: usize) -> Option<String> {
        let mut f = Fingerprint::default();
        let mut offset = 0;
        while offset < size {
            let piece = abi::get_buffer(
                BufferType::PluginConfiguration as u32,
                offset,
                image::PIECE.min(size - offset),
            )
            .ok()
            .filter(|p| !p.is_empty())?;
            f.update(&piece);
            offset += piece.len();
        }
        Some(format!(
            "tollgate.registry-image.{size}.{}-{}",
            f.hex(),
            image::BUILD
        ))
    }

    /// The image's manifest: its number of pieces.
    fn manifest(key: &str) -> Option<usize> {
        let (value, _) = abi::get_shared(key)?;
        std::str::from_utf8(&value).ok()?.parse().ok()
    }

    /// The registry from this configuration's image; `None` when there is none yet. The image
    /// ends with the fingerprint of its bytes, so pieces of two writes are never adopted.
    #[inline(never)]
    pub fn adopt(key: &str, env: Env) -> Option<Result<Registry, String>> {
        let count = manifest(key)?;
        let mut i = 0;
        let mut next = || {
            if i >= count {
                return None;
            }
            i += 1;
            abi::get_shared(&format!("{key}.{}", i - 1)).map(|(piece, _)| piece)
        };
        Some(image::read(env, &mut next))
    }

    /// The image's bytes when the configuration is one compiled by `tollgate-gen
    /// --registry-image` rather than JSON; `None` when it is JSON. The plugin configuration can
    /// only be read during `on_configure`, so the image is copied into the VM, in the pieces
    /// the reader frees as it goes.
    #[inline(never)]
    pub fn delivered(size: usize) -> Option<VecDeque<Vec<u8>>> {
        let config = BufferType::PluginConfiguration as u32;
        let start = abi::get_buffer(config, 0, image::IMAGE_MARK.min(size)).ok()?;
        if !image::is_image(&start) {
            return None;
        }
        let mut pieces = VecDeque::new();
        let mut offset = 0;
        while offset < size {
            let Some(piece) = abi::get_buffer(config, offset, image::PIECE.min(size - offset))
                .ok()
                .filter(|p| !p.is_empty())
            else {
                break; // what is missing, the reader finds missing
            };
            offset += piece.len();
            pieces.push_back(piece);
        }
        Some(pieces)
    }

    /// Writes the image and lists it; the number of bytes written.
    #[inline(never)]
    pub fn store(
        key: &str,
        registry: &Registry,
        recipe: &Recipe,
        env: &EnvRecord,
    ) -> Result<usize, String> {
        let (mut count, mut bytes) = (0usize, 0usize);
        let written = image::write(registry, recipe, env, &mut |piece| {
            let stored = abi::set_shared(&format!("{key}.{count}"), piece, 0) == abi::OK;
            count += 1;
            bytes += piece.len();
            stored
        })
        .and_then(|()| {
            (abi::set_shared(key, count.to_string().as_bytes(), 0) == abi::OK)
                .then_some(())
                .ok_or_else(|| "shared data refused it".to_string())
        });
        if let Err(why) = written {
            // No VM adopts an image without its count; the pieces would only hold memory.
            empty(key, count);
            return Err(why);
        }
        list(key);
        Ok(bytes)
    }

    fn empty(key: &str, count: usize) {
        let _ = abi::set_shared(key, b"", 0);
        for i in 0..count {
            let _ = abi::set_shared(&format!("{key}.{i}"), b"", 0);
        }
    }

    /// Adds `key` to the index and empties the images past the newest `KEEP`.
    fn list(key: &str) {
        for _ in 0..CAS_RETRIES {
            // No index yet: create it only if no other VM does meanwhile (a CAS of 0 would
            // overwrite theirs, and the image it listed would never be emptied).
            let (index, cas) = abi::get_shared(INDEX).unwrap_or((Vec::new(), CREATE_CAS));
            let mut keys: Vec<&str> = std::str::from_utf8(&index)
                .unwrap_or_default()
                .lines()
                .filter(|k| *k != key && !k.is_empty())
                .collect();
            keys.push(key);
            let drop = keys.len().saturating_sub(KEEP);
            let text = keys[drop..].join("\n");
            if abi::set_shared(INDEX, text.as_bytes(), cas) != abi::OK {
                continue; // another VM listed one meanwhile: read the index again
            }
            for old in &keys[..drop] {
                empty(old, manifest(old).unwrap_or(0));
            }
            return;
        }
        log::warn!("registry image {key} not listed: other VMs kept writing the index");
    }
}

/// The plugin configuration, read from the host a chunk at a time.
struct HostConfig {
    offset: usize,
    /// Its size, as Envoy announced it.
    size: usize,
}

impl std::io::Read for HostConfig {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(self.size.saturating_sub(self.offset));
        if want == 0 {
            return Ok(0);
        }
        let chunk = abi::get_buffer(BufferType::PluginConfiguration as u32, self.offset, want)
            .map_err(|status| {
                std::io::Error::other(format!("reading the configuration: status {status}"))
            })?;
        let n = chunk.len().min(want);
        buf[..n].copy_from_slice(&chunk[..n]);
        self.offset += n;
        Ok(n)
    }
}

/// Every worker VM loads the configuration; only the first to get here logs its warnings.
#[inline(never)]
fn log_warnings_once(warnings: &[String]) {
    if warnings.is_empty() {
        return;
    }
    let digest = tollgate_core::registry::key_digest(&warnings.join("\n"));
    let key = format!(
        "tollgate.config-warned.{}",
        tollgate_core::registry::hex(&digest[..8])
    );
    if abi::get_shared(&key).is_some()
        || abi::set_shared(&key, b"1", tollgate_core::host::CREATE_CAS) != abi::OK
    {
        return;
    }
    for w in warnings {
        log::warn!("{w}");
    }
}

/// Request or response: the two directions of a stream, each with its own callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

impl Dir {
    fn of(phase: Phase) -> Dir {
        if phase.is_request() {
            Dir::Request
        } else {
            Dir::Response
        }
    }

    fn headers(self) -> MapType {
        match self {
            Dir::Request => MapType::HttpRequestHeaders,
            Dir::Response => MapType::HttpResponseHeaders,
        }
    }

    fn buffer(self) -> BufferType {
        match self {
            Dir::Request => BufferType::HttpRequestBody,
            Dir::Response => BufferType::HttpResponseBody,
        }
    }

    fn stream(self) -> u32 {
        match self {
            Dir::Request => STREAM_REQUEST,
            Dir::Response => STREAM_RESPONSE,
        }
    }

    fn body_phase(self) -> Phase {
        match self {
            Dir::Request => Phase::RequestBody,
            Dir::Response => Phase::ResponseBody,
        }
    }

    fn data_phase(self) -> Phase {
        match self {
            Dir::Request => Phase::RequestData,
            Dir::Response => Phase::ResponseData,
        }
    }
}

/// What the adapter knows about one direction of the stream.
#[derive(Debug, Default)]
struct Direction {
    /// The headers callback returned Pause and the stream has not been resumed since.
    held: bool,
    /// End of stream seen (in the headers, a body or the trailers callback).
    ended: bool,
    /// The last body callback returned Pause: Envoy keeps the data buffered, and the next
    /// callback's size is the whole buffer.
    buffering: bool,
    /// The buffer's size at the last body callback.
    buffered: usize,
    /// The whole-body phase has run.
    body_done: bool,
}

/// How many call-outs in a row a phase may start whose dispatch fails at once (each failure
/// is handed to the policy, which may try another): beyond this the request is refused.
const DISPATCH_ATTEMPTS: usize = 4;

struct Filter {
    exchange: Option<Exchange>,
    /// The token of the call-out the stream waits for, and the direction it holds.
    waiting: Option<(u32, Dir)>,
    /// The cluster that call went to (for stats).
    waiting_cluster: String,
    request: Direction,
    response: Direction,
}

impl Filter {
    fn direction(&mut self, dir: Dir) -> &mut Direction {
        match dir {
            Dir::Request => &mut self.request,
            Dir::Response => &mut self.response,
        }
    }

    /// Writes back what the exchange changed in `dir`'s headers and body.
    fn write_back(&mut self, dir: Dir) {
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
        let ops = match dir {
            Dir::Request => exchange.take_request_ops(),
            Dir::Response => exchange.take_response_ops(),
        };
        write_headers(dir.headers(), ops);
        if let Some(bytes) = exchange.take_changed_body() {
            let size = self.direction(dir).buffered;
            let status = abi::set_buffer(dir.buffer() as u32, 0, size, &bytes);
            if status != abi::OK {
                log::warn!("tollgate: writing the changed body failed with status {status}");
            }
        }
    }

    /// Carries out a step taken in `dir`: Continue, a local reply, or a call-out to dispatch
    /// (whose failure to start is handed back to the policy at once). Returns what the
    /// callback should tell Envoy; `Pause` leaves the direction held.
    fn act(&mut self, dir: Dir, mut step: Step) -> Action {
        for _ in 0..DISPATCH_ATTEMPTS {
            match step {
                Step::Continue => return Action::Continue,
                Step::Reply(reply) => {
                    send(&reply);
                    return Action::Pause;
                }
                Step::CallOut(call) => match dispatch(&call) {
                    Ok(token) => {
                        if let Some(exchange) = self.exchange.as_mut() {
                            exchange.call_dispatched(token);
                        }
                        let dir = self
                            .exchange
                            .as_ref()
                            .and_then(Exchange::waiting)
                            .map_or(dir, Dir::of);
                        self.waiting = Some((token, dir));
                        self.waiting_cluster = call.cluster.clone();
                        self.direction(dir).held = true;
                        return Action::Pause;
                    }
                    Err(status) => {
                        log::warn!(
                            "tollgate: call-out to cluster {} could not be sent (status {status})",
                            call.cluster
                        );
                        let Some(exchange) = self.exchange.as_mut() else {
                            return Action::Continue;
                        };
                        crate::stats::call_out(&call.cluster, true, &exchange.settings().metrics);
                        let no_answer = CallResponse {
                            cluster: call.cluster.clone(),
                            ..CallResponse::default()
                        };
                        step = exchange.on_call_response(None, no_answer, &mut WasmHost);
                        self.write_back(dir);
                    }
                },
            }
        }
        send(&tollgate_core::errors::gateway_error_reply(
            503,
            "A policy could not reach the services it needs.",
            false,
        ));
        Action::Pause
    }

    /// The direction's phase after its headers: hold for the whole body if a policy needs it,
    /// else let it go.
    fn after_headers(&mut self, dir: Dir, action: Action) -> Action {
        if action == Action::Pause {
            self.direction(dir).held = true;
            return Action::Pause;
        }
        let needs_body = self
            .exchange
            .as_ref()
            .is_some_and(|e| e.needs(dir.body_phase()));
        if !needs_body {
            self.direction(dir).held = false;
            return Action::Continue;
        }
        if self.direction(dir).ended {
            // Envoy calls no body callback for a bodiless message: run the body phase now.
            let action = self.body_phase(dir, Vec::new());
            return self.after_body(dir, action);
        }
        self.direction(dir).held = true;
        Action::Pause
    }

    /// Runs the whole-body phase on `bytes`.
    fn body_phase(&mut self, dir: Dir, bytes: Vec<u8>) -> Action {
        self.direction(dir).body_done = true;
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let step = match dir {
            Dir::Request => exchange.on_request_body(Body::new(bytes), &mut WasmHost),
            Dir::Response => exchange.on_response_body(Body::new(bytes), &mut WasmHost),
        };
        self.write_back(dir);
        self.act(dir, step)
    }

    fn after_body(&mut self, dir: Dir, action: Action) -> Action {
        if action == Action::Continue {
            self.direction(dir).held = false;
        }
        action
    }

    /// One body callback of `dir`.
    fn on_body(&mut self, dir: Dir, size: usize, end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let d = match dir {
            Dir::Request => &mut self.request,
            Dir::Response => &mut self.response,
        };
        // Bytes new in this callback: while buffering, `size` is the whole buffer so far.
        let fresh = if d.buffering {
            size.saturating_sub(d.buffered)
        } else {
            size
        };
        d.buffered = size;
        d.ended |= end_of_stream;
        if exchange.needs(dir.data_phase()) {
            let step = match dir {
                Dir::Request => exchange.on_request_data(fresh, end_of_stream, &mut WasmHost),
                Dir::Response => exchange.on_response_data(fresh, end_of_stream, &mut WasmHost),
            };
            if step != Step::Continue {
                let action = self.act(dir, step);
                return self.buffering(dir, action);
            }
        }
        let action = if self.waiting.is_some_and(|(_, d)| d == dir) {
            // A decision is pending: hold the data (Envoy buffers it).
            Action::Pause
        } else if self.direction(dir).held && !self.direction(dir).body_done {
            if !end_of_stream {
                self.hold_body(dir, size)
            } else {
                let bytes = abi::get_buffer(dir.buffer() as u32, 0, size).unwrap_or_default();
                let action = self.body_phase(dir, bytes);
                self.after_body(dir, action)
            }
        } else if self.direction(dir).held {
            Action::Pause
        } else {
            Action::Continue
        };
        self.buffering(dir, action)
    }

    /// Holds `dir`'s body while it grows, unless it outgrows what its body policies read: then
    /// it is passed on as it is (with the headers held for it), without their body phase.
    fn hold_body(&mut self, dir: Dir, size: usize) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let phase = dir.body_phase();
        if exchange.body_limit(phase).is_some_and(|limit| size > limit) {
            exchange.body_too_large(phase, size);
        }
        if exchange.needs(phase) {
            return Action::Pause;
        }
        self.direction(dir).body_done = true;
        self.after_body(dir, Action::Continue)
    }

    fn buffering(&mut self, dir: Dir, action: Action) -> Action {
        self.direction(dir).buffering = action == Action::Pause;
        action
    }

    /// The trailers of `dir`: the body is complete.
    fn on_trailers(&mut self, dir: Dir) -> Action {
        self.direction(dir).ended = true;
        if self.exchange.is_none() || self.waiting.is_some_and(|(_, d)| d == dir) {
            return if self.exchange.is_none() {
                Action::Continue
            } else {
                Action::Pause
            };
        }
        let d = self.direction(dir);
        if d.held && !d.body_done {
            let size = if d.buffering { d.buffered } else { 0 };
            let bytes = abi::get_buffer(dir.buffer() as u32, 0, size).unwrap_or_default();
            let action = self.body_phase(dir, bytes);
            return self.after_body(dir, action);
        }
        if self.direction(dir).held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// Resumes `dir` on Envoy's side: what it buffered moves on, and later body callbacks see
    /// only new data.
    fn resume(&mut self, dir: Dir) {
        let d = self.direction(dir);
        d.held = false;
        d.buffering = false;
        d.buffered = 0;
        let status = abi::resume(dir.stream());
        if status != abi::OK {
            log::warn!("tollgate: resuming the stream failed with status {status}");
        }
    }
}

/// Dispatches through the SDK, which must know the token to route the answer back to this
/// stream's context. For HTTP, Envoy answers `Ok`, `BadArgument` (unknown cluster, missing
/// pseudo-headers) or `InternalFailure`; for gRPC, `Ok`, `ParseFailure` (unknown cluster) or
/// `InternalFailure` (`BadArgument` only for a malformed service definition, which a cluster
/// name cannot be): the statuses the SDK handles without panicking.
fn dispatch(call: &CallOut) -> Result<u32, u32> {
    match &call.grpc {
        None => {
            let pairs: Vec<(&str, &str)> = call
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            proxy_wasm::hostcalls::dispatch_http_call(
                &call.cluster,
                pairs,
                call.body.as_deref(),
                Vec::new(),
                call.timeout,
            )
        }
        Some(method) => {
            let metadata: Vec<(&str, &[u8])> = call
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            proxy_wasm::hostcalls::dispatch_grpc_call(
                &call.cluster,
                &method.service,
                &method.method,
                metadata,
                Some(call.body.as_deref().unwrap_or_default()),
                call.timeout,
            )
        }
    }
    .map_err(|status| status as u32)
}

/// gRPC's receive buffer (`BufferType::GrpcReceiveBuffer`).
const GRPC_RECEIVE_BUFFER: u32 = 5;

impl Filter {
    /// The answer to the call-out `token` (HTTP or gRPC): the phase that waited for it
    /// finishes, and what follows it, before the stream may move on.
    fn on_answer(&mut self, token: u32, response: impl FnOnce() -> CallResponse) {
        let Some((expected, dir)) = self.waiting else {
            log::debug!("tollgate: an answer to call-out {token} nobody waits for");
            return;
        };
        if expected != token {
            log::debug!("tollgate: an answer to call-out {token}, waiting for {expected}");
            return;
        }
        self.waiting = None;
        let response = response();
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
        crate::stats::call_out(
            &self.waiting_cluster,
            response.failed(),
            &exchange.settings().metrics,
        );
        let phase = exchange.waiting();
        let step = exchange.on_call_response(Some(token), response, &mut WasmHost);
        self.write_back(dir);
        let action = self.act(dir, step);
        if action == Action::Pause {
            // A reply was sent, or another call-out is on its way.
            return;
        }
        let needs_body = self
            .exchange
            .as_ref()
            .is_some_and(|e| e.needs(dir.body_phase()));
        let d = self.direction(dir);
        let body_pending = !d.body_done && needs_body;
        let (ended, size) = (d.ended, if d.buffering { d.buffered } else { 0 });
        let action = match phase {
            Some(Phase::RequestHeaders | Phase::ResponseHeaders) if body_pending => {
                if ended {
                    let bytes = abi::get_buffer(dir.buffer() as u32, 0, size).unwrap_or_default();
                    self.body_phase(dir, bytes)
                } else {
                    // The rest of the body is still coming: its callbacks run the body phase.
                    return;
                }
            }
            _ => Action::Continue,
        };
        if action == Action::Continue {
            self.resume(dir);
        }
    }
}

impl Context for Filter {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _t: usize) {
        self.on_answer(token, || {
            let headers = abi::get_map(MapType::HttpCallResponseHeaders as u32)
                .map(|b| deserialize_map(&b))
                .unwrap_or_default();
            let status = headers
                .iter()
                .find(|(k, _)| k == ":status")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let body = abi::get_buffer(BufferType::HttpCallResponseBody as u32, 0, body_size)
                .unwrap_or_default();
            CallResponse {
                cluster: String::new(),
                status,
                headers,
                body,
            }
        });
    }

    /// A unary gRPC call ended: with its response message (`status_code` 0), or with a gRPC
    /// status (unreachable, timeout, an error the service returned).
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        self.on_answer(token, || {
            if status_code == 0 {
                let body =
                    abi::get_buffer(GRPC_RECEIVE_BUFFER, 0, response_size).unwrap_or_default();
                return CallResponse {
                    cluster: String::new(),
                    status: 200,
                    headers: vec![("grpc-status".to_string(), "0".to_string())],
                    body,
                };
            }
            let message = abi::grpc_status().map(|(_, m)| m).unwrap_or_default();
            CallResponse {
                cluster: String::new(),
                status: 0,
                headers: vec![
                    ("grpc-status".to_string(), status_code.to_string()),
                    ("grpc-message".to_string(), message),
                ],
                body: Vec::new(),
            }
        });
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            send(&tollgate_core::errors::gateway_error_reply(
                503,
                "Gateway not configured.",
                false,
            ));
            return Action::Pause;
        };
        self.request.ended = end_of_stream;
        let headers = read_headers(MapType::HttpRequestHeaders);
        let step = exchange.on_request_headers(headers, &mut WasmHost);
        self.write_back(Dir::Request);
        let action = self.act(Dir::Request, step);
        self.after_headers(Dir::Request, action)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Dir::Request, body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.on_trailers(Dir::Request)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        self.response.ended = end_of_stream;
        let involved = exchange.needs(Phase::ResponseHeaders)
            || exchange.needs(Phase::ResponseBody)
            || exchange.needs(Phase::ResponseData);
        let reads = exchange.reads_response_headers();
        let failed = !reads && exchange.watches_upstream_errors() && server_error();
        if !involved && !failed {
            return Action::Continue;
        }
        // Adding headers needs no read: one host call (and a guest allocation) saved.
        let headers = if reads || failed {
            read_headers(MapType::HttpResponseHeaders)
        } else {
            HeaderMap::new()
        };
        let step = exchange.on_response_headers(headers, &mut WasmHost);
        self.write_back(Dir::Response);
        let action = self.act(Dir::Response, step);
        self.after_headers(Dir::Response, action)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Dir::Response, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.on_trailers(Dir::Response)
    }

    fn on_log(&mut self) {
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
        exchange.on_complete(&mut WasmHost);
        let decision = exchange.decision();
        let settings = exchange.settings();
        crate::stats::record(&decision, &settings.metrics);
        if settings.decision_log {
            let status = abi::set_property("tollgate_decision", decision.to_json().as_bytes());
            if status != abi::OK {
                log::debug!("tollgate: publishing the decision failed with status {status}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_through_the_wire_format() {
        let bytes = serialize_map(&[(":path", "/a"), ("x-k", "")]);
        assert_eq!(
            deserialize_map(&bytes),
            vec![
                (":path".to_string(), "/a".to_string()),
                ("x-k".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn a_truncated_map_yields_what_could_be_read() {
        let bytes = serialize_map(&[("a", "1"), ("b", "2")]);
        assert_eq!(deserialize_map(&bytes[..bytes.len() - 3]).len(), 1);
        assert!(deserialize_map(&[1, 0]).is_empty());
    }

    #[test]
    fn invalid_utf8_values_are_replaced_not_fatal() {
        let mut bytes = serialize_map(&[("a", "xy")]);
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        assert_eq!(deserialize_map(&bytes)[0].1, "\u{fffd}y");
    }
}
