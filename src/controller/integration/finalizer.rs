//! The `in-use` finalizer around validation and cleanup. Unlike kube's `finalizer` helper,
//! adding the finalizer does not end the reconcile: it runs beside the validation, saving a
//! watch round trip and the patch's own before the first status. Does API-server I/O.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use super::{
    Error, apply,
    cleanup::{self, Cleanup},
};
use crate::{
    api::{BitbucketIntegration, IN_USE_FINALIZER},
    controller::Context,
    controller::schedule::Next,
};

/// Validates, adding the finalizer beside the validation when it is not held; or, when the
/// integration is being deleted, runs cleanup and releases the finalizer once cleanup allows it.
pub(super) async fn with_finalizer(
    integration: &BitbucketIntegration,
    context: &Context,
) -> Result<Next, Error> {
    let namespace = integration.namespace().unwrap_or_default();
    let api: Api<BitbucketIntegration> = Api::namespaced(context.shared.kube.clone(), &namespace);
    let name = integration.name_any();
    let held = integration
        .finalizers()
        .iter()
        .position(|f| f == IN_USE_FINALIZER);
    match (held, integration.metadata.deletion_timestamp.is_some()) {
        (Some(_), false) => apply(integration, context, std::future::ready(Ok(()))).await,
        (None, false) => apply(integration, context, hold(&api, integration)).await,
        (Some(index), true) => {
            if let Cleanup::LookAgain(after) = cleanup::cleanup(integration, context).await? {
                return Ok(Next::After(after));
            }
            let remove = super::hooks::remove_with(context, integration);
            crate::bitbucket::Priority::Asked.run(remove).await;
            // Its series go with it.
            context.shared.metrics.forget_integration(integration);
            let path = format!("/metadata/finalizers/{index}");
            let patch = serde_json::json!([
                {"op": "test", "path": path, "value": IN_USE_FINALIZER},
                {"op": "remove", "path": path},
            ]);
            api.patch(&name, &PatchParams::default(), &json_patch(patch))
                .await?;
            Ok(Next::OnChange)
        }
        (None, true) => Ok(Next::OnChange),
    }
}

/// Adds the finalizer to `integration`, which does not hold it.
async fn hold(
    api: &Api<BitbucketIntegration>,
    integration: &BitbucketIntegration,
) -> Result<(), Error> {
    let name = integration.name_any();
    // `test` makes the patch fail (and the reconcile retry) if another writer changed the list
    // meanwhile: Kubernetes does not de-duplicate finalizers.
    let current = integration.finalizers();
    let patch = if current.is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [IN_USE_FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": IN_USE_FINALIZER},
        ])
    };
    match api
        .patch(&name, &PatchParams::default(), &json_patch(patch))
        .await
    {
        Ok(_) => Ok(()),
        // The `test` failed: the cached copy is older than the object, as when this look
        // follows the one that added the finalizer before its watch event came. Read the object
        // instead of failing and waiting out a backoff: held is held (a deletion that came
        // meanwhile is cleaned up by the reconcile its event brings).
        Err(kube::Error::Api(status)) if status.code == 422 => {
            let fresh = api.get(&name).await?;
            match fresh.finalizers().iter().any(|f| f == IN_USE_FINALIZER) {
                true => Ok(()),
                false => Err(kube::Error::Api(status).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn json_patch(operations: serde_json::Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(operations).expect("a JSON patch is a list of operations"))
}
