//! IP Blocklist (Apiman's `IPBlacklistPolicy`): listed client addresses are refused. With an
//! allowlist in the same chain, a blocklisted address fails whatever the allowlist says.

use super::ip_list::{self, IpListConfig};
use super::{Capabilities, Context, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::http::Request;

pub const KIND: PolicyKind = PolicyKind {
    id: "ip-blocklist",
    name: "IP Blocklist",
    apiman_names: &[
        "IPBlacklistPolicy",
        "IPBlocklistPolicy",
        "ip-blacklist",
        "ip-blacklist-policy",
        "ip-blocklist-policy",
    ],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Refuses requests whose client address is in the list; in a chain with an allowlist, the blocklist wins.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10002 `Inbound IP address \"<ip>\" has been black-listed.`; status from `responseCode`",
    #[cfg(not(target_arch = "wasm32"))]
    fields: ip_list::FIELDS,
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"ipList": ["203.0.113.0/24", "2001:db8::/32"], "responseCode": 403, "httpHeader": "X-Forwarded-For"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| {
        ip_list::parse_config(cx, f, problems).map(|config| Box::new(IpBlocklist { config }) as _)
    },
};

/// Apiman's failure code IP_BLACKLISTED.
pub const FAILURE_CODE: u32 = 10002;

pub struct IpBlocklist {
    config: IpListConfig,
}

impl Policy for IpBlocklist {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let Some(address) = ip_list::client_address(&self.config, cx, request) else {
            return Verdict::Continue;
        };
        match address.ip() {
            Some(ip) if self.config.list.contains(ip) => Verdict::Fail(ip_list::failure(
                &self.config,
                FAILURE_CODE,
                format!("Inbound IP address \"{address}\" has been black-listed."),
            )),
            _ => Verdict::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use crate::policy::FailureType;
    use serde_json::json;

    #[test]
    fn an_unlisted_address_passes() {
        let p = compile(&KIND, json!({"ipList": ["10.0.0.0/8"]}));
        let mut f = Fixture::from("192.0.2.1:5555");
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
    }

    #[test]
    fn a_listed_address_fails_with_500_by_default() {
        let p = compile(&KIND, json!({"ipList": ["10.0.0.0/8"]}));
        let mut f = Fixture::from("10.0.0.1:5555");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(fail.code, 10002);
        assert_eq!(
            (fail.failure_type, fail.status()),
            (FailureType::Other, 500)
        );
        assert_eq!(
            fail.message,
            "Inbound IP address \"10.0.0.1\" has been black-listed."
        );
    }

    #[test]
    fn a_custom_response_code_is_the_status() {
        let p = compile(&KIND, json!({"ipList": ["10.0.0.1"], "responseCode": 429}));
        let mut f = Fixture::from("10.0.0.1:5555");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(
            (fail.failure_type, fail.status()),
            (FailureType::Other, 429)
        );
    }

    #[test]
    fn an_ipv6_client_in_a_listed_network_fails() {
        let p = compile(
            &KIND,
            json!({"ipList": ["2001:db8::/48"], "responseCode": 403}),
        );
        let mut f = Fixture::from("[2001:db8::42]:5555");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(fail.status(), 403);
    }

    fn blocklist(header: &str) -> Box<dyn Policy> {
        compile(
            &KIND,
            json!({"ipList": ["127.0.0.1"], "httpHeader": header, "responseCode": 403}),
        )
    }

    #[test]
    fn a_listed_peer_cannot_hide_behind_a_forwarded_header() {
        let p = blocklist("Forwarded");
        let mut f = Fixture::trusting("127.0.0.1:40000", &["10.0.0.0/8"], 0);
        let mut req = request("GET", &[("forwarded", "for=1.2.3.4")]);
        assert_eq!(failure(f.on_request(p.as_ref(), &mut req)).status(), 403);
    }

    #[test]
    fn a_listed_peer_cannot_hide_behind_an_x_forwarded_for_envoy_did_not_append_to() {
        let p = blocklist("X-Forwarded-For");
        let mut f = Fixture::trusting("127.0.0.1:40000", &["10.0.0.0/8"], 0);
        let mut req = request("GET", &[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(failure(f.on_request(p.as_ref(), &mut req)).status(), 403);
    }

    #[test]
    fn a_single_address_header_counts_only_from_a_trusted_peer() {
        let p = blocklist("X-Real-IP");
        let mut req = request("GET", &[("x-real-ip", "1.2.3.4")]);
        let mut untrusted = Fixture::trusting("127.0.0.1:40000", &["10.0.0.0/8"], 0);
        assert_eq!(
            failure(untrusted.on_request(p.as_ref(), &mut req)).status(),
            403
        );
        let p = compile(
            &KIND,
            json!({"ipList": ["1.2.3.4"], "httpHeader": "X-Real-IP", "responseCode": 403}),
        );
        let mut trusted = Fixture::trusting("10.0.0.9:40000", &["10.0.0.0/8"], 0);
        assert_eq!(
            failure(trusted.on_request(p.as_ref(), &mut req)).status(),
            403
        );
    }

    #[test]
    fn with_trusted_hops_the_peer_is_the_first_hop() {
        // One proxy in front: it is the peer, and the hop it appended is the client.
        let p = compile(
            &KIND,
            json!({"ipList": ["198.51.100.7"], "httpHeader": "X-Forwarded-For", "responseCode": 403}),
        );
        let mut f = Fixture::trusting("10.0.0.2:1", &[], 1);
        let mut req = request("GET", &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
        assert_eq!(failure(f.on_request(p.as_ref(), &mut req)).status(), 403);
        // Envoy (use_remote_address) appended the peer itself: it is not counted twice.
        let mut req = request(
            "GET",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")],
        );
        assert_eq!(failure(f.on_request(p.as_ref(), &mut req)).status(), 403);
    }

    #[test]
    fn the_forwarded_client_is_judged_not_the_proxy() {
        let p = compile(
            &KIND,
            json!({"ipList": ["198.51.100.7"], "httpHeader": "X-Forwarded-For"}),
        );
        let mut f = Fixture::from("10.0.0.2:1");
        let mut req = request("GET", &[("x-forwarded-for", "198.51.100.7")]);
        assert!(matches!(
            f.on_request(p.as_ref(), &mut req),
            Verdict::Fail(_)
        ));
    }
}
