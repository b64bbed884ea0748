//! The operator under the RBAC identity `deploy/` gives it: a missing verb in the shipped Role
//! fails here, not in a user's cluster.

use crate::support::{
    PATIENCE, TestNamespace, apply_manifests, client, consenting, eventually, install_crds,
    operator::{Operator, await_object, condition, sync_request, test_settings},
    string_secret, within, yaml_documents,
};
use bitbucket_operator::{
    api::{
        ALLOWED_SERVERS_ANNOTATION, BitbucketIntegration, BitbucketIntegrationSpec,
        CREDENTIAL_TYPE_LABEL, CredentialType, Credentials, LocalObjectReference, RepositoryFilter,
        SecretReference, Server, ServerType, Subscription, SubscriptionSpec,
        conditions::{DELETION_BLOCKED, READY},
    },
    controller::leader::LeaseSettings,
};
use bitbucket_sim::{Fixture, Simulator};
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{conditions::is_deleted, wait::await_condition},
};
use serde_json::Value;

fn rules_of(path: &str, kind: &str) -> Value {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap();
    yaml_documents(&text)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{path} has no {kind}"))["rules"]
        .clone()
}

#[test]
fn the_cluster_role_and_the_namespaced_role_grant_the_same_rules() {
    assert_eq!(
        rules_of("deploy/rbac.yaml", "ClusterRole"),
        rules_of("deploy/namespaced/role.yaml", "Role")
    );
}

/// The operator's ServiceAccount as `deploy/` installs it, which the Secret-writes policy's
/// binding names.
const OPERATOR: (&str, &str) = (
    bitbucket_operator::api::admission::OPERATOR_NAMESPACE,
    bitbucket_operator::api::admission::OPERATOR_SERVICE_ACCOUNT,
);

/// A client acting as the ServiceAccount `name` of `namespace`.
async fn impersonating((namespace, name): (&str, &str)) -> Client {
    crate::support::impersonating(
        &format!("system:serviceaccount:{namespace}:{name}"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{namespace}"),
        ],
    )
    .await
}

/// The operator's ServiceAccount (created if missing, never deleted: other tests share it), the
/// shipped namespaced Role and the Lease's Role bound to it in `namespace` (which stands for
/// the operator's own too); a client acting as that ServiceAccount.
async fn deployed_identity(admin: &Client, namespace: &str) -> Client {
    let (home, name) = OPERATOR;
    let own = serde_json::json!([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": home}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": home}},
    ]);
    for result in apply_manifests(admin, home, own.as_array().unwrap()).await {
        result.unwrap();
    }
    bind_shipped_roles(admin, namespace, OPERATOR).await;
    impersonating(OPERATOR).await
}

/// The shipped namespaced Role and the Lease's Role in `namespace`, bound to `account`.
async fn bind_shipped_roles(admin: &Client, namespace: &str, (home, name): (&str, &str)) {
    let mut manifests =
        yaml_documents(&std::fs::read_to_string("deploy/namespaced/role.yaml").unwrap());
    manifests.extend(yaml_documents(
        &std::fs::read_to_string("deploy/lease.yaml").unwrap(),
    ));
    for manifest in &mut manifests {
        manifest["metadata"]["namespace"] = namespace.into();
        if let Some(subjects) = manifest.get_mut("subjects") {
            subjects[0]["namespace"] = home.into();
            subjects[0]["name"] = name.into();
        }
    }
    for result in apply_manifests(admin, namespace, &manifests).await {
        result.unwrap();
    }
}

/// The message with which an admission policy (its name, or `ValidatingAdmissionPolicy` for
/// any) refuses `attempt`, once the policy and the RBAC that lets the request reach it are in
/// force (the API server applies both a moment after they are written).
async fn refused_by_a_policy<T, F, Fut>(policy: &str, mut attempt: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let what = format!("{policy} to refuse the request");
    eventually(&what, PATIENCE, || {
        let attempted = attempt();
        async move {
            match attempted.await {
                Err(kube::Error::Api(status)) if status.message.contains(policy) => {
                    Some(status.message)
                }
                _ => None,
            }
        }
    })
    .await
}

