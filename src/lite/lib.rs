//! `tollgate-lite.wasm`: the same filter as `tollgate.wasm` (the same adapter source, compiled
//! here) over tollgate-core without its `jwt` feature. The JWT and Keycloak OAuth policies,
//! with their signature crypto, are about a quarter of the module's code, and Envoy's V8
//! compiles every function before the first request; a registry that names either policy is
//! refused at load, naming `tollgate.wasm`. tollgate-gen picks this module for registries that
//! do without them.

#[path = "../adapter.rs"]
pub mod adapter;
#[path = "../stats.rs"]
mod stats;
