//! Two replicas, one leader, on the real API server: both run their watches, only the holder
//! of the Lease reconciles; the standby takes over when the leader dies (after the Lease
//! lapses) or shuts down (at once: it releases the Lease); a replica that loses the Lease stops
//! reconciling. The replicas run in-process with short Lease times so that takeovers are quick.

use std::time::{Duration, Instant};

use crate::support::{
    PATIENCE,
    env::*,
    eventually,
    operator::{Operator, await_object, subscription, sync_request, test_settings},
};
use bitbucket_operator::{
    api::{BitbucketIntegration, CredentialType, Subscription},
    controller::leader::LeaseSettings,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};

pub const LEASE: &str = "bitbucket-operator";

/// A replica named `identity`, leading with the test namespace's Lease.
pub fn replica(env: &Env, identity: &str) -> Operator {
    replica_receiving_at(env, identity, None)
}

/// [`replica`], writing `address` (where it receives webhooks) into the Lease when it leads.
pub fn replica_receiving_at(env: &Env, identity: &str, address: Option<String>) -> Operator {
    let mut settings = test_settings(&env.ns.name);
    settings.instance = identity.to_owned();
    settings.lease = Some(LeaseSettings {
        duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry: Duration::from_millis(250),
        address,
        ..LeaseSettings::new(&env.ns.name, LEASE, identity)
    });
    Operator::start(env.client.clone(), settings)
}

/// Two replicas, `a` started first; returns them leader first, once one leads.
pub async fn two_replicas(env: &Env) -> (Operator, Operator) {
    let a = replica(env, "replica-a");
    let b = replica(env, "replica-b");
    eventually("one replica to lead", PATIENCE, || async {
        (a.leads() || b.leads()).then_some(())
    })
    .await;
    if a.leads() { (a, b) } else { (b, a) }
}

async fn holder(env: &Env) -> Option<String> {
    crate::support::lease_holder(&env.client, &env.ns.name, LEASE).await
}

pub async fn request_sync(env: &Env, name: &str, value: &str) {
    env.api::<Subscription>()
        .patch(name, &PatchParams::default(), &sync_request(value))
        .await
        .unwrap();
}

pub fn handled(value: &'static str) -> impl Fn(&Subscription) -> bool {
    move |s| {
        is_synced(s)
            && s.status
                .as_ref()
                .and_then(|s| s.last_handled_sync_request.as_deref())
                == Some(value)
    }
}

/// An Env whose own operator is stopped: the replicas are the test's.
pub async fn env_without_operator(prefix: &str) -> Env {
    env_without_operator_with(prefix, bitbucket_sim::Fixture::demo()).await
}

/// [`env_without_operator`] with the simulator serving `fixture`.
pub async fn env_without_operator_with(prefix: &str, fixture: bitbucket_sim::Fixture) -> Env {
    let mut env = Env::start_with(prefix, fixture, |_| {}).await;
    env.operator.take().unwrap().stop().await;
    env.jdoe_token_secret("acme-token").await;
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_standby_takes_over_when_it_dies() {
    let env = env_without_operator("leader-dies").await;
    let (leader, standby) = two_replicas(&env).await;
    let first = holder(&env).await;
    env.create(&env.cloud("acme", CredentialType::ApiToken, "acme-token", None))
        .await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    assert!(leader.status_writes() > 0);
    assert!(leader.reconciles() && !standby.reconciles());
    assert_eq!(standby.status_writes(), 0, "the standby wrote nothing");
    assert!(!standby.leads());

    // The leader dies without releasing the Lease; a sync asked for meanwhile is handled by
    // the standby once the Lease lapses.
    let died = Instant::now();
    leader.kill();
    request_sync(&env, "ci", "during-handover").await;
    await_object(
        &env.api(),
        "ci",
        "the new leader to handle the sync request",
        handled("during-handover"),
    )
    .await;
    assert!(standby.leads() && standby.reconciles());
    assert_ne!(holder(&env).await, first);
    eprintln!("handover after the leader died: {:?}", died.elapsed());
    let integration = env.api::<BitbucketIntegration>().get("acme").await.unwrap();
    assert!(is_ready_integration(&integration), "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_releases_the_lease_and_the_standby_leads_at_once() {
    let env = env_without_operator("leader-rolls").await;
    let (leader, standby) = two_replicas(&env).await;
    let first = holder(&env).await.unwrap();

    // Record every version of the Lease from now on.
    let leases = Api::<Lease>::namespaced(env.client.clone(), &env.ns.name);
    let config = watcher::Config::default().fields(&format!("metadata.name={LEASE}"));
    let (seen, mut holders) = tokio::sync::mpsc::unbounded_channel();
    let recorder = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(leases, config).applied_objects());
        while let Some(Ok(lease)) = futures::StreamExt::next(&mut stream).await {
            let _ = seen.send(lease.spec.and_then(|s| s.holder_identity));
        }
    });

    // The watch has begun (its first event is the Lease as it is now) before the leader stops.
    let mut history = vec![holders.recv().await.expect("the Lease as it is")];

    let stopped = Instant::now();
    leader.stop().await;
    eventually("the standby to lead", PATIENCE, || async {
        standby.leads().then_some(())
    })
    .await;
    eprintln!("handover after a graceful stop: {:?}", stopped.elapsed());
    // The watch reports each version of the Lease in order, a moment after it is written: read
    // until the standby's.
    let taken_by_the_standby = |h: &Option<String>| h.as_deref().is_some_and(|h| h != first);
    while !history.iter().any(taken_by_the_standby) {
        match tokio::time::timeout(PATIENCE, holders.recv()).await {
            Ok(Some(holder)) => history.push(holder),
            _ => panic!("the watch never showed the standby's Lease: {history:?}"),
        }
    }
    recorder.abort();
    // The old leader gave the Lease up (no holder) before the standby took it: it did not
    // wait for the Lease to lapse.
    let released = history
        .iter()
        .position(Option::is_none)
        .unwrap_or_else(|| panic!("the Lease was never released: {history:?}"));
    let taken = history.iter().position(taken_by_the_standby).unwrap();
    assert!(released < taken, "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_the_lease_stops_reconciling() {
    let env = env_without_operator("leader-deposed").await;
    let (leader, standby) = two_replicas(&env).await;
    env.create(&env.cloud("acme", CredentialType::ApiToken, "acme-token", None))
        .await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;

    // Someone else takes the Lease for a long time: both replicas stand by.
    let leases = Api::<Lease>::namespaced(env.client.clone(), &env.ns.name);
    let mut lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace(LEASE, &PostParams::default(), &lease)
        .await
        .unwrap();
    eventually(
        "both replicas to stop reconciling (and the old leader to stop leading)",
        PATIENCE,
        || async {
            (!(leader.leads() || leader.reconciles() || standby.reconciles())).then_some(())
        },
    )
    .await;
    request_sync(&env, "ci", "while-nobody-leads").await;
    env.create(&subscription("late", "acme", Some("acme"), &["OPS"]))
        .await;

    // The intruder gives the Lease back: one replica leads and catches up.
    let mut lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = None;
    leases
        .replace(LEASE, &PostParams::default(), &lease)
        .await
        .unwrap();
    await_object(&env.api(), "late", "late to sync", is_synced).await;
    await_object(
        &env.api(),
        "ci",
        "the sync request to be handled",
        handled("while-nobody-leads"),
    )
    .await;
}
