//! tollgate: API management for Envoy.
//!
//! A proxy-wasm HTTP filter that makes Envoy behave like an Apiman gateway: it resolves API keys
//! to client contracts, runs the policy chain and routes to the API's backend.
//!
//! Layout: `config` parses and validates the configuration, `registry` compiles it, `policy`
//! holds one module per policy, `chain` runs policies per phase, `exchange` handles one request,
//! and `adapter` is the only module that talks to the proxy-wasm host.

pub mod adapter;
pub mod chain;
pub mod client_ip;
pub mod config;
pub mod errors;
pub mod exchange;
#[cfg(feature = "gen")]
pub mod gen;
pub mod host;
pub mod http;
pub mod pattern;
pub mod policy;
pub mod registry;

use registry::Registry;

/// A configuration that loaded, with the warnings worth telling its author.
pub struct Loaded {
    pub registry: Registry,
    pub warnings: Vec<String>,
}

/// Parses, validates and compiles a configuration document. On failure, returns one line per
/// problem, each naming its JSON path.
pub fn load(bytes: &[u8]) -> Result<Loaded, Vec<String>> {
    let (config, mut problems) = config::parse(bytes);
    // Cross-references are checked even when parsing found problems, so one load reports all.
    match Registry::build(config, &mut problems) {
        Some(registry) if problems.is_ok() => Ok(Loaded {
            registry,
            warnings: problems.warnings,
        }),
        _ => Err(problems.errors),
    }
}
