//! What the IP Allowlist and IP Blocklist policies share: the address table, the configuration
//! (`ipList`, `responseCode`, `httpHeader`) and how the client address is chosen.
//!
//! Entries are compiled once into sorted, merged ranges, so a lookup is a binary search whatever
//! the list's size. Apiman's own matcher returns after the first range rule (a bug: later ranges
//! are never checked) and silently ignores invalid entries; here every entry counts, and an
//! invalid entry refuses the configuration.

use std::net::{IpAddr, Ipv4Addr};

use super::{BuildContext, Context, FailureType, FieldDoc, PolicyFailure};
use crate::client_ip::{self, ClientAddress};
use crate::http::is_token_byte;
use crate::http::Request;
use crate::json::{Fields, Problems};

pub(super) const FIELDS: &[FieldDoc] = &[
    FieldDoc {
        name: "ipList",
        aliases: &[],
        ty: "[string]",
        default: "[]",
        apiman: true,
        meaning: "addresses: literal IPv4/IPv6, CIDR (host bits allowed, as `192.168.42.23/24`), dash range `10.0.0.5-10.0.0.9` (ends may be wildcards), wildcard `192.168.*.*` or `10.*.0.1`",
    },
    FieldDoc {
        name: "responseCode",
        aliases: &[],
        ty: "integer",
        default: "0",
        apiman: true,
        meaning: "the failure status: 0 → 500 (type Other), 403 → type Authorization, 404 → type NotFound, else that status",
    },
    FieldDoc {
        name: "httpHeader",
        aliases: &[],
        ty: "string",
        default: "",
        apiman: true,
        meaning: "read the client address from this header instead of the connection. With `gateway.trustedProxies`/`trustedHops`, only what trusted proxies wrote counts: `X-Forwarded-For` and `Forwarded` are walked from the socket peer through trusted hops, another header counts only from a trusted peer. Without them the header is believed as sent, as in Apiman (warned at load). See [Deploying safely](#deploying-safely)",
    },
];

/// A compiled set of addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList {
    /// Inclusive IPv4 ranges, sorted and merged.
    v4: Vec<(u32, u32)>,
    /// Inclusive IPv6 ranges, sorted and merged.
    v6: Vec<(u128, u128)>,
    /// IPv4 wildcards that are not one range (`10.*.0.1`): per octet, `None` is `*`.
    patterns: Vec<[Option<u8>; 4]>,
}

