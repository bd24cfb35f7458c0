//! The configuration parser, structure-aware: the input is a list of edits to one of the valid
//! registries the fixtures carry (replace a value, remove or insert a field, duplicate an array
//! element, change a type, write a policy's configuration as Apiman's JSON string), now and then
//! followed by raw byte edits of the text. The result is loaded, from memory and in pieces of a
//! few bytes (the two must agree); a registry that loads then answers a few requests, and so does
//! its registry image as the other VMs adopt it (the answers must be the same). Loading refuses
//! or accepts, and every request gets an answer: never a panic, never an allocation over the
//! bound.
#![no_main]

use std::rc::Rc;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tollgate_core::exchange::{Exchange, Step};
use tollgate_core::host::MemoryHost;
use tollgate_core::http::HeaderMap;
use tollgate_core::policy::Body;
use tollgate_core::registry::image;
use tollgate_fuzz::{Reader, FIELDS, VALUES};

/// The valid registries edits start from: every fixture's, and one using every policy in
/// Apiman's form with trusted proxies.
fn bases() -> &'static [Value] {
    static BASES: OnceLock<Vec<Value>> = OnceLock::new();
    BASES.get_or_init(|| {
        let fixtures = [
            include_str!("../../fixtures/api-key.json"),
            include_str!("../../fixtures/cors.json"),
            include_str!("../../fixtures/gateway-errors.json"),
            include_str!("../../fixtures/header-allow-deny.json"),
            include_str!("../../fixtures/http-security.json"),
            include_str!("../../fixtures/ignored-resources.json"),
            include_str!("../../fixtures/ip-allowlist.json"),
            include_str!("../../fixtures/ip-blocklist.json"),
            include_str!("../../fixtures/key-stripping.json"),
            include_str!("../../fixtures/routing.json"),
            include_str!("../../fixtures/simple-header.json"),
        ];
        let mut bases: Vec<Value> = fixtures
            .iter()
            .filter_map(|text| serde_json::from_str::<Value>(text).ok())
            .filter_map(|fixture| fixture.get("config").cloned())
            .collect();
        bases.push(serde_json::from_str(EVERYTHING).expect("the base registry is JSON"));
        bases
    })
}

const EVERYTHING: &str = r#"{"gateway": {"trustedProxies": ["10.0.0.0/8"], "clientAddressHeader": "x-tollgate-client-address"},
  "apis": [{"organizationId": "o", "apiId": "a", "version": "1", "publicAPI": true, "endpoint": "http://h:1/p/",
    "apiPolicies": [
      {"policy": "cors", "config": {"allowOrigin": ["https://*.example.org", "https://a.test"], "allowMethods": ["GET"], "allowHeaders": ["x-a"], "maxAge": 5}},
      {"policyImpl": "class:io.apiman.gateway.engine.policies.IPBlacklistPolicy", "policyJsonConfig": "{\"ipList\":[\"10.0.0.1-10.0.0.9\",\"2001:db8::/32\"],\"httpHeader\":\"X-Forwarded-For\"}"},
      {"policyImpl": "class:io.apiman.gateway.engine.policies.IgnoredResourcesPolicy", "policyJsonConfig": "{\"rules\":[{\"verb\":\"*\",\"pathPattern\":\"/x.*\"}]}"},
      {"policy": "header-allow-deny", "config": {"entries": [{"headerName": "x-t", "allowIfHeaderMissing": true, "allowIfNoRulesMatch": true, "rules": [{"headerValueRegex": "b.*"}]}]}},
      {"policy": "simple-header", "config": {"addHeaders": [{"headerName": "x-c", "headerValue": "User-Agent", "valueType": "Header", "applyTo": "Both"}],
         "stripHeaders": [{"stripType": "Value", "with": "Regex", "pattern": ".*secret.*", "applyTo": "Both"}]}},
      {"policy": "http-security", "config": {"frameOptions": "DENY", "hsts": {"enabled": true, "maxAge": 5}}},
      {"policy": "api-key", "config": {}}]},
    {"organizationId": "o", "apiId": "x", "version": "1", "endpoint": "https://h/x", "endpointContentType": "xml",
     "endpointProperties": {"authorization.type": "basic", "basic-auth.username": "u", "basic-auth.password": "p"}}],
  "plans": [{"planId": "Gold", "policies": [{"policy": "ip-allowlist", "config": {"ipList": ["127.0.0.0/8"], "responseCode": 403}}]}],
  "clients": [{"organizationId": "o", "clientId": "c", "version": "1", "apiKey": "k",
    "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "policies": []},
                  {"apiOrgId": "o", "apiId": "x", "apiVersion": "1", "plan": "Gold"}]}]}"#;

