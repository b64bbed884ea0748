//! Proves the cluster the tests run against is a real one: a watch delivers what was written,
//! the garbage collector follows ownerReferences, and deleted namespaces are finalized.
//! These are the behaviours later tests rely on (cache updates, owned objects, per-test
//! namespaces) and the ones a hand-written fake would get wrong.

use std::collections::BTreeMap;

use crate::support::{TestNamespace, client, within};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, PostParams},
    runtime::{WatchStreamExt, conditions, wait::await_condition, watcher},
};

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn the_server_reports_the_kubernetes_version_it_was_built_from() {
    let client = client().await;
    let version = client.apiserver_version().await.unwrap();
    // Version-stamped (not v0.0.0-master), and the version of the wrapper module the plane was
    // built from (`hack/control-plane.sh exec` says which: make test-versions runs others).
    let built = std::env::var("BBO_K8S_VERSION").expect("hack/control-plane.sh exec sets it");
    assert_eq!(version.git_version, built);
    assert_eq!(version.major, "1");
    assert_eq!(Some(version.minor.as_str()), built.split('.').nth(1));
}

#[test]
fn make_tests_default_plane_is_the_version_the_client_is_built_for() {
    // k8s-openapi is compiled for one minor version (Cargo feature `v1_35`); the plane `make
    // test` builds (hack/kube) must be that minor.
    let module = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/kube/go.mod"),
    )
    .unwrap();
    let pinned = module
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes v"))
        .expect("hack/kube/go.mod requires k8s.io/kubernetes");
    let minor = k8s_openapi::k8s_if_1_35! { "35" };
    assert!(pinned.starts_with(&format!("1.{minor}.")), "{pinned}");
}

#[tokio::test]
async fn a_watcher_sees_a_config_map_created_and_then_changed() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "watch").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns.name);

    // Only this ConfigMap: a plane with a node also publishes kube-root-ca.crt in every
    // namespace.
    let only_settings = watcher::Config::default().fields("metadata.name=settings");
    let mut seen = watcher(config_maps.clone(), only_settings)
        .applied_objects()
        .boxed();
    config_maps
        .create(
            &PostParams::default(),
            &config_map("settings", &[("colour", "blue")]),
        )
        .await
        .unwrap();
    let created = within("the watcher to deliver the new ConfigMap", seen.try_next())
        .await
        .unwrap()
        .expect("the watch stream ended");
    assert_eq!(created.name_any(), "settings");
    assert_eq!(created.data.unwrap()["colour"], "blue");

    let mut changed = config_map("settings", &[("colour", "green")]);
    changed.metadata.resource_version = created.metadata.resource_version;
    config_maps
        .replace("settings", &PostParams::default(), &changed)
        .await
        .unwrap();
    let updated = within("the watcher to deliver the change", seen.try_next())
        .await
        .unwrap()
        .expect("the watch stream ended");
    assert_eq!(updated.data.unwrap()["colour"], "green");
}

#[tokio::test]
async fn deleting_an_owner_lets_the_garbage_collector_delete_its_dependent() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "gc").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let pp = PostParams::default();

    let owner = config_maps
        .create(&pp, &config_map("owner", &[]))
        .await
        .unwrap();
    let mut dependent = config_map("dependent", &[]);
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: ConfigMap::api_version(&()).into_owned(),
        kind: ConfigMap::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap(),
        ..OwnerReference::default()
    }]);
    let dependent = config_maps.create(&pp, &dependent).await.unwrap();
    let unrelated = config_maps
        .create(&pp, &config_map("unrelated", &[]))
        .await
        .unwrap();

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let uid = dependent.uid().unwrap();
    within(
        "the garbage collector to delete the dependent",
        await_condition(
            config_maps.clone(),
            "dependent",
            conditions::is_deleted(&uid),
        ),
    )
    .await
    .unwrap();

    let still_there = config_maps.get("unrelated").await.unwrap();
    assert_eq!(
        still_there.uid(),
        unrelated.uid(),
        "GC must not touch unowned objects"
    );
}

#[tokio::test]
async fn a_deleted_namespace_and_everything_in_it_disappear() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "nsdel").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    config_maps
        .create(&PostParams::default(), &config_map("content", &[]))
        .await
        .unwrap();

    let namespaces: Api<Namespace> = Api::all(client);
    let uid = namespaces.get(&ns.name).await.unwrap().uid().unwrap();
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    // The namespace controller must empty it and remove its `kubernetes` finalizer; without
    // kube-controller-manager the namespace would stay Terminating forever.
    within(
        "the namespace controller to finalize the namespace",
        await_condition(namespaces.clone(), &ns.name, conditions::is_deleted(&uid)),
    )
    .await
    .unwrap();
    let listed = namespaces.list(&Default::default()).await.unwrap();
    assert!(
        listed.iter().all(|n| n.name_any() != ns.name),
        "the deleted namespace is still listed"
    );
}
