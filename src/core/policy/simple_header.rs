//! Simple Header (Apiman plugin `simple-header-policy`): add headers and strip headers, on the
//! request, the response or both. On each side headers are added first, then stripped.
//!
//! Differences from Apiman, which has bugs here:
//! - `stripType` and `applyTo` are honoured (Apiman puts every `Both` rule into the name *and*
//!   value patterns of both sides);
//! - `with: String` matches the pattern literally (Apiman always treats it as a regex; a pattern
//!   that looks like one gets a warning at load);
//! - an empty strip list strips nothing (Apiman strips every header with an empty value);
//! - a `Header` value on the response side copies the request's header (Apiman fails with 500);
//! - pseudo-headers (`:path`, `:authority`, ...) are never stripped.

use super::{
    BuildContext, Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind, Verdict,
};
use crate::http::{HeaderMap, Request, Response};
use crate::json::{Fields, Problems};
use crate::pattern::Pattern;

pub const KIND: PolicyKind = PolicyKind {
    id: "simple-header",
    name: "Simple Header",
    apiman_names: &["simple-header-policy", "SimpleHeaderPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Adds headers, then strips headers, on the request, the response or both.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "none",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "addHeaders",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "headers to add",
        },
        FieldDoc {
            name: "addHeaders[].headerName",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the header to add",
        },
        FieldDoc {
            name: "addHeaders[].headerValue",
            aliases: &[],
            ty: "string",
            default: "\"\"",
            apiman: true,
            meaning: "the value, or what `valueType` reads it from",
        },
        FieldDoc {
            name: "addHeaders[].valueType",
            aliases: &[],
            ty: "String|Env|System Properties|Header",
            default: "String",
            apiman: true,
            meaning: "`Env` / `System Properties`: the VM environment variable named by `headerValue`; `Header`: the request header named by it (on both sides)",
        },
        FieldDoc {
            name: "addHeaders[].applyTo",
            aliases: &[],
            ty: "Request|Response|Both",
            default: "",
            apiman: true,
            meaning: "where to add it; without it the header is never added (as in Apiman, with a load warning)",
        },
        FieldDoc {
            name: "addHeaders[].overwrite",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "replace an existing header (else it is added only when absent)",
        },
        FieldDoc {
            name: "stripHeaders",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "headers to remove (after adding)",
        },
        FieldDoc {
            name: "stripHeaders[].stripType",
            aliases: &[],
            ty: "Key|Value",
            default: "Key",
            apiman: true,
            meaning: "match the header's name or its value",
        },
        FieldDoc {
            name: "stripHeaders[].with",
            aliases: &[],
            ty: "String|Regex",
            default: "Regex",
            apiman: true,
            meaning: "a literal (case-insensitive) or a regex that must match the whole name/value (case-insensitive)",
        },
        FieldDoc {
            name: "stripHeaders[].pattern",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "what to match",
        },
        FieldDoc {
            name: "stripHeaders[].applyTo",
            aliases: &[],
            ty: "Request|Response|Both",
            default: "Both",
            apiman: true,
            meaning: "where to strip",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"addHeaders": [{"headerName": "X-Gateway", "headerValue": "tollgate", "valueType": "String", "applyTo": "Both", "overwrite": true}],
                 "stripHeaders": [{"stripType": "Key", "with": "Regex", "pattern": "x-internal-.*", "applyTo": "Response"}]}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| build(cx, f, problems).map(|p| Box::new(p) as _),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
    Both,
}

impl Side {
    fn covers(self, side: Side) -> bool {
        self == Side::Both || self == side
    }
}

const SIDES: &[&str] = &["Request", "Response", "Both"];

fn side(i: usize) -> Side {
    match i {
        0 => Side::Request,
        1 => Side::Response,
        _ => Side::Both,
    }
}

#[derive(Debug, Clone)]
enum Value {
    Fixed(String),
    /// The value of this request header (empty if absent).
    RequestHeader(String),
}

#[derive(Debug, Clone)]
struct AddRule {
    name: String,
    value: Value,
    side: Side,
    overwrite: bool,
}

/// One side's strip rules, compiled.
#[derive(Debug, Default)]
struct Strip {
    names: Matcher,
    values: Matcher,
}

#[derive(Debug, Default)]
struct Matcher {
    literals: Vec<String>,
    regex: Option<Pattern>,
}

