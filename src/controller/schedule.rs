//! When each object is reconciled next, kept compact. Every object waits for its next sync or
//! validation, so a controller holds one scheduled reconcile per object all the time; kube's
//! controller kept each as two copies of a request with the object's name, namespace,
//! resourceVersion and UID (about 0.9 KiB an object at figure 14's 60,000). This schedule keeps
//! an object's namespace (shared) and name once, with the time it is due: a reconcile says when
//! next ([`Next`]), the controller's run sets it here ([`Schedule::set`]) and kube is told to
//! wait for a change, and [`Schedule::due`] wakes the controller (its `reconcile_on`) when the
//! time comes. A later reconcile replaces the time an earlier one set. No I/O.

use std::{
    collections::{BTreeSet, HashMap},
    marker::PhantomData,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use super::{lock, shared_name};

/// When to reconcile an object again, unless a change wakes it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    After(Duration),
    /// Only when something changes (or wakes it).
    OnChange,
}

/// The next reconcile of each object of kind `K` that waits for one.
pub struct Schedule<K> {
    state: Mutex<State>,
    /// Told when an object becomes due sooner than every other.
    sooner: tokio::sync::Notify,
    kind: PhantomData<fn() -> K>,
}

/// Objects by namespace and name.
type Named<T> = HashMap<Arc<str>, HashMap<Arc<str>, T>>;

#[derive(Default)]
struct State {
    /// When each object is due.
    by_object: Named<Instant>,
    /// The same, in the order they are due.
    by_time: BTreeSet<(Instant, Arc<str>, Arc<str>)>,
}

/// The longest wait kept: further is never (a `Retry-After` of years is the operator's hold
/// anyway).
const FURTHEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

impl<K: kube::Resource<DynamicType = ()>> Default for Schedule<K> {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            sooner: tokio::sync::Notify::new(),
            kind: PhantomData,
        }
    }
}

impl<K: kube::Resource<DynamicType = ()>> Schedule<K> {
    /// Reconciles `object` when `next` says, in place of any time set for it before.
    pub fn set(&self, object: &K, next: Next) {
        let meta = object.meta();
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        let mut state = lock(&self.state);
        let names = state.forget(namespace, name);
        let Next::After(wait) = next else {
            return;
        };
        let now = Instant::now();
        let at = now.checked_add(wait.min(FURTHEST)).unwrap_or(now);
        let (namespace, name) = names.unwrap_or_else(|| state.names(namespace, name));
        let first = state.by_time.first().is_none_or(|(due, ..)| at < *due);
        let times = state.by_object.entry(Arc::clone(&namespace)).or_default();
        times.insert(Arc::clone(&name), at);
        state.by_time.insert((at, namespace, name));
        drop(state);
        if first {
            self.sooner.notify_one();
        }
    }

    /// The objects as they fall due, for the controller's `reconcile_on`; each once per time
    /// set. Never ends: the controller drops it with its term.
    pub fn due(self: &Arc<Self>) -> impl futures::Stream<Item = ObjectRef<K>> + Send + use<K> {
        futures::stream::unfold(Arc::clone(self), |schedule| async move {
            loop {
                let next = lock(&schedule.state).pop_due(Instant::now());
                match next {
                    Ok((namespace, name)) => {
                        let object = ObjectRef::new(&name).within(&namespace);
                        return Some((object, schedule));
                    }
                    Err(Some(at)) => tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = schedule.sooner.notified() => {}
                    },
                    Err(None) => schedule.sooner.notified().await,
                }
            }
        })
    }
}

impl State {
    /// Drops the time set for `namespace/name`; gives back the names kept, if any.
    fn forget(&mut self, namespace: &str, name: &str) -> Option<(Arc<str>, Arc<str>)> {
        let (namespace, times) = self.by_object.get_key_value(namespace)?;
        let (name, at) = times.get_key_value(name)?;
        let key = (*at, Arc::clone(namespace), Arc::clone(name));
        self.by_time.remove(&key);
        let (_, namespace, name) = key;
        let times = self.by_object.get_mut(&namespace)?;
        times.remove(&name);
        if times.is_empty() {
            self.by_object.remove(&namespace);
        }
        Some((namespace, name))
    }

