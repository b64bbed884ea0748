//! The operator end to end: a real kube-apiserver (+ controller manager), the Bitbucket
//! simulator, and the operator's controllers running in-process against the test's namespace.

use std::time::Duration;

use crate::support::{
    PATIENCE,
    env::*,
    eventually,
    operator::{Operator, await_object, condition, subscription, sync_request, test_settings},
    within,
};
use bitbucket_operator::api::{
    BitbucketIntegration, CredentialType, IN_USE_FINALIZER, RepositoryFilter,
    SYNC_REQUESTED_AT_ANNOTATION, Subscription, SubscriptionStatus, Visibility,
    conditions::{READY, RECONCILING, STALLED, reasons},
};
use bitbucket_sim::{CloudRepositoryChange, FaultRule, Fixture};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

// --- integrations -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_kind_becomes_ready_with_its_identity() {
    let env = Env::start("kinds").await;
    env.jdoe_token_secret("api").await;
    env.secret("wat", &[("token", ACCESS_TOKEN)]).await;
    env.secret(
        "oauth",
        &[
            ("clientId", "FAKEclientid4acme"),
            ("clientSecret", OAUTH_SECRET),
        ],
    )
    .await;
    env.secret(
        "dc-basic",
        &[("username", "jdoe"), ("password", DC_PASSWORD)],
    )
    .await;
    env.secret("dc-token", &[("token", DC_TOKEN)]).await;
    env.create(&env.cloud("api", CredentialType::ApiToken, "api", None))
        .await;
    env.create(&env.cloud("wat", CredentialType::AccessToken, "wat", Some("acme")))
        .await;
    env.create(&env.cloud("oauth", CredentialType::OAuthConsumer, "oauth", None))
        .await;
    env.create(&env.data_center("dc-basic", CredentialType::Basic, "dc-basic"))
        .await;
    env.create(&env.data_center("dc-token", CredentialType::AccessToken, "dc-token"))
        .await;

    let api = env.api::<BitbucketIntegration>();
    for (name, kind, username) in [
        ("api", "User", Some("jdoe")),
        ("wat", "AccessToken", None),
        ("oauth", "OAuthConsumer", Some("jdoe")),
        ("dc-basic", "DataCenterUser", Some("jdoe")),
        ("dc-token", "DataCenterUser", Some("jdoe")),
    ] {
        let ready = await_object(
            &api,
            name,
            &format!("{name} to be Ready"),
            is_ready_integration,
        )
        .await;
        let status = ready.status.clone().unwrap();
        let account = status.account.expect("an account");
        assert_eq!(serde_json::to_value(account.kind).unwrap(), kind, "{name}");
        assert_eq!(account.username.as_deref(), username, "{name}");
        assert!(
            ready.finalizers().iter().any(|f| f == IN_USE_FINALIZER),
            "{name}"
        );
        assert_eq!(
            status.observed_generation, ready.metadata.generation,
            "{name}"
        );
        assert!(condition(&status.conditions, STALLED).is_none(), "{name}");
    }
    let api_status = api.get("api").await.unwrap().status.unwrap();
    assert!(
        api_status
            .scopes
            .contains(&"read:repository:bitbucket".to_owned())
    );
    assert_eq!(
        api_status.account.unwrap().display_name.as_deref(),
        Some("Jane Doe")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_stalls_and_fixing_the_secret_makes_it_ready_without_a_restart() {
    let env = Env::start("rotate").await;
    env.secret(
        "acme-token",
        &[("email", "jdoe@example.com"), ("token", "FAKE-wrong")],
    )
    .await;
    env.create(&env.cloud("acme", CredentialType::ApiToken, "acme-token", None))
        .await;
    let api = env.api::<BitbucketIntegration>();
    let stalled = await_object(
        &api,
        "acme",
        "acme to stall",
        reason_is("InvalidCredentials"),
    )
    .await;
    let status = stalled.status.unwrap();
    let stall = condition(&status.conditions, STALLED).expect("Stalled is set");
    assert_eq!(
        (stall.status.as_str(), stall.reason.as_str()),
        ("True", "InvalidCredentials")
    );
    assert!(
        stall.message.contains("rejected the credential"),
        "{}",
        stall.message
    );
    assert_eq!(env.sim.control().counters().credential("invalid"), 1);

    // Another reconcile (a label change) must not try the rejected credential again.
    let reconciles = || {
        env.operator()
            .metrics
            .render()
            .lines()
            .find(|l| {
                l.starts_with("bitbucket_operator_reconciles_total{controller=\"integration\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = reconciles();
    api.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    eventually(
        &format!("the operator to reconcile the label change (reconciles_total past {before})"),
        PATIENCE,
        || async { (reconciles() != before).then_some(()) },
    )
    .await;
    assert_eq!(
        env.sim.control().counters().credential("invalid"),
        1,
        "401 is not retried"
    );

    env.jdoe_token_secret("acme-token").await;
    let ready = await_object(
        &api,
        "acme",
        "acme to be Ready after the rotation",
        is_ready_integration,
    )
    .await;
    assert!(condition(&ready.status.unwrap().conditions, STALLED).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_or_key_stalls_without_calling_bitbucket() {
    let env = Env::start("secret").await;
    env.create(&env.cloud("acme", CredentialType::ApiToken, "acme-token", None))
        .await;
    let api = env.api::<BitbucketIntegration>();
    let stalled = await_object(&api, "acme", "SecretNotFound", reason_is("SecretNotFound")).await;
    let ready = condition(&stalled.status.as_ref().unwrap().conditions, READY)
        .unwrap()
        .clone();
    assert_eq!(ready.message, "Secret acme-token not found");

    env.secret("acme-token", &[("email", "jdoe@example.com")])
        .await;
    let stalled = await_object(
        &api,
        "acme",
        "SecretKeyMissing",
        reason_is("SecretKeyMissing"),
    )
    .await;
    let message = condition(&stalled.status.unwrap().conditions, STALLED)
        .unwrap()
        .message
        .clone();
    assert_eq!(
        message,
        "Secret acme-token has no key token: ApiToken credentials need the keys email, token"
    );
    assert_eq!(
        env.sim.control().counters().total,
        0,
        "no Bitbucket call without a credential"
    );

    env.jdoe_token_secret("acme-token").await;
    await_object(&api, "acme", "acme to be Ready", is_ready_integration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_request_revalidates_once_and_is_echoed() {
    let env = Env::start("request").await;
    env.ready_cloud_integration().await;
    let api = env.api::<BitbucketIntegration>();
    let calls = || env.sim.control().counters().endpoint("GET /2.0/user");
    assert_eq!(calls(), 1);
    let annotate =
        |value: &str| json!({"metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: value}}});
    api.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(annotate("first")),
    )
    .await
    .unwrap();
    await_object(&api, "acme", "the request to be echoed", |i| {
        i.status
            .as_ref()
            .and_then(|s| s.last_handled_sync_request.as_deref())
            == Some("first")
    })
    .await;
    assert_eq!(calls(), 2);
}

// --- subscriptions ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_lists_the_filtered_repositories_of_its_workspace() {
    let env = Env::start("list").await;
    env.ready_cloud_integration().await;
    let mut filtered = subscription("api-ci", "acme", Some("acme"), &["API", "WEB"]);
    filtered.spec.repositories = RepositoryFilter {
        include: vec!["api*".into(), "docs".into(), "web-*".into()],
        exclude: vec!["web-*".into()],
        visibility: Visibility::Private,
    };
    env.create(&filtered).await;
    let synced = await_object(&env.api(), "api-ci", "api-ci to sync", is_synced).await;
    let status = synced.status.unwrap();
    let names: Vec<_> = status
        .repositories
        .iter()
        .map(|r| r.full_name.as_str())
        .collect();
    // docs is public, web-app excluded, billing not included, OPS not subscribed.
    assert_eq!(names, ["acme/api", "acme/api-gateway"]);
    assert_eq!(status.repository_count, Some(2));
    assert!(!status.repositories_truncated);
    let gateway = &status.repositories[1];
    assert_eq!(gateway.name, "api-gateway");
    assert_eq!(gateway.display_name.as_deref(), Some("API Gateway"));
    assert_eq!(gateway.project.as_deref(), Some("API"));
    assert_eq!(gateway.main_branch.as_deref(), Some("main"));
    assert_eq!(
        gateway.clone_urls.https.as_deref(),
        Some("https://bitbucket.org/acme/api-gateway.git")
    );
    let integration = status.integration.unwrap();
    assert_eq!(
        (integration.name.as_str(), integration.account.as_deref()),
        ("acme", Some("jdoe"))
    );
    assert!(status.last_change_time.is_some());
    let count = await_object(
        &env.api::<BitbucketIntegration>(),
        "acme",
        "acme to count its user",
        |i| i.status.as_ref().and_then(|s| s.subscriptions) == Some(1),
    )
    .await;
    assert_eq!(count.status.unwrap().subscriptions, Some(1));
}

/// Applied together with its integration, a Subscription lists as soon as the integration's
/// validation succeeds, before its status is stored: its first Synced status names the account
/// all the same (it named none until its next sync, ten minutes later, which then wrote again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_applied_with_their_integration_name_its_account_at_once() {
    let env = Env::start("together").await;
    env.jdoe_token_secret("acme-token").await;
    let names: Vec<String> = (0..8).map(|i| format!("ci-{i}")).collect();
    for name in &names {
        env.create(&subscription(name, "acme", Some("acme"), &[]))
            .await;
    }
    env.create(&env.cloud("acme", CredentialType::ApiToken, "acme-token", None))
        .await;
    let subscriptions = env.api::<Subscription>();
    for name in &names {
        let synced = await_object(&subscriptions, name, "to sync", is_synced).await;
        let integration = synced.status.unwrap().integration.unwrap();
        assert_eq!(
            integration.account.as_deref(),
            Some("jdoe"),
            "{name}'s first Synced status"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_center_subscription_lists_its_projects() {
    let env = Env::start("dclist").await;
    env.secret("dc", &[("token", DC_TOKEN)]).await;
    env.create(&env.data_center("dc", CredentialType::AccessToken, "dc"))
        .await;
    env.create(&subscription("platform", "dc", None, &["PLAT", "~jdoe"]))
        .await;
    let synced = await_object(&env.api(), "platform", "platform to sync", is_synced).await;
    let names: Vec<_> = synced
        .status
        .unwrap()
        .repositories
        .into_iter()
        .map(|r| r.full_name)
        .collect();
    assert_eq!(
        names,
        [
            "PLAT/core",
            "PLAT/deploy-tools",
            "PLAT/legacy-build",
            "PLAT/scratch",
            "~jdoe/dotfiles"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_waits_for_its_integration_and_syncs_once_it_is_ready() {
    let env = Env::start("wait").await;
    env.create(&subscription("early", "acme", Some("acme"), &[]))
        .await;
    let api = env.api::<Subscription>();
    await_object(
        &api,
        "early",
        "IntegrationNotFound",
        subscription_reason_is("IntegrationNotFound"),
    )
    .await;
    env.create(&env.cloud("acme", CredentialType::ApiToken, "acme-token", None))
        .await;
    let waiting = await_object(
        &api,
        "early",
        "IntegrationNotReady",
        subscription_reason_is("IntegrationNotReady"),
    )
    .await;
    // Not ready, and saying why: the integration's own reason is passed on.
    let message = |s: &Subscription| {
        s.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, READY))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    assert!(message(&waiting).starts_with("BitbucketIntegration acme is not ready"));
    await_object(
        &api,
        "early",
        "the reason to name the missing Secret",
        move |s| message(s).contains("Secret acme-token not found"),
    )
    .await;
    env.jdoe_token_secret("acme-token").await;
    let synced = await_object(&api, "early", "early to sync", is_synced).await;
    assert_eq!(synced.status.unwrap().repository_count, Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_cannot_work_with_its_integration_stalls() {
    let env = Env::start("mismatch").await;
    env.secret("dc", &[("token", DC_TOKEN)]).await;
    env.create(&env.data_center("dc", CredentialType::AccessToken, "dc"))
        .await;
    env.create(&subscription("wrong", "dc", Some("acme"), &[]))
        .await;
    let api = env.api::<Subscription>();
    let stalled = await_object(
        &api,
        "wrong",
        "wrong to stall",
        subscription_reason_is("InvalidSpec"),
    )
    .await;
    let status = stalled.status.unwrap();
    let stall = condition(&status.conditions, STALLED).expect("Stalled");
    assert!(
        stall
            .message
            .contains("workspace applies to Bitbucket Cloud only"),
        "{}",
        stall.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_of_one_workspace_share_one_listing() {
    let env = Env::start("share").await;
    env.ready_cloud_integration().await;
    for name in ["a", "b", "c"] {
        env.create(&subscription(name, "acme", Some("acme"), &[]))
            .await;
    }
    for name in ["a", "b", "c"] {
        await_object(&env.api(), name, "each to sync", is_synced).await;
    }
    assert_eq!(
        env.sim
            .control()
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}"),
        1,
        "three Subscriptions of one workspace, one listing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_storm_backs_off_recovers_and_keeps_the_list() {
    let env = Env::start("storm").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let api = env.api::<Subscription>();
    await_object(&api, "ci", "ci to sync", is_synced).await;

    let control = env.sim.control();
    control.add_fault(FaultRule::status(429).on_path("/2.0/repositories"));
    control.reset_counters();
    api.patch(
        "ci",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: "storm"}}}),
        ),
    )
    .await
    .unwrap();
    let limited = await_object(
        &api,
        "ci",
        "ci to report the rate limit",
        subscription_reason_is("RateLimited"),
    )
    .await;
    let status = limited.status.unwrap();
    assert_eq!(
        status.repositories.len(),
        10,
        "a transient failure keeps the last list"
    );
    assert!(
        condition(&status.conditions, STALLED).is_none(),
        "rate limits are not the user's to fix"
    );

    // Let the storm rage for a few seconds: with backoff (0.3 s doubling to 3 s, each attempt
    // retried once by the client) that is a handful of requests, not hundreds.
    // (A fixed measuring window, not a poll: it shows the requests do not pile up.)
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = control
        .counters()
        .endpoint("GET /2.0/repositories/{workspace}");
    assert!(
        (2..=16).contains(&during),
        "{during} requests during the storm"
    );

    control.clear_faults();
    let recovered = await_object(&api, "ci", "ci to recover", is_synced).await;
    assert_eq!(recovered.status.unwrap().repositories.len(), 10);
}

/// Records every version of object `name` the API server reports, until dropped.
struct History<K: kube::Resource + 'static> {
    seen: std::sync::Arc<std::sync::Mutex<Vec<K>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> History<K>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    async fn record(api: &Api<K>, name: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready, started) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let events = watcher(api.clone(), config);
        let sink = std::sync::Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut ready = Some(ready);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                        sink.lock().unwrap().push(object);
                    }
                    _ => {}
                }
            }
        });
        within("the history's watch to start", started)
            .await
            .unwrap();
        Self { seen, task }
    }

    fn versions(&self) -> Vec<K> {
        self.seen.lock().unwrap().clone()
    }
}

impl<K: kube::Resource + 'static> Drop for History<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_request_that_meets_a_rate_limit_is_answered_only_by_a_listing_made_after_it() {
    // Issue 10's defect: the retry after the backoff served the listing cached before the
    // request, and reported it as synced.
    let env = Env::start("answered").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let api = env.api::<Subscription>();
    await_object(&api, "ci", "ci to sync", is_synced).await;

    let control = env.sim.control();
    let mut added = control.fixture().cloud.workspaces[0].repositories[0].clone();
    added.slug = "new-service".into();
    added.uuid = None;
    added.updated_on = None;
    control.add_cloud_repository("acme", added).unwrap();
    control.add_fault(FaultRule::status(429).on_path("/2.0/repositories"));
    let history = History::record(&api, "ci").await;
    api.patch("ci", &PatchParams::default(), &sync_request("after-add"))
        .await
        .unwrap();
    await_object(
        &api,
        "ci",
        "ci to say the request met a rate limit",
        |s: &Subscription| {
            s.status.as_ref().is_some_and(|s| {
                s.last_handled_sync_request.as_deref() == Some("after-add")
                    && condition(&s.conditions, READY).is_some_and(|c| c.reason == "RateLimited")
            })
        },
    )
    .await;

    // Bitbucket keeps being asked while it refuses (each attempt is tried twice by the client).
    let listings = || {
        control
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}")
    };
    let before = listings();
    eventually(
        &format!("two more listing attempts (4 requests after {before})"),
        PATIENCE,
        || async { (listings() >= before + 4).then_some(()) },
    )
    .await;
    control.clear_faults();
    let has_new = |s: &SubscriptionStatus| {
        s.repositories
            .iter()
            .any(|r| r.full_name == "acme/new-service")
    };
    await_object(
        &api,
        "ci",
        "the added repository",
        move |s: &Subscription| s.status.as_ref().is_some_and(has_new),
    )
    .await;
    for version in history.versions() {
        let status = version.status.unwrap_or_default();
        let synced = condition(&status.conditions, READY).is_some_and(|c| c.status == "True");
        if synced && status.last_handled_sync_request.as_deref() == Some("after-add") {
            assert!(
                has_new(&status),
                "reported synced for the request without the repository added before it: {status:#?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_request_that_meets_an_outage_is_retried_until_bitbucket_answers() {
    let env = Env::start("revalidate").await;
    env.ready_cloud_integration().await;
    let api = env.api::<BitbucketIntegration>();
    let control = env.sim.control();
    control.add_fault(FaultRule::status(503).on_path("/2.0/user"));
    api.patch("acme", &PatchParams::default(), &sync_request("outage"))
        .await
        .unwrap();
    let unavailable = await_object(
        &api,
        "acme",
        "acme to say Bitbucket is unavailable",
        |i: &BitbucketIntegration| {
            i.status.as_ref().is_some_and(|s| {
                s.last_handled_sync_request.as_deref() == Some("outage")
                    && condition(&s.conditions, READY)
                        .is_some_and(|c| c.reason == "BitbucketUnavailable")
            })
        },
    )
    .await;
    let status = unavailable.status.unwrap();
    assert!(status.account.is_some(), "the last good account stays");
    let reconciling = condition(&status.conditions, RECONCILING).expect("work in progress");
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("True", "ProgressingWithRetry")
    );
    let calls = || control.counters().endpoint("GET /2.0/user");
    let before = calls();
    eventually(
        &format!("two more validation attempts (4 requests after {before})"),
        PATIENCE,
        || async { (calls() >= before + 4).then_some(()) },
    )
    .await;
    control.clear_faults();
    let cleared = calls();
    let ready = await_object(&api, "acme", "acme to be Ready again", is_ready_integration).await;
    assert!(
        calls() > cleared,
        "Ready again only after Bitbucket answered"
    );
    assert!(
        condition(&ready.status.unwrap().conditions, RECONCILING).is_none(),
        "nothing in progress any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_backing_off_are_not_retried_early_when_woken() {
    // The chaos soak's defect: during an outage, each status write of an integration woke its
    // Subscriptions and each of theirs woke the integration, and every wake-up called Bitbucket
    // at once: 450 token grants in 6 s for one credential. Here a Subscription is touched 40
    // times while the integration fails, then while its own listing fails; each touch wakes
    // both objects.
    let env = Env::start("wakeups").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let subscriptions = env.api::<Subscription>();
    await_object(&subscriptions, "ci", "ci to sync", is_synced).await;
    let integrations = env.api::<BitbucketIntegration>();
    let control = env.sim.control();
    let touch_40_times = || async {
        control.reset_counters();
        for touch in 0..40 {
            let touched =
                json!({"metadata": {"annotations": {"example.com/touched": touch.to_string()}}});
            subscriptions
                .patch("ci", &PatchParams::default(), &Patch::Merge(touched))
                .await
                .unwrap();
            // Paces the touches over ~2.5 s (the window the bound below is for), not a poll.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        control.counters()
    };
    // In the ~2.5 s of touches the backoff (0.3 s doubling, halved at worst by jitter) allows
    // at most five attempts, of two requests each (one retry by the client); 40 wake-ups
    // retried at once would be 80.
    let bound = 1..=12;

    control.add_fault(FaultRule::status(503).on_path("/2.0/user"));
    integrations
        .patch("acme", &PatchParams::default(), &sync_request("outage"))
        .await
        .unwrap();
    await_object(
        &integrations,
        "acme",
        "acme to fail",
        reason_is("BitbucketUnavailable"),
    )
    .await;
    let validations = touch_40_times().await.endpoint("GET /2.0/user");
    assert!(
        bound.contains(&validations),
        "{validations} validations while woken 40 times"
    );
    let failing = integrations.get("acme").await.unwrap().status.unwrap();
    let reconciling = condition(&failing.conditions, RECONCILING)
        .expect("still retrying, as shown before the touches");
    assert_eq!(reconciling.reason, "ProgressingWithRetry");

    control.clear_faults();
    await_object(
        &integrations,
        "acme",
        "acme to recover",
        is_ready_integration,
    )
    .await;
    await_object(&subscriptions, "ci", "ci to sync again", is_synced).await;
    control.add_fault(FaultRule::status(503).on_path("/2.0/repositories"));
    subscriptions
        .patch("ci", &PatchParams::default(), &sync_request("outage"))
        .await
        .unwrap();
    await_object(
        &subscriptions,
        "ci",
        "ci to fail",
        subscription_reason_is("BitbucketUnavailable"),
    )
    .await;
    let listings = touch_40_times()
        .await
        .endpoint("GET /2.0/repositories/{workspace}");
    assert!(
        bound.contains(&listings),
        "{listings} listing requests while woken 40 times, a sync request unanswered"
    );
    control.clear_faults();
    let recovered = await_object(&subscriptions, "ci", "ci to recover", is_synced).await;
    assert_eq!(
        recovered
            .status
            .unwrap()
            .last_handled_sync_request
            .as_deref(),
        Some("outage")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_request_summary_notices_every_kind_of_change() {
    // Only a changed summary can cause a full listing here: none is scheduled for correctness.
    let env = Env::start_with("changes", Fixture::demo(), |s| {
        s.interval_override = Some(Duration::from_secs(1));
        s.summaries_between_listings = u32::MAX;
    })
    .await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let api = env.api::<Subscription>();
    await_object(&api, "ci", "ci to sync", is_synced).await;
    eventually(
        "steady state to run on summaries (2 summarize_repositories requests)",
        PATIENCE,
        || async { (env.operator().requests("summarize_repositories") >= 2).then_some(()) },
    )
    .await;
    assert_eq!(
        env.operator().requests("list_repositories"),
        1,
        "unchanged: no listing"
    );

    let control = env.sim.control();
    let listed = |name: &'static str, present: bool| {
        move |s: &Subscription| {
            s.status
                .as_ref()
                .is_some_and(|s| s.repositories.iter().any(|r| r.full_name == name) == present)
        }
    };
    let mut added = control.fixture().cloud.workspaces[0].repositories[0].clone();
    added.slug = "new-service".into();
    added.uuid = None;
    added.updated_on = None;
    control.add_cloud_repository("acme", added).unwrap();
    await_object(
        &api,
        "ci",
        "the added repository",
        listed("acme/new-service", true),
    )
    .await;

    control.delete_cloud_repository("acme", "runbooks").unwrap();
    await_object(
        &api,
        "ci",
        "the deleted repository to go",
        listed("acme/runbooks", false),
    )
    .await;

    control
        .change_cloud_repository(
            "acme",
            "billing",
            CloudRepositoryChange {
                slug: Some("payments".into()),
                ..CloudRepositoryChange::default()
            },
        )
        .unwrap();
    await_object(
        &api,
        "ci",
        "the renamed repository",
        listed("acme/payments", true),
    )
    .await;

    control
        .change_cloud_repository(
            "acme",
            "docs",
            CloudRepositoryChange {
                private: Some(true),
                ..CloudRepositoryChange::default()
            },
        )
        .unwrap();
    await_object(&api, "ci", "docs to turn private", |s| {
        s.status.as_ref().is_some_and(|s| {
            s.repositories
                .iter()
                .any(|r| r.full_name == "acme/docs" && r.private)
        })
    })
    .await;
    assert_eq!(
        env.operator().requests("list_repositories"),
        5,
        "one full listing per change, found by a summary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_says_it_waits_when_its_integrations_first_validation_hangs() {
    // The Subscription stays quiet while the first validation runs (its result will wake it),
    // but not for ever: after `recheck` it says what it waits for.
    let env = Env::start_with("hang", Fixture::demo(), |s| {
        s.transport.timeout = Duration::from_secs(120);
    })
    .await;
    env.sim
        .control()
        .add_fault(FaultRule::latency(60_000).on_path("/2.0/user"));
    env.jdoe_token_secret("acme-token").await;
    env.create(&env.cloud("acme", CredentialType::ApiToken, "acme-token", None))
        .await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let waiting = await_object(
        &env.api::<Subscription>(),
        "ci",
        "ci to say it waits for acme",
        subscription_reason_is(reasons::INTEGRATION_NOT_READY),
    )
    .await;
    let ready = condition(&waiting.status.as_ref().unwrap().conditions, READY).unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.message, "BitbucketIntegration acme is not ready");
    let integration = env.api::<BitbucketIntegration>().get("acme").await.unwrap();
    assert!(
        integration
            .status
            .as_ref()
            .is_none_or(|s| condition(&s.conditions, READY).is_none()),
        "the validation is still running: {:?}",
        integration.status
    );
    let reconciling = condition(
        &integration.status.as_ref().unwrap().conditions,
        RECONCILING,
    )
    .expect("the integration says its first validation is in progress");
    assert_eq!(
        (
            reconciling.status.as_str(),
            reconciling.reason.as_str(),
            reconciling.message.as_str()
        ),
        (
            "True",
            "Progressing",
            "validating the credential with Bitbucket"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_data_over_several_intervals_writes_nothing() {
    let env = Env::start_with("steady", Fixture::demo(), |s| {
        s.interval_override = Some(Duration::from_secs(1));
        // A 1 s interval is a pace no request budget keeps: the stretched interval it says
        // (and re-says as the syncs' cost is learned) is tests/it/budget.rs's subject.
        s.request_budgets = false;
    })
    .await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let subscriptions = env.api::<Subscription>();
    await_object(&subscriptions, "ci", "ci to sync", is_synced).await;
    let integrations = env.api::<BitbucketIntegration>();
    await_object(&integrations, "acme", "acme to count its user", |i| {
        i.status.as_ref().and_then(|s| s.subscriptions) == Some(1)
    })
    .await;
    let versions = || async {
        (
            integrations.get("acme").await.unwrap().resource_version(),
            subscriptions.get("ci").await.unwrap().resource_version(),
        )
    };
    let before = versions().await;
    let before_status =
        serde_json::to_string(&integrations.get("acme").await.unwrap().status).unwrap();
    let listings = || {
        env.sim
            .control()
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}")
    };
    let validations = || env.sim.control().counters().endpoint("GET /2.0/user");
    let (listed, validated) = (listings(), validations());
    // Five intervals pass, measured by the re-syncs Bitbucket sees.
    eventually(
        &format!("five re-syncs (listings past {listed} + 5, validations past {validated} + 5)"),
        PATIENCE,
        || async { (listings() >= listed + 5 && validations() >= validated + 5).then_some(()) },
    )
    .await;
    let after_status =
        serde_json::to_string(&integrations.get("acme").await.unwrap().status).unwrap();
    assert_eq!(
        versions().await,
        before,
        "a re-sync that finds the same data writes nothing; the integration's status was \
         {before_status}\nand is {after_status}"
    );
}

// --- resilience and secrecy -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_converges_without_repeating_events() {
    let mut env = Env::start("restart").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    env.wait_for_events(&[("acme", "Validated"), ("ci", "Synced")])
        .await;

    // Kill it mid-way, change things while it is down, start a new one.
    env.operator.take().unwrap().kill();
    env.create(&subscription("late", "acme", Some("acme"), &["OPS"]))
        .await;
    env.operator = Some(Operator::start(
        env.client.clone(),
        test_settings(&env.ns.name),
    ));

    let late = await_object(
        &env.api(),
        "late",
        "late to sync after the restart",
        is_synced,
    )
    .await;
    assert_eq!(late.status.unwrap().repository_count, Some(4));
    await_object(
        &env.api::<BitbucketIntegration>(),
        "acme",
        "acme to count both",
        |i| i.status.as_ref().and_then(|s| s.subscriptions) == Some(2),
    )
    .await;
    let ci = env.api::<Subscription>().get("ci").await.unwrap();
    assert!(is_synced(&ci), "nothing lost: {:?}", ci.status);
    // Only the new Subscription's first sync is news: nothing is announced twice.
    let events = env
        .wait_for_events(&[("acme", "Validated"), ("ci", "Synced"), ("late", "Synced")])
        .await;
    assert_eq!(events.len(), 3, "{events:#?}");
}

#[tokio::test]
async fn no_token_appears_in_events_status_or_logs() {
    let ((env, signed_in), logs) = crate::support::logs_of(async {
        let env = Env::start("secrets").await;
        env.jdoe_token_secret("good").await;
        env.secret(
            "bad",
            &[
                ("email", "jdoe@example.com"),
                ("token", "FAKE-bad-token-value"),
            ],
        )
        .await;
        env.create(&env.cloud("good", CredentialType::ApiToken, "good", None))
            .await;
        env.create(&env.cloud("bad", CredentialType::ApiToken, "bad", None))
            .await;
        env.create(&subscription("ci", "good", Some("acme"), &[]))
            .await;
        // A signed-in user, whose refresh token the operator rotates and saves.
        let signed_in = crate::support::signed_in(&env.sim).await;
        let mut oauth = crate::support::consenting(
            crate::support::string_secret(
                "signed-in",
                &[
                    ("clientId", crate::support::OAUTH_CLIENT_ID),
                    ("clientSecret", crate::support::OAUTH_CLIENT_SECRET),
                    ("refreshToken", &signed_in),
                ],
            ),
            &env.sim.base_url(),
        );
        oauth.metadata.labels = Some(
            [(
                bitbucket_operator::api::CREDENTIAL_TYPE_LABEL.to_owned(),
                "OAuthUser".to_owned(),
            )]
            .into(),
        );
        env.create(&oauth).await;
        env.create(&env.cloud("signed-in", CredentialType::OAuthUser, "signed-in", None))
            .await;
        let api = env.api::<BitbucketIntegration>();
        await_object(
            &api,
            "signed-in",
            "signed-in to be Ready",
            is_ready_integration,
        )
        .await;
        await_object(&api, "good", "good to be Ready", is_ready_integration).await;
        await_object(&api, "bad", "bad to stall", reason_is("InvalidCredentials")).await;
        await_object(&env.api(), "ci", "ci to sync", is_synced).await;
        (env, signed_in)
    })
    .await;
    let mut texts = vec![logs];
    texts.push(serde_json::to_string(&env.events().await).unwrap());
    texts.push(
        serde_json::to_string(
            &env.api::<BitbucketIntegration>()
                .list(&ListParams::default())
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    texts.push(
        serde_json::to_string(
            &env.api::<Subscription>()
                .list(&ListParams::default())
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    texts.push(env.operator().metrics.render());
    assert!(
        texts[0].contains("controllers started"),
        "logs were captured"
    );
    let rotated = env
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("signed-in")
        .await
        .unwrap()
        .data
        .unwrap()["refreshToken"]
        .clone();
    let rotated = String::from_utf8(rotated.0).unwrap();
    let signed_in = &signed_in;
    for secret in [
        API_TOKEN,
        "FAKE-bad-token-value",
        crate::support::OAUTH_CLIENT_SECRET,
        signed_in,
        &rotated,
    ] {
        for text in &texts {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_workspace_is_counted_in_full_but_listed_up_to_1000() {
    let mut fixture = Fixture::demo();
    fixture.cloud.workspaces[0].generate = Some(bitbucket_sim::Generator {
        count: 1195,
        prefix: "svc".into(),
        project: "OPS".into(),
        private: true,
    });
    let env = Env::start_with("large", fixture, |_| {}).await;
    env.ready_cloud_integration().await;
    env.create(&subscription("all", "acme", Some("acme"), &[]))
        .await;
    let synced = await_object(&env.api(), "all", "all to sync", is_synced).await;
    let status = synced.status.unwrap();
    assert_eq!(status.repository_count, Some(1205));
    assert_eq!(status.repositories.len(), 1000);
    assert!(status.repositories_truncated);
    let names: Vec<_> = status
        .repositories
        .iter()
        .map(|r| r.full_name.clone())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by fullName");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_subscription_keeps_its_list_and_stops_listing() {
    let env = Env::start("suspend").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let api = env.api::<Subscription>();
    await_object(&api, "ci", "ci to sync", is_synced).await;
    api.patch(
        "ci",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    let suspended = await_object(
        &api,
        "ci",
        "ci to be suspended",
        subscription_reason_is("Suspended"),
    )
    .await;
    let status = suspended.status.unwrap();
    assert_eq!(status.repositories.len(), 10, "the last list stays");
    assert_eq!(
        condition(&status.conditions, READY).map(|c| c.status.as_str()),
        Some("True"),
        "suspended is the state asked for: Ready, so kstatus says Current"
    );
    let listings = env
        .sim
        .control()
        .counters()
        .endpoint("GET /2.0/repositories/{workspace}");
    api.patch(
        "ci",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: "now"}}})),
    )
    .await
    .unwrap();
    await_object(&api, "ci", "the request to be echoed", |s| {
        s.status
            .as_ref()
            .and_then(|s| s.last_handled_sync_request.as_deref())
            == Some("now")
    })
    .await;
    assert_eq!(
        env.sim
            .control()
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}"),
        listings,
        "a suspended Subscription does not list"
    );
    api.patch(
        "ci",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    await_object(&api, "ci", "ci to sync again", is_synced).await;
}

/// Issue 25: a listing past the operator's bound is not kept. The Subscription says so with a
/// reason of its own, names the flag that sets the bound, announces it in a Warning Event, and
/// keeps the last good list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_past_its_bound_keeps_the_last_list_and_names_the_flag() {
    let env = Env::start_with("bounded", Fixture::demo(), |s| {
        s.transport.listing.max_repositories = 10; // the demo workspace holds 10
    })
    .await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let api = env.api::<Subscription>();
    let synced = await_object(&api, "ci", "ci to sync", is_synced).await;
    let listed = synced.status.unwrap().repositories;
    assert_eq!(listed.len(), 10);

    let control = env.sim.control();
    let mut added = control.fixture().cloud.workspaces[0].repositories[0].clone();
    added.slug = "one-too-many".into();
    added.uuid = None;
    added.updated_on = None;
    control.add_cloud_repository("acme", added).unwrap();
    api.patch(
        "ci",
        &PatchParams::default(),
        &sync_request("past-the-bound"),
    )
    .await
    .unwrap();
    let refused = await_object(
        &api,
        "ci",
        "ci to say its listing is too large",
        subscription_reason_is(reasons::LISTING_TOO_LARGE),
    )
    .await;
    let status = refused.status.unwrap();
    let ready = condition(&status.conditions, READY).unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("at most 10 repositories")
            && ready.message.contains("--max-repositories"),
        "{}",
        ready.message
    );
    assert_eq!(status.repositories, listed, "the last good list is kept");
    env.wait_for_events(&[("ci", reasons::LISTING_TOO_LARGE)])
        .await;
}

/// Issue 25: what Bitbucket says reaches status made safe. A 3 MiB error message full of
/// terminal escapes (a clipboard write, a screen clear, a right-to-left override) once made
/// the status write fail, so the integration showed no condition at all; now the condition
/// says `InvalidCredentials` with at most 32 KiB of the message, every escape shown, not obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_hostile_error_message_reaches_status_escaped_and_capped() {
    let env = Env::start("hostile").await;
    env.ready_cloud_integration().await;
    // 50 bytes as JSON: the escapes are written \u001b and \u0007.
    let hostile = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\u{202E}gnp.exe ".repeat(3 * 1024 * 1024 / 50);
    let body = json!({"type": "error", "error": {"message": hostile}}).to_string();
    assert!(
        (3 << 20..4 << 20).contains(&body.len()),
        "{} bytes",
        body.len()
    );
    env.sim.control().add_fault(
        FaultRule::status(401)
            .with_body("application/json", &body)
            .on_path("/2.0/user"),
    );
    let api = env.api::<BitbucketIntegration>();
    api.patch("acme", &PatchParams::default(), &sync_request("hostile"))
        .await
        .unwrap();
    let refused = await_object(
        &api,
        "acme",
        "acme to say its credential was refused",
        reason_is("InvalidCredentials"),
    )
    .await;
    let status = refused.status.unwrap();
    let ready = condition(&status.conditions, READY).unwrap();
    assert!(
        ready.message.len() <= 32 * 1024,
        "{} bytes",
        ready.message.len()
    );
    assert!(
        ready.message.contains("\\u001B]52;c;") && ready.message.contains("\\u202Egnp.exe"),
        "the escapes are shown: {}",
        &ready.message[..200]
    );
    assert!(
        !ready
            .message
            .chars()
            .any(|c| c.is_control() || c == '\u{202E}'),
        "nothing is obeyed"
    );
}

/// An Event repeated within six minutes is one Event whose series counts the repeats (as kube's
/// Recorder does, without keeping each Event whole); another reason is another Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_is_one_event_with_a_series() {
    use bitbucket_operator::controller::events::Events;
    use k8s_openapi::api::{core::v1::ConfigMap, events::v1::Event as KubeEvent};
    use kube::{
        Resource,
        api::{ListParams, PostParams},
        runtime::events::{Event, EventType, Reporter},
    };

    let client = crate::support::client().await;
    let ns = crate::support::TestNamespace::create(&client, "events").await;
    let config_maps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &ns.name);
    let mut object = ConfigMap::default();
    object.metadata.name = Some("regarded".into());
    let object = config_maps
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let events = Events::new(
        client.clone(),
        Reporter {
            controller: "bitbucket-operator".into(),
            instance: Some("test".into()),
        },
    );
    let event = |reason: &str| Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some("the same again".into()),
        action: "Checking".into(),
        secondary: None,
    };
    let regarding = object.object_ref(&());
    for _ in 0..3 {
        events
            .publish(&event("Repeated"), &regarding)
            .await
            .unwrap();
    }
    events.publish(&event("Other"), &regarding).await.unwrap();

    let listed: kube::Api<KubeEvent> = kube::Api::namespaced(client.clone(), &ns.name);
    let listed = listed.list(&ListParams::default()).await.unwrap().items;
    let counts: Vec<(String, Option<i32>)> = listed
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.series.as_ref().map(|s| s.count),
            )
        })
        .collect();
    let mut counts = counts;
    counts.sort();
    assert_eq!(
        counts,
        [("Other".to_owned(), None), ("Repeated".to_owned(), Some(3))]
    );
}

/// An operator with backoffs as long as in production (4 s doubling up to 2 minutes), its
/// integration `acme` Ready, and Bitbucket answering every listing 503 from now on.
async fn listings_refused(prefix: &str) -> Env {
    let env = Env::start_with(prefix, Fixture::demo(), |s| {
        s.backoff_base = Duration::from_secs(4);
        s.backoff_max = Duration::from_secs(120);
    })
    .await;
    env.ready_cloud_integration().await;
    (env.sim.control()).add_fault(FaultRule::status(503).on_path("/2.0/repositories"));
    env
}

/// Once Bitbucket answers again, the objects that backed off while it did not are not left to
/// wait out backoffs grown during the outage: the first success on the server releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_answer_after_an_outage_releases_everything_waiting_on_that_server() {
    // Without the release, each Subscription would wait out its own backoff, grown during the
    // outage to tens of seconds.
    let env = listings_refused("recovery").await;
    let control = env.sim.control();
    let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    for name in &names {
        env.create(&subscription(name, "acme", Some("acme"), &[]))
            .await;
    }
    let listings = || {
        env.sim
            .control()
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}")
    };
    // Each has failed three times (two attempts each): its backoff is 8 to 32 s now.
    eventually("three failures each", Duration::from_secs(90), || async {
        (listings() >= 6 * 3 * 2).then_some(())
    })
    .await;
    control.clear_faults();
    // The integration's validation is the first call to answer: a sync request asks for one.
    let integrations = env.api::<BitbucketIntegration>();
    integrations
        .patch("acme", &PatchParams::default(), &sync_request("back"))
        .await
        .unwrap();
    let answered = std::time::Instant::now();
    let subscriptions = env.api::<Subscription>();
    tokio::time::timeout(Duration::from_secs(5), async {
        for name in &names {
            await_object(&subscriptions, name, "to sync once released", is_synced).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("not all listed within 5 s of Bitbucket answering again (backoffs waited out)")
    });
    eprintln!("all listed {:?} after the first answer", answered.elapsed());
}

/// An operator that takes over an integration Bitbucket keeps refusing with 503 (a restart,
/// a new leader) tries it once and goes on with the backoff where the failures so far leave it,
/// read from the status, instead of starting again from the shortest wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_goes_on_with_the_backoff_of_a_failing_integration() {
    let mut env = Env::start_with("resume", Fixture::demo(), |s| {
        s.backoff_base = Duration::from_secs(2);
        s.backoff_max = Duration::from_secs(300);
    })
    .await;
    env.ready_cloud_integration().await;
    let control = env.sim.control().clone();
    control.add_fault(FaultRule::status(503).on_path("/2.0/user"));
    let integrations = env.api::<BitbucketIntegration>();
    integrations
        .patch("acme", &PatchParams::default(), &sync_request("outage"))
        .await
        .unwrap();
    let validations = || control.counters().endpoint("GET /2.0/user");
    // Four failed validations of two requests each (one retry by the client): about 7 s of
    // failures, after waits of 1-2, 2-4 and 4-8 s.
    eventually(
        "four failed validations",
        Duration::from_secs(60),
        || async { (validations() >= 8).then_some(()) },
    )
    .await;
    env.operator.take().unwrap().stop().await;
    let before = validations();
    env.restart_operator();
    let restarted = std::time::Instant::now();
    eventually(
        "the first validation after the restart",
        PATIENCE,
        || async { (validations() > before).then_some(()) },
    )
    .await;
    // The next waits 8 s at least (the fourth failure's backoff); from the shortest wait it
    // would have been three more validations within 1 + 2 + 4 s.
    while restarted.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = validations() - before;
    assert!(
        after <= 2,
        "{after} requests in the 8 s after the restart: one validation of two tries at most"
    );
}

/// A Subscription whose own calls keep failing while the server answers others is not released
/// by each of their answers: it calls at its backoff's pace, plus one release a minute at most
/// (without the limit, every validation of its integration let it call again at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_failing_alone_waits_out_its_backoff_while_others_succeed() {
    let env = listings_refused("recovery-alone").await;
    let control = env.sim.control();
    let listings = || {
        env.sim
            .control()
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}")
    };
    env.create(&subscription("alone", "acme", Some("acme"), &[]))
        .await;
    eventually("the first failure", Duration::from_secs(30), || async {
        (listings() >= 1).then_some(())
    })
    .await;
    let before = listings();
    // Twenty seconds of the integration's validations succeeding, four a second.
    let integrations = env.api::<BitbucketIntegration>();
    let validations = control.counters().endpoint("GET /2.0/user");
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(20) {
        n += 1;
        integrations
            .patch(
                "acme",
                &PatchParams::default(),
                &sync_request(&format!("v{n}")),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answered = control.counters().endpoint("GET /2.0/user") - validations;
    assert!(answered >= 20, "the others succeeded {answered} times");
    // Backoffs of 2-4, 4-8, 8-16 s after the failures: 4 attempts at most in 20 s, one more
    // for a release, of 2 tries each.
    let during = listings() - before;
    assert!(
        during <= 5 * 2,
        "{during} listing requests in 20 s while {answered} validations succeeded"
    );
}
