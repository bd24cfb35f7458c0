//! Envoy tap traces (`envoy.data.tap.v3.TraceWrapper` as JSON), as the admin `/tap` endpoint
//! streams them: one or more JSON objects one after the other, or a JSON array of them.
//!
//! Both kinds of HTTP trace are read:
//! - streamed (`http_streamed_trace_segment`, tap `output_config.streaming: true`): segments
//!   are grouped by `trace_id`. Verified on Envoy 1.40: the request headers are copied as the
//!   tap filter saw them, so a tap placed before tollgate records what the client sent, and
//!   the response as tollgate sent it. These traces carry no timestamps.
//! - buffered (`http_buffered_trace`): one object per exchange, with
//!   `headers_received_time` and the downstream address when the tap filter records them.
//!   Verified on Envoy 1.40: the request headers are those of the live header map at the end
//!   of the stream, i.e. after every filter changed them (tollgate's rewritten `:path`).
//!
//! Headers Envoy added before the tap saw the request (`x-forwarded-proto`, `x-request-id`,
//! `x-envoy-*`, the last `x-forwarded-for` hop) are removed, since the replay adds them again.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::json::{base64_decode, problem, Obj, Problem};
use super::{is_gateway_reply, strip_recorded_response_headers, Exchange, Expect, Format};
use super::{InputError, Suite};
use crate::host::{BackendResponse, StreamInput, Upstream};
use crate::time;

/// The JSON values of a tap file, flattened out of arrays, with their positions.
fn values(path: &Path, text: &str) -> Result<Vec<(String, Value)>, InputError> {
    let mut out = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, item) in stream.enumerate() {
        let v = item.map_err(|e| {
            InputError::new(
                path,
                format!("line {}, column {}", e.line(), e.column()),
                format!("malformed JSON in trace {}: {e}", i + 1),
            )
        })?;
        match v {
            Value::Array(items) => {
                for (j, item) in items.into_iter().enumerate() {
                    out.push((format!("[{j}]"), item));
                }
            }
            other => out.push((format!("trace {}", out.len() + 1), other)),
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Trace {
    label: String,
    request_headers: Vec<(String, String)>,
    request_body: Vec<u8>,
    request_trailers: Vec<(String, String)>,
    response_headers: Option<Vec<(String, String)>>,
    response_body: Vec<u8>,
    at: Option<u64>,
    source: Option<String>,
    truncated: bool,
}

pub fn parse(path: &Path, text: &str) -> Result<Suite, InputError> {
    let items = values(path, text)?;
    if items.is_empty() {
        return Err(InputError::new(path, "", "the tap file holds no traces"));
    }
    let mut suite = Suite::empty(path, Format::Tap);
    let mut traces: Vec<Trace> = Vec::new();
    // Segments of several streams may interleave: each trace_id keeps its slot.
    let mut streamed: HashMap<String, usize> = HashMap::new();
    let mut buffered = false;
    for (label, v) in &items {
        let err = |(at, m): Problem| {
            InputError::new(
                path,
                if at.is_empty() {
                    label.clone()
                } else {
                    format!("{label}: {at}")
                },
                m,
            )
        };
        let o = Obj::of(v, "").map_err(err)?;
        if let Some(b) = o.get("http_buffered_trace") {
            buffered = true;
            traces.push(buffered_trace(b, label).map_err(err)?);
        } else if let Some(s) = o.get("http_streamed_trace_segment") {
            let seg = Obj::of(s, "http_streamed_trace_segment").map_err(err)?;
            let id = match seg.get("trace_id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => {
                    return Err(err(problem(
                        "http_streamed_trace_segment.trace_id",
                        "is required",
                    )))
                }
            };
            let slot = match streamed.get(&id) {
                Some(i) => *i,
                None => {
                    traces.push(Trace {
                        label: format!("{label} (trace_id {id})"),
                        ..Trace::default()
                    });
                    streamed.insert(id, traces.len() - 1);
                    traces.len() - 1
                }
            };
            segment(&seg, &mut traces[slot]).map_err(err)?;
        } else if o.has("socket_buffered_trace") || o.has("socket_streamed_trace_segment") {
            return Err(InputError::new(
                path,
                label.clone(),
                "a socket (transport) trace; only HTTP traces can be replayed",
            ));
        } else {
            return Err(InputError::new(
                path,
                label.clone(),
                "not a tap trace (expected \"http_buffered_trace\" or \"http_streamed_trace_segment\")",
            ));
        }
    }
    if buffered {
        suite.warnings.push(
            "buffered tap traces hold the request as Envoy's filters left it (tollgate's \
             rewritten path, stripped keys); record with \"streaming\": true to replay what \
             clients sent"
                .to_string(),
        );
    }
    for t in traces {
        if t.truncated {
            suite
                .warnings
                .push(format!("{}: a body was truncated by the tap", t.label));
        }
        suite
            .exchanges
            .push(exchange(t).map_err(|(at, m)| InputError::new(path, at, m))?);
    }
    if let Some(first) = suite.exchanges.iter().find_map(|e| e.at) {
        suite.start = first;
    }
    Ok(suite)
}

fn tap_headers(v: Option<&Value>, at: &str) -> Result<Vec<(String, String)>, Problem> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(problem(at, "expected an array of {\"key\", \"value\"}"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = Obj::of(h, &format!("{at}[{i}]"))?;
            let key = h
                .string("key")?
                .ok_or_else(|| problem(&h.at("key"), "is required"))?;
            let value = match (h.string("value")?, h.string("raw_value")?) {
                (Some(v), _) if !v.is_empty() => v.to_string(),
                (_, Some(raw)) if !raw.is_empty() => String::from_utf8_lossy(
                    &base64_decode(raw).map_err(|m| problem(&h.at("raw_value"), m))?,
                )
                .into_owned(),
                _ => String::new(),
            };
            Ok((key.to_string(), value))
        })
        .collect()
}

