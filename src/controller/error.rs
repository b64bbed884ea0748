//! What a failure means: every error of a controller is one of its condition reasons and
//! belongs to one of three classes (Flux's vocabulary), and [`action`] is the one mapping from
//! a class to what the controller does next. No I/O.

use std::time::Duration;

use super::schedule::Next;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{
    api::conditions::{READY, RECONCILING, STALLED, reasons},
    bitbucket::{self, ErrorClass},
    status::conditions::{self, Desired, Status},
};

/// What kind of failure an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Only a change by the user can help (a wrong token, a missing Secret, a spec that cannot
    /// work): `Stalled`, and nothing is tried again until a watched object changes.
    Stalled,
    /// Another object is not there or not ready yet: its watch event ends the wait, and a
    /// periodic re-check (API server only, never Bitbucket) covers an event that was missed.
    Waiting,
    /// Bitbucket or the API server failed for now: retry with backoff.
    Transient,
}

/// An error that is a condition reason.
pub trait Reason: std::error::Error {
    /// The PascalCase reason, from `api::conditions::reasons` (also the Event reason and the
    /// `reason` label of `reconcile_errors`).
    fn reason(&self) -> &'static str;
    fn class(&self) -> Class;
    /// The least time to wait before trying again (a `Retry-After`).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// What the condition says: the error, and what the user can do when it is not obvious.
    fn message(&self) -> String {
        self.to_string()
    }
}

/// What to do after a failure of `class`: `backoff` gives the wait for a transient one.
pub fn action(class: Class, recheck: Duration, backoff: impl FnOnce() -> Duration) -> Next {
    match class {
        Class::Stalled => Next::OnChange,
        Class::Waiting => Next::After(recheck),
        Class::Transient => Next::After(backoff()),
    }
}

impl Reason for bitbucket::Error {
    fn reason(&self) -> &'static str {
        use bitbucket::Error as E;
        match self {
            E::Unauthorized { .. } => reasons::INVALID_CREDENTIALS,
            E::InsufficientScopes { .. } => reasons::INSUFFICIENT_SCOPES,
            E::Forbidden { .. } => reasons::FORBIDDEN,
            E::NotFound { .. } => reasons::WORKSPACE_NOT_FOUND,
            E::RateLimited { .. } => reasons::RATE_LIMITED,
            E::OverBudget { .. } => reasons::REQUEST_BUDGET_SPENT,
            E::Gone { .. } | E::Config { .. } => reasons::INVALID_SPEC,
            E::NotAllowed { .. } | E::AddressRefused(_) => reasons::SERVER_NOT_ALLOWED,
            E::RotationNotSaved { .. } => reasons::REFRESH_TOKEN_NOT_SAVED,
            E::Unavailable { .. }
            | E::Timeout { .. }
            | E::Transport { .. }
            | E::Decode { .. }
            | E::UnexpectedStatus { .. }
            | E::TooLarge { .. } => reasons::BITBUCKET_UNAVAILABLE,
            E::PagingLoop { .. } => reasons::BITBUCKET_MISBEHAVES,
            E::ListingTooLarge { .. } => reasons::LISTING_TOO_LARGE,
        }
    }

    /// A listing's bound names the flag that sets it.
    fn message(&self) -> String {
        let flag = match self {
            bitbucket::Error::ListingTooLarge {
                bound: bitbucket::Bound::Deadline(_),
                ..
            } => "--listing-deadline",
            bitbucket::Error::ListingTooLarge { .. } => "--max-repositories",
            _ => return self.to_string(),
        };
        format!(
            "{self}; the operator's {flag} sets the bound (a Data Center Subscription may also \
             name fewer projects)"
        )
    }

    /// 401/403 are not retried until the Secret or spec changes: repeated bad logins lock
    /// Data Center accounts.
    fn class(&self) -> Class {
        match bitbucket::Error::class(self) {
            ErrorClass::Credentials | ErrorClass::Request => Class::Stalled,
            ErrorClass::Transient => Class::Transient,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        bitbucket::Error::retry_after(self)
    }
}

impl Reason for kube::Error {
    fn reason(&self) -> &'static str {
        reasons::KUBERNETES_ERROR
    }

    fn class(&self) -> Class {
        Class::Transient
    }
}

/// Sets the conditions of a failure of either kind: `Ready=False` with the error's reason, plus
/// `Stalled` when the user must act or `Reconciling` while it is retried.
pub fn set_conditions(
    list: &mut Vec<Condition>,
    error: &(impl Reason + ?Sized),
    generation: Option<i64>,
    now: &Time,
) {
    let (reason, message) = (error.reason(), error.message());
    conditions::set(
        list,
        Desired::new(READY, Status::False, reason, message.clone()),
        generation,
        now,
    );
    // `set` keeps a condition's lastTransitionTime while its status stays: a failure repeated
    // while retrying writes nothing new.
    let (stalled, reconciling) = match error.class() {
        Class::Stalled => (
            Some(Desired::new(STALLED, Status::True, reason, message)),
            None,
        ),
        Class::Transient => (
            None,
            Some(Desired::new(
                RECONCILING,
                Status::True,
                reasons::PROGRESSING_WITH_RETRY,
                format!("{message}; retrying with backoff"),
            )),
        ),
        Class::Waiting => (None, None),
    };
    for (type_, desired) in [(STALLED, stalled), (RECONCILING, reconciling)] {
        match desired {
            Some(desired) => conditions::set(list, desired, generation, now),
            None => conditions::remove(list, type_),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_one_action() {
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        assert_eq!(action(Class::Stalled, minute, || second), Next::OnChange);
        assert_eq!(
            action(Class::Waiting, minute, || second),
            Next::After(minute)
        );
        assert_eq!(
            action(Class::Transient, minute, || second),
            Next::After(second)
        );
    }

    #[test]
    fn credentials_stall_and_outages_are_transient() {
        let unauthorized = bitbucket::Error::Unauthorized {
            message: "token invalid".into(),
        };
        assert_eq!(Reason::class(&unauthorized), Class::Stalled);
        assert_eq!(Reason::reason(&unauthorized), "InvalidCredentials");
        let limited = bitbucket::Error::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(Reason::class(&limited), Class::Transient);
        assert_eq!(Reason::reason(&limited), "RateLimited");
        assert_eq!(Reason::retry_after(&limited), Some(Duration::from_secs(7)));
    }
}
