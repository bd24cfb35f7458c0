//! The native host behaves like Envoy where a filter can tell: it drives the real tollgate
//! filter, and small probe filters written against the same SDK check the parts tollgate does
//! not exercise today (call-outs, ticks, body buffering, the clock, shared data under
//! contention).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};
use serde_json::json;
use tollgate_harness::host::{
    BackendResponse, Host, HostSettings, Origin, StreamInput, StreamResult, Upstream,
};
use tollgate_harness::replay::run::{self, Verdict};
use tollgate_harness::replay::{fixture, report};
use tollgate_harness::time;

fn tollgate_config() -> Vec<u8> {
    json!({
        "apis": [{"organizationId": "t", "apiId": "echo", "version": "1", "publicAPI": true,
                  "endpoint": "http://backend.internal:8080/svc", "cluster": "echo"}]
    })
    .to_string()
    .into_bytes()
}

fn ok() -> Upstream {
    Upstream::Respond(BackendResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: b"hi".to_vec(),
        trailers: vec![],
    })
}

fn backend_header(r: &StreamResult, name: &str) -> Option<String> {
    r.upstream
        .as_ref()
        .and_then(|u| u.header(name))
        .map(str::to_string)
}

/// Replays a fixture (JSON text) natively with a probe filter; panics on any failure.
fn replay_with(init: fn(), fixture_json: serde_json::Value) {
    let suite = fixture::parse(
        std::path::Path::new("probe.json"),
        &fixture_json.to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let opts = run::Options {
        init,
        ..run::Options::default()
    };
    let result = run::native(&suite, &opts).unwrap_or_else(|e| panic!("{e}"));
    let failures: Vec<String> = result
        .outcomes
        .iter()
        .filter(|o| o.verdict != Verdict::Pass)
        .map(|o| format!("{}: {}", o.label, report::reasons(o).join("; ")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- tollgate itself -----------------------------------------------------------------------

#[test]
fn a_public_api_request_is_routed_to_its_backend() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&tollgate_config()).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/echo/1/x?a=1"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.origin, Origin::Backend);
    let up = r.upstream.unwrap();
    assert_eq!(up.path(), "/svc/x?a=1");
    assert_eq!(up.authority(), "backend.internal:8080");
    assert_eq!(up.cluster, "echo");
    assert_eq!(up.header("x-tollgate-cluster"), None);
    assert_eq!(up.header("x-envoy-expected-rq-timeout-ms"), Some("30000"));
}

#[test]
fn an_unknown_api_gets_the_filters_local_reply_and_no_backend() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&tollgate_config()).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/nope/1/x"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.origin, Origin::Filter);
    assert_eq!(r.header("x-gateway-error"), Some("API not found."));
    assert_eq!(r.header("server"), Some("envoy"));
    assert!(r.upstream.is_none());
}

#[test]
fn a_configuration_the_filter_refuses_stops_the_vm_with_its_errors() {
    let host = Host::new(HostSettings::default());
    let err = host.start_vm(b"{\"apis\": 7}").err().unwrap();
    let text = err.to_string();
    assert!(text.contains("refused the configuration"), "{text}");
    assert!(text.contains("apis"), "{text}");
}

#[test]
fn tollgate_logs_configuration_warnings_once_across_worker_vms() {
    // An Apiman contract with an empty policies list to an API with policies: tollgate warns
    // about it, once per host, using shared data to tell the other workers it has.
    let config = json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1", "endpoint": "http://b/",
                  "apiPolicies": [{"policy": "ip-blocklist", "config": {"ipList": ["10.0.0.1"]}}]}],
        "clients": [{"organizationId": "t", "clientId": "c", "version": "1", "apiKey": "k-0000000001",
                     "contracts": [{"apiOrgId": "t", "apiId": "a", "apiVersion": "1", "policies": []}]}]
    })
    .to_string();
    let host = Host::new(HostSettings::default());
    let vms: Vec<_> = (0..3)
        .map(|_| host.start_vm(config.as_bytes()).unwrap())
        .collect();
    let warned: Vec<bool> = vms
        .iter()
        .map(|vm| {
            vm.exec(|g| g.take_logs())
                .unwrap()
                .iter()
                .any(|l| l.message.contains("has an empty policies list"))
        })
        .collect();
    assert_eq!(warned.iter().filter(|w| **w).count(), 1, "{warned:?}");
    assert!(host
        .shared()
        .keys()
        .iter()
        .any(|k| k.starts_with("tollgate.config-warned.")));
}

