//! Resolution: which endpoint and TLS profile each API gets, and the clusters that follow.
//! The most specific level wins, field by field: the API's `tls`, its endpoint alias, then
//! `outbound` (the global default).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::definition::{self, parse_duration, Definition, EndpointAlias, TlsSettings};
use super::{envoy, stores};
use tollgate_core::config::{Endpoint, PolicySpec};
use tollgate_core::json::Problems;
use tollgate_core::policy::{timeout, CallTarget};

const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_MAX_CONNECTION_AGE_MS: u64 = 600_000;
const DEFAULT_ROUTE_TIMEOUT_MS: u64 = 30_000;

/// The endpoint given to the filter's loader for an API whose endpoint alias could not be
/// resolved or has an unusable URI (that problem is reported already), so the loader checks the rest of the API
/// without also calling its endpoint missing. Nothing is generated while there are problems,
/// so it never reaches Envoy.
const STAND_IN_ENDPOINT: &str = "http://unresolved-endpoint-alias.invalid/";

/// The TLS profile an API resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Profile {
    /// Keystore name and key alias.
    pub keystore: Option<(String, Option<String>)>,
    pub truststore: Option<String>,
    pub verify: bool,
}

/// What makes two APIs share a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterKey {
    pub host: String,
    pub port: u16,
    pub connect: String,
    pub profile: Option<Profile>,
    pub connect_timeout_ms: u64,
    pub max_age_ms: u64,
    /// A gRPC service's cluster (a rate limit service): HTTP/2.
    pub grpc: bool,
}

/// One cluster to generate: its key, its name, and the APIs using it.
pub struct Planned {
    pub key: ClusterKey,
    pub name: String,
    pub apis: Vec<String>,
}

/// The definition, resolved.
pub struct Resolution {
    /// The filter configuration: generator-only API fields removed, `cluster` filled in.
    pub registry: Value,
    pub clusters: Vec<Planned>,
    pub route_timeout_ms: u64,
    /// The global connect timeout and connection age, for clusters made later.
    pub defaults: (u64, u64),
}

/// Resolves every API; problems go to `errors`, `verify: false` warnings to `warnings`.
pub fn resolve(
    def: &Definition,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Resolution {
    let route_timeout_ms = duration(
        "routeTimeout",
        Some(&def.route_timeout),
        DEFAULT_ROUTE_TIMEOUT_MS,
        errors,
    );
    let global_connect = duration(
        "outbound.connectTimeout",
        def.outbound.connect_timeout.as_ref(),
        DEFAULT_CONNECT_TIMEOUT_MS,
        errors,
    );
    let global_age = duration(
        "outbound.maxConnectionAge",
        def.outbound.max_connection_age.as_ref(),
        DEFAULT_MAX_CONNECTION_AGE_MS,
        errors,
    );
    check_refs(def, "outbound", &def.outbound.tls(), errors);

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
        check_refs(def, &path, &alias.tls(), errors);
        let connect = duration(
            &format!("{path}.connectTimeout"),
            alias.connect_timeout.as_ref(),
            global_connect,
            errors,
        );
        let age = duration(
            &format!("{path}.maxConnectionAge"),
            alias.max_connection_age.as_ref(),
            global_age,
            errors,
        );
        alias_timeouts.insert(name.clone(), (connect, age));
    }

    let mut registry = Value::Object(def.registry.clone());
    let policy_connect = policy_connect_timeouts(&registry, warnings);
    let mut clusters: Vec<Planned> = Vec::new();
    if let Some(apis) = registry.get_mut("apis").and_then(Value::as_array_mut) {
        let api_resolver = Apis {
            def,
            alias_timeouts: &alias_timeouts,
            policy_connect: &policy_connect,
            defaults: (global_connect, global_age),
        };
        for (i, api) in apis.iter_mut().enumerate() {
            let Some(obj) = api.as_object_mut() else {
                continue; // the filter's loader reports it
            };
            let path = format!("registry.apis[{i}]");
            let id = api_id(obj);
            let Some(key) = api_resolver.resolve(obj, &path, &id, errors, warnings) else {
                continue;
            };
            let name = match clusters.iter_mut().find(|c| c.key == key) {
                Some(cluster) => {
                    cluster.apis.push(id);
                    cluster.name.clone()
                }
                None => {
                    let base = cluster_name(&key);
                    let mut name = base.clone();
                    let mut n = 2;
                    while clusters.iter().any(|c| c.name == name) {
                        name = format!("{base}_{n}");
                        n += 1;
                    }
                    clusters.push(Planned {
                        key,
                        name: name.clone(),
                        apis: vec![id],
                    });
                    name
                }
            };
            obj.insert("cluster".into(), Value::String(name));
        }
    }
    Resolution {
        registry,
        clusters,
        route_timeout_ms,
        defaults: (global_connect, global_age),
    }
}

