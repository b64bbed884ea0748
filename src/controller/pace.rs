//! The requests of a controller that are not the objects' own changes, handed to kube at the
//! pace the controller takes them: every object once when the controller starts, and the
//! objects woken by others (a Secret, the other kind, a webhook, a reconcile that wakes
//! another). kube's scheduler takes every request it is given at once and keeps them in tables
//! that never shrink (a delay queue, the requests scheduled, those held while `--concurrency`
//! reconciles run): at a start with 50,000 Subscriptions, every one of them, then each again
//! as its integration's validation woke it, about 5.7 MiB of tables per 12,000 objects for the
//! life of the process (figure 14's heap profile). A [`Pace`] keeps them in a queue of its own
//! (one name each, a woken object once however often woken, the room given back once empty)
//! and hands kube a few more than it can begin at once, the next as each reconcile begins.
//! Woken objects go before the start's. No I/O.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    marker::PhantomData,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, Stream, StreamExt, stream::FusedStream};
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use super::lock;

/// How long an object handed on holds its place while no reconcile of it begins (one deleted
/// meanwhile never begins, and one already being reconciled begins when that one ends).
const HELD_FOR: Duration = Duration::from_secs(10);

/// A queue this long or longer gives its room back once empty.
const ROOM_KEPT: usize = 1024;

/// The objects of a controller waiting to be handed on, and those handed on whose reconcile
/// has not begun.
pub struct Pace<K> {
    state: Mutex<State>,
    /// Told when a reconcile of an object handed on begins.
    begun: tokio::sync::Notify,
    /// How many may be handed on and not yet begun.
    ahead: usize,
    kind: PhantomData<fn() -> K>,
}

/// Objects as `namespace/name` (neither holds a `/`).
type Key = Arc<str>;

#[derive(Default)]
struct State {
    /// Woken, in order, each once.
    woken: VecDeque<Key>,
    is_woken: HashSet<Key>,
    /// Every object when the controller started.
    everything: VecDeque<Key>,
    /// Handed on, not begun yet, since when.
    handed: HashMap<Key, Instant>,
}

fn key(namespace: Option<&str>, name: &str) -> Key {
    Arc::from(format!("{}/{name}", namespace.unwrap_or_default()))
}

fn key_of(object: &impl kube::Resource) -> Key {
    let meta = object.meta();
    key(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or(""),
    )
}

impl<K: kube::Resource<DynamicType = ()>> Pace<K> {
    /// A pace for a controller starting with `everything` (the objects in its store), with at
    /// most `ahead` handed on and not begun.
    pub fn new<'a>(everything: impl IntoIterator<Item = &'a K>, ahead: usize) -> Arc<Self>
    where
        K: 'a,
    {
        let everything = everything.into_iter().map(key_of).collect();
        Arc::new(Self {
            state: Mutex::new(State {
                everything,
                ..State::default()
            }),
            begun: tokio::sync::Notify::new(),
            ahead: ahead.max(1),
            kind: PhantomData,
        })
    }

    /// A reconcile of `object` begins (handed on by this pace or not). Called for every
    /// reconcile: with nothing handed on (the steady state) it only looks.
    pub fn begins(&self, object: &K) {
        let mut state = lock(&self.state);
        if !state.handed.is_empty() && state.handed.remove(&key_of(object)).is_some() {
            drop(state);
            self.begun.notify_one();
        }
    }

    fn wake(&self, object: &ObjectRef<K>) {
        let key = key(object.namespace.as_deref(), &object.name);
        let mut state = lock(&self.state);
        if state.is_woken.insert(Arc::clone(&key)) {
            state.woken.push_back(key);
        }
    }

    /// The objects to reconcile, for the controller's `reconcile_on`: everything, and what
    /// `woken` names as it names them (read as soon as it does, so its senders never wait).
    pub fn objects<W>(self: &Arc<Self>, woken: W) -> impl Stream<Item = ObjectRef<K>> + use<K, W>
    where
        W: Stream<Item = ObjectRef<K>> + Send + 'static,
    {
        let woken = woken.boxed().fuse();
        futures::stream::unfold((Arc::clone(self), woken), |(pace, mut woken)| async move {
            loop {
                while let Some(Some(object)) = woken.next().now_or_never() {
                    pace.wake(&object);
                }
                let next = lock(&pace.state).next(pace.ahead, Instant::now());
                match next {
                    Next::Hand(key) => return Some((reference(&key), (pace, woken))),
                    Next::WaitUntil(at) => tokio::select! {
                        Some(object) = woken.next() => pace.wake(&object),
                        () = tokio::time::sleep_until(at) => {}
                        () = pace.begun.notified() => {}
                    },
                    Next::Idle if woken.is_terminated() => return None,
                    Next::Idle => match woken.next().await {
                        Some(object) => pace.wake(&object),
                        None => return None,
                    },
                }
            }
        })
    }
}

