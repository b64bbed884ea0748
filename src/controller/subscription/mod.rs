//! The Subscription controller: checks the Subscription against its integration, lists the
//! repositories it can see (sharing listings between Subscriptions of one scope), applies the
//! filters and keeps the sorted, bounded list in status. Failures keep the last list. Does
//! API-server and Bitbucket I/O.
//!
//! A reconcile ([`reconcile`] → `sync`) reads as its steps: dereference the integration and its
//! client (`dereference`), check they fit (`check`), decide whether a listing is due
//! (`check::due`), list (`super::listing`), write the RepositorySlices (`publish`), build the
//! status (`report`), finish (`finish`).

pub mod check;
pub mod filter;
pub mod publish;
pub mod refetch;
pub mod report;
pub mod slices;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    Api, ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

use super::{
    Context, SUBSCRIPTION_MANAGER, Shared,
    budget::{self, NotSent},
    credentials::{self, ResolveError, Resolved},
    error::{Class, Reason},
    finish::{self, Draft, finish},
    index::{Index, integration_key},
    integration_of, is_ready,
    listing::{Fetched, Want},
    memory::{LastSync, Validation},
    recovery::{self, Waiter},
    schedule::Next,
    watched,
};
use crate::{
    api::{
        BitbucketIntegration, IntegrationSummary, MAX_LISTED_REPOSITORIES, Repository,
        Subscription, SubscriptionStatus,
        conditions::{READY, reasons},
    },
    bitbucket::{self, ListScope, Priority},
    status::conditions,
};
use check::{SyncAsk, SyncDue};
use report::SyncOutcome;

const CONTROLLER: &str = "subscription";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Why a Subscription is not Ready, or a reconcile could not finish: each variant is a
/// condition reason (see [`Reason`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("BitbucketIntegration {0} not found")]
    IntegrationNotFound(String),
    /// The integration's shard and the Subscription's, as their labels name them.
    #[error(
        "BitbucketIntegration {name} is in {theirs} and this Subscription in {ours}: no operator \
         owns both; give both the same label {label}",
        label = crate::api::SHARD_LABEL
    )]
    IntegrationInAnotherShard {
        name: String,
        theirs: String,
        ours: String,
    },
    /// `why` is empty, or ": " and the integration's own Ready message.
    #[error("BitbucketIntegration {name} is not ready{why}")]
    IntegrationNotReady { name: String, why: String },
    /// The integration's Secrets give no credential (the integration itself says so).
    #[error("BitbucketIntegration {name}: {source}")]
    IntegrationCredential { name: String, source: ResolveError },
    /// The Subscription cannot work with its integration (e.g. a workspace on Data Center).
    #[error("{0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Bitbucket(#[from] bitbucket::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The listing succeeded, but writing its RepositorySlices failed.
    #[error("writing the RepositorySlices failed (readers keep the last complete list): {0}")]
    Slices(kube::Error),
}

impl Reason for Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::IntegrationNotFound(_) => reasons::INTEGRATION_NOT_FOUND,
            Self::IntegrationInAnotherShard { .. } => reasons::INTEGRATION_IN_ANOTHER_SHARD,
            Self::IntegrationNotReady { .. } | Self::IntegrationCredential { .. } => {
                reasons::INTEGRATION_NOT_READY
            }
            Self::InvalidSpec(_) => reasons::INVALID_SPEC,
            Self::Bitbucket(e) => Reason::reason(e),
            Self::Kube(e) => e.reason(),
            Self::Slices(_) => reasons::SLICES_NOT_WRITTEN,
        }
    }

    fn class(&self) -> Class {
        match self {
            Self::IntegrationNotFound(_)
            | Self::IntegrationNotReady { .. }
            | Self::IntegrationCredential { .. } => Class::Waiting,
            Self::InvalidSpec(_) | Self::IntegrationInAnotherShard { .. } => Class::Stalled,
            Self::Bitbucket(e) => Reason::class(e),
            Self::Kube(e) | Self::Slices(e) => e.class(),
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Bitbucket(e) => Reason::message(e),
            _ => self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Bitbucket(e) => Reason::retry_after(e),
            _ => None,
        }
    }
}

finish::reconciled_kind!(Subscription {
    status: SubscriptionStatus,
    controller: CONTROLLER,
    manager: SUBSCRIPTION_MANAGER,
    memory: subscription,
    waiter: Subscription,
    announcements: report::announcements,
});

