//! Deleting an integration, end to end on the real API server: the admission policies from
//! `crds/` refuse a `DELETE` of an integration in use (naming the Subscriptions) and refuse
//! pointing a Subscription at an integration being deleted, whether or not the operator runs;
//! the `in-use` finalizer holds what slips past them; namespaces and uninstalls still complete.

use crate::support::{
    PATIENCE,
    env::*,
    eventually, kubectl,
    operator::{await_object, condition, subscription},
    within,
};
use bitbucket_operator::api::{
    BitbucketIntegration, CredentialType, IN_USE_FINALIZER, Subscription,
    conditions::DELETION_BLOCKED,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{conditions::is_deleted, wait::await_condition},
};
use serde_json::json;

/// The refusal a user sees when the API server refuses a request, without the server's
/// preamble ("... is forbidden: ValidatingAdmissionPolicy '...' with binding '...' denied
/// request: "); `None` when the request went through.
async fn refusal<T>(request: impl Future<Output = Result<T, kube::Error>>) -> Option<String> {
    match request.await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) if status.code == 403 => Some(
            status
                .message
                .rsplit_once("denied request: ")
                .unwrap_or_else(|| panic!("not an admission policy's refusal: {status:?}"))
                .1
                .to_owned(),
        ),
        Err(e) => panic!("the API server failed: {e}"),
    }
}

fn dry_run() -> DeleteParams {
    DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    }
}

/// Waits until a dry-run `DELETE` of integration `name` is refused, and returns what the user
/// is told. The refusal comes once the status names the users and the API server enforces the
/// policy (a moment after it is installed); a dry run deletes nothing meanwhile.
async fn delete_refused(integrations: &Api<BitbucketIntegration>, name: &str) -> String {
    eventually(
        &format!("the API server to refuse deleting {name}"),
        PATIENCE,
        || async { refusal(integrations.delete(name, &dry_run())).await },
    )
    .await
}

fn in_use(integration: &str, users: &str, pronoun: &str) -> String {
    format!(
        "BitbucketIntegration {integration} is in use by {users}; delete {pronoun} or point \
         {pronoun} at another integration first"
    )
}

impl Env {
    /// A second Ready Cloud integration, `name`, with its own Secret.
    async fn other_ready_integration(&self, name: &str) {
        let secret = format!("{name}-token");
        self.jdoe_token_secret(&secret).await;
        self.create(&self.cloud(name, CredentialType::ApiToken, &secret, None))
            .await;
        await_object(
            &self.api(),
            name,
            "the second integration to be Ready",
            is_ready_integration,
        )
        .await;
    }
}

