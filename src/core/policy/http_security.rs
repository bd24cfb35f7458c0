//! HTTP Security (Apiman plugin `http-security-policy`): security headers on backend responses.
//! Values overwrite what the backend sent. Gateway-generated failures are left alone, as in
//! Apiman. Unlike Apiman, a configuration without `hsts` or `contentSecurityPolicy` works
//! (Apiman answers every request with a 500 then).

use super::{Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::http::Response;
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "http-security",
    name: "HTTP Security",
    apiman_names: &["http-security-policy", "HttpSecurityPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Sets security headers on the backend's responses, overwriting the backend's values (gateway errors are left alone).",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "none",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "hsts",
            aliases: &[],
            ty: "object",
            default: "",
            apiman: true,
            meaning: "`Strict-Transport-Security`",
        },
        FieldDoc {
            name: "hsts.enabled",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "send it",
        },
        FieldDoc {
            name: "hsts.maxAge",
            aliases: &[],
            ty: "integer",
            default: "0",
            apiman: true,
            meaning: "`max-age` in seconds",
        },
        FieldDoc {
            name: "hsts.includeSubdomains",
            aliases: &["includeSubDomains"],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "`; includeSubDomains`",
        },
        FieldDoc {
            name: "hsts.preload",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "`; preload`",
        },
        FieldDoc {
            name: "frameOptions",
            aliases: &[],
            ty: "DENY|SAMEORIGIN|DISABLED",
            default: "DISABLED",
            apiman: true,
            meaning: "`X-Frame-Options`",
        },
        FieldDoc {
            name: "xssProtection",
            aliases: &[],
            ty: "OFF|ON|BLOCK|DISABLED",
            default: "DISABLED",
            apiman: true,
            meaning: "`X-XSS-Protection`: `0`, `1`, `1; mode=block`, or none",
        },
        FieldDoc {
            name: "contentTypeOptions",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "`X-Content-Type-Options: nosniff`",
        },
        FieldDoc {
            name: "contentSecurityPolicy",
            aliases: &[],
            ty: "object",
            default: "",
            apiman: true,
            meaning: "`Content-Security-Policy`",
        },
        FieldDoc {
            name: "contentSecurityPolicy.mode",
            aliases: &[],
            ty: "ENABLED|REPORT_ONLY|DISABLED",
            default: "DISABLED",
            apiman: true,
            meaning: "enforce, report only (`Content-Security-Policy-Report-Only`), or send nothing",
        },
        FieldDoc {
            name: "contentSecurityPolicy.csp",
            aliases: &[],
            ty: "string",
            default: "\"\"",
            apiman: true,
            meaning: "the policy",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"hsts": {"enabled": true, "maxAge": 31536000, "includeSubdomains": true, "preload": true},
                 "frameOptions": "DENY", "xssProtection": "BLOCK", "contentTypeOptions": true,
                 "contentSecurityPolicy": {"mode": "ENABLED", "csp": "default-src 'self'"}}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

pub struct HttpSecurity {
    /// Header name and value pairs, computed once.
    headers: Vec<(&'static str, String)>,
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<HttpSecurity> {
    let mut headers = Vec::new();
    let mut ok = true;
    if let Some(mut hsts) = f.object(&["hsts"], problems) {
        if hsts.bool(&["enabled"], problems).unwrap_or(false) {
            let max_age = hsts.integer(&["maxAge"], problems).unwrap_or(0);
            if max_age < 0 {
                problems.error(&hsts.field_path("maxAge"), "must not be negative");
                ok = false;
            }
            let mut value = format!("max-age={max_age}");
            if hsts
                .bool(&["includeSubdomains", "includeSubDomains"], problems)
                .unwrap_or(false)
            {
                value.push_str("; includeSubDomains");
            }
            if hsts.bool(&["preload"], problems).unwrap_or(false) {
                value.push_str("; preload");
            }
            headers.push(("strict-transport-security", value));
        } else {
            hsts.ignore(&[
                "maxAge",
                "includeSubdomains",
                "includeSubDomains",
                "preload",
            ]);
        }
        hsts.finish(problems);
    }
    const FRAME: &[&str] = &["DENY", "SAMEORIGIN", "DISABLED"];
    if let Some(i @ (0 | 1)) = f.choice(&["frameOptions"], FRAME, problems) {
        headers.push(("x-frame-options", FRAME[i].to_string()));
    }
    const XSS: &[&str] = &["OFF", "ON", "BLOCK", "DISABLED"];
    match f.choice(&["xssProtection"], XSS, problems) {
        Some(0) => headers.push(("x-xss-protection", "0".to_string())),
        Some(1) => headers.push(("x-xss-protection", "1".to_string())),
        Some(2) => headers.push(("x-xss-protection", "1; mode=block".to_string())),
        _ => {}
    }
    if f.bool(&["contentTypeOptions"], problems).unwrap_or(false) {
        headers.push(("x-content-type-options", "nosniff".to_string()));
    }
    if let Some(mut csp) = f.object(&["contentSecurityPolicy"], problems) {
        let mode = csp.choice(&["mode"], &["ENABLED", "REPORT_ONLY", "DISABLED"], problems);
        let policy = csp.string(&["csp"], problems).unwrap_or_default();
        let name = match mode {
            Some(0) => Some("content-security-policy"),
            Some(1) => Some("content-security-policy-report-only"),
            _ => None,
        };
        if let Some(name) = name {
            if policy.trim().is_empty() {
                problems.error(
                    &csp.field_path("csp"),
                    "is required when mode is ENABLED or REPORT_ONLY",
                );
                ok = false;
            } else if policy.bytes().any(|b| b == b'\r' || b == b'\n') {
                problems.error(&csp.field_path("csp"), "must be a single line");
                ok = false;
            } else {
                headers.push((name, policy.trim().to_string()));
            }
        }
        csp.finish(problems);
    }
    ok.then_some(HttpSecurity { headers })
}

impl Policy for HttpSecurity {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::ResponseHeaders])
    }

    fn on_response(&self, _cx: &mut Context, response: &mut Response) -> Verdict {
        for (name, value) in &self.headers {
            response.headers.set(name, value);
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    fn headers_for(config: serde_json::Value, upstream: &[(&str, &str)]) -> Response {
        let p = build_policy(config);
        let mut resp = response(200, upstream);
        Fixture::new().on_response(p.as_ref(), &mut resp);
        resp
    }

    fn build_policy(config: serde_json::Value) -> Box<dyn Policy> {
        super::super::testing::compile(&KIND, config)
    }

    #[test]
    fn hsts_with_all_options() {
        let r = headers_for(
            json!({"hsts": {"enabled": true, "maxAge": 31536000, "includeSubdomains": true, "preload": true}}),
            &[],
        );
        assert_eq!(
            r.headers.get("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains; preload")
        );
    }

    #[test]
    fn frame_options_xss_and_nosniff() {
        let r = headers_for(
            json!({"frameOptions": "SAMEORIGIN", "xssProtection": "BLOCK", "contentTypeOptions": true}),
            &[],
        );
        assert_eq!(r.headers.get("x-frame-options"), Some("SAMEORIGIN"));
        assert_eq!(r.headers.get("x-xss-protection"), Some("1; mode=block"));
        assert_eq!(r.headers.get("x-content-type-options"), Some("nosniff"));
    }

    #[test]
    fn xss_off_is_zero() {
        let r = headers_for(json!({"xssProtection": "OFF"}), &[]);
        assert_eq!(r.headers.get("x-xss-protection"), Some("0"));
    }

    #[test]
    fn csp_and_report_only() {
        let r = headers_for(
            json!({"contentSecurityPolicy": {"mode": "ENABLED", "csp": "default-src 'self'"}}),
            &[],
        );
        assert_eq!(
            r.headers.get("content-security-policy"),
            Some("default-src 'self'")
        );
        let r = headers_for(
            json!({"contentSecurityPolicy": {"mode": "REPORT_ONLY", "csp": "default-src 'self'"}}),
            &[],
        );
        assert_eq!(
            r.headers.get("content-security-policy-report-only"),
            Some("default-src 'self'")
        );
        assert_eq!(r.headers.get("content-security-policy"), None);
    }

    #[test]
    fn values_overwrite_the_backends() {
        let r = headers_for(
            json!({"frameOptions": "DENY"}),
            &[("x-frame-options", "ALLOWALL")],
        );
        assert_eq!(
            r.headers.get_all("x-frame-options").collect::<Vec<_>>(),
            vec!["DENY"]
        );
    }

    #[test]
    fn disabled_options_emit_nothing() {
        let r = headers_for(
            json!({"hsts": {"enabled": false, "maxAge": 5}, "frameOptions": "DISABLED",
                   "xssProtection": "DISABLED", "contentTypeOptions": false,
                   "contentSecurityPolicy": {"mode": "DISABLED", "csp": "x"}}),
            &[],
        );
        assert!(r.headers.is_empty(), "{:?}", r.headers);
    }

    #[test]
    fn an_unknown_frame_option_is_refused() {
        let errors = errors(&KIND, json!({"frameOptions": "ALLOW-FROM"}));
        assert_eq!(
            errors,
            vec!["config.frameOptions: \"ALLOW-FROM\" is not one of DENY, SAMEORIGIN, DISABLED"]
        );
    }
}
