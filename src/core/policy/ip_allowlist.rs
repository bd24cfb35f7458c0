//! IP Allowlist (Apiman's `IPWhitelistPolicy`): only listed client addresses pass.

use super::ip_list::{self, IpListConfig};
use super::{Capabilities, Context, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::http::Request;

pub const KIND: PolicyKind = PolicyKind {
    id: "ip-allowlist",
    name: "IP Allowlist",
    apiman_names: &[
        "IPWhitelistPolicy",
        "IPAllowlistPolicy",
        "ip-whitelist",
        "ip-whitelist-policy",
        "ip-allowlist-policy",
    ],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Refuses requests whose client address is not in the list.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10001 `Inbound IP address \"<ip>\" is not included in the white list.`; status from `responseCode`",
    #[cfg(not(target_arch = "wasm32"))]
    fields: ip_list::FIELDS,
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"ipList": ["10.0.0.0/8", "192.168.1.5-192.168.1.9"], "responseCode": 403, "httpHeader": "X-Forwarded-For"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| {
        ip_list::parse_config(cx, f, problems).map(|config| Box::new(IpAllowlist { config }) as _)
    },
};

/// Apiman's failure code IP_NOT_WHITELISTED.
pub const FAILURE_CODE: u32 = 10001;

pub struct IpAllowlist {
    config: IpListConfig,
}

impl Policy for IpAllowlist {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let address = ip_list::client_address(&self.config, cx, request);
        if address
            .as_ref()
            .and_then(|a| a.ip())
            .is_some_and(|ip| self.config.list.contains(ip))
        {
            return Verdict::Continue;
        }
        let shown = address.map(|a| a.to_string()).unwrap_or_default();
        Verdict::Fail(ip_list::failure(
            &self.config,
            FAILURE_CODE,
            format!("Inbound IP address \"{shown}\" is not included in the white list."),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use crate::policy::FailureType;
    use serde_json::json;

    #[test]
    fn a_listed_address_passes() {
        let p = compile(&KIND, json!({"ipList": ["10.0.0.0/8"]}));
        let mut f = Fixture::from("10.1.2.3:5555");
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
    }

    #[test]
    fn an_unlisted_address_fails_with_500_by_default() {
        let p = compile(&KIND, json!({"ipList": ["10.0.0.0/8"]}));
        let mut f = Fixture::from("192.0.2.1:5555");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(fail.code, 10001);
        assert_eq!(fail.failure_type, FailureType::Other);
        assert_eq!(fail.status(), 500);
        assert_eq!(
            fail.message,
            "Inbound IP address \"192.0.2.1\" is not included in the white list."
        );
    }

    #[test]
    fn response_code_403_is_an_authorization_failure() {
        let p = compile(&KIND, json!({"ipList": [], "responseCode": 403}));
        let mut f = Fixture::from("192.0.2.1:5555");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(
            (fail.failure_type, fail.status()),
            (FailureType::Authorization, 403)
        );
    }

    #[test]
    fn response_code_404_is_a_not_found_failure() {
        let p = compile(&KIND, json!({"ipList": [], "responseCode": "404"}));
        let mut f = Fixture::from("192.0.2.1:5555");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(
            (fail.failure_type, fail.status()),
            (FailureType::NotFound, 404)
        );
    }

    #[test]
    fn the_http_header_decides_when_present() {
        let p = compile(
            &KIND,
            json!({"ipList": ["203.0.113.9"], "httpHeader": "X-Forwarded-For"}),
        );
        let mut f = Fixture::from("10.9.9.9:1");
        let mut req = request("GET", &[("x-forwarded-for", "6.6.6.6, 203.0.113.9")]);
        assert!(is_continue(&f.on_request(p.as_ref(), &mut req)));
    }

    #[test]
    fn a_spoofed_left_most_forwarded_hop_does_not_pass() {
        let p = compile(
            &KIND,
            json!({"ipList": ["203.0.113.9"], "httpHeader": "X-Forwarded-For"}),
        );
        let mut f = Fixture::from("10.9.9.9:1");
        let mut req = request("GET", &[("x-forwarded-for", "203.0.113.9, 6.6.6.6")]);
        let fail = failure(f.on_request(p.as_ref(), &mut req));
        assert!(fail.message.contains("\"6.6.6.6\""), "{}", fail.message);
    }

    #[test]
    fn without_the_header_the_downstream_address_decides() {
        let p = compile(
            &KIND,
            json!({"ipList": ["10.9.9.9"], "httpHeader": "X-Forwarded-For"}),
        );
        let mut f = Fixture::from("10.9.9.9:1");
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
    }

    #[test]
    fn a_forwarded_header_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
        let p = compile(
            &KIND,
            json!({"ipList": ["203.0.113.0/24"], "httpHeader": "Forwarded", "responseCode": 403}),
        );
        let mut f = Fixture::trusting("127.0.0.1:40000", &["10.0.0.0/8"], 0);
        let mut req = request("GET", &[("forwarded", "for=203.0.113.7")]);
        let fail = failure(f.on_request(p.as_ref(), &mut req));
        assert_eq!(
            fail.message,
            "Inbound IP address \"127.0.0.1\" is not included in the white list."
        );
    }

    #[test]
    fn a_forwarded_header_from_a_trusted_proxy_names_the_client() {
        let p = compile(
            &KIND,
            json!({"ipList": ["203.0.113.0/24"], "httpHeader": "Forwarded"}),
        );
        let mut f = Fixture::trusting("10.1.2.3:40000", &["10.0.0.0/8"], 0);
        let mut req = request("GET", &[("forwarded", "for=203.0.113.7")]);
        assert!(is_continue(&f.on_request(p.as_ref(), &mut req)));
    }

    #[test]
    fn an_http_header_that_is_not_a_header_name_refuses_the_configuration() {
        assert_eq!(
            errors(&KIND, json!({"ipList": [], "httpHeader": "X Forwarded"})),
            vec!["config.httpHeader: \"X Forwarded\" is not a valid header name"]
        );
    }

    #[test]
    fn an_http_header_without_trusted_proxies_warns_that_clients_choose_their_address() {
        let (_, problems) = build(
            &KIND,
            json!({"ipList": [], "httpHeader": "X-Forwarded-For"}),
            &|_| None,
        );
        assert_eq!(problems.warnings.len(), 1, "{:?}", problems.warnings);
        assert!(
            problems.warnings[0].starts_with(
                "config.httpHeader: \"X-Forwarded-For\" is believed as the client sends it"
            ),
            "{}",
            problems.warnings[0]
        );
    }

    #[test]
    fn an_invalid_entry_refuses_the_configuration() {
        assert_eq!(
            errors(&KIND, json!({"ipList": ["10.0.0.300/8"]})),
            vec!["config.ipList[0]: \"10.0.0.300/8\" is not an IP, CIDR, range or wildcard"]
        );
    }
}
