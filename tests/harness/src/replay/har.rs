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
        suite.exchanges.push(entry(v, &at)?);
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

fn entry(v: &Value, at: &str) -> Result<Exchange, Problem> {
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
        let body = match pd.string("text")? {
            Some(t) if pd.string("encoding")? == Some("base64") => {
                base64_decode(t).map_err(|m| problem(&pd.at("text"), m))?
            }
            Some(t) => t.as_bytes().to_vec(),
            None => name_values(&pd, "params")?
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
                .into_bytes(),
        };
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
                    Some(t) => t.as_bytes().to_vec(),
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
