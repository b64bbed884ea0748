//! Everything the operator remembers about an object between reconciles, in one place with one
//! way out. No I/O.
//!
//! Per integration (by UID): its Bitbucket client and what it was built from, its last
//! validation, its failures in a row (for backoff) and the status last decided for it. Per
//! Subscription (by UID): its last sync, its failures in a row, the status last decided and the
//! integration it pointed at. Per integration and scope: the shared listing ([`ListingCache`]).
//!
//! Entries go when the watch reports their object deleted ([`Memory::forget_integration`],
//! [`Memory::forget_subscription`], called by the watch feed) and, whatever way the object went
//! (a finalizer released by hand, a delete event lost in a watch restart, a reconcile that
//! re-created an entry just after the delete), at the next [`Memory::sweep`] against the stores.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::metrics::gauge::Gauge;

use super::{credentials::Resolved, error::Class, listing::ListingCache, lock};
use crate::{
    api::{BitbucketIntegrationStatus, SubscriptionStatus},
    status::remembered::Remembered,
};

/// What is remembered about one integration.
#[derive(Default)]
pub struct IntegrationMemory {
    /// The client built from its spec and Secrets, reused until either changes.
    pub client: Option<Resolved>,
    /// The last call to Bitbucket that validated it, so it is called again only when due.
    pub validation: Option<Validation>,
    /// Transient failures in a row, and how long their backoff holds Bitbucket calls back.
    pub failures: Failures,
    /// The status decided last, until the cache shows it (see [`Remembered`]).
    pub status: Remembered<BitbucketIntegrationStatus>,
    /// Since when cleanup has found no Subscription using it, while it is being deleted.
    pub unused_since: Option<Instant>,
    /// The last run of its hook registration (`spec.webhook.register`).
    pub hooks: Option<HooksRun>,
    /// Whether this process found its deletion blocked (and counts it in the
    /// `blocked_deletions` gauge): set and cleared only by [`Memory::deletion_blocked`].
    deletion_blocked: bool,
}

/// What the last hook registration of an integration was for, and how it went.
#[derive(Clone, Debug)]
pub struct HooksRun {
    /// A hash of what the hooks should be (URL, owners, secret, credential).
    pub key: u64,
    pub at: Instant,
    /// Bitbucket refused (a missing scope or permission): not again until the key changes.
    pub refused: bool,
    /// SHA-256 of the secret the hooks were last given (kept in memory only).
    pub secret: [u8; 32],
}

/// An object's transient failures in a row, and until when the backoff after the last one holds
/// its Bitbucket calls back. Not only its requeue: a reconcile woken earlier (a Subscription's
/// status write wakes its integration, the integration's wakes its Subscriptions, a Secret
/// touched) must not call Bitbucket before then either, or the two controllers, each writing a
/// new failure message, wake each other at the API server's pace (the chaos soak saw 450 token
/// grants in 6 s for one credential).
///
/// Failures of the Kubernetes API (a read or write the API server refused or did not answer)
/// are counted apart (`api_in_a_row`): their backoff is the object's next reconcile only. It
/// never holds Bitbucket calls back (what was fetched is remembered before it is written), and
/// it starts again once a reconcile of the object finishes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Failures {
    pub in_a_row: u32,
    /// Kubernetes API failures in a row.
    pub api_in_a_row: u32,
    pub retry_at: Option<Instant>,
    /// When a Bitbucket server's recovery last cut this backoff short (see [`super::recovery`]).
    pub released_at: Option<Instant>,
    /// When the API server's recovery last woke the object.
    pub api_released_at: Option<Instant>,
}

impl Failures {
    /// How much longer the backoff holds at `now` (`None`: Bitbucket may be called).
    pub fn holding(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .map(|at| at.saturating_duration_since(now))
            .filter(|wait| !wait.is_zero())
    }
}

