//! The proxy-wasm ABI 0.2.1 host functions, natively.
//!
//! On a native target the SDK's `#[link(wasm_import_module = "env")] extern "C"` imports (and
//! tollgate's own in `adapter::abi`) are ordinary undefined symbols; the `#[no_mangle]`
//! functions below define them. Each acts on the VM state of the calling thread: the SDK's
//! dispatcher is `thread_local`, so one OS thread is one VM, exactly as one Envoy worker
//! thread runs one VM.
//!
//! Statuses follow Envoy 1.40 (see the comments on each function); nothing here panics, since
//! a panic inside an `extern "C"` function aborts the process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::headers::{deserialize_pairs, Headers};
use super::shared::SharedStore;
use super::{status, Clock, HostSettings, LogLine};

extern "C" {
    /// The guest's allocator (the SDK's `proxy_on_memory_allocate`): host-to-guest buffers
    /// must come from it, because the SDK takes ownership with `Vec::from_raw_parts`.
    fn proxy_on_memory_allocate(size: usize) -> *mut u8;
}

pub(super) const MAP_REQUEST_HEADERS: u32 = 0;
pub(super) const MAP_REQUEST_TRAILERS: u32 = 1;
pub(super) const MAP_RESPONSE_HEADERS: u32 = 2;
pub(super) const MAP_RESPONSE_TRAILERS: u32 = 3;
pub(super) const MAP_CALL_RESPONSE_HEADERS: u32 = 6;
pub(super) const MAP_CALL_RESPONSE_TRAILERS: u32 = 7;

pub(super) const BUFFER_REQUEST_BODY: u32 = 0;
pub(super) const BUFFER_RESPONSE_BODY: u32 = 1;
pub(super) const BUFFER_CALL_RESPONSE_BODY: u32 = 4;
pub(super) const BUFFER_GRPC_RECEIVE: u32 = 5;
pub(super) const BUFFER_VM_CONFIGURATION: u32 = 6;
pub(super) const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;

/// A local reply the filter asked for; Envoy sends it after the callback returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplyRequest {
    pub status: u16,
    pub details: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A call the filter dispatched and the host has not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCall {
    pub token: u32,
    pub context_id: u32,
    pub cluster: String,
    /// HTTP: the call's headers. gRPC: the request Envoy would send (`:method POST`,
    /// `:path /<service>/<method>`, `:authority` the cluster) and the initial metadata.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
    /// For a gRPC call: the service and the method.
    pub grpc: Option<(String, String)>,
}

