//! What Rate Limiting, Quota and Transfer Quota share: their configuration (Apiman's
//! `RateLimitingConfig`), whose requests count together (Apiman's bucket identities), the limit
//! headers, and Rate Limiting and Quota themselves (the same policy with other names, codes and
//! headers, as in Apiman, where `QuotaPolicy` extends `RateLimitingPolicy`).
//!
//! Counting happens in Envoy's shared data (`crate::counters`: exact across the worker VMs of
//! one Envoy, one read and one CAS write per admitted request) or, when the policy names a
//! `rateLimitService`, in an Envoy rate limit service asked over gRPC, so that several gateways
//! share one limit.
//!
//! Subjects (Apiman's `BucketFactory`): a keyed request counts under its API key (`Client`), its
//! key and the API (`Api`, without the version, as Apiman), its key and the user (`User`), or its
//! key and the client address (`Ip`); a keyless request to a public API counts under the API
//! (`Api`), the API and the user, or the API and the address, and cannot be limited per client
//! (10008). The user is the value of `userHeader`, else the user an authentication policy
//! established; requests with neither share one "no user" bucket per client (per API when
//! public), as in Apiman 3. Each policy instance counts on its own (Apiman lets a Quota and a
//! Rate Limiting policy in one chain share a bucket); the same configuration appearing twice in
//! one chain (in a plan and in its API) counts a request once.

use std::cell::Cell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{
    BuildContext, CallOut, CallResponse, Context, FailureType, FieldDoc, GatewayError, GrpcMethod,
    Phase, PhaseSet, Policy, PolicyFailure, Subject, Verdict,
};
use crate::counters::{self, Admission, Counter, Period};
use crate::host::Host;
use crate::http::{HeaderMap, Request};
use crate::json::{Fields, Problems};
use crate::rls;

/// What tells the three limit policies apart.
pub(super) struct Flavour {
    /// The tollgate policy id.
    pub kind: &'static str,
    /// The failure code when the limit is reached (Apiman's PolicyFailureCodes).
    pub code: u32,
    pub exceeded: &'static str,
    /// The 10008 message (a public API limited per client).
    pub no_app: &'static str,
    /// Default names of the limit, remaining and reset headers.
    pub headers: [&'static str; 3],
}

pub(super) const RATE_LIMITING: Flavour = Flavour {
    kind: "rate-limiting",
    code: 10005,
    exceeded: "Rate limit exceeded.",
    no_app: "No client app available for rate limiting.  Public APIs should not use per-app rate limiting rules.",
    headers: ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"],
};

pub(super) const QUOTA: Flavour = Flavour {
    kind: "quota",
    code: 10012,
    exceeded: "Quota exceeded.",
    no_app: RATE_LIMITING.no_app,
    headers: ["X-Quota-Limit", "X-Quota-Remaining", "X-Quota-Reset"],
};

pub(super) const TRANSFER_QUOTA: Flavour = Flavour {
    kind: "transfer-quota",
    code: 10013,
    exceeded: "Transfer quota exceeded.",
    no_app: "No client app available for transfer quota.  Public APIs should not use per-app quota rules.",
    headers: [
        "X-TransferQuota-Limit",
        "X-TransferQuota-Remaining",
        "X-TransferQuota-Reset",
    ],
};

/// Apiman's NO_APP_FOR_RATE_LIMITING.
pub const NO_APP_CODE: u32 = 10008;

/// The largest limit (Apiman's documented maximum, 2^53 − 1: JavaScript's safe integer).
pub(super) const MAX_LIMIT: i64 = (1 << 53) - 1;

/// Whose requests count together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Granularity {
    Client,
    Api,
    User,
    Ip,
}

pub(super) struct HeaderNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

/// Apiman's `RateLimitingConfig`.
pub(super) struct LimitConfig {
    pub limit: u64,
    pub granularity: Granularity,
    pub period: Period,
    pub user_header: Option<String>,
    pub headers: HeaderNames,
}

