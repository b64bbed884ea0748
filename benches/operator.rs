//! Benchmarks of what users pay for: Bitbucket calls, API-server writes, latency and memory,
//! each measured side by side with a baseline in the same run. Prints a Markdown table and
//! writes it to `target/bench/report.md`. Needs a cluster (`make bench` starts the project's
//! plane).
//!
//!   cargo bench --bench operator                # the full set (about 4 minutes)
//!   cargo bench --bench operator -- --quick     # smaller sizes (about 1 minute)
//!   cargo bench --bench operator -- --only 4,6  # just those figures
//!
//! Figure 10 serves Argo CD's ApplicationSet plugin generator from an in-process operator.
//! Figure 11 lists one Data Center project of 100,000 repositories (10,000 with `--quick`) with
//! the operator binary: time to Ready, RepositorySlices, memory, writes, and the generator's and
//! the Flux endpoint's latency.
//! Figure 12 (`operator/webhooks.rs`): signed webhooks from the hook the operator registered in
//! the simulator, end to end (created → listed, served, ApplicationSet annotated), the Bitbucket
//! calls they cost, and the receiver at 500 deliveries a second.
//! Figure 13 (`operator/budget.rs`): 1,000 Subscriptions on one API token's request budget,
//! four simulated hours at 100× speed, against the same with the budget lifted.
//! Figure 9 installs `deploy/` on the plane's node (`make bench` starts it with `--node` and
//! builds the image first) and removes it afterwards.
//!
//! Figure 8 removes the admission policies' bindings for a moment (to measure without them)
//! and puts them back: run it on a plane no test is using.
//!
//! Figures 6, 7 and 14 (`operator/scale.rs`) run the operator binary as its own process,
//! watching the whole cluster as it is deployed, so its memory and CPU can be read from /proc.
//! Figure 14 is ten times figure 6's load: 10,000 integrations and 50,000 Subscriptions.

#[path = "operator/budget.rs"]
mod budget;
#[path = "operator/heap.rs"]
mod heap;
#[path = "operator/scale.rs"]
mod scale;
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)] // the benchmark uses a few of the tests' helpers
mod support;
#[path = "operator/trace.rs"]
mod trace;
#[path = "operator/webhooks.rs"]
mod webhooks;

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use bitbucket_operator::api::{
    BitbucketIntegration, BitbucketIntegrationSpec, CredentialType, Credentials, IN_USE_FINALIZER,
    RepositorySlice, SecretReference, Server, ServerType, Subscription, conditions::READY,
};
use bitbucket_sim::{Fixture, Simulator};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use scale::Scale;
use support::{
    TestNamespace, client, install_crds,
    operator::{Operator, await_object, condition, subscription, test_settings},
};

const LIST_CLOUD: &str = "GET /2.0/repositories/{workspace}";
const LIST_DC: &str = "GET /rest/api/1.0/projects/{project_key}/repos";

struct Row {
    /// The figure's number in the benchmark issue (#6).
    number: u8,
    figure: &'static str,
    measured: String,
    target: String,
    met: Option<bool>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs this file too (without `--bench`): compiling it is the
    // test; the measurements belong to `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark compiled; run it with `make bench`");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let client = client().await;
    install_crds(&client).await;
    // `--only 4,5` measures just those figures (for profiling one of them).
    let only: Option<Vec<u8>> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        });
    let wanted = |figure: u8| only.as_ref().is_none_or(|o| o.contains(&figure));
    let mut rows = Vec::new();

    let sizes: &[usize] = if quick {
        &[100, 1_000]
    } else {
        &[100, 1_000, 10_000]
    };
    if wanted(1) {
        for &n in sizes {
            rows.extend(full_sync_calls(&client, n).await);
        }
    }
    if wanted(2) {
        rows.push(steady_state_calls(&client, if quick { 2_000 } else { 10_000 }).await);
    }
    if wanted(3) {
        rows.push(steady_state_writes(&client, if quick { 20 } else { 100 }).await);
    }
    if wanted(4) {
        rows.extend(apply_to_ready(&client, if quick { 20 } else { 100 }).await);
    }
    if wanted(5) {
        rows.push(
            large_sync_time(
                &client,
                if quick { 2_000 } else { 10_000 },
                if quick { 3 } else { 7 },
            )
            .await,
        );
    }
    if wanted(6) || wanted(7) {
        let scale = if quick {
            Scale {
                integrations: 100,
                subscriptions: 500,
                unrelated_secrets: 2_000,
                namespaces: 1,
            }
        } else {
            Scale {
                integrations: 1_000,
                subscriptions: 5_000,
                unrelated_secrets: 20_000,
                namespaces: 1,
            }
        };
        rows.extend(scale::figures_6_and_7(&client, scale, None).await);
        // `make bench` builds the operator with a heap profiler too (`make heap-profile`): the
        // same load again with that build, for what holds the heap.
        if let Ok(profiler) = std::env::var("BBO_BENCH_HEAP_PROFILER") {
            let profiler = Some(Path::new(&profiler));
            let profiled = scale::figures_6_and_7(&client, scale, profiler).await;
            rows.extend(
                (profiled.into_iter()).filter(|r| r.figure.starts_with(scale::HEAP_PROFILE_FIGURE)),
            );
        }
    }
    if wanted(14) {
        // Ten times figure 6's integrations and Subscriptions (two with `--quick`), ten
        // integrations and fifty Subscriptions to a namespace.
        let scale = if quick {
            Scale {
                integrations: 2_000,
                subscriptions: 10_000,
                unrelated_secrets: 0,
                namespaces: 200,
            }
        } else {
            Scale {
                integrations: 10_000,
                subscriptions: 50_000,
                unrelated_secrets: 0,
                namespaces: 1_000,
            }
        };
        rows.extend(scale::figure_14(&client, scale, None).await);
    }

    if wanted(9) {
        rows.extend(on_the_node(&client, if quick { 3 } else { 5 }).await);
    }
    if wanted(10) {
        rows.extend(generator_latency(&client, if quick { 200 } else { 1_000 }).await);
    }
    if wanted(11) {
        rows.extend(slices_at_scale(&client, if quick { 10_000 } else { 100_000 }).await);
    }
    if wanted(12) {
        rows.extend(webhooks::figure(&client, if quick { 5 } else { 20 }).await);
    }
    if wanted(13) {
        rows.extend(budget::figure(&client).await);
    }
    if wanted(8) {
        let trials = if quick { 50 } else { 200 };
        for users in [1, 100, 1_000] {
            rows.extend(delete_latency(&client, users, trials).await);
        }
    }

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = format!(
        "`cargo bench --bench operator{}` on {}, {cores} cores\n\n| # | figure | measured | target | met |\n|---|---|---|---|---|\n",
        if quick { " -- --quick" } else { "" },
        jiff::Zoned::now().strftime("%Y-%m-%d"),
    );
    for row in &rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "report",
        };
        writeln!(
            report,
            "| {} | {} | {} | {} | {met} |",
            row.number, row.figure, row.measured, row.target
        )
        .unwrap();
    }
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.md"), &report).unwrap();
    println!("written to target/bench/report.md");
}

async fn secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secret = support::string_secret(name, data);
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

fn integration(
    name: &str,
    server_type: ServerType,
    url: String,
    kind: CredentialType,
    secret: &str,
) -> BitbucketIntegration {
    BitbucketIntegration::new(
        name,
        BitbucketIntegrationSpec {
            display_name: None,
            server: Server {
                server_type,
                url: Some(url),
                ca_bundle_secret_ref: None,
            },
            credentials: Credentials {
                credential_type: kind,
                secret_ref: SecretReference {
                    name: secret.into(),
                },
            },
            workspace: None,
            validation_interval: "30m".into(),
            webhook: None,
            request_budget: None,
        },
    )
}

/// The Secret `cloud`: the demo fixture's API token for jdoe.
async fn cloud_secret(client: &Client, ns: &str) {
    let data = [
        ("email", "jdoe@example.com"),
        ("token", "FAKE-cloud-api-token-for-jdoe"),
    ];
    secret(client, ns, "cloud", &data).await;
}

