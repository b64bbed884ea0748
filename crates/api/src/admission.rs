//! The ValidatingAdmissionPolicies installed with the CRDs: the API server itself refuses to
//! delete an integration that Subscriptions use, naming them, and refuses to point a
//! Subscription at an integration that is being deleted. They hold while the operator is down;
//! the `in-use` finalizer stays as the second line for the moment between a Subscription's
//! creation and the operator's status update. Types only, no I/O.
//!
//! The first policy reads `status.usedBy` and `status.subscriptions`, which the operator keeps,
//! so a `DELETE` costs the API server one CEL evaluation whatever the number of Subscriptions.
//! The second takes the namespace's integrations as parameters (a handful per namespace).
//! Neither refuses anything in a namespace that is being deleted, so deleting a namespace
//! always completes.
//!
//! The third limits the operator itself. Its RBAC may `patch` Secrets — to save the refresh
//! tokens Bitbucket rotates for signed-in users (`OAuthUser`), without which such an integration
//! is locked out — but RBAC cannot narrow a verb by label or key. The policy does: a request by
//! the operator's ServiceAccount (the one its binding names, as installed) may only change
//! `data.refreshToken` of a Secret labelled `scm.shippable.io/credential-type: OAuthUser` —
//! nothing of its type, `immutable`, labels, annotations, finalizers, owners or other keys — and
//! may not create or delete Secrets at all.

use k8s_openapi::{
    api::admissionregistration::v1::{
        MatchCondition, MatchResources, NamedRuleWithOperations, ParamKind, ParamRef,
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation, Variable,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};

use super::{GROUP, VERSION};

/// Refuses `DELETE` of an integration whose `status.usedBy` is not empty.
pub const INTEGRATION_IN_USE_POLICY: &str = "bitbucketintegration-in-use.scm.shippable.io";
/// Refuses creating a Subscription that points at an integration being deleted, or re-pointing
/// one to it.
pub const INTEGRATION_DELETING_POLICY: &str = "subscription-integration-deleting.scm.shippable.io";

/// Refuses the operator's writes to Secrets other than a refresh token of an `OAuthUser` one.
pub const OPERATOR_SECRET_WRITES_POLICY: &str = "bitbucket-operator-secret-writes.scm.shippable.io";

/// Refuses writes of RepositorySlices by anyone but the operator (and cluster administrators),
/// so that no tenant can forge a repository list that the generator would serve.
pub const SLICE_WRITES_POLICY: &str = "repositoryslice-writes.scm.shippable.io";

/// The operator's ServiceAccount and namespace as `deploy/` installs them: the parameter of the
/// Secret-writes policy's binding. Kustomize renames the reference with the ServiceAccount
/// (`deploy/kustomizeconfig.yaml`); the chart puts its release namespace here.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "bitbucket-operator";
pub const OPERATOR_NAMESPACE: &str = "bitbucket-operator";

/// Every policy, each with its binding, in a stable order.
pub fn policies() -> Vec<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    vec![
        (
            integration_in_use(),
            binding(INTEGRATION_IN_USE_POLICY, None),
        ),
        (
            integration_deleting(),
            // Every integration of the request's namespace is a parameter; none at all admits.
            binding(
                INTEGRATION_DELETING_POLICY,
                Some(ParamRef {
                    selector: Some(LabelSelector::default()),
                    parameter_not_found_action: Some("Allow".into()),
                    ..ParamRef::default()
                }),
            ),
        ),
        (
            slice_writes(),
            binding(SLICE_WRITES_POLICY, Some(operator_param())),
        ),
        (
            operator_secret_writes(),
            binding(OPERATOR_SECRET_WRITES_POLICY, Some(operator_param())),
        ),
    ]
}

