//! The operator, run in-process against the test's namespace, and helpers to wait on what it
//! writes.

use std::{sync::Arc, time::Duration};

use bitbucket_operator::{
    api::{LocalObjectReference, RepositoryFilter, Subscription, SubscriptionSpec},
    bitbucket::{RetryPolicy, TransportConfig},
    controller::{self, Settings, Shared},
    metrics::Metrics,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Client, Resource, runtime::wait::await_condition};
use serde::de::DeserializeOwned;

use super::within;

/// A running operator watching one namespace.
pub struct Operator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
    /// Its controllers' state, for the endpoints served beside them.
    pub shared: Arc<Shared>,
}

/// Settings that keep tests fast: quick retries and backoff.
pub fn test_settings(namespace: &str) -> Settings {
    Settings {
        namespaces: vec![namespace.to_owned()],
        label_selector: None,
        concurrency: 4,
        transport: TransportConfig {
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 1,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(2),
            },
            // The tests are the administrator of a simulator on loopback, which their Secrets
            // consent to (tenancy tests turn this off to see it refused).
            internal_by_consent: true,
            ..TransportConfig::default()
        },
        backoff_base: Duration::from_millis(300),
        backoff_max: Duration::from_secs(3),
        recheck: Duration::from_secs(2),
        instance: "test-operator".into(),
        summaries_between_listings: 5,
        interval_override: None,
        sweep: Duration::from_secs(2),
        lease: None,
        downstream: Default::default(),
        webhook_url: None,
        settle: Default::default(),
        budget_window: Duration::from_secs(3600),
        request_budgets: true,
    }
}

impl Operator {
    pub fn start(client: Client, settings: Settings) -> Self {
        let metrics = Arc::new(Metrics::default());
        let shared = Shared::new(client, settings, Arc::clone(&metrics));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let waiting = controller::Waiting::starting();
        let task = tokio::spawn(controller::run(Arc::clone(&shared), waiting, async move {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
            metrics,
            shared,
        }
    }

    /// Graceful shutdown: in-flight reconciles finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = within("the operator to stop", &mut self.task).await;
    }

    /// Whether this operator holds the Lease (or runs alone), from its metrics.
    pub fn leads(&self) -> bool {
        self.metric("bitbucket_operator_leader") == 1
    }

    /// Whether any of this operator's controllers run (a standby's do not).
    pub fn reconciles(&self) -> bool {
        self.metric("bitbucket_operator_reconciling_scopes") > 0
    }

    /// Status writes this operator made, both kinds together, from its metrics.
    pub fn status_writes(&self) -> u64 {
        self.counter_total("bitbucket_operator_status_writes_total")
    }

    /// RepositorySlice creates, updates and deletes this operator made, from its metrics.
    pub fn slice_writes(&self) -> u64 {
        self.counter_total("bitbucket_operator_slice_writes_total")
    }

    /// Reconciles `controller` (`integration` or `subscription`) began, from the metrics.
    pub fn reconciles_of(&self, controller: &str) -> u64 {
        let prefix = format!("bitbucket_operator_reconciles_total{{controller=\"{controller}\"}}");
        self.counter_total(&prefix)
    }

    /// The metrics as Prometheus reads them.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// The sum of a counter over all its labels, from the metrics.
    fn counter_total(&self, name: &str) -> u64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn metric(&self, name: &str) -> i64 {
        self.metrics
            .render()
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Successful Bitbucket requests this operator made for `operation`, from its metrics.
    pub fn requests(&self, operation: &str) -> u64 {
        let prefix = format!(
            "bitbucket_operator_bitbucket_requests_total{{operation=\"{operation}\",status=\"200\"}}"
        );
        self.metrics
            .render()
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Like a killed process: everything stops where it is.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The condition of `type_` in a status' conditions.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Waits, with a watch, until `test` holds for the object `name`, and returns it; on timeout the
/// failure names `what` and shows the object as it is. Waits for anything else: [`eventually`](super::eventually).
pub async fn await_object<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    test: impl Fn(&K) -> bool + Send + 'static,
) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let wait = await_condition(api.clone(), name, move |object: Option<&K>| {
        object.is_some_and(&test)
    });
    match tokio::time::timeout(super::PATIENCE, wait).await {
        Ok(found) => found
            .unwrap_or_else(|e| panic!("watching for {what}: {e}"))
            .expect("the condition only holds for an existing object"),
        Err(_) => {
            let last = api.get_opt(name).await.ok().flatten();
            panic!(
                "timed out after {:?} waiting for {what}; the object is now:\n{last:#?}",
                super::PATIENCE
            )
        }
    }
}

/// A Subscription of `integration` to `workspace` (Cloud) or `projects`, every repository,
/// synced every 10 minutes.
pub fn subscription(
    name: &str,
    integration: &str,
    workspace: Option<&str>,
    projects: &[&str],
) -> Subscription {
    Subscription::new(
        name,
        SubscriptionSpec {
            integration_ref: LocalObjectReference {
                name: integration.to_owned(),
            },
            workspace: workspace.map(str::to_owned),
            projects: projects.iter().map(|p| (*p).to_owned()).collect(),
            repositories: RepositoryFilter::default(),
            sync_interval: "10m".into(),
            suspend: false,
        },
    )
}

/// The patch that asks for a sync (or a re-validation) by setting the sync annotation to
/// `value`.
pub fn sync_request(value: &str) -> kube::api::Patch<serde_json::Value> {
    kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {
        bitbucket_operator::api::SYNC_REQUESTED_AT_ANNOTATION: value
    }}}))
}
