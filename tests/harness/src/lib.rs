//! tollgate's test harness: real Envoy processes for end-to-end tests (`live`), a small HTTP
//! client (`http_client`), and the native proxy-wasm host that replays recorded traffic
//! through the real filter code (`host`, `replay`).

pub mod host;
pub mod http_client;
pub mod live;
pub mod time;
