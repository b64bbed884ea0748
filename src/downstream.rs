//! Tells Argo CD and Flux that a Subscription's list changed, so that they ask for it at once
//! rather than at their next poll (an ApplicationSet generator's `requeueAfterSeconds`, a Flux
//! input provider's `reconcileEvery`):
//!
//! - an ApplicationSet with a plugin generator (at any depth: matrix and merge generators
//!   included) that uses the operator's ConfigMap and names the Subscription gets
//!   `argocd.argoproj.io/application-set-refresh: "true"`, which Argo CD's ApplicationSet
//!   controller acts on and removes, and [`LIST_DIGEST_ANNOTATION`], so that a change while
//!   Argo CD has not yet removed the first is an annotation change it acts on too;
//! - a Flux Operator `ResourceSetInputProvider` of type `ExternalService` whose URL is the
//!   Subscription's input endpoint (`/api/v1/inputs/<namespace>/<subscription>`) gets a new
//!   `reconcile.fluxcd.io/requestedAt`.
//!
//! Opt-in (`--refresh-applicationsets`, `--refresh-flux-input-providers`), because it writes
//! other tools' objects. Both kinds are watched (trimmed to what matching reads) by every
//! replica; only the leader writes, and only once its own catalog serves the new list, so that
//! the request the annotation causes gets it. Does API-server I/O.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::join_all};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::{
    api::{SliceRef, slice::list_digest},
    catalog::{Catalog, Served},
    controller::{Shared, backoff::Backoff, lock},
};

/// The annotation Argo CD's ApplicationSet controller refreshes on (and removes afterwards).
pub const APPLICATIONSET_REFRESH_ANNOTATION: &str = "argocd.argoproj.io/application-set-refresh";
/// The annotation Flux reconciles on when its value changes.
pub const FLUX_REQUESTED_AT_ANNOTATION: &str = "reconcile.fluxcd.io/requestedAt";
/// The digest of the list an ApplicationSet was last told about ([`list_digest`]).
pub const LIST_DIGEST_ANNOTATION: &str = "scm.shippable.io/list-digest";
/// The field manager of these writes.
pub const MANAGER: &str = "bitbucket-operator/downstream";

/// How long a change waits for this replica's catalog to serve the new list before the tools
/// are told anyway.
const SERVED_PATIENCE: Duration = Duration::from_secs(5);

/// How long a change waits for the watch of ApplicationSets or input providers to be listed
/// (after that, the objects it would tell are not known, and it tells none: one created later
/// asks for the list when it is created).
const WATCH_PATIENCE: Duration = Duration::from_secs(60);

/// How long a change the API server refused to write waits before it is told again: the
/// operator's backoff (jittered), from about a second, doubling with each refusal in a row, up
/// to about a minute.
fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
}

/// Which tools to tell.
#[derive(Clone, Debug)]
pub struct DownstreamSettings {
    pub applicationsets: bool,
    pub flux_input_providers: bool,
    /// The name of the ConfigMap Argo CD's plugin generator names for this operator.
    pub plugin_config_map: String,
}

impl Default for DownstreamSettings {
    fn default() -> Self {
        Self {
            applicationsets: false,
            flux_input_providers: false,
            plugin_config_map: "bitbucket-operator-plugin".into(),
        }
    }
}

impl DownstreamSettings {
    fn tools(&self) -> Vec<Tool> {
        let wanted = [
            (self.applicationsets, Tool::ApplicationSets),
            (self.flux_input_providers, Tool::FluxInputProviders),
        ];
        wanted
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, t)| t)
            .collect()
    }
}

/// The Subscriptions whose lists changed, waiting to be told downstream (the latest slices of
/// each: a burst of changes tells once).
#[derive(Default)]
pub struct Changes {
    enabled: bool,
    pending: Mutex<HashMap<(String, String), Vec<SliceRef>>>,
    wake: Notify,
}

impl Changes {
    pub fn new(settings: &DownstreamSettings) -> Self {
        Self {
            enabled: !settings.tools().is_empty(),
            ..Self::default()
        }
    }

