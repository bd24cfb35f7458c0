//! JWT (Apiman's `jwt-policy`): verifies a bearer token (signature, expiry, required claims)
//! before the backend is reached, forwards claims as headers and sets the request's identity.
//!
//! Keys are inline (PEM, base64 DER, certificate, JWK, JWKS, or a base64 HMAC secret) or a
//! JWKS URL fetched through a call-out and shared by every worker VM (see `jose::remote`).
//! Verified tokens are remembered per worker (see `jose::cache`), so a repeated token costs a
//! hash and a lookup rather than an RSA verification.

use super::jose::config::{self as jc, F_SKEW_DOC};
use super::jose::{
    self, bearer_token, iso_time, seconds, strip_tokens, transport_secure, Derive, Issuer, Outcome,
    Reason, RolesFrom, Verifier, ACCESS_TOKEN,
};
use super::{
    BuildContext, CallResponse, Capabilities, Context, FailureType, FieldDoc, GatewayError, Phase,
    PhaseSet, Policy, PolicyFailure, PolicyKind, Subject, Verdict,
};
use crate::http::Request;
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "jwt",
    name: "JWT",
    apiman_names: &["jwt-policy", "JWTPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Verifies a bearer JWT (from `Authorization: Bearer` or `access_token`) before the backend is reached: signature, expiry, issuer, audience and required claims; forwards claims as headers and sets the identity (subject, claims, roles) for later policies.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "all 401 Authentication with `WWW-Authenticate: Bearer`: 12003 no TLS, 12005 no token, 12006 expired, 12007 malformed (or larger than 16 KiB), 12008 bad signature or unknown key, 12009 claim/issuer/audience mismatch, 12010 not yet valid, 12011 algorithm not accepted (`none`, or HS with a public key); 503 gateway error when no key set can be fetched",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "requireJWT",
            aliases: &["requireJwt"],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "refuse requests without a token (else they pass unauthenticated; a token that is present is always verified)",
        },
        FieldDoc {
            name: "requireSigned",
            aliases: &[],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "accepted for compatibility; unsigned tokens (`alg: none`) are always refused",
        },
        FieldDoc {
            name: "requireTransportSecurity",
            aliases: &[],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "refuse requests that did not come over TLS (`x-forwarded-proto` / `:scheme` as Envoy sets them)",
        },
        FieldDoc {
            name: "stripTokens",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "remove `Authorization` and the `access_token` query parameter before the backend",
        },
        FieldDoc {
            name: "signingKeyString",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the key: PEM or base64 DER public key or certificate, a JWK or JWKS (JSON), a JWKS URL (`http(s)://`), or a base64 HMAC secret (with an HS algorithm in `algorithms`)",
        },
        FieldDoc {
            name: "kid",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "verify with this key of the set only (else the token's `kid` picks it)",
        },
        FieldDoc {
            name: "allowedClockSkew",
            aliases: &[],
            ty: "integer",
            default: "0",
            apiman: true,
            meaning: F_SKEW_DOC,
        },
        FieldDoc {
            name: "requiredClaims",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "claims that must have a value",
        },
        FieldDoc {
            name: "requiredClaims[].claimName",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the claim (a dotted path reaches nested claims)",
        },
        FieldDoc {
            name: "requiredClaims[].claimValue",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "its value, compared as text; a list claim matches when it contains it",
        },
        FieldDoc {
            name: "forwardAuthInfo",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "claims sent to the backend as headers (a client's own header of that name is removed)",
        },
        FieldDoc {
            name: "forwardAuthInfo[].header",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the header",
        },
        FieldDoc {
            name: "forwardAuthInfo[].field",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the claim (dotted paths reach nested claims), or `access_token` for the token itself",
        },
        jc::F_ALGORITHMS,
        FieldDoc {
            name: "issuer",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: false,
            meaning: "the token's `iss` must be this (unset: not checked)",
        },
        jc::F_AUDIENCES,
        FieldDoc {
            name: "rolesClaim",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: false,
            meaning: "the claim holding the user's roles for an Authorization policy: a list, or a space-separated string such as `scope` (e.g. `realm_access.roles`)",
        },
        jc::F_CLUSTER,
        jc::F_TIMEOUT,
        jc::F_REFRESH,
        jc::F_REFETCH,
        jc::F_STALE,
        jc::F_CACHE_SIZE,
        jc::F_CACHE_TTL,
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"requireJWT": true, "requireSigned": true, "requireTransportSecurity": true, "stripTokens": true,
                 "signingKeyString": "https://idp.example.com/.well-known/jwks.json", "kid": "2024-01",
                 "allowedClockSkew": 30,
                 "requiredClaims": [{"claimName": "tenant", "claimValue": "acme"}],
                 "forwardAuthInfo": [{"header": "X-User", "field": "sub"}, {"header": "X-Token", "field": "access_token"}],
                 "algorithms": ["RS256", "ES256"], "issuer": "https://idp.example.com/", "audiences": ["orders-api"],
                 "rolesClaim": "realm_access.roles", "jwksCluster": "idp", "jwksTimeoutMs": 1500,
                 "jwksRefreshSeconds": 600, "jwksMinRefetchSeconds": 15, "jwksMaxStaleSeconds": 3600,
                 "tokenCacheSize": 10000, "tokenCacheSeconds": 600}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: true,
    },
    #[cfg(feature = "jwt")]
    build: |cx, f, problems| build(cx, f, problems).map(|p| Box::new(p) as _),
    #[cfg(not(feature = "jwt"))]
    build: super::without_jwt,
};

