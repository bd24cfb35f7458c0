//! A lenient, path-aware reader over `serde_json::Value`.
//!
//! Apiman's Jackson mapper is lenient: unknown fields are ignored, `"true"` reads as a boolean and
//! `"500"` as a number. We accept the same input, but every problem is reported with the JSON path
//! where it was found, and every unknown field becomes a warning, so one load reports everything
//! that is wrong instead of the first error.

use serde_json::{Map, Value};

#[cfg(test)]
pub(crate) mod recorder {
    //! Which field names a reader asked for, so a test can hold the policy documentation to
    //! the parser: every documented field is read, every field read is documented.
    use std::cell::RefCell;

    thread_local! {
        static ASKED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }

    /// Runs `f` and returns the field paths it asked for (`rules[].verb`), primary names only.
    /// (Only the policy reference's test calls it, and that reference is not built for wasm.)
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn record(f: impl FnOnce()) -> Vec<String> {
        ASKED.with(|a| *a.borrow_mut() = Some(Vec::new()));
        f();
        ASKED.with(|a| a.borrow_mut().take()).unwrap_or_default()
    }

    pub(super) fn asked(path: &str, name: &str) {
        ASKED.with(|a| {
            if let Some(list) = a.borrow_mut().as_mut() {
                let mut p = String::new();
                let mut skipping = false;
                for c in super::join(path, name).chars() {
                    match c {
                        '[' => {
                            skipping = true;
                            p.push_str("[]");
                        }
                        ']' => skipping = false,
                        c if !skipping => p.push(c),
                        _ => {}
                    }
                }
                if !list.contains(&p) {
                    list.push(p);
                }
            }
        });
    }
}

