//! JSONP (Apiman plugin `jsonp-policy`): a request carrying the callback parameter gets its JSON
//! answer wrapped in a call of that function, so a browser can load it with a `<script>` tag.
//!
//! The callback parameter never reaches the backend. A 2xx JSON response is rewritten to
//! `/**/callback(<body>)` with `Content-Type: application/javascript` (its parameters kept),
//! `X-Content-Type-Options: nosniff` and a `Content-Length` that matches; anything else (an
//! error, a non-JSON body, the gateway's own errors) passes unchanged.
//!
//! Differences from Apiman: the callback name must be a JavaScript identifier path
//! (`handle`, `app.cb_1`, `$jq123`), otherwise the request is refused with 400 and the name is
//! never written into a response (Apiman reflects any text: script injection); only 2xx JSON
//! responses are wrapped (Apiman wraps everything, including error pages); the `/**/` prefix and
//! `nosniff` defuse content sniffing; `Content-Length` is exact (Apiman adds the callback's
//! length even to an empty body it does not wrap). A body larger than `maxBodySize` is passed
//! on unwrapped (with a log line) rather than held in memory.

use super::{
    Capabilities, Context, FailureType, FieldDoc, Phase, PhaseSet, Policy, PolicyFailure,
    PolicyKind, Verdict,
};
use crate::http::{query_param, query_without, HeaderMap, Request, Response};
use crate::json::{Fields, Problems};
use crate::policy::Body;

pub const KIND: PolicyKind = PolicyKind {
    id: "jsonp",
    name: "JSONP",
    apiman_names: &["jsonp-policy", "JsonpPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Wraps a 2xx JSON response in a call of the function the request names (`?callback=fn`), as `application/javascript`; the parameter never reaches the backend.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "15001, 400 Other: `JSONP: the callback name is not a JavaScript identifier.` (the name is not echoed)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "callbackParamName",
            aliases: &[],
            ty: "string",
            default: "callback",
            apiman: true,
            meaning: "the query parameter naming the function (case-insensitive, as Apiman reads query parameters)",
        },
        FieldDoc {
            name: "maxBodySize",
            aliases: &[],
            ty: "integer",
            default: "524288",
            apiman: false,
            meaning: "bytes: a larger response is passed on unwrapped (with a log line) rather than held; keep it below Envoy's `per_connection_buffer_limit_bytes` (1 MiB by default)",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"callbackParamName": "jsonp", "maxBodySize": 262144}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

pub const FAILURE_CODE: u32 = 15001;

/// What a body policy holds in memory at most unless configured otherwise: half of Envoy's
/// default buffer limit (1 MiB), which a held body must stay below.
pub const DEFAULT_MAX_BODY: usize = 512 * 1024;

/// The largest limit that stays clear of Envoy's default buffer limit (1 MiB) by a read's worth:
/// a held body over Envoy's limit is answered 500 by Envoy (verified on Envoy 1.40).
const ENVOY_SAFE_BODY: i64 = 1024 * 1024 - 64 * 1024;

/// The largest `maxBodySize` accepted.
pub const MAX_BODY: i64 = 64 * 1024 * 1024;

/// Longest callback name accepted.
const MAX_NAME: usize = 128;

pub struct Jsonp {
    param: String,
    max_body: usize,
}

/// Reads a `maxBodySize`-style byte limit (1 byte to 64 MiB).
pub fn body_size(f: &mut Fields, name: &str, default: usize, problems: &mut Problems) -> usize {
    match f.integer(&[name], problems) {
        None => default,
        Some(n) if (1..=MAX_BODY).contains(&n) => {
            if n > ENVOY_SAFE_BODY {
                problems.warning(
                    &f.field_path(name),
                    format!("{n} bytes is more than Envoy holds by default: unless its per_connection_buffer_limit_bytes is raised above it (plus a read), Envoy answers 500 to a body between 1 MiB and this"),
                );
            }
            usize::try_from(n).unwrap_or(default)
        }
        Some(n) => {
            problems.error(
                &f.field_path(name),
                format!("{n} is not a size from 1 to {MAX_BODY} bytes"),
            );
            default
        }
    }
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<Jsonp> {
    let param = f
        .string(&["callbackParamName"], problems)
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| "callback".to_string());
    if param.is_empty() || param.contains(['&', '=', '#', ' ']) {
        problems.error(
            &f.field_path("callbackParamName"),
            format!("\"{param}\" is not a query parameter name"),
        );
    }
    let max_body = body_size(f, "maxBodySize", DEFAULT_MAX_BODY, problems);
    Some(Jsonp { param, max_body })
}

/// `name` or `a.b.c`, each part a JavaScript identifier of ASCII letters, digits, `_` and `$`
/// not starting with a digit.
pub fn is_callback_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.split('.').all(|part| {
            let mut bytes = part.bytes();
            bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'$')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        })
}

