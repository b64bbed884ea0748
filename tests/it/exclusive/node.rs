//! The operator as users run it, on the plane's real node (`hack/control-plane.sh up --node`):
//! the image `make image` built, installed with the README's commands from `deploy/`, two
//! replicas under `deploy/`'s RBAC with a read-only root filesystem, reconciling against the
//! simulator behind TLS on the node's bridge (pods reach nothing else). Then the leader's pod is
//! deleted and the Deployment rolled, and finally everything is uninstalled in the documented
//! order. One scenario, in order: it installs and removes cluster-wide objects.

use std::time::{Duration, Instant};

use crate::support::{
    PATIENCE, TestNamespace, client, consenting, eventually, install_crds, kubectl_ok,
    operator::{await_object, condition, subscription, sync_request},
    string_secret,
    tls::{pki, tls_terminator},
};
use bitbucket_operator::api::{
    BitbucketIntegration, CredentialType, SecretKeyReference, Subscription,
};
use bitbucket_sim::{Fixture, Simulator};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Pod, Secret, Service},
        events::v1::Event,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PatchParams, PostParams},
};

/// The node's bridge address: the API server, and the simulator's TLS front, listen there.
const BRIDGE: &str = "10.244.0.1";
const OPERATOR_NAMESPACE: &str = "bitbucket-operator";
const TOKEN: &str = "FAKE-cloud-api-token-for-jdoe";

fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    condition(conditions, "Ready").is_some_and(|c| c.status == "True")
}

async fn holder(client: &Client) -> Option<String> {
    crate::support::lease_holder(client, OPERATOR_NAMESPACE, OPERATOR_NAMESPACE).await
}

async fn operator_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=bitbucket-operator"))
        .await
        .unwrap()
        .items
}

/// Waits for a new leader other than `old`, and returns it with the time it took.
async fn new_leader(client: &Client, old: &str, since: Instant) -> (String, Duration) {
    eventually(
        &format!("a new leader other than {old}"),
        PATIENCE,
        || async {
            let leader = holder(client).await.filter(|h| h != old)?;
            Some((leader, since.elapsed()))
        },
    )
    .await
}

/// A plain HTTP/1.0 GET of a Service's ClusterIP, through kube-proxy's rules (which appear a
/// moment after the Service's endpoints do: until then, it asks again).
/// Waits until the plugin generator's Service sends traffic to every replica, both ready
/// (each answers from its own cache, leader and standby alike); returns their names.
async fn plugin_served_by_every_replica(client: &Client) -> Vec<String> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let selector =
        ListParams::default().labels("kubernetes.io/service-name=bitbucket-operator-plugin");
    let replicas = ListParams::default().labels("app.kubernetes.io/name=bitbucket-operator");
    eventually(
        "the plugin Service to reach both ready replicas",
        PATIENCE,
        || async {
            let mut targets: Vec<String> = slices
                .list(&selector)
                .await
                .unwrap()
                .items
                .iter()
                .flat_map(|slice| slice.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .filter_map(|e| e.target_ref.as_ref().and_then(|t| t.name.clone()))
                .collect();
            targets.sort();
            let mut ready: Vec<String> = pods
                .list(&replicas)
                .await
                .unwrap()
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
            ready.sort();
            (ready.len() == 2 && targets == ready).then_some(targets)
        },
    )
    .await
}

/// Waits until the operator's Deployment has rolled out (`kubectl rollout status`).
fn rollout_status() {
    kubectl_ok(&[
        "-n",
        OPERATOR_NAMESPACE,
        "rollout",
        "status",
        "deployment/bitbucket-operator",
        "--timeout=180s",
    ]);
}