/// A registry past the size from which tollgate shares its compiled image between VMs (1 MiB).
fn large_registry(tag: &str) -> String {
    let clients: Vec<serde_json::Value> = (0..8000)
        .map(|n| {
            json!({"organizationId": "t", "clientId": format!("client-{n}"), "version": "1",
                   "apiKey": format!("key-{tag}-{n:06}"),
                   "contracts": [{"apiOrgId": "t", "apiId": "a", "apiVersion": "1", "plan": "gold"}]})
        })
        .collect();
    json!({
        "apis": [{"organizationId": "t", "apiId": "a", "version": "1", "endpoint": "http://b/",
                  "apiPolicies": [{"policy": "ip-allowlist", "config": {"ipList": ["0.0.0.0/0"]}}]}],
        "plans": [{"planId": "gold", "policies": [{"policy": "simple-header", "config": {"addHeaders": [
            {"headerName": "X-Plan", "headerValue": tag, "applyTo": "Request"}]}}]}],
        "clients": clients
    })
    .to_string()
}

fn load_lines(vm: &tollgate_harness::host::Vm) -> Vec<String> {
    vm.exec(|g| g.take_logs())
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .filter(|m| m.starts_with("loaded ") || m.contains("registry image"))
        .collect()
}

#[test]
fn a_large_registry_is_compiled_once_and_adopted_by_the_other_vms() {
    let config = large_registry("one");
    assert!(config.len() > 1 << 20, "{} bytes", config.len());
    let host = Host::new(HostSettings::default());
    let vms: Vec<_> = (0..3)
        .map(|_| host.start_vm(config.as_bytes()).unwrap())
        .collect();
    let first = load_lines(&vms[0]);
    assert!(first.iter().any(|l| l.ends_with(" ms")), "{first:?}");
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("registry image written")),
        "{first:?}"
    );
    for vm in &vms[1..] {
        let lines = load_lines(vm);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("clients in") && l.contains("the registry image")),
            "{lines:?}"
        );
    }
    for vm in &vms {
        let known = vm
            .run(
                StreamInput::new("GET", "/t/a/1/x").header("X-API-Key", "key-one-007999"),
                |_| ok(),
            )
            .unwrap();
        assert_eq!(known.status, 200, "{known:?}");
        assert_eq!(backend_header(&known, "x-plan").as_deref(), Some("one"));
        let unknown = vm
            .run(
                StreamInput::new("GET", "/t/a/1/x").header("X-API-Key", "key-two-007999"),
                |_| ok(),
            )
            .unwrap();
        assert_eq!(unknown.status, 404, "{unknown:?}");
        assert_eq!(
            unknown.header("x-gateway-error"),
            Some("No client found for API Key key****")
        );
    }
}

#[test]
fn an_image_whose_pieces_changed_is_not_adopted() {
    // As if another VM rewrote the image while this one read it: a byte of the last piece
    // (the keys) differs from what the image's closing fingerprint covers.
    let config = large_registry("one");
    let host = Host::new(HostSettings::default());
    host.start_vm(config.as_bytes()).unwrap();
    let keys = host.shared().keys();
    let last = keys
        .iter()
        .filter(|k| k.starts_with("tollgate.registry-image.") && k.matches('.').count() == 4)
        .max_by_key(|k| k.rsplit('.').next().and_then(|n| n.parse::<u32>().ok()))
        .unwrap();
    let (mut piece, _) = host.shared().get(last).unwrap();
    let middle = piece.len() / 2;
    piece[middle] ^= 0x01;
    host.shared().set(last, &piece, 0);
    let vm = host.start_vm(config.as_bytes()).unwrap();
    let lines = load_lines(&vm);
    assert!(
        lines
            .iter()
            .any(|l| l
                == "registry image not used: its bytes are not the ones written together (changed or damaged)"),
        "{lines:?}"
    );
    for n in [0, 3999, 7999] {
        let r = vm
            .run(
                StreamInput::new("GET", "/t/a/1/x").header("X-API-Key", &format!("key-one-{n:06}")),
                |_| ok(),
            )
            .unwrap();
        assert_eq!(r.status, 200, "key {n}: {r:?}");
    }
}

