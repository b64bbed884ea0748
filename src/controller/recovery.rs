//! Recovery once Bitbucket answers again. An object whose call failed because a server was
//! unavailable backs off, up to `--backoff-max` (5 minutes), and is not called again before its
//! backoff is over (no call storms while the server is down). But once a call to the same
//! server succeeds, the server is back: every object waiting on it is released then, its
//! backoff cut short, a few milliseconds apart so that they do not all call at once, and woken.
//! After an outage everything converges within seconds of the first success, instead of each
//! object waiting out a backoff grown during the outage. A `Retry-After` is not cut short: only
//! objects that failed with `BitbucketUnavailable` wait here. An object is released at most
//! once every [`RELEASE_AT_MOST_EVERY`]: one whose own calls fail while the server answers
//! others (a credential the server keeps answering with 503, as the chaos soak's `soak-5xx`)
//! would otherwise be released by every other object's success and call as fast as they do.
//! The API server is one more server here ([`KUBERNETES`]): an object whose reconcile failed on
//! the Kubernetes API is woken once a write of another object reaches it, at most once a
//! minute as well ([`Recovery::api_answered`]); its backoff holds no call back, so it is only
//! woken. Woken through [`Wakes`](super::wakes::Wakes). No I/O.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::runtime::reflector::ObjectRef;

use super::{lock, memory::Memory, wakes::Wakes};
use crate::api::{BitbucketIntegration, Subscription};

/// How far apart the objects released together call again: at most 200 a second per server
/// (each reconcile then waits its turn among `--concurrency` too).
pub const SPACING: Duration = Duration::from_millis(5);

/// How often one object's backoff may be cut short: it fails again after a release, and waits
/// out its own backoff (a minute at most) until the next.
pub const RELEASE_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// The key under which objects wait for the Kubernetes API server.
pub const KUBERNETES: &str = "the Kubernetes API server";

/// The objects waiting on each Bitbucket server, and on the API server.
#[derive(Default)]
pub struct Recovery {
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// Who waits on one server, by UID.
#[derive(Default)]
struct Waiting {
    integrations: HashMap<String, ObjectRef<BitbucketIntegration>>,
    subscriptions: HashMap<String, ObjectRef<Subscription>>,
}

/// An object that waits on a server.
pub enum Waiter {
    Integration(String, ObjectRef<BitbucketIntegration>),
    Subscription(String, ObjectRef<Subscription>),
}

impl Recovery {
    /// `waiter`'s call to `server` failed because the server was unavailable.
    pub fn waits(&self, server: &str, waiter: Waiter) {
        let mut waiting = lock(&self.waiting);
        let on = waiting.entry(server.to_owned()).or_default();
        match waiter {
            Waiter::Integration(uid, object) => on.integrations.insert(uid, object).map(drop),
            Waiter::Subscription(uid, object) => on.subscriptions.insert(uid, object).map(drop),
        };
    }

    /// A call to `server` succeeded: the objects waiting on it may call again, `SPACING` apart,
    /// and are woken; but not those released less than [`RELEASE_AT_MOST_EVERY`] ago, which
    /// wait out their backoff. Returns how many were released.
    pub fn recovered(&self, server: &str, memory: &Memory, wakes: &Wakes) -> usize {
        let now = Instant::now();
        let mut at = (0u32..).map(|i| now + SPACING * i);
        self.release(server, memory, wakes, |failures| {
            if recently(failures.released_at, now) {
                return false;
            }
            let at = at.next().expect("an endless sequence");
            failures.retry_at = failures.retry_at.map(|retry| retry.min(at));
            failures.released_at = Some(now);
            true
        })
    }

    /// A write reached the API server: the objects waiting on it ([`KUBERNETES`]) are woken,
    /// but not those woken less than [`RELEASE_AT_MOST_EVERY`] ago (whose own writes fail while
    /// the API server takes others'). Returns how many were woken.
    pub fn api_answered(&self, memory: &Memory, wakes: &Wakes) -> usize {
        let now = Instant::now();
        self.release(KUBERNETES, memory, wakes, |failures| {
            if recently(failures.api_released_at, now) {
                return false;
            }
            failures.api_released_at = Some(now);
            true
        })
    }

    /// Wakes the objects waiting on `server` that `release` lets go (it is given each one's
    /// failures); the others stop waiting too. Returns how many were woken.
    fn release(
        &self,
        server: &str,
        memory: &Memory,
        wakes: &Wakes,
        mut release: impl FnMut(&mut super::memory::Failures) -> bool,
    ) -> usize {
        let Some(waiting) = lock(&self.waiting).remove(server) else {
            return 0;
        };
        let integrations: Vec<_> = (waiting.integrations.into_iter())
            .filter(|(uid, _)| memory.integration(uid, |m| release(&mut m.failures)))
            .map(|(_, object)| object)
            .collect();
        let subscriptions: Vec<_> = (waiting.subscriptions.into_iter())
            .filter(|(uid, _)| memory.subscription(uid, |m| release(&mut m.failures)))
            .map(|(_, object)| object)
            .collect();
        let count = integrations.len() + subscriptions.len();
        (wakes.integrations).wake(integrations);
        (wakes.subscriptions).wake(subscriptions);
        count
    }
}

/// Whether `last` is less than [`RELEASE_AT_MOST_EVERY`] before `now`.
fn recently(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|last| now.saturating_duration_since(last) < RELEASE_AT_MOST_EVERY)
}

