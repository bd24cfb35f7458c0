//! Client addresses: Envoy's `source.address`, and forwarding headers parsed properly.
//!
//! Apiman compares the whole `X-Forwarded-For` value as one string (apiman/apiman#1044), so
//! `"203.0.113.9, 10.0.0.2"` never matches anything and a client can put any address first.
//!
//! With trust configuration (`trustedProxies` or `trustedHops`), the hops are a chain that ends
//! with the socket peer, and it is read from the right: the peer is the last hop, and the walk
//! moves left only while the hop just read is a trusted proxy. Whatever an untrusted peer
//! writes into a forwarding header is therefore never believed. (Envoy appends to
//! `X-Forwarded-For` only with `use_remote_address: true`, and never to `Forwarded`, so a
//! right-most header hop alone proves nothing.) Without trust configuration the header is
//! believed as Apiman believes it, and the load warns about it.

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
    /// Addresses of proxies in front of the gateway.
    pub networks: Vec<IpNet>,
    /// How many proxies are in front of the gateway: the peer and the hops it and the
    /// proxies before it appended (like Envoy's `xff_num_trusted_hops`).
    pub hops: usize,
}

impl TrustedProxies {
    /// Whether the gateway says anything about the proxies in front of it.
    pub fn configured(&self) -> bool {
        !self.networks.is_empty() || self.hops > 0
    }

    /// Whether `ip` is one of the configured proxy networks.
    pub fn trusts(&self, ip: &IpAddr) -> bool {
        // An IPv4 peer may be listed in its IPv4-mapped IPv6 form, and the other way round.
        let mapped = match normalize(*ip) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        self.networks
            .iter()
            .any(|n| n.contains(ip) || n.contains(&normalize(*ip)) || n.contains(&mapped))
    }
}

/// Whether a header holds a list of hops rather than one address.
fn is_hop_list(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-forwarded-for") || name.eq_ignore_ascii_case("forwarded")
}

/// The client address a forwarding header names, given the socket peer.
///
/// `X-Forwarded-For` and `Forwarded` are read as hop lists (all occurrences of the header, in
/// order); any other header is taken as a single address. Returns `None` when the header holds
/// no address at all (the peer then decides), and the raw text when the chosen hop is not an
/// IP (so lists never match it).
///
/// Without trust configuration the header is believed, as in Apiman: the right-most hop of a
/// list, the whole value of another header. With it, see [`walk`]; a single-address header
/// counts only when the peer is a trusted proxy. `peer` is only needed with trust
/// configuration (`None` then means no verdict: the caller falls back to the peer).
pub fn from_header<'a>(
    name: &str,
    values: impl Iterator<Item = &'a str>,
    trusted: &TrustedProxies,
    peer: Option<IpAddr>,
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
    if !trusted.configured() {
        return Some(if is_hop_list(name) {
            hops.last().map(|h| ClientAddress::parse(h))?
        } else {
            ClientAddress::parse(hops.join(", ").as_str())
        });
    }
    let peer = normalize(peer?);
    if !is_hop_list(name) {
        let peer_trusted = trusted.hops >= 1 || trusted.trusts(&peer);
        return peer_trusted.then(|| ClientAddress::parse(hops.join(", ").as_str()));
    }
    let mut chain: Vec<ClientAddress> = hops.iter().map(|h| ClientAddress::parse(h)).collect();
    // With `use_remote_address`, Envoy has already appended the peer: count it once.
    if chain.last() != Some(&ClientAddress::Ip(peer)) {
        chain.push(ClientAddress::Ip(peer));
    }
    Some(walk(&chain, trusted))
}

