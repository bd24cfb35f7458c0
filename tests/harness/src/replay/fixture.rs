//! tollgate's fixture format (documented in `docs/replay.md`): a JSON object with
//! the gateway configuration, then the exchanges, each a request, the backend's recorded
//! response and expectations.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::json::{kind, problem, syntax_error, Obj, Problem};
use super::{config, expect, Exchange, Format, GatewayConfig, InputError, Suite};
use crate::host::{
    BackendResponse, CallStub, CallTiming, PropertyValue, StreamInput, StubAnswer, Upstream,
};
use crate::time;

pub const TOP: &[&str] = &[
    "name",
    "description",
    "config",
    "configFile",
    "clusters",
    "start",
    "interval",
    "workers",
    "stubs",
    "exchanges",
];
pub const EXCHANGE: &[&str] = &[
    "name",
    "at",
    "timed",
    "worker",
    "source",
    "properties",
    "callTiming",
    "request",
    "response",
    "expect",
];
pub const REQUEST: &[&str] = &[
    "method",
    "path",
    "authority",
    "scheme",
    "headers",
    "body",
    "bodyBase64",
    "chunks",
    "trailers",
];
pub const RESPONSE: &[&str] = &[
    "status",
    "headers",
    "body",
    "bodyBase64",
    "trailers",
    "reset",
    "delayMs",
];
pub const STUB: &[&str] = &[
    "cluster",
    "method",
    "path",
    "status",
    "headers",
    "body",
    "bodyBase64",
    "delayMs",
    "timeout",
];

pub fn parse(path: &Path, text: &str) -> Result<Suite, InputError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let (at, message) = syntax_error(&e);
        InputError::new(path, at, message)
    })?;
    parse_value(path, &value).map_err(|(at, message)| InputError::new(path, at, message))
}

/// Clusters named by a plugin configuration (`apis[].cluster`, else the endpoint's
/// `host:port`, tollgate's default), so a fixture need not list them.
pub fn clusters_of(plugin: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(v) = serde_json::from_slice::<Value>(plugin) else {
        return out;
    };
    for api in v["apis"].as_array().into_iter().flatten() {
        if let Some(c) = api["cluster"].as_str() {
            out.insert(c.to_string());
        } else if let Some(url) = api["endpoint"].as_str() {
            if let Ok(e) = tollgate_core::config::Endpoint::parse(url) {
                out.insert(e.default_cluster());
            }
        }
    }
    out
}

fn parse_value(path: &Path, value: &Value) -> Result<Suite, Problem> {
    let top = Obj::of(value, "")?;
    top.only(TOP)?;
    let mut suite = Suite::empty(path, Format::Fixture);
    if let Some(n) = top.string("name")? {
        suite.name = n.to_string();
    }
    suite.description = top.string("description")?.unwrap_or("").to_string();
    let mut gateway = match (top.get("config"), top.string("configFile")?) {
        (Some(_), Some(_)) => {
            return Err(problem(
                "",
                "give either \"config\" or \"configFile\", not both",
            ))
        }
        (Some(c), None) => {
            Obj::of(c, "config")?;
            Some(GatewayConfig {
                plugin: c.to_string().into_bytes(),
                clusters: None,
                source: format!("{} (config)", path.display()),
            })
        }
        (None, Some(file)) => {
            let full = path.parent().unwrap_or(Path::new(".")).join(file);
            Some(config::load(&full).map_err(|e| problem("configFile", e.to_string()))?)
        }
        (None, None) => None,
    };
    if top.has("clusters") {
        let listed: BTreeSet<String> = top.strings("clusters")?.into_iter().collect();
        match gateway.as_mut() {
            Some(g) => g.clusters = Some(listed),
            None => return Err(problem("clusters", "clusters need a \"config\"")),
        }
    } else if let Some(g) = gateway.as_mut() {
        if g.clusters.is_none() {
            g.clusters = Some(clusters_of(&g.plugin));
        }
    }
    suite.config = gateway;
    if let Some(s) = top.string("start")? {
        suite.start = time::parse_rfc3339(s)
            .ok_or_else(|| problem("start", format!("\"{s}\" is not an RFC 3339 timestamp")))?;
    }
    if let Some(ms) = top.u64("interval")? {
        suite.interval = ms.saturating_mul(1_000_000);
    }
    if let Some(w) = top.u64("workers")? {
        if !(1..=64).contains(&w) {
            return Err(problem("workers", "must be between 1 and 64"));
        }
        suite.workers = w as usize;
    }
    for (at, v) in top.array("stubs")? {
        suite.stubs.push(stub(v, &at)?);
    }
    let exchanges = top.array("exchanges")?;
    if exchanges.is_empty() {
        return Err(problem(
            "exchanges",
            "a fixture needs at least one exchange",
        ));
    }
    for (at, v) in exchanges {
        let ex = exchange(v, &at)?;
        if ex.worker.is_some_and(|w| w >= suite.workers) {
            return Err(problem(
                &format!("{at}.worker"),
                format!("only {} worker(s) are configured", suite.workers),
            ));
        }
        suite.exchanges.push(ex);
    }
    Ok(suite)
}