pub const NO_TRANSPORT_SECURITY: u32 = 12003;
pub const VERIFICATION_ERROR: u32 = 12004;
pub const NOT_PROVIDED: u32 = 12005;
pub const EXPIRED: u32 = 12006;
pub const MALFORMED: u32 = 12007;
pub const SIGNATURE: u32 = 12008;
pub const CLAIM: u32 = 12009;
pub const PREMATURE: u32 = 12010;
pub const UNSUPPORTED: u32 = 12011;

pub struct Jwt {
    require_jwt: bool,
    require_transport: bool,
    strip: bool,
    verifier: Verifier,
    /// Headers that get the raw token.
    forward_token: Vec<String>,
}

/// `forwardAuthInfo` / `requiredClaims` style lists of `{<a>, <b>}` objects.
pub(crate) fn pairs(
    f: &mut Fields,
    list: &str,
    a: &[&str],
    b: &str,
    problems: &mut Problems,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, item) in f.array(&[list], problems) {
        let Some(mut item) = Fields::of(item, &path, problems) else {
            continue;
        };
        let first = item.string(a, problems);
        let second = item.string(&[b], problems);
        item.finish(problems);
        match (first, second) {
            (Some(x), Some(y)) if !x.trim().is_empty() && !y.trim().is_empty() => {
                out.push((path, x.trim().to_string(), y.trim().to_string()))
            }
            _ => problems.error(&path, format!("needs `{}` and `{b}`", a[0])),
        }
    }
    out
}

/// Forwarded claims: (header, claim) pairs, and the headers that get the raw token.
pub(crate) fn forwards(
    f: &mut Fields,
    header_names: &[&str],
    problems: &mut Problems,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut claims = Vec::new();
    let mut token = Vec::new();
    for (path, header, field) in pairs(f, "forwardAuthInfo", header_names, "field", problems) {
        let Some(header) = jc::header_name(&header) else {
            problems.error(&path, format!("\"{header}\" is not a valid header name"));
            continue;
        };
        if field.eq_ignore_ascii_case(ACCESS_TOKEN) {
            token.push(header);
        } else {
            claims.push((header, field));
        }
    }
    (claims, token)
}

fn build(cx: &mut BuildContext, f: &mut Fields, problems: &mut Problems) -> Option<Jwt> {
    let require_jwt = f
        .bool(&["requireJWT", "requireJwt"], problems)
        .unwrap_or(true);
    if f.bool(&["requireSigned"], problems) == Some(false) {
        problems.warning(
            &f.field_path("requireSigned"),
            "unsigned tokens (`alg: none`) are refused anyway",
        );
    }
    let require_transport = f
        .bool(&["requireTransportSecurity"], problems)
        .unwrap_or(true);
    let strip = f.bool(&["stripTokens"], problems).unwrap_or(false);
    let algorithms = jc::algorithms(f, problems);
    let kid = f
        .string(&["kid"], problems)
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.eq_ignore_ascii_case("null"));
    let skew = jc::seconds(f, "allowedClockSkew", 0, 86_400, problems);
    let required: Vec<(String, String)> =
        pairs(f, "requiredClaims", &["claimName"], "claimValue", problems)
            .into_iter()
            .map(|(_, n, v)| (n, v))
            .collect();
    let (forward, forward_token) = forwards(f, &["header"], problems);
    let issuer = match f
        .string(&["issuer"], problems)
        .map(|s| s.trim().to_string())
    {
        Some(i) if !i.is_empty() => Issuer::Exact(i.trim_end_matches('/').to_string()),
        _ => Issuer::Any,
    };
    let audiences: Vec<String> = f
        .strings(&["audiences"], problems)
        .into_iter()
        .map(|(_, a)| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let roles = f
        .string(&["rolesClaim"], problems)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .map(RolesFrom::Claim);
    let (cache_entries, ttl) = jc::cache(f, problems);
    let key_path = f.field_path("signingKeyString");
    let source = match f.string(&["signingKeyString"], problems) {
        None => {
            problems.error(&key_path, "is required");
            jc::no_remote(f, problems);
            None
        }
        Some(url) if jc::is_url(&url) => {
            jc::remote(cx, f, url.trim(), "signingKeyString", "jwt", problems)
        }
        Some(text) => {
            jc::no_remote(f, problems);
            jc::inline_keys(&text, &algorithms, true, &key_path, problems)
                .map(jose::KeySource::Inline)
        }
    };
    Some(Jwt {
        require_jwt,
        require_transport,
        strip,
        forward_token,
        verifier: Verifier::new(
            algorithms,
            source?,
            kid,
            skew,
            issuer,
            audiences,
            required,
            Derive {
                principal: vec!["sub"],
                roles,
                forward,
            },
            cache_entries,
            ttl,
        ),
    })
}

