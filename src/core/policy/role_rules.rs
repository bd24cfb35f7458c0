//! What Authorization and SOAP Authorization share: how the roles of the matching rules combine
//! (`multiMatch`), what a request no rule matches gets (`requestUnmatched`), and their failures.
//!
//! Both fields are Apiman enums (`all|any`, `pass|fail`), but Apiman's documentation describes
//! them as booleans (`"multiMatch": true` for all, `"requestUnmatched": true` for pass), and
//! configurations written from the docs exist: both forms are read.

use serde_json::Value;

use super::{FailureType, FieldDoc, PolicyFailure};
use crate::json::{Fields, Problems};

/// Apiman's CONFIGURATION_ERROR: no authentication policy before this one extracted roles.
pub const MISSING_ROLES_CODE: u32 = 10010;
/// Apiman's USER_NOT_AUTHORIZED.
pub const NOT_AUTHORIZED_CODE: u32 = 10009;

pub const MISSING_ROLES_MESSAGE: &str = "No roles have been extracted during authentication.  Make sure the authorization policy comes *after* a compatible authentication policy in your configuration.";
pub const NOT_AUTHORIZED_MESSAGE: &str =
    "The user is not authorized to make this request (a required role is missing).";

pub(super) const MULTI_MATCH: FieldDoc = FieldDoc {
    name: "multiMatch",
    aliases: &["multimatch"],
    ty: "all|any",
    default: "all",
    apiman: true,
    meaning: "when several rules match: every one's role is required (`all`) or one suffices (`any`); the documented booleans work too (`true` = all, `false` = any)",
};

pub(super) const REQUEST_UNMATCHED: FieldDoc = FieldDoc {
    name: "requestUnmatched",
    aliases: &[],
    ty: "pass|fail",
    default: "fail",
    apiman: true,
    meaning: "what a request no rule matches gets; the documented booleans work too (`true` = pass, `false` = fail)",
};

/// How the roles the matching rules require are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combine {
    /// `multiMatch: any`: one held role suffices (else every matching rule's role is needed).
    pub any: bool,
    /// `requestUnmatched: pass`.
    pub pass_unmatched: bool,
}

impl Combine {
    pub fn parse(f: &mut Fields, problems: &mut Problems) -> Combine {
        // Index into the choices: all = 0, any = 1; fail = 0, pass = 1.
        let multi = enum_or_bool(
            f,
            &["multiMatch", "multimatch"],
            &["all", "any"],
            0,
            problems,
        );
        let unmatched = enum_or_bool(f, &["requestUnmatched"], &["fail", "pass"], 1, problems);
        Combine {
            any: multi == Some(1),
            pass_unmatched: unmatched == Some(1),
        }
    }

    /// Whether a user holding `roles` may pass, given the roles required by each rule that
    /// matched the request (as Apiman decides: AND for `all`, OR for `any`; roles compare
    /// case-sensitively).
    pub fn authorized<'a>(
        &self,
        required: impl Iterator<Item = &'a str>,
        roles: &[String],
    ) -> bool {
        let mut matched = false;
        let mut ok = !self.any;
        for role in required {
            matched = true;
            let held = roles.iter().any(|r| r == role);
            ok = if self.any { ok || held } else { ok && held };
        }
        if matched {
            ok
        } else {
            self.pass_unmatched
        }
    }
}

/// An enum field that may also be written as the boolean Apiman's docs describe: `true` reads as
/// `allowed[when_true]`, `false` as the other of the two.
fn enum_or_bool(
    f: &mut Fields,
    names: &[&str],
    allowed: &[&str; 2],
    when_true: usize,
    problems: &mut Problems,
) -> Option<usize> {
    let (_, value) = f.raw(names)?;
    let boolean = match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    };
    match boolean {
        Some(true) => Some(when_true),
        Some(false) => Some(1 - when_true),
        None => f.choice(names, allowed, problems),
    }
}

/// No authentication policy before this one extracted roles: Apiman's configuration error (500).
pub fn missing_roles() -> PolicyFailure {
    PolicyFailure::new(
        FailureType::Other,
        MISSING_ROLES_CODE,
        MISSING_ROLES_MESSAGE,
    )
}

/// A required role is missing: 403.
pub fn not_authorized() -> PolicyFailure {
    PolicyFailure::new(
        FailureType::Authorization,
        NOT_AUTHORIZED_CODE,
        NOT_AUTHORIZED_MESSAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn combine(config: serde_json::Value) -> (Combine, Problems) {
        let mut problems = Problems::default();
        let mut f = Fields::of(&config, "config", &mut problems).unwrap();
        let c = Combine::parse(&mut f, &mut problems);
        f.finish(&mut problems);
        (c, problems)
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_defaults_are_all_and_fail() {
        let (c, _) = combine(json!({}));
        assert_eq!(
            c,
            Combine {
                any: false,
                pass_unmatched: false
            }
        );
    }

    #[test]
    fn the_enums_are_read_case_insensitively() {
        let (c, p) = combine(json!({"multiMatch": "ANY", "requestUnmatched": "Pass"}));
        assert!(p.is_ok());
        assert!(c.any && c.pass_unmatched);
    }

    #[test]
    fn the_documented_booleans_mean_all_and_pass_when_true() {
        let (c, _) = combine(json!({"multimatch": true, "requestUnmatched": true}));
        assert!(!c.any && c.pass_unmatched);
        let (c, _) = combine(json!({"multiMatch": "false", "requestUnmatched": false}));
        assert!(c.any && !c.pass_unmatched);
    }

    #[test]
    fn an_unknown_value_names_the_field_and_the_choices() {
        let (_, p) = combine(json!({"multiMatch": "some"}));
        assert_eq!(
            p.errors,
            vec!["config.multiMatch: \"some\" is not one of all, any"]
        );
    }

    #[test]
    fn all_needs_every_matching_rules_role() {
        let c = Combine {
            any: false,
            pass_unmatched: false,
        };
        assert!(c.authorized(["a", "b"].into_iter(), &roles(&["a", "b"])));
        assert!(!c.authorized(["a", "b"].into_iter(), &roles(&["a"])));
    }

    #[test]
    fn any_needs_one_matching_rules_role() {
        let c = Combine {
            any: true,
            pass_unmatched: false,
        };
        assert!(c.authorized(["a", "b"].into_iter(), &roles(&["b"])));
        assert!(!c.authorized(["a", "b"].into_iter(), &roles(&["c"])));
    }

    #[test]
    fn roles_compare_case_sensitively() {
        let c = Combine {
            any: true,
            pass_unmatched: false,
        };
        assert!(!c.authorized(["Admin"].into_iter(), &roles(&["admin"])));
    }

    #[test]
    fn no_matching_rule_gets_request_unmatched() {
        let fail = Combine {
            any: false,
            pass_unmatched: false,
        };
        let pass = Combine {
            any: false,
            pass_unmatched: true,
        };
        assert!(!fail.authorized(std::iter::empty(), &roles(&["a"])));
        assert!(pass.authorized(std::iter::empty(), &[]));
    }
}
