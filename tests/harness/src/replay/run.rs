//! Running a suite: natively through the real filter code on the native host, or against a
//! live gateway over HTTP.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::ReplayBackend;
use super::expect::{check, describe_status, holds, BackendSeen, Check, Observed};
use super::{is_gateway_reply, Exchange, GatewayConfig, Suite};
use crate::host::{
    tollgate_init, BackendResponse, GuestInit, Host, HostError, HostSettings, Origin, StreamResult,
    Upstream, UpstreamRequest,
};
use crate::http_client;

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Replaces the suites' own configuration (`--config`).
    pub config: Option<GatewayConfig>,
    /// Worker VMs (default: the suite's, else 1).
    pub workers: Option<usize>,
    /// Replays every suite this many times (benchmarks); only the first round is reported in
    /// detail.
    pub repeat: usize,
    /// Compare decisions with the recorded statuses instead of checking expectations.
    pub dry_run: bool,
    /// Keep every line the filter logs, not only warnings and errors.
    pub verbose: bool,
    /// The route timeout of the emulated gateway (`envoy/gateway.yaml`: 30 s).
    pub route_timeout_ms: u64,
    /// The guest's `main!` block: tollgate's, or a probe filter's in tests of the host.
    pub init: GuestInit,
    /// The live gateway's Envoy admin (`--admin`): with it, a live replay compares the
    /// configuration the gateway runs with the suite's.
    pub admin: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: None,
            workers: None,
            repeat: 1,
            dry_run: false,
            verbose: false,
            route_timeout_ms: 30_000,
            init: tollgate_init,
            admin: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The suite has no configuration and none was given.
    NoConfig(String),
    Host(String, HostError),
    /// The live gateway cannot be reached.
    Unreachable(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NoConfig(file) => write!(
                f,
                "{file}: no gateway configuration (a HAR or tap trace has none): pass --config \
                 with the plugin JSON or an Envoy YAML such as envoy/gateway.yaml"
            ),
            RunError::Host(source, e) => write!(f, "{source}: {e}"),
            RunError::Unreachable(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for RunError {}

/// What changed, in a dry run, between the recorded response and the new decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    /// Reached the backend in the recording; the gateway refuses it now.
    NewlyBlocked,
    /// Refused by the gateway in the recording; reaches the backend now.
    NewlyAllowed,
    /// Same side of the gateway, another status.
    StatusChanged,
    /// The recording has no status to compare with.
    Unknown,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::NewlyBlocked => "newly blocked",
            Change::NewlyAllowed => "newly allowed",
            Change::StatusChanged => "status changed",
            Change::Unknown => "not recorded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip(String),
}

/// One exchange's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub index: usize,
    pub label: String,
    pub entry: String,
    pub expected_status: Option<u16>,
    pub observed: Observed,
    pub checks: Vec<Check>,
    pub verdict: Verdict,
    pub change: Option<Change>,
    /// Lines the filter logged for this exchange (warnings and errors, or all with verbose).
    pub logs: Vec<String>,
    /// Which round of a repeated replay (0 for the first).
    pub round: usize,
}

impl Outcome {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.ok == Some(false))
    }
}

/// A suite's results.
#[derive(Debug, Clone)]
pub struct SuiteRun {
    pub name: String,
    pub file: String,
    /// Every outcome of the first round, then failures of later rounds (at most 20).
    pub outcomes: Vec<Outcome>,
    pub rounds: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub elapsed: Duration,
    pub warnings: Vec<String>,
    /// Where it ran: `native (N workers)` or the live gateway's address.
    pub target: String,
}

impl SuiteRun {
    pub fn replayed(&self) -> usize {
        self.passed + self.failed
    }
}

/// What the backend answers when the recording has no backend response: an unmistakable
/// 200, so a request the gateway refused in the recording but lets through now shows up.
pub fn unrecorded() -> Upstream {
    Upstream::Respond(BackendResponse {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-tollgate-replay".into(), "unrecorded".into()),
        ],
        body: br#"{"tollgate-replay":"no backend response was recorded for this request"}"#
            .to_vec(),
        trailers: Vec::new(),
    })
}

