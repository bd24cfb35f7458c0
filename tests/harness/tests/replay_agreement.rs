//! Every fixture in tests/fixtures runs twice: natively through the real filter code on the
//! native host, and through the real Envoy 1.40 with the real tollgate.wasm (all clusters
//! routed to the replay backend, which serves the recorded responses). The two must agree on
//! every exchange: status, gateway and policy headers, body (byte for byte), every header an
//! expectation names, and what the backend received where the fixture states it. Recordings
//! without a configuration (the demo HAR and tap trace) run with envoy/gateway.yaml's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tollgate_harness::host::{CallStub, StubAnswer};
use tollgate_harness::live::{self, Answer, Cluster, Envoy, ScriptedServer};
use tollgate_harness::replay::backend::ReplayBackend;
use tollgate_harness::replay::expect::{BackendSeen, HeaderCheck, Observed};
use tollgate_harness::replay::run::{self, Outcome, Verdict};
use tollgate_harness::replay::{self, config, Exchange, GatewayConfig, Suite};

fn fixture_dir() -> PathBuf {
    live::repo_root().join("tests/fixtures")
}

/// Every replayable file in tests/fixtures.
fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "har"))
        // TOLLGATE_FIXTURE=name runs only the fixtures whose file name contains it.
        .filter(|p| {
            std::env::var("TOLLGATE_FIXTURE").map_or(true, |only| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(&only))
            })
        })
        .collect();
    files.sort();
    files
}

/// A suite's configuration; recordings without one ran against the demo gateway.
fn config_of(suite: &Suite) -> GatewayConfig {
    suite.config.clone().unwrap_or_else(|| {
        config::load(&live::repo_root().join("envoy/gateway.yaml")).expect("demo config")
    })
}

const GATEWAY_HEADERS: &[&str] = &[
    "x-gateway-error",
    "x-policy-failure-type",
    "x-policy-failure-code",
    "x-policy-failure-message",
];

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn compare_headers(
    what: &str,
    checks: &[HeaderCheck],
    extra: &[&str],
    native: &[(String, String)],
    live: &[(String, String)],
    out: &mut Vec<String>,
) {
    let mut names: BTreeSet<String> = extra.iter().map(|s| s.to_string()).collect();
    for c in checks {
        match c {
            // A regex is there because the value varies (dates, ids): both must match it.
            HeaderCheck::Matches(name, re) => {
                let m = |h: &[(String, String)]| {
                    values(h, name).iter().any(|v| re.is_match(v.as_bytes()))
                };
                if m(native) != m(live) {
                    out.push(format!(
                        "{what}header {name}: native matches /{}/: {}, Envoy: {}",
                        re.as_str(),
                        m(native),
                        m(live)
                    ));
                }
            }
            other => {
                names.insert(other.name().to_ascii_lowercase());
            }
        }
    }
    for name in names {
        let (n, l) = (values(native, &name), values(live, &name));
        if n != l {
            out.push(format!("{what}header {name}: native {n:?}, Envoy {l:?}"));
        }
    }
}

fn compare_backend(ex: &Exchange, native: &Observed, live: &Observed, out: &mut Vec<String>) {
    let Some(expect) = &ex.expect.backend else {
        return;
    };
    let (Some(n), Some(l)) = (&native.backend, &live.backend) else {
        out.push("backend not observed".into());
        return;
    };
    match (n, l) {
        (None, None) => {}
        (Some(n), Some(l)) => {
            let pick = |s: &BackendSeen| {
                (
                    s.method.clone(),
                    s.path.clone(),
                    s.authority.clone(),
                    s.cluster.clone(),
                )
            };
            if pick(n) != pick(l) {
                out.push(format!(
                    "backend request: native {:?}, Envoy {:?}",
                    pick(n),
                    pick(l)
                ));
            }
            compare_headers(
                "backend ",
                &expect.headers,
                &[],
                &n.headers,
                &l.headers,
                out,
            );
            if !expect.body.is_empty() && n.body != l.body {
                out.push("backend body differs".into());
            }
        }
        _ => out.push(format!(
            "backend called: native {}, Envoy {}",
            n.is_some(),
            l.is_some()
        )),
    }
}

/// A body with the values of the headers an expectation matches by regex (`"Name":"value"`
/// in a policy failure's JSON body) replaced by `~` where the value matches.
fn mask_matched(body: &[u8], checks: &[HeaderCheck]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for c in checks {
        let HeaderCheck::Matches(name, re) = c else {
            continue;
        };
        let needle = format!("\"{}\":\"", name.to_ascii_lowercase());
        let Some(at) = text.to_ascii_lowercase().find(&needle) else {
            continue;
        };
        let start = at + needle.len();
        let Some(len) = text[start..].find('"') else {
            continue;
        };
        if re.is_match(&text.as_bytes()[start..start + len]) {
            text.replace_range(start..start + len, "~");
        }
    }
    text.into_bytes()
}

/// Differences between the native and the live outcome of one exchange.
fn differences(ex: &Exchange, native: &Outcome, live: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    let (n, l) = (&native.observed, &live.observed);
    if n.status != l.status {
        out.push(format!(
            "status: native {}, Envoy {}{}",
            n.status,
            l.status,
            l.note
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ));
    }
    compare_headers(
        "",
        &ex.expect.headers,
        GATEWAY_HEADERS,
        &n.headers,
        &l.headers,
        &mut out,
    );
    // Byte for byte: the gateway's replies, Envoy's mapped errors and the recorded bodies
    // (a policy failure's body lists its headers: those the fixture matches by regex vary with
    // the clock, and are compared by that regex there too).
    let (nb, lb) = (
        mask_matched(&n.body, &ex.expect.headers),
        mask_matched(&l.body, &ex.expect.headers),
    );
    if nb != lb {
        out.push(format!(
            "body: native {:?}, Envoy {:?}",
            String::from_utf8_lossy(&n.body),
            String::from_utf8_lossy(&l.body)
        ));
    }
    compare_backend(ex, n, l, &mut out);
    let verdicts = |o: &Outcome| -> Vec<(String, Option<bool>)> {
        o.checks.iter().map(|c| (c.what.clone(), c.ok)).collect()
    };
    if verdicts(native) != verdicts(live) {
        out.push(format!(
            "expectations: native {:?}, Envoy {:?}",
            verdicts(native),
            verdicts(live)
        ));
    }
    out
}