fn refuse(code: u32, message: impl Into<String>, challenge: &str) -> PolicyFailure {
    let mut f = PolicyFailure::new(FailureType::Authentication, code, message).with_status(401);
    f.headers
        .push(("WWW-Authenticate".to_string(), challenge.to_string()));
    f
}

const INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";

/// jjwt's messages (which Apiman passes on), for what the policy refuses a token for.
pub(crate) fn refusal(reason: &Reason) -> PolicyFailure {
    let millis = |s: u64| s.saturating_mul(1000);
    let (code, message) = match reason {
        Reason::TooLarge => (
            MALFORMED,
            format!("JWT is larger than {} bytes.", jose::MAX_TOKEN_BYTES),
        ),
        Reason::Malformed(m) => (MALFORMED, format!("Malformed JWT: {m}")),
        Reason::Unsigned => (UNSUPPORTED, "Unsigned Claims JWTs are not supported.".to_string()),
        Reason::Algorithm(a) => (
            UNSUPPORTED,
            format!("JWTs signed with {a} are not accepted here."),
        ),
        Reason::UnknownKey(kid) => (
            SIGNATURE,
            format!("JWK was not found with kid: {}", kid.as_deref().unwrap_or("null")),
        ),
        Reason::Signature => (
            SIGNATURE,
            "JWT signature does not match locally computed signature. JWT validity cannot be asserted and should not be trusted.".to_string(),
        ),
        Reason::Expired { exp, now, skew } => (
            EXPIRED,
            format!(
                "JWT expired at {}. Current time: {}, a difference of {} milliseconds.  Allowed clock skew: {} milliseconds.",
                iso_time(*exp),
                iso_time(*now),
                millis(now.saturating_sub(*exp)),
                millis(*skew)
            ),
        ),
        Reason::Premature { nbf, now, skew } => (
            PREMATURE,
            format!(
                "JWT must not be accepted before {}. Current time: {}, a difference of {} milliseconds.  Allowed clock skew: {} milliseconds.",
                iso_time(*nbf),
                iso_time(*now),
                millis(nbf.saturating_sub(*now)),
                millis(*skew)
            ),
        ),
        Reason::Issuer { expected, found } => (CLAIM, expected_claim("iss", expected, found)),
        Reason::Audience { expected, found } => (
            CLAIM,
            expected_claim("aud", &format!("one of {}", expected.join(", ")), found),
        ),
        Reason::Claim {
            name,
            expected,
            found,
        } => (CLAIM, expected_claim(name, expected, found)),
    };
    refuse(code, message, INVALID_TOKEN)
}

fn expected_claim(name: &str, expected: &str, found: &Option<String>) -> String {
    match found {
        Some(v) => format!("Expected {name} claim to be: {expected}, but was: {v}."),
        None => format!(
            "Expected {name} claim to be: {expected}, but was not present in the JWT claims."
        ),
    }
}

impl Jwt {
    /// Verifies and, if the token is good, applies it to the request.
    fn check(
        &self,
        cx: &mut Context,
        request: &mut Request,
        token: &str,
        allow_fetch: bool,
    ) -> Verdict {
        let now = seconds(cx.now());
        match self.verifier.verify(cx.host, now, token, allow_fetch) {
            Outcome::Accepted(v) => {
                for (header, value) in &v.forward {
                    match value {
                        Some(value) => request.headers.set(header, value),
                        None => request.headers.remove(header),
                    }
                }
                for header in &self.forward_token {
                    request.headers.set(header, token);
                }
                let identity = cx.identity_mut();
                identity.principal = v.principal.clone();
                identity.claims = Some(v.claims.clone());
                if v.roles.is_some() {
                    identity.roles = v.roles.clone();
                }
                identity.authenticated_by = Some(KIND.id);
                if self.strip {
                    strip_tokens(cx, &mut request.headers);
                }
                Verdict::Continue
            }
            Outcome::Rejected(reason) => Verdict::Fail(refusal(&reason)),
            Outcome::Fetch(call) => Verdict::CallOut(call),
            Outcome::Unavailable(cluster) => {
                Verdict::Error(GatewayError::CallOutFailed { cluster })
            }
        }
    }
}