fn answer(ex: &Exchange) -> Upstream {
    ex.response.clone().unwrap_or_else(unrecorded)
}

/// The cluster header a plugin configuration uses (`gateway.clusterHeader`).
pub fn cluster_header(plugin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(plugin)
        .ok()
        .and_then(|v| {
            v["gateway"]["clusterHeader"]
                .as_str()
                .map(str::to_ascii_lowercase)
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "x-tollgate-cluster".to_string())
}

fn seen(up: &UpstreamRequest) -> BackendSeen {
    BackendSeen {
        method: up.method().to_string(),
        path: up.path().to_string(),
        authority: up.authority().to_string(),
        cluster: Some(up.cluster.clone()),
        headers: up
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .cloned()
            .collect(),
        body: up.body.clone(),
    }
}

/// The observation of a native stream.
pub fn observe(r: StreamResult) -> Observed {
    let note = r.stalled.or_else(|| {
        r.reset
            .then(|| "the stream was reset after the response started".to_string())
    });
    Observed {
        status: r.status,
        headers: r.headers,
        body: r.body,
        backend: Some(r.upstream.as_ref().map(seen)),
        from_gateway: Some(r.origin != Origin::Backend),
        note,
    }
}

fn classify(ex: &Exchange, obs: &Observed) -> Change {
    let Some(recorded) = ex.recorded_status else {
        return Change::Unknown;
    };
    // Blocked: refused by the gateway itself. A CORS preflight the gateway answers with 200
    // is not a refusal.
    let was_blocked = ex.recorded_by_gateway && recorded >= 400;
    let now_blocked = obs.status == 0 || (obs.from_gateway == Some(true) && obs.status >= 400);
    match (was_blocked, now_blocked) {
        (false, true) => Change::NewlyBlocked,
        (true, false) => Change::NewlyAllowed,
        _ if recorded == obs.status => Change::Unchanged,
        _ => Change::StatusChanged,
    }
}

/// `403 from the gateway (API not public.)`, for dry-run reports.
fn decision(status: Option<u16>, by_gateway: Option<bool>, headers: &[(String, String)]) -> String {
    describe_status(status.unwrap_or(0), by_gateway, headers)
}

/// Decides an exchange's verdict from its observation.
fn judge(
    index: usize,
    ex: &Exchange,
    obs: Observed,
    logs: Vec<String>,
    dry_run: bool,
    round: usize,
) -> Outcome {
    let (checks, change, verdict) = if dry_run {
        let change = classify(ex, &obs);
        let ok = matches!(change, Change::Unchanged | Change::Unknown);
        let checks = vec![Check {
            what: "decision".into(),
            expected: match ex.recorded_status {
                Some(s) => decision(Some(s), Some(ex.recorded_by_gateway), &[]),
                None => "(not recorded)".into(),
            },
            got: decision(Some(obs.status), obs.from_gateway, &obs.headers),
            ok: Some(ok),
        }];
        (
            checks,
            Some(change),
            if ok { Verdict::Pass } else { Verdict::Fail },
        )
    } else {
        let mut checks = check(&ex.expect, &obs);
        if obs.status == 0 && ex.expect.status.is_none() {
            checks.push(Check {
                what: "response".into(),
                expected: "a response".into(),
                got: obs.note.clone().unwrap_or_else(|| "(none)".into()),
                ok: Some(false),
            });
        }
        let failed = checks.iter().any(|c| c.ok == Some(false));
        (
            checks,
            None,
            if failed { Verdict::Fail } else { Verdict::Pass },
        )
    };
    Outcome {
        index,
        label: ex.label(),
        entry: ex.entry.clone(),
        expected_status: if dry_run {
            ex.recorded_status
        } else {
            ex.expect.status
        },
        observed: obs,
        checks,
        verdict,
        change,
        logs,
        round,
    }
}

fn skipped(index: usize, ex: &Exchange, why: String, round: usize) -> Outcome {
    Outcome {
        index,
        label: ex.label(),
        entry: ex.entry.clone(),
        expected_status: ex.expect.status,
        observed: Observed {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            backend: None,
            from_gateway: None,
            note: Some(why.clone()),
        },
        checks: Vec::new(),
        verdict: Verdict::Skip(why),
        change: None,
        logs: Vec::new(),
        round,
    }
}

/// An exchange replayed on a VM thread: judged in full, or just counted as passed.
enum Done {
    Passed,
    Judged(Box<Outcome>),
}

/// How many failures of later rounds are kept in detail.
const LATER_FAILURES: usize = 20;

struct Tally {
    outcomes: Vec<Outcome>,
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    /// The suite's result, once every round is judged.
    fn into_run(
        self,
        suite: &Suite,
        opts: &Options,
        elapsed: Duration,
        warnings: Vec<String>,
        target: String,
    ) -> SuiteRun {
        SuiteRun {
            name: suite.name.clone(),
            file: suite.file.display().to_string(),
            outcomes: self.outcomes,
            rounds: opts.repeat.max(1),
            passed: self.passed,
            failed: self.failed,
            skipped: self.skipped,
            elapsed,
            warnings,
            target,
        }
    }

    fn new() -> Tally {
        Tally {
            outcomes: Vec::new(),
            passed: 0,
            failed: 0,
            skipped: 0,
        }
    }

    fn add(&mut self, o: Outcome, later_failures: &mut usize) {
        match o.verdict {
            Verdict::Pass => self.passed += 1,
            Verdict::Fail => self.failed += 1,
            Verdict::Skip(_) => self.skipped += 1,
        }
        if o.round == 0 {
            self.outcomes.push(o);
        } else if o.verdict == Verdict::Fail && *later_failures < LATER_FAILURES {
            *later_failures += 1;
            self.outcomes.push(o);
        }
    }
}

/// The virtual time of each exchange: its own timestamp, else the previous one plus the
/// suite's interval; never backwards. Later rounds continue after the first.
fn schedule(suite: &Suite, repeat: usize) -> Vec<Slot> {
    let mut times = Vec::with_capacity(suite.exchanges.len());
    let mut prev: Option<u64> = None;
    for ex in &suite.exchanges {
        let t = match (ex.at, prev) {
            (Some(at), Some(p)) => at.max(p),
            (Some(at), None) => at,
            (None, Some(p)) => p.saturating_add(suite.interval),
            (None, None) => suite.start,
        };
        times.push(t);
        prev = Some(t);
    }
    let first = times.first().copied().unwrap_or(suite.start);
    let span = prev.unwrap_or(first).saturating_sub(first) + suite.interval;
    let mut out = Vec::with_capacity(times.len() * repeat);
    for round in 0..repeat {
        for (i, t) in times.iter().enumerate() {
            out.push((
                round,
                i,
                t.saturating_add(span.saturating_mul(round as u64)),
            ));
        }
    }
    out
}

/// One exchange to run: round, index, virtual time.
type Slot = (usize, usize, u64);

/// Replays a suite natively through the real filter code.
pub fn native(suite: &Suite, opts: &Options) -> Result<SuiteRun, RunError> {
    let config = opts
        .config
        .clone()
        .or_else(|| suite.config.clone())
        .ok_or_else(|| RunError::NoConfig(suite.file.display().to_string()))?;
    let settings = HostSettings {
        cluster_header: cluster_header(&config.plugin),
        clusters: config.clusters.clone(),
        stubs: suite.stubs.clone(),
        route_timeout_ms: opts.route_timeout_ms,
        ..HostSettings::default()
    };
    let host = Host::new(settings);
    let plan = schedule(suite, opts.repeat.max(1));
    // VMs boot at the first exchange's time, so ticks count from there.
    host.clock()
        .set_nanos(plan.first().map_or(suite.start, |(_, _, t)| *t));
    let workers = opts.workers.unwrap_or(suite.workers).max(1);
    let mut vms = Vec::with_capacity(workers);
    for _ in 0..workers {
        vms.push(
            host.start_vm_with(opts.init, &config.plugin)
                .map_err(|e| RunError::Host(config.source.clone(), e))?,
        );
    }
    let mut warnings = suite.warnings.clone();
    if let Some(first) = vms.first() {
        // What the filter said while loading the configuration (e.g. warnings about it).
        let boot = first
            .exec(|g| g.take_logs())
            .map_err(|e| RunError::Host(config.source.clone(), e))?;
        warnings.extend(
            boot.iter()
                .filter(|l| l.level >= 3)
                .map(|l| format!("filter: {}", l.message)),
        );
    }
    let exchanges: Arc<Vec<Exchange>> = Arc::new(suite.exchanges.clone());
    // Consecutive exchanges for the same worker run as one batch on its thread.
    let mut batches: Vec<(usize, Vec<Slot>)> = Vec::new();
    for (round, i, t) in plan {
        let w = exchanges
            .get(i)
            .and_then(|e| e.worker)
            .unwrap_or(i % workers)
            .min(workers - 1);
        match batches.last_mut() {
            Some((bw, items)) if *bw == w => items.push((round, i, t)),
            _ => batches.push((w, vec![(round, i, t)])),
        }
    }
    let started = Instant::now();
    let mut tally = Tally::new();
    let mut later = 0usize;
    let (dry_run, verbose) = (opts.dry_run, opts.verbose);
    for (w, items) in batches {
        let Some(vm) = vms.get(w) else {
            continue;
        };
        let exchanges = exchanges.clone();
        let host_ref = host.clone();
        let outcomes = vm
            .exec(move |guest| {
                let mut out = Vec::with_capacity(items.len());
                for (round, i, t) in items {
                    let Some(ex) = exchanges.get(i) else {
                        continue;
                    };
                    if let Some(why) = &ex.skip {
                        out.push(Done::Judged(Box::new(skipped(i, ex, why.clone(), round))));
                        continue;
                    }
                    host_ref.clock().set_nanos(t);
                    let upstream = answer(ex);
                    let mut r = guest.run(&ex.request, &mut |_| upstream.clone());
                    let logs = std::mem::take(&mut r.logs)
                        .iter()
                        .filter(|l| verbose || l.level >= 3)
                        .map(ToString::to_string)
                        .collect();
                    let obs = observe(r);
                    if round > 0 && !dry_run && obs.status != 0 && holds(&ex.expect, &obs) {
                        // Later rounds report only failures: a pass needs no description.
                        out.push(Done::Passed);
                        continue;
                    }
                    out.push(Done::Judged(Box::new(judge(
                        i, ex, obs, logs, dry_run, round,
                    ))));
                }
                out
            })
            .map_err(|e| RunError::Host(config.source.clone(), e))?;
        for o in outcomes {
            match o {
                Done::Passed => tally.passed += 1,
                Done::Judged(o) => tally.add(*o, &mut later),
            }
        }
    }
    let elapsed = started.elapsed();
    let target = format!(
        "native, {workers} worker{}",
        if workers == 1 { "" } else { "s" }
    );
    Ok(tally.into_run(suite, opts, elapsed, warnings, target))
}

/// `http://host:port` (or `host:port`) as a socket address for the HTTP client.
pub fn target_address(url: &str) -> Result<String, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "--against {url}: only http:// gateways are supported (not {scheme}://)"
            ))
        }
        None => url,
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("--against {url}: no host"));
    }
    Ok(if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    })
}