/// What the host hands the filter while it answers a call-out.
#[derive(Debug, Clone, Default)]
pub(super) struct CallResponseData {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

/// One direction's body as Envoy's wasm filter sees it (`source/extensions/common/wasm/
/// context.cc`, `decodeData`/`encodeData`/`getBuffer`).
#[derive(Debug, Default)]
pub(super) struct BodyState {
    /// The filter manager's buffer (`buffered_request_data_`): what the filter paused on, until
    /// the stream continues and it goes on.
    pub held: Vec<u8>,
    /// The data chunk being delivered to the body callback.
    pub chunk: Vec<u8>,
    /// Inside the body callback.
    pub open: bool,
    /// Inside the body callback at end of stream: trailers may then be added.
    pub eos: bool,
    /// The last body callback returned Pause (`buffering_request_body_`): the filter sees the
    /// held buffer, also outside its body callbacks, and new chunks are added to it before the
    /// callback runs.
    pub buffering: bool,
}

impl BodyState {
    /// What `proxy_get_buffer_bytes` reads and writes: the held buffer while buffering, else
    /// the chunk while the body callback runs.
    fn visible(&mut self) -> Option<&mut Vec<u8>> {
        if self.buffering {
            Some(&mut self.held)
        } else if self.open {
            Some(&mut self.chunk)
        } else {
            None
        }
    }
}

/// One HTTP stream's host-side state.
#[derive(Debug, Default)]
pub(super) struct StreamState {
    pub request_headers: Headers,
    /// Envoy hands out the request headers until the headers callback returns Continue or the
    /// filter calls `proxy_continue_stream`; afterwards every access is `BadArgument`. Headers
    /// that went upstream because a body callback continued stay reachable, but changes no
    /// longer reach the backend (all three verified on Envoy 1.40).
    pub request_headers_open: bool,
    pub request_body: BodyState,
    pub request_trailers: Headers,
    pub request_trailers_open: bool,
    pub response_headers: Headers,
    pub response_headers_open: bool,
    pub response_body: BodyState,
    pub response_trailers: Headers,
    pub response_trailers_open: bool,
    pub local_reply: Option<LocalReplyRequest>,
    /// `proxy_continue_stream` was called for the request (0) or response (1).
    pub continue_request: bool,
    pub continue_response: bool,
    /// `proxy_close_stream` was called.
    pub closed: bool,
    /// Properties set for this stream (by the fixture, the filter or the router).
    pub properties: HashMap<String, Vec<u8>>,
    /// What the other stream properties are computed from.
    pub facts: super::stream::StreamFacts,
}

/// Everything the host functions need on one VM thread.
pub(super) struct VmHost {
    pub settings: Arc<HostSettings>,
    pub shared: Arc<SharedStore>,
    pub clock: Arc<Clock>,
    /// Readable only during `proxy_on_configure`, as in Envoy.
    pub plugin_config: Option<Vec<u8>>,
    pub vm_config: Vec<u8>,
    pub logs: Vec<LogLine>,
    pub effective_context: u32,
    pub stream: Option<StreamState>,
    pub tick_period_ms: u32,
    pub pending_calls: Vec<PendingCall>,
    pub call_response: Option<CallResponseData>,
    pub next_token: u32,
    pub properties: HashMap<String, Vec<u8>>,
    pub metrics: Vec<(u32, String, i64)>,
    pub status: (u32, String),
}

/// How many log lines a VM keeps (the oldest are dropped first).
const LOG_LIMIT: usize = 10_000;

impl VmHost {
    pub fn new(settings: Arc<HostSettings>, shared: Arc<SharedStore>, clock: Arc<Clock>) -> VmHost {
        VmHost {
            settings,
            shared,
            clock,
            plugin_config: None,
            vm_config: Vec::new(),
            logs: Vec::new(),
            effective_context: 0,
            stream: None,
            tick_period_ms: 0,
            pending_calls: Vec::new(),
            call_response: None,
            next_token: 1,
            properties: HashMap::new(),
            metrics: Vec::new(),
            status: (0, String::new()),
        }
    }

    fn map(&mut self, map: u32) -> Result<&mut Headers, u32> {
        if map == MAP_CALL_RESPONSE_HEADERS || map == MAP_CALL_RESPONSE_TRAILERS {
            let call = self.call_response.as_mut().ok_or(status::BAD_ARGUMENT)?;
            return Ok(if map == MAP_CALL_RESPONSE_HEADERS {
                &mut call.headers
            } else {
                &mut call.trailers
            });
        }
        let s = self.stream.as_mut().ok_or(status::BAD_ARGUMENT)?;
        match map {
            MAP_REQUEST_HEADERS if s.request_headers_open => Ok(&mut s.request_headers),
            MAP_RESPONSE_HEADERS if s.response_headers_open => Ok(&mut s.response_headers),
            // Envoy creates trailers on demand in the last body callback.
            MAP_REQUEST_TRAILERS if s.request_trailers_open || s.request_body.eos => {
                Ok(&mut s.request_trailers)
            }
            MAP_RESPONSE_TRAILERS if s.response_trailers_open || s.response_body.eos => {
                Ok(&mut s.response_trailers)
            }
            _ => Err(status::BAD_ARGUMENT),
        }
    }

    fn buffer(&mut self, buffer: u32) -> Result<&mut Vec<u8>, u32> {
        match buffer {
            BUFFER_REQUEST_BODY => self
                .stream
                .as_mut()
                .and_then(|s| s.request_body.visible())
                .ok_or(status::NOT_FOUND),
            BUFFER_RESPONSE_BODY => self
                .stream
                .as_mut()
                .and_then(|s| s.response_body.visible())
                .ok_or(status::NOT_FOUND),
            // A gRPC call's response message is handed over the same way as an HTTP answer.
            BUFFER_CALL_RESPONSE_BODY | BUFFER_GRPC_RECEIVE => self
                .call_response
                .as_mut()
                .map(|c| &mut c.body)
                .ok_or(status::NOT_FOUND),
            BUFFER_VM_CONFIGURATION => Ok(&mut self.vm_config),
            BUFFER_PLUGIN_CONFIGURATION => self.plugin_config.as_mut().ok_or(status::NOT_FOUND),
            _ => Err(status::NOT_FOUND),
        }
    }

