//! Prometheus metrics, with label sets bounded by construction: controller names, condition
//! reasons, Bitbucket operation names and HTTP status codes — never object names, URLs or
//! anything a user controls. No I/O (the HTTP server in `http.rs` serves the text).

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: &'static str,
    /// The HTTP status, or `none` when no answer came (timeout, connection failure).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SliceWriteLabels {
    /// `create`, `update` or `delete`.
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabels {
    /// `generator` or `flux`.
    pub endpoint: &'static str,
    /// `complete` (the list the status names), `previous` (the last complete list, while an
    /// update is under way) or `unavailable` (503).
    pub list: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `accepted` (refreshes asked for), `duplicate`, `ping`, `ignored` (nothing to refresh),
    /// `unknown` (404), `too_large` (413), `unsigned` (401), `relayed` (to the leader) or
    /// `not_leading` (503).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DownstreamLabels {
    /// `ApplicationSet` or `ResourceSetInputProvider`.
    pub kind: &'static str,
    /// `requested` (annotated), `pending` (Argo CD has not taken the last one yet: nothing
    /// written) or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationLabels {
    /// One series per integration whose credential's expiry is known (bounded by the
    /// integrations, not by anything Bitbucket sends).
    pub namespace: String,
    pub integration: String,
}

/// What reads every integration's budget: (namespace, integration, snapshot).
pub type BudgetReader =
    Box<dyn Fn() -> Vec<(String, String, crate::bitbucket::budget::Snapshot)> + Send + Sync>;

/// All the operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// The name of every metric, prefix included.
    names: Vec<String>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub status_writes: Family<ControllerLabels, Counter>,
    pub bitbucket_requests: Family<RequestLabels, Counter>,
    pub bitbucket_request_duration: Family<OperationLabels, Histogram>,
    pub slice_writes: Family<SliceWriteLabels, Counter>,
    pub lists_served: Family<ServedLabels, Counter>,
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    pub downstream_refreshes: Family<DownstreamLabels, Counter>,
    pub credential_expiry: Family<IntegrationLabels, Gauge>,
    /// 1 while an integration is Ready, else 0; on the replica that reconciles it.
    pub integration_ready: Family<IntegrationLabels, Gauge>,
    /// Each integration's request budget, read when the metrics are: requests a window, of
    /// them planned, counted in the last window, and left.
    pub request_budget: Family<IntegrationLabels, Gauge>,
    pub request_budget_planned: Family<IntegrationLabels, Gauge>,
    pub request_budget_used: Family<IntegrationLabels, Gauge>,
    pub request_budget_remaining: Family<IntegrationLabels, Gauge>,
    /// Reads the budgets when the metrics are rendered (set by the controllers).
    budgets: std::sync::OnceLock<BudgetReader>,
    pub blocked_deletions: Gauge,
    /// 1 while this replica leads (or runs without leader election), 0 while it stands by.
    pub leader: Gauge,
    /// Watched scopes whose controllers run now: 0 on a standby.
    pub reconciling_scopes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registering::default();
        let (reconciles, reconcile_errors, reconcile_duration, status_writes) = reconciling(&mut r);
        let (bitbucket_requests, bitbucket_request_duration) = bitbucket(&mut r);
        let (slice_writes, lists_served, webhook_deliveries, downstream_refreshes) =
            serving(&mut r);
        let [
            credential_expiry,
            integration_ready,
            request_budget,
            request_budget_planned,
            request_budget_used,
            request_budget_remaining,
        ] = per_integration(&mut r);
        let blocked_deletions = r.add(
            "blocked_deletions",
            "Integrations whose deletion this replica found waiting for Subscriptions (0 on a standby)",
            Gauge::default(),
        );
        let leader = r.add(
            "leader",
            "1 while this replica holds the Lease and reconciles, 0 while it stands by",
            Gauge::default(),
        );
        let reconciling_scopes = r.add(
            "reconciling_scopes",
            "Watched scopes whose controllers run now (0 while this replica stands by)",
            Gauge::default(),
        );
        Self {
            registry: r.registry,
            names: r.names,
            leader,
            reconciling_scopes,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            bitbucket_requests,
            bitbucket_request_duration,
            slice_writes,
            lists_served,
            webhook_deliveries,
            downstream_refreshes,
            credential_expiry,
            integration_ready,
            request_budget,
            request_budget_planned,
            request_budget_used,
            request_budget_remaining,
            budgets: std::sync::OnceLock::new(),
            blocked_deletions,
        }
    }
}

