//! The configuration schema: Apiman's gateway registry beans (`apis`, `clients` with
//! `contracts`), tollgate's `plans` and `gateway` settings.
//!
//! Parsing is lenient where Apiman is (unknown fields are warnings, numbers may be strings) and
//! strict where it matters (every policy compiles, every reference resolves). All problems are
//! collected with their JSON path, so a refused configuration says everything that is wrong.

pub mod apiman;
pub mod fast;
pub mod stream;

use serde_json::Value;

use crate::http::is_token_byte;
use crate::json::{Fields, Problems};
use crate::model::strip_prefix_ignore_case;
pub use crate::model::{Endpoint, GatewaySettings};
use crate::policy::PolicyKind;

/// A policy as configured, not yet compiled: where it was found, its kind, and its
/// configuration (with `${...}` properties already substituted). The registry compiles it.
#[derive(Clone)]
pub struct PolicySpec {
    pub path: String,
    pub kind: &'static PolicyKind,
    /// `config` or `policyJsonConfig`: how the configuration's own paths are reported.
    pub config_field: &'static str,
    pub config: Value,
}

/// Looks up environment variables: the VM's environment in Envoy (`vm_config.environment_variables`),
/// a map in tests. Configuration reads the environment only through this.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// An environment with nothing in it.
pub fn no_env(_: &str) -> Option<String> {
    None
}

/// An Apiman `Api` bean plus tollgate's `cluster`.
#[derive(Clone)]
pub struct ApiConfig {
    pub path: String,
    pub organization_id: String,
    pub api_id: String,
    pub version: String,
    pub public: bool,
    pub endpoint: Option<Endpoint>,
    pub cluster: Option<String>,
    pub disable_keys_strip: bool,
    /// `endpointContentType` is `xml`: errors are written as XML, as Apiman does.
    pub xml: bool,
    /// Upstream BASIC credentials from `endpointProperties` (`authorization.type: basic`).
    pub basic_auth: Option<(String, String)>,
    pub policies: Vec<PolicySpec>,
}

/// An Apiman `Client` bean plus tollgate's `apiKeyHash` and client-level `policies`.
#[derive(Clone)]
pub struct ClientConfig {
    pub path: String,
    pub organization_id: String,
    pub client_id: String,
    pub version: String,
    pub key: ClientKey,
    /// Where the key was configured, for messages (`clients[0].apiKey`).
    pub key_path: String,
    pub policies: Vec<PolicySpec>,
    pub contracts: Vec<ContractConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    Clear(String),
    /// SHA-256 of the key.
    Sha256([u8; 32]),
    Missing,
}

#[derive(Clone)]
pub struct ContractConfig {
    pub path: String,
    pub api_org_id: String,
    pub api_id: String,
    pub api_version: String,
    pub plan: Option<String>,
    pub policies: Vec<PolicySpec>,
    /// Whether the contract carries a `policies` list at all (an Apiman export always does,
    /// even an empty one).
    pub lists_policies: bool,
    /// Apiman 1.x kept the API key on each contract rather than on the client.
    pub api_key: Option<String>,
}

/// A tollgate plan: policies shared by every contract that names it.
#[derive(Clone)]
pub struct PlanConfig {
    pub path: String,
    pub plan_id: String,
    pub policies: Vec<PolicySpec>,
}

/// A parsed configuration; cross-references are checked when the registry is built from it.
#[derive(Clone, Default)]
pub struct GatewayConfig {
    pub apis: Vec<ApiConfig>,
    pub clients: Vec<ClientConfig>,
    pub plans: Vec<PlanConfig>,
    pub gateway: GatewaySettings,
}

/// A configuration document that can be walked more than once without holding it whole (the
/// plugin configuration is read from the host in chunks).
pub trait Document {
    /// Walks the document once (see `stream::walk`); the error says where and why.
    fn walk(&self, pass: stream::Pass, sink: &mut dyn FnMut(stream::Item)) -> Result<(), String>;
}

/// A document in memory.
pub struct Bytes<'a>(pub &'a [u8]);

