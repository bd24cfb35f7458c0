//! Rate Limiting (Apiman's `RateLimitingPolicy`): at most `limit` requests per period for each
//! subject (client, client and API, user, address); the request that would go over is refused
//! with 429. See `limits` for what it shares with Quota and Transfer Quota.

use super::limits::{self, limit_fields, RATE_LIMITING, SERVICE_FIELDS};
use super::{Capabilities, FieldDoc, PolicyKind};

pub const KIND: PolicyKind = PolicyKind {
    id: "rate-limiting",
    name: "Rate Limiting",
    apiman_names: &["RateLimitingPolicy", "rate-limiting", "rate-limiting-policy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Allows each client (or client per API, user, client address) `limit` requests per period and refuses the rest with 429 until the window ends; exact across Envoy's workers, or shared by several gateways through a rate limit service.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10005: 429 `Rate limit exceeded.` with the limit headers and `Retry-After`; 10008: 500 Other `No client app available for rate limiting.  Public APIs should not use per-app rate limiting rules.` (keyless request, `Client` granularity); 503 gateway error when a `rateLimitService` gives no answer (unless `failureMode: open`)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: limit_fields!(
        "requests allowed per period (0 to 2^53 − 1); a request is accepted while the count is below it",
        ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"],
        SERVICE_FIELDS[0],
        SERVICE_FIELDS[1],
        SERVICE_FIELDS[2],
        SERVICE_FIELDS[3],
        SERVICE_FIELDS[4],
        SERVICE_FIELDS[5],
    ),
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"limit": 100, "granularity": "Client", "period": "Minute", "userHeader": "X-Auth-User",
                 "headerLimit": "X-RateLimit-Limit", "headerRemaining": "X-RateLimit-Remaining",
                 "headerReset": "X-RateLimit-Reset",
                 "rateLimitService": {"cluster": "ratelimit", "url": "http://ratelimit.internal:8081",
                                      "domain": "tollgate", "timeoutMs": 500,
                                      "failureMode": "closed"}}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| {
        limits::build_rate_limit(&RATE_LIMITING, cx, f, problems).map(|p| Box::new(p) as _)
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClientIdentity;
    use crate::policy::testing::*;
    use crate::policy::{CallResponse, Policy, Subject, Verdict};
    use crate::rls;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn policy(config: serde_json::Value) -> Box<dyn Policy> {
        compile(&KIND, config)
    }

    fn client() -> ClientIdentity<'static> {
        ClientIdentity {
            organization_id: "Org",
            client_id: "app",
            version: "1.0",
        }
    }

    /// Runs the request phase for a keyed request (key `key`) at `fixture`'s clock.
    fn keyed(p: &dyn Policy, f: &mut Fixture, key: &str, headers: &[(&str, &str)]) -> Verdict {
        f.state = crate::policy::RequestState {
            api_key: Some(key.to_string()),
            ..Default::default()
        };
        let id = client();
        let mut cx = f.cx();
        cx.client = Some(id);
        p.on_request(&mut cx, &mut request("GET", headers))
    }

    fn header<'a>(f: &'a Fixture, name: &str) -> Option<&'a str> {
        f.state
            .response_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn failure_header<'a>(
        failure: &'a crate::policy::PolicyFailure,
        name: &str,
    ) -> Option<&'a str> {
        failure
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn requests_below_the_limit_pass_with_the_limit_headers() {
        let p = policy(json!({"limit": 2, "granularity": "Client", "period": "Hour"}));
        let mut f = Fixture::new();
        // 2026-01-01T00:00:00Z + 10 s.
        f.host.now = UNIX_EPOCH + Duration::from_secs(1_767_225_610);
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k1", &[])));
        assert_eq!(header(&f, "X-RateLimit-Limit"), Some("2"));
        assert_eq!(header(&f, "X-RateLimit-Remaining"), Some("1"));
        assert_eq!(header(&f, "X-RateLimit-Reset"), Some("3590"));
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k1", &[])));
        assert_eq!(header(&f, "X-RateLimit-Remaining"), Some("0"));
    }

    #[test]
    fn the_request_at_the_limit_is_refused_with_429_and_retry_after() {
        let p = policy(json!({"limit": 1, "granularity": "Client", "period": "Minute"}));
        let mut f = Fixture::new();
        f.host.now = UNIX_EPOCH + Duration::from_secs(1_767_225_645);
        keyed(p.as_ref(), &mut f, "k1", &[]);
        let failure = failure(keyed(p.as_ref(), &mut f, "k1", &[]));
        assert_eq!((failure.status(), failure.code), (429, 10005));
        assert_eq!(failure.message, "Rate limit exceeded.");
        assert_eq!(failure_header(&failure, "X-RateLimit-Remaining"), Some("0"));
        assert_eq!(failure_header(&failure, "X-RateLimit-Reset"), Some("15"));
        assert_eq!(failure_header(&failure, "Retry-After"), Some("15"));
    }

    #[test]
    fn a_refused_request_is_not_counted_so_remaining_never_goes_negative() {
        let p = policy(json!({"limit": 1, "granularity": "Client", "period": "Day"}));
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k1", &[]);
        for _ in 0..3 {
            let failure = failure(keyed(p.as_ref(), &mut f, "k1", &[]));
            assert_eq!(failure_header(&failure, "X-RateLimit-Remaining"), Some("0"));
        }
    }

    #[test]
    fn an_admitted_request_costs_one_read_and_one_write_and_a_refused_one_a_read() {
        let p = policy(json!({"limit": 1, "granularity": "Client", "period": "Day"}));
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k1", &[]);
        assert_eq!((f.host.calls.shared_get, f.host.calls.shared_set), (1, 1));
        keyed(p.as_ref(), &mut f, "k1", &[]);
        assert_eq!((f.host.calls.shared_get, f.host.calls.shared_set), (2, 1));
    }

    #[test]
    fn a_new_window_starts_a_new_count() {
        let p = policy(json!({"limit": 1, "granularity": "Client", "period": "Second"}));
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k1", &[]);
        assert!(matches!(
            keyed(p.as_ref(), &mut f, "k1", &[]),
            Verdict::Fail(_)
        ));
        f.host.now += Duration::from_secs(1);
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k1", &[])));
    }

    #[test]
    fn client_granularity_counts_per_key() {
        let p = policy(json!({"limit": 1, "granularity": "Client", "period": "Day"}));
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k1", &[]);
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k2", &[])));
    }

    #[test]
    fn api_granularity_counts_per_key_and_api() {
        let p = policy(json!({"limit": 1, "granularity": "Api", "period": "Day"}));
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k1", &[]);
        f.api.api_id = "other".into();
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k1", &[])));
        assert!(matches!(
            keyed(p.as_ref(), &mut f, "k1", &[]),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn user_granularity_counts_per_user_header_value() {
        let p = policy(
            json!({"limit": 1, "granularity": "User", "period": "Day", "userHeader": "X-User"}),
        );
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k1", &[("x-user", "alice")]);
        assert!(is_continue(&keyed(
            p.as_ref(),
            &mut f,
            "k1",
            &[("x-user", "bob")]
        )));
        assert!(matches!(
            keyed(p.as_ref(), &mut f, "k1", &[("x-user", "alice")]),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn requests_without_a_user_share_one_bucket() {
        let p = policy(
            json!({"limit": 1, "granularity": "User", "period": "Day", "userHeader": "X-User"}),
        );
        let mut f = Fixture::new();
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k1", &[])));
        assert!(matches!(
            keyed(p.as_ref(), &mut f, "k1", &[]),
            Verdict::Fail(_)
        ));
        assert!(is_continue(&keyed(
            p.as_ref(),
            &mut f,
            "k1",
            &[("x-user", "alice")]
        )));
    }

    #[test]
    fn ip_granularity_counts_per_client_address() {
        let p = policy(json!({"limit": 1, "granularity": "Ip", "period": "Day"}));
        let mut f = Fixture::from("10.0.0.1:1000");
        keyed(p.as_ref(), &mut f, "k1", &[]);
        f.host.downstream = Some("10.0.0.2:1000".into());
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k1", &[])));
        assert!(matches!(
            keyed(p.as_ref(), &mut f, "k1", &[]),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn a_keyless_request_limited_per_client_fails_with_10008() {
        let p = policy(json!({"limit": 5, "granularity": "Client", "period": "Day"}));
        let mut f = Fixture::new();
        let failure = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!((failure.status(), failure.code), (500, 10008));
        assert!(failure
            .message
            .starts_with("No client app available for rate limiting."));
    }

    #[test]
    fn keyless_requests_to_a_public_api_count_per_api() {
        let p = policy(json!({"limit": 1, "granularity": "Api", "period": "Day"}));
        let mut f = Fixture::new();
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
        f.state = Default::default();
        assert!(matches!(
            f.on_request(p.as_ref(), &mut request("GET", &[])),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn the_same_policy_twice_in_one_chain_counts_a_request_once() {
        let p = policy(json!({"limit": 1, "granularity": "Api", "period": "Day"}));
        let mut f = Fixture::new();
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
        // The plan's copy, later in the same chain.
        let mut cx = f.cx();
        cx.position = 1;
        assert!(is_continue(
            &p.on_request(&mut cx, &mut request("GET", &[]))
        ));
    }

    #[test]
    fn custom_header_names_are_used() {
        let p = policy(json!({"limit": 5, "granularity": "Api", "period": "Day",
            "headerLimit": "X-L", "headerRemaining": "X-R", "headerReset": "X-T"}));
        let mut f = Fixture::new();
        f.on_request(p.as_ref(), &mut request("GET", &[]));
        assert_eq!(
            (header(&f, "X-L"), header(&f, "X-R")),
            (Some("5"), Some("4"))
        );
        assert!(header(&f, "X-T").is_some());
    }

    #[test]
    fn of_two_limits_with_the_same_header_names_the_tighter_one_is_shown() {
        let loose = policy(json!({"limit": 100, "granularity": "Api", "period": "Day"}));
        let tight = policy(json!({"limit": 3, "granularity": "Api", "period": "Hour"}));
        let mut f = Fixture::new();
        f.on_request(tight.as_ref(), &mut request("GET", &[]));
        f.on_request(loose.as_ref(), &mut request("GET", &[]));
        assert_eq!(header(&f, "X-RateLimit-Limit"), Some("3"));
        assert_eq!(header(&f, "X-RateLimit-Remaining"), Some("2"));
        assert_eq!(
            f.state
                .response_headers
                .iter()
                .filter(|(k, _)| k == "X-RateLimit-Limit")
                .count(),
            1
        );
    }

    #[test]
    fn required_fields_and_bad_values_are_errors_naming_their_path() {
        assert_eq!(
            errors(&KIND, json!({})),
            vec![
                "config.limit: is required",
                "config.granularity: is required",
                "config.period: is required"
            ]
        );
        assert_eq!(
            errors(&KIND, json!({"limit": -1, "granularity": "Planet", "period": "Week"})),
            vec![
                "config.limit: must be 0 to 9007199254740991",
                "config.granularity: \"Planet\" is not one of Client, Api, User, Ip, Application, Service",
                "config.period: \"Week\" is not one of Second, Minute, Hour, Day, Month, Year"
            ]
        );
        assert_eq!(
            errors(
                &KIND,
                json!({"limit": 1, "granularity": "Api", "period": "Day", "headerLimit": "X Bad"})
            ),
            vec!["config.headerLimit: \"X Bad\" is not a valid header name"]
        );
    }

    #[test]
    fn apiman_strings_and_old_granularity_names_are_accepted() {
        let p = policy(json!({"limit": "2", "granularity": "Service", "period": "hour"}));
        let mut f = Fixture::new();
        assert!(is_continue(&keyed(p.as_ref(), &mut f, "k", &[])));
    }

    fn rls_policy(extra: serde_json::Value) -> Box<dyn Policy> {
        let mut config = json!({"limit": 50, "granularity": "Client", "period": "Minute",
            "rateLimitService": {"cluster": "ratelimit"}});
        if let (Some(s), Some(e)) = (
            config["rateLimitService"].as_object_mut(),
            extra.as_object(),
        ) {
            s.extend(e.clone());
        }
        policy(config)
    }

    fn grpc_answer(response: &rls::Response) -> CallResponse {
        CallResponse {
            cluster: "ratelimit".into(),
            status: 200,
            headers: vec![("grpc-status".into(), "0".into())],
            body: rls::encode_response(response),
        }
    }

    #[test]
    fn with_a_rate_limit_service_the_service_is_asked_with_a_digest_of_the_subject() {
        let p = rls_policy(json!({"domain": "gw"}));
        let mut f = Fixture::new();
        let call = match keyed(p.as_ref(), &mut f, "secret-key", &[]) {
            Verdict::CallOut(c) => c,
            other => panic!("expected a call-out, got {other:?}"),
        };
        assert_eq!(call.cluster, "ratelimit");
        let grpc = call.grpc.unwrap();
        assert_eq!(
            (grpc.service.as_str(), grpc.method.as_str()),
            (rls::SERVICE, rls::METHOD)
        );
        let sent = rls::decode_request(&call.body.unwrap()).unwrap();
        assert_eq!(sent.domain, "gw");
        assert_eq!(sent.limit, Some((50, 2)));
        assert_eq!(sent.hits_addend, 1);
        assert_eq!(sent.entries[0].0, "tollgate_limit");
        assert_eq!(sent.entries[0].1.len(), 16);
        assert_eq!(sent.entries[1].0, "subject");
        assert!(!sent.entries[1].1.contains("secret"));
    }

    #[test]
    fn the_services_ok_passes_with_its_remaining_and_reset() {
        let p = rls_policy(json!({}));
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k", &[]);
        let answer = grpc_answer(&rls::Response {
            overall_code: rls::CODE_OK,
            statuses: vec![rls::DescriptorStatus {
                code: rls::CODE_OK,
                limit: Some(50),
                remaining: 7,
                reset_seconds: Some(42),
            }],
        });
        let v = p.on_call_response(&mut f.cx(), &answer, Subject::Complete);
        assert!(is_continue(&v));
        assert_eq!(header(&f, "X-RateLimit-Remaining"), Some("7"));
        assert_eq!(header(&f, "X-RateLimit-Reset"), Some("42"));
    }

    #[test]
    fn the_services_over_limit_refuses_with_429() {
        let p = rls_policy(json!({}));
        let mut f = Fixture::new();
        keyed(p.as_ref(), &mut f, "k", &[]);
        let answer = grpc_answer(&rls::Response {
            overall_code: rls::CODE_OVER_LIMIT,
            statuses: vec![rls::DescriptorStatus {
                code: rls::CODE_OVER_LIMIT,
                limit: Some(50),
                remaining: 0,
                reset_seconds: Some(9),
            }],
        });
        let failure = failure(p.on_call_response(&mut f.cx(), &answer, Subject::Complete));
        assert_eq!((failure.status(), failure.code), (429, 10005));
        assert_eq!(failure_header(&failure, "Retry-After"), Some("9"));
    }

    #[test]
    fn no_answer_from_the_service_refuses_unless_failure_mode_is_open() {
        let down = CallResponse {
            cluster: "ratelimit".into(),
            status: 0,
            headers: vec![("grpc-status".into(), "14".into())],
            body: Vec::new(),
        };
        let closed = rls_policy(json!({}));
        let mut f = Fixture::new();
        keyed(closed.as_ref(), &mut f, "k", &[]);
        let v = closed.on_call_response(&mut f.cx(), &down, Subject::Complete);
        assert!(matches!(v, Verdict::Error(_)));
        let open = rls_policy(json!({"failureMode": "open"}));
        let mut f = Fixture::new();
        keyed(open.as_ref(), &mut f, "k", &[]);
        assert!(is_continue(&open.on_call_response(
            &mut f.cx(),
            &down,
            Subject::Complete
        )));
    }

    #[test]
    fn a_service_needs_a_cluster_and_a_32_bit_limit() {
        assert_eq!(
            errors(&KIND, json!({"limit": 5_000_000_000_i64, "granularity": "Api", "period": "Day",
                "rateLimitService": {}})),
            vec![
                "config.rateLimitService.cluster: is required (or url)",
                "config.limit: must be at most 4294967295 with a rateLimitService (the protocol counts in 32 bits)"
            ]
        );
    }

    /// The call targets `config` declares (what tollgate-gen makes clusters of).
    fn call_targets(config: serde_json::Value) -> Vec<crate::policy::CallTarget> {
        let settings = crate::model::GatewaySettings::default();
        let mut cx = crate::policy::BuildContext::new("i", &settings, &|_| None);
        let mut problems = crate::json::Problems::default();
        let mut fields = crate::json::Fields::of(&config, "config", &mut problems).unwrap();
        (KIND.build)(&mut cx, &mut fields, &mut problems).unwrap();
        assert!(problems.errors.is_empty(), "{problems:?}");
        cx.call_targets
    }

    #[test]
    fn a_service_url_declares_a_grpc_target_named_host_port_unless_a_cluster_is_named() {
        let limit = |service| json!({"limit": 5, "granularity": "Api", "period": "Day", "rateLimitService": service});
        let targets = call_targets(limit(json!({"url": "http://rls.test:8081"})));
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].cluster, "rls.test:8081");
        assert!(targets[0].grpc);
        assert!(!targets[0].endpoint.https);
        let targets = call_targets(limit(
            json!({"url": "https://rls.test", "cluster": "ratelimit"}),
        ));
        assert_eq!(targets[0].cluster, "ratelimit");
        assert_eq!(targets[0].endpoint.port, 443);
        // A cluster by name alone is the operator's own: nothing to create.
        assert!(call_targets(limit(json!({"cluster": "ratelimit"}))).is_empty());
    }

    #[test]
    fn a_service_url_that_is_not_http_is_refused_at_url() {
        assert_eq!(
            errors(&KIND, json!({"limit": 5, "granularity": "Api", "period": "Day",
                "rateLimitService": {"url": "grpc://rls.test:8081"}})),
            vec!["config.rateLimitService.url: \"grpc://rls.test:8081\" is not an http:// or https:// URL"]
        );
    }

    #[test]
    fn local_counting_sweeps_on_ticks_and_a_service_does_not() {
        assert!(policy(json!({"limit": 1, "granularity": "Api", "period": "Day"})).wants_tick());
        assert!(!rls_policy(json!({})).wants_tick());
    }
}
