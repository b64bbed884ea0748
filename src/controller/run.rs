//! Wiring: one watch and one store per kind and scope, shared by both controllers, the
//! controllers themselves, and the sweep that drops the memory of objects that are gone.
//! Does API-server I/O.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, SinkExt, StreamExt, future::join_all};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use tokio::sync::watch;

use super::{
    Context, Settings, Shared,
    index::{Index, integration_key},
    integration, is_ready,
    leader::Election,
    lock,
    pace::Pace,
    schedule::{Next, Schedule},
    slice_cache::SliceCache,
    subscription,
};
use crate::api::{BitbucketIntegration, RepositorySlice, SUBSCRIPTION_LABEL, Subscription};

/// The stores of every watched scope, for the sweep.
type Scopes = Arc<Mutex<Vec<(Store<BitbucketIntegration>, Store<Subscription>)>>>;

/// Runs both controllers in every watched scope until `shutdown` resolves. With a Lease in the
/// settings, the watches and stores run all along but the controllers only while this replica
/// leads; the Lease is released once they have stopped.
pub async fn run(
    shared: Arc<Shared>,
    waiting: Waiting,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::FutureExt::shared(shutdown);
    let election = shared
        .settings
        .lease
        .clone()
        .map(|lease| Election::start(shared.kube.clone(), lease));
    // Without a Lease this replica always leads (the sender lives as long as `run`).
    let (_always, alone) = watch::channel(true);
    let leading = election.as_ref().map_or(alone, Election::leading);
    let scopes = shared.settings.scopes();
    let stores = Scopes::default();
    let expected = scopes.len();
    let runs = scopes.into_iter().map(|namespace| {
        run_scope(
            Arc::clone(&shared),
            namespace,
            Arc::clone(&stores),
            shutdown.clone(),
            leading.clone(),
        )
    });
    tokio::select! {
        _ = join_all(runs) => {}
        () = ready_when_served(&shared, &waiting, expected) => {}
        () = sweep(&shared, &stores, expected) => {}
        () = forget_when_deposed(&shared, leading.clone()) => {}
        () = follow_the_leader(&shared, election.as_ref().map(Election::leader_address)) => {}
        () = crate::downstream::run(Arc::clone(&shared), leading.clone()) => {}
    }
    if let Some(election) = election {
        election.release().await;
    }
}

/// Says the replica is ready (`/readyz`) once its catalog can answer: every watched scope's
/// Subscriptions and RepositorySlices are cached, so a Service sends Argo CD and Flux to it
/// only then. Never returns.
async fn ready_when_served(shared: &Shared, waiting: &Waiting, scopes: usize) {
    waiting.set(Some(
        "filling the caches of Subscriptions and RepositorySlices".into(),
    ));
    while !shared.catalog.is_ready(scopes) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    waiting.set(None);
    futures::future::pending().await
}

/// Whenever this replica stops leading, forgets what it remembered: another leader may have
/// changed everything by the time it leads again. Never returns.
async fn forget_when_deposed(shared: &Shared, mut leading: watch::Receiver<bool>) {
    let mut led = *leading.borrow_and_update();
    shared.metrics.leader.set(i64::from(led));
    loop {
        if leading.changed().await.is_err() {
            return futures::future::pending().await;
        }
        let now = *leading.borrow_and_update();
        shared.metrics.leader.set(i64::from(now));
        if led && !now {
            shared.memory.clear();
        }
        led = now;
    }
}

/// Keeps where the leader receives webhooks, for the deliveries a standby relays to it. Never
/// returns.
async fn follow_the_leader(shared: &Shared, address: Option<watch::Receiver<Option<String>>>) {
    let Some(mut address) = address else {
        return futures::future::pending().await;
    };
    loop {
        shared
            .refreshes
            .set_leader(address.borrow_and_update().clone());
        if address.changed().await.is_err() {
            return futures::future::pending().await;
        }
    }
}

