//! CORS (Apiman plugin `cors-policy`).
//!
//! A request with `Origin` gets the CORS headers on its response, the backend's or the
//! gateway's (including failures of later policies, which Apiman leaves without them). A
//! preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered by the gateway with
//! 200 and never reaches the backend or the policies after this one.
//!
//! Differences from Apiman: `Vary: Origin` is always sent (caches must not serve one origin's
//! answer to another); the same-origin check compares the origin's scheme, host and port with
//! the request's `:scheme` and authority (Apiman compares `Host` with the full origin, which
//! never matches); a preflight
//! without `maxAge` works (Apiman fails it with a 500); a disallowed origin gets no
//! `Access-Control-Allow-Origin` at all rather than an empty one; allowed origins may use a
//! leading wildcard label (`https://*.example.com`), which matches only an origin that is
//! exactly `scheme://host[:port]` (never `https://evil.com/.example.com`).

use super::{
    Capabilities, Context, FailureType, FieldDoc, Phase, PhaseSet, Policy, PolicyFailure,
    PolicyKind, Verdict,
};
use crate::http::{LocalReply, Request};
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "cors",
    name: "CORS",
    apiman_names: &["cors-policy", "CorsPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Answers CORS preflights at the gateway and adds the CORS headers to responses (and to later policies' failures).",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "400 Authorization, code 400: `CORS: Origin not permitted.` / `CORS: Requested method not allowed or undefined.` / `CORS: Requested header not allowed`",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "allowOrigin",
            aliases: &["allowOrigins"],
            ty: "[string]",
            default: "[]",
            apiman: true,
            meaning: "allowed origins: exact, `*`, or a leading wildcard label `https://*.example.com`; the request's origin is echoed, never `*`",
        },
        FieldDoc {
            name: "allowCredentials",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "`Access-Control-Allow-Credentials: true`",
        },
        FieldDoc {
            name: "exposeHeaders",
            aliases: &[],
            ty: "[string]",
            default: "[]",
            apiman: true,
            meaning: "`Access-Control-Expose-Headers`",
        },
        FieldDoc {
            name: "allowHeaders",
            aliases: &[],
            ty: "[string]",
            default: "[]",
            apiman: true,
            meaning: "request headers a preflight may ask for (besides the simple ones)",
        },
        FieldDoc {
            name: "allowMethods",
            aliases: &[],
            ty: "[string]",
            default: "[]",
            apiman: true,
            meaning: "methods a preflight may ask for",
        },
        FieldDoc {
            name: "maxAge",
            aliases: &[],
            ty: "integer",
            default: "",
            apiman: true,
            meaning: "`Access-Control-Max-Age` on preflight answers",
        },
        FieldDoc {
            name: "errorOnCorsFailure",
            aliases: &[],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "refuse disallowed requests with 400 (else pass them on without CORS headers)",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"allowOrigin": ["https://app.example.com", "https://*.example.org"], "allowCredentials": true,
                 "exposeHeaders": ["X-Request-Id"], "allowHeaders": ["Content-Type", "X-API-Key"],
                 "allowMethods": ["GET", "POST"], "maxAge": 600, "errorOnCorsFailure": true}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: true,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

/// The plugin uses the HTTP status as its failure code.
pub const FAILURE_CODE: u32 = 400;

/// Request headers a preflight may ask for without them being listed (Apiman's list).
const SIMPLE_HEADERS: &[&str] = &[
    "cache-control",
    "content-language",
    "content-type",
    "expires",
    "last-modified",
    "pragma",
];