    /// The list of Subscription `namespace/name` is now held by `slices`.
    pub fn changed(&self, namespace: &str, name: &str, slices: &[SliceRef]) {
        if self.enabled {
            let key = (namespace.to_owned(), name.to_owned());
            lock(&self.pending).insert(key, slices.to_vec());
            self.wake.notify_one();
        }
    }

    fn take(&self) -> HashMap<(String, String), Vec<SliceRef>> {
        std::mem::take(&mut *lock(&self.pending))
    }

    /// Puts back changes that could not be told, unless a newer change of the same list came
    /// meanwhile (that one is told instead).
    fn put_back(&self, untold: impl IntoIterator<Item = ((String, String), Vec<SliceRef>)>) {
        let mut pending = lock(&self.pending);
        for (key, slices) in untold {
            pending.entry(key).or_insert(slices);
        }
    }
}

/// A kind of object to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    ApplicationSets,
    FluxInputProviders,
}

impl Tool {
    fn kind(self) -> &'static str {
        match self {
            Tool::ApplicationSets => "ApplicationSet",
            Tool::FluxInputProviders => "ResourceSetInputProvider",
        }
    }

    fn resource(self) -> ApiResource {
        let (group, version, plural) = match self {
            Tool::ApplicationSets => ("argoproj.io", "v1alpha1", "applicationsets"),
            Tool::FluxInputProviders => {
                ("fluxcd.controlplane.io", "v1", "resourcesetinputproviders")
            }
        };
        let gvk = GroupVersionKind::gvk(group, version, self.kind());
        ApiResource::from_gvk_with_plural(&gvk, plural)
    }

    /// Keeps only what [`Tool::uses`] and [`Tool::request`] read, so the cache stays small.
    fn trim(self, object: &mut DynamicObject) {
        object.metadata.managed_fields = None;
        let kept: &[&str] = match self {
            Tool::ApplicationSets => &["generators"],
            Tool::FluxInputProviders => &["type", "url"],
        };
        let spec = object.data.get_mut("spec").and_then(Value::as_object_mut);
        if let Some(spec) = spec {
            spec.retain(|key, _| kept.contains(&key.as_str()));
        }
        if let Some(data) = object.data.as_object_mut() {
            data.retain(|key, _| key == "spec");
        }
    }

    /// Whether `object` reads the list of Subscription `namespace/name` from this operator.
    fn uses(self, object: &DynamicObject, config_map: &str, namespace: &str, name: &str) -> bool {
        let spec = &object.data["spec"];
        match self {
            Tool::ApplicationSets => uses_plugin(&spec["generators"], config_map, namespace, name),
            Tool::FluxInputProviders => {
                spec["type"] == "ExternalService"
                    && spec["url"].as_str().is_some_and(|url| {
                        url::Url::parse(url).is_ok_and(|url| {
                            url.path() == format!("/api/v1/inputs/{namespace}/{name}")
                        })
                    })
            }
        }
    }

    /// The merge patch that asks `object` to refresh for the list `digest`, or `None` when it
    /// already says so (nothing to write).
    fn request(self, object: &DynamicObject, digest: &str, now: &str) -> Option<Value> {
        let annotations = object.annotations();
        match self {
            Tool::ApplicationSets => {
                let pending = annotations.contains_key(APPLICATIONSET_REFRESH_ANNOTATION)
                    && annotations.get(LIST_DIGEST_ANNOTATION).map(String::as_str) == Some(digest);
                (!pending).then(|| {
                    json!({"metadata": {"annotations": {
                        APPLICATIONSET_REFRESH_ANNOTATION: "true",
                        LIST_DIGEST_ANNOTATION: digest,
                    }}})
                })
            }
            Tool::FluxInputProviders => Some(json!({"metadata": {"annotations": {
                FLUX_REQUESTED_AT_ANNOTATION: now,
            }}})),
        }
    }
}

