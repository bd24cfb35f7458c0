//! Reading a configuration without holding it whole: the top-level object is walked by a
//! scanner over the document's pieces, and each entry of `apis`, `plans` and `clients` is handed
//! over as a small JSON value (or text) of its own, to be checked and added to the registry, then
//! dropped. A registry of a million clients
//! is never a tree of a million objects in memory (a wasm VM's memory never shrinks: the peak of
//! a load would be its size for good).
//!
//! A load walks the document twice: first for the gateway settings, the APIs and the plans
//! (clients are only counted, so the tables can be sized exactly), then for the clients, which
//! refer to them. The order of the top-level fields does not matter.

use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Which walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Settings, APIs, plans; clients counted.
    Catalogue,
    /// Clients.
    Clients,
}

/// What a walk hands over.
pub enum Item<'a> {
    Gateway(Value),
    /// An entry of `apis`, `plans` or `clients`, with its index.
    Entry(Section, usize, Value),
    /// How many entries `clients` has.
    ClientCount(usize),
    /// A client's text, in the clients pass (read by the fast reader, else the full one); not
    /// yet known to be valid JSON.
    RawClient(usize, &'a str),
    /// A client whose text cannot be read, and why.
    InvalidClient(usize, String),
    /// A top-level field tollgate does not know (its name).
    Unknown(String),
    /// A section that is neither an array nor an object: its name and what it is.
    NotAnArray(Section, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Apis,
    Plans,
    Clients,
}

impl Section {
    pub fn name(self) -> &'static str {
        match self {
            Section::Apis => "apis",
            Section::Plans => "plans",
            Section::Clients => "clients",
        }
    }
}

/// Walks a configuration document in `pass`, handing each item to `sink`. Returns where and
/// why when the document is not valid JSON or not an object.
///
/// The document's structure is found by a scanner of its own (strings, nesting, separators),
/// reading `reader` in pieces: the large part, `clients`, is only counted in the first pass and
/// cut into one text per client in the second, each then read from memory by serde. (serde's
/// own streaming reader takes every byte through a call of its own: in V8 a load of 100,000
/// clients took 2.4 times as long through it as from memory.)
pub fn walk<R: std::io::Read>(
    mut reader: R,
    pass: Pass,
    sink: &mut dyn FnMut(Item),
) -> Result<(), String> {
    walk_from(&mut reader, pass, sink)
}

/// `walk` through a reader called once per 64 KiB: one copy of the scanner in the module,
/// however many kinds of reader (the host's configuration, bytes in memory) it serves.
fn walk_from(
    reader: &mut dyn std::io::Read,
    pass: Pass,
    sink: &mut dyn FnMut(Item),
) -> Result<(), String> {
    let mut s = Scanner {
        reader,
        buf: Vec::new(),
        end: 0,
        pos: 0,
        keep: 0,
        offset: 0,
        eof: false,
        closers: Vec::new(),
    };
    top(&mut s, pass, sink).map_err(|e| e.at_byte())
}

/// A syntax error and the document offset it was found at.
struct SyntaxError {
    at: usize,
    what: String,
}

impl SyntaxError {
    fn at_byte(self) -> String {
        format!("{} at byte {}", self.what, self.at)
    }
}

type Scan<T> = Result<T, SyntaxError>;

/// The document read in pieces: `buf[..end]` holds from `keep` (the start of the value being
/// cut, or the read position) to what has been read; `offset` is `buf[0]`'s place in the
/// document. `buf` beyond `end` is room for the next read (zeroed once, when it grows).
struct Scanner<R> {
    reader: R,
    buf: Vec<u8>,
    end: usize,
    pos: usize,
    keep: usize,
    offset: usize,
    eof: bool,
    /// The closing brackets `skip_value` waits for (kept between values: no allocation each).
    closers: Vec<u8>,
}

/// How much is read from the host at a time.
const PIECE: usize = 1 << 16;

impl<R: std::io::Read> Scanner<R> {
    fn error(&self, what: impl Into<String>) -> SyntaxError {
        SyntaxError {
            at: self.offset + self.pos,
            what: what.into(),
        }
    }

