//! External Authorization (tollgate's own): asks an HTTP service whether a request may pass, as
//! nginx's `auth_request` does, before the backend is reached. The answer can name the user and
//! their roles, which Authorization policies later in the chain read. This is how identity
//! sources that cannot run inside a wasm filter (LDAP, a database) are used: behind a small
//! service the gateway asks.
//!
//! The call: `GET <url>` with `X-Original-Method`, `X-Original-URI` (the path below the API and
//! the query, API key removed), `X-Tollgate-Api` (`org/api/version`), `X-Tollgate-Client` (for
//! keyed requests) and the request headers listed in `forwardHeaders`. While it is pending the
//! whole request (headers, body, trailers) is held.
//!
//! The answer: 2xx allows (headers listed in `upstreamHeaders` are copied to the request; the
//! `principalHeader` and `rolesHeader` values become the request's identity); 401 refuses as
//! Authentication (its `WWW-Authenticate` passed on); any other 4xx refuses as Authorization;
//! no answer, a timeout or a 5xx refuses with the gateway's 503 unless `failureMode` is `open`.

use std::time::Duration;

use super::{
    BuildContext, CallOut, CallResponse, CallTarget, Capabilities, Context, FailureType, FieldDoc,
    Phase, PhaseSet, Policy, PolicyFailure, PolicyKind, Subject, Verdict,
};
use crate::http::{HeaderMap, Request};
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "ext-authz",
    name: "External Authorization",
    apiman_names: &[],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Asks an HTTP service whether the request may pass (before the backend is reached); its answer can carry the user and roles for later policies.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "14001: 401 Authentication (the service answered 401) / 403 Authorization (any other 4xx); 503 gateway error when the service gives no answer (unless `failureMode: open`)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "url",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: false,
            meaning: "the service, `http(s)://host[:port]/path`",
        },
        FieldDoc {
            name: "cluster",
            aliases: &[],
            ty: "string",
            default: "host:port of url",
            apiman: false,
            meaning: "the Envoy cluster the call goes through (tollgate-gen creates it)",
        },
        FieldDoc {
            name: "timeoutMs",
            aliases: &[],
            ty: "integer",
            default: "2000",
            apiman: false,
            meaning: "how long to wait for the answer",
        },
        FieldDoc {
            name: "forwardHeaders",
            aliases: &[],
            ty: "[string]",
            default: "[\"authorization\", \"cookie\"]",
            apiman: false,
            meaning: "request headers sent to the service",
        },
        FieldDoc {
            name: "upstreamHeaders",
            aliases: &[],
            ty: "[string]",
            default: "[]",
            apiman: false,
            meaning: "headers of an allowing answer copied to the request the backend gets",
        },
        FieldDoc {
            name: "principalHeader",
            aliases: &[],
            ty: "string",
            default: "x-auth-user",
            apiman: false,
            meaning: "the answer header naming the user",
        },
        FieldDoc {
            name: "rolesHeader",
            aliases: &[],
            ty: "string",
            default: "x-auth-roles",
            apiman: false,
            meaning: "the answer header listing the user's roles, comma-separated (for Authorization)",
        },
        FieldDoc {
            name: "failureMode",
            aliases: &[],
            ty: "closed|open",
            default: "closed",
            apiman: false,
            meaning: "without an answer (unreachable, timeout, 5xx): refuse (closed) or let the request pass (open)",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"url": "http://authz.internal:9000/check", "cluster": "authz", "timeoutMs": 1500,
                 "forwardHeaders": ["authorization"], "upstreamHeaders": ["x-auth-user"],
                 "principalHeader": "x-auth-user", "rolesHeader": "x-auth-roles", "failureMode": "closed"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| build(cx, f, problems).map(|p| Box::new(p) as _),
};

pub const FAILURE_CODE: u32 = 14001;

pub struct ExtAuthz {
    target: CallTarget,
    timeout: Duration,
    forward: Vec<String>,
    upstream: Vec<String>,
    principal: String,
    roles: String,
    fail_open: bool,
}

fn header_list(f: &mut Fields, name: &str, problems: &mut Problems) -> Option<Vec<String>> {
    if !f.has(name) {
        return None;
    }
    let mut out = Vec::new();
    for (path, h) in f.strings(&[name], problems) {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || !h.bytes().all(crate::http::is_token_byte) {
            problems.error(&path, format!("\"{h}\" is not a valid header name"));
        } else if !out.contains(&h) {
            out.push(h);
        }
    }
    Some(out)
}