fn header_name(f: &mut Fields, field: &str, default: &str, problems: &mut Problems) -> String {
    match f.string(&[field], problems).map(|s| s.trim().to_string()) {
        None => default.to_string(),
        Some(s) if s.is_empty() => default.to_string(),
        Some(s) if s.bytes().all(crate::http::is_token_byte) => s,
        Some(s) => {
            problems.error(
                &f.field_path(field),
                format!("\"{s}\" is not a valid header name"),
            );
            default.to_string()
        }
    }
}

/// Reads the fields Apiman's `RateLimitingConfig` has. `None` when a required one is missing
/// or wrong (each problem is reported with its path).
pub(super) fn parse_config(
    f: &mut Fields,
    flavour: &Flavour,
    problems: &mut Problems,
) -> Option<LimitConfig> {
    let limit = match f.integer(&["limit"], problems) {
        Some(l) if (0..=MAX_LIMIT).contains(&l) => Some(l as u64),
        Some(_) => {
            problems.error(&f.field_path("limit"), format!("must be 0 to {MAX_LIMIT}"));
            None
        }
        None if f.has("limit") => None,
        None => {
            problems.error(&f.field_path("limit"), "is required");
            None
        }
    };
    let required = |f: &Fields, name: &str, problems: &mut Problems| {
        if !f.has(name) {
            problems.error(&f.field_path(name), "is required");
        }
    };
    required(f, "granularity", problems);
    let granularity = f
        .choice(
            &["granularity"],
            &["Client", "Api", "User", "Ip", "Application", "Service"],
            problems,
        )
        .map(|i| match i {
            0 | 4 => Granularity::Client,
            1 | 5 => Granularity::Api,
            2 => Granularity::User,
            _ => Granularity::Ip,
        });
    required(f, "period", problems);
    let period = f
        .choice(
            &["period"],
            &["Second", "Minute", "Hour", "Day", "Month", "Year"],
            problems,
        )
        .map(|i| match i {
            0 => Period::Second,
            1 => Period::Minute,
            2 => Period::Hour,
            3 => Period::Day,
            4 => Period::Month,
            _ => Period::Year,
        });
    let user_header = match f.string(&["userHeader"], problems) {
        Some(h) if h.trim().is_empty() => None,
        Some(h) if h.trim().bytes().all(crate::http::is_token_byte) => {
            Some(h.trim().to_ascii_lowercase())
        }
        Some(h) => {
            problems.error(
                &f.field_path("userHeader"),
                format!("\"{h}\" is not a valid header name"),
            );
            None
        }
        None => None,
    };
    let headers = HeaderNames {
        limit: header_name(f, "headerLimit", flavour.headers[0], problems),
        remaining: header_name(f, "headerRemaining", flavour.headers[1], problems),
        reset: header_name(f, "headerReset", flavour.headers[2], problems),
    };
    Some(LimitConfig {
        limit: limit?,
        granularity: granularity?,
        period: period?,
        user_header,
        headers,
    })
}

/// The subject a request counts under within its policy instance, or `None` for a keyless
/// request to a policy limiting per client (Apiman's 10008).
pub(super) fn subject(
    config: &LimitConfig,
    cx: &mut Context,
    headers: &HeaderMap,
) -> Option<String> {
    let mut s = match (cx.client, cx.api_key()) {
        (Some(_), Some(key)) => format!("k:{key}"),
        _ => {
            let api = cx.api;
            if config.granularity == Granularity::Client {
                return None;
            }
            format!("p:{}/{}/{}", api.organization_id, api.api_id, api.version)
        }
    };
    let keyed = s.starts_with("k:");
    match config.granularity {
        Granularity::Client => {}
        Granularity::Api => {
            if keyed {
                let _ = write!(s, "|a:{}/{}", cx.api.organization_id, cx.api.api_id);
            }
        }
        Granularity::User => {
            let user = config
                .user_header
                .as_deref()
                .and_then(|h| headers.get(h))
                .map(str::to_string)
                .or_else(|| cx.identity().principal.clone());
            match user {
                Some(u) => {
                    let _ = write!(s, "|u:{u}");
                }
                None => s.push_str("|nouser"),
            }
        }
        Granularity::Ip => match cx.downstream_ip() {
            Some(ip) => {
                let _ = write!(s, "|ip:{ip}");
            }
            None => s.push_str("|ip:-"),
        },
    }
    Some(s)
}

