//! tollgate-core: the gateway engine, independent of any host.
//!
//! `config` reads the configuration into uncompiled specs, `registry` compiles them, `policy`
//! holds one module per policy, `chain` runs policies per phase, `exchange` handles one request.
//! The host (Envoy through the `tollgate` crate's adapter, or a test) is reached only through
//! `host::Host`: this crate does not depend on proxy-wasm.

pub mod chain;
pub mod client_ip;
pub mod config;
pub mod counters;
pub mod errors;
pub mod exchange;
pub mod host;
pub mod http;
pub mod json;
pub mod model;
pub mod path;
pub mod pattern;
pub mod policy;
pub mod registry;
pub mod rls;
pub mod tz;

use config::Env;
use registry::Registry;

/// A configuration that loaded, with the warnings worth telling its author.
pub struct Loaded {
    pub registry: Registry,
    pub warnings: Vec<String>,
}

/// Parses, validates and compiles a configuration document; `env` resolves `${NAME}`
/// properties and environment-valued settings. On failure, returns one line per problem, each
/// naming its JSON path.
pub fn load(bytes: &[u8], env: Env) -> Result<Loaded, Vec<String>> {
    load_document(&config::Bytes(bytes), env)
}

/// `load` for a document read in pieces (the plugin configuration, from the host).
pub fn load_document(doc: &dyn config::Document, env: Env) -> Result<Loaded, Vec<String>> {
    let mut problems = json::Problems::default();
    // Cross-references are checked even when parsing found problems, so one load reports all.
    match config::load_document(doc, env, &mut problems) {
        Some(registry) if problems.is_ok() => Ok(Loaded {
            registry,
            warnings: problems.warnings,
        }),
        _ => Err(problems.errors),
    }
}