/// Sends one exchange's request to a live gateway.
pub fn send_live(addr: &str, ex: &Exchange) -> Result<http_client::HttpResponse, String> {
    let mut headers: Vec<(&str, &str)> = ex
        .request
        .headers
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(':')
                && !crate::host::headers::is_connection_header(k)
                && !k.eq_ignore_ascii_case("content-length")
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.insert(0, ("host", ex.request.authority.as_str()));
    let body: Vec<u8> = ex.request.body.concat();
    http_client::send(
        addr,
        &ex.request.method,
        &ex.request.path,
        &headers,
        &body,
        Duration::from_secs(15),
    )
}

/// Replays a suite against a live gateway. With `backend`, the gateway's clusters are the
/// replay backend, which answers with the recorded responses and reports what it received.
pub fn live(
    suite: &Suite,
    opts: &Options,
    url: &str,
    backend: Option<&ReplayBackend>,
) -> Result<SuiteRun, RunError> {
    let addr = target_address(url).map_err(RunError::Unreachable)?;
    std::net::TcpStream::connect(&addr).map_err(|e| {
        RunError::Unreachable(format!("cannot connect to the gateway at {addr}: {e}"))
    })?;
    let started = Instant::now();
    let mut tally = Tally::new();
    let mut later = 0usize;
    for round in 0..opts.repeat.max(1) {
        for (i, ex) in suite.exchanges.iter().enumerate() {
            if let Some(why) = &ex.skip {
                tally.add(skipped(i, ex, why.clone(), round), &mut later);
                continue;
            }
            if let Err(why) = ex.live_reproducible() {
                tally.add(skipped(i, ex, why, round), &mut later);
                continue;
            }
            if let Some(b) = backend {
                b.answer_with(answer(ex));
            }
            let obs = match send_live(&addr, ex) {
                Ok(r) => {
                    let received = backend.map(|b| b.take_received().into_iter().next());
                    let gateway = is_gateway_reply(&r.headers);
                    Observed {
                        status: r.status,
                        from_gateway: Some(match &received {
                            Some(got) => got.is_none() || gateway,
                            None => gateway,
                        }),
                        headers: r.headers,
                        body: r.body,
                        backend: received,
                        note: None,
                    }
                }
                Err(e) => Observed {
                    status: 0,
                    headers: Vec::new(),
                    body: Vec::new(),
                    backend: None,
                    from_gateway: None,
                    note: Some(e),
                },
            };
            tally.add(
                judge(i, ex, obs, Vec::new(), opts.dry_run, round),
                &mut later,
            );
        }
    }
    let elapsed = started.elapsed();
    let mut warnings = suite.warnings.clone();
    if let Some(config) = opts.config.as_ref().or(suite.config.as_ref()) {
        warnings.extend(configuration_warnings(
            config,
            &addr,
            opts.admin.as_deref(),
            suite,
            &tally.outcomes,
        ));
    }
    Ok(tally.into_run(suite, opts, elapsed, warnings, addr))
}

