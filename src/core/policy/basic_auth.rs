//! BASIC Authentication (Apiman's `BASICAuthenticationPolicy`) against static identities.
//!
//! As in Apiman: transport security is checked first (10011) when required; a missing, blank
//! or non-`Basic` `Authorization` header is 10004 (or passes, with `requireBasicAuth: false`);
//! the credentials are split at the first `:` and checked; a success forwards the user name in
//! `forwardIdentityHttpHeader` and removes `Authorization`, so the credentials never reach the
//! backend. Every failure is a 401 with `WWW-Authenticate: Basic realm="<realm>"` and the message
//! `BASIC authentication failed.`.
//!
//! Passwords are kept as Apiman stores them (plain text), or hashed as LDAP writes them:
//! `{SHA256}` / `{SHA512}` (base64 of the digest) and `{SSHA256}` / `{SSHA512}` (base64 of the
//! digest of password + salt, then the salt). Plain passwords are kept only as a SHA-256 digest,
//! and every comparison is constant-time. Slow hashes (bcrypt, crypt) are refused: verifying one
//! takes tens of milliseconds of the Envoy worker thread, for every attempt, including an
//! attacker's endless wrong ones, which no cache can absorb.
//!
//! LDAP and JDBC identity sources cannot run in a wasm filter (no sockets but Envoy's HTTP
//! call-outs): a configuration with one is refused, naming External Authorization (`ext-authz`)
//! with a small service in front of the directory as the replacement.
//!
//! Beyond Apiman: a static identity may carry `roles` (for Authorization); a request that passes
//! anonymously (`requireBasicAuth: false`) has the client's own `forwardIdentityHttpHeader`
//! removed, so a backend that trusts the header cannot be lied to; the transport check accepts
//! `X-Forwarded-Proto: https` only from a trusted proxy.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};
use sha2::{Digest, Sha256, Sha512};

use super::transport;
use super::{
    Capabilities, Context, FailureType, FieldDoc, Phase, PhaseSet, Policy, PolicyFailure,
    PolicyKind, Verdict,
};
use crate::http::Request;
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "basic-auth",
    name: "BASIC Authentication",
    apiman_names: &[
        "BASICAuthenticationPolicy",
        "BasicAuthenticationPolicy",
        "basic-auth-policy",
    ],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Authenticates requests with HTTP BASIC credentials against static identities (plain or salted SHA-2 passwords); the credentials never reach the backend.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "401 Authentication, `BASIC authentication failed.`, with `WWW-Authenticate: Basic realm=\"<realm>\"`: 10004 no BASIC credentials, 10003 wrong credentials, 10011 not over TLS",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "realm",
            aliases: &[],
            ty: "string",
            default: "Apiman",
            apiman: true,
            meaning: "the realm in `WWW-Authenticate`",
        },
        FieldDoc {
            name: "forwardIdentityHttpHeader",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "send the authenticated user name to the backend in this header (a client's own value is always removed)",
        },
        FieldDoc {
            name: "requireTransportSecurity",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "refuse requests not received over TLS: a TLS connection, or `X-Forwarded-Proto: https` from a proxy in `gateway.trustedProxies` (or with `gateway.trustedHops`; Envoy keeps that header only with `xff_num_trusted_hops` ≥ 1)",
        },
        FieldDoc {
            name: "requireBasicAuth",
            aliases: &[],
            ty: "boolean",
            default: "true",
            apiman: true,
            meaning: "`false`: requests without BASIC credentials pass unauthenticated (wrong credentials still fail)",
        },
        FieldDoc {
            name: "staticIdentity",
            aliases: &[],
            ty: "object",
            default: "",
            apiman: true,
            meaning: "the identities requests are checked against",
        },
        FieldDoc {
            name: "staticIdentity.identities",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "one per user",
        },
        FieldDoc {
            name: "staticIdentity.identities[].username",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the user name (case-sensitive; no `:`)",
        },
        FieldDoc {
            name: "staticIdentity.identities[].password",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the password in plain text, or hashed: `{SHA256}`, `{SHA512}`, `{SSHA256}` or `{SSHA512}` followed by base64 (of the digest, then the salt for the salted forms), as OpenLDAP's `pw-sha2` module writes them (`slappasswd -h {SSHA512}`)",
        },
        FieldDoc {
            name: "staticIdentity.identities[].isHash",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "the password must be one of the hashed forms (a hash tollgate cannot check, such as bcrypt, then refuses the configuration); hashed forms are recognised without it",
        },
        FieldDoc {
            name: "staticIdentity.identities[].roles",
            aliases: &[],
            ty: "[string]",
            default: "",
            apiman: false,
            meaning: "the user's roles, for Authorization policies after this one (without `roles` on any identity, no roles are extracted, as in Apiman)",
        },
        FieldDoc {
            name: "ldapIdentity",
            aliases: &[],
            ty: "object",
            default: "",
            apiman: true,
            meaning: "refused: a wasm filter cannot reach LDAP; use `ext-authz` with a service that checks the directory",
        },
        FieldDoc {
            name: "jdbcIdentity",
            aliases: &[],
            ty: "object",
            default: "",
            apiman: true,
            meaning: "refused: a wasm filter cannot reach a database; use `ext-authz` with a service that checks it",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"realm": "Orders", "forwardIdentityHttpHeader": "X-Authenticated-User",
                 "requireTransportSecurity": true, "requireBasicAuth": true,
                 "staticIdentity": {"identities": [
                   {"username": "alice", "password": "s3cret", "roles": ["reader"]},
                   {"username": "bob", "isHash": true, "roles": ["reader", "admin"],
                    "password": "{SSHA512}k+U8fd3EuFLE+wZcpIQVGRo/TsNgAlrA15RH0LWMZiS/C4GgUiHui7QPzQ8Qy5JlXF59M86nN8u2DyJANZ3B4HRvbGxnYXRl"}]}}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

