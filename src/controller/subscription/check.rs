//! The Subscription's checks against its integration, and whether a listing is due: pure
//! functions, no I/O.

use std::time::{Duration, Instant};

use super::Error;
use crate::{
    api::{
        BitbucketIntegration, BitbucketIntegrationStatus, ServerType, Subscription,
        conditions::READY,
    },
    bitbucket::ListScope,
    controller::memory::LastSync,
    status::conditions,
};

/// How long to wait quietly for an integration that has not finished its first validation (no
/// Ready condition yet), for `patience` after it was created or the controllers started
/// (`started`: integrations created while the operator was down are validated after it
/// starts), whichever is later; `None` once it has, or patience is over. Its first status will
/// wake the Subscription; saying "not ready" meanwhile would be one more write and a moment
/// later wrong.
pub fn first_validation_pending(
    integration: &BitbucketIntegration,
    patience: Duration,
    now: jiff::Timestamp,
    started: jiff::Timestamp,
) -> Option<Duration> {
    let status = integration.status.as_ref();
    if status.is_some_and(|s| conditions::get(&s.conditions, READY).is_some()) {
        return None;
    }
    let created = integration.metadata.creation_timestamp.as_ref()?;
    let since = created.0.max(started);
    let age = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    patience.checked_sub(age).filter(|left| !left.is_zero())
}

/// `Err` when the integration is not Ready, saying why.
pub fn integration_ready(name: &str, status: &BitbucketIntegrationStatus) -> Result<(), Error> {
    if conditions::is_true(&status.conditions, READY) {
        return Ok(());
    }
    Err(Error::IntegrationNotReady {
        name: name.to_owned(),
        why: conditions::get(&status.conditions, READY)
            .map(|c| format!(": {}", c.message))
            .unwrap_or_default(),
    })
}

/// Where to list, or why this Subscription cannot work with its integration.
pub fn scope(
    subscription: &Subscription,
    integration: &BitbucketIntegration,
) -> Result<ListScope, Error> {
    let spec = &subscription.spec;
    let name = integration.metadata.name.as_deref().unwrap_or_default();
    match (integration.spec.server.server_type, &spec.workspace) {
        (ServerType::DataCenter, Some(_)) => Err(Error::InvalidSpec(format!(
            "workspace applies to Bitbucket Cloud only, and BitbucketIntegration {name} is Data Center: remove workspace and list projects instead"
        ))),
        (ServerType::DataCenter, None) => Ok(ListScope::DataCenter {
            projects: spec.projects.clone(),
        }),
        (ServerType::Cloud, None) => Err(Error::InvalidSpec(format!(
            "BitbucketIntegration {name} is Bitbucket Cloud: set workspace"
        ))),
        (ServerType::Cloud, Some(workspace)) => match &integration.spec.workspace {
            Some(allowed) if allowed != workspace => Err(Error::InvalidSpec(format!(
                "BitbucketIntegration {name} is limited to workspace {allowed}, not {workspace}"
            ))),
            _ => Ok(ListScope::CloudWorkspace {
                workspace: workspace.clone(),
                projects: spec.projects.clone(),
            }),
        },
    }
}

/// What this reconcile asks of the Subscription.
pub struct SyncAsk {
    pub generation: Option<i64>,
    /// The sync annotation's value.
    pub requested: Option<String>,
    /// The interval kept: the spec's, or longer when the integration's request budget cannot
    /// keep that (see [`crate::controller::budget`]).
    pub interval: Duration,
    /// The spec's interval, when `interval` is stretched from it.
    pub stretched_from: Option<Duration>,
    /// When a webhook delivery last asked for a refresh (see `crate::webhook`): answered only
    /// by a listing begun after it, and never before a backoff is over.
    pub refresh: Option<Instant>,
}

/// Whether to list.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncDue {
    /// Yes. `fresh`: a sync request not answered yet, which only a listing fetched after it
    /// answers. `first`: nothing was listed for this Subscription yet.
    Yes { fresh: bool, first: bool },
    /// No: the last listing stands; look again after `wait`.
    No { wait: Duration },
    /// Not yet: the last listing failed transiently and its backoff holds for `wait` more.
    BackingOff { wait: Duration },
}