#[test]
fn a_registry_image_compiled_by_tollgate_gen_answers_as_its_json_does() {
    let (compiled, _) =
        tollgate_core::registry::image::compile(large_registry("one").as_bytes()).unwrap();
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&compiled).unwrap();
    let known = vm
        .run(
            StreamInput::new("GET", "/t/a/1/x").header("X-API-Key", "key-one-004321"),
            |_| ok(),
        )
        .unwrap();
    assert_eq!(known.status, 200, "{known:?}");
    let lines = load_lines(&vm);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("loaded 1 APIs and 8000 clients in")
                && l.ends_with("(a registry image compiled by tollgate-gen)")),
        "{lines:?}"
    );
    assert_eq!(backend_header(&known, "x-plan").as_deref(), Some("one"));
    let unknown = vm
        .run(
            StreamInput::new("GET", "/t/a/1/x").header("X-API-Key", "key-two-004321"),
            |_| ok(),
        )
        .unwrap();
    assert_eq!(unknown.status, 404, "{unknown:?}");
    // Every VM reads the delivered image itself: nothing goes to shared data.
    assert!(!host
        .shared()
        .keys()
        .iter()
        .any(|k| k.starts_with("tollgate.registry-image")));
}

fn keyed(vm: &tollgate_harness::host::Vm, key: &str) -> StreamResult {
    vm.run(
        StreamInput::new("GET", "/t/a/1/x").header("X-API-Key", key),
        |_| ok(),
    )
    .unwrap()
}

/// A VM serving the image of `large_registry("one")`, its tables read by a first request.
fn serving_one(host: &Host) -> tollgate_harness::host::Vm {
    let vm = host.start_vm(&compiled("one")).unwrap();
    assert_eq!(keyed(&vm, "key-one-000007").status, 200);
    vm
}

/// A live update to `image` (see `Guest::reconfigure`), accepted.
fn update(vm: &tollgate_harness::host::Vm, image: Vec<u8>) {
    vm.exec(move |g| g.reconfigure(&image)).unwrap().unwrap();
}

/// The next slice tick (1 ms).
fn next_slice(host: &Host, vm: &tollgate_harness::host::Vm) {
    host.clock().advance(Duration::from_millis(1));
    vm.exec(|g| g.tick()).unwrap();
}

fn compiled(tag: &str) -> Vec<u8> {
    tollgate_core::registry::image::compile(large_registry(tag).as_bytes())
        .unwrap()
        .0
}

#[test]
fn a_delivered_image_has_its_tables_read_at_the_first_request_not_before() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&compiled("one")).unwrap();
    let lines = load_lines(&vm);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("registry image accepted in ")
                && l.ends_with("; its tables are read at the first request")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("loaded ")), "{lines:?}");
    // No tick reads them: a VM that never serves (Envoy's validation VM, the main thread's)
    // never pays for the tables.
    assert_eq!(vm.exec(|g| g.tick_period()).unwrap(), None);
    assert_eq!(keyed(&vm, "key-one-000007").status, 200);
    let lines = load_lines(&vm);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("loaded 1 APIs and 8000 clients in ")
                && l.contains(", its tables in 1 slice (")),
        "{lines:?}"
    );
}

#[test]
fn a_live_update_is_served_by_the_registry_before_until_its_tables_are_read() {
    let host = Host::new(HostSettings::default());
    let vm = serving_one(&host);
    // Envoy deletes the old root context as soon as no stream holds it: here, at once.
    update(&vm, compiled("two"));
    let lines = load_lines(&vm);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("registry image taken in ")
                && l.ends_with(
                    "; it is read between requests, the configuration before it serving meanwhile"
                )),
        "{lines:?}"
    );
    let before = keyed(&vm, "key-one-000007");
    assert_eq!(before.status, 200, "{before:?}");
    assert_eq!(backend_header(&before, "x-plan").as_deref(), Some("one"));
    assert_eq!(keyed(&vm, "key-two-000007").status, 404);
    assert_eq!(
        vm.exec(|g| g.tick_period()).unwrap(),
        Some(Duration::from_millis(1))
    );
    next_slice(&host, &vm);
    let after = keyed(&vm, "key-two-000007");
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(backend_header(&after, "x-plan").as_deref(), Some("two"));
    assert_eq!(keyed(&vm, "key-one-000007").status, 404);
    // Back to the ordinary tick once the tables are read.
    assert_eq!(
        vm.exec(|g| g.tick_period()).unwrap(),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn an_update_arriving_while_another_is_read_is_served_by_the_registry_before_both() {
    let host = Host::new(HostSettings::default());
    let vm = serving_one(&host);
    // No tick between them: "two" is still unread when "three" arrives, and the root context
    // that served "one" is gone.
    update(&vm, compiled("two"));
    update(&vm, compiled("three"));
    let lines = load_lines(&vm);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with("the configuration before it serving meanwhile"))
            .count(),
        2,
        "{lines:?}"
    );
    let meanwhile = keyed(&vm, "key-one-000007");
    assert_eq!(meanwhile.status, 200, "{meanwhile:?}");
    assert_eq!(keyed(&vm, "key-three-000007").status, 404);
    next_slice(&host, &vm);
    assert_eq!(keyed(&vm, "key-three-000007").status, 200);
    assert_eq!(keyed(&vm, "key-two-000007").status, 404);
}

