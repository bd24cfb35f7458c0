//! tollgate-gen: one gateway definition (YAML) -> the Envoy bootstrap with the tollgate filter,
//! one cluster per distinct (endpoint, TLS profile) with `UpstreamTlsContext`, and the file-SDS
//! secrets those clusters read. Native only (feature `gen`); never part of the wasm filter.
//!
//! TLS settings resolve per API, most specific first: the API's `tls`, then its endpoint
//! alias, then `outbound` (the global default). Verification is on unless `verify: false` is
//! written somewhere on that path, which is reported as a warning.

pub mod definition;
pub mod envoy;
pub mod stores;
pub mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::Endpoint;
use definition::{parse_duration, Definition, EndpointAlias, TlsSettings};
use envoy::{ClusterPlan, KeySecret, Render, Tls, TrustSecret};
use stores::Findings;

const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_MAX_CONNECTION_AGE_MS: u64 = 600_000;

/// Where the outputs go.
pub struct Options {
    /// `envoy.yaml` and `sds/` are written here.
    pub out_dir: PathBuf,
    /// Converted keystores (private keys, mode 0600) and truststores are written here.
    pub stores_dir: PathBuf,
    /// Check everything, write nothing.
    pub check_only: bool,
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
}

/// Reads the definition at `path` and generates; every problem found is returned, each naming
/// where it is.
pub fn generate_file(path: &Path, options: &Options) -> Result<Generated, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot be read: {e}", path.display())])?;
    let definition: Definition =
        serde_yaml::from_str(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    generate(&definition, &path.display().to_string(), options)
}

/// A name usable in cluster, secret and file names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The TLS profile an API resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Profile {
    keystore: Option<(String, Option<String>)>,
    truststore: Option<String>,
    verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ClusterKey {
    host: String,
    port: u16,
    connect: String,
    profile: Option<Profile>,
    connect_timeout_ms: u64,
    max_age_ms: u64,
}