/// Status keeps the first ten names of an integration's users; a refusal names every one of
/// them and counts the rest, in the API server's words (CEL) as in the operator's.
#[tokio::test]
async fn a_refusal_names_every_subscription_status_keeps_and_counts_the_rest() {
    let client = crate::support::client().await;
    crate::support::install_crds(&client).await;
    let ns = crate::support::TestNamespace::create(&client, "twelve").await;
    let integrations = Api::<BitbucketIntegration>::namespaced(client.clone(), &ns.name);
    let acme = integration(
        "acme",
        bitbucket_operator::api::ServerType::Cloud,
        bitbucket_operator::api::CLOUD_API_URL,
        CredentialType::ApiToken,
        "acme-bitbucket",
        None,
    );
    integrations
        .create(&PostParams::default(), &acme)
        .await
        .unwrap();
    let ten: Vec<String> = (1..=10).map(|i| format!("ci-{i:02}")).collect();
    let status = json!({"status": {"subscriptions": 12, "usedBy": ten}});
    integrations
        .patch_status("acme", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    assert_eq!(
        delete_refused(&integrations, "acme").await,
        in_use(
            "acme",
            "Subscriptions ci-01, ci-02, ci-03, ci-04, ci-05, ci-06, ci-07, ci-08, ci-09, ci-10 \
             and 2 more",
            "them"
        )
    );
    assert_eq!(
        delete_refused(&integrations, "acme").await,
        bitbucket_operator::api::admission::in_use_message("acme", &ten, 12)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_integration_in_use_is_refused_at_once_naming_the_subscriptions() {
    let env = Env::start("refuse").await;
    env.ready_cloud_integration().await;
    for name in ["web-ci", "api-ci", "docs-ci", "ops-ci", "www-ci"] {
        env.create(&subscription(name, "acme", Some("acme"), &[]))
            .await;
    }
    let integrations = env.api::<BitbucketIntegration>();
    let acme = await_object(&integrations, "acme", "acme to count 5 users", used_by(5)).await;
    assert_eq!(
        acme.status.unwrap().used_by,
        ["api-ci", "docs-ci", "ops-ci", "web-ci", "www-ci"]
    );

    let expected = in_use(
        "acme",
        "Subscriptions api-ci, docs-ci, ops-ci, web-ci and www-ci",
        "them",
    );
    assert_eq!(delete_refused(&integrations, "acme").await, expected);
    let refused = refusal(integrations.delete("acme", &DeleteParams::default())).await;
    assert_eq!(refused.as_deref(), Some(expected.as_str()));
    let acme = integrations.get("acme").await.unwrap();
    assert!(
        acme.metadata.deletion_timestamp.is_none(),
        "nothing is marked for deletion"
    );
    // Only DELETE is refused: other writes to an integration in use go through.
    integrations
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "platform"}}})),
        )
        .await
        .unwrap();

    let subscriptions = env.api::<Subscription>();
    for name in ["web-ci", "api-ci", "docs-ci", "ops-ci"] {
        subscriptions
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    await_object(&integrations, "acme", "acme to count 1 user", used_by(1)).await;
    assert_eq!(
        delete_refused(&integrations, "acme").await,
        in_use("acme", "Subscription www-ci", "it")
    );
    subscriptions
        .delete("www-ci", &DeleteParams::default())
        .await
        .unwrap();
    // Deletable as soon as the status says nobody uses it, and gone at once: the finalizer
    // never had to hold it.
    let free = await_object(&integrations, "acme", "acme to count no user", used_by(0)).await;
    assert!(free.status.unwrap().used_by.is_empty());
    integrations
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deleted(&acme).await;
    let blocked = env.events().await;
    assert!(
        !blocked
            .iter()
            .any(|e| e.reason.as_deref() == Some("DeletionBlocked")),
        "{blocked:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_holds_while_the_operator_is_stopped() {
    let mut env = Env::start("stopped").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let integrations = env.api::<BitbucketIntegration>();
    await_object(&integrations, "acme", "acme to count ci", used_by(1)).await;
    env.operator.take().unwrap().stop().await;

    let expected = in_use("acme", "Subscription ci", "it");
    assert_eq!(delete_refused(&integrations, "acme").await, expected);
    let refused = refusal(integrations.delete("acme", &DeleteParams::default())).await;
    assert_eq!(refused.as_deref(), Some(expected.as_str()));
    let acme = integrations.get("acme").await.unwrap();
    assert!(acme.metadata.deletion_timestamp.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_deleted_before_its_status_names_its_users_is_held_by_the_finalizer() {
    let mut env = Env::start("second-line").await;
    env.ready_cloud_integration().await;
    // While the operator is away, Subscriptions arrive and the integration is deleted: its
    // status names nobody, so admission lets the delete through, and the finalizer holds it.
    env.operator.take().unwrap().stop().await;
    for name in ["web-ci", "api-ci", "docs-ci", "ops-ci"] {
        env.create(&subscription(name, "acme", Some("acme"), &[]))
            .await;
    }
    let integrations = env.api::<BitbucketIntegration>();
    integrations
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    env.restart_operator();

    let blocked = await_object(
        &integrations,
        "acme",
        "the deletion to be blocked",
        is_deletion_blocked,
    )
    .await;
    let expected = in_use(
        "acme",
        "Subscriptions api-ci, docs-ci, ops-ci and web-ci",
        "them",
    );
    let status = blocked.status.as_ref().unwrap();
    let message = &condition(&status.conditions, DELETION_BLOCKED)
        .unwrap()
        .message;
    assert_eq!(
        message, &expected,
        "the same words as the API server's refusal"
    );
    assert_eq!(status.used_by, ["api-ci", "docs-ci", "ops-ci", "web-ci"]);
    let events = env.wait_for_events(&[("acme", "DeletionBlocked")]).await;
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("DeletionBlocked"))
        .unwrap();
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(warning.note.as_deref(), Some(expected.as_str()));

    let subscriptions = env.api::<Subscription>();
    for name in ["web-ci", "api-ci", "docs-ci"] {
        subscriptions
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let shrunk = in_use("acme", "Subscription ops-ci", "it");
    await_object(&integrations, "acme", "the message to shrink", move |i| {
        i.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, DELETION_BLOCKED))
            .is_some_and(|c| c.message == shrunk)
    })
    .await;
    subscriptions
        .delete("ops-ci", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deleted(&blocked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_pointing_the_last_subscription_frees_the_integration() {
    let env = Env::start("repoint").await;
    env.ready_cloud_integration().await;
    env.other_ready_integration("other").await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let integrations = env.api::<BitbucketIntegration>();
    let acme = await_object(&integrations, "acme", "acme to count ci", used_by(1)).await;
    assert_eq!(
        delete_refused(&integrations, "acme").await,
        in_use("acme", "Subscription ci", "it")
    );

    env.api::<Subscription>()
        .patch(
            "ci",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"integrationRef": {"name": "other"}}})),
        )
        .await
        .unwrap();
    await_object(&integrations, "acme", "acme to count no user", used_by(0)).await;
    integrations
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deleted(&acme).await;
    await_object(
        &env.api(),
        "ci",
        "ci to sync through the other integration",
        |s: &Subscription| {
            is_synced(s)
                && s.status
                    .as_ref()
                    .and_then(|s| s.integration.as_ref())
                    .is_some_and(|i| i.name == "other")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_cannot_be_pointed_at_an_integration_being_deleted() {
    let mut env = Env::start("deleting").await;
    let acme = env.ready_cloud_integration().await;
    env.other_ready_integration("other").await;
    // With the operator away, nothing releases the finalizer: acme stays, being deleted.
    env.operator.take().unwrap().stop().await;
    let integrations = env.api::<BitbucketIntegration>();
    integrations
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();

    let subscriptions = env.api::<Subscription>();
    let expected =
        "BitbucketIntegration acme is being deleted; point Subscription ci at another integration";
    let create = |params: PostParams| {
        let subscriptions = subscriptions.clone();
        async move {
            let ci = subscription("ci", "acme", Some("acme"), &[]);
            refusal(subscriptions.create(&params, &ci)).await
        }
    };
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the API server to refuse the Subscription",
        PATIENCE,
        || create(dry_run.clone()),
    )
    .await;
    assert_eq!(
        create(PostParams::default()).await.as_deref(),
        Some(expected)
    );

    env.create(&subscription("ci", "other", Some("acme"), &[]))
        .await;
    let re_point = Patch::Merge(json!({"spec": {"integrationRef": {"name": "acme"}}}));
    let refused = refusal(subscriptions.patch("ci", &PatchParams::default(), &re_point)).await;
    assert_eq!(refused.as_deref(), Some(expected));
    // Edits that keep the integration go through.
    subscriptions
        .patch(
            "ci",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "platform"}}})),
        )
        .await
        .unwrap();

    env.restart_operator();
    env.wait_deleted(&acme).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_racing_its_integrations_delete_never_outlives_it() {
    let env = Env::start("race").await;
    env.ready_cloud_integration().await;
    let integrations = env.api::<BitbucketIntegration>();
    let subscriptions = env.api::<Subscription>();
    let names: Vec<String> = (0..6).map(|i| format!("acme-{i}")).collect();
    for name in &names {
        env.create(&env.cloud(name, CredentialType::ApiToken, "acme-token", None))
            .await;
        await_object(&integrations, name, "the finalizer", |i| {
            i.finalizers().iter().any(|f| f == IN_USE_FINALIZER)
        })
        .await;
    }
    for name in &names {
        let uid = integrations.get(name).await.unwrap().uid().unwrap();
        let user = format!("{name}-ci");
        let (create, delete) = (PostParams::default(), DeleteParams::default());
        let user_of_it = subscription(&user, name, Some("acme"), &[]);
        let (created, deleted) = tokio::join!(
            refusal(subscriptions.create(&create, &user_of_it)),
            refusal(integrations.delete(name, &delete)),
        );
        eprintln!("{name}: subscription refused: {created:?}; delete refused: {deleted:?}");
        match (created, deleted) {
            // The delete went first: the integration goes, the Subscription was refused.
            (Some(refused), None) => {
                assert!(refused.contains("is being deleted"), "{refused}");
            }
            // The Subscription went first and the status named it: the delete was refused.
            (None, Some(refused)) => {
                assert_eq!(refused, in_use(name, &format!("Subscription {user}"), "it"));
                let integration = integrations.get(name).await.unwrap();
                assert!(integration.metadata.deletion_timestamp.is_none());
                subscriptions
                    .delete(&user, &DeleteParams::default())
                    .await
                    .unwrap();
                await_object(&integrations, name, "no user", used_by(0)).await;
                integrations
                    .delete(name, &DeleteParams::default())
                    .await
                    .unwrap();
            }
            // Both went through between the Subscription's creation and the status update:
            // the finalizer holds the integration until the Subscription goes.
            (None, None) => {
                await_object(
                    &integrations,
                    name,
                    "the deletion to be blocked",
                    is_deletion_blocked,
                )
                .await;
                subscriptions
                    .delete(&user, &DeleteParams::default())
                    .await
                    .unwrap();
            }
            (Some(a), Some(b)) => panic!("both refused: {a} / {b}"),
        }
        within(
            "the integration to go",
            await_condition(integrations.clone(), name, is_deleted(&uid)),
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_whole_namespace_completes() {
    let mut env = Env::start("nsdel").await;
    env.ready_cloud_integration().await;
    env.other_ready_integration("other").await;
    for (name, integration) in [("ci", "acme"), ("web-ci", "acme"), ("docs-ci", "other")] {
        env.create(&subscription(name, integration, Some("acme"), &[]))
            .await;
    }
    let integrations = env.api::<BitbucketIntegration>();
    await_object(&integrations, "acme", "acme to count 2 users", used_by(2)).await;
    await_object(&integrations, "other", "other to count 1 user", used_by(1)).await;
    delete_refused(&integrations, "acme").await;

    // With the operator away the statuses keep naming their users, yet the namespace
    // controller's deletes go through: only the finalizers wait for the operator.
    env.operator.take().unwrap().stop().await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let uid = namespaces.get(&env.ns.name).await.unwrap().uid().unwrap();
    namespaces
        .delete(&env.ns.name, &DeleteParams::default())
        .await
        .unwrap();
    for name in ["acme", "other"] {
        await_object(
            &integrations,
            name,
            "the namespace controller's delete",
            |i| i.metadata.deletion_timestamp.is_some(),
        )
        .await;
    }
    env.restart_operator();
    within(
        "the namespace to be deleted",
        await_condition(namespaces, &env.ns.name, is_deleted(&uid)),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_all_deletes_the_free_integrations_and_names_the_users_of_the_rest() {
    let env = Env::start("bulk").await;
    env.ready_cloud_integration().await;
    let mut free = Vec::new();
    for name in ["free-a", "free-b"] {
        let created = env
            .create(&env.cloud(name, CredentialType::ApiToken, "acme-token", None))
            .await;
        free.push((name, created.uid().unwrap()));
    }
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let integrations = env.api::<BitbucketIntegration>();
    await_object(&integrations, "acme", "acme to count ci", used_by(1)).await;
    let expected = in_use("acme", "Subscription ci", "it");
    assert_eq!(delete_refused(&integrations, "acme").await, expected);
    let ns = env.ns.name.as_str();

    let dry = kubectl(&[
        "delete",
        "bitbucketintegration",
        "acme",
        "-n",
        ns,
        "--dry-run=server",
    ]);
    assert!(!dry.status.success());
    assert!(String::from_utf8_lossy(&dry.stderr).contains(&expected));

    let bulk = kubectl(&["delete", "bbi", "--all", "-n", ns]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&bulk.stdout),
        String::from_utf8_lossy(&bulk.stderr),
    );
    assert!(!bulk.status.success(), "kubectl says it failed: {stdout}");
    assert!(
        stderr.starts_with("Error from server (Forbidden)") && stderr.contains(&expected),
        "{stderr}"
    );
    for (name, uid) in &free {
        assert!(stdout.contains(&format!("\"{name}\" deleted")), "{stdout}");
        within(
            "the free integration to go",
            await_condition(integrations.clone(), name, is_deleted(uid)),
        )
        .await
        .unwrap();
    }
    let acme = integrations.get("acme").await.unwrap();
    assert!(acme.metadata.deletion_timestamp.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstalling_in_the_documented_order_completes() {
    let env = Env::start("uninstall").await;
    env.ready_cloud_integration().await;
    env.other_ready_integration("other").await;
    for (name, integration) in [("ci", "acme"), ("docs-ci", "other")] {
        env.create(&subscription(name, integration, Some("acme"), &[]))
            .await;
    }
    let integrations = env.api::<BitbucketIntegration>();
    await_object(&integrations, "acme", "acme to count ci", used_by(1)).await;
    delete_refused(&integrations, "acme").await;

    // README, "Uninstalling": the Subscriptions, then — once no integration counts a user —
    // the integrations, while the operator still runs.
    let ns = env.ns.name.as_str();
    for step in [
        &["delete", "subscriptions", "--all", "-n", ns][..],
        &[
            "wait",
            "bbi",
            "--all",
            "-n",
            ns,
            "--for=jsonpath={.status.subscriptions}=0",
        ],
        &["delete", "bbi", "--all", "-n", ns],
    ] {
        let run = kubectl(step);
        assert!(
            run.status.success(),
            "kubectl {step:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let left = integrations
        .list(&kube::api::ListParams::default())
        .await
        .unwrap();
    assert!(left.items.is_empty(), "{:#?}", left.items);
}
