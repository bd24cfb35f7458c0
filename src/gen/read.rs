//! A strict, path-aware reader for the gateway definition: the YAML document is turned into
//! JSON (the form the filter's registry takes) and read field by field. Every problem is
//! collected with the path where it is, so one run reports all of them; a field nobody reads
//! is an error, never ignored (a misspelt `truststor` must not silently drop verification).
//!
//! Unlike the registry's reader in tollgate-core (lenient, as Apiman is), this one refuses what
//! the definition does not define; it shares only the path notation (`keystores.gw.file`,
//! `registry.apis[0].tls`).

use serde_json::{Map, Number, Value};
use tollgate_core::json::{index, join};

/// A YAML value's kind, in YAML's words, for error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A value as written, for error messages (strings quoted, collections by kind).
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

/// The path for messages; the document itself has the empty path.
fn here(path: &str) -> &str {
    if path.is_empty() {
        "(top level)"
    } else {
        path
    }
}

/// `yaml` as JSON. What YAML has and JSON has not is reported with its path and left out (keys
/// that are not names, numbers JSON cannot hold) or read past (tags).
pub fn to_json(yaml: &serde_yaml::Value, path: &str, errors: &mut Vec<String>) -> Value {
    use serde_yaml::Value as Yaml;
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(f) = n.as_f64().and_then(Number::from_f64) {
                Value::Number(f)
            } else {
                errors.push(format!("{}: {n} is not a finite number", here(path)));
                Value::Null
            }
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| to_json(v, &index(path, i), errors))
            .collect(),
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Null => {
                        errors.push(format!("{}: a key is empty (~ or null)", here(path)));
                        continue;
                    }
                    Yaml::Sequence(_) | Yaml::Mapping(_) | Yaml::Tagged(_) => {
                        errors.push(format!(
                            "{}: keys are names; a list, mapping or tagged value is not",
                            here(path)
                        ));
                        continue;
                    }
                };
                let value = to_json(v, &join(path, &key), errors);
                out.insert(key, value);
            }
            Value::Object(out)
        }
        Yaml::Tagged(tagged) => {
            errors.push(format!(
                "{}: YAML tags ({}) are not supported here",
                here(path),
                tagged.tag
            ));
            to_json(&tagged.value, path, errors)
        }
    }
}

/// The fields of one mapping. Fields not in the list it was opened with were reported when it
/// was opened; a `null` value counts as absent.
pub struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// Opens `value` at `path`: it must be a mapping, and every field in it one of `known`.
    /// `None` (reported) when it is not a mapping.
    pub fn of(
        value: &'a Value,
        path: &str,
        known: &[&str],
        errors: &mut Vec<String>,
    ) -> Option<Fields<'a>> {
        let Value::Object(map) = value else {
            errors.push(format!(
                "{}: expected a mapping, found {}",
                here(path),
                kind(value)
            ));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                errors.push(unknown_field(&join(path, key), key, known));
            }
        }
        Some(Fields {
            path: path.to_string(),
            map,
        })
    }

    pub fn path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// A field's path and value; `None` when absent or null.
    pub fn get(&self, name: &str) -> Option<(String, &'a Value)> {
        self.map
            .get(name)
            .filter(|v| !v.is_null())
            .map(|v| (self.path(name), v))
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Reports `name` as missing unless it is there; true when it is there.
    pub fn required(&self, name: &str, errors: &mut Vec<String>) -> bool {
        let present = self.has(name);
        if !present {
            errors.push(format!("{}: is required", self.path(name)));
        }
        present
    }

    /// A string; a number is taken as written (`keyAlias: 1`), as YAML users expect.
    pub fn string(&self, name: &str, errors: &mut Vec<String>) -> Option<String> {
        let (path, value) = self.get(name)?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                errors.push(format!("{path}: expected a string, found {}", kind(other)));
                None
            }
        }
    }

    /// `true` or `false`, nothing else (`"false"`, `no` and `0` are refused, not guessed at).
    pub fn bool(&self, name: &str, errors: &mut Vec<String>) -> Option<bool> {
        let (path, value) = self.get(name)?;
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                errors.push(format!(
                    "{path}: expected true or false, found {}",
                    describe(other)
                ));
                None
            }
        }
    }

    /// A TCP port to listen on, 0 to 65535 (0: the OS picks one, as tests and ephemeral
    /// gateways use).
    pub fn port(&self, name: &str, errors: &mut Vec<String>) -> Option<u16> {
        let (path, value) = self.get(name)?;
        let port = value.as_u64().and_then(|n| u16::try_from(n).ok());
        if port.is_none() {
            errors.push(format!(
                "{path}: expected a port (0-65535), found {}",
                describe(value)
            ));
        }
        port
    }

    /// One of `allowed` (by name, case-insensitively).
    pub fn choice<T: Copy>(
        &self,
        name: &str,
        allowed: &[(&str, T)],
        errors: &mut Vec<String>,
    ) -> Option<T> {
        let path = self.path(name);
        let text = self.string(name, errors)?;
        let found = allowed
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(text.trim()))
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            errors.push(format!(
                "{path}: \"{text}\" is not one of {}",
                names.join(", ")
            ));
        }
        found
    }

    /// A nested mapping, opened with its own `known` fields.
    pub fn object(
        &self,
        name: &str,
        known: &[&str],
        errors: &mut Vec<String>,
    ) -> Option<Fields<'a>> {
        let (path, value) = self.get(name)?;
        Fields::of(value, &path, known, errors)
    }

    /// A mapping of named entries (`keystores`, `endpoints`): `Some(empty)` when absent, `None`
    /// (reported) when it is not a mapping.
    pub fn entries(
        &self,
        name: &str,
        errors: &mut Vec<String>,
    ) -> Option<Vec<(&'a str, String, &'a Value)>> {
        let Some((path, value)) = self.get(name) else {
            return Some(Vec::new());
        };
        match value {
            Value::Object(map) => Some(
                map.iter()
                    .map(|(k, v)| (k.as_str(), join(&path, k), v))
                    .collect(),
            ),
            other => {
                errors.push(format!(
                    "{path}: expected a mapping of names to entries, found {}",
                    kind(other)
                ));
                None
            }
        }
    }
}