/// Apiman's failure codes.
pub const AUTH_FAILED: u32 = 10003;
pub const AUTH_REQUIRED: u32 = 10004;
pub const TRANSPORT_SECURITY_REQUIRED: u32 = 10011;

const MESSAGE: &str = "BASIC authentication failed.";

/// Instead of an identity source that cannot run in a wasm filter.
const USE_EXT_AUTHZ: &str = "use the ext-authz policy instead, with a small HTTP service that checks the credentials (it receives the request's Authorization header and answers 200 with the user in x-auth-user and the roles in x-auth-roles, or 401)";

/// Base64 as LDAP tools write it, with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a password is kept.
#[derive(Clone, PartialEq, Eq)]
enum Secret {
    /// A plain password, kept as its SHA-256 digest.
    Plain([u8; 32]),
    /// `{SHA256}` (no salt) or `{SSHA256}`.
    Sha256 { digest: Vec<u8>, salt: Vec<u8> },
    /// `{SHA512}` (no salt) or `{SSHA512}`.
    Sha512 { digest: Vec<u8>, salt: Vec<u8> },
}

impl std::fmt::Debug for Secret {
    // Never print a password or its digest.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Secret::Plain(digest) => constant_time_eq(&Sha256::digest(password), digest),
            Secret::Sha256 { digest, salt } => {
                let mut h = Sha256::new();
                h.update(password);
                h.update(salt);
                constant_time_eq(&h.finalize(), digest)
            }
            Secret::Sha512 { digest, salt } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                constant_time_eq(&h.finalize(), digest)
            }
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a digest matched.
/// Lengths are not secret (they are the digest sizes).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Hash schemes recognised by their `{SCHEME}` prefix: (name, salted, digest length).
const SCHEMES: &[(&str, bool, usize)] = &[
    ("SHA256", false, 32),
    ("SSHA256", true, 32),
    ("SHA512", false, 64),
    ("SSHA512", true, 64),
];

/// Prefixes of password hashes tollgate does not check (bcrypt, crypt(3), Apache MD5, LDAP's
/// SHA-1 and MD5 forms).
const UNSUPPORTED: &[&str] = &[
    "$2a$", "$2b$", "$2x$", "$2y$", "$apr1$", "$1$", "$5$", "$6$", "{SHA}", "{SSHA}", "{MD5}",
    "{SMD5}", "{CRYPT}", "{BCRYPT}", "{PBKDF2",
];

const SUPPORTED_FORMS: &str = "{SHA256}, {SSHA256}, {SHA512} or {SSHA512} followed by base64";

