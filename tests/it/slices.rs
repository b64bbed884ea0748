//! RepositorySlices on the real API server (with its garbage collector): a Subscription's
//! whole list, however long, in slices of at most 500 that together hold each repository once;
//! writes in proportion to what changed; readers that never serve half of an update; every
//! replica answering the generator from its cache, across a handover and a restart.

use std::collections::BTreeSet;

use crate::{
    generator::{TOKEN, ask, naming, offered, serve_from},
    leader::{env_without_operator_with, handled, replica, request_sync, two_replicas},
    support::{
        PATIENCE, allow,
        env::*,
        eventually,
        operator::{Operator, await_object, condition, subscription, test_settings},
        refuse,
    },
};
use bitbucket_operator::{
    api::{
        MAX_REPOSITORIES_PER_SLICE, RepositorySlice, SUBSCRIPTION_LABEL, Subscription,
        conditions::READY,
    },
    controller::leader::LeaseSettings,
};
use bitbucket_sim::{CloudRepositoryChange, Fixture};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};

/// Generated Cloud repositories `gen-00001` … in workspace `acme`, beside the demo's own.
const GENERATED: usize = 1_200;

/// Subscription `big`: the generated repositories of `acme`, offered to ApplicationSets.
fn big() -> Subscription {
    let mut big = offered(subscription("big", "acme", Some("acme"), &[]));
    big.spec.repositories.include = vec!["gen-*".into()];
    big
}

/// The slices of Subscription `name`, by its label, as the API server holds them.
async fn slices_of(env: &Env, name: &str) -> Vec<RepositorySlice> {
    let selector = format!("{SUBSCRIPTION_LABEL}={name}");
    env.api::<RepositorySlice>()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
}

/// Each of `slices` is controlled by `subscription`, with a whole controller reference (as
/// the garbage collector and `kubectl` read it).
fn assert_owned_by(slices: &[RepositorySlice], subscription: &Subscription) {
    for slice in slices {
        let owners = slice.owner_references();
        assert_eq!(owners.len(), 1, "{}: {owners:?}", slice.name_any());
        let owner = &owners[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller,
            ),
            (
                "scm.shippable.io/v1alpha1",
                "Subscription",
                subscription.name_any().as_str(),
                subscription.uid().unwrap().as_str(),
                Some(true)
            ),
            "{}",
            slice.name_any()
        );
    }
}

/// The full names the slices hold, each checked to be held once.
fn held_once(slices: &[RepositorySlice]) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for slice in slices {
        for r in slice.repositories.to_vec() {
            assert!(
                held.insert(r.full_name.clone()),
                "{} held twice",
                r.full_name
            );
        }
    }
    held
}

/// The full names of generated repositories `range` (the simulator pads their numbers to the
/// width of the count).
fn generated(range: std::ops::RangeInclusive<usize>) -> BTreeSet<String> {
    range.map(|i| format!("acme/{}", slug(i))).collect()
}

fn slug(i: usize) -> String {
    let width = GENERATED.to_string().len();
    format!("gen-{i:0width$}")
}

/// Asserts two lists of full names are the same, showing only a few differences.
#[track_caller]
fn assert_same(actual: &BTreeSet<String>, expected: &BTreeSet<String>, what: &str) {
    let missing: Vec<&String> = expected.difference(actual).take(5).collect();
    let extra: Vec<&String> = actual.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} held, {} expected; missing {missing:?}…, extra {extra:?}…",
        actual.len(),
        expected.len()
    );
}

