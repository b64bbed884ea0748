//! The BitbucketIntegration controller: holds the `in-use` finalizer, validates the credential
//! against Bitbucket (only when due: spec or Secret changed, sync requested, interval passed),
//! reports the account, scopes and users in status, and blocks deletion while Subscriptions
//! reference the integration. Does API-server and Bitbucket I/O.
//!
//! A reconcile ([`reconcile`] → `finalizer` → [`apply`] or `cleanup`) reads as its steps:
//! resolve the client from the Secrets (`credentials`), decide whether a validation is due
//! (`validate::due`), call Bitbucket, build the status (`validate::status`), finish (`finish`).

mod cleanup;
pub mod expiry;
mod finalizer;
mod hooks;
pub mod validate;

use std::{sync::Arc, time::Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector::ObjectRef, watcher},
};

use super::{
    Context, INTEGRATION_MANAGER,
    credentials::{self, ResolveError},
    error::{Class, Reason},
    finish::{self, Draft, finish},
    index::{Index, integration_key},
    integration_of,
    memory::Validation,
    recovery::{self, Waiter},
    run::api,
    schedule::Next,
    watched,
};
use crate::{
    api::{
        BitbucketIntegration, BitbucketIntegrationStatus, MAX_NAMED_USERS, Subscription,
        admission::in_use_message,
        conditions::{READY, reasons},
    },
    bitbucket::{self, Priority},
    status::conditions,
};
use validate::{ValidationAsk, ValidationDue, ValidationOutcome};

const CONTROLLER: &str = "integration";