/// Whether the last listing (`None` if there was none) still stands for a client built from
/// `fingerprint`. `backoff`: how much longer the backoff after a transient failure holds calls
/// back (see [`Failures`](crate::controller::memory::Failures)); only a change by the user (a
/// new sync request, a new spec or credential) cuts it short. A request whose listing failed
/// stays unanswered (`fresh`) but was asked: its retry waits for the backoff like any other.
pub fn due(
    last: Option<&LastSync>,
    ask: &SyncAsk,
    fingerprint: &str,
    backoff: Option<Duration>,
    now: Instant,
) -> SyncDue {
    let fresh = ask.requested.is_some() && last.is_none_or(|l| l.answered != ask.requested);
    let Some(last) = last else {
        let fresh = fresh || ask.refresh.is_some();
        return SyncDue::Yes { fresh, first: true };
    };
    let changed = (fresh && last.asked != ask.requested)
        || last.generation != ask.generation
        || last.fingerprint != fingerprint;
    if let Some(wait) = backoff.filter(|_| last.transient_failure && !changed) {
        return SyncDue::BackingOff { wait };
    }
    let refresh = ask.refresh.is_some_and(|asked| last.began < asked);
    let elapsed = now.saturating_duration_since(last.at);
    if changed || refresh || last.transient_failure || elapsed >= ask.interval {
        return SyncDue::Yes {
            fresh: fresh || refresh,
            first: false,
        };
    }
    SyncDue::No {
        wait: ask
            .interval
            .saturating_sub(elapsed)
            .max(Duration::from_secs(1)),
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;
    use crate::api::{BitbucketIntegrationSpec, SubscriptionSpec};

    const HOUR: Duration = Duration::from_secs(3600);

    fn integration(yaml: &str) -> BitbucketIntegration {
        let spec: BitbucketIntegrationSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut integration = BitbucketIntegration::new("acme", spec);
        integration.metadata = ObjectMeta {
            name: Some("acme".into()),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_000).unwrap(),
            )),
            ..ObjectMeta::default()
        };
        integration
    }

    fn subscription(yaml: &str) -> Subscription {
        let spec: SubscriptionSpec = serde_saphyr::from_str(yaml).unwrap();
        Subscription::new("ci", spec)
    }

    fn ask(requested: Option<&str>) -> SyncAsk {
        SyncAsk {
            generation: Some(1),
            requested: requested.map(str::to_owned),
            interval: HOUR,
            stretched_from: None,
            refresh: None,
        }
    }

    fn synced(at: Instant, answered: Option<&str>, transient_failure: bool) -> LastSync {
        LastSync {
            generation: Some(1),
            fingerprint: "f".into(),
            answered: answered.map(str::to_owned),
            asked: answered.map(str::to_owned),
            began: at,
            at,
            transient_failure,
        }
    }

    #[test]
    fn a_webhook_refresh_lists_again_fresh_but_waits_out_a_backoff() {
        let now = Instant::now();
        let listed = synced(now - Duration::from_secs(60), None, false);
        let refreshed = |at: Instant| SyncAsk {
            refresh: Some(at),
            ..ask(None)
        };
        let yes = SyncDue::Yes {
            fresh: true,
            first: false,
        };
        assert_eq!(due(Some(&listed), &refreshed(now), "f", None, now), yes);
        let before = now - Duration::from_secs(120);
        assert_eq!(
            due(Some(&listed), &refreshed(before), "f", None, now),
            SyncDue::No {
                wait: HOUR - Duration::from_secs(60)
            },
            "asked before the last listing began: answered by it"
        );
        let failed = synced(now - Duration::from_secs(60), None, true);
        let holding = Some(Duration::from_secs(20));
        assert_eq!(
            due(Some(&failed), &refreshed(now), "f", holding, now),
            SyncDue::BackingOff {
                wait: Duration::from_secs(20)
            },
            "deliveries never cut a backoff short"
        );
    }

    #[test]
    fn a_subscription_must_fit_its_integrations_server_and_workspace() {
        let cloud = integration("credentials: {type: ApiToken, secretRef: {name: s}}");
        let limited =
            integration("credentials: {type: AccessToken, secretRef: {name: s}}\nworkspace: acme");
        let dc = integration(
            "server: {type: DataCenter, url: 'https://bb.example.com'}\ncredentials: {type: Basic, secretRef: {name: s}}",
        );
        let in_acme = subscription("integrationRef: {name: acme}\nworkspace: acme");
        let in_other = subscription("integrationRef: {name: acme}\nworkspace: other");
        let projects = subscription("integrationRef: {name: acme}\nprojects: [API]");

        assert!(matches!(
            scope(&in_acme, &cloud),
            Ok(ListScope::CloudWorkspace { .. })
        ));
        assert_eq!(
            scope(&in_other, &limited).unwrap_err().to_string(),
            "BitbucketIntegration acme is limited to workspace acme, not other"
        );
        assert_eq!(
            scope(&projects, &cloud).unwrap_err().to_string(),
            "BitbucketIntegration acme is Bitbucket Cloud: set workspace"
        );
        assert!(
            scope(&in_acme, &dc)
                .unwrap_err()
                .to_string()
                .starts_with("workspace applies to Bitbucket Cloud only")
        );
        assert_eq!(
            scope(&projects, &dc).unwrap(),
            ListScope::DataCenter {
                projects: vec!["API".into()]
            }
        );
    }

    #[test]
    fn a_young_integration_without_a_first_validation_is_waited_for_quietly() {
        let acme = integration("credentials: {type: ApiToken, secretRef: {name: s}}");
        let created = jiff::Timestamp::from_second(1_000).unwrap();
        let patience = Duration::from_secs(30);
        let after = |seconds| created + jiff::SignedDuration::from_secs(seconds);
        assert_eq!(
            first_validation_pending(&acme, patience, after(10), created),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            first_validation_pending(&acme, patience, after(31), created),
            None,
            "a validation that hangs: say what we wait for"
        );
        assert_eq!(
            first_validation_pending(&acme, patience, after(310), after(300)),
            Some(Duration::from_secs(20)),
            "created while the operator was down: waited for as long after it started"
        );
        let mut validated = acme.clone();
        validated.status = Some(BitbucketIntegrationStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: READY.into(),
                status: "False".into(),
                reason: "InvalidCredentials".into(),
                message: "bad".into(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created),
            }],
            ..BitbucketIntegrationStatus::default()
        });
        assert_eq!(
            first_validation_pending(&validated, patience, created, created),
            None
        );
        assert_eq!(
            integration_ready("acme", validated.status.as_ref().unwrap())
                .unwrap_err()
                .to_string(),
            "BitbucketIntegration acme is not ready: bad"
        );
    }

    #[test]
    fn a_listing_is_due_first_on_a_change_a_new_request_a_retry_or_the_interval() {
        let now = Instant::now();
        let ok = synced(now, Some("a"), false);
        assert_eq!(
            due(None, &ask(None), "f", None, now),
            SyncDue::Yes {
                fresh: false,
                first: true
            }
        );
        assert_eq!(
            due(
                Some(&ok),
                &ask(Some("a")),
                "f",
                None,
                now + Duration::from_secs(60)
            ),
            SyncDue::No {
                wait: Duration::from_secs(3540)
            },
            "the request was answered"
        );
        assert_eq!(
            due(Some(&ok), &ask(Some("b")), "f", None, now),
            SyncDue::Yes {
                fresh: true,
                first: false
            }
        );
        assert_eq!(
            due(Some(&ok), &ask(Some("a")), "g", None, now),
            SyncDue::Yes {
                fresh: false,
                first: false
            },
            "a rotated credential"
        );
        assert_eq!(
            due(Some(&ok), &ask(Some("a")), "f", None, now + HOUR),
            SyncDue::Yes {
                fresh: false,
                first: false
            }
        );
    }

    #[test]
    fn a_request_whose_listing_failed_stays_unanswered_and_is_retried_fresh() {
        // The defect of issue 10: after a failed listing of a requested sync, the retry served
        // the listing cached before the request and reported it as synced.
        let now = Instant::now();
        let failed = synced(now, Some("old"), true);
        assert_eq!(
            due(Some(&failed), &ask(Some("new")), "f", None, now),
            SyncDue::Yes {
                fresh: true,
                first: false
            }
        );
    }

    #[test]
    fn a_backoff_holds_every_wake_up_back_but_a_change_by_the_user() {
        // The chaos soak's defect: an integration's status write woke its Subscriptions, whose
        // failing listings were retried at once, wrote new failures, woke the integration, ...
        let now = Instant::now();
        let failed = synced(now, Some("a"), true);
        let holding = Some(Duration::from_secs(20));
        assert_eq!(
            due(Some(&failed), &ask(Some("a")), "f", holding, now + HOUR),
            SyncDue::BackingOff {
                wait: Duration::from_secs(20)
            },
            "woken during the backoff, even past the interval (a long Retry-After)"
        );
        assert_eq!(
            due(Some(&failed), &ask(Some("a")), "f", None, now),
            SyncDue::Yes {
                fresh: false,
                first: false
            },
            "the backoff is over"
        );
        let asked_but_unanswered = LastSync {
            answered: None,
            ..failed.clone()
        };
        assert_eq!(
            due(
                Some(&asked_but_unanswered),
                &ask(Some("a")),
                "f",
                holding,
                now
            ),
            SyncDue::BackingOff {
                wait: Duration::from_secs(20)
            },
            "a request whose listing failed is retried after the backoff"
        );
        assert_eq!(
            due(Some(&asked_but_unanswered), &ask(Some("a")), "f", None, now),
            SyncDue::Yes {
                fresh: true,
                first: false
            },
            "and fetched fresh then"
        );
        for (ask, fingerprint, why) in [
            (ask(Some("b")), "f", "a sync request"),
            (ask(Some("a")), "g", "a rotated credential"),
        ] {
            assert!(
                matches!(
                    due(Some(&failed), &ask, fingerprint, holding, now),
                    SyncDue::Yes { .. }
                ),
                "{why}"
            );
        }
    }
}