impl IpList {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match client_ip::normalize(ip) {
            IpAddr::V4(v4) => {
                let n = u32::from(v4);
                in_ranges(&self.v4, n)
                    || self.patterns.iter().any(|p| {
                        p.iter()
                            .zip(v4.octets())
                            .all(|(want, got)| want.is_none_or(|w| w == got))
                    })
            }
            IpAddr::V6(v6) => in_ranges(&self.v6, u128::from(v6)),
        }
    }

    /// Adds one entry: a literal, CIDR, dash range or IPv4 wildcard.
    pub fn add(&mut self, entry: &str) -> Result<(), String> {
        let e = entry.trim();
        let invalid = || format!("\"{entry}\" is not an IP, CIDR, range or wildcard");
        if let Some((start, end)) = e.split_once('-') {
            let bounds = |normalise| {
                (
                    parse_bound(start.trim(), false, normalise),
                    parse_bound(end.trim(), true, normalise),
                )
            };
            // `::ffff:1.2.3.4-1.2.3.9` mixes forms of IPv4; `::-::ffff:10.0.0.1` is IPv6.
            let (a, b) = match bounds(false) {
                (Some(Bound::V4(_)), Some(Bound::V6(_)))
                | (Some(Bound::V6(_)), Some(Bound::V4(_))) => bounds(true),
                same => same,
            };
            return match (a, b) {
                (Some(Bound::V4(a)), Some(Bound::V4(b))) => {
                    self.v4.push((a.min(b), a.max(b)));
                    Ok(())
                }
                (Some(Bound::V6(a)), Some(Bound::V6(b))) => {
                    self.push_v6(a.min(b), a.max(b));
                    Ok(())
                }
                (Some(_), Some(_)) => Err(format!("\"{entry}\" mixes IPv4 and IPv6 in one range")),
                _ => Err(invalid()),
            };
        }
        if e.contains('/') {
            let net: ipnet::IpNet = e.parse().map_err(|_| invalid())?;
            match net.trunc() {
                ipnet::IpNet::V4(n) => self
                    .v4
                    .push((u32::from(n.network()), u32::from(n.broadcast()))),
                ipnet::IpNet::V6(n) => {
                    self.push_v6(u128::from(n.network()), u128::from(n.broadcast()))
                }
            }
            return Ok(());
        }
        if e.contains('*') {
            let octets = wildcard_octets(e).ok_or_else(invalid)?;
            // Trailing wildcards only (`192.168.*.*`) is one contiguous range.
            let first_star = octets.iter().position(Option::is_none).unwrap_or(4);
            if octets[first_star..].iter().all(Option::is_none) {
                let low = octets.map(|o| o.unwrap_or(0));
                let high = octets.map(|o| o.unwrap_or(255));
                self.v4.push((
                    u32::from(Ipv4Addr::from(low)),
                    u32::from(Ipv4Addr::from(high)),
                ));
            } else {
                self.patterns.push(octets);
            }
            return Ok(());
        }
        match e.parse::<IpAddr>().map(client_ip::normalize) {
            Ok(IpAddr::V4(v4)) => self.v4.push((u32::from(v4), u32::from(v4))),
            Ok(IpAddr::V6(v6)) => self.v6.push((u128::from(v6), u128::from(v6))),
            Err(_) => return Err(invalid()),
        }
        Ok(())
    }

    /// An IPv6 range; the part of it in the IPv4-mapped block (`::ffff:0:0/96`) also counts
    /// as IPv4, since clients are judged by their IPv4 form (`::ffff:127.0.0.0/104` is
    /// `127.0.0.0/8`).
    fn push_v6(&mut self, start: u128, end: u128) {
        const MAPPED: u128 = 0xffff << 32;
        const MAPPED_END: u128 = MAPPED | 0xffff_ffff;
        self.v6.push((start, end));
        let (low, high) = (start.max(MAPPED), end.min(MAPPED_END));
        if low <= high {
            // Both lie in the mapped block, so the differences fit in 32 bits.
            let v4 = |n: u128| u32::try_from(n - MAPPED).unwrap_or(u32::MAX);
            self.v4.push((v4(low), v4(high)));
        }
    }

    /// Sorts and merges ranges; call once after the last `add`.
    pub fn seal(&mut self) {
        merge(&mut self.v4);
        merge(&mut self.v6);
    }
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], n: T) -> bool {
    // The last range starting at or below n is the only candidate once ranges are merged.
    let i = ranges.partition_point(|&(start, _)| start <= n);
    i > 0 && ranges[i - 1].1 >= n
}

fn merge<T: Ord + Copy + Successor>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1.successor() => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

trait Successor {
    fn successor(self) -> Self;
}

impl Successor for u32 {
    fn successor(self) -> Self {
        self.saturating_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Self {
        self.saturating_add(1)
    }
}

enum Bound {
    V4(u32),
    V6(u128),
}

/// One end of a dash range: an address, or an IPv4 wildcard (`*` is 0 at the start of a range
/// and 255 at its end, so `192.168.0.*-192.168.99.*` covers 192.168.0.0 to 192.168.99.255).
fn parse_bound(text: &str, upper: bool, normalise: bool) -> Option<Bound> {
    if text.contains('*') {
        let fill = if upper { 255 } else { 0 };
        let octets = wildcard_octets(text)?.map(|o| o.unwrap_or(fill));
        return Some(Bound::V4(u32::from(Ipv4Addr::from(octets))));
    }
    let ip = text.parse::<IpAddr>().ok()?;
    match if normalise {
        client_ip::normalize(ip)
    } else {
        ip
    } {
        IpAddr::V4(v4) => Some(Bound::V4(u32::from(v4))),
        IpAddr::V6(v6) => Some(Bound::V6(u128::from(v6))),
    }
}

/// `192.168.*.*` → per-octet values, `None` for `*`. Fewer than four parts are padded with `*`
/// (`10.*` means `10.*.*.*`).
fn wildcard_octets(text: &str) -> Option<[Option<u8>; 4]> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut octets = [None; 4];
    for (i, part) in parts.iter().enumerate() {
        octets[i] = match part.trim() {
            "*" => None,
            p if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u8>().ok()?)
            }
            _ => return None,
        };
    }
    if parts.len() < 4 && parts.last().is_none_or(|p| p.trim() != "*") {
        return None;
    }
    Some(octets)
}

