//! The repository lists every replica serves to Argo CD (the ApplicationSet plugin generator)
//! and Flux (the `ExternalService` input provider), from its watch caches of Subscriptions and
//! RepositorySlices: no Bitbucket call and no API-server request per answer, and leader and
//! standby answer alike.
//!
//! Only complete lists are served. A Subscription's `status.slices` names the slices of its
//! complete list with their digests, and is written after them; a list is assembled only when
//! the cache holds exactly those slices with those digests. While an update is under way (or
//! was cut short) the slices differ, and the last complete list this replica assembled is
//! served instead; a replica that never saw one answers 503, which Argo CD and Flux retry. An
//! empty answer always means an empty list: Argo CD deletes the Applications a generator stops
//! producing. No I/O (the watches that fill the caches run in `controller::run`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use bytes::Bytes;

use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use crate::{
    api::{
        BitbucketIntegration, Incomplete, Repository, SliceRef, Subscription,
        slice::{self, Holding},
    },
    controller::{
        is_ready, lock,
        slice_cache::{CachedSlice, SliceCache},
    },
};

/// The caches of one watched scope (a namespace, or the whole cluster).
struct Scope {
    namespace: Option<String>,
    integrations: Store<BitbucketIntegration>,
    subscriptions: Store<Subscription>,
    slices: Arc<SliceCache>,
}

/// What every replica serves from: the caches of each watched scope, and the last complete
/// list of each Subscription.
#[derive(Default)]
pub struct Catalog {
    scopes: Mutex<Vec<Scope>>,
    /// By Subscription UID.
    complete: Mutex<HashMap<String, Arc<List>>>,
}

/// A complete repository list: the slices that held it (their entries compact, as the cache
/// keeps them), and those entries parsed while they are asked for.
pub struct List {
    /// In the order `status.slices` named them.
    slices: Vec<Arc<CachedSlice>>,
    len: usize,
    /// The entries, parsed and sorted by full name, kept while they are asked for (see
    /// [`List::entries`]).
    parsed: Mutex<Option<Parsed>>,
    /// An answer rendered from this list, kept while it is asked for (see [`List::rendered`]).
    rendered: Mutex<Option<Rendered>>,
}

/// What [`List::entries`] keeps.
struct Parsed {
    entries: Arc<[Repository]>,
    /// Whether they were asked for since the last [`Catalog::sweep`].
    asked: bool,
}

/// What [`List::keep_rendered`] keeps.
struct Rendered {
    /// What else the rendering depends on.
    key: String,
    chunks: Arc<[Bytes]>,
    /// Whether it was asked for since the last [`Catalog::sweep`].
    asked: bool,
}

impl List {
    fn new(slices: Vec<Arc<CachedSlice>>) -> Self {
        let len = slices.iter().map(|s| s.entries().len()).sum();
        Self {
            slices,
            len,
            parsed: Mutex::default(),
            rendered: Mutex::default(),
        }
    }

    /// The repositories, sorted by full name, for a reader that serves them: parsed from the
    /// slices on first use, and kept until a [`Catalog::sweep`] finds nobody asked for them
    /// since the sweep before.
    pub fn entries(&self) -> Arc<[Repository]> {
        let mut parsed = lock(&self.parsed);
        let kept = parsed.get_or_insert_with(|| Parsed {
            entries: slice::entries(&self.slices).into(),
            asked: true,
        });
        kept.asked = true;
        Arc::clone(&kept.entries)
    }

    /// The answer rendered from this list under `key` (whatever else it depends on), when one
    /// is kept: Argo CD asks for the same list on every refresh of every ApplicationSet, and
    /// rendering 100,000 repositories takes longer than sending them.
    pub fn rendered(&self, key: &str) -> Option<Arc<[Bytes]>> {
        let mut kept = lock(&self.rendered);
        let kept = kept.as_mut().filter(|r| r.key == key)?;
        kept.asked = true;
        Some(Arc::clone(&kept.chunks))
    }

    /// Keeps `chunks`, rendered from this list under `key`, until the list is replaced or a
    /// [`Catalog::sweep`] finds nobody asked for them since the sweep before.
    pub fn keep_rendered(&self, key: String, chunks: Arc<[Bytes]>) {
        *lock(&self.rendered) = Some(Rendered {
            key,
            chunks,
            asked: true,
        });
    }