/// Every `settings.sweep`, drops the memory of objects no store holds any more, whatever way
/// they went (see [`super::memory`]). Never returns.
async fn sweep(shared: &Shared, scopes: &Scopes, expected: usize) {
    let mut ticks = tokio::time::interval(shared.settings.sweep);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (mut integrations, mut subscriptions) = (HashSet::new(), HashSet::new());
        {
            let scopes = lock(scopes);
            // An empty store before its first listing would make everything look gone.
            if scopes.len() < expected || !scopes.iter().all(|(i, s)| is_ready(i) && is_ready(s)) {
                continue;
            }
            for (i, s) in scopes.iter() {
                integrations.extend(i.state().iter().filter_map(|o| o.uid()));
                subscriptions.extend(s.state().iter().filter_map(|o| o.uid()));
            }
        }
        shared.catalog.sweep(&subscriptions);
        let swept = shared.memory.sweep(&integrations, &subscriptions);
        if swept != super::memory::Swept::default() {
            tracing::debug!(?swept, "dropped the memory of objects that are gone");
        }
    }
}

/// The watch of RepositorySlices, on every replica: the catalog serves lists from its cache,
/// and the leader plans its writes from it. The feed (returned beside it) drives it.
fn slice_watch(
    client: &kube::Client,
    namespace: &Option<String>,
    config: &watcher::Config,
) -> (
    Arc<SliceCache>,
    impl std::future::Future<Output = ()> + use<>,
) {
    let slices = Arc::new(SliceCache::default());
    let cache = Arc::clone(&slices);
    let selector = match &config.label_selector {
        Some(shard) => format!("{SUBSCRIPTION_LABEL},{shard}"),
        None => SUBSCRIPTION_LABEL.to_owned(),
    };
    let selected = config.clone().labels(&selector);
    let feed = watcher(api::<RepositorySlice>(client, namespace), selected)
        .default_backoff()
        .for_each(move |event| {
            if let Ok(event) = event {
                cache.apply(event);
            }
            futures::future::ready(())
        });
    (slices, feed)
}

pub(super) fn api<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// How every watch of a scope lists and watches: any resource version, and for a shard only
/// the objects its selector matches (slices included: they carry their Subscription's shard
/// label).
fn watch_config(settings: &super::Settings) -> watcher::Config {
    let config = watcher::Config::default().any_semantic();
    match &settings.label_selector {
        Some(selector) => config.labels(selector),
        None => config,
    }
}

/// One scope's watches and, while this replica leads, its controllers. One watch and one
/// store per kind, shared by both controllers: each reads the other kind from the very stream
/// that triggers it, and the store is updated before the event is delivered, so a reconcile
/// never sees an older state than the change that woke it (two independent watches could
/// disagree for a moment: a Subscription woken by its integration turning Ready could still
/// read it as not Ready). One store also means one copy of each object in memory. The watches
/// run while this replica does not lead too: a standby that takes over has its caches warm.
async fn run_scope(
    shared: Arc<Shared>,
    namespace: Option<String>,
    scopes: Scopes,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
    mut leading: watch::Receiver<bool>,
) {
    let client = &shared.kube;
    let config = watch_config(&shared.settings);
    let forget = Arc::clone(&shared);
    let (integrations, integration_feed) = SharedWatch::new(
        api::<BitbucketIntegration>(client, &namespace),
        &config,
        (|_| {}, integration::secrets_used),
        move |integration| {
            forget
                .memory
                .forget_integration(&integration.uid().unwrap_or_default());
        },
    );
    let forget = Arc::clone(&shared);
    let (subscriptions, subscription_feed) = SharedWatch::new(
        api::<Subscription>(client, &namespace),
        &config,
        (without_status_list, |s| {
            let namespace = s.metadata.namespace.as_deref().unwrap_or_default();
            vec![integration_key(namespace, &s.spec.integration_ref.name)]
        }),
        move |subscription| {
            forget
                .memory
                .forget_subscription(&subscription.uid().unwrap_or_default());
        },
    );
    let (slices, slice_feed) = slice_watch(client, &namespace, &config);
    lock(&scopes).push((integrations.store.clone(), subscriptions.store.clone()));
    shared.catalog.watch(
        namespace.clone(),
        integrations.store.clone(),
        subscriptions.store.clone(),
        Arc::clone(&slices),
    );
    let scope = namespace.as_deref().unwrap_or("(all)").to_owned();
    let terms = async {
        loop {
            let stores = (&integrations.store, &subscriptions.store);
            match leads_with_warm_stores(&mut leading, stores, shutdown.clone()).await {
                Some(true) => {}
                Some(false) => continue,
                None => return,
            }
            let controllers = controllers(
                &shared,
                &namespace,
                (&integrations, &subscriptions, &slices),
                shutdown.clone(),
            )
            .await;
            tracing::info!(namespace = %scope, "controllers started");
            shared.metrics.reconciling_scopes.inc();
            let mut deposed = leading.clone();
            let shut_down = tokio::select! {
                // Only a shutdown ends them: they drain gracefully first.
                () = controllers => true,
                // Dropping the controllers cancels their reconciles where they wait, before
                // another replica may take the Lease (the renew deadline is shorter).
                _ = deposed.wait_for(|leads| !*leads) => false,
            };
            shared.metrics.reconciling_scopes.dec();
            if shut_down {
                return;
            }
            tracing::warn!(namespace = %scope, "lost the lease: controllers stopped");
        }
    };
    tokio::select! {
        () = terms => {}
        () = futures::future::join3(integration_feed, subscription_feed, slice_feed).map(drop) => {}
    }
}

