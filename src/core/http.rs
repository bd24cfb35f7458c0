//! The small request/response view policies work on, independent of any host.
//!
//! Header names are lower case, as Envoy hands them over. Every change is recorded as an
//! operation so the adapter can replay exactly those changes with as few host calls as possible.

/// A change to apply to the host's header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of the header with this one (adds it if absent).
    Set(String, String),
    /// Add one more value.
    Add(String, String),
    Remove(String),
}

/// An ordered multimap of headers plus the log of changes made to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, String)>,
    ops: Vec<HeaderOp>,
}

impl HeaderMap {
    /// Wraps headers as received from the host; names are lower-cased.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> HeaderMap {
        let entries = pairs
            .into_iter()
            .map(|(mut k, v)| {
                if k.bytes().any(|b| b.is_ascii_uppercase()) {
                    k.make_ascii_lowercase();
                }
                (k, v)
            })
            .collect();
        HeaderMap {
            entries,
            ops: Vec::new(),
        }
    }

    pub fn new() -> HeaderMap {
        HeaderMap::default()
    }

    /// The first value of `name` (case-insensitive). `Host` reads `:authority`, which is
    /// where Envoy keeps it.
    pub fn get(&self, name: &str) -> Option<&str> {
        let host = name.eq_ignore_ascii_case("host");
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name) || (host && k == ":authority"))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let host = name.eq_ignore_ascii_case("host");
        self.entries
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name) || (host && k == ":authority"))
            .map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `name` to exactly one value.
    pub fn set(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        let mut found = false;
        self.entries.retain_mut(|(k, v)| {
            if *k != name {
                return true;
            }
            if found {
                return false;
            }
            found = true;
            value.clone_into(v);
            true
        });
        if !found {
            self.entries.push((name.clone(), value.to_string()));
        }
        self.record(HeaderOp::Set(name, value.to_string()));
    }

    /// Adds a value, keeping existing ones.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        self.entries.push((name.clone(), value.to_string()));
        self.record(HeaderOp::Add(name, value.to_string()));
    }

    /// Removes every value of `name`; does nothing (and records nothing) if it is absent.
    pub fn remove(&mut self, name: &str) {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if self.entries.len() != before {
            self.record(HeaderOp::Remove(name.to_ascii_lowercase()));
        }
    }

    /// Removes every header whose name and value satisfy `pred`; a header that keeps some values
    /// is re-set to those.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&str, &str) -> bool) {
        let mut touched: Vec<String> = Vec::new();
        for (k, v) in &self.entries {
            if pred(k, v) && !touched.contains(k) {
                touched.push(k.clone());
            }
        }
        for name in touched {
            let kept: Vec<String> = self
                .entries
                .iter()
                .filter(|(k, v)| *k == name && !pred(k, v))
                .map(|(_, v)| v.clone())
                .collect();
            self.remove(&name);
            for value in kept {
                self.add(&name, &value);
            }
        }
    }

    fn record(&mut self, op: HeaderOp) {
        // A later Set or Remove of the same header makes earlier operations on it moot.
        if let HeaderOp::Set(name, _) | HeaderOp::Remove(name) = &op {
            self.ops.retain(|o| match o {
                HeaderOp::Set(n, _) | HeaderOp::Add(n, _) | HeaderOp::Remove(n) => n != name,
            });
        }
        self.ops.push(op);
    }

    /// The changes made since the map was created or last drained.
    pub fn take_ops(&mut self) -> Vec<HeaderOp> {
        std::mem::take(&mut self.ops)
    }

    pub fn ops(&self) -> &[HeaderOp] {
        &self.ops
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.entries
    }
}

/// The request as policies see it in the request-headers phase.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub headers: HeaderMap,
}

/// The response as policies see it in the response-headers phase.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
}

/// A response the gateway sends itself instead of (or before) calling the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Adds headers that are not already present (decorations never override the reply's own).
    pub fn decorate(&mut self, extra: &[(String, String)]) {
        for (k, v) in extra {
            if self.header(k).is_none() {
                self.headers.push((k.clone(), v.clone()));
            }
        }
    }
}

/// Whether `b` may appear in an HTTP token (a header name).
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits a `:path` into the path and the query string (without `?`).
pub fn split_query(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// Removes every `name=...` parameter from a raw query string, keeping the rest byte for byte.
/// Names compare case-insensitively, as in Apiman's `QueryMap`. Returns `None` when nothing is
/// left.
pub fn query_without(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !query_param_name(pair).eq_ignore_ascii_case(name))
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("&"))
    }
}

fn query_param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

/// The first value of query parameter `name` (case-insensitive, as in Apiman's `QueryMap`),
/// percent-decoded (`+` reads as a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find(|pair| query_param_name(pair).eq_ignore_ascii_case(name))
        .map(|pair| percent_decode(pair.split_once('=').map_or("", |(_, v)| v)))
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn lookups_ignore_case() {
        let m = map(&[("X-API-Key", "k")]);
        assert_eq!(m.get("x-api-key"), Some("k"));
        assert_eq!(m.get("X-Api-Key"), Some("k"));
    }

    #[test]
    fn host_reads_the_authority_pseudo_header() {
        let m = map(&[(":authority", "api.example.com")]);
        assert_eq!(m.get("Host"), Some("api.example.com"));
    }

    #[test]
    fn set_replaces_all_values_and_records_one_op() {
        let mut m = map(&[("a", "1"), ("a", "2")]);
        m.set("A", "3");
        assert_eq!(m.get_all("a").collect::<Vec<_>>(), vec!["3"]);
        assert_eq!(m.ops(), &[HeaderOp::Set("a".into(), "3".into())]);
    }

    #[test]
    fn removing_an_absent_header_records_nothing() {
        let mut m = map(&[("a", "1")]);
        m.remove("b");
        assert!(m.ops().is_empty());
    }

    #[test]
    fn a_later_remove_cancels_earlier_adds() {
        let mut m = HeaderMap::new();
        m.add("x", "1");
        m.remove("x");
        assert_eq!(m.ops(), &[HeaderOp::Remove("x".into())]);
    }

    #[test]
    fn remove_where_keeps_the_other_values_of_a_header() {
        let mut m = map(&[("a", "keep"), ("a", "drop"), ("b", "x")]);
        m.remove_where(|_, v| v == "drop");
        assert_eq!(m.get_all("a").collect::<Vec<_>>(), vec!["keep"]);
        assert_eq!(m.get("b"), Some("x"));
    }

    #[test]
    fn query_without_removes_only_that_parameter() {
        assert_eq!(
            query_without("a=1&apikey=s3cret&b=2", "apikey").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(query_without("apikey=1", "apikey"), None);
        assert_eq!(
            query_without("apikeyx=1", "apikey").as_deref(),
            Some("apikeyx=1")
        );
    }

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param("x=1&apikey=a%2Bb+c", "apikey").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_param("apikey", "apikey").as_deref(), Some(""));
        assert_eq!(query_param("x=1", "apikey"), None);
    }

    #[test]
    fn query_names_compare_case_insensitively_as_in_apiman() {
        assert_eq!(query_param("ApiKey=k", "apikey").as_deref(), Some("k"));
        assert_eq!(
            query_without("a=1&APIKEY=k", "apikey").as_deref(),
            Some("a=1")
        );
    }

    #[test]
    fn invalid_percent_escapes_are_kept() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41"), "A");
    }
}
