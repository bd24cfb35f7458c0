//! The scripts a new user runs first: `--help` prints usage and exits, and an unknown argument
//! is refused at once, before any install or build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use tollgate_harness::live;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn script(name: &str, args: &[&str]) -> Run {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(live::repo_root().join("scripts").join(name))
        .args(args)
        .current_dir(live::repo_root())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

const SCRIPTS: [&str; 3] = ["demo", "test", "bench"];

#[test]
fn help_prints_usage_and_exits_0() {
    for name in SCRIPTS {
        for flag in ["--help", "-h"] {
            let r = script(name, &[flag]);
            assert_eq!(r.code, Some(0), "scripts/{name} {flag}: {}", r.stderr);
            assert!(
                r.stdout.starts_with(&format!("usage: scripts/{name}")),
                "scripts/{name} {flag}:\n{}",
                r.stdout
            );
            assert!(
                !r.stderr.contains("==>"),
                "scripts/{name} {flag} started work:\n{}",
                r.stderr
            );
        }
    }
}

#[test]
fn an_unknown_argument_is_refused_before_any_work() {
    for name in SCRIPTS {
        let r = script(name, &["--frobnicate"]);
        assert_eq!(
            r.code,
            Some(2),
            "scripts/{name} --frobnicate:\n{}",
            r.stderr
        );
        assert!(
            r.stderr
                .starts_with(&format!("scripts/{name}: unknown argument --frobnicate")),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&format!("usage: scripts/{name}")),
            "{}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("==>"),
            "scripts/{name} started work:\n{}",
            r.stderr
        );
        assert!(
            r.took < Duration::from_secs(10),
            "scripts/{name} took {:?}",
            r.took
        );
    }
}

#[test]
fn scripts_test_ends_naming_the_stage_that_failed() {
    // A cargo that fails at once; a rustup that reports the wasm target installed, and
    // openssl and keytool present, so that nothing is installed.
    let bin = live::scratch_dir("stub-bin").unwrap();
    let stub = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        let mut perms = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&p, perms).unwrap();
    };
    stub("cargo", "exit 3");
    stub("rustup", "echo wasm32-wasip1");
    stub("openssl", "exit 0");
    stub("keytool", "exit 0");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(live::repo_root().join("scripts/test"))
        .env("PATH", path)
        .current_dir(live::repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("FAILED in stage: format (cargo fmt --check) (exit status 3)\u{1b}[0m"),
        "{stderr}"
    );
}