/// A tap `Body`: `as_bytes` (base64 in JSON) or `as_string`; returns the bytes and whether
/// the tap truncated them.
fn tap_body(v: Option<&Value>, at: &str) -> Result<(Vec<u8>, bool), Problem> {
    let Some(v) = v else {
        return Ok((Vec::new(), false));
    };
    let b = Obj::of(v, at)?;
    let truncated = b.bool("truncated")?.unwrap_or(false);
    let bytes = match (b.string("as_string")?, b.string("as_bytes")?) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(b64)) => base64_decode(b64).map_err(|m| problem(&b.at("as_bytes"), m))?,
        (None, None) => Vec::new(),
    };
    Ok((bytes, truncated))
}

fn buffered_trace(v: &Value, label: &str) -> Result<Trace, Problem> {
    let t = Obj::of(v, "http_buffered_trace")?;
    let mut trace = Trace {
        label: label.to_string(),
        ..Trace::default()
    };
    if let Some(r) = t.get("request") {
        let r = Obj::of(r, &t.at("request"))?;
        trace.request_headers = tap_headers(r.get("headers"), &r.at("headers"))?;
        let (body, cut) = tap_body(r.get("body"), &r.at("body"))?;
        trace.request_body = body;
        trace.truncated |= cut;
        trace.request_trailers = tap_headers(r.get("trailers"), &r.at("trailers"))?;
        if let Some(s) = r.string("headers_received_time")? {
            trace.at = Some(time::parse_rfc3339(s).ok_or_else(|| {
                problem(
                    &r.at("headers_received_time"),
                    format!("\"{s}\" is not a timestamp"),
                )
            })?);
        }
    }
    if let Some(r) = t.get("response") {
        let r = Obj::of(r, &t.at("response"))?;
        let headers = tap_headers(r.get("headers"), &r.at("headers"))?;
        if !headers.is_empty() {
            trace.response_headers = Some(headers);
        }
        let (body, cut) = tap_body(r.get("body"), &r.at("body"))?;
        trace.response_body = body;
        trace.truncated |= cut;
    }
    let remote = &v["downstream_connection"]["remote_address"]["socket_address"];
    if let (Some(a), Some(p)) = (remote["address"].as_str(), remote["port_value"].as_u64()) {
        trace.source = Some(if a.contains(':') {
            format!("[{a}]:{p}")
        } else {
            format!("{a}:{p}")
        });
    }
    Ok(trace)
}

fn segment(seg: &Obj, trace: &mut Trace) -> Result<(), Problem> {
    let headers_of = |key: &str| -> Result<Option<Vec<(String, String)>>, Problem> {
        match seg.get(key) {
            Some(h) => {
                let h = Obj::of(h, &seg.at(key))?;
                Ok(Some(tap_headers(h.get("headers"), &h.at("headers"))?))
            }
            None => Ok(None),
        }
    };
    if let Some(h) = headers_of("request_headers")? {
        trace.request_headers = h;
    }
    if let Some(h) = headers_of("request_trailers")? {
        trace.request_trailers = h;
    }
    if let Some(h) = headers_of("response_headers")? {
        trace.response_headers = Some(h);
    }
    if seg.has("request_body_chunk") {
        let (b, cut) = tap_body(seg.get("request_body_chunk"), &seg.at("request_body_chunk"))?;
        trace.request_body.extend(b);
        trace.truncated |= cut;
    }
    if seg.has("response_body_chunk") {
        let (b, cut) = tap_body(
            seg.get("response_body_chunk"),
            &seg.at("response_body_chunk"),
        )?;
        trace.response_body.extend(b);
        trace.truncated |= cut;
    }
    Ok(())
}

/// Removes what Envoy added to the request before the tap saw it.
fn client_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter_map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            if lower.starts_with(':')
                || lower.starts_with("x-envoy-")
                || lower == "x-forwarded-proto"
                || lower == "x-request-id"
            {
                return None;
            }
            if lower == "x-forwarded-for" {
                // Envoy appended the peer (use_remote_address); the rest came from the client.
                let hops: Vec<&str> = v.split(',').collect();
                let kept = hops[..hops.len().saturating_sub(1)].join(",");
                return (!kept.trim().is_empty()).then_some((k, kept));
            }
            Some((k, v))
        })
        .collect()
}