/// The Subscriptions woken when their integration changes (e.g. becomes Ready, or its
/// credential rotates). `integration_events` is the stream feeding `context.integrations`;
/// `users` the Subscriptions by the integration they use.
pub fn woken(
    users: Arc<Index<Subscription>>,
    integration_events: impl futures::Stream<Item = Result<BitbucketIntegration, watcher::Error>>
    + Send
    + 'static,
) -> impl futures::Stream<Item = ObjectRef<Subscription>> + Send + 'static {
    use futures::StreamExt;
    integration_events
        .filter_map(|integration| futures::future::ready(watched(integration)))
        .flat_map(move |integration| {
            let namespace = integration.namespace().unwrap_or_default();
            futures::stream::iter(users.get(&integration_key(&namespace, &integration.name_any())))
        })
}

/// Reconciles one Subscription.
pub async fn reconcile(
    subscription: Arc<Subscription>,
    context: Arc<Context>,
) -> Result<Next, Error> {
    let reconcile = async {
        let subscription = with_status_list(&subscription, &context).await?;
        sync(&subscription, &context).await
    };
    context.shared.measured(CONTROLLER, reconcile).await
}

/// The Subscription with its `status.repositories`, which its cached copy is kept without (see
/// `run::without_status_list`): the first 1,000 of the complete list its slices hold, from the
/// catalog when that is the list the status names, else read from the API server (right after
/// the slices changed, before the cache shows them all).
async fn with_status_list<'a>(
    subscription: &'a Subscription,
    context: &Context,
) -> Result<std::borrow::Cow<'a, Subscription>, kube::Error> {
    use std::borrow::Cow;
    let Some(status) = subscription.status.as_ref() else {
        return Ok(Cow::Borrowed(subscription));
    };
    let count = usize::try_from(status.repository_count.unwrap_or(0)).unwrap_or(0);
    if count == 0 || !status.repositories.is_empty() {
        return Ok(Cow::Borrowed(subscription));
    }
    // Right after start-up the slices may not be listed yet: wait for them (their watch is
    // fed apart from this controller) rather than read every Subscription back.
    let _ = tokio::time::timeout(Duration::from_secs(10), context.slices.wait_until_ready()).await;
    let (namespace, name) = (
        subscription.namespace().unwrap_or_default(),
        subscription.name_any(),
    );
    if let Ok(crate::catalog::Served::Complete(list)) =
        context.shared.catalog.list(&namespace, &name)
        && status
            .slices
            .as_deref()
            .is_some_and(|named| list.is_named_by(named))
        && list.len() == count
    {
        let mut restored = subscription.clone();
        let shown = list.first(MAX_LISTED_REPOSITORIES);
        restored.status.get_or_insert_default().repositories = shown;
        return Ok(Cow::Owned(restored));
    }
    let api: Api<Subscription> = Api::namespaced(context.shared.kube.clone(), &namespace);
    Ok(Cow::Owned(api.get_status(&name).await?))
}

/// After an error the reconcile could not describe in status.
pub fn error_policy(subscription: Arc<Subscription>, error: &Error, context: Arc<Context>) -> Next {
    context.shared.count_error(CONTROLLER, error.reason());
    tracing::warn!(subscription = %subscription.name_any(), %error, "reconcile failed");
    finish::next(&context.shared, &*subscription, error)
}

/// Wakes the integration this Subscription pointed at when last reconciled, if it now points
/// elsewhere: that integration's deletion may be waiting for it to go.
fn wake_the_integration_left(subscription: &Subscription, context: &Context) {
    let now = integration_of(subscription);
    let left = context
        .shared
        .memory
        .subscription(&finish::uid(subscription), |m| {
            m.integration.replace(now.name.clone())
        });
    if let Some(left) = left.filter(|left| *left != now.name) {
        let namespace = now.namespace.as_deref().unwrap_or_default();
        // Fails only when the integration controller has stopped, and with it the need.
        let _ = (context.wake_integration).unbounded_send(ObjectRef::new(&left).within(namespace));
    }
}

