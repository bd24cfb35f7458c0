//! The `tollgate-replay` command line.

use std::io::Write;
use std::path::PathBuf;

use crate::replay::{self, config, report, run};

pub const USAGE: &str = "\
tollgate-replay: replays recorded traffic through tollgate and says, request by request, what
the gateway did and whether that is what was expected.

usage: tollgate-replay [options] FILE...

FILE is a tollgate fixture (JSON), a HAR 1.2 file or an Envoy tap trace (JSON), recognised by
content. Exchanges run natively through the real filter code, on a virtual clock that follows
the recorded timestamps.

options:
  --config PATH      gateway configuration: tollgate's plugin JSON, or an Envoy YAML carrying
                     it (e.g. envoy/gateway.yaml); replaces a fixture's own configuration
  --format FORMAT    table (default), json or junit
  --against URL      send the exchanges to a live gateway (e.g. http://127.0.0.1:10000)
                     instead of replaying them natively; warns when the gateway does not run
                     the configuration the exchanges were written for
  --admin URL        with --against: the gateway's Envoy admin (e.g. http://127.0.0.1:9901),
                     to compare its configuration with the fixture's (or --config's)
  --dry-run          compare the configuration's decisions with the recorded statuses and
                     report what would change (newly blocked, newly allowed)
  --workers N        worker VMs sharing one shared-data store (default: the fixture's, or 1)
  --repeat N         replay everything N times (benchmarks); prints the throughput
  --quiet            print only the summary
  --verbose          show everything the filter logs
  -h, --help         this text

exit status: 0 when every exchange passed, 1 on any mismatch (or, with --dry-run, any
change), 2 on bad input or usage.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
    Junit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub files: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    pub format: OutputFormat,
    pub against: Option<String>,
    pub admin: Option<String>,
    pub dry_run: bool,
    pub workers: Option<usize>,
    pub repeat: usize,
    pub quiet: bool,
    pub verbose: bool,
    pub help: bool,
}

fn number(flag: &str, value: Option<String>, max: usize) -> Result<usize, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a number"))?;
    match v.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag} {v}: expected a number from 1 to {max}")),
    }
}

pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        files: Vec::new(),
        config: None,
        format: OutputFormat::Table,
        against: None,
        admin: None,
        dry_run: false,
        workers: None,
        repeat: 1,
        quiet: false,
        verbose: false,
        help: false,
    };
    let mut it = args.iter().cloned();
    while let Some(arg) = it.next() {
        // `--flag=value` as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => a.help = true,
            "--config" => a.config = Some(PathBuf::from(value("--config")?)),
            "--format" => {
                a.format = match value("--format")?.as_str() {
                    "table" => OutputFormat::Table,
                    "json" => OutputFormat::Json,
                    "junit" => OutputFormat::Junit,
                    other => {
                        return Err(format!("--format {other}: expected table, json or junit"))
                    }
                }
            }
            "--against" => a.against = Some(value("--against")?),
            "--admin" => a.admin = Some(value("--admin")?),
            "--dry-run" => a.dry_run = true,
            "--workers" => a.workers = Some(number("--workers", Some(value("--workers")?), 64)?),
            "--repeat" => a.repeat = number("--repeat", Some(value("--repeat")?), 100_000_000)?,
            "--quiet" | "-q" => a.quiet = true,
            "--verbose" | "-v" => a.verbose = true,
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option {f}")),
            _ => a.files.push(PathBuf::from(arg)),
        }
    }
    if !a.help && a.files.is_empty() {
        return Err("no input files".into());
    }
    if a.dry_run && a.against.is_some() {
        return Err("--dry-run replays natively; it cannot be combined with --against".into());
    }
    if a.admin.is_some() && a.against.is_none() {
        return Err("--admin names the admin of the gateway given with --against".into());
    }
    Ok(a)
}

