//! Indexes beside the watches' stores: which objects of a kind have a key (the Subscriptions of
//! an integration, the RepositorySlices of a Subscription, the integrations that use a
//! Secret), so that a reconcile or a watch event finds them
//! without going through every object the store holds. At 10,000 integrations and 50,000
//! Subscriptions, each integration's reconcile and each of its status events went through all
//! 50,000 (and each Subscription's publishing through every slice): the operator's two cores
//! did little else. Fed with the store's own watch events, in their order. No I/O.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use kube::runtime::{
    reflector::{ObjectRef, Store},
    watcher,
};

use super::lock;

/// The objects of kind `K` by key, as their watch shows them.
pub struct Index<K: kube::Resource<DynamicType = ()>> {
    /// An object's keys (none: not indexed).
    keys: fn(&K) -> Vec<String>,
    state: Mutex<State<K>>,
}

struct State<K: kube::Resource<DynamicType = ()>> {
    by_key: HashMap<String, HashSet<ObjectRef<K>>>,
    keys_of: HashMap<ObjectRef<K>, Vec<String>>,
    /// While the watch lists again: the objects listed so far. Those not listed by its end
    /// are gone (until then the index keeps them, as the store does).
    listing: Option<HashSet<ObjectRef<K>>>,
}

impl<K: kube::Resource<DynamicType = ()>> Default for State<K> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            keys_of: HashMap::new(),
            listing: None,
        }
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone> Index<K> {
    pub fn new(keys: fn(&K) -> Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            keys,
            state: Mutex::default(),
        })
    }

    /// Follows one event of the watch.
    pub fn apply(&self, event: &watcher::Event<K>) {
        let mut state = lock(&self.state);
        match event {
            watcher::Event::Apply(object) => {
                state.put(ObjectRef::from_obj(object), (self.keys)(object));
            }
            watcher::Event::InitApply(object) => {
                let reference = ObjectRef::from_obj(object);
                if let Some(listed) = state.listing.as_mut() {
                    listed.insert(reference.clone());
                }
                state.put(reference, (self.keys)(object));
            }
            watcher::Event::Delete(object) => state.put(ObjectRef::from_obj(object), Vec::new()),
            watcher::Event::Init => state.listing = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let Some(listed) = state.listing.take() else {
                    return;
                };
                let gone: Vec<ObjectRef<K>> = (state.keys_of.keys())
                    .filter(|reference| !listed.contains(*reference))
                    .cloned()
                    .collect();
                for reference in gone {
                    state.put(reference, Vec::new());
                }
            }
        }
    }

    /// The objects with `key`.
    pub fn get(&self, key: &str) -> Vec<ObjectRef<K>> {
        let state = lock(&self.state);
        state
            .by_key
            .get(key)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The objects with `key` that `store` holds.
    pub fn find(&self, store: &Store<K>, key: &str) -> Vec<Arc<K>> {
        self.get(key).iter().filter_map(|r| store.get(r)).collect()
    }
}

impl<K: kube::Resource<DynamicType = ()>> State<K> {
    /// `reference` now has `keys` (none: is no longer indexed).
    fn put(&mut self, reference: ObjectRef<K>, keys: Vec<String>) {
        for old in self.keys_of.remove(&reference).into_iter().flatten() {
            if let Some(objects) = self.by_key.get_mut(&old) {
                objects.remove(&reference);
                if objects.is_empty() {
                    self.by_key.remove(&old);
                }
            }
        }
        if keys.is_empty() {
            return;
        }
        for key in &keys {
            let objects = self.by_key.entry(key.clone()).or_default();
            objects.insert(reference.clone());
        }
        self.keys_of.insert(reference, keys);
    }
}

/// The key of the Subscriptions of an integration, and of the integrations that use a Secret:
/// `namespace/name` of the integration or the Secret.
pub fn integration_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Subscription, SubscriptionSpec};

    fn subscription(name: &str, integration: &str) -> Subscription {
        let yaml = format!("integrationRef: {{name: {integration}}}\nworkspace: acme");
        let spec: SubscriptionSpec = serde_saphyr::from_str(&yaml).unwrap();
        let mut subscription = Subscription::new(name, spec);
        subscription.metadata.namespace = Some("ns".into());
        subscription
    }

    fn users(index: &Index<Subscription>, integration: &str) -> Vec<String> {
        let mut names: Vec<String> = (index.get(&integration_key("ns", integration)))
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_index_follows_re_points_deletes_and_a_new_listing() {
        let index = Index::new(|s: &Subscription| {
            let namespace = s.metadata.namespace.as_deref().unwrap_or_default();
            vec![integration_key(namespace, &s.spec.integration_ref.name)]
        });
        let apply =
            |name: &str, to: &str| index.apply(&watcher::Event::Apply(subscription(name, to)));
        apply("a", "acme");
        apply("b", "acme");
        apply("c", "other");
        assert_eq!(users(&index, "acme"), ["a", "b"]);
        apply("b", "other");
        assert_eq!(users(&index, "acme"), ["a"], "re-pointed");
        assert_eq!(users(&index, "other"), ["b", "c"]);
        index.apply(&watcher::Event::Delete(subscription("c", "other")));
        assert_eq!(users(&index, "other"), ["b"], "deleted");
        // A new listing: kept until it ends, then what it did not list is gone.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(subscription("a", "acme")));
        assert_eq!(users(&index, "other"), ["b"], "kept while listing");
        index.apply(&watcher::Event::InitDone);
        assert_eq!(users(&index, "acme"), ["a"]);
        assert!(users(&index, "other").is_empty(), "not listed again: gone");
    }
}
