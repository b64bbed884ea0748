//! The two controllers and what they share. [`run`] starts both for every watched namespace (or
//! the whole cluster) and returns when they have shut down. Does API-server and Bitbucket I/O.
//!
//! Module map: `run` (watches, stores and the controllers' wiring), `integration` and
//! `subscription` (one folder per kind: the reconcile driver in `mod.rs`, a file per step),
//! `credentials` (from an integration and its Secrets to a Bitbucket client), `listing`
//! (listings shared between Subscriptions), `error` (classes
//! of failure and what each makes the controller do), `finish` (how every reconcile ends:
//! status, memory, Events), `memory` (all that is remembered per object, and its one way out),
//! `backoff`.

pub mod backoff;
pub mod budget;
pub mod credentials;
pub mod error;
pub mod events;
pub mod finish;
pub mod index;
pub mod integration;
pub mod leader;
pub mod listing;
pub mod memory;
pub mod pace;
pub mod recovery;
pub mod refresh;
mod run;
pub mod schedule;
pub mod slice_cache;
pub mod subscription;
pub mod underway;
pub mod wakes;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        events::{Event, Reporter},
        reflector::{ObjectRef, Store},
    },
};

use crate::{
    api::{BitbucketIntegration, Subscription, text},
    bitbucket::TransportConfig,
    metrics::Metrics,
};
use backoff::Backoff;
use finish::Announcement;
use memory::Memory;
pub use run::{Waiting, run, wait_for_crds};

/// The Kubernetes field manager of each controller's status writes.
pub const INTEGRATION_MANAGER: &str = "bitbucket-operator/integration";
pub const SUBSCRIPTION_MANAGER: &str = "bitbucket-operator/subscription";

/// How long a reconcile runs before it is logged as slow: longer than a listing of 100,000
/// repositories takes, with retries, and than the API server's own request timeout.
pub const SLOW_RECONCILE: std::time::Duration = std::time::Duration::from_secs(90);

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; the whole cluster when empty.
    pub namespaces: Vec<String>,
    /// Only the integrations and Subscriptions this label selector matches (a shard); `None`:
    /// all. See [`crate::api::SHARD_LABEL`].
    pub label_selector: Option<String>,
    /// Reconciles run at once, per controller and namespace.
    pub concurrency: u16,
    /// HTTP settings of the Bitbucket clients.
    pub transport: TransportConfig,
    /// First backoff after a transient failure (doubling, with jitter).
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// How often a state that waits on another object (a blocked deletion, a missing Secret or
    /// integration) looks again, in case the watch event that ends the wait was missed. These
    /// checks read the API server only; they never call Bitbucket.
    pub recheck: Duration,
    /// Name reported in Events (`reportingInstance`), e.g. the pod name.
    pub instance: String,
    /// How many intervals in a row an unchanged one-request summary may stand in for a full
    /// repository listing (Cloud); then the full listing runs again, whatever the summary says.
    pub summaries_between_listings: u32,
    /// Replaces every `validationInterval` and `syncInterval` (whose minimum is a minute), so
    /// tests and benchmarks can watch many intervals pass. Never set in production.
    pub interval_override: Option<Duration>,
    /// How often the memory of objects that are gone is swept (see [`memory`]).
    pub sweep: Duration,
    /// The Lease to lead with, when several replicas run; `None`: this replica alone.
    pub lease: Option<leader::LeaseSettings>,
    /// Which GitOps tools are told when a list changes.
    pub downstream: crate::downstream::DownstreamSettings,
    /// Where Bitbucket reaches the webhook receiver (`--webhook-url`), for the hooks the
    /// operator registers.
    pub webhook_url: Option<url::Url>,
    /// How long the work webhook deliveries ask for waits for a burst of them to end.
    pub settle: subscription::refetch::Settle,
    /// The window request budgets count in: an hour, as Bitbucket counts, except where a test
    /// or benchmark speeds time up (the window then stands for an hour: a budget of 1,000 an
    /// hour is 1,000 a window).
    pub budget_window: Duration,
    /// Request budgets on (see [`budget`]); off only for the benchmark's baseline, the
    /// operator as it was before it had them.
    pub request_budgets: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            label_selector: None,
            concurrency: 8,
            transport: TransportConfig::default(),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            recheck: Duration::from_secs(30),
            instance: "bitbucket-operator".into(),
            summaries_between_listings: 5,
            interval_override: None,
            sweep: Duration::from_secs(300),
            lease: None,
            downstream: crate::downstream::DownstreamSettings::default(),
            webhook_url: None,
            settle: subscription::refetch::Settle::default(),
            budget_window: Duration::from_secs(3600),
            request_budgets: true,
        }
    }
}

