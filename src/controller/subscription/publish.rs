//! Publishes a Subscription's list as RepositorySlices: writes what [`slices::plan`] decides,
//! creates first, then updates, then deletes (each phase several at a time), and gives back the slices that now hold the list
//! (with their digests) for the status, which is written after them. Readers serve a list only
//! when the slices match what the status names, so a reader never sees half of an update (see
//! `crate::catalog`). Does API-server I/O.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions},
};

use super::slices::{self, Current, Existing};
use crate::{
    api::{
        Repository, RepositorySlice, SHARD_LABEL, SUBSCRIPTION_LABEL, SliceRef, Subscription,
        slice::Holding,
    },
    controller::{
        Shared, finish,
        slice_cache::{CachedSlice, SliceCache},
    },
};

/// The field manager of slice writes.
pub const MANAGER: &str = "bitbucket-operator/slices";

/// How long a plan waits for the cache to show this process's last slice writes before it
/// plans from what the cache shows (someone else changed them meanwhile).
const PATIENCE: Duration = Duration::from_secs(30);

/// How long to wait before planning, when the cache does not show this process's last slice
/// writes of `subscription` yet; `None` when it does (or patience ran out).
pub fn unsettled(
    shared: &Shared,
    store: &SliceCache,
    subscription: &Subscription,
) -> Option<Duration> {
    let uid = finish::uid(subscription);
    let namespace = subscription.namespace().unwrap_or_default();
    shared.memory.subscription(&uid, |m| {
        let written = &mut m.slices;
        let shows = written.slices.iter().all(|(name, digest)| {
            let cached = store.get(&namespace, name);
            match digest {
                Some(digest) => cached.is_some_and(|s| s.digest() == digest),
                None => cached.is_none(),
            }
        });
        let patient = written.at.is_some_and(|at| at.elapsed() < PATIENCE);
        if shows || !patient {
            *written = Default::default();
            None
        } else {
            Some(Duration::from_millis(200))
        }
    })
}

/// Writes the slices of `subscription` so that they hold `list` (its whole filtered list), in
/// proportion to what changed; returns the slices that hold it, by name. The first failed write
/// ends it: the slices written so far stay, and the status keeps naming the last complete set.
pub async fn publish(
    shared: &Shared,
    store: &SliceCache,
    subscription: &Subscription,
    list: Vec<&Repository>,
) -> Result<Vec<SliceRef>, kube::Error> {
    let namespace = subscription.namespace().unwrap_or_default();
    let existing = store.controlled_by(&namespace, &finish::uid(subscription));
    // The cache keeps entries compact; the plan reads them parsed.
    let parsed: Vec<Vec<Repository>> = existing.iter().map(|s| s.entries().to_vec()).collect();
    let current: Vec<Current<'_>> = existing
        .iter()
        .zip(&parsed)
        .map(|(s, repositories)| Current {
            name: s.name(),
            repositories,
        })
        .collect();
    let plan = slices::plan(list, &current);
    let writer = Writer::new(shared, store, subscription);
    let mut creates = Vec::new();
    for repositories in plan.create {
        creates.push(writer.create(subscription, repositories));
    }
    let mut held: Vec<SliceRef> = at_once(creates).await?;
    let mut updates = Vec::new();
    for slice in plan.update {
        updates.push(writer.update(slice));
    }
    held.extend(at_once(updates).await?);
    let mut deletes = Vec::new();
    for name in &plan.delete {
        deletes.push(writer.delete(name));
    }
    at_once(deletes).await?;
    let rewritten: Vec<&str> = held.iter().map(|r| r.name.as_str()).collect();
    let kept = current
        .iter()
        .filter(|s| !rewritten.contains(&s.name) && !plan.delete.iter().any(|d| d == s.name))
        .filter_map(|s| writer.cached(s.name).map(|s| reference(s.name(), &*s)));
    let mut slices: Vec<SliceRef> = held.iter().cloned().chain(kept).collect();
    slices.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(slices)
}

/// The labels of a slice of `subscription`: whose it is, and its shard if it has one (an
/// operator that owns a shard watches only that shard's slices).
fn labels(subscription: &Subscription) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::from([(
        SUBSCRIPTION_LABEL.to_owned(),
        crate::api::subscription_label(&subscription.name_any()),
    )]);
    if let Some(shard) = subscription.labels().get(SHARD_LABEL) {
        labels.insert(SHARD_LABEL.to_owned(), shard.clone());
    }
    labels
}