pub fn generate(
    def: &Definition,
    source: &str,
    options: &Options,
) -> Result<Generated, Vec<String>> {
    let mut errors = Vec::new();
    let mut findings = Findings {
        warnings: Vec::new(),
        written: Vec::new(),
    };
    for (section, names) in [
        ("keystores", def.keystores.keys().collect::<Vec<_>>()),
        ("truststores", def.truststores.keys().collect()),
        ("endpoints", def.endpoints.keys().collect()),
    ] {
        for name in names {
            if !valid_name(name) {
                errors.push(format!(
                    "{section}.{name}: names may use letters, digits, '-' and '_' only"
                ));
            }
        }
    }
    let duration = |path: &str, value: Option<&String>, default: u64, errors: &mut Vec<String>| {
        value.map_or(default, |v| {
            parse_duration(v).unwrap_or_else(|| {
                errors.push(format!(
                    "{path}: \"{v}\" is not a duration (e.g. 500ms, 2s, 10m)"
                ));
                default
            })
        })
    };
    let route_timeout_ms = duration(
        "routeTimeout",
        Some(&def.route_timeout),
        30_000,
        &mut errors,
    );
    let global_connect = duration(
        "outbound.connectTimeout",
        def.outbound.connect_timeout.as_ref(),
        DEFAULT_CONNECT_TIMEOUT_MS,
        &mut errors,
    );
    let global_age = duration(
        "outbound.maxConnectionAge",
        def.outbound.max_connection_age.as_ref(),
        DEFAULT_MAX_CONNECTION_AGE_MS,
        &mut errors,
    );

    // Endpoint aliases are checked even when no API uses them yet.
    let mut alias_timeouts = BTreeMap::new();
    for (name, alias) in &def.endpoints {
        let path = format!("endpoints.{name}");
        match Endpoint::parse(&alias.uri) {
            Ok(e) if !e.https && has_tls(&alias.tls()) => errors.push(format!(
                "{path}: keystore, truststore and verify apply to https:// endpoints; {} is http://",
                alias.uri
            )),
            Ok(_) => {}
            Err(e) => errors.push(format!("{path}.uri: {e}")),
        }
        check_refs(def, &path, &alias.tls(), &mut errors);
        let connect = duration(
            &format!("{path}.connectTimeout"),
            alias.connect_timeout.as_ref(),
            global_connect,
            &mut errors,
        );
        let age = duration(
            &format!("{path}.maxConnectionAge"),
            alias.max_connection_age.as_ref(),
            global_age,
            &mut errors,
        );
        alias_timeouts.insert(name.clone(), (connect, age));
    }
    check_refs(def, "outbound", &def.outbound.tls(), &mut errors);

    // The registry, with the generator's API fields resolved and removed.
    let mut registry: Value = match serde_json::to_value(&def.registry) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            errors.push("registry: expected a mapping with apis, clients, plans, gateway".into());
            Value::Object(Default::default())
        }
        Err(e) => {
            errors.push(format!("registry: {e}"));
            Value::Object(Default::default())
        }
    };
    let mut keys: Vec<ClusterKey> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut cluster_apis: Vec<Vec<String>> = Vec::new();
    if let Some(apis) = registry.get_mut("apis").and_then(Value::as_array_mut) {
        for (i, api) in apis.iter_mut().enumerate() {
            let path = format!("registry.apis[{i}]");
            let Some(obj) = api.as_object_mut() else {
                continue; // the filter's loader reports it
            };
            let id = format!(
                "{}/{}/{}",
                obj.get("organizationId")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                obj.get("apiId").and_then(Value::as_str).unwrap_or("?"),
                obj.get("version")
                    .map(|v| v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()))
                    .unwrap_or_else(|| "?".into())
            );
            if obj.contains_key("cluster") {
                errors.push(format!(
                    "{path}.cluster: tollgate-gen names the clusters; remove `cluster` (use endpoint, endpointAlias, tls)"
                ));
            }
            let alias_name = obj.remove("endpointAlias");
            let connect_to = obj.remove("connectTo");
            let tls = match obj.remove("tls").map(serde_json::from_value::<TlsSettings>) {
                None => TlsSettings::default(),
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    errors.push(format!("{path}.tls: {e}"));
                    TlsSettings::default()
                }
            };
            check_refs(def, &format!("{path}.tls"), &tls, &mut errors);
            let connect_to = match connect_to {
                None => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    errors.push(format!("{path}.connectTo: expected a host or IP address"));
                    None
                }
            };
            let alias: Option<(String, &EndpointAlias)> = match alias_name {
                None => None,
                Some(Value::String(name)) => match def.endpoints.get(&name) {
                    Some(a) => {
                        if obj.contains_key("endpoint") {
                            errors
                                .push(format!("{path}: give endpoint or endpointAlias, not both"));
                        }
                        obj.insert("endpoint".into(), Value::String(a.uri.clone()));
                        Some((name, a))
                    }
                    None => {
                        errors.push(format!(
                            "{path}.endpointAlias: unknown endpoint alias \"{name}\" (defined: {})",
                            defined(def.endpoints.keys())
                        ));
                        continue;
                    }
                },
                Some(_) => {
                    errors.push(format!("{path}.endpointAlias: expected a name"));
                    continue;
                }
            };
            let Some(endpoint) = obj
                .get("endpoint")
                .and_then(Value::as_str)
                .and_then(|u| Endpoint::parse(u).ok())
            else {
                continue; // missing or invalid: the filter's loader names the problem
            };
            let (connect_timeout_ms, max_age_ms) = alias
                .as_ref()
                .and_then(|(name, _)| alias_timeouts.get(name).copied())
                .unwrap_or((global_connect, global_age));
            let alias = alias.map(|(_, a)| a);
            let profile = if endpoint.https {
                let levels = [
                    tls.clone(),
                    alias.map(EndpointAlias::tls).unwrap_or_default(),
                    def.outbound.tls(),
                ];
                match resolve_profile(def, &levels, &endpoint, &id, &path) {
                    Ok((profile, warning)) => {
                        findings.warnings.extend(warning);
                        Some(profile)
                    }
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
            } else {
                if has_tls(&tls) {
                    errors.push(format!(
                        "{path}.tls: TLS settings apply to https:// endpoints; {} is http://",
                        endpoint.url
                    ));
                }
                None
            };
            let key = ClusterKey {
                host: endpoint.host.clone(),
                port: endpoint.port,
                connect: connect_to
                    .or_else(|| alias.and_then(|a| a.connect_to.clone()))
                    .unwrap_or_else(|| endpoint.host.clone()),
                profile,
                connect_timeout_ms,
                max_age_ms,
            };
            let index = match keys.iter().position(|k| *k == key) {
                Some(index) => index,
                None => {
                    let base = cluster_name(&key);
                    let mut name = base.clone();
                    let mut n = 2;
                    while names.contains(&name) {
                        name = format!("{base}_{n}");
                        n += 1;
                    }
                    keys.push(key);
                    names.push(name);
                    cluster_apis.push(Vec::new());
                    keys.len() - 1
                }
            };
            cluster_apis[index].push(id);
            obj.insert("cluster".into(), Value::String(names[index].clone()));
        }
    }

    // The filter's own loader checks the registry as Envoy will.
    let plugin_json = serde_json::to_string_pretty(&registry).unwrap_or_default();
    match crate::load(plugin_json.as_bytes()) {
        Ok(loaded) => findings
            .warnings
            .extend(loaded.warnings.into_iter().map(|w| format!("registry.{w}"))),
        Err(problems) => errors.extend(problems.into_iter().map(|p| format!("registry.{p}"))),
    }
    // Every store is inspected, used or not, so a broken one is reported before it is needed.
    // Converted stores are written only when nothing else is wrong.
    let write = !options.check_only;
    let write_stores = write && errors.is_empty();
    let stores_dir = &options.stores_dir;
    let mut key_materials = BTreeMap::new();
    let mut wanted: Vec<(String, Option<String>)> = keys
        .iter()
        .filter_map(|k| k.profile.as_ref()?.keystore.clone())
        .collect();
    for (name, ks) in &def.keystores {
        if !wanted.iter().any(|(n, _)| n == name) {
            wanted.push((name.clone(), ks.key_alias.clone()));
        }
    }
    wanted.sort();
    wanted.dedup();
    for (name, alias) in wanted {
        let Some(ks) = def.keystores.get(&name) else {
            continue;
        };
        match stores::keystore(
            &name,
            ks,
            alias.as_deref(),
            stores_dir,
            write_stores,
            &mut findings,
        ) {
            Ok(m) => {
                key_materials.insert((name, alias), m);
            }
            Err(e) => errors.push(format!("keystores.{name}: {e}")),
        }
    }
    let mut trust_materials = BTreeMap::new();
    for (name, ts) in &def.truststores {
        match stores::truststore(name, ts, stores_dir, write_stores, &mut findings) {
            Ok(m) => {
                trust_materials.insert(name.clone(), m);
            }
            Err(e) => errors.push(format!("truststores.{name}: {e}")),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }

    // Secrets, in a stable order, and the clusters referring to them.
    let sds_dir = options.out_dir.join("sds");
    let sds_dir_text = sds_dir.display().to_string();
    let mut key_secrets: Vec<KeySecret> = Vec::new();
    let mut trust_secrets: Vec<TrustSecret> = Vec::new();
    let mut clusters = Vec::new();
    let mut env_vars = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let tls = match &key.profile {
            None => Tls::Plain,
            Some(p) => {
                let key_index = p.keystore.as_ref().and_then(|ks| {
                    let material = key_materials.get(ks)?.clone();
                    let stem = stores::secret_file_stem(&ks.0, ks.1.as_deref());
                    let name = format!("ks_{stem}");
                    if let Some(pos) = key_secrets.iter().position(|s| s.name == name) {
                        return Some(pos);
                    }
                    if let Some(definition::Password::Env(var)) = &material.password {
                        if !env_vars.contains(var) {
                            env_vars.push(var.clone());
                        }
                    }
                    key_secrets.push(KeySecret {
                        file: sds_dir.join(format!("{name}.yaml")).display().to_string(),
                        name,
                        material,
                        origin: match &ks.1 {
                            Some(a) => format!("keystores.{} alias {a}", ks.0),
                            None => format!("keystores.{}", ks.0),
                        },
                    });
                    Some(key_secrets.len() - 1)
                });
                let trust_index = if p.verify {
                    p.truststore.as_ref().and_then(|ts| {
                        let name = format!("ts_{ts}");
                        if let Some(pos) = trust_secrets.iter().position(|s| s.name == name) {
                            return Some(pos);
                        }
                        trust_secrets.push(TrustSecret {
                            file: sds_dir.join(format!("{name}.yaml")).display().to_string(),
                            name,
                            material: trust_materials.get(ts)?.clone(),
                            origin: format!("truststores.{ts}"),
                        });
                        Some(trust_secrets.len() - 1)
                    })
                } else {
                    None
                };
                let ip = key.host.parse::<std::net::IpAddr>().is_ok();
                Tls::Tls {
                    trust: trust_index,
                    key: key_index,
                    sni: (!ip).then(|| key.host.clone()),
                    san: (if ip { "IP_ADDRESS" } else { "DNS" }, key.host.clone()),
                }
            }
        };
        clusters.push(ClusterPlan {
            name: names[i].clone(),
            host: key.host.clone(),
            port: key.port,
            connect: key.connect.clone(),
            tls,
            connect_timeout_ms: key.connect_timeout_ms,
            max_age_ms: key.max_age_ms,
            apis: cluster_apis[i].clone(),
        });
    }

    let cluster_header = registry
        .get("gateway")
        .and_then(|g| g.get("clusterHeader"))
        .and_then(Value::as_str)
        .unwrap_or("x-tollgate-cluster")
        .to_ascii_lowercase();
    let client_address_header = registry
        .get("gateway")
        .and_then(|g| g.get("clientAddressHeader"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let render = Render {
        source,
        node: (&def.node.id, &def.node.cluster),
        admin: (&def.admin.address, def.admin.port),
        listener: (&def.listener.address, def.listener.port),
        wasm: &def.wasm,
        route_timeout_ms,
        cluster_header: &cluster_header,
        client_address_header: client_address_header.as_deref(),
        plugin_json: &plugin_json,
        clusters: &clusters,
        keys: &key_secrets,
        trusts: &trust_secrets,
        sds_dir: &sds_dir_text,
    };
    let mut files: Vec<(PathBuf, String)> = vec![(
        options.out_dir.join("envoy.yaml"),
        envoy::bootstrap_yaml(&render),
    )];
    for s in &key_secrets {
        files.push((PathBuf::from(&s.file), envoy::key_secret_yaml(source, s)));
    }
    for s in &trust_secrets {
        files.push((PathBuf::from(&s.file), envoy::trust_secret_yaml(source, s)));
    }
    if write {
        // Envoy refuses to start when a watched directory is missing, even with no secret in it.
        std::fs::create_dir_all(&sds_dir)
            .map_err(|e| vec![format!("creating {}: {e}", sds_dir.display())])?;
        for (path, content) in &files {
            match tools::write_atomic(path, content.as_bytes(), false) {
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
        clusters,
        env_vars,
    })
}

/// Secrets from an earlier run that no cluster uses any more (only files tollgate-gen wrote).
fn remove_stale_secrets(dir: &Path, files: &[(PathBuf, String)], written: &mut Vec<String>) {
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

fn has_tls(t: &TlsSettings) -> bool {
    t.keystore.is_some() || t.key_alias.is_some() || t.truststore.is_some() || t.verify.is_some()
}

fn defined<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<&str> = names.map(String::as_str).collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// Keystore and truststore names referenced at one level must exist.
fn check_refs(def: &Definition, path: &str, t: &TlsSettings, errors: &mut Vec<String>) {
    if let Some(ks) = t.keystore.as_deref().filter(|k| *k != "none") {
        if !def.keystores.contains_key(ks) {
            errors.push(format!(
                "{path}.keystore: unknown keystore \"{ks}\" (defined: {})",
                defined(def.keystores.keys())
            ));
        }
    }
    if let Some(ts) = t.truststore.as_deref() {
        if !def.truststores.contains_key(ts) {
            errors.push(format!(
                "{path}.truststore: unknown truststore \"{ts}\" (defined: {})",
                defined(def.truststores.keys())
            ));
        }
    }
    if t.key_alias.is_some() && t.keystore.is_none() {
        errors.push(format!(
            "{path}.keyAlias: give it with the keystore it belongs to"
        ));
    }
}

/// The most specific level that sets a field wins; `keyAlias` comes with its keystore.
fn resolve_profile(
    def: &Definition,
    levels: &[TlsSettings],
    endpoint: &Endpoint,
    id: &str,
    path: &str,
) -> Result<(Profile, Option<String>), String> {
    let verify = levels.iter().find_map(|l| l.verify).unwrap_or(true);
    let keystore = levels.iter().find(|l| l.keystore.is_some()).and_then(|l| {
        let ks = l.keystore.clone()?;
        if ks == "none" {
            return None;
        }
        let alias = l
            .key_alias
            .clone()
            .or_else(|| def.keystores.get(&ks).and_then(|k| k.key_alias.clone()));
        Some((ks, alias))
    });
    let truststore = levels.iter().find_map(|l| l.truststore.clone());
    let mut warning = None;
    if verify && truststore.is_none() {
        return Err(format!(
            "{path}: https endpoint {} ({id}) has no truststore to verify the server with: set outbound.truststore, a truststore on its endpoint alias or tls.truststore (or, knowingly, verify: false)",
            endpoint.url
        ));
    }
    if !verify {
        warning = Some(format!(
            "WARNING: {path} ({id}): server certificate verification is OFF for {} (verify: false); any server can impersonate this backend",
            endpoint.url
        ));
    }
    Ok((
        Profile {
            keystore,
            truststore: if verify { truststore } else { None },
            verify,
        },
        warning,
    ))
}

/// `<host>_<port>` for plain HTTP; TLS adds `tls` or `mtls`, the truststore (or `noverify`) and
/// the keystore (and alias): readable in stats, and stable while the definition is.
fn cluster_name(k: &ClusterKey) -> String {
    let mut parts = vec![
        envoy::sanitize(&k.host.replace('.', "-")),
        k.port.to_string(),
    ];
    if let Some(p) = &k.profile {
        parts.push(if p.keystore.is_some() { "mtls" } else { "tls" }.into());
        parts.push(match &p.truststore {
            Some(ts) if p.verify => ts.clone(),
            _ => "noverify".into(),
        });
        if let Some((ks, alias)) = &p.keystore {
            parts.push(envoy::sanitize(&stores::secret_file_stem(
                ks,
                alias.as_deref(),
            )));
        }
    }
    parts.join("_")
}

#[cfg(test)]
mod tests;
