//! The BitbucketIntegration controller: holds the `in-use` finalizer, validates the credential
//! against Bitbucket (only when due: spec or Secret changed, sync requested, interval passed),
//! reports the account, scopes and users in status, and blocks deletion while Subscriptions
//! reference the integration. Does API-server and Bitbucket I/O.

mod cleanup;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller::Action, events::EventType, reflector::ObjectRef,
        watcher,
    },
};

use super::{Context, INTEGRATION_MANAGER, api, integration_of, lock};
use crate::{
    api::{
        Account, AccountKind, BitbucketIntegration, BitbucketIntegrationStatus, IN_USE_FINALIZER,
        Subscription,
        conditions::{DELETION_BLOCKED, READY, RECONCILING, STALLED, reasons},
    },
    bitbucket::{self, ErrorClass, Identity, IdentityKind},
    metrics::{ControllerLabels, ErrorLabels},
    status::{
        conditions::{self, Desired, Status},
        remembered::Remembered,
    },
};

const CONTROLLER: &str = "integration";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Errors that end a reconcile without a status describing them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Cleanup found Subscriptions still using the integration; the finalizer stays.
    #[error("deletion blocked: {0}")]
    DeletionBlocked(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::DeletionBlocked(_) => reasons::DELETION_BLOCKED,
            Self::Kube(_) => "KubernetesError",
        }
    }
}

/// The outcome of the last validation, remembered so Bitbucket is called only when it is due.
#[derive(Clone, Debug)]
pub struct Validation {
    fingerprint: String,
    sync_request: Option<String>,
    at: Instant,
    class: Option<ErrorClass>,
    /// The status decided since, until the cache shows it. A reconcile that calls nothing
    /// starts from this rather than from the object it was given, which may predate that write
    /// (the cache lags our own writes): re-applying an older status would undo the validation.
    status: Remembered<BitbucketIntegrationStatus>,
}

