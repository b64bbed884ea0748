//! Figures 6, 7 and 14: the operator binary at scale. Integrations and Subscriptions appear
//! while it is down; it starts and converges; a bare client then makes as many status writes
//! with the same parallelism. Figure 14 runs ten times figure 6's load (10,000 integrations
//! and 50,000 Subscriptions) and adds what the API server answers in steady state and the CPU
//! the operator, the API server and etcd spend, to say which of them is the limit.
//!
//! Figure 6 keeps all its objects in one namespace, as it always has. Figure 14 spreads them
//! over namespaces as tenants hold them: the admission policy that refuses a Subscription
//! pointed at an integration being deleted takes every integration of the Subscription's
//! namespace as a parameter, so one create costs the API server a CEL evaluation per
//! integration there (with 2,000 integrations in one namespace, Subscriptions were created at
//! about 30 a second with both cores busy; see docs/benchmarks.md, issue 29, deliver 5).

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use bitbucket_operator::api::{BitbucketIntegration, RequestBudget, Subscription};
use bitbucket_sim::{Fixture, Simulator};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};

use super::{
    Process, Row, TestNamespace, bounded, cloud_integration, create, heap, is_ready, quiet_cluster,
    ready_names, secret, subscription, writes,
};

/// The rows of what holds the heap (from a heap-profiling build's run).
pub const HEAP_PROFILE_FIGURE: &str = "heap profile (dhat), what holds the heap after converging";

/// How long figure 14 watches the API server once everything is Ready.
const STEADY: Duration = Duration::from_secs(120);

#[derive(Clone, Copy)]
pub struct Scale {
    pub integrations: usize,
    pub subscriptions: usize,
    pub unrelated_secrets: usize,
    /// How many namespaces hold them: integration `i` is in namespace `i % namespaces`, each
    /// Subscription beside its integration, the unrelated Secrets in the first.
    pub namespaces: usize,
}

impl Scale {
    fn objects(self) -> usize {
        self.integrations + self.subscriptions
    }
}

/// What one run at scale measured.
struct Measured {
    setup: Duration,
    /// From the operator's start until every object is Ready.
    converged: Duration,
    /// The API-server writes of our kinds and Events meanwhile.
    written: u64,
    /// The bare client's as many writes (`bare_writes`) at the operator's parallelism.
    bare: Duration,
    bare_writes: usize,
    /// Failed reconciles, and by reason.
    failed: f64,
    failures: String,
    /// Resident memory idle, after converging, and its peak (MiB).
    idle: f64,
    loaded: f64,
    peak: f64,
    idle_profile: Option<std::path::PathBuf>,
    loaded_profile: Option<std::path::PathBuf>,
    /// CPU cores used while converging, by process.
    converging_cpu: Cpu,
    /// After converging: CPU and the API server's requests, when asked for.
    steady: Option<Steady>,
}

impl Measured {
    fn ratio(&self) -> f64 {
        self.converged.as_secs_f64() / self.bare.as_secs_f64()
    }
}

/// Figures 6 and 7: memory idle and at scale, and convergence after a restart with 1,000
/// integrations and 5,000 Subscriptions that appeared while the operator was down, against a
/// bare client doing as many writes with the same parallelism.
pub async fn figures_6_and_7(client: &Client, scale: Scale, binary: Option<&Path>) -> Vec<Row> {
    let m = measure(client, scale, binary, false).await;
    let (idle_limit, loaded_limit) = (15.0, 100.0);
    let mut rows = vec![
        Row {
            number: 6,
            figure: "convergence after a restart: integrations + subscriptions created while the operator was down",
            measured: convergence(scale, &m),
            target: "≤ 1.5×".into(),
            met: Some(m.ratio() <= 1.5),
        },
        Row {
            number: 7,
            figure: "operator resident memory, idle",
            measured: format!("{:.1} MiB ({})", m.idle, super::build_of(binary)),
            target: format!("≤ {idle_limit} MB"),
            met: Some(m.idle * 1.048_576 <= idle_limit),
        },
        Row {
            number: 7,
            figure: "operator resident memory with the subscriptions and unrelated 4 KiB Secrets",
            measured: loaded(scale, &m, binary),
            target: format!("≤ {loaded_limit} MB"),
            met: Some(m.peak * 1.048_576 <= loaded_limit),
        },
    ];
    rows.extend(heap_rows(7, &m));
    rows
}

