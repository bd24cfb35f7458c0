//! End-to-end: the JWT policy in the real Envoy 1.40 with the real `tollgate.wasm`, its key set
//! served by a real HTTP server on 127.0.0.1.
//!
//! - the JWKS is fetched once and shared by both worker VMs; its key is rotated while Envoy
//!   runs and a token with the new `kid` is accepted without a restart;
//! - a slow JWKS server and a POST with a body: the backend is not reached before the token has
//!   been verified;
//! - the bad-token table: each bad token gets its documented answer, and an unknown `kid`
//!   refetches the set once, then 401.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jwt_simple::algorithms::{HS256Key, MACLike, RS256KeyPair, RS256PublicKey, RSAKeyPairLike};
use jwt_simple::claims::{Claims, JWTClaims};
use serde_json::{json, Value};
use tollgate_harness::live::{self, Answer, Cluster, Envoy, ScriptedServer};

const RSA_A_KEY: &str = include_str!("../../fixtures/keys/rsa-a.key");
const RSA_A_PUB: &str = include_str!("../../fixtures/keys/rsa-a.pub.pem");
const RSA_B_KEY: &str = include_str!("../../fixtures/keys/rsa-b.key");
const RSA_B_PUB: &str = include_str!("../../fixtures/keys/rsa-b.pub.pem");

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(payload: Value) -> JWTClaims<Value> {
    let mut c = Claims::with_custom_claims(payload, jwt_simple::prelude::Duration::from_secs(0));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    c
}

fn sign(key_pem: &str, kid: &str, payload: Value) -> String {
    RS256KeyPair::from_pem(key_pem)
        .unwrap()
        .with_key_id(kid)
        .sign(claims(payload))
        .unwrap()
}

fn good(sub: &str) -> Value {
    json!({"sub": sub, "iss": "https://idp.test", "aud": "orders", "exp": now() + 3600})
}

fn jwk(pem: &str, kid: &str) -> Value {
    let c = RS256PublicKey::from_pem(pem).unwrap().to_components();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "n": B64URL.encode(c.n), "e": B64URL.encode(c.e)})
}

struct World {
    envoy: Envoy,
    jwks: ScriptedServer,
    backend: ScriptedServer,
    /// What the JWKS server serves.
    keys: Arc<Mutex<Value>>,
}

