//! Reading claims: dotted paths (`address.country`, `realm_access.roles`), the text a claim is
//! forwarded as, and roles.

use serde_json::Value;

/// A claim by name: the literal name first (namespaced claims such as
/// `https://example.com/roles` contain dots), then as a dotted path into nested objects.
pub fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut at = claims;
    for part in name.split('.') {
        at = at.get(part)?;
    }
    Some(at)
}

/// A claim by explicit path segments (a segment may contain dots: a Keycloak client id).
pub fn lookup_segments<'a>(claims: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = claims;
    for part in path {
        at = at.get(part.as_str())?;
    }
    Some(at)
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON writes them,
/// arrays of those joined with `,`, objects as compact JSON. `null` is no value.
pub fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

/// Whether a claim equals a required value: a scalar compared as text, an array when any of
/// its elements does.
pub fn matches(value: &Value, expected: &str) -> bool {
    match value {
        Value::String(s) => s == expected,
        Value::Array(items) => items.iter().any(|v| matches(v, expected)),
        Value::Number(n) => n.to_string() == expected,
        Value::Bool(b) => expected == if *b { "true" } else { "false" },
        Value::Null | Value::Object(_) => false,
    }
}

/// Roles from a claim: an array of strings, or one string of roles separated by spaces or
/// commas (an OAuth `scope`). Absent: no roles.
pub fn roles(value: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |r: &str| {
        let r = r.trim();
        if !r.is_empty() && !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    };
    match value {
        Some(Value::Array(items)) => {
            for item in items {
                if let Value::String(s) = item {
                    push(s);
                }
            }
        }
        Some(Value::String(s)) => s.split([' ', ',']).for_each(&mut push),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_names_reach_nested_claims_and_literal_names_win() {
        let c = json!({"address": {"country": "DE"}, "a.b": 1, "a": {"b": 2}});
        assert_eq!(lookup(&c, "address.country"), Some(&json!("DE")));
        assert_eq!(lookup(&c, "a.b"), Some(&json!(1)));
        assert_eq!(lookup(&c, "address.city"), None);
    }

    #[test]
    fn claims_become_header_text() {
        assert_eq!(header_text(&json!("x")).as_deref(), Some("x"));
        assert_eq!(header_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(header_text(&json!(["a", "b", 1])).as_deref(), Some("a,b,1"));
        assert_eq!(header_text(&json!({"k": 1})).as_deref(), Some("{\"k\":1}"));
        assert_eq!(header_text(&Value::Null), None);
    }

    #[test]
    fn roles_come_from_arrays_and_scope_strings() {
        assert_eq!(roles(Some(&json!(["a", "b", 3, "a"]))), vec!["a", "b"]);
        assert_eq!(
            roles(Some(&json!("read write,admin"))),
            vec!["read", "write", "admin"]
        );
        assert!(roles(None).is_empty());
    }

    #[test]
    fn required_values_match_scalars_as_text_and_arrays_by_element() {
        assert!(matches(&json!("x"), "x"));
        assert!(matches(&json!(true), "true"));
        assert!(matches(&json!(["a", "b"]), "b"));
        assert!(!matches(&json!({"a": "b"}), "b"));
    }
}
