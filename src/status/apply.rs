//! Writing status: the whole status a controller owns, as one server-side apply with the
//! controller's field manager, and only when it differs from what the object already shows —
//! a steady-state reconcile writes nothing. Does API-server I/O.

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

/// Applies `desired` as the status of `object` unless it already is; returns the
/// resourceVersion the write produced, or `None` when it wrote nothing.
///
/// NB: server-side apply drops fields this manager owned but omits, so `desired` must always be
/// the complete status (e.g. the last good repository list carried forward on a failure).
pub async fn apply_status<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    desired: &S,
    field_manager: &str,
) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(None);
    }
    let name = object.meta().name.as_deref().unwrap_or_default();
    // Apply bodies need apiVersion and kind (kube-rs/kube#1086).
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    let written = api
        .patch_status(
            name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(body),
        )
        .await?;
    Ok(Some(
        written.meta().resource_version.clone().unwrap_or_default(),
    ))
}
