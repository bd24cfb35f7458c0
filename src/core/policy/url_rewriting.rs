//! URL Rewriting (Apiman `URLRewritingPolicy`): rewrites URLs with a regular expression and a
//! Java replacement (`$1`, `${name}`) in the request URL, the request headers, the response
//! headers and the response body, each where configured.
//!
//! - Request URL: Java's `replaceAll` on the path below the API (without the query), so the
//!   backend gets the rewritten path (and later policies see it, as in Apiman).
//! - Headers: `replaceAll` on every value (pseudo-headers and `Content-Length` are left alone).
//! - Response body: as Apiman, only URLs are rewritten: each `http://` or `https://` URL found in
//!   the body gets `replaceFirst`; other text is untouched. Only text bodies (`text/*`, JSON,
//!   XML, JavaScript, form data) without a `Content-Encoding` are read; `Content-Length` is set
//!   to the new length. A body larger than `maxBodySize` passes unrewritten, with a log line.
//!
//! Differences from Apiman: the field names of Apiman's docs (`processBody`, `processHeaders`:
//! the response's) are read too; a replacement naming a group the regex lacks is refused at load
//! (Apiman fails every request); URLs in the body may contain `%`-escapes (Apiman cuts them
//! there); binary and compressed bodies are never touched; `Content-Length` is exact rather than
//! removed.