impl Settings {
    /// The watched scopes: each namespace, or the whole cluster (`None`).
    pub fn scopes(&self) -> Vec<Option<String>> {
        if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        }
    }

    /// The interval to use for an object: the override, else its spec's, else `default`.
    pub fn interval(&self, spec: &crate::api::Interval, default: Duration) -> Duration {
        self.interval_override
            .unwrap_or_else(|| spec.duration().unwrap_or(default))
    }
}

/// The value of the sync annotation on `object`, if any.
pub fn sync_request<K: ResourceExt>(object: &K) -> Option<String> {
    object
        .annotations()
        .get(crate::api::SYNC_REQUESTED_AT_ANNOTATION)
        .cloned()
}

/// What both controllers share across namespaces.
pub struct Shared {
    pub kube: kube::Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// All that is remembered per object.
    pub memory: Memory,
    pub backoff: Backoff,
    pub events: events::Events,
    /// The complete repository lists this replica serves (leader or not).
    pub catalog: crate::catalog::Catalog,
    /// Refreshes asked for by webhook deliveries.
    pub refreshes: refresh::Refreshes,
    /// The objects waiting for a Bitbucket server to answer again.
    pub recovery: recovery::Recovery,
    /// Wake-ups from inside the operator, for the controllers running in this process.
    pub wakes: wakes::Wakes,
    /// Lists that changed, for Argo CD and Flux to be told.
    pub downstream: crate::downstream::Changes,
}

impl Shared {
    pub fn new(kube: kube::Client, mut settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        settings.transport.observer = Some(metrics.bitbucket_observer());
        let reporter = Reporter {
            controller: "bitbucket-operator".into(),
            instance: Some(settings.instance.clone()),
        };
        let mut memory = Memory::counting_blocked_deletions(metrics.blocked_deletions.clone());
        memory.budgets = Arc::new(match settings.request_budgets {
            true => budget::Budgets::new(settings.budget_window),
            false => budget::Budgets::off(),
        });
        let budgets = Arc::clone(&memory.budgets);
        metrics.read_budgets_with(Box::new(move || budgets.snapshots(Instant::now())));
        let downstream = crate::downstream::Changes::new(&settings.downstream);
        Arc::new(Self {
            events: events::Events::new(kube.clone(), reporter),
            backoff: Backoff::new(settings.backoff_base, settings.backoff_max),
            kube,
            settings,
            metrics,
            memory,
            catalog: crate::catalog::Catalog::default(),
            refreshes: refresh::Refreshes::default(),
            recovery: recovery::Recovery::default(),
            wakes: wakes::Wakes::default(),
            downstream,
        })
    }

