//! The gateway definition: one YAML file with the registry (the filter's configuration) plus
//! the outbound TLS model webMethods and Scheer PAS users know: keystores and truststores by
//! alias, a global outbound default, endpoint aliases, and per-API overrides.
//!
//! [`read`] reports every problem in one run, each with its path: unknown fields in our own
//! sections are errors (a misspelt `truststor` must not silently disable verification), as are
//! wrong types, missing required fields and unknown store types. The `registry` is checked by
//! the filter's own loader (see `generate`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::read::{kind, to_json, Fields};

#[derive(Debug)]
pub struct Definition {
    pub node: Node,
    pub admin: Address,
    pub listener: Address,
    /// The filter module, as Envoy will open it.
    pub wasm: String,
    /// The module without the JWT-signature policies (`tollgate-lite.wasm`, which V8 compiles
    /// ~25% sooner), used for registries that do without them; `None` for `wasm` always.
    pub wasm_lite: Option<String>,
    /// Envoy's worker threads do not come from here: that is `--concurrency` at startup.
    pub route_timeout: String,
    pub keystores: BTreeMap<String, Keystore>,
    pub truststores: BTreeMap<String, Truststore>,
    /// The global outbound default, used by every API without its own settings.
    pub outbound: Outbound,
    /// Endpoint aliases: name -> URI and TLS settings.
    pub endpoints: BTreeMap<String, EndpointAlias>,
    /// The filter configuration (Apiman beans, plans, gateway settings); APIs may use
    /// `endpointAlias`, `tls` and `connectTo` in addition, which the generator resolves.
    pub registry: Map<String, Value>,
    /// Problems found reading the definition, each with its path. Nothing is generated while
    /// there are any, but everything else is still checked so one run reports them all.
    pub problems: Vec<String>,
    /// What could not be read completely, by path: a section (`keystores`, `outbound`) or an
    /// entry (`keystores.gw`). Such entries are left out of their maps; references to them are
    /// not reported again, and the TLS profiles built on them are not resolved.
    pub incomplete: BTreeSet<String>,
}

impl Definition {
    /// Whether a keystore, truststore or endpoint alias `name` exists in `section`, or could
    /// not be read (its problems are reported already).
    pub fn defines(&self, section: &str, name: &str) -> bool {
        let defined = match section {
            "keystores" => self.keystores.contains_key(name),
            "truststores" => self.truststores.contains_key(name),
            "endpoints" => self.endpoints.contains_key(name),
            _ => false,
        };
        defined || self.unreadable(section, name)
    }

    /// Whether entry `name` of `section`, or the section itself, could not be read.
    pub fn unreadable(&self, section: &str, name: &str) -> bool {
        self.incomplete.contains(section) || self.incomplete.contains(&format!("{section}.{name}"))
    }
}

#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub cluster: String,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            id: default_node(),
            cluster: default_node(),
        }
    }
}

#[derive(Debug)]
pub struct Address {
    pub address: String,
    pub port: u16,
}

impl Address {
    fn admin() -> Address {
        Address {
            address: default_address(),
            port: 9901,
        }
    }
    fn listener() -> Address {
        Address {
            address: default_address(),
            port: 10000,
        }
    }
}

fn default_node() -> String {
    "tollgate".into()
}
fn default_address() -> String {
    "127.0.0.1".into()
}
fn default_wasm() -> String {
    "target/wasm32-wasip1/release/tollgate.wasm".into()
}
fn default_route_timeout() -> String {
    "30s".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreType {
    Pkcs12,
    Jks,
    Pem,
}

impl StoreType {
    pub fn keytool_name(self) -> &'static str {
        match self {
            StoreType::Pkcs12 => "PKCS12",
            StoreType::Jks => "JKS",
            StoreType::Pem => "PEM",
        }
    }
}

/// Where a password comes from: never inline, so definitions can be committed.
/// Written `{env: VAR}` or `{file: path}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Password {
    Env(String),
    File(String),
}