/// The controllers' metrics.
// A tuple, destructured into named fields at once.
#[allow(clippy::type_complexity)]
fn reconciling(
    r: &mut Registering,
) -> (
    Family<ControllerLabels, Counter>,
    Family<ErrorLabels, Counter>,
    Family<ControllerLabels, Histogram>,
    Family<ControllerLabels, Counter>,
) {
    let reconciles = r.add(
        "reconciles",
        "Reconciles run, by controller",
        Family::<ControllerLabels, Counter>::default(),
    );
    let reconcile_errors = r.add(
        "reconcile_errors",
        "Reconciles that ended in an error, by controller and condition reason",
        Family::<ErrorLabels, Counter>::default(),
    );
    let reconcile_duration = r.add(
        "reconcile_duration_seconds",
        "How long reconciles take, by controller",
        Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        }),
    );
    let status_writes = r.add(
        "status_writes",
        "Status patches sent to the API server, by controller",
        Family::<ControllerLabels, Counter>::default(),
    );
    (
        reconciles,
        reconcile_errors,
        reconcile_duration,
        status_writes,
    )
}

/// What Bitbucket was asked and how long it took.
fn bitbucket(
    r: &mut Registering,
) -> (
    Family<RequestLabels, Counter>,
    Family<OperationLabels, Histogram>,
) {
    let bitbucket_requests = r.add(
        "bitbucket_requests",
        "HTTP requests to Bitbucket, by operation and status code",
        Family::<RequestLabels, Counter>::default(),
    );
    let bitbucket_request_duration = r.add(
        "bitbucket_request_duration_seconds",
        "How long Bitbucket took to answer (until the headers), by operation",
        Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        }),
    );
    (bitbucket_requests, bitbucket_request_duration)
}

/// What was written to the API server and served to Argo CD and Flux.
// A tuple, destructured into named fields at once.
#[allow(clippy::type_complexity)]
fn serving(
    r: &mut Registering,
) -> (
    Family<SliceWriteLabels, Counter>,
    Family<ServedLabels, Counter>,
    Family<DeliveryLabels, Counter>,
    Family<DownstreamLabels, Counter>,
) {
    let slice_writes = r.add(
        "slice_writes",
        "RepositorySlice writes sent to the API server, by operation",
        Family::<SliceWriteLabels, Counter>::default(),
    );
    let lists_served = r.add(
        "lists_served",
        "Repository lists served to Argo CD and Flux, by endpoint and which list answered",
        Family::<ServedLabels, Counter>::default(),
    );
    let webhook_deliveries = r.add(
        "webhook_deliveries",
        "Bitbucket webhook deliveries received, by what became of them",
        Family::<DeliveryLabels, Counter>::default(),
    );
    let downstream_refreshes = r.add(
        "downstream_refreshes",
        "Refreshes asked of Argo CD ApplicationSets and Flux input providers after a list changed",
        Family::<DownstreamLabels, Counter>::default(),
    );
    (
        slice_writes,
        lists_served,
        webhook_deliveries,
        downstream_refreshes,
    )
}

/// A registry being filled, and the names of what it holds.
struct Registering {
    registry: Registry,
    names: Vec<String>,
}

impl Default for Registering {
    fn default() -> Self {
        Self {
            registry: Registry::with_prefix(PREFIX),
            names: Vec::new(),
        }
    }
}

impl Registering {
    fn add<M: prometheus_client::registry::Metric + Clone>(
        &mut self,
        name: &str,
        help: &str,
        metric: M,
    ) -> M {
        self.registry.register(name, help, metric.clone());
        self.names.push(format!("{PREFIX}_{name}"));
        metric
    }
}

const PREFIX: &str = "bitbucket_operator";

impl Metrics {
    /// Shows when `integration`'s credential expires, or nothing when that is not known.
    pub fn credential_expiry(
        &self,
        integration: &crate::api::BitbucketIntegration,
        expiry: &crate::controller::integration::expiry::Expiry,
    ) {
        let labels = labels_of(integration);
        match expiry {
            crate::controller::integration::expiry::Expiry::At(at) => {
                self.credential_expiry
                    .get_or_create(&labels)
                    .set(at.as_second());
            }
            _ => {
                self.credential_expiry.remove(&labels);
            }
        }
    }