/// The failure for a keyless request to a policy limiting per client.
pub(super) fn no_app(flavour: &Flavour) -> Verdict {
    Verdict::Fail(PolicyFailure::new(
        FailureType::Other,
        NO_APP_CODE,
        flavour.no_app,
    ))
}

/// The limit headers.
fn limit_headers(
    names: &HeaderNames,
    limit: u64,
    remaining: u64,
    reset: u64,
) -> Vec<(String, String)> {
    vec![
        (names.limit.clone(), limit.to_string()),
        (names.remaining.clone(), remaining.to_string()),
        (names.reset.clone(), reset.to_string()),
    ]
}

/// Puts the limit headers on whatever response goes back (the backend's or a gateway reply).
/// Limits with different header names each send their own; when two limits in one chain use
/// the same names, the one with less remaining is shown. Returns whether these values are the
/// ones shown.
pub(super) fn announce(
    cx: &mut Context,
    names: &HeaderNames,
    limit: u64,
    remaining: u64,
    reset: u64,
) -> bool {
    let headers = &mut cx.state.response_headers;
    let shown = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(&names.remaining))
        .and_then(|(_, v)| v.parse::<u64>().ok());
    if shown.is_some_and(|r| r <= remaining) {
        return false;
    }
    headers.retain(|(k, _)| {
        ![&names.limit, &names.remaining, &names.reset]
            .iter()
            .any(|n| k.eq_ignore_ascii_case(n))
    });
    headers.extend(limit_headers(names, limit, remaining, reset));
    true
}

/// Changes the remaining value this policy announced (its `announce` returned true).
pub(super) fn reannounce_remaining(cx: &mut Context, names: &HeaderNames, remaining: u64) {
    if let Some(entry) = cx
        .state
        .response_headers
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(&names.remaining))
    {
        entry.1 = remaining.to_string();
    }
}

/// The 429 when the limit is reached: the limit headers (nothing remaining) and `Retry-After`,
/// also listed in the failure body as Apiman lists them.
pub(super) fn exceeded(flavour: &Flavour, names: &HeaderNames, limit: u64, reset: u64) -> Verdict {
    let mut failure =
        PolicyFailure::new(FailureType::Other, flavour.code, flavour.exceeded).with_status(429);
    failure.headers = limit_headers(names, limit, 0, reset);
    failure
        .headers
        .push(("Retry-After".to_string(), reset.to_string()));
    Verdict::Fail(failure)
}

