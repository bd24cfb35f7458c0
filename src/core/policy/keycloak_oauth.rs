//! Keycloak OAuth (Apiman's `keycloak-oauth-policy`): verifies a Keycloak access token with the
//! realm's certificate or the realm's JWKS (`<issuer>/protocol/openid-connect/certs`, fetched
//! and shared like the JWT policy's), checks the issuer against the realm, and hands realm or
//! client roles to Authorization policies.
//!
//! `blacklistUnsafeTokens`: a token used over plain HTTP is remembered in shared data (bounded:
//! `BLACKLIST_SLOTS` keys of at most `BLACKLIST_PER_SLOT` entries, each kept until the token
//! expires) and refused later, even over TLS, with 11002.

use sha2::{Digest, Sha256};

use super::jose::config::{self as jc, F_SKEW_DOC};
use super::jose::{
    self, bearer_token, seconds, strip_tokens, transport_secure, Derive, Issuer, Outcome, Reason,
    RolesFrom, Verifier,
};
use super::jwt::forwards;
use super::{
    BuildContext, CallResponse, Capabilities, Context, FailureType, FieldDoc, GatewayError, Phase,
    PhaseSet, Policy, PolicyFailure, PolicyKind, Subject, Verdict,
};
use crate::host::{update_shared, Host};
use crate::http::Request;
use crate::json::{Fields, Problems};
use crate::model::Endpoint;

