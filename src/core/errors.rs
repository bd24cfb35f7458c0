//! Apiman's error contract: gateway errors (`X-Gateway-Error`) and policy failures
//! (`X-Policy-Failure-*`), as JSON, or XML for APIs whose `endpointContentType` is `xml`.

use serde_json::Value;

use crate::http::LocalReply;

/// Apiman's failure types; each maps to an HTTP status unless the failure names its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureType {
    Authentication,
    Authorization,
    NotFound,
    Other,
}

impl FailureType {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::Authentication => "Authentication",
            FailureType::Authorization => "Authorization",
            FailureType::NotFound => "NotFound",
            FailureType::Other => "Other",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            FailureType::Authentication => 401,
            FailureType::Authorization => 403,
            FailureType::NotFound => 404,
            FailureType::Other => 500,
        }
    }
}

/// A policy's refusal of a request, answered with Apiman's policy-failure contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFailure {
    pub failure_type: FailureType,
    pub code: u32,
    pub message: String,
    /// The policy's own status; used when ≥ 300, else the type decides.
    pub response_code: u16,
    /// Extra headers for the failure response (e.g. `WWW-Authenticate`).
    pub headers: Vec<(String, String)>,
}

impl PolicyFailure {
    pub fn new(failure_type: FailureType, code: u32, message: impl Into<String>) -> PolicyFailure {
        PolicyFailure {
            failure_type,
            code,
            message: message.into(),
            response_code: 0,
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: u16) -> PolicyFailure {
        self.response_code = status;
        self
    }

    /// The HTTP status of the failure response.
    pub fn status(&self) -> u16 {
        if self.response_code >= 300 {
            self.response_code
        } else {
            self.failure_type.status()
        }
    }
}

/// The engine's errors, with Apiman's statuses and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    ApiNotFound,
    ApiNotPublic,
    /// Carries the key already masked: keys are never echoed back in full.
    NoClientForKey(String),
    NoContract {
        client_id: String,
        api_id: String,
    },
    /// A policy's call-out got no usable answer (no such cluster, timeout, reset, 5xx) and the
    /// policy did not decide otherwise: the request is refused, never passed.
    CallOutFailed {
        cluster: String,
    },
    /// Envoy knows no cluster of the API's name.
    BackendClusterNotFound,
    /// The backend could not be reached (connection refused or reset, TLS failure, no healthy
    /// host, circuit breaker).
    BackendUnavailable,
    /// The backend did not answer within the read timeout.
    BackendTimeout,
}

impl GatewayError {
    /// The gateway's error for a response Envoy generated itself, from its
    /// `response.code_details`; `None` for the backend's own answers and anything else.
    pub fn from_envoy_details(details: &str) -> Option<GatewayError> {
        let reason = details.split('{').next().unwrap_or(details);
        match reason {
            "response_timeout"
            | "upstream_response_timeout"
            | "upstream_per_try_timeout"
            | "upstream_per_try_idle_timeout"
            | "upstream_max_stream_duration_reached" => Some(GatewayError::BackendTimeout),
            "cluster_not_found" => Some(GatewayError::BackendClusterNotFound),
            "upstream_reset_before_response_started"
            | "no_healthy_upstream"
            | "maintenance_mode"
            | "drop_overload"
            | "unconditional_drop_overload"
            | "upstream_overflow" => Some(GatewayError::BackendUnavailable),
            _ => None,
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::ApiNotFound => 404,
            GatewayError::ApiNotPublic => 403,
            GatewayError::NoClientForKey(_) => 404,
            GatewayError::NoContract { .. } => 404,
            GatewayError::CallOutFailed { .. } => 503,
            GatewayError::BackendClusterNotFound | GatewayError::BackendUnavailable => 503,
            GatewayError::BackendTimeout => 504,
        }
    }

    /// A short stable name for metrics and decision logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::ApiNotFound => "api_not_found",
            GatewayError::ApiNotPublic => "api_not_public",
            GatewayError::NoClientForKey(_) => "no_client",
            GatewayError::NoContract { .. } => "no_contract",
            GatewayError::CallOutFailed { .. } => "call_out_failed",
            GatewayError::BackendClusterNotFound => "backend_cluster_not_found",
            GatewayError::BackendUnavailable => "backend_unavailable",
            GatewayError::BackendTimeout => "backend_timeout",
        }
    }

    pub fn message(&self) -> String {
        match self {
            GatewayError::ApiNotFound => "API not found.".to_string(),
            GatewayError::ApiNotPublic => "API not public.".to_string(),
            GatewayError::NoClientForKey(masked) => format!("No client found for API Key {masked}"),
            GatewayError::NoContract { client_id, api_id } => {
                format!("No contract found between Client {client_id} and API {api_id}.")
            }
            GatewayError::CallOutFailed { cluster } => {
                format!("A policy could not get an answer from {cluster}.")
            }
            GatewayError::BackendClusterNotFound => "API backend cluster not found.".to_string(),
            GatewayError::BackendUnavailable => "API backend unavailable.".to_string(),
            GatewayError::BackendTimeout => "API backend timed out.".to_string(),
        }
    }

    pub fn reply(&self, xml: bool) -> LocalReply {
        gateway_error_reply(self.status(), &self.message(), xml)
    }
}

