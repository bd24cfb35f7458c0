//! HAR 1.2 (HTTP Archive), as browsers, mitmproxy, Charles and Postman export it. Each entry's
//! request is replayed; its response is the backend's answer and its status the expectation.
//! An entry may carry `_expect` (HAR allows custom fields starting with `_`) with the
//! fixture format's expectations.

use std::path::Path;

use serde_json::Value;

use super::json::{base64_decode, problem, syntax_error, Obj, Problem};
use super::{expect, is_gateway_reply, strip_recorded_response_headers, Exchange, Expect, Format};
use super::{InputError, Suite};
use crate::host::{BackendResponse, StreamInput, Upstream};
use crate::time;

pub fn parse(path: &Path, text: &str) -> Result<Suite, InputError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let (at, message) = syntax_error(&e);
        InputError::new(path, at, message)
    })?;
    parse_value(path, &value).map_err(|(at, message)| InputError::new(path, at, message))
}

fn parse_value(path: &Path, value: &Value) -> Result<Suite, Problem> {
    let top = Obj::of(value, "")?;
    let log = Obj::of(
        top.get("log")
            .ok_or_else(|| problem("log", "is required (not a HAR file?)"))?,
        "log",
    )?;
    let mut suite = Suite::empty(path, Format::Har);
    let entries = log.array("entries")?;
    if entries.is_empty() {
        return Err(problem("log.entries", "the HAR has no entries"));
    }
    for (at, v) in entries {
        suite.exchanges.push(entry(v, &at, &mut suite.warnings)?);
    }
    if let Some(first) = suite.exchanges.iter().find_map(|e| e.at) {
        suite.start = first;
    }
    Ok(suite)
}

