//! The soak's independent observer. It reads what a user can read — the API server's objects as
//! plain JSON, the operator's log, Events and metrics, its memory — and the simulator's request
//! counters, and it knows only what the soak told it (which repositories never change, which
//! secrets exist, when a credential is revoked). It shares no code with the operator: it does not
//! use the operator's types, client or decisions. Every broken promise is recorded as a
//! violation with the time it was seen.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::Value;

/// Requests one object (an integration or a Subscription) may cause in any minute, whatever
/// happens: its backoff (2 s, doubling, jittered) allows five attempts in the first minute of a
/// failure, each up to three tries (two transport retries), each behind an OAuth token grant.
/// A credential may make this many per object using it. A retry storm — no backoff, or a
/// requeue every second — is far beyond it.
pub const REQUESTS_PER_OBJECT_MINUTE: u64 = 5 * 3 * 2;

pub fn subscriptions(client: &Client, namespace: &str) -> Api<DynamicObject> {
    resource(client, namespace, "Subscription")
}

pub fn integrations(client: &Client, namespace: &str) -> Api<DynamicObject> {
    resource(client, namespace, "BitbucketIntegration")
}

fn resource(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("scm.shippable.io", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// A credential revoked by the soak, and what it may still do.
struct Revocation {
    since: Instant,
    /// The refused requests (401) until then, by endpoint.
    requests_before: BTreeMap<String, u64>,
    starts_before: u32,
    users: u64,
    /// Requests one attempt may make: 2 with an OAuth token grant before the request.
    per_attempt: u64,
}

#[derive(Default)]
struct State {
    violations: Vec<String>,
    /// Every secret value the soak created or read back (refresh tokens rotate).
    secrets: BTreeSet<String>,
    /// Subscription → the repositories it must always list once it has listed any.
    required: HashMap<String, BTreeSet<String>>,
    /// Subscriptions that have listed repositories at least once.
    listed: BTreeSet<String>,
    /// Simulator requests per credential, sampled each second.
    samples: BTreeMap<String, VecDeque<(Instant, u64)>>,
    /// The credential, its requests in its busiest minute, and the bound then.
    busiest_minute: (String, u64, u64),
    /// Credential → the integration that uses it (told by the soak).
    owners: HashMap<String, String>,
    /// Integration → how many Subscriptions referred to it, sampled each second.
    users: HashMap<String, VecDeque<(Instant, u64)>>,
    revoked: HashMap<String, Revocation>,
    /// Operator starts so far (each may re-validate once).
    starts: u32,
    /// When the operator started, for the request bound (a start retries everything once).
    started_at: VecDeque<Instant>,
    rss: Vec<(Instant, u64)>,
    log_offset: u64,
}

/// Every token Bitbucket (the simulator) has issued so far.
type Issued = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Shared with the soak, which tells it facts and asks for the verdict.
#[derive(Clone)]
pub struct Observer {
    state: Arc<Mutex<State>>,
    started: Instant,
    issued: Issued,
}

impl Observer {
    /// `issued`: the OAuth tokens Bitbucket issued so far, which no text may hold either.
    pub fn new(issued: impl Fn() -> Vec<String> + Send + Sync + 'static) -> Self {
        Self {
            state: Arc::default(),
            started: Instant::now(),
            issued: Arc::new(issued),
        }
    }

    pub fn violation(&self, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        eprintln!("soak observer: VIOLATION at {at:.1}s: {what}");
        self.state
            .lock()
            .unwrap()
            .violations
            .push(format!("{at:.1}s {what}"));
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub fn secret(&self, value: &str) {
        if value.len() >= 8 {
            self.state.lock().unwrap().secrets.insert(value.to_owned());
        }
    }

    /// `subscription` must list `repositories` (full names) from its first listing on.
    pub fn require(&self, subscription: &str, repositories: BTreeSet<String>) {
        self.state
            .lock()
            .unwrap()
            .required
            .insert(subscription.to_owned(), repositories);
    }

    pub fn forget(&self, subscription: &str) {
        let mut state = self.state.lock().unwrap();
        state.required.remove(subscription);
        state.listed.remove(subscription);
    }

    pub fn operator_started(&self) {
        let mut state = self.state.lock().unwrap();
        state.starts += 1;
        state.started_at.push_back(Instant::now());
    }

    /// The first secret found in `text`, by position in the list (never printed).
    fn leaked_secret(&self, text: &str) -> Option<usize> {
        let state = self.state.lock().unwrap();
        state.secrets.iter().position(|s| text.contains(s.as_str()))
    }

    /// Whether `text` holds a token Bitbucket issued, or 24 characters of one. The tokens are
    /// alphanumeric and known only once issued, so the list is asked for only when `text` has a
    /// run of 24 alphanumeric characters or more (rare: names and UUIDs have dashes).
    fn leaked_token(&self, text: &str) -> bool {
        let runs: Vec<&str> = text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|run| run.len() >= 24)
            .collect();
        if runs.is_empty() {
            return false;
        }
        let issued = (self.issued)();
        runs.iter().any(|run| {
            issued
                .iter()
                .any(|t| t.contains(run) || run.contains(t.as_str()))
        })
    }

    fn check_leak(&self, text: &str, place: &str) {
        if let Some(index) = self.leaked_secret(text) {
            self.violation(format!("secret #{index} appears in {place}"));
        } else if self.leaked_token(text) {
            self.violation(format!(
                "an OAuth token Bitbucket issued appears in {place}"
            ));
        }
    }

    /// Watches Subscriptions: a list is never replaced by an empty or partial one, and no
    /// status holds a secret.
    pub async fn watch_subscriptions(self, api: Api<DynamicObject>) {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(object) = event else { continue };
            self.check_subscription(&object);
        }
    }

    fn check_subscription(&self, object: &DynamicObject) {
        let name = object.metadata.name.clone().unwrap_or_default();
        let status = object.data.get("status").cloned().unwrap_or(Value::Null);
        self.check_leak(&status.to_string(), &format!("subscription/{name} status"));
        if object.metadata.deletion_timestamp.is_some() {
            return;
        }
        let listed: BTreeSet<String> = status["repositories"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["fullName"].as_str().map(str::to_owned))
            .collect();
        let mut state = self.state.lock().unwrap();
        let Some(required) = state.required.get(&name).cloned() else {
            return;
        };
        if listed.is_empty() && !state.listed.contains(&name) {
            return; // not listed yet
        }
        state.listed.insert(name.clone());
        drop(state);
        let missing: Vec<&String> = required.difference(&listed).collect();
        if !missing.is_empty() {
            self.violation(format!(
                "subscription/{name} lists {} repositories, without {} that always exist: {:?}",
                listed.len(),
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            ));
        }
    }

    /// Every second: no integration is gone while a Subscription that existed before it went
    /// still refers to it, and no integration status holds a secret.
    pub async fn watch_references(
        self,
        subscriptions: Api<DynamicObject>,
        integrations: Api<DynamicObject>,
    ) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Subscriptions first: one that refers to a missing integration existed before the
            // integration was last seen missing.
            let Ok(users) = subscriptions.list(&ListParams::default()).await else {
                continue;
            };
            let Ok(present) = integrations.list(&ListParams::default()).await else {
                continue;
            };
            for integration in &present.items {
                let status = integration
                    .data
                    .get("status")
                    .cloned()
                    .unwrap_or(Value::Null);
                let name = integration.metadata.name.clone().unwrap_or_default();
                self.check_leak(&status.to_string(), &format!("integration/{name} status"));
            }
            self.count_users(&users.items);
            let names: BTreeSet<String> = present
                .items
                .iter()
                .filter_map(|i| i.metadata.name.clone())
                .collect();
            for user in users.items {
                if user.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let wanted = integration_ref(&user);
                if names.contains(&wanted) {
                    continue;
                }
                // Look again, one at a time, before calling it a violation: the Subscription may
                // have gone or been re-pointed meanwhile.
                let name = user.metadata.name.clone().unwrap_or_default();
                let Ok(Some(again)) = subscriptions.get_opt(&name).await else {
                    continue;
                };
                if again.metadata.deletion_timestamp.is_some()
                    || again.metadata.uid != user.metadata.uid
                    || integration_ref(&again) != wanted
                {
                    continue;
                }
                if matches!(integrations.get_opt(&wanted).await, Ok(None)) {
                    self.violation(format!(
                        "integration/{wanted} is gone while subscription/{name} refers to it"
                    ));
                }
            }
        }
    }

    /// `credential` is the one `integration` uses (or used).
    pub fn owns(&self, credential: &str, integration: &str) {
        self.state
            .lock()
            .unwrap()
            .owners
            .insert(credential.to_owned(), integration.to_owned());
    }

    /// The most objects that used `credential` at once in the last minute: its integration and
    /// the Subscriptions referring to it.
    fn objects(state: &State, credential: &str) -> u64 {
        let users = state
            .owners
            .get(credential)
            .and_then(|integration| state.users.get(integration))
            .and_then(|samples| samples.iter().map(|(_, n)| *n).max())
            .unwrap_or(0);
        1 + users
    }

    /// Every second: requests per credential from the simulator's counters; no credential
    /// makes more than [`REQUESTS_PER_OBJECT_MINUTE`] per object using it in any minute.
    pub fn sample_requests(&self, all: &bitbucket_sim::Counters) {
        let counters = &all.by_credential;
        let now = Instant::now();
        let mut storms = Vec::new();
        {
            let mut state = self.state.lock().unwrap();
            let mut busiest = state.busiest_minute.clone();
            for (credential, total) in counters {
                let samples = state.samples.entry(credential.clone()).or_default();
                samples.push_back((now, *total));
                while samples
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(60))
                {
                    samples.pop_front();
                }
                let in_minute = total - samples.front().map_or(*total, |(_, n)| *n);
                let objects = Self::objects(&state, credential);
                // A new operator process goes on with each failing object's backoff as its
                // status shows it (`finish::resume_backoff`), but may try it once at its start
                // and once more when its server answers others (three tries behind a grant).
                let starts = state
                    .started_at
                    .iter()
                    .filter(|at| now.duration_since(**at) <= Duration::from_secs(60))
                    .count() as u64;
                let bound = REQUESTS_PER_OBJECT_MINUTE * objects + 3 * 2 * objects * starts;
                if in_minute > busiest.1 {
                    busiest = (credential.clone(), in_minute, bound);
                }
                if in_minute > bound {
                    storms.push(format!(
                        "credential {credential} made {in_minute} requests in a minute (bound {bound}: {objects} objects, {starts} operator starts); since the start: {:?}",
                        all.by_credential_endpoint.get(credential)
                    ));
                    // One report per storm minute.
                    if let Some(samples) = state.samples.get_mut(credential) {
                        samples.clear();
                    }
                }
            }
            state.busiest_minute = busiest;
        }
        storms.into_iter().for_each(|s| self.violation(s));
    }

    /// The credential with the most requests in one minute, how many, and its bound then.
    pub fn busiest_minute(&self) -> (String, u64, u64) {
        self.state.lock().unwrap().busiest_minute.clone()
    }

    /// The soak revoked `credential`, used by an integration with `users` Subscriptions;
    /// `refused_so_far` counts its refused requests (401) until now, by endpoint.
    pub fn revoked(
        &self,
        credential: &str,
        refused_so_far: BTreeMap<String, u64>,
        users: u64,
        per_attempt: u64,
    ) {
        let mut state = self.state.lock().unwrap();
        let starts_before = state.starts;
        state.revoked.insert(
            credential.to_owned(),
            Revocation {
                since: Instant::now(),
                requests_before: refused_so_far,
                starts_before,
                users,
                per_attempt,
            },
        );
    }

    /// The soak restored `credential`: after a 401 the operator may ask again only when
    /// something changed. It may notice the revocation once per object (the integration and
    /// each Subscription), and once more per operator start. A violation names the endpoints
    /// asked, so the object that asked again can be told.
    pub fn restored(
        &self,
        credential: &str,
        refused_now: &BTreeMap<String, u64>,
    ) -> Option<(u64, u64)> {
        let revocation = self.state.lock().unwrap().revoked.remove(credential)?;
        let starts = self.state.lock().unwrap().starts - revocation.starts_before;
        let asked: BTreeMap<&str, u64> = (refused_now.iter())
            .map(|(endpoint, n)| {
                let before = revocation.requests_before.get(endpoint).copied();
                (endpoint.as_str(), n - before.unwrap_or(0))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let made = asked.values().sum();
        let per_round = (1 + revocation.users) * revocation.per_attempt;
        let allowed = per_round * (1 + u64::from(starts));
        if made > allowed {
            self.violation(format!(
                "credential {credential} was refused (401) and asked {made} more times in {:.0}s \
                 with nothing changed (at most {allowed}: {} objects, {starts} operator starts): \
                 {asked:?}",
                revocation.since.elapsed().as_secs_f64(),
                1 + revocation.users
            ));
        }
        Some((made, allowed))
    }

    pub fn sample_rss(&self, kib: u64) {
        self.state.lock().unwrap().rss.push((Instant::now(), kib));
    }

    /// RSS samples taken in `[from, to)` after the observer started, in KiB.
    pub fn rss_between(&self, from: Duration, to: Duration) -> Vec<u64> {
        let state = self.state.lock().unwrap();
        state
            .rss
            .iter()
            .filter(|(at, _)| {
                let t = at.duration_since(self.started);
                t >= from && t < to
            })
            .map(|(_, kib)| *kib)
            .collect()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reads the operator's log from where it stopped last time: no secret, no panic.
    pub fn scan_log(&self, path: &std::path::Path) {
        use std::io::{Read as _, Seek as _};
        let Ok(mut file) = std::fs::File::open(path) else {
            return;
        };
        let offset = self.state.lock().unwrap().log_offset;
        if file.seek(std::io::SeekFrom::Start(offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return;
        }
        // Only whole lines: the operator may be half-way through one.
        let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&bytes[..end]);
        self.state.lock().unwrap().log_offset = offset + end as u64;
        self.check_leak(&text, "the operator's log");
        for line in text.lines().filter(|l| l.contains("panicked")) {
            self.violation(format!("the operator panicked: {line}"));
        }
    }

    /// Events and metrics hold no secret.
    pub fn scan(&self, text: &str, place: &str) {
        self.check_leak(text, place);
    }
}

impl Observer {
    fn count_users(&self, subscriptions: &[DynamicObject]) {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for subscription in subscriptions {
            *counts.entry(integration_ref(subscription)).or_default() += 1;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let integrations: BTreeSet<String> = state.owners.values().cloned().collect();
        for integration in integrations {
            let samples = state.users.entry(integration.clone()).or_default();
            samples.push_back((now, counts.get(&integration).copied().unwrap_or(0)));
            while samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(60))
            {
                samples.pop_front();
            }
        }
    }
}

fn integration_ref(subscription: &DynamicObject) -> String {
    subscription.data["spec"]["integrationRef"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