fn stub(v: &Value, at: &str) -> Result<CallStub, Problem> {
    let o = Obj::of(v, at)?;
    o.only(STUB)?;
    let cluster = o
        .string("cluster")?
        .ok_or_else(|| problem(&o.at("cluster"), "is required"))?;
    let answer = if o.bool("timeout")? == Some(true) {
        StubAnswer::Timeout
    } else {
        StubAnswer::Respond {
            status: o.status("status")?.unwrap_or(200),
            headers: o.headers("headers")?,
            body: o.body("body", "bodyBase64")?.unwrap_or_default(),
        }
    };
    Ok(CallStub {
        cluster: cluster.to_string(),
        method: o.string("method")?.map(str::to_string),
        path: o.string("path")?.map(str::to_string),
        answer,
        delay: Duration::from_millis(o.u64("delayMs")?.unwrap_or(0)),
    })
}

fn property(v: &Value, at: &str) -> Result<PropertyValue, Problem> {
    match v {
        Value::String(s) => Ok(PropertyValue::Str(s.clone())),
        Value::Bool(b) => Ok(PropertyValue::Bool(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(PropertyValue::Int)
            .ok_or_else(|| problem(at, "integers only")),
        other => Err(problem(
            at,
            format!(
                "expected a string, boolean or integer, found {}",
                kind(other)
            ),
        )),
    }
}

/// `"immediate"`, `"afterBody"`, `"never"` or `{"delayed": N}`.
fn call_timing(v: &Value, at: &str) -> Result<CallTiming, Problem> {
    const CHOICES: &str = "\"immediate\", \"afterBody\", \"never\" or {\"delayed\": N}";
    match v {
        Value::String(s) => match s.as_str() {
            "immediate" => Ok(CallTiming::Immediate),
            "afterBody" => Ok(CallTiming::AfterBody),
            "never" => Ok(CallTiming::Never),
            other => Err(problem(
                at,
                format!("\"{other}\" is not a call timing ({CHOICES})"),
            )),
        },
        Value::Object(_) => {
            let o = Obj::of(v, at)?;
            o.only(&["delayed"])?;
            let n = o
                .u64("delayed")?
                .ok_or_else(|| problem(&o.at("delayed"), "is required"))?;
            u32::try_from(n)
                .map(CallTiming::Delayed)
                .map_err(|_| problem(&o.at("delayed"), "is too large"))
        }
        other => Err(problem(
            at,
            format!("expected {CHOICES}, found {}", kind(other)),
        )),
    }
}

fn exchange(v: &Value, at: &str) -> Result<Exchange, Problem> {
    let o = Obj::of(v, at)?;
    o.only(EXCHANGE)?;
    let req_value = o
        .get("request")
        .ok_or_else(|| problem(&o.at("request"), "is required"))?;
    let mut request = request(req_value, &o.at("request"))?;
    if let Some(s) = o.string("source")? {
        if tollgate_core::client_ip::parse_socket_address(s).is_none() {
            return Err(problem(
                &o.at("source"),
                format!("\"{s}\" is not an address like 127.0.0.1:40000"),
            ));
        }
        // A bare address gets a port, since Envoy's `source.address` always has one.
        request.source = match s.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => format!("[{s}]:40000"),
            Ok(std::net::IpAddr::V4(_)) => format!("{s}:40000"),
            Err(_) => s.to_string(),
        };
    }
    if let Some(t) = o.get("callTiming") {
        request.call_timing = call_timing(t, &o.at("callTiming"))?;
    }
    if let Some(p) = o.get("properties") {
        let po = Obj::of(p, &o.at("properties"))?;
        for (k, v) in po.map {
            request
                .properties
                .push((k.clone(), property(v, &po.at(k))?));
        }
    }
    let at_time = match o.string("at")? {
        Some(s) => Some(time::parse_rfc3339(s).ok_or_else(|| {
            problem(&o.at("at"), format!("\"{s}\" is not an RFC 3339 timestamp"))
        })?),
        None => None,
    };
    let response = match o.get("response") {
        Some(r) => Some(response(r, &o.at("response"))?),
        None => None,
    };
    let expect = match o.get("expect") {
        Some(e) => expect::parse(e, &o.at("expect"))?,
        None => return Err(problem(&o.at("expect"), "is required (at least a status)")),
    };
    Ok(Exchange {
        name: o.string("name")?.unwrap_or("").to_string(),
        entry: at.to_string(),
        at: at_time,
        worker: o.u64("worker")?.map(|w| w as usize),
        request,
        recorded_status: match &response {
            Some(Upstream::Respond(r) | Upstream::Slow(_, r)) => expect.status.or(Some(r.status)),
            _ => expect.status,
        },
        recorded_by_gateway: expect
            .backend
            .as_ref()
            .is_some_and(|b| b.called == Some(false)),
        response,
        expect,
        skip: None,
        timed: o.bool("timed")?.unwrap_or(false),
    })
}

fn request(v: &Value, at: &str) -> Result<StreamInput, Problem> {
    let o = Obj::of(v, at)?;
    o.only(REQUEST)?;
    let path = o
        .string("path")?
        .ok_or_else(|| problem(&o.at("path"), "is required"))?;
    if !path.starts_with('/') {
        return Err(problem(
            &o.at("path"),
            format!("\"{path}\" must start with / (the request target, with its query)"),
        ));
    }
    let method = o.string("method")?.unwrap_or("GET");
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(problem(
            &o.at("method"),
            format!("\"{method}\" is not a method"),
        ));
    }
    let mut input = StreamInput::new(method, path);
    input.method = method.to_ascii_uppercase();
    if let Some(a) = o.string("authority")? {
        input.authority = a.to_string();
    }
    if let Some(s) = o.string("scheme")? {
        input.scheme = s.to_string();
    }
    input.headers = o.headers("headers")?;
    if let Some((_, host)) = input
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        if o.string("authority")?.is_none() {
            input.authority = host.clone();
        }
    }
    let body = o.body("body", "bodyBase64")?;
    let chunks = o.strings("chunks")?;
    match (body, chunks.is_empty()) {
        (Some(_), false) => {
            return Err(problem(at, "give either a body or \"chunks\", not both"));
        }
        (Some(b), true) => input.body = vec![b],
        (None, false) => input.body = chunks.into_iter().map(String::into_bytes).collect(),
        (None, true) => {}
    }
    input.trailers = o.headers("trailers")?;
    Ok(input)
}

