//! Indexes beside the watches' stores: which objects of a kind have a key (the Subscriptions of
//! an integration, the integrations that use a Secret), so that a reconcile or a watch event
//! finds them without going through every object the store holds. At 10,000 integrations and
//! 50,000 Subscriptions, each integration's reconcile and each of its status events went
//! through all 50,000: the operator's two cores did little else. (The slices' cache finds a
//! Subscription's slices itself: `slice_cache`.) Fed with the store's own watch events, in
//! their order. No I/O.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::{Arc, Mutex},
};

use kube::runtime::{
    reflector::{ObjectRef, Store},
    watcher,
};

use super::lock;

/// The objects of kind `K` by key, as their watch shows them. Kept small, since it holds an
/// entry for every object: keys as 64-bit hashes, objects by name and namespace only (an object
/// found under a key is checked against its keys before it is returned).
pub struct Index<K: kube::Resource<DynamicType = ()>> {
    /// An object's keys (none: not indexed).
    keys: fn(&K) -> Vec<String>,
    state: Mutex<State>,
}

/// A key's hash.
type Hashed = u64;

/// An object as the index keeps it: its namespace and name, a third of an `ObjectRef`'s size
/// (which has room for a resourceVersion and a UID). Held twice for every object.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Ref {
    namespace: Option<Box<str>>,
    name: Box<str>,
}

impl Ref {
    fn of(object: &impl kube::Resource) -> Self {
        let meta = object.meta();
        Self {
            namespace: meta.namespace.as_deref().map(Box::from),
            name: meta.name.as_deref().unwrap_or_default().into(),
        }
    }

    fn object_ref<K: kube::Resource<DynamicType = ()>>(&self) -> ObjectRef<K> {
        let reference = ObjectRef::new(&self.name);
        match &self.namespace {
            Some(namespace) => reference.within(namespace),
            None => reference,
        }
    }
}

#[derive(Default)]
struct State {
    by_key: HashMap<Hashed, Vec<Ref>>,
    keys_of: HashMap<Ref, Box<[Hashed]>>,
    /// While the watch lists again: the objects listed so far. Those not listed by its end
    /// are gone (until then the index keeps them, as the store does).
    listing: Option<HashSet<Ref>>,
}

/// `key`'s hash (the same in every process run: only the index uses it).
fn hashed(key: &str) -> Hashed {
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(key)
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
        let keys = |object: &K| {
            let mut keys: Vec<Hashed> = (self.keys)(object).iter().map(|k| hashed(k)).collect();
            keys.sort_unstable();
            keys.dedup();
            keys.into_boxed_slice()
        };
        let mut state = lock(&self.state);
        match event {
            watcher::Event::Apply(object) => state.put(Ref::of(object), keys(object)),
            watcher::Event::InitApply(object) => {
                let reference = Ref::of(object);
                if let Some(listed) = state.listing.as_mut() {
                    listed.insert(reference.clone());
                }
                state.put(reference, keys(object));
            }
            watcher::Event::Delete(object) => state.put(Ref::of(object), Box::default()),
            watcher::Event::Init => state.listing = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let Some(listed) = state.listing.take() else {
                    return;
                };
                let gone: Vec<Ref> = (state.keys_of.keys())
                    .filter(|reference| !listed.contains(*reference))
                    .cloned()
                    .collect();
                for reference in gone {
                    state.put(reference, Box::default());
                }
            }
        }
    }

    /// The objects with `key`, and any whose key has the same hash: enough for a wake-up (an
    /// object woken in vain finds nothing to do); [`Index::find`] checks.
    pub fn get(&self, key: &str) -> Vec<ObjectRef<K>> {
        let state = lock(&self.state);
        (state.by_key.get(&hashed(key)).into_iter().flatten())
            .map(Ref::object_ref)
            .collect()
    }

    /// The objects with `key` that `store` holds.
    pub fn find(&self, store: &Store<K>, key: &str) -> Vec<Arc<K>> {
        // Two keys with one hash share an entry: each object found is checked.
        (self.get(key).iter())
            .filter_map(|r| store.get(r))
            .filter(|object| (self.keys)(object).iter().any(|k| k == key))
            .collect()
    }
}

impl State {
    /// `reference` now has `keys` (none: is no longer indexed).
    fn put(&mut self, reference: Ref, keys: Box<[Hashed]>) {
        for old in self.keys_of.remove(&reference).into_iter().flatten() {
            if let Some(objects) = self.by_key.get_mut(&old) {
                objects.retain(|o| *o != reference);
                if objects.is_empty() {
                    self.by_key.remove(&old);
                }
            }
        }
        if keys.is_empty() {
            return;
        }
        // Its old keys no longer list it, and `keys` holds each key once. Most keys have one
        // object (a Subscription's slice): room for one, not the four a first push makes.
        for key in &keys {
            let objects = self
                .by_key
                .entry(*key)
                .or_insert_with(|| Vec::with_capacity(1));
            objects.push(reference.clone());
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

    /// An index and the store it finds objects in, fed the same events.
    struct Indexed {
        index: Arc<Index<Subscription>>,
        store: Store<Subscription>,
        writer: kube::runtime::reflector::store::Writer<Subscription>,
    }

    impl Indexed {
        fn apply(&mut self, event: watcher::Event<Subscription>) {
            self.writer.apply_watcher_event(&event);
            self.index.apply(&event);
        }

        fn users(&self, integration: &str) -> Vec<String> {
            let key = integration_key("ns", integration);
            let mut names: Vec<String> = (self.index.find(&self.store, &key).iter())
                .map(|s| s.metadata.name.clone().unwrap())
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn the_index_follows_re_points_deletes_and_a_new_listing() {
        let (store, writer) = kube::runtime::reflector::store();
        let mut indexed = Indexed {
            index: Index::new(|s: &Subscription| {
                let namespace = s.metadata.namespace.as_deref().unwrap_or_default();
                vec![integration_key(namespace, &s.spec.integration_ref.name)]
            }),
            store,
            writer,
        };
        let apply = |indexed: &mut Indexed, name: &str, to: &str| {
            indexed.apply(watcher::Event::Apply(subscription(name, to)))
        };
        apply(&mut indexed, "a", "acme");
        apply(&mut indexed, "b", "acme");
        apply(&mut indexed, "c", "other");
        assert_eq!(indexed.users("acme"), ["a", "b"]);
        apply(&mut indexed, "b", "other");
        assert_eq!(indexed.users("acme"), ["a"], "re-pointed");
        assert_eq!(indexed.users("other"), ["b", "c"]);
        indexed.apply(watcher::Event::Delete(subscription("c", "other")));
        assert_eq!(indexed.users("other"), ["b"], "deleted");
        // A new listing: kept until it ends, then what it did not list is gone.
        indexed.apply(watcher::Event::Init);
        indexed.apply(watcher::Event::InitApply(subscription("a", "acme")));
        assert_eq!(indexed.users("other"), ["b"], "kept while listing");
        indexed.apply(watcher::Event::InitDone);
        assert_eq!(indexed.users("acme"), ["a"]);
        assert!(indexed.users("other").is_empty(), "not listed again: gone");
    }
}
