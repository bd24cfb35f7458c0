//! Configuration both token policies read the same way: accepted algorithms, the key set's
//! fetching, the token cache, forwarded claims; and their documentation.

use std::rc::Rc;
use std::time::Duration;

use super::keys::{base64_any, parse_jwks, parse_pem, Alg, KeyEntry, KeyMaterial, KeySet};
use super::remote::Remote;
use super::KeySource;
use crate::json::{Fields, Problems};
use crate::policy::{BuildContext, FieldDoc};

pub const F_ALGORITHMS: FieldDoc = FieldDoc {
    name: "algorithms",
    aliases: &[],
    ty: "[string]",
    default: "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
    apiman: false,
    meaning: "the `alg` values accepted (others fail with the unsupported-JWT code); HS256/HS384/HS512 only when listed. `none` is always refused",
};
pub const F_AUDIENCES: FieldDoc = FieldDoc {
    name: "audiences",
    aliases: &[],
    ty: "[string]",
    default: "",
    apiman: false,
    meaning: "the token's `aud` must name one of these (unset: not checked)",
};
pub const F_CLUSTER: FieldDoc = FieldDoc {
    name: "jwksCluster",
    aliases: &[],
    ty: "string",
    default: "host:port of the URL",
    apiman: false,
    meaning: "the Envoy cluster the key set is fetched through (tollgate-gen creates it)",
};
pub const F_TIMEOUT: FieldDoc = FieldDoc {
    name: "jwksTimeoutMs",
    aliases: &[],
    ty: "integer",
    default: "2000",
    apiman: false,
    meaning: "how long a key-set fetch may take",
};
pub const F_REFRESH: FieldDoc = FieldDoc {
    name: "jwksRefreshSeconds",
    aliases: &[],
    ty: "integer",
    default: "600",
    apiman: false,
    meaning: "a fetched key set is fetched again after this long",
};
pub const F_REFETCH: FieldDoc = FieldDoc {
    name: "jwksMinRefetchSeconds",
    aliases: &[],
    ty: "integer",
    default: "15",
    apiman: false,
    meaning:
        "a token naming an unknown `kid` refetches the key set, at most once in this many seconds",
};
pub const F_STALE: FieldDoc = FieldDoc {
    name: "jwksMaxStaleSeconds",
    aliases: &[],
    ty: "integer",
    default: "3600",
    apiman: false,
    meaning: "when refreshing fails, the old key set is used for this long past its refresh time; then requests fail with 503",
};
pub const F_CACHE_SIZE: FieldDoc = FieldDoc {
    name: "tokenCacheSize",
    aliases: &[],
    ty: "integer",
    default: "10000",
    apiman: false,
    meaning: "verified tokens remembered per worker (by SHA-256; 0: none), so a repeated token skips the signature check",
};
pub const F_CACHE_TTL: FieldDoc = FieldDoc {
    name: "tokenCacheSeconds",
    aliases: &[],
    ty: "integer",
    default: "600",
    apiman: false,
    meaning: "the longest a verified token is remembered (never past its `exp`)",
};
pub const F_SKEW_DOC: &str = "seconds of clock skew allowed when checking `exp` and `nbf`";

/// A non-negative integer field within `max`.
pub fn seconds(f: &mut Fields, name: &str, default: u64, max: u64, problems: &mut Problems) -> u64 {
    match f.integer(&[name], problems) {
        None => default,
        Some(v) if v < 0 || v as u64 > max => {
            problems.error(&f.field_path(name), format!("must be 0 to {max}"));
            default
        }
        Some(v) => v as u64,
    }
}

pub fn algorithms(f: &mut Fields, problems: &mut Problems) -> Vec<Alg> {
    if !f.has("algorithms") {
        return Alg::DEFAULT.to_vec();
    }
    let mut out = Vec::new();
    for (path, name) in f.strings(&["algorithms"], problems) {
        match Alg::parse(name.trim()) {
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => {}
            None if name.trim().eq_ignore_ascii_case("none") => {
                problems.error(&path, "`none` (unsigned tokens) cannot be accepted")
            }
            None => problems.error(
                &path,
                format!(
                    "\"{name}\" is not an algorithm tollgate verifies ({})",
                    Alg::ALL.map(Alg::name).join(", ")
                ),
            ),
        }
    }
    if out.is_empty() {
        problems.error(&f.field_path("algorithms"), "accepts no algorithm");
    }
    out
}

pub fn header_name(name: &str) -> Option<String> {
    let n = name.trim().to_ascii_lowercase();
    (!n.is_empty() && n.bytes().all(crate::http::is_token_byte)).then_some(n)
}

/// The token cache settings: (entries, seconds).
pub fn cache(f: &mut Fields, problems: &mut Problems) -> (usize, u64) {
    let size = seconds(f, "tokenCacheSize", 10_000, 1_000_000, problems) as usize;
    let ttl = seconds(f, "tokenCacheSeconds", 600, 86_400, problems);
    (size, ttl)
}