/// An API-token integration on the simulator's Cloud, using the Secret `cloud`.
fn cloud_integration(name: &str, sim: &Simulator) -> BitbucketIntegration {
    integration(
        name,
        ServerType::Cloud,
        sim.cloud_api_url(),
        CredentialType::ApiToken,
        "cloud",
    )
}

/// The Secret `cloud`, the integration `cloud` and the Subscription `all` to the whole of
/// `acme`, once it has synced.
async fn synced_workspace(client: &Client, ns: &str, sim: &Simulator) -> Api<Subscription> {
    cloud_secret(client, ns).await;
    create(client, ns, &cloud_integration("cloud", sim)).await;
    create(client, ns, &subscription("all", "cloud", Some("acme"), &[])).await;
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), ns);
    await_object(&subscriptions, "all", "the subscription to sync", |s| {
        s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    })
    .await;
    subscriptions
}

/// The tests' settings, also allowing the simulator (the operator-wide allow-list).
fn bench_settings(ns: &str, sim: &Simulator) -> bitbucket_operator::controller::Settings {
    let mut settings = test_settings(ns);
    let simulator = sim
        .base_url()
        .parse()
        .expect("the simulator's URL is a server");
    settings.transport.allowed = settings.transport.allowed.and(&simulator);
    settings
}

fn is_ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    condition(conditions, READY).is_some_and(|c| c.status == "True")
}

async fn create<K>(client: &Client, ns: &str, object: &K)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), object)
        .await
        .unwrap();
}

/// The demo fixture with exactly `n` generated repositories in the Cloud workspace `acme` and
/// in the Data Center project `PLAT`.
fn generated(n: usize) -> Fixture {
    let mut fixture = Fixture::demo_with_generated(n);
    fixture.cloud.workspaces[0].repositories.clear();
    fixture.data_center.projects[0].repositories.clear();
    fixture
}

/// Figure 10: Argo CD's plugin generator asked for a 10,000-repository Subscription
/// (`requests` sequential requests after one warm-up; the answer comes from the listing the
/// operator holds, beyond the 1,000 in status), and for the 10-repository one served from status.
async fn generator_latency(client: &Client, requests: usize) -> Vec<Row> {
    let ns = TestNamespace::create(client, "bench-generator").await;
    let sim = Simulator::start(generated(10_000)).await.unwrap();
    let operator = Operator::start(client.clone(), bench_settings(&ns.name, &sim));
    let subscriptions = synced_workspace(client, &ns.name, &sim).await;
    let offer = serde_json::json!({"metadata": {"labels": {
        bitbucket_operator::generator::OFFER_LABEL: "true"
    }}});
    subscriptions
        .patch("all", &PatchParams::default(), &Patch::Merge(&offer))
        .await
        .unwrap();
    let token_file = std::env::temp_dir().join(format!("{}-token", ns.name));
    std::fs::write(&token_file, "FAKE-bench-token").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/v1/getparams.execute",
        listener.local_addr().unwrap()
    );
    let router = bitbucket_operator::generator::router(bitbucket_operator::generator::Generator {
        shared: operator.shared.clone(),
        token_file,
    });
    tokio::spawn(bitbucket_operator::http::serve(
        listener,
        router,
        bitbucket_operator::http::ServerLimits::default(),
        std::future::pending(),
    ));
    let http = plain_http();
    let body = serde_json::json!({"applicationSetName": "bench", "input": {"parameters": {
        "namespace": ns.name, "subscription": "all"
    }}})
    .to_string();
    let ask = || async {
        let started = Instant::now();
        let answer: serde_json::Value = http
            .post(&url)
            .bearer_auth("FAKE-bench-token")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sets = answer["output"]["parameters"]
            .as_array()
            .map_or(0, Vec::len);
        (started.elapsed(), sets)
    };
    let (_, sets) = ask().await;
    assert_eq!(sets, 10_000, "the warm-up answer holds every repository");
    let bitbucket_before = sim.control().counters().total;
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        samples.push(ask().await.0);
    }
    samples.sort();
    let bitbucket_calls = sim.control().counters().total - bitbucket_before;
    operator.stop().await;
    vec![Row {
        number: 10,
        figure: "ApplicationSet plugin generator, 10,000-repository Subscription (served from the cached RepositorySlices)",
        measured: format!(
            "p50 {:.1} ms, p99 {:.1} ms over {requests} requests, {sets} parameter sets each; \
             {bitbucket_calls} Bitbucket calls meanwhile",
            ms(percentile(&samples, 0.50)),
            ms(percentile(&samples, 0.99)),
        ),
        target: "no Bitbucket call per request".into(),
        met: Some(bitbucket_calls == 0),
    }]
}

/// Figure 1: calls for a full sync of `n` repositories, Cloud and Data Center.
async fn full_sync_calls(client: &Client, n: usize) -> Vec<Row> {
    let ns = TestNamespace::create(client, "bench-calls").await;
    let sim = Simulator::start(generated(n)).await.unwrap();
    let _operator = Operator::start(client.clone(), bench_settings(&ns.name, &sim));
    cloud_secret(client, &ns.name).await;
    secret(
        client,
        &ns.name,
        "dc",
        &[("token", "FAKE-dc-personal-access-token-jdoe")],
    )
    .await;
    create(client, &ns.name, &cloud_integration("cloud", &sim)).await;
    create(
        client,
        &ns.name,
        &integration(
            "dc",
            ServerType::DataCenter,
            sim.base_url(),
            CredentialType::AccessToken,
            "dc",
        ),
    )
    .await;
    create(
        client,
        &ns.name,
        &subscription("cloud", "cloud", Some("acme"), &[]),
    )
    .await;
    create(client, &ns.name, &subscription("dc", "dc", None, &["PLAT"])).await;
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    for name in ["cloud", "dc"] {
        await_object(&subscriptions, name, "the subscription to sync", |s| {
            s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
        })
        .await;
    }
    let counters = sim.control().counters();
    let cloud_pages = n.div_ceil(100) as u64;
    let dc_pages = n.div_ceil(1000) as u64;
    let cloud = counters.endpoint(LIST_CLOUD) + counters.endpoint("GET /2.0/user");
    let dc_validation = || {
        let counters = sim.control().counters();
        counters.endpoint("GET /rest/api/1.0/application-properties")
            + counters.endpoint("GET /rest/api/1.0/users/{user_slug}")
    };
    let first_validation = dc_validation();
    let dc = counters.endpoint(LIST_DC) + first_validation;
    // A second validation of the same token, asked for: the username is known by then.
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    let ask = serde_json::json!({"metadata": {"annotations": {bitbucket_operator::api::SYNC_REQUESTED_AT_ANNOTATION: "second"}}});
    integrations
        .patch("dc", &PatchParams::default(), &Patch::Merge(&ask))
        .await
        .unwrap();
    await_object(&integrations, "dc", "the second validation", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| s.last_handled_sync_request.as_deref() == Some("second"))
    })
    .await;
    let later_validation = dc_validation() - first_validation;
    vec![
        Row {
            number: 1,
            figure: "Bitbucket calls, full sync + validation, Cloud",
            measured: format!(
                "N = {n}: {cloud} ({} page(s) + {} validation)",
                counters.endpoint(LIST_CLOUD),
                counters.endpoint("GET /2.0/user")
            ),
            target: format!("{} (ceil(N/100) + 1)", cloud_pages + 1),
            met: Some(cloud == cloud_pages + 1),
        },
        Row {
            number: 1,
            figure: "Bitbucket calls, full sync + first validation of an access token, Data Center",
            measured: format!(
                "N = {n}: {dc} ({} page(s) + {first_validation} validation: Data Center has no current-user endpoint, so a token's first validation reads the username from a probe's X-AUSERNAME, then the user's record for the display name)",
                counters.endpoint(LIST_DC),
            ),
            target: format!("{} (ceil(N/1000) + 2)", dc_pages + 2),
            met: Some(dc == dc_pages + 2),
        },
        Row {
            number: 1,
            figure: "Bitbucket calls, each later validation (and every Basic one), Data Center",
            measured: format!(
                "{later_validation} (the user's record: its answer's X-AUSERNAME proves the credential)"
            ),
            target: "1".into(),
            met: Some(later_validation == 1),
        },
    ]
}

