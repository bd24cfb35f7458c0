//! Reading a policy as Apiman writes it (`policyImpl` + `policyJsonConfig`) or in tollgate's
//! friendly form (`policy` + `config`) into a spec the registry compiles.

use serde_json::Value;

use super::{Env, PolicySpec};
use crate::json::{describe, Fields, Problems};
use crate::policy;

/// The names a `policyImpl` can be known by, most specific first:
/// `class:io.apiman.gateway.engine.policies.IPWhitelistPolicy` gives `IPWhitelistPolicy`;
/// `plugin:io.apiman.plugins:apiman-plugins-cors-policy:1.5.1.Final:war/io.apiman.plugins.cors_policy.CorsPolicy`
/// gives `cors-policy`, `apiman-plugins-cors-policy` and `CorsPolicy`.
pub fn impl_names(policy_impl: &str) -> Vec<String> {
    let s = policy_impl.trim();
    if let Some(class) = s.strip_prefix("class:") {
        return vec![simple_class_name(class).to_string()];
    }
    if let Some(coordinates) = s.strip_prefix("plugin:") {
        let (gav, class) = coordinates.split_once('/').unwrap_or((coordinates, ""));
        let mut names = Vec::new();
        if let Some(artifact) = gav.split(':').nth(1) {
            if let Some(short) = artifact.strip_prefix("apiman-plugins-") {
                names.push(short.to_string());
            }
            names.push(artifact.to_string());
        }
        if !class.is_empty() {
            names.push(simple_class_name(class).to_string());
        }
        return names;
    }
    vec![simple_class_name(s).to_string()]
}

fn simple_class_name(class: &str) -> &str {
    class.rsplit('.').next().unwrap_or(class).trim()
}