/// What a user is told when an integration cannot go: the `DeletionBlocked` condition and
/// Event, and (in CEL, below) the API server's refusal of the `DELETE`. Every name status keeps
/// (`status.usedBy`, the first [`MAX_NAMED_USERS`](crate::MAX_NAMED_USERS)) is named, the rest
/// counted, as the hosted service's dialog listed every Subscription in the way:
/// "BitbucketIntegration acme is in use by Subscriptions api-ci, docs-ci and web-ci; delete them
/// or point them at another integration first". `names` are sorted, `count` is the total.
pub fn in_use_message(integration: &str, names: &[String], count: usize) -> String {
    let count = count.max(names.len());
    let (noun, pronoun) = if count == 1 {
        ("Subscription", "it")
    } else {
        ("Subscriptions", "them")
    };
    let rest = count - names.len();
    let list = match (names, rest) {
        ([], rest) => format!("{rest}"),
        ([only], 0) => only.clone(),
        ([init @ .., last], 0) => format!("{} and {last}", init.join(", ")),
        (names, rest) => format!("{} and {rest} more", names.join(", ")),
    };
    format!(
        "BitbucketIntegration {integration} is in use by {noun} {list}; delete {pronoun} or \
         point {pronoun} at another integration first"
    )
}

/// [`in_use_message`] in CEL: a test on the API server compares the two.
fn integration_in_use() -> ValidatingAdmissionPolicy {
    let users = "variables.users";
    let count = "variables.count";
    let last = format!("{users}[size({users}) - 1]");
    // Names are unique (they are sorted Subscription names), so "all but the last" is a filter.
    let message = [
        "'BitbucketIntegration ' + oldObject.metadata.name + ' is in use by ' + (".to_owned(),
        format!("{count} == 1 ? 'Subscription ' + {users}[0] + '; delete it or point it' : "),
        "'Subscriptions ' + (".to_owned(),
        format!("{count} > size({users}) ? "),
        format!("{users}.join(', ') + ' and ' + string({count} - size({users})) + ' more' : "),
        format!("{users}.filter(n, n != {last}).join(', ') + ' and ' + {last}"),
        ") + '; delete them or point them') + ' at another integration first'".to_owned(),
    ]
    .concat();
    let recorded = "oldObject.?status.?subscriptions.orValue(0)";
    policy(
        INTEGRATION_IN_USE_POLICY,
        ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(matching("bitbucketintegrations", &["DELETE"])),
            variables: Some(vec![
                variable("users", "oldObject.?status.?usedBy.orValue([])"),
                // The count, never less than the names (a status written by hand may lack it).
                variable(
                    "count",
                    &format!("{recorded} > size({users}) ? {recorded} : size({users})"),
                ),
            ]),
            validations: Some(vec![Validation {
                expression: format!(
                    "size({users}) == 0 || has(namespaceObject.metadata.deletionTimestamp)"
                ),
                message_expression: Some(message),
                message: Some(
                    "the BitbucketIntegration is in use by the Subscriptions in its status.usedBy"
                        .into(),
                ),
                reason: Some("Forbidden".into()),
            }]),
            ..ValidatingAdmissionPolicySpec::default()
        },
    )
}

fn integration_deleting() -> ValidatingAdmissionPolicy {
    policy(
        INTEGRATION_DELETING_POLICY,
        ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            param_kind: Some(ParamKind {
                api_version: Some(format!("{GROUP}/{VERSION}")),
                kind: Some("BitbucketIntegration".into()),
            }),
            match_constraints: Some(matching("subscriptions", &["CREATE", "UPDATE"])),
            // Other edits of a Subscription whose integration is going (labels, finalizers, a
            // GitOps tool's apply) stay allowed.
            match_conditions: Some(vec![MatchCondition {
                name: "points-at-a-new-integration".into(),
                expression: "request.operation == 'CREATE' || \
                             oldObject.spec.integrationRef.name != object.spec.integrationRef.name"
                    .into(),
            }]),
            validations: Some(vec![Validation {
                expression: "params.metadata.name != object.spec.integrationRef.name || \
                             !has(params.metadata.deletionTimestamp)"
                    .into(),
                message_expression: Some(
                    "'BitbucketIntegration ' + params.metadata.name + ' is being deleted; \
                     point Subscription ' + object.metadata.name + ' at another integration'"
                        .into(),
                ),
                message: Some("the BitbucketIntegration is being deleted".into()),
                reason: Some("Forbidden".into()),
            }]),
            ..ValidatingAdmissionPolicySpec::default()
        },
    )
}