/// The outcome of the last validation.
#[derive(Clone, Debug)]
pub struct Validation {
    /// What the client was built from (spec generation and Secret versions).
    pub fingerprint: String,
    /// The sync request it answered, if any.
    pub sync_request: Option<String>,
    pub at: Instant,
    /// `None` when it succeeded.
    pub failure: Option<Class>,
    /// Who the credential authenticated as, as status shows it (`status.account`'s username,
    /// else its display name), when it succeeded.
    pub account: Option<String>,
}

/// What is remembered about one Subscription.
#[derive(Default)]
pub struct SubscriptionMemory {
    /// The last listing it was given, so it lists again only when due.
    pub sync: Option<LastSync>,
    /// Transient failures in a row, and how long their backoff holds Bitbucket calls back.
    pub failures: Failures,
    /// The status decided last, until the cache shows it (see [`Remembered`]).
    pub status: Remembered<SubscriptionStatus>,
    /// The integration it pointed at when last seen, so re-pointing it wakes the integration it
    /// left (whose deletion may be waiting for it).
    pub integration: Option<String>,
    /// Its RepositorySlices written by this process that the cache may not show yet.
    pub slices: SlicesWritten,
    /// When a webhook delivery last asked for a refresh not answered yet (see `crate::webhook`).
    pub refresh: Option<Instant>,
    /// When the first of the refreshes not answered yet was asked for.
    pub refresh_first: Option<Instant>,
    /// Repositories webhook deliveries said changed, not fetched again yet (at most
    /// [`super::refresh::MAX_TOLD`]; more become a refresh).
    pub told: Vec<Told>,
}

/// A repository a webhook delivery said changed, and when.
#[derive(Clone, Debug)]
pub struct Told {
    pub changed: crate::bitbucket::webhook::Changed,
    /// When it was last named.
    pub at: Instant,
    /// When it was first named since it was last fetched.
    pub first: Instant,
}

/// RepositorySlices written (by name: the digest written, or `None` when deleted) and when,
/// until the cache shows them: the next plan waits for it, so it never plans from slices older
/// than its own writes (which would create a second copy of entries already written).
#[derive(Clone, Debug, Default)]
pub struct SlicesWritten {
    pub at: Option<Instant>,
    pub slices: std::collections::BTreeMap<String, Option<String>>,
}

/// When a Subscription last listed, and for what.
#[derive(Clone, Debug)]
pub struct LastSync {
    pub generation: Option<i64>,
    /// The fingerprint of the integration's client it listed with.
    pub fingerprint: String,
    /// The last sync request answered by a listing fetched after it was made (a request whose
    /// listing failed is not answered: the retry must fetch again).
    pub answered: Option<String>,
    /// The sync request when it listed, answered or not (a new one cuts a backoff short).
    pub asked: Option<String>,
    /// When that listing began (a webhook refresh asked for after it is not answered by it).
    pub began: Instant,
    pub at: Instant,
    /// Whether that listing failed transiently (so it is retried once the backoff is over).
    pub transient_failure: bool,
}

/// The operator's memory of every object it reconciles.
#[derive(Default)]
pub struct Memory {
    /// Entries are boxed: a hash table keeps room to spare (up to half again its entries), and
    /// a bucket holding the entry inline costs its size empty or full (5.9 MiB of table for
    /// 10,000 Subscriptions, against 32 bytes a bucket boxed).
    integrations: Mutex<HashMap<String, Box<IntegrationMemory>>>,
    subscriptions: Mutex<HashMap<String, Box<SubscriptionMemory>>>,
    /// Listings shared between the Subscriptions of one integration and scope.
    pub listings: ListingCache,
    /// Each integration's request budget and the plan of its Subscriptions' syncs.
    pub budgets: Arc<super::budget::Budgets>,
    /// The integrations whose deletion this process found blocked: counted from the entries,
    /// so an entry that goes (deleted, swept, forgotten when this replica stops leading) is no
    /// longer counted. A status saying `DeletionBlocked` counts nothing by itself: a new leader
    /// reads it from an object it never saw blocked.
    pub blocked_deletions: Gauge,
    /// The versions of the Secrets in use, as their watch shows them.
    pub secret_versions: super::credentials::SecretVersions,
    /// The integrations whose first validation by this process is under way.
    pub first_validations: super::underway::FirstValidations,
}

