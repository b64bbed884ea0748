//! Refreshes asked for from outside the watches (Bitbucket's webhook deliveries): which
//! Subscriptions a change concerns, a mark in each one's memory (answered only by a listing
//! begun after it, see `subscription::check::due`), and a wake-up for the controller that
//! reconciles it. Bursts coalesce: a Subscription is reconciled once however often it is woken
//! meanwhile, and Subscriptions of one scope share one listing. No I/O.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use kube::{ResourceExt, runtime::reflector::ObjectRef};

use super::{
    finish, lock,
    memory::{Memory, Told},
};
use crate::{api::Subscription, bitbucket::webhook::Changed};

/// The most repositories one Subscription waits to fetch one by one; a delivery beyond them
/// asks for a re-list instead.
pub const MAX_TOLD: usize = 16;

/// What a delivery asks of the Subscriptions it concerns.
pub enum Ask<'a> {
    /// List again.
    Relist,
    /// Fetch this repository alone and update its entry.
    Repository(&'a Changed),
}

/// The wake-ups of the Subscription controllers running in this process (one per scope, while
/// it leads).
#[derive(Default)]
pub struct Refreshes {
    wakers: Mutex<Vec<UnboundedSender<ObjectRef<Subscription>>>>,
    /// Where the leading replica receives webhooks, as its Lease says.
    leader: Mutex<Option<String>>,
}

impl Refreshes {
    /// The Subscriptions to reconcile, for one controller (its term ends when it drops them).
    pub fn wakes(&self) -> UnboundedReceiver<ObjectRef<Subscription>> {
        let (waker, woken) = unbounded();
        lock(&self.wakers).push(waker);
        woken
    }

    /// Asks `subscriptions` for `what`, now; returns whether a controller here will do it (none
    /// runs on a replica that does not lead).
    pub fn ask(
        &self,
        memory: &Memory,
        subscriptions: &[Arc<Subscription>],
        what: &Ask<'_>,
    ) -> bool {
        let mut wakers = lock(&self.wakers);
        wakers.retain(|waker| !waker.is_closed());
        if wakers.is_empty() {
            return false;
        }
        let now = Instant::now();
        for subscription in subscriptions {
            memory.subscription(&finish::uid(&**subscription), |m| match what {
                Ask::Repository(changed) if m.told.len() < MAX_TOLD => {
                    let same = |t: &Told| t.changed.full_name == changed.full_name;
                    let first = m.told.iter().find(|t| same(t)).map_or(now, |t| t.first);
                    m.told.retain(|t| !same(t));
                    m.told.push(Told {
                        changed: (*changed).clone(),
                        at: now,
                        first,
                    });
                }
                _ => {
                    m.refresh_first.get_or_insert(now);
                    m.refresh = Some(now);
                }
            });
            for waker in wakers.iter() {
                // A closed one is gone with its controller, and with it the need.
                let _ = waker.unbounded_send(ObjectRef::from_obj(&**subscription));
            }
        }
        true
    }

    /// Where the leading replica receives webhooks, if its Lease says.
    pub fn leader(&self) -> Option<String> {
        lock(&self.leader).clone()
    }

    /// Records where the leading replica receives webhooks.
    pub fn set_leader(&self, address: Option<String>) {
        *lock(&self.leader) = address;
    }
}

/// The Subscriptions of integration `namespace/integration` whose scope holds `owner` (a Cloud
/// workspace or a Data Center project key, compared without case or a personal project's `~`;
/// `None`: any of them).
pub fn concerned(
    subscriptions: impl IntoIterator<Item = Arc<Subscription>>,
    namespace: &str,
    integration: &str,
    owner: Option<&str>,
) -> Vec<Arc<Subscription>> {
    let key = |text: &str| text.trim_start_matches('~').to_ascii_lowercase();
    let holds = |subscription: &Subscription| {
        let Some(owner) = owner.map(key) else {
            return true;
        };
        match &subscription.spec.workspace {
            // A workspace named by its UUID may be the owner's: refresh rather than miss it.
            Some(workspace) => workspace.starts_with('{') || key(workspace) == owner,
            None => {
                let projects = &subscription.spec.projects;
                projects.is_empty() || projects.iter().any(|p| key(p) == owner)
            }
        }
    };
    subscriptions
        .into_iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(namespace)
                && s.spec.integration_ref.name == integration
                && holds(s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(namespace: &str, yaml: &str) -> Arc<Subscription> {
        let mut subscription = Subscription::new("s", serde_saphyr::from_str(yaml).unwrap());
        subscription.metadata.namespace = Some(namespace.into());
        subscription.metadata.name = Some(yaml.into());
        Arc::new(subscription)
    }

    #[test]
    fn a_change_concerns_the_subscriptions_of_its_integration_that_hold_its_owner() {
        let all = [
            subscription("ci", "{integrationRef: {name: acme}, workspace: Acme}"),
            subscription("ci", "{integrationRef: {name: acme}, workspace: other}"),
            subscription("ci", "{integrationRef: {name: acme}, workspace: '{0c4e}'}"),
            subscription("ci", "{integrationRef: {name: other}, workspace: acme}"),
            subscription("team", "{integrationRef: {name: acme}, workspace: acme}"),
            subscription("ci", "{integrationRef: {name: dc}}"),
            subscription("ci", "{integrationRef: {name: dc}, projects: ['~Gopher']}"),
            subscription("ci", "{integrationRef: {name: dc}, projects: [PLAT]}"),
        ];
        let names = |found: Vec<Arc<Subscription>>| -> Vec<String> {
            found.iter().map(|s| s.name_any()).collect()
        };
        assert_eq!(
            names(concerned(all.clone(), "ci", "acme", Some("acme"))),
            [
                "{integrationRef: {name: acme}, workspace: Acme}",
                "{integrationRef: {name: acme}, workspace: '{0c4e}'}"
            ]
        );
        assert_eq!(concerned(all.clone(), "ci", "acme", None).len(), 3);
        assert_eq!(
            names(concerned(all.clone(), "ci", "dc", Some("gopher"))),
            [
                "{integrationRef: {name: dc}}",
                "{integrationRef: {name: dc}, projects: ['~Gopher']}"
            ]
        );
    }

    #[tokio::test]
    async fn asking_marks_each_subscription_and_wakes_every_running_controller() {
        use futures::StreamExt;
        let refreshes = Refreshes::default();
        let memory = Memory::default();
        let mut s = Subscription::new(
            "s",
            serde_saphyr::from_str("{integrationRef: {name: acme}}").unwrap(),
        );
        s.metadata.namespace = Some("ci".into());
        s.metadata.uid = Some("u".into());
        let s = Arc::new(s);
        assert!(
            !refreshes.ask(&memory, &[Arc::clone(&s)], &Ask::Relist),
            "no controller runs"
        );
        let mut woken = refreshes.wakes();
        assert!(refreshes.ask(&memory, &[Arc::clone(&s)], &Ask::Relist));
        assert_eq!(woken.next().await, Some(ObjectRef::from_obj(&*s)));
        assert!(memory.subscription("u", |m| m.refresh.is_some()));
        drop(woken);
        assert!(
            !refreshes.ask(&memory, &[s], &Ask::Relist),
            "its controller is gone"
        );
    }
}