    fn property(&self, path: &str) -> Option<Vec<u8>> {
        if let Some(s) = &self.stream {
            if let Some(v) = s.properties.get(path) {
                return Some(v.clone());
            }
            if let Some(v) = s.facts.property(path, &self.settings) {
                return Some(v);
            }
        }
        self.properties.get(path).cloned()
    }

    pub fn log(&mut self, level: u32, message: String) {
        if self.settings.echo_logs {
            eprintln!("[tollgate {}] {message}", level_name(level));
        }
        if self.logs.len() >= LOG_LIMIT {
            self.logs.remove(0);
        }
        self.logs.push(LogLine {
            level,
            context_id: self.effective_context,
            message,
        });
    }
}

pub fn level_name(level: u32) -> &'static str {
    match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        4 => "error",
        _ => "critical",
    }
}

thread_local! {
    static VM: RefCell<Option<VmHost>> = const { RefCell::new(None) };
}

/// Installs the VM state of this thread.
pub(super) fn install(vm: VmHost) {
    VM.with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = Some(vm);
        }
    });
}

/// Runs `f` on this thread's VM state; `None` when the thread has none (or it is borrowed,
/// which would mean a host function re-entered the host: never done here).
pub(super) fn with_vm<R>(f: impl FnOnce(&mut VmHost) -> R) -> Option<R> {
    VM.with(|cell| {
        cell.try_borrow_mut()
            .ok()
            .and_then(|mut slot| slot.as_mut().map(f))
    })
}

/// # Safety
/// `ptr` must point to `len` readable bytes (or be null / `len` 0).
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

fn text(ptr: *const u8, len: usize) -> String {
    String::from_utf8_lossy(unsafe { bytes(ptr, len) }).into_owned()
}

/// Copies `data` into guest memory and hands it over, as cpp-host does: nothing is written
/// for an empty value (the SDK then sees its own null pointer).
fn give(data: &[u8], out: *mut *mut u8, out_len: *mut usize) -> u32 {
    if out.is_null() || out_len.is_null() {
        return status::BAD_ARGUMENT;
    }
    if data.is_empty() {
        return status::OK;
    }
    unsafe {
        let p = proxy_on_memory_allocate(data.len());
        if p.is_null() {
            return status::INTERNAL_FAILURE;
        }
        std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len());
        *out = p;
        *out_len = data.len();
    }
    status::OK
}

fn put<T>(out: *mut T, value: T) -> u32 {
    if out.is_null() {
        return status::BAD_ARGUMENT;
    }
    unsafe { *out = value };
    status::OK
}

/// No VM on this thread: the guest is being called outside the host (e.g. the SDK's panic
/// hook on a test thread).
const NO_VM: u32 = status::INTERNAL_FAILURE;

// ---- logging, time, ticks --------------------------------------------------------------

#[no_mangle]
extern "C" fn proxy_log(level: u32, message: *const u8, size: usize) -> u32 {
    let message = text(message, size);
    match with_vm(|vm| vm.log(level, message.clone())) {
        Some(()) => status::OK,
        None => {
            // The SDK's panic hook logs through here; keep the message visible.
            eprintln!("[proxy-wasm {}] {message}", level_name(level));
            status::OK
        }
    }
}

#[no_mangle]
extern "C" fn proxy_get_log_level(out: *mut u32) -> u32 {
    let level = with_vm(|vm| vm.settings.log_level).unwrap_or(2);
    put(out, level)
}

#[no_mangle]
extern "C" fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32 {
    match with_vm(|vm| vm.clock.now_nanos()) {
        Some(t) => put(out, t),
        None => NO_VM,
    }
}

#[no_mangle]
extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> u32 {
    with_vm(|vm| vm.tick_period_ms = period).map_or(NO_VM, |_| status::OK)
}

#[no_mangle]
extern "C" fn proxy_set_effective_context(context_id: u32) -> u32 {
    with_vm(|vm| vm.effective_context = context_id).map_or(NO_VM, |_| status::OK)
}

