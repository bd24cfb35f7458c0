//! Expectations and how an observed exchange is checked against them.

use regex::bytes::{Regex, RegexBuilder};
use serde_json::Value;

use super::json::{problem, Obj, Problem};

/// A condition on one header (names compare case-insensitively).
#[derive(Debug, Clone)]
pub enum HeaderCheck {
    /// Some value equals this one exactly.
    Equals(String, String),
    Present(String),
    Absent(String),
    /// Some value matches this regex (searched, not anchored; write `^...$` for a full match).
    Matches(String, Regex),
}

impl PartialEq for HeaderCheck {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (HeaderCheck::Equals(a, b), HeaderCheck::Equals(c, d)) => a == c && b == d,
            (HeaderCheck::Present(a), HeaderCheck::Present(b))
            | (HeaderCheck::Absent(a), HeaderCheck::Absent(b)) => a == b,
            (HeaderCheck::Matches(a, r), HeaderCheck::Matches(b, s)) => {
                a == b && r.as_str() == s.as_str()
            }
            _ => false,
        }
    }
}

impl Eq for HeaderCheck {}

impl HeaderCheck {
    pub fn name(&self) -> &str {
        match self {
            HeaderCheck::Equals(n, _)
            | HeaderCheck::Present(n)
            | HeaderCheck::Absent(n)
            | HeaderCheck::Matches(n, _) => n,
        }
    }
}

/// A condition on a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyCheck {
    Equals(Vec<u8>),
    Contains(String),
    /// The body is JSON and contains this value: objects may have more fields, arrays must
    /// have the same length with each element contained.
    JsonSubset(Value),
}

/// What the backend must (not) have received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendExpect {
    /// `Some(false)`: the backend must not be called.
    pub called: Option<bool>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub cluster: Option<String>,
    pub headers: Vec<HeaderCheck>,
    pub body: Vec<BodyCheck>,
}

impl BackendExpect {
    fn is_empty(&self) -> bool {
        *self == BackendExpect::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expect {
    pub status: Option<u16>,
    pub headers: Vec<HeaderCheck>,
    pub body: Vec<BodyCheck>,
    pub backend: Option<BackendExpect>,
}

impl Expect {
    pub fn status(status: u16) -> Expect {
        Expect {
            status: Some(status),
            ..Expect::default()
        }
    }

    /// Every header name an expectation mentions, lower-cased.
    pub fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .iter()
            .map(|c| c.name().to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

pub const EXPECT_FIELDS: &[&str] = &[
    "status",
    "headers",
    "headersPresent",
    "headersAbsent",
    "headersMatch",
    "body",
    "bodyBase64",
    "bodyContains",
    "bodyJson",
    "backend",
];

pub const BACKEND_FIELDS: &[&str] = &[
    "called",
    "method",
    "path",
    "authority",
    "cluster",
    "headers",
    "headersPresent",
    "headersAbsent",
    "headersMatch",
    "body",
    "bodyBase64",
    "bodyContains",
    "bodyJson",
];

fn regex(pattern: &str, path: &str) -> Result<Regex, Problem> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .build()
        .map_err(|e| problem(path, format!("invalid regex: {e}")))
}

fn header_checks(o: &Obj) -> Result<Vec<HeaderCheck>, Problem> {
    let mut checks = Vec::new();
    if let Some(v) = o.get("headers") {
        let at = o.at("headers");
        match v {
            Value::Object(map) => {
                for (name, value) in map {
                    checks.push(match value {
                        // `"name": null` says the header must be absent.
                        Value::Null => HeaderCheck::Absent(name.clone()),
                        Value::String(s) => HeaderCheck::Equals(name.clone(), s.clone()),
                        Value::Number(n) => HeaderCheck::Equals(name.clone(), n.to_string()),
                        _ => {
                            return Err(problem(
                                &format!("{at}.{name}"),
                                "expected a string, or null for \"absent\"",
                            ))
                        }
                    });
                }
            }
            _ => {
                for (name, value) in super::json::headers(v, &at)? {
                    checks.push(HeaderCheck::Equals(name, value));
                }
            }
        }
    }
    for name in o.strings("headersPresent")? {
        checks.push(HeaderCheck::Present(name));
    }
    for name in o.strings("headersAbsent")? {
        checks.push(HeaderCheck::Absent(name));
    }
    if let Some(v) = o.get("headersMatch") {
        let m = Obj::of(v, &o.at("headersMatch"))?;
        for (name, pattern) in m.map {
            let at = m.at(name);
            let Value::String(p) = pattern else {
                return Err(problem(&at, "expected a regex string"));
            };
            checks.push(HeaderCheck::Matches(name.clone(), regex(p, &at)?));
        }
    }
    Ok(checks)
}

fn body_checks(o: &Obj) -> Result<Vec<BodyCheck>, Problem> {
    let mut checks = Vec::new();
    if let Some(b) = o.body("body", "bodyBase64")? {
        checks.push(BodyCheck::Equals(b));
    }
    if let Some(c) = o.string("bodyContains")? {
        checks.push(BodyCheck::Contains(c.to_string()));
    }
    if let Some(j) = o.get("bodyJson") {
        checks.push(BodyCheck::JsonSubset(j.clone()));
    }
    Ok(checks)
}

/// Parses an `expect` object.
pub fn parse(v: &Value, path: &str) -> Result<Expect, Problem> {
    let o = Obj::of(v, path)?;
    o.only(EXPECT_FIELDS)?;
    let backend = match o.map.get("backend") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(called)) => Some(BackendExpect {
            called: Some(*called),
            ..BackendExpect::default()
        }),
        Some(b) => {
            let bo = Obj::of(b, &o.at("backend"))?;
            bo.only(BACKEND_FIELDS)?;
            let e = BackendExpect {
                called: bo.bool("called")?,
                method: bo.string("method")?.map(str::to_string),
                path: bo.string("path")?.map(str::to_string),
                authority: bo.string("authority")?.map(str::to_string),
                cluster: bo.string("cluster")?.map(str::to_string),
                headers: header_checks(&bo)?,
                body: body_checks(&bo)?,
            };
            if e.called == Some(false) && !e.is_empty_but_called() {
                return Err(problem(
                    &bo.path,
                    "\"called\": false cannot be combined with what the backend received",
                ));
            }
            Some(e)
        }
    };
    Ok(Expect {
        status: o.status("status")?,
        headers: header_checks(&o)?,
        body: body_checks(&o)?,
        backend,
    })
}

impl BackendExpect {
    fn is_empty_but_called(&self) -> bool {
        BackendExpect {
            called: None,
            ..self.clone()
        }
        .is_empty()
    }
}

/// What the backend received, as far as the replay can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSeen {
    pub method: String,
    pub path: String,
    pub authority: String,
    /// `None` when the replay cannot tell (a live gateway without the replay backend).
    pub cluster: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An exchange as observed, natively or live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// 0 when there was no response.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `Some(None)`: the backend was not called; `None`: the replay cannot see the backend.
    pub backend: Option<Option<BackendSeen>>,
    /// Whether the response came from the gateway rather than the backend, when known.
    pub from_gateway: Option<bool>,
    /// Why there is no response, or another remark.
    pub note: Option<String>,
}