impl Document for Bytes<'_> {
    fn walk(&self, pass: stream::Pass, sink: &mut dyn FnMut(stream::Item)) -> Result<(), String> {
        stream::walk(self.0, pass, sink)
    }
}

/// A document read through `std::io::Read`, opened anew for each walk.
pub struct ReadDocument<F>(pub F);

impl<F, R> Document for ReadDocument<F>
where
    F: Fn() -> R,
    R: std::io::Read,
{
    fn walk(&self, pass: stream::Pass, sink: &mut dyn FnMut(stream::Item)) -> Result<(), String> {
        stream::walk((self.0)(), pass, sink)
    }
}

/// Reads and compiles a configuration document into a registry, streaming its clients (see
/// `stream`). Every problem is collected with its JSON path.
pub fn load_document(
    doc: &dyn Document,
    env: Env,
    problems: &mut Problems,
) -> Option<crate::registry::Registry> {
    use stream::{Item, Pass};
    let (mut builder, client_count, head) = load_catalogue(doc, env, problems)?;
    builder.keep_recipe(head.to_string());
    builder.reserve_clients(client_count);
    // What this closure calls is `#[inline(never)]`, so V8 compiles pieces rather than one
    // large function at Envoy's start (docs/performance.md → Start-up).
    let walked = doc.walk(Pass::Clients, &mut |item| {
        let (i, v) = match item {
            Item::RawClient(i, text) => {
                if add_fast(&mut builder, text, i, problems) {
                    return;
                }
                match serde_json::from_str::<Value>(text) {
                    Ok(v) => (i, v),
                    Err(e) => {
                        problems.error(&format!("clients[{i}]"), format!("not valid JSON: {e}"));
                        return;
                    }
                }
            }
            Item::InvalidClient(i, why) => {
                problems.error(&format!("clients[{i}]"), why);
                return;
            }
            _ => return,
        };
        if let Some(client) = parse_client(&v, &format!("clients[{i}]"), env, problems) {
            for part in split_by_contract_keys(client) {
                builder.add_client(&part, i, problems);
            }
        }
    });
    if let Err(e) = walked {
        problems.error("(configuration)", format!("not valid JSON: {e}"));
        return None;
    }
    builder.finish(problems)
}

/// The first pass over a document: its gateway settings, APIs and plans, compiled into a builder
/// ready for the clients; the number of clients; and those sections as they were written (the
/// registry image carries them).
fn load_catalogue<'e>(
    doc: &dyn Document,
    env: Env<'e>,
    problems: &mut Problems,
) -> Option<(crate::registry::Builder<'e>, usize, Value)> {
    use stream::{Item, Pass, Section};
    let mut settings = GatewaySettings::default();
    let mut apis = Vec::new();
    let mut plans = Vec::new();
    let mut head = serde_json::Map::new();
    let (mut api_values, mut plan_values) = (Vec::new(), Vec::new());
    let mut client_count = 0;
    let walked = doc.walk(Pass::Catalogue, &mut |item| match item {
        Item::Gateway(v) => {
            if let Some(mut g) = Fields::of(&v, "gateway", problems) {
                settings = parse_settings(&mut g, problems);
                g.finish(problems);
            }
            head.insert("gateway".into(), v);
        }
        Item::Entry(Section::Apis, i, v) => {
            if let Some(api) = parse_api(&v, &format!("apis[{i}]"), env, problems) {
                apis.push(api);
            }
            api_values.push(v);
        }
        Item::Entry(Section::Plans, i, v) => {
            if let Some(plan) = parse_plan(&v, &format!("plans[{i}]"), env, problems) {
                plans.push(plan);
            }
            plan_values.push(v);
        }
        Item::Entry(Section::Clients, _, _) | Item::RawClient(..) | Item::InvalidClient(..) => {}
        Item::ClientCount(n) => client_count = n,
        Item::Unknown(key) => problems.warning(&key, "unknown field ignored"),
        Item::NotAnArray(section, what) => {
            problems.error(section.name(), format!("expected an array, found {what}"))
        }
    });
    if let Err(e) = walked {
        problems.error(
            "(configuration)",
            format!("not valid JSON: {e} (the plugin configuration must be one JSON object)"),
        );
        return None;
    }
    let mut builder = crate::registry::Builder::new(settings, env);
    for plan in &plans {
        builder.add_plan(plan, problems);
    }
    for api in &apis {
        builder.add_api(api, problems);
    }
    head.insert("apis".into(), Value::Array(api_values));
    head.insert("plans".into(), Value::Array(plan_values));
    Some((builder, client_count, Value::Object(head)))
}

