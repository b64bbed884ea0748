//! Argo CD and Flux are told when a Subscription's list changes (`--refresh-applicationsets`,
//! `--refresh-flux-input-providers`), on the real API server with those tools' own CRDs (copied
//! from Argo CD's and the Flux Operator's modules by `hack/gitops.sh`): the ApplicationSet whose
//! plugin generator reads the Subscription gets Argo CD's refresh annotation, which Argo CD's
//! own code (`gitops-check appset-refresh`) reads as a refresh requested; the Flux input
//! provider reading its endpoint gets a new `requestedAt`; objects reading other lists are left
//! alone, and nothing is written when the list did not change.

use crate::support::{
    PATIENCE, allow,
    env::*,
    eventually, gitops_check, gitops_tool, kubectl_ok,
    operator::{await_object, subscription, sync_request},
    refuse, with_input, within,
};
use bitbucket_operator::{
    api::{Subscription, slice::list_digest},
    downstream::{
        APPLICATIONSET_REFRESH_ANNOTATION, FLUX_REQUESTED_AT_ANNOTATION, LIST_DIGEST_ANNOTATION,
    },
    metrics::DownstreamLabels,
};
use kube::{
    Api, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams, WatchEvent,
        WatchParams,
    },
};
use serde_json::{Value, json};

/// Installs the ApplicationSet and ResourceSetInputProvider CRDs (idempotent) and waits until
/// the API server serves them.
async fn install_their_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::{conditions, wait::await_condition};
    let folder = gitops_tool("crds");
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        folder.to_str().unwrap(),
    ]);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "applicationsets.argoproj.io",
        "resourcesetinputproviders.fluxcd.controlplane.io",
    ] {
        let established = await_condition(crds.clone(), name, conditions::is_crd_established());
        within(&format!("CRD {name} to become Established"), established)
            .await
            .unwrap();
    }
}

/// Argo CD's ApplicationSets and the Flux Operator's input providers: group, version, kind,
/// plural.
const APPLICATION_SETS: [&str; 4] = [
    "argoproj.io",
    "v1alpha1",
    "ApplicationSet",
    "applicationsets",
];
const INPUT_PROVIDERS: [&str; 4] = [
    "fluxcd.controlplane.io",
    "v1",
    "ResourceSetInputProvider",
    "resourcesetinputproviders",
];

/// The objects of another tool's kind in the test's namespace.
fn their_objects(env: &Env, [group, version, kind, plural]: [&str; 4]) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    Api::namespaced_with(env.client.clone(), &env.ns.name, &resource)
}

/// An ApplicationSet whose plugin generator (nested in a matrix) reads Subscription `reads`.
fn application_set(name: &str, namespace: &str, reads: &str) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
        "metadata": {"name": name},
        "spec": {
            "goTemplate": true,
            "generators": [{"matrix": {"generators": [
                {"list": {"elements": [{"cluster": "in-cluster"}]}},
                {"plugin": {
                    "configMapRef": {"name": "bitbucket-operator-plugin"},
                    "input": {"parameters": {"namespace": namespace, "subscription": reads}},
                    "requeueAfterSeconds": 1800,
                }},
            ]}}],
            "template": {
                "metadata": {"name": "{{ .slug }}"},
                "spec": {
                    "project": "default",
                    "source": {"repoURL": "{{ .cloneUrlHttps }}", "path": "deploy"},
                    "destination": {"server": "https://kubernetes.default.svc", "namespace": "x"},
                },
            },
        },
    })
}

/// A Flux input provider reading Subscription `reads` from the operator's endpoint.
fn input_provider(name: &str, namespace: &str, reads: &str) -> Value {
    let url = format!(
        "http://bitbucket-operator-plugin.bitbucket-operator.svc:4355/api/v1/inputs/{namespace}/{reads}?project=PROJ"
    );
    json!({
        "apiVersion": "fluxcd.controlplane.io/v1", "kind": "ResourceSetInputProvider",
        "metadata": {"name": name},
        "spec": {"type": "ExternalService", "url": url, "insecure": true},
    })
}