/// Whether any plugin generator within `generators` (matrix and merge generators nest theirs)
/// uses ConfigMap `config_map` and names Subscription `namespace/name` in its input parameters.
fn uses_plugin(generators: &Value, config_map: &str, namespace: &str, name: &str) -> bool {
    match generators {
        Value::Array(items) => items
            .iter()
            .any(|item| uses_plugin(item, config_map, namespace, name)),
        Value::Object(fields) => {
            let plugin = &generators["plugin"];
            let parameters = &plugin["input"]["parameters"];
            (plugin["configMapRef"]["name"] == config_map
                && parameters["namespace"] == namespace
                && parameters["subscription"] == name)
                || fields
                    .values()
                    .any(|value| uses_plugin(value, config_map, namespace, name))
        }
        _ => false,
    }
}

/// Watches the enabled kinds and tells them of every change while this replica leads. Never
/// returns (pending at once when nothing is enabled).
pub async fn run(shared: Arc<Shared>, leading: watch::Receiver<bool>) {
    let tools = shared.settings.downstream.tools();
    let mut watches = Vec::new();
    let mut stores = Vec::new();
    for tool in tools {
        let (store, watching) = watched(shared.kube.clone(), tool);
        stores.push((tool, store));
        watches.push(watching);
    }
    tokio::select! {
        _ = join_all(watches) => {}
        () = tell(&shared, &stores, leading) => {}
    }
    futures::future::pending().await
}

/// A cache of `tool`'s objects in every namespace, and the watch that fills it. A kind whose CRD
/// is not installed (or that the operator may not list) is said once and watched for again
/// with kube's backoff.
fn watched(
    kube: kube::Client,
    tool: Tool,
) -> (Store<DynamicObject>, impl Future<Output = ()> + Send) {
    let resource = tool.resource();
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(kube, &resource);
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(move |object| tool.trim(object));
    let watching = async move {
        let mut events = std::pin::pin!(reflector::reflector(writer, events));
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(kind = tool.kind(), %error,
                        "cannot watch {}s, so none is told when a list changes (is its CRD installed, and may the operator list them?)",
                        tool.kind());
                }
                Err(_) => {}
                // Said once the list is in: each try to list starts with an `Init` event.
                Ok(watcher::Event::InitDone) if failing => {
                    failing = false;
                    tracing::info!(kind = tool.kind(), "watching {}s again", tool.kind());
                }
                Ok(_) => {}
            }
        }
    };
    (store, watching)
}

/// Tells the objects using each changed list, while this replica leads (a standby forgets the
/// changes: the leader saw them too). A change the API server refused to write for some object
/// is told again, after [`retry_backoff`]. Never returns.
async fn tell(
    shared: &Shared,
    stores: &[(Tool, Store<DynamicObject>)],
    leading: watch::Receiver<bool>,
) {
    let changes = &shared.downstream;
    // Rounds in a row that left a change untold.
    let mut refused = 0;
    loop {
        match refused {
            0 => changes.wake.notified().await,
            _ => {
                let wait = retry_backoff().wait(refused - 1, None);
                let _ = tokio::time::timeout(wait, changes.wake.notified()).await;
            }
        }
        let changed = changes.take();
        if !*leading.borrow() {
            refused = 0;
            continue;
        }
        let tells = changed.into_iter().map(|(key, slices)| async move {
            let told = tell_one(shared, stores, &key, &slices).await;
            (!told).then_some((key, slices))
        });
        let untold: Vec<_> = join_all(tells).await.into_iter().flatten().collect();
        refused = if untold.is_empty() {
            0
        } else {
            changes.put_back(untold);
            refused + 1
        };
    }
}

