//! The proxy-wasm adapter: the only module that touches `proxy_wasm`.
//!
//! It turns Envoy's callbacks into calls on `Exchange` and applies what comes back with as few
//! host calls as possible: one call reads the request headers, one call per changed header
//! writes them back, and the response headers are read only when a policy needs them.
//!
//! Host calls on the request path go through the small `abi` module below rather than the SDK's
//! wrappers: the SDK panics on any status it does not expect, and a panic kills the VM (every
//! later request on that worker fails until Envoy reloads it). Here an unexpected status is
//! logged and handled.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use tollgate_core::exchange::{Exchange, Step};
use tollgate_core::host::{Host, SharedError};
use tollgate_core::http::{HeaderMap, HeaderOp, LocalReply, Request, Response};
use tollgate_core::policy::{Body, CallOut, CallResponse};
use tollgate_core::registry::Registry;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Raw proxy-wasm ABI 0.2.1 imports with statuses returned, not panicked on.
mod abi {
    use std::ptr::{null, null_mut};

    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const CAS_MISMATCH: u32 = 8;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
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
        fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            token: *mut u32,
        ) -> u32;
        fn proxy_continue_stream(stream: u32) -> u32;
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

    pub fn http_call(
        cluster: &str,
        headers: &[u8],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, u32> {
        let mut token = 0u32;
        let trailers = 0u32.to_le_bytes();
        match unsafe {
            proxy_http_call(
                cluster.as_ptr(),
                cluster.len(),
                headers.as_ptr(),
                headers.len(),
                if body.is_empty() {
                    null()
                } else {
                    body.as_ptr()
                },
                body.len(),
                trailers.as_ptr(),
                trailers.len(),
                timeout_ms,
                &mut token,
            )
        } {
            OK => Ok(token),
            status => Err(status),
        }
    }

    pub fn resume(stream: u32) -> u32 {
        unsafe { proxy_continue_stream(stream) }
    }
}

const STREAM_REQUEST: u32 = 0;

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
}

fn init_logging() {
    // Envoy's own level for the wasm component (e.g. --component-log-level wasm:debug), so
    // disabled log lines cost nothing.
    let level = proxy_wasm::hostcalls::get_log_level().unwrap_or(LogLevel::Info);
    proxy_wasm::set_log_level(level);
}

