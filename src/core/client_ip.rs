//! Client addresses: Envoy's `source.address`, and forwarding headers parsed properly.
//!
//! Apiman compares the whole `X-Forwarded-For` value as one string (apiman/apiman#1044), so
//! `"203.0.113.9, 10.0.0.2"` never matches anything and a client can put any address first. We
//! take the right-most address that is not one of our trusted proxies: everything to its right
//! was appended by proxies we trust, everything to its left is what the client claimed.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses `127.0.0.1:43436`, `[::1]:5000`, a bare address, or `[::ffff:10.0.0.1]:1` into an IP,
/// with IPv4-mapped IPv6 addresses normalised to IPv4.
pub fn parse_socket_address(address: &str) -> Option<IpAddr> {
    let a = address.trim();
    let ip = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next()?.parse::<IpAddr>().ok()?
    } else if let Ok(ip) = a.parse::<IpAddr>() {
        ip
    } else {
        // host:port with an IPv4 host (an IPv6 address with a port is always bracketed).
        let (host, port) = a.rsplit_once(':')?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        host.parse::<IpAddr>().ok()?
    };
    Some(normalize(ip))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes the IPv4 address, so lists written in IPv4 match
/// clients on dual-stack listeners.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Which forwarding hops the gateway trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Addresses of proxies in front of the gateway; hops from these are skipped.
    pub networks: Vec<IpNet>,
    /// A fixed number of right-most hops to skip (like Envoy's `xff_num_trusted_hops`).
    pub hops: usize,
}

impl TrustedProxies {
    /// Whether `ip` is one of the configured proxy networks.
    pub fn trusts(&self, ip: &IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }
}

/// The client address a forwarding header names.
///
/// `X-Forwarded-For` and `Forwarded` are read as hop lists (all occurrences of the header, in
/// order); the result is the right-most hop that is not trusted. Any other header is taken as a
/// single address. Returns `None` when the header holds no address at all, and the raw text when
/// the chosen hop is not an IP (so lists never match it).
pub fn from_header<'a>(
    name: &str,
    values: impl Iterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> Option<ClientAddress> {
    let hops: Vec<&str> = if name.eq_ignore_ascii_case("forwarded") {
        values.flat_map(forwarded_for).collect()
    } else {
        values
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect()
    };
    if hops.is_empty() {
        return None;
    }
    let single =
        !name.eq_ignore_ascii_case("x-forwarded-for") && !name.eq_ignore_ascii_case("forwarded");
    if single {
        return Some(ClientAddress::parse(hops.join(", ").as_str()));
    }
    let candidates = &hops[..hops.len().saturating_sub(trusted.hops)];
    let chosen = candidates
        .iter()
        .rev()
        .map(|h| ClientAddress::parse(h))
        .find(|a| !matches!(a, ClientAddress::Ip(ip) if trusted.trusts(ip)))
        // Every hop is trusted: the left-most is the best we know.
        .or_else(|| hops.first().map(|h| ClientAddress::parse(h)))?;
    Some(chosen)
}

/// An address as found in a header: an IP, or text that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAddress {
    Ip(IpAddr),
    Unparsed(String),
}

impl ClientAddress {
    pub fn parse(text: &str) -> ClientAddress {
        let t = text.trim().trim_matches('"');
        match parse_socket_address(t) {
            Some(ip) => ClientAddress::Ip(ip),
            None => ClientAddress::Unparsed(t.to_string()),
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            ClientAddress::Ip(ip) => Some(*ip),
            ClientAddress::Unparsed(_) => None,
        }
    }
}

impl std::fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddress::Ip(ip) => write!(f, "{ip}"),
            ClientAddress::Unparsed(s) => f.write_str(s),
        }
    }
}

/// The `for=` values of an RFC 7239 `Forwarded` header.
fn forwarded_for(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter_map(|element| {
        element.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("for")
                .then(|| v.trim().trim_matches('"'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(nets: &[&str], hops: usize) -> TrustedProxies {
        TrustedProxies {
            networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
            hops,
        }
    }

    #[test]
    fn socket_addresses_lose_their_port() {
        assert_eq!(
            parse_socket_address("127.0.0.1:43436"),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(parse_socket_address("[::1]:5000"), Some(ip("::1")));
        assert_eq!(parse_socket_address("10.1.2.3"), Some(ip("10.1.2.3")));
        assert_eq!(parse_socket_address("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_socket_address("nonsense"), None);
    }

    #[test]
    fn ipv4_mapped_ipv6_becomes_ipv4() {
        assert_eq!(
            parse_socket_address("[::ffff:192.0.2.7]:8080"),
            Some(ip("192.0.2.7"))
        );
    }

    #[test]
    fn xff_takes_the_right_most_hop_without_trusted_proxies() {
        let a = from_header(
            "X-Forwarded-For",
            ["6.6.6.6, 203.0.113.9"].into_iter(),
            &TrustedProxies::default(),
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn xff_skips_trusted_proxies_from_the_right() {
        let a = from_header(
            "x-forwarded-for",
            ["6.6.6.6, 203.0.113.9, 10.0.0.2, 10.0.0.3"].into_iter(),
            &trusted(&["10.0.0.0/8"], 0),
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn xff_skips_a_fixed_number_of_trusted_hops() {
        let a = from_header(
            "x-forwarded-for",
            ["6.6.6.6, 203.0.113.9, 198.51.100.1"].into_iter(),
            &trusted(&[], 1),
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn xff_spread_over_several_headers_is_one_list() {
        let a = from_header(
            "x-forwarded-for",
            ["6.6.6.6", "203.0.113.9"].into_iter(),
            &TrustedProxies::default(),
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn forwarded_header_for_values_are_hops() {
        let a = from_header(
            "Forwarded",
            ["for=6.6.6.6;proto=http, for=\"[2001:db8::7]:4711\""].into_iter(),
            &TrustedProxies::default(),
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("2001:db8::7"))));
    }

    #[test]
    fn other_headers_hold_one_address() {
        let a = from_header(
            "X-Real-IP",
            [" 198.51.100.4 "].into_iter(),
            &TrustedProxies::default(),
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("198.51.100.4"))));
    }

    #[test]
    fn a_hop_that_is_not_an_ip_is_kept_as_text() {
        let a = from_header(
            "x-forwarded-for",
            ["unknown"].into_iter(),
            &TrustedProxies::default(),
        );
        assert_eq!(a, Some(ClientAddress::Unparsed("unknown".into())));
    }

    #[test]
    fn an_empty_header_names_no_address() {
        let a = from_header(
            "x-forwarded-for",
            [" , "].into_iter(),
            &TrustedProxies::default(),
        );
        assert_eq!(a, None);
    }
}
