//! Figure 13: the request budget. 1,000 Subscriptions of 1,000 Cloud projects on one API
//! token whose budget is 1,000 requests an hour, as Bitbucket allows an API token, with time
//! sped up 100 times: the operator's budget window and the simulator's rate-limit window are
//! 36 s (an "hour"), and the Subscriptions' 10-minute interval is 6 s. Each sync of one project
//! is one request, so the intervals ask for 6,000 requests an hour. Four simulated hours:
//!
//! - Bitbucket's 429s, and the requests made in each simulated hour;
//! - the interval the operator keeps (`status.stretchedSyncInterval`), and the longest gap
//!   between two syncs of one Subscription once all were listed (goal: within the interval
//!   kept);
//! - sync requests made during it: time to `status.lastHandledSyncRequest` (goal ≤ 5 s).
//!
//! The baseline is the same run with budgets off (`Settings::request_budgets`: no limit, no
//! turns, no stretching, no hold after a 429), which is how the operator behaved before it had
//! them (9b32533): its 429s counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bitbucket_operator::api::{SYNC_REQUESTED_AT_ANNOTATION, Subscription};
use bitbucket_sim::{CloudProject, Fixture, Simulator};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{
    Row, bench_settings, bounded, cloud_integration, cloud_secret, create, ms, percentile,
    support::{
        TestNamespace,
        operator::{Operator, await_object, subscription},
    },
};

/// The simulated hour.
const HOUR: Duration = Duration::from_secs(36);
/// The Subscriptions' interval: 10 minutes, sped up as the hour is.
const INTERVAL: Duration = Duration::from_secs(6);
const SUBSCRIPTIONS: usize = 1_000;
/// What Bitbucket allows the API token an hour.
const LIMIT: u32 = 1_000;
const HOURS: u32 = 4;
const CREDENTIAL: &str = "jdoe-api-token";

/// What one run measured.
struct Run {
    too_many: u64,
    per_hour: Vec<u64>,
    kept: Option<String>,
    /// The longest gap between two syncs of one Subscription after all were listed, and the
    /// longest a Subscription went unsynced at the end.
    longest_gap: Duration,
    /// When every Subscription had been listed once, from the first creation.
    all_listed: Option<Duration>,
    requests: Vec<Duration>,
}