    /// Names for an object not scheduled: its namespace's shared with the objects kept.
    fn names(&self, namespace: &str, name: &str) -> (Arc<str>, Arc<str>) {
        (shared_name(&self.by_object, namespace), Arc::from(name))
    }

    /// The first object due by `now`, forgotten; else when the first falls due (if any).
    fn pop_due(&mut self, now: Instant) -> Result<(Arc<str>, Arc<str>), Option<Instant>> {
        match self.by_time.first() {
            Some((at, ..)) if *at <= now => {}
            first => return Err(first.map(|(at, ..)| *at)),
        }
        let (_, namespace, name) = self.by_time.pop_first().expect("looked at first");
        self.forget(&namespace, &name);
        Ok((namespace, name))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::api::Subscription;

    fn subscription(namespace: &str, name: &str) -> Subscription {
        let spec = serde_json::json!({"integrationRef": {"name": "acme"}});
        let mut s = Subscription::new(name, serde_json::from_value(spec).unwrap());
        s.metadata.namespace = Some(namespace.into());
        s
    }

    fn seconds(n: u64) -> Next {
        Next::After(Duration::from_secs(n))
    }

    #[tokio::test(start_paused = true)]
    async fn objects_fall_due_in_order_each_at_the_time_set_last() {
        let schedule = Arc::new(Schedule::<Subscription>::default());
        let due = schedule.due();
        futures::pin_mut!(due);
        let started = Instant::now();
        schedule.set(&subscription("ci", "late"), seconds(30));
        schedule.set(&subscription("ci", "soon"), seconds(20));
        schedule.set(&subscription("qa", "moved"), seconds(5));
        // A later reconcile replaces the time: sooner, later, or only on a change.
        schedule.set(&subscription("qa", "moved"), seconds(25));
        schedule.set(&subscription("ci", "soon"), seconds(10));
        schedule.set(&subscription("ci", "never"), seconds(1));
        schedule.set(&subscription("ci", "never"), Next::OnChange);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let object = due.next().await.unwrap();
            let namespace = object.namespace.unwrap();
            seen.push((namespace, object.name, started.elapsed().as_secs()));
        }
        let expected = [("ci", "soon", 10), ("qa", "moved", 25), ("ci", "late", 30)];
        let expected = expected.map(|(ns, name, at)| (ns.to_owned(), name.to_owned(), at));
        assert_eq!(seen, expected);
        let nothing = tokio::time::timeout(Duration::from_secs(3600), due.next()).await;
        assert!(nothing.is_err(), "each object falls due once per time set");
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_due_sooner_than_all_others_wakes_the_stream_at_its_time() {
        let schedule = Arc::new(Schedule::<Subscription>::default());
        let due = schedule.due();
        futures::pin_mut!(due);
        let started = Instant::now();
        schedule.set(&subscription("ci", "later"), seconds(600));
        let setter = Arc::clone(&schedule);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            setter.set(&subscription("ci", "sooner"), seconds(2));
        });
        let first = due.next().await.unwrap();
        assert_eq!(first.name, "sooner");
        assert_eq!(started.elapsed().as_secs(), 3);
    }

    #[test]
    fn nothing_is_kept_of_an_object_once_it_fell_due_or_waits_for_a_change() {
        let schedule = Schedule::<Subscription>::default();
        schedule.set(&subscription("ci", "a"), Next::After(Duration::ZERO));
        schedule.set(&subscription("ci", "b"), seconds(60));
        schedule.set(&subscription("ci", "b"), Next::OnChange);
        let mut state = lock(&schedule.state);
        assert!(state.pop_due(Instant::now()).is_ok());
        assert!(state.by_object.is_empty() && state.by_time.is_empty());
    }
}
