//! How every reconcile of either kind ends (cleanup included): the status decided is written
//! once, whole, and only when it differs from what the object shows; it is remembered until the
//! watch shows it; and what changed for the user is announced as Events. Also the one write a
//! reconcile may make before it ends: `Reconciling=True` while a slow call runs. Does API-server
//! I/O.

use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Resource, ResourceExt, core::NamespaceResourceScope, runtime::events::EventType};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    Shared,
    error::{self, Reason},
    memory::{Failures, Memory},
    recovery::{self, Waiter},
    schedule::Next,
};
use crate::{
    api::conditions::{RECONCILING, reasons},
    status::{
        conditions::{self, Desired, Status},
        remembered::Remembered,
    },
};

/// A kind the operator reconciles: what [`finish`] needs to know of it.
pub trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    type Status: Clone + Default + PartialEq + Serialize + Send + Sync;
    /// The controller's name in metrics and logs.
    const CONTROLLER: &'static str;
    /// The field manager of its status writes.
    const MANAGER: &'static str;

    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition>;
    /// Runs `f` on the status remembered for the object `uid`.
    fn remembered<R>(
        memory: &Memory,
        uid: &str,
        f: impl FnOnce(&mut Remembered<Self::Status>) -> R,
    ) -> R;
    /// Runs `f` on the object's transient failures in a row (for backoff).
    fn failures<R>(memory: &Memory, uid: &str, f: impl FnOnce(&mut Failures) -> R) -> R;
    /// The object as one that waits for a server to answer again (see [`super::recovery`]).
    fn waiter(&self) -> Waiter;
    /// The Events a user should see when the status goes from `before` to `after`. Pure.
    fn announcements(before: &Self::Status, after: &Self::Status) -> Vec<Announcement>;
}

/// Implements [`Kind`] for one of the two kinds: what differs between them is named in the
/// call, the rest is written once here.
macro_rules! reconciled_kind {
    ($kind:ty {
        status: $status:ty,
        controller: $controller:expr,
        manager: $manager:expr,
        memory: $memory:ident,
        waiter: $waiter:ident,
        announcements: $announcements:path $(,)?
    }) => {
        impl $crate::controller::finish::Kind for $kind {
            type Status = $status;
            const CONTROLLER: &'static str = $controller;
            const MANAGER: &'static str = $manager;

            fn status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }

            fn conditions(
                status: &mut Self::Status,
            ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
                &mut status.conditions
            }

            fn remembered<R>(
                memory: &$crate::controller::memory::Memory,
                uid: &str,
                f: impl FnOnce(&mut $crate::status::remembered::Remembered<Self::Status>) -> R,
            ) -> R {
                memory.$memory(uid, |m| f(&mut m.status))
            }

            fn failures<R>(
                memory: &$crate::controller::memory::Memory,
                uid: &str,
                f: impl FnOnce(&mut $crate::controller::memory::Failures) -> R,
            ) -> R {
                memory.$memory(uid, |m| f(&mut m.failures))
            }

            fn waiter(&self) -> $crate::controller::recovery::Waiter {
                $crate::controller::recovery::Waiter::$waiter(
                    $crate::controller::finish::uid(self),
                    kube::runtime::reflector::ObjectRef::from_obj(self),
                )
            }

            fn announcements(
                before: &Self::Status,
                after: &Self::Status,
            ) -> Vec<$crate::controller::finish::Announcement> {
                $announcements(before, after)
            }
        }
    };
}
pub(crate) use reconciled_kind;

/// An Event to publish about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub type_: EventType,
    pub reason: String,
    /// The Event's action (`Validate`, `Sync`, `Delete`).
    pub action: &'static str,
    pub note: String,
}

/// A reconcile's view of an object's status.
pub struct Draft<S> {
    /// What the API server holds, as far as this reconcile knows: the object's status, or what
    /// [`progress`] wrote since.
    stored: S,
    /// What the user was last shown: the status this controller last decided when the cache
    /// may not show it yet (it lags our own writes), else the object's. Announcements compare
    /// with it, and a reconcile starts from it, so an older cached status is never re-stated.
    pub shown: S,
}

impl<S: Clone + Default + PartialEq> Draft<S> {
    /// Begins a reconcile of `object`: drops the remembered status once the object shows it.
    pub fn begin<K: Kind<Status = S>>(memory: &Memory, object: &K) -> Self {
        let stored = object.status().cloned().unwrap_or_default();
        let version = object.meta().resource_version.as_deref();
        let remembered = K::remembered(memory, &uid(object), |r| {
            r.observe(version);
            r.get().cloned()
        });
        Self {
            shown: remembered.unwrap_or_else(|| stored.clone()),
            stored,
        }
    }
}

