//! Timeout (Apiman plugin `timeout-policy`): how long the gateway waits for the API's backend.
//!
//! The read timeout is applied per request by Envoy's router: the policy sets
//! `x-envoy-upstream-rq-timeout-ms` on the request, which the router consumes and honours in
//! place of the route's timeout (verified on Envoy 1.40; Envoy strips the header from external
//! clients, so only the gateway sets it). A backend that does not answer in time gets the
//! gateway's 504 `API backend timed out.` (Apiman: 500 from its connector).
//!
//! The connect timeout is a property of Envoy's cluster, not of a request: tollgate-gen writes
//! it into the API's cluster (`connect_timeout`); a hand-written Envoy configuration sets it
//! there. A backend that cannot be connected to in time gets 503 `API backend unavailable.`.
//!
//! Differences from Apiman: Envoy's timeout bounds the whole response (from the end of the
//! request until the response is complete), where Apiman's connectors bound the silence between
//! two reads; the timed-out request is answered 504 rather than 500.

use serde_json::Value;

use super::{Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::http::Request;
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "timeout",
    name: "Timeout",
    apiman_names: &["timeout-policy", "TimeoutPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Bounds how long the gateway waits for the API's backend: the read timeout per request (Envoy's router), the connect timeout on the API's Envoy cluster (tollgate-gen).",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "504 gateway error `API backend timed out.` (read timeout); 503 `API backend unavailable.` (connect timeout)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "timeoutRead",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "milliseconds (a string, as Apiman writes it, or a number) the backend has to answer, from the end of the request until its response is complete; `0` or absent: the route's timeout",
        },
        FieldDoc {
            name: "timeoutConnect",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "milliseconds to establish the connection (TCP and TLS): written into the API's Envoy cluster by tollgate-gen; Envoy has no per-request connect timeout",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"timeoutConnect": "2000", "timeoutRead": "5000"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

/// The longest timeout accepted: a day.
const MAX_MS: i64 = 86_400_000;

/// The request header Envoy's router takes its timeout from.
pub const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

pub struct Timeout {
    /// The read timeout as the header value, when set.
    read: Option<String>,
}

fn millis(f: &mut Fields, name: &str, problems: &mut Problems) -> Option<u64> {
    let ms = f.integer(&[name], problems)?;
    if !(0..=MAX_MS).contains(&ms) {
        problems.error(
            &f.field_path(name),
            format!("{ms} is not a number of milliseconds from 0 to {MAX_MS}"),
        );
        return None;
    }
    u64::try_from(ms).ok().filter(|ms| *ms > 0)
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<Timeout> {
    let read = millis(f, "timeoutRead", problems);
    // Read here so that a bad value is reported; tollgate-gen applies it to the cluster.
    let _ = millis(f, "timeoutConnect", problems);
    Some(Timeout {
        read: read.map(|ms| ms.to_string()),
    })
}

/// The connect timeout a timeout policy's configuration asks for (for tollgate-gen): `None`
/// when absent, zero or not a number of milliseconds (the filter's loader reports those).
pub fn connect_timeout_ms(config: &Value) -> Option<u64> {
    let ms = match config.get("timeoutConnect")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (ms > 0 && ms <= MAX_MS as u64).then_some(ms)
}

impl Policy for Timeout {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, _cx: &mut Context, request: &mut Request) -> Verdict {
        if let Some(ms) = &self.read {
            request.headers.set(TIMEOUT_HEADER, ms);
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    #[test]
    fn the_read_timeout_goes_to_envoys_router_in_its_header() {
        let p = compile(&KIND, json!({"timeoutRead": "1500"}));
        let mut req = request("GET", &[]);
        assert!(is_continue(
            &Fixture::new().on_request(p.as_ref(), &mut req)
        ));
        assert_eq!(req.headers.get(TIMEOUT_HEADER), Some("1500"));
    }

    #[test]
    fn a_numeric_read_timeout_is_accepted() {
        let p = compile(&KIND, json!({"timeoutRead": 250}));
        let mut req = request("GET", &[]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get(TIMEOUT_HEADER), Some("250"));
    }

    #[test]
    fn without_a_read_timeout_the_routes_applies() {
        for config in [
            json!({}),
            json!({"timeoutRead": "0"}),
            json!({"timeoutRead": ""}),
        ] {
            let p = compile(&KIND, config);
            let mut req = request("GET", &[]);
            Fixture::new().on_request(p.as_ref(), &mut req);
            assert_eq!(req.headers.get(TIMEOUT_HEADER), None);
        }
    }

    #[test]
    fn a_timeout_that_is_not_milliseconds_is_refused_with_its_path() {
        assert_eq!(
            errors(&KIND, json!({"timeoutRead": "soon"})),
            vec!["config.timeoutRead: expected a whole number, found \"soon\""]
        );
        assert_eq!(
            errors(&KIND, json!({"timeoutConnect": "-5"})),
            vec!["config.timeoutConnect: -5 is not a number of milliseconds from 0 to 86400000"]
        );
    }

    #[test]
    fn the_connect_timeout_is_read_for_tollgate_gen() {
        assert_eq!(
            connect_timeout_ms(&json!({"timeoutConnect": "2000"})),
            Some(2000)
        );
        assert_eq!(
            connect_timeout_ms(&json!({"timeoutConnect": 700})),
            Some(700)
        );
        assert_eq!(connect_timeout_ms(&json!({"timeoutConnect": "0"})), None);
        assert_eq!(connect_timeout_ms(&json!({"timeoutRead": "1"})), None);
    }
}
