//! Listings shared between Subscriptions: those using the same integration and scope share one
//! Bitbucket listing per interval, and concurrent syncs of one scope wait for a single fetch.
//! Between full listings, a one-request summary (size and newest change) that matches the last
//! listing's proves nothing changed; a full listing still happens every few intervals. No I/O
//! of its own (the caller passes the summary and the fetch).

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::lock;
use crate::{
    api::{Entries, Repository},
    bitbucket::{self, ListScope, ListingSummary},
};

/// A listing as fetched: the summary of what Bitbucket sent (to compare later probes with) and
/// the repositories as a Subscription's list shows them.
pub struct Fetched {
    pub summary: ListingSummary,
    pub repositories: Vec<Repository>,
}

#[cfg(test)]
impl Fetched {
    /// An empty listing.
    pub fn empty() -> Self {
        Self {
            summary: ListingSummary::of(&[]),
            repositories: Vec::new(),
        }
    }
}

/// A fetched listing.
struct Listing {
    fingerprint: String,
    /// When it was fetched in full.
    fetched_at: Instant,
    /// When it was last fetched or confirmed by a summary.
    checked_at: Instant,
    /// Summaries that confirmed it since the full fetch.
    confirmed: u32,
    summary: ListingSummary,
    /// Compact, as a slice's entries are (one listing is kept per integration and scope: at
    /// 10,000 integrations, about 50 MiB as structs), and parsed for each Subscription given it.
    repositories: Entries,
}

type Slot = Arc<tokio::sync::Mutex<Option<Listing>>>;

/// One integration and scope: its listing, and when a Subscription last asked for it.
struct Entry {
    slot: Slot,
    used_at: Instant,
    max_age: Duration,
}

/// What a Subscription asks of the cache.
pub struct Want<'a> {
    /// The UID of the integration whose credential lists.
    pub integration: &'a str,
    pub scope: &'a ListScope,
    /// What the integration's client was built from: a listing made with another is not used.
    pub fingerprint: &'a str,
    /// How old a listing may be (the Subscription's interval).
    pub max_age: Duration,
    /// A sync request: only a listing fully fetched after this call began will do.
    pub fresh: bool,
    /// How many unchanged summaries in a row may stand in for a full listing.
    pub confirmations: u32,
}

/// Listings by integration and scope.
#[derive(Default)]
pub struct ListingCache {
    entries: Mutex<HashMap<(String, ListScope), Entry>>,
}

impl ListingCache {
    /// The repositories `want` asks for: the cached listing when it was made with the same
    /// credential and checked less than `max_age` ago — or, when `fresh` is asked for, fully
    /// fetched after this call began. An older listing is checked with `summarize` (at most
    /// `confirmations` times in a row) and fetched again with `fetch` when the summary differs.
    pub async fn get<S, F>(
        &self,
        want: Want<'_>,
        summarize: S,
        fetch: F,
    ) -> Result<Arc<Vec<Repository>>, bitbucket::Error>
    where
        S: Future<Output = Result<Option<ListingSummary>, bitbucket::Error>>,
        F: Future<Output = Result<Fetched, bitbucket::Error>>,
    {
        let asked_at = Instant::now();
        let slot = {
            let mut entries = lock(&self.entries);
            let entry = entries
                .entry((want.integration.to_owned(), want.scope.clone()))
                .or_insert_with(|| Entry {
                    slot: Slot::default(),
                    used_at: asked_at,
                    max_age: want.max_age,
                });
            entry.used_at = asked_at;
            entry.max_age = want.max_age;
            Arc::clone(&entry.slot)
        };
        let mut listing = slot.lock().await;
        if let Some(cached) = listing
            .as_mut()
            .filter(|l| l.fingerprint == want.fingerprint)
        {
            if want.fresh {
                if cached.fetched_at >= asked_at {
                    return Ok(Arc::new(cached.repositories.to_vec()));
                }
            } else if cached.checked_at.elapsed() < want.max_age {
                return Ok(Arc::new(cached.repositories.to_vec()));
            } else if cached.confirmed < want.confirmations
                && summarize.await?.as_ref() == Some(&cached.summary)
            {
                cached.checked_at = Instant::now();
                cached.confirmed += 1;
                return Ok(Arc::new(cached.repositories.to_vec()));
            }
        }
        // The listing being replaced goes before the new one is fetched: two listings of a
        // large scope are never held at once. (After a failed fetch nothing is cached, and the
        // next sync asks Bitbucket again, as it would have.)
        *listing = None;
        let Fetched {
            summary,
            repositories,
        } = fetch.await?;
        let now = Instant::now();
        *listing = Some(Listing {
            fingerprint: want.fingerprint.to_owned(),
            fetched_at: now,
            checked_at: now,
            confirmed: 0,
            summary,
            repositories: Entries::from(repositories.as_slice()),
        });
        Ok(Arc::new(repositories))
    }