/// One condition checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `status`, `header x-a`, `body`, `backend path`, ...
    pub what: String,
    pub expected: String,
    pub got: String,
    /// `None`: could not be checked here (e.g. the backend of a live gateway).
    pub ok: Option<bool>,
}

fn show(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("\"{v}\""),
        None => "(absent)".to_string(),
    }
}

/// How many characters of a body a report shows.
const BODY_SHOWN: usize = 120;

/// A body on one line, as report tables need: its first characters with control characters
/// and bytes that are not UTF-8 escaped (`\n`, `\x00`, `\xff`), then its size when it is cut.
pub fn show_bytes(b: &[u8]) -> String {
    let mut s = String::new();
    let mut shown = 0usize;
    let mut cut = false;
    'chunks: for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if shown == BODY_SHOWN {
                cut = true;
                break 'chunks;
            }
            push_escaped(&mut s, c);
            shown += 1;
        }
        for byte in chunk.invalid() {
            if shown == BODY_SHOWN {
                cut = true;
                break 'chunks;
            }
            s.push_str(&format!("\\x{byte:02x}"));
            shown += 1;
        }
    }
    if cut {
        format!("\"{s}…\" ({} bytes)", b.len())
    } else {
        format!("\"{s}\"")
    }
}

fn push_escaped(s: &mut String, c: char) {
    match c {
        '\n' => s.push_str("\\n"),
        '\r' => s.push_str("\\r"),
        '\t' => s.push_str("\\t"),
        c if c.is_control() => s.push_str(&format!("\\x{:02x}", c as u32)),
        c => s.push(c),
    }
}

/// Text on one line: control characters escaped (a report row must not break).
pub fn one_line(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            push_escaped(&mut s, c);
        } else {
            s.push(c);
        }
    }
    s
}

/// `403 from the gateway (API not public.)`: a status with the gateway's reason, when the
/// response carries one, and who answered, when known.
pub fn describe_status(
    status: u16,
    from_gateway: Option<bool>,
    headers: &[(String, String)],
) -> String {
    if status == 0 {
        return "(no response)".into();
    }
    let reason = headers
        .iter()
        .find(|(k, _)| {
            k.eq_ignore_ascii_case("x-gateway-error")
                || k.eq_ignore_ascii_case("x-policy-failure-message")
        })
        .map(|(_, v)| format!(" ({})", one_line(v)))
        .unwrap_or_default();
    match from_gateway {
        Some(true) => format!("{status} from the gateway{reason}"),
        Some(false) => format!("{status} from the backend{reason}"),
        None => format!("{status}{reason}"),
    }
}