/// Writes the slices of one Subscription, remembering each write (see [`unsettled`]) and
/// counting it in the metrics.
struct Writer<'a> {
    shared: &'a Shared,
    store: &'a SliceCache,
    api: Api<RepositorySlice>,
    namespace: String,
    uid: String,
    params: PostParams,
    /// What every slice of the Subscription carries, written again with each update: the
    /// cache keeps neither (`slice_cache::CachedSlice`).
    labels: std::collections::BTreeMap<String, String>,
    owner: Option<OwnerReference>,
}

impl<'a> Writer<'a> {
    fn new(shared: &'a Shared, store: &'a SliceCache, subscription: &Subscription) -> Self {
        let namespace = subscription.namespace().unwrap_or_default();
        Self {
            shared,
            store,
            api: Api::namespaced(shared.kube.clone(), &namespace),
            namespace,
            uid: finish::uid(subscription),
            params: PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            },
            labels: labels(subscription),
            owner: subscription.controller_owner_ref(&()),
        }
    }

    /// The slice `name` as cached.
    fn cached(&self, name: &str) -> Option<std::sync::Arc<CachedSlice>> {
        self.store.get(&self.namespace, name)
    }

    fn written(&self, operation: &'static str, name: &str, digest: Option<String>) {
        let labels = crate::metrics::SliceWriteLabels { operation };
        self.shared
            .metrics
            .slice_writes
            .get_or_create(&labels)
            .inc();
        self.shared.memory.subscription(&self.uid, |m| {
            m.slices.at = Some(Instant::now());
            m.slices.slices.insert(name.to_owned(), digest);
        });
    }

    /// A new slice of `subscription` holding `repositories` (named by the API server).
    async fn create(
        &self,
        subscription: &Subscription,
        repositories: Vec<Repository>,
    ) -> Result<SliceRef, kube::Error> {
        let name = subscription.name_any();
        let mut slice = RepositorySlice::new("", repositories);
        slice.metadata = kube::api::ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels.clone()),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..Default::default()
        };
        let created = self.api.create(&self.params, &slice).await?;
        self.written("create", &created.name_any(), Some(created.digest.clone()));
        Ok(reference(&created.name_any(), &created))
    }

    /// Rewrites slice `name` with `repositories`, on the version cached (a 409 if it changed).
    async fn update(&self, slice: Existing) -> Result<SliceRef, kube::Error> {
        let Existing { name, repositories } = slice;
        // Gone from the cache since the plan: the next sync plans again.
        let cached = self.cached(&name).ok_or_else(|| gone(&name))?;
        let mut slice = RepositorySlice::new(&name, repositories);
        slice.metadata = kube::api::ObjectMeta {
            labels: Some(self.labels.clone()),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..cached.metadata()
        };
        let updated = self.api.replace(&name, &self.params, &slice).await?;
        self.written("update", &name, Some(updated.digest.clone()));
        Ok(reference(&name, &updated))
    }

    /// Deletes slice `name`, the version cached (gone already is fine).
    async fn delete(&self, name: &str) -> Result<(), kube::Error> {
        let preconditions = self.cached(name).map(|s| Preconditions {
            resource_version: Some(s.resource_version().to_owned()),
            uid: Some(s.uid().to_owned()),
        });
        let params = DeleteParams {
            preconditions,
            ..DeleteParams::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
        self.written("delete", name, None);
        Ok(())
    }
}

/// How many slice writes are in flight at once (each phase: creates, then updates, then
/// deletes).
const WRITES_IN_FLIGHT: usize = 8;

/// Runs `writes` [`WRITES_IN_FLIGHT`] at a time; the first failure ends it.
async fn at_once<T>(
    writes: Vec<impl Future<Output = Result<T, kube::Error>>>,
) -> Result<Vec<T>, kube::Error> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(writes)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .try_collect()
        .await
}

/// Slice `name` as a Subscription's status names it.
fn reference(name: &str, slice: &impl Holding) -> SliceRef {
    SliceRef {
        name: name.to_owned(),
        digest: slice.digest().to_owned(),
    }
}

/// A slice the plan rewrites is no longer in the cache: answered like the API server's 409, so
/// the sync is retried and plans again.
fn gone(name: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(
            &format!("RepositorySlice {name} went while it was being rewritten"),
            "Conflict",
        )
        .with_code(409)
        .boxed(),
    )
}
