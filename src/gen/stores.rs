//! Keystores and truststores, inspected and turned into what Envoy reads through file SDS.
//!
//! Envoy 1.40 has no JKS, and a PKCS#12 `TlsCertificate` delivered by file SDS is rejected
//! ("Certificate configuration can't have both pkcs12 and certificate_chain", verified), so
//! every keystore reaches Envoy as PEM:
//! - a `pem` keystore is used where it is (cert and key files as given);
//! - a `pkcs12` or `jks` keystore entry is converted into one PEM file in the stores directory:
//!   the private key, still encrypted with the keystore password, then the certificate chain.
//!   One file means a rotation is a single rename; Envoy decrypts the key with the same password
//!   source (environment variable or file) the keystore uses, so no clear key lands on disk.
//!
//! Truststores reach Envoy as a PEM bundle (`trusted_ca`): `pem` ones where they are, others
//! converted.

use std::path::{Path, PathBuf};

use super::definition::{Keystore, Password, StoreType, Truststore};
use super::tools::{
    self, cert_info, check_validity, first_line, key_public, pem_blocks, pem_key_encrypted, run,
    Secret, KEY_PASSWORD_VAR, PASSWORD_VAR,
};

/// A client certificate as Envoy reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    pub chain: String,
    pub key: String,
    pub password: Option<Password>,
    /// The leaf certificate's subject, for the generated file's comments and the summary.
    pub subject: String,
    pub not_after: i64,
    /// The PKCS#12/JKS store this PEM file was converted from.
    pub converted_from: Option<String>,
}

/// Trusted CAs as Envoy reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustMaterial {
    pub bundle: String,
    pub subjects: Vec<String>,
}

/// What inspection found; `warnings` do not stop generation.
pub struct Findings {
    pub warnings: Vec<String>,
    /// Files written (converted stores), for the summary.
    pub written: Vec<String>,
}

/// Warn when a certificate expires within this many days.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Resolves keystore `name` with entry `alias` (or its only key) into Envoy's PEM form.
/// `write` false checks without writing converted files.
pub fn keystore(
    name: &str,
    ks: &Keystore,
    alias: Option<&str>,
    stores_dir: &Path,
    write: bool,
    findings: &mut Findings,
) -> Result<KeyMaterial, String> {
    let now = tools::now();
    match ks.kind {
        StoreType::Pem => {
            if alias.is_some() {
                return Err(
                    "keyAlias applies to pkcs12 and jks keystores; a pem keystore holds one key"
                        .into(),
                );
            }
            if ks.file.is_some() {
                return Err("a pem keystore names `cert` and `key`, not `file`".into());
            }
            let (Some(cert), Some(key)) = (ks.cert.as_deref(), ks.key.as_deref()) else {
                return Err("a pem keystore needs `cert` (the certificate chain) and `key`".into());
            };
            let cert_text = read_text(cert)?;
            let key_text = read_text(key)?;
            let chain = pem_blocks(&cert_text, "CERTIFICATE");
            let Some(leaf) = chain.first() else {
                return Err(format!("{cert} holds no PEM certificate"));
            };
            let info = cert_info(leaf).map_err(|e| format!("{cert}: {e}"))?;
            check_validity(&info, cert, now)?;
            let password = if pem_key_encrypted(&key_text) {
                Some(
                    ks.password
                        .as_ref()
                        .map(Secret::read)
                        .transpose()?
                        .ok_or_else(|| {
                            format!("the private key in {key} is encrypted: give the keystore a `password`")
                        })?,
                )
            } else {
                None
            };
            let public = key_public(key, password.as_ref())?;
            if public != info.public_key {
                return Err(format!(
                    "the private key in {key} does not match the certificate {} in {cert}",
                    info.subject
                ));
            }
            warn_private(key, findings);
            warn_expiry(&info, cert, now, findings);
            Ok(KeyMaterial {
                chain: cert.to_string(),
                key: key.to_string(),
                password: password.and(ks.password.clone()),
                subject: info.subject,
                not_after: info.not_after,
                converted_from: None,
            })
        }
        StoreType::Pkcs12 | StoreType::Jks => {
            let file = ks
                .file
                .as_deref()
                .ok_or_else(|| format!("a {} keystore needs `file`", ks.kind.keytool_name()))?;
            if ks.cert.is_some() || ks.key.is_some() {
                return Err(
                    "`cert` and `key` apply to pem keystores; this one is read from `file`".into(),
                );
            }
            exists(file)?;
            let password_source = ks.password.as_ref().ok_or_else(|| {
                format!(
                    "a {} keystore needs a `password` ({{env: VAR}} or {{file: path}})",
                    ks.kind.keytool_name()
                )
            })?;
            let password = Secret::read(password_source)?;
            let key_password = ks.key_password.as_ref().map(Secret::read).transpose()?;
            let entries = list_entries(file, ks.kind, &password)?;
            let keys: Vec<&str> = entries
                .iter()
                .filter(|(_, kind)| kind == "PrivateKeyEntry")
                .map(|(a, _)| a.as_str())
                .collect();
            let chosen = match alias {
                Some(a) => keys
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(a))
                    .map(|k| k.to_string())
                    .ok_or_else(|| {
                        format!(
                            "key alias \"{a}\" is not in {file} (its keys: {})",
                            list_or_none(&keys)
                        )
                    })?,
                None => match keys.as_slice() {
                    [only] => only.to_string(),
                    [] => return Err(format!("{file} holds no private key entry")),
                    many => {
                        return Err(format!(
                            "{file} holds several keys ({}): choose one with keyAlias",
                            many.join(", ")
                        ))
                    }
                },
            };
            let pem = extract_entry(file, ks.kind, &chosen, &password, key_password.as_ref())?;
            let certs = pem_blocks(&pem.certs, "CERTIFICATE");
            let Some(leaf) = certs.first() else {
                return Err(format!("entry \"{chosen}\" in {file} has no certificate"));
            };
            let info = cert_info(leaf).map_err(|e| format!("{file} ({chosen}): {e}"))?;
            let what = format!("{file} (alias {chosen})");
            check_validity(&info, &what, now)?;
            warn_expiry(&info, &what, now, findings);
            let out = stores_dir.join(format!("{}.pem", secret_file_stem(name, alias)));
            let bundle = format!("{}{}", pem.key, certs.concat());
            let out_text = out.display().to_string();
            if write && !same_material(&out, &pem.key, &certs, &password) {
                tools::write_atomic(&out, bundle.as_bytes(), true)?;
                findings.written.push(out_text.clone());
            }
            Ok(KeyMaterial {
                chain: out_text.clone(),
                key: out_text,
                password: Some(password_source.clone()),
                subject: info.subject,
                not_after: info.not_after,
                converted_from: Some(file.to_string()),
            })
        }
    }
}

