//! Address parsers: socket addresses, forwarding headers read against trust configuration, IP
//! list entries (compared with `ipnet` for CIDRs and literals), trusted networks and endpoint
//! URLs.
//!
//! Findings: a panic, an allocation over the bound, a spoofed address believed from an
//! untrusted peer, a list that disagrees with `ipnet`, an endpoint that loads with a control
//! character or user info in it.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tollgate_core::client_ip::{self, ClientAddress, TrustedProxies};
use tollgate_core::config::parse_network;
use tollgate_core::model::Endpoint;
use tollgate_core::policy::ip_list::IpList;
use tollgate_fuzz::Reader;

const PIECES: &[&str] = &[
    "10", "0", "255", "256", "127", "::", "::1", "ffff", ":", ".", "/", "-", "*", "[", "]", ",",
    "for=", ";", "\"", "8", "24", "104", "33", "2001:db8", "::ffff:", " ", "unknown", "_h",
];

fn text(r: &mut Reader) -> String {
    let mut s = String::new();
    for _ in 0..r.below(12) {
        if r.below(5) == 0 {
            s.push_str(&r.text(3));
        } else {
            s.push_str(r.pick(PIECES));
        }
    }
    s
}

fn ip(r: &mut Reader) -> IpAddr {
    match r.below(3) {
        0 => IpAddr::from([r.byte(), r.byte(), r.byte(), r.byte()]),
        1 => IpAddr::from(std::net::Ipv4Addr::from([10, 0, r.byte(), r.byte()]).to_ipv6_mapped()),
        _ => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, r.u16()]),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);

    // Socket addresses come out normalised: never an IPv4-mapped IPv6 address.
    let socket = text(&mut r);
    if let Some(IpAddr::V6(v6)) = client_ip::parse_socket_address(&socket) {
        assert!(v6.to_ipv4_mapped().is_none(), "{socket:?}");
    }
    let _ = ClientAddress::parse(&socket);

    // Forwarding headers: with trust configuration, an untrusted peer is the client whatever
    // the header says.
    let networks: Vec<ipnet::IpNet> = (0..r.below(3))
        .filter_map(|_| parse_network(&text(&mut r)))
        .collect();
    let trusted = TrustedProxies {
        networks,
        hops: r.below(3),
    };
    let peer = ip(&mut r);
    let name = r.pick(&["x-forwarded-for", "forwarded", "x-real-ip"]);
    let values: Vec<String> = (0..r.below(3)).map(|_| text(&mut r)).collect();
    let found = client_ip::from_header(
        name,
        values.iter().map(String::as_str),
        &trusted,
        Some(peer),
    );
    // A network covering the IPv4-mapped form of an IPv4 peer trusts it (as IP lists match).
    let mapped_peer = match client_ip::normalize(peer) {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    let peer_trusted = trusted.hops > 0
        || trusted.networks.iter().any(|n| {
            n.contains(&peer) || n.contains(&client_ip::normalize(peer)) || n.contains(&mapped_peer)
        });
    if trusted.configured() && !peer_trusted {
        match name {
            "x-real-ip" => assert_eq!(found, None, "{values:?} from {peer} ({trusted:?})"),
            _ => assert!(
                found.is_none() || found == Some(ClientAddress::Ip(client_ip::normalize(peer))),
                "{values:?} from {peer} gave {found:?}"
            ),
        }
    }

    // IP lists agree with ipnet on CIDRs and literals.
    let mut list = IpList::default();
    let mut nets: Vec<ipnet::IpNet> = Vec::new();
    for _ in 0..r.below(4) {
        let entry = text(&mut r);
        if list.add(&entry).is_ok() {
            if let Some(net) = (!entry.contains(['-', '*']))
                .then(|| parse_network(&entry))
                .flatten()
            {
                nets.push(net);
            }
        }
    }
    list.seal();
    let probe = ip(&mut r);
    let mapped = match probe {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => IpAddr::V6(match client_ip::normalize(v6) {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        }),
    };
    let by_ipnet = nets.iter().any(|n| {
        n.contains(&probe) || n.contains(&client_ip::normalize(probe)) || n.contains(&mapped)
    });
    if by_ipnet {
        assert!(
            list.contains(probe),
            "{nets:?} contain {probe} but the list does not"
        );
    }

    // Endpoints that load have no control character, space or user info.
    let url = format!(
        "{}{}",
        r.pick(&["http://", "https://", "HTTP://", ""]),
        r.text(40)
    );
    if let Ok(e) = Endpoint::parse(&url) {
        assert!(!e.authority.contains('@'), "{url:?}");
        assert!(
            !e.path
                .bytes()
                .chain(e.authority.bytes())
                .any(|b| b <= b' ' || b == 0x7f),
            "{url:?}"
        );
    }
});