fn check_headers(prefix: &str, checks: &[HeaderCheck], headers: &[(String, String)]) -> Vec<Check> {
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    checks
        .iter()
        .map(|c| {
            let got = values(c.name());
            let got_text = if got.is_empty() {
                "(absent)".to_string()
            } else {
                got.iter()
                    .map(|v| format!("\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (expected, ok) = match c {
                HeaderCheck::Equals(_, v) => (show(Some(v)), got.contains(&v.as_str())),
                HeaderCheck::Present(_) => ("(present)".to_string(), !got.is_empty()),
                HeaderCheck::Absent(_) => ("(absent)".to_string(), got.is_empty()),
                HeaderCheck::Matches(_, r) => (
                    format!("/{}/", r.as_str()),
                    got.iter().any(|v| r.is_match(v.as_bytes())),
                ),
            };
            Check {
                what: format!("{prefix}header {}", c.name().to_ascii_lowercase()),
                expected,
                got: got_text,
                ok: Some(ok),
            }
        })
        .collect()
}

/// Whether `actual` contains `expected` (see `BodyCheck::JsonSubset`).
pub fn json_contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| json_contains(av, ev))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(av, ev)| json_contains(av, ev))
        }
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        (a, e) => a == e,
    }
}

fn check_body(prefix: &str, checks: &[BodyCheck], body: &[u8]) -> Vec<Check> {
    checks
        .iter()
        .map(|c| {
            let (what, expected, ok) = match c {
                BodyCheck::Equals(e) => ("body", show_bytes(e), body == e.as_slice()),
                BodyCheck::Contains(s) => (
                    "body contains",
                    format!("\"{s}\""),
                    String::from_utf8_lossy(body).contains(s.as_str()),
                ),
                BodyCheck::JsonSubset(v) => (
                    "body JSON",
                    v.to_string(),
                    serde_json::from_slice::<Value>(body).is_ok_and(|a| json_contains(&a, v)),
                ),
            };
            Check {
                what: format!("{prefix}{what}"),
                expected,
                got: show_bytes(body),
                ok: Some(ok),
            }
        })
        .collect()
}

fn header_holds(c: &HeaderCheck, headers: &[(String, String)]) -> bool {
    let mut values = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(c.name()))
        .map(|(_, v)| v.as_str());
    match c {
        HeaderCheck::Equals(_, want) => values.any(|v| v == want),
        HeaderCheck::Present(_) => values.next().is_some(),
        HeaderCheck::Absent(_) => values.next().is_none(),
        HeaderCheck::Matches(_, r) => values.any(|v| r.is_match(v.as_bytes())),
    }
}

fn body_holds(c: &BodyCheck, body: &[u8]) -> bool {
    match c {
        BodyCheck::Equals(e) => body == e.as_slice(),
        BodyCheck::Contains(s) => String::from_utf8_lossy(body).contains(s.as_str()),
        BodyCheck::JsonSubset(v) => {
            serde_json::from_slice::<Value>(body).is_ok_and(|a| json_contains(&a, v))
        }
    }
}

/// Whether every checkable expectation holds: what [`check`] decides, without describing it
/// (replaying the same exchanges many times only needs the details of failures).
pub fn holds(expect: &Expect, obs: &Observed) -> bool {
    if expect.status.is_some_and(|s| s != obs.status)
        || !expect.headers.iter().all(|c| header_holds(c, &obs.headers))
        || !expect.body.iter().all(|c| body_holds(c, &obs.body))
    {
        return false;
    }
    let (Some(b), Some(seen)) = (&expect.backend, &obs.backend) else {
        return true;
    };
    match seen {
        None => b.called == Some(false),
        Some(seen) => {
            b.called != Some(false)
                && b.method.as_ref().is_none_or(|m| *m == seen.method)
                && b.path.as_ref().is_none_or(|p| *p == seen.path)
                && b.authority.as_ref().is_none_or(|a| *a == seen.authority)
                && b.cluster
                    .as_ref()
                    .is_none_or(|c| seen.cluster.as_ref().is_none_or(|s| s == c))
                && b.headers.iter().all(|c| header_holds(c, &seen.headers))
                && b.body.iter().all(|c| body_holds(c, &seen.body))
        }
    }
}