/// The client in a chain of hops that ends with the socket peer: from the right, move left
/// only while the hop just read is trusted (one of the `hops` right-most, or an IP in
/// `networks`). When every hop is trusted, the left-most is the best we know.
fn walk(chain: &[ClientAddress], trusted: &TrustedProxies) -> ClientAddress {
    let len = chain.len();
    let is_trusted = |i: usize, hop: &ClientAddress| {
        len - i <= trusted.hops || matches!(hop, ClientAddress::Ip(ip) if trusted.trusts(ip))
    };
    chain
        .iter()
        .enumerate()
        .rev()
        .find(|(i, hop)| !is_trusted(*i, hop))
        .or_else(|| chain.first().map(|h| (0, h)))
        .map_or(ClientAddress::Unparsed(String::new()), |(_, hop)| {
            hop.clone()
        })
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

    fn read(name: &str, value: &str, trust: &TrustedProxies, peer: &str) -> Option<ClientAddress> {
        from_header(name, [value].into_iter(), trust, Some(ip(peer)))
    }

    #[test]
    fn without_trust_configuration_xff_is_believed_from_its_right_most_hop() {
        let a = read(
            "X-Forwarded-For",
            "6.6.6.6, 203.0.113.9",
            &TrustedProxies::default(),
            "127.0.0.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn without_trust_configuration_a_single_address_header_is_believed() {
        let a = read(
            "X-Real-IP",
            " 198.51.100.4 ",
            &TrustedProxies::default(),
            "127.0.0.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("198.51.100.4"))));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_header_says() {
        let a = read(
            "x-forwarded-for",
            "203.0.113.9",
            &trusted(&["10.0.0.0/8"], 0),
            "127.0.0.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("127.0.0.1"))));
    }

    #[test]
    fn xff_is_walked_from_the_peer_through_trusted_proxies() {
        let a = read(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.2",
            &trusted(&["10.0.0.0/8"], 0),
            "10.0.0.3",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_hop() {
        // 203.0.113.9 is not a proxy we trust: what it claims (10.0.0.7) is not believed.
        let a = read(
            "x-forwarded-for",
            "10.0.0.7, 203.0.113.9",
            &trusted(&["10.0.0.0/8"], 0),
            "10.0.0.3",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn a_peer_envoy_already_appended_is_one_hop() {
        let a = read(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 198.51.100.1",
            &trusted(&[], 1),
            "198.51.100.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn trusted_hops_count_the_peer() {
        let a = read(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 198.51.100.1",
            &trusted(&[], 2),
            "10.0.0.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn when_every_hop_is_trusted_the_left_most_is_the_client() {
        let a = read(
            "x-forwarded-for",
            "10.0.0.5",
            &trusted(&["10.0.0.0/8"], 0),
            "10.0.0.3",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("10.0.0.5"))));
    }

    #[test]
    fn xff_spread_over_several_headers_is_one_list() {
        let a = from_header(
            "x-forwarded-for",
            ["6.6.6.6", "203.0.113.9"].into_iter(),
            &trusted(&["10.0.0.0/8"], 0),
            Some(ip("10.0.0.1")),
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn forwarded_header_for_values_are_hops() {
        let a = read(
            "Forwarded",
            "for=6.6.6.6;proto=http, for=\"[2001:db8::7]:4711\"",
            &trusted(&["10.0.0.0/8"], 0),
            "10.0.0.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("2001:db8::7"))));
    }

    #[test]
    fn a_single_address_header_from_a_trusted_peer_is_believed() {
        let a = read(
            "X-Real-IP",
            "198.51.100.4",
            &trusted(&["10.0.0.0/8"], 0),
            "10.0.0.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("198.51.100.4"))));
    }

    #[test]
    fn a_single_address_header_from_an_untrusted_peer_is_no_verdict() {
        let a = read(
            "X-Real-IP",
            "198.51.100.4",
            &trusted(&["10.0.0.0/8"], 0),
            "127.0.0.1",
        );
        assert_eq!(a, None);
    }

    #[test]
    fn with_trust_configuration_an_unknown_peer_is_no_verdict() {
        let a = from_header(
            "x-forwarded-for",
            ["203.0.113.9"].into_iter(),
            &trusted(&["10.0.0.0/8"], 0),
            None,
        );
        assert_eq!(a, None);
    }

    #[test]
    fn ipv4_mapped_trusted_proxies_match_ipv4_peers() {
        let a = read(
            "x-forwarded-for",
            "203.0.113.9",
            &trusted(&["::ffff:10.0.0.0/104"], 0),
            "10.0.0.3",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("203.0.113.9"))));
    }

    #[test]
    fn an_ipv6_network_covering_the_mapped_form_of_an_ipv4_peer_trusts_it() {
        // Found by the address fuzz target (tests/fuzz/regressions/address): ::/10 holds
        // ::ffff:1.45.17.1, so the IPv4 peer 1.45.17.1 is a trusted proxy, as IP lists match.
        let a = read(
            "X-Real-IP",
            "198.51.100.4",
            &trusted(&["::/10"], 0),
            "1.45.17.1",
        );
        assert_eq!(a, Some(ClientAddress::Ip(ip("198.51.100.4"))));
    }

    #[test]
    fn a_hop_that_is_not_an_ip_is_kept_as_text() {
        let a = read(
            "x-forwarded-for",
            "unknown",
            &TrustedProxies::default(),
            "10.0.0.1",
        );
        assert_eq!(a, Some(ClientAddress::Unparsed("unknown".into())));
    }

    #[test]
    fn an_empty_header_names_no_address() {
        let a = read(
            "x-forwarded-for",
            " , ",
            &trusted(&["10.0.0.0/8"], 0),
            "10.0.0.1",
        );
        assert_eq!(a, None);
    }
}