/// Figure 2: Bitbucket calls per steady-state sync of an unchanged `n`-repository workspace.
async fn steady_state_calls(client: &Client, n: usize) -> Row {
    let ns = TestNamespace::create(client, "bench-probe").await;
    let sim = Simulator::start(generated(n)).await.unwrap();
    let mut settings = bench_settings(&ns.name, &sim);
    let interval = Duration::from_secs(1);
    settings.interval_override = Some(interval);
    // What one sync costs, at a pace no request budget would allow (an hour of 1 s intervals
    // over 100 pages): figure 13 measures the budget.
    settings.request_budgets = false;
    let every = settings.summaries_between_listings;
    let operator = Operator::start(client.clone(), settings);
    synced_workspace(client, &ns.name, &sim).await;
    let calls = || sim.control().counters().endpoint(LIST_CLOUD);
    let (calls_before, summaries_before, lists_before) = (
        calls(),
        operator.requests("summarize_repositories"),
        operator.requests("list_repositories"),
    );
    tokio::time::sleep(interval * 12).await;
    let summaries = operator.requests("summarize_repositories") - summaries_before;
    let lists = operator.requests("list_repositories") - lists_before;
    let total = calls() - calls_before;
    let pages = n.div_ceil(100) as u64;
    Row {
        number: 2,
        figure: "Bitbucket calls per steady-state sync, unchanged Cloud workspace",
        measured: format!(
            "N = {n}: {summaries} summary syncs of 1 call each and {} full re-list(s) of {pages} pages in the window ({total} calls in all)",
            lists / pages
        ),
        target: format!("≤ 2, with a full re-list every {} intervals", every + 1),
        // Each steady-state sync is one summary request; full re-lists cost their pages.
        met: Some(summaries >= 1 && lists.is_multiple_of(pages) && total == summaries + lists),
    }
}

/// The API server's own count of writes (create, update, patch, server-side apply) to our
/// kinds and to Events. (Server-side apply is counted under its own verb, APPLY.)
async fn writes(client: &Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("group=\"scm.shippable.io\"") || l.contains("resource=\"events\""))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "APPLY"]
                .iter()
                .any(|verb| l.contains(&format!("verb=\"{verb}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Figure 3: API-server writes over 10 steady-state intervals with `count` subscriptions.
async fn steady_state_writes(client: &Client, count: usize) -> Row {
    let ns = TestNamespace::create(client, "bench-steady").await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let mut settings = bench_settings(&ns.name, &sim);
    let interval = Duration::from_secs(1);
    settings.interval_override = Some(interval);
    // The writes of unchanged syncs, at a pace no request budget would allow (figure 13
    // measures the budget).
    settings.request_budgets = false;
    let _operator = Operator::start(client.clone(), settings);
    cloud_secret(client, &ns.name).await;
    create(client, &ns.name, &cloud_integration("cloud", &sim)).await;
    for i in 0..count {
        create(
            client,
            &ns.name,
            &subscription(&format!("s{i}"), "cloud", Some("acme"), &[]),
        )
        .await;
    }
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..count {
        await_object(
            &subscriptions,
            &format!("s{i}"),
            "each subscription to sync",
            |s| s.status.as_ref().is_some_and(|s| is_ready(&s.conditions)),
        )
        .await;
    }
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    let expected = Some(i32::try_from(count).unwrap());
    await_object(
        &integrations,
        "cloud",
        "the integration to count its users",
        move |i| i.status.as_ref().and_then(|s| s.subscriptions) == expected,
    )
    .await;
    // Let in-flight writes land, then count over ten intervals.
    tokio::time::sleep(interval * 2).await;
    let before = writes(client).await;
    let listings = sim.control().counters().endpoint(LIST_CLOUD);
    tokio::time::sleep(interval * 10).await;
    let after = writes(client).await;
    let resyncs = sim.control().counters().endpoint(LIST_CLOUD) - listings;
    Row {
        number: 3,
        figure: "API-server writes over 10 steady-state intervals, nothing changed",
        measured: format!(
            "{} writes ({count} subscriptions, {resyncs} re-syncs in the window)",
            after - before
        ),
        target: "0".into(),
        met: Some(after == before),
    }
}

/// The names of objects seen in a state that passes `test`, from a watch on `api` (in the
/// order the watch delivers them; repeats included).
fn ready_names<K>(api: Api<K>, test: fn(&K) -> bool) -> tokio::sync::mpsc::UnboundedReceiver<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
        while let Some(Ok(object)) = events.next().await {
            if test(&object)
                && sender
                    .send(object.meta().name.clone().unwrap_or_default())
                    .is_err()
            {
                return;
            }
        }
    });
    receiver
}

/// One trial of figure 4: integration and Subscription `name` applied in `namespace`, until
/// `ready` (the names the watches of integrations and Subscriptions see Ready) says both are;
/// how long that took, and the operator's spans meanwhile.
async fn operator_apply(
    client: &Client,
    namespace: &str,
    sim: &Simulator,
    name: &str,
    ready: &mut [tokio::sync::mpsc::UnboundedReceiver<String>; 2],
) -> (Duration, trace::Trace) {
    trace::clear();
    let started = Instant::now();
    create(client, namespace, &cloud_integration(name, sim)).await;
    create(
        client,
        namespace,
        &subscription(name, name, Some("acme"), &[]),
    )
    .await;
    for (names, kind) in ready
        .iter_mut()
        .zip(["the integration", "the subscription"])
    {
        support::within(&format!("{kind} to be Ready"), async {
            while names.recv().await.expect("watching them") != name {}
        })
        .await;
    }
    let took = started.elapsed();
    let objects = [format!("/{name}.{namespace}")];
    (took, trace::Trace::of(&objects, started, Instant::now()))
}

/// A bare client's namespace with the demo's Cloud Secret, and its clients: figure 4's
/// yardstick.
struct BareClient {
    client: Client,
    namespace: TestNamespace,
    bitbucket: bitbucket_operator::bitbucket::Client,
    /// The simulator's Cloud API, for the integrations.
    api_url: String,
}

/// The statuses a bare client writes: the operator's, server-side applied as it does, or a
/// one-field merge patch each.
enum Statuses {
    /// The integration's and the Subscription's.
    Written(serde_json::Value, serde_json::Value),
    OneField,
}

fn acme_scope() -> bitbucket_operator::bitbucket::ListScope {
    bitbucket_operator::bitbucket::ListScope::CloudWorkspace {
        workspace: "acme".into(),
        projects: vec![],
    }
}

impl BareClient {
    async fn new(client: &Client, prefix: &str, sim: &Simulator) -> Self {
        let namespace = TestNamespace::create(client, prefix).await;
        cloud_secret(client, &namespace.name).await;
        Self {
            client: client.clone(),
            namespace,
            bitbucket: own_client(sim),
            api_url: sim.cloud_api_url(),
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace.name)
    }
}

/// The operator's requests of an apply → Ready of integration and Subscription `name`, made back
/// to back by `bare`: the two creates, the finalizer, the Secret read, the validation, the
/// integration's status, the listing, its RepositorySlice and the Subscription's status.
async fn bare_apply(bare: &BareClient, name: &str, statuses: &Statuses) -> Duration {
    let (integrations, subscriptions) = (
        bare.api::<BitbucketIntegration>(),
        bare.api::<Subscription>(),
    );
    let started = Instant::now();
    let namespace = &bare.namespace.name;
    let integration = integration(
        name,
        ServerType::Cloud,
        bare.api_url.clone(),
        CredentialType::ApiToken,
        "cloud",
    );
    let subscription = subscription(name, name, Some("acme"), &[]);
    create(&bare.client, namespace, &integration).await;
    create(&bare.client, namespace, &subscription).await;
    let finalizer = serde_json::json!([
        {"op": "add", "path": "/metadata/finalizers", "value": [IN_USE_FINALIZER]}
    ]);
    let finalizer = Patch::<()>::Json(serde_json::from_value(finalizer).unwrap());
    integrations
        .patch(name, &PatchParams::default(), &finalizer)
        .await
        .unwrap();
    bare.api::<Secret>().get("cloud").await.unwrap();
    bare.bitbucket.whoami(None).await.unwrap();
    let manager = bitbucket_operator::controller::INTEGRATION_MANAGER;
    write_status(&integrations, &integration, statuses.integration(), manager).await;
    let listed = bare
        .bitbucket
        .list_repositories(&acme_scope())
        .await
        .unwrap();
    let report = bitbucket_operator::controller::subscription::report::to_status;
    let mut slice = RepositorySlice::new("", listed.into_iter().map(report).collect());
    slice.metadata.generate_name = Some(format!("{name}-"));
    (bare.api::<RepositorySlice>())
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
    let manager = bitbucket_operator::controller::SUBSCRIPTION_MANAGER;
    write_status(
        &subscriptions,
        &subscription,
        statuses.subscription(),
        manager,
    )
    .await;
    started.elapsed()
}