/// Waits until this replica leads and the watches' first lists are in the stores, so that
/// the controllers start with every object and hand each on at their pace (`scheduled`),
/// not all at once as a list ends. `Some(false)`: it no longer leads by then; `None`: shut
/// down, or a watch ended.
async fn leads_with_warm_stores(
    leading: &mut watch::Receiver<bool>,
    (integrations, subscriptions): (&Store<BitbucketIntegration>, &Store<Subscription>),
    shutdown: impl std::future::Future<Output = ()>,
) -> Option<bool> {
    let ready = async {
        leading.wait_for(|leads| *leads).await.ok()?;
        integrations.wait_until_ready().await.ok()?;
        subscriptions.wait_until_ready().await.ok()
    };
    tokio::select! {
        ready = ready => ready?,
        () = shutdown => return None,
    }
    Some(*leading.borrow())
}

/// Both controllers of one scope, fed from the shared watches from now on; they reconcile
/// every object in the (warm) stores first. The future ends when `shutdown` has drained them.
async fn controllers(
    shared: &Arc<Shared>,
    namespace: &Option<String>,
    (integration_watch, subscription_watch, slices): (
        &SharedWatch<BitbucketIntegration>,
        &SharedWatch<Subscription>,
        &Arc<SliceCache>,
    ),
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> {
    let controller_config =
        kube::runtime::controller::Config::default().concurrency(shared.settings.concurrency);
    let (integration_primary, integration_events) = integration_watch.subscribe().await;
    let (subscription_primary, subscription_events) = subscription_watch.subscribe().await;
    let (wake_integration, woken) = futures::channel::mpsc::unbounded();
    let context = Arc::new(Context {
        shared: Arc::clone(shared),
        integrations: integration_watch.store.clone(),
        subscriptions: subscription_watch.store.clone(),
        users: Arc::clone(&subscription_watch.index),
        slices: Arc::clone(slices),
        wake_integration,
        started: jiff::Timestamp::now(),
    });
    let ahead = 2 * usize::from(shared.settings.concurrency);
    let by_secret = Arc::clone(&integration_watch.index);
    let integrations_woken = futures::stream::select(
        integration::woken(&context, by_secret, namespace, subscription_events, woken),
        shared.wakes.integrations.wakes(),
    );
    let integrations = scheduled(
        Controller::for_stream(integration_primary, integration_watch.store.clone())
            .with_config(controller_config.clone())
            .graceful_shutdown_on(shutdown.clone()),
        (integration::reconcile, integration::error_policy),
        (Arc::clone(&context), ahead),
        integrations_woken,
    );
    let users = Arc::clone(&subscription_watch.index);
    let subscriptions_woken = futures::stream::select_all([
        subscription::woken(users, integration_events).boxed(),
        shared.refreshes.wakes().boxed(),
        shared.wakes.subscriptions.wakes().boxed(),
    ]);
    let subscriptions = scheduled(
        Controller::for_stream(subscription_primary, subscription_watch.store.clone())
            .with_config(controller_config)
            .graceful_shutdown_on(shutdown),
        (subscription::reconcile, subscription::error_policy),
        (context, ahead),
        subscriptions_woken,
    );
    futures::future::join(integrations, subscriptions).map(drop)
}

/// A kind the operator watches and reconciles.
trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Runs `controller` with `reconcile` and `error_policy`: every object in its (warm) store
/// once and the objects `woken` names, handed on at the pace it begins them with at most
/// `ahead` waiting (a [`Pace`]); keeping when each object is due next in a [`Schedule`] of
/// this term (kube is told to wait for a change, and the schedule wakes the controller when
/// the time comes).
fn scheduled<K, E, Reconciled>(
    controller: Controller<K>,
    (reconcile, error_policy): (
        impl Fn(Arc<K>, Arc<Context>) -> Reconciled + Send + 'static,
        impl Fn(Arc<K>, &E, Arc<Context>) -> Next + Send + Sync + 'static,
    ),
    (context, ahead): (Arc<Context>, usize),
    woken: impl futures::Stream<Item = ObjectRef<K>> + Send + 'static,
) -> impl std::future::Future<Output = ()>
where
    K: Watched,
    E: std::error::Error + Send + Sync + 'static,
    Reconciled: std::future::Future<Output = Result<Next, E>> + Send + 'static,
{
    let schedule = Arc::new(Schedule::<K>::default());
    let (after_reconcile, after_error) = (Arc::clone(&schedule), Arc::clone(&schedule));
    let pace = Pace::new(controller.store().state().iter().map(|o| &**o), ahead);
    let kind = K::kind(&()).into_owned();
    controller
        .reconcile_on(pace.objects(woken))
        .reconcile_on(schedule.due())
        .run(
            move |object, context| {
                pace.begins(&object);
                let schedule = Arc::clone(&after_reconcile);
                let reconciled = reconcile(Arc::clone(&object), context);
                async move {
                    schedule.set(&*object, reconciled.await?);
                    Ok(Action::await_change())
                }
            },
            move |object, error, context| {
                after_error.set(&*object, error_policy(Arc::clone(&object), error, context));
                Action::await_change()
            },
            context,
        )
        .for_each(move |result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, kind, "reconcile failed");
            }
            futures::future::ready(())
        })
}

