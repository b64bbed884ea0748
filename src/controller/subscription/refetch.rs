//! The repositories webhook deliveries named, fetched one request each, and only their entries
//! written (the one slice holding each, and status): the least work a push, a settings change
//! or a rename asks for. What this replica cannot do exactly — its copy of the Subscription's
//! list is not the complete one its status names, or a fetch fails — is left to a full
//! listing, with its backoff. Does network I/O (Bitbucket, the API server).

use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::{
    Context, Found, filter, publish_entries,
    report::{self, SyncOutcome},
};
use crate::{
    api::{Repository, Subscription},
    catalog::Served,
    controller::{finish, memory::Told},
};

/// How long the repositories webhooks named wait for the deliveries to stop before they are
/// fetched, and a re-list they asked for before it begins: a burst of pushes to the same
/// repositories costs one fetch each, not one per push, and a burst of created repositories one
/// listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settle {
    /// Without another delivery for this long, the burst is over.
    pub quiet: Duration,
    /// ... and never longer than this from its first delivery, however long it lasts.
    pub longest: Duration,
}

impl Default for Settle {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(250),
            longest: Duration::from_secs(2),
        }
    }
}

impl Settle {
    /// How much longer `told` waits at `now` (`None`: fetch now).
    pub fn told(&self, told: &[Told], now: Instant) -> Option<Duration> {
        let last = told.iter().map(|t| t.at).max()?;
        let first = told.iter().map(|t| t.first).min()?;
        self.wait(last, first, now)
    }

    /// How much longer deliveries named last at `last`, first at `first`, wait at `now`.
    pub fn wait(&self, last: Instant, first: Instant, now: Instant) -> Option<Duration> {
        let quiet = (self.quiet).saturating_sub(now.saturating_duration_since(last));
        let longest = (self.longest).saturating_sub(now.saturating_duration_since(first));
        Some(quiet.min(longest)).filter(|wait| !wait.is_zero())
    }
}

/// Fetches the repositories in `told` and writes their entries into the Subscription's list;
/// `None` when a full listing must answer them instead.
pub(super) async fn told(
    context: &Context,
    subscription: &Subscription,
    found: &Found,
    told: &[Told],
) -> Option<SyncOutcome> {
    let shared = &context.shared;
    let namespace = subscription.namespace()?;
    let Ok(Served::Complete(list)) = shared.catalog.list(&namespace, &subscription.name_any())
    else {
        return None;
    };
    let mut fetched = Vec::with_capacity(told.len());
    for told in told {
        match found
            .resolved
            .client
            .repository(&told.changed.full_name)
            .await
        {
            Ok(repository) => fetched.extend(repository.map(report::to_status)),
            Err(error) => {
                tracing::debug!(%error, "fetching a repository a webhook named: listing instead");
                return None;
            }
        }
    }
    let named = |entry: &Repository| told.iter().any(|t| names(t, entry));
    let listed = list.parse();
    let kept = listed.iter().filter(|r| !named(r));
    let entries = report::in_order(
        kept.chain(fetched.iter().filter(|r| fits(subscription, r)))
            .collect(),
    );
    // The cached listing shows these repositories as they were: the next sync lists afresh.
    (shared.memory.listings).forget(&finish::uid(&*found.integration), &found.scope);
    let integration = found.summary.clone();
    let outcome = publish_entries(context, subscription, entries, integration).await;
    if matches!(outcome, SyncOutcome::Listed { .. }) {
        let answered = |t: &Told| {
            (told.iter()).any(|d| d.at == t.at && d.changed.full_name == t.changed.full_name)
        };
        shared.memory.subscription(&finish::uid(subscription), |m| {
            m.told.retain(|t| !answered(t))
        });
    }
    Some(outcome)
}

/// Whether `told` is about `entry`: by Bitbucket's id, or by its name now or before a rename.
fn names(told: &Told, entry: &Repository) -> bool {
    let changed = &told.changed;
    let same = |name: &str| name.eq_ignore_ascii_case(&entry.full_name);
    (changed.id.is_some() && changed.id == entry.id)
        || same(&changed.full_name)
        || changed.renamed_from.as_deref().is_some_and(same)
}

/// Whether a fetched repository belongs in the Subscription's list: its filters, and on
/// Cloud its projects (the listing filters those on Bitbucket's side).
fn fits(subscription: &Subscription, repository: &Repository) -> bool {
    let spec = &subscription.spec;
    let in_projects = spec.workspace.is_none()
        || spec.projects.is_empty()
        || (repository.project.as_deref())
            .is_some_and(|p| spec.projects.iter().any(|k| k.eq_ignore_ascii_case(p)));
    in_projects && filter::keeps(&spec.repositories, repository)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitbucket::webhook::Changed;

    fn told(at: Instant, first: Instant) -> Told {
        let changed = Changed {
            full_name: "acme/api".into(),
            id: None,
            renamed_from: None,
        };
        Told { changed, at, first }
    }

    #[test]
    fn a_burst_is_fetched_once_quiet_or_after_the_longest_wait() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let settle = Settle::default();
        assert_eq!(settle.told(&[], now), None);
        let told_at = |at: u64, first: u64| [told(now - ms(at), now - ms(first))];
        // Named 50 ms ago, the first time 1 s ago: wait for 200 ms more quiet.
        assert_eq!(settle.told(&told_at(50, 1000), now), Some(ms(200)));
        // Quiet for 250 ms: now.
        assert_eq!(settle.told(&told_at(250, 300), now), None);
        // Deliveries never stop: no longer than 2 s after the first.
        assert_eq!(settle.told(&told_at(0, 1900), now), Some(ms(100)));
        assert_eq!(settle.told(&told_at(0, 2000), now), None);
    }
}