impl Statuses {
    fn integration(&self) -> Option<&serde_json::Value> {
        match self {
            Self::Written(integration, _) => Some(integration),
            Self::OneField => None,
        }
    }

    fn subscription(&self) -> Option<&serde_json::Value> {
        match self {
            Self::Written(_, subscription) => Some(subscription),
            Self::OneField => None,
        }
    }
}

/// Writes `written` as the status of `object` as the operator writes it (its own
/// `apply_status`, as `manager`), or, without one, a one-field patch.
async fn write_status<K>(
    api: &Api<K>,
    object: &K,
    written: Option<&serde_json::Value>,
    manager: &str,
) where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match written {
        Some(status) => {
            let apply = bitbucket_operator::status::apply::apply_status;
            apply(api, object, None, status, manager).await.unwrap();
        }
        None => {
            let (params, patch) = one_field_status();
            let name = object.meta().name.as_deref().unwrap_or_default();
            api.patch_status(name, &params, &patch).await.unwrap();
        }
    }
}

/// A status patch of one field: the yardstick's write.
fn one_field_status() -> (PatchParams, Patch<serde_json::Value>) {
    let patch = serde_json::json!({"status": {"observedGeneration": 1}});
    (PatchParams::default(), Patch::Merge(patch))
}

/// A duration in milliseconds, for the report.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Figure 4: apply → Ready for an integration and a subscription, against the same Bitbucket
/// round trips plus one status write done by a bare client, and against a bare client making
/// every request the operator makes, back to back.
async fn apply_to_ready(client: &Client, trials: usize) -> Vec<Row> {
    let ns = TestNamespace::create(client, "bench-ready").await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let _operator = Operator::start(client.clone(), bench_settings(&ns.name, &sim));
    cloud_secret(client, &ns.name).await;
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    let bare_clients = [
        BareClient::new(client, "bench-ready-bare", &sim).await,
        BareClient::new(client, "bench-ready-one-field", &sim).await,
    ];
    let acme = acme_scope();
    let mut operator = Vec::new();
    let mut baseline = Vec::new();
    let mut same_requests = Vec::new();
    let mut one_field = Vec::new();
    let mut traces = Vec::new();
    trace::start();
    // Watches started once, before the trials, so each trial waits only for the event.
    let mut ready = [
        ready_names(integrations.clone(), |i: &BitbucketIntegration| {
            i.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
        }),
        ready_names(subscriptions.clone(), |s: &Subscription| {
            s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
        }),
    ];
    for i in 0..trials {
        let name = format!("t{i}");
        let (took, trace) = operator_apply(client, &ns.name, &sim, &name, &mut ready).await;
        operator.push(took);
        traces.push(trace);

        // The yardstick: the Bitbucket round trips and one status write.
        let started = Instant::now();
        let bitbucket = &bare_clients[0].bitbucket;
        bitbucket.whoami(None).await.unwrap();
        bitbucket.list_repositories(&acme).await.unwrap();
        let (params, patch) = one_field_status();
        subscriptions
            .patch_status(&name, &params, &patch)
            .await
            .unwrap();
        baseline.push(started.elapsed());

        // Every request the operator must make, made back to back by a bare client on objects
        // no operator watches. The statuses are the ones the operator wrote, as it writes them;
        // and, as before session 23, a one-field patch each (in namespaces of their own).
        let written = Statuses::Written(
            serde_json::json!(integrations.get_status(&name).await.unwrap().status),
            serde_json::json!(subscriptions.get_status(&name).await.unwrap().status),
        );
        same_requests.push(bare_apply(&bare_clients[0], &name, &written).await);
        one_field.push(bare_apply(&bare_clients[1], &name, &Statuses::OneField).await);
    }
    trace::stop();
    let durations = [operator, baseline, same_requests, one_field];
    apply_to_ready_rows(trials, durations, traces)
}

/// Figure 4's rows from its trials: the operator's times, the yardstick's, the bare client's
/// with the operator's statuses and with one-field ones, and the operator's traces.
fn apply_to_ready_rows(
    trials: usize,
    [mut operator, mut baseline, mut same_requests, mut one_field]: [Vec<Duration>; 4],
    mut traces: Vec<trace::Trace>,
) -> Vec<Row> {
    operator.sort();
    baseline.sort();
    same_requests.sort();
    one_field.sort();
    // The trial at the median, step by step; and the median time no span of ours covers.
    traces.sort_by_key(trace::Trace::total);
    let median = &traces[traces.len() / 2];
    let percentile_trace = &traces[((traces.len() as f64 - 1.0) * 0.95).round() as usize];
    let mut uncovered: Vec<Duration> = traces.iter().map(trace::Trace::uncovered).collect();
    uncovered.sort();
    let (p50, p95) = (percentile(&operator, 0.5), percentile(&operator, 0.95));
    let yardstick = percentile(&baseline, 0.5);
    let same = percentile(&same_requests, 0.5);
    let small = percentile(&one_field, 0.5);
    let ratio = ms(p50) / ms(yardstick);
    let overhead = ms(p50) / ms(same);
    vec![
        Row {
            number: 4,
            figure: "apply → Ready, integration + subscription (includes the watch that observes it)",
            measured: format!(
                "p50 {:.0} ms, p95 {:.0} ms over {trials}; Bitbucket round trips + 1 write p50 {:.0} ms; ratio {ratio:.1}×",
                ms(p50),
                ms(p95),
                ms(yardstick)
            ),
            target: "≤ 1.2× the round trips + 1 write".into(),
            met: Some(ratio <= 1.2),
        },
        Row {
            number: 4,
            figure: "the same, against a bare client making the operator's requests back to back (2 creates, finalizer, Secret read, 2 Bitbucket calls, the RepositorySlice, and the 2 statuses the operator wrote, server-side applied as it does)",
            measured: format!(
                "p50 {:.0} ms against {:.0} ms; ratio {overhead:.2}× (against one-field status patches, as before session 23: {:.0} ms, {:.2}×)",
                ms(p50),
                ms(same),
                ms(small),
                ms(p50) / ms(small)
            ),
            target: "≤ 1.1×".into(),
            met: Some(overhead <= 1.1),
        },
        Row {
            number: 4,
            figure: "where apply → Ready's time goes: the median trial's steps (start after the apply, length; ms), from the operator's spans",
            measured: format!(
                "{}; over {trials} trials, the median time no span covers (watch hops, queues) {:.1} ms",
                median.describe(),
                ms(percentile(&uncovered, 0.5))
            ),
            target: "report".into(),
            met: None,
        },
        Row {
            number: 4,
            figure: "the same for the trial at p95",
            measured: percentile_trace.describe(),
            target: "report".into(),
            met: None,
        },
    ]
}