/// The key of an integration's server: its type and URL as the spec says them.
pub fn server_of(integration: &BitbucketIntegration) -> String {
    let server = &integration.spec.server;
    format!(
        "{:?} {}",
        server.server_type,
        server.url.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_success_releases_the_objects_waiting_on_that_server_only_spaced_and_woken() {
        let (recovery, memory, wakes) = (Recovery::default(), Memory::default(), Wakes::default());
        let mut woken = wakes.subscriptions.wakes();
        let later = Instant::now() + Duration::from_secs(300);
        for uid in ["a", "b", "c"] {
            memory.subscription(uid, |m| m.failures.retry_at = Some(later));
            let object = ObjectRef::new(uid).within("ns");
            let server = if uid == "c" { "other" } else { "cloud" };
            recovery.waits(server, Waiter::Subscription(uid.into(), object));
        }
        assert_eq!(recovery.recovered("cloud", &memory, &wakes), 2);
        let released: Vec<Duration> = ["a", "b"]
            .iter()
            .map(|uid| memory.subscription(uid, |m| m.failures.holding(Instant::now())))
            .map(Option::unwrap_or_default)
            .collect();
        assert!(released.iter().all(|wait| *wait <= SPACING), "{released:?}");
        let woken: Vec<String> = woken.by_ref().take(2).map(|o| o.name).collect().await;
        assert_eq!(woken.len(), 2);
        let other = memory.subscription("c", |m| m.failures.holding(Instant::now()));
        assert!(
            other.unwrap() > Duration::from_secs(290),
            "another server's wait stays"
        );
        assert_eq!(
            recovery.recovered("cloud", &memory, &wakes),
            0,
            "released once"
        );
    }

    #[tokio::test]
    async fn the_api_server_answering_wakes_the_objects_it_failed_once_a_minute_holding_no_call_back()
     {
        let (recovery, memory, wakes) = (Recovery::default(), Memory::default(), Wakes::default());
        let mut woken = wakes.subscriptions.wakes();
        let later = Instant::now() + Duration::from_secs(300);
        let fail = |uid: &str| {
            let object = ObjectRef::new(uid).within("ns");
            recovery.waits(KUBERNETES, Waiter::Subscription(uid.into(), object));
        };
        // Bitbucket's backoff of one of them is not the API server's to cut.
        memory.subscription("a", |m| m.failures.retry_at = Some(later));
        fail("a");
        fail("b");
        recovery.waits(
            "cloud",
            Waiter::Subscription("c".into(), ObjectRef::new("c")),
        );
        assert_eq!(recovery.api_answered(&memory, &wakes), 2);
        let mut names: Vec<String> = woken.by_ref().take(2).map(|o| o.name).collect().await;
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let held = memory.subscription("a", |m| m.failures.holding(Instant::now()));
        assert!(held.unwrap() > Duration::from_secs(290), "{held:?}");
        assert_eq!(recovery.api_answered(&memory, &wakes), 0, "woken once");
        // Its own writes fail again while the API server takes others': woken a minute on.
        fail("b");
        assert_eq!(recovery.api_answered(&memory, &wakes), 0);
        memory.subscription("b", |m| {
            m.failures.api_released_at = Some(Instant::now() - RELEASE_AT_MOST_EVERY)
        });
        fail("b");
        assert_eq!(recovery.api_answered(&memory, &wakes), 1);
        assert_eq!(
            recovery.recovered("cloud", &memory, &wakes),
            1,
            "Bitbucket's waiter stays"
        );
    }

    #[tokio::test]
    async fn an_object_is_released_at_most_once_a_minute() {
        let (recovery, memory, wakes) = (Recovery::default(), Memory::default(), Wakes::default());
        let mut woken = wakes.integrations.wakes();
        let later = Instant::now() + Duration::from_secs(300);
        let fail = |uid: &str| {
            memory.integration(uid, |m| m.failures.retry_at = Some(later));
            let object = ObjectRef::new(uid).within("ns");
            recovery.waits("cloud", Waiter::Integration(uid.into(), object));
        };
        let holding = |uid: &str| memory.integration(uid, |m| m.failures.holding(Instant::now()));
        fail("own-503");
        assert_eq!(recovery.recovered("cloud", &memory, &wakes), 1);
        assert_eq!(woken.next().await.unwrap().name, "own-503");
        // Its own calls fail again while the server answers others.
        fail("own-503");
        fail("outage");
        assert_eq!(recovery.recovered("cloud", &memory, &wakes), 1);
        assert_eq!(woken.next().await.unwrap().name, "outage");
        assert!(
            holding("own-503").unwrap() > Duration::from_secs(290),
            "released a moment ago: its backoff stays"
        );
        memory.integration("own-503", |m| {
            m.failures.released_at = Some(Instant::now() - RELEASE_AT_MOST_EVERY)
        });
        fail("own-503");
        assert_eq!(recovery.recovered("cloud", &memory, &wakes), 1);
        assert!(holding("own-503").unwrap_or_default() <= SPACING);
    }
}