impl Policy for Jwt {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        if self.require_transport && !transport_secure(&request.headers) {
            return Verdict::Fail(refuse(
                NO_TRANSPORT_SECURITY,
                "JWT was transmitted without required transport security (TLS, SSL).",
                "Bearer",
            ));
        }
        let Some(token) = bearer_token(request, cx.state.query.as_deref()) else {
            if self.require_jwt {
                return Verdict::Fail(refuse(
                    NOT_PROVIDED,
                    "JWT 'Authorization' header or 'access_token' query parameter must be provided.",
                    "Bearer",
                ));
            }
            return Verdict::Continue;
        };
        self.check(cx, request, &token, true)
    }

    fn on_call_response(
        &self,
        cx: &mut Context,
        answer: &CallResponse,
        subject: Subject,
    ) -> Verdict {
        let now = seconds(cx.now());
        self.verifier.key_set_answer(cx.host, now, answer);
        let Subject::Request(request) = subject else {
            return Verdict::Continue;
        };
        match bearer_token(request, cx.state.query.as_deref()) {
            Some(token) => self.check(cx, request, &token, false),
            None => Verdict::Fail(refuse(
                VERIFICATION_ERROR,
                "The JWT could not be verified.",
                INVALID_TOKEN,
            )),
        }
    }
}