/// Reads one policy entry at `path`: its kind and its configuration as a JSON object.
pub fn parse_policy(
    v: &Value,
    path: &str,
    env: Env,
    problems: &mut Problems,
) -> Option<PolicySpec> {
    let mut f = Fields::of(v, path, problems)?;
    let friendly = f.string(&["policy"], problems);
    let policy_impl = f.string(&["policyImpl"], problems);
    let (name_shown, names) = match (&friendly, &policy_impl) {
        (Some(id), _) => (id.clone(), vec![id.trim().to_string()]),
        (None, Some(imp)) => (imp.clone(), impl_names(imp)),
        (None, None) => {
            problems.error(
                path,
                "a policy needs \"policy\" (tollgate id) or \"policyImpl\" (Apiman)",
            );
            f.ignore(&["config", "policyJsonConfig"]);
            f.finish(problems);
            return None;
        }
    };
    // The friendly form takes an object; Apiman's a JSON string. Accept either in either field.
    let config_raw = f.raw(&["config", "policyJsonConfig"]);
    f.ignore(&["policyDefinitionId", "name", "description"]);
    // Apiman's gateway has no per-policy switch: `enabled: false` must neither be ignored
    // (running a policy its author turned off) nor honoured (silently opening an API).
    let disabled = f.bool(&["enabled"], problems) == Some(false);
    if disabled {
        problems.error(&f.field_path("enabled"), DISABLED);
    }
    f.finish(problems);
    if disabled {
        return None;
    }

    let kind = names.iter().find_map(|n| policy::kind_by_name(n));
    let Some(kind) = kind else {
        problems.error(
            path,
            format!(
                "unknown policy \"{name_shown}\"; known: {}",
                policy::KINDS
                    .iter()
                    .map(|k| k.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return None;
    };

    let config_field = match config_raw {
        Some(("policyJsonConfig", _)) => "policyJsonConfig",
        _ => "config",
    };
    let config_path = config_field;
    let config: Value = match config_raw {
        None => Value::Object(Default::default()),
        Some((_, Value::String(text))) if text.trim().is_empty() => {
            Value::Object(Default::default())
        }
        Some((_, Value::String(text))) => {
            match serde_json::from_str::<Value>(&substitute_properties(text, env)) {
                Ok(v) => v,
                Err(e) => {
                    problems.errors.push(format!(
                        "{path} ({}): {config_path} is not valid JSON: {e}",
                        kind.id
                    ));
                    return None;
                }
            }
        }
        Some((_, v @ Value::Object(_))) => v.clone(),
        Some((_, other)) => {
            problems.errors.push(format!(
                "{path} ({}): {config_path} must be a JSON object or a string holding one, found {}",
                kind.id,
                describe(other)
            ));
            return None;
        }
    };
    if let Some(switch) = config.get("enabled") {
        let off = match switch {
            Value::Bool(b) => !b,
            Value::String(s) => s.trim().eq_ignore_ascii_case("false"),
            _ => false,
        };
        if off {
            problems.errors.push(format!(
                "{path} ({}): {config_path}.enabled: {DISABLED}",
                kind.id
            ));
            return None;
        }
    }
    Some(PolicySpec {
        path: path.to_string(),
        kind,
        config_field,
        config,
    })
}

const DISABLED: &str = "a policy cannot be disabled in place (Apiman's gateway has no such switch, and tollgate will neither run a policy marked disabled nor skip one silently): remove it from the list";

/// Apiman resolves `${name}` in policy configurations from system properties and the
/// environment. Here the environment is the one Envoy gives the VM
/// (`vm_config.environment_variables`); unknown names are left as written.
pub fn substitute_properties(text: &str, env: Env) -> String {
    if !text.contains("${") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                let (var, default) = match name.split_once(':') {
                    Some((v, d)) => (v, Some(d)),
                    None => (name, None),
                };
                match env(var.trim()).or(default.map(str::to_string)) {
                    Some(value) => out.push_str(&json_escape_inner(&value)),
                    None => out.push_str(&rest[start..start + 2 + end + 1]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes a value for use inside a JSON string literal (substitution happens in JSON text).
fn json_escape_inner(value: &str) -> String {
    let quoted = Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> (Option<PolicySpec>, Problems) {
        let mut p = Problems::default();
        let c = parse_policy(&v, "apis[0].apiPolicies[0]", &crate::config::no_env, &mut p);
        (c, p)
    }

    #[test]
    fn class_impls_name_the_class() {
        assert_eq!(
            impl_names("class:io.apiman.gateway.engine.policies.IPWhitelistPolicy"),
            vec!["IPWhitelistPolicy"]
        );
    }

    #[test]
    fn plugin_impls_name_the_artifact_and_the_class() {
        assert_eq!(
            impl_names("plugin:io.apiman.plugins:apiman-plugins-cors-policy:1.5.1.Final:war/io.apiman.plugins.cors_policy.CorsPolicy"),
            vec!["cors-policy", "apiman-plugins-cors-policy", "CorsPolicy"]
        );
    }

    #[test]
    fn apiman_form_with_a_json_string_config_compiles() {
        let (c, p) = parse(json!({
            "policyImpl": "class:io.apiman.gateway.engine.policies.IPBlacklistPolicy",
            "policyJsonConfig": "{\"ipList\":[\"10.0.0.1\"],\"responseCode\":403}"
        }));
        assert!(p.is_ok(), "{:?}", p.errors);
        assert_eq!(c.unwrap().kind.id, "ip-blocklist");
    }

    #[test]
    fn friendly_form_with_an_object_config_compiles() {
        let (c, p) = parse(json!({"policy": "ip-allowlist", "config": {"ipList": ["10.0.0.0/8"]}}));
        assert!(p.is_ok(), "{:?}", p.errors);
        assert_eq!(c.unwrap().kind.id, "ip-allowlist");
    }

    #[test]
    fn an_unknown_policy_is_an_error_listing_the_known_ones() {
        let (c, p) = parse(json!({"policy": "teleport", "config": {}}));
        assert!(c.is_none());
        assert_eq!(p.errors.len(), 1);
        assert!(
            p.errors[0].starts_with(
                "apis[0].apiPolicies[0]: unknown policy \"teleport\"; known: ip-allowlist"
            ),
            "{}",
            p.errors[0]
        );
    }

    #[test]
    fn every_apiman_core_policy_class_loads_as_an_implemented_policy() {
        for class in [
            "IPWhitelistPolicy",
            "IPBlacklistPolicy",
            "BasicAuthenticationPolicy",
            "AuthorizationPolicy",
            "RateLimitingPolicy",
            "QuotaPolicy",
            "TransferQuotaPolicy",
            "IgnoredResourcesPolicy",
            "TimeRestrictedAccessPolicy",
            "CachingResourcesPolicy",
            "CachingPolicy",
            "URLRewritingPolicy",
        ] {
            let names = impl_names(&format!("class:io.apiman.gateway.engine.policies.{class}"));
            assert!(
                names.iter().any(|n| policy::kind_by_name(n).is_some()),
                "{class} has no implementation"
            );
        }
    }

    #[test]
    fn a_policy_marked_enabled_false_is_refused_not_run_or_skipped() {
        let (c, p) = parse(json!({"policy": "ip-allowlist", "enabled": false,
                                  "config": {"ipList": ["10.0.0.0/8"]}}));
        assert!(c.is_none());
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert!(
            p.errors[0].starts_with(
                "apis[0].apiPolicies[0].enabled: a policy cannot be disabled in place"
            ),
            "{}",
            p.errors[0]
        );
    }

    #[test]
    fn enabled_false_inside_a_policy_configuration_is_refused() {
        let (c, p) = parse(json!({
            "policyImpl": "class:io.apiman.gateway.engine.policies.IPBlacklistPolicy",
            "policyJsonConfig": "{\"enabled\":\"false\",\"ipList\":[\"10.0.0.1\"]}"
        }));
        assert!(c.is_none());
        assert!(
            p.errors[0].starts_with(
                "apis[0].apiPolicies[0] (ip-blocklist): policyJsonConfig.enabled: a policy cannot be disabled in place"
            ),
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn a_policy_marked_enabled_true_loads() {
        let (c, p) = parse(json!({"policy": "ip-allowlist", "enabled": true, "config": {}}));
        assert!(p.is_ok() && c.is_some(), "{:?}", p.errors);
    }

    #[test]
    fn a_config_string_that_is_not_json_is_an_error() {
        let (_, p) = parse(json!({"policy": "ip-allowlist", "policyJsonConfig": "{ipList:"}));
        assert!(
            p.errors[0].starts_with(
                "apis[0].apiPolicies[0] (ip-allowlist): policyJsonConfig is not valid JSON"
            ),
            "{}",
            p.errors[0]
        );
    }

    #[test]
    fn property_placeholders_resolve_from_the_environment_or_their_default() {
        let env = |name: &str| (name == "REALM").then(|| "a\"b".to_string());
        assert_eq!(
            substitute_properties(
                "{\"r\":\"${REALM}\",\"d\":\"${NOPE_NOT_SET:x}\",\"k\":\"${NOPE_NOT_SET}\"}",
                &env
            ),
            "{\"r\":\"a\\\"b\",\"d\":\"x\",\"k\":\"${NOPE_NOT_SET}\"}"
        );
    }
}
