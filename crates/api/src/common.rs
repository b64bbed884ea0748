//! Types and validation rules shared by both kinds: object references, intervals, the
//! conditions list, and the CEL rules that give users a readable admission error.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Reason, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;

/// Go-style duration, as Kubernetes writes them: one or more `<number><unit>` with units
/// ns, us, ms, s, m, h (`30m`, `1h30m`, `90s`). CEL's `duration()` parses the same syntax.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A DNS subdomain: what Kubernetes accepts as the name of a Secret or of our resources.
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A Bitbucket Cloud workspace: its slug, or its UUID in braces (the API accepts both).
pub(crate) const WORKSPACE_PATTERN: &str = r"^([A-Za-z0-9][A-Za-z0-9_-]*|[{][0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}[}])$";

/// An interval between two checks, as a Go-style duration string (`30m`, `1h`, `90s`).
///
/// Kept as the user wrote it, so the stored object never changes form; the operator parses it
/// when it needs a [`Duration`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct Interval(pub String);

impl Interval {
    /// Parses the interval with [`parse_duration`] (the syntax [`interval_format_rule`]
    /// admits); `None` when it is not a positive duration (admission rejects those, so this only
    /// happens for objects stored before a rule existed) or is longer than Go allows.
    pub fn duration(&self) -> Option<Duration> {
        parse_duration(&self.0)
            .ok()
            .filter(|duration| !duration.is_zero())
    }
}

impl From<&str> for Interval {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// CEL rule for interval fields: Go duration syntax.
pub(crate) fn interval_format_rule() -> Rule {
    Rule::new(format!("self.matches('{DURATION_PATTERN}')"))
        .message("must be a duration such as 30m, 1h or 1h30m (units: s, m, h)")
}

/// CEL rule for interval fields: at least `minimum` (a Go duration). Malformed values are left
/// to [`interval_format_rule`], so the user sees one clear message.
pub(crate) fn interval_minimum_rule(minimum: &str) -> Rule {
    Rule::new(format!(
        "!self.matches('{DURATION_PATTERN}') || duration(self) >= duration('{minimum}')"
    ))
    .message(format!("must be at least {minimum}").as_str())
}

/// A Secret in the same namespace as the object referring to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = name_rule("a Secret"))]
    pub name: String,
}

/// One key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = name_rule("a Secret"))]
    pub name: String,
    /// Key within the Secret holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')")
        .message("must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// An object of a known kind in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the object, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = name_rule("a BitbucketIntegration"))]
    pub name: String,
}

pub(crate) fn name_rule(what: &str) -> Rule {
    Rule::new(format!("self.matches('{DNS_SUBDOMAIN_PATTERN}')")).message(
        format!(
            "must be the name of {what}: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        )
        .as_str(),
    )
}

pub(crate) fn workspace_rule() -> Rule {
    Rule::new(format!("self.matches('{WORKSPACE_PATTERN}')")).message(
        "must be a Bitbucket Cloud workspace slug (letters, digits, '-' and '_') or its UUID in braces",
    )
}

/// `reason: FieldValueRequired` for rules that report a missing field.
pub(crate) fn required(rule: Rule) -> Rule {
    rule.reason(Reason::FieldValueRequired)
}

/// `reason: FieldValueForbidden` for rules that report a field that must not be set.
pub(crate) fn forbidden(rule: Rule) -> Rule {
    rule.reason(Reason::FieldValueForbidden)
}

/// The `conditions` list of a status: standard `metav1.Condition`s, one per `type`.
pub type Conditions = Vec<Condition>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_as_go_durations() {
        assert_eq!(
            Interval::from("30m").duration(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            Interval::from("1h30m").duration(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            Interval::from("90s").duration(),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn malformed_or_negative_intervals_have_no_duration() {
        assert_eq!(Interval::from("30 minutes").duration(), None);
        assert_eq!(Interval::from("-5m").duration(), None);
        assert_eq!(Interval::from("").duration(), None);
        assert_eq!(Interval::from("0s").duration(), None);
        assert_eq!(Interval::from("99999999999999h").duration(), None);
    }

    /// An interval is read by the same parser as the plugin's `--timeout`, and that parser
    /// accepts what [`interval_format_rule`] admits.
    #[test]
    fn intervals_read_what_the_format_rule_admits() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in ["1h30m", "1.5h", "250ms", "30 minutes", "1d", "-5m", "30"] {
            assert_eq!(
                Interval::from(text).duration().is_some(),
                pattern.is_match(text),
                "{text}"
            );
            assert_eq!(
                Interval::from(text).duration(),
                parse_duration(text).ok(),
                "{text}"
            );
        }
        assert!(
            interval_format_rule()
                .rule
                .contains(&format!("'{DURATION_PATTERN}'"))
        );
    }
}