    /// Reads more; false at the end of the document.
    fn fill(&mut self) -> Scan<bool> {
        if self.eof {
            return Ok(false);
        }
        // What lies before `keep` is done with: dropped before the buffer grows.
        if self.keep > 0 && self.keep * 2 >= self.end {
            self.buf.copy_within(self.keep..self.end, 0);
            self.end -= self.keep;
            self.offset += self.keep;
            self.pos -= self.keep;
            self.keep = 0;
        }
        if self.buf.len() - self.end < PIECE / 2 {
            self.buf.resize(self.end + PIECE, 0);
        }
        let n = loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.error(format!("reading the configuration failed ({e})")));
                }
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    fn peek(&mut self) -> Scan<Option<u8>> {
        while self.pos >= self.end {
            if !self.fill()? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[self.pos]))
    }

    /// The next byte that is not JSON whitespace (not consumed).
    fn next_token(&mut self) -> Scan<Option<u8>> {
        loop {
            match self.peek()? {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.pos += 1,
                other => return Ok(other),
            }
        }
    }

    fn expect(&mut self, byte: u8, expected: &str) -> Scan<()> {
        match self.next_token()? {
            Some(b) if b == byte => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.error(format!("expected {expected}"))),
            None => Err(self.error(format!("expected {expected}, found the end"))),
        }
    }

    /// Skips one value (which begins at the next token), checking only its structure: what
    /// is kept is read by serde afterwards, which checks the rest. (A tight loop over the bytes
    /// read so far: this runs over every byte of the clients twice.)
    fn skip_value(&mut self) -> Scan<()> {
        let mut closers = std::mem::take(&mut self.closers);
        closers.clear();
        let skipped = self.skip_nested(&mut closers);
        self.closers = closers;
        skipped
    }

    fn skip_nested(&mut self, closers: &mut Vec<u8>) -> Scan<()> {
        loop {
            while let Some(&b) = self.buf[..self.end].get(self.pos) {
                match b {
                    b'"' => {
                        self.skip_string()?;
                        if closers.is_empty() {
                            return Ok(());
                        }
                    }
                    b'{' => {
                        closers.push(b'}');
                        self.pos += 1;
                    }
                    b'[' => {
                        closers.push(b']');
                        self.pos += 1;
                    }
                    b'}' | b']' => {
                        if closers.pop() != Some(b) {
                            return Err(self.error(format!("unexpected `{}`", b as char)));
                        }
                        self.pos += 1;
                        if closers.is_empty() {
                            return Ok(());
                        }
                    }
                    b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                    _ if !closers.is_empty() => self.pos += 1,
                    b',' | b':' => return Err(self.error("expected a value")),
                    _ => return self.skip_scalar(),
                }
            }
            if !self.fill()? {
                return Err(self.error("unexpected end of the document"));
            }
        }
    }

    /// Past a string's closing quote (at its opening quote).
    fn skip_string(&mut self) -> Scan<()> {
        self.pos += 1;
        loop {
            let found = quote_or_backslash(&self.buf[self.pos..self.end]);
            match found {
                Some(i) => {
                    self.pos += i;
                    if self.buf[self.pos] == b'"' {
                        self.pos += 1;
                        return Ok(());
                    }
                    // A backslash and the byte it escapes.
                    self.pos += 1;
                    if self.peek()?.is_none() {
                        return Err(self.error("unterminated string"));
                    }
                    self.pos += 1;
                }
                None => {
                    self.pos = self.end;
                    if !self.fill()? {
                        return Err(self.error("unterminated string"));
                    }
                }
            }
        }
    }

    /// Past a number, `true`, `false` or `null` (its letters are checked by serde or by
    /// `scalar_kind`).
    fn skip_scalar(&mut self) -> Scan<()> {
        // In document terms: a read may move what is kept to the buffer's start.
        let start = self.offset + self.pos;
        while let Some(b) = self.peek()? {
            if matches!(b, b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r')
                || b == b'"'
                || b == b'{'
                || b == b'['
            {
                break;
            }
            self.pos += 1;
        }
        if self.offset + self.pos == start {
            return Err(self.error("expected a value"));
        }
        Ok(())
    }

    /// Cuts the next value out of the document: its bytes, valid until the next read.
    fn cut_value(&mut self) -> Scan<(usize, usize)> {
        self.next_token()?;
        self.keep = self.pos;
        self.skip_value()?;
        let cut = (self.keep, self.pos);
        Ok(cut)
    }

    /// Reads the next value with serde (cut out first: it never spans a read).
    fn parse_value<T>(
        &mut self,
        read: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Scan<T> {
        let (from, to) = self.cut_value()?;
        let at = self.offset + from;
        let parsed = read(&self.buf[from..to]);
        self.keep = self.pos;
        parsed.map_err(|e| SyntaxError {
            at: at + column_offset(&self.buf[from..to], &e),
            what: without_position(&e),
        })
    }

    /// Walks the elements of the array at the next token, handing each one's text to `each`
    /// (a single value that is not an array counts as an array of one).
    fn elements(&mut self, each: &mut dyn FnMut(usize, &[u8]) -> Scan<()>) -> Scan<usize> {
        if self.next_token()? != Some(b'[') {
            let (from, to) = self.cut_value()?;
            each(0, &self.buf[from..to])?;
            self.keep = self.pos;
            return Ok(1);
        }
        self.pos += 1;
        self.keep = self.pos;
        let mut n = 0;
        if self.next_token()? == Some(b']') {
            self.pos += 1;
            return Ok(0);
        }
        loop {
            let (from, to) = self.cut_value()?;
            each(n, &self.buf[from..to])?;
            self.keep = self.pos;
            n += 1;
            match self.next_token()? {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(n);
                }
                Some(_) => return Err(self.error("expected `,` or `]`")),
                None => return Err(self.error("expected `,` or `]`, found the end")),
            }
        }
    }
}

