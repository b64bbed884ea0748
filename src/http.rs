//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (the controllers have found their CRDs and are running; otherwise it
//! says why: CRDs missing, RBAC refusing, API server unreachable); and [`serve`], which runs
//! every HTTP server of the operator with the same [`ServerLimits`]. Does network I/O.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

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
        // Nothing here reads a body: one is refused before it is read.
        .layer(RequestBodyLimitLayer::new(0))
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

/// What every HTTP server of the operator allows one client, the same for `/metrics`, the
/// probes and the plugin generator: a client that is slow, sends too much or opens too many
/// connections holds a bounded share of the process for a bounded time. The settings are
/// hyper's and tower-http's; `serve` applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// A request's head (request line and headers) must arrive whole within this, counted from
    /// its first byte or from the end of the previous request on the connection: so it is also
    /// how long an idle keep-alive connection is kept.
    pub header_timeout: Duration,
    /// A whole request, its body read and its answer made, must be done within this; otherwise
    /// it is answered 408 and its connection closed.
    pub request_timeout: Duration,
    /// Connections served at once by one server; further ones wait, unaccepted, until one
    /// closes.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// The most a request head may take in memory (hyper's read buffer): far above what Argo CD,
/// Prometheus or a kubelet send.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Binds `address`, naming what it is for if it cannot.
pub async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} for {what}"))?;
    tracing::info!(%address, "serving {what}");
    Ok(listener)
}

/// Serves `router` on `listener` with `limits` until `shutdown` resolves, then lets the requests
/// under way finish (within the request timeout).
///
/// HTTP/1.1 only: what calls these servers (Argo CD, Prometheus, the kubelet, Bitbucket's
/// webhooks) speaks it over plain TCP, and HTTP/2's streams would need limits of their own.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let next = async {
            let slot = Arc::clone(&slots).acquire_owned().await;
            (slot, listener.accept().await)
        };
        let (slot, accepted) = tokio::select! {
            next = next => next,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                // Answers are written in pieces (a long list streams a chunk at a time): with
                // Nagle's algorithm a last small piece would wait for the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                stream
            }
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was accepted: the
                // server goes on, after a pause that lets descriptors free up.
                tracing::warn!(%error, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that broke the rules (slow head, reset) ends here; nothing to report.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.request_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still under way at shutdown were cut off");
    }
    Ok(())
}
