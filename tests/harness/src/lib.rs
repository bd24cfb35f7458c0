//! tollgate's test harness: real Envoy processes for end-to-end tests (`live`), a small HTTP
//! client (`http_client`), the native proxy-wasm host that runs the real filter code (`host`),
//! and the replay of recorded traffic through it (`replay`, `cli`); Apiman's `.resttest` files
//! (`resttest`) for tollgate-registry's tests.

pub mod cli;
pub mod host;
pub mod http_client;
pub mod live;
pub mod replay;
pub mod resttest;
pub mod time;