fn build(cx: &mut BuildContext, f: &mut Fields, problems: &mut Problems) -> Option<ExtAuthz> {
    let url = f.string(&["url"], problems);
    let cluster = f.string(&["cluster"], problems);
    let target = match url {
        Some(url) => match cx.call_target(&url, cluster.as_deref()) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.error(&f.field_path("url"), e);
                None
            }
        },
        None => {
            problems.error(&f.field_path("url"), "is required");
            None
        }
    };
    let timeout_ms = f.integer(&["timeoutMs"], problems).unwrap_or(2000);
    if !(1..=60_000).contains(&timeout_ms) {
        problems.error(&f.field_path("timeoutMs"), "must be 1 to 60000");
    }
    let forward = header_list(f, "forwardHeaders", problems)
        .unwrap_or_else(|| vec!["authorization".into(), "cookie".into()]);
    let upstream = header_list(f, "upstreamHeaders", problems).unwrap_or_default();
    let mut name = |field: &str, default: &str| {
        let v = f
            .string(&[field], problems)
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_else(|| default.to_string());
        if v.is_empty() || !v.bytes().all(crate::http::is_token_byte) {
            problems.error(
                &f.field_path(field),
                format!("\"{v}\" is not a valid header name"),
            );
        }
        v
    };
    let principal = name("principalHeader", "x-auth-user");
    let roles = name("rolesHeader", "x-auth-roles");
    let fail_open = f.choice(&["failureMode"], &["closed", "open"], problems) == Some(1);
    Some(ExtAuthz {
        target: target?,
        timeout: Duration::from_millis(timeout_ms.clamp(1, 60_000) as u64),
        forward,
        upstream,
        principal,
        roles,
        fail_open,
    })
}

impl ExtAuthz {
    fn call(&self, cx: &Context, request: &Request) -> CallOut {
        let e = &self.target.endpoint;
        let mut uri = cx.destination().to_string();
        if let Some(q) = &cx.state.query {
            uri.push('?');
            uri.push_str(q);
        }
        let api = cx.api;
        let mut headers = vec![
            (":method".to_string(), "GET".to_string()),
            (
                ":path".to_string(),
                if e.path.is_empty() {
                    "/".to_string()
                } else {
                    e.path.clone()
                },
            ),
            (":authority".to_string(), e.authority.clone()),
            (
                "x-original-method".to_string(),
                request.method.to_ascii_uppercase(),
            ),
            ("x-original-uri".to_string(), uri),
            (
                "x-tollgate-api".to_string(),
                format!("{}/{}/{}", api.organization_id, api.api_id, api.version),
            ),
        ];
        if let Some(client) = cx.client {
            headers.push((
                "x-tollgate-client".to_string(),
                client.client_id.to_string(),
            ));
        }
        for name in &self.forward {
            for value in request.headers.get_all(name) {
                headers.push((name.clone(), value.to_string()));
            }
        }
        CallOut {
            cluster: self.target.cluster.clone(),
            headers,
            body: None,
            timeout: self.timeout,
            grpc: None,
        }
    }

