//! The Subscription's status from what a reconcile found, and the Events a status change calls
//! for: pure functions, no I/O.

use std::{borrow::Cow, collections::BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::events::EventType};

use super::{Error, check::SyncAsk, filter};
use crate::{
    api::{
        CloneUrls, IntegrationSummary, MAX_LISTED_REPOSITORIES, Repository, RepositoryFilter,
        SliceRef, Subscription, SubscriptionStatus,
        conditions::{READY, RECONCILING, STALLED, reasons},
        text,
    },
    bitbucket,
    controller::{error, finish::Announcement},
    status::conditions::{self, Desired, Status},
};

/// What a reconcile found out.
#[derive(Debug)]
pub enum SyncOutcome {
    /// A listing, fetched or shared, made with `integration`'s credential: how many
    /// repositories pass the filters (see [`entries`]), the first [`MAX_LISTED_REPOSITORIES`]
    /// of them, and the RepositorySlices now holding them all.
    Listed {
        first: Vec<Repository>,
        count: usize,
        slices: Vec<SliceRef>,
        integration: IntegrationSummary,
    },
    /// Nothing was due: the last listing stands; look again after `wait`.
    Unchanged {
        wait: std::time::Duration,
    },
    /// Woken while the backoff after a transient failure holds: the failure shown stands,
    /// `Reconciling` included.
    BackingOff {
        wait: std::time::Duration,
    },
    Suspended,
    /// A sync is due but waits `wait` for its turn in the request budget of `integration`
    /// (nothing was sent).
    WaitingForBudget {
        wait: std::time::Duration,
        integration: String,
        /// Someone asked for the sync (a sync request, a webhook): the budget is spent.
        asked: bool,
        /// Held by a 429 Bitbucket answered the credential, rather than by the turns.
        rate_limited: bool,
    },
    /// `integration` is set when the failure is the listing's (made with its credential).
    Failed {
        error: Error,
        integration: Option<IntegrationSummary>,
    },
}

impl SyncOutcome {
    /// One debug line saying what a sync of `subscription` decided, with the sync request it
    /// had to answer: what a replay of a soak needs to tell a stale list from one waiting its
    /// turn. (Fields are only evaluated when debug is on.)
    pub fn trace(&self, subscription: &Subscription, requested: Option<&str>) {
        let name = || subscription.name_any();
        match self {
            Self::Listed { count, .. } => {
                tracing::debug!(subscription = %name(), ?requested, count, "listed")
            }
            Self::Unchanged { wait } => {
                tracing::debug!(subscription = %name(), ?requested, ?wait, "not due")
            }
            Self::BackingOff { wait } => {
                tracing::debug!(subscription = %name(), ?requested, ?wait, "backing off")
            }
            Self::Suspended => tracing::debug!(subscription = %name(), "suspended"),
            Self::WaitingForBudget {
                wait,
                asked,
                rate_limited,
                ..
            } => tracing::debug!(
                subscription = %name(),
                ?requested,
                ?wait,
                asked,
                rate_limited,
                "waiting for the request budget"
            ),
            Self::Failed { error, .. } => {
                tracing::debug!(subscription = %name(), ?requested, %error, "sync failed")
            }
        }
    }
}

/// The repositories of a listing that pass the Subscription's filters, as status and slices
/// show them, sorted by full name, each name once.
pub fn entries<'a>(listing: &'a [Repository], filter: &RepositoryFilter) -> Vec<&'a Repository> {
    in_order(
        listing
            .iter()
            .filter(|r| filter::keeps(filter, r))
            .collect(),
    )
}

/// `entries` sorted by full name, each name once (the first of two).
pub fn in_order(mut entries: Vec<&Repository>) -> Vec<&Repository> {
    entries.sort_by(|a, b| a.full_name.cmp(&b.full_name));
    entries.dedup_by(|a, b| a.full_name == b.full_name);
    entries
}