#[no_mangle]
extern "C" fn proxy_done() -> u32 {
    // Only meaningful for a root context that delayed its shutdown; the host never waits.
    status::OK
}

// ---- buffers ---------------------------------------------------------------------------

/// cpp-host's `get_buffer_bytes`: `NotFound` without a buffer, the slice clamped to the
/// buffer, and `Ok` with nothing written when it is empty.
#[no_mangle]
extern "C" fn proxy_get_buffer_bytes(
    buffer: u32,
    start: usize,
    max: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> u32 {
    let slice = with_vm(|vm| {
        vm.buffer(buffer).map(|b| {
            let from = start.min(b.len());
            let to = from.saturating_add(max).min(b.len());
            b[from..to].to_vec()
        })
    });
    match slice {
        None => NO_VM,
        Some(Err(s)) => s,
        Some(Ok(data)) => give(&data, out, out_len),
    }
}

/// Replaces `size` bytes at `start` with the given data (`start == 0` with `size` at least
/// the buffer's length replaces it all, as Envoy does).
#[no_mangle]
extern "C" fn proxy_set_buffer_bytes(
    buffer: u32,
    start: usize,
    size: usize,
    data: *const u8,
    data_len: usize,
) -> u32 {
    let data = unsafe { bytes(data, data_len) }.to_vec();
    with_vm(|vm| {
        if buffer == BUFFER_PLUGIN_CONFIGURATION || buffer == BUFFER_VM_CONFIGURATION {
            return status::BAD_ARGUMENT;
        }
        match vm.buffer(buffer) {
            Ok(b) => {
                let from = start.min(b.len());
                let to = from.saturating_add(size).min(b.len());
                b.splice(from..to, data);
                status::OK
            }
            Err(s) => s,
        }
    })
    .unwrap_or(NO_VM)
}

// ---- header maps -----------------------------------------------------------------------

#[no_mangle]
extern "C" fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_len: *mut usize) -> u32 {
    match with_vm(|vm| vm.map(map).map(|h| h.serialize())) {
        None => NO_VM,
        Some(Err(s)) => s,
        Some(Ok(data)) => give(&data, out, out_len),
    }
}

