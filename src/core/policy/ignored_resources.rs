//! Ignored Resources (Apiman's `IgnoredResourcesPolicy`): matching paths answer 404 as if they
//! did not exist.

use super::{
    Capabilities, Context, FailureType, FieldDoc, Phase, PhaseSet, Policy, PolicyFailure,
    PolicyKind, Verdict,
};
use crate::http::Request;
use crate::json::{Fields, Problems};
use crate::pattern::Pattern;

pub const KIND: PolicyKind = PolicyKind {
    id: "ignored-resources",
    name: "Ignored Resources",
    apiman_names: &["IgnoredResourcesPolicy", "ignored-resources-policy"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Answers 404 for matching paths: the backend is never called for them.",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "10007, 404 NotFound, `Requested path \"<path>\" has been ignored.`",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[
        FieldDoc {
            name: "rules",
            aliases: &[],
            ty: "[object]",
            default: "[]",
            apiman: true,
            meaning: "the paths to ignore",
        },
        FieldDoc {
            name: "rules[].verb",
            aliases: &[],
            ty: "string",
            default: "*",
            apiman: true,
            meaning: "`*` or an HTTP method (case-insensitive)",
        },
        FieldDoc {
            name: "rules[].pathPattern",
            aliases: &[],
            ty: "string",
            default: "",
            apiman: true,
            meaning:
                "a regex that must match the whole resource path (below the API, without the query), as policies see it: `;` parameters removed, percent-decoded, dot segments resolved (see [Requests](#requests))",
        },
        FieldDoc {
            name: "pathsToIgnore",
            aliases: &["pathToIgnore"],
            ty: "[string]",
            default: "[]",
            apiman: true,
            meaning: "Apiman 1.x form: path regexes for any verb",
        },
    ],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"rules": [{"verb": "*", "pathPattern": "/internal/.*"}, {"verb": "DELETE", "pathPattern": "/orders/.*"}], "pathsToIgnore": ["/admin.*"]}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

fn build(f: &mut Fields, problems: &mut Problems) -> Option<IgnoredResources> {
    let mut rules = Vec::new();
    let mut ok = true;
    for (path, value) in f.array(&["rules"], problems) {
        let Some(mut rule) = Fields::of(value, &path, problems) else {
            ok = false;
            continue;
        };
        let verb = rule
            .string(&["verb"], problems)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && v != "*");
        match rule.string(&["pathPattern"], problems) {
            Some(pattern) => match Pattern::full(&pattern) {
                Ok(regex) => rules.push(Rule { verb, regex }),
                Err(message) => {
                    problems.error(&rule.field_path("pathPattern"), message);
                    ok = false;
                }
            },
            None => {
                problems.error(&rule.field_path("pathPattern"), "is required");
                ok = false;
            }
        }
        rule.finish(problems);
    }
    // Apiman 1.x configurations: a list of path regexes, any verb.
    for (path, pattern) in f.strings(&["pathsToIgnore", "pathToIgnore"], problems) {
        match Pattern::full(&pattern) {
            Ok(regex) => rules.push(Rule { verb: None, regex }),
            Err(message) => {
                problems.error(&path, message);
                ok = false;
            }
        }
    }
    ok.then_some(IgnoredResources { rules })
}

/// Apiman's failure code PATHS_TO_IGNORE.
pub const FAILURE_CODE: u32 = 10007;

struct Rule {
    /// `None` matches every verb (`*`).
    verb: Option<String>,
    regex: Pattern,
}

pub struct IgnoredResources {
    rules: Vec<Rule>,
}