impl Matcher {
    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.regex.is_none()
    }

    fn matches(&self, text: &str) -> bool {
        self.literals.iter().any(|l| l.eq_ignore_ascii_case(text))
            || self.regex.as_ref().is_some_and(|r| r.is_match(text))
    }
}

pub struct SimpleHeader {
    add: Vec<AddRule>,
    strip_request: Strip,
    strip_response: Strip,
    /// Request headers copied into response headers: kept from the request phase.
    response_copies: Vec<String>,
    /// Only the sides that have rules, so a request-only policy costs no response-header read.
    phases: PhaseSet,
}

fn build(cx: &mut BuildContext, f: &mut Fields, problems: &mut Problems) -> Option<SimpleHeader> {
    let mut ok = true;
    let mut add = Vec::new();
    for (path, v) in f.array(&["addHeaders"], problems) {
        let Some(mut a) = Fields::of(v, &path, problems) else {
            ok = false;
            continue;
        };
        let name = a.string(&["headerName"], problems).unwrap_or_default();
        let name = name.trim().to_string();
        if name.is_empty() || !name.bytes().all(crate::http::is_token_byte) {
            problems.error(
                &a.field_path("headerName"),
                format!("\"{name}\" is not a valid header name"),
            );
            ok = false;
        }
        let raw = a.string(&["headerValue"], problems).unwrap_or_default();
        let value_type = a
            .choice(
                &["valueType"],
                &["String", "Env", "System Properties", "Header"],
                problems,
            )
            .unwrap_or(0);
        let value = match value_type {
            1 | 2 => {
                // No JVM here: system properties are read from the environment too.
                let resolved = cx.env(raw.trim()).unwrap_or_default();
                if resolved.is_empty() {
                    problems.warning(
                        &a.field_path("headerValue"),
                        format!(
                            "environment variable \"{raw}\" is not set; the header is added empty"
                        ),
                    );
                }
                Value::Fixed(resolved)
            }
            3 => Value::RequestHeader(raw.trim().to_string()),
            _ => Value::Fixed(raw),
        };
        if let Value::Fixed(v) = &value {
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                problems.error(&a.field_path("headerValue"), "must not contain line breaks");
                ok = false;
            }
        }
        let side = match a.choice(&["applyTo"], SIDES, problems) {
            Some(i) => Some(side(i)),
            None => {
                if !a.has("applyTo") {
                    problems.warning(
                        &a.field_path("applyTo"),
                        "is missing, so this header is never added (as in Apiman); set Request, Response or Both",
                    );
                }
                None
            }
        };
        let overwrite = a.bool(&["overwrite"], problems).unwrap_or(false);
        a.finish(problems);
        if let Some(side) = side {
            add.push(AddRule {
                name,
                value,
                side,
                overwrite,
            });
        }
    }

    // Per side and kind: literal names/values and regex alternatives.
    let mut strip_patterns: [[(Vec<String>, Vec<String>); 2]; 2] = Default::default();
    for (path, v) in f.array(&["stripHeaders"], problems) {
        let Some(mut s) = Fields::of(v, &path, problems) else {
            ok = false;
            continue;
        };
        let by_value = s.choice(&["stripType"], &["Key", "Value"], problems) == Some(1);
        let literal = s.choice(&["with"], &["String", "Regex"], problems) == Some(0);
        let side = s
            .choice(&["applyTo"], SIDES, problems)
            .map_or(Side::Both, side);
        let pattern = s.string(&["pattern"], problems).unwrap_or_default();
        let pattern = pattern.trim().to_string();
        if pattern.is_empty() {
            problems.error(&s.field_path("pattern"), "is required");
            ok = false;
        } else if literal && pattern.contains(['*', '+', '?', '[', '(', '|', '^', '$', '\\']) {
            problems.warning(
                &s.field_path("pattern"),
                format!("with is String, so \"{pattern}\" is matched literally; Apiman would have treated it as a regular expression (set with: Regex for that)"),
            );
        }
        if !literal {
            // Checked alone with the flags it runs with, so a bad pattern is named exactly.
            if let Err(message) = Pattern::any_full_ignore_case(&[&pattern]) {
                problems.error(&s.field_path("pattern"), message);
                ok = false;
                continue;
            }
        }
        s.finish(problems);
        for (i, target) in [Side::Request, Side::Response].into_iter().enumerate() {
            if side.covers(target) {
                let (literals, regexes) = &mut strip_patterns[i][usize::from(by_value)];
                if literal {
                    literals.push(pattern.clone());
                } else {
                    regexes.push(pattern.clone());
                }
            }
        }
    }
    let [request, response] = &strip_patterns;
    let response_copies: Vec<String> = add
        .iter()
        .filter(|a| a.side.covers(Side::Response))
        .filter_map(|a| match &a.value {
            Value::RequestHeader(h) => Some(h.clone()),
            Value::Fixed(_) => None,
        })
        .collect();
    let side_used = |side: Side, strip: &[(Vec<String>, Vec<String>); 2]| {
        add.iter().any(|a| a.side.covers(side))
            || strip.iter().any(|(l, r)| !l.is_empty() || !r.is_empty())
    };
    let stripped = |side: &str, which: &[(Vec<String>, Vec<String>); 2]| {
        Ok::<_, String>(Strip {
            names: matcher(&which[0]).map_err(|e| format!("the {side} header-name {e}"))?,
            values: matcher(&which[1]).map_err(|e| format!("the {side} header-value {e}"))?,
        })
    };
    let (strip_request, strip_response) =
        match (stripped("request", request), stripped("response", response)) {
            (Ok(req), Ok(resp)) => (req, resp),
            (req, resp) => {
                for message in [req.err(), resp.err()].into_iter().flatten() {
                    problems.error(&f.field_path("stripHeaders"), message);
                }
                return None;
            }
        };
    let mut phases = PhaseSet::NONE;
    if side_used(Side::Request, request) || !response_copies.is_empty() {
        phases = phases.union(PhaseSet::of(&[Phase::RequestHeaders]));
    }
    if side_used(Side::Response, response) {
        phases = phases.union(PhaseSet::of(&[Phase::ResponseHeaders]));
    }
    ok.then(|| SimpleHeader {
        phases,
        add,
        strip_request,
        strip_response,
        response_copies,
    })
}