/// How many entries a [`Memory::sweep`] dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub integrations: usize,
    pub subscriptions: usize,
    pub listings: usize,
    pub budgets: usize,
}

impl Memory {
    /// An empty memory that keeps `gauge` at the number of blocked deletions it holds.
    pub fn counting_blocked_deletions(gauge: Gauge) -> Self {
        Self {
            blocked_deletions: gauge,
            ..Self::default()
        }
    }

    /// Runs `f` on the memory of the integration `uid` (created empty when there is none).
    pub fn integration<R>(&self, uid: &str, f: impl FnOnce(&mut IntegrationMemory) -> R) -> R {
        f(lock(&self.integrations).entry(uid.to_owned()).or_default())
    }

    /// Runs `f` on the memory of the Subscription `uid` (created empty when there is none).
    pub fn subscription<R>(&self, uid: &str, f: impl FnOnce(&mut SubscriptionMemory) -> R) -> R {
        f(lock(&self.subscriptions).entry(uid.to_owned()).or_default())
    }

    /// Records whether cleanup found the deletion of integration `uid` blocked; returns whether
    /// this process had found it blocked before.
    pub fn deletion_blocked(&self, uid: &str, blocked: bool) -> bool {
        let mut memory = lock(&self.integrations);
        let entry = memory.entry(uid.to_owned()).or_default();
        let was = std::mem::replace(&mut entry.deletion_blocked, blocked);
        self.count_blocked(&memory);
        was
    }

    fn count_blocked(&self, memory: &HashMap<String, Box<IntegrationMemory>>) {
        let blocked = memory.values().filter(|m| m.deletion_blocked).count();
        self.blocked_deletions
            .set(i64::try_from(blocked).unwrap_or(i64::MAX));
    }

    /// Drops all that is remembered about a deleted integration, its listings included.
    pub fn forget_integration(&self, uid: &str) {
        let mut memory = lock(&self.integrations);
        memory.remove(uid);
        self.count_blocked(&memory);
        drop(memory);
        self.listings.forget_integration(uid);
        self.budgets.forget_integration(uid);
    }

    /// Drops all that is remembered about a deleted Subscription.
    pub fn forget_subscription(&self, uid: &str) {
        lock(&self.subscriptions).remove(uid);
        self.budgets.forget_subscription(uid);
    }

    /// Drops the memory of every object not among the live ones (the UIDs in the stores), and
    /// listings no Subscription has asked for in twice their interval.
    pub fn sweep(&self, integrations: &HashSet<String>, subscriptions: &HashSet<String>) -> Swept {
        let mut swept = Swept::default();
        {
            let mut memory = lock(&self.integrations);
            let before = memory.len();
            memory.retain(|uid, _| integrations.contains(uid));
            swept.integrations = before - memory.len();
            self.count_blocked(&memory);
        }
        {
            let mut memory = lock(&self.subscriptions);
            let before = memory.len();
            memory.retain(|uid, _| subscriptions.contains(uid));
            swept.subscriptions = before - memory.len();
        }
        swept.listings = self.listings.sweep(integrations);
        swept.budgets = self.budgets.sweep(integrations, subscriptions);
        swept
    }

    /// Forgets everything (when another replica may have changed what was remembered).
    pub fn clear(&self) {
        self.sweep(&HashSet::new(), &HashSet::new());
    }

