//! tollgate-gen: writes the Envoy bootstrap and SDS files for a gateway definition.
//! Usage: `tollgate-gen --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use tollgate_gen::{generate_file, Options};

const USAGE: &str = "\
tollgate-gen: gateway definition (YAML) -> Envoy bootstrap + file-SDS secrets

usage: tollgate-gen DEFINITION --out DIR [--stores DIR] [--registry-image]
       tollgate-gen DEFINITION --check
       tollgate-gen --compile REGISTRY IMAGE

  --out DIR     write DIR/envoy.yaml and DIR/sds/*.yaml (the SDS directory Envoy watches)
  --stores DIR  where converted keystores (PKCS#12/JKS -> PEM, key still encrypted, mode 0600)
                and truststores go; default DIR/stores. Keep it out of version control.
  --check       read and check everything (stores, passwords, aliases, dates, registry);
                write nothing
  --compile     compile a registry (the filter's configuration, JSON: tollgate's or an
                Apiman export) into the image --registry-image delivers, for an ECDS resource
                of your own (the plugin's configuration as a google.protobuf.BytesValue)
  --registry-image
                deliver the registry compiled (DIR/dynamic/registry.pb, protobuf's binary
                form) instead of as JSON (registry.yaml): every VM reads its tables straight
                in (a million keys: 0.2 s per VM rather than a 4-5 s load), and Envoy's
                configuration holds digests of the API keys, not the keys. The image is tied
                to this release's filter; a registry that reads environment variables cannot
                be compiled

Paths in the definition, and those written into the Envoy files, are used as given: relative
ones resolve against the current directory, so run Envoy from the directory you run this in.
Re-running after replacing a keystore rotates it: converted files are renamed into place and
Envoy picks them up without a restart. Exit status: 0 done, 1 problems found, 2 usage.
";

/// `--compile REGISTRY IMAGE`.
fn compile(registry: &str, image: &str) -> ExitCode {
    let text = match std::fs::read(registry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tollgate-gen: reading {registry}: {e}");
            return ExitCode::from(1);
        }
    };
    match tollgate_core::registry::image::compile(&text) {
        Ok((bytes, warnings)) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            match tollgate_gen::tools::write_atomic(std::path::Path::new(image), &bytes, false) {
                Ok(_) => {
                    eprintln!("wrote {image} ({} bytes)", bytes.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate-gen: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "{registry}: {} problem(s); no image written",
                problems.len()
            );
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--compile") {
        let [_, registry, image] = argv.as_slice() else {
            eprintln!("tollgate-gen: --compile REGISTRY IMAGE\n\n{USAGE}");
            return ExitCode::from(2);
        };
        return compile(registry, image);
    }
    let mut definition = None;
    let mut out = None;
    let mut stores = None;
    let mut check = false;
    let mut registry_image = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--check" => check = true,
            "--registry-image" => registry_image = true,
            "--out" | "--stores" => {
                let Some(value) = args.next() else {
                    eprintln!("tollgate-gen: {arg} needs a directory\n\n{USAGE}");
                    return ExitCode::from(2);
                };
                if arg == "--out" {
                    out = Some(PathBuf::from(value));
                } else {
                    stores = Some(PathBuf::from(value));
                }
            }
            other if other.starts_with('-') => {
                eprintln!("tollgate-gen: unknown option {other}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            other if definition.is_none() => definition = Some(PathBuf::from(other)),
            other => {
                eprintln!("tollgate-gen: one definition only ({other}?)\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(definition) = definition else {
        eprintln!("tollgate-gen: no definition given\n\n{USAGE}");
        return ExitCode::from(2);
    };
    let out_dir = match (out, check) {
        (Some(o), _) => o,
        (None, true) => PathBuf::from("."),
        (None, false) => {
            eprintln!("tollgate-gen: --out DIR is required (or --check)\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        stores_dir: stores.unwrap_or_else(|| out_dir.join("stores")),
        out_dir,
        check_only: check,
        registry_image,
    };
    match generate_file(&definition, &options) {
        Ok(generated) => {
            for w in &generated.warnings {
                eprintln!("warning: {w}");
            }
            for f in &generated.written {
                eprintln!("wrote {f}");
            }
            for c in &generated.clusters {
                eprintln!(
                    "cluster {} -> {}:{} ({})",
                    c.name,
                    c.host,
                    c.port,
                    c.apis.join(", ")
                );
            }
            eprintln!("filter module: {}", generated.module);
            if !generated.env_vars.is_empty() {
                eprintln!(
                    "note: start Envoy with {} set (keystore passwords)",
                    generated.env_vars.join(", ")
                );
            }
            if check {
                eprintln!("{}: OK", definition.display());
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "{}: {} problem(s); the Envoy configuration was not written",
                definition.display(),
                problems.len()
            );
            ExitCode::from(1)
        }
    }
}