/// A builder with the gateway settings, APIs and plans of `head` (a registry image's), ready
/// for the image's clients.
pub(crate) fn load_head<'e>(
    head: &[u8],
    env: Env<'e>,
    problems: &mut Problems,
) -> Option<crate::registry::Builder<'e>> {
    load_catalogue(&Bytes(head), env, problems).map(|(builder, _, _)| builder)
}

/// Adds the plan `plans[index]` of a registry image (its JSON text) to `builder`.
pub(crate) fn load_plan(
    text: &str,
    index: usize,
    env: Env,
    builder: &mut crate::registry::Builder,
    problems: &mut Problems,
) {
    let path = format!("plans[{index}]");
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            if let Some(plan) = parse_plan(&v, &path, env, problems) {
                builder.add_plan(&plan, problems);
            }
        }
        Err(e) => problems.error(&path, format!("not valid JSON: {e}")),
    }
}

/// Adds the client whose text is `text` by the fast reader, if it can take it (see `fast`).
#[inline(never)]
fn add_fast(
    builder: &mut crate::registry::Builder,
    text: &str,
    i: usize,
    problems: &mut Problems,
) -> bool {
    use crate::registry::{ClientParts, ContractParts, Path};
    let Ok(client) = serde_json::from_str::<fast::Client>(text) else {
        return false;
    };
    if !client.plain() {
        return false;
    }
    let client_path = || format!("clients[{i}]");
    let key_path = || format!("clients[{i}].apiKey");
    let contract_paths: Vec<Box<dyn Fn() -> String>> = (0..client.contracts.len())
        .map(|j| Box::new(move || format!("clients[{i}].contracts[{j}]")) as _)
        .collect();
    let mut contracts = Vec::with_capacity(client.contracts.len());
    for (j, c) in client.contracts.iter().enumerate() {
        let mut policies = Vec::new();
        let mut refused = false;
        for (k, p) in c.policies.iter().flatten().enumerate() {
            let path = move || format!("clients[{i}].contracts[{j}].policies[{k}]");
            match builder.compile_apiman_policy(
                &p.policy_impl,
                &p.policy_json_config,
                &path,
                problems,
            ) {
                Some(policy) => policies.push(policy),
                None => refused = true,
            }
        }
        contracts.push(ContractParts {
            api: (&c.api_org_id, &c.api_id, &c.api_version),
            plan: c.plan.as_deref().filter(|p| !p.trim().is_empty()),
            gives_policies: !policies.is_empty() || refused,
            policies,
            lists_policies: c.policies.is_some(),
            path: Path::Lazy(&contract_paths[j]),
        });
    }
    builder.add_parts(
        ClientParts {
            identity: crate::model::ClientIdentity {
                organization_id: &client.organization_id,
                client_id: &client.client_id,
                version: &client.version,
            },
            digest: Some(crate::registry::key_digest(&client.api_key)),
            path: Path::Lazy(&client_path),
            key_path: Path::Lazy(&key_path),
            policies: Vec::new(),
            contracts,
            source: i,
        },
        problems,
    );
    true
}

/// Parses a configuration document. Returns what could be parsed plus every problem found.
pub fn parse(bytes: &[u8], env: Env) -> (GatewayConfig, Problems) {
    let mut problems = Problems::default();
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            problems.error(
                "(configuration)",
                format!("not valid JSON: {e} (the plugin configuration must be one JSON object)"),
            );
            return (GatewayConfig::default(), problems);
        }
    };
    let config = parse_value(&value, env, &mut problems);
    (config, problems)
}

