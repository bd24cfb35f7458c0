//! tollgate: API management for Envoy.
//!
//! A proxy-wasm HTTP filter that makes Envoy behave like an Apiman gateway: it resolves API keys
//! to client contracts, runs the policy chain and routes to the API's backend. This crate is
//! only the adapter between Envoy's proxy-wasm callbacks and the engine in `tollgate-core`.

pub mod adapter;
mod stats;