pub(super) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Logs at most one line per `EVERY` seconds per worker VM (a dead rate limit service must not
/// flood the log with a line per request), counting what it held back.
pub(super) struct LogThrottle {
    last: Cell<u64>,
    held: Cell<u64>,
}

impl LogThrottle {
    const EVERY: u64 = 10;

    pub fn new() -> LogThrottle {
        LogThrottle {
            last: Cell::new(0),
            held: Cell::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn allow(&self, now: u64) -> Option<u64> {
        if self.last.get() != 0 && now < self.last.get() + Self::EVERY {
            self.held.set(self.held.get() + 1);
            return None;
        }
        self.last.set(now.max(1));
        Some(self.held.replace(0))
    }
}

/// An Envoy rate limit service that counts instead of shared data.
pub(super) struct Service {
    pub cluster: String,
    pub domain: String,
    pub timeout: Duration,
    pub fail_open: bool,
}

pub(super) fn parse_service(
    cx: &mut BuildContext,
    f: &mut Fields,
    config: Option<&LimitConfig>,
    problems: &mut Problems,
) -> Option<Service> {
    let mut s = f.object(&["rateLimitService"], problems)?;
    let named = s
        .string(&["cluster"], problems)
        .map(|c| c.trim().to_string());
    // With a URL, tollgate-gen creates the (HTTP/2) cluster, named `host:port` unless named.
    let cluster = match (s.string(&["url"], problems), named) {
        (_, Some(c)) if c.is_empty() => {
            problems.error(&s.field_path("cluster"), "must not be empty");
            String::new()
        }
        (Some(url), named) => match cx.grpc_target(&url, named.as_deref()) {
            Ok(target) => target.cluster,
            Err(why) => {
                problems.error(&s.field_path("url"), why);
                String::new()
            }
        },
        (None, Some(c)) => c,
        (None, None) => {
            problems.error(&s.field_path("cluster"), "is required (or url)");
            String::new()
        }
    };
    let domain = s
        .string(&["domain"], problems)
        .map(|d| d.trim().to_string())
        .unwrap_or_else(|| "tollgate".to_string());
    if domain.is_empty() {
        problems.error(&s.field_path("domain"), "must not be empty");
    }
    let timeout_ms = s.integer(&["timeoutMs"], problems).unwrap_or(1000);
    if !(1..=60_000).contains(&timeout_ms) {
        problems.error(&s.field_path("timeoutMs"), "must be 1 to 60000");
    }
    let fail_open = s.choice(&["failureMode"], &["closed", "open"], problems) == Some(1);
    s.finish(problems);
    if config.is_some_and(|c| c.limit > u64::from(u32::MAX)) {
        problems.error(
            &f.field_path("limit"),
            format!(
                "must be at most {} with a rateLimitService (the protocol counts in 32 bits)",
                u32::MAX
            ),
        );
    }
    Some(Service {
        cluster,
        domain,
        timeout: Duration::from_millis(timeout_ms.clamp(1, 60_000) as u64),
        fail_open,
    })
}

/// `RateLimitUnit` of a period.
fn rls_unit(period: Period) -> u32 {
    match period {
        Period::Second => 1,
        Period::Minute => 2,
        Period::Hour => 3,
        Period::Day => 4,
        Period::Month => 5,
        Period::Year => 6,
    }
}

/// Rate Limiting and Quota: counts each request, refuses with 429 once the limit is reached.
pub(super) struct RateLimit {
    flavour: &'static Flavour,
    instance: String,
    config: LimitConfig,
    service: Option<Service>,
    log: LogThrottle,
}

/// What an RLS call-out leaves for its answer: the window the request started in.
struct Pending {
    now: u64,
}

pub(super) fn build_rate_limit(
    flavour: &'static Flavour,
    cx: &mut BuildContext,
    f: &mut Fields,
    problems: &mut Problems,
) -> Option<RateLimit> {
    let config = parse_config(f, flavour, problems);
    let service = parse_service(cx, f, config.as_ref(), problems);
    Some(RateLimit {
        flavour,
        instance: cx.instance_id.to_string(),
        config: config?,
        service,
        log: LogThrottle::new(),
    })
}

impl RateLimit {
    fn local(&self, cx: &mut Context, subject: &str, now: u64) -> Verdict {
        let window = self.config.period.window(now);
        let reset = window.seconds_left(now);
        let counter = Counter {
            instance: &self.instance,
            subject,
        };
        let limit = self.config.limit;
        match counters::admit(cx.host, counter, window, 1, limit) {
            Ok(Admission::Admitted(n)) => {
                announce(
                    cx,
                    &self.config.headers,
                    limit,
                    limit.saturating_sub(n),
                    reset,
                );
                Verdict::Continue
            }
            Ok(Admission::Refused(_)) => exceeded(self.flavour, &self.config.headers, limit, reset),
            Err(e) => {
                // Never over-admit: a counter that cannot be updated refuses (the client may
                // retry in a second).
                if let Some(held) = self.log.allow(now) {
                    log::warn!(
                        "{}: the shared counter could not be updated ({e:?}); request refused (fail closed){}",
                        self.flavour.kind,
                        held_note(held)
                    );
                }
                exceeded(self.flavour, &self.config.headers, limit, 1)
            }
        }
    }

    fn call(&self, service: &Service, subject: &str) -> CallOut {
        // The subject carries the API key: the service gets a digest of it, never the key.
        let digest = Sha256::digest(subject.as_bytes());
        let hashed = crate::registry::hex(&digest[..16]);
        let entries = [
            ("tollgate_limit", self.instance.as_str()),
            ("subject", hashed.as_str()),
        ];
        let request = rls::Request {
            domain: &service.domain,
            entries: &entries,
            limit: Some((
                u32::try_from(self.config.limit).unwrap_or(u32::MAX),
                rls_unit(self.config.period),
            )),
            hits_addend: 1,
        };
        CallOut {
            cluster: service.cluster.clone(),
            headers: Vec::new(),
            body: Some(rls::encode_request(&request)),
            timeout: service.timeout,
            grpc: Some(Box::new(GrpcMethod {
                service: rls::SERVICE.to_string(),
                method: rls::METHOD.to_string(),
            })),
        }
    }

    fn no_answer(&self, service: &Service, answer: &CallResponse, why: &str, now: u64) -> Verdict {
        if let Some(held) = self.log.allow(now) {
            log::warn!(
                "{}: no usable answer from the rate limit service (cluster {}: {why}); request {}{}",
                self.flavour.kind,
                answer.cluster,
                if service.fail_open {
                    "let through uncounted (failureMode open)"
                } else {
                    "refused (failureMode closed)"
                },
                held_note(held)
            );
        }
        if service.fail_open {
            Verdict::Continue
        } else {
            Verdict::Error(GatewayError::CallOutFailed {
                cluster: answer.cluster.clone(),
            })
        }
    }
}

fn held_note(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} more like it since the last line)")
    }
}