/// Whether the live gateway runs `config`, the configuration the exchanges were written for.
/// With its admin address: the tollgate configurations in Envoy's `/config_dump` are compared
/// with it. Without: an `API not found.` answer to a request for an API `config` defines shows
/// that the gateway runs something else.
fn configuration_warnings(
    config: &GatewayConfig,
    addr: &str,
    admin: Option<&str>,
    suite: &Suite,
    outcomes: &[Outcome],
) -> Vec<String> {
    let expected: Option<serde_json::Value> = serde_json::from_slice(&config.plugin).ok();
    if let Some(admin) = admin {
        return match (live_configurations(admin), expected) {
            (Ok(running), Some(expected)) if running.contains(&expected) => Vec::new(),
            (Ok(running), _) if running.is_empty() => vec![format!(
                "the Envoy at {admin} runs no tollgate filter: the answers from {addr} do not \
                 show what {} does",
                config.source
            )],
            (Ok(_), _) => vec![format!(
                "the gateway at {addr} runs another configuration than {} (compared with \
                 {admin}/config_dump): its answers show what its own configuration does",
                config.source
            )],
            (Err(e), _) => vec![format!(
                "cannot compare the gateway's configuration with {}: {e}",
                config.source
            )],
        };
    }
    let Some(expected) = expected else {
        return Vec::new();
    };
    let mut unknown: Vec<String> = Vec::new();
    for o in outcomes.iter().filter(|o| o.round == 0) {
        let not_found = o
            .observed
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("x-gateway-error") && v == "API not found.");
        let Some(ex) = suite.exchanges.get(o.index) else {
            continue;
        };
        if let Some(api) = not_found.then(|| defined_api(&expected, ex)).flatten() {
            if !unknown.contains(&api) {
                unknown.push(api);
            }
        }
    }
    if unknown.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "the gateway at {addr} answers \"API not found.\" for {}, which {} defines: it runs \
         another configuration, so its answers do not show what this one does (--admin \
         compares the two)",
        unknown.join(", "),
        config.source
    )]
}

