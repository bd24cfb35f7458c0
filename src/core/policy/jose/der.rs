//! Just enough DER to find a public key: the SubjectPublicKeyInfo inside an X.509 certificate,
//! the algorithm of a SubjectPublicKeyInfo, and whether bytes are a PKCS#1 RSA public key. The
//! keys themselves are decoded by jwt-simple.

/// One TLV: its tag, its content, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;

/// The whole TLV at the start of `input` (tag and length included).
fn whole(input: &[u8]) -> Option<&[u8]> {
    let (_, _, rest) = tlv(input)?;
    input.get(..input.len() - rest.len())
}

/// The kind of public key a SubjectPublicKeyInfo holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpkiKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const SECP384R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// What `spki` (a DER SubjectPublicKeyInfo) holds, if it is one tollgate knows.
pub fn spki_kind(spki: &[u8]) -> Result<SpkiKind, String> {
    let not_spki = || "not a DER SubjectPublicKeyInfo".to_string();
    let (tag, body, _) = tlv(spki).ok_or_else(not_spki)?;
    if tag != SEQUENCE {
        return Err(not_spki());
    }
    let (tag, algorithm, _) = tlv(body).ok_or_else(not_spki)?;
    if tag != SEQUENCE {
        return Err(not_spki());
    }
    let (tag, oid, params) = tlv(algorithm).ok_or_else(not_spki)?;
    if tag != OID {
        return Err(not_spki());
    }
    match oid {
        RSA_ENCRYPTION => Ok(SpkiKind::Rsa),
        ED25519 => Ok(SpkiKind::Ed25519),
        EC_PUBLIC_KEY => match tlv(params) {
            Some((OID, PRIME256V1, _)) => Ok(SpkiKind::P256),
            Some((OID, SECP384R1, _)) => Ok(SpkiKind::P384),
            _ => Err("an EC key on a curve other than P-256 and P-384".to_string()),
        },
        _ => Err("a public key of an algorithm other than RSA, EC and Ed25519".to_string()),
    }
}

/// The SubjectPublicKeyInfo of a DER X.509 certificate.
pub fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(body)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = tlv(rest)?.2;
    }
    let spki = whole(rest)?;
    spki_kind(spki).ok().map(|_| spki)
}

/// Whether `der` is a PKCS#1 RSAPublicKey (a sequence of two integers).
pub fn is_pkcs1_rsa(der: &[u8]) -> bool {
    let Some((SEQUENCE, body, [])) = tlv(der) else {
        return false;
    };
    let Some((INTEGER, _, rest)) = tlv(body) else {
        return false;
    };
    matches!(tlv(rest), Some((INTEGER, _, [])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_are_read_and_truncated_input_is_refused() {
        let mut v = vec![0x30, 0x81, 0x80];
        v.extend(std::iter::repeat_n(0u8, 0x80));
        assert_eq!(
            tlv(&v).map(|(t, c, r)| (t, c.len(), r.len())),
            Some((0x30, 0x80, 0))
        );
        assert!(tlv(&v[..50]).is_none());
        assert!(tlv(&[0x30, 0x84, 1, 1, 1, 1]).is_none());
    }

    #[test]
    fn an_unknown_algorithm_is_named_not_guessed() {
        // SEQUENCE { SEQUENCE { OID 1.2.3 }, BIT STRING }
        let der = [
            0x30, 0x09, 0x30, 0x04, 0x06, 0x02, 0x2a, 0x03, 0x03, 0x01, 0x00,
        ];
        assert!(spki_kind(&der).unwrap_err().contains("other than RSA"));
    }
}