/// Slice writes an operator made (creates, updates and deletes), from its metrics.
/// The full names the generator at `url` answers for `big` (with the HTTP status).
async fn served(env: &Env, url: &str) -> (u16, BTreeSet<String>, Value) {
    let (code, answer) = ask(url, Some(TOKEN), naming(env, "big")).await;
    let names = answer["output"]["parameters"]
        .as_array()
        .map(|sets| {
            sets.iter()
                .map(|s| s["fullName"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (code, names, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slices_hold_the_whole_list_and_writes_follow_what_changed() {
    let env = Env::start_with("slices", Fixture::demo_with_generated(GENERATED), |_| {}).await;
    env.ready_cloud_integration().await;
    let created = env.create(&big()).await;
    let synced = await_object(&env.api(), "big", "big to sync", is_synced).await;
    let status = synced.status.clone().unwrap();

    // 1,200 repositories: three slices (500, 500, 200), each labelled and controlled by the
    // Subscription, together every repository once; the status names them with their digests.
    let slices = slices_of(&env, "big").await;
    let mut sizes: Vec<usize> = slices.iter().map(|s| s.repositories.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [200, 500, 500]);
    assert_same(&held_once(&slices), &generated(1..=GENERATED), "the slices");
    for slice in &slices {
        assert!(slice.repositories.len() <= MAX_REPOSITORIES_PER_SLICE);
        assert_eq!(slice.repository_count as usize, slice.repositories.len());
    }
    assert_owned_by(&slices, &created);
    let named: BTreeSet<(String, String)> = slices
        .iter()
        .map(|s| (s.name_any(), s.digest.clone()))
        .collect();
    let in_status: BTreeSet<(String, String)> = status
        .slices
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.digest))
        .collect();
    assert_eq!(named, in_status);
    assert_eq!(status.repository_count, Some(GENERATED as i32));

    // `kubectl bitbucket repos` reads the whole list from the slices, past status' 1,000.
    let repos = crate::plugin::plugin(&env, &["repos", "big", "-o", "json"]);
    assert!(
        repos.status.success(),
        "{}",
        String::from_utf8_lossy(&repos.stderr)
    );
    let listed: Vec<Value> = serde_json::from_slice(&repos.stdout).unwrap();
    let listed: BTreeSet<String> = listed
        .iter()
        .map(|r| r["fullName"].as_str().unwrap().to_owned())
        .collect();
    assert_same(
        &listed,
        &generated(1..=GENERATED),
        "kubectl bitbucket repos",
    );
    let matching = crate::plugin::plugin(&env, &["repos", "big", "--match", "gen-11*", "--count"]);
    assert_eq!(String::from_utf8_lossy(&matching.stdout), "100\n");

    // A sync where nothing changed writes nothing.
    let operator = env.operator();
    let before = operator.slice_writes();
    request_sync(&env, "big", "unchanged").await;
    await_object(
        &env.api(),
        "big",
        "the unchanged sync",
        handled("unchanged"),
    )
    .await;
    assert_eq!(
        operator.slice_writes(),
        before,
        "nothing changed: no slice written"
    );

    // Ten new repositories: one slice written (they fit whole into the one with room).
    let control = env.sim.control();
    let mut template = control.fixture().cloud.workspaces[0].repositories[0].clone();
    template.uuid = None;
    for i in 1..=10 {
        let mut added = template.clone();
        added.slug = format!("gen-new-{i:02}");
        control.add_cloud_repository("acme", added).unwrap();
    }
    request_sync(&env, "big", "ten-added").await;
    await_object(
        &env.api(),
        "big",
        "the sync after ten were added",
        handled("ten-added"),
    )
    .await;
    let written = operator.slice_writes() - before;
    assert!(
        written <= 11,
        "{written} slice writes for 10 new repositories"
    );
    assert_eq!(written, 1, "they fit whole into the slice with room");
    let slices = slices_of(&env, "big").await;
    let mut expected = generated(1..=GENERATED);
    expected.extend((1..=10).map(|i| format!("acme/gen-new-{i:02}")));
    assert_same(
        &held_once(&slices),
        &expected,
        "the slices after ten were added",
    );
    // The slice updated still carries its label (`slices_of` found it by it) and its whole
    // controller reference, though the operator's cache keeps neither.
    assert_owned_by(&slices, &created);

    // Deleting the Subscription: the garbage collector removes its slices.
    env.api::<Subscription>()
        .delete("big", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the slices to be garbage-collected", PATIENCE, || async {
        slices_of(&env, "big").await.is_empty().then_some(())
    })
    .await;
}

/// A policy named `name` that refuses deleting RepositorySlices in `namespace`: the operator's
/// writes stop between an update and a delete, as if it had died there. Returns once the API
/// server refuses deleting slice `probe`.
async fn refuse_slice_deletes(client: &Client, name: &str, namespace: &str, probe: &str) {
    let rule = json!({"apiGroups": ["scm.shippable.io"], "apiVersions": ["*"],
        "resources": ["repositoryslices"], "operations": ["DELETE"]});
    let slices: Api<RepositorySlice> = Api::namespaced(client.clone(), namespace);
    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let refused = || async { slices.delete(probe, &dry_run).await.is_err() };
    let held = "slice deletes are held by the test";
    refuse(client, name, namespace, rule, ("false", held), refused).await;
}

/// A replica that never leads: the Lease it would take is held by someone else for an hour.
async fn standby_only(env: &Env, identity: &str) -> Operator {
    let held: Lease = serde_json::from_value(json!({
        "metadata": {"name": "held-elsewhere"},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                 "renewTime": jiff::Timestamp::now().to_string()}
    }))
    .unwrap();
    let _ = env
        .api::<Lease>()
        .create(&PostParams::default(), &held)
        .await;
    let mut settings = test_settings(&env.ns.name);
    settings.instance = identity.to_owned();
    settings.lease = Some(LeaseSettings::new(&env.ns.name, "held-elsewhere", identity));
    Operator::start(env.client.clone(), settings)
}

/// The operator stops between slice writes (here: its delete is refused after its update went
/// through). Readers never see the mix: a replica that had the whole list keeps serving it,
/// one that never saw a complete list answers 503, never a partial list; once the writes can
/// finish, every replica serves the whole new list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_cut_short_between_slice_writes_is_never_served_in_part() {
    let env = Env::start_with(
        "slices-cut",
        Fixture::demo_with_generated(GENERATED),
        |_| {},
    )
    .await;
    env.ready_cloud_integration().await;
    env.create(&big()).await;
    await_object(&env.api(), "big", "big to sync", is_synced).await;
    let url = serve_from(&env, env.operator()).await;
    // (The slice cache may lag the Subscription's: until it has caught up, 503.)
    let (_, before, _) = eventually("the whole list to be served", PATIENCE, || async {
        let answer = served(&env, &url).await;
        (answer.0 == 200).then_some(answer)
    })
    .await;
    assert_eq!(before.len(), GENERATED);

    // The change: the last 200 go (their whole slice is deleted) and gen-00001 becomes
    // public (its slice is updated). The update goes through, the delete is refused.
    let last = slices_of(&env, "big")
        .await
        .into_iter()
        .find(|s| s.repositories.len() == 200)
        .unwrap();
    let policy = format!("{}-hold-deletes", env.ns.name);
    refuse_slice_deletes(&env.client, &policy, &env.ns.name, &last.name_any()).await;
    let control = env.sim.control();
    for i in 1_001..=GENERATED {
        control.delete_cloud_repository("acme", &slug(i)).unwrap();
    }
    let public = CloudRepositoryChange {
        private: Some(false),
        ..CloudRepositoryChange::default()
    };
    control
        .change_cloud_repository("acme", &slug(1), public)
        .unwrap();
    request_sync(&env, "big", "cut").await;
    let cut = await_object(
        &env.api(),
        "big",
        "the slice writes to fail",
        |s: &Subscription| {
            s.status.as_ref().is_some_and(|s| {
                s.last_handled_sync_request.as_deref() == Some("cut")
                    && condition(&s.conditions, READY)
                        .is_some_and(|c| c.reason == "SlicesNotWritten")
            })
        },
    )
    .await;
    // Half written for real: the updated slice no longer has the digest the status names.
    let named = cut.status.unwrap().slices.unwrap();
    let slices = slices_of(&env, "big").await;
    assert!(
        slices.iter().any(|s| named
            .iter()
            .any(|n| n.name == s.name_any() && n.digest != s.digest)),
        "one slice rewritten since the status was written"
    );
    assert!(
        slices.iter().any(|s| s.name_any() == last.name_any()),
        "the delete did not happen"
    );

    // The replica that had the whole list serves it, unchanged, not the mix.
    let (code, during, answer) = served(&env, &url).await;
    assert_eq!(code, 200);
    assert_same(&during, &before, "the whole previous list");
    let first = &answer["output"]["parameters"][0];
    assert_eq!(
        (first["slug"].as_str(), first["private"].as_bool()),
        (Some(slug(1).as_str()), Some(true))
    );
    // A replica started now never saw a complete list: 503, which Argo CD retries.
    let fresh = standby_only(&env, "fresh").await;
    let fresh_url = serve_from(&env, &fresh).await;
    let (code, answer) = eventually("the fresh replica to fill its caches", PATIENCE, || async {
        let (code, answer) = ask(&fresh_url, Some(TOKEN), naming(&env, "big")).await;
        let starting = answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("starting"));
        (!starting).then_some((code, answer))
    })
    .await;
    assert_eq!(code, 503, "{}", answer["message"]);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("is being rewritten"),
        "{answer}"
    );

    // The writes can finish: every replica serves the whole new list.
    allow(&env.client, &policy).await;
    await_object(&env.api(), "big", "the retried writes", is_synced).await;
    for url in [&url, &fresh_url] {
        let (code, after, answer) = eventually("the new list to be served", PATIENCE, || async {
            let answer = served(&env, url).await;
            (answer.1.len() == 1_000).then_some(answer)
        })
        .await;
        assert_eq!(code, 200);
        assert_same(&after, &generated(1..=1_000), "the new list");
        let first = &answer["output"]["parameters"][0];
        assert_eq!(first["private"].as_bool(), Some(false));
    }
    fresh.stop().await;
}