async fn create(api: &Api<DynamicObject>, object: Value) {
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

fn annotation(object: &DynamicObject, key: &str) -> Option<String> {
    object.annotations().get(key).cloned()
}

/// Waits until `api`'s object `name` has annotation `key` satisfying `test`; the object.
async fn annotated(
    api: &Api<DynamicObject>,
    name: &str,
    key: &str,
    test: impl Fn(Option<&str>) -> bool,
) -> DynamicObject {
    eventually(&format!("{name}'s annotation {key}"), PATIENCE, || async {
        let object = api.get(name).await.unwrap();
        test(annotation(&object, key).as_deref()).then_some(object)
    })
    .await
}

/// What Argo CD's own ApplicationSet type says of `appset`: `RefreshRequired` or `None`.
fn argo_cd_sees(appset: &DynamicObject) -> String {
    let input = serde_json::to_vec(&[appset]).unwrap();
    let mut check = std::process::Command::new(gitops_check());
    check.arg("appset-refresh");
    let output = with_input(check, &input);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    answers[0]["status"].as_str().unwrap().to_owned()
}

/// How many times `name` was written after resourceVersion `since`, up to `until`, from the
/// API server's history of it.
async fn writes_between(
    api: &Api<DynamicObject>,
    name: &str,
    since: &str,
    until: &DynamicObject,
) -> usize {
    use futures::{StreamExt, TryStreamExt};
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(10);
    let mut events = api.watch(&params, since).await.unwrap().boxed();
    let mut writes = 0;
    while let Some(event) = events.try_next().await.unwrap() {
        if let WatchEvent::Modified(object) = event {
            writes += 1;
            if object.resource_version() == until.resource_version() {
                return writes;
            }
        }
    }
    panic!(
        "{name}: the history from {since} did not reach {:?}",
        until.resource_version()
    )
}

/// The digest of the list `subscription`'s status names.
fn digest_of(subscription: &Subscription) -> String {
    list_digest(
        subscription
            .status
            .as_ref()
            .unwrap()
            .slices
            .as_deref()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_and_flux_are_told_when_a_list_changes_and_only_those_reading_it() {
    let env = Env::start_with("downstream", bitbucket_sim::Fixture::demo(), |settings| {
        settings.downstream.applicationsets = true;
        settings.downstream.flux_input_providers = true;
    })
    .await;
    install_their_crds(&env.client).await;
    let ns = env.ns.name.clone();
    let appsets = their_objects(&env, APPLICATION_SETS);
    let providers = their_objects(&env, INPUT_PROVIDERS);
    create(&appsets, application_set("ci-repos", &ns, "ci")).await;
    create(&appsets, application_set("web-repos", &ns, "web")).await;
    create(&providers, input_provider("ci-inputs", &ns, "ci")).await;
    create(&providers, input_provider("web-inputs", &ns, "web")).await;

    // The first list: the ApplicationSet and the provider reading `ci` are told.
    env.ready_cloud_integration().await;
    let mut ci = subscription("ci", "acme", Some("acme"), &[]);
    ci.spec.sync_interval = "1h".into();
    env.create(&ci).await;
    let listed = await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    let first = digest_of(&listed);
    let appset = annotated(&appsets, "ci-repos", LIST_DIGEST_ANNOTATION, |d| {
        d == Some(first.as_str())
    })
    .await;
    assert_eq!(
        annotation(&appset, APPLICATIONSET_REFRESH_ANNOTATION).as_deref(),
        Some("true")
    );
    assert_eq!(argo_cd_sees(&appset), "RefreshRequired");
    let provider = annotated(&providers, "ci-inputs", FLUX_REQUESTED_AT_ANNOTATION, |a| {
        a.is_some()
    })
    .await;
    let requested = annotation(&provider, FLUX_REQUESTED_AT_ANNOTATION);
    assert!(
        requested
            .as_deref()
            .is_some_and(|at| at.parse::<jiff::Timestamp>().is_ok())
    );

    // Argo CD refreshes and removes its annotation, as its controller does.
    let took = json!({"metadata": {"annotations": {APPLICATIONSET_REFRESH_ANNOTATION: null}}});
    let appset = appsets
        .patch("ci-repos", &PatchParams::default(), &Patch::Merge(took))
        .await
        .unwrap();
    assert_eq!(argo_cd_sees(&appset), "None");

    // A sync that finds the same list tells nobody (counted below, from the objects' history).
    let since = [appset.resource_version(), provider.resource_version()].map(Option::unwrap);
    env.api::<Subscription>()
        .patch("ci", &PatchParams::default(), &sync_request("same"))
        .await
        .unwrap();
    let handled = |value: &'static str| {
        move |s: &Subscription| {
            (s.status.as_ref())
                .is_some_and(|s| s.last_handled_sync_request.as_deref() == Some(value))
        }
    };
    await_object(&env.api(), "ci", "the sync request", handled("same")).await;

    // A new repository: both are told again.
    let project = listed.status.unwrap().repositories[0].project.clone();
    let repository =
        serde_json::from_value(json!({"slug": "new-one", "project": project})).unwrap();
    (env.sim.control())
        .add_cloud_repository("acme", repository)
        .unwrap();
    env.api::<Subscription>()
        .patch("ci", &PatchParams::default(), &sync_request("new"))
        .await
        .unwrap();
    let relisted = await_object(&env.api(), "ci", "the new repository", handled("new")).await;
    let second = digest_of(&relisted);
    assert_ne!(first, second);
    let appset = annotated(&appsets, "ci-repos", LIST_DIGEST_ANNOTATION, |d| {
        d == Some(second.as_str())
    })
    .await;
    assert_eq!(argo_cd_sees(&appset), "RefreshRequired");
    let provider = annotated(&providers, "ci-inputs", FLUX_REQUESTED_AT_ANNOTATION, |a| {
        a != requested.as_deref()
    })
    .await;
    // One write each since Argo CD took its refresh: for the new list, none for the same one.
    assert_eq!(
        writes_between(&appsets, "ci-repos", &since[0], &appset).await,
        1
    );
    assert_eq!(
        writes_between(&providers, "ci-inputs", &since[1], &provider).await,
        1
    );

    // Those reading another Subscription were never written.
    for (api, name) in [(&appsets, "web-repos"), (&providers, "web-inputs")] {
        let untouched = api.get(name).await.unwrap();
        assert!(untouched.annotations().is_empty(), "{name}: {untouched:?}");
    }
}

/// A cluster's own policy refuses the operator's refresh of an ApplicationSet for a while: the
/// refusal is counted and the operator asks again, so that once the policy is lifted the
/// ApplicationSet is told of the list without the list changing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_the_api_server_refused_is_asked_for_again() {
    let env = Env::start_with("downstream", bitbucket_sim::Fixture::demo(), |settings| {
        settings.downstream.applicationsets = true;
    })
    .await;
    install_their_crds(&env.client).await;
    let ns = env.ns.name.clone();
    let appsets = their_objects(&env, APPLICATION_SETS);
    create(&appsets, application_set("ci-repos", &ns, "ci")).await;
    let policy = format!("{ns}-holds-applicationsets");
    let rule = json!({"apiGroups": ["argoproj.io"], "apiVersions": ["*"],
        "resources": ["applicationsets"], "operations": ["UPDATE"]});
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let probe = Patch::Merge(json!({"metadata": {"annotations": {"probe": "x"}}}));
    let refused = || async { appsets.patch("ci-repos", &dry_run, &probe).await.is_err() };
    let held = ("false", "ApplicationSets are held by the test");
    refuse(&env.client, &policy, &ns, rule, held, refused).await;

    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let listed = await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    let failed = DownstreamLabels {
        kind: "ApplicationSet",
        outcome: "failed",
    };
    let refusals = || {
        let metrics = &env.operator().metrics;
        metrics.downstream_refreshes.get_or_create(&failed).get()
    };
    eventually("the refused refresh", PATIENCE, || async {
        (refusals() > 0).then_some(())
    })
    .await;
    assert!(
        appsets
            .get("ci-repos")
            .await
            .unwrap()
            .annotations()
            .is_empty()
    );

    allow(&env.client, &policy).await;
    let digest = digest_of(&listed);
    annotated(&appsets, "ci-repos", LIST_DIGEST_ANNOTATION, |d| {
        d == Some(digest.as_str())
    })
    .await;
}