/// CEL: the request is by the ServiceAccount that is the policy's parameter ([`operator_param`]).
const BY_THE_OPERATOR: &str = "request.userInfo.username == 'system:serviceaccount:' + \
                               params.metadata.namespace + ':' + params.metadata.name";

/// The operator's ServiceAccount as a policy's parameter. Without it there is no operator:
/// nothing to narrow (no writer of Secrets is refused for it) and no list to protect.
fn operator_param() -> ParamRef {
    ParamRef {
        name: Some(OPERATOR_SERVICE_ACCOUNT.into()),
        namespace: Some(OPERATOR_NAMESPACE.into()),
        parameter_not_found_action: Some("Allow".into()),
        ..ParamRef::default()
    }
}

fn slice_writes() -> ValidatingAdmissionPolicy {
    policy(
        SLICE_WRITES_POLICY,
        ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(matching("repositoryslices", &["CREATE", "UPDATE"])),
            param_kind: Some(ParamKind {
                api_version: Some("v1".into()),
                kind: Some("ServiceAccount".into()),
            }),
            validations: Some(vec![Validation {
                expression: format!(
                    "{BY_THE_OPERATOR} || 'system:masters' in request.userInfo.groups"
                ),
                message: Some(
                    "RepositorySlices are written by the bitbucket-operator only: they are the \
                     repository lists it serves"
                        .into(),
                ),
                reason: Some("Forbidden".into()),
                ..Validation::default()
            }]),
            ..ValidatingAdmissionPolicySpec::default()
        },
    )
}

