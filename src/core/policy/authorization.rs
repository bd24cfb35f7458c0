//! Authorization (Apiman's `AuthorizationPolicy`): rules of verb, path regex and role, checked
//! against the roles an authentication policy earlier in the chain extracted (BASIC with static
//! identities' `roles`, Keycloak, JWT with a roles claim, External Authorization).
//!
//! As in Apiman: the rules whose verb (`*` or the method, case-insensitive) and path pattern
//! (a regex matching the whole resource path) match the request apply; `multiMatch: all`
//! requires every applying rule's role, `any` one of them; no applying rule means
//! `requestUnmatched`. No roles extracted at all is Apiman's configuration error (500, 10010).
//!
//! Differences from Apiman: a rule without `verb`, `pathPattern` or `role` refuses the
//! configuration (Apiman never matches a rule without a verb or role, and fails every request
//! of a rule without a pattern); the documented boolean forms of `multiMatch` and
//! `requestUnmatched` are read (Apiman's mapper refuses them).

use super::role_rules::{self, Combine};
use super::{Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::http::Request;
use crate::json::{Fields, Problems};
use crate::pattern::Pattern;

pub const KIND: PolicyKind = PolicyKind {
    id: "authorization",
    name: "Authorization",
    apiman_names: &["AuthorizationPolicy", "authorization-policy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Allows a request only if the user holds the roles its matching rules (verb + path regex) require; roles come from an authentication policy earlier in the chain.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10009: 403 Authorization, `The user is not authorized to make this request (a required role is missing).`; 10010: 500 Other when no authentication policy before it extracted roles",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "rules",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "the rules; those matching the request decide",
        },
        FieldDoc {
            name: "rules[].verb",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "`*` or an HTTP method (case-insensitive); required",
        },
        FieldDoc {
            name: "rules[].pathPattern",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "a regex that must match the whole resource path (below the API, without the query); required",
        },
        FieldDoc {
            name: "rules[].role",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the role the user needs when the rule matches (case-sensitive); required",
        },
        role_rules::MULTI_MATCH,
        role_rules::REQUEST_UNMATCHED,
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"rules": [{"verb": "*", "pathPattern": "/admin/.*", "role": "admin"},
                           {"verb": "GET", "pathPattern": "/.*", "role": "reader"}],
                 "multiMatch": "all", "requestUnmatched": "fail"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

struct Rule {
    /// `None` matches every verb (`*`).
    verb: Option<String>,
    path: Pattern,
    role: String,
}

pub struct Authorization {
    rules: Vec<Rule>,
    combine: Combine,
}

/// A required, non-blank string field of a rule.
pub(super) fn required(rule: &mut Fields, name: &str, problems: &mut Problems) -> Option<String> {
    match rule.string(&[name], problems).map(|s| s.trim().to_string()) {
        Some(s) if !s.is_empty() => Some(s),
        Some(_) => {
            problems.error(&rule.field_path(name), "must not be empty");
            None
        }
        None => {
            if !rule.has(name) {
                problems.error(&rule.field_path(name), "is required");
            }
            None
        }
    }
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<Authorization> {
    let mut rules = Vec::new();
    let mut ok = true;
    for (path, value) in f.array(&["rules"], problems) {
        let Some(mut r) = Fields::of(value, &path, problems) else {
            ok = false;
            continue;
        };
        let verb = required(&mut r, "verb", problems);
        let pattern = match rule_string(&mut r, "pathPattern", problems) {
            Some(p) => match Pattern::full(&p) {
                Ok(regex) => Some(regex),
                Err(message) => {
                    problems.error(&r.field_path("pathPattern"), message);
                    None
                }
            },
            None => None,
        };
        let role = required(&mut r, "role", problems);
        r.finish(problems);
        match (verb, pattern, role) {
            (Some(verb), Some(path), Some(role)) => rules.push(Rule {
                verb: (verb != "*").then_some(verb),
                path,
                role,
            }),
            _ => ok = false,
        }
    }
    let combine = Combine::parse(f, problems);
    ok.then_some(Authorization { rules, combine })
}

/// A required string field kept as written (a regex may start or end with spaces).
fn rule_string(rule: &mut Fields, name: &str, problems: &mut Problems) -> Option<String> {
    let value = rule.string(&[name], problems);
    if value.is_none() && !rule.has(name) {
        problems.error(&rule.field_path(name), "is required");
    }
    value
}

impl Policy for Authorization {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let Some(roles) = cx.identity().roles.as_deref() else {
            return Verdict::Fail(role_rules::missing_roles());
        };
        let destination = cx.destination();
        let required = self
            .rules
            .iter()
            .filter(|r| {
                r.verb
                    .as_deref()
                    .is_none_or(|v| v.eq_ignore_ascii_case(&request.method))
                    && r.path.is_match(destination)
            })
            .map(|r| r.role.as_str());
        if self.combine.authorized(required, roles) {
            Verdict::Continue
        } else {
            Verdict::Fail(role_rules::not_authorized())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use crate::policy::FailureType;
    use serde_json::json;

    fn policy(extra: serde_json::Value) -> Box<dyn Policy> {
        let mut config = json!({"rules": [
            {"verb": "*", "pathPattern": "/admin/.*", "role": "admin"},
            {"verb": "GET", "pathPattern": "/.*", "role": "reader"}
        ]});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        compile(&KIND, config)
    }

    /// The verdict for `method destination` by a user holding `roles` (`None`: no roles).
    fn decide(p: &dyn Policy, method: &str, destination: &str, roles: Option<&[&str]>) -> Verdict {
        let mut f = Fixture::at(destination);
        f.state.identity.roles = roles.map(|r| r.iter().map(|s| s.to_string()).collect());
        f.on_request(p, &mut request(method, &[]))
    }

    #[test]
    fn a_user_holding_the_matching_rules_role_passes() {
        let p = policy(json!({}));
        assert!(is_continue(&decide(
            p.as_ref(),
            "GET",
            "/orders",
            Some(&["reader"])
        )));
    }

    #[test]
    fn a_missing_role_is_403_with_code_10009() {
        let p = policy(json!({}));
        let f = failure(decide(p.as_ref(), "GET", "/orders", Some(&["writer"])));
        assert_eq!(
            (f.failure_type, f.code, f.status()),
            (FailureType::Authorization, 10009, 403)
        );
        assert_eq!(
            f.message,
            "The user is not authorized to make this request (a required role is missing)."
        );
    }

    #[test]
    fn no_roles_extracted_is_500_with_code_10010() {
        let p = policy(json!({}));
        let f = failure(decide(p.as_ref(), "GET", "/orders", None));
        assert_eq!(
            (f.failure_type, f.code, f.status()),
            (FailureType::Other, 10010, 500)
        );
        assert!(f.message.starts_with("No roles have been extracted"));
    }

    #[test]
    fn an_empty_role_list_is_not_missing_roles_but_a_denial() {
        let p = policy(json!({}));
        assert_eq!(
            failure(decide(p.as_ref(), "GET", "/orders", Some(&[]))).code,
            10009
        );
    }

    #[test]
    fn multi_match_all_requires_every_matching_rules_role() {
        let p = policy(json!({"multiMatch": "all"}));
        assert!(matches!(
            decide(p.as_ref(), "GET", "/admin/users", Some(&["admin"])),
            Verdict::Fail(_)
        ));
        assert!(is_continue(&decide(
            p.as_ref(),
            "GET",
            "/admin/users",
            Some(&["admin", "reader"])
        )));
    }

    #[test]
    fn multi_match_any_requires_one_matching_rules_role() {
        let p = policy(json!({"multiMatch": "any"}));
        assert!(is_continue(&decide(
            p.as_ref(),
            "GET",
            "/admin/users",
            Some(&["reader"])
        )));
    }

    #[test]
    fn the_legacy_boolean_multimatch_true_means_all() {
        let p = policy(json!({"multimatch": true}));
        assert!(matches!(
            decide(p.as_ref(), "GET", "/admin/users", Some(&["reader"])),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn an_unmatched_request_fails_by_default() {
        let p = policy(json!({}));
        // Only the `*` admin rule could match a DELETE, and it does not match this path.
        assert_eq!(
            failure(decide(p.as_ref(), "DELETE", "/orders/1", Some(&["admin"]))).code,
            10009
        );
    }

    #[test]
    fn request_unmatched_pass_lets_an_unmatched_request_through() {
        let p = policy(json!({"requestUnmatched": "pass"}));
        assert!(is_continue(&decide(
            p.as_ref(),
            "DELETE",
            "/orders/1",
            Some(&[])
        )));
    }

    #[test]
    fn request_unmatched_pass_still_needs_roles_extracted() {
        let p = policy(json!({"requestUnmatched": "pass"}));
        assert_eq!(
            failure(decide(p.as_ref(), "DELETE", "/orders/1", None)).code,
            10010
        );
    }

    #[test]
    fn verbs_compare_case_insensitively() {
        let p = policy(json!({}));
        assert!(is_continue(&decide(
            p.as_ref(),
            "get",
            "/orders",
            Some(&["reader"])
        )));
    }

    #[test]
    fn path_patterns_must_match_the_whole_path() {
        let p = compile(
            &KIND,
            json!({"rules": [{"verb": "*", "pathPattern": "/admin", "role": "admin"}],
                   "requestUnmatched": "pass"}),
        );
        // `/admin` does not match `/admin/x`: unmatched, so it passes without the role.
        assert!(is_continue(&decide(
            p.as_ref(),
            "GET",
            "/admin/x",
            Some(&[])
        )));
        assert!(matches!(
            decide(p.as_ref(), "GET", "/admin", Some(&[])),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn an_empty_resource_matches_as_slash() {
        let p = compile(
            &KIND,
            json!({"rules": [{"verb": "*", "pathPattern": "/", "role": "root"}]}),
        );
        assert!(is_continue(&decide(p.as_ref(), "GET", "", Some(&["root"]))));
    }

    #[test]
    fn a_rule_without_verb_path_or_role_refuses_the_configuration() {
        let e = errors(&KIND, json!({"rules": [{"role": " "}]}));
        assert_eq!(
            e,
            vec![
                "config.rules[0].verb: is required",
                "config.rules[0].pathPattern: is required",
                "config.rules[0].role: must not be empty"
            ]
        );
    }

    #[test]
    fn an_invalid_path_pattern_names_its_path() {
        let e = errors(
            &KIND,
            json!({"rules": [{"verb": "*", "pathPattern": "(", "role": "r"}]}),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .starts_with("config.rules[0].pathPattern: \"(\" is not a valid regular expression"));
    }
}
