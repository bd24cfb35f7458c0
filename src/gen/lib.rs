//! tollgate-gen: one gateway definition (YAML) -> the Envoy bootstrap with the tollgate filter,
//! one cluster per distinct (endpoint, TLS profile) with `UpstreamTlsContext`, and the file-SDS
//! secrets those clusters read. Native only; never part of the wasm filter.
//!
//! TLS settings resolve per API, most specific first: the API's `tls`, then its endpoint
//! alias, then `outbound` (the global default). Verification is on unless `verify: false` is
//! written somewhere on that path, which is reported as a warning.

pub mod definition;
pub mod envoy;
pub mod read;
pub mod resolve;
pub mod stores;
pub mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use definition::{Definition, Password};
use envoy::{ClusterPlan, Delivery, KeySecret, Render, Tls, TrustSecret};
use resolve::Planned;
use stores::{Findings, KeyMaterial, TrustMaterial};

/// Where the outputs go.
pub struct Options {
    /// `envoy.yaml` and `sds/` are written here.
    pub out_dir: PathBuf,
    /// Converted keystores (private keys, mode 0600) and truststores are written here.
    pub stores_dir: PathBuf,
    /// Check everything, write nothing.
    pub check_only: bool,
    /// Deliver the registry compiled (`registry.pb`) rather than as JSON (`registry.yaml`).
    pub registry_image: bool,
}

/// What a successful run produced.
#[derive(Debug)]
pub struct Generated {
    pub warnings: Vec<String>,
    /// Files written (unchanged files are not rewritten).
    pub written: Vec<String>,
    pub clusters: Vec<ClusterPlan>,
    /// Environment variables Envoy must be started with (keystore passwords).
    pub env_vars: Vec<String>,
    /// The filter module the configuration names: `wasm`, or `wasmLite` when the registry has
    /// no policy that verifies JWT signatures and that module exists.
    pub module: String,
}