/// The status an outcome leads to, from the status last shown. Failures keep the last list.
pub fn status(
    shown: &SubscriptionStatus,
    ask: &SyncAsk,
    outcome: &SyncOutcome,
    now: &Time,
) -> SubscriptionStatus {
    let mut status = shown.clone();
    let generation = ask.generation;
    status.observed_generation = generation;
    let waiting = matches!(outcome, SyncOutcome::WaitingForBudget { .. });
    if ask.requested.is_some() && !waiting {
        status.last_handled_sync_request = ask.requested.clone();
    }
    let ready = |status: &mut SubscriptionStatus, ready, reason, message: String| {
        conditions::set(
            &mut status.conditions,
            Desired::new(READY, ready, reason, message),
            generation,
            now,
        );
        conditions::remove(&mut status.conditions, STALLED);
        conditions::remove(&mut status.conditions, RECONCILING);
    };
    match outcome {
        SyncOutcome::Unchanged { .. } => {
            conditions::remove(&mut status.conditions, RECONCILING);
            keep_interval(&mut status, ask, generation, now);
        }
        SyncOutcome::BackingOff { .. } => {}
        // Only a Subscription never listed says so: a listed one keeps showing its list.
        SyncOutcome::WaitingForBudget { .. } => {
            waiting_for_budget(&mut status, outcome, generation, now);
        }
        // Suspended is a state the user asked for, so it is Ready (kstatus: Current; Flux and
        // `kubectl wait` do not wait forever); the reason says the list is not refreshed.
        SyncOutcome::Suspended => ready(
            &mut status,
            Status::True,
            reasons::SUSPENDED,
            "suspended: the last repository list is kept, not refreshed".into(),
        ),
        SyncOutcome::Listed {
            first,
            count,
            slices,
            integration,
        } => {
            status.integration = Some(integration.clone());
            let count = *count;
            let shown_list = first[..count.min(MAX_LISTED_REPOSITORIES).min(first.len())].to_vec();
            status.slices = Some(slices.clone());
            status.repositories_truncated = count > MAX_LISTED_REPOSITORIES;
            status.repository_count = Some(i32::try_from(count).unwrap_or(i32::MAX));
            if shown_list != shown.repositories || shown.repository_count.is_none() {
                status.last_change_time = Some(now.clone());
            }
            status.repositories = shown_list;
            ready(
                &mut status,
                Status::True,
                reasons::SYNCED,
                format!("{count} repositories"),
            );
            keep_interval(&mut status, ask, generation, now);
        }
        SyncOutcome::Failed { error, integration } => {
            if let Some(integration) = integration {
                status.integration = Some(integration.clone());
            }
            error::set_conditions(&mut status.conditions, error, generation, now);
        }
    }
    status
}

/// Says `Reconciling` while a Subscription never listed waits for its turn in the request
/// budget; a listed one keeps showing its list.
/// What a Subscription waits for (`outcome` is [`SyncOutcome::WaitingForBudget`]).
fn waiting_for_budget(
    status: &mut SubscriptionStatus,
    outcome: &SyncOutcome,
    generation: Option<i64>,
    now: &Time,
) {
    let SyncOutcome::WaitingForBudget {
        integration,
        wait,
        asked,
        rate_limited,
    } = outcome
    else {
        return;
    };
    // A listed one keeps showing its list, and says nothing new unless someone asked.
    if status.repository_count.is_some() && !asked {
        return;
    }
    let (reason, message) = match rate_limited {
        false if *asked => (
            reasons::REQUEST_BUDGET_SPENT,
            format!(
                "the sync asked for waits for room in the request budget of \
                 BitbucketIntegration {integration} (its status.requestBudget), about {}",
                crate::bitbucket::budget::humanize(*wait)
            ),
        ),
        false => (
            reasons::WAITING_FOR_REQUEST_BUDGET,
            format!(
                "waiting for its turn in the request budget of BitbucketIntegration \
                 {integration}, which other Subscriptions share"
            ),
        ),
        true => (
            reasons::RATE_LIMITED,
            format!(
                "Bitbucket rate-limited the credential of BitbucketIntegration {integration} \
                 (429): its planned work waits {}s, as Bitbucket asked",
                wait.as_secs()
            ),
        ),
    };
    conditions::set(
        &mut status.conditions,
        Desired::new(RECONCILING, Status::True, reason, message),
        generation,
        now,
    );
}

/// Shows the interval kept when it is stretched from the spec's: in
/// `status.stretchedSyncInterval`, and in the message of a Ready that says `Synced`.
fn keep_interval(
    status: &mut SubscriptionStatus,
    ask: &SyncAsk,
    generation: Option<i64>,
    now: &Time,
) {
    let kept = ask
        .stretched_from
        .map(|_| bitbucket::budget::humanize(ask.interval));
    status.stretched_sync_interval = kept;
    let Some(ready) = conditions::get(&status.conditions, READY)
        .filter(|r| r.status == "True" && r.reason == reasons::SYNCED)
    else {
        return;
    };
    let count = status.repository_count.unwrap_or_default();
    let message = match (&status.stretched_sync_interval, ask.stretched_from) {
        (Some(kept), Some(spec)) => format!(
            "{count} repositories; synced every {kept}, not every {}: the integration's request \
             budget cannot keep that for all of its Subscriptions",
            bitbucket::budget::humanize(spec)
        ),
        _ => format!("{count} repositories"),
    };
    if ready.message != message {
        conditions::set(
            &mut status.conditions,
            Desired::new(READY, Status::True, reasons::SYNCED, message),
            generation,
            now,
        );
    }
}

