//! Backoff after transient failures: exponential with jitter, never shorter than a
//! `Retry-After` (kube-runtime keeps no per-object backoff: kube-rs/kube#1916). The failures in
//! a row are counted in each object's [`super::memory`]. No I/O.

use std::time::Duration;

/// Exponential backoff with jitter.
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
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(failures.min(16)))
            .min(self.max);
        let jittered = ceiling / 2 + (ceiling / 2).mul_f64(fastrand::f64());
        jittered.max(at_least.unwrap_or_default())
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

    #[test]
    fn a_retry_after_is_a_lower_bound() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        assert!(backoff.wait(0, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(backoff.wait(0, None) <= Duration::from_secs(1));
    }
}