#[test]
fn an_update_where_two_filters_share_a_name_takes_neither_registry_for_its_predecessor() {
    let host = Host::new(HostSettings::default());
    let vm = serving_one(&host);
    // Another filter of the same plugin name in this VM (against Envoy's advice).
    vm.exec(|g| g.add_root(&compiled("other")))
        .unwrap()
        .unwrap();
    update(&vm, compiled("two"));
    let lines = load_lines(&vm);
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("; its tables are read at the first request")),
        "{lines:?}"
    );
    assert_eq!(keyed(&vm, "key-one-000007").status, 404);
    assert_eq!(keyed(&vm, "key-other-000007").status, 404);
    assert_eq!(keyed(&vm, "key-two-000007").status, 200);
}

#[test]
fn an_update_found_damaged_as_it_is_read_between_requests_answers_503_and_says_why() {
    // Envoy's validation VM refuses a damaged image before a worker gets it
    // (a_damaged_registry_image_is_refused_at_load); a worker VM reading one anyway fails
    // closed rather than serve the registry before it forever.
    let host = Host::new(HostSettings::default());
    let vm = serving_one(&host);
    let mut damaged = compiled("two");
    let late = damaged.len() - 1000;
    damaged[late] ^= 0x01;
    update(&vm, damaged);
    assert_eq!(keyed(&vm, "key-one-000007").status, 200);
    next_slice(&host, &vm);
    let errors: Vec<String> = vm
        .exec(|g| g.take_logs())
        .unwrap()
        .into_iter()
        .filter(|l| l.level >= 4)
        .map(|l| l.message)
        .collect();
    assert!(
        errors.iter().any(|l| l.starts_with("the registry image does not read: ")
            && l.ends_with("; requests under this configuration are answered 503 until another is delivered")),
        "{errors:?}"
    );
    let after = keyed(&vm, "key-one-000007");
    assert_eq!(after.status, 503, "{after:?}");
    // Back to the ordinary tick: nothing is left to read.
    assert_eq!(
        vm.exec(|g| g.tick_period()).unwrap(),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn a_damaged_registry_image_is_refused_at_load() {
    let (mut compiled, _) =
        tollgate_core::registry::image::compile(large_registry("one").as_bytes()).unwrap();
    let middle = compiled.len() / 2;
    compiled[middle] ^= 0x01;
    let host = Host::new(HostSettings::default());
    let text = host.start_vm(&compiled).err().unwrap().to_string();
    assert!(text.contains("refused the configuration"), "{text}");
    assert!(
        text.contains("configuration refused: the registry image does not read: its bytes are not the ones written together"),
        "{text}"
    );
}

#[test]
fn registry_images_of_replaced_configurations_are_emptied() {
    let host = Host::new(HostSettings::default());
    for tag in ["one", "two", "three"] {
        host.start_vm(large_registry(tag).as_bytes()).unwrap();
    }
    let held: Vec<String> = host
        .shared()
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("tollgate.registry-image."))
        .filter(|k| host.shared().get(k).is_some_and(|(v, _)| !v.is_empty()))
        .collect();
    let manifests = held.iter().filter(|k| k.matches('.').count() == 3).count();
    assert_eq!(manifests, 2, "{held:?}");
}

// ---- shared data under contention ----------------------------------------------------------

struct CounterRoot;
impl Context for CounterRoot {}
impl RootContext for CounterRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Counter))
    }
}

