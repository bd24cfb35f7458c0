//! Verification keys: the algorithms tollgate accepts, keys parsed once from PEM, base64 DER,
//! X.509 certificates, JWK and JWKS, and the signature check (jwt-simple).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike, ECDSAP384PublicKeyLike, ES256PublicKey, ES384PublicKey,
    Ed25519PublicKey, EdDSAPublicKeyLike, HS256Key, HS384Key, HS512Key, MACLike, PS256PublicKey,
    PS384PublicKey, PS512PublicKey, RS256PublicKey, RS384PublicKey, RS512PublicKey,
    RSAPublicKeyLike,
};
use jwt_simple::claims::NoCustomClaims;
use jwt_simple::common::VerificationOptions;
use jwt_simple::prelude::{Duration as JwtDuration, UnixTimeStamp};
use jwt_simple::JWTError;
use serde_json::{Map, Value};

use super::der::{self, SpkiKind};

/// JWS algorithms tollgate can verify (jwt-simple's pure-Rust build).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// Accepted unless configured otherwise: every asymmetric algorithm. HMAC must be asked
    /// for, so that a public key can never be taken for a shared secret.
    pub const DEFAULT: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The JOSE name, exactly (`alg` values are case-sensitive).
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }
}

/// RSA public key, ready for each RSA algorithm.
pub struct RsaKey {
    rs256: RS256PublicKey,
    rs384: RS384PublicKey,
    rs512: RS512PublicKey,
    ps256: PS256PublicKey,
    ps384: PS384PublicKey,
    ps512: PS512PublicKey,
    bits: usize,
}

pub enum KeyMaterial {
    Rsa(Box<RsaKey>),
    P256(ES256PublicKey),
    P384(ES384PublicKey),
    Ed25519(Ed25519PublicKey),
    /// An HMAC secret (HS256/384/512).
    Hmac(Vec<u8>),
}

impl KeyMaterial {
    fn supports(&self, alg: Alg) -> bool {
        match self {
            KeyMaterial::Rsa(_) => matches!(
                alg,
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ),
            KeyMaterial::P256(_) => alg == Alg::ES256,
            KeyMaterial::P384(_) => alg == Alg::ES384,
            KeyMaterial::Ed25519(_) => alg == Alg::EdDSA,
            KeyMaterial::Hmac(_) => alg.is_hmac(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            KeyMaterial::Rsa(k) => format!("RSA-{}", k.bits),
            KeyMaterial::P256(_) => "EC P-256".to_string(),
            KeyMaterial::P384(_) => "EC P-384".to_string(),
            KeyMaterial::Ed25519(_) => "Ed25519".to_string(),
            KeyMaterial::Hmac(s) => format!("HMAC secret of {} bytes", s.len()),
        }
    }

    fn rsa(rs256: RS256PublicKey) -> Result<KeyMaterial, String> {
        let c = rs256.to_components();
        let err = |e: jwt_simple::Error| format!("invalid RSA key: {e}");
        Ok(KeyMaterial::Rsa(Box::new(RsaKey {
            rs384: RS384PublicKey::from_components(&c.n, &c.e).map_err(err)?,
            rs512: RS512PublicKey::from_components(&c.n, &c.e).map_err(err)?,
            ps256: PS256PublicKey::from_components(&c.n, &c.e).map_err(err)?,
            ps384: PS384PublicKey::from_components(&c.n, &c.e).map_err(err)?,
            ps512: PS512PublicKey::from_components(&c.n, &c.e).map_err(err)?,
            bits: c.n.iter().skip_while(|b| **b == 0).count() * 8,
            rs256,
        })))
    }

    /// A DER SubjectPublicKeyInfo, PKCS#1 RSA public key, or X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<KeyMaterial, String> {
        if der::is_pkcs1_rsa(der) {
            return RS256PublicKey::from_der(der)
                .map_err(|e| format!("invalid RSA public key: {e}"))
                .and_then(KeyMaterial::rsa);
        }
        let spki = der::certificate_spki(der).unwrap_or(der);
        let bad = |e: jwt_simple::Error| format!("invalid public key: {e}");
        match der::spki_kind(spki)? {
            SpkiKind::Rsa => RS256PublicKey::from_der(spki)
                .map_err(bad)
                .and_then(KeyMaterial::rsa),
            SpkiKind::P256 => ES256PublicKey::from_der(spki)
                .map(KeyMaterial::P256)
                .map_err(bad),
            SpkiKind::P384 => ES384PublicKey::from_der(spki)
                .map(KeyMaterial::P384)
                .map_err(bad),
            SpkiKind::Ed25519 => Ed25519PublicKey::from_der(spki)
                .map(KeyMaterial::Ed25519)
                .map_err(bad),
        }
    }
}

/// One key of a key set.
pub struct KeyEntry {
    pub kid: Option<String>,
    /// The JWK's `alg`: the key is used for that algorithm only.
    pub alg: Option<Alg>,
    pub key: KeyMaterial,
}