impl std::fmt::Display for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Env(v) => write!(f, "environment variable {v}"),
            Password::File(p) => write!(f, "file {p}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Keystore {
    pub kind: StoreType,
    /// The store file (pkcs12, jks).
    pub file: Option<String>,
    /// The certificate chain (pem), leaf first; may be the same file as `key`.
    pub cert: Option<String>,
    /// The private key (pem).
    pub key: Option<String>,
    /// The store password (pkcs12, jks), or the key password of an encrypted PEM key.
    pub password: Option<Password>,
    /// A JKS key password that differs from the store password.
    pub key_password: Option<Password>,
    /// The entry to use when the store holds several keys.
    pub key_alias: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Truststore {
    pub kind: StoreType,
    pub file: String,
    pub password: Option<Password>,
}

/// TLS settings at one level (global, endpoint alias, API). Unset fields fall through to the
/// level below; `keystore: none` turns a client certificate off at this level.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub keystore: Option<String>,
    pub key_alias: Option<String>,
    pub truststore: Option<String>,
    /// Server certificate verification; `false` must be written out and is logged loudly.
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct Outbound {
    pub keystore: Option<String>,
    pub key_alias: Option<String>,
    pub truststore: Option<String>,
    pub verify: Option<bool>,
    /// TCP connect plus TLS handshake (Envoy's `connect_timeout`). Default 5s.
    pub connect_timeout: Option<String>,
    /// How long an upstream connection is kept before it is replaced; bounds how long a
    /// rotated-out client certificate stays in use on pooled connections. Default 10m.
    pub max_connection_age: Option<String>,
}

impl Outbound {
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            keystore: self.keystore.clone(),
            key_alias: self.key_alias.clone(),
            truststore: self.truststore.clone(),
            verify: self.verify,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EndpointAlias {
    pub uri: String,
    /// Connect to this address instead of resolving the URI's host; SNI and certificate checks
    /// still use the host (like an /etc/hosts entry, for one gateway).
    pub connect_to: Option<String>,
    pub keystore: Option<String>,
    pub key_alias: Option<String>,
    pub truststore: Option<String>,
    pub verify: Option<bool>,
    pub connect_timeout: Option<String>,
    pub max_connection_age: Option<String>,
}

impl EndpointAlias {
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            keystore: self.keystore.clone(),
            key_alias: self.key_alias.clone(),
            truststore: self.truststore.clone(),
            verify: self.verify,
        }
    }
}

const TOP_FIELDS: &[&str] = &[
    "node",
    "admin",
    "listener",
    "wasm",
    "wasmLite",
    "routeTimeout",
    "keystores",
    "truststores",
    "outbound",
    "endpoints",
    "registry",
];
const KEYSTORE_FIELDS: &[&str] = &[
    "type",
    "file",
    "cert",
    "key",
    "password",
    "keyPassword",
    "keyAlias",
];
const TRUSTSTORE_FIELDS: &[&str] = &["type", "file", "password"];
const TLS_FIELDS: &[&str] = &["keystore", "keyAlias", "truststore", "verify"];
const OUTBOUND_FIELDS: &[&str] = &[
    "keystore",
    "keyAlias",
    "truststore",
    "verify",
    "connectTimeout",
    "maxConnectionAge",
];
const ENDPOINT_FIELDS: &[&str] = &[
    "uri",
    "connectTo",
    "keystore",
    "keyAlias",
    "truststore",
    "verify",
    "connectTimeout",
    "maxConnectionAge",
];
const STORE_TYPES: &[(&str, StoreType)] = &[
    ("pkcs12", StoreType::Pkcs12),
    ("jks", StoreType::Jks),
    ("pem", StoreType::Pem),
];

