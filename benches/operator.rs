//! Benchmarks of what users pay for: Bitbucket calls, API-server writes and latency, each
//! measured side by side with a baseline in the same run. Prints a Markdown table and writes it
//! to `target/bench/report.md`. Needs a cluster (`make bench` starts the project's plane).
//!
//!   cargo bench --bench operator            # the full set
//!   cargo bench --bench operator -- --quick # smaller sizes, under a few minutes
//!
//! Figures 6 (restart convergence at 1,000 + 5,000 objects) and 7 (resident memory with 20,000
//! unrelated Secrets) are not measured yet.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use bitbucket_operator::{
    api::{
        BitbucketIntegration, BitbucketIntegrationSpec, CredentialType, Credentials,
        LocalObjectReference, RepositoryFilter, SecretReference, Server, ServerType, Subscription,
        SubscriptionSpec, conditions::READY,
    },
    sim::{Fixture, Simulator},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use support::{
    TestNamespace, client, install_crds,
    operator::{Operator, condition, eventually, test_settings},
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
    let mut rows = Vec::new();

    let sizes: &[usize] = if quick {
        &[100, 1_000]
    } else {
        &[100, 1_000, 10_000]
    };
    for &n in sizes {
        rows.extend(full_sync_calls(&client, n).await);
    }
    rows.push(steady_state_calls(&client, if quick { 2_000 } else { 10_000 }).await);
    rows.push(steady_state_writes(&client, if quick { 20 } else { 100 }).await);
    rows.push(apply_to_ready(&client, if quick { 20 } else { 100 }).await);
    rows.push(large_sync_time(&client, if quick { 2_000 } else { 10_000 }).await);

    let mut report =
        String::from("| # | figure | measured | target | met |\n|---|---|---|---|---|\n");
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
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    };
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

fn subscription(
    name: &str,
    integration: &str,
    workspace: Option<&str>,
    projects: &[&str],
) -> Subscription {
    Subscription::new(
        name,
        SubscriptionSpec {
            integration_ref: LocalObjectReference {
                name: integration.into(),
            },
            workspace: workspace.map(Into::into),
            projects: projects.iter().map(|p| (*p).into()).collect(),
            repositories: RepositoryFilter::default(),
            sync_interval: "10m".into(),
            suspend: false,
        },
    )
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

/// Figure 1: calls for a full sync of `n` repositories, Cloud and Data Center.
async fn full_sync_calls(client: &Client, n: usize) -> Vec<Row> {
    let ns = TestNamespace::create(client, "bench-calls").await;
    let sim = Simulator::start(generated(n)).await.unwrap();
    let _operator = Operator::start(client.clone(), test_settings(&ns.name));
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
        eventually(&subscriptions, name, "the subscription to sync", |s| {
            s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
        })
        .await;
    }
    let counters = sim.control().counters();
    let cloud_pages = n.div_ceil(100) as u64;
    let dc_pages = n.div_ceil(1000) as u64;
    let cloud = counters.endpoint(LIST_CLOUD) + counters.endpoint("GET /2.0/user");
    let dc = counters.endpoint(LIST_DC)
        + counters.endpoint("GET /rest/api/1.0/application-properties")
        + counters.endpoint("GET /rest/api/1.0/users/{user_slug}");
    vec![
        Row {
            number: 1,
            figure: "Bitbucket calls, full sync + validation, Cloud",
            measured: format!(
                "N = {n}: {cloud} ({} pages + {} validation)",
                counters.endpoint(LIST_CLOUD),
                counters.endpoint("GET /2.0/user")
            ),
            target: format!("{} (ceil(N/100) + 1)", cloud_pages + 1),
            met: Some(cloud == cloud_pages + 1),
        },
        Row {
            number: 1,
            figure: "Bitbucket calls, full sync + validation, Data Center",
            measured: format!(
                "N = {n}: {dc} ({} pages + 2 validation: X-AUSERNAME probe, user details)",
                counters.endpoint(LIST_DC)
            ),
            target: format!("{} (ceil(N/1000) + 1)", dc_pages + 1),
            // Validation on Data Center is two calls (there is no "current user" endpoint).
            met: Some(dc == dc_pages + 1),
        },
    ]
}