/// Where the first `"` or `\` in `bytes` is, eight bytes at a time (strings are most of a
/// registry's bytes; wasm has 64-bit integers but no SIMD here).
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    // The lowest flagged byte of `has_zero` is the first zero byte (flags above it may be
    // false, never below).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        let found = has_zero(w ^ QUOTES) | has_zero(w ^ BACKSLASHES);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map(|i| at + i)
}

/// What kind of value a text is, for values that are not arrays or objects.
fn scalar_kind(text: &[u8]) -> Option<&'static str> {
    match text.first() {
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => None,
        Some(b'"') => Some("a string"),
        Some(_) => Some("a number"),
        None => None,
    }
}

/// serde's error for a text cut out of the document, without its position in that text
/// (`walk` says where the text is).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Where serde's error lies in `text` (line and column counted back to a byte offset).
fn column_offset(text: &[u8], e: &serde_json::Error) -> usize {
    let mut line_start = 0;
    for _ in 1..e.line() {
        match text[line_start..].iter().position(|&b| b == b'\n') {
            Some(i) => line_start += i + 1,
            None => break,
        }
    }
    (line_start + e.column().saturating_sub(1)).min(text.len())
}

fn top<R: std::io::Read>(s: &mut Scanner<R>, pass: Pass, sink: &mut dyn FnMut(Item)) -> Scan<()> {
    s.expect(b'{', "one JSON object")?;
    if s.next_token()? == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            let key: String = s.parse_value(|t| serde_json::from_slice(t))?;
            s.expect(b':', "`:`")?;
            let section = match key.as_str() {
                "apis" => Some(Section::Apis),
                "plans" => Some(Section::Plans),
                "clients" => Some(Section::Clients),
                _ => None,
            };
            match (pass, section, key.as_str()) {
                (Pass::Catalogue, None, "gateway") => {
                    let v: Value = s.parse_value(|t| serde_json::from_slice(t))?;
                    if !v.is_null() {
                        sink(Item::Gateway(v));
                    }
                }
                (Pass::Catalogue, None, _) => {
                    s.skip_value()?;
                    sink(Item::Unknown(key));
                }
                (_, Some(Section::Clients), _) => clients(s, pass, sink)?,
                (Pass::Catalogue, Some(section), _) => {
                    s.parse_value(|text| {
                        let mut d = serde_json::Deserializer::from_slice(text);
                        d.deserialize_any(Entries {
                            section,
                            sink: &mut *sink,
                        })?;
                        d.end()
                    })?;
                }
                (Pass::Clients, _, _) => s.skip_value()?,
            }
            s.keep = s.pos;
            match s.next_token()? {
                Some(b',') => s.pos += 1,
                Some(b'}') => {
                    s.pos += 1;
                    break;
                }
                Some(_) => return Err(s.error("expected `,` or `}`")),
                None => return Err(s.error("expected `,` or `}`, found the end")),
            }
        }
    }
    match s.next_token()? {
        None => Ok(()),
        Some(_) => Err(s.error("trailing characters after the configuration object")),
    }
}

