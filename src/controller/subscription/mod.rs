//! The Subscription controller: checks the Subscription against its integration, lists the
//! repositories it can see (sharing listings between Subscriptions of one scope), applies the
//! filters and keeps the sorted, bounded list in status. Failures keep the last list. Does
//! API-server and Bitbucket I/O.

pub mod filter;
pub mod listing;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use super::{Context, SUBSCRIPTION_MANAGER, integration::bitbucket_reason, integration_of, lock};
use crate::{
    api::{
        BitbucketIntegration, CloneUrls, IntegrationSummary, MAX_LISTED_REPOSITORIES, Repository,
        ServerType, Subscription, SubscriptionStatus,
        conditions::{READY, RECONCILING, STALLED, reasons},
    },
    bitbucket::{self, ErrorClass, ListScope},
    metrics::{ControllerLabels, ErrorLabels},
    status::{
        conditions::{self, Desired, Status},
        remembered::Remembered,
    },
};

const CONTROLLER: &str = "subscription";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Errors that end a reconcile without a status describing them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// When a Subscription last synced, and from what.
#[derive(Clone, Debug)]
pub struct Sync {
    generation: Option<i64>,
    sync_request: Option<String>,
    fingerprint: String,
    at: Instant,
    transient_failure: bool,
    /// The status decided since, until the cache shows it: a reconcile that lists nothing
    /// re-states this, never the (possibly older) status of the object it was given.
    status: Remembered<SubscriptionStatus>,
}

/// Adds the watch that re-syncs Subscriptions when their integration changes (e.g. becomes
/// Ready, or its credential rotates). `integration_events` is the stream feeding
/// `context.integrations`; `subscriptions` is this controller's own store.
pub fn wire(
    controller: Controller<Subscription>,
    subscriptions: Store<Subscription>,
    integration_events: impl futures::Stream<Item = Result<BitbucketIntegration, watcher::Error>>
    + Send
    + 'static,
) -> Controller<Subscription> {
    controller.watches_stream(integration_events, move |integration| {
        let name = integration.name_any();
        let namespace = integration.namespace();
        subscriptions
            .state()
            .into_iter()
            .filter(|s| s.namespace() == namespace && s.spec.integration_ref.name == name)
            .map(|s| ObjectRef::from_obj(&*s))
            .collect::<Vec<_>>()
    })
}

/// Reconciles one Subscription.
pub async fn reconcile(
    subscription: Arc<Subscription>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let metrics = &context.shared.metrics;
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    metrics.reconciles.get_or_create(&labels).inc();
    let started = Instant::now();
    let result = sync(&subscription, &context).await;
    metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// After an error the reconcile could not describe in status: back off.
pub fn error_policy(
    subscription: Arc<Subscription>,
    error: &Error,
    context: Arc<Context>,
) -> Action {
    let shared = &context.shared;
    shared
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: CONTROLLER,
            reason: "KubernetesError",
        })
        .inc();
    tracing::warn!(subscription = %subscription.name_any(), error = %error, "reconcile failed");
    Action::requeue(
        shared
            .backoff
            .next(&subscription.uid().unwrap_or_default(), None),
    )
}

/// How long to wait quietly for an integration that has not finished its first validation (no
/// Ready condition yet) and is younger than `patience`; `None` once it has, or is older.
fn first_validation_pending(
    integration: &BitbucketIntegration,
    status: &crate::api::BitbucketIntegrationStatus,
    patience: Duration,
) -> Option<Duration> {
    if conditions::get(&status.conditions, READY).is_some() {
        return None;
    }
    let created = integration.metadata.creation_timestamp.as_ref()?;
    let age = jiff::Timestamp::now().duration_since(created.0);
    let age = Duration::try_from(age).unwrap_or_default();
    patience.checked_sub(age).filter(|left| !left.is_zero())
}

/// What a reconcile decided, before status is written.
enum Next {
    Requeue(Duration),
    AwaitChange,
}