async fn sync(subscription: &Subscription, context: &Context) -> Result<Next, Error> {
    wake_the_integration_left(subscription, context);
    if subscription.metadata.deletion_timestamp.is_some() {
        return Ok(Next::OnChange);
    }
    if !context.slices.is_ready() {
        // The slices are not listed yet: a plan now would write them all again.
        return Ok(Next::After(Duration::from_millis(500)));
    }
    if let Some(wait) = publish::unsettled(&context.shared, &context.slices, subscription) {
        return Ok(Next::After(wait));
    }
    let shared = &context.shared;
    let mut draft = Draft::begin(&shared.memory, subscription);
    let mut ask = SyncAsk {
        generation: subscription.metadata.generation,
        requested: super::sync_request(subscription),
        interval: (shared.settings).interval(&subscription.spec.sync_interval, DEFAULT_INTERVAL),
        stretched_from: None,
        refresh: (shared.memory).subscription(&finish::uid(subscription), |m| m.refresh),
    };
    let outcome = if subscription.spec.suspend {
        SyncOutcome::Suspended
    } else {
        match dereference(subscription, context).await {
            Dereferenced::Later(wait) => return Ok(Next::After(wait)),
            Dereferenced::Failed(Error::Kube(e)) => return Err(Error::Kube(e)),
            Dereferenced::Failed(error) => SyncOutcome::Failed {
                error,
                integration: None,
            },
            Dereferenced::Found(found) => {
                keep_within_budget(&mut ask, subscription, &found);
                list_when_due(context, subscription, &mut draft, &ask, found).await
            }
        }
    };
    outcome.trace(subscription, ask.requested.as_deref());
    let status = report::status(&draft.shown, &ask, &outcome, &conditions::now());
    finish(shared, subscription, &draft, &status).await?;
    tell_downstream(shared, subscription, &status);
    Ok(after(context, subscription, &ask, outcome))
}

/// Tells Argo CD and Flux (when enabled) that the list changed: the status now names other
/// slices than the cached Subscription's.
fn tell_downstream(shared: &Shared, subscription: &Subscription, status: &SubscriptionStatus) {
    let before = subscription.status.as_ref().and_then(|s| s.slices.as_ref());
    if let Some(slices) = status.slices.as_ref().filter(|now| Some(*now) != before) {
        let namespace = subscription.namespace().unwrap_or_default();
        (shared.downstream).changed(&namespace, &subscription.name_any(), slices);
    }
}

/// The integration a Subscription uses, checked, with its client and its request budget.
struct Found {
    integration: Arc<BitbucketIntegration>,
    scope: ListScope,
    resolved: Resolved,
    account: Arc<budget::Account>,
    /// The integration as status names it (see [`summary`]).
    summary: IntegrationSummary,
}

/// Stretches the interval `ask` keeps when the integration's request budget cannot keep the
/// spec's (see [`budget`]).
fn keep_within_budget(ask: &mut SyncAsk, subscription: &Subscription, found: &Found) {
    let kept = (found.account).interval(&finish::uid(subscription), ask.interval);
    if kept > ask.interval {
        ask.stretched_from = Some(ask.interval);
        ask.interval = kept;
    }
}

/// Why the integration `reference` is not in the store: it does not exist, or (when this
/// operator owns a shard) it is in another shard, which one read tells.
async fn not_here(
    subscription: &Subscription,
    reference: ObjectRef<BitbucketIntegration>,
    context: &Context,
) -> Error {
    let name = reference.name;
    if context.shared.settings.label_selector.is_none() {
        return Error::IntegrationNotFound(name);
    }
    let namespace = reference.namespace.unwrap_or_default();
    let api: Api<BitbucketIntegration> = Api::namespaced(context.shared.kube.clone(), &namespace);
    let shard = |labels: &std::collections::BTreeMap<String, String>| {
        labels
            .get(crate::api::SHARD_LABEL)
            .map_or_else(|| "no shard".to_owned(), |s| format!("shard {s:?}"))
    };
    match api.get_opt(&name).await {
        Ok(Some(integration)) => Error::IntegrationInAnotherShard {
            name,
            theirs: shard(integration.labels()),
            ours: shard(subscription.labels()),
        },
        Ok(None) => Error::IntegrationNotFound(name),
        Err(e) => Error::Kube(e),
    }
}

enum Dereferenced {
    Found(Found),
    /// Not yet: look again after this long, writing nothing.
    Later(Duration),
    Failed(Error),
}