impl KeyEntry {
    pub fn supports(&self, alg: Alg) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.key.supports(alg)
    }
}

/// The keys a policy verifies with: configured inline, or a fetched JWKS.
#[derive(Default)]
pub struct KeySet {
    pub entries: Vec<KeyEntry>,
}

/// Which keys may have signed a token.
pub enum Selection<'a> {
    Keys(Vec<&'a KeyEntry>),
    /// The token (or the configuration) names a key the set does not have.
    UnknownKid,
    /// No key of the set can verify this algorithm (e.g. HS256 against RSA keys).
    NoKeyForAlg,
}

/// Tokens without a `kid` are tried against at most this many keys: each try of an RSA key
/// costs milliseconds in wasm.
pub const MAX_KEYS_TRIED: usize = 3;

impl KeySet {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys that may verify a token signed with `alg` by key `kid`. A key without a `kid` (a
    /// single configured key) matches any `kid`, as in Apiman.
    pub fn select(&self, kid: Option<&str>, alg: Alg) -> Selection<'_> {
        let named: Vec<&KeyEntry> = match kid {
            Some(kid) => {
                let named: Vec<&KeyEntry> = self
                    .entries
                    .iter()
                    .filter(|e| e.kid.as_deref().is_none_or(|k| k == kid))
                    .collect();
                if named.is_empty() {
                    return Selection::UnknownKid;
                }
                named
            }
            None => self.entries.iter().collect(),
        };
        let usable: Vec<&KeyEntry> = named
            .into_iter()
            .filter(|e| e.supports(alg))
            .take(MAX_KEYS_TRIED)
            .collect();
        if usable.is_empty() {
            Selection::NoKeyForAlg
        } else {
            Selection::Keys(usable)
        }
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.entries.iter().any(|e| e.kid.as_deref() == Some(kid))
    }
}

/// Base64url as JWS writes it (no padding); padding is tolerated in keys, not in tokens.
pub const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Standard or URL-safe base64, whitespace ignored.
pub fn base64_any(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    B64_LENIENT
        .decode(&compact)
        .or_else(|_| B64URL_LENIENT.decode(&compact))
        .ok()
}

fn jwk_bytes(jwk: &Map<String, Value>, field: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{field}` is missing"))?;
    B64URL_LENIENT
        .decode(text)
        .map_err(|_| format!("`{field}` is not base64url"))
}

/// One JWK. `oct` keys (shared secrets) only where `allow_secret`.
pub fn parse_jwk(jwk: &Map<String, Value>, allow_secret: bool) -> Result<KeyEntry, String> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    if let Some(usage) = jwk.get("use").and_then(Value::as_str) {
        if usage != "sig" {
            return Err(format!("a key for `use: {usage}`, not for signatures"));
        }
    }
    let alg =
        match jwk.get("alg").and_then(Value::as_str) {
            None => None,
            Some(name) => Some(Alg::parse(name).ok_or_else(|| {
                format!("a key for algorithm {name}, which tollgate cannot verify")
            })?),
        };
    let bad = |e: jwt_simple::Error| format!("invalid {kty} key: {e}");
    let key = match kty {
        "RSA" => RS256PublicKey::from_components(&jwk_bytes(jwk, "n")?, &jwk_bytes(jwk, "e")?)
            .map_err(bad)
            .and_then(KeyMaterial::rsa)?,
        "EC" => {
            let (x, y) = (jwk_bytes(jwk, "x")?, jwk_bytes(jwk, "y")?);
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            match jwk.get("crv").and_then(Value::as_str) {
                Some("P-256") => ES256PublicKey::from_bytes(&point)
                    .map(KeyMaterial::P256)
                    .map_err(bad)?,
                Some("P-384") => ES384PublicKey::from_bytes(&point)
                    .map(KeyMaterial::P384)
                    .map_err(bad)?,
                other => {
                    return Err(format!(
                        "an EC key on curve {}, which tollgate cannot verify",
                        other.unwrap_or("(none)")
                    ))
                }
            }
        }
        "OKP" => match jwk.get("crv").and_then(Value::as_str) {
            Some("Ed25519") => Ed25519PublicKey::from_bytes(&jwk_bytes(jwk, "x")?)
                .map(KeyMaterial::Ed25519)
                .map_err(bad)?,
            other => {
                return Err(format!(
                    "an OKP key on curve {}, which tollgate cannot verify",
                    other.unwrap_or("(none)")
                ))
            }
        },
        "oct" if allow_secret => KeyMaterial::Hmac(jwk_bytes(jwk, "k")?),
        "oct" => return Err("a shared secret (`oct`), refused from a remote key set".to_string()),
        other => return Err(format!("key type `{other}` is not RSA, EC, OKP or oct")),
    };
    if let Some(a) = alg {
        if !key.supports(a) {
            return Err(format!(
                "a {} key marked `alg: {}`",
                key.describe(),
                a.name()
            ));
        }
    }
    Ok(KeyEntry {
        kid: jwk.get("kid").and_then(Value::as_str).map(str::to_string),
        alg,
        key,
    })
}

/// A JWKS (`{"keys": [...]}`) or a single JWK. Keys tollgate cannot use are skipped and
/// reported; a set without any usable key is an error.
pub fn parse_jwks(json: &Value, allow_secret: bool) -> Result<(KeySet, Vec<String>), String> {
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    match json {
        Value::Object(map) if map.contains_key("keys") => {
            let Some(keys) = map.get("keys").and_then(Value::as_array) else {
                return Err("`keys` is not an array".to_string());
            };
            for (i, key) in keys.iter().enumerate() {
                let parsed = key
                    .as_object()
                    .ok_or_else(|| "not an object".to_string())
                    .and_then(|k| parse_jwk(k, allow_secret));
                match parsed {
                    Ok(entry) => set.entries.push(entry),
                    Err(e) => skipped.push(format!("keys[{i}]: {e}")),
                }
            }
        }
        Value::Object(map) if map.contains_key("kty") => {
            set.entries.push(parse_jwk(map, allow_secret)?)
        }
        _ => return Err("neither a JWK nor a JWKS (`{\"keys\": [...]}`)".to_string()),
    }
    if set.is_empty() {
        return Err(match skipped.first() {
            Some(first) => format!("no usable key ({first})"),
            None => "no key".to_string(),
        });
    }
    Ok((set, skipped))
}