#[derive(Default)]
struct Root {
    registry: Option<Rc<Registry>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        init_logging();
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        init_logging();
        let config = abi::get_buffer(BufferType::PluginConfiguration as u32, 0, usize::MAX)
            .unwrap_or_default();
        match tollgate_core::load(&config) {
            Ok(loaded) => {
                log_warnings_once(&config, &loaded.warnings);
                log::debug!(
                    "loaded {} APIs and {} clients",
                    loaded.registry.apis().len(),
                    loaded.registry.clients().len()
                );
                self.registry = Some(Rc::new(loaded.registry));
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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            exchange: self.registry.clone().map(Exchange::new),
            pending: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Every worker VM loads the configuration; only the first to get here logs its warnings.
fn log_warnings_once(config: &[u8], warnings: &[String]) {
    if warnings.is_empty() {
        return;
    }
    let digest = tollgate_core::registry::key_digest(&String::from_utf8_lossy(config));
    let key = format!(
        "tollgate.config-warned.{}",
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if abi::get_shared(&key).is_some() || abi::set_shared(&key, b"1", 0) != abi::OK {
        return;
    }
    for w in warnings {
        log::warn!("{w}");
    }
}

/// Which stream a pending call-out has paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paused {
    RequestHeaders,
}

struct Filter {
    exchange: Option<Exchange>,
    pending: Option<Paused>,
}

impl Filter {
    /// Carries out a step taken in the request-headers phase.
    fn act_on_request(&mut self, step: Step) -> Action {
        match step {
            Step::Continue => Action::Continue,
            Step::Reply(reply) => {
                send(&reply);
                Action::Pause
            }
            Step::CallOut(call) => match dispatch(&call) {
                Ok(()) => {
                    self.pending = Some(Paused::RequestHeaders);
                    Action::Pause
                }
                Err(status) => {
                    log::error!(
                        "tollgate: call-out to cluster {} failed to start (status {status})",
                        call.cluster
                    );
                    send(&tollgate_core::errors::gateway_error_reply(
                        503,
                        &format!("A policy could not reach {}.", call.cluster),
                        false,
                    ));
                    Action::Pause
                }
            },
        }
    }

    /// Buffers a body until the end of the stream, then runs its phase once and writes back
    /// what the policies changed.
    fn on_body(&mut self, phase: BodyPhase, size: usize, end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let needed = match phase {
            BodyPhase::Request => exchange.needs_request_body(),
            BodyPhase::Response => exchange.needs_response_body(),
        };
        if !needed {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let buffer = match phase {
            BodyPhase::Request => BufferType::HttpRequestBody,
            BodyPhase::Response => BufferType::HttpResponseBody,
        } as u32;
        let mut body = Body {
            bytes: abi::get_buffer(buffer, 0, size).unwrap_or_default(),
            modified: false,
        };
        let step = match phase {
            BodyPhase::Request => exchange.on_request_body(&mut body, &mut WasmHost),
            BodyPhase::Response => exchange.on_response_body(&mut body, &mut WasmHost),
        };
        if let Step::Reply(reply) = step {
            send(&reply);
            return Action::Pause;
        }
        if body.modified {
            let status = abi::set_buffer(buffer, 0, size, &body.bytes);
            if status != abi::OK {
                log::warn!("writing the changed body failed with status {status}");
            }
        }
        Action::Continue
    }
}

#[derive(Debug, Clone, Copy)]
enum BodyPhase {
    Request,
    Response,
}

fn dispatch(call: &CallOut) -> Result<(), u32> {
    let pairs: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let timeout = u32::try_from(call.timeout.as_millis()).unwrap_or(u32::MAX);
    abi::http_call(
        &call.cluster,
        &serialize_map(&pairs),
        call.body.as_deref().unwrap_or(&[]),
        timeout,
    )
    .map(|_| ())
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _t: usize) {
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
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
        let response = CallResponse {
            status,
            headers,
            body,
        };
        if self.pending.take() != Some(Paused::RequestHeaders) {
            return;
        }
        let mut request = Request {
            method: String::new(),
            headers: read_headers(MapType::HttpRequestHeaders),
        };
        request.method = request.headers.get(":method").unwrap_or("GET").to_string();
        let step = exchange.on_call_response(&response, &mut request, &mut WasmHost);
        write_headers(MapType::HttpRequestHeaders, request.headers.take_ops());
        if self.act_on_request(step) == Action::Continue {
            abi::resume(STREAM_REQUEST);
        }
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
        let headers = read_headers(MapType::HttpRequestHeaders);
        let mut request = Request {
            method: headers.get(":method").unwrap_or("GET").to_string(),
            headers,
        };
        let mut step = exchange.on_request_headers(&mut request, &mut WasmHost);
        if step == Step::Continue && end_of_stream && exchange.needs_request_body() {
            // Envoy calls no body callback for a bodiless request: run the body phase now.
            step = exchange.on_request_body(&mut Body::default(), &mut WasmHost);
        }
        write_headers(MapType::HttpRequestHeaders, request.headers.take_ops());
        self.act_on_request(step)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(BodyPhase::Request, body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        if !exchange.needs_response_headers() && !exchange.needs_response_body() {
            return Action::Continue;
        }
        // Adding headers needs no read: one host call (and a guest allocation) saved.
        let headers = if exchange.reads_response_headers() {
            read_headers(MapType::HttpResponseHeaders)
        } else {
            HeaderMap::new()
        };
        let mut response = Response {
            status: headers
                .get(":status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            headers,
        };
        let mut step = exchange.on_response_headers(&mut response, &mut WasmHost);
        if step == Step::Continue && end_of_stream && exchange.needs_response_body() {
            // No body callback follows a bodiless response: run the body phase now.
            step = exchange.on_response_body(&mut Body::default(), &mut WasmHost);
        }
        write_headers(MapType::HttpResponseHeaders, response.headers.take_ops());
        match step {
            Step::Reply(reply) => {
                send(&reply);
                Action::Pause
            }
            // A response-body policy may still refuse the response: hold the headers until it
            // has seen the body, while a local reply can still replace them.
            _ if exchange.needs_response_body() && !end_of_stream => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(BodyPhase::Response, body_size, end_of_stream)
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