async fn sync(subscription: &Subscription, context: &Context) -> Result<Action, Error> {
    let shared = &context.shared;
    if subscription.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = subscription.uid().unwrap_or_default();
    if let Some(sync) = lock(&shared.syncs).get_mut(&uid) {
        sync.status
            .observe(subscription.metadata.resource_version.as_deref());
    }
    let generation = subscription.metadata.generation;
    let requested = super::sync_request(subscription);
    let interval = shared
        .settings
        .interval(&subscription.spec.sync_interval, DEFAULT_INTERVAL);
    let previous = subscription.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = generation;
    if requested.is_some() {
        status.last_handled_sync_request = requested.clone();
    }
    conditions::remove(&mut status.conditions, RECONCILING);
    let now = conditions::now();
    let next = 'next: {
        if subscription.spec.suspend {
            set_ready(
                &mut status,
                Status::False,
                reasons::SUSPENDED,
                "suspended: the repository list is not refreshed".into(),
                false,
                generation,
                &now,
            );
            break 'next waiting(&shared.syncs, &uid);
        }
        let reference = integration_of(subscription);
        if !is_ready(&context.integrations) {
            // Right after start-up the integrations may not be listed yet: look again shortly
            // rather than report a missing integration. (Not awaited here: the stream that
            // fills the store is polled by this controller, which may be busy with us.)
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        let Some(integration) = context.integrations.get(&reference) else {
            set_ready(
                &mut status,
                Status::False,
                reasons::INTEGRATION_NOT_FOUND,
                format!("BitbucketIntegration {} not found", reference.name),
                false,
                generation,
                &now,
            );
            break 'next waiting(&shared.syncs, &uid);
        };
        let integration_status = integration.status.clone().unwrap_or_default();
        if let Some(wait) =
            first_validation_pending(&integration, &integration_status, shared.settings.recheck)
        {
            // Its first validation is running, and the status it writes will wake us: saying
            // "not ready" meanwhile would be one more write and a moment later wrong. After
            // `recheck` (a validation that hangs) the Subscription says what it waits for.
            return Ok(Action::requeue(wait));
        }
        if !conditions::is_true(&integration_status.conditions, READY) {
            let why = conditions::get(&integration_status.conditions, READY)
                .map(|c| format!(": {}", c.message))
                .unwrap_or_default();
            set_ready(
                &mut status,
                Status::False,
                reasons::INTEGRATION_NOT_READY,
                format!("BitbucketIntegration {} is not ready{why}", reference.name),
                false,
                generation,
                &now,
            );
            break 'next waiting(&shared.syncs, &uid);
        }
        let scope = match scope(subscription, &integration) {
            Ok(scope) => scope,
            Err(message) => {
                set_ready(
                    &mut status,
                    Status::False,
                    reasons::INVALID_SPEC,
                    message,
                    true,
                    generation,
                    &now,
                );
                break 'next waiting(&shared.syncs, &uid);
            }
        };
        let resolved = match shared
            .clients
            .resolve(
                &shared.kube,
                &integration,
                shared.settings.transport.clone(),
            )
            .await
        {
            Ok(resolved) => resolved,
            Err(e) => {
                set_ready(
                    &mut status,
                    Status::False,
                    reasons::INTEGRATION_NOT_READY,
                    format!("BitbucketIntegration {}: {e}", reference.name),
                    false,
                    generation,
                    &now,
                );
                break 'next waiting(&shared.syncs, &uid);
            }
        };

        let last = lock(&shared.syncs).get(&uid).cloned();
        // A sync request must see Bitbucket as it is now; anything else may use a listing
        // another Subscription of the same scope made within the interval.
        let fresh =
            requested.is_some() && last.as_ref().is_none_or(|l| l.sync_request != requested);
        let due = fresh
            || last.as_ref().is_none_or(|l| {
                l.generation != generation
                    || l.fingerprint != resolved.fingerprint
                    || l.transient_failure
                    || l.at.elapsed() >= interval
            });
        if !due {
            if let Some(decided) = last.as_ref().and_then(|l| l.status.get()) {
                status = decided.clone();
            }
            let at = last.map(|l| l.at).unwrap_or_else(Instant::now);
            break 'next Next::Requeue(
                interval
                    .saturating_sub(at.elapsed())
                    .max(Duration::from_secs(1)),
            );
        }

        let key = format!("{}|{scope:?}", integration.uid().unwrap_or_default());
        let (client, summary_client) = (Arc::clone(&resolved.client), Arc::clone(&resolved.client));
        let summary_scope = scope.clone();
        let listed = shared
            .listings
            .get(
                key,
                &resolved.fingerprint,
                interval,
                fresh,
                shared.settings.summaries_between_listings,
                async move { summary_client.summarize(&summary_scope).await },
                async move { client.list_repositories(&scope).await },
            )
            .await;
        let transient = matches!(&listed, Err(e) if e.class() == ErrorClass::Transient);
        lock(&shared.syncs).insert(
            uid.clone(),
            Sync {
                generation,
                sync_request: requested.clone(),
                fingerprint: resolved.fingerprint.clone(),
                at: Instant::now(),
                transient_failure: transient,
                status: last.map(|l| l.status).unwrap_or_default(),
            },
        );
        status.integration = Some(IntegrationSummary {
            name: reference.name.clone(),
            account: integration_status
                .account
                .as_ref()
                .and_then(|a| a.username.clone().or_else(|| a.display_name.clone())),
        });
        match listed {
            Ok(listed) => {
                shared.backoff.reset(&uid);
                let kept: Vec<Repository> = listed
                    .iter()
                    .filter(|r| filter::keeps(&subscription.spec.repositories, r))
                    .map(to_status)
                    .collect();
                let count = kept.len();
                let mut shown = kept;
                shown.truncate(MAX_LISTED_REPOSITORIES);
                status.repositories_truncated = count > MAX_LISTED_REPOSITORIES;
                status.repository_count = Some(i32::try_from(count).unwrap_or(i32::MAX));
                if shown != previous.repositories || previous.repository_count.is_none() {
                    status.last_change_time = Some(now.clone());
                }
                status.repositories = shown;
                set_ready(
                    &mut status,
                    Status::True,
                    reasons::SYNCED,
                    format!("{count} repositories"),
                    false,
                    generation,
                    &now,
                );
                Next::Requeue(interval)
            }
            Err(error) => {
                // The last good list stays in status; Ready says what went wrong.
                let reason = bitbucket_reason(&error);
                match error.class() {
                    ErrorClass::Transient => {
                        set_ready(
                            &mut status,
                            Status::False,
                            reason,
                            error.to_string(),
                            false,
                            generation,
                            &now,
                        );
                        Next::Requeue(shared.backoff.next(&uid, error.retry_after()))
                    }
                    ErrorClass::Credentials | ErrorClass::Request => {
                        set_ready(
                            &mut status,
                            Status::False,
                            reason,
                            error.to_string(),
                            true,
                            generation,
                            &now,
                        );
                        Next::AwaitChange
                    }
                }
            }
        }
    };

    let written = shared
        .write_status(
            subscription,
            &previous,
            &status,
            SUBSCRIPTION_MANAGER,
            CONTROLLER,
        )
        .await?;
    if let Some(sync) = lock(&shared.syncs).get_mut(&uid) {
        sync.status.record(&status, written.clone());
    }
    if written.is_some() {
        announce(context, subscription, &previous, &status).await;
    }
    Ok(match next {
        Next::Requeue(after) => Action::requeue(after),
        // Waiting on another object: look again now and then in case its event was missed.
        Next::AwaitChange => Action::requeue(shared.settings.recheck),
    })
}