/// Reads a password: a recognised hash, or plain text.
fn secret(password: &str, is_hash: bool) -> Result<Secret, String> {
    if let Some((scheme, rest)) = password.strip_prefix('{').and_then(|p| p.split_once('}')) {
        if let Some(&(name, salted, len)) = SCHEMES
            .iter()
            .find(|(name, _, _)| name.eq_ignore_ascii_case(scheme))
        {
            let bytes = BASE64
                .decode(rest.trim())
                .map_err(|_| format!("the {{{name}}} hash is not valid base64"))?;
            let ok = if salted {
                bytes.len() > len
            } else {
                bytes.len() == len
            };
            if !ok {
                return Err(format!(
                    "a {{{name}}} hash is {} bytes{}, found {}",
                    len,
                    if salted { " of digest then a salt" } else { "" },
                    bytes.len()
                ));
            }
            let (digest, salt) = bytes.split_at(len);
            let (digest, salt) = (digest.to_vec(), salt.to_vec());
            return Ok(if len == 32 {
                Secret::Sha256 { digest, salt }
            } else {
                Secret::Sha512 { digest, salt }
            });
        }
    }
    if is_hash {
        let slow = UNSUPPORTED
            .iter()
            .find(|p| starts_with_ignore_case(password, p));
        return Err(match slow {
            Some(prefix) => format!(
                "{prefix}… hashes are not supported (a slow hash would hold the Envoy worker for every attempt, and SHA-1/MD5 forms are broken); re-hash the password as {SUPPORTED_FORMS}, or check it in a service with the ext-authz policy"
            ),
            None => format!("isHash is true but the password is not a hash tollgate knows: expected {SUPPORTED_FORMS}"),
        });
    }
    Ok(Secret::Plain(Sha256::digest(password.as_bytes()).into()))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

#[derive(Debug)]
struct StaticIdentity {
    username: String,
    secret: Secret,
    roles: Option<Vec<String>>,
}

pub struct BasicAuth {
    /// `Basic realm="..."`.
    challenge: String,
    forward_header: Option<String>,
    require_tls: bool,
    require_credentials: bool,
    identities: Vec<StaticIdentity>,
    /// Whether any identity carries `roles`: then every authenticated user has roles (maybe
    /// none); else none are extracted, as in Apiman.
    roles_configured: bool,
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<BasicAuth> {
    let mut ok = true;
    let realm = f
        .string(&["realm"], problems)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "Apiman".to_string());
    if realm.chars().any(char::is_control) {
        problems.error(
            &f.field_path("realm"),
            "must not contain control characters",
        );
        ok = false;
    }
    let forward_header = f
        .string(&["forwardIdentityHttpHeader"], problems)
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty());
    if let Some(h) = &forward_header {
        if !h.bytes().all(crate::http::is_token_byte) {
            problems.error(
                &f.field_path("forwardIdentityHttpHeader"),
                format!("\"{h}\" is not a valid header name"),
            );
            ok = false;
        }
    }
    let require_tls = f
        .bool(&["requireTransportSecurity"], problems)
        .unwrap_or(false);
    let require_credentials = f.bool(&["requireBasicAuth"], problems).unwrap_or(true);

    let mut identities = Vec::new();
    let mut has_source = false;
    if let Some(mut source) = f.object(&["staticIdentity"], problems) {
        has_source = true;
        for (path, value) in source.array(&["identities"], problems) {
            let Some(mut id) = Fields::of(value, &path, problems) else {
                ok = false;
                continue;
            };
            match identity(&mut id, problems) {
                Some(i) => identities.push(i),
                None => ok = false,
            }
            id.finish(problems);
        }
        source.finish(problems);
    }
    for (field, what) in [
        ("ldapIdentity", "LDAP"),
        ("jdbcIdentity", "JDBC (database)"),
    ] {
        if f.raw(&[field]).is_some() {
            problems.error(
                &f.field_path(field),
                format!("{what} identity sources cannot run inside a wasm filter (it can open no connection but Envoy's HTTP call-outs); {USE_EXT_AUTHZ}"),
            );
            ok = false;
            has_source = true;
        }
    }
    if ok && identities.is_empty() {
        problems.warning(
            f.path(),
            if has_source {
                "staticIdentity has no identities: every request with credentials is refused"
            } else {
                "no identity source (staticIdentity): every request with credentials is refused, as in Apiman"
            },
        );
    }
    let roles_configured = identities.iter().any(|i| i.roles.is_some());
    ok.then(|| BasicAuth {
        challenge: format!("Basic realm=\"{}\"", quote(&realm)),
        forward_header,
        require_tls,
        require_credentials,
        identities,
        roles_configured,
    })
}