/// Figure 2: Bitbucket calls per steady-state sync of an unchanged `n`-repository workspace.
async fn steady_state_calls(client: &Client, n: usize) -> Row {
    let ns = TestNamespace::create(client, "bench-probe").await;
    let sim = Simulator::start(generated(n)).await.unwrap();
    let mut settings = test_settings(&ns.name);
    let interval = Duration::from_secs(1);
    settings.interval_override = Some(interval);
    let every = settings.summaries_between_listings;
    let operator = Operator::start(client.clone(), settings);
    cloud_secret(client, &ns.name).await;
    create(client, &ns.name, &cloud_integration("cloud", &sim)).await;
    create(
        client,
        &ns.name,
        &subscription("all", "cloud", Some("acme"), &[]),
    )
    .await;
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    eventually(&subscriptions, "all", "the subscription to sync", |s| {
        s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    })
    .await;
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

/// The API server's own count of status PATCHes to our kinds.
async fn status_patches(client: &Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("group=\"scm.shippable.io\"") && l.contains("verb=\"PATCH\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Figure 3: API-server writes over 10 steady-state intervals with `count` subscriptions.
async fn steady_state_writes(client: &Client, count: usize) -> Row {
    let ns = TestNamespace::create(client, "bench-steady").await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let mut settings = test_settings(&ns.name);
    let interval = Duration::from_secs(1);
    settings.interval_override = Some(interval);
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
        eventually(
            &subscriptions,
            &format!("s{i}"),
            "each subscription to sync",
            |s| s.status.as_ref().is_some_and(|s| is_ready(&s.conditions)),
        )
        .await;
    }
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    let expected = Some(i32::try_from(count).unwrap());
    eventually(
        &integrations,
        "cloud",
        "the integration to count its users",
        move |i| i.status.as_ref().and_then(|s| s.subscriptions) == expected,
    )
    .await;
    // Let in-flight writes land, then count over ten intervals.
    tokio::time::sleep(interval * 2).await;
    let before = status_patches(client).await;
    let listings = sim.control().counters().endpoint(LIST_CLOUD);
    tokio::time::sleep(interval * 10).await;
    let after = status_patches(client).await;
    let resyncs = sim.control().counters().endpoint(LIST_CLOUD) - listings;
    Row {
        number: 3,
        figure: "API-server writes over 10 steady-state intervals, nothing changed",
        measured: format!(
            "{} PATCHes ({count} subscriptions, {resyncs} re-syncs in the window)",
            after - before
        ),
        target: "0".into(),
        met: Some(after == before),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Figure 4: apply → Ready for an integration and a subscription, against the same Bitbucket
/// round trips plus one status write done by a bare client.
async fn apply_to_ready(client: &Client, trials: usize) -> Row {
    let ns = TestNamespace::create(client, "bench-ready").await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let _operator = Operator::start(client.clone(), test_settings(&ns.name));
    cloud_secret(client, &ns.name).await;
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    let mut operator = Vec::new();
    let mut baseline = Vec::new();
    let bare = bitbucket_operator::bitbucket::Client::new(
        bitbucket_operator::bitbucket::Server::Cloud {
            api_url: url::Url::parse(&sim.cloud_api_url()).unwrap(),
        },
        bitbucket_operator::bitbucket::Credentials::CloudApiToken {
            email: "jdoe@example.com".into(),
            token: "FAKE-cloud-api-token-for-jdoe".into(),
        },
        Default::default(),
    )
    .unwrap();
    for i in 0..trials {
        let name = format!("t{i}");
        let started = Instant::now();
        create(client, &ns.name, &cloud_integration(&name, &sim)).await;
        create(
            client,
            &ns.name,
            &subscription(&name, &name, Some("acme"), &[]),
        )
        .await;
        eventually(&integrations, &name, "the integration to be Ready", |i| {
            i.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
        })
        .await;
        eventually(&subscriptions, &name, "the subscription to sync", |s| {
            s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
        })
        .await;
        operator.push(started.elapsed());

        // The same work without the operator: validate, list, write one status.
        let started = Instant::now();
        bare.whoami(None).await.unwrap();
        bare.list_repositories(&bitbucket_operator::bitbucket::ListScope::CloudWorkspace {
            workspace: "acme".into(),
            projects: vec![],
        })
        .await
        .unwrap();
        subscriptions
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"observedGeneration": 1}})),
            )
            .await
            .unwrap();
        baseline.push(started.elapsed());
    }
    operator.sort();
    baseline.sort();
    let (p50, p95) = (percentile(&operator, 0.5), percentile(&operator, 0.95));
    let base50 = percentile(&baseline, 0.5);
    let ratio = p50.as_secs_f64() / base50.as_secs_f64();
    Row {
        number: 4,
        figure: "apply → Ready, integration + subscription (includes the watch that observes it)",
        measured: format!(
            "p50 {:.0} ms, p95 {:.0} ms over {trials}; bare round trips + 1 write p50 {:.0} ms; ratio {ratio:.1}×",
            p50.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            base50.as_secs_f64() * 1e3
        ),
        target: "≤ 1.2× the bare round trips".into(),
        met: Some(ratio <= 1.2),
    }
}

/// Figure 5: a large sync through the operator vs a minimal HTTP loop fetching the same pages.
async fn large_sync_time(client: &Client, n: usize) -> Row {
    let ns = TestNamespace::create(client, "bench-large").await;
    let sim = Simulator::start(generated(n)).await.unwrap();

    // Baseline: the same pages, one after another, with a plain HTTP client.
    let http = reqwest::Client::builder()
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
        .unwrap();
    let started = Instant::now();
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
    let baseline = started.elapsed();

    let _operator = Operator::start(client.clone(), test_settings(&ns.name));
    cloud_secret(client, &ns.name).await;
    create(client, &ns.name, &cloud_integration("cloud", &sim)).await;
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), &ns.name);
    eventually(&integrations, "cloud", "the integration to be Ready", |i| {
        i.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    })
    .await;
    let started = Instant::now();
    create(
        client,
        &ns.name,
        &subscription("all", "cloud", Some("acme"), &[]),
    )
    .await;
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        &subscriptions,
        "all",
        "the large subscription to sync",
        |s| s.status.as_ref().is_some_and(|s| is_ready(&s.conditions)),
    )
    .await;
    let operator = started.elapsed();
    let ratio = operator.as_secs_f64() / baseline.as_secs_f64();
    Row {
        number: 5,
        figure: "large sync wall time vs a minimal HTTP loop over the same pages",
        measured: format!(
            "N = {n} ({pages} pages): operator {:.0} ms, loop {:.0} ms, ratio {ratio:.2}×",
            operator.as_secs_f64() * 1e3,
            baseline.as_secs_f64() * 1e3
        ),
        target: "≤ 1.3×".into(),
        met: Some(ratio <= 1.3),
    }
}