pub fn parse_value(value: &Value, env: Env, problems: &mut Problems) -> GatewayConfig {
    let mut config = GatewayConfig::default();
    let Some(mut top) = Fields::of(value, "", problems) else {
        return config;
    };
    if let Some(mut g) = top.object(&["gateway"], problems) {
        config.gateway = parse_settings(&mut g, problems);
        g.finish(problems);
    }
    for (path, v) in top.array(&["apis"], problems) {
        if let Some(api) = parse_api(v, &path, env, problems) {
            config.apis.push(api);
        }
    }
    for (path, v) in top.array(&["clients"], problems) {
        if let Some(client) = parse_client(v, &path, env, problems) {
            config.clients.extend(split_by_contract_keys(client));
        }
    }
    for (path, v) in top.array(&["plans"], problems) {
        if let Some(plan) = parse_plan(v, &path, env, problems) {
            config.plans.push(plan);
        }
    }
    top.finish(problems);
    config
}

fn parse_settings(g: &mut Fields, problems: &mut Problems) -> GatewaySettings {
    let mut s = GatewaySettings::default();
    if let Some(h) = header_name(g, &["apiKeyHeader"], problems) {
        s.api_key_header = h;
    }
    if let Some(q) = g.string(&["apiKeyQueryParam", "apiKeyQueryParameter"], problems) {
        if q.trim().is_empty() {
            problems.error(&g.field_path("apiKeyQueryParam"), "must not be empty");
        } else {
            s.api_key_query_param = q.trim().to_string();
        }
    }
    if let Some(h) = header_name(g, &["clusterHeader"], problems) {
        s.cluster_header = h;
    }
    s.client_address_header = header_name(g, &["clientAddressHeader"], problems);
    if let Some(mut m) = g.object(&["metrics"], problems) {
        if let Some(per_client) = m.bool(&["perClient"], problems) {
            s.metrics.per_client = per_client;
        }
        if let Some(max) = m.integer(&["maxSeries"], problems) {
            match usize::try_from(max) {
                Ok(n) if (10..=1_000_000).contains(&n) => s.metrics.max_series = n,
                _ => problems.error(&m.field_path("maxSeries"), "must be 10 to 1000000"),
            }
        }
        m.finish(problems);
    }
    if let Some(on) = g.bool(&["decisionLog"], problems) {
        s.decision_log = on;
    }
    for (path, text) in g.strings(&["trustedProxies"], problems) {
        match parse_network(&text) {
            Some(net) => s.trusted_proxies.networks.push(net),
            None => problems.error(&path, format!("\"{text}\" is not an IP address or CIDR")),
        }
    }
    if let Some(hops) = g.integer(&["trustedHops", "xffTrustedHops"], problems) {
        match usize::try_from(hops) {
            Ok(h) => s.trusted_proxies.hops = h,
            Err(_) => problems.error(&g.field_path("trustedHops"), "must not be negative"),
        }
    }
    s
}

/// An IP or CIDR as an `IpNet` (a bare address is a /32 or /128).
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let t = text.trim();
    t.parse::<ipnet::IpNet>()
        .ok()
        .map(|n| n.trunc())
        .or_else(|| t.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// A header-name setting: a non-empty HTTP token, returned lower-cased.
fn header_name(f: &mut Fields, names: &[&str], problems: &mut Problems) -> Option<String> {
    let value = f.string(names, problems)?;
    let name = value.trim();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        problems.error(
            &f.field_path(names[0]),
            format!("\"{value}\" is not a valid header name"),
        );
        return None;
    }
    Some(name.to_ascii_lowercase())
}

fn required(f: &mut Fields, names: &[&str], problems: &mut Problems) -> String {
    match f.string(names, problems) {
        Some(s) if !s.trim().is_empty() => s,
        Some(_) => {
            problems.error(&f.field_path(names[0]), "must not be empty");
            String::new()
        }
        None => {
            if !f.has(names[0]) {
                problems.error(&f.field_path(names[0]), "is required");
            }
            String::new()
        }
    }
}

