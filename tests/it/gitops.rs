//! What Flux and Argo CD make of the operator's objects, decided by their own code: objects in
//! each state are read from the real API server and handed to `gitops-check` (hack/gitops),
//! which runs kstatus (`sigs.k8s.io/cli-utils`, what Flux's health checks use) and Argo CD's
//! resource health with the checks in `deploy/argocd/argocd-cm.patch.yaml`, read from a real
//! argocd-cm ConfigMap by Argo CD's own settings manager.

use crate::support::{
    env::*,
    operator::{await_object, condition, subscription},
};
use bitbucket_operator::api::{BitbucketIntegration, CredentialType, Subscription};
use bitbucket_sim::FaultRule;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::Value;

/// The answers of `gitops-check CHECK ARGS` for `objects`, by object name.
fn check(args: &[&str], objects: &[Value]) -> Vec<(String, String, String)> {
    let mut command = std::process::Command::new(crate::support::gitops_check());
    command.args(args);
    let output = crate::support::with_input(command, &serde_json::to_vec(objects).unwrap());
    assert!(
        output.status.success(),
        "gitops-check {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    answers
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["status"].as_str().unwrap().to_owned(),
                a["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A namespace holding Argo CD's argocd-cm with our patch applied, as `kubectl patch` would.
async fn argocd_namespace(env: &Env) -> String {
    let name = format!("{}-argocd", env.ns.name);
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.clone());
    namespace
        .labels_mut()
        .insert(crate::support::TEST_NAMESPACE_LABEL.into(), "true".into());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/argocd-cm.patch.yaml"),
    )
    .unwrap();
    let mut patch = crate::support::yaml_documents(&text).remove(0);
    patch["metadata"]["namespace"] = name.clone().into();
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &name);
    // Argo CD's own argocd-cm first (as installed), then the patch merged into it.
    let mut installed = ConfigMap::default();
    installed.metadata.name = Some("argocd-cm".into());
    installed.labels_mut().extend([
        ("app.kubernetes.io/name".to_owned(), "argocd-cm".to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "argocd".to_owned()),
    ]);
    installed.data = Some([("url".to_owned(), "https://argocd.example.com".to_owned())].into());
    config_maps
        .create(&PostParams::default(), &installed)
        .await
        .unwrap();
    config_maps
        .patch(
            "argocd-cm",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .unwrap();
    name
}

fn json_of<K: serde::Serialize>(object: &K) -> Value {
    serde_json::to_value(object).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_and_argo_cd_see_each_state_as_its_users_expect() {
    let mut env = Env::start("gitops").await;
    let integrations = env.api::<BitbucketIntegration>();
    let subscriptions = env.api::<Subscription>();
    let mut states: Vec<(&str, Value)> = Vec::new();

    // Ready, and a Subscription synced from it.
    env.ready_cloud_integration().await;
    env.create(&subscription("synced", "acme", Some("acme"), &[]))
        .await;
    let synced = await_object(&subscriptions, "synced", "synced", is_synced).await;

    // A first validation that takes Bitbucket seconds: Reconciling meanwhile.
    env.sim
        .control()
        .add_fault(FaultRule::latency(3000).on_path("/2.0/user").times(1));
    env.jdoe_token_secret("slow").await;
    env.create(&env.cloud("validating", CredentialType::ApiToken, "slow", None))
        .await;
    let validating = await_object(&integrations, "validating", "Reconciling", |i| {
        i.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Reconciling"))
            .is_some_and(|c| c.status == "True")
    })
    .await;

    // Stalled (a token Bitbucket refuses), and a Subscription waiting for it.
    env.secret(
        "bad",
        &[("email", "jdoe@example.com"), ("token", "FAKE-bad")],
    )
    .await;
    env.create(&env.cloud("stalled", CredentialType::ApiToken, "bad", None))
        .await;
    let stalled = await_object(
        &integrations,
        "stalled",
        "stalled",
        reason_is("InvalidCredentials"),
    )
    .await;
    env.create(&subscription("waiting", "stalled", Some("acme"), &[]))
        .await;
    let waiting = await_object(
        &subscriptions,
        "waiting",
        "waiting",
        subscription_reason_is("IntegrationNotReady"),
    )
    .await;

    // Suspended.
    let mut paused = subscription("suspended", "acme", Some("acme"), &[]);
    paused.spec.suspend = true;
    env.create(&paused).await;
    let suspended = await_object(
        &subscriptions,
        "suspended",
        "suspended",
        subscription_reason_is("Suspended"),
    )
    .await;

    // Deletion blocked: a Subscription arrived while the operator was away, and the
    // integration was deleted then (the finalizer holds it).
    env.jdoe_token_secret("held-token").await;
    env.create(&env.cloud("held", CredentialType::ApiToken, "held-token", None))
        .await;
    await_object(
        &integrations,
        "held",
        "held to be Ready",
        is_ready_integration,
    )
    .await;
    env.operator.take().unwrap().stop().await;
    env.create(&subscription("holder", "held", Some("acme"), &[]))
        .await;
    integrations
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    env.restart_operator();
    let blocked = await_object(
        &integrations,
        "held",
        "the deletion to be blocked",
        is_deletion_blocked,
    )
    .await;
    let ready = integrations.get("acme").await.unwrap();

    states.extend([
        ("validating", json_of(&validating)),
        ("acme", json_of(&ready)),
        ("stalled", json_of(&stalled)),
        ("held", json_of(&blocked)),
        ("synced", json_of(&synced)),
        ("waiting", json_of(&waiting)),
        ("suspended", json_of(&suspended)),
    ]);
    let described = [
        "integration, first validation in progress",
        "integration, Ready",
        "integration, Stalled (bad token)",
        "integration, deletion blocked",
        "Subscription, synced",
        "Subscription, integration not ready",
        "Subscription, suspended",
    ];
    let objects: Vec<Value> = states.iter().map(|(_, o)| o.clone()).collect();
    let kstatus = check(&["kstatus"], &objects);
    let argocd_ns = argocd_namespace(&env).await;
    let argocd = check(&["argocd-health", &argocd_ns], &objects);

    println!("| object | state | kstatus (Flux) | Argo CD health |");
    println!("|---|---|---|---|");
    for (((name, _), (_, k, km)), ((_, a, am), state)) in states
        .iter()
        .zip(&kstatus)
        .zip(argocd.iter().zip(described))
    {
        println!("| {name} | {state} | {k}: {km} | {a}: {am} |");
    }
    let expected = [
        ("validating", "InProgress", "Progressing"),
        ("acme", "Current", "Healthy"),
        ("stalled", "Failed", "Degraded"),
        ("held", "Terminating", "Degraded"),
        ("synced", "Current", "Healthy"),
        ("waiting", "InProgress", "Progressing"),
        ("suspended", "Current", "Suspended"),
    ];
    let seen: Vec<(&str, &str, &str)> = states
        .iter()
        .zip(kstatus.iter().zip(&argocd))
        .map(|((name, _), ((_, k, _), (_, a, _)))| (*name, k.as_str(), a.as_str()))
        .collect();
    assert_eq!(seen, expected);
    // The messages say why, in the operator's words.
    let (_, _, stalled_message) = &argocd[2];
    assert!(
        stalled_message.starts_with("InvalidCredentials: "),
        "{stalled_message}"
    );
    let (_, _, blocked_message) = &argocd[3];
    assert!(
        blocked_message.starts_with("BitbucketIntegration held is in use by Subscription holder"),
        "{blocked_message}"
    );

    let _ = Api::<Namespace>::all(env.client.clone())
        .delete(&argocd_ns, &DeleteParams::default())
        .await;
}