/// Figure 14: ten times figure 6's load (`scale`), its convergence, memory, the API server's
/// requests in steady state, and the CPU of the operator, the API server and etcd.
pub async fn figure_14(client: &Client, scale: Scale, binary: Option<&Path>) -> Vec<Row> {
    let m = measure(client, scale, binary, true).await;
    let steady = m.steady.as_ref().expect("measured with a steady phase");
    let rss_limit = 300.0;
    let mut rows = vec![
        Row {
            number: 14,
            figure: "ten times the scale: convergence after a restart",
            measured: convergence(scale, &m),
            target: "≤ 1.2×".into(),
            met: Some(m.ratio() <= 1.2),
        },
        Row {
            number: 14,
            figure: "ten times the scale: operator resident memory",
            measured: loaded(scale, &m, binary),
            target: format!("≤ {rss_limit} MB"),
            met: Some(m.peak * 1.048_576 <= rss_limit),
        },
        Row {
            number: 14,
            figure: "ten times the scale: API-server requests in steady state (our kinds, Events, Secrets, Leases)",
            measured: format!(
                "{:.2} requests/s over {} s after converging, of which writes {:.2}/s: {}",
                steady.requests as f64 / STEADY.as_secs_f64(),
                STEADY.as_secs(),
                steady.writes as f64 / STEADY.as_secs_f64(),
                steady.by_verb,
            ),
            target: "only what the intervals require: no writes when nothing changed but the Lease's renewals".into(),
            met: Some(steady.writes == steady.lease_renewals),
        },
        Row {
            number: 14,
            figure: "ten times the scale: CPU (cores) of the leader, the API server and etcd",
            measured: format!(
                "converging: {}; steady state: {} (while answering {} Bitbucket calls: the syncs and validations due)",
                m.converging_cpu, steady.cpu, steady.bitbucket_calls
            ),
            target: "report (2 cores)".into(),
            met: None,
        },
    ];
    rows.extend(heap_rows(14, &m));
    rows
}

/// What held a heap-profiling build's heap (`make heap-profile`), idle and with the load,
/// as it wrote it at SIGTERM: none for another build.
fn heap_rows(number: u8, m: &Measured) -> Vec<Row> {
    let profiles = [
        ("idle", &m.idle_profile),
        ("with the load", &m.loaded_profile),
    ];
    let profiles = profiles
        .into_iter()
        .filter_map(|(when, p)| Some((when, p.as_ref()?)));
    profiles
        .map(|(when, profile)| {
            let (holders, total) = heap::holders(profile);
            Row {
                number,
                figure: HEAP_PROFILE_FIGURE,
                measured: format!(
                    "{when}: {:.1} MiB live; {}",
                    total as f64 / 1_048_576.0,
                    heap::summary(&holders, 8)
                ),
                target: "report".into(),
                met: None,
            }
        })
        .collect()
}

/// Figures 6's and 14's measured text.
fn convergence(scale: Scale, m: &Measured) -> String {
    format!(
        "{} + {} in {} namespace(s): all Ready {:.1} s after start ({} writes; {} failed reconciles: {}); bare client, {} status writes at the same parallelism: {:.1} s; ratio {:.2}× (setup: {} objects + {} Secrets created in {:.0} s)",
        scale.integrations,
        scale.subscriptions,
        scale.namespaces,
        m.converged.as_secs_f64(),
        m.written,
        m.failed,
        m.failures,
        m.bare_writes,
        m.bare.as_secs_f64(),
        m.ratio(),
        scale.objects(),
        scale.unrelated_secrets + scale.integrations,
        m.setup.as_secs_f64()
    )
}