/// Writes `status` as the object's whole status unless the API server already holds it,
/// remembers it, and publishes the Events its changes call for.
pub async fn finish<K: Kind>(
    shared: &Shared,
    object: &K,
    draft: &Draft<K::Status>,
    status: &K::Status,
) -> Result<(), kube::Error> {
    let written = shared
        .write_status(object, &draft.stored, status, K::MANAGER, K::CONTROLLER)
        .await?;
    K::remembered(&shared.memory, &uid(object), |r| {
        r.record(status, written.clone())
    });
    K::failures(&shared.memory, &uid(object), |f| f.api_in_a_row = 0);
    if written.is_some() {
        api_answered(shared);
        for announcement in K::announcements(&draft.shown, status) {
            shared.announce(object, announcement).await;
        }
    }
    Ok(())
}

/// How long a call may run before the object says `Reconciling`: one that answers sooner is
/// followed at once by its result, and saying it would only be one more write.
pub const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `work`, and when it takes longer than [`PROGRESS_AFTER`] says `Reconciling=True`
/// (reason `Progressing`, `message`) meanwhile, so kstatus (Flux) and Argo CD see work in
/// progress.
pub async fn with_progress<K: Kind, T>(
    shared: &Shared,
    object: &K,
    draft: &mut Draft<K::Status>,
    message: &str,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    if let Ok(done) = tokio::time::timeout(PROGRESS_AFTER, &mut work).await {
        return done;
    }
    progress(shared, object, draft, message).await;
    work.await
}

/// Says `Reconciling=True` (reason `Progressing`, `message`) unless the status already says
/// `Reconciling`. A failed write is logged and otherwise ignored: [`finish`] writes the whole
/// status anyway.
async fn progress<K: Kind>(
    shared: &Shared,
    object: &K,
    draft: &mut Draft<K::Status>,
    message: &str,
) {
    let mut status = draft.shown.clone();
    if conditions::is_true(K::conditions(&mut status), RECONCILING) {
        // Already says so (e.g. a retry): re-wording it would be a write, and each write of
        // ours wakes the object again.
        return;
    }
    conditions::set(
        K::conditions(&mut status),
        Desired::new(RECONCILING, Status::True, reasons::PROGRESSING, message),
        object.meta().generation,
        &conditions::now(),
    );
    match shared
        .write_status(object, &draft.stored, &status, K::MANAGER, K::CONTROLLER)
        .await
    {
        Ok(written) => {
            K::remembered(&shared.memory, &uid(object), |r| {
                r.record(&status, written.clone())
            });
            if written.is_some() {
                draft.stored = status;
            }
        }
        Err(error) => {
            tracing::warn!(object = %object.name_any(), %error, "could not say Reconciling");
        }
    }
}

/// What to do after `error`: its class decides (see [`error::action`]); a transient one counts
/// towards the object's backoff, which then holds its Bitbucket calls back until the retry (see
/// [`Failures`]). A failure of the Kubernetes API counts towards a backoff of its own, which
/// holds nothing back, and the object waits for the API server to answer others (see
/// [`api_answered`]).
pub fn next<K: Kind>(shared: &Shared, object: &K, error: &impl Reason) -> Next {
    let next = error::action(error.class(), shared.settings.recheck, || {
        K::failures(&shared.memory, &uid(object), |failures| {
            counted(failures, &shared.backoff, error, Instant::now())
        })
    });
    if of_the_kubernetes_api(error) {
        shared.recovery.waits(recovery::KUBERNETES, object.waiter());
    }
    next
}

/// Whether `error` is the API server's (a read or write it refused or did not answer), which
/// backs off apart from Bitbucket's failures.
fn of_the_kubernetes_api(error: &impl Reason) -> bool {
    error.reason() == reasons::KUBERNETES_ERROR
}

/// Counts the transient failure `error` in `failures` at `now`, and gives the wait before the
/// object's next reconcile. Pure.
fn counted(
    failures: &mut Failures,
    backoff: &super::backoff::Backoff,
    error: &impl Reason,
    now: Instant,
) -> std::time::Duration {
    if of_the_kubernetes_api(error) {
        let wait = backoff.wait(failures.api_in_a_row, None);
        failures.api_in_a_row = failures.api_in_a_row.saturating_add(1);
        return wait;
    }
    let wait = backoff.wait(failures.in_a_row, error.retry_after());
    failures.in_a_row = failures.in_a_row.saturating_add(1);
    failures.retry_at = now.checked_add(wait);
    wait
}

