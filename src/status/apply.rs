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
    if tracing::enabled!(tracing::Level::DEBUG) {
        let changed = changed_fields(current, desired);
        tracing::debug!(
            kind = K::kind(&()).as_ref(),
            name,
            ?changed,
            "writing status"
        );
    }
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

/// The top-level fields of status that differ between `current` and `desired` (all of
/// `desired`'s when there is no `current`): what a write is for, in the debug log.
fn changed_fields<S: Serialize>(current: Option<&S>, desired: &S) -> Vec<String> {
    let fields = |status: Option<&S>| match status.map(serde_json::to_value) {
        Some(Ok(serde_json::Value::Object(fields))) => fields,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (fields(current), fields(Some(desired)));
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::changed_fields;

    #[test]
    fn the_fields_a_write_changes_are_named_and_only_those() {
        let before = serde_json::json!({"ready": true, "count": 1, "gone": "x"});
        let after = serde_json::json!({"ready": true, "count": 2, "new": []});
        assert_eq!(
            changed_fields(Some(&before), &after),
            ["count", "gone", "new"]
        );
        assert_eq!(changed_fields(None, &after), ["count", "new", "ready"]);
    }
}
