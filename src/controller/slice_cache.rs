//! The RepositorySlices every replica caches, as compact records: what the catalog serves lists
//! from and what the leader plans its slice writes from, found by name or by the Subscription
//! that controls them. kube's reflector store kept each slice whole: beside its entries, about
//! 1 KiB a slice (an `ObjectMeta` with room for every field a slice never has, a key
//! with room for its resourceVersion and UID, and an index by Subscription beside it). A record
//! keeps what the operator reads: name, resourceVersion, UID, the controller's UID, the digest
//! and the compact entries; names of namespaces and Subscriptions are shared. Fed with the
//! slices' watch events in their order, as a reflector is. No I/O.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

use super::shared_name;
use crate::api::{Entries, RepositorySlice, slice::Holding};

/// A RepositorySlice as the cache keeps it.
#[derive(Debug)]
pub struct CachedSlice {
    namespace: Arc<str>,
    name: Arc<str>,
    resource_version: Box<str>,
    uid: Box<str>,
    /// The UID of the Subscription that controls it (its controller ownerReference).
    controller: Option<Arc<str>>,
    digest: Box<str>,
    repositories: Entries,
    /// What an update must write back and a slice seldom has: annotations (but kubectl's
    /// last-applied-configuration) and finalizers someone else added.
    others: Option<Box<Others>>,
}

#[derive(Debug)]
struct Others {
    annotations: Option<BTreeMap<String, String>>,
    finalizers: Option<Vec<String>>,
}

impl CachedSlice {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Whether the object with UID `uid` (its Subscription) is this slice's controller.
    pub fn controlled_by(&self, uid: &str) -> bool {
        self.controller.as_deref() == Some(uid)
    }

    /// The metadata an update of this slice starts from: name, namespace, the version cached
    /// (the API server refuses the update if it changed since) and what [`Others`] keeps. The
    /// writer adds labels and the controller reference (the cache keeps neither).
    pub fn metadata(&self) -> ObjectMeta {
        let (annotations, finalizers) = match self.others.as_deref() {
            Some(others) => (others.annotations.clone(), others.finalizers.clone()),
            None => (None, None),
        };
        ObjectMeta {
            name: Some(self.name.to_string()),
            namespace: Some(self.namespace.to_string()),
            resource_version: Some(self.resource_version.to_string()),
            uid: Some(self.uid.to_string()),
            annotations,
            finalizers,
            ..ObjectMeta::default()
        }
    }
}

impl Holding for CachedSlice {
    fn entries(&self) -> &Entries {
        &self.repositories
    }

    fn digest(&self) -> &str {
        &self.digest
    }
}

/// The cached slices of one watched scope.
pub struct SliceCache {
    state: RwLock<State>,
    /// Whether the watch has listed every slice once.
    ready: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    kept: Kept,
    /// While the watch lists again: the slices listed so far, which replace the others when
    /// the list ends (until then the cache answers as before).
    listing: Option<Kept>,
}

/// Slices, found two ways.
#[derive(Default)]
struct Kept {
    /// By namespace, then name.
    by_name: HashMap<Arc<str>, HashMap<Arc<str>, Arc<CachedSlice>>>,
    /// By the UID of the Subscription that controls them.
    by_controller: HashMap<Arc<str>, Vec<Arc<CachedSlice>>>,
}

impl Default for SliceCache {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl SliceCache {
    /// The slice `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedSlice>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.kept.by_name.get(namespace)?.get(name).cloned()
    }

