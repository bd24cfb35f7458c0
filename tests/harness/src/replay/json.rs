//! Strict reading of JSON objects: every problem names its JSON path, and unknown fields are
//! errors (a misspelt expectation must not silently pass).

use base64::Engine;
use serde_json::{Map, Value};

/// A problem at a JSON path.
pub type Problem = (String, String);

pub fn problem(path: &str, message: impl Into<String>) -> Problem {
    (path.to_string(), message.into())
}

/// Where a JSON syntax error is, for messages.
pub fn syntax_error(e: &serde_json::Error) -> Problem {
    (
        format!("line {}, column {}", e.line(), e.column()),
        format!("malformed JSON: {e}"),
    )
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An object being read, with its path.
pub struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: String,
}

impl<'a> Obj<'a> {
    pub fn of(v: &'a Value, path: &str) -> Result<Obj<'a>, Problem> {
        match v {
            Value::Object(map) => Ok(Obj {
                map,
                path: path.to_string(),
            }),
            other => Err(problem(
                path,
                format!("expected an object, found {}", kind(other)),
            )),
        }
    }

    pub fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Refuses fields outside `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), Problem> {
        for key in self.map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(problem(
                    &self.path,
                    format!(
                        "unknown field \"{key}\" (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(problem(
                &self.at(key),
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                problem(
                    &self.at(key),
                    format!("expected a whole number ≥ 0, found {n}"),
                )
            }),
            Some(other) => Err(problem(
                &self.at(key),
                format!("expected a number, found {}", kind(other)),
            )),
        }
    }

    pub fn status(&self, key: &str) -> Result<Option<u16>, Problem> {
        match self.u64(key)? {
            None => Ok(None),
            Some(n) if (100..=599).contains(&n) => Ok(Some(n as u16)),
            Some(n) => Err(problem(
                &self.at(key),
                format!("{n} is not an HTTP status (100-599)"),
            )),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(problem(
                &self.at(key),
                format!("expected true or false, found {}", kind(other)),
            )),
        }
    }

    pub fn array(&self, key: &str) -> Result<Vec<(String, &'a Value)>, Problem> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{}[{i}]", self.at(key)), v))
                .collect()),
            Some(other) => Err(problem(
                &self.at(key),
                format!("expected an array, found {}", kind(other)),
            )),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>, Problem> {
        self.array(key)?
            .into_iter()
            .map(|(path, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(problem(
                    &path,
                    format!("expected a string, found {}", kind(other)),
                )),
            })
            .collect()
    }

    /// Headers as `{"name": "value"}` or `[["name", "value"], ...]` (which allows repeats).
    pub fn headers(&self, key: &str) -> Result<Vec<(String, String)>, Problem> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(v) => headers(v, &self.at(key)),
        }
    }

    /// A body given as `body` (text, or any other JSON value, sent as compact JSON) or
    /// `bodyBase64`.
    pub fn body(&self, text_key: &str, b64_key: &str) -> Result<Option<Vec<u8>>, Problem> {
        match (self.get(text_key), self.get(b64_key)) {
            (Some(_), Some(_)) => Err(problem(
                &self.path,
                format!("give either \"{text_key}\" or \"{b64_key}\", not both"),
            )),
            (Some(Value::String(s)), None) => Ok(Some(s.as_bytes().to_vec())),
            (Some(v), None) => Ok(Some(v.to_string().into_bytes())),
            (None, Some(Value::String(b))) => base64_decode(b)
                .map(Some)
                .map_err(|e| problem(&self.at(b64_key), e)),
            (None, Some(other)) => Err(problem(
                &self.at(b64_key),
                format!("expected a base64 string, found {}", kind(other)),
            )),
            (None, None) => Ok(None),
        }
    }
}

pub fn headers(v: &Value, path: &str) -> Result<Vec<(String, String)>, Problem> {
    let pair = |k: &str, v: &Value, at: &str| -> Result<(String, String), Problem> {
        if k.is_empty() {
            return Err(problem(at, "a header name must not be empty"));
        }
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(problem(
                    at,
                    format!("a header value must be a string, found {}", kind(other)),
                ))
            }
        };
        Ok((k.to_string(), value))
    };
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| pair(k, v, &format!("{path}.{k}")))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{path}[{i}]");
                match item.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), v]) => pair(k, v, &at),
                    _ => Err(problem(&at, "expected [\"name\", \"value\"]")),
                }
            })
            .collect(),
        other => Err(problem(
            path,
            format!(
                "expected an object of headers or an array of [name, value] pairs, found {}",
                kind(other)
            ),
        )),
    }
}

pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let engine = base64::engine::general_purpose::STANDARD;
    engine
        .decode(text.trim())
        .map_err(|e| format!("invalid base64: {e}"))
}