async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = || async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        (answer.split(' ').nth(1) == Some("200")).then_some(answer)
    };
    // Each attempt is bounded too: a connection to a ClusterIP without rules yet may hang, and
    // `eventually` only checks its deadline between attempts.
    eventually(
        &format!("http://{address}{path} to answer"),
        PATIENCE,
        || async {
            tokio::time::timeout(Duration::from_secs(10), attempt())
                .await
                .ok()
                .flatten()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_on_a_real_node_reconciles_hands_over_and_uninstalls() {
    let _alone = crate::support::alone();
    let client = client().await;
    let nodes = kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert!(
        nodes.contains("node/bbo-node"),
        "no node: make test starts the plane with `hack/control-plane.sh exec --node`"
    );
    let archive = repo().join("target/image/bitbucket-operator.oci.tar");
    assert!(
        archive.exists(),
        "no image: make test builds it first (make image)"
    );
    let import = std::process::Command::new(repo().join("hack/node.sh"))
        .args(["import", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(import.status.success(), "{import:?}");

    // --- install, as the README says ---
    let applied = Instant::now();
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        "deploy/",
    ]);
    rollout_status();
    eprintln!(
        "kubectl apply -k deploy/ → Available: {:?}",
        applied.elapsed()
    );
    let deployment = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get(OPERATOR_NAMESPACE)
        .await
        .unwrap();
    assert_eq!(deployment.status.unwrap().available_replicas, Some(2));
    for pod in operator_pods(&client).await {
        let container = &pod.spec.unwrap().containers[0];
        let security = container.security_context.clone().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(container.image.as_deref(), Some("bitbucket-operator:0.1.0"));
    }

    // --- Bitbucket behind a private CA on the bridge, and a team's resources ---
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let backend = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let pki = pki(BRIDGE);
    let https = tls_terminator(pki.server, BRIDGE.parse().unwrap(), backend).await;
    let server = format!("https://{https}");
    let ns = TestNamespace::create(&client, "node").await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let token = consenting(
        string_secret(
            "acme-token",
            &[("email", "jdoe@example.com"), ("token", TOKEN)],
        ),
        &server,
    );
    secrets
        .create(&PostParams::default(), &token)
        .await
        .unwrap();
    let ca = string_secret("acme-ca", &[("ca.crt", &pki.ca_pem)]);
    secrets.create(&PostParams::default(), &ca).await.unwrap();
    let integrations = Api::<BitbucketIntegration>::namespaced(client.clone(), &ns.name);
    let mut acme = crate::support::env::integration(
        "acme",
        bitbucket_operator::api::ServerType::Cloud,
        &format!("{server}/2.0"),
        CredentialType::ApiToken,
        "acme-token",
        None,
    );
    acme.spec.server.ca_bundle_secret_ref = Some(SecretKeyReference {
        name: "acme-ca".into(),
        key: "ca.crt".into(),
    });
    integrations
        .create(&PostParams::default(), &acme)
        .await
        .unwrap();
    let subscriptions = Api::<Subscription>::namespaced(client.clone(), &ns.name);
    subscriptions
        .create(
            &PostParams::default(),
            &subscription("ci", "acme", Some("acme"), &[]),
        )
        .await
        .unwrap();
    let synced = await_object(&subscriptions, "ci", "ci to sync from the pod", |s| {
        s.status.as_ref().is_some_and(|s| ready(&s.conditions))
    })
    .await;
    let listed = synced.status.clone().unwrap().repository_count;
    await_object(&integrations, "acme", "acme to be Ready", |i| {
        i.status.as_ref().is_some_and(|s| ready(&s.conditions))
    })
    .await;

    // --- metrics through the Service, JSON logs ---
    let service = Api::<Service>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get("bitbucket-operator-metrics")
        .await
        .unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let metrics = http_get(&format!("{cluster_ip}:8080"), "/metrics").await;
    assert!(metrics.contains("bitbucket_operator_leader"), "{metrics}");
    let leader = holder(&client).await.expect("a replica leads");
    let served_by = plugin_served_by_every_replica(&client).await;
    assert!(served_by.contains(&leader), "{served_by:?}");
    let logs = kubectl_ok(&["-n", OPERATOR_NAMESPACE, "logs", &leader]);
    assert!(logs.lines().count() > 2, "{logs}");
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
    }
    assert!(!logs.contains(TOKEN), "the token is in the logs");

    // The first Ready of each is announced once; wait for both Events before counting.
    let events = Api::<Event>::namespaced(client.clone(), &ns.name);
    let announced = eventually(
        "the first Events (Validated and Synced)",
        PATIENCE,
        || async {
            let all = events.list(&ListParams::default()).await.unwrap().items;
            let has = |reason: &str| all.iter().any(|e| e.reason.as_deref() == Some(reason));
            (has("Validated") && has("Synced")).then_some(all.len())
        },
    )
    .await;

    // --- the leader's pod is deleted: the standby leads and handles a sync asked meanwhile ---
    let deleted = Instant::now();
    Api::<Pod>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    subscriptions
        .patch(
            "ci",
            &PatchParams::default(),
            &sync_request("during-handover"),
        )
        .await
        .unwrap();
    let (successor, took) = new_leader(&client, &leader, deleted).await;
    eprintln!("handover after deleting the leader's pod: {took:?} ({leader} → {successor})");
    let served_by = plugin_served_by_every_replica(&client).await;
    assert!(
        served_by.contains(&successor) && !served_by.contains(&leader),
        "{served_by:?}"
    );
    await_object(
        &subscriptions,
        "ci",
        "the sync request to be handled",
        |s| {
            s.status.as_ref().is_some_and(|s| {
                ready(&s.conditions)
                    && s.last_handled_sync_request.as_deref() == Some("during-handover")
            })
        },
    )
    .await;

    // --- a rollout: nothing lost, nothing announced twice ---
    kubectl_ok(&[
        "-n",
        OPERATOR_NAMESPACE,
        "rollout",
        "restart",
        "deployment/bitbucket-operator",
    ]);
    rollout_status();
    let after = subscriptions.get("ci").await.unwrap();
    assert_eq!(after.status.clone().unwrap().repository_count, listed);
    assert!(after.status.as_ref().is_some_and(|s| ready(&s.conditions)));
    let acme = integrations.get("acme").await.unwrap();
    assert!(acme.status.as_ref().is_some_and(|s| ready(&s.conditions)));
    let now = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        now.len(),
        announced,
        "the handovers announced something again: {now:#?}"
    );

    // --- uninstall in the documented order: nothing left behind ---
    kubectl_ok(&["delete", "subscriptions", "--all", "-n", &ns.name]);
    kubectl_ok(&[
        "wait",
        "bbi",
        "--all",
        "-n",
        &ns.name,
        "--for=jsonpath={.status.subscriptions}=0",
    ]);
    kubectl_ok(&["delete", "bbi", "--all", "-n", &ns.name]);
    kubectl_ok(&["delete", "-k", "deploy/", "--wait=true"]);
    let namespaces = Api::<Namespace>::all(client.clone());
    eventually("the operator's namespace to go", PATIENCE, || async {
        namespaces
            .get_opt(OPERATOR_NAMESPACE)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    eventually("the CRDs to go", PATIENCE, || async {
        (!crds
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|c| c.spec.group == "scm.shippable.io"))
        .then_some(())
    })
    .await;
    let left = kubectl_ok(&[
        "get",
        "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings",
        "-o",
        "name",
    ]);
    assert!(
        !left.contains("bitbucket-operator") && !left.contains("scm.shippable.io"),
        "{left}"
    );
    // Later tests (other binaries) find the CRDs they need again.
    install_crds(&client).await;
}
