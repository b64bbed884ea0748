//! The integrations whose first validation by this process is under way. A Subscription that
//! finds its integration's first validation under way waits for it to end (briefly: see
//! [`PATIENCE`]) and lists at once, rather than saying nothing, ending its reconcile and
//! waiting to be woken by the integration (`integration::wake_users`): the hops of that
//! wake-up were a fifth of apply → Ready (figure 4). No I/O.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::sync::watch;

use super::lock;

/// How long a Subscription's reconcile waits for a first validation under way: about what a
/// validation takes when Bitbucket answers at once (a slower one wakes the Subscription when
/// it ends, without holding one of `--concurrency` reconciles meanwhile).
pub const PATIENCE: Duration = Duration::from_secs(1);

/// The first validations under way, by integration UID.
#[derive(Default)]
pub struct FirstValidations(Mutex<HashMap<String, watch::Sender<()>>>);

/// A first validation under way: it ends when dropped (or at [`FirstValidations::end`]).
pub struct Underway<'a> {
    validations: &'a FirstValidations,
    uid: String,
}

impl FirstValidations {
    /// The first validation of integration `uid` begins.
    pub fn begin(&self, uid: &str) -> Underway<'_> {
        lock(&self.0).insert(uid.to_owned(), watch::channel(()).0);
        Underway {
            validations: self,
            uid: uid.to_owned(),
        }
    }

    /// The first validation of integration `uid` ended (its outcome is in the memory): those
    /// waiting for it go on.
    pub fn end(&self, uid: &str) {
        // Dropping the sender ends its receivers' waits.
        drop(lock(&self.0).remove(uid));
    }

    /// Waits (at most [`PATIENCE`]) for the first validation of integration `uid` to end, if
    /// one is under way: whether one was.
    pub async fn wait_for(&self, uid: &str) -> bool {
        let Some(mut ended) = lock(&self.0).get(uid).map(watch::Sender::subscribe) else {
            return false;
        };
        let _ = tokio::time::timeout(PATIENCE, ended.changed()).await;
        true
    }
}

impl Drop for Underway<'_> {
    fn drop(&mut self) {
        self.validations.end(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_with_the_validation_or_its_patience_and_none_without_one() {
        let validations = std::sync::Arc::new(FirstValidations::default());
        assert!(!validations.wait_for("acme").await, "nothing under way");

        let underway = validations.begin("acme");
        let waiter = std::sync::Arc::clone(&validations);
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(async move { waiter.wait_for("acme").await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        validations.end("acme");
        assert!(waiting.await.unwrap());
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        drop(underway);

        // One that does not end in time is waited for no longer than PATIENCE.
        let _underway = validations.begin("slow");
        let started = tokio::time::Instant::now();
        assert!(validations.wait_for("slow").await);
        assert_eq!(started.elapsed(), PATIENCE);
    }
}