/// A Subscription waiting for something other than Bitbucket: forget its last sync, so the
/// reconcile after the wait lists again and never re-states a status from before it.
fn waiting(syncs: &std::sync::Mutex<std::collections::HashMap<String, Sync>>, uid: &str) -> Next {
    lock(syncs).remove(uid);
    Next::AwaitChange
}

/// Whether a store has seen its first complete listing.
pub(crate) fn is_ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some()
}

/// Sets Ready (and Stalled when the user must act; removes it otherwise).
fn set_ready(
    status: &mut SubscriptionStatus,
    ready: Status,
    reason: &'static str,
    message: String,
    stalled: bool,
    generation: Option<i64>,
    now: &Time,
) {
    conditions::set(
        &mut status.conditions,
        Desired::new(READY, ready, reason, message.clone()),
        generation,
        now,
    );
    if stalled {
        conditions::set(
            &mut status.conditions,
            Desired::new(STALLED, Status::True, reason, message),
            generation,
            now,
        );
    } else {
        conditions::remove(&mut status.conditions, STALLED);
    }
}

/// Where to list, or why this Subscription cannot work with its integration.
fn scope(
    subscription: &Subscription,
    integration: &BitbucketIntegration,
) -> Result<ListScope, String> {
    let spec = &subscription.spec;
    let name = integration.name_any();
    match (integration.spec.server.server_type, &spec.workspace) {
        (ServerType::DataCenter, Some(_)) => Err(format!(
            "workspace applies to Bitbucket Cloud only, and BitbucketIntegration {name} is Data Center: remove workspace and list projects instead"
        )),
        (ServerType::DataCenter, None) => Ok(ListScope::DataCenter {
            projects: spec.projects.clone(),
        }),
        (ServerType::Cloud, None) => Err(format!(
            "BitbucketIntegration {name} is Bitbucket Cloud: set workspace"
        )),
        (ServerType::Cloud, Some(workspace)) => match &integration.spec.workspace {
            Some(allowed) if allowed != workspace => Err(format!(
                "BitbucketIntegration {name} is limited to workspace {allowed}, not {workspace}"
            )),
            _ => Ok(ListScope::CloudWorkspace {
                workspace: workspace.clone(),
                projects: spec.projects.clone(),
            }),
        },
    }
}

