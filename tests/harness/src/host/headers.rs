//! Header maps as Envoy keeps them: lower-case names, duplicates as separate entries, insertion
//! order, and pseudo-headers (`:path`, `:status`, ...) always ahead of regular headers.

/// Request headers Envoy 1.40 keeps "inline": adding one that exists appends `,value` to it
/// instead of adding a line (verified with a probe filter that set then added each of ~90
/// common names; names outside that probe are treated as regular headers).
pub const INLINE_REQUEST: &[&str] = &[
    "accept",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "grpc-timeout",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "keep-alive",
    "origin",
    "pragma",
    "referer",
    "te",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
    "x-client-trace-id",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-original-path",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-request-id",
];

/// The same for response headers.
pub const INLINE_RESPONSE: &[&str] = &[
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "age",
    "cache-control",
    "content-encoding",
    "content-type",
    "date",
    "etag",
    "expires",
    "grpc-message",
    "grpc-status",
    "keep-alive",
    "last-modified",
    "location",
    "server",
    "upgrade",
    "vary",
    "via",
    "x-envoy-upstream-service-time",
    "x-request-id",
];

/// An ordered header multimap with Envoy's mutation semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
    /// Names whose repeated additions Envoy folds into one comma-separated value.
    inline: &'static [&'static str],
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// An empty request header map.
    pub fn request() -> Headers {
        Headers {
            entries: Vec::new(),
            inline: INLINE_REQUEST,
        }
    }

    /// An empty response header map.
    pub fn response() -> Headers {
        Headers {
            entries: Vec::new(),
            inline: INLINE_RESPONSE,
        }
    }

    /// Replaces every entry, keeping the map's kind.
    pub fn replace_all(&mut self, pairs: &[(String, String)]) {
        self.entries.clear();
        for (k, v) in pairs {
            self.add(k, v);
        }
    }

    /// Builds a map from pairs, lower-casing names and keeping pseudo-headers first.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.add(k.as_ref(), v.as_ref());
        }
        h
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The first value of `name` (Envoy's `get_header_map_value` returns the first, too).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends a value; a pseudo-header goes to the end of the pseudo-header block, and an
    /// inline header that exists gets `,value` appended.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        if self.inline.contains(&name.as_str()) {
            if let Some((_, v)) = self.entries.iter_mut().find(|(k, _)| *k == name) {
                v.push(',');
                v.push_str(value);
                return;
            }
        }
        if name.starts_with(':') {
            let at = self
                .entries
                .iter()
                .position(|(k, _)| !k.starts_with(':'))
                .unwrap_or(self.entries.len());
            self.entries.insert(at, (name, value.to_string()));
        } else {
            self.entries.push((name, value.to_string()));
        }
    }

    /// Envoy's `setCopy`: every value is removed and the new one appended (verified on Envoy
    /// 1.40: a replaced header moves to the end; a pseudo-header to the end of its block).
    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.add(name, value);
    }

    /// Sets the value in place if the header exists (Envoy does this for `server`), else appends.
    pub fn set_in_place(&mut self, name: &str, value: &str) {
        let mut found = false;
        self.entries.retain_mut(|(k, v)| {
            if !k.eq_ignore_ascii_case(name) {
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
            self.add(name, value);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// Drops the pseudo-headers, in place.
    pub fn remove_pseudo(&mut self) {
        self.entries.retain(|(k, _)| !k.starts_with(':'));
    }

    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.entries
    }

    /// The map without pseudo-headers, as an HTTP/1.1 peer would see it.
    pub fn without_pseudo(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .cloned()
            .collect()
    }

    /// The proxy-wasm wire format: count, (key length, value length) pairs, then the
    /// NUL-terminated keys and values.
    pub fn serialize(&self) -> Vec<u8> {
        serialize_pairs(self.iter())
    }
}

pub fn serialize_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let list: Vec<(&str, &str)> = pairs.collect();
    let size = 4 + list
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for (k, v) in &list {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in &list {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses the proxy-wasm map format; `None` when the bytes are malformed (the host then
/// answers the guest with a status rather than guessing).
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let count = u32_at(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let klen = u32_at(4 + i * 8)?;
        let vlen = u32_at(8 + i * 8)?;
        let key = bytes.get(data..data.checked_add(klen)?)?;
        data = data.checked_add(klen)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(vlen)?)?;
        data = data.checked_add(vlen)?.checked_add(1)?;
        pairs.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Some(pairs)
}

/// Hop-by-hop and framing headers an HTTP/1.1 codec consumes rather than passes on.
pub fn is_connection_header(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "host",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_headers_stay_ahead_of_regular_ones() {
        let mut h = Headers::from_pairs(&[(":path", "/a"), ("x-a", "1")]);
        h.add(":method", "GET");
        h.set(":path", "/b");
        let names: Vec<&str> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec![":method", ":path", "x-a"]);
    }

    #[test]
    fn set_replaces_every_value_and_appends() {
        let mut h = Headers::from_pairs(&[("x-a", "1"), ("x-b", "2"), ("X-A", "3")]);
        h.set("x-a", "4");
        assert_eq!(
            h.pairs(),
            &[("x-b".into(), "2".into()), ("x-a".into(), "4".into())]
        );
    }

    #[test]
    fn adding_to_an_inline_header_appends_to_its_value() {
        let mut h = Headers::response();
        h.add("vary", "Accept-Encoding");
        h.add("Vary", "Origin");
        h.add("x-a", "1");
        h.add("x-a", "2");
        assert_eq!(
            h.get_all("vary").collect::<Vec<_>>(),
            vec!["Accept-Encoding,Origin"]
        );
        assert_eq!(h.get_all("x-a").count(), 2);
    }

    #[test]
    fn the_wire_format_round_trips() {
        let h = Headers::from_pairs(&[(":status", "200"), ("x-empty", "")]);
        assert_eq!(
            deserialize_pairs(&h.serialize()).unwrap(),
            h.pairs().to_vec()
        );
    }

    #[test]
    fn malformed_wire_bytes_are_refused() {
        let bytes = Headers::from_pairs(&[("a", "1")]).serialize();
        assert_eq!(deserialize_pairs(&bytes[..bytes.len() - 2]), None);
        assert_eq!(deserialize_pairs(&[0xff, 0xff, 0xff, 0xff]), None);
    }
}