use super::jsonp::{body_size, DEFAULT_MAX_BODY};
use super::{Body, Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::http::{HeaderMap, Request, Response};
use crate::json::{Fields, Problems};
use crate::pattern::Rewrite;

pub const KIND: PolicyKind = PolicyKind {
    id: "url-rewriting",
    name: "URL Rewriting",
    apiman_names: &["URLRewritingPolicy", "url-rewriting"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Rewrites URLs with a regex and a Java replacement (`$1`) in the request URL, request and response headers and the response body (URLs only).",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "none",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "fromRegex",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "a regex found anywhere in the text (Java's `replaceAll`, not a whole match)",
        },
        FieldDoc {
            name: "toReplacement",
            aliases: &["toReplace"],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the replacement: `$1`, `${name}` for groups, `\\$` for a `$`",
        },
        FieldDoc {
            name: "processRequestUrl",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "rewrite the path below the API (not the query) before it goes to the backend",
        },
        FieldDoc {
            name: "processRequestHeaders",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "rewrite every request header value",
        },
        FieldDoc {
            name: "processResponseHeaders",
            aliases: &["processHeaders"],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "rewrite every response header value (`Location`, `Link`, ...)",
        },
        FieldDoc {
            name: "processResponseBody",
            aliases: &["processBody"],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "rewrite each `http(s)://` URL in a text response body (`replaceFirst` per URL)",
        },
        FieldDoc {
            name: "maxBodySize",
            aliases: &[],
            ty: "integer",
            default: "524288",
            apiman: false,
            meaning: "bytes: a larger body passes unrewritten (with a log line) rather than held; keep it below Envoy's `per_connection_buffer_limit_bytes` (1 MiB by default)",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"fromRegex": "https?://orders\\.internal:8080/(.*)", "toReplacement": "https://api.example.com/orders/$1",
                 "processRequestUrl": false, "processRequestHeaders": false, "processResponseHeaders": true,
                 "processResponseBody": true, "maxBodySize": 262144}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

pub struct UrlRewriting {
    rewrite: Rewrite,
    request_url: bool,
    request_headers: bool,
    response_headers: bool,
    response_body: bool,
    max_body: usize,
    phases: PhaseSet,
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<UrlRewriting> {
    let from = f.string(&["fromRegex"], problems);
    let to = f.string(&["toReplacement", "toReplace"], problems);
    let mut flag = |names: &[&str]| f.bool(names, problems).unwrap_or(false);
    let request_url = flag(&["processRequestUrl"]);
    let request_headers = flag(&["processRequestHeaders"]);
    let response_headers = flag(&["processResponseHeaders", "processHeaders"]);
    let response_body = flag(&["processResponseBody", "processBody"]);
    let max_body = body_size(f, "maxBodySize", DEFAULT_MAX_BODY, problems);
    if !(request_url || request_headers || response_headers || response_body) {
        problems.warning(
            f.path(),
            "none of processRequestUrl, processRequestHeaders, processResponseHeaders, processResponseBody is true: the policy changes nothing",
        );
    }
    let (Some(from), Some(to)) = (from, to) else {
        for (field, missing) in [
            ("fromRegex", !f.has("fromRegex")),
            (
                "toReplacement",
                !f.has("toReplacement") && !f.has("toReplace"),
            ),
        ] {
            if missing {
                problems.error(&f.field_path(field), "is required");
            }
        }
        return None;
    };
    let rewrite = match Rewrite::new(&from, &to) {
        Ok(r) => r,
        Err(e) => {
            let field = if e.contains("regular expression") {
                "fromRegex"
            } else {
                "toReplacement"
            };
            problems.error(&f.field_path(field), e);
            return None;
        }
    };
    let mut phases = Vec::new();
    if request_url || request_headers {
        phases.push(Phase::RequestHeaders);
    }
    if response_headers || response_body {
        phases.push(Phase::ResponseHeaders);
    }
    if response_body {
        phases.push(Phase::ResponseBody);
    }
    Some(UrlRewriting {
        rewrite,
        request_url,
        request_headers,
        response_headers,
        response_body,
        max_body,
        phases: PhaseSet::of(&phases),
    })
}

/// Rewrites every value of every header but pseudo-headers and `Content-Length`.
fn rewrite_headers(rewrite: &Rewrite, headers: &mut HeaderMap) {
    let mut changed: Vec<String> = Vec::new();
    for (name, value) in headers.iter() {
        if name.starts_with(':') || name == "content-length" || changed.iter().any(|c| c == name) {
            continue;
        }
        if rewrite.replace_all(value.as_bytes()).is_some() {
            changed.push(name.to_string());
        }
    }
    for name in changed {
        let values: Vec<String> = headers
            .get_all(&name)
            .map(|v| rewrite.replace_all_str(v).unwrap_or_else(|| v.to_string()))
            .collect();
        headers.remove(&name);
        for v in values {
            headers.add(&name, &v);
        }
    }
}

/// Bodies worth reading for URLs: text, JSON, XML, JavaScript and form data.
pub fn is_text(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/x-www-form-urlencoded"
        )
}

/// RFC 3986 characters (and `%` of its escapes), as Apiman's scanner reads a URL.
fn is_url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
}

/// The length of the `http://` or `https://` (any case) starting at `at`, if one does.
fn scheme_at(body: &[u8], at: usize) -> Option<usize> {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if body
            .get(at..at + scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        {
            return Some(scheme.len());
        }
    }
    None
}

/// Each URL in `body` with `replaceFirst` applied; `None` when none changed.
pub fn rewrite_urls(rewrite: &Rewrite, body: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < body.len() {
        let Some(scheme) = (matches!(body[i], b'h' | b'H'))
            .then(|| scheme_at(body, i))
            .flatten()
        else {
            i += 1;
            continue;
        };
        let end = body[i + scheme..]
            .iter()
            .position(|b| !is_url_byte(*b))
            .map_or(body.len(), |n| i + scheme + n);
        if let Some(new) = rewrite.replace_first(&body[i..end]) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
            o.extend_from_slice(&body[copied..i]);
            o.extend_from_slice(&new);
            copied = end;
        }
        i = end;
    }
    let mut out = out?;
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

impl Policy for UrlRewriting {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        self.phases
    }

    fn body_limit(&self) -> Option<usize> {
        Some(self.max_body)
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        if self.request_url {
            let destination = cx.destination().to_string();
            if let Some(path) = self.rewrite.replace_all_str(&destination) {
                if path != destination {
                    cx.state.resource = if path.starts_with('/') || path.is_empty() {
                        path
                    } else {
                        format!("/{path}")
                    };
                }
            }
        }
        if self.request_headers {
            rewrite_headers(&self.rewrite, &mut request.headers);
        }
        Verdict::Continue
    }

    fn on_response(&self, cx: &mut Context, response: &mut Response) -> Verdict {
        if self.response_headers {
            rewrite_headers(&self.rewrite, &mut response.headers);
        }
        if self.response_body {
            let headers = &response.headers;
            let readable = headers.get("content-type").is_some_and(is_text)
                && headers
                    .get("content-encoding")
                    .is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
            if !readable {
                cx.skip_body(Phase::ResponseBody);
            }
        }
        Verdict::Continue
    }

    fn on_response_body(
        &self,
        _cx: &mut Context,
        body: &mut Body,
        headers: &mut HeaderMap,
    ) -> Verdict {
        if let Some(rewritten) = rewrite_urls(&self.rewrite, &body.bytes) {
            if headers.contains("content-length") {
                headers.set("content-length", &rewritten.len().to_string());
            }
            body.replace(rewritten);
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    const FROM: &str = "https?://orders\\.internal:8080/(.*)";
    const TO: &str = "https://api.example.com/orders/$1";

    fn policy(flags: serde_json::Value) -> Box<dyn Policy> {
        let mut config = json!({"fromRegex": FROM, "toReplacement": TO});
        if let (Some(c), Some(e)) = (config.as_object_mut(), flags.as_object()) {
            c.extend(e.clone());
        }
        compile(&KIND, config)
    }

    fn body_of(p: &dyn Policy, f: &mut Fixture, headers: &mut HeaderMap, text: &str) -> Body {
        let mut body = Body::new(text.as_bytes().to_vec());
        let mut cx = f.cx();
        p.on_response_body(&mut cx, &mut body, headers);
        body
    }

    #[test]
    fn the_request_path_the_backend_gets_is_rewritten_with_groups() {
        let p = compile(
            &KIND,
            json!({"fromRegex": "^/v1/(\\w+)/(\\d+)$", "toReplacement": "/$1?id=$2", "processRequestUrl": true}),
        );
        let mut f = Fixture::at("/v1/orders/42");
        f.on_request(p.as_ref(), &mut request("GET", &[]));
        assert_eq!(f.state.resource, "/orders?id=42");
    }

    #[test]
    fn a_rewritten_path_keeps_its_leading_slash() {
        let p = compile(
            &KIND,
            json!({"fromRegex": "^/old/", "toReplacement": "", "processRequestUrl": true}),
        );
        let mut f = Fixture::at("/old/x");
        f.on_request(p.as_ref(), &mut request("GET", &[]));
        assert_eq!(f.state.resource, "/x");
    }

    #[test]
    fn request_headers_are_rewritten_when_asked() {
        let p = policy(json!({"processRequestHeaders": true}));
        let mut req = request(
            "GET",
            &[
                ("referer", "http://orders.internal:8080/list"),
                (":path", "/x"),
            ],
        );
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(
            req.headers.get("referer"),
            Some("https://api.example.com/orders/list")
        );
        assert_eq!(req.headers.get(":path"), Some("/x"));
    }

    #[test]
    fn response_headers_are_rewritten_with_the_legacy_field_name() {
        let p = policy(json!({"processHeaders": true}));
        let mut resp = response(
            201,
            &[
                ("location", "http://orders.internal:8080/orders/7"),
                ("link", "<http://orders.internal:8080/a>; rel=next"),
                ("content-length", "0"),
            ],
        );
        let mut f = Fixture::new();
        f.on_response(p.as_ref(), &mut resp);
        assert_eq!(
            resp.headers.get("location"),
            Some("https://api.example.com/orders/orders/7")
        );
        assert_eq!(
            resp.headers.get("link"),
            Some("<https://api.example.com/orders/a>; rel=next")
        );
    }

    #[test]
    fn body_urls_are_rewritten_and_content_length_follows() {
        let p = policy(json!({"processBody": true}));
        let mut f = Fixture::new();
        let text =
            r#"{"self":"http://orders.internal:8080/orders/7","note":"see http://elsewhere/x"}"#;
        let mut headers = HeaderMap::from_pairs(vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), text.len().to_string()),
        ]);
        let body = body_of(p.as_ref(), &mut f, &mut headers, text);
        let expected =
            r#"{"self":"https://api.example.com/orders/orders/7","note":"see http://elsewhere/x"}"#;
        assert_eq!(String::from_utf8_lossy(&body.bytes), expected);
        assert_eq!(
            headers.get("content-length"),
            Some(expected.len().to_string().as_str())
        );
    }

    #[test]
    fn only_urls_are_rewritten_in_a_body_not_other_text() {
        let p = compile(
            &KIND,
            json!({"fromRegex": "internal", "toReplacement": "public", "processResponseBody": true}),
        );
        let mut f = Fixture::new();
        let mut headers = HeaderMap::new();
        let body = body_of(
            p.as_ref(),
            &mut f,
            &mut headers,
            "internal use: https://internal/a",
        );
        assert_eq!(body.bytes, b"internal use: https://public/a");
    }

    #[test]
    fn binary_and_compressed_bodies_are_not_read() {
        let p = policy(json!({"processResponseBody": true}));
        for headers in [
            vec![("content-type", "image/png")],
            vec![
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            vec![],
        ] {
            let mut f = Fixture::new();
            f.on_response(p.as_ref(), &mut response(200, &headers));
            assert!(f.state.skips_body(0, Phase::ResponseBody), "{headers:?}");
        }
        let mut f = Fixture::new();
        f.on_response(
            p.as_ref(),
            &mut response(200, &[("content-type", "text/html; charset=utf-8")]),
        );
        assert!(!f.state.skips_body(0, Phase::ResponseBody));
    }

    #[test]
    fn only_the_phases_configured_are_taken_part_in() {
        let p = policy(json!({"processRequestUrl": true}));
        assert!(p.phases().contains(Phase::RequestHeaders));
        assert!(!p.phases().contains(Phase::ResponseHeaders));
        assert!(!p.phases().contains(Phase::ResponseBody));
    }

    #[test]
    fn a_replacement_naming_a_missing_group_is_refused_with_its_path() {
        assert_eq!(
            errors(
                &KIND,
                json!({"fromRegex": "a(b)", "toReplacement": "$2", "processBody": true})
            ),
            vec!["config.toReplacement: \"$2\" refers to group 2, but the regex has 1"]
        );
        assert_eq!(
            errors(&KIND, json!({"processBody": true})),
            vec![
                "config.fromRegex: is required",
                "config.toReplacement: is required"
            ]
        );
    }

    #[test]
    fn a_policy_that_changes_nothing_is_warned_about() {
        let (_, problems) = crate::policy::testing::build(
            &KIND,
            json!({"fromRegex": "a", "toReplacement": "b"}),
            &|_| None,
        );
        assert_eq!(problems.warnings.len(), 1, "{:?}", problems.warnings);
    }
}