#[no_mangle]
extern "C" fn proxy_set_header_map_pairs(map: u32, data: *const u8, size: usize) -> u32 {
    let Some(pairs) = deserialize_pairs(unsafe { bytes(data, size) }) else {
        return status::BAD_ARGUMENT;
    };
    with_vm(|vm| match vm.map(map) {
        Ok(h) => {
            h.replace_all(&pairs);
            status::OK
        }
        Err(s) => s,
    })
    .unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_get_header_map_value(
    map: u32,
    key: *const u8,
    key_len: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> u32 {
    let key = text(key, key_len);
    let value = with_vm(|vm| {
        vm.map(map)
            .and_then(|h| h.get(&key).map(str::to_string).ok_or(status::NOT_FOUND))
    });
    match value {
        None => NO_VM,
        Some(Err(s)) => s,
        Some(Ok(v)) => give(v.as_bytes(), out, out_len),
    }
}

#[no_mangle]
extern "C" fn proxy_replace_header_map_value(
    map: u32,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> u32 {
    let (key, value) = (text(key, key_len), text(value, value_len));
    with_vm(|vm| match vm.map(map) {
        Ok(h) => {
            h.set(&key, &value);
            status::OK
        }
        Err(s) => s,
    })
    .unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_add_header_map_value(
    map: u32,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> u32 {
    let (key, value) = (text(key, key_len), text(value, value_len));
    with_vm(|vm| match vm.map(map) {
        Ok(h) => {
            h.add(&key, &value);
            status::OK
        }
        Err(s) => s,
    })
    .unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_remove_header_map_value(map: u32, key: *const u8, key_len: usize) -> u32 {
    let key = text(key, key_len);
    with_vm(|vm| match vm.map(map) {
        Ok(h) => {
            h.remove(&key);
            status::OK
        }
        Err(s) => s,
    })
    .unwrap_or(NO_VM)
}

// ---- properties ------------------------------------------------------------------------

/// Paths arrive NUL-separated (`source\0address`) and are looked up dot-joined.
#[no_mangle]
extern "C" fn proxy_get_property(
    path: *const u8,
    path_len: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> u32 {
    let path = text(path, path_len)
        .trim_end_matches('\0')
        .replace('\0', ".");
    match with_vm(|vm| vm.property(&path)) {
        None => NO_VM,
        Some(None) => status::NOT_FOUND,
        Some(Some(v)) => give(&v, out, out_len),
    }
}

#[no_mangle]
extern "C" fn proxy_set_property(
    path: *const u8,
    path_len: usize,
    value: *const u8,
    value_len: usize,
) -> u32 {
    let path = text(path, path_len)
        .trim_end_matches('\0')
        .replace('\0', ".");
    let value = unsafe { bytes(value, value_len) }.to_vec();
    with_vm(|vm| match vm.stream.as_mut() {
        Some(s) => {
            s.properties.insert(path, value);
        }
        None => {
            vm.properties.insert(path, value);
        }
    })
    .map_or(NO_VM, |_| status::OK)
}

// ---- shared data and queues ------------------------------------------------------------

#[no_mangle]
extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_len: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
    cas: *mut u32,
) -> u32 {
    let key = text(key, key_len);
    match with_vm(|vm| vm.shared.get(&key)) {
        None => NO_VM,
        Some(None) => status::NOT_FOUND,
        Some(Some((value, token))) => {
            let s = put(cas, token);
            if s != status::OK {
                return s;
            }
            give(&value, out, out_len)
        }
    }
}

#[no_mangle]
extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    cas: u32,
) -> u32 {
    let key = text(key, key_len);
    let value = unsafe { bytes(value, value_len) };
    with_vm(|vm| vm.shared.set(&key, value, cas)).unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_register_shared_queue(name: *const u8, name_len: usize, out: *mut u32) -> u32 {
    let name = text(name, name_len);
    match with_vm(|vm| vm.shared.register_queue(&name)) {
        Some(id) => put(out, id),
        None => NO_VM,
    }
}

#[no_mangle]
extern "C" fn proxy_resolve_shared_queue(
    _vm_id: *const u8,
    _vm_id_len: usize,
    name: *const u8,
    name_len: usize,
    out: *mut u32,
) -> u32 {
    let name = text(name, name_len);
    match with_vm(|vm| vm.shared.resolve_queue(&name)) {
        None => NO_VM,
        Some(None) => status::NOT_FOUND,
        Some(Some(id)) => put(out, id),
    }
}

#[no_mangle]
extern "C" fn proxy_enqueue_shared_queue(id: u32, value: *const u8, value_len: usize) -> u32 {
    let value = unsafe { bytes(value, value_len) };
    with_vm(|vm| vm.shared.enqueue(id, value)).unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_dequeue_shared_queue(id: u32, out: *mut *mut u8, out_len: *mut usize) -> u32 {
    match with_vm(|vm| vm.shared.dequeue(id)) {
        None => NO_VM,
        Some(Err(s)) => s,
        Some(Ok(v)) => give(&v, out, out_len),
    }
}

// ---- streams ---------------------------------------------------------------------------

/// Records the continue; the stream driver carries it out once the callback returns (Envoy
/// defers `continueDecoding()`/`continueEncoding()` the same way). Envoy drops its hold on the
/// request headers and trailers at once, for either stream (`Context::continueStream`;
/// verified on Envoy 1.40: the request headers are `BadArgument` right after
/// `resume_http_request`, the response headers still readable after `resume_http_response`).
#[no_mangle]
extern "C" fn proxy_continue_stream(stream: u32) -> u32 {
    with_vm(|vm| match (vm.stream.as_mut(), stream) {
        (Some(s), 0 | 1) => {
            if stream == 0 {
                s.continue_request = true;
            } else {
                s.continue_response = true;
            }
            s.request_headers_open = false;
            s.request_trailers_open = false;
            status::OK
        }
        (Some(_), _) => status::BAD_ARGUMENT,
        (None, _) => status::NOT_FOUND,
    })
    .unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_close_stream(stream: u32) -> u32 {
    with_vm(|vm| match (vm.stream.as_mut(), stream) {
        (Some(s), 0 | 1) => {
            s.closed = true;
            status::OK
        }
        (Some(_), _) => status::BAD_ARGUMENT,
        (None, _) => status::NOT_FOUND,
    })
    .unwrap_or(NO_VM)
}

/// Records the reply; the stream driver sends it once the callback returns (Envoy defers it
/// the same way, until the VM call ends).
#[allow(clippy::too_many_arguments)]
#[no_mangle]
extern "C" fn proxy_send_local_response(
    status_code: u32,
    details: *const u8,
    details_len: usize,
    body: *const u8,
    body_len: usize,
    headers: *const u8,
    headers_len: usize,
    _grpc_status: i32,
) -> u32 {
    let header_bytes = unsafe { bytes(headers, headers_len) };
    let pairs = if header_bytes.is_empty() {
        Vec::new()
    } else {
        match deserialize_pairs(header_bytes) {
            Some(p) => p,
            None => return status::BAD_ARGUMENT,
        }
    };
    let Ok(status_code) = u16::try_from(status_code) else {
        return status::BAD_ARGUMENT;
    };
    let reply = LocalReplyRequest {
        status: status_code,
        details: text(details, details_len),
        headers: pairs,
        body: unsafe { bytes(body, body_len) }.to_vec(),
    };
    with_vm(|vm| match vm.stream.as_mut() {
        Some(s) => {
            // A second reply in the same callback replaces the first, as in Envoy.
            s.local_reply = Some(reply);
            status::OK
        }
        None => status::NOT_FOUND,
    })
    .unwrap_or(NO_VM)
}

// ---- HTTP call-outs --------------------------------------------------------------------

/// Dispatches a call-out. Like Envoy, refuses an unknown cluster and a call without
/// `:method`, `:path` and `:authority` with `BadArgument`; the stream driver answers it from
/// the stubs when the stream's `CallTiming` says the answer arrives.
#[allow(clippy::too_many_arguments)]
#[no_mangle]
extern "C" fn proxy_http_call(
    upstream: *const u8,
    upstream_len: usize,
    headers: *const u8,
    headers_len: usize,
    body: *const u8,
    body_len: usize,
    _trailers: *const u8,
    _trailers_len: usize,
    timeout_ms: u32,
    token_out: *mut u32,
) -> u32 {
    let cluster = text(upstream, upstream_len);
    let Some(pairs) = deserialize_pairs(unsafe { bytes(headers, headers_len) }) else {
        return status::BAD_ARGUMENT;
    };
    let has = |name: &str| pairs.iter().any(|(k, v)| k == name && !v.is_empty());
    if !(has(":method") && has(":path") && has(":authority")) {
        return status::BAD_ARGUMENT;
    }
    let body = unsafe { bytes(body, body_len) }.to_vec();
    let token = with_vm(|vm| {
        if !vm.settings.knows_call_cluster(&cluster) {
            return Err(status::BAD_ARGUMENT);
        }
        let token = vm.next_token;
        vm.next_token = vm.next_token.wrapping_add(1).max(1);
        vm.pending_calls.push(PendingCall {
            token,
            context_id: vm.effective_context,
            cluster,
            headers: pairs,
            body,
            timeout_ms,
            grpc: None,
        });
        Ok(token)
    });
    match token {
        None => NO_VM,
        Some(Err(s)) => s,
        Some(Ok(t)) => put(token_out, t),
    }
}

// ---- gRPC, foreign functions, metrics, status --------------------------------------------

/// Dispatches a unary gRPC call, answered from the stubs like an HTTP call (see
/// `super::grpc`). Like Envoy, refuses a cluster it does not know with `ParseFailure` (the
/// service argument is a cluster name, not a serialized `GrpcService`).
#[allow(clippy::too_many_arguments)]
#[no_mangle]
extern "C" fn proxy_grpc_call(
    service_def: *const u8,
    service_def_len: usize,
    service: *const u8,
    service_len: usize,
    method: *const u8,
    method_len: usize,
    metadata: *const u8,
    metadata_len: usize,
    message: *const u8,
    message_len: usize,
    timeout_ms: u32,
    token_out: *mut u32,
) -> u32 {
    const PARSE_FAILURE: u32 = 4;
    let cluster = text(service_def, service_def_len);
    let (service, method) = (text(service, service_len), text(method, method_len));
    let metadata_bytes = unsafe { bytes(metadata, metadata_len) };
    let metadata = if metadata_bytes.is_empty() {
        Vec::new()
    } else {
        match deserialize_pairs(metadata_bytes) {
            Some(p) => p,
            None => return status::BAD_ARGUMENT,
        }
    };
    let body = unsafe { bytes(message, message_len) }.to_vec();
    let token = with_vm(|vm| {
        if !vm.settings.knows_call_cluster(&cluster) {
            return Err(PARSE_FAILURE);
        }
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), format!("/{service}/{method}")),
            (":authority".to_string(), cluster.clone()),
            ("content-type".to_string(), "application/grpc".to_string()),
        ];
        headers.extend(metadata);
        let token = vm.next_token;
        vm.next_token = vm.next_token.wrapping_add(1).max(1);
        vm.pending_calls.push(PendingCall {
            token,
            context_id: vm.effective_context,
            cluster,
            headers,
            body,
            timeout_ms,
            grpc: Some((service, method)),
        });
        Ok(token)
    });
    match token {
        None => NO_VM,
        Some(Err(s)) => s,
        Some(Ok(t)) => put(token_out, t),
    }
}

#[no_mangle]
extern "C" fn proxy_grpc_stream(
    _a: *const u8,
    _b: usize,
    _c: *const u8,
    _d: usize,
    _e: *const u8,
    _f: usize,
    _g: *const u8,
    _h: usize,
    _out: *mut u32,
) -> u32 {
    status::UNIMPLEMENTED
}

#[no_mangle]
extern "C" fn proxy_grpc_send(_token: u32, _data: *const u8, _len: usize, _eos: bool) -> u32 {
    status::NOT_FOUND
}

#[no_mangle]
extern "C" fn proxy_grpc_cancel(_token: u32) -> u32 {
    status::NOT_FOUND
}

#[no_mangle]
extern "C" fn proxy_grpc_close(_token: u32) -> u32 {
    status::NOT_FOUND
}

#[no_mangle]
extern "C" fn proxy_call_foreign_function(
    _name: *const u8,
    _name_len: usize,
    _args: *const u8,
    _args_len: usize,
    _out: *mut *mut u8,
    _out_len: *mut usize,
) -> u32 {
    status::NOT_FOUND
}

#[no_mangle]
extern "C" fn proxy_get_status(code: *mut u32, out: *mut *mut u8, out_len: *mut usize) -> u32 {
    match with_vm(|vm| vm.status.clone()) {
        None => NO_VM,
        Some((c, message)) => {
            let s = put(code, c);
            if s != status::OK {
                return s;
            }
            give(message.as_bytes(), out, out_len)
        }
    }
}

#[no_mangle]
extern "C" fn proxy_define_metric(
    kind: u32,
    name: *const u8,
    name_len: usize,
    out: *mut u32,
) -> u32 {
    let name = text(name, name_len);
    match with_vm(|vm| {
        if let Some(i) = vm.metrics.iter().position(|(_, n, _)| *n == name) {
            return i as u32;
        }
        vm.metrics.push((kind, name, 0));
        (vm.metrics.len() - 1) as u32
    }) {
        Some(id) => put(out, id),
        None => NO_VM,
    }
}

#[no_mangle]
extern "C" fn proxy_increment_metric(id: u32, offset: i64) -> u32 {
    with_vm(|vm| match vm.metrics.get_mut(id as usize) {
        Some(m) => {
            m.2 = m.2.saturating_add(offset);
            status::OK
        }
        None => status::NOT_FOUND,
    })
    .unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_record_metric(id: u32, value: u64) -> u32 {
    with_vm(|vm| match vm.metrics.get_mut(id as usize) {
        Some(m) => {
            m.2 = i64::try_from(value).unwrap_or(i64::MAX);
            status::OK
        }
        None => status::NOT_FOUND,
    })
    .unwrap_or(NO_VM)
}

#[no_mangle]
extern "C" fn proxy_get_metric(id: u32, out: *mut u64) -> u32 {
    match with_vm(|vm| vm.metrics.get(id as usize).map(|m| m.2)) {
        None => NO_VM,
        Some(None) => status::NOT_FOUND,
        Some(Some(v)) => put(out, u64::try_from(v).unwrap_or(0)),
    }
}