/// Resolves a truststore into a PEM bundle for `trusted_ca`.
pub fn truststore(
    name: &str,
    ts: &Truststore,
    stores_dir: &Path,
    write: bool,
    findings: &mut Findings,
) -> Result<TrustMaterial, String> {
    let now = tools::now();
    exists(&ts.file)?;
    let (certs, bundle) = match ts.kind {
        StoreType::Pem => (
            pem_blocks(&read_text(&ts.file)?, "CERTIFICATE"),
            ts.file.clone(),
        ),
        StoreType::Pkcs12 | StoreType::Jks => {
            let password = ts
                .password
                .as_ref()
                .ok_or_else(|| {
                    format!("a {} truststore needs a `password`", ts.kind.keytool_name())
                })
                .and_then(Secret::read)?;
            let certs = if ts.kind == StoreType::Pkcs12 {
                let env = [(PASSWORD_VAR, password.value())];
                let pass = format!("env:{PASSWORD_VAR}");
                let out = pkcs12(&["-in", &ts.file, "-passin", &pass, "-nokeys"], &env)?;
                if !out.ok {
                    return Err(store_error(&ts.file, &out.stderr));
                }
                pem_blocks(&out.text(), "CERTIFICATE")
            } else {
                let mut certs = Vec::new();
                for (alias, _) in list_entries(&ts.file, ts.kind, &password)? {
                    let out = keytool(
                        &[
                            "-exportcert",
                            "-rfc",
                            "-alias",
                            &alias,
                            "-keystore",
                            &ts.file,
                            "-storetype",
                            "JKS",
                        ],
                        &password,
                        None,
                    )?;
                    if !out.ok {
                        return Err(store_error(&ts.file, &out.stderr));
                    }
                    certs.extend(pem_blocks(&out.text(), "CERTIFICATE"));
                }
                certs
            };
            let out = stores_dir.join(format!("{}.pem", secret_file_stem(name, None)));
            if write && tools::write_atomic(&out, certs.concat().as_bytes(), false)? {
                findings.written.push(out.display().to_string());
            }
            (certs, out.display().to_string())
        }
    };
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", ts.file));
    }
    let mut subjects = Vec::new();
    let mut valid = 0;
    for cert in &certs {
        let info = cert_info(cert).map_err(|e| format!("{}: {e}", ts.file))?;
        match check_validity(&info, &ts.file, now) {
            Ok(()) => valid += 1,
            Err(e) => findings.warnings.push(format!("truststores.{name}: {e}")),
        }
        subjects.push(info.subject);
    }
    if valid == 0 {
        return Err(format!(
            "no certificate in {} is currently valid, so no server could be trusted",
            ts.file
        ));
    }
    Ok(TrustMaterial { bundle, subjects })
}

