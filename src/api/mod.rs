//! The custom resources users apply: `BitbucketIntegration` and `Subscription`
//! (`scm.shippable.io/v1alpha1`), their shared types, and the names the operator stamps on
//! objects (finalizer, annotation, condition types and reasons). Types only, no I/O.
//!
//! The Rust types are the single source of the CRD schemas: `bitbucket-operator crds` prints
//! them and `crds/` holds the committed output (a test fails when it drifts).

pub mod common;
pub mod conditions;
pub mod integration;
pub mod subscription;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::*;
pub use integration::*;
pub use subscription::*;

/// The API group of both kinds.
pub const GROUP: &str = "scm.shippable.io";
/// The only served (and stored) version.
pub const VERSION: &str = "v1alpha1";

/// Held by every integration while Subscriptions may still reference it.
pub const IN_USE_FINALIZER: &str = "scm.shippable.io/in-use";

/// Set to any new value to ask for an immediate re-validation (integration) or re-sync
/// (subscription); the value handled last is echoed in `status.lastHandledSyncRequest`.
pub const SYNC_REQUESTED_AT_ANNOTATION: &str = "scm.shippable.io/sync-requested-at";

/// Every CRD the operator serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![BitbucketIntegration::crd(), Subscription::crd()]
}

/// The generated YAML of each CRD with the file name it has in `crds/`
/// (`<plural>.<group>.yaml`).
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.as_deref().unwrap_or_default();
            let body = serde_saphyr::to_string(crd).expect("a CRD always serialises to YAML");
            let header =
                "# GENERATED from src/api by `make crds` (bitbucket-operator crds); do not edit.";
            (format!("{name}.yaml"), format!("{header}\n---\n{body}"))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream: what `bitbucket-operator crds` prints.
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| yaml).collect()
}