/// `path: unknown field`, with the closest known name when the field looks like a misspelling
/// of one, and the fields that are known there.
fn unknown_field(path: &str, key: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| {
            (
                distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, k)| *d <= 1.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    format!(
        "{path}: unknown field{closest}; the fields here are {}",
        known.join(", ")
    )
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_unknown_field_is_an_error_that_suggests_the_closest_known_one() {
        let mut errors = Vec::new();
        Fields::of(
            &json!({"truststor": "ca"}),
            "outbound",
            &["keystore", "truststore"],
            &mut errors,
        );
        assert_eq!(
            errors,
            ["outbound.truststor: unknown field (did you mean `truststore`?); the fields here are keystore, truststore"]
        );
    }

    #[test]
    fn an_unrelated_unknown_field_gets_no_suggestion() {
        let mut errors = Vec::new();
        Fields::of(
            &json!({"colour": 1}),
            "node",
            &["id", "cluster"],
            &mut errors,
        );
        assert_eq!(
            errors,
            ["node.colour: unknown field; the fields here are id, cluster"]
        );
    }

    #[test]
    fn wrong_types_are_reported_with_their_paths_and_reading_goes_on() {
        let value = json!({"verify": "no", "port": 70000, "name": [1]});
        let mut errors = Vec::new();
        let f = Fields::of(&value, "x", &["verify", "port", "name"], &mut errors).unwrap();
        assert_eq!(f.bool("verify", &mut errors), None);
        assert_eq!(f.port("port", &mut errors), None);
        assert_eq!(f.string("name", &mut errors), None);
        assert_eq!(
            errors,
            [
                "x.verify: expected true or false, found \"no\"",
                "x.port: expected a port (0-65535), found 70000",
                "x.name: expected a string, found a list",
            ]
        );
    }

    #[test]
    fn yaml_keys_that_are_not_names_and_tags_are_reported_with_their_paths() {
        let yaml: serde_yaml::Value =
            serde_yaml::from_str("a: {[1]: x, 2: y}\nb: !secret z\n").unwrap();
        let mut errors = Vec::new();
        let json = to_json(&yaml, "", &mut errors);
        assert_eq!(json, json!({"a": {"2": "y"}, "b": "z"}));
        assert_eq!(
            errors,
            [
                "a: keys are names; a list, mapping or tagged value is not",
                "b: YAML tags (!secret) are not supported here",
            ]
        );
    }
}