/// Adds the watches that trigger an integration: its Secrets (metadata only: Secret data never
/// enters the operator's memory) and the Subscriptions that use it (`subscription_events`, the
/// stream feeding `context.subscriptions`).
pub fn wire(
    controller: Controller<BitbucketIntegration>,
    context: &Arc<Context>,
    namespace: &Option<String>,
    subscription_events: impl futures::Stream<Item = Result<Subscription, watcher::Error>>
    + Send
    + 'static,
) -> Controller<BitbucketIntegration> {
    let client = &context.shared.kube;
    let secrets = watcher(
        api::<PartialObjectMeta<Secret>>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    // This controller's own store: an integration it has reconciled is surely in it, so a
    // Secret created after the integration always finds it.
    let integrations = controller.store();
    let shared = Arc::clone(&context.shared);
    let subscriptions = context.subscriptions.clone();
    controller
        .watches_stream(secrets, move |secret| {
            let name = secret.name_any();
            let namespace = secret.namespace();
            integrations
                .state()
                .into_iter()
                .filter(|i| i.namespace() == namespace && uses_secret(i, &name))
                .map(|i| ObjectRef::from_obj(&*i))
                .collect::<Vec<_>>()
        })
        .watches_stream(subscription_events, move |subscription| {
            let now = integration_of(&subscription);
            let key = ObjectRef::from_obj(&subscription);
            // A Subscription missing from the store (updated before the event arrives) was
            // deleted: forget it; it still wakes the integration it used.
            let before = if subscriptions.get(&key).is_some() {
                lock(&shared.last_integration).insert(key, now.name.clone())
            } else {
                lock(&shared.last_integration).remove(&key)
            };
            let left = before.filter(|name| *name != now.name).map(|name| {
                ObjectRef::new(&name).within(now.namespace.as_deref().unwrap_or_default())
            });
            std::iter::once(now).chain(left)
        })
}

fn uses_secret(integration: &BitbucketIntegration, name: &str) -> bool {
    integration.spec.credentials.secret_ref.name == name
        || integration
            .spec
            .server
            .ca_bundle_secret_ref
            .as_ref()
            .is_some_and(|r| r.name == name)
}

/// Reconciles one integration: finalizer first, then validation or deletion handling.
pub async fn reconcile(
    integration: Arc<BitbucketIntegration>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let metrics = &context.shared.metrics;
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    metrics.reconciles.get_or_create(&labels).inc();
    let started = Instant::now();
    let result = with_finalizer(integration, &context).await;
    metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Holds the `in-use` finalizer around [`apply`] and [`cleanup::cleanup`]. Unlike kube's
/// `finalizer` helper, adding the finalizer does not end the reconcile: the validation runs on
/// the object the patch returned, saving a watch round trip before the first status.
async fn with_finalizer(
    integration: Arc<BitbucketIntegration>,
    context: &Context,
) -> Result<Action, Error> {
    let namespace = integration.namespace().unwrap_or_default();
    let api: Api<BitbucketIntegration> = Api::namespaced(context.shared.kube.clone(), &namespace);
    let name = integration.name_any();
    let held = integration
        .finalizers()
        .iter()
        .position(|f| f == IN_USE_FINALIZER);
    match (held, integration.metadata.deletion_timestamp.is_some()) {
        (Some(_), false) => apply(&integration, context).await,
        (None, false) => {
            // `test` makes the patch fail (and the reconcile retry) if another writer changed
            // the list meanwhile: Kubernetes does not de-duplicate finalizers.
            let current = integration.finalizers();
            let patch = if current.is_empty() {
                serde_json::json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [IN_USE_FINALIZER]},
                ])
            } else {
                serde_json::json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": current},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": IN_USE_FINALIZER},
                ])
            };
            let patched = api
                .patch(&name, &PatchParams::default(), &json_patch(patch))
                .await?;
            apply(&patched, context).await
        }
        (Some(index), true) => {
            let action = cleanup::cleanup(&integration, context).await?;
            let path = format!("/metadata/finalizers/{index}");
            let patch = serde_json::json!([
                {"op": "test", "path": path, "value": IN_USE_FINALIZER},
                {"op": "remove", "path": path},
            ]);
            api.patch(&name, &PatchParams::default(), &json_patch(patch))
                .await?;
            Ok(action)
        }
        (None, true) => Ok(Action::await_change()),
    }
}

fn json_patch(operations: serde_json::Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(operations).expect("a JSON patch is a list of operations"))
}

/// After an error the reconcile could not describe in status: blocked deletions re-check soon,
/// anything else backs off.
pub fn error_policy(
    integration: Arc<BitbucketIntegration>,
    error: &Error,
    context: Arc<Context>,
) -> Action {
    let shared = &context.shared;
    shared
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: CONTROLLER,
            reason: error.reason(),
        })
        .inc();
    match error {
        Error::DeletionBlocked(_) => Action::requeue(shared.settings.recheck),
        _ => {
            tracing::warn!(integration = %integration.name_any(), error = %error, "reconcile failed");
            Action::requeue(
                shared
                    .backoff
                    .next(&integration.uid().unwrap_or_default(), None),
            )
        }
    }
}