/// A side's strip rules of one kind. Apiman joins all their patterns into one
/// case-insensitive, whole-value regex; patterns that load one by one can still be too complex
/// together, and that refuses the configuration too (it must never load without them).
fn matcher((literals, regexes): &(Vec<String>, Vec<String>)) -> Result<Matcher, String> {
    let patterns: Vec<&str> = regexes.iter().map(String::as_str).collect();
    let regex = match patterns.as_slice() {
        [] => None,
        _ => Some(Pattern::any_full_ignore_case(&patterns).map_err(|message| {
            let reason = message
                .split_once(" is too complex: ")
                .map_or(message.as_str(), |(_, r)| r);
            format!("patterns together are too complex: {reason}")
        })?),
    };
    Ok(Matcher {
        literals: literals.clone(),
        regex,
    })
}

/// Request header values kept for response-side `Header` values.
struct Copied(Vec<(String, String)>);

impl SimpleHeader {
    /// Adds then strips on one side. `Header` values come from `copied` on the response side
    /// and from the request being modified on the request side.
    fn apply(&self, headers: &mut HeaderMap, side: Side, copied: Option<&[(String, String)]>) {
        for rule in self.add.iter().filter(|r| r.side.covers(side)) {
            if !rule.overwrite && headers.contains(&rule.name) {
                continue;
            }
            let value = match (&rule.value, copied) {
                (Value::Fixed(v), _) => v.clone(),
                (Value::RequestHeader(h), Some(copied)) => copied
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(h))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
                (Value::RequestHeader(h), None) => headers.get(h).unwrap_or_default().to_string(),
            };
            headers.set(&rule.name, &value);
        }
        let strip = match side {
            Side::Response => &self.strip_response,
            _ => &self.strip_request,
        };
        if strip.names.is_empty() && strip.values.is_empty() {
            return;
        }
        headers.remove_where(|name, value| {
            !name.starts_with(':') && (strip.names.matches(name) || strip.values.matches(value))
        });
    }
}

