//! A Bitbucket simulator (Cloud 2.0, Data Center 1.0, OAuth token endpoint) on loopback, for
//! the operator's tests, benchmarks and the local demo. This crate does not depend on the
//! operator and shares no types with its client (`bitbucket_operator::bitbucket`): every body it
//! sends is built from the recorded examples in the repository's `testdata/bitbucket/` (see
//! `templates`). This file wires the HTTP server together and owns [`Simulator`], the running
//! server; it does network I/O. `testdata/bitbucket/SIMULATOR.md` describes the behaviour for
//! humans.
//!
//! Module map: `fixture` (the data and its generator), `world` (mutable state and changes),
//! `auth` (who is calling), `cloud` / `cloud_query` / `datacenter` / `oauth` (the simulated
//! APIs), `hooks` (webhooks: their endpoints and the signed deliveries of data changes), `templates` (JSON from the examples), `control` (faults, counters, rate limits, the
//! request middleware) and `control_http` (the control API over HTTP). The `bitbucket-sim`
//! binary (`main.rs`) runs it as a process.
//!
//! # Control API (HTTP)
//!
//! | Route | Body | Effect |
//! |---|---|---|
//! | `GET /_sim/counters` | — | [`Counters`] as JSON |
//! | `POST /_sim/counters/reset` | — | zero the counters |
//! | `GET /_sim/faults` | — | rules in force ([`ActiveFault`]) |
//! | `POST /_sim/faults` | [`FaultRule`] | add a rule; answers `{"id": n}` |
//! | `DELETE /_sim/faults` | — | remove all rules |
//! | `PUT /_sim/fixture` | [`Fixture`] (YAML or JSON) | replace all data |
//! | `POST /_sim/cloud/workspaces/{ws}/repositories` | [`CloudRepository`] | add |
//! | `PATCH /_sim/cloud/workspaces/{ws}/repositories/{slug}` | [`CloudRepositoryChange`] | rename, privacy, main branch, bump `updated_on` |
//! | `DELETE /_sim/cloud/workspaces/{ws}/repositories/{slug}` | — | delete |
//! | `POST /_sim/dc/projects/{key}/repositories` | [`DcRepository`] | add |
//! | `PATCH /_sim/dc/projects/{key}/repositories/{slug}` | [`DcRepositoryChange`] | rename, visibility, archive, default branch |
//! | `DELETE /_sim/dc/projects/{key}/repositories/{slug}` | — | delete |
//! | `POST /_sim/cloud/workspaces/{ws}/repositories/{slug}/push` | — | a push: `repo:push` to the workspace's hooks |
//! | `POST /_sim/dc/projects/{key}/repositories/{slug}/push` | — | a push: `repo:refs_changed` to the project's hooks |
//! | `GET /_sim/hooks` | — | the hooks registered ([`RegisteredHook`]) |
//! | `DELETE /_sim/hooks/{id}` | — | remove a hook, as a person in Bitbucket's settings would |
//! | `GET /_sim/hooks/deliveries` | — | the deliveries sent ([`Delivery`]) |
//! | `PUT /_sim/hooks/workspace-events` | `["repo:push", …]` | what workspace hooks may carry |
//! | `POST /_sim/oauth/expire` | — | expire every issued OAuth access token |
//! | `PUT /_sim/oauth/lifetime` | `{"seconds": n \| null}` | lifetime of tokens issued from now on |
//! | `PUT /_sim/oauth/consent` | [`Consent`] | what the person at the authorize page does |
//! | `POST /_sim/credentials/{id}/revoke` | — | the credential gets 401s (counted under its id) |
//! | `POST /_sim/credentials/{id}/restore` | — | it works again |
//! | `PUT /_sim/rate-limits/{credential-id}` | `{"perHour": n \| null}` | set/remove a limit |
//! | `POST /_sim/rate-limits/reset` | — | start every credential's hour afresh |
#![forbid(unsafe_code)]

mod auth;
mod cloud;
mod cloud_query;
mod control;
mod control_http;
mod datacenter;
mod fixture;
mod hooks;
mod oauth;
mod templates;
mod timestamp;
mod world;

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{Router, extract::Request, middleware, response::Response};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub use auth::{ANONYMOUS, INVALID};
pub use control::{ActiveFault, Control, Counters, FaultMatch, FaultRule};
pub use fixture::{
    CloudCredential, CloudCredentialKind, CloudFixture, CloudProject, CloudRepository, CloudUser,
    DataCenterFixture, DcCredential, DcCredentialKind, DcProject, DcRepository, DcUser, DcUserKind,
    Fixture, FixtureError, Generator, Membership, Workspace,
};
pub use hooks::{DEFAULT_WORKSPACE_EVENTS, Delivery, RegisteredHook, signature};
pub use world::{CloudRepositoryChange, Consent, DcRepositoryChange, StateError};

/// State shared by the handlers, the middleware and [`Control`].
pub(crate) struct Shared {
    /// `http://127.0.0.1:PORT`: `next` links and Data Center links point here.
    origin: String,
    world: Mutex<world::World>,
    faults: Mutex<control::Faults>,
    counters: Mutex<Counters>,
    limits: Mutex<control::RateLimits>,
    hooks: Mutex<hooks::Hooks>,
}

/// A running simulator. Dropping it stops the server too; [`Simulator::shutdown`] also waits.
pub struct Simulator {
    control: Control,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Serves `fixture` on `127.0.0.1` at a free port.
    pub async fn start(fixture: Fixture) -> io::Result<Simulator> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), fixture).await
    }

    /// Serves `fixture` on `addr`, which must be a loopback address: the simulator accepts fake
    /// credentials and must never be reachable from elsewhere.
    pub async fn start_on(addr: SocketAddr, fixture: Fixture) -> io::Result<Simulator> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the simulator only listens on loopback addresses, not {addr}"),
            ));
        }
        let fixture = fixture
            .prepare()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            origin: format!("http://{local}"),
            world: Mutex::new(world::World::new(fixture)),
            faults: Mutex::default(),
            counters: Mutex::default(),
            limits: Mutex::default(),
            hooks: Mutex::default(),
        });
        let app = router(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender means the same as an explicit stop.
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(base_url = %shared.origin, "Bitbucket simulator listening");
        Ok(Simulator {
            control: Control { shared },
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`: the Data Center base URL, and the host of the OAuth endpoint.
    pub fn base_url(&self) -> String {
        self.control.shared.origin.clone()
    }

    /// `http://127.0.0.1:PORT/2.0`: the Cloud API base URL.
    pub fn cloud_api_url(&self) -> String {
        format!("{}/2.0", self.control.shared.origin)
    }

    /// Faults, counters, rate limits and data changes.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops accepting connections, lets in-flight requests finish and waits for the server.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "the simulator stopped with an error"),
                Err(error) => tracing::warn!(%error, "the simulator task failed"),
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(cloud::routes())
        .merge(datacenter::routes())
        .merge(hooks::routes())
        .merge(oauth::routes())
        .merge(control_http::routes())
        .fallback(not_found)
        // Added last so it wraps every route and the fallback (and sees `MatchedPath`).
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            control::observe,
        ))
        .with_state(shared)
}

/// Unknown paths answer in the style of the product they fall under.
async fn not_found(request: Request) -> Response {
    match auth::Realm::of(request.uri().path()) {
        auth::Realm::Cloud => cloud::no_api().await,
        auth::Realm::DataCenter => datacenter::no_resource().await,
        _ => axum::response::IntoResponse::into_response(http::StatusCode::NOT_FOUND),
    }
}
