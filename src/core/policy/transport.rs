//! `requireTransportSecurity`, as the authentication policies check it: did the request reach
//! the gateway over TLS?
//!
//! Yes when the downstream connection is TLS (Envoy's `connection.tls_version` property), or
//! when a proxy in front of the gateway terminated TLS and says so with `X-Forwarded-Proto:
//! https`, and that proxy is one the gateway trusts (`gateway.trustedProxies` contains the
//! peer, or `gateway.trustedHops` says there are proxies in front). A client's own
//! `X-Forwarded-Proto` is never believed: with `use_remote_address: true` Envoy overwrites the
//! header anyway (keeping a trusted proxy's only with `xff_num_trusted_hops` ≥ 1), and from an
//! untrusted peer it is ignored here.
//!
//! The header is checked first, since it costs nothing; the property is a host call (~15 µs), made
//! only for policies that require transport security, and at most once per request (the answer
//! is kept for the other policies of the chain).

use super::Context;
use crate::http::HeaderMap;

/// Whether the request arrived over TLS (see the module documentation).
pub fn is_secure(cx: &mut Context, headers: &HeaderMap) -> bool {
    if let Some(secure) = cx.state.transport_secure {
        return secure;
    }
    let secure = (forwarded_https(headers) && peer_is_trusted_proxy(cx))
        || cx
            .host
            .property(&["connection", "tls_version"])
            .is_some_and(|v| !v.is_empty());
    cx.state.transport_secure = Some(secure);
    secure
}

/// Every `X-Forwarded-Proto` value (a proxy may append to the list) says `https`.
fn forwarded_https(headers: &HeaderMap) -> bool {
    let mut any = false;
    for value in headers.get_all("x-forwarded-proto") {
        for proto in value.split(',') {
            if !proto.trim().eq_ignore_ascii_case("https") {
                return false;
            }
            any = true;
        }
    }
    any
}

fn peer_is_trusted_proxy(cx: &mut Context) -> bool {
    if cx.settings.trusted_proxies.hops > 0 {
        return true;
    }
    if cx.settings.trusted_proxies.networks.is_empty() {
        return false;
    }
    cx.downstream_ip()
        .is_some_and(|ip| cx.settings.trusted_proxies.trusts(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::TrustedProxies;
    use crate::policy::testing::Fixture;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn trusting(networks: &[&str], hops: usize) -> TrustedProxies {
        TrustedProxies {
            networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            hops,
        }
    }

    #[test]
    fn a_tls_connection_is_secure() {
        let mut f = Fixture::new();
        f.host
            .properties
            .insert("connection.tls_version".into(), b"TLSv1.3".to_vec());
        assert!(is_secure(&mut f.cx(), &headers(&[])));
    }

    #[test]
    fn a_plain_connection_is_not_secure() {
        let mut f = Fixture::new();
        assert!(!is_secure(&mut f.cx(), &headers(&[])));
        assert_eq!(f.host.calls.property, 1);
    }

    #[test]
    fn the_answer_is_kept_for_the_rest_of_the_request() {
        let mut f = Fixture::new();
        assert!(!is_secure(&mut f.cx(), &headers(&[])));
        assert!(!is_secure(&mut f.cx(), &headers(&[])));
        assert_eq!(f.host.calls.property, 1);
    }

    #[test]
    fn forwarded_https_from_an_untrusted_peer_is_ignored() {
        let mut f = Fixture::from("203.0.113.7:5000");
        let h = headers(&[("x-forwarded-proto", "https")]);
        assert!(!is_secure(&mut f.cx(), &h));
    }

    #[test]
    fn forwarded_https_from_a_trusted_proxy_is_secure_without_a_property_lookup() {
        let mut f = Fixture::from("10.0.0.5:5000");
        f.settings.trusted_proxies = trusting(&["10.0.0.0/8"], 0);
        let h = headers(&[("x-forwarded-proto", "https")]);
        assert!(is_secure(&mut f.cx(), &h));
        assert_eq!(f.host.calls.property, 0);
    }

    #[test]
    fn trusted_hops_mean_the_peer_is_a_proxy() {
        let mut f = Fixture::from("203.0.113.7:5000");
        f.settings.trusted_proxies = trusting(&[], 1);
        let h = headers(&[("x-forwarded-proto", "HTTPS")]);
        assert!(is_secure(&mut f.cx(), &h));
    }

    #[test]
    fn a_forwarded_list_must_say_https_at_every_hop() {
        let mut f = Fixture::from("10.0.0.5:5000");
        f.settings.trusted_proxies = trusting(&["10.0.0.0/8"], 0);
        let h = headers(&[("x-forwarded-proto", "https, http")]);
        assert!(!is_secure(&mut f.cx(), &h));
    }
}