// The policy's behaviour: only in a build with it (tollgate-lite.wasm refuses it; see
// policy::docs's tests).
#[cfg(test)]
#[cfg(feature = "jwt")]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::policy::jose::keys::B64URL;
    use crate::policy::jose::testing::*;
    use crate::policy::testing::*;
    use crate::policy::CallOut;
    use base64::Engine as _;
    use jwt_simple::algorithms::RS256PublicKey;
    use serde_json::{json, Value};

    fn policy(extra: Value) -> Box<dyn Policy> {
        let mut config = json!({"signingKeyString": RSA_A_PUB, "requireTransportSecurity": false});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        compile(&KIND, config)
    }

    fn bearer(token: &str) -> Request {
        request("GET", &[("authorization", &format!("Bearer {token}"))])
    }

    fn code(v: Verdict) -> u32 {
        failure(v).code
    }

    fn valid() -> Value {
        json!({"sub": "alice", "exp": NOW + 3600, "iss": "https://idp.test"})
    }

    fn jwk_of(pem: &str, kid: &str) -> Value {
        let c = RS256PublicKey::from_pem(pem).unwrap().to_components();
        json!({"kty": "RSA", "kid": kid, "use": "sig", "n": B64URL.encode(c.n), "e": B64URL.encode(c.e)})
    }

    #[test]
    fn a_valid_token_passes_and_names_the_user() {
        let p = policy(json!({}));
        let mut f = Fixture::new();
        let v = f.on_request(p.as_ref(), &mut bearer(&rs256(valid(), None)));
        assert!(is_continue(&v), "{v:?}");
        assert_eq!(f.state.identity.principal.as_deref(), Some("alice"));
        assert_eq!(f.state.identity.authenticated_by, Some("jwt"));
        assert_eq!(
            f.state.identity.claims.as_ref().unwrap()["iss"],
            "https://idp.test"
        );
        assert_eq!(
            f.state.identity.roles, None,
            "Apiman's JWT policy sets no roles"
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let p = policy(json!({}));
        let mut req = request(
            "GET",
            &[("authorization", &format!("bEaReR {}", rs256(valid(), None)))],
        );
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut req)
        ));
    }

    #[test]
    fn the_token_may_come_in_the_access_token_query_parameter() {
        let p = policy(json!({}));
        let mut f = Fixture::new();
        f.state.query = Some(format!("a=1&access_token={}", rs256(valid(), None)));
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
    }

    #[test]
    fn a_missing_token_is_refused_with_12005_and_a_bearer_challenge() {
        let p = policy(json!({}));
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!((fail.status(), fail.code), (401, 12005));
        assert_eq!(
            fail.headers,
            vec![("WWW-Authenticate".to_string(), "Bearer".to_string())]
        );
    }

    #[test]
    fn without_require_jwt_a_request_without_token_passes_but_a_bad_token_does_not() {
        let p = policy(json!({"requireJWT": false}));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut request("GET", &[]))
        ));
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer("x.y.z"))),
            12007
        );
    }

    #[test]
    fn a_request_without_tls_is_refused_with_12003_when_transport_security_is_required() {
        let p = policy(json!({"requireTransportSecurity": true}));
        let token = rs256(valid(), None);
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&token))),
            12003
        );
        let mut secure = request(
            "GET",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut secure)
        ));
    }

    #[test]
    fn alg_none_is_refused_with_12011() {
        let p = policy(json!({}));
        let token = raw(r#"{"alg":"none"}"#, r#"{"sub":"mallory"}"#, "");
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&token))),
            12011
        );
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused_with_12011() {
        // Even with HS256 accepted, an RSA key is never used as an HMAC secret.
        let p = policy(json!({"algorithms": ["RS256", "HS256"]}));
        let token = hs256(RSA_A_PUB.as_bytes(), valid());
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&token))),
            12011
        );
    }

    #[test]
    fn an_algorithm_outside_the_allow_list_is_refused_with_12011() {
        let p = policy(json!({"algorithms": ["RS512"]}));
        let token = rs256(valid(), None);
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&token))),
            12011
        );
    }

    #[test]
    fn an_expired_token_is_refused_with_12006_in_jjwt_words() {
        let p = policy(json!({}));
        let token = rs256(json!({"exp": NOW - 10}), None);
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&token)));
        assert_eq!(fail.code, 12006);
        assert_eq!(
            fail.message,
            "JWT expired at 2025-12-31T23:59:50Z. Current time: 2026-01-01T00:00:00Z, a difference of 10000 milliseconds.  Allowed clock skew: 0 milliseconds."
        );
        assert_eq!(fail.headers[0].1, "Bearer error=\"invalid_token\"");
    }

    #[test]
    fn clock_skew_tolerates_a_recently_expired_token() {
        let p = policy(json!({"allowedClockSkew": 30}));
        let token = rs256(json!({"exp": NOW - 10}), None);
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&token))
        ));
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_with_12010() {
        let p = policy(json!({}));
        let token = rs256(json!({"nbf": NOW + 60}), None);
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&token))),
            12010
        );
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused_with_12008() {
        let p = policy(json!({}));
        let token = rs256_with(RSA_B_KEY, valid(), None);
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&token))),
            12008
        );
    }

    #[test]
    fn malformed_base64_is_refused_with_12007() {
        let p = policy(json!({}));
        let token = rs256(valid(), None);
        let bad =
            format!("{}=", token.split('.').next().unwrap()) + &token[token.find('.').unwrap()..];
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&bad))),
            12007
        );
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer("only.two"))),
            12007
        );
    }

    #[test]
    fn an_oversized_token_is_refused_with_12007_before_any_work() {
        let p = policy(json!({}));
        let token = rs256(json!({"pad": "x".repeat(20_000)}), None);
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&token)));
        assert_eq!(fail.code, 12007);
        assert!(fail.message.contains("larger than 16384 bytes"));
    }

    #[test]
    fn a_wrong_issuer_or_audience_is_refused_with_12009() {
        let p = policy(json!({"issuer": "https://other.test", "audiences": ["api"]}));
        assert_eq!(
            code(Fixture::new().on_request(p.as_ref(), &mut bearer(&rs256(valid(), None)))),
            12009
        );
        let p = policy(json!({"issuer": "https://idp.test/", "audiences": ["api"]}));
        let mut claims = valid();
        claims["aud"] = json!(["web", "other"]);
        let fail = failure(
            Fixture::new().on_request(p.as_ref(), &mut bearer(&rs256(claims.clone(), None))),
        );
        assert_eq!(
            (fail.code, fail.message.as_str()),
            (
                12009,
                "Expected aud claim to be: one of api, but was: web,other."
            )
        );
        claims["aud"] = json!(["web", "api"]);
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&rs256(claims, None)))
        ));
    }

    #[test]
    fn required_claims_compare_as_text_and_reach_nested_claims() {
        let p = policy(
            json!({"requiredClaims": [{"claimName": "org.tenant", "claimValue": "acme"}, {"claimName": "level", "claimValue": "3"}]}),
        );
        let ok = rs256(json!({"org": {"tenant": "acme"}, "level": 3}), None);
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&ok))
        ));
        let bad = rs256(json!({"org": {"tenant": "globex"}, "level": 3}), None);
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&bad)));
        assert_eq!(
            (fail.code, fail.message.as_str()),
            (
                12009,
                "Expected org.tenant claim to be: acme, but was: globex."
            )
        );
    }

    #[test]
    fn claims_and_the_token_are_forwarded_and_a_forged_header_is_removed() {
        let p = policy(json!({"forwardAuthInfo": [
            {"header": "X-User", "field": "sub"}, {"header": "X-Country", "field": "address.country"},
            {"header": "X-Missing", "field": "nope"}, {"header": "X-Token", "field": "access_token"}]}));
        let token = rs256(json!({"sub": "alice", "address": {"country": "DE"}}), None);
        let mut req = request(
            "GET",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-missing", "forged"),
            ],
        );
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut req)
        ));
        assert_eq!(req.headers.get("x-user"), Some("alice"));
        assert_eq!(req.headers.get("x-country"), Some("DE"));
        assert_eq!(req.headers.get("x-token"), Some(token.as_str()));
        assert_eq!(req.headers.get("x-missing"), None);
    }

    #[test]
    fn strip_tokens_removes_the_header_and_the_query_parameter() {
        let p = policy(json!({"stripTokens": true}));
        let mut f = Fixture::new();
        f.state.query = Some("a=1&access_token=zzz".into());
        let mut req = bearer(&rs256(valid(), None));
        assert!(is_continue(&f.on_request(p.as_ref(), &mut req)));
        assert_eq!(req.headers.get("authorization"), None);
        assert_eq!(f.state.query.as_deref(), Some("a=1"));
    }

    #[test]
    fn the_roles_claim_fills_the_identity_roles() {
        let p = policy(json!({"rolesClaim": "realm_access.roles"}));
        let mut f = Fixture::new();
        let token = rs256(json!({"realm_access": {"roles": ["admin", "ops"]}}), None);
        assert!(is_continue(&f.on_request(p.as_ref(), &mut bearer(&token))));
        assert_eq!(
            f.state.identity.roles,
            Some(vec!["admin".to_string(), "ops".to_string()])
        );
        let p = policy(json!({"rolesClaim": "scope"}));
        let mut f = Fixture::new();
        assert!(is_continue(&f.on_request(
            p.as_ref(),
            &mut bearer(&rs256(json!({"scope": "read write"}), None))
        )));
        assert_eq!(
            f.state.identity.roles,
            Some(vec!["read".to_string(), "write".to_string()])
        );
        let mut f = Fixture::new();
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut bearer(&rs256(json!({}), None)))
        ));
        assert_eq!(
            f.state.identity.roles,
            Some(vec![]),
            "authenticated without roles: 403, not 500"
        );
    }

    #[test]
    fn hs256_secrets_are_the_base64_decoded_signing_key_string() {
        let secret = b"a-shared-secret-of-32-bytes!!!!!";
        let p = policy(
            json!({"signingKeyString": base64::engine::general_purpose::STANDARD.encode(secret), "algorithms": ["HS256"]}),
        );
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&hs256(secret, valid())))
        ));
        assert_eq!(
            code(Fixture::new().on_request(
                p.as_ref(),
                &mut bearer(&hs256(b"another-secret-of-32-bytes!!!!!!", valid()))
            )),
            12008
        );
    }

    #[test]
    fn es256_and_eddsa_keys_verify_their_tokens() {
        let p = policy(json!({"signingKeyString": EC_PUB}));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&es256(valid())))
        ));
        let p = policy(json!({"signingKeyString": ED_PUB}));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&eddsa(valid())))
        ));
    }

    #[test]
    fn an_inline_jwks_picks_the_key_by_kid() {
        let jwks = json!({"keys": [jwk_of(RSA_A_PUB, "a"), jwk_of(RSA_B_PUB, "b")]}).to_string();
        let p = policy(json!({"signingKeyString": jwks}));
        let by_b = rs256_with(RSA_B_KEY, valid(), Some("b"));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&by_b))
        ));
        let unknown = rs256_with(RSA_B_KEY, valid(), Some("c"));
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&unknown)));
        assert_eq!(
            (fail.code, fail.message.as_str()),
            (12008, "JWK was not found with kid: c")
        );
    }

    #[test]
    fn a_certificate_or_bare_base64_key_works_as_in_apiman() {
        let p = policy(json!({"signingKeyString": RSA_A_CERT}));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&rs256(valid(), None)))
        ));
        let bare: String = RSA_A_PUB
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let p = policy(json!({"signingKeyString": bare}));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut bearer(&rs256(valid(), None)))
        ));
    }

    #[test]
    fn a_cached_token_is_not_verified_again_but_its_expiry_is_checked_every_time() {
        let p = policy(json!({}));
        let token = rs256(json!({"sub": "alice", "exp": NOW + 10}), None);
        let mut f = Fixture::new();
        assert!(is_continue(&f.on_request(p.as_ref(), &mut bearer(&token))));
        // Same request again: a cache hit, measurably cheaper (no RSA); the identity is the same.
        let started = std::time::Instant::now();
        let mut f2 = Fixture::new();
        assert!(is_continue(&f2.on_request(p.as_ref(), &mut bearer(&token))));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        assert_eq!(f2.state.identity.principal.as_deref(), Some("alice"));
        let mut later = Fixture::new();
        later.host.now += std::time::Duration::from_secs(11);
        assert_eq!(
            code(later.on_request(p.as_ref(), &mut bearer(&token))),
            12006
        );
    }

    #[test]
    fn configuration_problems_name_their_field() {
        let errors = |c: Value| crate::policy::testing::errors(&KIND, c);
        assert_eq!(
            errors(json!({})),
            vec!["config.signingKeyString: is required"]
        );
        assert!(
            errors(json!({"signingKeyString": "bm90IGEga2V5IGF0IGFsbA=="}))[0]
                .starts_with("config.signingKeyString: is not a public key or certificate")
        );
        assert!(
            errors(json!({"signingKeyString": RSA_A_PUB, "algorithms": ["none"]}))[0]
                .starts_with("config.algorithms[0]: `none`")
        );
        assert!(
            errors(json!({"signingKeyString": RSA_A_PUB, "algorithms": ["HS256"]}))[0]
                .contains("can verify any accepted algorithm")
        );
        assert_eq!(
            errors(
                json!({"signingKeyString": RSA_A_PUB, "forwardAuthInfo": [{"header": "X Y", "field": "sub"}]})
            ),
            vec!["config.forwardAuthInfo[0]: \"X Y\" is not a valid header name"]
        );
        assert_eq!(
            errors(json!({"signingKeyString": "ftp://x"})),
            vec!["config.signingKeyString: is not a URL, a JWK/JWKS, PEM or base64 (a public key, certificate or HMAC secret)"]
        );
    }

    // ---- a key set fetched from a JWKS URL

    fn remote_policy(extra: Value) -> Box<dyn Policy> {
        policy(
            json!({"signingKeyString": "https://idp.test/jwks", "jwksCluster": "idp"})
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    if let Some(e) = extra.as_object() {
                        o.extend(e.clone());
                    }
                    Value::Object(o)
                })
                .unwrap(),
        )
    }

    fn jwks_answer(keys: &[Value]) -> CallResponse {
        CallResponse {
            cluster: "idp".into(),
            status: 200,
            headers: vec![],
            body: json!({"keys": keys}).to_string().into_bytes(),
        }
    }

    fn call_of(v: Verdict) -> CallOut {
        match v {
            Verdict::CallOut(c) => c,
            other => panic!("expected a call-out, got {other:?}"),
        }
    }

    fn answer(p: &dyn Policy, f: &mut Fixture, req: &mut Request, a: &CallResponse) -> Verdict {
        p.on_call_response(&mut f.cx(), a, Subject::Request(req))
    }

    #[test]
    fn a_jwks_url_is_fetched_once_and_shared_with_every_worker() {
        let p = remote_policy(json!({}));
        let token = rs256(valid(), Some("a"));
        let mut f = Fixture::new();
        let mut req = bearer(&token);
        let call = call_of(f.on_request(p.as_ref(), &mut req));
        assert_eq!(call.cluster, "idp");
        assert!(call.headers.contains(&(":path".into(), "/jwks".into())));
        assert!(is_continue(&answer(
            p.as_ref(),
            &mut f,
            &mut req,
            &jwks_answer(&[jwk_of(RSA_A_PUB, "a")])
        )));
        // The same worker: no call.
        let mut g = Fixture::new();
        g.host = f.host.clone();
        assert!(is_continue(&g.on_request(
            p.as_ref(),
            &mut bearer(&rs256(json!({"sub": "bob"}), Some("a")))
        )));
        // Another worker VM (its own compiled policy) finds the set in shared data.
        let other = remote_policy(json!({}));
        let mut h = Fixture::new();
        h.host = f.host.clone();
        assert!(is_continue(
            &h.on_request(other.as_ref(), &mut bearer(&token))
        ));
    }

    #[test]
    fn an_unknown_kid_refetches_once_then_fails_with_12008() {
        let p = remote_policy(json!({"jwksMinRefetchSeconds": 60}));
        let mut f = Fixture::new();
        let mut req = bearer(&rs256(valid(), Some("a")));
        call_of(f.on_request(p.as_ref(), &mut req));
        answer(
            p.as_ref(),
            &mut f,
            &mut req,
            &jwks_answer(&[jwk_of(RSA_A_PUB, "a")]),
        );
        // A rotated key: the set is refetched and the new kid accepted.
        f.host.now += std::time::Duration::from_secs(61);
        let mut g = Fixture::new();
        g.host = f.host.clone();
        let mut req = bearer(&rs256_with(RSA_B_KEY, valid(), Some("b")));
        call_of(g.on_request(p.as_ref(), &mut req));
        let rotated = jwks_answer(&[jwk_of(RSA_A_PUB, "a"), jwk_of(RSA_B_PUB, "b")]);
        assert!(is_continue(&answer(p.as_ref(), &mut g, &mut req, &rotated)));
        // An unknown kid right after: no second fetch within the minimum interval.
        let mut h = Fixture::new();
        h.host = g.host.clone();
        assert_eq!(
            code(h.on_request(p.as_ref(), &mut bearer(&rs256(valid(), Some("zzz"))))),
            12008
        );
    }

    #[test]
    fn without_any_key_set_a_failed_fetch_answers_503() {
        let p = remote_policy(json!({}));
        let mut f = Fixture::new();
        let mut req = bearer(&rs256(valid(), Some("a")));
        call_of(f.on_request(p.as_ref(), &mut req));
        let none = CallResponse {
            cluster: "idp".into(),
            ..CallResponse::default()
        };
        assert!(matches!(
            answer(p.as_ref(), &mut f, &mut req, &none),
            Verdict::Error(GatewayError::CallOutFailed { .. })
        ));
        // The back-off holds: the next request does not call again.
        let mut g = Fixture::new();
        g.host = f.host.clone();
        assert!(matches!(
            g.on_request(p.as_ref(), &mut bearer(&rs256(valid(), Some("a")))),
            Verdict::Error(_)
        ));
    }

    #[test]
    fn a_failed_refresh_keeps_the_old_key_set_for_max_stale_seconds() {
        let p = remote_policy(json!({"jwksRefreshSeconds": 60, "jwksMaxStaleSeconds": 100}));
        let token = rs256(valid(), Some("a"));
        let mut f = Fixture::new();
        let mut req = bearer(&token);
        call_of(f.on_request(p.as_ref(), &mut req));
        answer(
            p.as_ref(),
            &mut f,
            &mut req,
            &jwks_answer(&[jwk_of(RSA_A_PUB, "a")]),
        );
        // Due for refresh: one request fetches, the fetch fails, the old set still verifies.
        f.host.now += std::time::Duration::from_secs(70);
        let mut g = Fixture::new();
        g.host = f.host.clone();
        let mut req = bearer(&token);
        call_of(g.on_request(p.as_ref(), &mut req));
        let failed = CallResponse {
            cluster: "idp".into(),
            status: 500,
            ..CallResponse::default()
        };
        assert!(is_continue(&answer(p.as_ref(), &mut g, &mut req, &failed)));
        // Past refresh + max stale: nothing to verify with.
        let mut h = Fixture::new();
        h.host = g.host.clone();
        h.host.now += std::time::Duration::from_secs(100);
        let v = h.on_request(p.as_ref(), &mut bearer(&token));
        assert!(
            matches!(v, Verdict::CallOut(_)),
            "past max stale a request fetches again: {v:?}"
        );
    }

    #[test]
    fn while_another_worker_refreshes_the_others_use_the_old_set_without_calling() {
        let p = remote_policy(json!({"jwksRefreshSeconds": 60}));
        let token = rs256(valid(), Some("a"));
        let mut f = Fixture::new();
        let mut req = bearer(&token);
        call_of(f.on_request(p.as_ref(), &mut req));
        answer(
            p.as_ref(),
            &mut f,
            &mut req,
            &jwks_answer(&[jwk_of(RSA_A_PUB, "a")]),
        );
        f.host.now += std::time::Duration::from_secs(61);
        let mut g = Fixture::new();
        g.host = f.host.clone();
        call_of(g.on_request(p.as_ref(), &mut bearer(&token)));
        // Worker 2, same moment, same shared data: the marker says a fetch is in flight.
        let other = remote_policy(json!({"jwksRefreshSeconds": 60}));
        let mut h = Fixture::new();
        h.host = g.host.clone();
        h.host.shared_set("unrelated", b"x", 0).unwrap();
        // It has no set of its own yet but finds the stale shared one usable.
        assert!(is_continue(
            &h.on_request(other.as_ref(), &mut bearer(&token))
        ));
    }

    #[test]
    fn a_cached_token_whose_key_left_the_set_is_verified_again() {
        let p = remote_policy(json!({"jwksRefreshSeconds": 60}));
        let token = rs256(valid(), Some("a"));
        let mut f = Fixture::new();
        let mut req = bearer(&token);
        call_of(f.on_request(p.as_ref(), &mut req));
        answer(
            p.as_ref(),
            &mut f,
            &mut req,
            &jwks_answer(&[jwk_of(RSA_A_PUB, "a")]),
        );
        f.host.now += std::time::Duration::from_secs(61);
        let mut g = Fixture::new();
        g.host = f.host.clone();
        let mut req = bearer(&token);
        call_of(g.on_request(p.as_ref(), &mut req));
        // The refreshed set no longer has key "a" (revoked); the cached token is not trusted.
        let v = answer(
            p.as_ref(),
            &mut g,
            &mut req,
            &jwks_answer(&[jwk_of(RSA_B_PUB, "b")]),
        );
        assert_eq!(code(v), 12008);
    }
    /// Verify costs, native and on wasm under V8 (Node): `cargo test --release -p tollgate-core
    /// verify_costs -- --ignored --nocapture` (add `--target wasm32-wasip1` with the Node
    /// runner of scripts/test for V8).
    #[test]
    #[ignore]
    fn verify_costs() {
        let time = |label: &str, n: u32, mut f: Box<dyn FnMut()>| {
            f();
            let started = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
            println!("verify-cost {label}: {us:.1} us");
        };
        let secret = b"a-shared-secret-of-32-bytes!!!!!";
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let cases: Vec<(&str, Value, String, u32)> = vec![
            (
                "RS256 miss",
                json!({"signingKeyString": RSA_A_PUB, "tokenCacheSize": 0}),
                rs256(valid(), None),
                30,
            ),
            (
                "ES256 miss",
                json!({"signingKeyString": EC_PUB, "tokenCacheSize": 0}),
                es256(valid()),
                30,
            ),
            (
                "EdDSA miss",
                json!({"signingKeyString": ED_PUB, "tokenCacheSize": 0}),
                eddsa(valid()),
                30,
            ),
            (
                "HS256 miss",
                json!({"signingKeyString": b64, "algorithms": ["HS256"], "tokenCacheSize": 0}),
                hs256(secret, valid()),
                500,
            ),
            (
                "RS256 cache hit",
                json!({"signingKeyString": RSA_A_PUB}),
                rs256(valid(), None),
                5000,
            ),
        ];
        for (label, config, token, n) in cases {
            let p = policy(config);
            let header = format!("Bearer {token}");
            time(
                label,
                n,
                Box::new(move || {
                    let mut f = Fixture::new();
                    let mut req = request("GET", &[("authorization", &header)]);
                    assert!(is_continue(&f.on_request(p.as_ref(), &mut req)));
                }),
            );
        }
        let token = rs256(valid(), None);
        time(
            "SHA-256 of the token",
            5000,
            Box::new(move || {
                std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
            }),
        );
    }
}
