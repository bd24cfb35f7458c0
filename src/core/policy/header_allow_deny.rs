//! Header Allow/Deny (Apiman plugin `header-allow-deny-policy`): allow or refuse requests by the
//! values of named headers. Per entry, the first rule whose regex matches any value of the header
//! decides; without a match, `allowIfNoRulesMatch` does; without the header, `allowIfHeaderMissing`.

use super::{
    Capabilities, Context, FailureType, FieldDoc, Phase, PhaseSet, Policy, PolicyFailure,
    PolicyKind, Verdict,
};
use crate::http::Request;
use crate::json::{Fields, Problems};
use crate::pattern::Pattern;

pub const KIND: PolicyKind = PolicyKind {
    id: "header-allow-deny",
    name: "Header Allow/Deny",
    apiman_names: &["header-allow-deny-policy", "HeaderAllowDenyPolicy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Allows or refuses requests by the values of their headers, first matching rule per header.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "403 Authorization, code 403: `Request not permitted as header '<h>' missing.` / `Request not permitted as no rules matched.` / `Header '<h>:<v>' not permitted.`",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "entries",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "one entry per header; every entry must allow the request",
        },
        FieldDoc {
            name: "entries[].headerName",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "the header (all its values are checked: any value matching a rule counts)",
        },
        FieldDoc {
            name: "entries[].allowIfHeaderMissing",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "allow requests without the header",
        },
        FieldDoc {
            name: "entries[].allowIfNoRulesMatch",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "allow requests whose header matches no rule",
        },
        FieldDoc {
            name: "entries[].rules",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "tried in order; the first rule matching any value decides",
        },
        FieldDoc {
            name: "entries[].rules[].headerValueRegex",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning: "a regex that must match a whole value",
        },
        FieldDoc {
            name: "entries[].rules[].allowRequest",
            aliases: &[],
            ty: "boolean",
            default: "false",
            apiman: true,
            meaning: "allow (true) or refuse (false) when the rule matches",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"entries": [{"headerName": "X-Tenant", "allowIfHeaderMissing": false, "allowIfNoRulesMatch": false, "rules": [{"headerValueRegex": "acme|globex", "allowRequest": true}]}]}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

fn build(f: &mut Fields, problems: &mut Problems) -> Option<HeaderAllowDeny> {
    let mut entries = Vec::new();
    let mut ok = true;
    for (path, value) in f.array(&["entries"], problems) {
        let Some(mut e) = Fields::of(value, &path, problems) else {
            ok = false;
            continue;
        };
        let header = match e.string(&["headerName"], problems) {
            Some(h) if !h.trim().is_empty() => h.trim().to_string(),
            _ => {
                problems.error(&e.field_path("headerName"), "is required");
                ok = false;
                String::new()
            }
        };
        let allow_if_missing = e.bool(&["allowIfHeaderMissing"], problems).unwrap_or(false);
        let allow_if_no_match = e.bool(&["allowIfNoRulesMatch"], problems).unwrap_or(false);
        let mut rules = Vec::new();
        for (rpath, rv) in e.array(&["rules"], problems) {
            let Some(mut r) = Fields::of(rv, &rpath, problems) else {
                ok = false;
                continue;
            };
            let allow = r.bool(&["allowRequest"], problems).unwrap_or(false);
            match r.string(&["headerValueRegex"], problems) {
                Some(pattern) => match Pattern::full(&pattern) {
                    Ok(regex) => rules.push(Rule { regex, allow }),
                    Err(message) => {
                        problems.error(&r.field_path("headerValueRegex"), message);
                        ok = false;
                    }
                },
                None => {
                    problems.error(&r.field_path("headerValueRegex"), "is required");
                    ok = false;
                }
            }
            r.finish(problems);
        }
        e.finish(problems);
        entries.push(Entry {
            header,
            allow_if_missing,
            allow_if_no_match,
            rules,
        });
    }
    ok.then_some(HeaderAllowDeny { entries })
}

/// The plugin uses 403 as its failure code.
pub const FAILURE_CODE: u32 = 403;

struct Rule {
    regex: Pattern,
    allow: bool,
}

struct Entry {
    header: String,
    allow_if_missing: bool,
    allow_if_no_match: bool,
    rules: Vec<Rule>,
}

pub struct HeaderAllowDeny {
    entries: Vec<Entry>,
}

fn refuse(message: String) -> Verdict {
    Verdict::Fail(PolicyFailure::new(
        FailureType::Authorization,
        FAILURE_CODE,
        message,
    ))
}

impl Policy for HeaderAllowDeny {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, _cx: &mut Context, request: &mut Request) -> Verdict {
        for entry in &self.entries {
            let values: Vec<&str> = request.headers.get_all(&entry.header).collect();
            if values.is_empty() {
                if entry.allow_if_missing {
                    continue;
                }
                return refuse(format!(
                    "Request not permitted as header '{}' missing.",
                    entry.header
                ));
            }
            let decision = entry
                .rules
                .iter()
                .find(|r| values.iter().any(|v| r.regex.is_match(v)))
                .map(|r| r.allow);
            match decision {
                Some(true) => {}
                Some(false) => {
                    return refuse(format!(
                        "Header '{}:[{}]' not permitted.",
                        entry.header,
                        values.join(", ")
                    ))
                }
                None if entry.allow_if_no_match => {}
                None => return refuse("Request not permitted as no rules matched.".to_string()),
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    fn policy(allow_if_missing: bool, allow_if_no_match: bool) -> Box<dyn Policy> {
        compile(
            &KIND,
            json!({"entries": [{
                "headerName": "X-Client-Tier",
                "allowIfHeaderMissing": allow_if_missing,
                "allowIfNoRulesMatch": allow_if_no_match,
                "rules": [
                    {"headerValueRegex": "gold|silver", "allowRequest": true},
                    {"headerValueRegex": "banned.*", "allowRequest": false},
                    {"headerValueRegex": ".*", "allowRequest": true}
                ]
            }]}),
        )
    }

    fn decide(p: &dyn Policy, headers: &[(&str, &str)]) -> Verdict {
        Fixture::new().on_request(p, &mut request("GET", headers))
    }

    #[test]
    fn an_allowing_rule_passes() {
        assert!(is_continue(&decide(
            policy(false, false).as_ref(),
            &[("x-client-tier", "gold")]
        )));
    }

    #[test]
    fn the_first_matching_rule_wins() {
        // "banned-x" also matches the later ".*" allow rule; the deny rule comes first.
        let fail = failure(decide(
            policy(false, false).as_ref(),
            &[("x-client-tier", "banned-x")],
        ));
        assert_eq!(
            (fail.failure_type, fail.code, fail.status()),
            (FailureType::Authorization, 403, 403)
        );
        assert_eq!(
            fail.message,
            "Header 'X-Client-Tier:[banned-x]' not permitted."
        );
    }

    #[test]
    fn a_missing_header_is_refused_by_default() {
        let fail = failure(decide(policy(false, false).as_ref(), &[]));
        assert_eq!(
            fail.message,
            "Request not permitted as header 'X-Client-Tier' missing."
        );
    }

    #[test]
    fn a_missing_header_passes_when_allowed() {
        assert!(is_continue(&decide(policy(true, false).as_ref(), &[])));
    }

    #[test]
    fn any_value_of_a_repeated_header_can_match() {
        let p = compile(
            &KIND,
            json!({"entries": [{"headerName": "x-t", "rules": [
            {"headerValueRegex": "ok", "allowRequest": true}]}]}),
        );
        assert!(is_continue(&decide(
            p.as_ref(),
            &[("x-t", "nope"), ("x-t", "ok")]
        )));
    }

    #[test]
    fn no_matching_rule_is_refused_unless_allowed() {
        let p = compile(
            &KIND,
            json!({"entries": [{"headerName": "x-t", "rules": [
            {"headerValueRegex": "ok", "allowRequest": true}]}]}),
        );
        let fail = failure(decide(p.as_ref(), &[("x-t", "other")]));
        assert_eq!(fail.message, "Request not permitted as no rules matched.");
        let p = compile(
            &KIND,
            json!({"entries": [{"headerName": "x-t", "allowIfNoRulesMatch": true,
            "rules": [{"headerValueRegex": "ok", "allowRequest": true}]}]}),
        );
        assert!(is_continue(&decide(p.as_ref(), &[("x-t", "other")])));
    }

    #[test]
    fn regexes_match_the_whole_value() {
        let p = compile(
            &KIND,
            json!({"entries": [{"headerName": "x-t", "rules": [
            {"headerValueRegex": "ok", "allowRequest": true}]}]}),
        );
        assert!(matches!(
            decide(p.as_ref(), &[("x-t", "okay")]),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn the_host_header_is_the_authority() {
        let p = compile(
            &KIND,
            json!({"entries": [{"headerName": "Host", "rules": [
            {"headerValueRegex": ".*\\.allow\\.example\\.com", "allowRequest": true}]}]}),
        );
        assert!(is_continue(&decide(
            p.as_ref(),
            &[(":authority", "api.allow.example.com")]
        )));
    }
}