/// Finds the Subscription's integration in the store, checks it is Ready and fits, and resolves
/// its client (reading its Secrets).
async fn dereference(subscription: &Subscription, context: &Context) -> Dereferenced {
    let shared = &context.shared;
    if !is_ready(&context.integrations) {
        // Right after start-up the integrations may not be listed yet: look again shortly
        // rather than report a missing integration. (Not awaited here: the stream that fills
        // the store is polled by this controller, which may be busy with us.)
        return Dereferenced::Later(Duration::from_millis(500));
    }
    let reference = integration_of(subscription);
    let Some(integration) = context.integrations.get(&reference) else {
        return Dereferenced::Failed(not_here(subscription, reference, context).await);
    };
    // An integration this process has not tried to validate yet is queued behind others (at a
    // start with thousands of them, for longer than `recheck`): its first status will come.
    let uid = finish::uid(&*integration);
    let tried = (shared.memory).integration(&uid, |m| {
        m.validation.is_some() || m.failures.in_a_row > 0 || m.failures.api_in_a_row > 0
    });
    let patience = match tried {
        true => shared.settings.recheck,
        false => shared.settings.recheck * 10,
    };
    let pending = check::first_validation_pending(
        &integration,
        patience,
        jiff::Timestamp::now(),
        context.started,
    );
    // A first validation this process made may be ahead of the status that will say so (the
    // integration woke its Subscriptions when it succeeded, `integration::wake_users`), also
    // after `patience`, while the API server is slow to store that status.
    let status_says = (integration.status.as_ref())
        .is_some_and(|s| conditions::get(&s.conditions, READY).is_some());
    let mut here = super::integration::validation_here(&shared.memory, &integration);
    // This process is validating the integration for the first time right now: its answer
    // comes in a moment (see `underway`).
    if pending.is_some()
        && !status_says
        && here.is_none()
        && shared.memory.first_validations.wait_for(&uid).await
    {
        here = super::integration::validation_here(&shared.memory, &integration);
    }
    let validated = !status_says && here.is_some();
    if let Some(wait) = pending.filter(|_| !validated) {
        return Dereferenced::Later(wait);
    }
    let status = integration.status.clone().unwrap_or_default();
    let ready = match validated {
        true => Ok(()),
        false => check::integration_ready(&reference.name, &status),
    };
    let checked = ready.and_then(|()| check::scope(subscription, &integration));
    let scope = match checked {
        Ok(scope) => scope,
        Err(error) => return Dereferenced::Failed(error),
    };
    let transport = shared.settings.transport.clone();
    match credentials::resolve(&shared.kube, &shared.memory, &integration, transport).await {
        Ok(resolved) => Dereferenced::Found(Found {
            account: shared.memory.budgets.account(&integration),
            summary: summary(&integration, here),
            integration,
            scope,
            resolved,
        }),
        Err(ResolveError::Kube { source, .. }) => Dereferenced::Failed(Error::Kube(source)),
        Err(source) => Dereferenced::Failed(Error::IntegrationCredential {
            name: reference.name,
            source,
        }),
    }
}

/// Lists when due (saying `Reconciling` meanwhile for a first listing), and
/// remembers it. A sync request is answered only by a listing fetched after it was made, or by
/// a failure the user must fix: after a transient failure the retry fetches again.
async fn list_when_due(
    context: &Context,
    subscription: &Subscription,
    draft: &mut Draft<SubscriptionStatus>,
    ask: &SyncAsk,
    found: Found,
) -> SyncOutcome {
    let shared = &context.shared;
    let uid = finish::uid(subscription);
    finish::resume_backoff::<Subscription>(shared, &uid, &draft.shown.conditions);
    let now = Instant::now();
    let (last, backoff, told, asked) = shared.memory.subscription(&uid, |m| {
        let asked = m.refresh.zip(m.refresh_first);
        (
            m.sync.clone(),
            m.failures.holding(now),
            m.told.clone(),
            asked,
        )
    });
    // Webhooks asked for a re-list and are still coming: list once they stop.
    let settle = shared.settings.settle;
    if let Some(wait) = asked.and_then(|(last, first)| settle.wait(last, first, now)) {
        return SyncOutcome::Unchanged { wait };
    }
    let fingerprint = &found.resolved.fingerprint;
    let (fresh, first) = match check::due(last.as_ref(), ask, fingerprint, backoff, now) {
        SyncDue::No { wait } if told.is_empty() => return SyncOutcome::Unchanged { wait },
        // A burst of deliveries is still arriving: fetch once it stops.
        SyncDue::No { .. } if let Some(wait) = settle.told(&told, now) => {
            return SyncOutcome::Unchanged { wait };
        }
        // Repositories a webhook named: fetched alone, or else answered by a fresh listing.
        SyncDue::No { .. } => match Priority::Asked
            .run(refetch::told(context, subscription, &found, &told))
            .await
        {
            Some(outcome) => return outcome,
            None => (true, false),
        },
        SyncDue::BackingOff { wait } => return SyncOutcome::BackingOff { wait },
        SyncDue::Yes { fresh, first } => (fresh || !told.is_empty(), first),
    };
    // A planned sync waits for its turn in the budget; one someone asked for goes now.
    let priority = match found.account.priority(&uid, fresh, now) {
        Ok(priority) => priority,
        Err(wait) => {
            let not_sent = NotSent {
                wait,
                rate_limited: false,
            };
            return waiting_for_budget(&found, not_sent, false);
        }
    };
    let asking = Asking {
        fresh,
        first,
        priority,
    };
    let (listed, calls) = list(shared, subscription, draft, ask, &found, asking).await;
    if let Some(not_sent) = found.account.ran(&uid, priority, &listed, calls) {
        // Nothing was sent, so nothing is remembered: the sync is still due.
        return waiting_for_budget(&found, not_sent, fresh);
    }
    let transient = matches!(&listed, Err(e) if Reason::class(e) == Class::Transient);
    remember(shared, &uid, ask, last, fingerprint, now, transient);
    let integration = found.summary.clone();
    match listed {
        Ok(listing) => publish_listing(context, subscription, &listing, integration).await,
        Err(error) => SyncOutcome::Failed {
            error: error.into(),
            integration: Some(integration),
        },
    }
}