/// A write reached the API server: the objects whose reconcile failed on the Kubernetes API
/// meanwhile are reconciled again now, instead of each waiting out its backoff (at most once a
/// minute each: see [`recovery::Recovery::api_answered`]).
fn api_answered(shared: &Shared) {
    let woken = (shared.recovery).api_answered(&shared.memory, &shared.wakes);
    if woken > 0 {
        tracing::info!(
            woken,
            "the API server answers again: woke the objects waiting for it"
        );
    }
}

/// Continues the backoff of an object that `shown` says is failing transiently (`Reconciling`
/// with `ProgressingWithRetry`) when this process has counted no failure of it yet: a process
/// that takes over (a restart, a new leader) places it by how long it has failed, instead of
/// starting again from the shortest wait. So an operator that restarts again and again, while
/// Bitbucket keeps refusing a credential, tries such an object once per start and then waits
/// as long as the process before it would have (the chaos soak kills the operator about every
/// 40 s: each start could validate its credential answered 503 six times in its first minute).
pub fn resume_backoff<K: Kind>(shared: &Shared, uid: &str, shown: &[Condition]) {
    let Some(since) = failing_since(shown) else {
        return;
    };
    let elapsed = jiff::Timestamp::now().duration_since(since);
    let elapsed = std::time::Duration::try_from(elapsed).unwrap_or_default();
    K::failures(&shared.memory, uid, |failures| {
        if failures.in_a_row == 0 {
            failures.in_a_row = shared.backoff.failures_within(elapsed);
        }
    });
}

/// Since when `conditions` say the object has failed transiently: the later of `Ready`'s and
/// `Reconciling`'s last transitions, while `Reconciling` says it retries with backoff.
fn failing_since(conditions: &[Condition]) -> Option<jiff::Timestamp> {
    let retrying = conditions::get(conditions, RECONCILING)
        .filter(|c| c.status == "True" && c.reason == reasons::PROGRESSING_WITH_RETRY)?;
    let ready = conditions::get(conditions, crate::api::conditions::READY);
    (ready.into_iter().map(|r| r.last_transition_time.0))
        .chain([retrying.last_transition_time.0])
        .max()
}

/// After a Bitbucket call to `server` succeeded: the object's backoff starts again from the
/// beginning, and the objects waiting for `server` to answer again are released (see
/// [`super::recovery`]).
pub fn recovered<K: Kind>(shared: &Shared, uid: &str, server: Option<&str>) {
    K::failures(&shared.memory, uid, |failures| {
        *failures = Failures::default()
    });
    let Some(server) = server else { return };
    let released = (shared.recovery).recovered(server, &shared.memory, &shared.wakes);
    if released > 0 {
        tracing::info!(
            server,
            released,
            "Bitbucket answers again: released the objects waiting for it"
        );
    }
}

/// Whether `error` is a server that did not answer (and said nothing of when to come back):
/// the object then waits for the server's recovery as well as its own backoff.
pub fn waits_for_server(error: &impl Reason) -> bool {
    error.reason() == reasons::BITBUCKET_UNAVAILABLE && error.retry_after().is_none()
}

/// The object's UID (empty for an object not yet stored, which never reaches a reconcile).
pub fn uid<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::core::Status;

    use super::*;
    use crate::{bitbucket, controller::backoff::Backoff};

    #[test]
    fn a_failure_of_the_kubernetes_api_holds_no_bitbucket_call_back_and_backs_off_apart() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
        let now = Instant::now();
        let api = kube::Error::Api(Status::failure("etcdserver: request timed out", "").boxed());
        let mut failures = Failures::default();
        let waits: Vec<Duration> = (0..4)
            .map(|_| counted(&mut failures, &backoff, &api, now))
            .collect();
        assert!(
            waits[3] >= Duration::from_secs(8),
            "it backs off: {waits:?}"
        );
        assert_eq!(failures.holding(now), None, "Bitbucket may be called");
        assert_eq!((failures.in_a_row, failures.api_in_a_row), (0, 4));
        let unavailable = bitbucket::Error::Unavailable {
            status: 503,
            excerpt: String::new(),
        };
        let wait = counted(&mut failures, &backoff, &unavailable, now);
        assert!(wait <= Duration::from_secs(2), "its own count: {wait:?}");
        assert_eq!(
            failures.holding(now),
            Some(wait),
            "held back until the retry"
        );
    }
}