/// Errors refuse the configuration; warnings are logged once and the configuration loads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Problems {
    pub fn error(&mut self, path: &str, message: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {message}"));
    }

    pub fn warning(&mut self, path: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {message}"));
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Joins a field name onto a JSON path (`apis[0]` + `endpoint` = `apis[0].endpoint`).
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A short human name for a JSON value's type, for error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the fields of one JSON object. Fields read are remembered; `finish` warns about the rest.
pub struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    /// Starts reading `value` at `path`; records an error and returns `None` if it is not an object.
    pub fn of(value: &'a Value, path: &str, problems: &mut Problems) -> Option<Fields<'a>> {
        match value {
            Value::Object(map) => Some(Fields {
                path: path.to_string(),
                map,
                seen: Vec::new(),
            }),
            other => {
                problems.error(path, format!("expected an object, found {}", kind(other)));
                None
            }
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn field_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of the first of `names` present (aliases: Apiman's docs and code disagree on
    /// some spellings). `null` counts as absent, as in Jackson.
    pub fn raw(&mut self, names: &[&str]) -> Option<(&'a str, &'a Value)> {
        #[cfg(test)]
        if let Some(first) = names.first() {
            recorder::asked(&self.path, first);
        }
        let mut found = None;
        for name in names {
            if let Some((key, value)) = self.map.get_key_value(*name) {
                self.seen.push(key.as_str());
                if found.is_none() && !value.is_null() {
                    found = Some((key.as_str(), value));
                }
            }
        }
        found
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|v| !v.is_null())
    }

    /// A string field. Numbers and booleans are accepted and converted, as Jackson does.
    pub fn string(&mut self, names: &[&str], problems: &mut Problems) -> Option<String> {
        let (key, value) = self.raw(names)?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                problems.error(
                    &self.field_path(key),
                    format!("expected a string, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// A boolean field; `"true"`/`"false"` strings are accepted.
    pub fn bool(&mut self, names: &[&str], problems: &mut Problems) -> Option<bool> {
        let (key, value) = self.raw(names)?;
        match value {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
            other => {
                problems.error(
                    &self.field_path(key),
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// An integer field; numeric strings (`"500"`, as Apiman's UI writes them) are accepted.
    pub fn integer(&mut self, names: &[&str], problems: &mut Problems) -> Option<i64> {
        let (key, value) = self.raw(names)?;
        let parsed = match value {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            problems.error(
                &self.field_path(key),
                format!("expected a whole number, found {}", describe(value)),
            );
        }
        parsed
    }

    /// An array field; a single non-array value is accepted as a one-element array (Jackson's
    /// ACCEPT_SINGLE_VALUE_AS_ARRAY is common in Apiman exports edited by hand).
    pub fn array(&mut self, names: &[&str], problems: &mut Problems) -> Vec<(String, &'a Value)> {
        let Some((key, value)) = self.raw(names) else {
            return Vec::new();
        };
        let path = self.field_path(key);
        match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(&path, i), v))
                .collect(),
            Value::Object(_) | Value::String(_) => vec![(index(&path, 0), value)],
            other => {
                problems.error(&path, format!("expected an array, found {}", kind(other)));
                Vec::new()
            }
        }
    }

    /// An array of strings (a Java `Set<String>` or `List<String>`).
    pub fn strings(&mut self, names: &[&str], problems: &mut Problems) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, value) in self.array(names, problems) {
            match value {
                Value::String(s) => out.push((path, s.clone())),
                Value::Number(n) => out.push((path, n.to_string())),
                other => problems.error(&path, format!("expected a string, found {}", kind(other))),
            }
        }
        out
    }

    /// A nested object field.
    pub fn object(&mut self, names: &[&str], problems: &mut Problems) -> Option<Fields<'a>> {
        let (key, value) = self.raw(names)?;
        let path = self.field_path(key);
        Fields::of(value, &path, problems)
    }

    /// A string field that must be one of `allowed` (compared case-insensitively; Apiman exports
    /// and docs disagree on case). Returns the index into `allowed`.
    pub fn choice(
        &mut self,
        names: &[&str],
        allowed: &[&str],
        problems: &mut Problems,
    ) -> Option<usize> {
        let path = self.raw(names).map(|(k, _)| self.field_path(k))?;
        let value = self.string(names, problems)?;
        let found = allowed
            .iter()
            .position(|a| a.eq_ignore_ascii_case(value.trim()));
        if found.is_none() {
            problems.error(
                &path,
                format!("\"{value}\" is not one of {}", allowed.join(", ")),
            );
        }
        found
    }

    /// Warns about every field that was never read.
    pub fn finish(self, problems: &mut Problems) {
        for key in self.map.keys() {
            if !self.seen.contains(&key.as_str()) {
                problems.warning(&join(&self.path, key), "unknown field ignored");
            }
        }
    }

    /// Marks fields as known without reading them (Apiman fields tollgate has no use for).
    pub fn ignore(&mut self, names: &[&str]) {
        for name in names {
            if let Some((key, _)) = self.map.get_key_value(*name) {
                self.seen.push(key.as_str());
            }
        }
    }
}

/// A value as it appears in the input, for error messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) | Value::Object(_) | Value::Null => kind(value).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_strings_read_as_integers() {
        let v = json!({"responseCode": "403"});
        let mut p = Problems::default();
        let mut f = Fields::of(&v, "x", &mut p).unwrap();
        assert_eq!(f.integer(&["responseCode"], &mut p), Some(403));
        assert!(p.is_ok());
    }

    #[test]
    fn a_wrong_type_names_the_path() {
        let v = json!({"enabled": [1]});
        let mut p = Problems::default();
        let mut f = Fields::of(&v, "apis[0]", &mut p).unwrap();
        assert_eq!(f.bool(&["enabled"], &mut p), None);
        assert_eq!(
            p.errors,
            vec!["apis[0].enabled: expected true or false, found an array"]
        );
    }

    #[test]
    fn unknown_fields_become_warnings() {
        let v = json!({"known": 1, "mystery": 2});
        let mut p = Problems::default();
        let mut f = Fields::of(&v, "gateway", &mut p).unwrap();
        f.integer(&["known"], &mut p);
        f.finish(&mut p);
        assert!(p.is_ok());
        assert_eq!(p.warnings, vec!["gateway.mystery: unknown field ignored"]);
    }

    #[test]
    fn aliases_are_read_and_not_reported_as_unknown() {
        let v = json!({"multimatch": "any"});
        let mut p = Problems::default();
        let mut f = Fields::of(&v, "c", &mut p).unwrap();
        assert_eq!(
            f.choice(&["multiMatch", "multimatch"], &["all", "any"], &mut p),
            Some(1)
        );
        f.finish(&mut p);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn choices_are_case_insensitive_and_list_the_options_on_error() {
        let v = json!({"a": "BOTH", "b": "sideways"});
        let mut p = Problems::default();
        let mut f = Fields::of(&v, "c", &mut p).unwrap();
        assert_eq!(f.choice(&["a"], &["Request", "Both"], &mut p), Some(1));
        assert_eq!(f.choice(&["b"], &["Request", "Both"], &mut p), None);
        assert_eq!(
            p.errors,
            vec!["c.b: \"sideways\" is not one of Request, Both"]
        );
    }
}
