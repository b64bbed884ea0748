//! Listings shared between Subscriptions: those using the same integration and scope share one
//! Bitbucket listing per interval, and concurrent syncs of one scope wait for a single fetch.
//! Between full listings, a one-request summary (size and newest change) that matches the last
//! listing's proves nothing changed; a full listing still happens every few intervals. No I/O
//! of its own (the caller passes the summary and the fetch).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::bitbucket::{self, ListingSummary, Repository};

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
    repositories: Arc<Vec<Repository>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Listing>>>;

/// Listings by integration and scope.
#[derive(Default)]
pub struct ListingCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl ListingCache {
    /// The repositories for `key`: the cached listing when it was made with the same credential
    /// (`fingerprint`) and checked less than `max_age` ago — or, when `fresh` is asked for, fully
    /// fetched after this call began. An older listing is checked with `summarize` (at most
    /// `confirmations` times in a row) and fetched again with `fetch` when the summary differs.
    #[allow(clippy::too_many_arguments)]
    pub async fn get<S, F>(
        &self,
        key: String,
        fingerprint: &str,
        max_age: Duration,
        fresh: bool,
        confirmations: u32,
        summarize: S,
        fetch: F,
    ) -> Result<Arc<Vec<Repository>>, bitbucket::Error>
    where
        S: Future<Output = Result<Option<ListingSummary>, bitbucket::Error>>,
        F: Future<Output = Result<Vec<Repository>, bitbucket::Error>>,
    {
        let asked_at = Instant::now();
        let slot = Arc::clone(
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default(),
        );
        let mut listing = slot.lock().await;
        if let Some(cached) = listing.as_mut().filter(|l| l.fingerprint == fingerprint) {
            if fresh {
                if cached.fetched_at >= asked_at {
                    return Ok(Arc::clone(&cached.repositories));
                }
            } else if cached.checked_at.elapsed() < max_age {
                return Ok(Arc::clone(&cached.repositories));
            } else if cached.confirmed < confirmations
                && summarize.await?.as_ref() == Some(&cached.summary)
            {
                cached.checked_at = Instant::now();
                cached.confirmed += 1;
                return Ok(Arc::clone(&cached.repositories));
            }
        }
        let repositories = fetch.await?;
        let now = Instant::now();
        *listing = Some(Listing {
            fingerprint: fingerprint.to_owned(),
            fetched_at: now,
            checked_at: now,
            confirmed: 0,
            summary: ListingSummary::of(&repositories),
            repositories: Arc::new(repositories),
        });
        Ok(Arc::clone(
            &listing.as_ref().expect("just stored").repositories,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn fetch(calls: &AtomicUsize) -> Result<Vec<Repository>, bitbucket::Error> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        Ok(Vec::new())
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
            .get("k".into(), "f", hour, false, 0, unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "f", hour, false, 0, unchanged(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache
            .get(
                "k".into(),
                "f",
                Duration::ZERO,
                false,
                0,
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
            .get("k".into(), "f", hour, false, 0, unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "g", hour, false, 0, unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "g", hour, true, 0, unchanged(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_syncs_of_one_scope_share_one_fetch() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let hour = Duration::from_secs(3600);
        let all =
            (0..10).map(|_| cache.get("k".into(), "f", hour, false, 0, unchanged(), fetch(&calls)));
        futures::future::try_join_all(all).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unchanged_summary_stands_in_for_a_listing_a_few_times_in_a_row() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let now = Duration::ZERO;
        cache
            .get("k".into(), "f", now, false, 2, unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "f", now, false, 2, unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "f", now, false, 2, unchanged(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "two summaries confirmed the listing"
        );
        cache
            .get("k".into(), "f", now, false, 2, unchanged(), fetch(&calls))
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
            .get("k".into(), "f", now, false, 5, unchanged(), fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "f", now, false, 5, changed(), fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