/// Settings of the operator in `namespace`, leading with the Lease as deployed.
fn deployed_settings(namespace: &str) -> bitbucket_operator::controller::Settings {
    let mut settings = test_settings(namespace);
    settings.lease = Some(LeaseSettings::new(
        namespace,
        "bitbucket-operator",
        "rbac-operator",
    ));
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_only_the_permissions_deploy_grants() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "rbac").await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let operator_client = deployed_identity(&admin, &ns.name).await;
    let secrets: Api<Secret> = Api::namespaced(operator_client.clone(), &ns.name);
    let refused = secrets
        .delete("anything", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.is_forbidden()),
        "the operator may not delete Secrets: {refused:?}"
    );
    // It leads with the Lease, as deployed.
    let settings = || deployed_settings(&ns.name);
    let operator = Operator::start(operator_client.clone(), settings());

    // The whole life of an integration: validate, sync a Subscription, block and release deletion.
    let secret = consenting(
        string_secret(
            "acme-token",
            &[
                ("email", "jdoe@example.com"),
                ("token", "FAKE-cloud-api-token-for-jdoe"),
            ],
        ),
        &sim.base_url(),
    );
    let pp = PostParams::default();
    Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .create(&pp, &secret)
        .await
        .unwrap();
    let integrations: Api<BitbucketIntegration> = Api::namespaced(admin.clone(), &ns.name);
    integrations
        .create(
            &pp,
            &cloud_integration("acme", CredentialType::ApiToken, "acme-token", &sim),
        )
        .await
        .unwrap();
    let ready = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        condition(conditions, READY).is_some_and(|c| c.status == "True")
    };
    await_object(&integrations, "acme", "acme to be Ready", move |i| {
        i.status.as_ref().is_some_and(|s| ready(&s.conditions))
    })
    .await;

    // The Subscription arrives, and the integration is deleted, while the operator is away:
    // the admission policy lets the delete through (the status names no user yet) and the
    // finalizer, the second line, must hold it.
    operator.stop().await;
    let subscriptions: Api<Subscription> = Api::namespaced(admin.clone(), &ns.name);
    subscriptions
        .create(
            &pp,
            &Subscription::new(
                "ci",
                SubscriptionSpec {
                    integration_ref: LocalObjectReference {
                        name: "acme".into(),
                    },
                    workspace: Some("acme".into()),
                    projects: vec![],
                    repositories: RepositoryFilter::default(),
                    sync_interval: "10m".into(),
                    suspend: false,
                },
            ),
        )
        .await
        .unwrap();
    integrations
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    let _operator = Operator::start(operator_client, settings());
    await_object(&subscriptions, "ci", "ci to sync", move |s| {
        s.status.as_ref().is_some_and(|s| ready(&s.conditions))
    })
    .await;
    let blocked = await_object(&integrations, "acme", "the deletion to be blocked", |i| {
        i.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, DELETION_BLOCKED))
            .is_some_and(|c| c.status == "True")
    })
    .await;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    eventually("the DeletionBlocked Event", PATIENCE, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .any(|e| e.reason.as_deref() == Some("DeletionBlocked"))
            .then_some(())
    })
    .await;
    subscriptions
        .delete("ci", &DeleteParams::default())
        .await
        .unwrap();
    let uid = blocked.uid().unwrap();
    within(
        "the integration to be deleted",
        await_condition(integrations.clone(), "acme", is_deleted(&uid)),
    )
    .await
    .unwrap();
}

