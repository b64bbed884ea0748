//! What an integration says about its credential's lifetime, as pure functions: the date its
//! Secret declares (`scm.shippable.io/expires-at`: Bitbucket does not reveal it to the token
//! itself), the warnings due 30, 7 and 1 days before (each once, recorded in
//! `status.credential.warnedDays` so a restart does not repeat them), the condition
//! `CredentialExpiring` from 7 days before, `CredentialExpired` when Bitbucket refuses the
//! credential after the date, and when to look again. No I/O.

use std::time::Duration;

use jiff::Timestamp;

use crate::{
    api::{
        BitbucketIntegrationStatus, CredentialStatus, EXPIRES_AT_ANNOTATION,
        conditions::{CREDENTIAL_EXPIRING, READY, STALLED, reasons},
    },
    status::conditions::{self, Desired, Status},
};

/// The warnings, in days before the expiry, nearest last.
pub const WARNINGS: [u32; 3] = [30, 7, 1];
/// `CredentialExpiring` is True from this many days before.
pub const EXPIRING_WITHIN_DAYS: i64 = 7;

/// What the credential Secret declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing declared.
    Unknown,
    At(Timestamp),
    /// The annotation's value, which is not an RFC 3339 time.
    NotUnderstood(String),
}

impl Expiry {
    /// From the value of the annotation, if any.
    pub fn of(annotation: Option<&str>) -> Self {
        match annotation.map(str::trim) {
            None | Some("") => Self::Unknown,
            Some(value) => value
                .parse::<Timestamp>()
                .map_or_else(|_| Self::NotUnderstood(value.to_owned()), Self::At),
        }
    }
}

/// Whole days from `now` until `at`, rounded up (6 hours away is 1 day; past is 0 or less).
fn days_left(at: Timestamp, now: Timestamp) -> i64 {
    let seconds = at.as_second() - now.as_second();
    seconds.div_euclid(86_400) + i64::from(seconds.rem_euclid(86_400) > 0)
}

fn shown_date(at: Timestamp) -> String {
    Timestamp::from_second(at.as_second())
        .expect("a whole second of a timestamp is one")
        .to_string()
}

/// Shows `expiry` in `status` at `now`: `credential`, the warning now due and
/// `CredentialExpiring`. `secret` names the credential Secret in messages.
pub fn show(
    status: &mut BitbucketIntegrationStatus,
    expiry: &Expiry,
    secret: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    let at = match expiry {
        Expiry::Unknown => {
            status.credential = None;
            conditions::remove(&mut status.conditions, CREDENTIAL_EXPIRING);
            return;
        }
        Expiry::NotUnderstood(value) => {
            status.credential = None;
            let message = format!(
                "{EXPIRES_AT_ANNOTATION} on Secret {secret} is {value:?}, not an RFC 3339 time such as 2027-06-30T00:00:00Z"
            );
            let desired = Desired::new(
                CREDENTIAL_EXPIRING,
                Status::Unknown,
                reasons::EXPIRY_NOT_UNDERSTOOD,
                crate::api::text::for_the_api(&message, 1024),
            );
            conditions::set(
                &mut status.conditions,
                desired,
                generation,
                &conditions::now(),
            );
            return;
        }
        Expiry::At(at) => *at,
    };
    let date = shown_date(at);
    let days = days_left(at, now);
    // A new date (a renewed credential) starts the warnings again.
    let same_date = status
        .credential
        .as_ref()
        .and_then(|c| c.expires_at.as_deref())
        == Some(&date);
    let warned = status
        .credential
        .as_ref()
        .and_then(|c| c.warned_days)
        .filter(|_| same_date);
    let due = WARNINGS.into_iter().filter(|w| days <= i64::from(*w)).min();
    let warned_days = match (due, warned) {
        (Some(due), Some(warned)) => Some(due.min(warned)),
        (due, warned) => due.or(warned),
    };
    status.credential = Some(CredentialStatus {
        expires_at: Some(date.clone()),
        warned_days,
    });
    if days <= EXPIRING_WITHIN_DAYS {
        let desired = Desired::new(
            CREDENTIAL_EXPIRING,
            Status::True,
            reasons::CREDENTIAL_EXPIRING,
            message(&date, days, secret),
        );
        conditions::set(
            &mut status.conditions,
            desired,
            generation,
            &conditions::now(),
        );
    } else {
        conditions::remove(&mut status.conditions, CREDENTIAL_EXPIRING);
    }
}

/// What the warning and the condition say.
pub fn message(date: &str, days: i64, secret: &str) -> String {
    match days {
        ..=0 => format!(
            "the credential expired on {date}: renew it and update Secret {secret} (and its {EXPIRES_AT_ANNOTATION})"
        ),
        1 => format!(
            "the credential expires on {date}, within a day: renew it and update Secret {secret} (and its {EXPIRES_AT_ANNOTATION})"
        ),
        n => format!(
            "the credential expires on {date}, in {n} days: renew it and update Secret {secret} (and its {EXPIRES_AT_ANNOTATION})"
        ),
    }
}

/// A refusal (`InvalidCredentials`) after the known expiry says `CredentialExpired` instead,
/// with the date.
pub fn expired_refusal(status: &mut BitbucketIntegrationStatus, expiry: &Expiry, now: Timestamp) {
    let Expiry::At(at) = expiry else { return };
    if *at > now {
        return;
    }
    for type_ in [READY, STALLED] {
        if let Some(condition) = status.conditions.iter_mut().find(|c| c.type_ == type_)
            && condition.reason == reasons::INVALID_CREDENTIALS
        {
            condition.reason = reasons::CREDENTIAL_EXPIRED.to_owned();
            condition.message = format!(
                "the credential expired on {}; {}",
                shown_date(*at),
                condition.message
            );
        }
    }
}