fn exchange(t: Trace) -> Result<Exchange, Problem> {
    let get = |name: &str| {
        t.request_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let method = get(":method").ok_or_else(|| problem(&t.label, "the request has no :method"))?;
    let path = get(":path").ok_or_else(|| problem(&t.label, "the request has no :path"))?;
    let mut request = StreamInput::new(&method, &path);
    request.method = method.to_ascii_uppercase();
    if let Some(a) = get(":authority").or_else(|| get("host")) {
        request.authority = a;
    }
    if let Some(s) = get(":scheme") {
        request.scheme = s;
    }
    request.headers = client_headers(t.request_headers.clone());
    if !t.request_body.is_empty() {
        request.body = vec![t.request_body.clone()];
    }
    request.trailers = t.request_trailers.clone();
    if let Some(s) = &t.source {
        request.source = s.clone();
    }
    let mut ex = Exchange {
        name: String::new(),
        entry: t.label.clone(),
        at: t.at,
        worker: None,
        request,
        response: None,
        recorded_status: None,
        recorded_by_gateway: false,
        expect: Expect::default(),
        skip: None,
        timed: false,
    };
    let Some(mut headers) = t.response_headers else {
        ex.skip = Some("the trace has no response".into());
        return Ok(ex);
    };
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .ok_or_else(|| problem(&t.label, "the response has no valid :status"))?;
    ex.recorded_status = Some(status);
    ex.expect = Expect::status(status);
    ex.recorded_by_gateway = is_gateway_reply(&headers);
    strip_recorded_response_headers(&mut headers);
    if !ex.recorded_by_gateway {
        ex.response = Some(Upstream::Respond(BackendResponse {
            status,
            headers,
            body: t.response_body,
            trailers: Vec::new(),
        }));
    }
    Ok(ex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAMED: &str = r#"
{"http_streamed_trace_segment": {"trace_id": "7", "request_headers": {"headers": [
  {"key": ":authority", "value": "gw"}, {"key": ":path", "value": "/o/a/1/x"},
  {"key": ":method", "value": "POST"}, {"key": ":scheme", "value": "http"},
  {"key": "x-forwarded-for", "value": "1.2.3.4,192.0.2.2"},
  {"key": "x-forwarded-proto", "value": "http"}, {"key": "x-request-id", "value": "r"},
  {"key": "x-api-key", "value": "k"}]}}}
{"http_streamed_trace_segment": {"trace_id": "7", "request_body_chunk": {"as_bytes": "aGk="}}}
{"http_streamed_trace_segment": {"trace_id": "7", "response_headers": {"headers": [
  {"key": ":status", "value": "201"}, {"key": "x-backend", "value": "echo"}]}}}
{"http_streamed_trace_segment": {"trace_id": "7", "response_body_chunk": {"as_string": "ok"}}}
"#;

    #[test]
    fn streamed_segments_make_one_exchange_with_the_clients_headers() {
        let s = parse(Path::new("t.json"), STREAMED).unwrap();
        assert_eq!(s.exchanges.len(), 1);
        let ex = &s.exchanges[0];
        assert_eq!(
            (ex.request.method.as_str(), ex.request.path.as_str()),
            ("POST", "/o/a/1/x")
        );
        assert_eq!(
            ex.request.headers,
            vec![
                ("x-forwarded-for".to_string(), "1.2.3.4".to_string()),
                ("x-api-key".to_string(), "k".to_string())
            ]
        );
        assert_eq!(ex.request.body, vec![b"hi".to_vec()]);
        assert_eq!(ex.expect.status, Some(201));
        assert!(matches!(&ex.response, Some(Upstream::Respond(r)) if r.body == b"ok"));
    }

    #[test]
    fn a_buffered_trace_gives_its_time_and_peer() {
        let s = parse(
            Path::new("t.json"),
            r#"[{"http_buffered_trace": {"request": {"headers": [
                {"key": ":path", "value": "/x"}, {"key": ":method", "value": "GET"}],
                "headers_received_time": "2026-01-01T00:00:00.5Z"},
              "response": {"headers": [{"key": ":status", "value": "200"}]},
              "downstream_connection": {"remote_address": {"socket_address":
                {"address": "10.0.0.1", "port_value": 5000}}}}}]"#,
        )
        .unwrap();
        let ex = &s.exchanges[0];
        assert_eq!(ex.at, Some(1_767_225_600_500_000_000));
        assert_eq!(ex.request.source, "10.0.0.1:5000");
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn a_socket_trace_is_refused_naming_the_trace() {
        let e = parse(Path::new("t.json"), r#"{"socket_buffered_trace": {}}"#).unwrap_err();
        assert_eq!(e.at, "trace 1");
    }
}