/// PEM blocks: public keys, RSA public keys and certificates.
pub fn parse_pem(text: &str) -> Result<Vec<KeyMaterial>, String> {
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after.find("-----").ok_or("an unterminated PEM header")?;
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let end = body_start
            .find(&end_marker)
            .ok_or_else(|| format!("PEM block {label} has no END line"))?;
        let body = &body_start[..end];
        rest = &body_start[end + end_marker.len()..];
        match label {
            "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
                let der =
                    base64_any(body).ok_or_else(|| format!("PEM block {label} is not base64"))?;
                keys.push(KeyMaterial::from_der(&der)?);
            }
            other if other.contains("PRIVATE") => {
                return Err("holds a private key: give the public key or certificate".to_string())
            }
            other => {
                return Err(format!(
                    "PEM block {other} is not a public key or certificate"
                ))
            }
        }
    }
    if keys.is_empty() {
        return Err("no PEM block".to_string());
    }
    Ok(keys)
}

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not verify with this key.
    Invalid,
    /// The token could not be read as a JWS by the verifier.
    Malformed(String),
}

/// Runs `f` in a function of its own. Each verifier's code (RSA, ECDSA, EdDSA, HMAC, inlined
/// from jwt-simple) would otherwise be inlined into one 100 KB function, which V8's optimizing
/// compiler, run on the whole module before Envoy's first request, takes a third of a second
/// over; twelve small functions compile in a fraction of that.
#[inline(never)]
fn apart<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Checks the signature of `token` (compact JWS, `alg` already read from its header) with
/// `key`. Time claims are not checked here: the policy checks them itself, against the host's
/// clock, on every use of a cached token too.
pub fn verify_signature(key: &KeyMaterial, alg: Alg, token: &str) -> Result<(), SignatureError> {
    let options = || {
        Some(VerificationOptions {
            // jwt-simple's own time checks are switched off: "now" is 0 with no tolerance, and
            // tokens from the future are accepted (tollgate checks exp/nbf itself).
            accept_future: true,
            artificial_time: Some(UnixTimeStamp::from_secs(0)),
            time_tolerance: Some(JwtDuration::from_secs(0)),
            max_token_length: None,
            ..VerificationOptions::default()
        })
    };
    let result = match (key, alg) {
        (KeyMaterial::Rsa(k), Alg::RS256) => {
            apart(|| k.rs256.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Rsa(k), Alg::RS384) => {
            apart(|| k.rs384.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Rsa(k), Alg::RS512) => {
            apart(|| k.rs512.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Rsa(k), Alg::PS256) => {
            apart(|| k.ps256.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Rsa(k), Alg::PS384) => {
            apart(|| k.ps384.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Rsa(k), Alg::PS512) => {
            apart(|| k.ps512.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::P256(k), Alg::ES256) => {
            apart(|| k.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::P384(k), Alg::ES384) => {
            apart(|| k.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Ed25519(k), Alg::EdDSA) => {
            apart(|| k.verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Hmac(s), Alg::HS256) => {
            apart(|| HS256Key::from_bytes(s).verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Hmac(s), Alg::HS384) => {
            apart(|| HS384Key::from_bytes(s).verify_token::<NoCustomClaims>(token, options()))
        }
        (KeyMaterial::Hmac(s), Alg::HS512) => {
            apart(|| HS512Key::from_bytes(s).verify_token::<NoCustomClaims>(token, options()))
        }
        _ => return Err(SignatureError::Invalid),
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) => match e.downcast_ref::<JWTError>() {
            Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
                Err(SignatureError::Invalid)
            }
            _ => Err(SignatureError::Malformed(e.to_string())),
        },
    }
}
