//! Backoff after transient failures: exponential with jitter, never shorter than a
//! `Retry-After` (kube-runtime keeps no per-object backoff: kube-rs/kube#1916). The failures in
//! a row are counted in each object's [`super::memory`]. No I/O.

use std::time::Duration;

/// The longest `Retry-After` honoured. A server may say anything (`Retry-After:
/// 18446744073709551615`, a date in 3000): beyond an hour the object is tried again after an
/// hour, instead of never (or of a timer that overflows).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Exponential backoff with jitter: the Bitbucket client's [`crate::bitbucket::exponential_backoff`]
/// (the same "equal jitter" as its own retries), plus `Retry-After`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// How long to wait after the failure that follows `failures` failures in a row: at least
    /// `at_least` (a `Retry-After`), and jittered so objects that failed together do not retry
    /// together.
    pub fn wait(&self, failures: u32, at_least: Option<Duration>) -> Duration {
        let jittered = crate::bitbucket::exponential_backoff(self.base, self.max, failures.min(16));
        jittered.max(at_least.unwrap_or_default().min(MAX_RETRY_AFTER))
    }

    /// How many failures in a row fit in `elapsed`, each followed by its shortest wait: where
    /// a process that has failed all along would be in its backoff (at least), for one that
    /// takes over from it (see [`super::finish::resume_backoff`]).
    pub fn failures_within(&self, elapsed: Duration) -> u32 {
        let mut spent = Duration::ZERO;
        for failures in 0..16u32 {
            let shortest =
                (self.base.saturating_mul(2u32.saturating_pow(failures))).min(self.max) / 2;
            spent = spent.saturating_add(shortest);
            if spent > elapsed {
                return failures;
            }
        }
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_exponentially_up_to_the_maximum() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        for failures in 0..6u32 {
            let wait = backoff.wait(failures, None);
            let ceiling = Duration::from_secs(1 << failures.min(3));
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{failures}: {wait:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever Bitbucket says in `Retry-After` and however long the failures last, the wait
        /// is at most an hour and at least what it asked, up to that hour.
        #[test]
        fn every_wait_is_bounded(failures in proptest::num::u32::ANY, seconds in proptest::option::of(proptest::num::u64::ANY)) {
            let backoff = Backoff::new(Duration::from_millis(300), Duration::from_secs(300));
            let asked = seconds.map(Duration::from_secs);
            let wait = backoff.wait(failures, asked);
            proptest::prop_assert!(wait <= MAX_RETRY_AFTER);
            proptest::prop_assert!(wait >= asked.unwrap_or_default().min(MAX_RETRY_AFTER));
        }
    }

    #[test]
    fn a_failure_streak_is_placed_in_the_backoff_by_its_length() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
        assert_eq!(backoff.failures_within(Duration::ZERO), 0);
        // Shortest waits 1, 2, 4, 8, 16, 32 s: 63 s hold six failures, 62 s five.
        assert_eq!(backoff.failures_within(Duration::from_secs(62)), 5);
        assert_eq!(backoff.failures_within(Duration::from_secs(63)), 6);
        assert_eq!(backoff.failures_within(Duration::from_secs(86_400)), 16);
        // Its next wait is as long as the process that failed all along would have waited.
        let next = backoff.wait(backoff.failures_within(Duration::from_secs(600)), None);
        assert!(next >= Duration::from_secs(150), "{next:?}");
    }

    #[test]
    fn an_absurd_retry_after_waits_an_hour_not_forever() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        assert_eq!(backoff.wait(0, Some(Duration::MAX)), MAX_RETRY_AFTER);
        assert_eq!(
            backoff.wait(3, Some(Duration::from_secs(u64::MAX))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn a_retry_after_is_a_lower_bound() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        assert!(backoff.wait(0, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(backoff.wait(0, None) <= Duration::from_secs(1));
    }
}
