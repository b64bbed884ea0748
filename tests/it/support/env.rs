//! The operator's end-to-end environment: a test namespace on the real API server, the
//! Bitbucket simulator, and the operator's controllers running in-process against them.

use bitbucket_operator::api::{
    BitbucketIntegration, BitbucketIntegrationSpec, CredentialType, Credentials, SecretReference,
    Server, ServerType, Subscription,
    conditions::{DELETION_BLOCKED, READY},
};
use bitbucket_sim::{Fixture, Simulator};
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{conditions::is_deleted, wait::await_condition},
};

use super::{
    PATIENCE, TestNamespace, client, consenting, eventually, install_crds,
    operator::{Operator, await_object, condition, test_settings},
    string_secret, within,
};

pub const API_TOKEN: &str = "FAKE-cloud-api-token-for-jdoe";
pub const ACCESS_TOKEN: &str = "FAKE-cloud-workspace-access-token-acme";
pub const OAUTH_SECRET: &str = "FAKE-oauth-client-secret-acme";
pub const DC_PASSWORD: &str = "FAKE-dc-password-jdoe";
pub const DC_TOKEN: &str = "FAKE-dc-personal-access-token-jdoe";

pub struct Env {
    pub client: Client,
    pub ns: TestNamespace,
    pub sim: Simulator,
    pub operator: Option<Operator>,
    /// The operator's settings, as [`Env::restart_operator`] starts it again.
    settings: bitbucket_operator::controller::Settings,
}

impl Env {
    pub async fn start(prefix: &str) -> Self {
        Self::start_with(prefix, Fixture::demo(), |_| {}).await
    }

    pub async fn start_with(
        prefix: &str,
        fixture: Fixture,
        tune: impl FnOnce(&mut bitbucket_operator::controller::Settings),
    ) -> Self {
        // The operator's logs go to the test's output, shown when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,bitbucket_operator=debug".into()),
            )
            .with_test_writer()
            .try_init();
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::create(&client, prefix).await;
        let sim = Simulator::start(fixture).await.unwrap();
        let mut settings = test_settings(&ns.name);
        tune(&mut settings);
        let operator = Some(Operator::start(client.clone(), settings.clone()));
        Self {
            client,
            ns,
            sim,
            operator,
            settings,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Starts an operator again (after `env.operator.take().unwrap().stop()`), with the
    /// settings the first had.
    pub fn restart_operator(&mut self) {
        self.operator = Some(Operator::start(self.client.clone(), self.settings.clone()));
    }

    pub fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("the operator runs")
    }

    /// Creates (or replaces) Secret `name`, consenting to its credential going to the
    /// simulator.
    pub async fn secret(&self, name: &str, data: &[(&str, &str)]) {
        let secret = consenting(string_secret(name, data), &self.sim.base_url());
        let params = PatchParams::apply("tests").force();
        self.api::<Secret>()
            .patch(name, &params, &Patch::Apply(&secret))
            .await
            .unwrap();
    }

    /// Creates Secret `name` holding jdoe's Cloud API token (the simulator's demo user): the
    /// credential most tests' Cloud integrations use.
    pub async fn jdoe_token_secret(&self, name: &str) {
        self.secret(name, &[("email", "jdoe@example.com"), ("token", API_TOKEN)])
            .await;
    }

    pub fn cloud(
        &self,
        name: &str,
        kind: CredentialType,
        secret: &str,
        workspace: Option<&str>,
    ) -> BitbucketIntegration {
        integration(
            name,
            ServerType::Cloud,
            &self.sim.cloud_api_url(),
            kind,
            secret,
            workspace,
        )
    }

    pub fn data_center(
        &self,
        name: &str,
        kind: CredentialType,
        secret: &str,
    ) -> BitbucketIntegration {
        integration(
            name,
            ServerType::DataCenter,
            &self.sim.base_url(),
            kind,
            secret,
            None,
        )
    }

    pub async fn create<K>(&self, object: &K) -> K
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>()
            .create(&PostParams::default(), object)
            .await
            .unwrap()
    }

    /// The standard Cloud API token integration `acme`, Ready.
    pub async fn ready_cloud_integration(&self) -> BitbucketIntegration {
        self.jdoe_token_secret("acme-token").await;
        self.create(&self.cloud("acme", CredentialType::ApiToken, "acme-token", None))
            .await;
        await_object(
            &self.api(),
            "acme",
            "integration acme to be Ready",
            is_ready_integration,
        )
        .await
    }

    /// Waits until `integration` is gone for good.
    pub async fn wait_deleted(&self, integration: &BitbucketIntegration) {
        let uid = integration.uid().unwrap();
        within(
            "the integration to be deleted",
            await_condition(
                self.api::<BitbucketIntegration>(),
                &integration.name_any(),
                is_deleted(&uid),
            ),
        )
        .await
        .unwrap();
    }

    /// Waits until Events with these (object, reason) pairs exist, and returns all Events.
    pub async fn wait_for_events(&self, expected: &[(&str, &str)]) -> Vec<Event> {
        eventually(
            &format!("the expected Events (object, reason): {expected:?}"),
            PATIENCE,
            || async {
                let events = self.events().await;
                let found = |(name, reason): &(&str, &str)| {
                    events.iter().any(|e| {
                        e.reason.as_deref() == Some(*reason)
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(*name)
                    })
                };
                expected.iter().all(found).then_some(events)
            },
        )
        .await
    }

    pub async fn events(&self) -> Vec<Event> {
        self.api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }
}

pub fn integration(
    name: &str,
    server_type: ServerType,
    url: &str,
    kind: CredentialType,
    secret: &str,
    workspace: Option<&str>,
) -> BitbucketIntegration {
    BitbucketIntegration::new(
        name,
        BitbucketIntegrationSpec {
            display_name: Some(format!("{name} integration")),
            server: Server {
                server_type,
                url: Some(url.to_owned()),
                ca_bundle_secret_ref: None,
            },
            credentials: Credentials {
                credential_type: kind,
                secret_ref: SecretReference {
                    name: secret.to_owned(),
                },
            },
            workspace: workspace.map(str::to_owned),
            validation_interval: "30m".into(),
            webhook: None,
            request_budget: None,
        },
    )
}

pub fn ready_status(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(&str, &str)> {
    condition(conditions, READY).map(|c| (c.status.as_str(), c.reason.as_str()))
}

pub fn is_ready_integration(i: &BitbucketIntegration) -> bool {
    i.status
        .as_ref()
        .is_some_and(|s| ready_status(&s.conditions) == Some(("True", "Validated")))
}

pub fn is_deletion_blocked(i: &BitbucketIntegration) -> bool {
    i.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, DELETION_BLOCKED))
        .is_some_and(|c| c.status == "True")
}

pub fn is_synced(s: &Subscription) -> bool {
    s.status
        .as_ref()
        .is_some_and(|s| ready_status(&s.conditions) == Some(("True", "Synced")))
}

pub fn reason_is(reason: &'static str) -> impl Fn(&BitbucketIntegration) -> bool {
    move |i| {
        i.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, READY))
            .is_some_and(|c| c.reason == reason)
    }
}

pub fn subscription_reason_is(reason: &'static str) -> impl Fn(&Subscription) -> bool {
    move |s| {
        s.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, READY))
            .is_some_and(|c| c.reason == reason)
    }
}

/// Whether an integration's status counts `count` Subscriptions using it.
pub fn used_by(count: i32) -> impl Fn(&BitbucketIntegration) -> bool {
    move |i| i.status.as_ref().and_then(|s| s.subscriptions) == Some(count)
}
