//! The README's policy reference, generated from the policy kinds so it cannot drift from the
//! code: every implemented kind with its summary, failures, fields and an example, and every
//! Apiman policy that is not implemented yet. A test holds the README to it.

use super::{PolicyKind, KINDS};

/// Where the generated reference sits in README.md.
pub const START: &str =
    "<!-- policy-reference:start (generated from the code: see src/core/policy/docs.rs) -->";
pub const END: &str = "<!-- policy-reference:end -->";

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn apiman_name(kind_names: &[&str]) -> String {
    kind_names
        .first()
        .map_or_else(|| "— (tollgate's own)".to_string(), |n| format!("`{n}`"))
}

fn kind_section(kind: &PolicyKind, out: &mut String) {
    out.push_str(&format!("### {} (`{}`)\n\n", kind.name, kind.id));
    out.push_str(kind.summary);
    out.push_str("\n\n");
    out.push_str(&format!("Apiman: {}. ", apiman_name(kind.apiman_names)));
    out.push_str(&format!(
        "Failures: {}.\n\n",
        kind.failures.trim_end_matches('.')
    ));
    if !kind.fields.is_empty() {
        out.push_str("| field | type | default | Apiman | meaning |\n|---|---|---|---|---|\n");
        for f in kind.fields {
            let mut name = format!("`{}`", f.name);
            for a in f.aliases {
                name.push_str(&format!(" / `{a}`"));
            }
            let default = if f.default.is_empty() {
                "—".to_string()
            } else {
                format!("`{}`", f.default)
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                name,
                cell(&format!("`{}`", f.ty)),
                cell(&default),
                if f.apiman { "yes" } else { "tollgate" },
                cell(f.meaning)
            ));
        }
        out.push('\n');
    }
    let example = serde_json::from_str::<serde_json::Value>(kind.example)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| kind.example.to_string());
    out.push_str(&format!(
        "```json\n{{\"policy\": \"{}\", \"config\": {}}}\n```\n\n",
        kind.id, example
    ));
}

/// The reference as Markdown (between `START` and `END` in the README).
pub fn reference() -> String {
    let mut out = String::new();
    out.push_str("| Policy | tollgate id | Apiman name | Status |\n|---|---|---|---|\n");
    for k in KINDS {
        out.push_str(&format!(
            "| {} | `{}` | {} | done |\n",
            k.name,
            k.id,
            apiman_name(k.apiman_names)
        ));
    }
    out.push('\n');
    for k in KINDS {
        kind_section(k, &mut out);
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::recorder;
    use crate::policy::testing::{build, build_in};

    #[test]
    fn every_example_compiles_without_problems() {
        // The examples are for a gateway that names the proxies in front of it (an IP
        // policy's httpHeader is otherwise believed as sent, with a warning).
        let mut settings = crate::model::GatewaySettings::default();
        settings.trusted_proxies.networks = vec!["10.0.0.0/8".parse().unwrap()];
        for kind in KINDS.iter().filter(|k| built_here(k)) {
            let config: serde_json::Value = serde_json::from_str(kind.example)
                .unwrap_or_else(|e| panic!("{}: example is not JSON: {e}", kind.id));
            let (policy, problems) = build_in(kind, config, &|_| Some("x".into()), &settings);
            assert!(
                policy.is_some() && problems.errors.is_empty() && problems.warnings.is_empty(),
                "{}: {:?}",
                kind.id,
                problems
            );
        }
    }

    /// Whether this build runs `kind`: tollgate-lite.wasm (no `jwt` feature) leaves out the
    /// policies that verify JWT signatures.
    fn built_here(kind: &PolicyKind) -> bool {
        cfg!(feature = "jwt") || !kind.capabilities.verifies_jwt
    }

    #[cfg(not(feature = "jwt"))]
    #[test]
    fn without_the_jwt_feature_each_jwt_policy_is_refused_naming_the_module_to_load() {
        let left_out: Vec<&PolicyKind> = KINDS.iter().filter(|k| !built_here(k)).collect();
        let ids: Vec<&str> = left_out.iter().map(|k| k.id).collect();
        assert_eq!(ids, ["jwt", "keycloak-oauth"]);
        for kind in left_out {
            let config: serde_json::Value = serde_json::from_str(kind.example).unwrap();
            let (policy, problems) = build(kind, config, &|_| Some("x".into()));
            assert!(policy.is_none(), "{}", kind.id);
            assert!(
                problems.errors.iter().any(|e| e.contains(
                    "this policy verifies JWT signatures, which tollgate-lite.wasm leaves out: load tollgate.wasm"
                )),
                "{}: {:?}",
                kind.id,
                problems
            );
        }
    }

    #[test]
    fn every_field_read_is_documented_and_every_documented_field_is_read() {
        for kind in KINDS.iter().filter(|k| built_here(k)) {
            let config: serde_json::Value = serde_json::from_str(kind.example).unwrap();
            let asked = recorder::record(|| {
                let _ = build(kind, config, &|_| Some("x".into()));
            });
            let asked: Vec<String> = asked
                .iter()
                .map(|p| p.strip_prefix("config.").unwrap_or(p).to_string())
                .collect();
            let documented: Vec<&str> = kind.fields.iter().map(|f| f.name).collect();
            for a in &asked {
                assert!(
                    documented.contains(&a.as_str()),
                    "{}: reads `{a}` but does not document it",
                    kind.id
                );
            }
            for d in &documented {
                assert!(
                    asked.iter().any(|a| a == d),
                    "{}: documents `{d}` but its example never makes the parser read it",
                    kind.id
                );
            }
        }
    }

    // Reads the repository's README: native only (the wasm test run has no file system).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn the_readme_reference_is_generated_from_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
            panic!("README.md lacks the {START} / {END} markers");
        };
        let current = readme[start + START.len()..end].trim();
        let generated = reference();
        if current != generated {
            if std::env::var_os("TOLLGATE_BLESS").is_some() {
                let updated = format!(
                    "{}{START}\n{generated}\n{END}{}",
                    &readme[..start],
                    &readme[end + END.len()..]
                );
                std::fs::write(&path, updated).unwrap();
                return;
            }
            panic!(
                "README.md's policy reference is out of date: run `TOLLGATE_BLESS=1 cargo test -p tollgate-core docs` and commit README.md"
            );
        }
    }
}
