//! Per-object backoff for transient failures (kube-runtime keeps none: kube-rs/kube#1916).
//! Keyed by object UID; reset on success. No I/O.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Exponential backoff with jitter, per object.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `uid` and returns how long to wait before the next attempt; at
    /// least `at_least` (a `Retry-After`), and jittered so objects that failed together do not
    /// retry together.
    pub fn next(&self, uid: &str, at_least: Option<Duration>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(uid.to_owned()).or_insert(0);
        let exponent = (*count).min(16);
        *count = count.saturating_add(1);
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max);
        let jittered = ceiling / 2 + (ceiling / 2).mul_f64(fastrand::f64());
        jittered.max(at_least.unwrap_or_default())
    }

    /// Forgets the failures of `uid` after a success.
    pub fn reset(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_exponentially_up_to_the_maximum() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next("a", None)).collect();
        for (i, wait) in waits.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << i.min(3));
            assert!(*wait >= ceiling / 2 && *wait <= ceiling, "{i}: {wait:?}");
        }
    }

    #[test]
    fn a_retry_after_is_a_lower_bound_and_success_starts_over() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        assert!(backoff.next("a", Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        backoff.next("a", None);
        backoff.reset("a");
        assert!(backoff.next("a", None) <= Duration::from_secs(1));
        assert!(
            backoff.next("b", None) <= Duration::from_secs(1),
            "objects are independent"
        );
    }
}