fn parse_api(v: &Value, path: &str, env: Env, problems: &mut Problems) -> Option<ApiConfig> {
    let mut f = Fields::of(v, path, problems)?;
    let organization_id = required(&mut f, &["organizationId"], problems);
    let api_id = required(&mut f, &["apiId"], problems);
    let version = required(&mut f, &["version"], problems);
    let public = f
        .bool(&["publicAPI", "publicApi"], problems)
        .unwrap_or(false);
    let endpoint = match f.string(&["endpoint"], problems) {
        Some(url) => match Endpoint::parse(&url) {
            Ok(e) => Some(e),
            Err(msg) => {
                problems.error(&f.field_path("endpoint"), msg);
                None
            }
        },
        None => {
            problems.error(&f.field_path("endpoint"), "is required");
            None
        }
    };
    let cluster = f
        .string(&["cluster"], problems)
        .map(|c| c.trim().to_string());
    if cluster.as_deref() == Some("") {
        problems.error(&f.field_path("cluster"), "must not be empty");
    }
    let disable_keys_strip = f
        .bool(&["disableKeysStrip", "keysStrippingDisabled"], problems)
        .unwrap_or(false);
    let xml = f
        .string(&["endpointContentType"], problems)
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("xml"));
    f.ignore(&["endpointType"]);
    let basic_auth = f
        .object(&["endpointProperties"], problems)
        .and_then(|props| endpoint_basic_auth(props, problems));
    f.ignore(&["parsePayload", "maxPayloadBufferSize", "tenantId"]);
    let policies = parse_policies(&mut f, &["apiPolicies", "policies"], env, problems);
    f.finish(problems);
    Some(ApiConfig {
        path: path.to_string(),
        organization_id,
        api_id,
        version,
        public,
        endpoint,
        cluster,
        disable_keys_strip,
        xml,
        basic_auth,
        policies,
    })
}

/// Apiman's endpoint security: `authorization.type: basic` with `basic-auth.username` and
/// `basic-auth.password` makes the gateway send those credentials to the backend.
fn endpoint_basic_auth(mut props: Fields, problems: &mut Problems) -> Option<(String, String)> {
    let kind = props.string(&["authorization.type"], problems);
    let user = props.string(&["basic-auth.username"], problems);
    let password = props.string(&["basic-auth.password"], problems);
    // Other endpoint properties are passed through by Apiman to connectors; they are free-form,
    // so they are not reported as unknown.
    props.ignore(&["basic-auth.requireSSL"]);
    match kind.as_deref().map(str::trim) {
        Some(k) if k.eq_ignore_ascii_case("basic") => match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            _ => {
                problems.error(
                    props.path(),
                    "authorization.type is basic but basic-auth.username or basic-auth.password is missing",
                );
                None
            }
        },
        _ => None,
    }
}

#[inline(never)]
fn parse_client(v: &Value, path: &str, env: Env, problems: &mut Problems) -> Option<ClientConfig> {
    let mut f = Fields::of(v, path, problems)?;
    let organization_id = required(&mut f, &["organizationId"], problems);
    let client_id = required(&mut f, &["clientId"], problems);
    let version = required(&mut f, &["version"], problems);
    let clear = f.string(&["apiKey"], problems);
    let hashed = f.string(&["apiKeyHash"], problems);
    let key = match (clear, hashed) {
        (Some(_), Some(_)) => {
            problems.error(path, "give apiKey or apiKeyHash, not both");
            ClientKey::Missing
        }
        (Some(k), None) if k.is_empty() => {
            problems.error(&f.field_path("apiKey"), "must not be empty");
            ClientKey::Missing
        }
        (Some(k), None) => ClientKey::Clear(k),
        (None, Some(h)) => match parse_key_hash(&h) {
            Some(digest) => ClientKey::Sha256(digest),
            None => {
                problems.error(
                    &f.field_path("apiKeyHash"),
                    "expected \"sha256:\" followed by 64 hex digits",
                );
                ClientKey::Missing
            }
        },
        (None, None) => ClientKey::Missing,
    };
    let policies = parse_policies(&mut f, &["policies"], env, problems);
    let mut contracts = Vec::new();
    for (cpath, cv) in f.array(&["contracts"], problems) {
        if let Some(c) = parse_contract(cv, &cpath, env, problems) {
            contracts.push(c);
        }
    }
    if key == ClientKey::Missing
        && !f.has("apiKey")
        && !f.has("apiKeyHash")
        && (contracts.is_empty() || contracts.iter().any(|c| c.api_key.is_none()))
    {
        problems.error(path, "a client needs an apiKey or an apiKeyHash");
    }
    f.ignore(&["tenantId", "permissions"]);
    let key_path = f.field_path(if f.has("apiKeyHash") {
        "apiKeyHash"
    } else {
        "apiKey"
    });
    f.finish(problems);
    Some(ClientConfig {
        path: path.to_string(),
        organization_id,
        client_id,
        version,
        key,
        key_path,
        policies,
        contracts,
    })
}