/// The longest URL an entry keeps (a longer one is left out rather than cut into a wrong one).
const MAX_URL_BYTES: usize = 2048;

/// A repository as status and slices show it: its names, as Bitbucket sent them, made safe (see
/// [`text`]), URLs within [`MAX_URL_BYTES`], and its time in whole seconds, as the API server
/// stores it (so an entry compares equal to itself read back).
pub fn to_status(repository: bitbucket::Repository) -> Repository {
    // Text that is safe already moves as it is; only what had to be cleaned is new.
    let quoted = |value: String| {
        let cleaned = match text::for_the_api(&value, text::MAX_QUOTED_BYTES) {
            Cow::Owned(cleaned) => Some(cleaned),
            Cow::Borrowed(_) => None,
        };
        cleaned.unwrap_or(value)
    };
    let url = |value: Option<String>| value.filter(|u| u.len() <= MAX_URL_BYTES);
    let display_name = (repository.name != repository.slug).then(|| quoted(repository.name));
    Repository {
        full_name: quoted(repository.full_name),
        id: repository.id.map(quoted),
        name: quoted(repository.slug),
        display_name,
        project: repository.project.map(quoted),
        private: repository.private,
        main_branch: repository.main_branch.map(quoted),
        clone_urls: CloneUrls {
            https: url(repository.clone_https),
            ssh: url(repository.clone_ssh),
        },
        html_url: url(repository.html_url),
        updated_at: (repository.updated_at)
            .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
            .map(Time),
    }
}