/// Clusters for the services policies call (a JWKS URL, an authorization service): each named
/// as the policy names it (its `cluster`, else `host:port` of the URL, as the filter calls it),
/// with the same outbound TLS model as backends: an endpoint alias with the same host and port
/// lends its settings, else `outbound` applies.
pub fn plan_call_targets(
    def: &Definition,
    targets: &[CallTarget],
    resolution: &mut Resolution,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    for target in targets {
        let e = &target.endpoint;
        let path = format!("call-out cluster {}", target.cluster);
        let id = format!("call-outs to {}", e.url);
        let alias = def
            .endpoints
            .values()
            .find(|a| Endpoint::parse(&a.uri).is_ok_and(|u| u.host == e.host && u.port == e.port));
        let profile = if e.https {
            let levels = [
                TlsSettings::default(),
                alias.map(EndpointAlias::tls).unwrap_or_default(),
                def.outbound.tls(),
            ];
            match resolve_profile(def, &levels, e, &id, &path) {
                Ok((profile, warning)) => {
                    warnings.extend(warning);
                    Some(profile)
                }
                Err(problem) => {
                    errors.push(problem);
                    continue;
                }
            }
        } else {
            None
        };
        let key = ClusterKey {
            host: e.host.clone(),
            port: e.port,
            connect: alias
                .and_then(|a| a.connect_to.clone())
                .unwrap_or_else(|| e.host.clone()),
            profile,
            connect_timeout_ms: resolution.defaults.0,
            max_age_ms: resolution.defaults.1,
            grpc: target.grpc,
        };
        match resolution
            .clusters
            .iter_mut()
            .find(|c| c.name == target.cluster)
        {
            Some(existing)
                if existing.key.host == key.host
                    && existing.key.port == key.port
                    && existing.key.grpc == key.grpc =>
            {
                existing.apis.push(id);
            }
            Some(existing) if existing.key.host == key.host && existing.key.port == key.port => {
                errors.push(format!(
                    "{path}: the cluster is also used for {} over {}, and one cluster speaks one protocol: name another cluster for {}",
                    existing.apis.join(", "),
                    if existing.key.grpc { "gRPC (HTTP/2)" } else { "HTTP/1.1" },
                    e.url
                ))
            }
            Some(existing) => errors.push(format!(
                "{path}: the cluster is also used for {} at {}:{}, a different host or port than {}",
                existing.apis.join(", "),
                existing.key.host,
                existing.key.port,
                e.url
            )),
            None => resolution.clusters.push(Planned {
                key,
                name: target.cluster.clone(),
                apis: vec![id],
            }),
        }
    }
}