/// The operator's Bitbucket client for the demo's Cloud API token, outside any controller.
fn own_client(sim: &Simulator) -> bitbucket_operator::bitbucket::Client {
    bitbucket_operator::bitbucket::Client::new(
        bitbucket_operator::bitbucket::Server::Cloud {
            api_url: url::Url::parse(&sim.cloud_api_url()).unwrap(),
        },
        bitbucket_operator::bitbucket::Credentials::CloudApiToken {
            email: "jdoe@example.com".into(),
            token: "FAKE-cloud-api-token-for-jdoe".into(),
        },
        bitbucket_operator::bitbucket::TransportConfig {
            allowed: sim.base_url().parse().unwrap(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// A plain reqwest client (no retries, no typed decoding) for the baseline loop.
fn plain_http() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )
        .build()
        .unwrap()
}

/// The minimal loop: every page of `acme`, one after another, following `next`; returns the
/// page count.
async fn fetch_pages(http: &reqwest::Client, sim: &Simulator) -> usize {
    let mut next = Some(format!(
        "{}/repositories/acme?pagelen=100&fields=next,values.slug,values.name,values.full_name,values.is_private,values.mainbranch.name,values.links.clone,values.links.html.href,values.project.key,values.updated_on",
        sim.cloud_api_url()
    ));
    let mut pages = 0;
    while let Some(url) = next {
        let page: serde_json::Value = http
            .get(&url)
            .basic_auth("jdoe@example.com", Some("FAKE-cloud-api-token-for-jdoe"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        next = page["next"].as_str().map(str::to_owned);
    }
    pages
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    percentile(&samples, 0.5)
}

/// Figure 5: a large sync through the operator vs a minimal HTTP loop fetching the same pages,
/// interleaved over `trials` (medians). Each operator sync is asked for with the sync
/// annotation, which always re-lists; it is timed from the watch showing the request to the
/// watch showing it handled (the 1,000-entry list written).
async fn large_sync_time(client: &Client, n: usize, trials: usize) -> Row {
    let ns = TestNamespace::create(client, "bench-large").await;
    let sim = Simulator::start(generated(n)).await.unwrap();
    let _operator = Operator::start(client.clone(), bench_settings(&ns.name, &sim));
    let subscriptions = synced_workspace(client, &ns.name, &sim).await;
    let (tx, mut sightings) = tokio::sync::mpsc::unbounded_channel();
    {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let subscriptions = subscriptions.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(
                watcher(subscriptions, watcher::Config::default()).applied_objects()
            );
            while let Some(Ok(s)) = events.next().await {
                let seen = Instant::now();
                let asked = s.metadata.annotations.and_then(|a| {
                    a.get(bitbucket_operator::api::SYNC_REQUESTED_AT_ANNOTATION)
                        .cloned()
                });
                let handled = s.status.and_then(|s| s.last_handled_sync_request);
                if tx.send((seen, asked, handled)).is_err() {
                    return;
                }
            }
        });
    }

    let http = plain_http();
    let own = own_client(&sim);
    let acme = bitbucket_operator::bitbucket::ListScope::CloudWorkspace {
        workspace: "acme".into(),
        projects: vec![],
    };
    let (mut loops, mut operators, mut alone, mut requests) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Bitbucket calls of each operator sync: a full listing every time.
    let mut operator_pages = Vec::new();
    let mut pages = 0;
    for trial in 0..trials {
        let started = Instant::now();
        pages = fetch_pages(&http, &sim).await;
        loops.push(started.elapsed());

        let started = Instant::now();
        own.list_repositories(&acme).await.unwrap();
        alone.push(started.elapsed());

        let token = format!("bench-{trial}");
        let annotate = serde_json::json!({"metadata": {"annotations": {
            bitbucket_operator::api::SYNC_REQUESTED_AT_ANNOTATION: token
        }}});
        // The sync is timed between two events of one watch: the first showing the request
        // (when the operator's watch sees it too) and the first showing it handled. Storing
        // the request (the API server handles the whole 1,000-entry object for an annotation)
        // is timed apart.
        let calls_before = sim.control().counters().endpoint(LIST_CLOUD);
        let sent = Instant::now();
        subscriptions
            .patch("all", &PatchParams::default(), &Patch::Merge(annotate))
            .await
            .unwrap();
        requests.push(sent.elapsed());
        let (started, ended) = support::within("the requested sync", async {
            let mut started = None;
            loop {
                let (seen, asked, handled) =
                    sightings.recv().await.expect("watching the subscription");
                if asked.as_deref() == Some(token.as_str()) {
                    started.get_or_insert(seen);
                }
                if handled.as_deref() == Some(token.as_str()) {
                    return (started.unwrap_or(seen), seen);
                }
            }
        })
        .await;
        operators.push(ended - started);
        operator_pages.push(sim.control().counters().endpoint(LIST_CLOUD) - calls_before);
    }

    // What the API server takes to store that status: the operator's own list, applied by a
    // bare client to a copy no operator watches.
    let status = subscriptions.get("all").await.unwrap().status.unwrap();
    let bare_ns = TestNamespace::create(client, "bench-large-bare").await;
    create(
        client,
        &bare_ns.name,
        &subscription("all", "cloud", Some("acme"), &[]),
    )
    .await;
    let copies: Api<Subscription> = Api::namespaced(client.clone(), &bare_ns.name);
    let mut writes = Vec::new();
    for trial in 0..trials {
        let mut status = status.clone();
        status.last_handled_sync_request = Some(format!("bare-{trial}"));
        let body = serde_json::json!({
            "apiVersion": "scm.shippable.io/v1alpha1",
            "kind": "Subscription",
            "status": status,
        });
        let started = Instant::now();
        copies
            .patch_status(
                "all",
                &PatchParams::apply("bench").force(),
                &Patch::Apply(body),
            )
            .await
            .unwrap();
        writes.push(started.elapsed());
    }
    let bytes = serde_json::to_vec(&status).unwrap().len();

    let (operator, baseline) = (median(operators), median(loops));
    let (alone, write, request) = (median(alone), median(writes), median(requests));
    let ratio = ms(operator) / ms(baseline);
    Row {
        number: 5,
        figure: "large sync wall time vs a minimal HTTP loop over the same pages",
        measured: format!(
            "N = {n} ({pages} pages), medians of {trials}: operator {:.0} ms ({operator_pages:?} calls per sync), loop {:.0} ms, ratio {ratio:.2}×; of the operator's time, its client's listing alone takes {:.0} ms and one status write of the 1,000 listed ({} KiB) by a bare client {:.0} ms; storing the annotation that asks for the sync (not counted) {:.0} ms",
            ms(operator),
            ms(baseline),
            ms(alone),
            bytes / 1024,
            ms(write),
            ms(request)
        ),
        target: "≤ 1.3×".into(),
        met: Some(ratio <= 1.3),
    }
}

/// The operator binary, watching the whole cluster, with its log in `target/bench/`.
struct Process {
    child: std::process::Child,
    port: u16,
    /// Where a heap-profiling build writes its profile when stopped.
    heap_profile: std::path::PathBuf,
}

impl Process {
    /// Runs the operator allowing `servers` beyond Bitbucket Cloud (`--allowed-servers`), with
    /// `more` arguments.
    fn start_with(log: &str, servers: &str, more: &[&str]) -> Self {
        Self::spawn(None, log, servers, more)
    }

    /// [`Process::start_with`] running `binary`, if given, instead of the operator's build.
    fn spawn(binary: Option<&Path>, log: &str, servers: &str, more: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        let heap_profile = dir.join(format!("{}.heap.json", log.trim_end_matches(".log")));
        let _ = std::fs::remove_file(&heap_profile);
        let log = std::fs::File::create(dir.join(log)).unwrap();
        // BBO_BENCH_OPERATOR: another build of the operator (e.g. the image's static musl
        // binary, `make image-binary`), to measure what the image runs.
        let binary = operator_binary(binary);
        let child = std::process::Command::new(binary)
            .args([
                "run",
                "--metrics-address",
                &address,
                "--health-address",
                &address,
                "--webhook-address",
                "127.0.0.1:0",
                "--allowed-servers",
                &format!("cloud,{servers}"),
            ])
            .args(more)
            // BBO_BENCH_OPERATOR_LOG: more of its log (e.g. `info,bitbucket_operator::controller=debug`).
            .env(
                "RUST_LOG",
                std::env::var("BBO_BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Read only by a `--features heap-profile` build (`make heap-profile`).
            .env("BBO_HEAP_PROFILE", &heap_profile)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            heap_profile,
        }
    }

    /// Waits until /readyz answers 200 (the CRDs are served and the controllers start).
    async fn ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        support::within("the operator to be ready", async {
            loop {
                if reqwest::get(&url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) and its peak (VmHWM), in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap()
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The samples of metric `name` the process reports, by their labels (`{…}`).
    async fn samples(&self, name: &str) -> Vec<(String, f64)> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let labels = series.strip_prefix(name)?;
                (labels.is_empty() || labels.starts_with('{'))
                    .then(|| Some((labels.to_owned(), value.parse().ok()?)))?
            })
            .collect()
    }

    /// The sum of the samples of metric `name` (all labels) the process reports.
    async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, as Kubernetes stops a pod, and SIGKILL if it has not stopped within 60 s. A
    /// heap-profiling build writes its profile at SIGTERM: its path, if one was written.
    fn stop(mut self) -> Option<std::path::PathBuf> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && self.child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = std::mem::take(&mut self.heap_profile);
        profile.exists().then_some(profile)
    }
}

/// The operator binary to run: `binary`, else `BBO_BENCH_OPERATOR`, else cargo's build.
fn operator_binary(binary: Option<&Path>) -> String {
    binary.map_or_else(
        || {
            std::env::var("BBO_BENCH_OPERATOR")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bitbucket-operator").to_owned())
        },
        |b| b.to_string_lossy().into_owned(),
    )
}

/// Which build [`operator_binary`] runs, for the report.
fn build_of(binary: Option<&Path>) -> &'static str {
    let binary = operator_binary(binary);
    if binary.contains("/target/image/") {
        "the image's static binary (musl)"
    } else if binary.contains("heap-profile") {
        "the heap-profiling build"
    } else {
        "cargo's release build (glibc)"
    }
}

impl Drop for Process {
    /// A figure that panics does not leave its operator running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the namespaces of earlier figures (and runs) are gone: an operator watching the
/// whole cluster would otherwise work on their objects while the namespace controller deletes
/// them, and the API server would be busy deleting. Releases our finalizers there (an aborted
/// run may have left them held with no operator running).
async fn quiet_cluster(client: &Client) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let selector = kube::api::ListParams::default().labels(support::TEST_NAMESPACE_LABEL);
    let patience = Duration::from_secs(900);
    tokio::time::timeout(patience, async {
        loop {
            let left = namespaces.list(&selector).await.unwrap().items;
            if left.is_empty() {
                return;
            }
            for namespace in left {
                support::release_finalizers(client, &namespace.metadata.name.unwrap()).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("test namespaces still present after {patience:?}"));
}

/// Runs `futures` at most `limit` at a time.
async fn bounded<F: std::future::Future<Output = ()>>(
    futures: impl IntoIterator<Item = F>,
    limit: usize,
) {
    use futures::StreamExt;
    futures::stream::iter(futures)
        .buffer_unordered(limit)
        .collect::<Vec<()>>()
        .await;
}

/// Figure 8: the latency of a `DELETE` of an integration (a server-side dry run, which passes
/// admission like a real one and writes nothing) with `users` Subscriptions in the namespace,
/// with the admission policies and without their bindings. `busy` is in use (its status names
/// its users, so the policy refuses); `free` is not (the policy admits). No operator runs:
/// the statuses are written here.
async fn delete_latency(client: &Client, users: usize, trials: usize) -> Vec<Row> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
    use kube::api::DeleteParams;

    let ns = TestNamespace::create(client, "bench-delete").await;
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    for name in ["busy", "free"] {
        create(client, &ns.name, &cloud_integration(name, &sim)).await;
    }
    bounded(
        (0..users).map(|k| {
            let user = subscription(&format!("ci-{k:04}"), "busy", Some("acme"), &[]);
            let ns = ns.name.clone();
            async move { create(client, &ns, &user).await }
        }),
        8,
    )
    .await;
    let names: Vec<String> = (0..users.min(10)).map(|k| format!("ci-{k:04}")).collect();
    let status = serde_json::json!({"status": {"subscriptions": users, "usedBy": names}});
    integrations
        .patch_status("busy", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();

    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let refused = |name: &'static str| {
        let (integrations, dry_run) = (integrations.clone(), dry_run.clone());
        async move { integrations.delete(name, &dry_run).await.is_err() }
    };
    let time = |name: &'static str| async move {
        let mut samples = Vec::with_capacity(trials);
        for _ in 0..trials {
            let start = Instant::now();
            refused(name).await;
            samples.push(start.elapsed());
        }
        samples.sort();
        samples
    };
    let wait_until = |refusing: bool| async move {
        tokio::time::timeout(Duration::from_secs(60), async {
            while refused("busy").await != refusing {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the policy to come in (or out of) force");
    };

    wait_until(true).await;
    let (busy, free) = (time("busy").await, time("free").await);
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    for (policy, _) in bitbucket_operator::api::admission::policies() {
        let name = policy.metadata.name.unwrap();
        bindings
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_until(false).await;
    let bare = time("free").await;
    install_crds(client).await;
    wait_until(true).await;

    let shown = |samples: &[Duration]| {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms",
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.95))
        )
    };
    let added = ms(percentile(&free, 0.5)) - ms(percentile(&bare, 0.5));
    vec![Row {
        number: 8,
        figure: "DELETE latency (server dry run) with the admission policies, by Subscriptions in the namespace",
        measured: format!(
            "{users}: admitted {} (without the policies {}: {added:+.1} ms at p50); refused {}",
            shown(&free),
            shown(&bare),
            shown(&busy)
        ),
        target: "report".into(),
        met: None,
    }]
}

/// Figure 9: the operator as deployed on the node: `kubectl apply -k deploy/` to Available,
/// the leader handover when its pod is killed (no grace: the Lease must lapse) and when it is
/// deleted as a rollout does (graceful: the Lease is released), medians of `trials`, and the
/// resident memory of the leader and the standby, read from /proc (the node is this machine).
async fn on_the_node(client: &Client, trials: usize) -> Vec<Row> {
    use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
    use kube::api::{DeleteParams, ListParams};
    const NS: &str = "bitbucket-operator";
    assert!(
        support::kubectl_ok(&["get", "nodes", "-o", "name"]).contains("node/bbo-node"),
        "no node: make bench starts the plane with --node"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let archive = root.join("target/image/bitbucket-operator.oci.tar");
    let imported = std::process::Command::new(root.join("hack/node.sh"))
        .args(["import", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?} (make image first)");
    let rollout = || {
        support::kubectl_ok(&[
            "-n",
            NS,
            "rollout",
            "status",
            "deployment/bitbucket-operator",
            "--timeout=180s",
        ])
    };

    let applied = Instant::now();
    support::kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        "deploy/",
    ]);
    rollout();
    let available = applied.elapsed();

    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let holder = || support::lease_holder(client, NS, NS);
    // The leader's process on this machine (the node is this machine), found by its POD_NAME.
    let process_of = |pod: &str| -> Option<(u32, f64)> {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let named = environ
                .split(|b| *b == 0)
                .any(|v| v == format!("POD_NAME={pod}").as_bytes());
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok());
            if let (true, Some(rss), Ok(pid)) =
                (named, rss, entry.file_name().to_string_lossy().parse())
            {
                return Some((pid, rss / 1024.0));
            }
        }
        None
    };
    let renewed = || {
        let leases = leases.clone();
        async move {
            leases
                .get(NS)
                .await
                .unwrap()
                .spec
                .and_then(|s| Some((s.holder_identity?, s.renew_time?.0)))
        }
    };
    let leader_now = || async {
        loop {
            if let Some(leader) = holder().await {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Killed: SIGKILL, as a crash or OOM. Nothing releases the Lease; a replica leads again when
    // it lapses, or at once when the same pod's restarted container takes it back (same name).
    let mut killed = Vec::new();
    for _ in 0..trials {
        let leader = leader_now().await;
        let (pid, _) = process_of(&leader).expect("the leader's process");
        let started = Instant::now();
        let at = jiff::Timestamp::now();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        let who = support::within("a replica to lead again", async {
            loop {
                if let Some((who, when)) = renewed().await
                    && when > at
                {
                    return who;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        killed.push((started.elapsed(), who == leader));
        rollout();
    }
    // Rolled: the pod deleted as a rollout does (SIGTERM): the Lease is released.
    let mut rolled = Vec::new();
    for _ in 0..trials {
        let leader = leader_now().await;
        let started = Instant::now();
        pods.delete(&leader, &DeleteParams::default())
            .await
            .unwrap();
        support::within("a new leader", async {
            while holder().await.is_none_or(|h| h == leader) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        rolled.push(started.elapsed());
        rollout();
    }

    // Resident memory of each replica, idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leader = holder().await.unwrap();
    let (mut leading, mut standing) = (None, None);
    for pod in pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=bitbucket-operator"))
        .await
        .unwrap()
        .items
    {
        let name = pod.metadata.name.unwrap_or_default();
        let rss = process_of(&name).map(|(_, rss)| rss);
        if name == leader {
            leading = rss;
        } else {
            standing = rss;
        }
    }
    let current = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=bitbucket-operator"))
        .await
        .unwrap()
        .items
        .len();
    support::kubectl_ok(&["delete", "-k", "deploy/", "--wait=true"]);
    install_crds(client).await;

    let same = killed.iter().filter(|(_, same)| *same).count();
    let killed: Vec<Duration> = killed.into_iter().map(|(d, _)| d).collect();
    let medians = |samples: &[Duration]| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        format!(
            "median {:.2} s (of {}: {})",
            percentile(&sorted, 0.5).as_secs_f64(),
            sorted.len(),
            sorted
                .iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mib = |m: Option<f64>| m.map_or("not found".into(), |m| format!("{m:.1} MiB"));
    vec![
        Row {
            number: 9,
            figure: "on the node: kubectl apply -k deploy/ → Deployment Available (2 replicas)",
            measured: format!("{:.2} s", available.as_secs_f64()),
            target: "report".into(),
            met: None,
        },
        Row {
            number: 9,
            figure: "on the node: leading again after the leader's process is killed (SIGKILL; the Lease is not released)",
            measured: format!(
                "{}; {same} of {} times its own restarted container led again (same pod name)",
                medians(&killed),
                killed.len()
            ),
            target: "report".into(),
            met: None,
        },
        Row {
            number: 9,
            figure: "on the node: leader handover, its pod deleted as a rollout does (SIGTERM: the Lease is released)",
            measured: medians(&rolled),
            target: "report".into(),
            met: None,
        },
        Row {
            number: 9,
            figure: "on the node: resident memory, leader and standby (idle cluster)",
            measured: format!(
                "leader {}, standby {} ({current} pods)",
                mib(leading),
                mib(standing)
            ),
            target: "report".into(),
            met: None,
        },
    ]
}

/// The minimal loop over a Data Center project: every page of `project` (1,000 a page, the
/// simulator's largest), following `nextPageStart`; returns the page count.
async fn fetch_dc_pages(http: &reqwest::Client, sim: &Simulator, project: &str) -> usize {
    let mut start = Some(0u64);
    let mut pages = 0;
    while let Some(at) = start {
        let url = format!(
            "{}/rest/api/1.0/projects/{project}/repos?limit=1000&start={at}",
            sim.base_url()
        );
        let page: serde_json::Value = http
            .get(&url)
            .bearer_auth("FAKE-dc-personal-access-token-jdoe")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        start = (page["isLastPage"] == false)
            .then(|| page["nextPageStart"].as_u64())
            .flatten();
    }
    pages
}

/// A request for `url` as the readers make it, with the plugin token: `body` POSTed as JSON,
/// or a GET.
fn asked(http: &reqwest::Client, url: &str, body: Option<&str>) -> reqwest::RequestBuilder {
    let request = match body {
        Some(body) => http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned()),
        None => http.get(url),
    };
    request.bearer_auth("FAKE-bench-token")
}

/// `requests` sequential GETs or POSTs (with `body`) of `url`, after one warm-up; the sorted
/// latencies (each until the whole body is read) and the size of the last answer.
async fn latencies(
    http: &reqwest::Client,
    url: &str,
    body: Option<&str>,
    requests: usize,
) -> (Vec<Duration>, usize) {
    let ask = || async {
        let started = Instant::now();
        let response = asked(http, url, body).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let bytes = response.bytes().await.unwrap().len();
        (started.elapsed(), bytes)
    };
    // The warm-up waits out the moment the slice cache lags the Subscription's (503).
    support::eventually("the list to be served", support::PATIENCE, || async {
        let response = asked(http, url, body).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let (_, mut size) = ask().await;
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (took, bytes) = ask().await;
        samples.push(took);
        size = bytes;
    }
    samples.sort();
    (samples, size)
}

/// A server with nothing to do but answer every request with `body` (as JSON): what handing
/// the same bytes to the same client takes on this machine, the baseline of the generator's
/// and the Flux endpoint's latencies. Its address, until the process ends.
async fn bare_server(body: bytes::Bytes) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answer = move || {
        let body = body.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    };
    let app = axum::Router::new().fallback(answer);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// The latencies of `url` (see [`latencies`]), then of a [`bare_server`] sending the body it
/// answered, asked the same way.
async fn latencies_beside_bare(
    http: &reqwest::Client,
    url: &str,
    body: Option<&str>,
    requests: usize,
) -> [(Vec<Duration>, usize); 2] {
    let measured = latencies(http, url, body, requests).await;
    let response = asked(http, url, body).send().await;
    let answered = response.unwrap().bytes().await.unwrap();
    let bare = bare_server(answered).await;
    [measured, latencies(http, &bare, body, requests).await]
}

/// Figure 11: one Data Center project of `n` repositories, through the operator binary (so its
/// memory is its own): time from creating the Subscription to Ready against a bare loop over the
/// same pages, the RepositorySlices written, memory, slice writes when nothing changed and when
/// 10 repositories did, the generator's and the Flux endpoint's latency over 1,000 requests for
/// the whole list and for 10,000 of it, and the bytes stored per repository.
async fn slices_at_scale(client: &Client, n: usize) -> Vec<Row> {
    use bitbucket_operator::api::{RepositorySlice, SUBSCRIPTION_LABEL};
    quiet_cluster(client).await;
    let ns = TestNamespace::create(client, "bench-slices").await;
    let sim = Simulator::start(generated(n)).await.unwrap();
    let token_file = std::env::temp_dir().join(format!("{}-token", ns.name));
    std::fs::write(&token_file, "FAKE-bench-token").unwrap();
    let plugin_port = support::free_port();
    let plugin_address = format!("127.0.0.1:{plugin_port}");
    let operator = Process::start_with(
        "slices.log",
        &sim.base_url(),
        &[
            "--plugin-token-file",
            token_file.to_str().unwrap(),
            "--plugin-address",
            &plugin_address,
        ],
    );
    operator.ready().await;
    let idle = operator.memory().0;
    secret(
        client,
        &ns.name,
        "dc",
        &[("token", "FAKE-dc-personal-access-token-jdoe")],
    )
    .await;
    let dc = integration(
        "dc",
        ServerType::DataCenter,
        sim.base_url(),
        CredentialType::AccessToken,
        "dc",
    );
    create(client, &ns.name, &dc).await;
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    await_object(&integrations, "dc", "the integration to be Ready", |i| {
        i.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    })
    .await;

    // The baseline: the same pages by a bare HTTP loop (median of 3).
    let http = plain_http();
    let mut loops = Vec::new();
    let mut pages = 0;
    for _ in 0..3 {
        let started = Instant::now();
        pages = fetch_dc_pages(&http, &sim, "PLAT").await;
        loops.push(started.elapsed());
    }
    let baseline = median(loops);

    // apply -> Ready: the whole project, offered to ApplicationSets and Flux.
    let offered = |mut s: Subscription| {
        s.metadata.labels = Some(
            [(
                bitbucket_operator::generator::OFFER_LABEL.to_owned(),
                "true".to_owned(),
            )]
            .into(),
        );
        s
    };
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    let started = Instant::now();
    create(
        client,
        &ns.name,
        &offered(subscription("all", "dc", None, &["PLAT"])),
    )
    .await;
    await_object(&subscriptions, "all", "the subscription to sync", |s| {
        s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    })
    .await;
    let to_ready = started.elapsed();
    let (rss, peak) = operator.memory();
    let slices: Api<RepositorySlice> = Api::namespaced(client.clone(), &ns.name);
    let selector = kube::api::ListParams::default().labels(&format!("{SUBSCRIPTION_LABEL}=all"));
    let stored = slices.list(&selector).await.unwrap().items;
    let held: usize = stored.iter().map(|s| s.repositories.len()).sum();
    assert_eq!(held, n, "the slices hold every repository");
    let created = operator
        .metric("bitbucket_operator_slice_writes_total")
        .await;
    // What etcd stores: the objects as the API server keeps them (managedFields included).
    let raw = client
        .request_text(
            http::Request::get(format!(
                "/apis/scm.shippable.io/v1alpha1/namespaces/{}/repositoryslices?labelSelector={SUBSCRIPTION_LABEL}%3Dall",
                ns.name
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    let items: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let bytes: usize = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::to_vec(i).unwrap().len())
        .sum();

    // What the API server takes to store those slices: the same objects created by a bare
    // client in a namespace no operator reads, as many at once as the operator writes.
    let bare_ns = TestNamespace::create(client, "bench-slices-bare").await;
    let bare: Api<RepositorySlice> = Api::namespaced(client.clone(), &bare_ns.name);
    let copies: Vec<RepositorySlice> = stored
        .iter()
        .map(|s| {
            let mut copy = RepositorySlice::new("", s.repositories.to_vec());
            copy.metadata.generate_name = Some("copy-".into());
            copy
        })
        .collect();
    let started = Instant::now();
    {
        use futures::StreamExt;
        let params = PostParams::default();
        futures::stream::iter(copies.iter().map(|c| bare.create(&params, c)))
            .buffer_unordered(8)
            .for_each(|r| {
                r.unwrap();
                futures::future::ready(())
            })
            .await;
    }
    let bare_writes = started.elapsed();

    // Re-syncs: nothing changed, then 10 repositories changed (spread over the list).
    let resync = |value: String| {
        let subscriptions = subscriptions.clone();
        async move {
            let annotate = serde_json::json!({"metadata": {"annotations": {
                bitbucket_operator::api::SYNC_REQUESTED_AT_ANNOTATION: value
            }}});
            subscriptions
                .patch("all", &PatchParams::default(), &Patch::Merge(annotate))
                .await
                .unwrap();
            await_object(&subscriptions, "all", "the requested sync", move |s| {
                s.status.as_ref().is_some_and(|s| {
                    s.last_handled_sync_request.as_deref() == Some(value.as_str())
                        && is_ready(&s.conditions)
                })
            })
            .await;
        }
    };
    for i in 0..3 {
        resync(format!("unchanged-{i}")).await;
    }
    let steady = operator
        .metric("bitbucket_operator_slice_writes_total")
        .await
        - created;
    let width = n.to_string().len();
    for k in 0..10 {
        let slug = format!("gen-{:0width$}", 1 + k * (n / 10));
        let change = bitbucket_sim::DcRepositoryChange {
            public: Some(true),
            ..Default::default()
        };
        sim.control()
            .change_dc_repository("PLAT", &slug, change)
            .unwrap();
    }
    resync("ten-changed".into()).await;
    let after_ten = operator
        .metric("bitbucket_operator_slice_writes_total")
        .await
        - created
        - steady;

    // The generator and the Flux endpoint, for the whole list and for 10,000 of it.
    let mut ten = offered(subscription("ten", "dc", None, &["PLAT"]));
    ten.spec.repositories.include = vec![if n >= 100_000 { "gen-01*" } else { "gen-0*" }.into()];
    create(client, &ns.name, &ten).await;
    let ten_count = await_object(&subscriptions, "ten", "the 10,000 to sync", |s| {
        s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    })
    .await
    .status
    .unwrap()
    .repository_count
    .unwrap_or_default();
    let base = format!("http://{plugin_address}");
    let requests = 1_000;
    let mut served = Vec::new();
    let mut memory_while_serving = Vec::new();
    let after_resyncs = operator.memory().0;
    for (name, count) in [("ten", ten_count as usize), ("all", n)] {
        let body = serde_json::json!({"applicationSetName": "bench", "input": {"parameters": {
            "namespace": ns.name, "subscription": name
        }}})
        .to_string();
        let generator_url = format!("{base}/api/v1/getparams.execute");
        let generator = latencies_beside_bare(&http, &generator_url, Some(&body), requests).await;
        let after_generator = operator.memory().0;
        let flux_url = format!("{base}/api/v1/inputs/{}/{name}?limit=1000", ns.name);
        let flux = latencies_beside_bare(&http, &flux_url, None, requests).await;
        let after_flux = operator.memory().0;
        served.push((count, generator, flux));
        memory_while_serving.push(format!(
            "{count}: {after_generator:.0} MiB after the generator's answers, {after_flux:.0} after Flux's"
        ));
    }
    let (rss_after, peak_after) = operator.memory();
    operator.stop();

    let ratio = ms(to_ready) / ms(baseline);
    let slices_count = stored.len();
    let mut rows = vec![
        Row {
            number: 11,
            figure: "RepositorySlices: time from creating a Subscription of one Data Center project to Ready, vs a bare loop over the same pages",
            measured: format!(
                "N = {n} ({pages} pages): {:.0} ms vs {:.0} ms (median of 3), ratio {ratio:.2}×; a bare client creating the same {} slices (8 at once) takes {:.0} ms: against loop + those writes, {:.2}×",
                ms(to_ready),
                ms(baseline),
                stored.len(),
                ms(bare_writes),
                ms(to_ready) / (ms(baseline) + ms(bare_writes)),
            ),
            target: "≤ 1.1×".into(),
            met: Some(ratio <= 1.1),
        },
        Row {
            number: 11,
            figure: "RepositorySlices written for the first listing, and stored bytes",
            measured: format!(
                "{created:.0} writes, {slices_count} slices of ≤ 500 holding {held}; {} bytes stored per repository ({} MiB in all, managedFields included)",
                bytes / n,
                bytes / (1 << 20)
            ),
            target: format!("{} slices (ceil(N/500))", n.div_ceil(500)),
            met: Some(slices_count == n.div_ceil(500)),
        },
        Row {
            number: 11,
            figure: "operator memory with the listed project (RSS, peak)",
            measured: format!(
                "idle {idle:.0} MiB; after Ready {rss:.0} MiB (peak {peak:.0}); after the re-syncs and the second Subscription {after_resyncs:.0} MiB; serving {}; in the end {rss_after:.0} MiB (peak {peak_after:.0})",
                memory_while_serving.join("; ")
            ),
            target: "≤ 150 MB".into(),
            met: Some(peak_after * 1.048_576 <= 150.0),
        },
        Row {
            number: 11,
            figure: "slice writes: 3 re-syncs where nothing changed; then one where 10 repositories changed",
            measured: format!("{steady:.0}; {after_ten:.0}"),
            target: "0; ≤ 11".into(),
            met: Some(steady == 0.0 && after_ten <= 11.0),
        },
    ];
    for (count, [generator, generator_bare], [flux, flux_bare]) in served {
        let limit = if count > 10_000 { 50.0 } else { 10.0 };
        let p99 = ms(percentile(&generator.0, 0.99)).max(ms(percentile(&flux.0, 0.99)));
        let figures = |(samples, bytes): &(Vec<Duration>, usize)| {
            let p = |q| ms(percentile(samples, q));
            format!(
                "p50 {:.1} ms, p99 {:.1} ms ({} KiB)",
                p(0.5),
                p(0.99),
                bytes / 1024
            )
        };
        rows.push(Row {
            number: 11,
            figure: "generator (whole list) and Flux endpoint (?limit=1000) latency, 1,000 requests each, until the body is read, vs a bare server sending the same bytes",
            measured: format!(
                "{count} repositories: generator {} vs bare {}; Flux {} vs bare {}",
                figures(&generator),
                figures(&generator_bare),
                figures(&flux),
                figures(&flux_bare),
            ),
            target: format!("p99 ≤ {limit:.0} ms"),
            met: Some(p99 <= limit),
        });
    }
    rows
}
