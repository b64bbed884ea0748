//! Wake-ups that come from inside the operator rather than from a watch: a controller of one
//! kind asks for objects to be reconciled now, and each running controller of that kind (one
//! per scope, while this replica leads) reconciles them. Used when a server answers again
//! (see [`super::recovery`]) and when an integration's first validation succeeds (its
//! Subscriptions may list at once, before its status is written and watched). No I/O.

use std::sync::Mutex;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use kube::runtime::reflector::ObjectRef;

use super::lock;
use crate::api::{BitbucketIntegration, Subscription};

/// The wake-ups of both kinds.
#[derive(Default)]
pub struct Wakes {
    pub integrations: Wakers<BitbucketIntegration>,
    pub subscriptions: Wakers<Subscription>,
}

/// The wake-ups of the controllers of one kind running in this process.
pub struct Wakers<K: kube::Resource>(Mutex<Vec<UnboundedSender<ObjectRef<K>>>>);

impl<K: kube::Resource> Default for Wakers<K> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<K: kube::Resource<DynamicType = ()>> Wakers<K> {
    /// The objects to reconcile, for one controller (its term ends when it drops them).
    pub fn wakes(&self) -> UnboundedReceiver<ObjectRef<K>> {
        let (waker, woken) = unbounded();
        lock(&self.0).push(waker);
        woken
    }

    /// Has every running controller of the kind reconcile `objects`.
    pub fn wake(&self, objects: impl IntoIterator<Item = ObjectRef<K>>) {
        let mut wakers = lock(&self.0);
        wakers.retain(|waker| !waker.is_closed());
        for object in objects {
            for waker in wakers.iter() {
                let _ = waker.unbounded_send(object.clone());
            }
        }
    }
}