/// `org/api/version` of the API in a plugin configuration that an exchange's request names
/// (by its path, or its path and `X-API-Version`), if the configuration defines it.
fn defined_api(config: &serde_json::Value, ex: &Exchange) -> Option<String> {
    let path = ex.request.path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let header_version = ex
        .request
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-api-version"))
        .map(|(_, v)| v.as_str());
    config["apis"].as_array()?.iter().find_map(|api| {
        let (org, id, version) = (
            api["organizationId"].as_str()?,
            api["apiId"].as_str()?,
            api["version"].as_str()?,
        );
        let named = segments.first() == Some(&org)
            && segments.get(1) == Some(&id)
            && (segments.get(2) == Some(&version) || header_version == Some(version));
        named.then(|| format!("{org}/{id}/{version}"))
    })
}

/// The tollgate configurations an Envoy runs, from its admin's `/config_dump`: every wasm
/// filter's `configuration` string, as JSON.
pub fn live_configurations(admin: &str) -> Result<Vec<serde_json::Value>, String> {
    let addr = target_address(admin).map_err(|e| e.replacen("--against", "--admin", 1))?;
    let r = http_client::send(
        &addr,
        "GET",
        "/config_dump",
        &[],
        b"",
        Duration::from_secs(10),
    )
    .map_err(|e| format!("cannot read {admin}/config_dump: {e}"))?;
    if r.status != 200 {
        return Err(format!("{admin}/config_dump answered {}", r.status));
    }
    let dump: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| format!("{admin}/config_dump is not JSON: {e}"))?;
    let mut found = Vec::new();
    collect_wasm_configurations(&dump, &mut found);
    Ok(found)
}

