//! BASIC authentication, as Apiman's gateway configures its REST API: one user and a password
//! read from a file (never from the command line, which every local user can read). Credentials
//! are compared as SHA-256 digests in constant time, so the answer's timing does not tell how
//! much of a guess was right.

use base64::Engine;
use sha2::{Digest, Sha256};

pub struct Credentials {
    /// SHA-256 of `user:password`, as the `Authorization: Basic` header carries it.
    digest: [u8; 32],
}

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "tollgate-registry";

impl Credentials {
    /// `password` as read from its file: one trailing line break is not part of it (Apiman
    /// chomps the password the same way).
    pub fn new(user: &str, password: &str) -> Result<Credentials, String> {
        let password = password
            .strip_suffix('\n')
            .map(|p| p.strip_suffix('\r').unwrap_or(p))
            .unwrap_or(password);
        if user.is_empty() || user.contains(':') {
            return Err("the user name must be non-empty and without ':'".into());
        }
        if password.is_empty() {
            return Err("the password is empty".into());
        }
        Ok(Credentials {
            digest: Sha256::digest(format!("{user}:{password}").as_bytes()).into(),
        })
    }

    /// Reads the password from `path`.
    pub fn from_file(user: &str, path: &std::path::Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("password file {}: {e}", path.display()))?;
        Credentials::new(user, &text).map_err(|e| format!("password file {}: {e}", path.display()))
    }

    /// Whether an `Authorization` header carries these credentials.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization.map(str::trim) else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(token.trim()) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(&decoded).into();
        constant_time_eq(&presented, &self.digest)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keeps the compiler from turning the loop into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(up: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(up)
        )
    }

    #[test]
    fn the_configured_user_and_password_are_accepted() {
        let c = Credentials::new("apiman", "s3cret\n").unwrap();
        assert!(c.accepts(Some(&basic("apiman:s3cret"))));
        assert!(c.accepts(Some(&basic("apiman:s3cret").replace("Basic", "basic"))));
    }

    #[test]
    fn anything_else_is_refused() {
        let c = Credentials::new("apiman", "s3cret").unwrap();
        for header in [
            None,
            Some(basic("apiman:s3cre")),
            Some(basic("apiman:s3cret ")),
            Some(basic("other:s3cret")),
            Some(basic("apiman")),
            Some("Bearer abc".to_string()),
            Some("Basic !!!".to_string()),
        ] {
            assert!(!c.accepts(header.as_deref()), "{header:?}");
        }
    }

    #[test]
    fn an_empty_password_file_is_refused() {
        assert!(Credentials::new("apiman", "\n").is_err());
    }
}
