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

/// All the operator's metrics.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub status_writes: Family<ControllerLabels, Counter>,
    pub bitbucket_requests: Family<RequestLabels, Counter>,
    pub slice_writes: Family<SliceWriteLabels, Counter>,
    pub lists_served: Family<ServedLabels, Counter>,
    pub blocked_deletions: Gauge,
    /// 1 while this replica leads (or runs without leader election), 0 while it stands by.
    pub leader: Gauge,
    /// Watched scopes whose controllers run now: 0 on a standby.
    pub reconciling_scopes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bitbucket_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error, by controller and condition reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            });
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take, by controller",
            reconcile_duration.clone(),
        );
        let status_writes = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status patches sent to the API server, by controller",
            status_writes.clone(),
        );
        let bitbucket_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "bitbucket_requests",
            "HTTP requests to Bitbucket, by operation and status code",
            bitbucket_requests.clone(),
        );
        let slice_writes = Family::<SliceWriteLabels, Counter>::default();
        registry.register(
            "slice_writes",
            "RepositorySlice writes sent to the API server, by operation",
            slice_writes.clone(),
        );
        let lists_served = Family::<ServedLabels, Counter>::default();
        registry.register(
            "lists_served",
            "Repository lists served to Argo CD and Flux, by endpoint and which list answered",
            lists_served.clone(),
        );
        let blocked_deletions = Gauge::default();
        registry.register(
            "blocked_deletions",
            "Integrations whose deletion this replica found waiting for Subscriptions (0 on a standby)",
            blocked_deletions.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and reconciles, 0 while it stands by",
            leader.clone(),
        );
        let reconciling_scopes = Gauge::default();
        registry.register(
            "reconciling_scopes",
            "Watched scopes whose controllers run now (0 while this replica stands by)",
            reconciling_scopes.clone(),
        );
        Self {
            registry,
            leader,
            reconciling_scopes,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            bitbucket_requests,
            slice_writes,
            lists_served,
            blocked_deletions,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// A hook for the Bitbucket client that counts its requests.
    pub fn bitbucket_observer(self: &Arc<Self>) -> crate::bitbucket::RequestObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |operation, status| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_operation_and_status() {
        let metrics = Arc::new(Metrics::default());
        let observe = metrics.bitbucket_observer();
        observe("whoami", Some(200));
        observe("whoami", Some(200));
        observe("list_repositories", None);
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
    }
}
