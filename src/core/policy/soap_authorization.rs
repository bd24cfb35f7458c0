//! SOAP Authorization (Apiman plugin `soap-authorization-policy`): Authorization by SOAP action
//! instead of verb and path: rules of action + role over the roles an earlier authentication
//! policy extracted, combined as in Authorization (`multiMatch`, `requestUnmatched`).
//!
//! The action is the `SOAPAction` header (SOAP 1.1) or, without it, the `action` parameter of an
//! `application/soap+xml` content type (SOAP 1.2). Actions compare case-insensitively, `*`
//! matches any. No action at all fails with 13003 before roles are looked at, as in Apiman.
//!
//! Differences from Apiman: surrounding quotes are stripped from the header and from the rules
//! (`SOAPAction: "urn:x"` is how SOAP 1.1 clients send it; Apiman compares it with its quotes,
//! so a rule written `urn:x` never matched and one written `"urn:x"` did: both match now); the
//! SOAP 1.2 `action` parameter is read (Apiman answers 13003); rules without `action` or `role`
//! refuse the configuration.

use super::authorization::required;
use super::role_rules::{self, Combine};
use super::{
    Capabilities, Context, FailureType, FieldDoc, Phase, PhaseSet, Policy, PolicyFailure,
    PolicyKind, Verdict,
};
use crate::http::Request;
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "soap-authorization",
    name: "SOAP Authorization",
    apiman_names: &["soap-authorization-policy", "SoapAuthorizationPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Allows a SOAP request only if the user holds the roles its matching rules (by SOAP action) require; roles come from an authentication policy earlier in the chain.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "13003: 500 Other, `The SOAP Action header is not defined.`; 10009: 403 Authorization (a role is missing); 10010: 500 Other (no roles extracted)",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "rules",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "the rules; those matching the request's action decide",
        },
        FieldDoc {
            name: "rules[].action",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "`*` or a SOAP action (case-insensitive; surrounding quotes are ignored); required",
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
    example: r#"{"rules": [{"action": "urn:orders#cancel", "role": "admin"}, {"action": "*", "role": "soap-user"}],
                 "multiMatch": "all", "requestUnmatched": "fail"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

/// The plugin's SOAP_ACTION_NOTDEFINED.
pub const NO_ACTION_CODE: u32 = 13003;

struct Rule {
    /// `None` matches every action (`*`).
    action: Option<String>,
    role: String,
}

pub struct SoapAuthorization {
    rules: Vec<Rule>,
    combine: Combine,
}

fn build(f: &mut Fields, problems: &mut Problems) -> Option<SoapAuthorization> {
    let mut rules = Vec::new();
    let mut ok = true;
    for (path, value) in f.array(&["rules"], problems) {
        let Some(mut r) = Fields::of(value, &path, problems) else {
            ok = false;
            continue;
        };
        let action = required(&mut r, "action", problems);
        let role = required(&mut r, "role", problems);
        r.finish(problems);
        match (action, role) {
            (Some(action), Some(role)) => {
                let action = unquote(&action);
                rules.push(Rule {
                    action: (action != "*").then(|| action.to_string()),
                    role,
                })
            }
            _ => ok = false,
        }
    }
    let combine = Combine::parse(f, problems);
    ok.then_some(SoapAuthorization { rules, combine })
}

/// `"urn:x"` → `urn:x`: SOAP 1.1 sends the action as a quoted string.
fn unquote(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(t)
        .trim()
}

/// The request's SOAP action: `SOAPAction`, else the `action` parameter of an
/// `application/soap+xml` content type (SOAP 1.2). `None` when neither carries one.
fn soap_action(request: &Request) -> Option<&str> {
    if let Some(header) = request
        .headers
        .get("soapaction")
        .filter(|v| !v.trim().is_empty())
    {
        return Some(unquote(header));
    }
    let content_type = request.headers.get("content-type")?;
    let mut parts = content_type.split(';');
    let media = parts.next()?.trim();
    if !media.eq_ignore_ascii_case("application/soap+xml") {
        return None;
    }
    parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("action")
            .then(|| unquote(value))
            .filter(|v| !v.is_empty())
    })
}

