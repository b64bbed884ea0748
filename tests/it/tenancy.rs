//! Multi-tenant safety on the real API server. A tenant — an impersonated user whose Role lets
//! it write integrations and Subscriptions in its namespace but not read Secrets — tries to send
//! a credential it may use (but not read) to a server of its choosing, or to make the operator
//! probe internal addresses. Each attempt ends in a `Stalled` condition that names the rule,
//! and the server named sees no request at all. The operator runs with its defaults: only
//! Bitbucket Cloud is allowed operator-wide, so every other server needs a Secret's consent.

use std::{net::IpAddr, sync::Arc};

use crate::support::{
    PATIENCE, TestNamespace, apply_manifests, consenting,
    env::*,
    eventually, impersonating,
    operator::{await_object, condition, subscription},
    string_secret,
};
use bitbucket_operator::{
    api::{BitbucketIntegration, CredentialType, Subscription, conditions::STALLED},
    bitbucket::reach::{Lookup, system_lookup},
};
use bitbucket_sim::{Fixture, Simulator};
use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition as KubeCondition,
};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    discovery::ApiResource,
};
use serde_json::json;

const TENANT: &str = "tenant-alice";

/// What the tenant may do: everything with integrations and Subscriptions in its namespace,
/// nothing with Secrets.
fn tenant_role() -> Vec<serde_json::Value> {
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "bitbucket-tenant"},
            "rules": [
                {"apiGroups": ["scm.shippable.io"],
                 "resources": ["bitbucketintegrations", "subscriptions"], "verbs": ["*"]},
                {"apiGroups": ["scm.shippable.io"],
                 "resources": ["bitbucketintegrations/status", "subscriptions/status"],
                 "verbs": ["get"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "bitbucket-tenant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "bitbucket-tenant"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": TENANT}],
        }),
    ]
}

struct Tenancy {
    env: Env,
    /// The tenant's view of its namespace.
    tenant: Client,
    /// A server the tenant controls: it must never see a request.
    attacker: Simulator,
}

impl Tenancy {
    /// The namespace, its tenant, and the Secret `team-token` that the administrator wrote:
    /// a Cloud API token consenting to the team's real server (the simulator) only.
    async fn start(prefix: &str, lookup: Option<Lookup>) -> Self {
        Self::start_with(prefix, |settings| {
            if let Some(lookup) = lookup {
                settings.transport.lookup = lookup;
            }
        })
        .await
    }

    async fn start_with(
        prefix: &str,
        settings: impl FnOnce(&mut bitbucket_operator::controller::Settings),
    ) -> Self {
        let env = Env::start_with(prefix, Fixture::demo(), settings).await;
        env.jdoe_token_secret("team-token").await;
        for result in apply_manifests(&env.client, &env.ns.name, &tenant_role()).await {
            result.unwrap();
        }
        let tenant = impersonating(TENANT, &[]).await;
        // The API server's authorizer learns a new RoleBinding a moment after it is created:
        // wait until the tenant may do what its Role grants before testing what it may not.
        let integrations = Api::<BitbucketIntegration>::namespaced(tenant.clone(), &env.ns.name);
        eventually("the tenant's Role to be in force", PATIENCE, || async {
            integrations.list(&ListParams::default()).await.ok()
        })
        .await;
        let refused = Api::<Secret>::namespaced(tenant.clone(), &env.ns.name)
            .get("team-token")
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 403),
            "the tenant may not read Secrets: {refused:?}"
        );
        let attacker = Simulator::start(Fixture::demo()).await.unwrap();
        Self {
            env,
            tenant,
            attacker,
        }
    }

    fn integrations(&self) -> Api<BitbucketIntegration> {
        Api::namespaced(self.tenant.clone(), &self.env.ns.name)
    }

    /// The tenant creates an integration of `kind` on `url` with Secret `secret`.
    async fn integration(&self, name: &str, url: &str, kind: CredentialType, secret: &str) {
        let mut integration = self.env.cloud(name, kind, secret, None);
        integration.spec.server.url = Some(url.to_owned());
        self.integrations()
            .create(&PostParams::default(), &integration)
            .await
            .unwrap();
    }

    /// An administrator's Secret `name` with the team's token, consenting to `servers`.
    async fn consenting_secret(&self, name: &str, servers: &str) {
        let secret = consenting(
            string_secret(name, &[("email", "jdoe@example.com"), ("token", API_TOKEN)]),
            servers,
        );
        self.env
            .api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// What the tenant sees on integration `name` once it stalls.
    async fn stalled(&self, name: &str) -> KubeCondition {
        let integration = await_object(&self.integrations(), name, "it to stall", |i| {
            i.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, STALLED))
                .is_some_and(|c| c.status == "True")
        })
        .await;
        condition(&integration.status.unwrap().conditions, STALLED)
            .unwrap()
            .clone()
    }

    fn attacker_saw_nothing(&self) {
        let seen = self.attacker.control().counters();
        assert_eq!(seen.total, 0, "the tenant's server saw requests: {seen:?}");
    }
}