    fn allow(&self, cx: &mut Context, answer: &CallResponse, headers: &mut HeaderMap) {
        for name in &self.upstream {
            headers.remove(name);
            for (k, v) in &answer.headers {
                if k.eq_ignore_ascii_case(name) {
                    headers.add(name, v);
                }
            }
        }
        let identity = cx.identity_mut();
        if let Some(user) = answer.header(&self.principal).filter(|u| !u.is_empty()) {
            identity.principal = Some(user.to_string());
            identity.authenticated_by = Some(KIND.id);
        }
        if let Some(roles) = answer.header(&self.roles) {
            identity.roles = Some(
                roles
                    .split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
}

impl Policy for ExtAuthz {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        Verdict::CallOut(self.call(cx, request))
    }

    fn on_call_response(
        &self,
        cx: &mut Context,
        answer: &CallResponse,
        subject: Subject,
    ) -> Verdict {
        if answer.failed() {
            if self.fail_open {
                log::warn!(
                    "ext-authz: no answer from {} (status {}); failureMode open lets the request pass",
                    answer.cluster,
                    answer.status
                );
                return Verdict::Continue;
            }
            return Verdict::Error(super::GatewayError::CallOutFailed {
                cluster: answer.cluster.clone(),
            });
        }
        match answer.status {
            200..=299 => {
                if let Subject::Request(request) = subject {
                    self.allow(cx, answer, &mut request.headers);
                }
                Verdict::Continue
            }
            401 => {
                let mut failure = PolicyFailure::new(
                    FailureType::Authentication,
                    FAILURE_CODE,
                    "Authentication required by the authorization service.",
                );
                if let Some(challenge) = answer.header("www-authenticate") {
                    failure
                        .headers
                        .push(("WWW-Authenticate".into(), challenge.to_string()));
                }
                Verdict::Fail(failure)
            }
            _ => Verdict::Fail(PolicyFailure::new(
                FailureType::Authorization,
                FAILURE_CODE,
                "Not authorized by the authorization service.",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    fn policy(extra: serde_json::Value) -> Box<dyn Policy> {
        let mut config = json!({"url": "http://authz.local:9000/check"});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        compile(&KIND, config)
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> CallResponse {
        CallResponse {
            cluster: "authz.local:9000".into(),
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    fn call_of(v: Verdict) -> CallOut {
        match v {
            Verdict::CallOut(c) => c,
            other => panic!("expected a call-out, got {other:?}"),
        }
    }

    fn header<'a>(call: &'a CallOut, name: &str) -> Option<&'a str> {
        call.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_service_is_asked_with_the_original_request_and_the_forwarded_headers() {
        let p = policy(json!({}));
        let mut f = Fixture::at("/orders/7");
        f.state.query = Some("a=1".into());
        let mut req = request("POST", &[("authorization", "Bearer t"), ("x-other", "1")]);
        let call = call_of(f.on_request(p.as_ref(), &mut req));
        assert_eq!(call.cluster, "authz.local:9000");
        assert_eq!(header(&call, ":path"), Some("/check"));
        assert_eq!(header(&call, ":method"), Some("GET"));
        assert_eq!(header(&call, "x-original-method"), Some("POST"));
        assert_eq!(header(&call, "x-original-uri"), Some("/orders/7?a=1"));
        assert_eq!(header(&call, "x-tollgate-api"), Some("Org/echo/1.0"));
        assert_eq!(header(&call, "authorization"), Some("Bearer t"));
        assert_eq!(header(&call, "x-other"), None);
    }

    #[test]
    fn an_allowing_answer_sets_the_identity_and_copies_upstream_headers() {
        let p = policy(json!({"upstreamHeaders": ["x-auth-user"]}));
        let mut f = Fixture::new();
        let mut req = request("GET", &[("x-auth-user", "forged")]);
        let a = answer(
            200,
            &[("x-auth-user", "alice"), ("x-auth-roles", "admin, ops")],
        );
        let v = p.on_call_response(&mut f.cx(), &a, Subject::Request(&mut req));
        assert!(is_continue(&v));
        assert_eq!(
            req.headers.get_all("x-auth-user").collect::<Vec<_>>(),
            vec!["alice"]
        );
        assert_eq!(f.state.identity.principal.as_deref(), Some("alice"));
        assert_eq!(
            f.state.identity.roles,
            Some(vec!["admin".to_string(), "ops".to_string()])
        );
    }

    #[test]
    fn a_401_refuses_as_authentication_with_the_services_challenge() {
        let p = policy(json!({}));
        let mut f = Fixture::new();
        let a = answer(401, &[("www-authenticate", "Basic realm=\"x\"")]);
        let v = p.on_call_response(&mut f.cx(), &a, Subject::Complete);
        let failure = failure(v);
        assert_eq!((failure.status(), failure.code), (401, FAILURE_CODE));
        assert_eq!(failure.headers[0].1, "Basic realm=\"x\"");
    }

    #[test]
    fn a_403_refuses_as_authorization() {
        let p = policy(json!({}));
        let v = p.on_call_response(
            &mut Fixture::new().cx(),
            &answer(403, &[]),
            Subject::Complete,
        );
        assert_eq!(failure(v).status(), 403);
    }

    #[test]
    fn no_answer_refuses_unless_failure_mode_is_open() {
        let closed = policy(json!({}));
        let v =
            closed.on_call_response(&mut Fixture::new().cx(), &answer(0, &[]), Subject::Complete);
        assert!(matches!(v, Verdict::Error(_)));
        let open = policy(json!({"failureMode": "open"}));
        let v = open.on_call_response(
            &mut Fixture::new().cx(),
            &answer(503, &[]),
            Subject::Complete,
        );
        assert!(is_continue(&v));
    }

    #[test]
    fn the_url_is_required_and_must_be_http() {
        assert_eq!(errors(&KIND, json!({})), vec!["config.url: is required"]);
        assert_eq!(
            errors(&KIND, json!({"url": "ftp://x"})),
            vec!["config.url: \"ftp://x\" is not an http:// or https:// URL"]
        );
    }

    #[test]
    fn the_call_target_is_declared_for_tollgate_gen() {
        let settings = crate::model::GatewaySettings::default();
        let mut cx = BuildContext::new("i", &settings, &|_| None);
        let config = json!({"url": "https://authz.example.com/check", "cluster": "authz"});
        let mut problems = Problems::default();
        let mut fields = Fields::of(&config, "config", &mut problems).unwrap();
        (KIND.build)(&mut cx, &mut fields, &mut problems).unwrap();
        assert_eq!(cx.call_targets.len(), 1);
        assert_eq!(cx.call_targets[0].cluster, "authz");
        assert!(cx.call_targets[0].endpoint.https);
    }
}