pub struct Cors {
    error_on_failure: bool,
    any_origin: bool,
    /// Exact origins, lower-cased.
    origins: Vec<String>,
    /// `scheme://*.suffix[:port]` entries.
    wildcard_origins: Vec<WildcardOrigin>,
    allow_credentials: bool,
    expose_headers: Option<String>,
    allow_headers: Vec<String>,
    allow_headers_joined: Option<String>,
    allow_methods: Vec<String>,
    allow_methods_joined: String,
    max_age: Option<String>,
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<Cors> {
    let error_on_failure = f.bool(&["errorOnCorsFailure"], problems).unwrap_or(true);
    let mut any_origin = false;
    let mut origins = Vec::new();
    let mut wildcard_origins = Vec::new();
    let mut ok = true;
    for (path, origin) in f.strings(&["allowOrigin", "allowOrigins"], problems) {
        let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if o == "*" {
            any_origin = true;
        } else if let Some((scheme, rest)) = o.split_once("://*.") {
            match Origin::parse(&format!("{scheme}://{rest}")) {
                Some(base) => wildcard_origins.push(WildcardOrigin {
                    scheme: base.scheme,
                    suffix: format!(".{}", base.host),
                    port: base.port,
                }),
                None => {
                    problems.error(
                        &path,
                        format!("\"{origin}\" is not an origin (scheme://*.host[:port])"),
                    );
                    ok = false;
                }
            }
        } else if !o.is_empty() {
            origins.push(o);
        }
    }
    let allow_credentials = f.bool(&["allowCredentials"], problems).unwrap_or(false);
    let list = |f: &mut Fields, names: &[&str], problems: &mut Problems| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, v) in f.strings(names, problems) {
            let v = v.trim().to_string();
            if !v.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&v)) {
                out.push(v);
            }
        }
        out
    };
    let expose = list(f, &["exposeHeaders"], problems);
    let allow_headers = list(f, &["allowHeaders"], problems);
    let allow_methods = list(f, &["allowMethods"], problems);
    let max_age = f
        .integer(&["maxAge"], problems)
        .map(|m| m.max(0).to_string());
    ok.then_some(Cors {
        error_on_failure,
        any_origin,
        origins,
        wildcard_origins,
        allow_credentials,
        expose_headers: (!expose.is_empty()).then(|| expose.join(", ")),
        allow_headers_joined: (!allow_headers.is_empty()).then(|| allow_headers.join(", ")),
        allow_headers,
        allow_methods_joined: allow_methods.join(", "),
        allow_methods,
        max_age,
    })
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing else (no path, query,
/// fragment, user info or backslash), lower-cased.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let lower = text.trim().to_ascii_lowercase();
        let (scheme, rest) = lower.split_once("://")?;
        let scheme_ok = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (address, after) = v6.split_once(']')?;
                address.parse::<std::net::Ipv6Addr>().ok()?;
                (&rest[..address.len() + 2], after)
            }
            None => match rest.find(':') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            },
        };
        let host_ok = host.starts_with('[')
            || (!host.is_empty()
                && !host.starts_with('.')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
        let port = match port {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (scheme_ok && host_ok).then(|| Origin {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// The port, or the scheme's default.
    fn effective_port(&self) -> Option<u16> {
        self.port.or(match self.scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        })
    }
}

/// An allowed origin with a leading wildcard label: `https://*.example.com`.
struct WildcardOrigin {
    scheme: String,
    /// `.example.com`
    suffix: String,
    port: Option<u16>,
}

impl WildcardOrigin {
    fn matches(&self, o: &Origin) -> bool {
        o.scheme == self.scheme
            && o.port == self.port
            && o.host.len() > self.suffix.len()
            && o.host.ends_with(self.suffix.as_str())
    }
}

impl Cors {
    /// `scheme` is the request's `:scheme` (absent in tests: http or https then).
    fn origin_allowed(&self, origin: &str, authority: Option<&str>, scheme: Option<&str>) -> bool {
        let o = origin.trim().to_ascii_lowercase();
        if self.any_origin || self.origins.contains(&o) {
            return true;
        }
        let Some(parsed) = Origin::parse(&o) else {
            return false;
        };
        if self.wildcard_origins.iter().any(|w| w.matches(&parsed)) {
            return true;
        }
        // Same origin: the scheme and host:port the request was sent to.
        let scheme_ok = match scheme {
            Some(s) => s.eq_ignore_ascii_case(&parsed.scheme),
            None => matches!(parsed.scheme.as_str(), "http" | "https"),
        };
        let Some(gateway) =
            authority.and_then(|a| Origin::parse(&format!("{}://{a}", parsed.scheme)))
        else {
            return false;
        };
        scheme_ok
            && matches!(parsed.scheme.as_str(), "http" | "https")
            && gateway.host == parsed.host
            && gateway.effective_port() == parsed.effective_port()
    }

    fn failure(&self, message: &str, headers: Vec<(String, String)>) -> Verdict {
        let mut failure = PolicyFailure::new(
            FailureType::Authorization,
            FAILURE_CODE,
            format!("CORS: {message}"),
        )
        .with_status(400);
        failure.headers = headers;
        Verdict::Fail(failure)
    }
}

impl Policy for Cors {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        cx.add_response_header("vary", "Origin");
        let Some(origin) = request.headers.get("origin").map(str::to_string) else {
            return Verdict::Continue;
        };
        let mut headers: Vec<(String, String)> = vec![("Vary".into(), "Origin".into())];
        let allowed = self.origin_allowed(
            &origin,
            request.headers.get(":authority"),
            request.headers.get(":scheme"),
        );
        if allowed {
            headers.push(("Access-Control-Allow-Origin".into(), origin.clone()));
            if self.allow_credentials {
                headers.push(("Access-Control-Allow-Credentials".into(), "true".into()));
            }
            if let Some(expose) = &self.expose_headers {
                headers.push(("Access-Control-Expose-Headers".into(), expose.clone()));
            }
        }
        let requested_method = request
            .headers
            .get("access-control-request-method")
            .map(str::to_string);
        let preflight =
            request.method.eq_ignore_ascii_case("OPTIONS") && requested_method.is_some();

        let mut problem: Option<&str> = (!allowed).then_some("Origin not permitted.");
        if preflight && allowed {
            headers.push((
                "Access-Control-Allow-Methods".into(),
                self.allow_methods_joined.clone(),
            ));
            let method_ok = requested_method.as_deref().is_some_and(|m| {
                m.split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .all(|m| self.allow_methods.iter().any(|a| a == m))
            });
            let requested_headers: Vec<String> = request
                .headers
                .get_all("access-control-request-headers")
                .flat_map(|v| v.split(','))
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
            let headers_ok = requested_headers.iter().all(|h| {
                SIMPLE_HEADERS.contains(&h.as_str())
                    || self.allow_headers.iter().any(|a| a.eq_ignore_ascii_case(h))
            });
            if headers_ok {
                if let Some(allow) = &self.allow_headers_joined {
                    headers.push(("Access-Control-Allow-Headers".into(), allow.clone()));
                }
            }
            if let Some(age) = &self.max_age {
                headers.push(("Access-Control-Max-Age".into(), age.clone()));
            }
            if !method_ok {
                problem = Some("Requested method not allowed or undefined.");
            } else if !headers_ok {
                problem = Some("Requested header not allowed");
            }
        }

        if let Some(message) = problem {
            if self.error_on_failure {
                return self.failure(message, headers);
            }
        }
        if preflight && problem.is_none() {
            return Verdict::Reply(LocalReply {
                status: 200,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
                body: Vec::new(),
            });
        }
        for (name, value) in headers {
            if !name.eq_ignore_ascii_case("vary") {
                cx.add_response_header(&name, &value);
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    fn policy(extra: serde_json::Value) -> Box<dyn Policy> {
        let mut config = json!({
            "allowOrigin": ["https://app.example.com"],
            "allowMethods": ["GET", "PUT"],
            "allowHeaders": ["X-Trace"],
            "exposeHeaders": ["X-Request-Id", "X-Other"],
            "maxAge": 600
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        compile(&KIND, config)
    }

    fn decoration<'a>(f: &'a Fixture, name: &str) -> Option<&'a str> {
        f.state
            .response_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_request_without_origin_only_gets_vary() {
        let p = policy(json!({}));
        let mut f = Fixture::new();
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
        assert_eq!(
            f.state.response_headers,
            vec![("vary".to_string(), "Origin".to_string())]
        );
    }

    #[test]
    fn an_allowed_origin_is_echoed_on_the_response() {
        let p = policy(json!({"allowCredentials": true}));
        let mut f = Fixture::new();
        let v = f.on_request(
            p.as_ref(),
            &mut request("GET", &[("origin", "https://app.example.com")]),
        );
        assert!(is_continue(&v));
        assert_eq!(
            decoration(&f, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            decoration(&f, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            decoration(&f, "access-control-expose-headers"),
            Some("X-Request-Id, X-Other")
        );
        assert_eq!(decoration(&f, "vary"), Some("Origin"));
    }

    #[test]
    fn a_star_echoes_the_origin_not_a_star() {
        let p = policy(json!({"allowOrigin": ["*"]}));
        let mut f = Fixture::new();
        f.on_request(
            p.as_ref(),
            &mut request("GET", &[("origin", "https://x.test")]),
        );
        assert_eq!(
            decoration(&f, "access-control-allow-origin"),
            Some("https://x.test")
        );
    }

    #[test]
    fn a_disallowed_origin_fails_with_400() {
        let p = policy(json!({}));
        let fail = failure(Fixture::new().on_request(
            p.as_ref(),
            &mut request("GET", &[("origin", "https://evil.test")]),
        ));
        assert_eq!(
            (fail.failure_type, fail.code, fail.status()),
            (FailureType::Authorization, 400, 400)
        );
        assert_eq!(fail.message, "CORS: Origin not permitted.");
    }

    #[test]
    fn without_error_on_failure_a_disallowed_origin_passes_without_cors_headers() {
        let p = policy(json!({"errorOnCorsFailure": false}));
        let mut f = Fixture::new();
        let v = f.on_request(
            p.as_ref(),
            &mut request("GET", &[("origin", "https://evil.test")]),
        );
        assert!(is_continue(&v));
        assert_eq!(decoration(&f, "access-control-allow-origin"), None);
    }

    #[test]
    fn a_preflight_is_answered_by_the_gateway() {
        let p = policy(json!({}));
        let v = Fixture::new().on_request(
            p.as_ref(),
            &mut request(
                "OPTIONS",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "PUT"),
                    ("access-control-request-headers", "x-trace, content-type"),
                ],
            ),
        );
        let Verdict::Reply(reply) = v else {
            panic!("expected a reply, got {v:?}")
        };
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            reply.header("access-control-allow-methods"),
            Some("GET, PUT")
        );
        assert_eq!(
            reply.header("access-control-allow-headers"),
            Some("X-Trace")
        );
        assert_eq!(reply.header("access-control-max-age"), Some("600"));
        assert_eq!(reply.header("vary"), Some("Origin"));
        assert!(reply.body.is_empty());
    }

    #[test]
    fn a_preflight_works_without_max_age() {
        let p = compile(
            &KIND,
            json!({"allowOrigin": ["*"], "allowMethods": ["GET"]}),
        );
        let v = Fixture::new().on_request(
            p.as_ref(),
            &mut request(
                "OPTIONS",
                &[
                    ("origin", "https://a.test"),
                    ("access-control-request-method", "GET"),
                ],
            ),
        );
        let Verdict::Reply(reply) = v else {
            panic!("expected a reply")
        };
        assert_eq!(reply.header("access-control-max-age"), None);
    }

    #[test]
    fn a_preflight_for_an_unlisted_method_fails() {
        let p = policy(json!({}));
        let fail = failure(Fixture::new().on_request(
            p.as_ref(),
            &mut request(
                "OPTIONS",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "DELETE"),
                ],
            ),
        ));
        assert_eq!(
            fail.message,
            "CORS: Requested method not allowed or undefined."
        );
        assert_eq!(fail.status(), 400);
        assert!(fail
            .headers
            .iter()
            .any(|(k, v)| k == "Access-Control-Allow-Methods" && v == "GET, PUT"));
    }

    #[test]
    fn a_preflight_for_an_unlisted_header_fails() {
        let p = policy(json!({}));
        let fail = failure(Fixture::new().on_request(
            p.as_ref(),
            &mut request(
                "OPTIONS",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-secret"),
                ],
            ),
        ));
        assert_eq!(fail.message, "CORS: Requested header not allowed");
    }

    #[test]
    fn wildcard_subdomain_origins_match_subdomains_only() {
        let p = compile(&KIND, json!({"allowOrigin": ["https://*.example.com"]}));
        let mut f = Fixture::new();
        assert!(is_continue(&f.on_request(
            p.as_ref(),
            &mut request("GET", &[("origin", "https://a.example.com")])
        )));
        assert!(matches!(
            Fixture::new().on_request(
                p.as_ref(),
                &mut request("GET", &[("origin", "https://example.com")])
            ),
            Verdict::Fail(_)
        ));
        assert!(matches!(
            Fixture::new().on_request(
                p.as_ref(),
                &mut request("GET", &[("origin", "https://evilexample.com")])
            ),
            Verdict::Fail(_)
        ));
    }

    fn allows(p: &dyn Policy, origin: &str, extra: &[(&str, &str)]) -> bool {
        let mut headers = vec![("origin", origin)];
        headers.extend_from_slice(extra);
        is_continue(&Fixture::new().on_request(p, &mut request("GET", &headers)))
    }

    #[test]
    fn a_wildcard_origin_matches_a_host_not_a_path_or_query_ending_in_its_suffix() {
        let p = compile(&KIND, json!({"allowOrigin": ["https://*.example.org"]}));
        assert!(allows(p.as_ref(), "https://a.b.example.org", &[]));
        for origin in [
            "https://evil.com/.example.org",
            "https://evil.com?.example.org",
            "https://evil.com#.example.org",
            "https://evil.com\\.example.org",
            "https://user@evil.com/.example.org",
            "https://a.example.org:8443",
            "http://a.example.org",
            "https://.example.org",
        ] {
            assert!(!allows(p.as_ref(), origin, &[]), "{origin} allowed");
        }
    }

    #[test]
    fn an_invalid_wildcard_origin_refuses_the_configuration() {
        assert_eq!(
            errors(&KIND, json!({"allowOrigin": ["https://*.ex ample.org"]})),
            vec!["config.allowOrigin[0]: \"https://*.ex ample.org\" is not an origin (scheme://*.host[:port])"]
        );
    }

    #[test]
    fn a_same_origin_request_is_allowed() {
        let p = compile(&KIND, json!({"allowOrigin": []}));
        let gateway = [(":authority", "gw.local:10000"), (":scheme", "http")];
        assert!(allows(p.as_ref(), "http://gw.local:10000", &gateway));
        let default_port = [(":authority", "gw.local"), (":scheme", "https")];
        assert!(allows(p.as_ref(), "https://gw.local:443", &default_port));
    }

    #[test]
    fn the_same_origin_check_compares_the_scheme() {
        let p = compile(&KIND, json!({"allowOrigin": []}));
        let gateway = [(":authority", "gw.local:10000"), (":scheme", "http")];
        for origin in [
            "javascript://gw.local:10000",
            "https://gw.local:10000",
            "file://gw.local:10000",
        ] {
            assert!(!allows(p.as_ref(), origin, &gateway), "{origin} allowed");
        }
    }

    #[test]
    fn origins_compare_case_insensitively() {
        let p = policy(json!({}));
        assert!(is_continue(&Fixture::new().on_request(
            p.as_ref(),
            &mut request("GET", &[("origin", "https://APP.example.com")])
        )));
    }
}