/// Splits an absolute URL into scheme, authority and request target.
pub fn split_url(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+')
    {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest[..end].rsplit('@').next().unwrap_or("");
    if authority.is_empty() {
        return None;
    }
    let mut target = rest[end..].split('#').next().unwrap_or("").to_string();
    if target.is_empty() || target.starts_with('?') {
        target.insert(0, '/');
    }
    Some((scheme.to_ascii_lowercase(), authority.to_string(), target))
}

fn name_values(o: &Obj, key: &str) -> Result<Vec<(String, String)>, Problem> {
    o.array(key)?
        .into_iter()
        .map(|(at, v)| {
            let h = Obj::of(v, &at)?;
            let name = h
                .string("name")?
                .ok_or_else(|| problem(&h.at("name"), "is required"))?;
            Ok((
                name.to_string(),
                h.string("value")?.unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// The `charset` parameter of a media type, lower-cased.
fn charset(mime: &str) -> Option<String> {
    mime.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    })
}

/// Charsets whose bytes are the code points U+0000..U+00FF (windows-1252 only where it agrees,
/// which the caller checks by the characters being ≤ U+00FF).
const LATIN1: &[&str] = &[
    "iso-8859-1",
    "iso8859-1",
    "iso_8859-1",
    "latin1",
    "latin-1",
    "l1",
    "cp819",
    "windows-1252",
    "cp1252",
];

/// The bytes a HAR `text` field stood for, and why they may not be the ones recorded.
///
/// HAR keeps a body as text. Recorders decode the bytes with the charset of the content type,
/// else (mitmproxy, for anything but JSON) as latin-1: every byte one character U+0000..U+00FF.
/// So without a charset, text whose characters are all ≤ U+00FF is sent as one byte each;
/// other text, JSON (RFC 8259: UTF-8) and text with a UTF-8 charset is sent as UTF-8. A
/// `size` (the recorded `bodySize`) picks whichever of the two gives that many bytes.
pub fn text_bytes(text: &str, mime: &str, size: Option<u64>) -> (Vec<u8>, Option<String>) {
    let utf8 = text.as_bytes().to_vec();
    if text.is_ascii() {
        let note = size.filter(|n| *n != utf8.len() as u64).map(|n| {
            format!(
                "the recorded bodySize is {n} bytes, the text has {}",
                utf8.len()
            )
        });
        return (utf8, note);
    }
    let latin1: Option<Vec<u8>> = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect();
    let charset = charset(mime);
    let mut note = None;
    let prefer_latin1 = match charset.as_deref() {
        Some("utf-8" | "utf8") => false,
        Some(c) if LATIN1.contains(&c) => true,
        Some(other) => {
            note = Some(format!(
                "the charset {other} is not one tollgate-replay encodes (it does UTF-8 and \
                 latin-1): sent as UTF-8"
            ));
            false
        }
        None => !mime.to_ascii_lowercase().contains("json"),
    };
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    match (prefer_latin1, latin1) {
        (true, Some(l)) => candidates.extend([l, utf8]),
        (false, Some(l)) => candidates.extend([utf8, l]),
        (_, None) => candidates.push(utf8),
    }
    let chosen = match size {
        Some(n) => candidates
            .iter()
            .position(|c| c.len() as u64 == n)
            .map(|i| {
                note = None;
                candidates.swap_remove(i)
            })
            .unwrap_or_else(|| {
                let first = candidates.swap_remove(0);
                note = Some(format!(
                    "the recorded bodySize is {n} bytes, the text gives {}{}",
                    first.len(),
                    note.as_deref()
                        .map(|n| format!("; {n}"))
                        .unwrap_or_default()
                ));
                first
            }),
        None => candidates.swap_remove(0),
    };
    if text.contains('\u{fffd}') {
        note = Some(
            "the recorder replaced bytes it could not decode with U+FFFD, so the bytes sent \
             differ from the recorded ones"
                .to_string(),
        );
    }
    (chosen, note)
}

/// A request's body from `postData`, and why it may not be byte for byte what the client sent.
fn post_data(
    pd: &Obj,
    size: Option<u64>,
    content_type: &str,
) -> Result<(Vec<u8>, Option<String>), Problem> {
    let mime = pd
        .string("mimeType")?
        .filter(|m| !m.is_empty())
        .unwrap_or(content_type);
    let Some(text) = pd.string("text")? else {
        let params = name_values(pd, "params")?;
        let body = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes();
        let note = (!params.is_empty()).then(|| {
            "the recording has no postData.text: the body was rebuilt from postData.params"
                .to_string()
        });
        return Ok((body, note));
    };
    match pd.string("encoding")? {
        Some("base64") => {
            let body = base64_decode(text).map_err(|m| problem(&pd.at("text"), m))?;
            let note = size.filter(|n| *n != body.len() as u64).map(|n| {
                format!(
                    "the recorded bodySize is {n} bytes, the decoded text {}",
                    body.len()
                )
            });
            Ok((body, note))
        }
        Some(other) if !other.is_empty() => Ok((
            text.as_bytes().to_vec(),
            Some(format!(
                "postData.encoding \"{other}\" is not one tollgate-replay knows (base64 is): \
                 the text was sent as UTF-8"
            )),
        )),
        _ => Ok(text_bytes(text, mime, size)),
    }
}

fn entry(v: &Value, at: &str, warnings: &mut Vec<String>) -> Result<Exchange, Problem> {
    let e = Obj::of(v, at)?;
    let req = Obj::of(
        e.get("request")
            .ok_or_else(|| problem(&e.at("request"), "is required"))?,
        &e.at("request"),
    )?;
    let method = req
        .string("method")?
        .ok_or_else(|| problem(&req.at("method"), "is required"))?;
    let url = req
        .string("url")?
        .ok_or_else(|| problem(&req.at("url"), "is required"))?;
    let (scheme, authority, target) = split_url(url).ok_or_else(|| {
        problem(
            &req.at("url"),
            format!("\"{url}\" is not an absolute http(s) URL"),
        )
    })?;
    let mut request = StreamInput::new(method, &target);
    request.method = method.to_ascii_uppercase();
    request.scheme = scheme;
    request.authority = authority;
    // HTTP/2 captures list pseudo-headers too; the URL and method already say it all.
    request.headers = name_values(&req, "headers")?
        .into_iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .collect();
    if let Some(pd) = req.get("postData") {
        let pd = Obj::of(pd, &req.at("postData"))?;
        // bodySize is -1 when unknown; some recorders write 0 for bodies they did not measure.
        let size = req
            .get("bodySize")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0);
        let content_type = request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let (body, mut note) = post_data(&pd, size, &content_type)?;
        // HAR holds the decoded body: the coding it was sent with no longer applies.
        if let Some((_, coding)) = request.headers.iter().find(|(k, v)| {
            k.eq_ignore_ascii_case("content-encoding") && !v.eq_ignore_ascii_case("identity")
        }) {
            note = Some(format!(
                "it was sent with Content-Encoding {coding}, and the HAR holds it decoded: sent \
                 decoded, without that header"
            ));
            request
                .headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-encoding"));
        }
        if let Some(note) = note {
            warnings.push(format!(
                "{} ({} {}): the request body cannot be reproduced exactly: {note}",
                req.at("postData"),
                request.method,
                request.path
            ));
        }
        if !body.is_empty() {
            request.body = vec![body];
        }
    }
    let at_time = match e.string("startedDateTime")? {
        Some(s) => Some(time::parse_rfc3339(s).ok_or_else(|| {
            problem(
                &e.at("startedDateTime"),
                format!("\"{s}\" is not an ISO 8601 date-time"),
            )
        })?),
        None => None,
    };

    let resp = Obj::of(
        e.get("response")
            .ok_or_else(|| problem(&e.at("response"), "is required"))?,
        &e.at("response"),
    )?;
    let status = resp
        .u64("status")?
        .ok_or_else(|| problem(&resp.at("status"), "is required"))?;
    let mut skip = None;
    let mut recorded_status = None;
    let mut response = None;
    let mut by_gateway = false;
    if status == 0 {
        // Browsers record aborted or blocked requests with status 0: nothing to compare with.
        skip = Some("no response was recorded (status 0)".to_string());
    } else {
        let status = u16::try_from(status)
            .ok()
            .filter(|s| (100..=599).contains(s))
            .ok_or_else(|| {
                problem(
                    &resp.at("status"),
                    format!("{status} is not an HTTP status"),
                )
            })?;
        recorded_status = Some(status);
        let mut headers = name_values(&resp, "headers")?;
        by_gateway = is_gateway_reply(&headers);
        strip_recorded_response_headers(&mut headers);
        // HAR keeps bodies decoded, so the encoding no longer applies.
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-encoding"));
        let body = match resp.get("content") {
            Some(c) => {
                let c = Obj::of(c, &resp.at("content"))?;
                match c.string("text")? {
                    Some(t) if c.string("encoding")? == Some("base64") => {
                        base64_decode(t).map_err(|m| problem(&c.at("text"), m))?
                    }
                    Some(t) => text_bytes(t, c.string("mimeType")?.unwrap_or(""), None).0,
                    None => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        if !by_gateway {
            response = Some(Upstream::Respond(BackendResponse {
                status,
                headers,
                body,
                trailers: Vec::new(),
            }));
        }
    }
    let expect = match e.get("_expect") {
        Some(x) => expect::parse(x, &e.at("_expect"))?,
        None => recorded_status.map(Expect::status).unwrap_or_default(),
    };
    Ok(Exchange {
        name: String::new(),
        entry: at.to_string(),
        at: at_time,
        worker: None,
        request,
        response,
        recorded_status,
        recorded_by_gateway: by_gateway,
        expect,
        skip,
        timed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_target() {
        assert_eq!(
            split_url("http://127.0.0.1:10000/demo/echo/1.0/x?a=1#frag"),
            Some((
                "http".into(),
                "127.0.0.1:10000".into(),
                "/demo/echo/1.0/x?a=1".into()
            ))
        );
        assert_eq!(
            split_url("https://user@h.test?q"),
            Some(("https".into(), "h.test".into(), "/?q".into()))
        );
        assert_eq!(split_url("/relative"), None);
        assert_eq!(split_url("http://"), None);
    }

    fn har(entries: &str) -> String {
        format!(r#"{{"log": {{"version": "1.2", "entries": [{entries}]}}}}"#)
    }

    #[test]
    fn an_entry_becomes_a_request_with_its_recorded_status_expected() {
        let s = parse(
            Path::new("t.har"),
            &har(r#"{"startedDateTime": "2026-01-01T00:00:01.000Z",
                "request": {"method": "post", "url": "http://gw:10000/o/a/1/x?k=v",
                  "headers": [{"name": ":authority", "value": "gw"}, {"name": "X-A", "value": "1"}],
                  "postData": {"mimeType": "text/plain", "text": "hi"}},
                "response": {"status": 201, "headers": [{"name": "Content-Length", "value": "2"}],
                  "content": {"size": 2, "text": "b2s=", "encoding": "base64"}}}"#),
        )
        .unwrap();
        let ex = &s.exchanges[0];
        assert_eq!(ex.request.method, "POST");
        assert_eq!(ex.request.path, "/o/a/1/x?k=v");
        assert_eq!(
            ex.request.headers,
            vec![("X-A".to_string(), "1".to_string())]
        );
        assert_eq!(ex.request.body, vec![b"hi".to_vec()]);
        assert_eq!(ex.expect.status, Some(201));
        let Some(Upstream::Respond(r)) = &ex.response else {
            panic!("no response")
        };
        assert_eq!(r.body, b"ok");
        assert!(r.headers.is_empty());
    }

    /// A HAR entry POSTing `post_data` (a JSON object's fields) to `/o/a/1/x`.
    fn post(post_data: &str, body_size: i64) -> String {
        har(&format!(
            r#"{{"request": {{"method": "POST", "url": "http://gw/o/a/1/x", "headers": [],
                "bodySize": {body_size}, "postData": {post_data}}},
                "response": {{"status": 200, "headers": []}}}}"#
        ))
    }

    fn body_of(s: &Suite) -> Vec<u8> {
        s.exchanges[0].request.body.concat()
    }

    #[test]
    fn a_body_without_a_charset_is_sent_as_the_latin1_bytes_it_was_recorded_from() {
        // As mitmproxy 11 writes a binary upload: each byte one character U+0000..U+00FF.
        let bytes: Vec<u8> = (0u8..75)
            .map(|i| i.wrapping_mul(37).wrapping_add(128))
            .collect();
        let text: String = bytes.iter().map(|b| char::from(*b)).collect();
        let pd = serde_json::json!({"mimeType": "application/octet-stream", "text": text});
        let s = parse(Path::new("t.har"), &post(&pd.to_string(), 75)).unwrap();
        assert_eq!(body_of(&s), bytes);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn json_without_a_charset_is_utf8() {
        let s = parse(
            Path::new("t.har"),
            &post(
                r#"{"mimeType": "application/json", "text": "{\"n\":\"café\"}"}"#,
                -1,
            ),
        )
        .unwrap();
        assert_eq!(body_of(&s), "{\"n\":\"café\"}".as_bytes());
    }

    #[test]
    fn a_utf8_charset_makes_the_text_utf8() {
        let s = parse(
            Path::new("t.har"),
            &post(
                r#"{"mimeType": "text/plain; charset=UTF-8", "text": "café"}"#,
                -1,
            ),
        )
        .unwrap();
        assert_eq!(body_of(&s), "café".as_bytes());
    }

    #[test]
    fn text_beyond_latin1_is_utf8() {
        let s = parse(
            Path::new("t.har"),
            &post(r#"{"mimeType": "text/plain", "text": "€ and é"}"#, -1),
        )
        .unwrap();
        assert_eq!(body_of(&s), "€ and é".as_bytes());
    }

    #[test]
    fn the_recorded_body_size_decides_between_latin1_and_utf8() {
        let pd = r#"{"mimeType": "text/plain", "text": "é"}"#;
        let s = parse(Path::new("t.har"), &post(pd, 2)).unwrap();
        assert_eq!(body_of(&s), "é".as_bytes());
        let s = parse(Path::new("t.har"), &post(pd, 1)).unwrap();
        assert_eq!(body_of(&s), vec![0xe9]);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn a_base64_body_is_decoded() {
        let s = parse(
            Path::new("t.har"),
            &post(
                r#"{"mimeType": "application/octet-stream", "text": "AAH/", "encoding": "base64"}"#,
                3,
            ),
        )
        .unwrap();
        assert_eq!(body_of(&s), vec![0, 1, 255]);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn a_body_that_cannot_be_reproduced_exactly_is_named_with_its_entry() {
        let warning = |pd: &str, size: i64| {
            let s = parse(Path::new("t.har"), &post(pd, size)).unwrap();
            assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
            let w = s.warnings[0].clone();
            assert!(
                w.starts_with(
                    "log.entries[0].request.postData (POST /o/a/1/x): the request body cannot be \
                     reproduced exactly: "
                ),
                "{w}"
            );
            w
        };
        assert!(
            warning(r#"{"mimeType": "text/plain", "text": "a\ufffdb"}"#, -1).contains("U+FFFD")
        );
        assert!(warning(
            r#"{"mimeType": "text/plain", "text": "abc", "encoding": "gzip"}"#,
            -1
        )
        .contains("postData.encoding \"gzip\""));
        assert!(warning(r#"{"mimeType": "text/plain", "text": "abc"}"#, 5)
            .contains("bodySize is 5 bytes"));
        assert!(warning(r#"{"mimeType": "text/plain", "text": "ü"}"#, 7)
            .contains("bodySize is 7 bytes, the text gives 1"));
        assert!(warning(
            r#"{"mimeType": "text/plain; charset=shift_jis", "text": "ü"}"#,
            -1
        )
        .contains("shift_jis"));
        assert!(warning(r#"{"mimeType": "application/x-www-form-urlencoded", "params": [{"name": "a", "value": "1"}]}"#, -1)
            .contains("rebuilt from postData.params"));
    }

    #[test]
    fn a_compressed_request_body_is_sent_decoded_without_its_content_encoding() {
        let s = parse(
            Path::new("t.har"),
            &har(
                r#"{"request": {"method": "POST", "url": "http://gw/o/a/1/x",
                  "headers": [{"name": "Content-Encoding", "value": "gzip"}],
                  "postData": {"mimeType": "text/plain", "text": "abc"}},
                "response": {"status": 200, "headers": []}}"#,
            ),
        )
        .unwrap();
        assert_eq!(body_of(&s), b"abc");
        assert!(s.exchanges[0].request.headers.is_empty());
        assert!(
            s.warnings[0].contains("Content-Encoding gzip"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn a_gateway_reply_is_not_used_as_the_backends_answer() {
        let s = parse(
            Path::new("t.har"),
            &har(r#"{"request": {"method": "GET", "url": "http://gw/x", "headers": []},
                "response": {"status": 403, "headers": [{"name": "X-Gateway-Error", "value": "API not public."}]}}"#),
        )
        .unwrap();
        assert!(s.exchanges[0].recorded_by_gateway);
        assert_eq!(s.exchanges[0].response, None);
    }

    #[test]
    fn errors_name_the_entry() {
        let e = parse(
            Path::new("t.har"),
            &har(r#"{"request": {"method": "GET", "url": "x", "headers": []}, "response": {"status": 200}}"#),
        )
        .unwrap_err();
        assert_eq!(e.at, "log.entries[0].request.url");
    }
}