    /// How many objects have an entry (integrations, Subscriptions), for tests.
    pub fn count(&self) -> (usize, usize) {
        (
            lock(&self.integrations).len(),
            lock(&self.subscriptions).len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        bitbucket::ListScope,
        controller::listing::{Fetched, Want},
    };

    fn live(uids: &[&str]) -> HashSet<String> {
        uids.iter().map(|u| (*u).to_owned()).collect()
    }

    async fn list(memory: &Memory, integration: &str) {
        let scope = ListScope::DataCenter {
            projects: Vec::new(),
        };
        let want = Want {
            integration,
            scope: &scope,
            fingerprint: "f",
            max_age: Duration::from_secs(60),
            fresh: false,
            confirmations: 0,
        };
        memory
            .listings
            .get(want, async { Ok(None) }, async { Ok(Fetched::empty()) })
            .await
            .unwrap();
    }

    #[test]
    fn a_deleted_subscription_leaves_nothing_behind() {
        let memory = Memory::default();
        memory.subscription("s", |m| {
            m.failures.in_a_row = 3;
            m.integration = Some("acme".into());
        });
        memory.forget_subscription("s");
        assert_eq!(memory.count(), (0, 0));
    }

    #[tokio::test]
    async fn a_deleted_integration_leaves_neither_its_client_state_nor_its_listings() {
        let memory = Memory::default();
        memory.integration("i", |m| m.failures.in_a_row = 1);
        list(&memory, "i").await;
        memory.forget_integration("i");
        assert_eq!(memory.count(), (0, 0));
        assert_eq!(memory.listings.count(), 0);
    }

    #[tokio::test]
    async fn an_integration_released_by_hand_is_swept_with_its_listings() {
        // Its finalizer patched away, the integration never reached cleanup: only the sweep
        // sees it is gone from the store.
        let memory = Memory::default();
        memory.integration("kept", |m| m.failures.in_a_row = 1);
        memory.integration("released", |m| m.failures.in_a_row = 1);
        list(&memory, "kept").await;
        list(&memory, "released").await;
        let swept = memory.sweep(&live(&["kept"]), &live(&[]));
        assert_eq!(
            swept,
            Swept {
                integrations: 1,
                subscriptions: 0,
                listings: 1,
                budgets: 0,
            }
        );
        assert_eq!(memory.count(), (1, 0));
        assert_eq!(memory.listings.count(), 1);
    }

    /// The handover the review found: the old leader counted a blocked deletion, the new one
    /// reads `DeletionBlocked=True` from status and releases it. Neither gauge goes negative, and
    /// the old leader stops counting what it no longer reconciles.
    #[test]
    fn blocked_deletions_count_what_this_process_saw_across_a_handover() {
        let (old, new) = (Memory::default(), Memory::default());
        assert!(!old.deletion_blocked("acme", true));
        assert!(
            old.deletion_blocked("acme", true),
            "blocked again: counted once"
        );
        assert_eq!(old.blocked_deletions.get(), 1);
        old.clear(); // deposed
        assert_eq!(old.blocked_deletions.get(), 0);

        assert!(
            !new.deletion_blocked("acme", false),
            "the new leader never saw it blocked"
        );
        assert_eq!(new.blocked_deletions.get(), 0);
        new.deletion_blocked("other", true);
        new.forget_integration("other"); // released and deleted
        assert_eq!(new.blocked_deletions.get(), 0);
    }

    #[test]
    fn a_subscription_whose_delete_event_was_missed_is_swept() {
        let memory = Memory::default();
        memory.subscription("gone", |m| m.failures.in_a_row = 2);
        memory.subscription("here", |m| m.failures.in_a_row = 2);
        let swept = memory.sweep(&live(&[]), &live(&["here"]));
        assert_eq!(swept.subscriptions, 1);
        assert_eq!(memory.count(), (0, 1));
    }

    #[test]
    fn what_is_remembered_of_a_subscription_stays_small() {
        // One is kept for every Subscription, in a hash table with room to spare: at 50,000
        // Subscriptions each byte held inline costs 64 KiB of table. A status remembered inline
        // made it 536 bytes (8.8 MiB at 10,000 Subscriptions); it is boxed, as it is kept only
        // until the cache shows it. (When the API server's recovery last woke it took 16 more:
        // 1 MiB at 50,000, against a loop of failed writes while the API server throttles.)
        let size = std::mem::size_of::<SubscriptionMemory>();
        assert!(size <= 336, "SubscriptionMemory is {size} bytes");
    }
}