/// The file stem for a keystore entry's converted form and SDS secret.
pub fn secret_file_stem(name: &str, alias: Option<&str>) -> String {
    match alias {
        Some(a) => format!("{name}--{}", super::tools::sanitize(a)),
        None => name.to_string(),
    }
}

struct EntryPem {
    /// The private key, encrypted with the store password.
    key: String,
    /// Leaf first, then the chain.
    certs: String,
}

/// One entry of a PKCS#12 or JKS store as PEM: keytool copies the entry into a private PKCS#12
/// file (this also reads JKS and selects the alias), openssl turns that into PEM.
fn extract_entry(
    file: &str,
    kind: StoreType,
    alias: &str,
    password: &Secret,
    key_password: Option<&Secret>,
) -> Result<EntryPem, String> {
    let tmp = TempDir::new()?;
    let one = tmp.path.join("one.p12");
    let one_text = one.display().to_string();
    let mut args = vec![
        "-importkeystore",
        "-noprompt",
        "-srckeystore",
        file,
        "-srcstoretype",
        kind.keytool_name(),
        "-srcstorepass:env",
        PASSWORD_VAR,
        "-srcalias",
        alias,
        "-destkeystore",
        &one_text,
        "-deststoretype",
        "PKCS12",
        "-deststorepass:env",
        PASSWORD_VAR,
    ];
    if key_password.is_some() {
        args.extend(["-srckeypass:env", KEY_PASSWORD_VAR]);
    }
    let out = keytool(&args, password, key_password)?;
    if !out.ok {
        let text = format!("{}{}", out.text(), out.stderr);
        if text.contains("Cannot recover key") || text.contains("Get Key failed") {
            return Err(format!(
                "wrong key password for \"{alias}\" in {file} (set keyPassword when it differs from the store password)"
            ));
        }
        return Err(store_error(file, &text));
    }
    let env = [(PASSWORD_VAR, password.value())];
    let pass = format!("env:{PASSWORD_VAR}");
    let key = pkcs12(
        &[
            "-in", &one_text, "-passin", &pass, "-nocerts", "-passout", &pass,
        ],
        &env,
    )?;
    let leaf = pkcs12(
        &["-in", &one_text, "-passin", &pass, "-nokeys", "-clcerts"],
        &env,
    )?;
    let chain = pkcs12(
        &["-in", &one_text, "-passin", &pass, "-nokeys", "-cacerts"],
        &env,
    )?;
    if !key.ok || !leaf.ok {
        return Err(format!(
            "converting \"{alias}\" from {file} failed: {}",
            first_line(&format!("{}{}", key.stderr, leaf.stderr))
        ));
    }
    let key_pem = pem_blocks(&key.text(), "ENCRYPTED PRIVATE KEY").concat();
    if key_pem.is_empty() {
        return Err(format!("entry \"{alias}\" in {file} has no private key"));
    }
    let mut certs = pem_blocks(&leaf.text(), "CERTIFICATE").concat();
    if chain.ok {
        certs.push_str(&pem_blocks(&chain.text(), "CERTIFICATE").concat());
    }
    // The pair is bound inside a keystore entry, but a damaged store is cheaper to catch here
    // than as a handshake failure.
    let key_file = tmp.path.join("key.pem");
    std::fs::write(&key_file, &key_pem).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let public = key_public(&key_file.display().to_string(), Some(password))?;
    let leaf_info = pem_blocks(&certs, "CERTIFICATE")
        .first()
        .map(|c| cert_info(c))
        .transpose()?;
    if leaf_info.is_some_and(|i| i.public_key != public) {
        return Err(format!(
            "the private key of \"{alias}\" in {file} does not match its certificate"
        ));
    }
    Ok(EntryPem {
        key: key_pem,
        certs,
    })
}