/// One watch of a kind: it feeds `store` (objects kept without their managedFields and
/// last-applied-configuration, which the operator never reads), then hands each event to the
/// two consumers [`subscribe`](Self::subscribe) installed, if any: `primary`, the kind's own
/// controller (objects that exist), and `trigger`, the other controller's watch (deleted
/// objects too). Deleted objects are first passed to `forget`. A re-list's objects are handed
/// on once the store holds them all, with those it no longer lists as deleted (see
/// [`Relist`]). The feed (returned beside it) drives it and must be polled; it runs whether or
/// not anyone consumes.
///
/// Why not kube's shared reflector (`reflector::store_shared` + `Controller::for_shared_stream`,
/// behind `unstable-runtime`): its dispatcher forwards only applied objects and the initial
/// listing to subscribers, never deletions (kube-runtime 5.0, `Writer::dispatch_event` matches
/// `Apply` and `InitDone` and drops the rest), and a subscriber reads each object back from the
/// store, where a deleted one no longer is. The integration controller must see a Subscription
/// deleted (the integration's deletion may be waiting for it to go), and memory must be
/// forgotten on delete, so this fan-out forwards deleted objects to `trigger` itself.
struct SharedWatch<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    /// The objects by the key `new` was given.
    index: Arc<Index<K>>,
    consumers: Consumers<K>,
}