fn operator_secret_writes() -> ValidatingAdmissionPolicy {
    let label = super::CREDENTIAL_TYPE_LABEL;
    let unchanged = |field: &str| {
        format!(
            "object.metadata.?{field}.orValue({{}}) == oldObject.metadata.?{field}.orValue({{}})"
        )
    };
    policy(
        OPERATOR_SECRET_WRITES_POLICY,
        ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(matching_in("", "secrets", &["CREATE", "UPDATE", "DELETE"])),
            // The parameter is the operator's ServiceAccount, as installed (the binding names
            // it; kustomize's namePrefix and namespace, and the chart's release namespace, follow).
            param_kind: Some(ParamKind {
                api_version: Some("v1".into()),
                kind: Some("ServiceAccount".into()),
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "by-the-operator".into(),
                expression: BY_THE_OPERATOR.into(),
            }]),
            variables: Some(vec![
                variable("data", "object.?data.orValue({})"),
                variable("before", "oldObject.?data.orValue({})"),
            ]),
            validations: Some(vec![
                Validation {
                    expression: format!(
                        "request.operation == 'UPDATE' && \
                         oldObject.metadata.?labels[?'{label}'].orValue('') == 'OAuthUser'"
                    ),
                    message_expression: Some(format!(
                        "'the operator may only write Secrets labelled {label}: OAuthUser; \
                         Secret ' + request.name + ' is not'"
                    )),
                    message: None,
                    reason: Some("Forbidden".into()),
                },
                Validation {
                    expression: [
                        "variables.data.all(k, k == 'refreshToken' || \
                         (k in variables.before && variables.before[k] == variables.data[k]))",
                        "variables.before.all(k, k in variables.data)",
                        &unchanged("labels"),
                        &unchanged("annotations"),
                        &unchanged("ownerReferences"),
                        &unchanged("finalizers"),
                        "object.?type.orValue('') == oldObject.?type.orValue('')",
                        "object.?immutable.orValue(false) == oldObject.?immutable.orValue(false)",
                    ]
                    .join(" && "),
                    message: Some(
                        "the operator may only change data.refreshToken of an OAuthUser Secret"
                            .into(),
                    ),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        },
    )
}

fn policy(name: &str, spec: ValidatingAdmissionPolicySpec) -> ValidatingAdmissionPolicy {
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn binding(policy: &str, param_ref: Option<ParamRef>) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(policy.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(policy.into()),
            param_ref,
            validation_actions: Some(vec!["Deny".into()]),
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    }
}

/// Only `resource` of this API group, every version, for these operations (not its status).
/// Written with the values the API server defaults: the field is atomic, so a manifest that
/// left them out would differ from what is stored, and a second server-side apply by another
/// manager (`kubectl`, a GitOps tool) would conflict.
fn matching(resource: &str, operations: &[&str]) -> MatchResources {
    matching_in(GROUP, resource, operations)
}

/// [`matching`] for `resource` of API group `group`.
fn matching_in(group: &str, resource: &str, operations: &[&str]) -> MatchResources {
    MatchResources {
        match_policy: Some("Equivalent".into()),
        namespace_selector: Some(LabelSelector::default()),
        object_selector: Some(LabelSelector::default()),
        resource_rules: Some(vec![NamedRuleWithOperations {
            api_groups: Some(vec![group.into()]),
            api_versions: Some(vec!["*".into()]),
            resources: Some(vec![resource.into()]),
            operations: Some(operations.iter().map(|&o| o.into()).collect()),
            scope: Some("Namespaced".into()),
            ..NamedRuleWithOperations::default()
        }]),
        ..MatchResources::default()
    }
}

fn variable(name: &str, expression: &str) -> Variable {
    Variable {
        name: name.into(),
        expression: expression.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_message_names_every_user_status_keeps_and_counts_the_rest() {
        assert_eq!(
            in_use_message("acme", &names(&["api-ci"]), 1),
            "BitbucketIntegration acme is in use by Subscription api-ci; delete it or point it \
             at another integration first"
        );
        assert_eq!(
            in_use_message("acme", &names(&["api-ci", "web-ci"]), 2),
            "BitbucketIntegration acme is in use by Subscriptions api-ci and web-ci; delete them \
             or point them at another integration first"
        );
        assert_eq!(
            in_use_message("acme", &names(&["a", "api-ci", "b", "c", "web-ci"]), 5),
            "BitbucketIntegration acme is in use by Subscriptions a, api-ci, b, c and web-ci; \
             delete them or point them at another integration first"
        );
        // Status keeps the first ten names: the count says how many more there are.
        let ten: Vec<String> = (0..10).map(|i| format!("ci-{i:02}")).collect();
        assert_eq!(
            in_use_message("acme", &ten, 12),
            "BitbucketIntegration acme is in use by Subscriptions ci-00, ci-01, ci-02, ci-03, \
             ci-04, ci-05, ci-06, ci-07, ci-08, ci-09 and 2 more; delete them or point them at \
             another integration first"
        );
    }

    #[test]
    fn each_policy_matches_only_its_own_resource_and_has_a_binding() {
        for (policy, binding) in policies() {
            let secrets = policy.metadata.name.as_deref() == Some(OPERATOR_SECRET_WRITES_POLICY);
            let spec = policy.spec.unwrap();
            let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
            assert_eq!(rules.len(), 1);
            let group = if secrets { "" } else { GROUP };
            assert_eq!(
                rules[0].api_groups.as_deref(),
                Some(&[group.to_owned()][..])
            );
            // The Secrets policy applies only to the requests of the ServiceAccount its binding
            // names.
            assert_eq!(
                secrets,
                spec.match_conditions.is_some_and(|c| c
                    .iter()
                    .any(|c| c.expression.contains("params.metadata.name")))
            );
            if secrets {
                let param = binding.spec.as_ref().unwrap().param_ref.clone().unwrap();
                assert_eq!(param.name.as_deref(), Some(OPERATOR_SERVICE_ACCOUNT));
                assert_eq!(param.namespace.as_deref(), Some(OPERATOR_NAMESPACE));
            }
            assert_eq!(rules[0].resources.as_ref().unwrap().len(), 1);
            assert!(!rules[0].resources.as_ref().unwrap()[0].contains('/'));
            assert_eq!(
                binding.spec.unwrap().policy_name,
                policy.metadata.name,
                "the binding names its policy"
            );
        }
    }
}