/// Envoy with two worker VMs and a public API guarded by a JWT policy whose key set comes from
/// the JWKS server (answering after `delay`).
fn world(delay: Duration, extra: Value) -> Option<World> {
    if !live::e2e_available() {
        return None;
    }
    let keys = Arc::new(Mutex::new(json!({"keys": [jwk(RSA_A_PUB, "a")]})));
    let served = keys.clone();
    let jwks = ScriptedServer::start(move |_| {
        let body = served.lock().unwrap().to_string();
        Answer::new(200)
            .header("content-type", "application/json")
            .body(body.as_bytes())
            .after(delay)
    })
    .unwrap();
    let backend = ScriptedServer::start(|r| Answer::new(200).body(&r.body)).unwrap();
    let mut policy = json!({
        "signingKeyString": format!("http://127.0.0.1:{}/jwks", jwks.port), "jwksCluster": "idp",
        "requireTransportSecurity": false, "issuer": "https://idp.test", "audiences": ["orders"],
        "jwksMinRefetchSeconds": 2, "jwksTimeoutMs": 3000,
        "forwardAuthInfo": [{"header": "X-User", "field": "sub"}]});
    if let (Some(p), Some(e)) = (policy.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    let config = json!({"apis": [{"organizationId": "t", "apiId": "a", "version": "1", "publicAPI": true,
        "endpoint": "http://127.0.0.1/", "cluster": "backend",
        "apiPolicies": [{"policy": "jwt", "config": policy}]}]});
    let yaml = live::gateway_yaml(
        &config.to_string(),
        &[
            Cluster::plain("backend", backend.port),
            Cluster::plain("idp", jwks.port),
        ],
    )
    .unwrap();
    let envoy = Envoy::start(&yaml, 2).unwrap();
    Some(World {
        envoy,
        jwks,
        backend,
        keys,
    })
}

fn get(w: &World, token: &str) -> (u16, String, Option<String>) {
    let r = w
        .envoy
        .get("/t/a/1/x", &[("authorization", &format!("Bearer {token}"))])
        .unwrap();
    (
        r.status,
        r.header("x-policy-failure-code").unwrap_or("").to_string(),
        r.header("www-authenticate").map(str::to_string),
    )
}

#[test]
fn a_rotated_jwks_key_is_accepted_without_restarting_envoy() {
    let Some(w) = world(Duration::ZERO, json!({})) else {
        return;
    };
    let token_a = sign(RSA_A_KEY, "a", good("alice"));
    for _ in 0..8 {
        let (status, code, _) = get(&w, &token_a);
        assert_eq!((status, code.as_str()), (200, ""), "{}", w.envoy.log());
    }
    assert_eq!(
        w.jwks.received().len(),
        1,
        "both worker VMs use the one fetched key set"
    );
    assert_eq!(w.backend.received()[0].header("x-user"), Some("alice"));

    // The identity provider rotates to key b.
    *w.keys.lock().unwrap() = json!({"keys": [jwk(RSA_B_PUB, "b")]});
    std::thread::sleep(Duration::from_millis(2100));
    let token_b = sign(RSA_B_KEY, "b", good("bob"));
    let (status, _, _) = get(&w, &token_b);
    assert_eq!(status, 200, "{}", w.envoy.log());
    assert_eq!(w.jwks.received().len(), 2, "one refetch for the new kid");
    for _ in 0..4 {
        assert_eq!(get(&w, &token_b).0, 200);
    }
    assert_eq!(w.jwks.received().len(), 2);
    // Key a left the set: its token is no longer accepted, even where it was cached (every
    // worker takes up the new set within a second).
    std::thread::sleep(Duration::from_millis(1100));
    let (status, code, _) = get(&w, &token_a);
    assert_eq!((status, code.as_str()), (401, "12008"));
}

#[test]
fn a_post_is_held_until_the_slow_jwks_server_answers() {
    let delay = Duration::from_millis(800);
    let Some(w) = world(delay, json!({})) else {
        return;
    };
    let token = sign(RSA_A_KEY, "a", good("alice"));
    let sent = Instant::now();
    let mut s = TcpStream::connect(w.envoy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let parts: [&[u8]; 2] = [b"first half,", b" second half"];
    let head = format!(
        "POST /t/a/1/upload HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        parts[0].len() + parts[1].len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(parts[0]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(parts[1]).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text}\n{}",
        w.envoy.log()
    );
    assert!(text.ends_with("first half, second half"), "{text}");
    let answered = w.jwks.answered()[0];
    let reached = w.backend.received();
    assert_eq!(reached.len(), 1);
    assert!(
        reached[0].at >= answered,
        "the backend was reached {:?} after sending, before the key set came ({:?})",
        reached[0].at - sent,
        answered - sent
    );
    assert!(answered - sent >= delay);
}

#[test]
fn every_bad_token_gets_its_documented_answer() {
    let Some(w) = world(
        Duration::ZERO,
        json!({"algorithms": ["RS256", "HS256"], "jwksMinRefetchSeconds": 5}),
    ) else {
        return;
    };
    // A good token first: the key set is fetched.
    assert_eq!(get(&w, &sign(RSA_A_KEY, "a", good("alice"))).0, 200);
    let fetched = std::time::Instant::now();
    let t = now();
    let header = |h: Value| B64URL.encode(h.to_string());
    let body = |c: Value| B64URL.encode(c.to_string());
    let hs_with_public_key = HS256Key::from_bytes(RSA_A_PUB.as_bytes())
        .with_key_id("a")
        .authenticate(claims(good("mallory")))
        .unwrap();
    let table: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                header(json!({"alg": "none", "kid": "a"})),
                body(good("mallory"))
            ),
            401,
            "12011",
        ),
        (
            "alg confusion (HS256 keyed with the RSA public key)",
            hs_with_public_key,
            401,
            "12011",
        ),
        (
            "expired",
            sign(
                RSA_A_KEY,
                "a",
                json!({"sub": "x", "iss": "https://idp.test", "aud": "orders", "exp": t - 60}),
            ),
            401,
            "12006",
        ),
        (
            "not yet valid",
            sign(
                RSA_A_KEY,
                "a",
                json!({"sub": "x", "iss": "https://idp.test", "aud": "orders", "nbf": t + 3600}),
            ),
            401,
            "12010",
        ),
        (
            "wrong issuer",
            sign(
                RSA_A_KEY,
                "a",
                json!({"sub": "x", "iss": "https://evil.test", "aud": "orders"}),
            ),
            401,
            "12009",
        ),
        (
            "wrong audience",
            sign(
                RSA_A_KEY,
                "a",
                json!({"sub": "x", "iss": "https://idp.test", "aud": "billing"}),
            ),
            401,
            "12009",
        ),
        (
            "bad signature (key b posing as a)",
            sign(RSA_B_KEY, "a", good("mallory")),
            401,
            "12008",
        ),
        (
            "malformed base64",
            "e30=.e30.AAAA".to_string(),
            401,
            "12007",
        ),
        (
            "oversized (20 KB)",
            sign(
                RSA_A_KEY,
                "a",
                json!({"sub": "x", "pad": "p".repeat(20_000)}),
            ),
            401,
            "12007",
        ),
    ];
    for (what, token, status, code) in &table {
        let (got_status, got_code, challenge) = get(&w, token);
        assert_eq!(
            (got_status, got_code.as_str()),
            (*status, *code),
            "{what}\n{}",
            w.envoy.log()
        );
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
    }
    assert!(
        w.backend.received().len() == 1,
        "no bad token reached the backend"
    );
    assert_eq!(w.jwks.received().len(), 1, "no bad token made a fetch");

    // An unknown kid: one refetch once the minimum interval (5 s, whole seconds on Envoy's
    // clock) has passed since the first fetch, then 401.
    std::thread::sleep(Duration::from_millis(6100).saturating_sub(fetched.elapsed()));
    let unknown = sign(RSA_B_KEY, "zzz", good("mallory"));
    assert_eq!(get(&w, &unknown).1, "12008");
    assert_eq!(
        w.jwks.received().len(),
        2,
        "one refetch for the unknown kid"
    );
    assert_eq!(get(&w, &unknown).1, "12008");
    assert_eq!(get(&w, &sign(RSA_B_KEY, "yyy", good("m"))).1, "12008");
    assert_eq!(
        w.jwks.received().len(),
        2,
        "no more refetches within the interval"
    );
}