/// An Apiman 1.x client keeps a key per contract: each distinct key becomes a client of its
/// own, holding the contracts made with that key.
#[inline(never)]
fn split_by_contract_keys(mut client: ClientConfig) -> Vec<ClientConfig> {
    if client.contracts.iter().all(|c| c.api_key.is_none()) {
        return vec![client];
    }
    let contracts = std::mem::take(&mut client.contracts);
    let mut out: Vec<ClientConfig> = Vec::new();
    for contract in contracts {
        let (key, key_path) = match &contract.api_key {
            Some(k) => (
                ClientKey::Clear(k.clone()),
                format!("{}.apiKey", contract.path),
            ),
            None => (client.key.clone(), client.key_path.clone()),
        };
        match out.iter_mut().find(|c| c.key == key) {
            Some(existing) => existing.contracts.push(contract),
            None => out.push(ClientConfig {
                key,
                key_path,
                contracts: vec![contract],
                ..client.clone()
            }),
        }
    }
    out
}

fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    let hex = strip_prefix_ignore_case(text.trim(), "sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse_contract(
    v: &Value,
    path: &str,
    env: Env,
    problems: &mut Problems,
) -> Option<ContractConfig> {
    let mut f = Fields::of(v, path, problems)?;
    let api_org_id = required(&mut f, &["apiOrgId"], problems);
    let api_id = required(&mut f, &["apiId"], problems);
    let api_version = required(&mut f, &["apiVersion"], problems);
    let plan = f
        .string(&["plan"], problems)
        .filter(|p| !p.trim().is_empty());
    let lists_policies = f.has("policies");
    let policies = parse_policies(&mut f, &["policies"], env, problems);
    let api_key = f.string(&["apiKey"], problems).filter(|k| !k.is_empty());
    f.finish(problems);
    Some(ContractConfig {
        path: path.to_string(),
        api_org_id,
        api_id,
        api_version,
        plan,
        policies,
        lists_policies,
        api_key,
    })
}

fn parse_plan(v: &Value, path: &str, env: Env, problems: &mut Problems) -> Option<PlanConfig> {
    let mut f = Fields::of(v, path, problems)?;
    let plan_id = required(&mut f, &["planId", "id"], problems);
    f.ignore(&["organizationId", "version", "name", "description"]);
    let policies = parse_policies(&mut f, &["policies"], env, problems);
    f.finish(problems);
    Some(PlanConfig {
        path: path.to_string(),
        plan_id,
        policies,
    })
}