fn response(v: &Value, at: &str) -> Result<Upstream, Problem> {
    let o = Obj::of(v, at)?;
    o.only(RESPONSE)?;
    if o.bool("reset")? == Some(true) {
        if o.map.len() > 1 {
            return Err(problem(at, "a reset response has nothing else"));
        }
        return Ok(Upstream::Reset);
    }
    let r = BackendResponse {
        status: o.status("status")?.unwrap_or(200),
        headers: o.headers("headers")?,
        body: o.body("body", "bodyBase64")?.unwrap_or_default(),
        trailers: o.headers("trailers")?,
    };
    Ok(match o.u64("delayMs")? {
        Some(ms) if ms > 0 => Upstream::Slow(std::time::Duration::from_millis(ms), r),
        _ => Upstream::Respond(r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Suite, InputError> {
        parse(Path::new("f.json"), text)
    }

    #[test]
    fn a_minimal_fixture_loads_with_defaults() {
        let s = parse_str(
            r#"{"config": {"apis": []}, "exchanges": [
                {"request": {"path": "/a"}, "expect": {"status": 404}}]}"#,
        )
        .unwrap();
        let ex = &s.exchanges[0];
        assert_eq!(ex.request.method, "GET");
        assert_eq!(ex.request.source, "127.0.0.1:40000");
        assert_eq!(ex.expect.status, Some(404));
        assert_eq!(s.workers, 1);
    }

    #[test]
    fn errors_name_the_file_and_the_json_path() {
        let e = parse_str(
            r#"{"exchanges": [{"request": {"path": "/a"}, "expect": {"status": 200}},
                              {"request": {"path": "a"}, "expect": {"status": 200}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.file, "f.json");
        assert_eq!(e.at, "exchanges[1].request.path");
    }

    #[test]
    fn malformed_json_names_the_line() {
        let e = parse_str("{\n \"exchanges\": [,]\n}").unwrap_err();
        assert!(e.at.starts_with("line 2"), "{e}");
    }

    #[test]
    fn a_timed_exchange_is_not_reproduced_by_a_live_gateway() {
        let s = parse_str(
            r#"{"config": {"apis": []}, "exchanges": [
                {"request": {"path": "/a"}, "expect": {"status": 404}},
                {"timed": true, "request": {"path": "/a"}, "expect": {"status": 404}}]}"#,
        )
        .unwrap();
        assert!(s.exchanges[0].live_reproducible().is_ok());
        let why = s.exchanges[1].live_reproducible().unwrap_err();
        assert!(why.contains("virtual clock"), "{why}");
    }

    #[test]
    fn an_exchange_chooses_when_its_call_outs_are_answered() {
        let s = parse_str(
            r#"{"config": {}, "exchanges": [
                {"request": {"path": "/a"}, "expect": {"status": 200}},
                {"callTiming": "afterBody", "request": {"path": "/a"}, "expect": {"status": 200}},
                {"callTiming": "never", "request": {"path": "/a"}, "expect": {"status": 200}},
                {"callTiming": {"delayed": 2}, "request": {"path": "/a"}, "expect": {"status": 200}}]}"#,
        )
        .unwrap();
        let timings: Vec<CallTiming> = s.exchanges.iter().map(|e| e.request.call_timing).collect();
        assert_eq!(
            timings,
            vec![
                CallTiming::Immediate,
                CallTiming::AfterBody,
                CallTiming::Never,
                CallTiming::Delayed(2)
            ]
        );
    }

    #[test]
    fn an_unknown_call_timing_is_refused_where_it_is() {
        let e = parse_str(
            r#"{"config": {}, "exchanges": [
                {"callTiming": "later", "request": {"path": "/a"}, "expect": {"status": 200}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.at, "exchanges[0].callTiming");
        assert!(e.to_string().contains("afterBody"), "{e}");
    }

    #[test]
    fn clusters_default_to_those_the_config_names() {
        let c =
            clusters_of(br#"{"apis": [{"cluster": "a"}, {"endpoint": "http://b.internal:81/x"}]}"#);
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            vec!["a", "b.internal:81"]
        );
    }
}
