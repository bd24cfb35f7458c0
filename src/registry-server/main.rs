//! tollgate-registry: serves Apiman's Gateway REST API for a tollgate gateway.
//! Usage: `tollgate-registry --help`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tollgate_registry::auth::Credentials;
use tollgate_registry::gateway::{Config, Gateway};
use tollgate_registry::{log, server};

const USAGE: &str = "\
tollgate-registry: Apiman's Gateway REST API for tollgate (publish APIs, register clients)

usage: tollgate-registry DEFINITION --out DIR --state DIR --user NAME --password-file FILE
                         [--stores DIR] [--listen ADDR:PORT] [--public-url URL] [--base-path PATH]
                         [--registry-image]

  DEFINITION          the gateway definition tollgate-gen reads (listener, keystores,
                      truststores, outbound, endpoint aliases; its registry seeds the first start)
  --out DIR           where the Envoy files go, as tollgate-gen --out: start Envoy with
                      DIR/envoy.yaml; every change rewrites DIR/dynamic/clusters.yaml (CDS) and
                      DIR/dynamic/registry.yaml (ECDS), which Envoy applies without a restart
  --state DIR         the durable registry (DIR/registry.json); one tollgate-registry per DIR
  --user NAME         the user the Manager authenticates as (BASIC)
  --password-file F   its password (one trailing line break is ignored)
  --stores DIR        converted keystores and truststores, as tollgate-gen --stores; default DIR/stores
  --listen ADDR:PORT  where the REST API listens; default 127.0.0.1:7070 (port 0: any free port)
  --public-url URL    the gateway's public URL, answered by the API endpoint lookup;
                      default http://<listener address>:<listener port>/ of the definition
  --base-path PATH    serve the API under PATH (e.g. /api); default /
  --registry-image    deliver the registry compiled, as tollgate-gen --registry-image does
                      (DIR/dynamic/registry.pb instead of registry.yaml): for large registries

Paths in the definition resolve against the current directory, as with tollgate-gen: run this
where Envoy runs. Prints \"listening on ADDR:PORT\" on stdout once ready; logs to stderr.
Exit status: 1 when the definition, the stored state or the credentials are refused, 2 usage.
";

struct Args {
    definition: PathBuf,
    out: PathBuf,
    state: PathBuf,
    user: String,
    password_file: PathBuf,
    stores: Option<PathBuf>,
    listen: String,
    public_url: Option<String>,
    base_path: String,
    registry_image: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut definition = None;
    let mut values: std::collections::BTreeMap<&'static str, String> = Default::default();
    let mut registry_image = false;
    let mut args = std::env::args().skip(1);
    const OPTIONS: [&str; 8] = [
        "--out",
        "--state",
        "--user",
        "--password-file",
        "--stores",
        "--listen",
        "--public-url",
        "--base-path",
    ];
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if arg == "--password" {
            return Err(
                "--password: passwords are never given on the command line; use --password-file"
                    .into(),
            );
        }
        if arg == "--registry-image" {
            registry_image = true;
        } else if let Some(name) = OPTIONS.iter().find(|o| **o == arg) {
            let value = args.next().ok_or(format!("{arg} needs a value"))?;
            values.insert(name, value);
        } else if arg.starts_with('-') {
            return Err(format!("unknown option {arg}"));
        } else if definition.is_none() {
            definition = Some(PathBuf::from(arg));
        } else {
            return Err(format!("one definition only ({arg}?)"));
        }
    }
    let mut required = |name: &str| {
        values
            .remove(name)
            .ok_or(format!("{name} is required"))
            .map(|v| v.to_string())
    };
    let out = PathBuf::from(required("--out")?);
    let state = PathBuf::from(required("--state")?);
    let user = required("--user")?;
    let password_file = PathBuf::from(required("--password-file")?);
    Ok(Some(Args {
        definition: definition.ok_or("no definition given")?,
        out,
        state,
        user,
        password_file,
        stores: values.remove("--stores").map(PathBuf::from),
        listen: values
            .remove("--listen")
            .unwrap_or_else(|| "127.0.0.1:7070".into()),
        public_url: values.remove("--public-url"),
        base_path: values.remove("--base-path").unwrap_or_default(),
        registry_image,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tollgate-registry: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let credentials = match Credentials::from_file(&args.user, &args.password_file) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            log(&format!("error: {e}"));
            return ExitCode::from(1);
        }
    };
    let config = Config {
        definition: args.definition.clone(),
        stores_dir: args.stores.unwrap_or_else(|| args.out.join("stores")),
        out_dir: args.out,
        state_dir: args.state,
        public_url: args.public_url,
        registry_image: args.registry_image,
    };
    let gateway = match Gateway::open(config) {
        Ok(g) => Arc::new(g),
        Err(problems) => {
            for p in &problems {
                log(&format!("error: {p}"));
            }
            log(&format!(
                "{} problem(s); not started, the Envoy files were left as they were",
                problems.len()
            ));
            return ExitCode::from(1);
        }
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("error: listening on {}: {e}", args.listen));
            return ExitCode::from(1);
        }
    };
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(args.listen);
    log(&format!(
        "Gateway REST API on http://{address}{}/ (public URL {})",
        args.base_path.trim_end_matches('/'),
        gateway.public_url()
    ));
    println!("listening on {address}");
    match server::serve(listener, gateway, credentials, args.base_path, 4) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}