/// Reads the definition at `path` and generates; every problem found is returned, each naming
/// the file and where in it the problem is.
pub fn generate_file(path: &Path, options: &Options) -> Result<Generated, Vec<String>> {
    let source = path.display().to_string();
    let in_file = |problems: Vec<String>| -> Vec<String> {
        problems
            .into_iter()
            .map(|p| format!("{source}: {p}"))
            .collect()
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{source}: cannot be read: {e}")])?;
    let definition = definition::read(&text).map_err(in_file)?;
    generate(&definition, &source, options).map_err(in_file)
}

/// Generates from a definition read by [`definition::read`]; its reading problems come first in
/// the list of problems, then everything else found, so one run reports them all.
pub fn generate(
    def: &Definition,
    source: &str,
    options: &Options,
) -> Result<Generated, Vec<String>> {
    let mut errors = def.problems.clone();
    let mut findings = Findings {
        warnings: Vec::new(),
        written: Vec::new(),
    };
    let mut resolution = resolve::resolve(def, &mut errors, &mut findings.warnings);
    let client_address_header = envoy::pair_client_address_header(&mut resolution.registry);

    // The filter's own loader checks the registry as Envoy will, and says which services its
    // policies call (they get clusters too).
    let plugin_json = serde_json::to_string_pretty(&resolution.registry).unwrap_or_default();
    let env_read = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let env = |name: &str| {
        env_read.borrow_mut().insert(name.to_string());
        std::env::var(name).ok()
    };
    let mut image = None;
    let mut needs_jwt = true;
    match tollgate_core::load(plugin_json.as_bytes(), &env) {
        Ok(mut loaded) => {
            needs_jwt = loaded.registry.verifies_jwt();
            findings.warnings.extend(
                std::mem::take(&mut loaded.warnings)
                    .into_iter()
                    .map(|w| format!("registry.{w}")),
            );
            resolve::plan_call_targets(
                def,
                loaded.registry.call_targets(),
                &mut resolution,
                &mut errors,
                &mut findings.warnings,
            );
            // The image is made from this load, only to be written, and only when it read no
            // environment variable (refused below).
            if options.registry_image && !options.check_only && env_read.borrow().is_empty() {
                match tollgate_core::registry::image::image_of(&mut loaded.registry) {
                    Ok(bytes) => image = Some(bytes),
                    Err(why) => errors.push(format!("registry: {why}")),
                }
            }
        }
        Err(problems) => errors.extend(problems.into_iter().map(|p| format!("registry.{p}"))),
    }
    let env_read: Vec<String> = env_read.into_inner().into_iter().collect();
    if options.registry_image && !env_read.is_empty() {
        let why = tollgate_core::registry::image::environment_refused(&env_read);
        errors.push(format!("registry: {why}"));
    }
    if !options.registry_image && env_read.is_empty() {
        findings
            .warnings
            .extend(json_delivery_advice(plugin_json.len()));
    }
    let module = module(def, needs_jwt, &mut findings.warnings);
    if options.registry_image {
        reads_this_builds_images(&module, &mut errors, &mut findings.warnings);
    }

    // Converted stores are written only when nothing else is wrong.
    let write = !options.check_only;
    let materials = inspect_stores(
        def,
        &resolution.clusters,
        &options.stores_dir,
        write && errors.is_empty(),
        &mut findings,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }

    let sds_dir = options.out_dir.join("sds");
    let plan = plan(&resolution.clusters, &materials, &sds_dir);
    let gateway = resolution.registry.get("gateway");
    let header = |name: &str| {
        gateway
            .and_then(|g| g.get(name))
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    let cluster_header = header("clusterHeader").unwrap_or_else(|| "x-tollgate-cluster".into());
    let sds_dir_text = sds_dir.display().to_string();
    let dynamic_dir = options.out_dir.join("dynamic");
    let dynamic_dir_text = dynamic_dir.display().to_string();
    let render = Render {
        source,
        node: (&def.node.id, &def.node.cluster),
        admin: (&def.admin.address, def.admin.port),
        listener: (&def.listener.address, def.listener.port),
        wasm: &module,
        route_timeout_ms: resolution.route_timeout_ms,
        local_reply_config: true,
        cluster_header: &cluster_header,
        client_address_header: &client_address_header,
        plugin_json: &plugin_json,
        clusters: &plan.clusters,
        keys: &plan.keys,
        trusts: &plan.trusts,
        sds_dir: &sds_dir_text,
        extra_clusters: "",
        delivery: Delivery::Files {
            dir: &dynamic_dir_text,
            registry: match options.registry_image {
                true => envoy::REGISTRY_IMAGE_FILE,
                false => envoy::REGISTRY_FILE,
            },
        },
        decision_log: gateway
            .and_then(|g| g.get("decisionLog"))
            .is_some_and(|v| v == &Value::Bool(true) || v.as_str() == Some("true")),
    };
    // In the order Envoy needs them when re-run against a running gateway: the secrets the
    // clusters use, the clusters the registry names, the registry; the bootstrap (unchanged by
    // a registry change, so not rewritten) last.
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for s in &plan.keys {
        files.push((
            PathBuf::from(&s.file),
            envoy::key_secret_yaml(source, s).into(),
        ));
    }
    for s in &plan.trusts {
        files.push((
            PathBuf::from(&s.file),
            envoy::trust_secret_yaml(source, s).into(),
        ));
    }
    files.push((
        dynamic_dir.join(envoy::CLUSTERS_FILE),
        envoy::clusters_yaml(&render).into(),
    ));
    files.push(match &image {
        Some(image) => (
            dynamic_dir.join(envoy::REGISTRY_IMAGE_FILE),
            envoy::registry_pb(&module, image),
        ),
        None => (
            dynamic_dir.join(envoy::REGISTRY_FILE),
            envoy::registry_yaml(&render).into(),
        ),
    });
    files.push((
        options.out_dir.join("envoy.yaml"),
        envoy::bootstrap_yaml(&render).into(),
    ));
    if write {
        // Envoy refuses to start when a watched directory is missing, even with no secret in it.
        for dir in [&sds_dir, &dynamic_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| vec![format!("creating {}: {e}", dir.display())])?;
        }
        for (path, content) in &files {
            match tools::write_atomic(path, content, false) {
                Ok(true) => findings.written.push(path.display().to_string()),
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        remove_stale_secrets(&sds_dir, &files, &mut findings.written);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Generated {
        warnings: findings.warnings,
        written: findings.written,
        clusters: plan.clusters,
        env_vars: plan.env_vars,
        module,
    })
}

/// The module Envoy loads: `tollgate-lite.wasm` when nothing in the registry needs the JWT code
/// it leaves out (V8 compiles it ~25% sooner at every start) and it is there, built from this
/// tollgate-gen's source (a lite module left over from an older build would run old code, and
/// refuse this gen's registry images), else `wasm`. A registry that gains such a policy
/// switches back on the next generation.
fn module(def: &Definition, needs_jwt: bool, warnings: &mut Vec<String>) -> String {
    let Some(lite) = def.wasm_lite.as_ref().filter(|_| !needs_jwt) else {
        return def.wasm.clone();
    };
    match of_this_build(lite) {
        Ok(true) => return lite.clone(),
        Ok(false) => {}
        Err(_) => return def.wasm.clone(),
    }
    warnings.push(format!(
        "wasmLite: {lite} is not of this tollgate-gen's build (build both modules again: scripts/lib.sh's build_wasm); using {}",
        def.wasm
    ));
    def.wasm.clone()
}

/// Registry JSON from this size on is better delivered compiled: every VM Envoy configures
/// parses it whole (~50 ms per MB at a start, in V8), and while a worker does, at an update,
/// requests wait (README → Registry scale: 194 MB took 11.7 s to start, 2 s compiled).
pub const LARGE_JSON_REGISTRY: usize = 16 << 20;

/// The advice a registry of `len` bytes of JSON gets when it is not delivered compiled.
pub fn json_delivery_advice(len: usize) -> Option<String> {
    (len >= LARGE_JSON_REGISTRY).then(|| {
        format!(
            "registry: {} MB of JSON, which every Envoy VM parses whole, and requests wait while a worker does at an update: --registry-image delivers it compiled, read between requests (README: Large registries: deliver them compiled)",
            len >> 20
        )
    })
}

/// With `--registry-image`, the module must be of this tollgate-gen's build: the filter
/// refuses an image compiled by another build, and Envoy the whole configuration with it. A
/// module that cannot be read here (a path on another machine) is not checked, and gen says so.
fn reads_this_builds_images(module: &str, errors: &mut Vec<String>, warnings: &mut Vec<String>) {
    let build = tollgate_core::registry::image::BUILD;
    match of_this_build(module) {
        Ok(true) => {}
        Ok(false) => errors.push(format!(
            "wasm: {module} is not of this tollgate-gen's build ({build}), and the filter refuses a registry image compiled by another build: build the module from this source again (scripts/lib.sh's build_wasm), or compile with the tollgate-gen of the module's release"
        )),
        Err(e) => warnings.push(format!(
            "wasm: {module} cannot be read here ({e}), so whether it reads this tollgate-gen's registry images (build {build}) is not checked"
        )),
    }
}

/// Whether the module at `path` was built from this tollgate-gen's source: it carries the build
/// fingerprint its registry-image reader compares.
fn of_this_build(path: &str) -> std::io::Result<bool> {
    let build = tollgate_core::registry::image::BUILD.as_bytes();
    Ok(std::fs::read(path)?
        .windows(build.len())
        .any(|w| w == build))
}

/// Keystore entries and truststores, inspected (and converted) for Envoy.
struct Materials {
    keys: BTreeMap<(String, Option<String>), KeyMaterial>,
    trusts: BTreeMap<String, TrustMaterial>,
}

/// Every store is inspected, used or not, so a broken one is reported before it is needed;
/// keystores once per key alias the clusters use.
fn inspect_stores(
    def: &Definition,
    clusters: &[Planned],
    stores_dir: &Path,
    write: bool,
    findings: &mut Findings,
    errors: &mut Vec<String>,
) -> Materials {
    let mut wanted: Vec<(String, Option<String>)> = clusters
        .iter()
        .filter_map(|c| c.key.profile.as_ref()?.keystore.clone())
        .collect();
    for (name, ks) in &def.keystores {
        if !wanted.iter().any(|(n, _)| n == name) {
            wanted.push((name.clone(), ks.key_alias.clone()));
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut keys = BTreeMap::new();
    for (name, alias) in wanted {
        let Some(ks) = def.keystores.get(&name) else {
            continue;
        };
        match stores::keystore(&name, ks, alias.as_deref(), stores_dir, write, findings) {
            Ok(m) => {
                keys.insert((name, alias), m);
            }
            Err(e) => errors.push(format!("keystores.{name}: {e}")),
        }
    }
    let mut trusts = BTreeMap::new();
    for (name, ts) in &def.truststores {
        match stores::truststore(name, ts, stores_dir, write, findings) {
            Ok(m) => {
                trusts.insert(name.clone(), m);
            }
            Err(e) => errors.push(format!("truststores.{name}: {e}")),
        }
    }
    Materials { keys, trusts }
}

/// The clusters and the SDS secrets they use, each secret once, in a stable order.
struct Plan {
    clusters: Vec<ClusterPlan>,
    keys: Vec<KeySecret>,
    trusts: Vec<TrustSecret>,
    env_vars: Vec<String>,
}

fn plan(planned: &[Planned], materials: &Materials, sds_dir: &Path) -> Plan {
    let mut plan = Plan {
        clusters: Vec::new(),
        keys: Vec::new(),
        trusts: Vec::new(),
        env_vars: Vec::new(),
    };
    let sds_file = |name: &str| sds_dir.join(format!("{name}.yaml")).display().to_string();
    for p in planned {
        let key = &p.key;
        let tls = match &key.profile {
            None => Tls::Plain,
            Some(profile) => {
                let key_index = profile.keystore.as_ref().and_then(|ks| {
                    let name = format!("ks_{}", stores::secret_file_stem(&ks.0, ks.1.as_deref()));
                    if let Some(pos) = plan.keys.iter().position(|s| s.name == name) {
                        return Some(pos);
                    }
                    let material = materials.keys.get(ks)?.clone();
                    if let Some(Password::Env(var)) = &material.password {
                        if !plan.env_vars.contains(var) {
                            plan.env_vars.push(var.clone());
                        }
                    }
                    plan.keys.push(KeySecret {
                        file: sds_file(&name),
                        name,
                        material,
                        origin: match &ks.1 {
                            Some(a) => format!("keystores.{} alias {a}", ks.0),
                            None => format!("keystores.{}", ks.0),
                        },
                    });
                    Some(plan.keys.len() - 1)
                });
                let trust_index = profile
                    .truststore
                    .as_ref()
                    .filter(|_| profile.verify)
                    .and_then(|ts| {
                        let name = format!("ts_{ts}");
                        if let Some(pos) = plan.trusts.iter().position(|s| s.name == name) {
                            return Some(pos);
                        }
                        plan.trusts.push(TrustSecret {
                            file: sds_file(&name),
                            name,
                            material: materials.trusts.get(ts)?.clone(),
                            origin: format!("truststores.{ts}"),
                        });
                        Some(plan.trusts.len() - 1)
                    });
                let ip = key.host.parse::<std::net::IpAddr>().is_ok();
                Tls::Tls {
                    trust: trust_index,
                    key: key_index,
                    // RFC 6066 has no SNI for IP addresses.
                    sni: (!ip).then(|| key.host.clone()),
                    san: (if ip { "IP_ADDRESS" } else { "DNS" }, key.host.clone()),
                }
            }
        };
        plan.clusters.push(ClusterPlan {
            name: p.name.clone(),
            host: key.host.clone(),
            port: key.port,
            connect: key.connect.clone(),
            tls,
            connect_timeout_ms: key.connect_timeout_ms,
            max_age_ms: key.max_age_ms,
            apis: p.apis.clone(),
            grpc: key.grpc,
        });
    }
    plan
}

/// Secrets from an earlier run that no cluster uses any more (only files tollgate-gen wrote).
fn remove_stale_secrets(dir: &Path, files: &[(PathBuf, Vec<u8>)], written: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = std::fs::read_to_string(&path)
            .is_ok_and(|t| t.starts_with("# Generated by tollgate-gen"));
        if ours && !files.iter().any(|(p, _)| *p == path) && std::fs::remove_file(&path).is_ok() {
            written.push(format!("{} (removed)", path.display()));
        }
    }
}

#[cfg(test)]
mod tests;