/// A `kind` integration named `name` on the simulator's Cloud, its credential in Secret
/// `secret`.
fn cloud_integration(
    name: &str,
    kind: CredentialType,
    secret: &str,
    sim: &Simulator,
) -> BitbucketIntegration {
    BitbucketIntegration::new(
        name,
        BitbucketIntegrationSpec {
            display_name: None,
            server: Server {
                server_type: ServerType::Cloud,
                url: Some(sim.cloud_api_url()),
                ca_bundle_secret_ref: None,
            },
            credentials: Credentials {
                credential_type: kind,
                secret_ref: SecretReference {
                    name: secret.into(),
                },
            },
            workspace: None,
            validation_interval: "30m".into(),
            webhook: None,
            request_budget: None,
        },
    )
}

fn refresh_token_of(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()["refreshToken"].0.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_users_rotated_refresh_token_is_saved_and_nothing_else_may_be_written() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "rbac-oauth").await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let operator_client = deployed_identity(&admin, &ns.name).await;
    let pp = PostParams::default();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let as_operator: Api<Secret> = Api::namespaced(operator_client.clone(), &ns.name);
    let write = |name: &'static str, patch: Value| {
        let as_operator = as_operator.clone();
        async move {
            as_operator
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    let refusal = |result: Result<Secret, kube::Error>| match result {
        Err(kube::Error::Api(status)) if status.code == 403 => status.message,
        other => panic!("the write went through: {other:?}"),
    };

    // Its RBAC may patch Secrets; the admission policy narrows that to refresh tokens.
    secrets
        .create(&pp, &string_secret("plain", &[("token", "x")]))
        .await
        .unwrap();
    // (The API server enforces a policy a moment after it is installed; a dry run writes
    // nothing meanwhile.)
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let patch = serde_json::json!({"data": {"token": "eQ=="}});
    // (Until the RoleBinding is in force too, RBAC refuses it for another reason.)
    let merge = Patch::Merge(&patch);
    refused_by_a_policy("ValidatingAdmissionPolicy", || {
        as_operator.patch("plain", &dry_run, &merge)
    })
    .await;
    let message = refusal(write("plain", serde_json::json!({"data": {"token": "eQ=="}})).await);
    assert!(
        message.contains(
            "the operator may only write Secrets labelled scm.shippable.io/credential-type: \
             OAuthUser; Secret plain is not"
        ),
        "{message}"
    );
    let mut secret = consenting(
        string_secret(
            "acme-oauth",
            &[
                ("clientId", crate::support::OAUTH_CLIENT_ID),
                ("clientSecret", crate::support::OAUTH_CLIENT_SECRET),
                ("refreshToken", &crate::support::signed_in(&sim).await),
            ],
        ),
        &sim.base_url(),
    );
    secret
        .labels_mut()
        .insert(CREDENTIAL_TYPE_LABEL.into(), "OAuthUser".into());
    let signed_in = refresh_token_of(&secrets.create(&pp, &secret).await.unwrap());
    for patch in [
        serde_json::json!({"data": {"clientSecret": "c3RvbGVu"}}),
        serde_json::json!({"metadata": {"annotations": {ALLOWED_SERVERS_ANNOTATION: "https://elsewhere.example"}}}),
        serde_json::json!({"immutable": true}),
        serde_json::json!({"metadata": {"finalizers": ["example.com/hold"]}}),
    ] {
        let message = refusal(write("acme-oauth", patch).await);
        assert!(
            message
                .contains("the operator may only change data.refreshToken of an OAuthUser Secret"),
            "{message}"
        );
    }

    // The operator as deployed validates the signed-in user and saves the rotated token.
    let operator = Operator::start(operator_client.clone(), deployed_settings(&ns.name));
    let integrations: Api<BitbucketIntegration> = Api::namespaced(admin.clone(), &ns.name);
    integrations
        .create(
            &pp,
            &cloud_integration("acme", CredentialType::OAuthUser, "acme-oauth", &sim),
        )
        .await
        .unwrap();
    let ready = |i: &BitbucketIntegration| {
        i.status
            .as_ref()
            .is_some_and(|s| condition(&s.conditions, READY).is_some_and(|c| c.status == "True"))
    };
    let validated = await_object(&integrations, "acme", "acme to be Ready", ready).await;
    let account = validated.status.unwrap().account.unwrap();
    assert_eq!(account.username.as_deref(), Some("jdoe"));
    let saved = refresh_token_of(&secrets.get("acme-oauth").await.unwrap());
    assert_ne!(
        saved, signed_in,
        "Bitbucket rotated the token; the Secret has the new one"
    );

    // Its own write is not a new credential: validating again reuses the access token.
    let grants = || {
        sim.control()
            .counters()
            .endpoint("POST /site/oauth2/access_token")
    };
    let before = grants();
    let answered = |value: &'static str| {
        move |i: &BitbucketIntegration| {
            i.status
                .as_ref()
                .and_then(|s| s.last_handled_sync_request.as_deref())
                == Some(value)
        }
    };
    integrations
        .patch("acme", &PatchParams::default(), &sync_request("again"))
        .await
        .unwrap();
    let again = await_object(
        &integrations,
        "acme",
        "the re-validation",
        answered("again"),
    )
    .await;
    assert!(ready(&again));
    assert_eq!(
        grants(),
        before,
        "no new grant for the operator's own write"
    );

    // A new operator process has only the Secret: the saved token works, and rotates again.
    operator.stop().await;
    let _operator = Operator::start(operator_client, deployed_settings(&ns.name));
    integrations
        .patch("acme", &PatchParams::default(), &sync_request("restarted"))
        .await
        .unwrap();
    let restarted = await_object(
        &integrations,
        "acme",
        "the restarted validation",
        answered("restarted"),
    )
    .await;
    assert!(ready(&restarted), "{:?}", restarted.status);
    assert_eq!(grants(), before + 1);
    let rotated = refresh_token_of(&secrets.get("acme-oauth").await.unwrap());
    assert!(rotated != saved && rotated != signed_in);

    // A Secret without the label is not used: a rotation could not be saved.
    let mut unlabelled = secret.clone();
    unlabelled.metadata.name = Some("unlabelled".into());
    unlabelled.metadata.labels = None;
    unlabelled.metadata.resource_version = None;
    secrets.create(&pp, &unlabelled).await.unwrap();
    integrations
        .create(
            &pp,
            &cloud_integration("unlabelled", CredentialType::OAuthUser, "unlabelled", &sim),
        )
        .await
        .unwrap();
    let stalled = await_object(&integrations, "unlabelled", "SecretNotWritable", |i| {
        i.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, READY))
            .is_some_and(|c| c.reason == "SecretNotWritable")
    })
    .await;
    let message = condition(&stalled.status.unwrap().conditions, READY)
        .unwrap()
        .message
        .clone();
    assert!(
        message.starts_with(
            "Secret unlabelled lacks the label scm.shippable.io/credential-type: OAuthUser"
        ),
        "{message}"
    );
}