fn reference<K: kube::Resource<DynamicType = ()>>(key: &str) -> ObjectRef<K> {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    let object = ObjectRef::new(name);
    if namespace.is_empty() {
        object
    } else {
        object.within(namespace)
    }
}

enum Next {
    Hand(Key),
    /// Until a place is free (or a reconcile begins, or more is woken).
    WaitUntil(Instant),
    /// Nothing waits.
    Idle,
}

impl State {
    fn next(&mut self, ahead: usize, now: Instant) -> Next {
        self.handed.retain(|_, at| now < *at + HELD_FOR);
        if self.handed.len() >= ahead {
            let first = self.handed.values().min().copied().unwrap_or(now);
            return Next::WaitUntil(first + HELD_FOR);
        }
        let key = if let Some(key) = self.woken.pop_front() {
            self.is_woken.remove(&key);
            key
        } else if let Some(key) = self.everything.pop_front() {
            key
        } else {
            self.give_room_back();
            return Next::Idle;
        };
        self.handed.insert(Arc::clone(&key), now);
        Next::Hand(key)
    }

    fn give_room_back(&mut self) {
        if self.woken.capacity() >= ROOM_KEPT || self.everything.capacity() >= ROOM_KEPT {
            self.woken = VecDeque::new();
            self.is_woken = HashSet::new();
            self.everything = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Subscription;

    fn named(name: &str) -> Subscription {
        let spec = serde_json::json!({"integrationRef": {"name": "acme"}});
        let mut s = Subscription::new(name, serde_json::from_value(spec).unwrap());
        s.metadata.namespace = Some("ci".into());
        s
    }

    fn all(names: &[&str]) -> Vec<Subscription> {
        names.iter().map(|n| named(n)).collect()
    }

    /// The next object handed on, if one is ready now (`Some(None)`: the stream ended).
    fn ready(
        stream: &mut (impl Stream<Item = ObjectRef<Subscription>> + Unpin),
    ) -> Option<Option<String>> {
        (stream.next().now_or_never()).map(|o| o.map(|o| format!("{o}")))
    }

    fn handed(name: &str) -> Option<Option<String>> {
        Some(Some(format!(
            "Subscription.v1alpha1.scm.shippable.io/{name}.ci"
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_hands_on_no_more_than_the_controller_can_begin_and_the_next_as_each_begins() {
        let pace = Pace::new(&all(&["a", "b", "c", "d"]), 2);
        let mut objects = Box::pin(pace.objects(futures::stream::empty()));
        assert_eq!(ready(&mut objects), handed("a"));
        assert_eq!(ready(&mut objects), handed("b"));
        assert_eq!(ready(&mut objects), None, "two handed on, none begun");
        pace.begins(&named("x"));
        assert_eq!(
            ready(&mut objects),
            None,
            "one it did not hand on frees no place"
        );
        pace.begins(&named("a"));
        assert_eq!(ready(&mut objects), handed("c"));
        pace.begins(&named("b"));
        pace.begins(&named("c"));
        assert_eq!(ready(&mut objects), handed("d"));
        assert_eq!(ready(&mut objects), Some(None), "ends with its last source");
    }

    #[tokio::test(start_paused = true)]
    async fn woken_objects_go_first_once_each_however_often_woken() {
        let pace = Pace::new(&all(&["start"]), 1);
        let (wake, woken) = futures::channel::mpsc::unbounded();
        let mut objects = Box::pin(pace.objects(woken));
        for name in ["w1", "w2", "w1", "w1"] {
            wake.unbounded_send(ObjectRef::new(name).within("ci"))
                .unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            let next = ready(&mut objects).unwrap().unwrap();
            let name = next
                .rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".ci")
                .to_owned();
            pace.begins(&named(&name));
            order.push(name);
        }
        assert_eq!(order, ["w1", "w2", "start"]);
        assert_eq!(ready(&mut objects), None, "waits for more to be woken");
        wake.unbounded_send(ObjectRef::new("w1").within("ci"))
            .unwrap();
        assert_eq!(
            ready(&mut objects),
            handed("w1"),
            "woken again once handed on"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_whose_reconcile_never_begins_holds_its_place_for_a_while_only() {
        let pace = Pace::new(&all(&["deleted", "next"]), 1);
        let mut objects = Box::pin(pace.objects(futures::stream::pending()));
        assert_eq!(ready(&mut objects), handed("deleted"));
        let next = tokio::spawn(async move { objects.next().await.map(|o| o.name) });
        tokio::time::sleep(HELD_FOR - Duration::from_millis(1)).await;
        assert!(!next.is_finished());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(next.await.unwrap().as_deref(), Some("next"));
    }
}
