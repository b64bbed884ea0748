//! bitbucket-operator-api: the custom resources users apply: `BitbucketIntegration` and `Subscription`
//! (`scm.shippable.io/v1alpha1`), their shared types, and the names the operator stamps on
//! objects (finalizer, annotation, condition types and reasons). Types only, no I/O.
//!
//! The Rust types are the single source of the CRD schemas, and `admission` of the
//! ValidatingAdmissionPolicies installed beside them: `bitbucket-operator crds` prints both and
//! `crds/` holds the committed output (a test fails when it drifts).

#![forbid(unsafe_code)]

pub mod admission;
pub mod common;
pub mod conditions;
pub mod credential;
pub mod duration;
pub mod glob;
pub mod integration;
mod kept;
pub mod slice;
pub mod subscription;
pub mod text;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::*;
pub use duration::{DurationError, parse_duration};
pub use integration::*;
pub use slice::{
    Entries, Incomplete, MAX_REPOSITORIES_PER_SLICE, MAX_SLICE_BYTES, RepositorySlice,
    SUBSCRIPTION_LABEL, SliceRef, subscription_label,
};
pub use subscription::*;

/// The API group of both kinds.
pub const GROUP: &str = "scm.shippable.io";
/// The only served (and stored) version.
pub const VERSION: &str = "v1alpha1";

/// The label that puts an integration and its Subscriptions in one shard: an operator started
/// with `--watch-label-selector scm.shippable.io/shard=<shard>` owns the objects labelled so,
/// and one started with `'!scm.shippable.io/shard'` those without it (Flux's
/// `sharding.fluxcd.io/key` convention). RepositorySlices carry their Subscription's.
pub const SHARD_LABEL: &str = "scm.shippable.io/shard";

/// Held by every integration while Subscriptions may still reference it.
pub const IN_USE_FINALIZER: &str = "scm.shippable.io/in-use";

/// On a credential Secret: the servers (URL prefixes, comma-separated; `cloud` for Bitbucket
/// Cloud) its credential may be sent to beyond the operator's `--allowed-servers`. Whoever may
/// write the Secret decides; whoever may only write integrations cannot widen it.
pub const ALLOWED_SERVERS_ANNOTATION: &str = "scm.shippable.io/allowed-servers";

/// On a credential Secret: `OAuthUser` lets the operator replace its `refreshToken` — and
/// nothing else — each time Bitbucket rotates it. The ValidatingAdmissionPolicy
/// `bitbucket-operator-secret-writes.scm.shippable.io` refuses the operator's writes to any
/// Secret without it and to any other part of the Secret.
pub const CREDENTIAL_TYPE_LABEL: &str = "scm.shippable.io/credential-type";

/// Set to any new value to ask for an immediate re-validation (integration) or re-sync
/// (subscription); the value handled last is echoed in `status.lastHandledSyncRequest`.
pub const SYNC_REQUESTED_AT_ANNOTATION: &str = "scm.shippable.io/sync-requested-at";

/// On a credential Secret: when the credential expires (RFC 3339, e.g.
/// `2027-06-30T00:00:00Z`), where Bitbucket does not say. The integration shows it in
/// `status.credential.expiresAt`, warns 30, 7 and 1 days before, and says `CredentialExpiring`
/// within 7 days.
pub const EXPIRES_AT_ANNOTATION: &str = "scm.shippable.io/expires-at";

/// Every CRD the operator serves, in a stable order. Field descriptions read as prose in
/// `kubectl explain`: the doc comments' line breaks inside a paragraph become spaces.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        BitbucketIntegration::crd(),
        Subscription::crd(),
        RepositorySlice::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let mut value = serde_json::to_value(&crd).expect("a CRD serialises to JSON");
        unwrap_descriptions(&mut value);
        serde_json::from_value(value).expect("a CRD with rewrapped descriptions is a CRD")
    })
    .collect()
}

/// Rewrites every `description` below `value` with [`prose`].
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                match field {
                    serde_json::Value::String(text) if key == "description" => *text = prose(text),
                    other => unwrap_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// Joins the lines of each paragraph with spaces, keeping paragraph breaks (blank lines) and
/// list items (`- `) on lines of their own.
fn prose(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            let mut joined = String::new();
            for line in paragraph.lines().map(str::trim) {
                if !joined.is_empty() {
                    joined.push(if line.starts_with("- ") { '\n' } else { ' ' });
                }
                joined.push_str(line);
            }
            joined
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The generated YAML of each file in `crds/` with its name: one per CRD
/// (`<plural>.<group>.yaml`), one per admission policy with its binding
/// (`policy.<name>.yaml`), and a `Kustomization` listing them, so that both
/// `kubectl apply -f crds/` and `deploy/` (which includes `../crds`) install them all. (Named
/// without an extension, which kustomize accepts, because `kubectl apply -f` reads every
/// `.yaml` file of a directory and knows no kind `Kustomization`.)
pub fn crd_files() -> Vec<(String, String)> {
    let header = "# GENERATED from src/api by `make crds` (bitbucket-operator crds); do not edit.";
    let crds = crds().into_iter().map(|crd| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        (
            format!("{name}.yaml"),
            format!("{header}\n---\n{}", yaml(&crd)),
        )
    });
    let policies = admission::policies().into_iter().map(|(policy, binding)| {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let body = format!("{}---\n{}", yaml(&policy), yaml(&binding));
        (
            format!("policy.{name}.yaml"),
            format!("{header}\n---\n{body}"),
        )
    });
    let mut files: Vec<(String, String)> = crds.chain(policies).collect();
    let listed: String = files
        .iter()
        .map(|(name, _)| format!("  - {name}\n"))
        .collect();
    let kustomization = format!(
        "{header}\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n{listed}"
    );
    files.push(("Kustomization".into(), kustomization));
    files
}

/// The same CRDs and policies for the Helm chart (`charts/bitbucket-operator`), by path in it:
/// the CRDs in `crds/` (Helm installs them before the templates), the policies in `templates/`.
pub fn chart_files() -> Vec<(String, String)> {
    crd_files()
        .into_iter()
        .filter(|(file, _)| file != "Kustomization")
        .map(|(file, yaml)| {
            let folder = if file.starts_with("policy.") {
                "templates"
            } else {
                "crds"
            };
            // The operator's ServiceAccount is in the release's namespace.
            let yaml = yaml.replace(
                &format!("    namespace: {}\n", admission::OPERATOR_NAMESPACE),
                "    namespace: {{ .Release.Namespace }}\n",
            );
            (format!("{folder}/{file}"), yaml)
        })
        .collect()
}

fn yaml(object: &impl serde::Serialize) -> String {
    serde_saphyr::to_string(object).expect("a generated manifest always serialises to YAML")
}

/// The CRDs and policies of `crds/` as one multi-document YAML stream: what
/// `bitbucket-operator crds` prints.
pub fn crds_yaml() -> String {
    crd_files()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".yaml"))
        .map(|(_, yaml)| yaml)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_read_as_prose_with_their_paragraphs_and_lists() {
        assert_eq!(
            prose("The Secret holding the\ncredential.\n\nRead only:\n- by the operator\n- once"),
            "The Secret holding the credential.\n\nRead only:\n- by the operator\n- once"
        );
        let crd = serde_json::to_string(&crds()).unwrap();
        assert!(
            !crd.contains("against\\nBitbucket"),
            "a line break mid-sentence"
        );
    }
}