/// `deploy/` under a kustomize overlay that renames everything (`namePrefix`) and moves the
/// operator to another namespace: the Secret-writes policy still narrows the ServiceAccount the
/// overlay creates, so its RBAC `patch` on Secrets is not left wide open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_writes_policy_follows_a_kustomize_name_prefix_and_namespace() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "rbac-prefix").await;
    // The overlay beside the repository's deploy/ (kustomize loads bases by relative path).
    let overlay = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("overlay-{}", ns.name));
    std::fs::create_dir_all(&overlay).unwrap();
    let prefix = format!("{}-", ns.name);
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "namePrefix: {prefix}\nnamespace: {}\nresources:\n  - ../../deploy\n",
            ns.name
        ),
    )
    .unwrap();
    let rendered = crate::support::kubectl_ok(&["kustomize", overlay.to_str().unwrap()]);
    std::fs::remove_dir_all(&overlay).unwrap();
    let account = format!("{prefix}bitbucket-operator");
    let wanted: Vec<Value> = yaml_documents(&rendered)
        .into_iter()
        .filter(|d| {
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            (d["kind"] == "ServiceAccount" && name == account)
                || name
                    == format!(
                        "{prefix}{}",
                        bitbucket_operator::api::admission::OPERATOR_SECRET_WRITES_POLICY
                    )
        })
        .map(|mut d| {
            if d["kind"] != "ServiceAccount" {
                // (kustomize does not know these kinds are cluster-scoped.)
                d["metadata"].as_object_mut().unwrap().remove("namespace");
            }
            d
        })
        .collect();
    assert_eq!(
        wanted.len(),
        3,
        "the ServiceAccount, the policy and its binding: {rendered}"
    );
    let binding = wanted
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .unwrap();
    assert_eq!(binding["spec"]["paramRef"]["name"], account.as_str());
    assert_eq!(binding["spec"]["paramRef"]["namespace"], ns.name.as_str());
    for result in apply_manifests(&admin, &ns.name, &wanted).await {
        result.unwrap();
    }
    bind_shipped_roles(&admin, &ns.name, (&ns.name, &account)).await;
    let as_operator: Api<Secret> =
        Api::namespaced(impersonating((&ns.name, &account)).await, &ns.name);
    Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &string_secret("plain", &[("token", "x")]),
        )
        .await
        .unwrap();
    let patch = serde_json::json!({"data": {"token": "eQ=="}});
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let policy = format!(
        "{prefix}{}",
        bitbucket_operator::api::admission::OPERATOR_SECRET_WRITES_POLICY
    );
    let merge = Patch::Merge(&patch);
    let refused =
        refused_by_a_policy(&policy, || as_operator.patch("plain", &dry_run, &merge)).await;
    assert!(
        refused.contains("the operator may only write Secrets labelled"),
        "{refused}"
    );
    // The cluster-scoped objects this test added.
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(admin.clone())
        .delete(&policy, &DeleteParams::default())
        .await;
}