/// The configuration both IP policies take (Apiman's `IPListConfig`).
#[derive(Debug, Clone)]
pub struct IpListConfig {
    pub list: IpList,
    /// The status to answer with; 0 means Apiman's default (500).
    pub response_code: u16,
    /// Read the client address from this header when present.
    pub http_header: Option<String>,
}

pub fn parse_config(
    cx: &BuildContext,
    f: &mut Fields,
    problems: &mut Problems,
) -> Option<IpListConfig> {
    let mut list = IpList::default();
    let mut ok = true;
    for (path, entry) in f.strings(&["ipList"], problems) {
        if entry.trim().is_empty() {
            continue;
        }
        if let Err(message) = list.add(&entry) {
            problems.error(&path, message);
            ok = false;
        }
    }
    list.seal();
    let response_code = match f.integer(&["responseCode"], problems) {
        None | Some(0) => 0,
        Some(code @ 100..=599) => code as u16,
        Some(other) => {
            problems.error(
                &f.field_path("responseCode"),
                format!("{other} is not an HTTP status (100-599, or 0 for the default 500)"),
            );
            ok = false;
            0
        }
    };
    let http_header = f
        .string(&["httpHeader"], problems)
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    if let Some(h) = &http_header {
        if !h.bytes().all(is_token_byte) {
            problems.error(
                &f.field_path("httpHeader"),
                format!("\"{h}\" is not a valid header name"),
            );
            ok = false;
        } else if !cx.settings.trusted_proxies.configured() {
            problems.warning(
                &f.field_path("httpHeader"),
                format!(
                    "\"{h}\" is believed as the client sends it (as in Apiman), because the gateway has no trustedProxies or trustedHops: any client can choose the address this policy judges. Set gateway.trustedProxies to the proxies in front of the gateway (README: Deploying safely)"
                ),
            );
        }
    }
    ok.then_some(IpListConfig {
        list,
        response_code,
        http_header,
    })
}

/// The address the policy judges: from `httpHeader` when configured and present (read against
/// the gateway's trusted proxies, see `client_ip::from_header`), else the downstream peer.
pub fn client_address(
    config: &IpListConfig,
    cx: &mut Context,
    request: &Request,
) -> Option<ClientAddress> {
    if let Some(header) = &config.http_header {
        let trusted = &cx.settings.trusted_proxies;
        // Only a trusted proxy's word counts, so the peer is needed to read the header at all.
        let peer = if trusted.configured() {
            cx.downstream_ip()
        } else {
            None
        };
        if let Some(found) =
            client_ip::from_header(header, request.headers.get_all(header), trusted, peer)
        {
            return Some(found);
        }
    }
    cx.downstream_ip().map(ClientAddress::Ip)
}