/// Reads a definition. `Err` only when there is nothing to read (not YAML, or not a mapping);
/// every other problem is in [`Definition::problems`], with the definition as far as it could
/// be read.
pub fn read(text: &str) -> Result<Definition, Vec<String>> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    let doc = to_json(&yaml, "", &mut problems);
    let Some(top) = Fields::of(&doc, "", TOP_FIELDS, &mut problems) else {
        return Err(vec![format!(
            "expected a mapping with `registry` and tollgate's sections (keystores, truststores, outbound, endpoints, ...), found {}",
            kind(&doc)
        )]);
    };
    let p = &mut problems;
    let mut incomplete = BTreeSet::new();

    let node = top
        .object("node", &["id", "cluster"], p)
        .map(|f| Node {
            id: f.string("id", p).unwrap_or_else(default_node),
            cluster: f.string("cluster", p).unwrap_or_else(default_node),
        })
        .unwrap_or_default();
    let admin = address(&top, "admin", Address::admin(), p);
    let listener = address(&top, "listener", Address::listener(), p);
    let wasm = top.string("wasm", p).unwrap_or_else(default_wasm);
    // Default: `tollgate-lite.wasm` beside `wasm`, as scripts/lib.sh builds them; "" for none.
    let wasm_lite = match top.string("wasmLite", p) {
        Some(path) => Some(path).filter(|p| !p.is_empty()),
        None => (wasm.strip_suffix("tollgate.wasm"))
            .filter(|dir| dir.is_empty() || dir.ends_with('/'))
            .map(|dir| format!("{dir}tollgate-lite.wasm")),
    };
    let route_timeout = top
        .string("routeTimeout", p)
        .unwrap_or_else(default_route_timeout);

    let keystores = named(
        &top,
        "keystores",
        KEYSTORE_FIELDS,
        keystore,
        p,
        &mut incomplete,
    );
    let truststores = named(
        &top,
        "truststores",
        TRUSTSTORE_FIELDS,
        truststore,
        p,
        &mut incomplete,
    );
    let before = p.len();
    let outbound = top
        .object("outbound", OUTBOUND_FIELDS, p)
        .map(|f| {
            let tls = tls_fields(&f, p);
            Outbound {
                keystore: tls.keystore,
                key_alias: tls.key_alias,
                truststore: tls.truststore,
                verify: tls.verify,
                connect_timeout: f.string("connectTimeout", p),
                max_connection_age: f.string("maxConnectionAge", p),
            }
        })
        .unwrap_or_default();
    if p.len() > before {
        incomplete.insert("outbound".to_string());
    }
    let endpoints = named(
        &top,
        "endpoints",
        ENDPOINT_FIELDS,
        endpoint_alias,
        p,
        &mut incomplete,
    );

    let registry = match top.get("registry") {
        Some((_, Value::Object(map))) => map.clone(),
        Some((path, other)) => {
            p.push(format!(
                "{path}: expected a mapping with apis, clients, plans, gateway; found {}",
                kind(other)
            ));
            Map::new()
        }
        None => {
            p.push(format!(
                "{}: is required (the filter configuration: apis, clients, plans, gateway)",
                top.path("registry")
            ));
            Map::new()
        }
    };

    Ok(Definition {
        node,
        admin,
        listener,
        wasm,
        wasm_lite,
        route_timeout,
        keystores,
        truststores,
        outbound,
        endpoints,
        registry,
        problems,
        incomplete,
    })
}

/// The TLS settings of one API (`registry.apis[i].tls`); `None` when they could not be read
/// completely (the problems are in `errors`).
pub fn read_tls(value: &Value, path: &str, errors: &mut Vec<String>) -> Option<TlsSettings> {
    let before = errors.len();
    let tls = Fields::of(value, path, TLS_FIELDS, errors).map(|f| tls_fields(&f, errors));
    tls.filter(|_| errors.len() == before)
}

fn tls_fields(f: &Fields, p: &mut Vec<String>) -> TlsSettings {
    TlsSettings {
        keystore: f.string("keystore", p),
        key_alias: f.string("keyAlias", p),
        truststore: f.string("truststore", p),
        verify: f.bool("verify", p),
    }
}

fn address(top: &Fields, name: &str, default: Address, p: &mut Vec<String>) -> Address {
    let Some(f) = top.object(name, &["address", "port"], p) else {
        return default;
    };
    let address = f.string("address", p).unwrap_or(default.address);
    let port = f.required("port", p).then(|| f.port("port", p)).flatten();
    Address {
        address,
        port: port.unwrap_or(default.port),
    }
}

/// A section of named entries. An entry with a problem is left out and its path noted in
/// `incomplete`, as is the section when it is not a mapping.
fn named<T>(
    top: &Fields,
    section: &str,
    known: &[&str],
    read: fn(&Fields, &mut Vec<String>) -> Option<T>,
    p: &mut Vec<String>,
    incomplete: &mut BTreeSet<String>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(entries) = top.entries(section, p) else {
        incomplete.insert(section.to_string());
        return out;
    };
    for (name, path, value) in entries {
        if !valid_name(name) {
            p.push(format!(
                "{path}: names may use letters, digits, '-' and '_' only"
            ));
        }
        let before = p.len();
        let entry = Fields::of(value, &path, known, p).and_then(|f| read(&f, p));
        match entry {
            Some(entry) if p.len() == before => {
                out.insert(name.to_string(), entry);
            }
            _ => {
                incomplete.insert(path);
            }
        }
    }
    out
}