/// Only the operator writes RepositorySlices: someone whose RBAC lets them create slices is
/// still refused by the admission policy, so no one can forge a list the generator would serve;
/// the operator's ServiceAccount, as deployed, may write them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_may_write_repository_slices() {
    use bitbucket_operator::api::{RepositorySlice, SUBSCRIPTION_LABEL};
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "rbac-slices").await;
    let operator_client = deployed_identity(&admin, &ns.name).await;
    let writer = serde_json::json!([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "slice-writer"},
         "rules": [{"apiGroups": ["scm.shippable.io"], "resources": ["repositoryslices"], "verbs": ["*"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "slice-writer"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "slice-writer"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory@example.com"}]},
    ]);
    for result in apply_manifests(&admin, &ns.name, writer.as_array().unwrap()).await {
        result.unwrap();
    }
    let repository: bitbucket_operator::api::Repository = serde_json::from_value(
        serde_json::json!({"fullName": "evil/backdoor", "name": "backdoor", "private": false, "cloneUrls": {}}),
    )
    .unwrap();
    let mut forged = RepositorySlice::new("forged", vec![repository]);
    forged
        .metadata
        .labels
        .get_or_insert_default()
        .insert(SUBSCRIPTION_LABEL.into(), "acme-ci".into());
    let tenant = crate::support::impersonating("mallory@example.com", &[]).await;
    let as_tenant: Api<RepositorySlice> = Api::namespaced(tenant, &ns.name);
    let create = PostParams::default();
    let refusal = refused_by_a_policy("ValidatingAdmissionPolicy", || {
        as_tenant.create(&create, &forged)
    })
    .await;
    assert!(
        refusal.contains("RepositorySlices are written by the bitbucket-operator only"),
        "{refusal}"
    );
    let as_operator: Api<RepositorySlice> = Api::namespaced(operator_client, &ns.name);
    let written = eventually("the operator's RBAC to be in force", PATIENCE, || async {
        as_operator
            .create(&PostParams::default(), &forged)
            .await
            .ok()
    })
    .await;
    assert_eq!(written.repositories.len(), 1);
}