/// Checks an observation against the expectations, one `Check` per condition.
pub fn check(expect: &Expect, obs: &Observed) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(s) = expect.status {
        out.push(Check {
            what: "status".into(),
            expected: s.to_string(),
            got: describe_status(obs.status, obs.from_gateway, &obs.headers),
            ok: Some(obs.status == s),
        });
    }
    out.extend(check_headers("", &expect.headers, &obs.headers));
    out.extend(check_body("", &expect.body, &obs.body));
    let Some(b) = &expect.backend else {
        return out;
    };
    let seen = match &obs.backend {
        None => {
            out.push(Check {
                what: "backend".into(),
                expected: "(checked natively)".into(),
                got: "(not observable against a live gateway)".into(),
                ok: None,
            });
            return out;
        }
        Some(seen) => seen,
    };
    let want_called = b.called.unwrap_or(true);
    out.push(Check {
        what: "backend called".into(),
        expected: want_called.to_string(),
        got: seen.is_some().to_string(),
        ok: Some(want_called == seen.is_some()),
    });
    let Some(seen) = seen else {
        return out;
    };
    for (what, want, got) in [
        ("method", &b.method, Some(seen.method.as_str())),
        ("path", &b.path, Some(seen.path.as_str())),
        ("authority", &b.authority, Some(seen.authority.as_str())),
        ("cluster", &b.cluster, seen.cluster.as_deref()),
    ] {
        if let Some(want) = want {
            out.push(Check {
                what: format!("backend {what}"),
                expected: format!("\"{want}\""),
                got: show(got),
                ok: got.map(|g| g == want),
            });
        }
    }
    out.extend(check_headers("backend ", &b.headers, &seen.headers));
    out.extend(check_body("backend ", &b.body, &seen.body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observed(status: u16, headers: &[(&str, &str)], body: &str) -> Observed {
        Observed {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            backend: Some(None),
            from_gateway: Some(true),
            note: None,
        }
    }

    fn failed(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.ok == Some(false))
            .map(|c| c.what.clone())
            .collect()
    }

    #[test]
    fn header_expectations_cover_equal_present_absent_and_regex() {
        let e = parse(
            &json!({"headers": {"x-a": "1", "x-gone": null}, "headersPresent": ["x-b"],
                    "headersAbsent": ["x-c"], "headersMatch": {"x-d": "^v[0-9]+$"}}),
            "expect",
        )
        .unwrap();
        let good = observed(200, &[("X-A", "1"), ("x-b", ""), ("x-d", "v12")], "");
        assert!(failed(&check(&e, &good)).is_empty());
        let bad = observed(
            200,
            &[("x-a", "2"), ("x-c", "1"), ("x-gone", "1"), ("x-d", "v")],
            "",
        );
        assert_eq!(
            failed(&check(&e, &bad)),
            vec![
                "header x-a",
                "header x-gone",
                "header x-b",
                "header x-c",
                "header x-d"
            ]
        );
    }

    #[test]
    fn json_subset_allows_extra_fields_but_not_other_values() {
        let e = parse(&json!({"bodyJson": {"a": 1, "b": {"c": [1, 2]}}}), "e").unwrap();
        assert!(failed(&check(
            &e,
            &observed(200, &[], r#"{"a":1.0,"b":{"c":[1,2],"d":0},"z":1}"#)
        ))
        .is_empty());
        assert_eq!(
            failed(&check(&e, &observed(200, &[], r#"{"a":1,"b":{"c":[1]}}"#))),
            vec!["body JSON"]
        );
        assert_eq!(
            failed(&check(&e, &observed(200, &[], "not json"))),
            vec!["body JSON"]
        );
    }

    #[test]
    fn backend_false_means_the_backend_must_not_be_called() {
        let e = parse(&json!({"backend": false}), "e").unwrap();
        assert!(failed(&check(&e, &observed(403, &[], ""))).is_empty());
        let mut reached = observed(200, &[], "");
        reached.backend = Some(Some(BackendSeen {
            method: "GET".into(),
            path: "/".into(),
            authority: "a".into(),
            cluster: Some("c".into()),
            headers: vec![],
            body: vec![],
        }));
        assert_eq!(failed(&check(&e, &reached)), vec!["backend called"]);
    }

    #[test]
    fn backend_expectations_are_unchecked_when_the_backend_is_not_observable() {
        let e = parse(&json!({"backend": {"path": "/x"}}), "e").unwrap();
        let mut live = observed(200, &[], "");
        live.backend = None;
        let checks = check(&e, &live);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].ok, None);
    }

    #[test]
    fn misspelt_fields_and_bad_regexes_are_refused_with_their_path() {
        assert_eq!(
            parse(&json!({"stauts": 200}), "exchanges[0].expect")
                .unwrap_err()
                .0,
            "exchanges[0].expect"
        );
        assert_eq!(
            parse(&json!({"headersMatch": {"x": "("}}), "e")
                .unwrap_err()
                .0,
            "e.headersMatch.x"
        );
        assert_eq!(
            parse(&json!({"status": 1000}), "e").unwrap_err().0,
            "e.status"
        );
    }
}