fn not_allowed(what: &str, url: &str, secret: &str, annotation: &str) -> String {
    format!(
        "{what} {url} is not allowed for the credential in Secret {secret}: it is not among the \
         operator's allowed servers (cloud) and {annotation}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_send_a_credential_to_a_server_of_its_choosing() {
    let t = Tenancy::start("tenant-url", None).await;
    // The team's own server works: the Secret consents to it.
    t.integration(
        "team",
        &t.env.sim.cloud_api_url(),
        CredentialType::ApiToken,
        "team-token",
    )
    .await;
    await_object(
        &t.integrations(),
        "team",
        "the team's integration to be Ready",
        is_ready_integration,
    )
    .await;

    let url = t.attacker.cloud_api_url();
    t.integration("stolen", &url, CredentialType::ApiToken, "team-token")
        .await;
    let stalled = t.stalled("stolen").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert_eq!(
        stalled.message,
        not_allowed(
            "server",
            &url,
            "team-token",
            "Secret team-token's annotation scm.shippable.io/allowed-servers does not name it"
        )
    );
    // A Subscription cannot widen what its integration may reach: it waits on it.
    Api::<Subscription>::namespaced(t.tenant.clone(), &t.env.ns.name)
        .create(
            &PostParams::default(),
            &subscription("ci", "stolen", Some("acme"), &[]),
        )
        .await
        .unwrap();
    await_object(
        &Api::<Subscription>::namespaced(t.tenant.clone(), &t.env.ns.name),
        "ci",
        "the Subscription to wait for its integration",
        |s: &Subscription| {
            s.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|c| c.reason == "IntegrationNotReady")
        },
    )
    .await;
    t.attacker_saw_nothing();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_make_the_operator_probe_a_metadata_address() {
    let t = Tenancy::start("tenant-metadata", None).await;
    // Written plainly, the address is refused at admission: the object shows it.
    let mut probe = t
        .env
        .cloud("probe", CredentialType::ApiToken, "team-token", None);
    probe.spec.server.url = Some("https://169.254.169.254/2.0".into());
    let refused = t
        .integrations()
        .create(&PostParams::default(), &probe)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("must not name a link-local or cloud-metadata address"),
        "{refused}"
    );

    // Spelled as one number it passes admission, and the operator refuses it: not an
    // allowed server...
    let disguised = "https://2852039166/2.0";
    t.integration("probe", disguised, CredentialType::ApiToken, "team-token")
        .await;
    let stalled = t.stalled("probe").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert_eq!(
        stalled.message,
        not_allowed(
            "server",
            "https://169.254.169.254/2.0",
            "team-token",
            "Secret team-token's annotation scm.shippable.io/allowed-servers does not name it"
        )
    );
    // ...and even an administrator's consent does not open it.
    t.consenting_secret("careless", "https://2852039166").await;
    t.integration("careless", disguised, CredentialType::ApiToken, "careless")
        .await;
    let stalled = t.stalled("careless").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert_eq!(
        stalled.message,
        "refusing to connect: 169.254.169.254 is a link-local address, where clouds serve \
         instance metadata; the operator does not connect there (--refused-networks)"
    );
}