type Sender<K> = futures::channel::mpsc::Sender<Result<K, watcher::Error>>;
type Receiver<K> = futures::channel::mpsc::Receiver<Result<K, watcher::Error>>;
type Consumers<K> = Arc<tokio::sync::Mutex<Option<(Sender<K>, Sender<K>)>>>;

impl<K> SharedWatch<K>
where
    K: Watched,
{
    /// `trim` drops more of each object before it is cached (see [`lean`]); `keys` index
    /// the objects (see [`Index`]).
    fn new(
        api: Api<K>,
        config: &watcher::Config,
        (trim, keys): (impl Fn(&mut K) + Send + 'static, fn(&K) -> Vec<String>),
        forget: impl Fn(&K) + Send + 'static,
    ) -> (Self, futures::future::BoxFuture<'static, ()>) {
        let (store, writer) = reflector::store();
        let index = Index::new(keys);
        let indexing = Arc::clone(&index);
        let consumers: Consumers<K> = Arc::default();
        let watch = watcher(api, config.clone()).modify(move |object| {
            lean(object);
            trim(object);
        });
        let events = reflector::reflector(writer, watch).default_backoff();
        let (feeding, reader) = (Arc::clone(&consumers), store.clone());
        let feed = async move {
            let mut events = std::pin::pin!(events);
            let mut relist = Relist::default();
            while let Some(event) = events.next().await {
                let changes = event.map(|event| {
                    indexing.apply(&event);
                    let (exist, gone) = relist.changes(event, &reader);
                    gone.iter().for_each(|object| forget(object));
                    (exist, gone)
                });
                let mut consumers = feeding.lock().await;
                let Some(to) = consumers.as_mut() else {
                    continue;
                };
                // A closed receiver means its controllers have stopped (a lost lease).
                if !deliver(to, changes).await {
                    *consumers = None;
                }
            }
        }
        .boxed();
        let watch = Self {
            store,
            index,
            consumers,
        };
        (watch, feed)
    }

    /// New streams for a new pair of controllers: `primary` and `trigger` get every event
    /// from now on.
    async fn subscribe(&self) -> (Receiver<K>, Receiver<K>) {
        /// Events waiting for a slow consumer before the watch waits too.
        const BUFFER: usize = 1024;
        let (to_primary, primary) = futures::channel::mpsc::channel(BUFFER);
        let (to_trigger, trigger) = futures::channel::mpsc::channel(BUFFER);
        *self.consumers.lock().await = Some((to_primary, to_trigger));
        (primary, trigger)
    }
}

/// Turns a watch's events into the objects that exist and those gone, as the store shows
/// them. kube's reflector keeps a re-list's objects aside and puts them in the store all at
/// once, at `InitDone`: a reconcile woken by an `InitApply` read the object as it was before
/// the watch broke (or found none), and nothing woke it again once the store held the new
/// version (a spec edited meanwhile was never reconciled). So a re-list's objects are
/// delivered at `InitDone`, from the store, with those it no longer lists as gone (deleted
/// while the watch was down: no `Delete` ever comes for them). Those it lists at the version
/// the store held are not delivered again.
struct Relist<K: Resource> {
    /// What the store held when the re-list began.
    before: Option<Vec<Arc<K>>>,
}

impl<K: Resource> Default for Relist<K> {
    fn default() -> Self {
        Self { before: None }
    }
}

/// Objects that exist, and objects gone.
type Changes<K> = (Vec<Arc<K>>, Vec<Arc<K>>);

impl<K: Watched> Relist<K> {
    /// What `event` changed, once `store` shows it.
    fn changes(&mut self, event: watcher::Event<K>, store: &Store<K>) -> Changes<K> {
        match event {
            watcher::Event::Apply(object) => (vec![Arc::new(object)], Vec::new()),
            watcher::Event::Delete(object) => (Vec::new(), vec![Arc::new(object)]),
            watcher::Event::Init => {
                self.before = Some(store.state());
                Changes::default()
            }
            watcher::Event::InitApply(_) => Changes::default(),
            watcher::Event::InitDone => {
                let mut before: HashMap<ObjectRef<K>, Arc<K>> = (self.before.take())
                    .into_iter()
                    .flatten()
                    .map(|o| (ObjectRef::from_obj(&*o), o))
                    .collect();
                // What the list shows as it was handed on before needs no reconcile again (at
                // 50,000 objects, handing all on queued them all in kube's scheduler at once);
                // what it no longer shows is gone.
                let mut changed = Vec::new();
                for object in store.state() {
                    let was = before.remove(&ObjectRef::from_obj(&*object));
                    if was.is_none_or(|was| was.resource_version() != object.resource_version()) {
                        changed.push(object);
                    }
                }
                (changed, before.into_values().collect())
            }
        }
    }
}

/// Sends the objects that exist to both consumers, those gone to `trigger` (the other
/// controller's watch: an integration waits for its Subscriptions to go) and a watch error to
/// `primary`. Whether both still listen.
async fn deliver<K: Clone>(
    (primary, trigger): &mut (Sender<K>, Sender<K>),
    changes: Result<Changes<K>, watcher::Error>,
) -> bool {
    let (exist, gone) = match changes {
        Ok(changes) => changes,
        Err(error) => return primary.send(Err(error)).await.is_ok(),
    };
    let owned = |object: Arc<K>| Arc::try_unwrap(object).unwrap_or_else(|o| (*o).clone());
    for object in exist {
        let sent = primary.send(Ok((*object).clone())).await.is_ok()
            && trigger.send(Ok(owned(object))).await.is_ok();
        if !sent {
            return false;
        }
    }
    for object in gone {
        if trigger.send(Ok(owned(object))).await.is_err() {
            return false;
        }
    }
    true
}

/// Drops a Subscription's `status.repositories` from its cached copy: the first 1,000 entries
/// of the list its RepositorySlices hold, which the slices' cache already holds (at 5,000
/// Subscriptions, 21.6 of 118 MiB of heap). A reconcile puts them back before it compares or
/// writes the status (`subscription::with_status_list`).
fn without_status_list(subscription: &mut Subscription) {
    if let Some(status) = subscription.status.as_mut() {
        status.repositories = Vec::new();
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

/// Why the controllers cannot start yet, from the error of listing a kind: the CRDs are not
/// installed (404), the operator's ServiceAccount may not list them (401/403: RBAC, which no
/// wait fixes), or the API server could not be asked. Pure.
pub fn not_served(error: &kube::Error, scope: &Option<String>) -> String {
    let place = scope
        .as_deref()
        .map_or("cluster-wide".to_owned(), |ns| format!("in namespace {ns}"));
    match error {
        kube::Error::Api(status) if status.code == 404 => format!(
            "waiting for the scm.shippable.io CRDs to be installed (the API server does not serve \
             them {place})"
        ),
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => format!(
            "not allowed to list the scm.shippable.io kinds {place}: the operator's RBAC (its \
             ServiceAccount's Role or ClusterRole, deploy/) must allow get, list and watch: {}",
            status.message
        ),
        other => format!("cannot ask the API server whether it serves the CRDs {place}: {other}"),
    }
}

/// Waits until the API server serves the CRDs (in each watched scope), so an operator
/// installed before its CRDs waits instead of crash-looping. Meanwhile `waiting` holds why
/// (served by `/readyz`): missing CRDs and missing RBAC are told apart. Returns when served.
pub async fn wait_for_crds(client: &kube::Client, settings: &Settings, waiting: &Waiting) {
    let scopes = settings.scopes();
    let params = kube::api::ListParams::default().limit(1);
    let mut said = String::new();
    loop {
        let mut why = None;
        for scope in &scopes {
            let integrations = api::<BitbucketIntegration>(client, scope)
                .list(&params)
                .await;
            let subscriptions = api::<Subscription>(client, scope).list(&params).await;
            let slices = api::<RepositorySlice>(client, scope).list(&params).await;
            if let Some(e) = integrations.err().or(subscriptions.err()).or(slices.err()) {
                why = Some(not_served(&e, scope));
                break;
            }
        }
        let Some(why) = why else {
            waiting.set(None);
            return;
        };
        if why != said {
            tracing::warn!("{why}");
            said.clone_from(&why);
        }
        waiting.set(Some(why));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Why the operator is not ready (`None` when it is), for `/readyz`.
#[derive(Clone)]
pub struct Waiting(Arc<Mutex<Option<String>>>);

impl Waiting {
    /// Not ready yet, for no known reason (before the first look).
    pub fn starting() -> Self {
        Self(Arc::new(Mutex::new(Some("starting".into()))))
    }

    pub fn set(&self, why: Option<String>) {
        *lock(&self.0) = why;
    }

    /// Why it is not ready, or `None` when it is.
    pub fn why(&self) -> Option<String> {
        lock(&self.0).clone()
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn refused(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, "").with_code(code).boxed())
    }

    fn subscription(name: &str, generation: i64) -> Subscription {
        let spec = serde_json::json!({"integrationRef": {"name": "acme"}});
        let mut s = Subscription::new(name, serde_json::from_value(spec).unwrap());
        s.metadata.namespace = Some("ci".into());
        s.metadata.generation = Some(generation);
        s.metadata.resource_version = Some(format!("{generation}"));
        s
    }

    /// The names and generations of `objects`, sorted.
    fn seen(objects: &[Arc<Subscription>]) -> Vec<(String, i64)> {
        let mut seen: Vec<_> = (objects.iter())
            .map(|o| (o.name_any(), o.metadata.generation.unwrap_or_default()))
            .collect();
        seen.sort();
        seen
    }

    #[test]
    fn a_relist_is_handed_on_once_the_store_holds_it_with_what_it_no_longer_lists_as_gone() {
        let (store, mut writer) = reflector::store::<Subscription>();
        let mut relist = Relist::default();
        let mut watched = |event: watcher::Event<Subscription>| {
            writer.apply_watcher_event(&event);
            relist.changes(event, &store)
        };
        watched(watcher::Event::Init);
        watched(watcher::Event::InitApply(subscription("edited", 1)));
        watched(watcher::Event::InitApply(subscription("deleted", 1)));
        let (exist, gone) = watched(watcher::Event::InitDone);
        assert_eq!(seen(&exist), [("deleted".into(), 1), ("edited".into(), 1)]);
        assert!(gone.is_empty());
        watched(watcher::Event::Apply(subscription("unchanged", 1)));
        // The watch broke: "edited" was edited, "deleted" deleted and "created" created
        // meanwhile. Nothing is handed on before the store holds the new versions, and what
        // did not change is not handed on again.
        let (exist, _) = watched(watcher::Event::Init);
        assert!(exist.is_empty());
        for object in [
            subscription("edited", 2),
            subscription("created", 1),
            subscription("unchanged", 1),
        ] {
            let (exist, gone) = watched(watcher::Event::InitApply(object));
            assert!(exist.is_empty() && gone.is_empty());
        }
        let (exist, gone) = watched(watcher::Event::InitDone);
        assert_eq!(seen(&exist), [("created".into(), 1), ("edited".into(), 2)]);
        assert_eq!(seen(&gone), [("deleted".into(), 1)]);
        let (exist, _) = watched(watcher::Event::Apply(subscription("edited", 3)));
        assert_eq!(seen(&exist), [("edited".into(), 3)]);
    }

    #[test]
    fn missing_crds_and_missing_rbac_are_told_apart() {
        let missing = not_served(&refused(404, "the server could not find"), &None);
        assert!(
            missing.starts_with("waiting for the scm.shippable.io CRDs"),
            "{missing}"
        );
        let forbidden = not_served(
            &refused(
                403,
                "bitbucketintegrations.scm.shippable.io is forbidden: User \
                 \"system:serviceaccount:ops:bitbucket-operator\" cannot list resource",
            ),
            &Some("ops".into()),
        );
        assert!(
            forbidden
                .starts_with("not allowed to list the scm.shippable.io kinds in namespace ops"),
            "{forbidden}"
        );
        assert!(forbidden.contains("cannot list resource"), "{forbidden}");
        assert!(!forbidden.contains("installed"), "{forbidden}");
    }
}
