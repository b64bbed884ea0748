//! The two controllers and what they share. [`run`] starts both for every watched namespace (or
//! the whole cluster) and returns when they have shut down. Does API-server and Bitbucket I/O.

pub mod backoff;
pub mod credentials;
pub mod integration;
pub mod subscription;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, SinkExt, StreamExt, future::join_all};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use crate::{
    api::{BitbucketIntegration, Subscription},
    bitbucket::TransportConfig,
    metrics::Metrics,
};
use backoff::Backoff;
use credentials::ClientCache;

/// The Kubernetes field manager of each controller's status writes.
pub const INTEGRATION_MANAGER: &str = "bitbucket-operator/integration";
pub const SUBSCRIPTION_MANAGER: &str = "bitbucket-operator/subscription";

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; the whole cluster when empty.
    pub namespaces: Vec<String>,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            concurrency: 8,
            transport: TransportConfig::default(),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            recheck: Duration::from_secs(30),
            instance: "bitbucket-operator".into(),
            summaries_between_listings: 5,
            interval_override: None,
        }
    }
}

impl Settings {
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
    pub clients: ClientCache,
    pub backoff: Backoff,
    pub listings: subscription::listing::ListingCache,
    pub recorder: Recorder,
    /// Which integration each Subscription pointed at when last seen, so re-pointing one wakes
    /// the integration it left (whose deletion may be waiting for it).
    pub last_integration: Mutex<HashMap<ObjectRef<Subscription>, String>>,
    /// The last validation of each integration (by UID), to call Bitbucket only when due.
    pub validations: Mutex<HashMap<String, integration::Validation>>,
    /// The last sync of each Subscription (by UID), to list only when due.
    pub syncs: Mutex<HashMap<String, subscription::Sync>>,
}

impl Shared {
    pub fn new(kube: kube::Client, mut settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        settings.transport.observer = Some(metrics.bitbucket_observer());
        let reporter = Reporter {
            controller: "bitbucket-operator".into(),
            instance: Some(settings.instance.clone()),
        };
        Arc::new(Self {
            recorder: Recorder::new(kube.clone(), reporter),
            backoff: Backoff::new(settings.backoff_base, settings.backoff_max),
            kube,
            settings,
            metrics,
            clients: ClientCache::default(),
            listings: Default::default(),
            last_integration: Mutex::new(HashMap::new()),
            validations: Mutex::new(HashMap::new()),
            syncs: Mutex::new(HashMap::new()),
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

    /// Drops what is remembered about a deleted Subscription (its `last_integration` entry
    /// goes in the integration controller's trigger, which keeps that map).
    fn forget_subscription(&self, subscription: &Subscription) {
        let uid = subscription.uid().unwrap_or_default();
        lock(&self.syncs).remove(&uid);
        self.backoff.reset(&uid);
    }

    /// Publishes an Event about `object`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// One watched scope (a namespace, or the cluster): the stores both controllers read.
pub struct Context {
    pub shared: Arc<Shared>,
    /// Integrations as the Subscription controller's trigger stream saw them.
    pub integrations: Store<BitbucketIntegration>,
    /// Subscriptions as the integration controller's trigger stream saw them.
    pub subscriptions: Store<Subscription>,
}

/// Runs both controllers in every watched scope until `shutdown` resolves.
pub async fn run(
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::FutureExt::shared(shutdown);
    let scopes: Vec<Option<String>> = if shared.settings.namespaces.is_empty() {
        vec![None]
    } else {
        shared
            .settings
            .namespaces
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let runs = scopes
        .into_iter()
        .map(|namespace| run_scope(Arc::clone(&shared), namespace, shutdown.clone()));
    join_all(runs).await;
}

fn api<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

async fn run_scope(
    shared: Arc<Shared>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let client = &shared.kube;
    let config = watcher::Config::default().any_semantic();
    let controller_config =
        kube::runtime::controller::Config::default().concurrency(shared.settings.concurrency);
    // One watch and one store per kind, shared by both controllers: each reads the other kind
    // from the very stream that triggers it, and the store is updated before the event is
    // delivered, so a reconcile never sees an older state than the change that woke it (two
    // independent watches could disagree for a moment: a Subscription woken by its integration
    // turning Ready could still read it as not Ready). One store also means one copy of each
    // object in memory.
    let integration_watch = SharedWatch::new(
        api::<BitbucketIntegration>(client, &namespace),
        &config,
        // What a deleted integration leaves is dropped when its finalizer is released.
        |_| {},
    );
    let forget = Arc::clone(&shared);
    let subscription_watch = SharedWatch::new(
        api::<Subscription>(client, &namespace),
        &config,
        move |subscription| forget.forget_subscription(subscription),
    );
    let integrations =
        Controller::for_stream(integration_watch.primary, integration_watch.store.clone())
            .with_config(controller_config.clone());
    let subscriptions =
        Controller::for_stream(subscription_watch.primary, subscription_watch.store.clone())
            .with_config(controller_config);
    let context = Arc::new(Context {
        shared: Arc::clone(&shared),
        integrations: integration_watch.store,
        subscriptions: subscription_watch.store,
    });
    let (integration_events, subscription_events) =
        (integration_watch.trigger, subscription_watch.trigger);
    let subscriptions_primary = subscriptions.store();

    let integrations = integration::wire(integrations, &context, &namespace, subscription_events)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            integration::reconcile,
            integration::error_policy,
            Arc::clone(&context),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "integration reconcile failed");
            }
        });
    let subscriptions =
        subscription::wire(subscriptions, subscriptions_primary, integration_events)
            .graceful_shutdown_on(shutdown)
            .run(
                subscription::reconcile,
                subscription::error_policy,
                Arc::clone(&context),
            )
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "subscription reconcile failed");
                }
            });
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "controllers started"
    );
    tokio::select! {
        _ = futures::future::join(integrations, subscriptions) => {}
        () = futures::future::join(integration_watch.feed, subscription_watch.feed).map(drop) => {}
    }
}