/// How long until the next warning or the expiry itself, so the integration looks again then.
pub fn next_look(expiry: &Expiry, now: Timestamp) -> Option<Duration> {
    let Expiry::At(at) = expiry else { return None };
    let moments = WARNINGS
        .iter()
        .map(|days| {
            at.checked_sub(jiff::SignedDuration::from_hours(24 * i64::from(*days)))
                .ok()
        })
        .chain([Some(*at)]);
    moments
        .flatten()
        .filter(|moment| *moment > now)
        .map(|moment| {
            Duration::from_secs(
                u64::try_from(moment.as_second() - now.as_second())
                    .unwrap_or(0)
                    .max(1),
            )
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn shown(
        expiry: &Expiry,
        now: &str,
        status: &mut BitbucketIntegrationStatus,
    ) -> (Option<u32>, Option<String>) {
        show(status, expiry, "acme-token", at(now), Some(1));
        let condition = conditions::get(&status.conditions, CREDENTIAL_EXPIRING);
        (
            status.credential.as_ref().and_then(|c| c.warned_days),
            condition.map(|c| format!("{} {}", c.status, c.reason)),
        )
    }

    #[test]
    fn an_expiry_is_read_from_the_annotation_and_a_bad_one_is_said() {
        assert_eq!(Expiry::of(None), Expiry::Unknown);
        assert_eq!(Expiry::of(Some(" ")), Expiry::Unknown);
        assert_eq!(
            Expiry::of(Some("2027-06-30T00:00:00Z")),
            Expiry::At(at("2027-06-30T00:00:00Z"))
        );
        assert_eq!(
            Expiry::of(Some("next june")),
            Expiry::NotUnderstood("next june".into())
        );
        let mut status = BitbucketIntegrationStatus::default();
        let (_, condition) = shown(
            &Expiry::of(Some("next june")),
            "2027-01-01T00:00:00Z",
            &mut status,
        );
        assert_eq!(condition.as_deref(), Some("Unknown ExpiryNotUnderstood"));
    }

    #[test]
    fn warnings_come_at_30_7_and_1_days_once_each_and_the_condition_within_7() {
        let expiry = Expiry::At(at("2027-06-30T12:00:00Z"));
        let mut status = BitbucketIntegrationStatus::default();
        assert_eq!(
            shown(&expiry, "2027-05-01T00:00:00Z", &mut status),
            (None, None)
        );
        assert_eq!(
            shown(&expiry, "2027-06-01T00:00:00Z", &mut status),
            (Some(30), None)
        );
        assert_eq!(
            shown(&expiry, "2027-06-10T00:00:00Z", &mut status),
            (Some(30), None)
        );
        let expiring = Some("True CredentialExpiring".to_owned());
        assert_eq!(
            shown(&expiry, "2027-06-24T00:00:00Z", &mut status),
            (Some(7), expiring.clone())
        );
        assert_eq!(
            shown(&expiry, "2027-06-30T00:00:00Z", &mut status),
            (Some(1), expiring.clone())
        );
        assert_eq!(
            shown(&expiry, "2027-07-02T00:00:00Z", &mut status),
            (Some(1), expiring)
        );
        // Renewed: a new date, the warnings start again.
        let renewed = Expiry::At(at("2028-06-30T12:00:00Z"));
        assert_eq!(
            shown(&renewed, "2027-07-02T00:00:00Z", &mut status),
            (None, None)
        );
        // Declared only 3 days ahead: the 7-day warning, not the 30-day one as well.
        let soon = Expiry::At(at("2027-07-05T00:00:00Z"));
        assert_eq!(shown(&soon, "2027-07-02T00:00:00Z", &mut status).0, Some(7));
    }

    #[test]
    fn a_refusal_after_the_date_says_credential_expired() {
        let mut status = BitbucketIntegrationStatus::default();
        let refused = Desired::new(
            READY,
            Status::False,
            reasons::INVALID_CREDENTIALS,
            "Bitbucket rejected the credential (401)",
        );
        conditions::set(&mut status.conditions, refused, Some(1), &conditions::now());
        let expiry = Expiry::At(at("2027-06-30T00:00:00Z"));
        let mut before = status.clone();
        expired_refusal(&mut before, &expiry, at("2027-06-29T00:00:00Z"));
        assert_eq!(
            conditions::get(&before.conditions, READY).unwrap().reason,
            reasons::INVALID_CREDENTIALS
        );
        expired_refusal(&mut status, &expiry, at("2027-07-01T00:00:00Z"));
        let ready = conditions::get(&status.conditions, READY).unwrap();
        assert_eq!(ready.reason, reasons::CREDENTIAL_EXPIRED);
        assert!(
            ready
                .message
                .starts_with("the credential expired on 2027-06-30T00:00:00Z"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn the_integration_looks_again_at_the_next_warning() {
        let expiry = Expiry::At(at("2027-06-30T00:00:00Z"));
        let day = 86_400;
        assert_eq!(
            next_look(&expiry, at("2027-05-30T00:00:00Z")),
            Some(Duration::from_secs(day))
        );
        assert_eq!(
            next_look(&expiry, at("2027-06-29T12:00:00Z")),
            Some(Duration::from_secs(day / 2))
        );
        assert_eq!(next_look(&expiry, at("2027-07-01T00:00:00Z")), None);
        assert_eq!(
            next_look(&Expiry::Unknown, at("2027-07-01T00:00:00Z")),
            None
        );
    }
}