/// The resident memory with the load, as figures 7 and 14 say it.
fn loaded(scale: Scale, m: &Measured, binary: Option<&Path>) -> String {
    format!(
        "{:.1} MiB after converging (peak {:.1} MiB; {}); {} subscriptions, {} integrations, {} unrelated Secrets",
        m.loaded,
        m.peak,
        super::build_of(binary),
        scale.subscriptions,
        scale.integrations,
        scale.unrelated_secrets
    )
}

/// Runs `binary` idle, creates `scale`'s objects while it is down, restarts it and times it to
/// Ready, then a bare client's as many writes. `steady`: also watch the API server and the
/// CPU for [`STEADY`] after converging.
async fn measure(client: &Client, scale: Scale, binary: Option<&Path>, steady: bool) -> Measured {
    quiet_cluster(client).await;
    let sim = Simulator::start(Fixture::demo()).await.unwrap();

    // Idle: the operator up, watching a cluster with none of our objects.
    let operator = Process::spawn(binary, "scale-idle.log", &sim.base_url(), &[]);
    operator.ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, _) = operator.memory();
    let idle_profile = operator.stop();

    // While it is down: the unrelated Secrets, then the integrations, their Secrets and the
    // Subscriptions.
    let created = Instant::now();
    let mut namespaces = Vec::new();
    for _ in 0..scale.namespaces {
        namespaces.push(TestNamespace::create(client, "bench-scale").await);
    }
    let names: Vec<&str> = namespaces.iter().map(|ns| ns.name.as_str()).collect();
    create_objects(client, &names, &sim, scale).await;
    let setup = created.elapsed();

    // Restart, and time until every object is Ready (names are unique across namespaces, and
    // no other namespace holds our kinds: `quiet_cluster`).
    let integrations: Api<BitbucketIntegration> = Api::all(client.clone());
    let subscriptions: Api<Subscription> = Api::all(client.clone());
    let mut integrations_ready = ready_names(integrations.clone(), |i: &BitbucketIntegration| {
        i.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    });
    let mut subscriptions_ready = ready_names(subscriptions.clone(), |s: &Subscription| {
        s.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
    });
    let writes_before = writes(client).await;
    let started = Instant::now();
    let operator = Process::spawn(binary, "scale.log", &sim.base_url(), &[]);
    let cpu = CpuClock::start(operator.pid());
    // Ten minutes, or 0.1 s per object: a heap-profiling build (`make heap-profile`) is
    // several times slower, and figure 14 has ten times the objects.
    let patience =
        Duration::from_secs(600).max(Duration::from_millis(100) * scale.objects() as u32);
    tokio::time::timeout(patience, async {
        let mut seen = HashSet::new();
        while seen.len() < scale.integrations {
            seen.insert(integrations_ready.recv().await.unwrap());
        }
        let mut seen = HashSet::new();
        while seen.len() < scale.subscriptions {
            seen.insert(subscriptions_ready.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("every object to be Ready within {patience:?}"));
    let converged = started.elapsed();
    let converging_cpu = cpu.read();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written = writes(client).await - writes_before;
    let steady = if steady {
        Some(Steady::watch(client, operator.pid(), &sim).await)
    } else {
        None
    };
    let (loaded, peak) = operator.memory();
    let failures = operator
        .samples("bitbucket_operator_reconcile_errors_total")
        .await;
    let failed = failures.iter().fold(0.0, |sum, (_, n)| sum + n);
    let failures: Vec<String> = failures.iter().map(|(l, n)| format!("{n} {l}")).collect();
    let loaded_profile = operator.stop();

    // The bare client: as many writes, each re-writing an object's whole status as the
    // operator left it, with the operator's parallelism (8 reconciles per controller, two
    // controllers).
    let per_kind = written.div_ceil(2) as usize;
    let (integration_statuses, subscription_statuses) = (
        statuses(&integrations).await,
        statuses(&subscriptions).await,
    );
    let started = Instant::now();
    futures::join!(
        rewrite_statuses::<BitbucketIntegration>(client, &integration_statuses, per_kind),
        rewrite_statuses::<Subscription>(client, &subscription_statuses, per_kind),
    );
    let bare = started.elapsed();
    Measured {
        setup,
        converged,
        written,
        bare,
        bare_writes: per_kind * 2,
        failed,
        failures: failures.join(", "),
        idle,
        loaded,
        peak,
        idle_profile,
        loaded_profile,
        converging_cpu,
        steady,
    }
}

/// Creates `scale`'s objects in `namespaces`, 32 at a time: the unrelated Secrets (4 KiB each),
/// then each integration with its Secret, then the Subscriptions, spread over the
/// integrations.
async fn create_objects(client: &Client, namespaces: &[&str], sim: &Simulator, scale: Scale) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespaces[0]);
    let payload = k8s_openapi::ByteString((0..4096).map(|i| (i % 251) as u8).collect());
    bounded(
        (0..scale.unrelated_secrets).map(|i| {
            let secrets = secrets.clone();
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("unrelated-{i}")),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([("blob".to_owned(), payload.clone())])),
                ..Secret::default()
            };
            async move {
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
            }
        }),
        32,
    )
    .await;
    let credentials = [
        ("email", "jdoe@example.com"),
        ("token", "FAKE-cloud-api-token-for-jdoe"),
    ];
    bounded(
        (0..scale.integrations).map(|i| async move {
            let ns = namespaces[i % namespaces.len()];
            let name = format!("i{i}");
            secret(client, ns, &name, &credentials).await;
            let mut integration = cloud_integration(&name, sim);
            integration.spec.credentials.secret_ref.name = name;
            // Each integration stands for its own Bitbucket user (1,000 requests an hour): the
            // Secrets here all hold one user's token, whose shared budget would be the figure.
            integration.spec.request_budget = Some(RequestBudget {
                requests_per_hour: Some(1_000),
                planned_percent: None,
            });
            create(client, ns, &integration).await;
        }),
        32,
    )
    .await;
    bounded(
        (0..scale.subscriptions).map(|i| async move {
            let of = i % scale.integrations;
            let (ns, integration) = (namespaces[of % namespaces.len()], format!("i{of}"));
            let name = format!("s{i}");
            create(
                client,
                ns,
                &subscription(&name, &integration, Some("acme"), &[]),
            )
            .await;
        }),
        32,
    )
    .await;
}