async fn apply(integration: &BitbucketIntegration, context: &Context) -> Result<Action, Error> {
    let shared = &context.shared;
    let uid = integration.uid().unwrap_or_default();
    if let Some(validation) = lock(&shared.validations).get_mut(&uid) {
        validation
            .status
            .observe(integration.metadata.resource_version.as_deref());
    }
    let generation = integration.metadata.generation;
    let requested = super::sync_request(integration);
    let interval = shared
        .settings
        .interval(&integration.spec.validation_interval, DEFAULT_INTERVAL);
    let previous = integration.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.subscriptions = users(context, integration).or(previous.subscriptions);
    if requested.is_some() {
        status.last_handled_sync_request = requested.clone();
    }
    conditions::remove(&mut status.conditions, DELETION_BLOCKED);
    conditions::remove(&mut status.conditions, RECONCILING);
    let now = conditions::now();

    let action = match shared
        .clients
        .resolve(&shared.kube, integration, shared.settings.transport.clone())
        .await
    {
        Err(super::credentials::ResolveError::Kube { source, .. }) => {
            return Err(Error::Kube(source));
        }
        Err(e) => {
            // A missing Secret or key: no Bitbucket call until the user fixes it; the Secret
            // watch brings the fix.
            lock(&shared.validations).remove(&uid);
            stalled(&mut status, e.reason(), &e.to_string(), generation, &now);
            Action::requeue(shared.settings.recheck)
        }
        Ok(resolved) => {
            let last = lock(&shared.validations).get(&uid).cloned();
            let due = last.as_ref().is_none_or(|last| {
                last.fingerprint != resolved.fingerprint
                    || last.sync_request != requested
                    || matches!(last.class, Some(ErrorClass::Transient))
                    || (last.class.is_none() && last.at.elapsed() >= interval)
            });
            if due {
                let result = resolved
                    .client
                    .whoami(integration.spec.workspace.as_deref())
                    .await;
                let class = result.as_ref().err().map(bitbucket::Error::class);
                let remembered = last.map(|l| l.status).unwrap_or_default();
                lock(&shared.validations).insert(
                    uid.clone(),
                    Validation {
                        fingerprint: resolved.fingerprint.clone(),
                        sync_request: requested.clone(),
                        at: Instant::now(),
                        class,
                        status: remembered,
                    },
                );
                observe(
                    &mut status,
                    integration,
                    result,
                    generation,
                    &now,
                    context,
                    &uid,
                    interval,
                )
            } else {
                // Nothing to call: the last validation's status stands.
                if let Some(decided) = last.as_ref().and_then(|l| l.status.get()) {
                    status.account = decided.account.clone();
                    status.scopes = decided.scopes.clone();
                    status.conditions = decided.conditions.clone();
                }
                match last.and_then(|l| l.class.is_none().then_some(l.at)) {
                    Some(at) => Action::requeue(
                        interval
                            .saturating_sub(at.elapsed())
                            .max(Duration::from_secs(1)),
                    ),
                    None => Action::await_change(),
                }
            }
        }
    };

    let written = shared
        .write_status(
            integration,
            &previous,
            &status,
            INTEGRATION_MANAGER,
            CONTROLLER,
        )
        .await?;
    if let Some(validation) = lock(&shared.validations).get_mut(&uid) {
        validation.status.record(&status, written.clone());
    }
    if written.is_some() {
        announce(context, integration, &previous, &status).await;
    }
    Ok(action)
}

/// Records a validation's result in `status` and says when to look again.
#[allow(clippy::too_many_arguments)]
fn observe(
    status: &mut BitbucketIntegrationStatus,
    integration: &BitbucketIntegration,
    result: Result<Identity, bitbucket::Error>,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    context: &Context,
    uid: &str,
    interval: Duration,
) -> Action {
    let backoff = &context.shared.backoff;
    match result {
        Ok(identity) => {
            backoff.reset(uid);
            let message = validated_message(&identity, integration.spec.workspace.as_deref());
            status.scopes = identity.scopes.clone();
            status.account = Some(account(identity));
            conditions::set(
                &mut status.conditions,
                Desired::new(READY, Status::True, reasons::VALIDATED, message),
                generation,
                now,
            );
            conditions::remove(&mut status.conditions, STALLED);
            Action::requeue(interval)
        }
        Err(error) => {
            let reason = bitbucket_reason(&error);
            match error.class() {
                ErrorClass::Credentials | ErrorClass::Request => {
                    // 401/403 are not retried until the Secret or spec changes: repeated bad
                    // logins lock Data Center accounts.
                    stalled(status, reason, &error.to_string(), generation, now);
                    Action::await_change()
                }
                ErrorClass::Transient => {
                    // The last good account stays; Ready says what is wrong.
                    conditions::set(
                        &mut status.conditions,
                        Desired::new(READY, Status::False, reason, error.to_string()),
                        generation,
                        now,
                    );
                    conditions::remove(&mut status.conditions, STALLED);
                    Action::requeue(backoff.next(uid, error.retry_after()))
                }
            }
        }
    }
}