/// The connect timeouts Timeout policies (`timeoutConnect`) ask for, per API
/// (`org/api/version`): its own `apiPolicies`' if they have one; else what the policies of the
/// contracts to it (with their plans and clients) ask for, the longest when they disagree (a
/// cluster has one connect timeout; the longest fails no contract sooner than it asked for).
fn policy_connect_timeouts(registry: &Value, warnings: &mut Vec<String>) -> BTreeMap<String, u64> {
    // The filter's loader reads the policies; its problems are reported when it loads the
    // registry for real.
    let mut problems = Problems::default();
    let env = |n: &str| std::env::var(n).ok();
    let config = tollgate_core::config::parse_value(registry, &env, &mut problems);
    let asked = |specs: &[PolicySpec]| {
        specs
            .iter()
            .filter(|s| s.kind.id == timeout::KIND.id)
            .filter_map(|s| timeout::connect_timeout_ms(&s.config))
            .next_back()
    };
    let mut out = BTreeMap::new();
    for api in &config.apis {
        let id = format!("{}/{}/{}", api.organization_id, api.api_id, api.version);
        if let Some(ms) = asked(&api.policies) {
            out.insert(id, ms);
            continue;
        }
        let mut found: Vec<(u64, &str)> = Vec::new();
        for client in &config.clients {
            for c in &client.contracts {
                if (
                    c.api_org_id.as_str(),
                    c.api_id.as_str(),
                    c.api_version.as_str(),
                ) != (
                    api.organization_id.as_str(),
                    api.api_id.as_str(),
                    api.version.as_str(),
                ) {
                    continue;
                }
                let plan = c
                    .plan
                    .as_deref()
                    .and_then(|p| config.plans.iter().find(|plan| plan.plan_id == p));
                let ms = asked(&c.policies)
                    .or_else(|| plan.and_then(|p| asked(&p.policies)))
                    .or_else(|| asked(&client.policies));
                if let Some(ms) = ms {
                    found.push((ms, &c.path));
                }
            }
        }
        let Some(longest) = found.iter().map(|(ms, _)| *ms).max() else {
            continue;
        };
        if found.iter().any(|(ms, _)| *ms != longest) {
            let each: Vec<String> = found
                .iter()
                .map(|(ms, path)| format!("registry.{path}: {ms} ms"))
                .collect();
            warnings.push(format!(
                "{id}: its contracts' Timeout policies ask for different connect timeouts ({}); its cluster gets the longest, {longest} ms (give the API its own Timeout policy to choose)",
                each.join(", ")
            ));
        }
        out.insert(id, longest);
    }
    out
}

struct Apis<'a> {
    def: &'a Definition,
    alias_timeouts: &'a BTreeMap<String, (u64, u64)>,
    /// Connect timeouts Timeout policies ask for, per API.
    policy_connect: &'a BTreeMap<String, u64>,
    /// Global connect timeout and connection age.
    defaults: (u64, u64),
}