/// `application/json`, `text/json` or any `+json` type.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The callback a request named (in this policy's slot).
struct Callback(String);

impl Policy for Jsonp {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[
            Phase::RequestHeaders,
            Phase::ResponseHeaders,
            Phase::ResponseBody,
        ])
    }

    fn body_limit(&self) -> Option<usize> {
        Some(self.max_body)
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let name = cx
            .state
            .query
            .as_deref()
            .and_then(|q| query_param(q, &self.param));
        let Some(name) = name else {
            cx.skip_body(Phase::ResponseBody);
            return Verdict::Continue;
        };
        // The parameter is the gateway's, not the backend's.
        cx.state.query = cx
            .state
            .query
            .take()
            .and_then(|q| query_without(&q, &self.param));
        let name = name.trim();
        if name.is_empty() || request.method.eq_ignore_ascii_case("HEAD") {
            cx.skip_body(Phase::ResponseBody);
            return Verdict::Continue;
        }
        if !is_callback_name(name) {
            return Verdict::Fail(
                PolicyFailure::new(
                    FailureType::Other,
                    FAILURE_CODE,
                    "JSONP: the callback name is not a JavaScript identifier.",
                )
                .with_status(400),
            );
        }
        cx.set_slot(Callback(name.to_string()));
        Verdict::Continue
    }

    fn on_response(&self, cx: &mut Context, response: &mut Response) -> Verdict {
        let wraps = (200..300).contains(&response.status)
            && response.headers.get("content-type").is_some_and(is_json);
        if !wraps {
            cx.skip_body(Phase::ResponseBody);
        }
        Verdict::Continue
    }

    fn on_response_body(
        &self,
        cx: &mut Context,
        body: &mut Body,
        headers: &mut HeaderMap,
    ) -> Verdict {
        let Some(Callback(name)) = cx.slot::<Callback>() else {
            return Verdict::Continue;
        };
        let mut wrapped = Vec::with_capacity(body.bytes.len() + name.len() + 6);
        wrapped.extend_from_slice(b"/**/");
        wrapped.extend_from_slice(name.as_bytes());
        wrapped.push(b'(');
        wrapped.extend_from_slice(&body.bytes);
        wrapped.push(b')');
        let content_type = headers.get("content-type").unwrap_or("application/json");
        let params = content_type
            .split_once(';')
            .map(|(_, p)| format!(";{p}"))
            .unwrap_or_default();
        headers.set("content-type", &format!("application/javascript{params}"));
        headers.set("x-content-type-options", "nosniff");
        if headers.contains("content-length") {
            headers.set("content-length", &wrapped.len().to_string());
        }
        body.replace(wrapped);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    fn policy() -> Box<dyn Policy> {
        compile(&KIND, json!({"callbackParamName": "callback"}))
    }

    fn at(query: &str) -> Fixture {
        let mut f = Fixture::at("/items");
        f.state.query = Some(query.to_string());
        f
    }

    /// Runs a request and a JSON response through the policy; returns the body and headers.
    fn wrap(
        query: &str,
        status: u16,
        content_type: &str,
        body: &str,
    ) -> (Fixture, Body, HeaderMap) {
        let p = policy();
        let mut f = at(query);
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
        let mut resp = response(
            status,
            &[
                ("content-type", content_type),
                ("content-length", &body.len().to_string()),
            ],
        );
        f.on_response(p.as_ref(), &mut resp);
        let mut b = Body::new(body.as_bytes().to_vec());
        let mut headers = resp.headers;
        if !f.state.skips_body(0, Phase::ResponseBody) {
            let mut cx = f.cx();
            p.on_response_body(&mut cx, &mut b, &mut headers);
        }
        (f, b, headers)
    }

    #[test]
    fn a_json_answer_is_wrapped_in_the_named_callback() {
        let (_, body, headers) = wrap(
            "callback=handle",
            200,
            "application/json; charset=utf-8",
            "{\"a\":1}",
        );
        assert_eq!(body.bytes, b"/**/handle({\"a\":1})");
        assert_eq!(
            headers.get("content-type"),
            Some("application/javascript; charset=utf-8")
        );
        assert_eq!(headers.get("x-content-type-options"), Some("nosniff"));
        assert_eq!(headers.get("content-length"), Some("19"));
    }

    #[test]
    fn the_callback_parameter_is_removed_from_the_upstream_query() {
        let (f, _, _) = wrap(
            "page=2&callback=app.cb&sort=x",
            200,
            "application/json",
            "[]",
        );
        assert_eq!(f.state.query.as_deref(), Some("page=2&sort=x"));
        let (f, _, _) = wrap("callback=cb", 200, "application/json", "[]");
        assert_eq!(f.state.query, None);
    }

    #[test]
    fn without_the_parameter_nothing_is_wrapped_or_held() {
        let (f, body, headers) = wrap("page=2", 200, "application/json", "[]");
        assert!(f.state.skips_body(0, Phase::ResponseBody));
        assert_eq!(body.bytes, b"[]");
        assert_eq!(headers.get("content-type"), Some("application/json"));
    }

    #[test]
    fn an_error_response_is_not_wrapped() {
        let (f, body, _) = wrap("callback=cb", 404, "application/json", "{}");
        assert!(f.state.skips_body(0, Phase::ResponseBody));
        assert!(!body.modified);
    }

    #[test]
    fn a_non_json_response_is_not_wrapped() {
        let (f, _, _) = wrap("callback=cb", 200, "text/html", "<p>");
        assert!(f.state.skips_body(0, Phase::ResponseBody));
    }

    #[test]
    fn a_callback_that_is_not_an_identifier_is_refused_and_not_echoed() {
        let p = policy();
        let mut f = at("callback=alert(document.cookie)//");
        let failure = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!((failure.status(), failure.code), (400, FAILURE_CODE));
        assert!(!failure.message.contains("alert"));
    }

    #[test]
    fn callback_names_are_javascript_identifier_paths() {
        for ok in ["cb", "$", "_x1", "jQuery123_456", "app.handlers.done"] {
            assert!(is_callback_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1cb",
            "a..b",
            "a.",
            "cb()",
            "a-b",
            "x;alert(1)",
            "caf\u{e9}",
            &"a".repeat(129),
        ] {
            assert!(!is_callback_name(bad), "{bad}");
        }
    }

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=UTF-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/plain"));
    }

    #[test]
    fn a_body_limit_beyond_envoys_default_buffer_is_warned_about() {
        let (_, problems) =
            crate::policy::testing::build(&KIND, json!({"maxBodySize": 2097152}), &|_| None);
        assert!(problems.errors.is_empty());
        assert_eq!(problems.warnings.len(), 1, "{:?}", problems.warnings);
    }

    #[test]
    fn a_bad_parameter_name_or_size_is_refused_with_its_path() {
        assert_eq!(
            errors(&KIND, json!({"callbackParamName": "a=b"})),
            vec!["config.callbackParamName: \"a=b\" is not a query parameter name"]
        );
        assert_eq!(
            errors(&KIND, json!({"maxBodySize": 0})),
            vec!["config.maxBodySize: 0 is not a size from 1 to 67108864 bytes"]
        );
    }
}