    /// Shows whether `integration` is Ready.
    pub fn integration_ready(
        &self,
        integration: &crate::api::BitbucketIntegration,
        conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ) {
        let ready = crate::status::conditions::is_true(conditions, crate::api::conditions::READY);
        (self
            .integration_ready
            .get_or_create(&labels_of(integration)))
        .set(i64::from(ready));
    }

    /// Drops the series of a deleted integration.
    pub fn forget_integration(&self, integration: &crate::api::BitbucketIntegration) {
        let labels = labels_of(integration);
        self.credential_expiry.remove(&labels);
        self.integration_ready.remove(&labels);
    }

    /// Sets what reads the budgets when the metrics are rendered (once).
    pub fn read_budgets_with(&self, reader: BudgetReader) {
        let _ = self.budgets.set(reader);
    }

    /// Sets the budget series from the budgets as they are now (integrations that are gone
    /// have none).
    fn read_budgets(&self) {
        let Some(reader) = self.budgets.get() else {
            return;
        };
        let families = [
            &self.request_budget,
            &self.request_budget_planned,
            &self.request_budget_used,
            &self.request_budget_remaining,
        ];
        for family in families {
            family.clear();
        }
        for (namespace, integration, snapshot) in reader() {
            let labels = IntegrationLabels {
                namespace,
                integration,
            };
            let values = [
                snapshot.limit,
                snapshot.planned,
                Some(snapshot.used),
                snapshot.remaining(),
            ];
            for (family, value) in families.iter().zip(values) {
                if let Some(value) = value {
                    family.get_or_create(&labels).set(i64::from(value));
                }
            }
        }
    }

    /// The name of every metric (as the text names them, `_total` and the histograms'
    /// suffixes aside).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        self.read_budgets();
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// A hook for the Bitbucket client that counts its requests.
    pub fn bitbucket_observer(self: &Arc<Self>) -> crate::bitbucket::RequestObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |operation, status, took| {
            metrics
                .bitbucket_request_duration
                .get_or_create(&OperationLabels { operation })
                .observe(took.as_secs_f64());
            metrics
                .bitbucket_requests
                .get_or_create(&RequestLabels {
                    operation,
                    status: status.map_or_else(|| "none".to_owned(), |s| s.to_string()),
                })
                .inc();
        })
    }
}

/// Registers the series kept per integration, in the order [`Metrics`] names them.
fn per_integration(r: &mut Registering) -> [Family<IntegrationLabels, Gauge>; 6] {
    [
        (
            "credential_expiry_timestamp_seconds",
            "When each integration's credential expires (Unix seconds), where its Secret declares it",
        ),
        (
            "integration_ready",
            "1 while the integration is Ready, 0 while it is not (on the replica reconciling it)",
        ),
        (
            "request_budget",
            "Requests the integration's credential may make in the rolling hour (its request budget)",
        ),
        (
            "request_budget_planned",
            "Of the request budget, what interval syncs may plan for",
        ),
        (
            "request_budget_used",
            "Requests the integration's credential made in the rolling hour",
        ),
        (
            "request_budget_remaining",
            "Requests left in the integration's request budget for the rolling hour",
        ),
    ]
    .map(|(name, help)| r.add(name, help, Family::<IntegrationLabels, Gauge>::default()))
}

fn labels_of(integration: &crate::api::BitbucketIntegration) -> IntegrationLabels {
    use kube::ResourceExt;
    IntegrationLabels {
        namespace: integration.namespace().unwrap_or_default(),
        integration: integration.name_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_operation_and_status() {
        let metrics = Arc::new(Metrics::default());
        let observe = metrics.bitbucket_observer();
        let took = std::time::Duration::from_millis(30);
        observe("whoami", Some(200), took);
        observe("whoami", Some(200), took);
        observe("list_repositories", None, took);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"bitbucket_operator_bitbucket_requests_total{operation="whoami",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"bitbucket_operator_bitbucket_requests_total{operation="list_repositories",status="none"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bitbucket_operator_bitbucket_request_duration_seconds_count{operation="whoami"} 2"#),
            "{text}"
        );
    }
}