    /// Writes `status` as `object`'s whole status unless it already is, counting the write in
    /// the metrics of `controller`; returns the resourceVersion written, if it wrote.
    pub async fn write_status<K, S>(
        &self,
        object: &K,
        previous: &S,
        status: &S,
        field_manager: &str,
        controller: &'static str,
    ) -> Result<Option<String>, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize + PartialEq,
    {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.kube.clone(), &namespace);
        let written =
            crate::status::apply::apply_status(&api, object, Some(previous), status, field_manager)
                .await?;
        if written.is_some() {
            self.metrics
                .status_writes
                .get_or_create(&crate::metrics::ControllerLabels { controller })
                .inc();
        }
        Ok(written)
    }

    /// Publishes an Event about `object`; failures are logged, never fatal.
    pub async fn announce<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        announcement: Announcement,
    ) {
        let event = Event {
            type_: announcement.type_,
            reason: announcement.reason,
            // Events are capped shorter than conditions: they are many, and read in lists.
            note: Some(text::for_the_api(&announcement.note, 1000).into_owned()),
            action: announcement.action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.events.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason = %event.reason, "could not publish an Event");
        }
    }

    /// Runs one reconcile of `controller`, counted and timed in the metrics; one that runs
    /// longer than [`SLOW_RECONCILE`] is logged.
    pub async fn measured<T>(
        &self,
        controller: &'static str,
        reconcile: impl std::future::Future<Output = T>,
    ) -> T {
        let labels = crate::metrics::ControllerLabels { controller };
        self.metrics.reconciles.get_or_create(&labels).inc();
        let started = std::time::Instant::now();
        let mut reconcile = std::pin::pin!(reconcile);
        let result = match tokio::time::timeout(SLOW_RECONCILE, &mut reconcile).await {
            Ok(result) => result,
            Err(_) => {
                // Said once, in the reconcile's span (which names the object): a reconcile that
                // never ends would hold every later change of its object back, unseen.
                tracing::warn!(
                    controller,
                    "a reconcile has run for over {SLOW_RECONCILE:?}"
                );
                reconcile.await
            }
        };
        self.metrics
            .reconcile_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Counts a failure of `controller` in the metrics (its reason is a bounded label).
    pub fn count_error(&self, controller: &'static str, reason: &'static str) {
        self.metrics
            .reconcile_errors
            .get_or_create(&crate::metrics::ErrorLabels { controller, reason })
            .inc();
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The object of a watch event; an error (the watch retries with backoff) is logged and
/// skipped, as kube's controller does with those of the watches it is given.
pub(crate) fn watched<K>(event: Result<K, kube::runtime::watcher::Error>) -> Option<K> {
    event
        .map_err(|error| tracing::debug!(%error, "a watch failed"))
        .ok()
}

/// One watched scope (a namespace, or the cluster): the stores both controllers read.
pub struct Context {
    pub shared: Arc<Shared>,
    /// Integrations as the Subscription controller's trigger stream saw them.
    pub integrations: Store<BitbucketIntegration>,
    /// Subscriptions as the integration controller's trigger stream saw them.
    pub subscriptions: Store<Subscription>,
    /// The Subscriptions of each integration (by [`index::integration_key`]).
    pub users: Arc<index::Index<Subscription>>,
    /// The RepositorySlices of the scope, by name and by Subscription.
    pub slices: Arc<slice_cache::SliceCache>,
    /// Wakes an integration (the integration controller reconciles it soon).
    pub wake_integration: futures::channel::mpsc::UnboundedSender<ObjectRef<BitbucketIntegration>>,
    /// When these controllers started (this replica's term as leader).
    pub started: jiff::Timestamp,
}

/// The object reference of the integration a Subscription points at.
pub fn integration_of(subscription: &Subscription) -> ObjectRef<BitbucketIntegration> {
    ObjectRef::new(&subscription.spec.integration_ref.name)
        .within(&subscription.namespace().unwrap_or_default())
}

/// `name` as `map` already holds it as a key, shared, or else a new one: the compact caches
/// keep a namespace or a Subscription's UID once however many of their entries name it.
pub(crate) fn shared_name<V>(map: &std::collections::HashMap<Arc<str>, V>, name: &str) -> Arc<str> {
    match map.get_key_value(name) {
        Some((shared, _)) => Arc::clone(shared),
        None => Arc::from(name),
    }
}

/// Whether a store has seen its first complete listing.
pub(crate) fn is_ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some()
}