impl Policy for RateLimit {
    fn id(&self) -> &'static str {
        self.flavour.kind
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let Some(subject) = subject(&self.config, cx, &request.headers) else {
            return no_app(self.flavour);
        };
        if !cx.first_time(&self.instance) {
            return Verdict::Continue;
        }
        let now = unix_seconds(cx.now());
        match &self.service {
            None => self.local(cx, &subject, now),
            Some(service) => {
                cx.set_slot(Pending { now });
                Verdict::CallOut(self.call(service, &subject))
            }
        }
    }

    fn on_call_response(
        &self,
        cx: &mut Context,
        answer: &CallResponse,
        _subject: Subject,
    ) -> Verdict {
        let now = cx.slot::<Pending>().map_or(0, |p| p.now);
        let Some(service) = &self.service else {
            return Verdict::Continue;
        };
        if answer.failed() {
            let why = match (answer.header("grpc-status"), answer.header("grpc-message")) {
                (Some(code), Some(m)) if !m.is_empty() => format!("gRPC status {code}, {m}"),
                (Some(code), _) => format!("gRPC status {code}"),
                _ => "no answer".to_string(),
            };
            return self.no_answer(service, answer, &why, now);
        }
        let response = match rls::decode_response(&answer.body) {
            Ok(r) => r,
            Err(e) => {
                return self.no_answer(service, answer, &format!("unreadable answer: {e}"), now)
            }
        };
        let status = response.statuses.first().cloned().unwrap_or_default();
        let limit = status.limit.unwrap_or(self.config.limit);
        let reset = status
            .reset_seconds
            .filter(|r| *r > 0)
            .unwrap_or_else(|| self.config.period.window(now).seconds_left(now));
        match response.overall_code {
            rls::CODE_OK => {
                announce(
                    cx,
                    &self.config.headers,
                    limit,
                    status.remaining.min(limit),
                    reset,
                );
                Verdict::Continue
            }
            rls::CODE_OVER_LIMIT => exceeded(self.flavour, &self.config.headers, limit, reset),
            other => self.no_answer(service, answer, &format!("overall code {other}"), now),
        }
    }

    fn wants_tick(&self) -> bool {
        self.service.is_none()
    }

    fn on_tick(&self, host: &mut dyn Host, now: SystemTime) {
        let now = unix_seconds(now);
        counters::sweep_step(host, &self.instance, self.config.period.window(now), now);
    }
}