/// One watch of a kind: it feeds `store` (objects kept without their managedFields and
/// last-applied-configuration, which the operator never reads), then hands each event to two
/// consumers: `primary`, the kind's own controller (objects that exist), and `trigger`, the
/// other controller's watch (deleted objects too). Deleted objects are first passed to
/// `forget`. `feed` drives it and must be polled.
struct SharedWatch<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    primary: futures::channel::mpsc::Receiver<Result<K, watcher::Error>>,
    trigger: futures::channel::mpsc::Receiver<Result<K, watcher::Error>>,
    feed: futures::future::BoxFuture<'static, ()>,
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn new(api: Api<K>, config: &watcher::Config, forget: impl Fn(&K) + Send + 'static) -> Self {
        /// Events waiting for a slow consumer before the watch waits too.
        const BUFFER: usize = 1024;
        let (store, writer) = reflector::store();
        let (mut to_primary, primary) = futures::channel::mpsc::channel(BUFFER);
        let (mut to_trigger, trigger) = futures::channel::mpsc::channel(BUFFER);
        let events = reflector::reflector(writer, watcher(api, config.clone()).modify(lean))
            .default_backoff();
        let feed = async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                // A closed receiver means its controller has stopped: shutting down.
                let sent = match event {
                    Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                        to_primary.send(Ok(object.clone())).await.is_ok()
                            && to_trigger.send(Ok(object)).await.is_ok()
                    }
                    Ok(watcher::Event::Delete(object)) => {
                        forget(&object);
                        to_trigger.send(Ok(object)).await.is_ok()
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => true,
                    Err(error) => to_primary.send(Err(error)).await.is_ok(),
                };
                if !sent {
                    return;
                }
            }
        }
        .boxed();
        Self {
            store,
            primary,
            trigger,
            feed,
        }
    }
}

/// Drops what the operator never reads from a cached object: its managedFields (often larger
/// than the object) and kubectl's last-applied-configuration (a copy of the spec).
fn lean<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The object reference of the integration a Subscription points at.
pub fn integration_of(subscription: &Subscription) -> ObjectRef<BitbucketIntegration> {
    ObjectRef::new(&subscription.spec.integration_ref.name)
        .within(&subscription.namespace().unwrap_or_default())
}

/// Waits until the API server serves both CRDs (in each watched scope), so an operator
/// installed before its CRDs waits instead of crash-looping. Returns early on `shutdown`.
pub async fn wait_for_crds(client: &kube::Client, settings: &Settings) {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let params = kube::api::ListParams::default().limit(1);
    let mut waited = Duration::ZERO;
    let step = Duration::from_secs(2);
    loop {
        let mut missing = None;
        for scope in &scopes {
            let integrations = api::<BitbucketIntegration>(client, scope)
                .list(&params)
                .await;
            let subscriptions = api::<Subscription>(client, scope).list(&params).await;
            if let Some(e) = integrations.err().or(subscriptions.err()) {
                missing = Some(e);
                break;
            }
        }
        let Some(error) = missing else { return };
        if waited.as_secs().is_multiple_of(30) {
            tracing::warn!(error = %error, "waiting for the scm.shippable.io CRDs to be installed and served");
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
}
