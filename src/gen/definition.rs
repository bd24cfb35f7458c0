//! The gateway definition: one YAML file with the registry (the filter's configuration) plus
//! the outbound TLS model webMethods and Scheer PAS users know: keystores and truststores by
//! alias, a global outbound default, endpoint aliases, and per-API overrides.
//!
//! Our own sections refuse unknown fields (a misspelt `truststor` must not silently disable
//! verification); the `registry` is checked by the filter's own loader.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Definition {
    #[serde(default)]
    pub node: Node,
    #[serde(default = "Address::admin")]
    pub admin: Address,
    #[serde(default = "Address::listener")]
    pub listener: Address,
    /// The filter module, as Envoy will open it.
    #[serde(default = "default_wasm")]
    pub wasm: String,
    /// Envoy's worker threads do not come from here: that is `--concurrency` at startup.
    #[serde(default = "default_route_timeout")]
    pub route_timeout: String,
    #[serde(default)]
    pub keystores: BTreeMap<String, Keystore>,
    #[serde(default)]
    pub truststores: BTreeMap<String, Truststore>,
    /// The global outbound default, used by every API without its own settings.
    #[serde(default)]
    pub outbound: Outbound,
    /// Endpoint aliases: name -> URI and TLS settings.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointAlias>,
    /// The filter configuration (Apiman beans, plans, gateway settings); APIs may use
    /// `endpointAlias`, `tls` and `connectTo` in addition, which the generator resolves.
    pub registry: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default = "default_node")]
    pub id: String,
    #[serde(default = "default_node")]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default = "default_address")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "PasswordFields")]
pub enum Password {
    Env(String),
    File(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordFields {
    env: Option<String>,
    file: Option<String>,
}

impl TryFrom<PasswordFields> for Password {
    type Error = String;
    fn try_from(f: PasswordFields) -> Result<Password, String> {
        match (f.env, f.file) {
            (Some(v), None) => Ok(Password::Env(v)),
            (None, Some(p)) => Ok(Password::File(p)),
            _ => Err("a password is {env: VAR} or {file: path} (never inline)".into()),
        }
    }
}

impl std::fmt::Display for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Env(v) => write!(f, "environment variable {v}"),
            Password::File(p) => write!(f, "file {p}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Keystore {
    #[serde(rename = "type")]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Truststore {
    #[serde(rename = "type")]
    pub kind: StoreType,
    pub file: String,
    pub password: Option<Password>,
}

/// TLS settings at one level (global, endpoint alias, API). Unset fields fall through to the
/// level below; `keystore: none` turns a client certificate off at this level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSettings {
    pub keystore: Option<String>,
    pub key_alias: Option<String>,
    pub truststore: Option<String>,
    /// Server certificate verification; `false` must be written out and is logged loudly.
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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
        let err = serde_yaml::from_str::<Definition>(
            "truststores: {ca: {type: pem, file: x, pasword: {env: X}}}\nregistry: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `pasword`"), "{err}");
    }
}