/// Every node of the tree, as a path of keys and indexes.
fn paths(v: &Value, here: &mut Vec<Step2>, out: &mut Vec<Vec<Step2>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(Step2::Key(k.clone()));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(Step2::Index(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum Step2 {
    Key(String),
    Index(usize),
}

fn at<'v>(v: &'v mut Value, path: &[Step2]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step2::Key(k) => v.get_mut(k.as_str()),
        Step2::Index(i) => v.get_mut(*i),
    })
}

fn value(r: &mut Reader) -> Value {
    match r.below(8) {
        0 => Value::from(r.below(70_000) as i64 - 2),
        1 => Value::Bool(r.bool()),
        2 => Value::Null,
        3 => Value::Array(vec![Value::from(r.pick(VALUES))]),
        4 => Value::Object(Map::new()),
        5 => Value::from(r.text(40)),
        _ => Value::from(r.pick(VALUES)),
    }
}

fn edit(root: &mut Value, r: &mut Reader) {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    let path = all[r.below(all.len())].clone();
    let op = r.below(8);
    // Some edits act on the parent (removing or duplicating this node).
    if matches!(op, 1 | 3) && !path.is_empty() {
        let (last, parent_path) = path.split_last().expect("not empty");
        let Some(parent) = at(root, parent_path) else {
            return;
        };
        match (op, last, parent) {
            (1, Step2::Key(k), Value::Object(m)) => {
                m.remove(k);
            }
            (1, Step2::Index(i), Value::Array(a)) => {
                a.remove(*i);
            }
            (3, Step2::Index(i), Value::Array(a)) => {
                let copy = a[*i].clone();
                a.push(copy);
            }
            (3, Step2::Key(k), Value::Object(m)) => {
                let copy = m.get(k).cloned().unwrap_or(Value::Null);
                m.insert(format!("{k}s"), copy);
            }
            _ => {}
        }
        return;
    }
    let Some(node) = at(root, &path) else {
        return;
    };
    match op {
        // Insert a known field.
        2 => {
            if let Value::Object(m) = node {
                let v = value(r);
                m.insert(r.pick(FIELDS).to_string(), v);
            }
        }
        // Change a type: a number becomes a string, a string a number, an object an array.
        4 => {
            *node = match node.take() {
                Value::Number(n) => Value::from(n.to_string()),
                Value::String(s) => s
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or(Value::from(s.len())),
                Value::Object(m) => Value::Array(vec![Value::Object(m)]),
                Value::Bool(b) => Value::from(b.to_string()),
                other => other,
            };
        }
        // A policy configuration written as Apiman writes it: a JSON string.
        5 => {
            if let Value::Object(m) = node {
                if let Some(config) = m.remove("config") {
                    m.insert("policyJsonConfig".into(), Value::from(config.to_string()));
                }
            }
        }
        // Text spliced into a string.
        6 => {
            if let Value::String(s) = node {
                let at = r.below(s.len() + 1);
                if s.is_char_boundary(at) {
                    s.insert_str(at, &r.text(12));
                }
            }
        }
        _ => *node = value(r),
    }
}

fn registry_text(data: &[u8]) -> Vec<u8> {
    let mut r = Reader::new(data);
    let bases = bases();
    let mut root = bases[r.below(bases.len())].clone();
    let edits = 1 + r.below(6);
    for _ in 0..edits {
        if r.is_empty() {
            break;
        }
        edit(&mut root, &mut r);
    }
    let mut text = serde_json::to_vec(&root).unwrap_or_default();
    // Now and then a few raw byte edits: the document's syntax, not only its contents.
    if r.below(4) == 0 {
        for _ in 0..1 + r.below(3) {
            let i = r.below(text.len() + 1);
            match r.below(3) {
                0 => text.insert(i, r.byte()),
                1 if i < text.len() => {
                    text.remove(i);
                }
                _ if i < text.len() => text[i] = r.byte(),
                _ => {}
            }
        }
    }
    text
}