/// How a listing is asked for.
#[derive(Clone, Copy)]
struct Asking {
    /// Only a listing fetched after this call began will do.
    fresh: bool,
    /// Nothing was listed for this Subscription yet.
    first: bool,
    priority: Priority,
}

/// The listing of `found`'s scope, shared or fetched (with `asking.priority` in the budget),
/// and the requests it took.
async fn list(
    shared: &Shared,
    subscription: &Subscription,
    draft: &mut Draft<SubscriptionStatus>,
    ask: &SyncAsk,
    found: &Found,
    asking: Asking,
) -> (Result<Arc<Vec<Repository>>, bitbucket::Error>, u32) {
    let integration_uid = finish::uid(&*found.integration);
    let want = Want {
        integration: &integration_uid,
        scope: &found.scope,
        fingerprint: &found.resolved.fingerprint,
        max_age: ask.interval,
        fresh: asking.fresh,
        confirmations: shared.settings.summaries_between_listings,
    };
    let client = &found.resolved.client;
    let listing = shared.memory.listings.get(
        want,
        client.summarize(&found.scope),
        fetch(client, &found.scope),
    );
    let listing = bitbucket::budget::metered(asking.priority, listing);
    // Only a first listing says so: the status of a listed Subscription can be large (1,000
    // repositories), and the API server handles the whole object on each write.
    if asking.first {
        let message = "listing repositories";
        finish::with_progress(shared, subscription, draft, message, listing).await
    } else {
        listing.await
    }
}

/// A sync that was not sent (`not_sent`: for how long, and whether a 429's hold rather than
/// the budget keeps it back); `asked`: whether someone asked for it.
fn waiting_for_budget(found: &Found, not_sent: NotSent, asked: bool) -> SyncOutcome {
    SyncOutcome::WaitingForBudget {
        wait: not_sent.wait,
        integration: found.account.name().to_owned(),
        asked,
        rate_limited: not_sent.rate_limited,
    }
}

/// Remembers a listing begun at `began` (after `last`); unless it failed transiently, it
/// answers the sync request and what webhooks asked for before it began.
fn remember(
    shared: &Shared,
    uid: &str,
    ask: &SyncAsk,
    last: Option<LastSync>,
    fingerprint: &str,
    began: Instant,
    transient: bool,
) {
    let sync = LastSync {
        generation: ask.generation,
        fingerprint: fingerprint.to_owned(),
        answered: if transient {
            last.and_then(|l| l.answered)
        } else {
            ask.requested.clone()
        },
        asked: ask.requested.clone(),
        began,
        at: Instant::now(),
        transient_failure: transient,
    };
    shared.memory.subscription(uid, |m| {
        m.sync = Some(sync);
        if !transient {
            m.refresh = m.refresh.filter(|asked| *asked > began);
            m.refresh_first = m.refresh_first.filter(|_| m.refresh.is_some());
            m.told.retain(|told| told.at > began);
        }
    });
}