/// True when `path` already holds these certificates and a key with the same public key: the
/// key is re-encrypted with a fresh salt on every conversion, and rewriting an unchanged
/// keystore would make Envoy reload it for nothing.
fn same_material(path: &Path, key: &str, certs: &[String], password: &Secret) -> bool {
    let Ok(old) = std::fs::read_to_string(path) else {
        return false;
    };
    if pem_blocks(&old, "CERTIFICATE") != certs {
        return false;
    }
    let path_text = path.display().to_string();
    let Ok(tmp) = TempDir::new() else {
        return false;
    };
    let new_key = tmp.path.join("new.pem");
    if std::fs::write(&new_key, key).is_err() {
        return false;
    }
    match (
        key_public(&path_text, Some(password)),
        key_public(&new_key.display().to_string(), Some(password)),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `(alias, entry type)` of every entry, as keytool lists them.
fn list_entries(
    file: &str,
    kind: StoreType,
    password: &Secret,
) -> Result<Vec<(String, String)>, String> {
    let out = keytool(
        &[
            "-list",
            "-keystore",
            file,
            "-storetype",
            kind.keytool_name(),
        ],
        password,
        None,
    )?;
    let text = format!("{}{}", out.text(), out.stderr);
    if !out.ok {
        return Err(store_error(file, &text));
    }
    Ok(parse_keytool_list(&text))
}

/// keytool -list lines look like `alias, Nov 26, 2026, PrivateKeyEntry,` (with -J-Duser.language=en).
pub fn parse_keytool_list(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.trim_end().trim_end_matches(',').split(", ").collect();
            let kind = parts.last()?;
            if !kind.ends_with("Entry") || parts.len() < 4 {
                return None;
            }
            Some((parts[..parts.len() - 3].join(", "), kind.to_string()))
        })
        .collect()
}

fn keytool(
    args: &[&str],
    password: &Secret,
    key_password: Option<&Secret>,
) -> Result<tools::Output, String> {
    let mut all = vec!["-J-Duser.language=en", "-J-Duser.country=US"];
    all.extend_from_slice(args);
    if !args.iter().any(|a| a.ends_with("storepass:env")) {
        all.extend(["-storepass:env", PASSWORD_VAR]);
    }
    let mut env = vec![(PASSWORD_VAR, password.value())];
    if let Some(k) = key_password {
        env.push((KEY_PASSWORD_VAR, k.value()));
    }
    run("keytool", &all, &env, None)
}

/// openssl pkcs12, retried with -legacy for stores written with RC2/3DES by older tools.
fn pkcs12(args: &[&str], env: &[(&str, &str)]) -> Result<tools::Output, String> {
    let mut all = vec!["pkcs12"];
    all.extend_from_slice(args);
    let out = run("openssl", &all, env, None)?;
    if out.ok || !out.stderr.contains("unsupported") {
        return Ok(out);
    }
    all.insert(1, "-legacy");
    run("openssl", &all, env, None)
}

/// keytool's and openssl's verdicts on a store, reworded to name the problem.
fn store_error(file: &str, text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if lower.contains("password was incorrect")
        || lower.contains("mac verify")
        || lower.contains("invalid password")
        || lower.contains("password verification failed")
    {
        format!("wrong password for {file}")
    } else if lower.contains("invalid keystore format")
        || lower.contains("not a valid")
        || lower.contains("der input")
        || lower.contains("unrecognized keystore")
        || lower.contains("expected a ")
    {
        format!("{file} is not a keystore of the declared type (check `type`)")
    } else {
        let detail = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("keytool error") || l.contains("error"))
            .unwrap_or_else(|| first_line(text));
        format!("{file} cannot be read: {detail}")
    }
}

fn exists(path: &str) -> Result<(), String> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(format!("{path}: no such file"))
    }
}

fn read_text(path: &str) -> Result<String, String> {
    exists(path)?;
    std::fs::read_to_string(path).map_err(|e| format!("{path} cannot be read: {e}"))
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn warn_expiry(info: &tools::CertInfo, what: &str, now: i64, findings: &mut Findings) {
    if info.not_after - now < EXPIRY_WARNING_DAYS * 86_400 {
        findings.warnings.push(format!(
            "certificate {} in {what} expires on {}",
            info.subject,
            tools::format_time(info.not_after)
        ));
    }
}

fn warn_private(key: &str, findings: &mut Findings) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(key) {
            if meta.permissions().mode() & 0o077 != 0 {
                findings.warnings.push(format!(
                    "private key {key} is readable by other users (chmod 600 {key})"
                ));
            }
        }
    }
    let _ = (key, findings);
}

/// A private scratch directory for keytool's intermediate PKCS#12, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-gen-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keytool_list_lines_give_alias_and_entry_type() {
        let text = "Keystore type: PKCS12\n\nYour keystore contains 2 entries\n\nclient, Nov 26, 2026, PrivateKeyEntry, \nCertificate fingerprint (SHA-256): AF:1D\nroot ca, Jan 1, 2025, trustedCertEntry, \n";
        assert_eq!(
            parse_keytool_list(text),
            vec![
                ("client".to_string(), "PrivateKeyEntry".to_string()),
                ("root ca".to_string(), "trustedCertEntry".to_string())
            ]
        );
    }
}