/// Shows enough of an API key to recognise it in a support ticket, never enough to use it:
/// a quarter of it, at most four characters, then `****`.
pub fn mask_key(key: &str) -> String {
    let visible = (key.chars().count() / 4).min(4);
    let shown: String = key.chars().take(visible).collect();
    format!("{shown}****")
}

/// A gateway error: `X-Gateway-Error` and `{"responseCode":N,"message":"..."}`.
pub fn gateway_error_reply(status: u16, message: &str, xml: bool) -> LocalReply {
    let message = header_safe(message);
    let (content_type, body) = if xml {
        (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><engineErrorResponse><message>{}</message><responseCode>{status}</responseCode></engineErrorResponse>",
                xml_escape(&message)
            ),
        )
    } else {
        (
            "application/json",
            // Field order as Apiman writes it.
            format!(
                "{{\"responseCode\":{status},\"message\":{}}}",
                json_string(&message)
            ),
        )
    };
    LocalReply {
        status,
        headers: vec![
            ("x-gateway-error".to_string(), message),
            ("content-type".to_string(), content_type.to_string()),
        ],
        body: body.into_bytes(),
    }
}

/// A policy failure: `X-Policy-Failure-Type/-Message/-Code`, the failure's own headers, and
/// `{"type","failureCode","responseCode","message","headers"}`. `responseCode` in the body is
/// the HTTP status actually sent (Apiman writes the policy's raw value, 0 when it set none).
pub fn policy_failure_reply(failure: &PolicyFailure, xml: bool) -> LocalReply {
    let status = failure.status();
    let message = header_safe(&failure.message);
    let mut headers = vec![
        (
            "x-policy-failure-type".to_string(),
            failure.failure_type.as_str().to_string(),
        ),
        ("x-policy-failure-message".to_string(), message.clone()),
        (
            "x-policy-failure-code".to_string(),
            failure.code.to_string(),
        ),
    ];
    for (k, v) in &failure.headers {
        headers.push((k.to_ascii_lowercase(), header_safe(v)));
    }
    let body = if xml {
        headers.push(("content-type".to_string(), "application/xml".to_string()));
        let entries: String = failure
            .headers
            .iter()
            .map(|(k, v)| {
                format!(
                    "<entry><key>{}</key><value>{}</value></entry>",
                    xml_escape(k),
                    xml_escape(v)
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><policyFailure><failureCode>{}</failureCode><headers>{entries}</headers><message>{}</message><responseCode>{status}</responseCode><type>{}</type></policyFailure>",
            failure.code,
            xml_escape(&failure.message),
            failure.failure_type.as_str()
        )
    } else {
        headers.push(("content-type".to_string(), "application/json".to_string()));
        let failure_headers: Vec<String> = failure
            .headers
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
            .collect();
        // Field order as Apiman writes it (declaration order of its PolicyFailure bean).
        format!(
            "{{\"type\":\"{}\",\"failureCode\":{},\"responseCode\":{status},\"message\":{},\"headers\":{{{}}}}}",
            failure.failure_type.as_str(),
            failure.code,
            json_string(&failure.message),
            failure_headers.join(",")
        )
    };
    LocalReply {
        status,
        headers,
        body: body.into_bytes(),
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Header values may not carry control characters; messages can quote request data.
fn header_safe(value: &str) -> String {
    if value.bytes().all(|b| b >= 0x20 && b != 0x7f || b == b'\t') {
        value.to_string()
    } else {
        value
            .chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect()
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FailureType;
    use serde_json::json;

    fn body(reply: &LocalReply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn envoys_own_upstream_failures_map_to_the_gateways_errors() {
        let map = |d: &str| GatewayError::from_envoy_details(d).map(|e| (e.status(), e.message()));
        assert_eq!(
            map("response_timeout"),
            Some((504, "API backend timed out.".into()))
        );
        assert_eq!(
            map("upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"),
            Some((503, "API backend unavailable.".into()))
        );
        assert_eq!(
            map("no_healthy_upstream"),
            Some((503, "API backend unavailable.".into()))
        );
        assert_eq!(
            map("cluster_not_found"),
            Some((503, "API backend cluster not found.".into()))
        );
    }

    #[test]
    fn the_backends_own_answers_and_other_replies_are_not_upstream_failures() {
        for d in ["via_upstream", "tollgate", "direct_response", ""] {
            assert_eq!(GatewayError::from_envoy_details(d), None, "{d}");
        }
    }

    #[test]
    fn gateway_errors_carry_the_message_in_header_and_body() {
        let r = GatewayError::ApiNotFound.reply(false);
        assert_eq!(r.status, 404);
        assert_eq!(r.header("X-Gateway-Error"), Some("API not found."));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            body(&r),
            json!({"responseCode": 404, "message": "API not found."})
        );
    }

    #[test]
    fn bodies_keep_apimans_field_order() {
        let r = GatewayError::ApiNotFound.reply(false);
        assert!(String::from_utf8_lossy(&r.body).starts_with("{\"responseCode\":404,"));
        let f = PolicyFailure::new(FailureType::Other, 1, "m");
        let r = policy_failure_reply(&f, false);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "{\"type\":\"Other\",\"failureCode\":1,\"responseCode\":500,\"message\":\"m\",\"headers\":{}}"
        );
    }

    #[test]
    fn a_private_api_without_key_is_403() {
        let r = GatewayError::ApiNotPublic.reply(false);
        assert_eq!(
            (r.status, r.header("x-gateway-error")),
            (403, Some("API not public."))
        );
    }

    #[test]
    fn no_contract_names_client_and_api() {
        let e = GatewayError::NoContract {
            client_id: "app".into(),
            api_id: "echo".into(),
        };
        assert_eq!(
            e.message(),
            "No contract found between Client app and API echo."
        );
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask_key("12345"), "1****");
        assert_eq!(mask_key("abcdefghijklmnopqrstuvwxyz012345"), "abcd****");
        assert_eq!(mask_key("ab"), "****");
        let e = GatewayError::NoClientForKey(mask_key("s3cr3t-k3y-value"));
        assert_eq!(e.message(), "No client found for API Key s3cr****");
    }

    #[test]
    fn policy_failures_use_the_type_status_and_apiman_headers() {
        let f = PolicyFailure::new(
            FailureType::NotFound,
            10007,
            "Requested path \"/x\" has been ignored.",
        );
        let r = policy_failure_reply(&f, false);
        assert_eq!(r.status, 404);
        assert_eq!(r.header("X-Policy-Failure-Type"), Some("NotFound"));
        assert_eq!(r.header("X-Policy-Failure-Code"), Some("10007"));
        assert_eq!(
            r.header("X-Policy-Failure-Message"),
            Some("Requested path \"/x\" has been ignored.")
        );
        assert_eq!(
            body(&r),
            json!({"type": "NotFound", "failureCode": 10007, "responseCode": 404,
                   "message": "Requested path \"/x\" has been ignored.", "headers": {}})
        );
    }

    #[test]
    fn a_policy_status_of_300_or_more_overrides_the_type() {
        let f =
            PolicyFailure::new(FailureType::Other, 10005, "Rate limit exceeded.").with_status(429);
        assert_eq!(policy_failure_reply(&f, false).status, 429);
        let f = PolicyFailure::new(FailureType::Authorization, 1, "x").with_status(200);
        assert_eq!(policy_failure_reply(&f, false).status, 403);
    }

    #[test]
    fn failure_headers_are_sent_and_listed_in_the_body() {
        let mut f = PolicyFailure::new(
            FailureType::Authentication,
            10003,
            "BASIC authentication failed.",
        );
        f.headers
            .push(("WWW-Authenticate".into(), "Basic realm=\"Apiman\"".into()));
        let r = policy_failure_reply(&f, false);
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Apiman\""));
        assert_eq!(
            body(&r)["headers"]["WWW-Authenticate"],
            "Basic realm=\"Apiman\""
        );
    }

    #[test]
    fn xml_apis_get_xml_errors() {
        let r = GatewayError::ApiNotPublic.reply(true);
        assert_eq!(r.header("content-type"), Some("application/xml"));
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.contains("<engineErrorResponse><message>API not public.</message><responseCode>403</responseCode>"), "{text}");
    }

    #[test]
    fn control_characters_never_reach_a_header() {
        let f = PolicyFailure::new(FailureType::Other, 1, "a\r\nb");
        let r = policy_failure_reply(&f, false);
        assert_eq!(r.header("x-policy-failure-message"), Some("a  b"));
    }
}
