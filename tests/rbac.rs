//! The operator under the RBAC identity `deploy/` gives it: a missing verb in the shipped Role
//! fails here, not in a user's cluster.

mod support;

use bitbucket_operator::{
    api::{
        BitbucketIntegration, BitbucketIntegrationSpec, CredentialType, Credentials,
        LocalObjectReference, RepositoryFilter, SecretReference, Server, ServerType, Subscription,
        SubscriptionSpec,
        conditions::{DELETION_BLOCKED, READY},
    },
    controller::leader::LeaseSettings,
};
use bitbucket_sim::{Fixture, Simulator};
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{conditions::is_deleted, wait::await_condition},
};
use serde_json::Value;
use support::{
    TestNamespace, apply_manifests, client, consenting, install_crds,
    operator::{Operator, condition, eventually, test_settings},
    string_secret, within, yaml_documents,
};

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

/// A client acting as the ServiceAccount `bitbucket-operator` of `namespace`.
async fn impersonating(namespace: &str) -> Client {
    support::impersonating(
        &format!("system:serviceaccount:{namespace}:bitbucket-operator"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{namespace}"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_only_the_permissions_deploy_grants() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "rbac").await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();

    // The ServiceAccount, the shipped namespaced Role and the Lease's Role, bound in the test
    // namespace (which stands for the operator's own too).
    let mut manifests =
        yaml_documents(&std::fs::read_to_string("deploy/namespaced/role.yaml").unwrap());
    manifests.extend(yaml_documents(
        &std::fs::read_to_string("deploy/lease.yaml").unwrap(),
    ));
    manifests.push(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bitbucket-operator"}
    }));
    for manifest in &mut manifests {
        manifest["metadata"]["namespace"] = ns.name.clone().into();
        if let Some(subjects) = manifest.get_mut("subjects") {
            subjects[0]["namespace"] = ns.name.clone().into();
        }
    }
    for result in apply_manifests(&admin, &ns.name, &manifests).await {
        result.unwrap();
    }
    let operator_client = impersonating(&ns.name).await;
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
    let settings = || {
        let mut settings = test_settings(&ns.name);
        settings.lease = Some(LeaseSettings::new(
            &ns.name,
            "bitbucket-operator",
            "rbac-operator",
        ));
        settings
    };
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
            &BitbucketIntegration::new(
                "acme",
                BitbucketIntegrationSpec {
                    display_name: None,
                    server: Server {
                        server_type: ServerType::Cloud,
                        url: Some(sim.cloud_api_url()),
                        ca_bundle_secret_ref: None,
                    },
                    credentials: Credentials {
                        credential_type: CredentialType::ApiToken,
                        secret_ref: SecretReference {
                            name: "acme-token".into(),
                        },
                    },
                    workspace: None,
                    validation_interval: "30m".into(),
                },
            ),
        )
        .await
        .unwrap();
    let ready = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        condition(conditions, READY).is_some_and(|c| c.status == "True")
    };
    eventually(&integrations, "acme", "acme to be Ready", move |i| {
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
    eventually(&subscriptions, "ci", "ci to sync", move |s| {
        s.status.as_ref().is_some_and(|s| ready(&s.conditions))
    })
    .await;
    let blocked = eventually(&integrations, "acme", "the deletion to be blocked", |i| {
        i.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, DELETION_BLOCKED))
            .is_some_and(|c| c.status == "True")
    })
    .await;
    within("the DeletionBlocked Event", async {
        let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
        while !events
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .any(|e| e.reason.as_deref() == Some("DeletionBlocked"))
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
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