impl Policy for IgnoredResources {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        let destination = cx.destination();
        let ignored = self.rules.iter().any(|r| {
            r.verb
                .as_deref()
                .is_none_or(|v| v.eq_ignore_ascii_case(&request.method))
                && r.regex.is_match(destination)
        });
        if !ignored {
            return Verdict::Continue;
        }
        Verdict::Fail(PolicyFailure::new(
            FailureType::NotFound,
            FAILURE_CODE,
            format!(
                "Requested path \"{}\" has been ignored.",
                cx.requested_path()
            ),
        ))
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
                {"verb": "*", "pathPattern": "/invoices/.+/items/.+"},
                {"verb": "DELETE", "pathPattern": "/items/.*"}
            ]}),
        )
    }

    #[test]
    fn a_matching_path_is_404_with_code_10007() {
        let p = policy();
        let mut f = Fixture::at("/invoices/12/items/34");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(
            (fail.failure_type, fail.code, fail.status()),
            (FailureType::NotFound, 10007, 404)
        );
        assert_eq!(
            fail.message,
            "Requested path \"/invoices/12/items/34\" has been ignored."
        );
    }

    #[test]
    fn the_pattern_must_match_the_whole_path() {
        let p = policy();
        let mut f = Fixture::at("/invoices/12/items");
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
    }

    #[test]
    fn a_verb_specific_rule_ignores_other_verbs() {
        let p = policy();
        let mut f = Fixture::at("/items/1");
        assert!(is_continue(
            &f.on_request(p.as_ref(), &mut request("GET", &[]))
        ));
        assert!(matches!(
            f.on_request(p.as_ref(), &mut request("delete", &[])),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn an_empty_resource_matches_as_slash() {
        let p = compile(&KIND, json!({"rules": [{"verb": "*", "pathPattern": "/"}]}));
        let mut f = Fixture::at("/");
        assert!(matches!(
            f.on_request(p.as_ref(), &mut request("GET", &[])),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn apiman_1_paths_to_ignore_still_work() {
        let p = compile(&KIND, json!({"pathsToIgnore": ["/items/.+"]}));
        let mut f = Fixture::at("/items/9");
        assert!(matches!(
            f.on_request(p.as_ref(), &mut request("PUT", &[])),
            Verdict::Fail(_)
        ));
    }

    fn ignored(pattern: &str, path: &str) -> bool {
        let p = compile(
            &KIND,
            json!({"rules": [{"verb": "*", "pathPattern": pattern}]}),
        );
        let mut f = Fixture::at(path);
        matches!(
            f.on_request(p.as_ref(), &mut request("GET", &[])),
            Verdict::Fail(_)
        )
    }

    #[test]
    fn path_parameters_do_not_hide_an_ignored_path() {
        assert!(ignored("/internal/.*", "/internal;x=1/metrics"));
        assert!(ignored("/admin", "/admin;x=1"));
        assert!(ignored("/admin/users", "/admin;jsessionid=1/users;v=2"));
    }

    #[test]
    fn encoded_slashes_and_backslashes_do_not_hide_an_ignored_path() {
        assert!(ignored("/internal/.*", "/internal%2Fmetrics"));
        assert!(ignored("/internal/.*", "/internal%2fmetrics"));
        assert!(ignored("/internal/.*", "/internal%5Cmetrics"));
        assert!(ignored("/internal/.*", "/internal\\metrics"));
    }

    #[test]
    fn dot_segments_and_repeated_slashes_do_not_hide_an_ignored_path() {
        assert!(ignored("/admin", "/public/../admin"));
        assert!(ignored("/admin", "/./admin"));
        assert!(ignored("/admin/x", "//admin//x"));
        assert!(ignored("/admin", "/public/%2e%2e/admin"));
    }

    #[test]
    fn an_encoded_line_break_does_not_hide_an_ignored_path() {
        assert!(ignored("/hidden/.*", "/hidden/%0A"));
        assert!(ignored("/hidden/.*", "/hidden/a%0Ab"));
        assert!(ignored("/admin.*", "/admin%0d%0a"));
    }

    #[test]
    fn a_non_ascii_pattern_matches_the_percent_decoded_path() {
        assert!(ignored("/caf\u{e9}/.*", "/caf%C3%A9/menu"));
        assert!(ignored("/caf\u{e9}/.*", "/caf\u{e9}/menu"));
    }

    #[test]
    fn the_failure_names_the_path_as_requested() {
        let p = compile(
            &KIND,
            json!({"rules": [{"verb": "*", "pathPattern": "/internal/.*"}]}),
        );
        let mut f = Fixture::at("/internal;x=1/metrics");
        let fail = failure(f.on_request(p.as_ref(), &mut request("GET", &[])));
        assert_eq!(
            fail.message,
            "Requested path \"/internal;x=1/metrics\" has been ignored."
        );
    }

    #[test]
    fn an_invalid_regex_refuses_the_configuration() {
        let errors = errors(
            &KIND,
            json!({"rules": [{"verb": "*", "pathPattern": "/a(b"}]}),
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(
                "config.rules[0].pathPattern: \"/a(b\" is not a valid regular expression"
            ),
            "{}",
            errors[0]
        );
    }
}
