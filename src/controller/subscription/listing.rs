//! Listings shared between Subscriptions: those using the same integration and scope share one
//! Bitbucket listing per interval, and concurrent syncs of one scope wait for a single fetch.
//! No I/O of its own (the caller passes the fetch).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::bitbucket::{self, Repository};

/// A fetched listing.
struct Listing {
    fingerprint: String,
    fetched_at: Instant,
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
    /// (`fingerprint`) less than `max_age` ago — or, when `fresh` is asked for, after this call
    /// began — and otherwise the result of `fetch`, which is then cached.
    pub async fn get<F>(
        &self,
        key: String,
        fingerprint: &str,
        max_age: Duration,
        fresh: bool,
        fetch: F,
    ) -> Result<Arc<Vec<Repository>>, bitbucket::Error>
    where
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
        if let Some(cached) = listing.as_ref().filter(|l| l.fingerprint == fingerprint) {
            let usable = if fresh {
                cached.fetched_at >= asked_at
            } else {
                cached.fetched_at.elapsed() < max_age
            };
            if usable {
                return Ok(Arc::clone(&cached.repositories));
            }
        }
        let repositories = Arc::new(fetch.await?);
        *listing = Some(Listing {
            fingerprint: fingerprint.to_owned(),
            fetched_at: Instant::now(),
            repositories: Arc::clone(&repositories),
        });
        Ok(repositories)
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

    #[tokio::test]
    async fn a_listing_is_shared_until_it_is_older_than_the_interval() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let hour = Duration::from_secs(3600);
        cache
            .get("k".into(), "f", hour, false, fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "f", hour, false, fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache
            .get("k".into(), "f", Duration::ZERO, false, fetch(&calls))
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
            .get("k".into(), "f", hour, false, fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "g", hour, false, fetch(&calls))
            .await
            .unwrap();
        cache
            .get("k".into(), "g", hour, true, fetch(&calls))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_syncs_of_one_scope_share_one_fetch() {
        let cache = ListingCache::default();
        let calls = AtomicUsize::new(0);
        let hour = Duration::from_secs(3600);
        let all = (0..10).map(|_| cache.get("k".into(), "f", hour, false, fetch(&calls)));
        futures::future::try_join_all(all).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
