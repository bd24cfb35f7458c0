//! Apiman's `.resttest` files (its gateway test plans' requests and expected answers), as kept in
//! `tests/fixtures/apiman/test-plan-data/`:
//!
//! ```text
//! PUT /apis admin/admin          <- method, path, user/password
//! Content-Type: application/json <- request headers, a blank line, the body
//!
//! { ... }
//! ----
//! 204                            <- expected status, headers, a blank line, body (JSON subset)
//! ```

use std::path::PathBuf;

use serde_json::Value;

use crate::live::repo_root;

#[derive(Debug, Clone)]
pub struct RestTest {
    pub method: String,
    pub path: String,
    pub credentials: Option<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub status: u16,
    pub expect_headers: Vec<(String, String)>,
    /// The expected body; empty when the test expects none in particular.
    pub expect_body: String,
}

impl RestTest {
    /// The expected body as JSON, `Null` when there is none.
    pub fn expect_json(&self) -> Value {
        if self.expect_body.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.expect_body).unwrap_or(Value::Null)
    }
}

/// The fixture directory.
pub fn dir() -> PathBuf {
    repo_root().join("tests/fixtures/apiman/test-plan-data")
}

/// Reads `test-plan-data/<name>`, replacing `${var}` with the values given.
pub fn load(name: &str, vars: &[(&str, &str)]) -> Result<RestTest, String> {
    let path = dir().join(name);
    let mut text =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<RestTest, String> {
    let text = text.replace("\r\n", "\n");
    let (request, response) = text
        .split_once("\n----\n")
        .or_else(|| text.split_once("\n----"))
        .ok_or("no ---- line")?;
    let mut lines = request.lines();
    let first = lines.next().ok_or("empty")?;
    let mut parts = first.split_whitespace();
    let method = parts.next().ok_or("no method")?.to_string();
    let path = parts.next().ok_or("no path")?.to_string();
    let credentials = parts
        .next()
        .and_then(|c| c.split_once('/'))
        .map(|(u, p)| (u.to_string(), p.to_string()));
    let (headers, body) = head_and_body(lines);
    let mut lines = response.lines().skip_while(|l| l.trim().is_empty());
    let status = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or("no status")?;
    let (expect_headers, expect_body) = head_and_body(lines);
    Ok(RestTest {
        method,
        path,
        credentials,
        headers,
        body,
        status,
        expect_headers,
        expect_body,
    })
}

fn head_and_body<'a>(mut lines: impl Iterator<Item = &'a str>) -> (Vec<(String, String)>, String) {
    let mut headers = Vec::new();
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let body: Vec<&str> = lines.collect();
    (headers, body.join("\n").trim().to_string())
}

/// Whether `actual` has everything `expected` has (Apiman's test runner compares JSON this
/// way): objects by the expected keys, arrays element by element, the rest by value.
pub fn json_subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| json_subset(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| json_subset(x, y))
        }
        _ => expected == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resttest_file_is_read_with_its_expectations() {
        let t = parse(
            "PUT /apis admin/admin\nContent-Type: application/json\n\n{\"a\": 1}\n----\n404\nX-API-Gateway-Error: true\n\n{\"b\": 2}\n",
        )
        .unwrap();
        assert_eq!((t.method.as_str(), t.path.as_str()), ("PUT", "/apis"));
        assert_eq!(t.credentials, Some(("admin".into(), "admin".into())));
        assert_eq!(t.body, "{\"a\": 1}");
        assert_eq!(t.status, 404);
        assert_eq!(
            t.expect_headers,
            [("X-API-Gateway-Error".to_string(), "true".to_string())]
        );
        assert_eq!(t.expect_json(), serde_json::json!({"b": 2}));
        let bare = parse("DELETE /apis/o/a/1 admin/admin\n----\n204\n").unwrap();
        assert_eq!((bare.body.as_str(), bare.status), ("", 204));
    }
}
