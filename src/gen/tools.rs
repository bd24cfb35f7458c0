//! openssl and keytool, run as child processes: the tools that read every keystore format a
//! webMethods or Scheer PAS user brings. Passwords reach them through an environment variable of
//! the child, never the command line (which other users can read in the process list).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::definition::Password;

/// The child environment variable carrying a store or key password.
pub const PASSWORD_VAR: &str = "TOLLGATE_GEN_PASSWORD";
/// The child environment variable carrying a JKS key password that differs from the store's.
pub const KEY_PASSWORD_VAR: &str = "TOLLGATE_GEN_KEY_PASSWORD";

/// What a tool printed, and whether it succeeded.
pub struct Output {
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `program args`, with `env` added and `stdin` fed; an error only when it cannot start.
pub fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Result<Output, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => match program {
            "keytool" => "keytool not found: install a Java runtime (JKS and PKCS#12 keystores are read with keytool)".to_string(),
            "openssl" => "openssl not found: install OpenSSL".to_string(),
            _ => format!("{program} not found"),
        },
        _ => format!("starting {program}: {e}"),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its exit status tells what went wrong.
        let _ = pipe.write_all(input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {program}: {e}"))?;
    Ok(Output {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A password read from where the definition says, ready for a child's environment.
pub struct Secret(String);

impl Secret {
    pub fn read(password: &Password) -> Result<Secret, String> {
        match password {
            Password::Env(var) => std::env::var(var)
                .map(Secret)
                .map_err(|_| format!("environment variable {var} is not set")),
            Password::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("password file {path} cannot be read: {e}"))?;
                // Envoy reads a password file byte for byte (verified on 1.40: a trailing newline
                // fails decryption), so a newline here would work for openssl but not Envoy.
                if bytes.ends_with(b"\n") {
                    return Err(format!(
                        "password file {path} ends with a newline, which Envoy would read as part of the password; write it without one (printf '%s' \"$PASSWORD\" > {path})"
                    ));
                }
                String::from_utf8(bytes)
                    .map(Secret)
                    .map_err(|_| format!("password file {path} is not UTF-8 text"))
            }
        }
    }

    pub fn value(&self) -> &str {
        &self.0
    }
}

/// One certificate's facts, as `openssl x509` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    /// The public key (PEM), to match against a private key.
    pub public_key: String,
}

/// Reads the first certificate of a PEM text.
pub fn cert_info(pem: &str) -> Result<CertInfo, String> {
    let out = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
            "-startdate",
            "-enddate",
            "-pubkey",
        ],
        &[],
        Some(pem.as_bytes()),
    )?;
    if !out.ok {
        return Err(format!(
            "not a readable PEM certificate ({})",
            first_line(&out.stderr)
        ));
    }
    let text = out.text();
    let mut subject = String::new();
    let mut not_before = None;
    let mut not_after = None;
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("subject=") {
            subject = s.trim().to_string();
        } else if let Some(d) = line.strip_prefix("notBefore=") {
            not_before = parse_openssl_date(d);
        } else if let Some(d) = line.strip_prefix("notAfter=") {
            not_after = parse_openssl_date(d);
        }
    }
    let public_key = pem_blocks(&text, "PUBLIC KEY").join("");
    match (not_before, not_after) {
        (Some(not_before), Some(not_after)) => Ok(CertInfo {
            subject,
            not_before,
            not_after,
            public_key,
        }),
        _ => Err(format!("openssl printed no validity dates: {text}")),
    }
}

/// The public key (PEM) of the private key in a PEM file; `password` for an encrypted key.
pub fn key_public(path: &str, password: Option<&Secret>) -> Result<String, String> {
    let env: Vec<(&str, &str)> = password
        .map(|p| vec![(PASSWORD_VAR, p.value())])
        .unwrap_or_default();
    let pass = format!("env:{PASSWORD_VAR}");
    let mut args = vec!["pkey", "-in", path, "-pubout"];
    // Without a password source openssl would prompt on the terminal; an empty one fails instead.
    if password.is_some() {
        args.extend(["-passin", &pass]);
    } else {
        args.extend(["-passin", "pass:"]);
    }
    let out = run("openssl", &args, &env, None)?;
    if out.ok {
        return Ok(pem_blocks(&out.text(), "PUBLIC KEY").join(""));
    }
    let err = out.stderr.to_ascii_lowercase();
    if err.contains("bad decrypt") || err.contains("maybe wrong password") {
        Err(match password {
            Some(_) => format!("wrong password for the private key in {path}"),
            None => format!("the private key in {path} is encrypted: give the keystore a password"),
        })
    } else {
        Err(format!(
            "no readable private key in {path} ({})",
            first_line(&out.stderr)
        ))
    }
}

/// Every `-----BEGIN <label>-----` block of a PEM text, each ending with a newline.
pub fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line == begin {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line == end {
            if let Some(block) = current.take() {
                blocks.push(block);
            }
        }
    }
    blocks
}

/// True when a PEM text holds an encrypted private key (PKCS#8 or traditional OpenSSL form).
pub fn pem_key_encrypted(text: &str) -> bool {
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
}

pub fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no details")
}

/// Parses openssl's `Nov 26 01:18:33 2026 GMT` into Unix seconds.
pub fn parse_openssl_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [mon, day, time, year, ..] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == mon)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-26 01:18:33 UTC` for messages.
pub fn format_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks a certificate's validity window against `now`, naming the file and dates.
pub fn check_validity(info: &CertInfo, what: &str, now: i64) -> Result<(), String> {
    if now < info.not_before {
        return Err(format!(
            "certificate {} in {what} is not valid yet: valid from {}",
            info.subject,
            format_time(info.not_before)
        ));
    }
    if now > info.not_after {
        return Err(format!(
            "certificate {} in {what} expired on {}",
            info.subject,
            format_time(info.not_after)
        ));
    }
    Ok(())
}

/// Writes `content` to `path` through a temporary file renamed into place, so a watcher (Envoy)
/// never sees a partial file. Leaves an identical file alone (no needless reload). Returns
/// whether it wrote.
pub fn write_atomic(path: &Path, content: &[u8], private: bool) -> Result<bool, String> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tollgate-gen.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let _ = private;
    let mut file = options
        .open(&tmp)
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    file.write_all(content)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming into {}: {e}", path.display()))?;
    Ok(true)
}

/// Cluster, secret and file names: letters, digits, `-` and `_` only. Dots are avoided because
/// Envoy's stat tag extraction splits `cluster.<name>.` at the first dot.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_dates_parse_to_unix_seconds_and_back() {
        let t = parse_openssl_date("Nov 26 01:18:33 2026 GMT").unwrap();
        assert_eq!(format_time(t), "2026-11-26 01:18:33 UTC");
        assert_eq!(parse_openssl_date("Jan  1 00:00:00 1970 GMT"), Some(0));
        assert_eq!(
            format_time(parse_openssl_date("Feb 29 12:00:00 2024 GMT").unwrap()),
            "2024-02-29 12:00:00 UTC"
        );
        assert_eq!(parse_openssl_date("garbage"), None);
    }

    #[test]
    fn pem_blocks_are_found_among_bag_attributes() {
        let text = "Bag Attributes\n    friendlyName: x\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            pem_blocks(text, "CERTIFICATE"),
            vec!["-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"]
        );
        assert!(!pem_key_encrypted(text));
    }
}
