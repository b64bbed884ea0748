//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (the controllers have found their CRDs and are running; otherwise it
//! says why: CRDs missing, RBAC refusing, API server unreachable). Does network
//! I/O.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{controller::Waiting, metrics::Metrics};

/// Shared with the handlers.
#[derive(Clone)]
pub struct Probe {
    pub metrics: Arc<Metrics>,
    /// Why the controllers are not running yet, if they are not.
    pub waiting: Waiting,
}

/// The routes; metrics and health may be served on one address or two.
pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(probe)
}

async fn metrics(State(probe): State<Probe>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        probe.metrics.render(),
    )
}

async fn ready(State(probe): State<Probe>) -> impl IntoResponse {
    match probe.waiting.why() {
        None => (StatusCode::OK, "ready".to_owned()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Serves `router` on `address` until `shutdown` resolves.
pub async fn serve(
    address: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
