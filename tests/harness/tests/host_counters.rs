//! tollgate-core's shared counters under contention, through the native host's shared data
//! (Envoy's CAS semantics): many worker VMs, each on its own thread, admitting against one
//! limit at the same time. Exactly the limit is admitted, every admission sees a distinct
//! count, and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::SystemTime;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};
use tollgate_core::counters::{self, Admission, Counter, Window};
use tollgate_core::host::{Host as CoreHost, SharedError};
use tollgate_harness::host::{BackendResponse, Host, HostSettings, StreamInput, Upstream};

/// `tollgate_core::host::Host` over the SDK's host calls, as the adapter implements it.
struct SdkHost;

impl CoreHost for SdkHost {
    fn now(&mut self) -> SystemTime {
        proxy_wasm::hostcalls::get_current_time().unwrap()
    }
    fn downstream_address(&mut self) -> Option<String> {
        None
    }
    fn shared_get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        match proxy_wasm::hostcalls::get_shared_data(key) {
            Ok((Some(v), Some(cas))) => Some((v, cas)),
            _ => None,
        }
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedError> {
        match proxy_wasm::hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
            Err(_) => Err(SharedError::Failed),
        }
    }
}

const LIMIT: u64 = 500;
const WINDOW: Window = Window {
    start: 0,
    end: u64::MAX,
};

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Admit))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Admits the request against one counter and tells the backend what it got.
struct Admit;
impl Context for Admit {}
impl HttpContext for Admit {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let counter = Counter {
            instance: "limit",
            subject: "client-1",
        };
        let outcome = match counters::admit(&mut SdkHost, counter, WINDOW, 1, LIMIT) {
            Ok(Admission::Admitted(n)) => format!("admitted {n}"),
            Ok(Admission::Refused(n)) => format!("refused {n}"),
            Err(e) => format!("error {e:?}"),
        };
        self.set_http_request_header("x-tollgate-cluster", Some("c"));
        self.set_http_request_header("x-outcome", Some(&outcome));
        Action::Continue
    }
}

fn init() {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}

#[test]
fn many_workers_admit_exactly_the_limit_each_count_once() {
    let host = Host::new(HostSettings::default());
    let (workers, each) = (8, 100);
    let vms: Vec<_> = (0..workers)
        .map(|_| host.start_vm_with(init, b"").unwrap())
        .collect();
    let outcomes: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| {
                s.spawn(move || {
                    vm.exec(move |g| {
                        (0..each)
                            .map(|_| {
                                let r = g.run(&StreamInput::new("GET", "/"), &mut |_| {
                                    Upstream::Respond(BackendResponse {
                                        status: 200,
                                        ..BackendResponse::default()
                                    })
                                });
                                r.upstream.unwrap().header("x-outcome").unwrap().to_string()
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
    let mut admitted: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| o.strip_prefix("admitted ")?.parse().ok())
        .collect();
    admitted.sort_unstable();
    assert_eq!(admitted, (1..=LIMIT).collect::<Vec<_>>(), "{outcomes:?}");
    let refused = outcomes
        .iter()
        .filter(|o| o.starts_with("refused "))
        .count();
    assert_eq!(refused as u64, workers * each - LIMIT);
    assert!(
        !outcomes.iter().any(|o| o.starts_with("error")),
        "contention exhausted the retries: {outcomes:?}"
    );
}