/// An object's namespace, name and status (as JSON).
type Stored = (String, String, serde_json::Value);

/// Each object's namespace, name and status.
async fn statuses<K>(api: &Api<K>) -> Vec<Stored>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let list = api.list(&kube::api::ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .map(|object| {
            let namespace = object.meta().namespace.clone().unwrap();
            let name = object.meta().name.clone().unwrap();
            let status = serde_json::to_value(object).unwrap()["status"].take();
            (namespace, name, status)
        })
        .collect()
}

/// Writes `count` statuses, 8 at a time, going round `statuses`: each write re-writes one
/// object's whole status, bumping observedGeneration so that every write reaches etcd.
async fn rewrite_statuses<K>(client: &Client, statuses: &[Stored], count: usize)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    bounded(
        (0..count).map(|k| {
            let (namespace, name, status) = &statuses[k % statuses.len()];
            let mut status = status.clone();
            status["observedGeneration"] = serde_json::json!(100 + k / statuses.len());
            let patch = Patch::Merge(serde_json::json!({ "status": status }));
            let api: Api<K> = Api::namespaced(client.clone(), namespace);
            async move {
                api.patch_status(name, &PatchParams::default(), &patch)
                    .await
                    .unwrap();
            }
        }),
        8,
    )
    .await;
}

/// After converging: what the API server was asked and the CPU spent over [`STEADY`].
struct Steady {
    requests: u64,
    writes: u64,
    /// Of the writes, the leader's Lease renewals (`PUT leases`).
    lease_renewals: u64,
    /// The requests by verb and resource, as the report says them.
    by_verb: String,
    cpu: Cpu,
    /// Bitbucket calls answered meanwhile: the syncs and validations falling due (a
    /// Subscription synced in the first minutes of converging is due again 10 minutes later).
    bitbucket_calls: u64,
}