impl Apis<'_> {
    /// One API's cluster key; removes the generator's fields (`endpointAlias`, `tls`,
    /// `connectTo`) and fills in `endpoint` from its alias. `None` when it cannot be resolved
    /// (the reason is in `errors`, or the filter's loader will name it).
    fn resolve(
        &self,
        obj: &mut Map<String, Value>,
        path: &str,
        id: &str,
        errors: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Option<ClusterKey> {
        let def = self.def;
        if obj.contains_key("cluster") {
            errors.push(format!(
                "{path}.cluster: tollgate-gen names the clusters; remove `cluster` (use endpoint, endpointAlias, tls)"
            ));
        }
        let alias_name = obj.remove("endpointAlias");
        let connect_to = obj.remove("connectTo");
        // Unreadable settings are reported; the profile is then not resolved (it would be
        // resolved without them).
        let tls = match obj.remove("tls") {
            None => Some(TlsSettings::default()),
            Some(value) => definition::read_tls(&value, &format!("{path}.tls"), errors),
        };
        if let Some(tls) = &tls {
            check_refs(def, &format!("{path}.tls"), tls, errors);
        }
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
            Some(Value::String(name)) => {
                let Some(a) = def.endpoints.get(&name) else {
                    if !def.defines("endpoints", &name) {
                        errors.push(format!(
                            "{path}.endpointAlias: unknown endpoint alias \"{name}\" (defined: {})",
                            defined(def.endpoints.keys())
                        ));
                    }
                    stand_in_endpoint(obj);
                    return None;
                };
                if obj.contains_key("endpoint") {
                    errors.push(format!("{path}: give endpoint or endpointAlias, not both"));
                }
                if Endpoint::parse(&a.uri).is_err() {
                    // Reported at the alias; the loader is not told it again.
                    stand_in_endpoint(obj);
                    return None;
                }
                obj.insert("endpoint".into(), Value::String(a.uri.clone()));
                Some((name, a))
            }
            Some(_) => {
                errors.push(format!("{path}.endpointAlias: expected a name"));
                stand_in_endpoint(obj);
                return None;
            }
        };
        // Missing or invalid: the filter's loader names the problem.
        let endpoint = Endpoint::parse(obj.get("endpoint")?.as_str()?).ok()?;
        let (connect_timeout_ms, max_age_ms) = alias
            .as_ref()
            .and_then(|(name, _)| self.alias_timeouts.get(name).copied())
            .unwrap_or(self.defaults);
        // An API's Timeout policy overrides its endpoint's connect timeout (APIs that differ
        // in it get clusters of their own).
        let connect_timeout_ms = self
            .policy_connect
            .get(id)
            .copied()
            .unwrap_or(connect_timeout_ms);
        let alias = alias.map(|(_, a)| a);
        let profile = if endpoint.https {
            // Without settings that could not be read (a misspelt truststore, say) the profile
            // would come out wrong; their problems are reported, so it is not resolved.
            let tls = tls.filter(|_| !def.incomplete.contains("outbound"))?;
            let levels = [
                tls,
                alias.map(EndpointAlias::tls).unwrap_or_default(),
                def.outbound.tls(),
            ];
            match resolve_profile(def, &levels, &endpoint, id, path) {
                Ok((profile, warning)) => {
                    warnings.extend(warning);
                    Some(profile)
                }
                Err(e) => {
                    errors.push(e);
                    return None;
                }
            }
        } else {
            if tls.as_ref().is_some_and(has_tls) {
                errors.push(format!(
                    "{path}.tls: TLS settings apply to https:// endpoints; {} is http://",
                    endpoint.url
                ));
            }
            None
        };
        Some(ClusterKey {
            connect: connect_to
                .or_else(|| alias.and_then(|a| a.connect_to.clone()))
                .unwrap_or_else(|| endpoint.host.clone()),
            host: endpoint.host,
            port: endpoint.port,
            profile,
            connect_timeout_ms,
            max_age_ms,
            grpc: false,
        })
    }
}

/// Gives the filter's loader an endpoint for an API whose alias could not be resolved.
fn stand_in_endpoint(obj: &mut Map<String, Value>) {
    if !obj.contains_key("endpoint") {
        obj.insert("endpoint".into(), Value::String(STAND_IN_ENDPOINT.into()));
    }
}

/// `org/api/version` for messages and comments.
fn api_id(obj: &Map<String, Value>) -> String {
    let field = |name: &str| match obj.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "?".into(),
    };
    format!(
        "{}/{}/{}",
        field("organizationId"),
        field("apiId"),
        field("version")
    )
}

fn duration(path: &str, value: Option<&String>, default: u64, errors: &mut Vec<String>) -> u64 {
    value.map_or(default, |v| {
        parse_duration(v).unwrap_or_else(|| {
            errors.push(format!(
                "{path}: \"{v}\" is not a duration (e.g. 500ms, 2s, 10m)"
            ));
            default
        })
    })
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
        if !def.defines("keystores", ks) {
            errors.push(format!(
                "{path}.keystore: unknown keystore \"{ks}\" (defined: {})",
                defined(def.keystores.keys())
            ));
        }
    }
    if let Some(ts) = t.truststore.as_deref() {
        if !def.defines("truststores", ts) {
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