/// The documented fields of the limit policies: Apiman's `RateLimitingConfig`, with the default
/// header names of each policy, then the policy's own fields.
#[allow(unused_macros)] // only the reference uses it, and the wasm build leaves that out
macro_rules! limit_fields {
    ($limit:expr, [$h0:expr, $h1:expr, $h2:expr], $($extra:expr),* $(,)?) => {
        &[
            FieldDoc {
                name: "limit",
                aliases: &[],
                ty: "integer",
                default: "",
                apiman: true,
                meaning: $limit,
            },
            FieldDoc {
                name: "granularity",
                aliases: &[],
                ty: "Client|Api|User|Ip",
                default: "",
                apiman: true,
                meaning: "what counts together: a client app (its API key), a client app per API, a user (`userHeader`), a client address; keyless requests to a public API count per API (then per user or address), never per client",
            },
            FieldDoc {
                name: "period",
                aliases: &[],
                ty: "Second|Minute|Hour|Day|Month|Year",
                default: "",
                apiman: true,
                meaning: "the window: fixed calendar periods in UTC (the minute, hour, day, month or year the request falls in)",
            },
            FieldDoc {
                name: "userHeader",
                aliases: &[],
                ty: "string",
                default: "",
                apiman: true,
                meaning: "with `User`: the request header naming the user (set it from an authentication policy: a client that can send it picks its own bucket); without it, the authenticated user; requests with neither share one bucket",
            },
            FieldDoc {
                name: "headerLimit",
                aliases: &[],
                ty: "string",
                default: $h0,
                apiman: true,
                meaning: "response header: the limit",
            },
            FieldDoc {
                name: "headerRemaining",
                aliases: &[],
                ty: "string",
                default: $h1,
                apiman: true,
                meaning: "response header: what is left in this window (never negative)",
            },
            FieldDoc {
                name: "headerReset",
                aliases: &[],
                ty: "string",
                default: $h2,
                apiman: true,
                meaning: "response header: seconds until the window ends",
            },
            $($extra),*
        ]
    };
}
pub(super) use limit_fields;

/// The documented fields of `rateLimitService`.
pub(super) const SERVICE_FIELDS: [FieldDoc; 6] = [
    FieldDoc {
        name: "rateLimitService",
        aliases: &[],
        ty: "object",
        default: "",
        apiman: false,
        meaning: "count in an Envoy rate limit service (gRPC) instead of this Envoy's shared data, so several gateways share the limit (see \"Limits across gateways\")",
    },
    FieldDoc {
        name: "rateLimitService.cluster",
        aliases: &[],
        ty: "string",
        default: "",
        apiman: false,
        meaning: "the Envoy cluster of the service (HTTP/2); required without url",
    },
    FieldDoc {
        name: "rateLimitService.url",
        aliases: &[],
        ty: "string",
        default: "",
        apiman: false,
        meaning: "where the service listens (http:// or https://host:port): tollgate-gen then creates its HTTP/2 cluster, named by cluster, else host:port",
    },
    FieldDoc {
        name: "rateLimitService.domain",
        aliases: &[],
        ty: "string",
        default: "tollgate",
        apiman: false,
        meaning: "the rate limit domain sent with each request",
    },
    FieldDoc {
        name: "rateLimitService.timeoutMs",
        aliases: &[],
        ty: "integer",
        default: "1000",
        apiman: false,
        meaning: "how long to wait for the service",
    },
    FieldDoc {
        name: "rateLimitService.failureMode",
        aliases: &[],
        ty: "closed|open",
        default: "closed",
        apiman: false,
        meaning: "without an answer (service or its store down, timeout): refuse with 503 (closed) or let the request pass uncounted (open); logged either way",
    },
];
