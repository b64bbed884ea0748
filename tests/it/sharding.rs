//! Two shards on the real API server, as Flux and Argo CD shard their controllers: operator A
//! owns the objects labelled `scm.shippable.io/shard=a` (`--watch-label-selector`), operator B
//! those with no shard (`!scm.shippable.io/shard`). Each reconciles only its own, its generator
//! and Flux endpoint answer only for its own Subscriptions, and a Subscription whose
//! integration is in the other shard says so.

use bitbucket_operator::api::{
    CredentialType, RepositorySlice, SHARD_LABEL, SUBSCRIPTION_LABEL, Subscription,
    conditions::reasons,
};
use bitbucket_sim::Fixture;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PatchParams},
};

use crate::{
    generator::{TOKEN, ask, naming, offered, serve_from},
    support::{
        PATIENCE,
        env::{Env, is_synced, subscription_reason_is},
        eventually,
        operator::{Operator, await_object, subscription, sync_request, test_settings},
    },
};

const SHARD_A: &str = "scm.shippable.io/shard=a";
const NO_SHARD: &str = "!scm.shippable.io/shard";

fn in_shard_a<K: ResourceExt>(mut object: K) -> K {
    object
        .labels_mut()
        .insert(SHARD_LABEL.to_owned(), "a".to_owned());
    object
}

/// The generator's and the Flux endpoint's status codes for Subscription `name`.
async fn served(base: &str, env: &Env, name: &str) -> (u16, u16) {
    let (generator, _) = ask(base, Some(TOKEN), naming(env, name)).await;
    let flux = crate::support::browser()
        .get(format!("{base}/api/v1/inputs/{}/{name}", env.ns.name))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    (generator, flux)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_each_own_their_objects_and_nothing_twice() {
    let mut env = Env::start_with("sharding", Fixture::demo(), |s| {
        s.label_selector = Some(SHARD_A.into());
        s.instance = "shard-a".into();
    })
    .await;
    let mut settings = test_settings(&env.ns.name);
    settings.label_selector = Some(NO_SHARD.into());
    settings.instance = "shard-b".into();
    let b = Operator::start(env.client.clone(), settings);
    env.jdoe_token_secret("token").await;
    let cloud = |name| env.cloud(name, CredentialType::ApiToken, "token", None);
    env.create(&in_shard_a(cloud("ia"))).await;
    env.create(&cloud("ib")).await;
    let acme = |name, integration| offered(subscription(name, integration, Some("acme"), &[]));
    env.create(&in_shard_a(acme("sa", "ia"))).await;
    env.create(&acme("sb", "ib")).await;
    env.create(&in_shard_a(acme("across", "ib"))).await;

    let subscriptions: Api<Subscription> = env.api();
    await_object(&subscriptions, "sa", "sa to sync (shard a)", is_synced).await;
    await_object(&subscriptions, "sb", "sb to sync (no shard)", is_synced).await;
    let across = await_object(
        &subscriptions,
        "across",
        "across to say its integration is in another shard",
        subscription_reason_is(reasons::INTEGRATION_IN_ANOTHER_SHARD),
    )
    .await;
    let said = &across.status.unwrap().conditions;
    let message = &crate::support::operator::condition(said, "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("ib is in no shard and this Subscription in shard \"a\""),
        "{message}"
    );

    // Each slice carries its Subscription's shard, so each shard watches only its own.
    let slices: Api<RepositorySlice> = env.api();
    for (name, shard) in [("sa", Some("a")), ("sb", None)] {
        let listed = slices
            .list(&ListParams::default().labels(&format!("{SUBSCRIPTION_LABEL}={name}")))
            .await
            .unwrap();
        assert!(!listed.items.is_empty(), "{name} has slices");
        for slice in &listed.items {
            assert_eq!(slice.labels().get(SHARD_LABEL).map(String::as_str), shard);
        }
    }

    // Each shard's generator and Flux endpoint answer for their own Subscriptions only.
    let (base_a, base_b) = (
        serve_from(&env, env.operator()).await,
        serve_from(&env, &b).await,
    );
    assert_eq!(served(&base_a, &env, "sa").await, (200, 200));
    assert_eq!(served(&base_b, &env, "sb").await, (200, 200));
    assert_eq!(served(&base_a, &env, "sb").await, (404, 404));
    assert_eq!(served(&base_b, &env, "sa").await, (404, 404));

    // With B stopped, A does not take B's objects: a sync request of sb waits, while one of
    // sa, asked after it, is handled; B handles sb's once it is back.
    b.stop().await;
    let writes_before = env.operator().status_writes();
    let params = PatchParams::default();
    subscriptions
        .patch("sb", &params, &sync_request("b-1"))
        .await
        .unwrap();
    subscriptions
        .patch("sa", &params, &sync_request("a-1"))
        .await
        .unwrap();
    let handled = |value: &'static str| {
        move |s: &Subscription| {
            s.status
                .as_ref()
                .is_some_and(|s| s.last_handled_sync_request.as_deref() == Some(value))
        }
    };
    await_object(
        &subscriptions,
        "sa",
        "A to handle sa's request",
        handled("a-1"),
    )
    .await;
    let sb = subscriptions.get("sb").await.unwrap();
    assert_ne!(
        sb.status.unwrap().last_handled_sync_request.as_deref(),
        Some("b-1"),
        "shard a's operator handled a Subscription of no shard"
    );
    // The watch may show the write before the write's own call has returned and counted it.
    let written = || env.operator().status_writes() - writes_before;
    eventually(
        "A's write of sa's status to be counted",
        PATIENCE,
        || async { (written() >= 1).then_some(()) },
    )
    .await;
    assert_eq!(written(), 1, "A wrote sa's status once, and nothing of B's");
    let mut settings = test_settings(&env.ns.name);
    settings.label_selector = Some(NO_SHARD.into());
    let _b = Operator::start(env.client.clone(), settings);
    await_object(
        &subscriptions,
        "sb",
        "B to handle sb's request",
        handled("b-1"),
    )
    .await;
    env.operator.take().unwrap().stop().await;
}
