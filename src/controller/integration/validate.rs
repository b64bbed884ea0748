//! The integration's decisions, as pure functions: whether a validation is due, the status a
//! validation's outcome leads to, and the Events a status change calls for. No I/O.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::events::EventType};

use super::{Error, Users};
use crate::{
    api::{
        Account, AccountKind, BitbucketIntegration, BitbucketIntegrationStatus,
        conditions::{CREDENTIAL_EXPIRING, DELETION_BLOCKED, READY, RECONCILING, STALLED, reasons},
        text,
    },
    bitbucket::{Identity, IdentityKind},
    controller::{
        Settings,
        credentials::Resolved,
        error::{self, Class},
        finish::Announcement,
        memory::Validation,
        sync_request,
    },
    status::conditions::{self, Desired, Status},
};

/// The validation interval when the spec sets none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// What this reconcile asks about the integration.
pub struct ValidationAsk {
    pub generation: Option<i64>,
    /// The sync annotation's value.
    pub requested: Option<String>,
    pub interval: Duration,
    /// The fingerprint of the client resolved now (spec generation and Secret versions); empty
    /// when none could be.
    pub fingerprint: String,
}

impl ValidationAsk {
    pub fn of(
        integration: &BitbucketIntegration,
        settings: &Settings,
        resolved: Option<&Resolved>,
    ) -> Self {
        Self {
            generation: integration.metadata.generation,
            requested: sync_request(integration),
            interval: settings.interval(&integration.spec.validation_interval, DEFAULT_INTERVAL),
            fingerprint: resolved.map(|r| r.fingerprint.clone()).unwrap_or_default(),
        }
    }
}

/// Whether to call Bitbucket.
#[derive(Debug, PartialEq, Eq)]
pub enum ValidationDue {
    /// Yes; `changed` when something the user did asks for it (a first validation, a new spec
    /// or Secret, a sync request), as opposed to an interval or a retry.
    Yes { changed: bool },
    /// No: the last validation stands. Look again after `wait`, or only when something changes
    /// (`None`: the last validation failed in a way only the user can fix).
    No { wait: Option<Duration> },
    /// Not yet: the last validation failed transiently and its backoff holds for `wait` more.
    BackingOff { wait: Duration },
}

/// Whether the last validation (`None` if there was none) still stands. `backoff`: how much
/// longer the backoff after a transient failure holds calls back (see
/// [`Failures`](crate::controller::memory::Failures)); only a change by the user cuts it short.
pub fn due(
    last: Option<&Validation>,
    ask: &ValidationAsk,
    backoff: Option<Duration>,
    now: Instant,
) -> ValidationDue {
    let Some(last) = last else {
        return ValidationDue::Yes { changed: true };
    };
    if last.fingerprint != ask.fingerprint || last.sync_request != ask.requested {
        return ValidationDue::Yes { changed: true };
    }
    let elapsed = now.saturating_duration_since(last.at);
    match last.failure {
        Some(Class::Transient) => match backoff {
            Some(wait) => ValidationDue::BackingOff { wait },
            None => ValidationDue::Yes { changed: false },
        },
        Some(_) => ValidationDue::No { wait: None },
        None if elapsed >= ask.interval => ValidationDue::Yes { changed: false },
        None => ValidationDue::No {
            wait: Some(
                ask.interval
                    .saturating_sub(elapsed)
                    .max(Duration::from_secs(1)),
            ),
        },
    }
}

/// What a reconcile found out.
#[derive(Debug)]
pub enum ValidationOutcome {
    Validated(Identity),
    /// Nothing was due; see [`ValidationDue::No`].
    Unchanged {
        wait: Option<Duration>,
    },
    /// Woken while the backoff after a transient failure holds (see [`ValidationDue::BackingOff`]): the
    /// failure shown stands, `Reconciling` included.
    BackingOff {
        wait: Duration,
    },
    /// A validation someone asked for (a sync request, a changed spec or Secret) that the
    /// credential's spent request budget let nothing be sent for: the last validation stands,
    /// `Reconciling` says it waits, and the request is not handled yet.
    WaitingForBudget {
        wait: Duration,
    },
    Failed(Error),
}