/// Every replica answers from its own cache: the standby before and after a handover, and a
/// replica started after the leader died (a restart), with the whole list and no 503, before
/// anyone lists Bitbucket again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_and_a_restarted_replica_serve_the_whole_list() {
    let env =
        env_without_operator_with("slices-handover", Fixture::demo_with_generated(GENERATED)).await;
    let (leader, standby) = two_replicas(&env).await;
    env.create(&env.cloud(
        "acme",
        bitbucket_operator::api::CredentialType::ApiToken,
        "acme-token",
        None,
    ))
    .await;
    env.create(&big()).await;
    await_object(&env.api(), "big", "big to sync", is_synced).await;
    let standby_url = serve_from(&env, &standby).await;
    let whole = generated(1..=GENERATED);
    let (code, names, _) = eventually("the standby to serve", PATIENCE, || async {
        let answer = served(&env, &standby_url).await;
        (answer.0 == 200).then_some(answer)
    })
    .await;
    assert_eq!(code, 200);
    assert_same(&names, &whole, "the standby's answer");

    let listings = || {
        env.sim
            .control()
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}")
    };
    let listed = listings();
    leader.kill();
    let (code, names, answer) = served(&env, &standby_url).await;
    assert_eq!(code, 200, "{}", answer["message"]);
    assert_same(&names, &whole, "the standby's answer after the leader died");
    let restarted = replica(&env, "replica-restarted");
    let restarted_url = serve_from(&env, &restarted).await;
    let (code, names, answer) = eventually("the restarted replica's caches", PATIENCE, || async {
        let answer = served(&env, &restarted_url).await;
        (answer.0 != 503
            || !answer.2["message"]
                .as_str()
                .unwrap_or("")
                .contains("starting"))
        .then_some(answer)
    })
    .await;
    assert_eq!(code, 200, "{}", answer["message"]);
    assert_same(&names, &whole, "the restarted replica's answer");
    assert_eq!(listings(), listed, "served without listing Bitbucket again");
}