/// A failure with Apiman's mapping of `responseCode` to a failure type: 403 is Authorization,
/// 404 NotFound, anything else Other (0 answers 500).
pub fn failure(config: &IpListConfig, code: u32, message: String) -> PolicyFailure {
    let failure_type = match config.response_code {
        403 => FailureType::Authorization,
        404 => FailureType::NotFound,
        _ => FailureType::Other,
    };
    PolicyFailure::new(failure_type, code, message).with_status(config.response_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> IpList {
        let mut l = IpList::default();
        for e in entries {
            l.add(e).unwrap();
        }
        l.seal();
        l
    }

    fn has(l: &IpList, ip: &str) -> bool {
        l.contains(ip.parse().unwrap())
    }

    #[test]
    fn literals_match_exactly() {
        let l = list(&["192.0.2.7", "2001:db8::1"]);
        assert!(has(&l, "192.0.2.7"));
        assert!(!has(&l, "192.0.2.8"));
        assert!(has(&l, "2001:db8:0:0:0:0:0:1"));
    }

    #[test]
    fn cidr_blocks_match_their_network_even_when_written_with_host_bits() {
        let l = list(&["192.168.42.23/24", "2001:db8::/32"]);
        assert!(has(&l, "192.168.42.200"));
        assert!(!has(&l, "192.168.43.1"));
        assert!(has(&l, "2001:db8:ffff::1"));
        assert!(!has(&l, "2001:db9::1"));
    }

    #[test]
    fn dash_ranges_are_inclusive() {
        let l = list(&["10.0.0.5-10.0.0.9"]);
        assert!(has(&l, "10.0.0.5"));
        assert!(has(&l, "10.0.0.9"));
        assert!(!has(&l, "10.0.0.10"));
        assert!(!has(&l, "10.0.0.4"));
    }

    #[test]
    fn ranges_with_wildcard_ends_cover_whole_octets() {
        let l = list(&["192.168.0.*-192.168.99.*"]);
        assert!(has(&l, "192.168.0.0"));
        assert!(has(&l, "192.168.99.255"));
        assert!(!has(&l, "192.168.100.0"));
    }

    #[test]
    fn every_range_counts_not_only_the_first() {
        let l = list(&["10.0.0.1-10.0.0.2", "10.0.1.1-10.0.1.2"]);
        assert!(has(&l, "10.0.1.2"));
    }

    #[test]
    fn trailing_wildcards_match_the_prefix() {
        let l = list(&["192.168.*.*"]);
        assert!(has(&l, "192.168.250.1"));
        assert!(!has(&l, "192.169.0.1"));
    }

    #[test]
    fn inner_wildcards_match_per_octet() {
        let l = list(&["10.*.0.1"]);
        assert!(has(&l, "10.77.0.1"));
        assert!(!has(&l, "10.77.0.2"));
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_entries() {
        let l = list(&["192.0.2.0/24"]);
        assert!(has(&l, "::ffff:192.0.2.9"));
    }

    #[test]
    fn ipv6_ranges_match() {
        let l = list(&["2001:db8::1-2001:db8::ff"]);
        assert!(has(&l, "2001:db8::80"));
        assert!(!has(&l, "2001:db8::100"));
    }

    #[test]
    fn invalid_entries_are_refused() {
        let mut l = IpList::default();
        for bad in [
            "10.0.0.300/8",
            "10.0.0.300",
            "10.0.0.1/33",
            "abc",
            "10.*.x.1",
            "1.2.3.4-::1",
            "10.0.0.1-",
        ] {
            assert!(l.add(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ipv4_mapped_cidrs_match_ipv4_clients() {
        let l = list(&["::ffff:127.0.0.0/104"]);
        assert!(has(&l, "127.0.0.1"));
        assert!(has(&l, "::ffff:127.0.0.2"));
        assert!(!has(&l, "128.0.0.1"));
    }

    #[test]
    fn ipv6_ranges_that_cover_mapped_addresses_cover_those_ipv4_clients() {
        let l = list(&["::-::ffff:10.255.255.255"]);
        assert!(has(&l, "10.1.2.3"));
        assert!(!has(&l, "11.0.0.1"));
    }

    #[test]
    fn overlapping_ranges_merge() {
        let l = list(&["10.0.0.0/24", "10.0.0.128-10.0.1.5", "10.0.1.6"]);
        assert_eq!(l.v4.len(), 1);
        assert!(has(&l, "10.0.1.6"));
    }
}