pub const KIND: PolicyKind = PolicyKind {
    id: "keycloak-oauth",
    name: "Keycloak OAuth",
    apiman_names: &["keycloak-oauth-policy", "KeycloakOauthPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Verifies a Keycloak access token (realm certificate or the realm's JWKS), checks its issuer against the realm, forwards claims as headers and hands realm or client roles to Authorization policies.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "all 401 Authentication with `WWW-Authenticate: Bearer`: 11002 token blacklisted after insecure use, 11003 no TLS, 11004 verification failed (Keycloak's message: bad signature, not active, wrong issuer, ...), 11005 no token; 503 gateway error when the realm's keys cannot be fetched",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "requireOauth",
            aliases: &[],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "refuse requests without a token (else they pass unauthenticated)",
        },
        FieldDoc {
            name: "requireTransportSecurity",
            aliases: &[],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "refuse tokens that came without TLS (`x-forwarded-proto` / `:scheme` as Envoy sets them)",
        },
        FieldDoc {
            name: "blacklistUnsafeTokens",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "remember tokens used without TLS (in every worker) and refuse them afterwards, even over TLS",
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
            name: "realm",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the realm's issuer URL (`https://kc/realms/x`, `https://kc/auth/realms/x`), or a bare realm name (then `realmCertificateString` is required); the token's `iss` must match it",
        },
        FieldDoc {
            name: "realmCertificateString",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the realm's certificate (PEM X.509) or public key (PEM or bare base64, as Keycloak's admin console shows it); unset: the realm's JWKS is fetched",
        },
        FieldDoc {
            name: "forwardRoles",
            aliases: &[],
            ty: "object",
            default: "",
            apiman: true,
            meaning: "hand the token's roles to Authorization policies",
        },
        FieldDoc {
            name: "forwardRoles.active",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "forward roles",
        },
        FieldDoc {
            name: "forwardRoles.applicationName",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the client whose roles (`resource_access.<client>.roles`) are forwarded; unset: the realm roles (`realm_access.roles`)",
        },
        FieldDoc {
            name: "delegateKerberosTicket",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "send the token's `gss_delegation_credential` to the backend as `Authorization: Negotiate ...`",
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
            name: "forwardAuthInfo[].headers",
            aliases: &["header"],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the header (Apiman's field is `headers`, one name)",
        },
        FieldDoc {
            name: "forwardAuthInfo[].field",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the claim (dotted paths reach nested claims), or `access_token` for the token itself",
        },
        FieldDoc {
            name: "allowedClockSkew",
            aliases: &[],
            ty: "integer",
            default: "0",
            apiman: false,
            meaning: F_SKEW_DOC,
        },
        jc::F_ALGORITHMS,
        jc::F_AUDIENCES,
        jc::F_CLUSTER,
        jc::F_TIMEOUT,
        jc::F_REFRESH,
        jc::F_REFETCH,
        jc::F_STALE,
        jc::F_CACHE_SIZE,
        jc::F_CACHE_TTL,
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"requireOauth": true, "requireTransportSecurity": true, "blacklistUnsafeTokens": true,
                 "stripTokens": true, "realm": "https://keycloak.example.com/realms/acme",
                 "forwardRoles": {"active": true, "applicationName": "orders-api"},
                 "delegateKerberosTicket": false,
                 "forwardAuthInfo": [{"headers": "X-User", "field": "preferred_username"}],
                 "allowedClockSkew": 10, "algorithms": ["RS256"], "audiences": ["orders-api"],
                 "jwksCluster": "keycloak", "jwksTimeoutMs": 1500, "jwksRefreshSeconds": 600,
                 "jwksMinRefetchSeconds": 15, "jwksMaxStaleSeconds": 3600,
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

pub const MISSING_ROLE: u32 = 11001;
pub const BLACKLISTED: u32 = 11002;
pub const NO_TRANSPORT_SECURITY: u32 = 11003;
pub const VERIFICATION_ERROR: u32 = 11004;
pub const NOT_PROVIDED: u32 = 11005;

/// Blacklist slots (shared-data keys, shared by every Keycloak policy as Apiman's one
/// `apiman-keycloak-blacklist` is) and entries per slot.
pub const BLACKLIST_SLOTS: u32 = 1024;
pub const BLACKLIST_PER_SLOT: usize = 32;
/// How long a blacklisted token without `exp` is remembered.
const BLACKLIST_NO_EXP_SECONDS: u64 = 86_400;

pub struct KeycloakOauth {
    require_oauth: bool,
    require_transport: bool,
    blacklist: bool,
    strip: bool,
    kerberos: bool,
    verifier: Verifier,
    forward_token: Vec<String>,
}

fn build(cx: &mut BuildContext, f: &mut Fields, problems: &mut Problems) -> Option<KeycloakOauth> {
    let require_oauth = f.bool(&["requireOauth"], problems).unwrap_or(true);
    let require_transport = f
        .bool(&["requireTransportSecurity"], problems)
        .unwrap_or(true);
    let blacklist = f
        .bool(&["blacklistUnsafeTokens"], problems)
        .unwrap_or(false);
    let strip = f.bool(&["stripTokens"], problems).unwrap_or(false);
    let kerberos = f
        .bool(&["delegateKerberosTicket"], problems)
        .unwrap_or(false);
    let roles = match f.object(&["forwardRoles"], problems) {
        Some(mut r) => {
            let active = r.bool(&["active"], problems).unwrap_or(false);
            let app = r
                .string(&["applicationName"], problems)
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty());
            r.finish(problems);
            active.then(|| match app {
                Some(app) => RolesFrom::Path(vec!["resource_access".into(), app, "roles".into()]),
                None => RolesFrom::Path(vec!["realm_access".into(), "roles".into()]),
            })
        }
        None => None,
    };
    let (forward, forward_token) = forwards(f, &["headers", "header"], problems);
    let skew = jc::seconds(f, "allowedClockSkew", 0, 86_400, problems);
    let algorithms = jc::algorithms(f, problems);
    let audiences: Vec<String> = f
        .strings(&["audiences"], problems)
        .into_iter()
        .map(|(_, a)| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let (cache_entries, ttl) = jc::cache(f, problems);
    let realm_path = f.field_path("realm");
    let realm = f
        .string(&["realm"], problems)
        .map(|r| r.trim().trim_end_matches('/').to_string());
    let certificate = f
        .string(&["realmCertificateString"], problems)
        .filter(|c| !c.trim().is_empty());
    let cert_path = f.field_path("realmCertificateString");
    let (issuer, jwks) = match realm.as_deref() {
        None | Some("") => {
            problems.error(&realm_path, "is required");
            (Issuer::Any, None)
        }
        Some(url) if jc::is_url(url) => match Endpoint::parse(url) {
            Ok(_) => (
                Issuer::Exact(url.to_string()),
                Some(format!("{url}/protocol/openid-connect/certs")),
            ),
            Err(e) => {
                problems.error(&realm_path, e);
                (Issuer::Any, None)
            }
        },
        Some(name) => (Issuer::RealmName(name.to_string()), None),
    };
    let source = match certificate {
        Some(text) => {
            jc::no_remote(f, problems);
            jc::inline_keys(&text, &algorithms, false, &cert_path, problems)
                .map(jose::KeySource::Inline)
        }
        None => match jwks {
            Some(url) => jc::remote(cx, f, &url, "realm", "keycloak-oauth", problems),
            None => {
                jc::no_remote(f, problems);
                if matches!(issuer, Issuer::RealmName(_)) {
                    problems.error(
                        &cert_path,
                        "is required when `realm` is a bare realm name (or give the realm's URL, whose keys are then fetched)",
                    );
                }
                None
            }
        },
    };
    Some(KeycloakOauth {
        require_oauth,
        require_transport,
        blacklist,
        strip,
        kerberos,
        forward_token,
        verifier: Verifier::new(
            algorithms,
            source?,
            None,
            skew,
            issuer,
            audiences,
            Vec::new(),
            Derive {
                principal: vec!["preferred_username", "sub"],
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

/// 11004 with the message Keycloak's token verifier gives (which Apiman passes on).
fn verification_failure(reason: &Reason) -> PolicyFailure {
    let message = match reason {
        Reason::TooLarge | Reason::Malformed(_) => "Failed to parse JWT".to_string(),
        Reason::Unsigned | Reason::Algorithm(_) => "Token algorithm is not accepted".to_string(),
        Reason::UnknownKey(kid) => format!(
            "Didn't find publicKey for kid: {}",
            kid.as_deref().unwrap_or("null")
        ),
        Reason::Signature => "Invalid token signature".to_string(),
        Reason::Expired { .. } | Reason::Premature { .. } => "Token is not active".to_string(),
        Reason::Issuer { expected, .. } => format!("Invalid token issuer. Expected '{expected}'"),
        Reason::Audience { .. } => "Expected audience not available in the token".to_string(),
        Reason::Claim { name, .. } => format!("Invalid token: claim {name}"),
    };
    refuse(VERIFICATION_ERROR, message, INVALID_TOKEN)
}

fn blacklist_slot(token: &str) -> (String, [u8; 16]) {
    let digest = Sha256::digest(token.as_bytes());
    let slot = u32::from(u16::from_be_bytes([digest[0], digest[1]])) % BLACKLIST_SLOTS;
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&digest[16..32]);
    (format!("tollgate.kc-blacklist.{slot:03x}"), fp)
}

/// A slot's entries: fingerprint and the time until which it is kept.
fn entries(bytes: Option<&[u8]>, now: u64) -> Vec<([u8; 16], u64)> {
    bytes
        .unwrap_or_default()
        .chunks_exact(24)
        .filter_map(|c| {
            let fp: [u8; 16] = c[..16].try_into().ok()?;
            let until = u64::from_le_bytes(c[16..24].try_into().ok()?);
            (until > now).then_some((fp, until))
        })
        .collect()
}

/// Remembers `token` as used without TLS, until `until`.
pub fn blacklist_add(host: &mut dyn Host, token: &str, until: u64, now: u64) {
    let (key, fp) = blacklist_slot(token);
    let result = update_shared(host, &key, |v| {
        let mut list = entries(v, now);
        list.retain(|(f, _)| *f != fp);
        list.push((fp, until));
        if list.len() > BLACKLIST_PER_SLOT {
            // Full: forget the entry that expires first.
            list.sort_by_key(|(_, u)| std::cmp::Reverse(*u));
            list.truncate(BLACKLIST_PER_SLOT);
        }
        let mut out = Vec::with_capacity(list.len() * 24);
        for (f, u) in list {
            out.extend_from_slice(&f);
            out.extend_from_slice(&u.to_le_bytes());
        }
        (out, ())
    });
    if result.is_err() {
        log::warn!("keycloak-oauth: a token used without TLS could not be blacklisted");
    }
}

pub fn blacklisted(host: &mut dyn Host, token: &str, now: u64) -> bool {
    let (key, fp) = blacklist_slot(token);
    let value = host.shared_get(&key);
    entries(value.as_ref().map(|(v, _)| v.as_slice()), now)
        .iter()
        .any(|(f, _)| *f == fp)
}

impl KeycloakOauth {
    fn check(
        &self,
        cx: &mut Context,
        request: &mut Request,
        token: &str,
        allow_fetch: bool,
    ) -> Verdict {
        let now = seconds(cx.now());
        let v = match self.verifier.verify(cx.host, now, token, allow_fetch) {
            Outcome::Accepted(v) => v,
            Outcome::Rejected(reason) => return Verdict::Fail(verification_failure(&reason)),
            Outcome::Fetch(call) => return Verdict::CallOut(call),
            Outcome::Unavailable(cluster) => {
                return Verdict::Error(GatewayError::CallOutFailed { cluster })
            }
        };
        // Apiman's order: the token is verified first, then the transport, then the blacklist.
        if self.require_transport && !transport_secure(&request.headers) {
            if self.blacklist {
                let until = v
                    .exp
                    .unwrap_or(now.saturating_add(BLACKLIST_NO_EXP_SECONDS));
                blacklist_add(
                    cx.host,
                    token,
                    until.saturating_add(self.verifier.skew),
                    now,
                );
            }
            return Verdict::Fail(refuse(
                NO_TRANSPORT_SECURITY,
                "OAuth2 token was transmitted without required transport security (TLS, SSL).",
                "Bearer",
            ));
        }
        if self.blacklist && blacklisted(cx.host, token, now) {
            return Verdict::Fail(refuse(
                BLACKLISTED,
                "Token was used insecurely in previous request and was blacklisted to prevent replay attacks.",
                INVALID_TOKEN,
            ));
        }
        for (header, value) in &v.forward {
            match value {
                Some(value) => request.headers.set(header, value),
                None => request.headers.remove(header),
            }
        }
        for header in &self.forward_token {
            request.headers.set(header, token);
        }
        if self.strip {
            strip_tokens(cx, &mut request.headers);
        }
        if self.kerberos {
            if let Some(ticket) = v
                .claims
                .get("gss_delegation_credential")
                .and_then(|c| c.as_str())
            {
                request
                    .headers
                    .set("authorization", &format!("Negotiate {ticket}"));
            }
        }
        let identity = cx.identity_mut();
        identity.principal = v.principal.clone();
        identity.claims = Some(v.claims.clone());
        if v.roles.is_some() {
            identity.roles = v.roles.clone();
        }
        identity.authenticated_by = Some(KIND.id);
        Verdict::Continue
    }
}

impl Policy for KeycloakOauth {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        match bearer_token(request, cx.state.query.as_deref()) {
            Some(token) => self.check(cx, request, &token, true),
            None if self.require_oauth => Verdict::Fail(refuse(
                NOT_PROVIDED,
                "OAuth2 'Authorization' header or 'access_token' query parameter must be provided.",
                "Bearer",
            )),
            None => Verdict::Continue,
        }
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
                "Failed to parse JWT",
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
    use crate::policy::jose::testing::*;
    use crate::policy::testing::*;
    use serde_json::{json, Value};

    const REALM: &str = "https://kc.test/realms/acme";

    fn policy(extra: Value) -> Box<dyn Policy> {
        let mut config = json!({"realm": REALM, "realmCertificateString": RSA_A_CERT, "requireTransportSecurity": false});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        compile(&KIND, config)
    }

    /// A token shaped as Keycloak issues it.
    fn keycloak_token(extra: Value) -> String {
        let mut claims = json!({
            "exp": NOW + 300, "iat": NOW - 10, "jti": "0c1e", "iss": REALM, "aud": "account",
            "sub": "f3a1-22", "typ": "Bearer", "azp": "web", "preferred_username": "alice",
            "email": "alice@example.com",
            "realm_access": {"roles": ["offline_access", "user"]},
            "resource_access": {"orders-api": {"roles": ["reader"]}, "account": {"roles": ["manage-account"]}},
            "scope": "openid email profile"
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        rs256(claims, Some("kc-key-1"))
    }

    fn bearer(token: &str) -> Request {
        request("GET", &[("authorization", &format!("Bearer {token}"))])
    }

    fn secure(token: &str) -> Request {
        request(
            "GET",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-forwarded-proto", "https"),
            ],
        )
    }

    #[test]
    fn a_keycloak_token_passes_and_names_the_user() {
        let p = policy(json!({}));
        let mut f = Fixture::new();
        assert!(is_continue(&f.on_request(
            p.as_ref(),
            &mut bearer(&keycloak_token(json!({})))
        )));
        assert_eq!(f.state.identity.principal.as_deref(), Some("alice"));
        assert_eq!(f.state.identity.authenticated_by, Some("keycloak-oauth"));
        assert_eq!(f.state.identity.roles, None);
    }

    #[test]
    fn a_wrong_issuer_fails_with_11004() {
        let p = policy(json!({}));
        let token = keycloak_token(json!({"iss": "https://kc.test/realms/other"}));
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&token)));
        assert_eq!(
            (fail.code, fail.message.as_str()),
            (
                11004,
                "Invalid token issuer. Expected 'https://kc.test/realms/acme'"
            )
        );
    }

    #[test]
    fn a_bare_realm_name_matches_the_issuers_last_segment() {
        let p = policy(json!({"realm": "acme"}));
        assert!(is_continue(&Fixture::new().on_request(
            p.as_ref(),
            &mut bearer(&keycloak_token(json!({})))
        )));
        let other = keycloak_token(json!({"iss": "https://kc.test/auth/realms/acme-two"}));
        assert_eq!(
            failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&other))).code,
            11004
        );
    }

    #[test]
    fn realm_roles_or_client_roles_go_to_the_identity() {
        let p = policy(json!({"forwardRoles": {"active": true}}));
        let mut f = Fixture::new();
        assert!(is_continue(&f.on_request(
            p.as_ref(),
            &mut bearer(&keycloak_token(json!({})))
        )));
        assert_eq!(
            f.state.identity.roles,
            Some(vec!["offline_access".to_string(), "user".to_string()])
        );
        let p = policy(json!({"forwardRoles": {"active": true, "applicationName": "orders-api"}}));
        let mut f = Fixture::new();
        assert!(is_continue(&f.on_request(
            p.as_ref(),
            &mut bearer(&keycloak_token(json!({})))
        )));
        assert_eq!(f.state.identity.roles, Some(vec!["reader".to_string()]));
        let p = policy(json!({"forwardRoles": {"active": true, "applicationName": "billing"}}));
        let mut f = Fixture::new();
        assert!(is_continue(&f.on_request(
            p.as_ref(),
            &mut bearer(&keycloak_token(json!({})))
        )));
        assert_eq!(
            f.state.identity.roles,
            Some(vec![]),
            "no roles for that client: an empty set, as in Apiman"
        );
    }

    #[test]
    fn a_missing_token_fails_with_11005_unless_oauth_is_optional() {
        let p = policy(json!({}));
        assert_eq!(
            failure(Fixture::new().on_request(p.as_ref(), &mut request("GET", &[]))).code,
            11005
        );
        let p = policy(json!({"requireOauth": false}));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut request("GET", &[]))
        ));
    }

    #[test]
    fn expired_and_badly_signed_tokens_fail_with_keycloaks_messages() {
        let p = policy(json!({}));
        let expired = keycloak_token(json!({"exp": NOW - 1}));
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&expired)));
        assert_eq!(
            (fail.code, fail.message.as_str()),
            (11004, "Token is not active")
        );
        let forged = rs256_with(RSA_B_KEY, json!({"iss": REALM}), None);
        let fail = failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&forged)));
        assert_eq!(
            (fail.code, fail.message.as_str()),
            (11004, "Invalid token signature")
        );
    }

    #[test]
    fn a_token_without_tls_fails_with_11003_after_verification() {
        let p = policy(json!({"requireTransportSecurity": true}));
        let token = keycloak_token(json!({}));
        assert_eq!(
            failure(Fixture::new().on_request(p.as_ref(), &mut bearer(&token))).code,
            11003
        );
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut secure(&token))
        ));
        // A bad token over plain HTTP is a verification failure first, as in Apiman.
        assert_eq!(
            failure(Fixture::new().on_request(p.as_ref(), &mut bearer("a.b.c"))).code,
            11004
        );
    }

    #[test]
    fn a_token_used_without_tls_is_blacklisted_and_refused_later_with_11002() {
        let p = policy(json!({"requireTransportSecurity": true, "blacklistUnsafeTokens": true}));
        let token = keycloak_token(json!({}));
        let mut f = Fixture::new();
        assert_eq!(
            failure(f.on_request(p.as_ref(), &mut bearer(&token))).code,
            11003
        );
        // Another worker, over TLS now: refused.
        let mut g = Fixture::new();
        g.host = f.host.clone();
        let fail = failure(g.on_request(p.as_ref(), &mut secure(&token)));
        assert_eq!(fail.code, 11002);
        // Another token is not affected.
        let other = keycloak_token(json!({"jti": "other"}));
        assert!(is_continue(&g.on_request(p.as_ref(), &mut secure(&other))));
    }

    #[test]
    fn the_blacklist_is_bounded_per_slot_and_forgets_expired_tokens() {
        let mut host = crate::host::MemoryHost::default();
        let (slot, _) = blacklist_slot("token-0");
        let same_slot: Vec<String> = (0..)
            .map(|i| format!("token-{i}"))
            .filter(|t| blacklist_slot(t).0 == slot)
            .take(BLACKLIST_PER_SLOT + 5)
            .collect();
        for (i, t) in same_slot.iter().enumerate() {
            blacklist_add(&mut host, t, NOW + 100 + i as u64, NOW);
        }
        let (value, _) = crate::host::Host::shared_get(&mut host, &slot).unwrap();
        assert_eq!(value.len(), BLACKLIST_PER_SLOT * 24);
        assert!(
            !blacklisted(&mut host, &same_slot[0], NOW),
            "the first to expire was dropped"
        );
        assert!(blacklisted(&mut host, same_slot.last().unwrap(), NOW));
        assert!(
            !blacklisted(&mut host, same_slot.last().unwrap(), NOW + 1000),
            "expired entries are gone"
        );
    }

    #[test]
    fn forward_auth_info_uses_the_headers_field_and_nested_claims() {
        let p = policy(json!({"stripTokens": true, "forwardAuthInfo": [
            {"headers": "X-User", "field": "preferred_username"},
            {"headers": "X-Client-Roles", "field": "resource_access.orders-api.roles"},
            {"headers": "X-Token", "field": "access_token"}]}));
        let token = keycloak_token(json!({}));
        let mut f = Fixture::new();
        f.state.query = Some("access_token=x&b=2".into());
        let mut req = bearer(&token);
        assert!(is_continue(&f.on_request(p.as_ref(), &mut req)));
        assert_eq!(req.headers.get("x-user"), Some("alice"));
        assert_eq!(req.headers.get("x-client-roles"), Some("reader"));
        assert_eq!(req.headers.get("x-token"), Some(token.as_str()));
        assert_eq!(req.headers.get("authorization"), None);
        assert_eq!(f.state.query.as_deref(), Some("b=2"));
    }

    #[test]
    fn a_kerberos_ticket_in_the_token_is_delegated() {
        let p = policy(json!({"delegateKerberosTicket": true}));
        let mut req = bearer(&keycloak_token(
            json!({"gss_delegation_credential": "YIIC"}),
        ));
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut req)
        ));
        assert_eq!(req.headers.get("authorization"), Some("Negotiate YIIC"));
    }

    #[test]
    fn a_realm_url_fetches_the_realms_jwks() {
        let p = compile(
            &KIND,
            json!({"realm": "https://kc.test/auth/realms/acme/", "jwksCluster": "keycloak"}),
        );
        let mut f = Fixture::new();
        let v = f.on_request(p.as_ref(), &mut bearer(&keycloak_token(json!({}))));
        let Verdict::CallOut(call) = v else {
            panic!("expected a fetch, got {v:?}")
        };
        assert_eq!(call.cluster, "keycloak");
        assert!(call.headers.contains(&(
            ":path".into(),
            "/auth/realms/acme/protocol/openid-connect/certs".into()
        )));
    }

    #[test]
    fn configuration_problems_name_their_field() {
        let errors = |c: Value| crate::policy::testing::errors(&KIND, c);
        assert_eq!(errors(json!({})), vec!["config.realm: is required"]);
        assert!(errors(json!({"realm": "acme"}))[0]
            .starts_with("config.realmCertificateString: is required when"));
        assert!(
            errors(json!({"realm": "acme", "realmCertificateString": "bm90IGEgY2VydA=="}))[0]
                .starts_with("config.realmCertificateString: is not a public key or certificate")
        );
    }
}
