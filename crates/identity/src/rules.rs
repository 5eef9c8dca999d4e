//! The identity-resolution rules (Segment's Unify identity resolution settings): blocked values, a limit and a priority
//! per identifier type, the caps per profile, and which trait keys hold custom
//! identifiers. `[identity]` in `sluice.toml` is this type.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One identifier type's rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeRule {
    /// Most identifiers of this type one profile may hold.
    pub limit: Option<usize>,
    /// Lower numbers win; the lowest-priority identifier of an event is dropped first
    /// when a merge would break a limit.
    pub priority: Option<u32>,
    /// Values never used for matching (kept on the event), in addition to the global list.
    #[serde(default)]
    pub blocked: Vec<String>,
}

/// The rules, with Segment's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Values never promoted to identifiers, whatever their type (compared after trimming,
    /// case-insensitively). Values made only of `0` and `-` are always blocked.
    pub blocked_values: Vec<String>,
    /// Per identifier type (`user_id`, `email`, `anonymous_id`, `ios.id`, a custom type…).
    pub types: BTreeMap<String, TypeRule>,
    /// Trait (and property) keys whose values are custom identifiers: key → identifier
    /// type. Both the key as written and its snake_case/camelCase twin are read.
    pub custom_traits: BTreeMap<String, String>,
    /// Most profiles one profile may absorb.
    pub max_merges: usize,
    /// Most identifiers one profile may hold.
    pub max_identifiers: usize,
    /// Identify/group calls with this many traits or more do not update traits.
    pub max_traits: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            blocked_values: [
                "null",
                "-1",
                "undefined",
                "anonymous",
                "unknown",
                "n/a",
                "void",
                "abc123",
                "[object object]",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            types: BTreeMap::new(),
            custom_traits: BTreeMap::new(),
            max_merges: 100,
            max_identifiers: 1000,
            max_traits: 300,
        }
    }
}

impl Rules {
    /// Checks the rules; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidRules> {
        let invalid = |field: String, problem: String| InvalidRules { field, problem };
        for (name, rule) in &self.types {
            check_type_name(name)
                .map_err(|e| invalid(format!("identity.types.{name}"), format!(": {e}")))?;
            for (what, value) in [
                ("limit", rule.limit),
                ("priority", rule.priority.map(|p| p as usize)),
            ] {
                if value == Some(0) {
                    return Err(invalid(
                        format!("identity.types.{name}.{what}"),
                        " must be at least 1".into(),
                    ));
                }
            }
        }
        for (key, ty) in &self.custom_traits {
            if key.is_empty() {
                return Err(invalid(
                    "identity.custom_traits".into(),
                    ": a trait key is empty".into(),
                ));
            }
            check_type_name(ty)
                .map_err(|e| invalid(format!("identity.custom_traits.{key}"), format!(": {e}")))?;
        }
        if self.max_merges == 0 || self.max_identifiers == 0 || self.max_traits == 0 {
            return Err(invalid(
                "identity.max_merges, max_identifiers and max_traits".into(),
                " must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The most identifiers of `ty` one profile may hold (user_id 1, others 5).
    pub fn limit(&self, ty: &str) -> usize {
        match self.types.get(ty).and_then(|r| r.limit) {
            Some(l) => l,
            None if ty == "user_id" || ty == "group_id" => 1,
            None => 5,
        }
    }

    /// Sort key of a type: configured priority, else user_id 1, email 2, then the rest
    /// (alphabetical among equals).
    pub fn priority(&self, ty: &str) -> u32 {
        match self.types.get(ty).and_then(|r| r.priority) {
            Some(p) => p,
            None if ty == "user_id" || ty == "group_id" => 1,
            None if ty == "email" => 2,
            None => 3,
        }
    }

    /// Whether a value may not be used for matching.
    pub fn is_blocked(&self, ty: &str, value: &str) -> bool {
        let v = value.trim();
        if v.is_empty() || v.bytes().all(|b| b == b'0' || b == b'-') {
            return true;
        }
        let listed = |list: &[String]| list.iter().any(|b| b.eq_ignore_ascii_case(v));
        listed(&self.blocked_values) || self.types.get(ty).is_some_and(|r| listed(&r.blocked))
    }
}

/// Identity rules that cannot be used: the field, then what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}{problem}")]
pub struct InvalidRules {
    pub field: String,
    /// The rest of the sentence after the field (`": …"` or `" must …"`).
    pub problem: String,
}

/// Why a name cannot be an identifier type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTypeName {
    #[error("an identifier type is empty")]
    Empty,
    #[error("identifier type {0:?} must be lower-case without spaces or ':'")]
    Malformed(String),
}

/// Identifier types are lower-case, non-empty and hold no `:` (the URL syntax
/// `type:value` splits at the first one).
pub fn check_type_name(ty: &str) -> Result<(), InvalidTypeName> {
    if ty.is_empty() {
        return Err(InvalidTypeName::Empty);
    }
    if ty.contains(':') || ty.chars().any(|c| c.is_uppercase() || c.is_whitespace()) {
        return Err(InvalidTypeName::Malformed(ty.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_reference() {
        let r = Rules::default();
        assert_eq!(r.limit("user_id"), 1);
        assert_eq!(r.limit("email"), 5);
        assert_eq!(r.limit("anonymous_id"), 5);
        assert!(r.priority("user_id") < r.priority("email"));
        assert!(r.priority("email") < r.priority("anonymous_id"));
        for v in [
            "",
            " ",
            "0",
            "000",
            "-1",
            "null",
            "NULL",
            "anonymous",
            "abc123",
        ] {
            assert!(r.is_blocked("user_id", v), "{v:?} should be blocked");
        }
        assert!(!r.is_blocked("user_id", "u-100"));
        assert!(!r.is_blocked("user_id", "10"));
    }

    #[test]
    fn configured_rules_win_and_bad_ones_are_named() {
        let r: Rules = serde_json::from_value(serde_json::json!({
            "types": {"email": {"limit": 2, "priority": 5, "blocked": ["x@example.com"]}},
        }))
        .unwrap();
        assert_eq!(r.limit("email"), 2);
        assert_eq!(r.priority("email"), 5);
        assert!(r.is_blocked("email", "X@example.com"));
        assert!(!r.is_blocked("user_id", "x@example.com"));
        let bad: Rules =
            serde_json::from_value(serde_json::json!({"types": {"Email": {"limit": 1}}})).unwrap();
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "identity.types.Email");
        assert!(e.to_string().contains("must be lower-case"), "{e}");
        let bad: Rules =
            serde_json::from_value(serde_json::json!({"types": {"email": {"limit": 0}}})).unwrap();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "identity.types.email.limit must be at least 1"
        );
    }
}
