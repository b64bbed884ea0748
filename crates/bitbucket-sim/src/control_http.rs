//! The control API over HTTP (`/_sim/…`), one route per [`Control`] operation, for tests and
//! benchmarks that run the simulator as a separate process. Routes and bodies are listed in
//! `lib.rs` and `testdata/bitbucket/SIMULATOR.md`. Bodies are JSON (camelCase); `PUT
//! /_sim/fixture` also takes YAML. These requests are neither counted, faulted nor rate limited.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::{get, patch, post, put},
};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{
    Shared,
    control::{Control, FaultRule},
    fixture::{CloudRepository, DcRepository, Fixture},
    world::{CloudRepositoryChange, Consent, DcRepositoryChange, StateError},
};

/// The `/_sim` routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/counters", get(counters))
        .route("/_sim/counters/reset", post(reset_counters))
        .route(
            "/_sim/faults",
            get(faults).post(add_fault).delete(clear_faults),
        )
        .route("/_sim/fixture", put(replace_fixture))
        .route(
            "/_sim/cloud/workspaces/{workspace}/repositories",
            post(add_cloud_repository),
        )
        .route(
            "/_sim/cloud/workspaces/{workspace}/repositories/{slug}",
            patch(change_cloud_repository).delete(delete_cloud_repository),
        )
        .route(
            "/_sim/dc/projects/{project}/repositories",
            post(add_dc_repository),
        )
        .route(
            "/_sim/dc/projects/{project}/repositories/{slug}",
            patch(change_dc_repository).delete(delete_dc_repository),
        )
        .route(
            "/_sim/cloud/workspaces/{workspace}/repositories/{slug}/push",
            post(push_cloud_repository),
        )
        .route(
            "/_sim/dc/projects/{project}/repositories/{slug}/push",
            post(push_dc_repository),
        )
        .route("/_sim/hooks", get(hooks))
        .route("/_sim/hooks/{id}", axum::routing::delete(remove_hook))
        .route("/_sim/hooks/deliveries", get(deliveries))
        .route(
            "/_sim/hooks/workspace-events",
            put(set_workspace_hook_events),
        )
        .route("/_sim/oauth/expire", post(expire_oauth_tokens))
        .route("/_sim/oauth/lifetime", put(set_oauth_lifetime))
        .route("/_sim/oauth/consent", put(set_oauth_consent))
        .route("/_sim/credentials/{id}/revoke", post(revoke_credential))
        .route("/_sim/credentials/{id}/restore", post(restore_credential))
        .route("/_sim/rate-limits/reset", post(reset_rate_limits))
        .route("/_sim/rate-limits/{credential}", put(set_rate_limit))
}

fn control(shared: Arc<Shared>) -> Control {
    Control { shared }
}

impl IntoResponse for StateError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Fixture(_) => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Exists(_) => StatusCode::CONFLICT,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