    /// Whether `named` (a Subscription's `status.slices`) names the slices that hold this list.
    pub fn is_named_by(&self, named: &[SliceRef]) -> bool {
        named.len() == self.slices.len()
            && (named.iter().zip(&self.slices))
                .all(|(named, slice)| named.name == slice.name() && named.digest == slice.digest())
    }

    /// The repositories, sorted by full name, for the operator's own use once (a webhook's
    /// refresh): the parsed entries if they are kept, else parsed without keeping them (keeping
    /// each list parsed would undo the slices' compact form).
    pub fn parse(&self) -> Arc<[Repository]> {
        match lock(&self.parsed).as_ref() {
            Some(kept) => Arc::clone(&kept.entries),
            None => slice::entries(&self.slices).into(),
        }
    }

    /// The first `n` repositories by full name (a status restored on every reconcile),
    /// parsing only those.
    pub fn first(&self, n: usize) -> Vec<Repository> {
        match lock(&self.parsed).as_ref() {
            Some(kept) => kept.entries.iter().take(n).cloned().collect(),
            None => slice::first_entries(&self.slices, n),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Which list answers.
pub enum Served {
    /// The list the Subscription's status names.
    Complete(Arc<List>),
    /// The last complete list this replica saw, while the slices are being rewritten.
    Previous(Arc<List>),
}

/// Why no list can be served for a Subscription.
#[derive(Debug, thiserror::Error)]
pub enum NotServed {
    /// No watched scope holds the namespace, or the Subscription is not in the cache.
    #[error("no Subscription {0}/{1} is known to this operator")]
    NotFound(String, String),
    /// The caches have not been listed yet (the operator is starting).
    #[error("the operator is starting: its caches are not filled yet")]
    Starting,
    /// Neither the list the status names nor a previous one is complete here.
    #[error("Subscription {0}/{1}: {2}")]
    Incomplete(String, String, Incomplete),
}

impl Catalog {
    /// Adds the caches of a watched scope (`None`: the whole cluster).
    pub fn watch(
        &self,
        namespace: Option<String>,
        integrations: Store<BitbucketIntegration>,
        subscriptions: Store<Subscription>,
        slices: Arc<SliceCache>,
    ) {
        lock(&self.scopes).push(Scope {
            namespace,
            integrations,
            subscriptions,
            slices,
        });
    }

    /// What `read` finds in the caches of the scope that watches `namespace`, once its
    /// integrations and Subscriptions are listed.
    fn filled<T>(&self, namespace: &str, read: impl FnOnce(&Scope) -> Option<T>) -> Option<T> {
        let scopes = lock(&self.scopes);
        let scope = scopes
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))?;
        (is_ready(&scope.integrations) && is_ready(&scope.subscriptions))
            .then(|| read(scope))
            .flatten()
    }

    /// The integration `namespace/name`, as this replica's cache holds it.
    pub fn integration(&self, namespace: &str, name: &str) -> Option<Arc<BitbucketIntegration>> {
        self.filled(namespace, |scope| {
            (scope.integrations).get(&ObjectRef::new(name).within(namespace))
        })
    }

    /// The Subscriptions of `namespace`, as this replica's cache holds them.
    pub fn subscriptions_in(&self, namespace: &str) -> Vec<Arc<Subscription>> {
        self.filled(namespace, |scope| {
            let all = scope.subscriptions.state().into_iter();
            Some(
                all.filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
                    .collect(),
            )
        })
        .unwrap_or_default()
    }

    /// Whether the caches of `scopes` watched scopes are all filled (so every answer is one).
    pub fn is_ready(&self, scopes: usize) -> bool {
        let watched = lock(&self.scopes);
        watched.len() == scopes
            && watched
                .iter()
                .all(|s| is_ready(&s.subscriptions) && s.slices.is_ready())
    }

    /// The Subscription `namespace/name` as cached, with the slice cache of its scope.
    fn find(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Arc<Subscription>, Arc<SliceCache>), NotServed> {
        let scopes = lock(&self.scopes);
        let scope = scopes
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))
            .ok_or_else(|| NotServed::NotFound(namespace.into(), name.into()))?;
        if !is_ready(&scope.subscriptions) || !scope.slices.is_ready() {
            return Err(NotServed::Starting);
        }
        let subscription = scope
            .subscriptions
            .get(&ObjectRef::new(name).within(namespace))
            .ok_or_else(|| NotServed::NotFound(namespace.into(), name.into()))?;
        Ok((subscription, Arc::clone(&scope.slices)))
    }

    /// The Subscription `namespace/name`, as this replica's cache holds it.
    pub fn subscription(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Subscription>, NotServed> {
        self.find(namespace, name)
            .map(|(subscription, _)| subscription)
    }

    /// The complete list of Subscription `namespace/name`: the one its status names when the
    /// cache holds it, else the last complete one seen.
    pub fn list(&self, namespace: &str, name: &str) -> Result<Served, NotServed> {
        let (subscription, slices) = self.find(namespace, name)?;
        let uid = subscription.uid().unwrap_or_default();
        let named = subscription
            .status
            .as_ref()
            .and_then(|s| s.slices.as_deref());
        let previous = lock(&self.complete).get(&uid).cloned();
        // The list assembled last is still the one the status names (the slices may be
        // being rewritten meanwhile: what it holds is what the status names).
        if let Some(list) = &previous
            && named.is_some_and(|named| list.is_named_by(named))
        {
            return Ok(Served::Complete(Arc::clone(list)));
        }
        let found = slice::complete(named, |slice_name| {
            (slices.get(namespace, slice_name)).filter(|s| s.controlled_by(&uid))
        });
        match found {
            Ok(found) => {
                let list = Arc::new(List::new(found));
                lock(&self.complete).insert(uid, Arc::clone(&list));
                Ok(Served::Complete(list))
            }
            Err(incomplete) => match previous {
                Some(list) => Ok(Served::Previous(list)),
                None => Err(NotServed::Incomplete(
                    namespace.into(),
                    name.into(),
                    incomplete,
                )),
            },
        }
    }

    /// Drops the lists of Subscriptions not among `live` (UIDs), and the parsed entries and
    /// rendered answers nobody asked for since the last sweep.
    pub fn sweep(&self, live: &HashSet<String>) {
        let mut complete = lock(&self.complete);
        complete.retain(|uid, _| live.contains(uid));
        for list in complete.values() {
            keep_if_asked(&mut lock(&list.rendered), |r| &mut r.asked);
            keep_if_asked(&mut lock(&list.parsed), |p| &mut p.asked);
        }
    }
}

