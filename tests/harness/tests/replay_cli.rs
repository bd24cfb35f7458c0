//! `tollgate-replay` as users and CI systems run it: reports, exit statuses, dry runs, and bad
//! input that is named, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tollgate_harness::live;
use tollgate_harness::replay::config;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn replay(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-replay"))
        .args(args)
        .current_dir(live::repo_root())
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "tollgate-replay panicked:\n{}",
        run.stderr
    );
    run
}

fn write(name: &str, text: &str) -> PathBuf {
    let p = live::scratch_dir("replay-cli").unwrap().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fixture with one passing and, if asked, one failing exchange.
fn fixture(failing: bool) -> String {
    let mut exchanges = vec![json!({
        "request": {"path": "/t/api/1/x"},
        "response": {"status": 200, "body": "ok"},
        "expect": {"status": 200, "body": "ok"}
    })];
    if failing {
        exchanges.push(json!({
            "name": "expects the wrong status",
            "request": {"path": "/t/nope/1/x"},
            "expect": {"status": 200}
        }));
    }
    json!({
        "config": {"apis": [{"organizationId": "t", "apiId": "api", "version": "1",
                             "publicAPI": true, "endpoint": "http://b/", "cluster": "b"}]},
        "exchanges": exchanges
    })
    .to_string()
}

#[test]
fn a_passing_fixture_exits_0_with_a_table_and_the_summary_line() {
    let f = write("ok.json", &fixture(false));
    let r = replay(&[s(&f)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("GET /t/api/1/x"));
    assert_eq!(r.stdout.lines().last(), Some("1 passed, 0 failed"));
}

#[test]
fn a_mismatch_exits_1_and_says_what_differed() {
    let f = write("bad.json", &fixture(true));
    let r = replay(&[s(&f)]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("FAIL"));
    assert!(
        r.stdout.contains("status: expected 200, got 404"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stdout.lines().last(), Some("1 passed, 1 failed"));
}

#[test]
fn json_output_has_the_summary_and_every_check() {
    let f = write("bad.json", &fixture(true));
    let r = replay(&["--format", "json", s(&f)]);
    assert_eq!(r.code, 1);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["passed"], 1);
    assert_eq!(v["summary"]["failed"], 1);
    let second = &v["suites"][0]["exchanges"][1];
    assert_eq!(second["verdict"], "fail");
    assert_eq!(second["status"], 404);
    assert_eq!(second["checks"][0]["what"], "status");
    assert_eq!(r.stderr.trim(), "1 passed, 1 failed");
}

#[test]
fn junit_output_has_one_testcase_per_exchange_and_the_failure() {
    let f = write("bad.json", &fixture(true));
    let r = replay(&["--format=junit", s(&f)]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("<?xml"));
    assert!(r
        .stdout
        .contains("<testsuites name=\"tollgate-replay\" tests=\"2\" failures=\"1\""));
    assert_eq!(r.stdout.matches("<testcase ").count(), 2);
    assert!(r.stdout.contains(
        "<failure type=\"mismatch\" message=\"status: expected 200, got 404 from the gateway \
         (API not found.)\">"
    ));
}

#[test]
fn a_status_failure_shows_the_gateways_reason() {
    let f = write("bad.json", &fixture(true));
    let r = replay(&[s(&f)]);
    assert!(
        r.stdout
            .contains("status: expected 200, got 404 from the gateway (API not found.)"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_failed_body_check_keeps_the_table_layout() {
    // The backend answers a long, multi-line, partly binary body; the expectation differs.
    let body = format!("line one\nline two\r\n\u{1}{}", "x".repeat(300));
    let f = write(
        "body.json",
        &json!({
            "config": {"apis": [{"organizationId": "t", "apiId": "api", "version": "1",
                                 "publicAPI": true, "endpoint": "http://b/", "cluster": "b"}]},
            "exchanges": [
                {"name": "body differs", "request": {"path": "/t/api/1/x"},
                 "response": {"status": 200, "body": body},
                 "expect": {"status": 200, "body": "something else"}},
                {"name": "the next row", "request": {"path": "/t/api/1/y"},
                 "expect": {"status": 200}}
            ]
        })
        .to_string(),
    );
    let r = replay(&[s(&f)]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let row = lines
        .iter()
        .position(|l| l.contains("body differs"))
        .unwrap();
    // Under the row: the check, what was expected and what came, each on its own line.
    assert_eq!(lines[row + 1].trim(), "body:");
    assert_eq!(lines[row + 2].trim(), "expected \"something else\"");
    assert!(
        lines[row + 3]
            .trim()
            .starts_with("got      \"line one\\nline two\\r\\n\\x01xxx"),
        "{}",
        r.stdout
    );
    assert!(lines[row + 4].contains("the next row"), "{}", r.stdout);
    assert!(
        lines.iter().all(|l| l.chars().count() <= 170),
        "a line is too long:\n{}",
        r.stdout
    );
}

#[test]
fn a_har_replays_with_a_configuration_from_an_envoy_yaml() {
    let r = replay(&["--config", "envoy/gateway.yaml", "tests/fixtures/demo.har"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.stdout.lines().last(), Some("12 passed, 0 failed"));
}

#[test]
fn a_tap_trace_replays_with_a_configuration_from_an_envoy_yaml() {
    let r = replay(&[
        "--quiet",
        "--config",
        "envoy/gateway.yaml",
        "tests/fixtures/demo-tap.json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.starts_with("12 passed, 0 failed"), "{}", r.stdout);
}

/// A HAR as mitmproxy 11 writes a binary upload to the demo: the body as latin-1 text.
fn binary_upload_har(bytes: &[u8]) -> String {
    use base64::Engine;
    let text: String = bytes.iter().map(|b| char::from(*b)).collect();
    json!({"log": {"version": "1.2", "entries": [{
        "startedDateTime": "2026-01-01T00:00:00+00:00",
        "request": {"method": "POST", "url": "http://127.0.0.1:10000/demo/echo/1.0/upload",
                    "headers": [{"name": "Content-Type", "value": "application/octet-stream"}],
                    "bodySize": bytes.len(),
                    "postData": {"mimeType": "application/octet-stream", "text": text, "params": []}},
        "response": {"status": 200, "headers": [], "content": {"size": 0, "text": ""}},
        "_expect": {"status": 200, "backend": {
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(bytes)}}
    }]}})
    .to_string()
}

#[test]
fn a_har_binary_upload_reaches_the_backend_byte_for_byte() {
    let bytes: Vec<u8> = (0u8..75).map(|i| i.wrapping_mul(53) ^ 0x9c).collect();
    let f = write("upload.har", &binary_upload_har(&bytes));
    let r = replay(&["--config", "envoy/gateway.yaml", s(&f)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("warning"), "{}", r.stdout);
}

#[test]
fn a_har_without_a_configuration_is_a_usage_error() {
    let r = replay(&["tests/fixtures/demo.har"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("tests/fixtures/demo.har") && r.stderr.contains("--config"));
}

/// The demo configuration with its first API (echo) made private.
fn private_echo_config() -> PathBuf {
    let demo = config::load(&live::repo_root().join("envoy/gateway.yaml")).unwrap();
    let mut plugin: Value = serde_json::from_slice(&demo.plugin).unwrap();
    assert_eq!(
        plugin["apis"][0]["apiId"], "echo",
        "the demo's echo API moved"
    );
    plugin["apis"][0]["publicAPI"] = json!(false);
    write("private-echo.json", &plugin.to_string())
}

#[test]
fn a_dry_run_reports_requests_a_new_configuration_would_block() {
    let r = replay(&[
        "--dry-run",
        "--config",
        s(&private_echo_config()),
        "tests/fixtures/demo.har",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("newly blocked"));
    assert!(r
        .stdout
        .contains("recorded 200 from the backend, now 403 from the gateway (API not public.)"));
    assert!(
        r.stdout.contains(
            "8 unchanged, 4 would change (3 newly blocked, 0 newly allowed, 1 status changed)"
        ),
        "{}",
        r.stdout
    );
}

#[test]
fn a_dry_run_ends_with_its_own_summary_not_passed_and_failed() {
    let r = replay(&[
        "--dry-run",
        "--config",
        s(&private_echo_config()),
        "tests/fixtures/demo.har",
    ]);
    assert_eq!(
        r.stdout.lines().last(),
        Some("dry run: 8 unchanged, 4 would change (3 newly blocked, 0 newly allowed, 1 status changed)")
    );
    assert!(!r.stdout.contains("passed"), "{}", r.stdout);
    let r = replay(&[
        "--dry-run",
        "--format",
        "json",
        "--config",
        "envoy/gateway.yaml",
        "tests/fixtures/demo.har",
    ]);
    assert_eq!(
        r.stderr.trim(),
        "dry run: 12 unchanged, 0 would change (0 newly blocked, 0 newly allowed, 0 status changed)"
    );
}

#[test]
fn a_dry_run_reports_requests_a_new_configuration_would_allow() {
    // The recording was made with the echo API private; the demo configuration opens it.
    let har: Value = serde_json::from_str(
        &std::fs::read_to_string(live::repo_root().join("tests/fixtures/demo.har")).unwrap(),
    )
    .unwrap();
    // Re-record entry 0 as the private gateway answered it.
    let mut entry = har["log"]["entries"][0].clone();
    entry["response"] = json!({"status": 403, "headers": [{"name": "X-Gateway-Error", "value": "API not public."}],
                               "content": {"size": 0, "text": ""}});
    let recorded = write(
        "blocked.har",
        &json!({"log": {"version": "1.2", "entries": [entry]}}).to_string(),
    );
    let r = replay(&["--dry-run", "--config", "envoy/gateway.yaml", s(&recorded)]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("newly allowed"), "{}", r.stdout);
    assert!(r
        .stdout
        .contains("(0 newly blocked, 1 newly allowed, 0 status changed)"));
}

#[test]
fn a_dry_run_with_the_recorded_configuration_changes_nothing() {
    let r = replay(&[
        "--dry-run",
        "--config",
        "envoy/gateway.yaml",
        "tests/fixtures/demo.har",
    ]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("12 unchanged, 0 would change"));
}

#[test]
fn repeat_prints_the_throughput() {
    let r = replay(&["--quiet", "--repeat", "50", "tests/fixtures/routing.json"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.starts_with("550 passed, 0 failed"), "{}", r.stdout);
    assert!(
        r.stdout.contains("replayed 550 exchanges in "),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("exchanges/s)"));
}

#[test]
fn several_workers_replay_a_fixture_the_same() {
    let r = replay(&["--quiet", "--workers", "3", "tests/fixtures/cors.json"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
}

// ---- bad input: exit 2, the file and the entry named, no panic ------------------------------

fn bad(args: &[&str], must_mention: &[&str]) {
    let r = replay(args);
    assert_eq!(r.code, 2, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    for m in must_mention {
        assert!(r.stderr.contains(m), "stderr lacks {m:?}:\n{}", r.stderr);
    }
}

#[test]
fn an_unreadable_file_is_named() {
    bad(&["no/such/file.har"], &["no/such/file.har", "cannot read"]);
}

#[test]
fn malformed_json_is_named_with_its_line() {
    let f = write(
        "broken.json",
        "{\n  \"exchanges\": [\n    {\"request\": }\n  ]\n}\n",
    );
    bad(&[s(&f)], &["broken.json", "line 3", "malformed JSON"]);
}

#[test]
fn a_truncated_har_is_named() {
    let text = std::fs::read_to_string(live::repo_root().join("tests/fixtures/demo.har")).unwrap();
    let f = write("cut.har", &text[..text.len() / 2]);
    bad(
        &["--config", "envoy/gateway.yaml", s(&f)],
        &["cut.har", "malformed JSON"],
    );
}

#[test]
fn a_bad_har_entry_is_named() {
    let f = write(
        "entry.har",
        &json!({"log": {"version": "1.2", "entries": [
            {"request": {"method": "GET", "url": "http://gw/a", "headers": []}, "response": {"status": 200}},
            {"request": {"method": "GET", "url": "relative/path", "headers": []}, "response": {"status": 200}}
        ]}})
        .to_string(),
    );
    bad(
        &["--config", "envoy/gateway.yaml", s(&f)],
        &["entry.har: log.entries[1].request.url", "absolute"],
    );
}

#[test]
fn a_bad_tap_trace_is_named() {
    let f = write(
        "trace.json",
        r#"{"http_buffered_trace": {"request": {"headers": [{"key": ":path", "value": "/x"}, {"key": ":method", "value": "GET"}]}, "response": {"headers": [{"key": ":status", "value": "200"}]}}}
{"http_buffered_trace": {"request": {"headers": [{"key": ":path", "value": "/y"}]}}}"#,
    );
    bad(
        &["--config", "envoy/gateway.yaml", s(&f)],
        &["trace.json: trace 2", ":method"],
    );
}

#[test]
fn a_socket_tap_trace_is_refused() {
    let f = write(
        "socket.json",
        r#"{"socket_buffered_trace": {"events": []}}"#,
    );
    bad(
        &["--config", "envoy/gateway.yaml", s(&f)],
        &["socket.json: trace 1", "socket"],
    );
}

#[test]
fn a_misspelt_expectation_is_named_with_its_path() {
    let f = write(
        "typo.json",
        &json!({"config": {"apis": []}, "exchanges": [
            {"request": {"path": "/a"}, "expect": {"stauts": 404}}]})
        .to_string(),
    );
    bad(
        &[s(&f)],
        &["typo.json: exchanges[0].expect", "unknown field \"stauts\""],
    );
}

#[test]
fn an_unknown_file_format_is_explained() {
    let f = write("other.json", r#"{"hello": "world"}"#);
    bad(&[s(&f)], &["other.json", "not a tollgate fixture"]);
}

#[test]
fn binary_garbage_is_refused_naming_the_formats_read() {
    let p = live::scratch_dir("replay-cli").unwrap().join("garbage.har");
    std::fs::write(&p, [0xff, 0xfe, 0x00, 0x12, 0x80]).unwrap();
    bad(
        &[s(&p)],
        &["garbage.har", "not UTF-8 text", "compressed HAR (.zhar)"],
    );
}

/// demo.har compressed by `compress`, as a file named `name`.
fn compressed_demo_har(name: &str, compress: fn(&[u8]) -> Vec<u8>) -> PathBuf {
    let har = std::fs::read(live::repo_root().join("tests/fixtures/demo.har")).unwrap();
    let p = live::scratch_dir("replay-cli").unwrap().join(name);
    std::fs::write(&p, compress(&har)).unwrap();
    p
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn a_zlib_compressed_har_is_read_as_mitmproxy_writes_it() {
    let f = compressed_demo_har("traffic.zhar", zlib);
    let r = replay(&["--config", "envoy/gateway.yaml", s(&f)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.lines().last(), Some("12 passed, 0 failed"));
}

#[test]
fn a_gzip_compressed_har_is_read() {
    let f = compressed_demo_har("traffic.har.gz", gzip);
    let r = replay(&["--config", "envoy/gateway.yaml", s(&f)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.lines().last(), Some("12 passed, 0 failed"));
}

#[test]
fn a_corrupt_compressed_har_is_named() {
    let f = compressed_demo_har("cut.zhar", |d| {
        let z = zlib(d);
        z[..z.len() / 2].to_vec()
    });
    bad(
        &["--config", "envoy/gateway.yaml", s(&f)],
        &["cut.zhar", "zlib-compressed", "does not decompress"],
    );
}

#[test]
fn a_configuration_the_filter_refuses_is_reported_with_its_errors() {
    let f = write(
        "refused.json",
        &json!({"config": {"apis": [{"organizationId": "o", "apiId": "a", "version": "1",
                                      "endpoint": "ftp://nope"}]},
                "exchanges": [{"request": {"path": "/o/a/1"}, "expect": {"status": 200}}]})
        .to_string(),
    );
    bad(&[s(&f)], &["refused the configuration", "apis[0].endpoint"]);
}

#[test]
fn an_invalid_config_file_is_named() {
    let c = write("cfg.json", "{ not json");
    bad(
        &["--config", s(&c), "tests/fixtures/demo.har"],
        &["cfg.json", "not valid JSON"],
    );
}

#[test]
fn usage_errors_exit_2() {
    bad(&[], &["no input files"]);
    bad(&["--format", "yaml", "x.json"], &["--format yaml"]);
    bad(
        &["--frobnicate", "x.json"],
        &["unknown option --frobnicate"],
    );
    bad(
        &["--dry-run", "--against", "http://127.0.0.1:1", "x.json"],
        &["--dry-run"],
    );
}

#[test]
fn an_unreachable_gateway_exits_2() {
    // Port 1 on loopback: nothing listens there.
    bad(
        &[
            "--against",
            "http://127.0.0.1:1",
            "tests/fixtures/cors.json",
        ],
        &["cannot connect to the gateway at 127.0.0.1:1"],
    );
}

#[test]
fn help_exits_0() {
    let r = replay(&["--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("usage: tollgate-replay"));
}