/// Increments a shared counter with a CAS loop and tells the backend the value it wrote.
struct Counter;
impl Context for Counter {}
impl HttpContext for Counter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        loop {
            let (value, cas) = self.get_shared_data("counter");
            let n: u64 = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                + 1;
            // An absent key is created with a token no live key holds: with `None` (0) the
            // write would be unconditional and could reset what other workers counted since.
            let cas = cas.or(Some(tollgate_core::host::CREATE_CAS));
            match self.set_shared_data("counter", Some(n.to_string().as_bytes()), cas) {
                Ok(()) => {
                    self.set_http_request_header("x-tollgate-cluster", Some("c"));
                    self.set_http_request_header("x-n", Some(&n.to_string()));
                    return Action::Continue;
                }
                Err(Status::CasMismatch) => continue,
                Err(_) => return Action::Continue,
            }
        }
    }
}

fn counter_init() {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CounterRoot) });
}

#[test]
fn worker_vms_share_data_with_envoys_cas_semantics_under_contention() {
    let host = Host::new(HostSettings::default());
    let (workers, each) = (4, 250);
    let vms: Vec<_> = (0..workers)
        .map(|_| host.start_vm_with(counter_init, b"").unwrap())
        .collect();
    // Every VM runs its requests at the same time as the others, on its own thread.
    let seen: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| {
                s.spawn(move || {
                    vm.exec(move |g| {
                        (0..each)
                            .map(|_| {
                                let r = g.run(&StreamInput::new("GET", "/"), &mut |_| ok());
                                backend_header(&r, "x-n").unwrap().parse::<u64>().unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    let expected: Vec<u64> = (1..=(workers * each) as u64).collect();
    assert_eq!(sorted, expected, "each increment must be seen exactly once");
    assert_eq!(
        host.shared().get("counter").unwrap().0,
        (workers * each).to_string().into_bytes()
    );
}

// ---- the clock and ticks -------------------------------------------------------------------

struct ClockRoot;
impl Context for ClockRoot {}
impl RootContext for ClockRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        self.set_tick_period(Duration::from_secs(1));
        true
    }
    fn on_tick(&mut self) {
        let (v, cas) = self.get_shared_data("ticks");
        let n = v.map_or(0, |b| b.len()) + 1;
        let _ = self.set_shared_data("ticks", Some(&vec![b'x'; n]), cas);
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ClockProbe))
    }
}

/// Tells the backend what time the host says it is, and how many ticks have fired.
struct ClockProbe;
impl Context for ClockProbe {}
impl HttpContext for ClockProbe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let now = self
            .get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let ticks = self.get_shared_data("ticks").0.map_or(0, |b| b.len());
        self.set_http_request_header("x-now", Some(&now.to_string()));
        self.set_http_request_header("x-ticks", Some(&ticks.to_string()));
        self.set_http_request_header("x-tollgate-cluster", Some("c"));
        Action::Continue
    }
}

fn clock_init() {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ClockRoot) });
}

#[test]
fn the_virtual_clock_follows_the_recorded_timestamps() {
    let t0 = time::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
    let exchange = |at: Option<&str>, now: u64, ticks: u32| {
        let mut e = json!({
            "request": {"path": "/"},
            "response": {"status": 200},
            "expect": {"status": 200, "backend": {"headers": {"x-now": now.to_string(), "x-ticks": ticks.to_string()}}}
        });
        if let Some(at) = at {
            e["at"] = json!(at);
        }
        e
    };
    replay_with(
        clock_init,
        json!({
            "config": {},
            "clusters": ["c"],
            "interval": 250,
            "exchanges": [
                exchange(Some("2026-03-01T12:00:00Z"), t0, 0),
                // Without a timestamp: the previous one plus the interval.
                exchange(None, t0 + 250_000_000, 0),
                // Ninety seconds later, ninety one-second ticks have fired.
                exchange(Some("2026-03-01T12:01:30.5Z"), t0 + 90_500_000_000, 90),
                // An earlier timestamp does not move the clock back.
                exchange(Some("2026-03-01T11:00:00Z"), t0 + 90_500_000_000, 90)
            ]
        }),
    );
}

// ---- call-outs -----------------------------------------------------------------------------

struct AuthzRoot;
impl Context for AuthzRoot {}
impl RootContext for AuthzRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Authz))
    }
}