fn stalled(
    status: &mut BitbucketIntegrationStatus,
    reason: &'static str,
    message: &str,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    for type_ in [READY, STALLED] {
        let value = if type_ == READY {
            Status::False
        } else {
            Status::True
        };
        conditions::set(
            &mut status.conditions,
            Desired::new(type_, value, reason, message),
            generation,
            now,
        );
    }
}

/// The condition reason for a Bitbucket error.
pub fn bitbucket_reason(error: &bitbucket::Error) -> &'static str {
    use bitbucket::Error as E;
    match error {
        E::Unauthorized { .. } => reasons::INVALID_CREDENTIALS,
        E::InsufficientScopes { .. } => reasons::INSUFFICIENT_SCOPES,
        E::Forbidden { .. } => reasons::FORBIDDEN,
        E::NotFound { .. } => reasons::WORKSPACE_NOT_FOUND,
        E::RateLimited { .. } => reasons::RATE_LIMITED,
        E::Gone { .. } | E::Config { .. } => reasons::INVALID_SPEC,
        E::Unavailable { .. }
        | E::Timeout { .. }
        | E::Transport { .. }
        | E::Decode { .. }
        | E::UnexpectedStatus { .. }
        | E::PagingLoop { .. } => reasons::BITBUCKET_UNAVAILABLE,
    }
}

fn validated_message(identity: &Identity, workspace: Option<&str>) -> String {
    match (identity.kind, &identity.username, &identity.display_name) {
        (IdentityKind::AccessToken, _, _) => format!(
            "access token accepted for workspace {}",
            workspace.unwrap_or_default()
        ),
        (_, Some(username), Some(display)) if display != username => {
            format!("authenticated as {username} ({display})")
        }
        (_, Some(username), _) => format!("authenticated as {username}"),
        (_, None, Some(display)) => format!("authenticated as {display}"),
        (_, None, None) => "authenticated".to_owned(),
    }
}

fn account(identity: Identity) -> Account {
    Account {
        kind: match identity.kind {
            IdentityKind::User => AccountKind::User,
            IdentityKind::AccessToken => AccountKind::AccessToken,
            IdentityKind::OAuthConsumer => AccountKind::OAuthConsumer,
            IdentityKind::DataCenterUser => AccountKind::DataCenterUser,
        },
        username: identity.username,
        display_name: identity.display_name,
        uuid: identity.uuid,
        account_id: identity.account_id,
    }
}

/// How many Subscriptions (from the cache) reference `integration`; `None` right after
/// start-up, before the Subscriptions are listed (a count of 0 would be written, then fixed).
fn users(context: &Context, integration: &BitbucketIntegration) -> Option<i32> {
    if !super::subscription::is_ready(&context.subscriptions) {
        return None;
    }
    let name = integration.name_any();
    let namespace = integration.namespace();
    let count = context
        .subscriptions
        .state()
        .iter()
        .filter(|s| s.namespace() == namespace && s.spec.integration_ref.name == name)
        .count();
    Some(i32::try_from(count).unwrap_or(i32::MAX))
}

/// Publishes an Event when the Ready condition changed (status or reason): transitions only,
/// so a restart or a steady state publishes nothing.
async fn announce(
    context: &Context,
    integration: &BitbucketIntegration,
    previous: &BitbucketIntegrationStatus,
    status: &BitbucketIntegrationStatus,
) {
    let before = conditions::get(&previous.conditions, READY);
    let Some(after) = conditions::get(&status.conditions, READY) else {
        return;
    };
    if before.is_some_and(|b| b.status == after.status && b.reason == after.reason) {
        return;
    }
    let type_ = if after.status == "True" {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let reason = after.reason.clone();
    context
        .shared
        .event(
            integration,
            type_,
            &reason,
            "Validate",
            after.message.clone(),
        )
        .await;
}