/// `clients`: counted in the catalogue pass, cut into one text per client in the clients pass.
fn clients<R: std::io::Read>(
    s: &mut Scanner<R>,
    pass: Pass,
    sink: &mut dyn FnMut(Item),
) -> Scan<()> {
    match s.next_token()? {
        Some(b'[' | b'{') => {}
        _ => {
            let (from, to) = s.cut_value()?;
            let text = &s.buf[from..to];
            if pass == Pass::Catalogue {
                match scalar_kind(text) {
                    Some(what) => sink(Item::NotAnArray(Section::Clients, what)),
                    None => sink(Item::ClientCount(0)),
                }
            }
            s.keep = s.pos;
            return Ok(());
        }
    }
    let n = s.elements(&mut |i, text| {
        if pass == Pass::Clients {
            match std::str::from_utf8(text) {
                Ok(text) => sink(Item::RawClient(i, text)),
                Err(_) => sink(Item::InvalidClient(i, "not valid UTF-8".to_string())),
            }
        }
        Ok(())
    })?;
    if pass == Pass::Catalogue {
        sink(Item::ClientCount(n));
    }
    Ok(())
}

/// Hands over each entry of a section as its own value. A single object counts as an array of
/// one (Jackson's ACCEPT_SINGLE_VALUE_AS_ARRAY, common in hand-edited Apiman exports), as the
/// whole-document reader does.
struct Entries<'s, 'k> {
    section: Section,
    sink: &'s mut dyn FnMut(Item<'k>),
}