/// A name usable in cluster, secret and file names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Every field is read before any is required, so one entry reports all its problems.
fn keystore(f: &Fields, p: &mut Vec<String>) -> Option<Keystore> {
    let kind = f
        .required("type", p)
        .then(|| f.choice("type", STORE_TYPES, p))
        .flatten();
    let file = f.string("file", p);
    let cert = f.string("cert", p);
    let key = f.string("key", p);
    let password = read_password(f, "password", p);
    let key_password = read_password(f, "keyPassword", p);
    let key_alias = f.string("keyAlias", p);
    Some(Keystore {
        kind: kind?,
        file,
        cert,
        key,
        password,
        key_password,
        key_alias,
    })
}

fn truststore(f: &Fields, p: &mut Vec<String>) -> Option<Truststore> {
    let kind = f
        .required("type", p)
        .then(|| f.choice("type", STORE_TYPES, p))
        .flatten();
    let file = f.required("file", p).then(|| f.string("file", p)).flatten();
    let password = read_password(f, "password", p);
    Some(Truststore {
        kind: kind?,
        file: file?,
        password,
    })
}

fn endpoint_alias(f: &Fields, p: &mut Vec<String>) -> Option<EndpointAlias> {
    let uri = f.required("uri", p).then(|| f.string("uri", p)).flatten();
    let connect_to = f.string("connectTo", p);
    let tls = tls_fields(f, p);
    Some(EndpointAlias {
        connect_to,
        keystore: tls.keystore,
        key_alias: tls.key_alias,
        truststore: tls.truststore,
        verify: tls.verify,
        connect_timeout: f.string("connectTimeout", p),
        max_connection_age: f.string("maxConnectionAge", p),
        uri: uri?,
    })
}

/// `{env: VAR}` or `{file: path}`. The value itself is never echoed: a password written inline
/// must not end up in a log.
fn read_password(f: &Fields, name: &str, p: &mut Vec<String>) -> Option<Password> {
    let (path, value) = f.get(name)?;
    if !value.is_object() {
        p.push(format!(
            "{path}: expected {{env: VAR}} or {{file: path}}, found {} (passwords are never written in the definition)",
            kind(value)
        ));
        return None;
    }
    let pf = Fields::of(value, &path, &["env", "file"], p)?;
    match (pf.string("env", p), pf.string("file", p)) {
        (Some(var), None) => Some(Password::Env(var)),
        (None, Some(file)) => Some(Password::File(file)),
        (Some(_), Some(_)) => {
            p.push(format!("{path}: give env or file, not both"));
            None
        }
        (None, None) => {
            if !pf.has("env") && !pf.has("file") {
                p.push(format!(
                    "{path}: a password is {{env: VAR}} or {{file: path}}"
                ));
            }
            None
        }
    }
}

/// Parses a duration written as `250ms`, `2s`, `1.5s`, `10m` or `1h` into milliseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| t.split_at(i))?;
    let value: f64 = number.trim().parse().ok()?;
    let scale = match unit {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    let ms = value * scale;
    (ms.is_finite() && ms > 0.0 && ms < 1e12).then_some(ms.round() as u64)
}

/// Envoy's duration form (`2s`, `0.250s`).
pub fn envoy_duration(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_common_units_and_print_as_envoy_wants() {
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("2s"), Some(2000));
        assert_eq!(parse_duration("1.5s"), Some(1500));
        assert_eq!(parse_duration("10m"), Some(600_000));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(envoy_duration(2000), "2s");
        assert_eq!(envoy_duration(250), "0.250s");
    }

    #[test]
    fn a_misspelt_field_is_refused_with_its_name() {
        let def =
            read("truststores: {ca: {type: pem, file: x, pasword: {env: X}}}\nregistry: {}\n")
                .unwrap();
        assert_eq!(
            def.problems,
            ["truststores.ca.pasword: unknown field (did you mean `password`?); the fields here are type, file, password"]
        );
        assert!(def.incomplete.contains("truststores.ca"));
    }
}