impl ValidationOutcome {
    /// One debug line saying what a reconcile of `integration` decided, with the generation
    /// and the sync request it had to answer (as a subscription's sync says it,
    /// `SyncOutcome::trace`). Fields are only evaluated when debug is on.
    pub fn trace(&self, integration: &BitbucketIntegration, ask: &ValidationAsk) {
        let name = || integration.name_any();
        let (generation, requested) = (ask.generation, ask.requested.as_deref());
        match self {
            Self::Validated(_) => {
                tracing::debug!(integration = %name(), generation, ?requested, "validated")
            }
            Self::Unchanged { wait } => {
                tracing::debug!(integration = %name(), generation, ?requested, ?wait, "not due")
            }
            Self::BackingOff { wait } => {
                tracing::debug!(integration = %name(), generation, ?requested, ?wait, "backing off")
            }
            Self::WaitingForBudget { wait } => tracing::debug!(
                integration = %name(),
                generation,
                ?requested,
                ?wait,
                "waiting for the request budget"
            ),
            Self::Failed(error) => {
                tracing::debug!(integration = %name(), generation, ?requested, %error, "validation failed")
            }
        }
    }
}

/// The status an outcome leads to, from the status last shown. `users` are the Subscriptions
/// using the integration, `None` while they are not listed yet.
pub fn status(
    shown: &BitbucketIntegrationStatus,
    ask: &ValidationAsk,
    users: Option<&Users>,
    workspace: Option<&str>,
    outcome: &ValidationOutcome,
    now: &Time,
) -> BitbucketIntegrationStatus {
    let mut status = shown.clone();
    let generation = ask.generation;
    status.observed_generation = generation;
    if let Some(users) = users {
        users.show(&mut status);
    }
    let waiting = matches!(outcome, ValidationOutcome::WaitingForBudget { .. });
    if ask.requested.is_some() && !waiting {
        status.last_handled_sync_request = ask.requested.clone();
    }
    conditions::remove(&mut status.conditions, DELETION_BLOCKED);
    match outcome {
        ValidationOutcome::WaitingForBudget { wait } => {
            let message = format!(
                "the validation asked for waits for room in the credential's request budget \
                 (status.requestBudget), about {}",
                crate::bitbucket::budget::humanize(*wait)
            );
            let waits = Desired::new(
                RECONCILING,
                Status::True,
                reasons::REQUEST_BUDGET_SPENT,
                message,
            );
            conditions::set(&mut status.conditions, waits, generation, now);
        }
        ValidationOutcome::Unchanged { .. } => {
            conditions::remove(&mut status.conditions, RECONCILING)
        }
        ValidationOutcome::BackingOff { .. } => {}
        ValidationOutcome::Validated(identity) => {
            conditions::remove(&mut status.conditions, RECONCILING);
            status.scopes = identity.scopes.iter().map(|s| quoted(s)).collect();
            status.account = Some(account(identity));
            conditions::set(
                &mut status.conditions,
                Desired::new(
                    READY,
                    Status::True,
                    reasons::VALIDATED,
                    validated_message(identity, workspace),
                ),
                generation,
                now,
            );
            conditions::remove(&mut status.conditions, STALLED);
        }
        // The last good account stays; Ready says what is wrong.
        ValidationOutcome::Failed(error) => {
            error::set_conditions(&mut status.conditions, error, generation, now);
        }
    }
    status
}