impl<'de> Visitor<'de> for Entries<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            (self.sink)(Item::Entry(self.section, i, v));
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        (self.sink)(Item::Entry(self.section, 0, v));
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        (self.sink)(Item::Entry(self.section, 0, Value::String(s.to_string())));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a boolean"));
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a number"));
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a number"));
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a number"));
        Ok(())
    }
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests {
    use crate::config::{Bytes, ReadDocument};
    use crate::{load_document, Loaded};

    /// A reader that hands over one byte per read: every value spans pieces.
    struct OneByte<'a>(&'a [u8]);

    impl std::io::Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn env(_: &str) -> Option<String> {
        None
    }

    fn from_memory(text: &str) -> Result<Loaded, Vec<String>> {
        load_document(&Bytes(text.as_bytes()), &env)
    }

    fn byte_by_byte(text: &str) -> Result<Loaded, Vec<String>> {
        load_document(&ReadDocument(|| OneByte(text.as_bytes())), &env)
    }

    fn errors(text: &str) -> Vec<String> {
        let errors = from_memory(text).err().unwrap_or_default();
        assert_eq!(byte_by_byte(text).err().unwrap_or_default(), errors);
        errors
    }

    const API: &str = r#"{"organizationId": "o", "apiId": "a", "version": "1", "endpoint": "http://127.0.0.1/", "cluster": "c"}"#;

    fn client(id: &str, key: &str) -> String {
        format!(
            r#"{{"organizationId": "o", "clientId": {}, "version": "1", "apiKey": {},
                "contracts": [{{"apiOrgId": "o", "apiId": "a", "apiVersion": "1"}}]}}"#,
            serde_json::json!(id),
            serde_json::json!(key)
        )
    }

    #[test]
    fn the_first_quote_or_backslash_is_found_in_every_position() {
        for len in 0..20 {
            for at in 0..len {
                for special in [b'"', b'\\'] {
                    let mut text = vec![b'a'; len];
                    text[at] = special;
                    // Bytes that differ from the specials by one bit or a borrow.
                    if at + 1 < len {
                        text[at + 1] = b'#';
                    }
                    if at > 0 {
                        text[at - 1] = b'!';
                    }
                    assert_eq!(super::quote_or_backslash(&text), Some(at), "{text:?}");
                }
            }
            assert_eq!(super::quote_or_backslash(&vec![0x80 | b'"'; len]), None);
            assert_eq!(super::quote_or_backslash(&vec![b'!'; len]), None);
        }
    }

    #[test]
    fn a_document_read_a_byte_at_a_time_loads_as_from_memory() {
        let text = format!(
            r#"{{"gateway": {{"trustedHops": 1}}, "apis": [{API}], "clients": [{}, {}, {}]}}"#,
            client("c1", "k1"),
            client("c2", "k2"),
            client("c3", "k3")
        );
        for loaded in [from_memory(&text), byte_by_byte(&text)] {
            let registry = loaded.unwrap().registry;
            assert_eq!(registry.client_count(), 3);
            let (_, c) = registry.client_by_key("k2").unwrap();
            assert_eq!(c.identity.client_id, "c2");
        }
    }

    #[test]
    fn brackets_quotes_and_escapes_inside_strings_do_not_end_a_client() {
        // Written into the JSON text with escapes: `\"` and `\\`.
        let tricky = r#"c]}{[,"\"\\"#;
        let text = format!(
            r#"{{"apis": [{API}], "clients": [{}, {}]}}"#,
            client(tricky, "k\"]},1"),
            client("plain", "k2")
        );
        for loaded in [from_memory(&text), byte_by_byte(&text)] {
            let registry = loaded.unwrap().registry;
            assert_eq!(registry.client_count(), 2);
            let (_, c) = registry.client_by_key("k\"]},1").unwrap();
            assert_eq!(c.identity.client_id, tricky);
        }
    }

    #[test]
    fn clients_may_come_before_the_apis_they_use() {
        let text = format!(
            r#"{{"clients": [{}], "apis": [{API}]}}"#,
            client("c1", "k1")
        );
        assert!(byte_by_byte(&text).is_ok());
    }

    #[test]
    fn a_single_client_object_counts_as_a_list_of_one() {
        let text = format!(r#"{{"apis": [{API}], "clients": {}}}"#, client("c1", "k1"));
        assert_eq!(byte_by_byte(&text).unwrap().registry.client_count(), 1);
    }

    #[test]
    fn a_missing_comma_between_clients_is_an_error_with_its_offset() {
        let text = format!(
            r#"{{"apis": [{API}], "clients": [{} {}]}}"#,
            client("c1", "k1"),
            client("c2", "k2")
        );
        let at = text.find("} {").unwrap() + 2;
        assert_eq!(
            errors(&text),
            [format!(
                "(configuration): not valid JSON: expected `,` or `]` at byte {at} (the plugin configuration must be one JSON object)"
            )]
        );
    }

    #[test]
    fn a_client_that_is_not_valid_json_is_named_by_its_path() {
        let text = format!(
            r#"{{"apis": [{API}], "clients": [{}, {{"clientId": tru}}]}}"#,
            client("c1", "k1")
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("clients[1]: not valid JSON: expected ident"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_unterminated_document_is_an_error() {
        for text in [
            r#"{"apis": [{"a": "b"#,
            r#"{"apis": ["#,
            r#"{"clients": [{}"#,
            "{",
        ] {
            let errors = errors(text);
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            assert!(errors[0].contains("not valid JSON"), "{errors:?}");
        }
    }

    #[test]
    fn a_one_byte_value_read_across_pieces_is_judged_as_from_memory() {
        // The key `1` is one byte, and the read after it moves it to the buffer's start.
        let errors = errors("{1: 2}");
        assert!(
            errors[0].contains("expected a string at byte 1"),
            "{errors:?}"
        );
    }

    #[test]
    fn text_after_the_configuration_object_is_an_error() {
        let errors = errors(r#"{"apis": []} {"#);
        assert!(
            errors[0].contains("trailing characters after the configuration object at byte 13"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_document_that_is_not_an_object_is_an_error() {
        for text in ["[]", "\"x\"", "", "   "] {
            let errors = errors(text);
            assert!(
                errors[0].contains("expected one JSON object"),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn clients_that_are_not_a_list_are_an_error() {
        assert_eq!(
            errors(r#"{"clients": true}"#),
            ["clients: expected an array, found a boolean"]
        );
        assert!(byte_by_byte(r#"{"clients": null}"#).is_ok());
    }

    #[test]
    fn a_closing_bracket_of_the_wrong_kind_is_an_error() {
        let gateway = errors(r#"{"gateway": {"a": [1}, "apis": []}"#);
        assert!(gateway[0].contains("not valid JSON"), "{gateway:?}");
        let clients = errors(r#"{"clients": [{"a": [1}]}"#);
        assert!(
            clients[0].contains("unexpected `}` at byte 21"),
            "{clients:?}"
        );
    }
}