/// Tells the objects using Subscription `namespace/name` that its list is now `slices`: whether
/// every write went through.
async fn tell_one(
    shared: &Shared,
    stores: &[(Tool, Store<DynamicObject>)],
    (namespace, name): &(String, String),
    slices: &[SliceRef],
) -> bool {
    served(&shared.catalog, namespace, name, slices).await;
    let digest = list_digest(slices);
    let now = jiff::Timestamp::now().to_string();
    let mut told = true;
    for (tool, store) in stores {
        // A watch not listed yet (its CRD just installed, the API server slow) would tell no
        // one: wait for it, a while.
        let listed = tokio::time::timeout(WATCH_PATIENCE, store.wait_until_ready());
        if listed.await.is_err() {
            tracing::warn!(kind = tool.kind(), %namespace, subscription = %name,
                "{}s not listed yet: none is told that this list changed", tool.kind());
            continue;
        }
        let config_map = &shared.settings.downstream.plugin_config_map;
        for object in store.state() {
            if tool.uses(&object, config_map, namespace, name) {
                let patch = tool.request(&object, &digest, &now);
                told &= ask(shared, *tool, &object, patch).await;
            }
        }
    }
    told
}

/// Waits (at most [`SERVED_PATIENCE`]) until this replica's catalog serves the list `slices`
/// hold.
async fn served(catalog: &Catalog, namespace: &str, name: &str, slices: &[SliceRef]) {
    let start = Instant::now();
    while start.elapsed() < SERVED_PATIENCE {
        if let Ok(Served::Complete(list)) = catalog.list(namespace, name)
            && list.is_named_by(slices)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `patch` (when there is one) to `object`, counting what became of it: whether it
/// went through (or nothing was to be written).
async fn ask(shared: &Shared, tool: Tool, object: &DynamicObject, patch: Option<Value>) -> bool {
    let outcome = match patch {
        None => "pending",
        Some(patch) => {
            let namespace = object.namespace().unwrap_or_default();
            let api = Api::<DynamicObject>::namespaced_with(
                shared.kube.clone(),
                &namespace,
                &tool.resource(),
            );
            let params = PatchParams {
                field_manager: Some(MANAGER.into()),
                ..PatchParams::default()
            };
            match api
                .patch(&object.name_any(), &params, &Patch::Merge(patch))
                .await
            {
                Ok(_) => "requested",
                Err(error) => {
                    tracing::warn!(kind = tool.kind(), %namespace, name = %object.name_any(), %error,
                        "could not ask for a refresh; asking again shortly");
                    "failed"
                }
            }
        }
    };
    let labels = crate::metrics::DownstreamLabels {
        kind: tool.kind(),
        outcome,
    };
    shared
        .metrics
        .downstream_refreshes
        .get_or_create(&labels)
        .inc();
    outcome != "failed"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(tool: Tool, spec: Value, annotations: &[(&str, &str)]) -> DynamicObject {
        let mut object = DynamicObject::new("x", &tool.resource()).within("argocd");
        object.data = json!({"spec": spec, "status": {"big": "drop me"}});
        object.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        object
    }

    fn plugin(config_map: &str, namespace: &str, subscription: &str) -> Value {
        json!({"plugin": {"configMapRef": {"name": config_map},
            "input": {"parameters": {"namespace": namespace, "subscription": subscription}}}})
    }

    #[test]
    fn an_applicationset_uses_a_subscription_through_any_plugin_generator_of_ours() {
        let cm = "bitbucket-operator-plugin";
        let uses = |generators: Value| {
            let mut appset = object(
                Tool::ApplicationSets,
                json!({"generators": generators,
                "template": {"metadata": {"name": "{{ .slug }}"}}}),
                &[],
            );
            Tool::ApplicationSets.trim(&mut appset);
            Tool::ApplicationSets.uses(&appset, cm, "team", "api-ci")
        };
        assert!(uses(json!([plugin(cm, "team", "api-ci")])));
        // Nested in a matrix (or a merge) generator.
        assert!(uses(json!([{"matrix": {"generators": [
            {"clusters": {}}, plugin(cm, "team", "api-ci")]}}])));
        assert!(!uses(json!([plugin(cm, "team", "web-ci")])));
        assert!(!uses(json!([plugin(cm, "other", "api-ci")])));
        assert!(!uses(json!([plugin(
            "someone-elses-plugin",
            "team",
            "api-ci"
        )])));
        assert!(!uses(
            json!([{"list": {"elements": [{"namespace": "team", "subscription": "api-ci"}]}}])
        ));
    }

    #[test]
    fn a_flux_provider_uses_a_subscription_through_its_input_endpoint() {
        let uses = |kind: &str, url: &str| {
            let provider = object(
                Tool::FluxInputProviders,
                json!({"type": kind, "url": url}),
                &[],
            );
            Tool::FluxInputProviders.uses(&provider, "", "team-a", "acme-ci")
        };
        let base = "http://bitbucket-operator-plugin.bitbucket-operator.svc:4355/api/v1/inputs";
        assert!(uses(
            "ExternalService",
            &format!("{base}/team-a/acme-ci?project=API")
        ));
        assert!(uses("ExternalService", &format!("{base}/team-a/acme-ci")));
        assert!(!uses(
            "ExternalService",
            &format!("{base}/team-a/acme-ci-2")
        ));
        assert!(!uses("ExternalService", &format!("{base}/team-b/acme-ci")));
        assert!(!uses("GitHubBranch", &format!("{base}/team-a/acme-ci")));
        assert!(!uses("ExternalService", "not a url"));
    }

    #[test]
    fn an_applicationset_is_written_only_when_it_does_not_say_so_already() {
        let tool = Tool::ApplicationSets;
        let asked = |annotations: &[(&str, &str)]| {
            tool.request(&object(tool, json!({}), annotations), "d2", "now")
                .is_some()
        };
        assert!(asked(&[]));
        // Argo CD has not taken the last refresh yet, for the same list: nothing to write.
        assert!(!asked(&[
            (APPLICATIONSET_REFRESH_ANNOTATION, "true"),
            (LIST_DIGEST_ANNOTATION, "d2")
        ]));
        // ... for an earlier list: the digest changes, so Argo CD sees an annotation change.
        assert!(asked(&[
            (APPLICATIONSET_REFRESH_ANNOTATION, "true"),
            (LIST_DIGEST_ANNOTATION, "d1")
        ]));
        // Argo CD took it (removed the refresh annotation): ask again.
        assert!(asked(&[(LIST_DIGEST_ANNOTATION, "d2")]));
    }

    #[test]
    fn the_cache_keeps_only_what_matching_reads() {
        let mut appset = object(
            Tool::ApplicationSets,
            json!({"generators": [], "template": {"spec": {"big": true}}}),
            &[],
        );
        Tool::ApplicationSets.trim(&mut appset);
        assert_eq!(appset.data, json!({"spec": {"generators": []}}));
    }

    #[test]
    fn changes_wait_only_when_a_tool_is_told_a_burst_tells_once_and_a_refusal_again() {
        let off = Changes::new(&DownstreamSettings::default());
        off.changed("team", "api-ci", &[]);
        assert!(off.take().is_empty());
        let on = Changes::new(&DownstreamSettings {
            applicationsets: true,
            ..DownstreamSettings::default()
        });
        let slices = |digest: &str| {
            vec![SliceRef {
                name: "s".into(),
                digest: digest.into(),
            }]
        };
        on.changed("team", "api-ci", &slices("a"));
        on.changed("team", "api-ci", &slices("b"));
        let taken = on.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(
            taken[&("team".to_owned(), "api-ci".to_owned())],
            slices("b")
        );
        // A change put back after a refused write is told again, unless a newer one came.
        on.changed("team", "web-ci", &slices("c"));
        on.put_back(
            taken
                .into_iter()
                .chain([(("team".to_owned(), "web-ci".to_owned()), slices("old"))]),
        );
        let again = on.take();
        assert_eq!(
            again[&("team".to_owned(), "api-ci".to_owned())],
            slices("b")
        );
        assert_eq!(
            again[&("team".to_owned(), "web-ci".to_owned())],
            slices("c")
        );
    }
}