#[cfg(test)]
mod robustness {
    //! Garbage in, no panic out: a panic would kill the wasm VM. A small deterministic
    //! generator stands in for a fuzzer so these run in every `cargo test`.
    use super::*;
    use crate::exchange::Exchange;
    use crate::host::MemoryHost;
    use crate::http::HeaderMap;
    use crate::policy::Body;
    use std::rc::Rc;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
            options[(self.next() % options.len() as u64) as usize]
        }
        fn text(&mut self, len: usize) -> String {
            const ALPHABET: &[&str] = &[
                "a",
                "/",
                "?",
                "&",
                "=",
                "%",
                "%2",
                "*",
                ".",
                ":",
                "[",
                "]",
                "ñ",
                "\u{1F600}",
                " ",
                ",",
                "-",
                "0",
                "9",
                "\\",
                "\"",
                "{",
                "}",
                "${",
                "\t",
            ];
            (0..len).map(|_| self.pick(ALPHABET)).collect()
        }
    }

    const CONFIG: &str = r#"{"gateway": {"trustedProxies": ["10.0.0.0/8"]},
      "apis": [{"organizationId": "o", "apiId": "a", "version": "1", "publicAPI": true, "endpoint": "http://h:1/p",
        "apiPolicies": [
          {"policy": "cors", "config": {"allowOrigin": ["*"], "allowMethods": ["GET"], "allowHeaders": ["x-a"], "maxAge": 5}},
          {"policy": "ip-blocklist", "config": {"ipList": ["10.0.0.1-10.0.0.9", "2001:db8::/32"], "httpHeader": "X-Forwarded-For"}},
          {"policy": "ignored-resources", "config": {"rules": [{"verb": "*", "pathPattern": "/x.*"}]}},
          {"policy": "header-allow-deny", "config": {"entries": [{"headerName": "x-t", "allowIfHeaderMissing": true, "allowIfNoRulesMatch": true, "rules": [{"headerValueRegex": "b.*"}]}]}},
          {"policy": "simple-header", "config": {"addHeaders": [{"headerName": "x-c", "headerValue": "User-Agent", "valueType": "Header", "applyTo": "Both"}],
             "stripHeaders": [{"stripType": "Value", "with": "Regex", "pattern": ".*secret.*", "applyTo": "Both"}]}},
          {"policy": "http-security", "config": {"frameOptions": "DENY"}},
          {"policy": "api-key", "config": {}},
          {"policy": "timeout", "config": {"timeoutRead": "100"}},
          {"policy": "url-rewriting", "config": {"fromRegex": "/(a+)", "toReplacement": "/$1b", "processRequestUrl": true, "processRequestHeaders": true, "processResponseHeaders": true, "processResponseBody": true}},
          {"policy": "jsonp", "config": {}},
          {"policy": "caching-resources", "config": {"ttl": 5, "maxEntries": 3, "cachingResourcesSettingsEntries": [{"httpMethod": "*", "pathPattern": "*", "statusCode": "*"}]}}]},
        {"organizationId": "o", "apiId": "auth", "version": "1", "publicAPI": true, "endpoint": "http://h:1/p",
        "apiPolicies": [
          {"policy": "time-restricted-access", "config": {"rules": [{"pathPattern": "/n.*", "timeStart": "22:00", "timeEnd": "06:00", "dayStart": 6, "dayEnd": 1, "timeZone": "Europe/Berlin"}]}},
          {"policy": "basic-auth", "config": {"requireBasicAuth": false, "forwardIdentityHttpHeader": "x-user",
             "staticIdentity": {"identities": [{"username": "a", "password": "b", "roles": ["r"]}]}}},
          {"policy": "soap-authorization", "config": {"rules": [{"action": "\"*\"", "role": "r"}], "requestUnmatched": "pass"}},
          {"policy": "authorization", "config": {"rules": [{"verb": "*", "pathPattern": "/a.*", "role": "r"}], "multiMatch": "any", "requestUnmatched": "pass"}}]}],
      "clients": [{"organizationId": "o", "clientId": "c", "version": "1", "apiKey": "k",
        "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "policies": []}]}]}"#;

    #[test]
    fn mangled_configurations_are_refused_or_loaded_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        assert!(load(CONFIG.as_bytes(), &config::no_env).is_ok());
        for _ in 0..3000 {
            let mut bytes = CONFIG.as_bytes().to_vec();
            for _ in 0..(rng.next() % 4 + 1) {
                let at = (rng.next() as usize) % bytes.len();
                match rng.next() % 3 {
                    0 => bytes[at] = rng.text(1).as_bytes()[0],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => {
                        let insert = rng.text(3);
                        bytes.splice(at..at, insert.bytes());
                    }
                }
            }
            let _ = load(&bytes, &config::no_env);
        }
    }

    #[test]
    fn random_requests_get_an_answer_never_a_panic() {
        let registry = Rc::new(
            load(CONFIG.as_bytes(), &config::no_env)
                .unwrap_or_else(|e| panic!("{e:?}"))
                .registry,
        );
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut host = MemoryHost::default();
        let names = [
            ":path",
            "x-api-key",
            "origin",
            "x-forwarded-for",
            "access-control-request-method",
            "access-control-request-headers",
            "x-t",
            "user-agent",
            "x-api-version",
            "accept",
            "host",
            ":authority",
            "authorization",
            "soapaction",
            "content-type",
            "x-forwarded-proto",
        ];
        for _ in 0..5000 {
            let method = rng.pick(&["GET", "OPTIONS", "POST", "", "gEt"]).to_string();
            let prefix = rng.pick(&[
                "/o/a/1",
                "/o/a",
                "",
                "/o/a/1/",
                "//",
                "/o/a/1/x",
                "/o/auth/1/",
                "/o/auth/1/n",
            ]);
            let len = (rng.next() % 12) as usize;
            let path = format!("{prefix}{}", rng.text(len));
            let mut pairs = vec![
                (":method".to_string(), method.clone()),
                (":path".to_string(), path),
            ];
            for _ in 0..(rng.next() % 6) {
                let len = (rng.next() % 10) as usize;
                let value =
                    match rng.pick(&["", "Basic ", "basic YTpi", "application/soap+xml;action="]) {
                        "basic YTpi" => "basic YTpi".to_string(),
                        start => format!("{start}{}", rng.text(len)),
                    };
                pairs.push((rng.pick(&names).to_string(), value));
            }
            let _ = method;
            let headers = HeaderMap::from_pairs(pairs);
            let address = rng.pick(&[
                "10.0.0.5:1",
                "[::1]:2",
                "garbage",
                "",
                "[::ffff:10.0.0.3]:9",
            ]);
            // One host for all: the cache's shared data sees hits and replacements.
            host.downstream = Some(address.to_string());
            let mut exchange = Exchange::new(registry.clone());
            let _ = exchange.on_request_headers(headers, &mut host);
            let _ = exchange.on_request_body(Body::new(b"x".to_vec()), &mut host);
            let response = HeaderMap::from_pairs(vec![
                (":status".into(), "200".into()),
                (
                    "content-type".into(),
                    rng.pick(&["application/json", "text/html", ""]).into(),
                ),
                ("location".into(), rng.text(6)),
            ]);
            let _ = exchange.on_response_headers(response, &mut host);
            let _ = exchange.on_response_body(Body::new(b"y".to_vec()), &mut host);
            exchange.on_complete(&mut host);
        }
    }
}