impl Policy for SoapAuthorization {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let Some(action) = soap_action(request) else {
            return Verdict::Fail(PolicyFailure::new(
                FailureType::Other,
                NO_ACTION_CODE,
                "The SOAP Action header is not defined.",
            ));
        };
        let Some(roles) = cx.identity().roles.as_deref() else {
            return Verdict::Fail(role_rules::missing_roles());
        };
        let required = self
            .rules
            .iter()
            .filter(|r| {
                r.action
                    .as_deref()
                    .is_none_or(|a| a.eq_ignore_ascii_case(action))
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
    use serde_json::json;

    fn policy() -> Box<dyn Policy> {
        compile(
            &KIND,
            json!({"rules": [
                {"action": "urn:orders#cancel", "role": "admin"},
                {"action": "\"urn:orders#list\"", "role": "reader"}
            ]}),
        )
    }

    fn decide(p: &dyn Policy, headers: &[(&str, &str)], roles: Option<&[&str]>) -> Verdict {
        let mut f = Fixture::new();
        f.state.identity.roles = roles.map(|r| r.iter().map(|s| s.to_string()).collect());
        f.on_request(p, &mut request("POST", headers))
    }

    #[test]
    fn a_quoted_soapaction_matches_an_unquoted_rule() {
        let p = policy();
        let v = decide(
            p.as_ref(),
            &[("soapaction", "\"urn:orders#cancel\"")],
            Some(&["admin"]),
        );
        assert!(is_continue(&v));
    }

    #[test]
    fn a_quoted_rule_matches_an_unquoted_soapaction() {
        let p = policy();
        let v = decide(
            p.as_ref(),
            &[("soapaction", "urn:orders#list")],
            Some(&["reader"]),
        );
        assert!(is_continue(&v));
    }

    #[test]
    fn actions_compare_case_insensitively() {
        let p = policy();
        let v = decide(
            p.as_ref(),
            &[("soapaction", "URN:ORDERS#CANCEL")],
            Some(&["admin"]),
        );
        assert!(is_continue(&v));
    }

    #[test]
    fn a_missing_role_is_403_with_code_10009() {
        let p = policy();
        let f = failure(decide(
            p.as_ref(),
            &[("soapaction", "\"urn:orders#cancel\"")],
            Some(&["reader"]),
        ));
        assert_eq!((f.code, f.status()), (10009, 403));
    }

    #[test]
    fn the_soap_1_2_action_parameter_is_read() {
        let p = policy();
        let ct = "application/soap+xml; charset=utf-8; action=\"urn:orders#cancel\"";
        let v = decide(p.as_ref(), &[("content-type", ct)], Some(&["admin"]));
        assert!(is_continue(&v));
        let f = failure(decide(
            p.as_ref(),
            &[("content-type", ct)],
            Some(&["reader"]),
        ));
        assert_eq!(f.code, 10009);
    }

    #[test]
    fn soapaction_wins_over_the_content_type_parameter() {
        let p = policy();
        let headers = [
            ("soapaction", "urn:orders#list"),
            (
                "content-type",
                "application/soap+xml;action=urn:orders#cancel",
            ),
        ];
        assert!(is_continue(&decide(
            p.as_ref(),
            &headers,
            Some(&["reader"])
        )));
    }

    #[test]
    fn no_action_is_500_with_code_13003_before_roles_are_checked() {
        let p = policy();
        for headers in [
            vec![],
            vec![("soapaction", "  ")],
            vec![("content-type", "text/xml; action=urn:orders#list")],
        ] {
            let f = failure(decide(p.as_ref(), &headers, None));
            assert_eq!(
                (f.failure_type, f.code, f.status()),
                (FailureType::Other, 13003, 500)
            );
            assert_eq!(f.message, "The SOAP Action header is not defined.");
        }
    }

    #[test]
    fn no_roles_extracted_is_500_with_code_10010() {
        let p = policy();
        let f = failure(decide(
            p.as_ref(),
            &[("soapaction", "urn:orders#list")],
            None,
        ));
        assert_eq!((f.code, f.status()), (10010, 500));
    }

    #[test]
    fn a_star_rule_matches_every_action_and_any_needs_one_role() {
        let p = compile(
            &KIND,
            json!({"rules": [{"action": "*", "role": "soap-user"}, {"action": "urn:x", "role": "x"}],
                   "multiMatch": "any"}),
        );
        assert!(is_continue(&decide(
            p.as_ref(),
            &[("soapaction", "urn:x")],
            Some(&["soap-user"])
        )));
    }

    #[test]
    fn an_unmatched_action_gets_request_unmatched() {
        let pass = compile(
            &KIND,
            json!({"rules": [{"action": "urn:x", "role": "x"}], "requestUnmatched": "pass"}),
        );
        assert!(is_continue(&decide(
            pass.as_ref(),
            &[("soapaction", "urn:y")],
            Some(&[])
        )));
        let f = failure(decide(
            policy().as_ref(),
            &[("soapaction", "urn:y")],
            Some(&["admin", "reader"]),
        ));
        assert_eq!(f.code, 10009);
    }

    #[test]
    fn a_rule_without_action_or_role_refuses_the_configuration() {
        assert_eq!(
            errors(&KIND, json!({"rules": [{"role": "r"}, {"action": "a"}]})),
            vec![
                "config.rules[0].action: is required",
                "config.rules[1].role: is required"
            ]
        );
    }
}