    /// The slices in `namespace` that the Subscription with UID `uid` controls, by name.
    pub fn controlled_by(&self, namespace: &str, uid: &str) -> Vec<Arc<CachedSlice>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let all = state.kept.by_controller.get(uid).into_iter().flatten();
        let mut owned: Vec<_> = all
            .filter(|s| &*s.namespace == namespace)
            .cloned()
            .collect();
        owned.sort_by(|a, b| a.name.cmp(&b.name));
        owned
    }

    /// Whether the watch has listed every slice once.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Until the watch has listed every slice once.
    pub async fn wait_until_ready(&self) {
        // The sender lives as long as `self`, so this cannot fail.
        let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
    }

    /// Applies one event of the slices' watch.
    pub fn apply(&self, event: Event<RepositorySlice>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(slice) => state.kept.apply(slice),
            Event::Delete(slice) => {
                let meta = &slice.metadata;
                let (namespace, name) = (meta.namespace.as_deref(), meta.name.as_deref());
                (state.kept).remove(namespace.unwrap_or_default(), name.unwrap_or_default());
            }
            Event::Init => state.listing = Some(Kept::default()),
            Event::InitApply(slice) => state.listing.get_or_insert_default().apply(slice),
            Event::InitDone => {
                state.kept = state.listing.take().unwrap_or_default();
                drop(state);
                self.ready.send_replace(true);
            }
        }
    }
}

impl Kept {
    /// Keeps `slice` in place of the one of the same name.
    fn apply(&mut self, slice: RepositorySlice) {
        let record = self.record(slice);
        self.insert(record);
    }

    /// The record of `slice`, sharing the names of its namespace and controller with the
    /// records already kept.
    fn record(&self, slice: RepositorySlice) -> CachedSlice {
        let RepositorySlice {
            metadata,
            repositories,
            digest,
            ..
        } = slice;
        let namespace = metadata.namespace.as_deref().unwrap_or_default();
        let namespace = shared_name(&self.by_name, namespace);
        let mut owners = metadata.owner_references.iter().flatten();
        let controller = owners.find(|o| o.controller == Some(true));
        let controller = controller.map(|o| shared_name(&self.by_controller, &o.uid));
        let mut annotations = metadata.annotations.filter(|a| !a.is_empty());
        if let Some(kept) = annotations.as_mut() {
            kept.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let annotations = annotations.filter(|a| !a.is_empty());
        let finalizers = metadata.finalizers.filter(|f| !f.is_empty());
        let others = (annotations.is_some() || finalizers.is_some()).then(|| {
            Box::new(Others {
                annotations,
                finalizers,
            })
        });
        CachedSlice {
            namespace,
            name: Arc::from(metadata.name.unwrap_or_default()),
            resource_version: metadata.resource_version.unwrap_or_default().into(),
            uid: metadata.uid.unwrap_or_default().into(),
            controller,
            digest: digest.into(),
            repositories,
            others,
        }
    }

    /// Keeps `record` in place of the slice of the same name.
    fn insert(&mut self, record: CachedSlice) {
        self.remove(&record.namespace, &record.name);
        let record = Arc::new(record);
        if let Some(controller) = &record.controller {
            let owned = self.by_controller.entry(Arc::clone(controller));
            owned.or_default().push(Arc::clone(&record));
        }
        let namespace = self.by_name.entry(Arc::clone(&record.namespace));
        let names = namespace.or_default();
        names.insert(Arc::clone(&record.name), record);
    }

    /// Forgets the slice `namespace/name`.
    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(names) = self.by_name.get_mut(namespace) else {
            return;
        };
        let Some(gone) = names.remove(name) else {
            return;
        };
        if names.is_empty() {
            self.by_name.remove(namespace);
        }
        let Some(controller) = gone.controller.as_deref() else {
            return;
        };
        if let Some(owned) = self.by_controller.get_mut(controller) {
            owned.retain(|s| !Arc::ptr_eq(s, &gone));
            if owned.is_empty() {
                self.by_controller.remove(controller);
            }
        }
    }
}