    /// Drops the listing of integration `uid` and `scope` (a repository of it was fetched
    /// alone since: the listing no longer shows it as it is).
    pub fn forget(&self, uid: &str, scope: &ListScope) {
        lock(&self.entries).remove(&(uid.to_owned(), scope.clone()));
    }

    /// Drops every listing made with the integration `uid`.
    pub fn forget_integration(&self, uid: &str) {
        lock(&self.entries).retain(|(integration, _), _| integration != uid);
    }

    /// Drops the listings of integrations that are gone, and those no Subscription asked for in
    /// twice their interval (a scope no Subscription uses any more); returns how many.
    pub fn sweep(&self, integrations: &HashSet<String>) -> usize {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|(integration, _), entry| {
            integrations.contains(integration)
                && entry.used_at.elapsed() < entry.max_age.saturating_mul(2)
        });
        before - entries.len()
    }

    /// How many listings are kept.
    pub fn count(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static SCOPE: ListScope = ListScope::DataCenter {
        projects: Vec::new(),
    };

    fn want(fingerprint: &str, max_age: Duration, fresh: bool, confirmations: u32) -> Want<'_> {
        Want {
            integration: "i",
            scope: &SCOPE,
            fingerprint,
            max_age,
            fresh,
            confirmations,
        }
    }

    async fn fetch(calls: &AtomicUsize) -> Result<Fetched, bitbucket::Error> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        Ok(Fetched::empty())
    }

    /// The summary of an empty listing, i.e. "unchanged" for what `fetch` returns.
    async fn unchanged() -> Result<Option<ListingSummary>, bitbucket::Error> {
        Ok(Some(ListingSummary::of(&[])))
    }

    async fn changed() -> Result<Option<ListingSummary>, bitbucket::Error> {
        Ok(Some(ListingSummary {
            size: 1,
            newest: None,
        }))
    }

    #[tokio::test]
    async fn a_listing_is_shared_until_it_is_older_than_the_interval() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let hour = Duration::from_secs(3600);
        cache
            .get(want("f", hour, false, 0), unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get(want("f", hour, false, 0), unchanged(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache
            .get(
                want("f", Duration::ZERO, false, 0),
                unchanged(),
                fetch(&calls),
            )
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_new_credential_or_a_fresh_request_fetches_again() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let hour = Duration::from_secs(3600);
        cache
            .get(want("f", hour, false, 0), unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get(want("g", hour, false, 0), unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get(want("g", hour, true, 0), unchanged(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_syncs_of_one_scope_share_one_fetch() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let hour = Duration::from_secs(3600);
        let all = (0..10).map(|_| cache.get(want("f", hour, false, 0), unchanged(), fetch(&calls)));
        futures::future::try_join_all(all).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unchanged_summary_stands_in_for_a_listing_a_few_times_in_a_row() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let now = Duration::ZERO;
        cache
            .get(want("f", now, false, 2), unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get(want("f", now, false, 2), unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get(want("f", now, false, 2), unchanged(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "two summaries confirmed the listing"
        );
        cache
            .get(want("f", now, false, 2), unchanged(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "then a full listing, for correctness"
        );
    }

    #[tokio::test]
    async fn a_changed_summary_fetches_again() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let now = Duration::ZERO;
        cache
            .get(want("f", now, false, 5), unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get(want("f", now, false, 5), changed(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_listing_is_let_go_before_its_successor_is_fetched() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let first = cache
            .get(
                want("f", Duration::from_secs(60), false, 0),
                unchanged(),
                fetch(&calls),
            )
            .await
            .unwrap();
        let held_meanwhile = AtomicUsize::new(usize::MAX);
        let refetch = async {
            // Only the test still holds the first listing while the next is fetched.
            held_meanwhile.store(Arc::strong_count(&first), Ordering::SeqCst);
            Ok(Fetched::empty())
        };
        cache
            .get(
                want("f", Duration::from_secs(60), true, 0),
                unchanged(),
                refetch,
            )
            .await
            .unwrap();
        assert_eq!(held_meanwhile.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_listing_nobody_asked_for_in_twice_its_interval_is_swept() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let live: HashSet<String> = ["i".to_owned()].into();
        cache
            .get(
                want("f", Duration::ZERO, false, 0),
                unchanged(),
                fetch(&calls),
            )
            .await
            .unwrap();
        assert_eq!(cache.sweep(&live), 1, "unused for longer than 2 x 0 s");
        cache
            .get(
                want("f", Duration::from_secs(3600), false, 0),
                unchanged(),
                fetch(&calls),
            )
            .await
            .unwrap();
        assert_eq!(cache.sweep(&live), 0, "asked for a moment ago");
        assert_eq!(cache.sweep(&HashSet::new()), 1, "its integration is gone");
    }
}