/// Replays one fixture both ways and returns every disagreement, plus how many exchanges
/// were compared.
fn agree(path: &Path) -> (Vec<String>, usize) {
    let suite = replay::load(path).unwrap_or_else(|e| panic!("{e}"));
    let config = config_of(&suite);
    let clusters = run::clusters_for(&config);
    let backend = ReplayBackend::start(&clusters).expect("replay backend");
    let stubs = stub_servers(&suite.stubs);
    let mut gateway_clusters: Vec<Cluster> = backend
        .ports()
        .iter()
        .map(|(c, p)| Cluster::plain(c, *p))
        .collect();
    gateway_clusters.extend(stubs.iter().map(|(c, s)| Cluster::plain(c, s.port)));
    let yaml = live::gateway_yaml(&String::from_utf8_lossy(&config.plugin), &gateway_clusters)
        .expect("gateway yaml");
    let envoy = Envoy::start(&yaml, suite.workers as u32).expect("envoy");
    // The test gateway's route timeout (live::gateway_yaml) is 5 s.
    let opts = run::Options {
        config: Some(config.clone()),
        route_timeout_ms: 5000,
        ..run::Options::default()
    };
    let native = run::native(&suite, &opts).unwrap_or_else(|e| panic!("{e}"));
    let live_run = run::live(
        &suite,
        &opts,
        &format!("http://{}", envoy.addr()),
        Some(&backend),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    let mut compared = 0;
    for (n, l) in native.outcomes.iter().zip(&live_run.outcomes) {
        assert_eq!(n.index, l.index);
        if matches!(l.verdict, Verdict::Skip(_)) || matches!(n.verdict, Verdict::Skip(_)) {
            continue;
        }
        compared += 1;
        let ex = &suite.exchanges[n.index];
        for d in differences(ex, n, l) {
            problems.push(format!(
                "{} {} ({}): {d}",
                path.display(),
                ex.entry,
                ex.label()
            ));
        }
    }
    if !problems.is_empty() {
        problems.push(format!(
            "Envoy log tail:\n{}",
            envoy
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    (problems, compared)
}

/// A real service per stubbed call-out cluster, answering as the fixture's stubs say (a stub
/// that times out answers long after any call-out's timeout).
fn stub_servers(stubs: &[CallStub]) -> Vec<(String, ScriptedServer)> {
    let mut clusters: Vec<String> = stubs.iter().map(|s| s.cluster.clone()).collect();
    clusters.sort();
    clusters.dedup();
    clusters
        .into_iter()
        .map(|cluster| {
            let mine: Vec<CallStub> = stubs
                .iter()
                .filter(|s| s.cluster == cluster)
                .cloned()
                .collect();
            let server = ScriptedServer::start(move |r| {
                let path = r.path.split('?').next().unwrap_or("");
                let stub = mine.iter().find(|s| {
                    s.method
                        .as_deref()
                        .is_none_or(|m| m.eq_ignore_ascii_case(&r.method))
                        && s.path.as_deref().is_none_or(|p| p == path)
                });
                match stub.map(|s| (&s.answer, s.delay)) {
                    Some((
                        StubAnswer::Respond {
                            status,
                            headers,
                            body,
                        },
                        delay,
                    )) => {
                        let mut a = Answer::new(*status).body(body).after(delay);
                        for (k, v) in headers {
                            a = a.header(k, v);
                        }
                        a
                    }
                    Some((StubAnswer::Timeout, _)) => {
                        Answer::new(504).after(std::time::Duration::from_secs(20))
                    }
                    None => Answer::new(503).body(b"no stub answers this call"),
                }
            })
            .expect("stub server");
            (cluster, server)
        })
        .collect()
}

macro_rules! e2e {
    () => {
        if !live::e2e_available() {
            return;
        }
    };
}

#[test]
fn every_fixture_agrees_natively_and_through_real_envoy() {
    e2e!();
    let files = fixture_files();
    assert!(
        !files.is_empty(),
        "no fixtures in {}",
        fixture_dir().display()
    );
    // Each fixture gets its own Envoy and replay backend; two at a time, since an Envoy
    // compiling the module takes a core.
    let queue = std::sync::Mutex::new(files.clone());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(f) = queue.lock().unwrap().pop() else {
                    return;
                };
                let r = std::panic::catch_unwind(|| agree(&f))
                    .unwrap_or_else(|_| (vec![format!("{}: panicked", f.display())], 1));
                results.lock().unwrap().push((f, r));
            });
        }
    });
    let results: Vec<(PathBuf, (Vec<String>, usize))> = results.into_inner().unwrap();
    let mut all = Vec::new();
    for (f, (problems, compared)) in &results {
        assert!(
            *compared > 0,
            "{}: no exchange could be compared live",
            f.display()
        );
        all.extend(problems.iter().cloned());
    }
    assert!(
        all.is_empty(),
        "native and Envoy disagree:\n{}",
        all.join("\n")
    );
}