fn to_status(repository: &bitbucket::Repository) -> Repository {
    Repository {
        full_name: repository.full_name.clone(),
        name: repository.slug.clone(),
        display_name: (repository.name != repository.slug).then(|| repository.name.clone()),
        project: repository.project.clone(),
        private: repository.private,
        main_branch: repository.main_branch.clone(),
        clone_urls: CloneUrls {
            https: repository.clone_https.clone(),
            ssh: repository.clone_ssh.clone(),
        },
        html_url: repository.html_url.clone(),
        updated_at: repository.updated_at.map(Time),
    }
}

/// Events for transitions of Ready, and for changes of the repository list.
async fn announce(
    context: &Context,
    subscription: &Subscription,
    previous: &SubscriptionStatus,
    status: &SubscriptionStatus,
) {
    let before = conditions::get(&previous.conditions, READY);
    if let Some(after) = conditions::get(&status.conditions, READY) {
        let transitioned =
            before.is_none_or(|b| b.status != after.status || b.reason != after.reason);
        if transitioned && after.status != "True" {
            context
                .shared
                .event(
                    subscription,
                    EventType::Warning,
                    &after.reason,
                    "Sync",
                    after.message.clone(),
                )
                .await;
        }
    }
    if status.last_change_time != previous.last_change_time {
        let old: std::collections::BTreeSet<&str> = previous
            .repositories
            .iter()
            .map(|r| r.full_name.as_str())
            .collect();
        let new: std::collections::BTreeSet<&str> = status
            .repositories
            .iter()
            .map(|r| r.full_name.as_str())
            .collect();
        let added = new.difference(&old).count();
        let removed = old.difference(&new).count();
        context
            .shared
            .event(
                subscription,
                EventType::Normal,
                reasons::SYNCED,
                "Sync",
                format!(
                    "{} repositories ({added} added, {removed} removed)",
                    status.repository_count.unwrap_or_default()
                ),
            )
            .await;
    }
}