fn done(result: Result<(), StateError>, success: StatusCode) -> Response {
    match result {
        Ok(()) => success.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn push_cloud_repository(
    State(shared): State<Arc<Shared>>,
    Path((workspace, slug)): Path<(String, String)>,
) -> Response {
    done(
        control(shared).push_cloud_repository(&workspace, &slug),
        StatusCode::NO_CONTENT,
    )
}

async fn push_dc_repository(
    State(shared): State<Arc<Shared>>,
    Path((project, slug)): Path<(String, String)>,
) -> Response {
    done(
        control(shared).push_dc_repository(&project, &slug),
        StatusCode::NO_CONTENT,
    )
}

async fn hooks(State(shared): State<Arc<Shared>>) -> Response {
    Json(control(shared).hooks()).into_response()
}

async fn remove_hook(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> StatusCode {
    if control(shared).remove_hook(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn deliveries(State(shared): State<Arc<Shared>>) -> Response {
    Json(control(shared).deliveries()).into_response()
}

async fn set_workspace_hook_events(
    State(shared): State<Arc<Shared>>,
    Json(events): Json<Vec<String>>,
) -> StatusCode {
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    control(shared).set_workspace_hook_events(&events);
    StatusCode::NO_CONTENT
}

async fn counters(State(shared): State<Arc<Shared>>) -> Response {
    Json(control(shared).counters()).into_response()
}

async fn reset_counters(State(shared): State<Arc<Shared>>) -> StatusCode {
    control(shared).reset_counters();
    StatusCode::NO_CONTENT
}

async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(control(shared).faults()).into_response()
}

async fn add_fault(State(shared): State<Arc<Shared>>, Json(rule): Json<FaultRule>) -> Response {
    let id = control(shared).add_fault(rule);
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    control(shared).clear_faults();
    StatusCode::NO_CONTENT
}

async fn replace_fixture(State(shared): State<Arc<Shared>>, body: String) -> Response {
    match Fixture::from_yaml(&body) {
        Ok(fixture) => done(
            control(shared).replace_fixture(fixture),
            StatusCode::NO_CONTENT,
        ),
        Err(error) => StateError::from(error).into_response(),
    }
}

async fn add_cloud_repository(
    State(shared): State<Arc<Shared>>,
    Path(workspace): Path<String>,
    Json(repo): Json<CloudRepository>,
) -> Response {
    done(
        control(shared).add_cloud_repository(&workspace, repo),
        StatusCode::CREATED,
    )
}

async fn change_cloud_repository(
    State(shared): State<Arc<Shared>>,
    Path((workspace, slug)): Path<(String, String)>,
    Json(change): Json<CloudRepositoryChange>,
) -> Response {
    done(
        control(shared).change_cloud_repository(&workspace, &slug, change),
        StatusCode::NO_CONTENT,
    )
}

async fn delete_cloud_repository(
    State(shared): State<Arc<Shared>>,
    Path((workspace, slug)): Path<(String, String)>,
) -> Response {
    done(
        control(shared).delete_cloud_repository(&workspace, &slug),
        StatusCode::NO_CONTENT,
    )
}

async fn add_dc_repository(
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    Json(repo): Json<DcRepository>,
) -> Response {
    done(
        control(shared).add_dc_repository(&project, repo),
        StatusCode::CREATED,
    )
}

async fn change_dc_repository(
    State(shared): State<Arc<Shared>>,
    Path((project, slug)): Path<(String, String)>,
    Json(change): Json<DcRepositoryChange>,
) -> Response {
    done(
        control(shared).change_dc_repository(&project, &slug, change),
        StatusCode::NO_CONTENT,
    )
}

async fn delete_dc_repository(
    State(shared): State<Arc<Shared>>,
    Path((project, slug)): Path<(String, String)>,
) -> Response {
    done(
        control(shared).delete_dc_repository(&project, &slug),
        StatusCode::NO_CONTENT,
    )
}

async fn expire_oauth_tokens(State(shared): State<Arc<Shared>>) -> StatusCode {
    control(shared).expire_oauth_tokens();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lifetime {
    seconds: Option<u64>,
}

async fn set_oauth_consent(
    State(shared): State<Arc<Shared>>,
    Json(consent): Json<Consent>,
) -> StatusCode {
    control(shared).set_oauth_consent(consent);
    StatusCode::NO_CONTENT
}

async fn set_oauth_lifetime(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Lifetime>,
) -> StatusCode {
    control(shared).set_oauth_token_lifetime(body.seconds);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Limit {
    per_hour: Option<u32>,
}

async fn set_rate_limit(
    State(shared): State<Arc<Shared>>,
    Path(credential): Path<String>,
    Json(body): Json<Limit>,
) -> StatusCode {
    control(shared).set_rate_limit(&credential, body.per_hour);
    StatusCode::NO_CONTENT
}

async fn reset_rate_limits(State(shared): State<Arc<Shared>>) -> StatusCode {
    control(shared).reset_rate_limit_windows();
    StatusCode::NO_CONTENT
}

async fn revoke_credential(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> StatusCode {
    found(control(shared).revoke_credential(&id))
}

async fn restore_credential(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> StatusCode {
    found(control(shared).restore_credential(&id))
}

fn found(exists: bool) -> StatusCode {
    if exists {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}