fn env(name: &str) -> Option<String> {
    (name == "HOME").then(|| "/home/\"gw\"".to_string())
}

fn requests() -> Vec<(HeaderMap, &'static str)> {
    let h = |pairs: &[(&str, &str)]| {
        HeaderMap::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    vec![
        (
            h(&[
                (":method", "GET"),
                (":path", "/o/a/1/x?apikey=k&b=1"),
                ("origin", "https://q.example.org"),
            ]),
            "10.0.0.5:1",
        ),
        (
            h(&[
                (":method", "OPTIONS"),
                (":path", "/o/x/1/y"),
                ("origin", "https://a.test"),
                ("access-control-request-method", "GET"),
            ]),
            "127.0.0.1:2",
        ),
        (
            h(&[
                (":method", "POST"),
                (":path", "/o/x/1/internal;a=1/m"),
                ("x-api-key", "k"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-t", "b"),
            ]),
            "[::ffff:10.0.0.3]:9",
        ),
    ]
}

/// Hands a document over a few bytes at a time, as the host's pieces do.
struct Pieces<'a>(&'a [u8], usize);

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// What the registry answers to `requests()`, step by step, at a fixed time.
fn answers(registry: &Rc<tollgate_core::registry::Registry>) -> Vec<String> {
    let mut out = Vec::new();
    for (headers, peer) in requests() {
        let mut host = MemoryHost::with_downstream(peer);
        host.now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut exchange = Exchange::new(registry.clone());
        let step = exchange.on_request_headers(headers, &mut host);
        if let Step::Reply(reply) = &step {
            assert!(
                (100..600).contains(&reply.status),
                "status {}",
                reply.status
            );
            out.push(format!("{step:?}"));
            continue;
        }
        out.push(format!("{step:?}"));
        let step = exchange.on_request_body(Body::new(b"{}".to_vec()), &mut host);
        out.push(format!("{step:?}"));
        let response = HeaderMap::from_pairs(vec![(":status".into(), "200".into())]);
        let step = exchange.on_response_headers(response, &mut host);
        out.push(format!("{step:?}"));
        let step = exchange.on_response_body(Body::new(b"ok".to_vec()), &mut host);
        out.push(format!("{step:?}"));
        exchange.on_complete(&mut host);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = registry_text(data);
    let loaded = tollgate_core::load(&text, &env);
    // Read in pieces, the document loads (or is refused) exactly as from memory.
    let piece = 1 + data.first().map_or(0, |&b| usize::from(b % 13));
    let doc = tollgate_core::config::ReadDocument(|| Pieces(&text, piece));
    let streamed = tollgate_core::load_document(&doc, &env);
    match (&loaded, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(
            (a.registry.client_count(), &a.warnings),
            (b.registry.client_count(), &b.warnings)
        ),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("from memory {:?}, in pieces {:?}", a.is_ok(), b.is_ok()),
    }
    let (Ok(_), Ok(mut streamed)) = (loaded, streamed) else {
        return;
    };
    // The registry's image, as the other VMs adopt it, answers exactly as the loaded registry.
    let recipe = streamed
        .registry
        .take_recipe()
        .expect("a document load keeps its recipe");
    let mut image = Vec::new();
    image::write(
        &streamed.registry,
        &recipe,
        &image::EnvRecord::default(),
        &mut |p| {
            image.push(p.to_vec());
            true
        },
    )
    .expect("a loaded registry writes its image");
    let mut pieces = image.into_iter();
    let adopted = image::read(&env, &mut || pieces.next()).expect("an image reads back");
    let registry = Rc::new(streamed.registry);
    let expected = answers(&registry);
    assert_eq!(answers(&Rc::new(adopted)), expected);
});
