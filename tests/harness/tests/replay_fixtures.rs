//! The fixtures in tests/fixtures replay natively, without Envoy, through the real filter code,
//! and between them cover every policy tollgate has.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::Value;
use tollgate_harness::live;
use tollgate_harness::replay::run::{self, Verdict};
use tollgate_harness::replay::{self, config, expect, fixture, report};

fn fixtures() -> Vec<PathBuf> {
    let dir = live::repo_root().join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "har"))
        .collect();
    files.sort();
    files
}

fn demo_options() -> run::Options {
    run::Options {
        config: Some(config::load(&live::repo_root().join("envoy/gateway.yaml")).unwrap()),
        ..run::Options::default()
    }
}

#[test]
fn every_fixture_passes_natively() {
    let mut failures = Vec::new();
    for f in fixtures() {
        let suite = replay::load(&f).unwrap_or_else(|e| panic!("{e}"));
        // Recordings carry no configuration: they were made against the demo gateway.
        let opts = if suite.config.is_some() {
            run::Options::default()
        } else {
            demo_options()
        };
        let result = run::native(&suite, &opts).unwrap_or_else(|e| panic!("{e}"));
        assert!(result.passed > 0, "{}: nothing replayed", f.display());
        for o in result
            .outcomes
            .iter()
            .filter(|o| o.verdict == Verdict::Fail)
        {
            failures.push(format!(
                "{} {} {}: {}",
                f.display(),
                o.entry,
                o.label,
                report::reasons(o).join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every policy entry (`policy` or `policyImpl`) anywhere in a configuration.
fn policy_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for key in ["policy", "policyImpl"] {
                if let Some(Value::String(name)) = map.get(key) {
                    out.push(name.clone());
                }
            }
            map.values().for_each(|v| policy_names(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| policy_names(v, out)),
        _ => {}
    }
}

#[test]
fn every_policy_tollgate_has_is_exercised_by_a_fixture() {
    let mut used = Vec::new();
    for f in fixtures() {
        let suite = replay::load(&f).unwrap();
        if let Some(c) = suite.config {
            policy_names(&serde_json::from_slice(&c.plugin).unwrap(), &mut used);
        }
    }
    let missing: Vec<&str> = tollgate_core::policy::KINDS
        .iter()
        .filter(|k| {
            !used
                .iter()
                .any(|name| name == k.id || k.apiman_names.iter().any(|a| name.contains(a)))
        })
        .map(|k| k.id)
        .collect();
    assert!(missing.is_empty(), "no fixture exercises {missing:?}");
}

#[test]
fn the_replay_reference_documents_every_fixture_field() {
    let readme = std::fs::read_to_string(live::repo_root().join("docs/replay.md")).unwrap();
    let fields = [
        fixture::TOP,
        fixture::EXCHANGE,
        fixture::REQUEST,
        fixture::RESPONSE,
        fixture::STUB,
        expect::EXPECT_FIELDS,
        expect::BACKEND_FIELDS,
    ];
    let undocumented: Vec<&str> = fields
        .iter()
        .flat_map(|f| f.iter())
        .copied()
        .filter(|f| !readme.contains(&format!("`{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/replay.md does not mention {undocumented:?}"
    );
}

#[test]
fn the_fixture_format_is_documented_in_one_place_only() {
    // A row of the `expect` table: it lives in docs/replay.md, and nowhere else.
    let row = "| `bodyJson` |";
    let root = live::repo_root();
    let mut files = vec![
        root.join("README.md"),
        root.join("tests/fixtures/README.md"),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let holding: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(row)))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(holding, vec!["docs/replay.md".to_string()]);
}

#[test]
fn the_demo_recordings_need_a_configuration() {
    let har = live::repo_root().join("tests/fixtures/demo.har");
    let suite = replay::load(&har).unwrap();
    let err = run::native(&suite, &run::Options::default()).unwrap_err();
    assert!(err.to_string().contains("--config"), "{err}");
}

#[test]
fn the_har_and_the_tap_trace_record_the_same_demo_traffic() {
    let load =
        |name: &str| replay::load(&live::repo_root().join("tests/fixtures").join(name)).unwrap();
    let (har, tap) = (load("demo.har"), load("demo-tap.json"));
    let requests = |s: &replay::Suite| -> Vec<(String, String, Option<u16>)> {
        s.exchanges
            .iter()
            .map(|e| {
                (
                    e.request.method.clone(),
                    e.request.path.clone(),
                    e.recorded_status,
                )
            })
            .collect()
    };
    assert_eq!(requests(&har), requests(&tap));
    assert!(
        har.exchanges.iter().all(|e| e.at.is_some()),
        "HAR entries carry their times"
    );
}
