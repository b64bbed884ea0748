//! The request budget, on the real API server, with time sped up: the operator's budget
//! window and the simulator's rate-limit window are both 12 s (an "hour"), and the
//! credential may make 10 requests in it. Four Subscriptions asking for a sync every 2 s would
//! need 24 requests a window: the operator stretches their interval and says so, Bitbucket
//! never answers 429, and a sync request still goes through at once.

use std::time::{Duration, Instant};

use crate::support::{
    env::*,
    operator::{await_object, condition, subscription, sync_request},
};
use bitbucket_operator::api::{
    BitbucketIntegration, CredentialType, RequestBudget, SYNC_REQUESTED_AT_ANNOTATION, Subscription,
};
use bitbucket_sim::{FaultRule, Fixture};
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// The "hour" of this test.
const WINDOW: Duration = Duration::from_secs(12);
/// Requests the credential may make in it.
const LIMIT: u32 = 10;
/// The credential's id in the simulator's demo fixture.
const CREDENTIAL: &str = "jdoe-api-token";

fn stretched(s: &Subscription) -> Option<String> {
    s.status.as_ref()?.stretched_sync_interval.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intervals_the_budget_cannot_keep_are_stretched_and_said_and_bitbucket_never_says_429() {
    let env = Env::start_with("budget", Fixture::demo(), |settings| {
        settings.budget_window = WINDOW;
        settings.interval_override = Some(Duration::from_secs(2));
    })
    .await;
    env.sim.control().set_rate_window(WINDOW);
    env.sim.control().set_rate_limit(CREDENTIAL, Some(LIMIT));
    env.jdoe_token_secret("acme-token").await;
    let mut acme = env.cloud("acme", CredentialType::ApiToken, "acme-token", None);
    // The window stands for an hour.
    let per_hour = LIMIT;
    acme.spec.request_budget = Some(RequestBudget {
        requests_per_hour: Some(per_hour),
        planned_percent: None,
    });
    env.create(&acme).await;
    let acme = await_object(&env.api(), "acme", "acme Ready", is_ready_integration).await;
    let budget = acme
        .status
        .unwrap()
        .request_budget
        .expect("the budget shown");
    assert_eq!(
        (
            budget.requests_per_hour,
            budget.planned_per_hour,
            budget.source.as_str()
        ),
        (per_hour, per_hour * 8 / 10, "set on the integration")
    );

    // Four Subscriptions of four scopes: each sync is one request of its own.
    let scopes: [&[&str]; 4] = [&[], &["API"], &["WEB"], &["OPS"]];
    for (i, projects) in scopes.iter().enumerate() {
        env.create(&subscription(
            &format!("s{i}"),
            "acme",
            Some("acme"),
            projects,
        ))
        .await;
    }
    // 4 x 6 requests a window against 8 planned: three times the interval, or more.
    let mut kept = Duration::ZERO;
    for i in 0..4 {
        let s = await_object(
            &env.api(),
            &format!("s{i}"),
            "its stretched interval",
            |s: &Subscription| {
                let kept =
                    stretched(s).and_then(|k| bitbucket_operator::api::parse_duration(&k).ok());
                is_synced(s) && kept.is_some_and(|k| k >= Duration::from_secs(6))
            },
        )
        .await;
        let interval = bitbucket_operator::api::parse_duration(&stretched(&s).unwrap()).unwrap();
        kept = kept.max(interval);
        let status = s.status.unwrap();
        let ready = condition(&status.conditions, "Ready").unwrap();
        assert!(ready.message.contains("not every 2s"), "{}", ready.message);
    }
    env.wait_for_events(&[("s0", "SyncIntervalStretched")])
        .await;

    // Three windows of steady state, a sync request in the middle: served at once.
    let start = Instant::now();
    tokio::time::sleep(WINDOW + WINDOW / 2).await;
    let asked = Instant::now();
    let patch = json!({"metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: "now"}}});
    env.api::<Subscription>()
        .patch("s1", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    await_object(
        &env.api(),
        "s1",
        "the sync request answered",
        |s: &Subscription| {
            s.status
                .as_ref()
                .and_then(|s| s.last_handled_sync_request.as_deref())
                == Some("now")
        },
    )
    .await;
    let served = asked.elapsed();
    assert!(served < Duration::from_secs(5), "served in {served:?}");
    tokio::time::sleep((WINDOW * 2).saturating_sub(start.elapsed())).await;

    // A new repository is listed by the next planned sync: within the stretched interval
    // (twice it, for the turn it may wait for).
    let added = Instant::now();
    let repository =
        serde_json::from_value(json!({"slug": "budget-new", "project": "OPS"})).unwrap();
    (env.sim.control())
        .add_cloud_repository("acme", repository)
        .unwrap();
    await_object(
        &env.api(),
        "s3",
        "the new repository",
        |s: &Subscription| {
            (s.status.as_ref())
                .is_some_and(|s| s.repositories.iter().any(|r| r.name == "budget-new"))
        },
    )
    .await;
    let listed = added.elapsed();
    assert!(
        listed <= kept * 2 + Duration::from_secs(1),
        "listed after {listed:?}, kept {kept:?}"
    );

    assert_eq!(
        env.sim.control().counters().answered(CREDENTIAL, 429),
        0,
        "Bitbucket never said 429"
    );
    let text = env.operator().metrics.render();
    let series = |name: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("bitbucket_operator_{name}{{"))
                    && l.contains("integration=\"acme\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no {name} series in\n{text}"))
    };
    assert_eq!(series("request_budget"), LIMIT);
    assert_eq!(series("request_budget_planned"), LIMIT * 8 / 10);
    let used = series("request_budget_used");
    assert!(used > 0 && used <= LIMIT, "{used}");
    assert_eq!(series("request_budget_remaining"), LIMIT - used);
}

/// The value of the operator's series `name` for integration `integration`.
fn series(text: &str, name: &str, integration: &str) -> Option<u32> {
    text.lines()
        .find(|l| {
            l.starts_with(&format!("bitbucket_operator_{name}{{"))
                && l.contains(&format!("integration=\"{integration}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_of_one_cloud_user_draw_on_one_budget() {
    let env = Env::start("budget-shared").await;
    env.jdoe_token_secret("acme-token").await;
    let a_first_ready = first_ready(env.api(), "a").await;
    for name in ["a", "b"] {
        env.create(&env.cloud(name, CredentialType::ApiToken, "acme-token", None))
            .await;
        env.create(&subscription(
            &format!("{name}-all"),
            name,
            Some("acme"),
            &["API"],
        ))
        .await;
    }
    for name in ["a-all", "b-all"] {
        await_object(&env.api(), name, "synced", is_synced).await;
    }
    // Shared from the first status that says Ready: the validation that names the account
    // moves the integration into the account's pool before that status is written, not in a
    // second write.
    let shared = |i: &bitbucket_operator::api::BitbucketIntegration| {
        (i.status.as_ref().and_then(|s| s.request_budget.as_ref()))
            .is_some_and(|b| b.source.contains("shared"))
    };
    let a = a_first_ready.await.unwrap();
    assert!(shared(&a), "a's first Ready status: {:#?}", a.status);
    let b = await_object(&env.api(), "b", "b's budget shared", shared).await;
    let budget = b.status.unwrap().request_budget.unwrap();
    assert_eq!(
        (budget.requests_per_hour, budget.source.as_str()),
        (
            1000,
            "credential type, shared by the integrations of this account"
        )
    );
    // Both count every request jdoe's token made: two validations and two listings at least.
    let text = env.operator().metrics.render();
    let used = |name| series(&text, "request_budget_used", name).unwrap();
    assert_eq!(used("a"), used("b"), "{text}");
    assert!(used("a") >= 4, "{text}");

    // An access token has its own allowance, which Bitbucket reports (X-RateLimit-Limit).
    env.sim
        .control()
        .set_rate_limit("acme-ci-token", Some(2500));
    env.secret("wat", &[("token", ACCESS_TOKEN)]).await;
    env.create(&env.cloud("wat", CredentialType::AccessToken, "wat", Some("acme")))
        .await;
    let wat = await_object(&env.api(), "wat", "wat Ready", is_ready_integration).await;
    let budget = wat.status.unwrap().request_budget.unwrap();
    assert_eq!(
        (
            budget.requests_per_hour,
            budget.planned_per_hour,
            budget.source.as_str()
        ),
        (2500, 2000, "reported by Bitbucket")
    );
}

/// The first version of integration `name` that says Ready, seen by a watch listed before this
/// returns (so no version of an integration created after it is missed).
async fn first_ready(
    api: kube::Api<BitbucketIntegration>,
    name: &str,
) -> tokio::task::JoinHandle<BitbucketIntegration> {
    use futures::TryStreamExt as _;
    use kube::runtime::watcher::{self, Event};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (listed, is_listed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher::watcher(api, config));
        let mut listed = Some(listed);
        while let Some(event) = events.try_next().await.expect("watching integrations") {
            match event {
                Event::InitDone => drop(listed.take().map(|l| l.send(()))),
                Event::Apply(object) | Event::InitApply(object)
                    if is_ready_integration(&object) =>
                {
                    return object;
                }
                _ => {}
            }
        }
        panic!("the watch ended")
    });
    crate::support::within("the watch to list", is_listed)
        .await
        .expect("the watch lists");
    task
}

/// A 429 holds planned work for its `Retry-After`. Interval syncs and validations that fall
/// in the hold send nothing, so nothing failed: each keeps its list and says nothing new (it
/// showed `Ready=False RateLimited`, "retry after 598s", for a 429 another object met).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_work_held_by_a_rate_limit_sends_nothing_and_keeps_its_state() {
    let env = Env::start_with("held", Fixture::demo(), |s| {
        s.interval_override = Some(Duration::from_secs(2));
    })
    .await;
    env.ready_cloud_integration().await;
    // Room for every interval of 2 s: none is stretched past the window below.
    let budget = json!({"spec": {"requestBudget": {"requestsPerHour": 1_000_000}}});
    (env.api::<BitbucketIntegration>())
        .patch("acme", &PatchParams::default(), &Patch::Merge(&budget))
        .await
        .unwrap();
    for (name, project) in [("a", "API"), ("b", "WEB")] {
        env.create(&subscription(name, "acme", Some("acme"), &[project]))
            .await;
        await_object(&env.api(), name, "synced", is_synced).await;
    }
    let control = env.sim.control();
    // acme's status names both users (its own write, which must not fall in the window below).
    let integrations = env.api::<BitbucketIntegration>();
    await_object(
        &integrations,
        "acme",
        "acme to name a and b",
        |i: &BitbucketIntegration| i.status.as_ref().is_some_and(|s| s.used_by == ["a", "b"]),
    )
    .await;
    control.add_fault(
        FaultRule::status(429)
            .with_retry_after("600")
            .on_path("/2.0/repositories")
            .times(1),
    );
    let api = env.api::<Subscription>();
    api.patch("b", &PatchParams::default(), &sync_request("limited"))
        .await
        .unwrap();
    await_object(
        &api,
        "b",
        "b to meet the 429",
        subscription_reason_is("RateLimited"),
    )
    .await;
    let validations = || control.counters().endpoint("GET /2.0/user");
    let before = validations();
    let version = |object: &kube::api::ObjectMeta| object.resource_version.clone().unwrap();
    let a = api.get("a").await.unwrap();
    let acme = integrations.get("acme").await.unwrap();
    // Nothing to wait for, as nothing is to happen: a window of three intervals, in which a's
    // sync and acme's validation each come due at least twice (and, before the hold was
    // handled, failed and wrote it).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        validations(),
        before,
        "a planned validation was sent during the hold"
    );
    let a_after = api.get("a").await.unwrap();
    assert!(is_synced(&a_after), "{:#?}", a_after.status);
    assert_eq!(
        version(&a_after.metadata),
        version(&a.metadata),
        "a was written"
    );
    let acme_after = integrations.get("acme").await.unwrap();
    assert!(
        is_ready_integration(&acme_after),
        "{:#?}",
        acme_after.status
    );
    assert_eq!(
        version(&acme_after.metadata),
        version(&acme.metadata),
        "acme was written: {:#?}\nbecame {:#?}",
        acme.status,
        acme_after.status
    );
    // A Subscription made now (of a scope no listing is cached for) says its first listing
    // waits (planned, held).
    env.create(&subscription("c", "acme", Some("acme"), &[]))
        .await;
    await_object(&api, "c", "c to say it waits", |s: &Subscription| {
        s.status.as_ref().is_some_and(|s| {
            condition(&s.conditions, "Reconciling").is_some_and(|c| c.reason == "RateLimited")
        })
    })
    .await;
    // Asked-for work is not held.
    api.patch("a", &PatchParams::default(), &sync_request("asked"))
        .await
        .unwrap();
    await_object(
        &api,
        "a",
        "a's sync request answered",
        |s: &Subscription| {
            s.status
                .as_ref()
                .is_some_and(|s| s.last_handled_sync_request.as_deref() == Some("asked"))
        },
    )
    .await;
}

/// After a 429 whose `Retry-After` is an hour (or nonsense), a sync request still validates at
/// once, and the integration stays Ready through the planned validations after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_request_after_a_long_retry_after_validates_at_once_and_stays_ready() {
    let env = Env::start_with("long-429", Fixture::demo(), |s| {
        s.interval_override = Some(Duration::from_secs(2));
    })
    .await;
    env.secret("dc-token", &[("token", DC_TOKEN)]).await;
    env.create(&env.data_center("dc", CredentialType::AccessToken, "dc-token"))
        .await;
    let integrations = env.api::<BitbucketIntegration>();
    await_object(&integrations, "dc", "dc Ready", is_ready_integration).await;
    let control = env.sim.control();
    control.add_fault(
        FaultRule::status(429)
            .with_retry_after("18446744073709551615")
            .on_path("/rest")
            .times(1),
    );
    integrations
        .patch("dc", &PatchParams::default(), &sync_request("limited"))
        .await
        .unwrap();
    let reason_is = |reason: &'static str| {
        move |i: &BitbucketIntegration| {
            i.status.as_ref().is_some_and(|s| {
                condition(&s.conditions, "Ready").is_some_and(|c| c.reason == reason)
            })
        }
    };
    await_object(
        &integrations,
        "dc",
        "dc rate limited",
        reason_is("RateLimited"),
    )
    .await;
    integrations
        .patch("dc", &PatchParams::default(), &sync_request("after"))
        .await
        .unwrap();
    await_object(
        &integrations,
        "dc",
        "dc Ready again",
        |i: &BitbucketIntegration| {
            is_ready_integration(i)
                && i.status
                    .as_ref()
                    .and_then(|s| s.last_handled_sync_request.as_deref())
                    == Some("after")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dc = integrations.get("dc").await.unwrap();
    assert!(is_ready_integration(&dc), "{:#?}", dc.status);
}

/// A sync request that finds the credential's budget spent is not sent, and not handled yet:
/// the integration says it waits (`Reconciling`, `RequestBudgetSpent`), keeps its last
/// validation, and validates once the window has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_request_that_finds_the_budget_spent_says_it_waits_until_there_is_room() {
    let env = Env::start_with("spent", Fixture::demo(), |s| {
        s.budget_window = WINDOW;
    })
    .await;
    env.jdoe_token_secret("acme-token").await;
    let mut acme = env.cloud("acme", CredentialType::ApiToken, "acme-token", None);
    acme.spec.request_budget = Some(RequestBudget {
        requests_per_hour: Some(2),
        planned_percent: None,
    });
    env.create(&acme).await;
    let integrations = env.api::<BitbucketIntegration>();
    let handled = |value: &'static str| {
        move |i: &BitbucketIntegration| {
            is_ready_integration(i)
                && i.status
                    .as_ref()
                    .and_then(|s| s.last_handled_sync_request.as_deref())
                    == Some(value)
        }
    };
    await_object(&integrations, "acme", "acme Ready", is_ready_integration).await;
    integrations
        .patch("acme", &PatchParams::default(), &sync_request("one"))
        .await
        .unwrap();
    await_object(&integrations, "acme", "request one handled", handled("one")).await;
    let requests = env.sim.control().counters().credential(CREDENTIAL);
    integrations
        .patch("acme", &PatchParams::default(), &sync_request("two"))
        .await
        .unwrap();
    let waiting = await_object(
        &integrations,
        "acme",
        "acme to say it waits",
        |i: &BitbucketIntegration| {
            i.status.as_ref().is_some_and(|s| {
                condition(&s.conditions, "Reconciling")
                    .is_some_and(|c| c.reason == "RequestBudgetSpent")
            })
        },
    )
    .await;
    let status = waiting.status.unwrap();
    assert_eq!(status.last_handled_sync_request.as_deref(), Some("one"));
    assert!(is_ready_integration(
        &integrations.get("acme").await.unwrap()
    ));
    assert_eq!(
        env.sim.control().counters().credential(CREDENTIAL),
        requests
    );
    await_object(&integrations, "acme", "request two handled", handled("two")).await;
    let done = integrations.get("acme").await.unwrap().status.unwrap();
    assert!(
        condition(&done.conditions, "Reconciling").is_none(),
        "{done:#?}"
    );
}