impl Policy for SimpleHeader {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        self.phases
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        if !self.response_copies.is_empty() {
            let copied = self
                .response_copies
                .iter()
                .filter_map(|h| request.headers.get(h).map(|v| (h.clone(), v.to_string())))
                .collect();
            cx.set_slot(Copied(copied));
        }
        self.apply(&mut request.headers, Side::Request, None);
        Verdict::Continue
    }

    fn on_response(&self, cx: &mut Context, response: &mut Response) -> Verdict {
        let copied = cx.slot::<Copied>().map(|c| c.0.as_slice()).unwrap_or(&[]);
        self.apply(&mut response.headers, Side::Response, Some(copied));
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{errors, request, response, Fixture};
    use serde_json::json;

    fn policy(config: serde_json::Value) -> Box<dyn Policy> {
        crate::policy::testing::compile(&KIND, config)
    }

    #[test]
    fn adds_a_request_header() {
        let p = policy(
            json!({"addHeaders": [{"headerName": "X-Gw", "headerValue": "tollgate", "valueType": "String", "applyTo": "Request"}]}),
        );
        let mut req = request("GET", &[]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-gw"), Some("tollgate"));
    }

    #[test]
    fn without_overwrite_an_existing_header_is_kept() {
        let p = policy(
            json!({"addHeaders": [{"headerName": "X-Gw", "headerValue": "new", "applyTo": "Both"}]}),
        );
        let mut req = request("GET", &[("x-gw", "old")]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-gw"), Some("old"));
    }

    #[test]
    fn with_overwrite_every_value_is_replaced() {
        let p = policy(
            json!({"addHeaders": [{"headerName": "X-Gw", "headerValue": "new", "applyTo": "Both", "overwrite": true}]}),
        );
        let mut req = request("GET", &[("x-gw", "a"), ("x-gw", "b")]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get_all("x-gw").collect::<Vec<_>>(), vec!["new"]);
    }

    #[test]
    fn request_rules_leave_the_response_alone() {
        let p = policy(
            json!({"addHeaders": [{"headerName": "X-Gw", "headerValue": "v", "applyTo": "Request"}]}),
        );
        let mut resp = response(200, &[]);
        Fixture::new().on_response(p.as_ref(), &mut resp);
        assert!(resp.headers.is_empty());
    }

    #[test]
    fn adds_a_response_header() {
        let p = policy(
            json!({"addHeaders": [{"headerName": "X-Served-By", "headerValue": "gw", "applyTo": "Response"}]}),
        );
        let mut resp = response(200, &[]);
        Fixture::new().on_response(p.as_ref(), &mut resp);
        assert_eq!(resp.headers.get("x-served-by"), Some("gw"));
    }

    #[test]
    fn a_header_value_copies_the_request_header_on_both_sides() {
        let p = policy(
            json!({"addHeaders": [{"headerName": "X-Echo-Agent", "headerValue": "User-Agent", "valueType": "Header", "applyTo": "Both"}]}),
        );
        let mut f = Fixture::new();
        let mut req = request("GET", &[("user-agent", "curl/8")]);
        f.on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-echo-agent"), Some("curl/8"));
        let mut resp = response(200, &[]);
        f.on_response(p.as_ref(), &mut resp);
        assert_eq!(resp.headers.get("x-echo-agent"), Some("curl/8"));
    }

    #[test]
    fn an_env_value_is_read_from_the_environment() {
        let env = |name: &str| (name == "REGION").then(|| "eu-1".to_string());
        let p = crate::policy::testing::build(
            &KIND,
            json!({"addHeaders": [{"headerName": "X-Region", "headerValue": "REGION", "valueType": "Env", "applyTo": "Request"}]}),
            &env,
        )
        .0
        .unwrap();
        let mut req = request("GET", &[]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-region"), Some("eu-1"));
    }

    #[test]
    fn strips_by_name_regex_case_insensitively() {
        let p = policy(
            json!({"stripHeaders": [{"stripType": "Key", "with": "Regex", "pattern": "x-internal-.*", "applyTo": "Request"}]}),
        );
        let mut req = request("GET", &[("X-Internal-Id", "1"), ("x-keep", "2")]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-internal-id"), None);
        assert_eq!(req.headers.get("x-keep"), Some("2"));
    }

    #[test]
    fn strips_by_value() {
        let p = policy(
            json!({"stripHeaders": [{"stripType": "Value", "with": "Regex", "pattern": "secret.*", "applyTo": "Response"}]}),
        );
        let mut resp = response(200, &[("x-a", "Secret-1"), ("x-b", "public")]);
        Fixture::new().on_response(p.as_ref(), &mut resp);
        assert_eq!(resp.headers.get("x-a"), None);
        assert_eq!(resp.headers.get("x-b"), Some("public"));
    }

    #[test]
    fn a_name_rule_does_not_strip_by_value() {
        // Apiman's precedence bug would strip x-b here (its value matches a Both name rule).
        let p = policy(
            json!({"stripHeaders": [{"stripType": "Key", "with": "Regex", "pattern": "server", "applyTo": "Both"}]}),
        );
        let mut resp = response(200, &[("server", "nginx"), ("x-b", "server")]);
        Fixture::new().on_response(p.as_ref(), &mut resp);
        assert_eq!(resp.headers.get("server"), None);
        assert_eq!(resp.headers.get("x-b"), Some("server"));
    }

    #[test]
    fn string_patterns_match_literally() {
        let p = policy(
            json!({"stripHeaders": [{"stripType": "Key", "with": "String", "pattern": "X-Powered-By"}]}),
        );
        let mut resp = response(200, &[("x-powered-by", "php"), ("x-powered-byte", "1")]);
        Fixture::new().on_response(p.as_ref(), &mut resp);
        assert_eq!(resp.headers.get("x-powered-by"), None);
        assert_eq!(resp.headers.get("x-powered-byte"), Some("1"));
    }

    #[test]
    fn headers_with_empty_values_survive_an_empty_strip_list() {
        let p = policy(json!({"addHeaders": [], "stripHeaders": []}));
        let mut req = request("GET", &[("x-empty", "")]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-empty"), Some(""));
    }

    #[test]
    fn added_headers_can_be_stripped_in_the_same_pass() {
        let p = policy(json!({
            "addHeaders": [{"headerName": "X-Tmp", "headerValue": "1", "applyTo": "Request"}],
            "stripHeaders": [{"stripType": "Key", "with": "Regex", "pattern": "x-tmp", "applyTo": "Request"}]}));
        let mut req = request("GET", &[]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-tmp"), None);
    }

    #[test]
    fn pseudo_headers_are_never_stripped() {
        let p = policy(
            json!({"stripHeaders": [{"stripType": "Key", "with": "Regex", "pattern": ".*", "applyTo": "Request"}]}),
        );
        let mut req = request("GET", &[(":path", "/"), ("x-a", "1")]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get(":path"), Some("/"));
        assert_eq!(req.headers.get("x-a"), None);
    }

    #[test]
    fn request_only_rules_take_no_part_in_the_response() {
        let p = policy(
            json!({"addHeaders": [{"headerName": "X-A", "headerValue": "1", "applyTo": "Request"}]}),
        );
        assert_eq!(p.phases(), PhaseSet::of(&[Phase::RequestHeaders]));
        let p = policy(
            json!({"stripHeaders": [{"stripType": "Key", "with": "Regex", "pattern": "server", "applyTo": "Response"}]}),
        );
        assert_eq!(p.phases(), PhaseSet::of(&[Phase::ResponseHeaders]));
    }

    #[test]
    fn an_invalid_strip_regex_is_refused() {
        let e = errors(
            &KIND,
            json!({"stripHeaders": [{"stripType": "Key", "with": "Regex", "pattern": "(x"}]}),
        );
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "config.stripHeaders[0].pattern: \"(x\" is not a valid regular expression"
            ),
            "{}",
            e[0]
        );
    }

    #[test]
    fn strip_patterns_that_load_one_by_one_but_not_together_refuse_the_configuration() {
        // Each is small; as one regex (Apiman joins a side's patterns) the automaton explodes.
        let rule = |p: &str| json!({"stripType": "Key", "with": "Regex", "pattern": p, "applyTo": "Request"});
        let e = errors(
            &KIND,
            json!({"stripHeaders": [rule("authorization"), rule("[a-z/]*[a-m][a-z/]{9}"),
                                    rule("[a-z/]*[n-z][a-z/]{9}")]}),
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "config.stripHeaders: the request header-name patterns together are too complex"
            ),
            "{}",
            e[0]
        );
    }

    #[test]
    fn a_strip_pattern_too_complex_to_load_is_refused_not_dropped() {
        let e = errors(
            &KIND,
            json!({"stripHeaders": [
                {"stripType": "Key", "with": "Regex", "pattern": "authorization"},
                {"stripType": "Key", "with": "Regex", "pattern": "[a-z]{260000}"}]}),
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("config.stripHeaders[1].pattern: \"[a-z]{260000}\" is too complex"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn an_invalid_header_name_is_refused() {
        let e = errors(
            &KIND,
            json!({"addHeaders": [{"headerName": "Bad Name", "headerValue": "v", "applyTo": "Request"}]}),
        );
        assert_eq!(
            e,
            vec!["config.addHeaders[0].headerName: \"Bad Name\" is not a valid header name"]
        );
    }
}
