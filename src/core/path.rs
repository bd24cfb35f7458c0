//! The form of a request path that policies match their patterns against.
//!
//! What the backend receives is never changed here: tollgate forwards the resource byte for byte
//! as the client sent it (as Apiman forwards it). But a rule written for `/internal/.*` must
//! not be slipped past by spelling the same resource differently, whatever Envoy's path
//! normalisation is set to. Apiman matches the servlet's path info, from which the container
//! has removed `;` path parameters and percent-decoding; servlet backends then ignore the
//! parameters too. So the matching form is:
//!
//! 1. each segment without its `;` path parameters (`/internal;x=1/metrics` → `/internal/metrics`);
//! 2. percent-decoded, `%2F` and `%5C` included (`/internal%2Fmetrics` → `/internal/metrics`,
//!    `/caf%C3%A9` → `/café`, so a pattern with non-ASCII characters matches);
//! 3. `\` read as `/` (some backends do);
//! 4. `.` and `..` segments resolved and repeated slashes merged (`/a/../admin` → `/admin`), a
//!    trailing slash kept.
//!
//! Decoded bytes that are not UTF-8 become U+FFFD.

/// The path policies match: see the module documentation. An empty path is `/`.
pub fn for_matching(raw: &str) -> String {
    if is_plain(raw) {
        return if raw.is_empty() {
            "/".to_string()
        } else {
            raw.to_string()
        };
    }
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    for (i, segment) in raw.split('/').enumerate() {
        if i > 0 {
            decoded.push(b'/');
        }
        let without_parameters = segment.split(';').next().unwrap_or_default();
        percent_decode_into(without_parameters.as_bytes(), &mut decoded);
    }
    for b in decoded.iter_mut() {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for segment in decoded.split(|&b| b == b'/') {
        trailing = matches!(segment, b"" | b"." | b"..");
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path that is already in matching form: nothing to strip, decode or resolve.
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    !b.iter().any(|&c| matches!(c, b';' | b'%' | b'\\'))
        && !b.windows(2).any(|w| w == b"//" || w == b"/.")
        && (b.is_empty() || b[0] == b'/')
}

fn percent_decode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&c| hex(c)),
                bytes.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_path_is_its_own_matching_form() {
        assert_eq!(for_matching("/orders/12/items/"), "/orders/12/items/");
        assert_eq!(for_matching(""), "/");
        assert_eq!(for_matching("/"), "/");
    }

    #[test]
    fn path_parameters_are_removed_from_every_segment() {
        assert_eq!(for_matching("/internal;x=1/metrics"), "/internal/metrics");
        assert_eq!(for_matching("/admin;x=1"), "/admin");
        assert_eq!(for_matching("/a;b/c;d=e;f/"), "/a/c/");
        assert_eq!(for_matching("/;x"), "/");
    }

    #[test]
    fn percent_escapes_are_decoded_slashes_included() {
        assert_eq!(for_matching("/internal%2Fmetrics"), "/internal/metrics");
        assert_eq!(for_matching("/internal%2fmetrics"), "/internal/metrics");
        assert_eq!(for_matching("/caf%C3%A9/x"), "/caf\u{e9}/x");
        assert_eq!(for_matching("/a%20b"), "/a b");
    }

    #[test]
    fn an_encoded_semicolon_is_not_a_path_parameter() {
        assert_eq!(for_matching("/admin%3Bx=1"), "/admin;x=1");
    }

    #[test]
    fn backslashes_raw_or_encoded_separate_segments() {
        assert_eq!(for_matching("/a\\b"), "/a/b");
        assert_eq!(for_matching("/a%5Cb"), "/a/b");
        assert_eq!(for_matching("/a%5cb"), "/a/b");
    }

    #[test]
    fn dot_segments_resolve_and_slashes_merge() {
        assert_eq!(for_matching("/public/../admin"), "/admin");
        assert_eq!(for_matching("/./admin/."), "/admin/");
        assert_eq!(for_matching("//admin//x"), "/admin/x");
        assert_eq!(for_matching("/%2e%2e/%2E/admin"), "/admin");
        assert_eq!(for_matching("/a/.."), "/");
        assert_eq!(for_matching("/../../"), "/");
        assert_eq!(for_matching("/.well-known/x"), "/.well-known/x");
    }

    #[test]
    fn a_broken_escape_stays_as_written() {
        assert_eq!(for_matching("/100%"), "/100%");
        assert_eq!(for_matching("/a%zz%4"), "/a%zz%4");
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        assert_eq!(for_matching("/a%FFb"), "/a\u{fffd}b");
    }
}