/// Events for the user: Ready turning to something other than True (a Warning with the
/// reason), and each change of the repository list.
pub fn announcements(before: &SubscriptionStatus, after: &SubscriptionStatus) -> Vec<Announcement> {
    let mut announcements = Vec::new();
    let ready_before = conditions::get(&before.conditions, READY);
    if let Some(ready) = conditions::get(&after.conditions, READY)
        && ready.status != "True"
        && ready_before.is_none_or(|b| b.status != ready.status || b.reason != ready.reason)
    {
        announcements.push(Announcement {
            type_: EventType::Warning,
            reason: ready.reason.clone(),
            action: "Sync",
            note: ready.message.clone(),
        });
    }
    if let Some(kept) = after.stretched_sync_interval.as_ref()
        && before.stretched_sync_interval.as_ref() != Some(kept)
    {
        announcements.push(Announcement {
            type_: EventType::Warning,
            reason: reasons::SYNC_INTERVAL_STRETCHED.to_owned(),
            action: "Sync",
            note: format!(
                "synced every {kept}: the integration's request budget cannot keep syncInterval \
                 for all of its Subscriptions (raise spec.requestBudget if Bitbucket allows \
                 more, or lengthen the intervals)"
            ),
        });
    }
    if after.last_change_time != before.last_change_time {
        let names = |status: &SubscriptionStatus| -> BTreeSet<String> {
            status
                .repositories
                .iter()
                .map(|r| r.full_name.clone())
                .collect()
        };
        let (old, new) = (names(before), names(after));
        announcements.push(Announcement {
            type_: EventType::Normal,
            reason: reasons::SYNCED.to_owned(),
            action: "Sync",
            note: format!(
                "{} repositories ({} added, {} removed)",
                after.repository_count.unwrap_or_default(),
                new.difference(&old).count(),
                old.difference(&new).count()
            ),
        });
    }
    announcements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::subscription::filter::tests::repository;

    fn listed(slugs: &[&str], filter: &RepositoryFilter) -> SyncOutcome {
        let listing: Vec<_> = slugs.iter().map(|s| repository(s, false)).collect();
        let repositories = entries(&listing, filter);
        let count = repositories.len();
        SyncOutcome::Listed {
            first: (repositories.into_iter().take(MAX_LISTED_REPOSITORIES))
                .cloned()
                .collect(),
            count,
            slices: Vec::new(),
            integration: IntegrationSummary {
                name: "acme".into(),
                account: Some("jdoe".into()),
            },
        }
    }

    fn ask() -> SyncAsk {
        SyncAsk {
            generation: Some(3),
            requested: Some("now".into()),
            interval: std::time::Duration::from_secs(600),
            stretched_from: None,
            refresh: None,
        }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_000_000).unwrap())
    }

    #[test]
    fn a_listing_is_filtered_counted_and_announced_with_what_changed() {
        let filter = RepositoryFilter {
            exclude: vec!["*-archive".into()],
            ..RepositoryFilter::default()
        };
        let first = status(
            &SubscriptionStatus::default(),
            &ask(),
            &listed(&["api", "web", "old-archive"], &filter),
            &now(),
        );
        assert_eq!(first.repository_count, Some(2));
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(first.last_handled_sync_request.as_deref(), Some("now"));
        let ready = conditions::get(&first.conditions, READY).unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("Synced", "2 repositories")
        );

        let later = Time(jiff::Timestamp::from_second(1_000_060).unwrap());
        let second = status(&first, &ask(), &listed(&["api", "docs"], &filter), &later);
        assert_eq!(second.last_change_time, Some(later.clone()));
        let announced = announcements(&first, &second);
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].note, "2 repositories (1 added, 1 removed)");
        let latest = Time(jiff::Timestamp::from_second(1_000_120).unwrap());
        let same = status(&second, &ask(), &listed(&["api", "docs"], &filter), &latest);
        assert_eq!(same, second, "the same listing changes nothing");
    }

    #[test]
    fn a_subscription_never_listed_says_what_its_first_listing_waits_for() {
        let waiting = |rate_limited| SyncOutcome::WaitingForBudget {
            wait: std::time::Duration::from_secs(598),
            integration: "acme".into(),
            asked: false,
            rate_limited,
        };
        let reconciling = |status: &SubscriptionStatus| {
            let c = conditions::get(&status.conditions, RECONCILING).unwrap();
            (c.reason.clone(), c.message.clone())
        };
        let new = SubscriptionStatus::default();
        let turn = status(&new, &ask(), &waiting(false), &now());
        assert_eq!(reconciling(&turn).0, "WaitingForRequestBudget");
        let held = status(&new, &ask(), &waiting(true), &now());
        assert_eq!(
            reconciling(&held),
            (
                "RateLimited".to_owned(),
                "Bitbucket rate-limited the credential of BitbucketIntegration acme (429): its \
                 planned work waits 598s, as Bitbucket asked"
                    .to_owned()
            )
        );
        // A listed one keeps showing its list, and says nothing new.
        let synced = status(&new, &ask(), &listed(&["api"], &Default::default()), &now());
        assert_eq!(status(&synced, &ask(), &waiting(true), &now()), synced);
        // Unless someone asked: the sync request waits for a spent budget, and is not handled.
        let asked = SyncAsk {
            requested: Some("later".into()),
            ..ask()
        };
        let spent = SyncOutcome::WaitingForBudget {
            wait: std::time::Duration::from_secs(600),
            integration: "acme".into(),
            asked: true,
            rate_limited: false,
        };
        let waits = status(&synced, &asked, &spent, &now());
        assert_eq!(waits.repositories, synced.repositories);
        assert_eq!(waits.last_handled_sync_request.as_deref(), Some("now"));
        assert_eq!(
            reconciling(&waits),
            (
                "RequestBudgetSpent".to_owned(),
                "the sync asked for waits for room in the request budget of BitbucketIntegration \
                 acme (its status.requestBudget), about 10m"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_failed_listing_keeps_the_last_list_and_says_why() {
        let filter = RepositoryFilter::default();
        let synced = status(
            &SubscriptionStatus::default(),
            &ask(),
            &listed(&["api"], &filter),
            &now(),
        );
        let failed = status(
            &synced,
            &ask(),
            &SyncOutcome::Failed {
                error: Error::Bitbucket(bitbucket::Error::Unavailable {
                    status: 503,
                    excerpt: String::new(),
                }),
                integration: None,
            },
            &now(),
        );
        assert_eq!(failed.repositories, synced.repositories);
        let ready = conditions::get(&failed.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "BitbucketUnavailable")
        );
        assert!(
            conditions::get(&failed.conditions, RECONCILING).is_some(),
            "it retries"
        );
        let announced = announcements(&synced, &failed);
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].type_, EventType::Warning);
    }

    #[test]
    fn a_list_longer_than_the_status_holds_is_counted_in_full() {
        let slugs: Vec<String> = (0..MAX_LISTED_REPOSITORIES + 5)
            .map(|i| format!("r{i:05}"))
            .collect();
        let slugs: Vec<&str> = slugs.iter().map(String::as_str).collect();
        let big = status(
            &SubscriptionStatus::default(),
            &ask(),
            &listed(&slugs, &RepositoryFilter::default()),
            &now(),
        );
        assert_eq!(big.repositories.len(), MAX_LISTED_REPOSITORIES);
        assert!(big.repositories_truncated);
        assert_eq!(
            big.repository_count,
            Some(i32::try_from(MAX_LISTED_REPOSITORIES + 5).unwrap())
        );
    }
}