/// Asks cluster `x-authz-cluster` whether the request may pass, like an ext-authz policy.
struct Authz;
impl Context for Authz {
    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status");
        let body = self
            .get_http_call_response_body(0, body_size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match status.as_deref() {
            Some("200") => {
                self.set_http_request_header("x-authz", Some(&body));
                self.set_http_request_header("x-tollgate-cluster", Some("c"));
                self.resume_http_request();
            }
            None => self.send_http_response(504, vec![], Some(b"authz timed out")),
            Some(_) => self.send_http_response(403, vec![], Some(body.as_bytes())),
        }
    }
}
impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let cluster = self
            .get_http_request_header("x-authz-cluster")
            .unwrap_or_default();
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        let path = format!("/check?user={user}");
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", "authz"),
        ];
        match self.dispatch_http_call(&cluster, headers, None, vec![], Duration::from_secs(1)) {
            Ok(_) => Action::Pause,
            Err(e) => {
                self.send_http_response(500, vec![], Some(format!("{e:?}").as_bytes()));
                Action::Pause
            }
        }
    }
}

fn authz_init() {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthzRoot) });
}

#[test]
fn call_outs_are_answered_from_the_stubs() {
    let ask = |cluster: &str, user: &str, expect: serde_json::Value| {
        json!({
            "request": {"path": "/", "headers": {"x-authz-cluster": cluster, "x-user": user}},
            "response": {"status": 200, "body": "from backend"},
            "expect": expect
        })
    };
    replay_with(
        authz_init,
        json!({
            "config": {},
            "clusters": ["c"],
            "stubs": [
                {"cluster": "authz", "path": "/check", "method": "GET", "status": 200, "body": "allowed", "delayMs": 40},
                {"cluster": "deny", "status": 403, "body": "denied by stub"},
                {"cluster": "slow", "timeout": true}
            ],
            "exchanges": [
                ask("authz", "ann", json!({"status": 200, "body": "from backend",
                                           "backend": {"headers": {"x-authz": "allowed"}}})),
                ask("deny", "bob", json!({"status": 403, "body": "denied by stub", "backend": false})),
                ask("slow", "cid", json!({"status": 504, "backend": false})),
                // Like Envoy, a cluster nobody knows is refused when the call is made.
                ask("nowhere", "dan", json!({"status": 500, "body": "BadArgument", "backend": false}))
            ]
        }),
    );
}

#[test]
fn a_stubbed_call_records_what_the_filter_sent() {
    let settings = HostSettings {
        stubs: vec![tollgate_harness::host::CallStub {
            cluster: "authz".into(),
            method: None,
            path: None,
            answer: tollgate_harness::host::StubAnswer::Respond {
                status: 200,
                headers: vec![],
                body: b"ok".to_vec(),
            },
            delay: Duration::from_millis(5),
        }],
        ..HostSettings::default()
    };
    let host = Host::new(settings);
    host.clock().set_nanos(1_000_000_000);
    let vm = host.start_vm_with(authz_init, b"").unwrap();
    let input = StreamInput::new("GET", "/")
        .header("x-authz-cluster", "authz")
        .header("x-user", "eve");
    let r = vm.run(input, |_| ok()).unwrap();
    assert_eq!(r.callouts.len(), 1);
    let call = &r.callouts[0];
    assert!(call.stubbed);
    assert!(call
        .headers
        .iter()
        .any(|(k, v)| k == ":path" && v == "/check?user=eve"));
    // The stub's delay moved the clock on.
    assert_eq!(host.clock().now_nanos(), 1_005_000_000);
}

// ---- bodies, header windows and local replies ------------------------------------------------

extern "C" {
    /// The host's own function, called the way tollgate's adapter calls it (raw status back).
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
}

fn raw_request_header_status(name: &str) -> u32 {
    let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
    let status =
        unsafe { proxy_get_header_map_value(0, name.as_ptr(), name.len(), &mut data, &mut len) };
    if !data.is_null() {
        // Ours now: the host allocated it with the guest's allocator (a boxed slice).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, len)) });
    }
    status
}

struct BodyRoot;
impl Context for BodyRoot {}
impl RootContext for BodyRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BodyProbe {
            sizes: Vec::new(),
            pause: false,
        }))
    }
}