/// `integration` as the Subscription's status shows it: who it authenticates as by this
/// process's validation `here`, else by its status (so a Subscription that lists before the
/// integration's status is stored names the account at once, not at its next sync).
fn summary(integration: &BitbucketIntegration, here: Option<Validation>) -> IntegrationSummary {
    let shown = (integration.status.as_ref())
        .and_then(|s| s.account.as_ref())
        .and_then(super::integration::validate::name_of);
    IntegrationSummary {
        name: integration.name_any(),
        account: here.and_then(|v| v.account).or(shown),
    }
}

/// Lists `scope` in full, as the listing cache keeps it.
async fn fetch(client: &bitbucket::Client, scope: &ListScope) -> Result<Fetched, bitbucket::Error> {
    let listed = client.list_repositories(scope).await?;
    let summary = bitbucket::ListingSummary::of(&listed);
    // Each repository's text moves into its entry: the listing is never held twice.
    let repositories = listed.into_iter().map(report::to_status).collect();
    Ok(Fetched {
        summary,
        repositories,
    })
}

/// Writes the filtered listing into the Subscription's RepositorySlices (see
/// [`publish_entries`]).
async fn publish_listing(
    context: &Context,
    subscription: &Subscription,
    listing: &[Repository],
    integration: IntegrationSummary,
) -> SyncOutcome {
    let repositories = report::entries(listing, &subscription.spec.repositories);
    publish_entries(context, subscription, repositories, integration).await
}

/// Writes `repositories` (the Subscription's whole list, sorted) into its RepositorySlices.
/// When that fails the listing counts as failed for now (it is retried after the backoff, the
/// status keeps naming the last complete set of slices).
async fn publish_entries(
    context: &Context,
    subscription: &Subscription,
    repositories: Vec<&Repository>,
    integration: IntegrationSummary,
) -> SyncOutcome {
    // Borrowed: only the entries status shows and the slices rewritten are copied (a re-list
    // of 100,000 repositories where nothing changed copies 1,000).
    let count = repositories.len();
    let first = (repositories.iter().take(MAX_LISTED_REPOSITORIES))
        .map(|r| (*r).clone())
        .collect();
    let slices = &context.slices;
    let published = publish::publish(&context.shared, slices, subscription, repositories).await;
    match published {
        Ok(slices) => SyncOutcome::Listed {
            first,
            count,
            slices,
            integration,
        },
        Err(error) => {
            let uid = finish::uid(subscription);
            context.shared.memory.subscription(&uid, |m| {
                if let Some(sync) = m.sync.as_mut() {
                    sync.transient_failure = true;
                }
            });
            SyncOutcome::Failed {
                error: Error::Slices(error),
                integration: Some(integration),
            }
        }
    }
}

/// When to reconcile again after `outcome`. A Subscription that waits for something other than
/// Bitbucket forgets its last listing, so it lists again after the wait and never re-states a
/// status from before it.
fn after(
    context: &Context,
    subscription: &Subscription,
    ask: &SyncAsk,
    outcome: SyncOutcome,
) -> Next {
    let shared = &context.shared;
    let uid = finish::uid(subscription);
    match outcome {
        SyncOutcome::Listed { .. } => {
            let server = server(context, subscription);
            finish::recovered::<Subscription>(shared, &uid, server.as_deref());
            Next::After(ask.interval)
        }
        SyncOutcome::Unchanged { wait }
        | SyncOutcome::BackingOff { wait }
        | SyncOutcome::WaitingForBudget { wait, .. } => Next::After(wait),
        SyncOutcome::Suspended => {
            shared.memory.subscription(&uid, |m| m.sync = None);
            Next::OnChange
        }
        SyncOutcome::Failed { error, integration } => {
            if integration.is_none() {
                shared.memory.subscription(&uid, |m| m.sync = None);
            }
            shared.count_error(CONTROLLER, error.reason());
            if finish::waits_for_server(&error)
                && let Some(server) = server(context, subscription)
            {
                let waiter = Waiter::Subscription(uid.clone(), ObjectRef::from_obj(subscription));
                shared.recovery.waits(&server, waiter);
            }
            finish::next(shared, subscription, &error)
        }
    }
}

/// The server of the Subscription's integration (see [`recovery::server_of`]).
fn server(context: &Context, subscription: &Subscription) -> Option<String> {
    let integration = context.integrations.get(&integration_of(subscription))?;
    Some(recovery::server_of(&integration))
}