fn identity(id: &mut Fields, problems: &mut Problems) -> Option<StaticIdentity> {
    let username = id.string(&["username"], problems);
    let password = id.string(&["password"], problems);
    let is_hash = id.bool(&["isHash"], problems).unwrap_or(false);
    let roles = id.has("roles").then(|| {
        id.strings(&["roles"], problems)
            .into_iter()
            .map(|(_, r)| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect::<Vec<_>>()
    });
    let username = match username {
        None => {
            problems.error(&id.field_path("username"), "is required");
            return None;
        }
        Some(u) if u.is_empty() => {
            problems.error(&id.field_path("username"), "must not be empty");
            return None;
        }
        // BASIC splits user and password at the first colon: such a user could never log in.
        Some(u) if u.contains(':') || u.chars().any(char::is_control) => {
            problems.error(
                &id.field_path("username"),
                "must not contain `:` or control characters (BASIC could never carry it)",
            );
            return None;
        }
        Some(u) => u,
    };
    let Some(password) = password else {
        problems.error(&id.field_path("password"), "is required");
        return None;
    };
    if !is_hash {
        if let Some(prefix) = UNSUPPORTED
            .iter()
            .find(|p| starts_with_ignore_case(&password, p))
        {
            problems.warning(
                &id.field_path("password"),
                format!("looks like a {prefix}… hash but isHash is not set: it is compared as a plain password, as Apiman does"),
            );
        }
    }
    match secret(&password, is_hash) {
        Ok(secret) => Some(StaticIdentity {
            username,
            secret,
            roles,
        }),
        Err(message) => {
            problems.error(&id.field_path("password"), message);
            None
        }
    }
}

/// A quoted-string's content (RFC 9110): backslash and quote escaped.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The user name and password of a `Basic` credential, or `None` if it cannot be read (not
/// base64, no `:` or an empty user name: Apiman then has no password and fails the check).
fn credentials(token: &str) -> Option<(String, Vec<u8>)> {
    let decoded = BASE64.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    if colon == 0 {
        return None;
    }
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

impl BasicAuth {
    fn fail(&self, code: u32) -> Verdict {
        let mut failure = PolicyFailure::new(FailureType::Authentication, code, MESSAGE);
        failure
            .headers
            .push(("WWW-Authenticate".to_string(), self.challenge.clone()));
        Verdict::Fail(failure)
    }

    /// The identity whose user name and password these are.
    fn check(&self, user: &str, password: &[u8]) -> Option<&StaticIdentity> {
        let mut found = None;
        let mut tried = false;
        for id in self.identities.iter().filter(|i| i.username == user) {
            tried = true;
            if id.secret.verify(password) && found.is_none() {
                found = Some(id);
            }
        }
        if !tried {
            // Spend what a known user's check spends, so timing does not tell who exists.
            let _ = DUMMY.verify(password);
        }
        found
    }

    /// A request passing without credentials (`requireBasicAuth: false`): it may not name its
    /// own identity for the backend.
    fn anonymous(&self, request: &mut Request) -> Verdict {
        if let Some(h) = &self.forward_header {
            request.headers.remove(h);
        }
        Verdict::Continue
    }
}

/// What an unknown user's password is checked against.
const DUMMY: Secret = Secret::Plain([0; 32]);

impl Policy for BasicAuth {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        if self.require_tls && !transport::is_secure(cx, &request.headers) {
            return self.fail(TRANSPORT_SECURITY_REQUIRED);
        }
        let token = request
            .headers
            .get("authorization")
            .filter(|h| starts_with_ignore_case(h, "basic "))
            .and_then(|h| h.get(6..));
        let Some(token) = token else {
            // None, blank, or another scheme (a bearer token for a later policy, say).
            return if self.require_credentials {
                self.fail(AUTH_REQUIRED)
            } else {
                self.anonymous(request)
            };
        };
        let Some((user, password)) = credentials(token) else {
            return self.fail(AUTH_FAILED);
        };
        let Some(id) = self.check(&user, &password) else {
            return self.fail(AUTH_FAILED);
        };
        if let Some(h) = &self.forward_header {
            request.headers.set(h, &id.username);
        }
        request.headers.remove("authorization");
        let roles = self
            .roles_configured
            .then(|| id.roles.clone().unwrap_or_default());
        let identity = cx.identity_mut();
        identity.principal = Some(id.username.clone());
        identity.authenticated_by = Some(KIND.id);
        if roles.is_some() {
            identity.roles = roles;
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::TrustedProxies;
    use crate::http::HeaderOp;
    use crate::policy::testing::*;
    use serde_json::json;

    const ALICE: &str = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret
    const BOB: &str = "Basic Ym9iOmh1bnRlcjI="; // bob:hunter2

    fn config(extra: serde_json::Value) -> serde_json::Value {
        let mut config = json!({"staticIdentity": {"identities": [
            {"username": "alice", "password": "s3cret"},
            {"username": "bob", "password": "{SSHA512}k+U8fd3EuFLE+wZcpIQVGRo/TsNgAlrA15RH0LWMZiS/C4GgUiHui7QPzQ8Qy5JlXF59M86nN8u2DyJANZ3B4HRvbGxnYXRl"}
        ]}});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        config
    }

    fn policy(extra: serde_json::Value) -> Box<dyn Policy> {
        compile(&KIND, config(extra))
    }

    fn basic(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    fn run(p: &dyn Policy, headers: &[(&str, &str)]) -> (Verdict, Request, Fixture) {
        let mut f = Fixture::new();
        let mut req = request("GET", headers);
        let v = f.on_request(p, &mut req);
        (v, req, f)
    }

    #[test]
    fn a_plain_static_identity_authenticates_and_becomes_the_principal() {
        let (v, _, f) = run(policy(json!({})).as_ref(), &[("authorization", ALICE)]);
        assert!(is_continue(&v));
        assert_eq!(f.state.identity.principal.as_deref(), Some("alice"));
        assert_eq!(f.state.identity.authenticated_by, Some("basic-auth"));
    }

    #[test]
    fn the_authorization_header_never_reaches_the_backend() {
        let (_, req, _) = run(policy(json!({})).as_ref(), &[("authorization", ALICE)]);
        assert!(req.headers.get("authorization").is_none());
        assert!(req
            .headers
            .ops()
            .contains(&HeaderOp::Remove("authorization".into())));
    }

    #[test]
    fn a_salted_sha512_password_authenticates() {
        let (v, _, _) = run(policy(json!({})).as_ref(), &[("authorization", BOB)]);
        assert!(is_continue(&v));
    }

    #[test]
    fn every_supported_hash_form_verifies_its_password() {
        for password in [
            "{SHA256}HsHCa1DV08WNlYMYGvgHZlX+AHVr9yhZQLo2cPmfy6A=",
            "{SSHA256}NFnrZ4I2KBrjok8Ee5pdgCS9iewkIM8pGSBlVDxCQZx0b2xsZ2F0ZQ==",
            "{SHA512}lcia3d5QY1fsXv0O5BrCQe/W+xAJp2gMFQHqgXA0K4y/Dy2Ti1YpVJDxnx/F+ijQmxWE6qCcmmsvd3YjKZzVIQ==",
            "{ssha512}rYsEe04iowkHlRfv8yIqqhfyEGwfg0n/09HnQLsDTtdrTAsgTKVSsv53UORDXUupOZ8rx78kv5Jw56v411OGBXRvbGxnYXRl",
        ] {
            let s = secret(password, true).unwrap();
            assert!(s.verify(b"s3cret"), "{password}");
            assert!(!s.verify(b"s3cret "), "{password}");
        }
    }

    #[test]
    fn a_plain_password_is_kept_only_as_a_digest() {
        let s = secret("s3cret", false).unwrap();
        assert!(matches!(s, Secret::Plain(_)));
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn a_wrong_password_is_401_with_code_10003_and_the_realm() {
        let p = policy(json!({"realm": "Orders"}));
        let f = failure(run(p.as_ref(), &[("authorization", &basic("alice:wrong"))]).0);
        assert_eq!(
            (f.failure_type, f.code, f.status()),
            (FailureType::Authentication, 10003, 401)
        );
        assert_eq!(f.message, "BASIC authentication failed.");
        assert_eq!(
            f.headers,
            vec![(
                "WWW-Authenticate".to_string(),
                "Basic realm=\"Orders\"".to_string()
            )]
        );
    }

    #[test]
    fn an_unknown_user_is_10003() {
        let p = policy(json!({}));
        let f = failure(run(p.as_ref(), &[("authorization", &basic("carol:s3cret"))]).0);
        assert_eq!(f.code, 10003);
    }

    #[test]
    fn no_credentials_is_10004_with_the_default_realm_apiman() {
        let p = policy(json!({}));
        for headers in [
            vec![],
            vec![("authorization", "  ")],
            vec![("authorization", "Bearer abc")],
        ] {
            let f = failure(run(p.as_ref(), &headers).0);
            assert_eq!((f.code, f.status()), (10004, 401));
            assert_eq!(f.headers[0].1, "Basic realm=\"Apiman\"");
        }
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let p = policy(json!({}));
        let (v, _, _) = run(p.as_ref(), &[("authorization", "bAsIc YWxpY2U6czNjcmV0")]);
        assert!(is_continue(&v));
    }

    #[test]
    fn a_password_may_contain_colons() {
        let p = compile(
            &KIND,
            json!({"staticIdentity": {"identities": [{"username": "u", "password": "a:b:c"}]}}),
        );
        assert!(is_continue(
            &run(p.as_ref(), &[("authorization", &basic("u:a:b:c"))]).0
        ));
    }

    #[test]
    fn credentials_without_a_colon_or_user_fail() {
        let p = policy(json!({}));
        for token in [basic("alice"), basic(":s3cret"), "Basic !!!".to_string()] {
            assert_eq!(
                failure(run(p.as_ref(), &[("authorization", &token)]).0).code,
                10003,
                "{token}"
            );
        }
    }

    #[test]
    fn require_basic_auth_false_lets_anonymous_and_bearer_requests_through_untouched() {
        let p = policy(json!({"requireBasicAuth": false}));
        let (v, req, f) = run(p.as_ref(), &[("authorization", "Bearer t")]);
        assert!(is_continue(&v));
        assert_eq!(req.headers.get("authorization"), Some("Bearer t"));
        assert_eq!(f.state.identity.principal, None);
        assert!(is_continue(&run(p.as_ref(), &[]).0));
    }

    #[test]
    fn require_basic_auth_false_still_refuses_wrong_credentials() {
        let p = policy(json!({"requireBasicAuth": "false"}));
        let f = failure(run(p.as_ref(), &[("authorization", &basic("alice:x"))]).0);
        assert_eq!(f.code, 10003);
    }

    #[test]
    fn the_identity_header_is_forwarded_and_cannot_be_forged() {
        let p = policy(json!({"forwardIdentityHttpHeader": "X-Authenticated-User",
                              "requireBasicAuth": false}));
        let (_, req, _) = run(
            p.as_ref(),
            &[("authorization", ALICE), ("x-authenticated-user", "root")],
        );
        assert_eq!(
            req.headers
                .get_all("x-authenticated-user")
                .collect::<Vec<_>>(),
            vec!["alice"]
        );
        let (_, req, _) = run(p.as_ref(), &[("x-authenticated-user", "root")]);
        assert_eq!(req.headers.get("x-authenticated-user"), None);
    }

    #[test]
    fn static_identities_extract_no_roles_unless_configured() {
        let (_, _, f) = run(policy(json!({})).as_ref(), &[("authorization", ALICE)]);
        assert_eq!(f.state.identity.roles, None);
    }

    #[test]
    fn configured_roles_are_extracted_and_a_user_without_them_has_none() {
        let p = compile(
            &KIND,
            json!({"staticIdentity": {"identities": [
                {"username": "alice", "password": "s3cret", "roles": ["reader", " admin "]},
                {"username": "bob", "password": "hunter2"}
            ]}}),
        );
        let (_, _, f) = run(p.as_ref(), &[("authorization", ALICE)]);
        assert_eq!(
            f.state.identity.roles,
            Some(vec!["reader".to_string(), "admin".to_string()])
        );
        let (_, _, f) = run(p.as_ref(), &[("authorization", BOB)]);
        assert_eq!(f.state.identity.roles, Some(vec![]));
    }

    #[test]
    fn transport_security_is_checked_first_with_code_10011() {
        let p = policy(json!({"requireTransportSecurity": true}));
        let f = failure(run(p.as_ref(), &[("authorization", ALICE)]).0);
        assert_eq!((f.code, f.status()), (10011, 401));
        assert_eq!(f.headers[0].0, "WWW-Authenticate");
    }

    #[test]
    fn a_tls_connection_satisfies_transport_security() {
        let p = policy(json!({"requireTransportSecurity": true}));
        let mut f = Fixture::new();
        f.host
            .properties
            .insert("connection.tls_version".into(), b"TLSv1.3".to_vec());
        let v = f.on_request(p.as_ref(), &mut request("GET", &[("authorization", ALICE)]));
        assert!(is_continue(&v));
    }

    #[test]
    fn forwarded_https_counts_only_from_a_trusted_proxy() {
        let p = policy(json!({"requireTransportSecurity": true}));
        let headers = [("authorization", ALICE), ("x-forwarded-proto", "https")];
        let mut untrusted = Fixture::from("10.0.0.5:4000");
        let v = untrusted.on_request(p.as_ref(), &mut request("GET", &headers));
        assert_eq!(failure(v).code, 10011);
        let mut trusted = Fixture::from("10.0.0.5:4000");
        trusted.settings.trusted_proxies = TrustedProxies {
            networks: vec!["10.0.0.0/8".parse().unwrap()],
            hops: 0,
        };
        assert!(is_continue(
            &trusted.on_request(p.as_ref(), &mut request("GET", &headers))
        ));
    }

    #[test]
    fn without_transport_security_no_property_is_read() {
        let p = policy(json!({}));
        let (_, _, f) = run(p.as_ref(), &[("authorization", ALICE)]);
        assert_eq!(f.host.calls.property, 0);
    }

    #[test]
    fn the_realm_is_quoted_safely() {
        let p = policy(json!({"realm": "a \"b\" \\c"}));
        let f = failure(run(p.as_ref(), &[]).0);
        assert_eq!(f.headers[0].1, "Basic realm=\"a \\\"b\\\" \\\\c\"");
    }

    #[test]
    fn ldap_and_jdbc_sources_are_refused_naming_ext_authz() {
        let e = errors(
            &KIND,
            json!({"ldapIdentity": {"url": "ldap://x"}, "jdbcIdentity": {"type": "url"}}),
        );
        assert_eq!(e.len(), 2);
        assert!(
            e[0].starts_with(
                "config.ldapIdentity: LDAP identity sources cannot run inside a wasm filter"
            ),
            "{}",
            e[0]
        );
        assert!(e[1].starts_with("config.jdbcIdentity: JDBC"), "{}", e[1]);
        assert!(e.iter().all(|m| m.contains("ext-authz")));
    }

    #[test]
    fn bcrypt_hashes_are_refused_with_what_to_do_instead() {
        let e = errors(
            &KIND,
            json!({"staticIdentity": {"identities": [{"username": "u", "isHash": true,
                "password": "$2y$10$abcdefghijklmnopqrstuuJ3Pq0mXqvS4d3R9o1c5h2u0T9x8Zp6e"}]}}),
        );
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "config.staticIdentity.identities[0].password: $2y$… hashes are not supported"
            ),
            "{}",
            e[0]
        );
        assert!(e[0].contains("{SSHA512}"));
    }

    #[test]
    fn is_hash_without_a_known_hash_is_refused() {
        let e = errors(
            &KIND,
            json!({"staticIdentity": {"identities": [{"username": "u", "isHash": true, "password": "plain"}]}}),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("isHash is true but the password is not a hash"));
    }

    #[test]
    fn a_malformed_hash_names_its_path() {
        let e = errors(
            &KIND,
            json!({"staticIdentity": {"identities": [{"username": "u", "password": "{SHA256}AAAA"}]}}),
        );
        assert_eq!(
            e,
            vec!["config.staticIdentity.identities[0].password: a {SHA256} hash is 32 bytes, found 3"]
        );
    }

    #[test]
    fn a_user_name_with_a_colon_is_refused() {
        let e = errors(
            &KIND,
            json!({"staticIdentity": {"identities": [{"username": "a:b", "password": "p"}]}}),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("config.staticIdentity.identities[0].username:"));
    }

    #[test]
    fn no_identity_source_is_a_warning_not_an_error() {
        let (p, problems) = crate::policy::testing::build(&KIND, json!({"realm": "x"}), &|_| None);
        assert!(p.is_some());
        assert_eq!(problems.warnings.len(), 1);
        assert!(problems.warnings[0].contains("no identity source"));
    }

    #[test]
    fn constant_time_eq_compares_whole_digests() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