/// Drops what `kept` holds unless it was asked for since the last sweep, and starts counting
/// again (`asked` is its flag).
fn keep_if_asked<T>(kept: &mut Option<T>, asked: impl Fn(&mut T) -> &mut bool) {
    match kept.as_mut().map(asked) {
        Some(flag) if *flag => *flag = false,
        _ => *kept = None,
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher::Event};

    use super::*;
    use crate::api::{RepositorySlice, SubscriptionSpec, SubscriptionStatus};

    fn subscription(uid: &str, named: &[&RepositorySlice]) -> Subscription {
        let spec: SubscriptionSpec =
            serde_json::from_value(serde_json::json!({"integrationRef": {"name": "acme"}}))
                .unwrap();
        let mut s = Subscription::new("big", spec);
        s.metadata.namespace = Some("ci".into());
        s.metadata.uid = Some(uid.into());
        s.status = Some(SubscriptionStatus {
            slices: Some(
                named
                    .iter()
                    .map(|slice| SliceRef {
                        name: slice.name_any(),
                        digest: slice.digest.clone(),
                    })
                    .collect(),
            ),
            ..SubscriptionStatus::default()
        });
        s
    }

    fn slice(name: &str, owner: &str, slugs: &[&str]) -> RepositorySlice {
        let entries = slugs
            .iter()
            .map(|slug| {
                serde_json::from_value(serde_json::json!({
                    "fullName": format!("acme/{slug}"), "name": slug, "private": true,
                    "cloneUrls": {}
                }))
                .unwrap()
            })
            .collect();
        let mut slice = RepositorySlice::new(name, entries);
        slice.metadata.namespace = Some("ci".into());
        slice.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                controller: Some(true),
                uid: owner.into(),
                ..Default::default()
            },
        ]);
        slice
    }

    /// A catalog over caches the test fills: `subscriptions` and `slices` as they are now.
    struct Caches {
        catalog: Catalog,
        subscriptions: reflector::store::Writer<Subscription>,
        slices: Arc<SliceCache>,
    }

    impl Caches {
        fn new() -> Self {
            let (integration_store, _) = reflector::store();
            let (subscription_store, mut subscriptions) = reflector::store();
            let slices = Arc::new(SliceCache::default());
            subscriptions.apply_watcher_event(&Event::InitDone);
            slices.apply(Event::InitDone);
            let catalog = Catalog::default();
            catalog.watch(
                Some("ci".into()),
                integration_store,
                subscription_store,
                Arc::clone(&slices),
            );
            Self {
                catalog,
                subscriptions,
                slices,
            }
        }

        fn show(&mut self, subscription: &Subscription, slices: &[&RepositorySlice]) {
            self.subscriptions
                .apply_watcher_event(&Event::Apply(subscription.clone()));
            for slice in slices {
                self.slices.apply(Event::Apply((*slice).clone()));
            }
        }

        fn served(&self) -> Result<(&'static str, Vec<String>), String> {
            let names = |list: &List| list.entries().iter().map(|r| r.name.clone()).collect();
            match self.catalog.list("ci", "big") {
                Ok(Served::Complete(list)) => Ok(("complete", names(&list))),
                Ok(Served::Previous(list)) => Ok(("previous", names(&list))),
                Err(error) => Err(error.to_string()),
            }
        }
    }

    fn names(slugs: &[&str]) -> Vec<String> {
        slugs.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_complete_lists_are_served_and_the_last_one_while_the_next_arrives() {
        let mut caches = Caches::new();
        let a = slice("big-a", "uid", &["web", "api"]);
        caches.show(&subscription("uid", &[&a]), &[&a]);
        assert_eq!(caches.served(), Ok(("complete", names(&["api", "web"]))));

        // The status names the new slices before the cache holds them: the last complete list.
        let (a2, b) = (
            slice("big-a", "uid", &["web"]),
            slice("big-b", "uid", &["db"]),
        );
        caches.show(&subscription("uid", &[&a2, &b]), &[]);
        assert_eq!(caches.served(), Ok(("previous", names(&["api", "web"]))));
        caches.show(&subscription("uid", &[&a2, &b]), &[&a2]);
        assert_eq!(caches.served(), Ok(("previous", names(&["api", "web"]))));
        caches.show(&subscription("uid", &[&a2, &b]), &[&b]);
        assert_eq!(caches.served(), Ok(("complete", names(&["db", "web"]))));

        // A replica that never saw a complete list answers why, never a part.
        let mut fresh = Caches::new();
        fresh.show(&subscription("uid", &[&a2, &b]), &[&a, &b]);
        let refused = fresh.served().unwrap_err();
        assert_eq!(
            refused,
            "Subscription ci/big: RepositorySlice big-a is being rewritten"
        );
    }

    #[test]
    fn a_rendered_answer_is_kept_while_asked_for_and_goes_with_its_list() {
        let mut caches = Caches::new();
        let a = slice("big-a", "uid", &["web", "api"]);
        caches.show(&subscription("uid", &[&a]), &[&a]);
        let list = |caches: &Caches| match caches.catalog.list("ci", "big") {
            Ok(Served::Complete(list)) => list,
            _ => panic!("the list is complete"),
        };
        let live: HashSet<String> = ["uid".to_owned()].into();
        let answer: Arc<[Bytes]> = vec![Bytes::from_static(b"[\"api\",\"web\"]")].into();
        list(&caches).keep_rendered("acme".into(), Arc::clone(&answer));
        assert!(
            list(&caches).rendered("other").is_none(),
            "rendered for another key"
        );
        let kept = list(&caches).rendered("acme").expect("kept");
        assert!(Arc::ptr_eq(&kept, &answer), "the same chunks, not a copy");

        // Asked for since the last sweep: kept through the next; then not asked for: dropped.
        caches.catalog.sweep(&live);
        assert!(
            list(&caches).rendered("acme").is_some(),
            "asked for before the sweep"
        );
        caches.catalog.sweep(&live);
        caches.catalog.sweep(&live);
        assert!(
            list(&caches).rendered("acme").is_none(),
            "nobody asked between two sweeps"
        );

        // A new list starts with nothing rendered.
        list(&caches).keep_rendered("acme".into(), answer);
        let a2 = slice("big-a", "uid", &["web"]);
        caches.show(&subscription("uid", &[&a2]), &[&a2]);
        assert!(
            list(&caches).rendered("acme").is_none(),
            "rendered from the previous list"
        );
    }

    #[test]
    fn a_slice_another_subscription_controls_is_not_part_of_the_list() {
        let mut caches = Caches::new();
        let foreign = slice("big-a", "someone-else", &["backdoor"]);
        caches.show(&subscription("uid", &[&foreign]), &[&foreign]);
        assert_eq!(
            caches.served().unwrap_err(),
            "Subscription ci/big: RepositorySlice big-a is not there (yet)"
        );
    }
}