fn parse_policies(
    f: &mut Fields,
    names: &[&str],
    env: Env,
    problems: &mut Problems,
) -> Vec<PolicySpec> {
    f.array(names, problems)
        .into_iter()
        .filter_map(|(path, v)| apiman::parse_policy(v, &path, env, problems))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(config: Value) -> Vec<String> {
        let mut p = Problems::default();
        parse_value(&config, &no_env, &mut p);
        p.errors
    }

    #[test]
    fn a_non_ascii_key_hash_is_an_error_not_a_panic() {
        assert!(parse_key_hash("sha25ñ:00").is_none());
    }

    #[test]
    fn a_non_http_endpoint_is_refused_with_its_path() {
        let errors = errors_of(json!({"apis": [{
            "organizationId": "o", "apiId": "a", "version": "1", "endpoint": "ftp://x"
        }]}));
        assert_eq!(
            errors,
            vec!["apis[0].endpoint: \"ftp://x\" is not an http:// or https:// URL"]
        );
    }

    #[test]
    fn missing_ids_are_reported_each() {
        let errors = errors_of(json!({"apis": [{"endpoint": "http://x"}]}));
        assert_eq!(
            errors,
            vec![
                "apis[0].organizationId: is required",
                "apis[0].apiId: is required",
                "apis[0].version: is required"
            ]
        );
    }

    #[test]
    fn api_key_hashes_must_be_sha256_hex() {
        let errors = errors_of(json!({"clients": [{
            "organizationId": "o", "clientId": "c", "version": "1", "apiKeyHash": "md5:abc"
        }]}));
        assert_eq!(
            errors,
            vec!["clients[0].apiKeyHash: expected \"sha256:\" followed by 64 hex digits"]
        );
    }

    #[test]
    fn gateway_settings_are_read_and_lower_cased() {
        let mut p = Problems::default();
        let c = parse_value(
            &json!({"gateway": {"apiKeyHeader": "X-Key", "apiKeyQueryParam": "key",
                                "trustedProxies": ["10.0.0.0/8", "192.0.2.1"], "trustedHops": 1}}),
            &no_env,
            &mut p,
        );
        assert!(p.is_ok(), "{:?}", p.errors);
        assert_eq!(c.gateway.api_key_header, "x-key");
        assert_eq!(c.gateway.api_key_query_param, "key");
        assert_eq!(c.gateway.trusted_proxies.networks.len(), 2);
        assert_eq!(c.gateway.trusted_proxies.hops, 1);
    }

    #[test]
    fn apiman_1_contract_keys_become_clients_of_their_own() {
        let mut p = Problems::default();
        let c = parse_value(
            &json!({"clients": [{"organizationId": "o", "clientId": "c", "version": "1",
                "contracts": [
                    {"apiKey": "k1", "apiOrgId": "o", "apiId": "a", "apiVersion": "1"},
                    {"apiKey": "k2", "apiOrgId": "o", "apiId": "b", "apiVersion": "1"}]}]}),
            &no_env,
            &mut p,
        );
        assert!(p.is_ok(), "{:?}", p.errors);
        assert_eq!(c.clients.len(), 2);
        assert_eq!(c.clients[1].key, ClientKey::Clear("k2".into()));
        assert_eq!(c.clients[1].key_path, "clients[0].contracts[1].apiKey");
    }

    #[test]
    fn a_client_without_any_key_is_refused() {
        let errors = errors_of(
            json!({"clients": [{"organizationId": "o", "clientId": "c", "version": "1"}]}),
        );
        assert_eq!(
            errors,
            vec!["clients[0]: a client needs an apiKey or an apiKeyHash"]
        );
    }

    #[test]
    fn invalid_json_is_one_clear_error() {
        let (_, p) = parse(b"{\"apis\": [", &no_env);
        assert_eq!(p.errors.len(), 1);
        assert!(
            p.errors[0].starts_with("(configuration): not valid JSON"),
            "{}",
            p.errors[0]
        );
    }

    #[test]
    fn endpoint_basic_auth_is_read_from_endpoint_properties() {
        let mut p = Problems::default();
        let c = parse_value(
            &json!({"apis": [{"organizationId": "o", "apiId": "a", "version": "1",
                "endpoint": "http://x", "endpointProperties": {
                    "authorization.type": "basic", "basic-auth.username": "u",
                    "basic-auth.password": "p"}}]}),
            &no_env,
            &mut p,
        );
        assert!(p.is_ok(), "{:?}", p.errors);
        assert_eq!(c.apis[0].basic_auth, Some(("u".into(), "p".into())));
    }
}