/// A key set fetched from `url`, with the fetch settings read from `f`.
pub fn remote(
    cx: &mut BuildContext,
    f: &mut Fields,
    url: &str,
    url_field: &str,
    label: &'static str,
    problems: &mut Problems,
) -> Option<KeySource> {
    let cluster = f.string(&["jwksCluster"], problems);
    let timeout_ms = seconds(f, "jwksTimeoutMs", 2000, 60_000, problems).max(1);
    let refresh = seconds(f, "jwksRefreshSeconds", 600, 7 * 86_400, problems).max(1);
    let min_refetch = seconds(f, "jwksMinRefetchSeconds", 15, 86_400, problems);
    let max_stale = seconds(f, "jwksMaxStaleSeconds", 3600, 30 * 86_400, problems);
    match cx.call_target(url, cluster.as_deref()) {
        Ok(target) => Some(KeySource::Remote(Box::new(Remote::new(
            target,
            Duration::from_millis(timeout_ms),
            refresh,
            min_refetch,
            max_stale,
            label,
        )))),
        Err(e) => {
            problems.error(&f.field_path(url_field), e);
            None
        }
    }
}

/// Marks the fetch settings as read where there is nothing to fetch (an inline key), with a
/// warning if they were given.
pub fn no_remote(f: &mut Fields, problems: &mut Problems) {
    for name in [
        "jwksCluster",
        "jwksTimeoutMs",
        "jwksRefreshSeconds",
        "jwksMinRefetchSeconds",
        "jwksMaxStaleSeconds",
    ] {
        if f.has(name) {
            problems.warning(
                &f.field_path(name),
                "ignored: the key is not fetched from a URL",
            );
        }
        f.ignore(&[name]);
    }
}

pub fn is_url(s: &str) -> bool {
    let l = s.trim().to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// Keys written into the configuration: a JWK or JWKS (JSON), PEM public keys or certificates,
/// base64 DER, or (when an HS algorithm is accepted and the text is no public key) the
/// base64-encoded HMAC secret, as Apiman documents `signingKeyString`.
pub fn inline_keys(
    text: &str,
    algorithms: &[Alg],
    allow_secret: bool,
    path: &str,
    problems: &mut Problems,
) -> Option<Rc<KeySet>> {
    let text = text.trim();
    let hmac_ok = allow_secret && algorithms.iter().any(|a| a.is_hmac());
    let entries: Vec<KeyEntry> = if text.starts_with('{') {
        let json: serde_json::Value = match serde_json::from_str(text) {
            Ok(j) => j,
            Err(e) => {
                problems.error(path, format!("is not valid JSON: {e}"));
                return None;
            }
        };
        match parse_jwks(&json, allow_secret) {
            Ok((set, skipped)) => {
                for s in skipped {
                    problems.warning(path, format!("{s}: skipped"));
                }
                set.entries
            }
            Err(e) => {
                problems.error(path, e);
                return None;
            }
        }
    } else if text.contains("-----BEGIN") {
        match parse_pem(text) {
            Ok(keys) => keys
                .into_iter()
                .map(|key| KeyEntry {
                    kid: None,
                    alg: None,
                    key,
                })
                .collect(),
            Err(e) => {
                problems.error(path, e);
                return None;
            }
        }
    } else {
        let Some(bytes) = base64_any(text) else {
            problems.error(
                path,
                "is not a URL, a JWK/JWKS, PEM or base64 (a public key, certificate or HMAC secret)",
            );
            return None;
        };
        match KeyMaterial::from_der(&bytes) {
            Ok(key) => vec![KeyEntry {
                kid: None,
                alg: None,
                key,
            }],
            Err(_) if hmac_ok => {
                if bytes.len() < 12 {
                    problems.error(
                        path,
                        "an HMAC secret must be at least 12 bytes (base64-decoded)",
                    );
                    return None;
                }
                if bytes.len() < 32 {
                    problems.warning(
                        path,
                        format!(
                            "an HMAC secret of {} bytes is short; use 32 or more",
                            bytes.len()
                        ),
                    );
                }
                vec![KeyEntry {
                    kid: None,
                    alg: None,
                    key: KeyMaterial::Hmac(bytes),
                }]
            }
            Err(e) => {
                let hint = if allow_secret {
                    "; to use it as an HMAC secret, accept an HS algorithm in `algorithms`"
                } else {
                    ""
                };
                problems.error(
                    path,
                    format!("is not a public key or certificate: {e}{hint}"),
                );
                return None;
            }
        }
    };
    for e in &entries {
        if let KeyMaterial::Rsa(_) = &e.key {
            let d = e.key.describe();
            if d.ends_with("-1024") || d.ends_with("-512") {
                problems.warning(path, format!("{d} is weak; use 2048 bits or more"));
            }
        }
    }
    if !entries
        .iter()
        .any(|e| algorithms.iter().any(|a| e.supports(*a)))
    {
        let kinds: Vec<String> = entries.iter().map(|e| e.key.describe()).collect();
        problems.error(
            path,
            format!(
                "no key ({}) can verify any accepted algorithm ({})",
                kinds.join(", "),
                algorithms
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return None;
    }
    Some(Rc::new(KeySet { entries }))
}