/// Why an integration is not Ready, or a reconcile could not finish: each variant is a
/// condition reason (see [`Reason`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Secrets do not give a credential (`SecretNotFound`, `SecretKeyMissing`, ...).
    #[error(transparent)]
    Credential(#[from] ResolveError),
    /// Bitbucket did not accept the credential, or failed (`InvalidCredentials`, ...).
    #[error(transparent)]
    Bitbucket(#[from] bitbucket::Error),
    /// Cleanup found Subscriptions still using the integration; the finalizer stays.
    #[error("deletion blocked: {0}")]
    DeletionBlocked(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Reason for Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::Credential(e) => e.reason(),
            Self::Bitbucket(e) => Reason::reason(e),
            Self::DeletionBlocked(_) => reasons::DELETION_BLOCKED,
            Self::Kube(e) => e.reason(),
        }
    }

    fn class(&self) -> Class {
        match self {
            Self::Credential(e) => e.class(),
            Self::Bitbucket(e) => Reason::class(e),
            Self::DeletionBlocked(_) => Class::Waiting,
            Self::Kube(e) => e.class(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Bitbucket(e) => Reason::retry_after(e),
            _ => None,
        }
    }
}

finish::reconciled_kind!(BitbucketIntegration {
    status: BitbucketIntegrationStatus,
    controller: CONTROLLER,
    manager: INTEGRATION_MANAGER,
    memory: integration,
    waiter: Integration,
    announcements: validate::announcements,
});

/// The integrations woken by others: by their Secrets (watched as metadata only: Secret data
/// never enters the operator's memory), by the Subscriptions that use them
/// (`subscription_events`, the stream feeding `context.subscriptions`), and those Subscriptions
/// left (`woken`). The mappers only map: what to wake is decided by reconciles. `by_secret`:
/// the integrations that use each Secret (keyed by [`secrets_used`]), fed before this
/// controller sees them.
pub fn woken(
    context: &Arc<Context>,
    by_secret: Arc<Index<BitbucketIntegration>>,
    namespace: &Option<String>,
    subscription_events: impl futures::Stream<Item = Result<Subscription, watcher::Error>>
    + Send
    + 'static,
    woken: impl futures::Stream<Item = ObjectRef<BitbucketIntegration>> + Send + 'static,
) -> futures::stream::BoxStream<'static, ObjectRef<BitbucketIntegration>> {
    let client = &context.shared.kube;
    let (seen, relisted) = (Arc::clone(context), Arc::clone(context));
    let secrets = watcher(
        api::<PartialObjectMeta<Secret>>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .inspect(move |event| {
        let versions = &relisted.shared.memory.secret_versions;
        match event {
            Ok(watcher::Event::Delete(secret)) => versions.gone(secret),
            Ok(watcher::Event::Init) => versions.relisting(),
            _ => {}
        }
    })
    .touched_objects()
    .filter_map(|secret| futures::future::ready(watched(secret)))
    .flat_map(move |secret| {
        seen.shared.memory.secret_versions.seen(&secret);
        let namespace = secret.namespace().unwrap_or_default();
        futures::stream::iter(by_secret.get(&integration_key(&namespace, &secret.name_any())))
    });
    // The integration a Subscription left when re-pointed is woken by the Subscription's
    // reconcile (`subscription::wake_the_integration_left`), through `woken`.
    let used = subscription_events
        .filter_map(|subscription| futures::future::ready(watched(subscription)))
        .map(|subscription| integration_of(&subscription));
    futures::stream::select_all([secrets.boxed(), used.boxed(), woken.boxed()]).boxed()
}

/// The Secrets `integration` uses, as keys of the index of integrations by Secret
/// ([`integration_key`] of the Secret): its credential, its webhook secret, its CA bundle.
pub fn secrets_used(integration: &BitbucketIntegration) -> Vec<String> {
    let namespace = integration
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default();
    let spec = &integration.spec;
    let webhook = spec.webhook.as_ref().map(|w| &w.secret_ref.name);
    let ca = spec.server.ca_bundle_secret_ref.as_ref().map(|r| &r.name);
    let names = std::iter::once(&spec.credentials.secret_ref.name)
        .chain(webhook)
        .chain(ca);
    names.map(|name| integration_key(namespace, name)).collect()
}

/// Reconciles one integration: finalizer first, then validation or deletion handling.
pub async fn reconcile(
    integration: Arc<BitbucketIntegration>,
    context: Arc<Context>,
) -> Result<Next, Error> {
    let memory = &context.shared.memory;
    // Subscriptions of an integration this process has not validated wait for this reconcile's
    // validation rather than to be woken after it (see `underway`).
    let first =
        integration.metadata.deletion_timestamp.is_none() && !validated_here(memory, &integration);
    let _underway = first.then(|| (memory.first_validations).begin(&finish::uid(&*integration)));
    let reconcile = finalizer::with_finalizer(&integration, &context);
    context.shared.measured(CONTROLLER, reconcile).await
}

/// After an error the reconcile could not describe in status.
pub fn error_policy(
    integration: Arc<BitbucketIntegration>,
    error: &Error,
    context: Arc<Context>,
) -> Next {
    let shared = &context.shared;
    shared.count_error(CONTROLLER, error.reason());
    if error.class() != Class::Waiting {
        tracing::warn!(integration = %integration.name_any(), %error, "reconcile failed");
    }
    finish::next(&context.shared, &*integration, error)
}

/// What a reconcile found out before it writes anything of its own: the credential's client
/// (none when it could not be read), what was asked, and how the validation went (`valid`:
/// this process's last validation of it succeeded, now or before).
struct Found {
    resolved: Option<credentials::Resolved>,
    ask: ValidationAsk,
    outcome: ValidationOutcome,
    valid: bool,
}

/// Validates an integration, when due, and writes what it found. `holding`: the finalizer's
/// patch when the integration does not hold it yet. It runs beside the Secret read and the
/// validation, which do not need it (a credential is only read and shown to Bitbucket); what
/// does need it waits for it: the webhooks registered on Bitbucket, which only a held
/// finalizer removes again, and the status.
async fn apply(
    integration: &BitbucketIntegration,
    context: &Context,
    holding: impl Future<Output = Result<(), Error>>,
) -> Result<Next, Error> {
    let shared = &context.shared;
    let mut draft = Draft::begin(&shared.memory, integration);
    let (held, found) = futures::join!(holding, examine(context, integration, &mut draft));
    held?;
    let Found {
        resolved,
        ask,
        outcome,
        valid,
    } = found?;
    let hooks = match resolved.as_ref().filter(|_| valid) {
        Some(resolved) => {
            let keep = hooks::keep(context, integration, resolved, &draft.shown, ask.interval);
            Priority::Asked.run(keep).await
        }
        None => None,
    };
    // Shown as the Secret declares it; kept as shown while the Secret cannot be read.
    let expiry = resolved.map(|r| r.expiry);
    outcome.trace(integration, &ask);
    let users = users(context, integration);
    let workspace = integration.spec.workspace.as_deref();
    let now = conditions::now();
    let mut status = validate::status(
        &draft.shown,
        &ask,
        users.as_ref(),
        workspace,
        &outcome,
        &now,
    );
    if let Some(hooks) = hooks {
        hooks.show(&mut status, ask.generation);
    }
    // The pool its account draws on as of this validation (a Cloud user's is shared), shown
    // in this write rather than the next.
    let account = (shared.memory.budgets).account_named(integration, status.account.as_ref());
    status.request_budget = account.status();
    shared
        .metrics
        .integration_ready(integration, &status.conditions);
    let today = jiff::Timestamp::now();
    if let Some(expiry) = &expiry {
        let secret = &integration.spec.credentials.secret_ref.name;
        expiry::show(&mut status, expiry, secret, today, ask.generation);
        expiry::expired_refusal(&mut status, expiry, today);
        shared.metrics.credential_expiry(integration, expiry);
    }
    finish(shared, integration, &draft, &status).await?;
    let look = expiry.as_ref().and_then(|e| expiry::next_look(e, today));
    Ok(after(context, integration, &ask, outcome, look))
}

/// Reads the credential and validates it when due; the integration's first validation by this
/// process ends here, and its Subscriptions are woken when it newly succeeded.
async fn examine(
    context: &Context,
    integration: &BitbucketIntegration,
    draft: &mut Draft<BitbucketIntegrationStatus>,
) -> Result<Found, Error> {
    let shared = &context.shared;
    let transport = shared.settings.transport.clone();
    let resolved =
        match credentials::resolve(&shared.kube, &shared.memory, integration, transport).await {
            // A missing Secret or key stalls, and no Bitbucket call is made until the user fixes it.
            Err(error) if error.class() != Class::Stalled => return Err(error.into()),
            resolved => resolved,
        };
    let mut ask = ValidationAsk::of(integration, &shared.settings, resolved.as_ref().ok());
    let uid = finish::uid(integration);
    // Validations are planned with the Subscriptions' syncs, and stretched with them.
    let account = shared.memory.budgets.account(integration);
    ask.interval = account.interval(&uid, ask.interval);
    let (resolved, outcome, valid) = match resolved {
        Ok(resolved) => {
            let was_valid = validated_here(&shared.memory, integration);
            let validating = (&resolved, &*account);
            let outcome = validate_when_due(context, integration, draft, validating, &ask).await;
            let valid = (shared.memory).integration(&uid, |m| {
                m.validation.as_ref().is_some_and(|v| v.failure.is_none())
            });
            (shared.memory.first_validations).end(&uid);
            if valid && !was_valid {
                wake_users(context, integration);
            }
            (Some(resolved), outcome, valid)
        }
        Err(error) => {
            shared.memory.integration(&uid, |m| m.validation = None);
            (None, ValidationOutcome::Failed(error.into()), false)
        }
    };
    Ok(Found {
        resolved,
        ask,
        outcome,
        valid,
    })
}

/// Calls Bitbucket when a validation is due (saying `Reconciling` meanwhile when the user
/// changed something), and remembers what it found.
async fn validate_when_due(
    context: &Context,
    integration: &BitbucketIntegration,
    draft: &mut Draft<BitbucketIntegrationStatus>,
    (resolved, account): (&credentials::Resolved, &super::budget::Account),
    ask: &ValidationAsk,
) -> ValidationOutcome {
    let shared = &context.shared;
    let uid = finish::uid(integration);
    finish::resume_backoff::<BitbucketIntegration>(shared, &uid, &draft.shown.conditions);
    let now = Instant::now();
    let (last, backoff) = shared
        .memory
        .integration(&uid, |m| (m.validation.clone(), m.failures.holding(now)));
    // A validation whose status was never shown (its write failed, and the API server took a
    // later write without it) is made again: the status must say how the credential fared.
    let shown = conditions::get(&draft.shown.conditions, READY).is_some();
    let last = last.filter(|_| shown);
    let changed = match validate::due(last.as_ref(), ask, backoff, now) {
        ValidationDue::No { wait } => return ValidationOutcome::Unchanged { wait },
        ValidationDue::BackingOff { wait } => return ValidationOutcome::BackingOff { wait },
        ValidationDue::Yes { changed } => changed,
    };
    // A validation the user asked for goes first; one its interval calls for takes its turn.
    let priority = match account.priority(&uid, changed, now) {
        Ok(priority) => priority,
        Err(wait) => return ValidationOutcome::Unchanged { wait: Some(wait) },
    };
    let whoami = (resolved.client).whoami(integration.spec.workspace.as_deref());
    let call = bitbucket::budget::metered(priority, whoami);
    let (result, calls) = if changed {
        let message = "validating the credential with Bitbucket";
        finish::with_progress(shared, integration, draft, message, call).await
    } else {
        call.await
    };
    if let Some(not_sent) = account.ran(&uid, priority, &result, calls) {
        // Nothing was sent: the last validation stands until there is room, and one that was
        // asked for says it waits.
        let wait = not_sent.wait;
        return match changed {
            true => ValidationOutcome::WaitingForBudget { wait },
            false => ValidationOutcome::Unchanged { wait: Some(wait) },
        };
    }
    let validation = Validation {
        fingerprint: resolved.fingerprint.clone(),
        sync_request: ask.requested.clone(),
        at: Instant::now(),
        failure: result.as_ref().err().map(Reason::class),
        account: result.as_ref().ok().and_then(validate::account_name),
    };
    shared
        .memory
        .integration(&uid, |m| m.validation = Some(validation));
    match result {
        Ok(identity) => ValidationOutcome::Validated(identity),
        Err(error) => ValidationOutcome::Failed(error.into()),
    }
}

/// When to reconcile again after `outcome`.
/// `look`: how long until the credential's next warning or expiry, which is looked at then.
fn after(
    context: &Context,
    integration: &BitbucketIntegration,
    ask: &ValidationAsk,
    outcome: ValidationOutcome,
    look: Option<std::time::Duration>,
) -> Next {
    let shared = &context.shared;
    let uid = finish::uid(integration);
    let sooner = |wait: std::time::Duration| look.map_or(wait, |look| look.min(wait));
    match outcome {
        ValidationOutcome::Validated(_) => {
            let server = recovery::server_of(integration);
            finish::recovered::<BitbucketIntegration>(shared, &uid, Some(&server));
            Next::After(sooner(ask.interval))
        }
        ValidationOutcome::Unchanged { wait } => match wait.or(look) {
            Some(wait) => Next::After(sooner(wait)),
            None => Next::OnChange,
        },
        ValidationOutcome::BackingOff { wait } | ValidationOutcome::WaitingForBudget { wait } => {
            Next::After(sooner(wait))
        }
        ValidationOutcome::Failed(error) => {
            shared.count_error(CONTROLLER, error.reason());
            if finish::waits_for_server(&error) {
                let waiter = Waiter::Integration(uid.clone(), ObjectRef::from_obj(integration));
                shared
                    .recovery
                    .waits(&recovery::server_of(integration), waiter);
            }
            finish::next(shared, integration, &error)
        }
    }
}

/// Whether this process validated `integration` with the client it holds now, and Bitbucket
/// accepted it: its status may not show it yet.
pub fn validated_here(memory: &super::memory::Memory, integration: &BitbucketIntegration) -> bool {
    validation_here(memory, integration).is_some()
}

/// This process's last validation of `integration`, when it succeeded with the client the
/// Secrets' watch shows current (it may be ahead of the status that will say so).
pub fn validation_here(
    memory: &super::memory::Memory,
    integration: &BitbucketIntegration,
) -> Option<Validation> {
    let client = credentials::current(memory, integration)?;
    memory.integration(&finish::uid(integration), |m| {
        (m.validation.clone())
            .filter(|v| v.failure.is_none() && v.fingerprint == client.fingerprint)
    })
}

/// After a validation that succeeded where the last did not: the integration's Subscriptions
/// may list now, before its status is written and the watch brings it to them.
fn wake_users(context: &Context, integration: &BitbucketIntegration) {
    if let Some(users) = subscriptions_of(context, integration) {
        let users = users.iter().map(|s| ObjectRef::from_obj(&**s));
        context.shared.wakes.subscriptions.wake(users);
    }
}

/// Who uses `integration`, as status shows it; `None` right after start-up, before the
/// Subscriptions are listed (no users would be written, then fixed).
fn users(context: &Context, integration: &BitbucketIntegration) -> Option<Users> {
    let users = subscriptions_of(context, integration)?;
    Some(Users::of(users.iter().map(|s| s.name_any()).collect()))
}

/// The Subscriptions (from the cache) that reference `integration`; `None` right after
/// start-up, before the Subscriptions are listed (an empty cache is not "nobody").
fn subscriptions_of(
    context: &Context,
    integration: &BitbucketIntegration,
) -> Option<Vec<Arc<Subscription>>> {
    if !super::is_ready(&context.subscriptions) {
        return None;
    }
    let namespace = integration.namespace().unwrap_or_default();
    let key = integration_key(&namespace, &integration.name_any());
    Some(context.users.find(&context.subscriptions, &key))
}

/// Who uses an integration, as its status shows it: how many Subscriptions, and the first
/// names in order (what the admission policy names when it refuses a delete).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    pub count: usize,
    pub first: Vec<String>,
}

impl Users {
    pub fn of(mut names: Vec<String>) -> Self {
        names.sort_unstable();
        let count = names.len();
        names.truncate(MAX_NAMED_USERS);
        Self {
            count,
            first: names,
        }
    }

    /// Writes the count and the names into `status`.
    pub fn show(&self, status: &mut BitbucketIntegrationStatus) {
        status.subscriptions = Some(i32::try_from(self.count).unwrap_or(i32::MAX));
        status.used_by.clone_from(&self.first);
    }

    /// What the user is told when the integration cannot be deleted.
    pub fn message(&self, integration: &str) -> String {
        in_use_message(integration, &self.first, self.count)
    }
}
