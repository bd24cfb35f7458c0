//! What the engine knows about the things a request touches: the API (its endpoint and how
//! errors are written), the client, the gateway's settings, and who the request turned out to be
//! (the identity authentication policies establish). Policies read these through their
//! `Context`; the registry holds them; configuration produces them.

use std::rc::Rc;

use crate::client_ip::TrustedProxies;

/// Where an API's traffic goes: parsed from Apiman's `endpoint` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` as written in the URL; what goes into `:authority` (Apiman sets
    /// `Host` the same way).
    pub authority: String,
    /// The path as written (`""` for none); joined with the request's resource as Apiman does.
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let trimmed = url.trim();
        if trimmed.bytes().any(|b| b <= b' ' || b == 0x7f) {
            // A path with CR/LF or a space would be an invalid `:path` (Envoy answers 503 in
            // plain text, outside the error contract).
            return Err(format!(
                "\"{}\" has a space or control character; percent-encode it (a space is %20)",
                trimmed.escape_debug()
            ));
        }
        let (https, rest) = if let Some(r) = strip_prefix_ignore_case(trimmed, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ignore_case(trimmed, "http://") {
            (false, r)
        } else {
            return Err(format!("\"{url}\" is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if let Some((_, host)) = authority.rsplit_once('@') {
            let scheme = if https { "https" } else { "http" };
            let rest = rest.get(authority.len()..).unwrap_or_default();
            return Err(format!(
                "\"{scheme}://***@{host}{rest}\" carries user:password@ credentials, which would not be sent; give them as endpointProperties basic-auth.username and basic-auth.password (authorization.type: basic)"
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("\"{url}\" has an invalid host or port"))?;
        if host.is_empty() {
            return Err(format!("\"{url}\" has no host"));
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        Ok(Endpoint {
            url: trimmed.to_string(),
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: port.unwrap_or(default_port),
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// Stands in for an endpoint that was refused, so the rest of the configuration can still be
    /// checked (the configuration is refused anyway).
    pub fn placeholder() -> Endpoint {
        Endpoint {
            url: "http://invalid".to_string(),
            https: false,
            host: "invalid".to_string(),
            port: 80,
            authority: "invalid".to_string(),
            path: String::new(),
        }
    }

    /// The default Envoy cluster name for an endpoint without an explicit `cluster`.
    pub fn default_cluster(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub(crate) fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // `get` rather than indexing: the cut may fall inside a multi-byte character.
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; `None` if the port is not a number.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        return match &authority[end + 1..] {
            "" => Some((host, None)),
            rest => Some((host, Some(rest.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// The `gateway` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// The request header carrying the API key (Apiman: `X-API-Key`).
    pub api_key_header: String,
    /// The query parameter carrying the API key (Apiman: `apikey`).
    pub api_key_query_param: String,
    /// The header the filter writes the API's cluster into, for a `cluster_header` route.
    pub cluster_header: String,
    /// Proxies in front of the gateway, for `X-Forwarded-For` / `Forwarded` parsing.
    pub trusted_proxies: TrustedProxies,
    /// A request header that an Envoy filter before tollgate overwrites with the downstream
    /// address (see envoy/gateway.yaml). Reading it from the headers tollgate fetches anyway
    /// saves a property lookup per request. Unset: the `source.address` property is used.
    pub client_address_header: Option<String>,
    /// What the filter counts in Envoy's stats.
    pub metrics: MetricsSettings,
    /// Publish each request's decision for Envoy's access log (one host call per request).
    pub decision_log: bool,
}

/// Metric labels and their bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Label requests with the client (else every client counts as `_all`).
    pub per_client: bool,
    /// The most distinct label combinations one worker keeps; beyond it, client and plan are
    /// folded into `_other`.
    pub max_series: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            per_client: true,
            max_series: 2_000,
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            api_key_header: "x-api-key".to_string(),
            api_key_query_param: "apikey".to_string(),
            cluster_header: "x-tollgate-cluster".to_string(),
            trusted_proxies: TrustedProxies::default(),
            client_address_header: None,
            metrics: MetricsSettings::default(),
            decision_log: false,
        }
    }
}

/// An API as routed and answered for: everything but its policies (the registry keeps those).
#[derive(Debug, Clone)]
pub struct Api {
    pub organization_id: String,
    pub api_id: String,
    pub version: String,
    pub public: bool,
    pub endpoint: Endpoint,
    /// The Envoy cluster this API's traffic goes to.
    pub cluster: String,
    /// Remove the API key (header and query parameter) before forwarding.
    pub strip_keys: bool,
    /// Write errors as XML (`endpointContentType: xml`).
    pub xml: bool,
    /// `Authorization` value sent to the backend (Apiman's endpoint BASIC credentials).
    pub upstream_authorization: Option<String>,
}

/// The client application a key belongs to (an Apiman client version), as the registry holds
/// it (borrowed: a million clients are not a million sets of strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity<'a> {
    pub organization_id: &'a str,
    pub client_id: &'a str,
    pub version: &'a str,
}

/// Who the request is, as far as authentication policies established it. Authorization, SOAP
/// Authorization and User-granularity limits read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The authenticated user (BASIC user name, a token's subject).
    pub principal: Option<String>,
    /// Roles an authentication policy extracted. `None` when none did: Authorization then fails
    /// with 10010, as in Apiman (which sets roles only from BASIC and Keycloak).
    pub roles: Option<Vec<String>>,
    /// The verified token's claims (JWT, Keycloak).
    pub claims: Option<Rc<serde_json::Value>>,
    /// The policy that authenticated the request.
    pub authenticated_by: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_authority_and_path() {
        let e = Endpoint::parse("http://127.0.0.1:8080/echo/").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.path, "/echo/");
        assert_eq!(e.default_cluster(), "127.0.0.1:8080");
        let e = Endpoint::parse("https://api.example.com").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.port, e.path.as_str()),
            ("api.example.com", 443, "")
        );
        let e = Endpoint::parse("http://[::1]:9000/x?y=1").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.host.as_str(), e.path.as_str()),
            ("[::1]:9000", "::1", "/x")
        );
    }

    #[test]
    fn an_endpoint_with_whitespace_or_control_characters_is_refused() {
        for url in [
            "http://h/a b",
            "http://h/a\tb",
            "http://h/a\r\nX-Injected: 1",
            "http://h/a\u{7f}",
            "http://h /a",
        ] {
            let e = Endpoint::parse(url).unwrap_err();
            assert!(e.contains("space or control character"), "{url:?}: {e}");
        }
    }

    #[test]
    fn userinfo_in_an_endpoint_is_refused_not_dropped() {
        let e = Endpoint::parse("https://user:secret@api.example.com/x").unwrap_err();
        assert!(e.contains("user:password@"), "{e}");
        assert!(!e.contains("secret"), "the password is echoed: {e}");
    }

    #[test]
    fn a_non_ascii_endpoint_is_an_error_not_a_panic() {
        assert!(Endpoint::parse("ñññññññññ").is_err());
        assert!(Endpoint::parse("httpñ://x").is_err());
    }
}