/// Runs the command; returns the exit status (0 passed, 1 mismatches, 2 bad input or usage).
pub fn main_with(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(
                err,
                "tollgate-replay: {e}\n(tollgate-replay --help for usage)"
            );
            return 2;
        }
    };
    if args.help {
        let _ = write!(out, "{USAGE}");
        return 0;
    }
    let config = match &args.config {
        Some(p) => match config::load(p) {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = writeln!(err, "tollgate-replay: {e}");
                return 2;
            }
        },
        None => None,
    };
    let mut suites = Vec::new();
    let mut bad = false;
    for f in &args.files {
        match replay::load(f) {
            Ok(s) => suites.push(s),
            Err(e) => {
                bad = true;
                let _ = writeln!(err, "tollgate-replay: {e}");
            }
        }
    }
    if bad {
        return 2;
    }
    let opts = run::Options {
        config,
        workers: args.workers,
        repeat: args.repeat,
        dry_run: args.dry_run,
        verbose: args.verbose,
        admin: args.admin.clone(),
        ..run::Options::default()
    };
    let mut runs = Vec::new();
    for s in &suites {
        let result = match &args.against {
            Some(url) => run::live(s, &opts, url, None),
            None => run::native(s, &opts),
        };
        match result {
            Ok(r) => runs.push(r),
            Err(e) => {
                let _ = writeln!(err, "tollgate-replay: {e}");
                return 2;
            }
        }
    }
    let totals = report::Totals::of(&runs);
    let replayed: usize = runs.iter().map(run::SuiteRun::replayed).sum();
    let elapsed: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let throughput = format!(
        "replayed {replayed} exchanges in {elapsed:.3} s ({:.0} exchanges/s)",
        if elapsed > 0.0 {
            replayed as f64 / elapsed
        } else {
            0.0
        }
    );
    let show_throughput = args.repeat > 1 || args.quiet;
    if args.quiet || args.format != OutputFormat::Table {
        // The table is not there to carry them.
        for r in &runs {
            for w in &r.warnings {
                let _ = writeln!(err, "tollgate-replay: {}: warning: {w}", r.file);
            }
        }
    }
    match args.format {
        OutputFormat::Table => {
            let _ = write!(out, "{}", report::table(&runs, args.dry_run, args.quiet));
            if show_throughput {
                let _ = writeln!(out, "{throughput}");
            }
        }
        OutputFormat::Json | OutputFormat::Junit => {
            let text = if args.format == OutputFormat::Json {
                report::json_report(&runs, args.dry_run)
            } else {
                report::junit(&runs)
            };
            let _ = write!(out, "{text}");
            let _ = writeln!(err, "{}", report::summary_line(&runs, args.dry_run));
            if show_throughput {
                let _ = writeln!(err, "{throughput}");
            }
        }
    }
    if totals.failed > 0 {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, String> {
        parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_take_values_separately_or_inline() {
        let a = args(&[
            "--config",
            "c.json",
            "--format=junit",
            "--repeat",
            "5",
            "t.har",
        ])
        .unwrap();
        assert_eq!(a.config, Some(PathBuf::from("c.json")));
        assert_eq!(a.format, OutputFormat::Junit);
        assert_eq!(a.repeat, 5);
        assert_eq!(a.files, vec![PathBuf::from("t.har")]);
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        assert_eq!(args(&[]).unwrap_err(), "no input files");
        assert!(args(&["--format", "xml", "f"]).unwrap_err().contains("xml"));
        assert!(args(&["--workers", "0", "f"])
            .unwrap_err()
            .contains("--workers"));
        assert!(args(&["--bogus", "f"]).unwrap_err().contains("--bogus"));
        assert!(args(&["--dry-run", "--against", "http://x", "f"]).is_err());
    }

    #[test]
    fn admin_goes_with_against() {
        assert!(args(&["--admin", "http://127.0.0.1:9901", "f"])
            .unwrap_err()
            .contains("--against"));
        let a = args(&["--against", "http://gw", "--admin=http://gw:9901", "f"]).unwrap();
        assert_eq!(a.admin.as_deref(), Some("http://gw:9901"));
    }
}