/// A resolver that answers `address` for `name` and resolves every other name as usual.
fn resolving(name: &'static str, address: &str) -> Lookup {
    let system = system_lookup();
    let address: IpAddr = address.parse().unwrap();
    Arc::new(move |host: String| {
        if host == name {
            Box::pin(async move { Ok(vec![address]) })
        } else {
            system(host)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_a_metadata_address_is_refused_where_it_connects() {
    // `rebind.test` answers the metadata address, as a rebinding name does after its first
    // answer; every other name resolves as usual.
    let lookup = resolving("rebind.test", "169.254.169.254");
    let t = Tenancy::start("tenant-rebind", Some(lookup)).await;
    // The administrator consented to the name: the allow-list passes, the address does not.
    t.consenting_secret("rebinding", "https://rebind.test:7990")
        .await;
    t.integration(
        "rebind",
        "https://rebind.test:7990/2.0",
        CredentialType::ApiToken,
        "rebinding",
    )
    .await;
    let stalled = t.stalled("rebind").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert_eq!(
        stalled.message,
        "refusing to connect: rebind.test is 169.254.169.254, a link-local address, where \
         clouds serve instance metadata; the operator does not connect there \
         (--refused-networks)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_token_endpoint_derived_from_server_url_obeys_the_same_rules() {
    let t = Tenancy::start("tenant-oauth", None).await;
    let oauth = [
        ("clientId", "acme-consumer"),
        ("clientSecret", OAUTH_SECRET),
    ];
    t.env.secret("team-oauth", &oauth).await;
    let url = t.attacker.cloud_api_url();
    t.integration("stolen", &url, CredentialType::OAuthConsumer, "team-oauth")
        .await;
    let stalled = t.stalled("stolen").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert!(
        stalled
            .message
            .starts_with(&format!("server {url} is not allowed"))
    );

    // A consent limited to a server's API does not cover a token endpoint beside it.
    let secret = consenting(string_secret("api-only", &oauth), &url);
    t.env
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    t.integration("api-only", &url, CredentialType::OAuthConsumer, "api-only")
        .await;
    let stalled = t.stalled("api-only").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert_eq!(
        stalled.message,
        not_allowed(
            "the OAuth token endpoint derived from server.url",
            &format!("{}/site/oauth2/access_token", t.attacker.base_url()),
            "api-only",
            "Secret api-only's annotation scm.shippable.io/allowed-servers does not name it"
        )
    );
    t.attacker_saw_nothing();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_bundle_is_read_only_from_the_integrations_namespace() {
    let t = Tenancy::start("tenant-ca", None).await;
    let other = TestNamespace::create(&t.env.client, "tenant-ca-other").await;
    Api::<Secret>::namespaced(t.env.client.clone(), &other.name)
        .create(
            &PostParams::default(),
            &string_secret("ca", &[("ca.crt", "not a certificate")]),
        )
        .await
        .unwrap();
    let mut manifest = serde_json::to_value(t.env.cloud(
        "elsewhere",
        CredentialType::ApiToken,
        "team-token",
        None,
    ))
    .unwrap();
    manifest["spec"]["server"]["url"] = t.env.sim.cloud_api_url().into();
    manifest["spec"]["server"]["caBundleSecretRef"] =
        json!({"name": "ca", "key": "ca.crt", "namespace": other.name});
    let resource = ApiResource::erase::<BitbucketIntegration>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(t.tenant.clone(), &t.env.ns.name, &resource);

    // Applied (as `kubectl apply --server-side` does), the API server refuses the field...
    let refused = api
        .patch(
            "elsewhere",
            &PatchParams::apply("tenant"),
            &Patch::Apply(&manifest),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("field not declared in schema"),
        "{refused}"
    );
    // ...and a plain create drops it: the operator looks in the integration's own namespace.
    let object: DynamicObject = serde_json::from_value(manifest).unwrap();
    let created = api.create(&PostParams::default(), &object).await.unwrap();
    assert_eq!(
        created.data["spec"]["server"]["caBundleSecretRef"],
        json!({"name": "ca", "key": "ca.crt"})
    );
    let stalled = t.stalled("elsewhere").await;
    assert_eq!(
        (stalled.reason.as_str(), stalled.message.as_str()),
        ("SecretNotFound", "Secret ca not found")
    );
    assert_eq!(t.env.sim.control().counters().total, 0, "nothing was sent");
}

/// A Secret's consent alone never sends its credential to the operator's own pod or the
/// cluster's services (as the operator runs by default): a consented loopback server is refused
/// before anything is sent, and a consented name that resolves to loopback where it connects.
/// (The demo's operator names its loopback simulator in `--allowed-servers`, which works:
/// `demo::ctrl_c_of_make_run_under_a_pipe_leaves_nothing_running` waits for it to be Ready.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_and_cluster_internal_servers_need_the_operators_own_allow_list() {
    let lookup = resolving("bitbucket.team.example", "127.0.0.1");
    let t = Tenancy::start_with("tenant-internal", |settings| {
        settings.transport.lookup = lookup;
        settings.transport.internal_by_consent = false;
    })
    .await;
    // team-token consents to the team's simulator, on loopback.
    let url = t.env.sim.cloud_api_url();
    t.integration("team", &url, CredentialType::ApiToken, "team-token")
        .await;
    let stalled = t.stalled("team").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert_eq!(
        stalled.message,
        format!(
            "server {url} is a loopback address: only the operator's allowed servers \
             (--allowed-servers, now cloud) may name one, not Secret team-token's annotation \
             scm.shippable.io/allowed-servers alone"
        )
    );

    let port = url::Url::parse(&url).unwrap().port().unwrap();
    let named = format!("https://bitbucket.team.example:{port}");
    t.consenting_secret("named-token", &named).await;
    t.integration(
        "named",
        &format!("{named}/2.0"),
        CredentialType::ApiToken,
        "named-token",
    )
    .await;
    let stalled = t.stalled("named").await;
    assert_eq!(stalled.reason, "ServerNotAllowed");
    assert!(
        stalled.message.contains(
            "bitbucket.team.example is 127.0.0.1, a loopback address, the operator's own pod, \
             which a Secret's consent alone cannot name"
        ),
        "{}",
        stalled.message
    );
    let seen = t.env.sim.control().counters();
    assert_eq!(seen.total, 0, "the loopback server saw requests: {seen:?}");
}