/// With `x-pause`, holds the request in the headers phase and buffers the body to the end,
/// then upper-cases it and reports the sizes it was told. Without, lets the headers go and
/// records whether it can still read them from the body callback.
struct BodyProbe {
    sizes: Vec<usize>,
    pause: bool,
}
impl Context for BodyProbe {}
impl HttpContext for BodyProbe {
    fn on_http_request_headers(&mut self, _: usize, eos: bool) -> Action {
        self.set_http_request_header("x-tollgate-cluster", Some("c"));
        if self.get_http_request_header("x-reply").is_some() {
            self.send_http_response(418, vec![("X-Teapot", "yes")], Some(b"short and stout"));
            return Action::Pause;
        }
        self.pause = self.get_http_request_header("x-pause").is_some();
        if self.pause && !eos {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        self.sizes.push(size);
        if !self.pause {
            let status = raw_request_header_status("x-tollgate-cluster");
            let _ = self.set_shared_data(
                "header-status-after-continue",
                Some(status.to_string().as_bytes()),
                None,
            );
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.set_http_request_body(0, size, &body.to_ascii_uppercase());
        let sizes: Vec<String> = self.sizes.iter().map(ToString::to_string).collect();
        self.set_http_request_header("x-sizes", Some(&sizes.join(",")));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-seen-by-filter", Some("yes"));
        Action::Continue
    }
}

fn body_init() {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BodyRoot) });
}

#[test]
fn a_paused_body_is_buffered_until_the_end_of_the_stream() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm_with(body_init, b"").unwrap();
    let mut input = StreamInput::new("POST", "/").header("x-pause", "1");
    input.body = vec![b"ab".to_vec(), b"cd".to_vec()];
    let r = vm.run(input, |_| ok()).unwrap();
    let up = r.upstream.unwrap();
    assert_eq!(up.body, b"ABCD");
    // Told the buffered size each time; the stream ends with an empty chunk (as Envoy does).
    assert_eq!(up.header("x-sizes"), Some("2,4,4"));
}

#[test]
fn request_headers_are_out_of_reach_once_they_continued() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm_with(body_init, b"").unwrap();
    let r = vm
        .run(StreamInput::new("POST", "/").body(b"x"), |_| ok())
        .unwrap();
    assert_eq!(r.status, 200);
    // BadArgument, as on Envoy 1.40.
    assert_eq!(
        host.shared().get("header-status-after-continue").unwrap().0,
        b"2"
    );
}

#[test]
fn a_local_reply_ends_the_stream_and_passes_through_the_response_callbacks() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm_with(body_init, b"").unwrap();
    let mut called = false;
    let r = vm
        .exec(move |g| {
            let r = g.run(
                &StreamInput::new("GET", "/").header("x-reply", "1"),
                &mut |_| {
                    called = true;
                    ok()
                },
            );
            (r, called)
        })
        .unwrap();
    let (r, called) = r;
    assert!(!called, "the backend must not be called");
    assert_eq!(r.status, 418);
    assert_eq!(r.origin, Origin::Filter);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("x-teapot"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-seen-by-filter"), Some("yes"));
}

#[test]
fn a_backend_that_drops_the_connection_gets_the_gateways_503() {
    let host = Host::new(HostSettings::default());
    let vm = host.start_vm(&tollgate_config()).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/echo/1/x"), |_| Upstream::Reset)
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.origin, Origin::Envoy);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("API backend unavailable.")
    );
}

#[test]
fn without_envoys_error_mapping_tollgate_answers_envoys_failures_itself() {
    let host = Host::new(HostSettings {
        local_reply_mapping: false,
        ..HostSettings::default()
    });
    let vm = host.start_vm(&tollgate_config()).unwrap();
    let r = vm
        .run(StreamInput::new("GET", "/t/echo/1/x"), |_| Upstream::Reset)
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.origin, Origin::Filter);
    assert_eq!(
        r.text(),
        "{\"responseCode\":503,\"message\":\"API backend unavailable.\"}"
    );
}

#[test]
fn a_backend_slower_than_the_route_timeout_gets_envoys_504() {
    let host = Host::new(HostSettings {
        route_timeout_ms: 100,
        ..HostSettings::default()
    });
    let vm = host.start_vm(&tollgate_config()).unwrap();
    let slow = |_: &_| match ok() {
        Upstream::Respond(r) => Upstream::Slow(Duration::from_millis(100), r),
        other => other,
    };
    let r = vm
        .run(StreamInput::new("GET", "/t/echo/1/x"), slow)
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-gateway-error"), Some("API backend timed out."));
}
