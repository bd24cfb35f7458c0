//! Quota (Apiman's `QuotaPolicy`): Rate Limiting with its own failure code (10012), message and
//! headers (`X-Quota-*`), meant for long periods (a month, a year). It counts on its own: a
//! Quota and a Rate Limiting policy in one chain never share a counter or headers.

use super::limits::{self, limit_fields, QUOTA, SERVICE_FIELDS};
use super::{Capabilities, FieldDoc, PolicyKind};

pub const KIND: PolicyKind = PolicyKind {
    id: "quota",
    name: "Quota",
    apiman_names: &["QuotaPolicy", "quota", "quota-policy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Rate Limiting for long periods with its own code and headers: `limit` requests per period for each client (or client per API, user, client address), then 429 until the window ends.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10012: 429 `Quota exceeded.` with the quota headers and `Retry-After`; 10008: 500 Other (keyless request, `Client` granularity); 503 gateway error when a `rateLimitService` gives no answer (unless `failureMode: open`)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: limit_fields!(
        "requests allowed per period (0 to 2^53 − 1); a request is accepted while the count is below it",
        ["X-Quota-Limit", "X-Quota-Remaining", "X-Quota-Reset"],
        SERVICE_FIELDS[0],
        SERVICE_FIELDS[1],
        SERVICE_FIELDS[2],
        SERVICE_FIELDS[3],
        SERVICE_FIELDS[4],
        SERVICE_FIELDS[5],
    ),
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"limit": 10000, "granularity": "Api", "period": "Month", "userHeader": "X-Auth-User",
                 "headerLimit": "X-Quota-Limit", "headerRemaining": "X-Quota-Remaining",
                 "headerReset": "X-Quota-Reset",
                 "rateLimitService": {"cluster": "ratelimit", "url": "http://ratelimit.internal:8081",
                                      "domain": "tollgate", "timeoutMs": 500,
                                      "failureMode": "closed"}}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| {
        limits::build_rate_limit(&QUOTA, cx, f, problems).map(|p| Box::new(p) as _)
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate_limiting;
    use crate::policy::testing::*;
    use serde_json::json;

    #[test]
    fn quota_refuses_with_10012_and_its_own_headers() {
        let p = compile(
            &KIND,
            json!({"limit": 1, "granularity": "Api", "period": "Month"}),
        );
        let mut f = Fixture::new();
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
        assert!(f
            .state
            .response_headers
            .iter()
            .any(|(k, v)| k == "X-Quota-Remaining" && v == "0"));
        f.state = Default::default();
        let failure = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!((failure.status(), failure.code), (429, 10012));
        assert_eq!(failure.message, "Quota exceeded.");
        assert!(failure.headers.iter().any(|(k, _)| k == "X-Quota-Reset"));
    }

    #[test]
    fn a_quota_and_a_rate_limit_in_one_chain_count_and_announce_separately() {
        let config = json!({"limit": 2, "granularity": "Api", "period": "Day"});
        let quota = compile(&KIND, config.clone());
        let rate = compile(&rate_limiting::KIND, config);
        let mut f = Fixture::new();
        let mut cx = f.cx();
        assert!(is_continue(
            &quota.on_request(&mut cx, &mut request("GET", &[]))
        ));
        cx.position = 1;
        assert!(is_continue(
            &rate.on_request(&mut cx, &mut request("GET", &[]))
        ));
        let shown: Vec<(&str, &str)> = f
            .state
            .response_headers
            .iter()
            .filter(|(k, _)| k.ends_with("Remaining"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![("X-Quota-Remaining", "1"), ("X-RateLimit-Remaining", "1")]
        );
    }
}