fn collect_wasm_configurations(v: &serde_json::Value, found: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            let is_wasm = map
                .get("@type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|t| t.ends_with("wasm.v3.Wasm"));
            if is_wasm {
                let text = map
                    .get("config")
                    .map(|c| &c["configuration"]["value"])
                    .and_then(serde_json::Value::as_str);
                if let Some(text) = text {
                    if let Ok(config) = serde_json::from_str(text) {
                        found.push(config);
                    }
                }
            }
            for child in map.values() {
                collect_wasm_configurations(child, found);
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                collect_wasm_configurations(child, found);
            }
        }
        _ => {}
    }
}

/// Every cluster a configuration may route to (for the replay backend of a live gateway).
pub fn clusters_for(config: &GatewayConfig) -> BTreeSet<String> {
    config
        .clusters
        .clone()
        .unwrap_or_else(|| super::fixture::clusters_of(&config.plugin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_urls_and_bare_addresses() {
        assert_eq!(
            target_address("http://127.0.0.1:10000").unwrap(),
            "127.0.0.1:10000"
        );
        assert_eq!(target_address("127.0.0.1:1/x").unwrap(), "127.0.0.1:1");
        assert_eq!(target_address("http://gw").unwrap(), "gw:80");
        assert!(target_address("https://gw").is_err());
    }

    #[test]
    fn the_cluster_header_comes_from_the_gateway_settings() {
        assert_eq!(
            cluster_header(br#"{"gateway": {"clusterHeader": "X-C"}}"#),
            "x-c"
        );
        assert_eq!(cluster_header(b"{}"), "x-tollgate-cluster");
    }
}