impl Steady {
    async fn watch(client: &Client, operator: u32, sim: &Simulator) -> Self {
        let before = requests(client).await;
        let calls_before = sim.control().counters().total;
        let cpu = CpuClock::start(operator);
        tokio::time::sleep(STEADY).await;
        let cpu = cpu.read();
        let bitbucket_calls = sim.control().counters().total - calls_before;
        let mut after = requests(client).await;
        for (key, n) in before {
            *after.entry(key).or_default() -= n;
        }
        after.retain(|_, n| *n > 0.0);
        let is_write = |(verb, _): &(String, String)| {
            ["POST", "PUT", "PATCH", "APPLY", "DELETE"].contains(&verb.as_str())
        };
        let sum = |write: bool| {
            (after.iter())
                .filter(|(key, _)| is_write(key) == write)
                .map(|(_, n)| *n as u64)
                .sum::<u64>()
        };
        let by_verb: Vec<String> = (after.iter())
            .map(|((verb, resource), n)| format!("{n} {verb} {resource}"))
            .collect();
        let renewals = after.get(&("PUT".to_owned(), "leases".to_owned()));
        Self {
            requests: sum(true) + sum(false),
            writes: sum(true),
            lease_renewals: renewals.map_or(0, |n| *n as u64),
            by_verb: if by_verb.is_empty() {
                "none".into()
            } else {
                by_verb.join(", ")
            },
            cpu,
            bitbucket_calls,
        }
    }
}

/// The API server's requests so far for what the operator reads and writes (our kinds, Events,
/// Secrets, Leases), by verb and resource; watches are left out (a watch is one long request).
async fn requests(client: &Client) -> BTreeMap<(String, String), f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_owned())
    };
    let ours = ["subscriptions", "bitbucketintegrations", "repositoryslices"];
    let theirs = ["events", "secrets", "leases"];
    let mut counts = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let (Some(verb), Some(resource)) = (label(line, "verb"), label(line, "resource")) else {
            continue;
        };
        let wanted = ours.contains(&resource.as_str()) || theirs.contains(&resource.as_str());
        if !wanted || verb == "WATCH" {
            continue;
        }
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        *counts.entry((verb, resource)).or_default() += count;
    }
    counts
}

/// CPU cores used over a span, by process.
struct Cpu(Vec<(&'static str, f64)>);

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = (self.0.iter())
            .map(|(who, cores)| format!("{who} {cores:.2}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// The CPU time of the operator, the API server and etcd since a start (from /proc).
struct CpuClock {
    started: Instant,
    processes: Vec<(&'static str, Option<u32>, f64)>,
}

impl CpuClock {
    fn start(operator: u32) -> Self {
        let processes = [
            ("operator", Some(operator)),
            ("kube-apiserver", plane_pid("kube-apiserver")),
            ("etcd", plane_pid("etcd")),
        ];
        Self {
            started: Instant::now(),
            processes: (processes.into_iter())
                .map(|(who, pid)| (who, pid, pid.map_or(0.0, cpu_seconds)))
                .collect(),
        }
    }

    /// Cores used since the start: CPU seconds over wall seconds.
    fn read(&self) -> Cpu {
        let wall = self.started.elapsed().as_secs_f64();
        Cpu((self.processes.iter())
            .filter_map(|(who, pid, before)| Some((*who, (cpu_seconds((*pid)?) - before) / wall)))
            .collect())
    }
}

/// The process `name` of the plane the benchmark runs on: the PID file beside its kubeconfig
/// (`hack/control-plane.sh` writes both), else the first process of that name. Another plane
/// on the machine (the chaos soak's, whose API server it kills) must not be read instead.
fn plane_pid(name: &str) -> Option<u32> {
    let kubeconfig = std::path::PathBuf::from(std::env::var_os("KUBECONFIG")?);
    let pid_file = kubeconfig.parent()?.join(format!("{name}.pid"));
    (std::fs::read_to_string(pid_file).ok())
        .and_then(|pid| pid.trim().parse().ok())
        .or_else(|| pid_of(name))
}

/// The process whose command is `name` (the first found).
fn pid_of(name: &str) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    })
}

/// User and system CPU seconds of `pid` so far (0 once it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