/// Events for the user: each transition of Ready (a change of status or reason), and a
/// deletion that starts to wait, or waits for other Subscriptions than before.
pub fn announcements(
    before: &BitbucketIntegrationStatus,
    after: &BitbucketIntegrationStatus,
) -> Vec<Announcement> {
    let mut announcements = Vec::new();
    let ready_before = conditions::get(&before.conditions, READY);
    if let Some(ready) = conditions::get(&after.conditions, READY)
        && ready_before.is_none_or(|b| b.status != ready.status || b.reason != ready.reason)
    {
        announcements.push(Announcement {
            type_: if ready.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: ready.reason.clone(),
            action: "Validate",
            note: ready.message.clone(),
        });
    }
    let warned = |status: &BitbucketIntegrationStatus| {
        (status.credential.as_ref()).and_then(|c| Some((c.expires_at.clone()?, c.warned_days?)))
    };
    if let Some((date, days)) = warned(after).filter(|now| warned(before).as_ref() != Some(now)) {
        let note = match conditions::get(&after.conditions, CREDENTIAL_EXPIRING) {
            Some(expiring) => expiring.message.clone(),
            None => format!("the credential expires on {date}, within {days} days"),
        };
        announcements.push(Announcement {
            type_: EventType::Warning,
            reason: reasons::CREDENTIAL_EXPIRING.to_owned(),
            action: "Validate",
            note,
        });
    }
    let blocked_before = conditions::get(&before.conditions, DELETION_BLOCKED);
    if let Some(blocked) = conditions::get(&after.conditions, DELETION_BLOCKED)
        && blocked.status == "True"
        && blocked_before.is_none_or(|b| b.status != "True" || b.message != blocked.message)
    {
        announcements.push(Announcement {
            type_: EventType::Warning,
            reason: reasons::DELETION_BLOCKED.to_owned(),
            action: "Delete",
            note: blocked.message.clone(),
        });
    }
    announcements
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

/// A value Bitbucket sent, as status may hold it (see [`text`]).
fn quoted(value: &str) -> String {
    text::for_the_api(value, text::MAX_QUOTED_BYTES).into_owned()
}

/// Who `identity` is, as a Subscription's `status.integration.account` names it.
pub fn account_name(identity: &Identity) -> Option<String> {
    name_of(&account(identity))
}

/// How a Subscription's `status.integration.account` names `account`: its username, else its
/// display name.
pub fn name_of(account: &Account) -> Option<String> {
    (account.username.clone()).or_else(|| account.display_name.clone())
}

fn account(identity: &Identity) -> Account {
    Account {
        kind: match identity.kind {
            IdentityKind::User => AccountKind::User,
            IdentityKind::AccessToken => AccountKind::AccessToken,
            IdentityKind::OAuthConsumer => AccountKind::OAuthConsumer,
            IdentityKind::DataCenterUser => AccountKind::DataCenterUser,
        },
        username: identity.username.as_deref().map(quoted),
        display_name: identity.display_name.as_deref().map(quoted),
        uuid: identity.uuid.as_deref().map(quoted),
        account_id: identity.account_id.as_deref().map(quoted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bitbucket, controller::error::Reason};

    const HOUR: Duration = Duration::from_secs(3600);

    fn ask(fingerprint: &str, requested: Option<&str>) -> ValidationAsk {
        ValidationAsk {
            generation: Some(1),
            requested: requested.map(str::to_owned),
            interval: HOUR,
            fingerprint: fingerprint.to_owned(),
        }
    }

    fn validation(at: Instant, failure: Option<Class>) -> Validation {
        Validation {
            account: None,
            fingerprint: "f".into(),
            sync_request: None,
            at,
            failure,
        }
    }

    fn identity() -> Identity {
        Identity {
            kind: IdentityKind::User,
            username: Some("jdoe".into()),
            display_name: Some("Jane Doe".into()),
            uuid: None,
            account_id: None,
            scopes: vec!["repository".into()],
        }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_000_000).unwrap())
    }

    #[test]
    fn a_validation_is_due_first_on_a_change_a_request_a_retry_or_the_interval() {
        let now = Instant::now();
        let ok = validation(now, None);
        assert_eq!(
            due(None, &ask("f", None), None, now),
            ValidationDue::Yes { changed: true }
        );
        assert_eq!(
            due(Some(&ok), &ask("g", None), None, now),
            ValidationDue::Yes { changed: true },
            "the Secret or spec changed"
        );
        assert_eq!(
            due(Some(&ok), &ask("f", Some("now")), None, now),
            ValidationDue::Yes { changed: true },
            "a sync request"
        );
        assert_eq!(
            due(Some(&ok), &ask("f", None), None, now + HOUR),
            ValidationDue::Yes { changed: false },
            "the interval passed"
        );
        assert_eq!(
            due(
                Some(&validation(now, Some(Class::Transient))),
                &ask("f", None),
                None,
                now
            ),
            ValidationDue::Yes { changed: false },
            "a transient failure is retried once its backoff is over"
        );
        assert_eq!(
            due(
                Some(&ok),
                &ask("f", None),
                None,
                now + Duration::from_secs(600)
            ),
            ValidationDue::No {
                wait: Some(Duration::from_secs(3000))
            }
        );
        assert_eq!(
            due(
                Some(&validation(now, Some(Class::Stalled))),
                &ask("f", None),
                None,
                now + 2 * HOUR
            ),
            ValidationDue::No { wait: None },
            "a rejected credential is not tried again until something changes"
        );
    }

    #[test]
    fn a_backoff_holds_every_wake_up_back_but_a_change_by_the_user() {
        // The chaos soak's defect: a Subscription's status write woke its failing integration,
        // which called Bitbucket at once, wrote a new failure, woke the Subscription, and so on.
        let now = Instant::now();
        let failed = validation(now, Some(Class::Transient));
        let holding = Some(Duration::from_secs(20));
        assert_eq!(
            due(Some(&failed), &ask("f", None), holding, now),
            ValidationDue::BackingOff {
                wait: Duration::from_secs(20)
            },
            "woken during the backoff"
        );
        assert_eq!(
            due(Some(&failed), &ask("g", None), holding, now),
            ValidationDue::Yes { changed: true },
            "a new Secret or spec"
        );
        assert_eq!(
            due(Some(&failed), &ask("f", Some("now")), holding, now),
            ValidationDue::Yes { changed: true },
            "a sync request"
        );
    }

    #[test]
    fn a_transient_failure_keeps_the_account_and_says_it_retries() {
        let validated = status(
            &BitbucketIntegrationStatus::default(),
            &ask("f", None),
            Some(&Users::of(vec!["api-ci".into(), "web-ci".into()])),
            None,
            &ValidationOutcome::Validated(identity()),
            &now(),
        );
        let failed = status(
            &validated,
            &ask("f", None),
            Some(&Users::of(vec!["api-ci".into(), "web-ci".into()])),
            None,
            &ValidationOutcome::Failed(Error::Bitbucket(bitbucket::Error::RateLimited {
                retry_after: None,
            })),
            &now(),
        );
        assert_eq!(failed.account, validated.account, "the last good account");
        let ready = conditions::get(&failed.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RateLimited")
        );
        let reconciling = conditions::get(&failed.conditions, RECONCILING).unwrap();
        assert_eq!(reconciling.reason, "ProgressingWithRetry");
        assert!(conditions::get(&failed.conditions, STALLED).is_none());
    }

    #[test]
    fn a_rejected_credential_stalls_and_a_missing_secret_too() {
        for error in [
            Error::Bitbucket(bitbucket::Error::Unauthorized {
                message: "bad".into(),
            }),
            Error::Credential(
                crate::controller::credentials::ResolveError::SecretNotFound("s".into()),
            ),
        ] {
            let reason = error.reason();
            let failed = status(
                &BitbucketIntegrationStatus::default(),
                &ask("f", None),
                None,
                None,
                &ValidationOutcome::Failed(error),
                &now(),
            );
            let stalled = conditions::get(&failed.conditions, STALLED).unwrap();
            assert_eq!(
                (stalled.status.as_str(), stalled.reason.as_str()),
                ("True", reason)
            );
            assert!(conditions::get(&failed.conditions, RECONCILING).is_none());
        }
    }

    #[test]
    fn only_transitions_are_announced() {
        let first = status(
            &BitbucketIntegrationStatus::default(),
            &ask("f", None),
            None,
            None,
            &ValidationOutcome::Validated(identity()),
            &now(),
        );
        let announced = announcements(&BitbucketIntegrationStatus::default(), &first);
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].reason, "Validated");
        assert_eq!(announced[0].note, "authenticated as jdoe (Jane Doe)");
        let again = status(
            &first,
            &ask("f", Some("x")),
            None,
            None,
            &ValidationOutcome::Validated(identity()),
            &now(),
        );
        assert!(announcements(&first, &again).is_empty(), "still Validated");
    }
}
