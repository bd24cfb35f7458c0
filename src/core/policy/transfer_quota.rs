//! Transfer Quota (Apiman's `TransferQuotaPolicy`): at most `limit` bytes per period for each
//! subject, counted as they stream (request bodies for `upload`, response bodies for
//! `download`, both for `both`), never buffered. As in Apiman, the request that crosses the
//! limit completes; the next one is refused with 429 (10013). The bytes of an exchange are
//! added to the counter once, when its stream ends (one read and one CAS write), in the window
//! the stream ended in.

use std::time::SystemTime;

use super::limits::{self, limit_fields, LimitConfig, LogThrottle, TRANSFER_QUOTA};
use super::{Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::counters::{self, Counter};
use crate::host::Host;
use crate::http::Request;

pub const KIND: PolicyKind = PolicyKind {
    id: "transfer-quota",
    name: "Transfer Quota",
    apiman_names: &["TransferQuotaPolicy", "transfer-quota", "transfer-quota-policy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Allows each client (or client per API, user, client address) `limit` bytes of request and/or response bodies per period, counted as they stream; the request that crosses the limit completes, later ones get 429 until the window ends.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10013: 429 `Transfer quota exceeded.` with the quota headers and `Retry-After`; 10008: 500 Other `No client app available for transfer quota.  Public APIs should not use per-app quota rules.` (keyless request, `Client` granularity)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: limit_fields!(
        "bytes allowed per period (0 to 2^53 − 1; Apiman's UI writes KB/MB/GB as 1024ⁿ bytes); a request is accepted while the count is below it",
        ["X-TransferQuota-Limit", "X-TransferQuota-Remaining", "X-TransferQuota-Reset"],
        FieldDoc {
            name: "direction",
            aliases: &[],
            ty: "upload|download|both",
            default: "",
            apiman: true,
            meaning: "what counts: request bodies, response bodies, or both",
        },
    ),
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"limit": 1073741824, "direction": "both", "granularity": "Client", "period": "Day",
                 "userHeader": "X-Auth-User", "headerLimit": "X-TransferQuota-Limit",
                 "headerRemaining": "X-TransferQuota-Remaining", "headerReset": "X-TransferQuota-Reset"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |cx, f, problems| {
        let config = limits::parse_config(f, &TRANSFER_QUOTA, problems);
        if !f.has("direction") {
            problems.error(&f.field_path("direction"), "is required");
        }
        let direction = f.choice(&["direction"], &["upload", "download", "both"], problems);
        Some(Box::new(TransferQuota {
            instance: cx.instance_id.to_string(),
            config: config?,
            upload: matches!(direction?, 0 | 2),
            download: matches!(direction?, 1 | 2),
            log: LogThrottle::new(),
        }) as _)
    },
};

pub struct TransferQuota {
    instance: String,
    config: LimitConfig,
    upload: bool,
    download: bool,
    log: LogThrottle,
}

/// One exchange's transfer, kept in the policy's slot between its phases.
struct Transfer {
    /// `None` until the request phase ran: body chunks can stream past while an earlier
    /// policy's call-out holds the request phase, and they count too.
    subject: Option<String>,
    /// The count when the request started.
    before: u64,
    /// Bytes counted so far.
    bytes: u64,
    /// Whether the headers shown are this policy's (see `limits::announce`).
    announced: bool,
}

impl TransferQuota {
    fn count(&self, cx: &mut Context, bytes: usize, upload: bool) {
        let limit = self.config.limit;
        if cx.slot::<Transfer>().is_none() {
            cx.set_slot(Transfer {
                subject: None,
                before: 0,
                bytes: 0,
                announced: false,
            });
        }
        let Some(t) = cx.slot::<Transfer>() else {
            return;
        };
        t.bytes = t.bytes.saturating_add(bytes as u64);
        let announced = t.announced && t.subject.is_some();
        let left = limit.saturating_sub(t.before.saturating_add(t.bytes));
        // The upload is known before the response headers go out: show what is left after it,
        // as Apiman does.
        if upload && announced {
            limits::reannounce_remaining(cx, &self.config.headers, left);
        }
    }
}

impl Policy for TransferQuota {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        let mut phases = PhaseSet::of(&[Phase::RequestHeaders, Phase::Complete]);
        if self.upload {
            phases = phases.union(PhaseSet::of(&[Phase::RequestData]));
        }
        if self.download {
            phases = phases.union(PhaseSet::of(&[Phase::ResponseData]));
        }
        phases
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let Some(subject) = limits::subject(&self.config, cx, &request.headers) else {
            return limits::no_app(&TRANSFER_QUOTA);
        };
        if !cx.first_time(&self.instance) {
            return Verdict::Continue;
        }
        let now = limits::unix_seconds(cx.now());
        let window = self.config.period.window(now);
        let reset = window.seconds_left(now);
        let counter = Counter {
            instance: &self.instance,
            subject: &subject,
        };
        let before = counters::read(cx.host, counter, window);
        let limit = self.config.limit;
        if before >= limit {
            return limits::exceeded(&TRANSFER_QUOTA, &self.config.headers, limit, reset);
        }
        // Bytes that streamed past before this phase ran (see `Transfer::subject`).
        let early = cx.slot::<Transfer>().map_or(0, |t| t.bytes);
        let left = limit.saturating_sub(before.saturating_add(early));
        let announced = limits::announce(cx, &self.config.headers, limit, left, reset);
        cx.set_slot(Transfer {
            subject: Some(subject),
            before,
            bytes: early,
            announced,
        });
        Verdict::Continue
    }

    fn on_request_data(&self, cx: &mut Context, bytes: usize, _end_of_stream: bool) -> Verdict {
        if self.upload {
            self.count(cx, bytes, true);
        }
        Verdict::Continue
    }

    fn on_response_data(&self, cx: &mut Context, bytes: usize, _end_of_stream: bool) -> Verdict {
        if self.download {
            self.count(cx, bytes, false);
        }
        Verdict::Continue
    }

    fn on_complete(&self, cx: &mut Context) {
        let Some(t) = cx.slot::<Transfer>() else {
            return;
        };
        // No subject: the request phase never ran (refused before it), nothing to count.
        let Some(subject) = t.subject.take().filter(|_| t.bytes > 0) else {
            return;
        };
        let bytes = std::mem::take(&mut t.bytes);
        // The window the stream ended in (a long download may end in the next one).
        let now = limits::unix_seconds(cx.host.now());
        let counter = Counter {
            instance: &self.instance,
            subject: &subject,
        };
        if let Err(e) = counters::add(cx.host, counter, self.config.period.window(now), bytes) {
            if let Some(held) = self.log.allow(now) {
                log::warn!(
                    "transfer-quota: {bytes} bytes could not be counted ({e:?}){}",
                    if held == 0 {
                        String::new()
                    } else {
                        format!(" ({held} more like it since the last line)")
                    }
                );
            }
        }
    }

    fn wants_tick(&self) -> bool {
        true
    }

    fn on_tick(&self, host: &mut dyn Host, now: SystemTime) {
        let now = limits::unix_seconds(now);
        counters::sweep_step(host, &self.instance, self.config.period.window(now), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClientIdentity;
    use crate::policy::testing::*;
    use serde_json::json;

    fn policy(direction: &str, limit: u64) -> Box<dyn Policy> {
        compile(
            &KIND,
            json!({"limit": limit, "direction": direction, "granularity": "Client", "period": "Day"}),
        )
    }

    /// One whole exchange for key `k1`: request, `up` bytes uploaded in two chunks, `down`
    /// bytes downloaded, completion. Returns the request phase's verdict.
    fn exchange(p: &dyn Policy, f: &mut Fixture, up: usize, down: usize) -> Verdict {
        f.state = crate::policy::RequestState {
            api_key: Some("k1".into()),
            ..Default::default()
        };
        let id = ClientIdentity {
            organization_id: "Org",
            client_id: "app",
            version: "1",
        };
        let mut cx = f.cx();
        cx.client = Some(id);
        let v = p.on_request(&mut cx, &mut request("POST", &[]));
        if !is_continue(&v) {
            return v;
        }
        if p.phases().contains(Phase::RequestData) {
            p.on_request_data(&mut cx, up / 2, false);
            p.on_request_data(&mut cx, up - up / 2, true);
        }
        if p.phases().contains(Phase::ResponseData) {
            p.on_response_data(&mut cx, down, true);
        }
        p.on_complete(&mut cx);
        v
    }

    fn remaining(f: &Fixture) -> Option<&str> {
        f.state
            .response_headers
            .iter()
            .find(|(k, _)| k == "X-TransferQuota-Remaining")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_download_that_crosses_the_limit_completes_and_the_next_request_is_refused() {
        let p = policy("download", 100);
        let mut f = Fixture::new();
        assert!(is_continue(&exchange(p.as_ref(), &mut f, 0, 60)));
        assert!(is_continue(&exchange(p.as_ref(), &mut f, 0, 60)));
        assert_eq!(remaining(&f), Some("40"));
        let failure = failure(exchange(p.as_ref(), &mut f, 0, 60));
        assert_eq!((failure.status(), failure.code), (429, 10013));
        assert_eq!(failure.message, "Transfer quota exceeded.");
        assert!(failure
            .headers
            .iter()
            .any(|(k, v)| k == "X-TransferQuota-Remaining" && v == "0"));
        assert!(failure.headers.iter().any(|(k, _)| k == "Retry-After"));
    }

    #[test]
    fn uploads_count_for_upload_and_downloads_do_not() {
        let p = policy("upload", 100);
        let mut f = Fixture::new();
        exchange(p.as_ref(), &mut f, 30, 1000);
        // The upload is subtracted in the headers of its own response.
        assert_eq!(remaining(&f), Some("70"));
        exchange(p.as_ref(), &mut f, 30, 1000);
        assert_eq!(remaining(&f), Some("40"));
    }

    #[test]
    fn both_directions_count_for_both() {
        let p = policy("both", 100);
        let mut f = Fixture::new();
        exchange(p.as_ref(), &mut f, 30, 30);
        exchange(p.as_ref(), &mut f, 0, 0);
        assert_eq!(remaining(&f), Some("40"));
    }

    #[test]
    fn exactly_the_limit_transferred_refuses_the_next_request() {
        let p = policy("download", 100);
        let mut f = Fixture::new();
        exchange(p.as_ref(), &mut f, 0, 100);
        assert!(matches!(
            exchange(p.as_ref(), &mut f, 0, 1),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn an_exchange_costs_one_read_then_one_read_and_one_write_at_its_end() {
        let p = policy("both", 1_000_000);
        let mut f = Fixture::new();
        exchange(p.as_ref(), &mut f, 4096, 65536);
        assert_eq!((f.host.calls.shared_get, f.host.calls.shared_set), (2, 1));
    }

    #[test]
    fn an_exchange_without_bodies_writes_nothing() {
        let p = policy("both", 100);
        let mut f = Fixture::new();
        exchange(p.as_ref(), &mut f, 0, 0);
        assert_eq!(f.host.calls.shared_set, 0);
    }

    #[test]
    fn bytes_that_stream_past_before_the_request_phase_count_too() {
        // An earlier policy's call-out holds the request phase while the body streams.
        let p = policy("upload", 100);
        let mut f = Fixture::new();
        f.state = crate::policy::RequestState {
            api_key: Some("k1".into()),
            ..Default::default()
        };
        let id = ClientIdentity {
            organization_id: "Org",
            client_id: "app",
            version: "1",
        };
        let mut cx = f.cx();
        cx.client = Some(id);
        p.on_request_data(&mut cx, 30, true);
        assert!(is_continue(
            &p.on_request(&mut cx, &mut request("POST", &[]))
        ));
        p.on_complete(&mut cx);
        assert_eq!(remaining(&f), Some("70"));
        assert!(is_continue(&exchange(p.as_ref(), &mut f, 70, 0)));
        assert!(matches!(
            exchange(p.as_ref(), &mut f, 0, 0),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn a_keyless_request_limited_per_client_fails_with_the_transfer_quota_message() {
        let p = policy("both", 100);
        let mut f = Fixture::new();
        let failure = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(failure.code, 10008);
        assert!(failure
            .message
            .starts_with("No client app available for transfer quota."));
    }

    #[test]
    fn direction_is_required() {
        assert_eq!(
            errors(
                &KIND,
                json!({"limit": 1, "granularity": "Client", "period": "Day"})
            ),
            vec!["config.direction: is required"]
        );
        assert_eq!(
            errors(
                &KIND,
                json!({"limit": 1, "granularity": "Client", "period": "Day", "direction": "sideways"})
            ),
            vec!["config.direction: \"sideways\" is not one of upload, download, both"]
        );
    }

    #[test]
    fn only_the_phases_of_its_direction_are_asked_for() {
        assert!(!policy("download", 1).phases().contains(Phase::RequestData));
        assert!(policy("download", 1).phases().contains(Phase::ResponseData));
        assert!(policy("upload", 1).phases().contains(Phase::RequestData));
        assert!(!policy("upload", 1).phases().contains(Phase::ResponseData));
    }
}