/// The namespaces and Subscriptions the cache holds slices of (for tests of its sharing).
#[cfg(test)]
impl SliceCache {
    fn shared_names(&self) -> (usize, usize) {
        let state = self.state.read().unwrap();
        let distinct = |names: Vec<*const u8>| {
            let names: std::collections::HashSet<_> = names.into_iter().collect();
            names.len()
        };
        let all = state.kept.by_name.values().flat_map(|names| names.values());
        let namespaces = distinct(all.clone().map(|s| s.namespace.as_ptr()).collect());
        let controllers = distinct(
            all.filter_map(|s| s.controller.as_ref().map(|c| c.as_ptr()))
                .collect(),
        );
        (namespaces, controllers)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn slice(namespace: &str, name: &str, owner: &str, version: &str) -> RepositorySlice {
        let entry = serde_json::json!({
            "fullName": format!("acme/{name}"), "name": name, "private": true, "cloneUrls": {}
        });
        let mut slice = RepositorySlice::new(name, vec![serde_json::from_value(entry).unwrap()]);
        slice.metadata.namespace = Some(namespace.into());
        slice.metadata.resource_version = Some(version.into());
        slice.metadata.uid = Some(format!("uid-{name}"));
        slice.metadata.owner_references = Some(vec![
            OwnerReference {
                uid: "someone-else".into(),
                ..OwnerReference::default()
            },
            OwnerReference {
                controller: Some(true),
                uid: owner.into(),
                ..OwnerReference::default()
            },
        ]);
        slice
    }

    fn names(slices: &[Arc<CachedSlice>]) -> Vec<&str> {
        slices.iter().map(|s| s.name()).collect()
    }

    #[test]
    fn slices_are_found_by_name_and_by_their_controller_as_the_watch_shows_them() {
        let cache = SliceCache::default();
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(slice("ci", "b", "sub-1", "1")));
        assert!(!cache.is_ready(), "not ready before the list ends");
        assert!(cache.get("ci", "b").is_none(), "listed, not yet shown");
        cache.apply(Event::InitApply(slice("ci", "a", "sub-1", "2")));
        cache.apply(Event::InitApply(slice("qa", "c", "sub-1", "3")));
        cache.apply(Event::InitDone);
        assert!(cache.is_ready());
        assert_eq!(names(&cache.controlled_by("ci", "sub-1")), ["a", "b"]);
        assert!(cache.controlled_by("ci", "someone-else").is_empty());
        assert_eq!(cache.get("qa", "c").unwrap().resource_version(), "3");

        // An update moves a slice to another controller; a delete forgets it.
        cache.apply(Event::Apply(slice("ci", "b", "sub-2", "4")));
        assert_eq!(names(&cache.controlled_by("ci", "sub-1")), ["a"]);
        assert_eq!(names(&cache.controlled_by("ci", "sub-2")), ["b"]);
        cache.apply(Event::Delete(slice("ci", "a", "sub-1", "5")));
        assert!(cache.get("ci", "a").is_none());
        assert!(cache.controlled_by("ci", "sub-1").is_empty());

        // Listing again replaces what is kept once the list ends, and not before.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(slice("ci", "d", "sub-2", "6")));
        assert!(cache.get("ci", "b").is_some());
        cache.apply(Event::InitDone);
        assert!(cache.get("ci", "b").is_none(), "not listed again: gone");
        assert_eq!(names(&cache.controlled_by("ci", "sub-2")), ["d"]);
    }

    #[test]
    fn a_record_keeps_what_an_update_writes_back_and_shares_names() {
        let cache = SliceCache::default();
        let mut annotated = slice("ci", "a", "sub-1", "7");
        annotated.metadata.annotations = Some(BTreeMap::from([
            ("team".to_owned(), "platform".to_owned()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{}".to_owned(),
            ),
        ]));
        annotated.metadata.labels = Some(BTreeMap::from([("x".to_owned(), "y".to_owned())]));
        cache.apply(Event::Apply(annotated));
        cache.apply(Event::Apply(slice("ci", "b", "sub-1", "8")));
        let meta = cache.get("ci", "a").unwrap().metadata();
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert_eq!(meta.uid.as_deref(), Some("uid-a"));
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["team"]);
        assert!(meta.labels.is_none() && meta.owner_references.is_none());
        assert!(
            cache
                .get("ci", "b")
                .unwrap()
                .metadata()
                .annotations
                .is_none()
        );
        assert_eq!(
            cache.shared_names(),
            (1, 1),
            "one namespace, one controller"
        );
    }

    #[test]
    fn a_record_stays_small() {
        // One is kept for every slice on every replica (50,000 at figure 14's full size): the
        // whole object took 464 bytes inline (its `ObjectMeta` 360) and about 1 KiB in all
        // beside its entries.
        let size = std::mem::size_of::<CachedSlice>();
        assert!(size <= 128, "CachedSlice is {size} bytes");
    }
}