pub async fn figure(client: &Client) -> Vec<Row> {
    let budgeted = run(client, true).await;
    let unbudgeted = run(client, false).await;
    let kept = budgeted.kept.clone().unwrap_or_else(|| "none".into());
    let kept_interval = budgeted
        .kept
        .as_deref()
        .and_then(|k| bitbucket_operator::api::parse_duration(k).ok())
        .unwrap_or(INTERVAL);
    let requests = |r: &Run| {
        let mut sorted = r.requests.clone();
        sorted.sort();
        match sorted.last() {
            Some(max) => format!(
                "p50 {:.0} ms, max {:.0} ms ({} requests)",
                ms(percentile(&sorted, 0.5)),
                ms(*max),
                sorted.len()
            ),
            None => "none answered".into(),
        }
    };
    let hours = |r: &Run| {
        (r.per_hour.iter())
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let worst_request = budgeted
        .requests
        .iter()
        .max()
        .copied()
        .unwrap_or(Duration::MAX);
    vec![
        Row {
            number: 13,
            figure: "request budget: 1,000 Subscriptions of one API token (1,000 requests an hour; intervals asking 6,000), 4 simulated hours at 100× speed: Bitbucket's 429s",
            measured: format!(
                "{} 429s; requests per simulated hour {} vs budgets off (as 9b32533): {} 429s, requests per hour {}",
                budgeted.too_many,
                hours(&budgeted),
                unbudgeted.too_many,
                hours(&unbudgeted)
            ),
            target: "0".into(),
            met: Some(budgeted.too_many == 0),
        },
        Row {
            number: 13,
            figure: "request budget: the interval kept, and the longest gap between two syncs of one Subscription once all were listed",
            measured: format!(
                "kept {kept} (10 min simulated → {:.0} min); longest gap {:.1} s = {:.0} simulated min; all 1,000 listed {:.1} s after the first was created ({:.0} simulated min) vs budgets off: all listed after {:.1} s",
                kept_interval.as_secs_f64() * 100.0 / 60.0,
                budgeted.longest_gap.as_secs_f64(),
                budgeted.longest_gap.as_secs_f64() * 100.0 / 60.0,
                budgeted.all_listed.map_or(f64::NAN, |d| d.as_secs_f64()),
                budgeted
                    .all_listed
                    .map_or(f64::NAN, |d| d.as_secs_f64() * 100.0 / 60.0),
                unbudgeted.all_listed.map_or(f64::NAN, |d| d.as_secs_f64()),
            ),
            target: "every gap within the interval kept".into(),
            met: Some(budgeted.longest_gap <= kept_interval + Duration::from_secs(1)),
        },
        Row {
            number: 13,
            figure: "request budget: sync requests during the run, to lastHandledSyncRequest",
            measured: format!(
                "{} vs budgets off: {}",
                requests(&budgeted),
                requests(&unbudgeted)
            ),
            target: "≤ 5 s".into(),
            met: Some(worst_request <= Duration::from_secs(5)),
        },
    ]
}

/// 1,000 Cloud projects in workspace `acme`, none with repositories: each listing is a page.
fn projects() -> Fixture {
    let mut fixture = Fixture::demo();
    let workspace = &mut fixture.cloud.workspaces[0];
    workspace
        .projects
        .extend((0..SUBSCRIPTIONS).map(|i| CloudProject {
            key: format!("P{i:04}"),
            name: None,
            uuid: None,
        }));
    fixture
}

/// One run, with request budgets on or off.
async fn run(client: &Client, budgets: bool) -> Run {
    let ns = TestNamespace::create(client, "bench-budget").await;
    let sim = Simulator::start(projects()).await.unwrap();
    sim.control().set_rate_window(HOUR);
    sim.control().set_rate_limit(CREDENTIAL, Some(LIMIT));
    let mut settings = bench_settings(&ns.name, &sim);
    settings.budget_window = HOUR;
    settings.interval_override = Some(INTERVAL);
    settings.concurrency = 16;
    settings.request_budgets = budgets;
    let operator = Operator::start(client.clone(), settings);
    cloud_secret(client, &ns.name).await;
    create(client, &ns.name, &cloud_integration("cloud", &sim)).await;

    let api: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    let start = Instant::now();
    let uids = Arc::new(Mutex::new(Vec::new()));
    bounded(
        (0..SUBSCRIPTIONS).map(|i| {
            let (api, uids) = (api.clone(), Arc::clone(&uids));
            async move {
                let project = format!("P{i:04}");
                let s = subscription(&format!("s{i:04}"), "cloud", Some("acme"), &[&project]);
                let made = api.create(&PostParams::default(), &s).await.unwrap();
                uids.lock().unwrap().push(made.uid().unwrap());
            }
        }),
        16,
    )
    .await;
    let uids = Arc::try_unwrap(uids).unwrap().into_inner().unwrap();

    let sampler = tokio::spawn(sample(operator.shared.clone(), uids, start));
    let requests = tokio::spawn(sync_requests(api.clone(), start));
    let mut per_hour = Vec::new();
    let mut counted = sim.control().counters().credential(CREDENTIAL);
    for hour in 1..=HOURS {
        tokio::time::sleep((HOUR * hour).saturating_sub(start.elapsed())).await;
        let now = sim.control().counters().credential(CREDENTIAL);
        per_hour.push(now - counted);
        counted = now;
    }
    let (longest_gap, all_listed) = sampler.await.unwrap();
    let requests = requests.await.unwrap();
    let kept = (api.list(&Default::default()).await.unwrap().items.iter())
        .filter_map(|s| s.status.as_ref()?.stretched_sync_interval.clone())
        .max_by_key(|k| bitbucket_operator::api::parse_duration(k).unwrap_or_default());
    let run = Run {
        too_many: sim.control().counters().answered(CREDENTIAL, 429),
        per_hour,
        kept,
        longest_gap,
        all_listed,
        requests,
    };
    operator.stop().await;
    drop(ns);
    run
}

/// Looks at each Subscription's last sync every 100 ms until the run ends: the longest gap
/// between syncs once all were listed (a gap still open at the end included), and when all
/// were.
async fn sample(
    shared: Arc<bitbucket_operator::controller::Shared>,
    uids: Vec<String>,
    start: Instant,
) -> (Duration, Option<Duration>) {
    let end = start + HOUR * HOURS;
    let mut last: HashMap<&str, Instant> = HashMap::new();
    let (mut all_listed, mut longest) = (None, Duration::ZERO);
    while Instant::now() < end {
        for uid in &uids {
            let at = shared
                .memory
                .subscription(uid, |m| m.sync.as_ref().map(|s| s.at));
            let Some(at) = at else { continue };
            if let Some(before) = last.insert(uid, at)
                && before != at
                && all_listed.is_some()
            {
                longest = longest.max(at - before);
            }
        }
        if all_listed.is_none() && last.len() == uids.len() {
            all_listed = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if all_listed.is_some() {
        let now = Instant::now();
        for at in last.values() {
            longest = longest.max(now - *at);
        }
    }
    (longest, all_listed)
}

/// From the second simulated hour, a sync request every 3 s to another Subscription; the time
/// until each is answered.
async fn sync_requests(api: Api<Subscription>, start: Instant) -> Vec<Duration> {
    tokio::time::sleep(HOUR.saturating_sub(start.elapsed())).await;
    let mut answered = Vec::new();
    let mut k = 0;
    while start.elapsed() + Duration::from_secs(10) < HOUR * HOURS {
        let name = format!("s{:04}", (k * 97) % SUBSCRIPTIONS);
        let value = format!("bench-{k}");
        let patch = json!({"metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: value}}});
        let asked = Instant::now();
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
        let handled = value.clone();
        await_object(
            &api,
            &name,
            "the sync request answered",
            move |s: &Subscription| {
                (s.status.as_ref()).and_then(|s| s.last_handled_sync_request.as_deref())
                    == Some(handled.as_str())
            },
        )
        .await;
        answered.push(asked.elapsed());
        k += 1;
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(asked.elapsed())).await;
    }
    answered
}
